"""Pipeline steps 2-4 (retrieval, ranking, diversity re-rank) and the in-process pipeline.

The same classes run inside the Triton python-backend models (``model_repository/*/1/model.py`` only
converts tensors) and in-process (``InProcessPipeline``, the comparison baseline of the serving benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import FeatureStoreUnavailable, OnlineStore
from reels.models.config import RANKER_TASKS
from reels.models.index import load_index
from reels.models.inputs import ITEM_FEATURES, QUERY_FEATURES, RANKER_FEATURES
from reels.models.ranker import ExportedRanker
from reels.models.serving.experiment import DEFAULT_VARIANT, Experiment, Exposure, ExposureLog, seed_of
from reels.models.serving.request import (
    CONTEXT_FIELDS,
    QUERY_USER_FIELDS,
    Fallback,
    FeatureTransform,
    QueryFeatures,
    Request,
)
from reels.models.train import trained_features
from reels.models.two_tower import QueryTower
from reels.workflows.features import HISTORY
from reels.workflows.offline_store import OfflineStore
from reels.workflows.pipeline import FeatureArtifacts


@dataclass(frozen=True)
class ServingConfig:
    candidates: int = 500  # retrieved and ranked per request
    max_k: int = 100
    mmr_lambda: float = 0.7  # 1 = pure score, 0 = pure diversity
    max_per_creator: int = 2
    max_per_category: int = 5
    fresh_candidates: int = 50  # of the candidates: fresh videos closest to the query (the exploration pool)
    exploration_slots: int = 2  # positions reserved for fresh videos
    exploration_epsilon: float = 0.2  # per exploration slot: P(a uniformly random fresh video)
    fresh_hours: float = 48.0
    trending_days: int = 3
    trending_size: int = 1000
    log_exposures: bool = True  # one entry per served feed in the Redis stream reels:exposures

    def __post_init__(self) -> None:
        checks = {
            "candidates": self.candidates > 0,
            "max_k": self.max_k > 0,
            "mmr_lambda": 0.0 <= self.mmr_lambda <= 1.0,
            "max_per_creator": self.max_per_creator > 0,
            "max_per_category": self.max_per_category > 0,
            "fresh_candidates": 0 <= self.fresh_candidates <= self.candidates,
            "exploration_slots": self.exploration_slots >= 0,
            "exploration_epsilon": 0.0 <= self.exploration_epsilon <= 1.0,
            "fresh_hours": self.fresh_hours >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid serving config values: {bad} (got {self})")


def trending(store: OfflineStore, days: int, limit: int) -> np.ndarray:
    """Raw ids of the most watched (not skipped) videos over the store's last ``days`` days."""
    last = store.days()[-1] + pd.Timedelta(days=1)
    events = store.read_events(
        last - pd.Timedelta(days=days), last, columns=["video_id", "skipped"]
    ).compute()
    counts = events.loc[~events["skipped"], "video_id"].value_counts()
    return counts.index.to_numpy(dtype=np.int64)[:limit]


