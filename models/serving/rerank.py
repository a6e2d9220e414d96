"""Pipeline step 4, ``diversity_rerank``: MMR, caps, exploration slots with propensities, explanations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reels.feature_store.streams import Exposure, ExposureLog
from reels.models.config import RANKER_TASKS
from reels.models.serving.catalog import Catalog
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import DEFAULT_VARIANT, Experiment, seed_of
from reels.models.serving.request import (
    Fallback,
)
from reels.workflows.spec import OOV


@dataclass
class Recommendation:
    """One served feed of raw video ids in feed order, with per-slot scores, task predictions, explanations
    and exploration propensities (all arrays of length k or fewer)."""

    video_ids: np.ndarray
    scores: np.ndarray
    task_predictions: np.ndarray  # (k, len(RANKER_TASKS)), NaN where ranking was skipped (fallback)
    explanation_ids: np.ndarray  # raw id of the most similar video in the user's history, -1 if none
    fallback: Fallback
    propensities: np.ndarray  # float32, P(this video in this slot | request, earlier slots); 1 = ranked
    explored: np.ndarray  # bool: an exploration slot whose coin said "explore"
    greedy: np.ndarray  # bool: what the greedy (epsilon = 0) policy would have shown in this slot
    pool: np.ndarray  # int: fresh candidates an exploration slot chose among; 0 = a ranked slot
    variant: str = DEFAULT_VARIANT


class DiversityRerank:
    """MMR + creator/category caps + epsilon-greedy exploration slots + explanations, per experiment
    variant; every served feed is written to the exposure log (when one is given).

    Exploration (docs/EXPERIMENTS.md): the ``k - n`` ranked slots are filled first by MMR under the caps
    (deterministic: propensity 1); then each of the ``n = exploration_slots`` slots (fixed, evenly spread
    positions) picks among the fresh candidates still available (under the caps if any qualify): with
    probability ``1 - eps`` the best one by MMR (greedy), else one uniformly at random. A slot's logged
    propensity is the exact probability of its video given the request and the earlier slots:
    ``(1 - eps) * [video is greedy] + eps / pool``. The randomness is seeded from (experiment, salt,
    user, request time), so replaying a request reproduces the feed.
    """

    def __init__(
        self,
        catalog: Catalog,
        config: ServingConfig,
        experiment: Experiment | None = None,
        exposures: ExposureLog | None = None,
    ):
        self.catalog = catalog
        self.config = config
        self.experiment = experiment
        self.exposures = exposures
        self.variant_configs = (
            {v: experiment.serving_config(v, config) for v in experiment.names}
            if experiment
            else {DEFAULT_VARIANT: config}
        )
        self.seed_salt = f"{experiment.name}:{experiment.salt}" if experiment else "explore"

    def variant(self, user_id: int) -> str:
        """The experiment variant of a raw user id (``DEFAULT_VARIANT`` when no experiment runs)."""
        return self.experiment.assign(user_id) if self.experiment else DEFAULT_VARIANT

    def __call__(
        self,
        candidates,
        scores,
        tasks,
        history_encoded: np.ndarray,
        k: int,
        request_time_s: int,
        fallback: Fallback,
        *,
        user_id: int,
        hidden_creators: np.ndarray | None = None,
    ) -> Recommendation:
        """``hidden_creators``: raw creator ids the user hid; their videos are never returned."""
        if hidden_creators is not None and len(hidden_creators):
            rows = self.catalog.rows(candidates)
            creator = np.where(np.isnan(rows), -1, self.catalog.creator[np.nan_to_num(rows).astype(np.int64)])
            keep = ~np.isin(creator, hidden_creators)
            candidates, scores, tasks = candidates[keep], scores[keep], tasks[keep]
        variant = self.variant(user_id)
        rng = np.random.default_rng(seed_of(self.seed_salt, int(user_id), int(request_time_s)))
        rec = self._rerank(
            self.variant_configs[variant], rng, candidates, scores, tasks, history_encoded, k,
            request_time_s, fallback,
        )  # fmt: skip
        rec.variant = variant
        if self.exposures is not None:  # never raises: a lost log entry must not fail the request
            self.exposures.write(
                Exposure(
                    user_id=int(user_id),
                    request_time_s=int(request_time_s),
                    experiment=self.experiment.name if self.experiment else "",
                    variant=variant,
                    fallback=int(rec.fallback),
                    video_ids=rec.video_ids.tolist(),
                    propensities=rec.propensities.tolist(),
                    explored=rec.explored.tolist(),
                    greedy=rec.greedy.tolist(),
                    pool=rec.pool.tolist(),
                )  # fmt: skip
            )
        return rec

    def _rerank(
        self,
        cfg: ServingConfig,
        rng: np.random.Generator,
        candidates,
        scores,
        tasks,
        history_encoded: np.ndarray,
        k: int,
        request_time_s: int,
        fallback: Fallback,
    ) -> Recommendation:
        cat = self.catalog
        rows = cat.rows(candidates)
        known = ~np.isnan(rows)
        candidates, scores, tasks, rows = (
            candidates[known],
            scores[known],
            tasks[known],
            rows[known].astype(np.int64),
        )
        n = len(candidates)
        if n == 0:
            empty = np.array([], dtype=np.int64)
            return Recommendation(
                empty, np.array([], np.float32), np.zeros((0, len(RANKER_TASKS)), np.float32), empty,
                fallback, np.array([], np.float32), np.array([], bool), np.array([], bool), empty,
            )  # fmt: skip
        unit = cat.unit[rows]
        span = scores.max() - scores.min()
        relevance = (scores - scores.min()) / span if span > 0 else np.ones(n)
        # Caps are counted per creator / category code; a video whose creator or category reached its cap
        # is marked once, when it does, so a pick costs a few vector operations over the candidates.
        creator_code = np.unique(cat.creator[rows], return_inverse=True)[1]
        category_code = cat.category_code[rows]
        creator_count = np.zeros(creator_code.max() + 1, dtype=np.int64)
        category_count = np.zeros(cat.n_categories, dtype=np.int64)
        fresh = (request_time_s - cat.upload_s[rows]) < cfg.fresh_hours * 3600
        n_explore = min(cfg.exploration_slots, int(fresh.sum()), max(k - 1, 0))
        selected: list[int] = []
        # Per selected item, in feed order: (propensity, explored, greedy, pool).
        meta: list[tuple[float, bool, bool, int]] = []
        max_sim = np.zeros(n)  # similarity to the closest selected item (0 before the first pick)
        available = np.ones(n, dtype=bool)
        within_caps = np.ones(n, dtype=bool)  # available and neither cap reached
        base = cfg.mmr_lambda * relevance
        mmr = base.copy()  # base - (1 - lambda) * max_sim, kept up to date by take()

        def allowed(mask: np.ndarray | None, strict: bool) -> np.ndarray:
            ok = within_caps if strict else available
            return ok if mask is None else ok & mask

        def best(ok: np.ndarray) -> int | None:
            scored = np.where(ok, mmr, -np.inf)
            i = int(np.argmax(scored))
            return None if scored[i] == -np.inf else i

        def take(i: int) -> None:
            selected.append(i)
            meta.append((1.0, False, True, 0))
            available[i] = within_caps[i] = False
            creator_count[creator_code[i]] += 1
            category_count[category_code[i]] += 1
            if creator_count[creator_code[i]] >= cfg.max_per_creator:
                within_caps[creator_code == creator_code[i]] = False
            if category_count[category_code[i]] >= cfg.max_per_category:
                within_caps[category_code == category_code[i]] = False
            similarity = unit @ unit[i]
            if len(selected) == 1:
                max_sim[:] = similarity
            else:
                np.maximum(max_sim, similarity, out=max_sim)
            np.subtract(base, (1 - cfg.mmr_lambda) * max_sim, out=mmr)

        while len(selected) < min(k - n_explore, n):
            i = best(allowed(None, strict=True))
            if i is None:  # caps cannot be met by what is left: fill by MMR alone (documented fallback)
                i = best(allowed(None, strict=False))
            take(i)
        # Exploration: epsilon-greedy over the fresh videos, one draw per slot, in fixed spread slots.
        slots = [int(round((j + 1) * k / (n_explore + 1))) for j in range(n_explore)]
        eps = cfg.exploration_epsilon
        for slot in slots:
            ok = allowed(fresh, strict=True)
            if not ok.any():
                ok = allowed(fresh, strict=False)
            greedy = best(ok)
            if greedy is None:
                break
            options = np.flatnonzero(ok)
            explore = bool(rng.random() < eps)
            i = int(options[rng.integers(len(options))]) if explore else greedy
            take(i)
            meta[-1] = ((1 - eps) * (i == greedy) + eps / len(options), explore, i == greedy, len(options))
            position = min(slot, len(selected) - 1)
            selected.insert(position, selected.pop())
            meta.insert(position, meta.pop())
        while len(selected) < min(k, n):  # exploration found too few fresh videos
            take(best(allowed(None, strict=False)))
        order = np.array(selected, dtype=np.int64)
        propensity, explored, is_greedy, pool = (np.array(c) for c in zip(*meta, strict=True))
        return Recommendation(
            candidates[order],
            scores[order],
            tasks[order],
            self._explain(unit[order], history_encoded),
            fallback,
            propensity.astype(np.float32),
            explored.astype(bool),
            is_greedy.astype(bool),
            pool.astype(np.int64),
        )

    def _explain(self, unit: np.ndarray, history_encoded: np.ndarray) -> np.ndarray:
        history_raw, found = self.catalog.raw_of_encoded(history_encoded[history_encoded > OOV])
        if not found.any():
            return np.full(len(unit), -1, dtype=np.int64)
        history_ids = history_raw[found].astype(np.int64)
        history_unit = self.catalog.unit[self.catalog.rows(history_ids).astype(np.int64)]
        return history_ids[np.argmax(unit @ history_unit.T, axis=1)]