class IdLookup:
    """int64 key -> value by binary search over sorted unique keys (the first value wins for repeated
    keys). A pandas ``reindex`` per call cost ~0.3 ms per request in the re-rank; this is a few µs."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        self.keys, first = np.unique(np.asarray(keys, dtype=np.int64), return_index=True)
        self.values = np.asarray(values)[first]

    def __call__(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, found): ``values`` is meaningless where ``found`` is False."""
        query = np.asarray(query, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(len(query), dtype=self.values.dtype), np.zeros(len(query), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return self.values[at], self.keys[at] == query


class Catalog:
    """In-memory item side: embeddings by raw id, creator/category/upload time, encoded -> raw ids."""

    def __init__(self, model_dir: Path, features: FeatureArtifacts):
        stored = pd.read_parquet(model_dir / "item_embeddings.parquet")
        self.raw_ids = stored["raw_video_id"].to_numpy(dtype=np.int64)
        embeddings = np.stack(stored["embedding"].to_numpy()).astype(np.float32)
        self.unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        self.row_of = IdLookup(self.raw_ids, np.arange(len(self.raw_ids)))
        raw = OfflineStore(features.manifest()["store"]).read_table("videos").set_index("video_id")
        raw = raw.reindex(self.raw_ids)
        self.creator = raw["creator_id"].fillna(-1).to_numpy(dtype=np.int64)
        self.category = raw["category"].fillna("").to_numpy()
        categories, self.category_code = np.unique(self.category, return_inverse=True)
        self.n_categories = len(categories)
        self.upload_s = raw["upload_time"].astype("int64").to_numpy() // 10**9
        encoded = stored["video_id"].to_numpy()
        known = encoded > 2  # OOV/null ids are shared by many videos: no unique raw id to explain with
        self.raw_of_encoded = IdLookup(encoded[known], self.raw_ids[known])

    def rows(self, raw_ids: np.ndarray) -> np.ndarray:
        """Catalog row of each raw id, NaN where the catalog does not know it."""
        rows, found = self.row_of(raw_ids)
        return np.where(found, rows, np.nan)


class Retrieval:
    """FAISS top candidates for the query, plus up to ``fresh_candidates`` fresh videos (uploaded within
    ``fresh_hours``) nearest to the query. Fresh videos have no interactions, so their embeddings (often
    the shared OOV one) almost never reach the FAISS top 500: measured on the default synthetic data, 0
    fresh videos among 500 candidates for every user tried. Without this reserve the exploration slots
    would never have anything to explore."""

    def __init__(
        self,
        query_tower: QueryTower,
        index: faiss.Index,
        trending_ids: np.ndarray,
        config: ServingConfig,
        catalog: Catalog | None = None,
    ):
        self.query_tower = query_tower
        self.index = index
        self.trending_ids = trending_ids
        self.config = config
        self.catalog = catalog
        if catalog is not None:  # catalog rows by upload time: a request's fresh videos are one slice
            self.by_upload = np.argsort(catalog.upload_s, kind="stable")
            self.upload_sorted = catalog.upload_s[self.by_upload]

    def fresh(self, embedding: np.ndarray, request_time_s: int, excluded: np.ndarray) -> np.ndarray:
        """Raw ids of up to ``fresh_candidates`` unseen fresh videos, nearest to the query first."""
        cfg = self.config
        if self.catalog is None or cfg.fresh_candidates == 0:
            return np.array([], dtype=np.int64)
        lo, hi = np.searchsorted(
            self.upload_sorted, [request_time_s - cfg.fresh_hours * 3600, request_time_s], side="right"
        )
        rows = self.by_upload[lo:hi]
        rows = rows[~np.isin(self.catalog.raw_ids[rows], excluded)]
        if len(rows) > cfg.fresh_candidates:
            similarity = self.catalog.unit[rows] @ embedding.reshape(-1)
            rows = rows[np.argsort(-similarity, kind="stable")[: cfg.fresh_candidates]]
        return self.catalog.raw_ids[rows]

    def __call__(self, query: QueryFeatures, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate raw ids and retrieval scores, without ``excluded`` (seen / hidden) videos."""
        n = self.config.candidates
        if query.fallback != Fallback.NONE:
            ids = self.trending_ids[~np.isin(self.trending_ids, excluded)][:n]
            return ids, np.linspace(1.0, 0.0, len(ids), dtype=np.float32)
        embedding = self.query_tower({name: query.features[name] for name in QUERY_FEATURES})
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        fresh = self.fresh(embedding, query.request_time_s, excluded)
        scores, ids = self.index.search(embedding, n + len(excluded))
        keep = (ids[0] >= 0) & ~np.isin(ids[0], excluded) & ~np.isin(ids[0], fresh)
        ids, scores = ids[0][keep][: n - len(fresh)], scores[0][keep][: n - len(fresh)]
        if len(fresh) == 0:
            return ids, scores
        # Fresh videos get scored by the ranker like any candidate; their retrieval score only orders a
        # fallback, so they go last.
        floor = scores.min() if len(scores) else 0.0
        return np.concatenate([ids, fresh]), np.concatenate([scores, np.full(len(fresh), floor, np.float32)])


class Ranking:
    def __init__(self, store: OnlineStore, ranker: ExportedRanker, encoder: RequestEncoder):
        self.store = store
        self.ranker = ranker
        self.encoder = encoder

    def __call__(
        self, query: QueryFeatures, candidates: np.ndarray, retrieval_scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fallback]:
        """Known candidates, final scores, per-task predictions (n, 4) and the fallback in force."""
        fallback = query.fallback
        try:
            rows = self.store.read_videos(candidates) if len(candidates) else None
        except FeatureStoreUnavailable:
            rows = None
            fallback = Fallback.STORE_UNAVAILABLE
        if rows is None or len(rows.video_ids) == 0:
            tasks = np.full((len(candidates), len(RANKER_TASKS)), np.nan, dtype=np.float32)
            return candidates, retrieval_scores.astype(np.float32), tasks, fallback
        n = len(rows.video_ids)
        inputs = {}
        for name in QUERY_USER_FIELDS + CONTEXT_FIELDS:
            value = query.features[name]
            inputs[name] = np.repeat(value, n, axis=0)
        for name in ITEM_FEATURES:
            inputs[name] = rows.videos[name]
        inputs["video_age"] = self.encoder.video_age(
            np.full(n, query.request_time_s), rows.videos["upload_time"]
        )
        out = self.ranker({name: inputs[name] for name in RANKER_FEATURES})
        tasks = np.stack([out[t] for t in RANKER_TASKS], axis=1).astype(np.float32)
        return rows.video_ids, out["score"].astype(np.float32), tasks, fallback


@dataclass
class Recommendation:
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
        # Caps are counted per creator / category code, vectorised (no per-candidate Python loop).
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
        base = cfg.mmr_lambda * relevance

        def allowed(mask: np.ndarray, strict: bool) -> np.ndarray:
            ok = available & mask
            if strict:
                ok &= (creator_count[creator_code] < cfg.max_per_creator) & (
                    category_count[category_code] < cfg.max_per_category
                )
            return ok

        def best(ok: np.ndarray) -> int | None:
            if not ok.any():
                return None
            mmr = base - (1 - cfg.mmr_lambda) * max_sim
            return int(np.argmax(np.where(ok, mmr, -np.inf)))

        def take(i: int) -> None:
            selected.append(i)
            meta.append((1.0, False, True, 0))
            available[i] = False
            creator_count[creator_code[i]] += 1
            category_count[category_code[i]] += 1
            similarity = unit @ unit[i]
            if len(selected) == 1:
                max_sim[:] = similarity
            else:
                np.maximum(max_sim, similarity, out=max_sim)

        everything = np.ones(n, dtype=bool)
        while len(selected) < min(k - n_explore, n):
            i = best(allowed(everything, strict=True))
            if i is None:  # caps cannot be met by what is left: fill by MMR alone (documented fallback)
                i = best(allowed(everything, strict=False))
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
            take(best(allowed(everything, strict=False)))
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
        history_raw, found = self.catalog.raw_of_encoded(history_encoded[history_encoded > 2])
        if not found.any():
            return np.full(len(unit), -1, dtype=np.int64)
        history_ids = history_raw[found].astype(np.int64)
        history_unit = self.catalog.unit[self.catalog.rows(history_ids).astype(np.int64)]
        return history_ids[np.argmax(unit @ history_unit.T, axis=1)]


class InProcessPipeline:
    """feature_transform -> retrieval -> ranking -> diversity_rerank, in one Python process."""

    def __init__(
        self,
        model_dir: str | Path,
        store: OnlineStore,
        config: ServingConfig | None = None,
        experiment: Experiment | None = None,
    ):
        model_dir = Path(model_dir)
        features = trained_features(model_dir)
        self.config = config or ServingConfig()
        encoder = RequestEncoder(features.workflow_dir)
        history_length = features.manifest()["feature_config"]["history_length"]
        offline = OfflineStore(features.manifest()["store"])
        self.feature_transform = FeatureTransform(store, encoder, history_length)
        catalog = Catalog(model_dir, features)
        self.retrieval = Retrieval(
            QueryTower(model_dir / "query_tower"), load_index(model_dir / "items.faiss"),
            trending(offline, self.config.trending_days, self.config.trending_size), self.config, catalog,
        )  # fmt: skip
        self.ranking = Ranking(store, ExportedRanker(model_dir / "ranker"), encoder)
        exposures = ExposureLog(store.client, store.keys.prefix) if self.config.log_exposures else None
        self.rerank = DiversityRerank(catalog, self.config, experiment, exposures)

    def recommend(self, request: Request) -> Recommendation:
        request.validate(self.config.max_k)
        query = self.feature_transform(request)
        candidates, retrieval_scores = self.retrieval(query, query.seen)
        ids, scores, tasks, fallback = self.ranking(query, candidates, retrieval_scores)
        return self.rerank(
            ids, scores, tasks, query.features[HISTORY][0], request.k, query.request_time_s, fallback,
            user_id=request.user_id, hidden_creators=query.hidden_creators,
        )  # fmt: skip
