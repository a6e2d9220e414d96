"""Diversity trade-off: recall@20 against catalog coverage@20 and creator Gini across re-rank settings.

Protocol (the offline one of ``offline.py``, served through the real pipeline steps):
- Query users, their relevant videos and the videos they had seen come from ``build_queries`` on a window;
  the query is the user's first event in that window (features, history and context as of then).
- Each query runs the serving steps themselves: ``Retrieval`` (query tower + FAISS top candidates, minus
  seen videos, plus the fresh reserve), ``Ranking`` (the exported MMoE over every candidate) and
  ``DiversityRerank`` (MMR, creator/category caps, exploration slots), with the request time of the query
  event. Retrieval and ranking run once per user; only the re-rank runs once per setting.
- Per setting: recall@k over the served feeds, coverage@k (share of the catalog in anybody's feed) and the
  Gini coefficient of exposure over every creator in the catalog (unexposed creators count as zeros).
- The baseline is the ranked order without any re-rank (lambda 1, no caps, no exploration). A setting
  qualifies when its coverage reaches ``min_coverage`` and its recall is at most ``max_recall_loss``
  below the baseline's (relative); among those the highest recall wins. The grid is swept and the
  setting chosen on the validation window only; the test window reports the baseline, the current
  default and the choice, with bootstrap intervals over test users for recall.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reels.models import metrics  # noqa: E402
from reels.models.config import RANKER_TASKS, EvaluationConfig, RankerConfig  # noqa: E402
from reels.models.evaluation import bootstrap  # noqa: E402
from reels.models.evaluation.exposure import gini  # noqa: E402
from reels.models.evaluation.offline import build_queries  # noqa: E402
from reels.models.serving.catalog import Catalog  # noqa: E402
from reels.models.serving.config import ServingConfig  # noqa: E402
from reels.models.serving.experiment import VARIANT_SETTINGS  # noqa: E402
from reels.models.serving.ranking import blend  # noqa: E402
from reels.models.serving.request import Fallback  # noqa: E402
from reels.models.serving.rerank import DiversityRerank  # noqa: E402
from reels.workflows.errors import ConfigError, InvalidInput  # noqa: E402
from reels.workflows.manifest import FeatureArtifacts  # noqa: E402
from reels.workflows.spec import HISTORY  # noqa: E402

if TYPE_CHECKING:
    from reels.models.train import TrainedModels

Progress = Callable[[str], None]

K = 20
MIN_COVERAGE = 0.30  # the rule: coverage@20 of at least 30 % ...
MAX_RECALL_LOSS = 0.05  # ... for at most 5 % relative recall@20 loss against the ranked order
# The settings swept (every combination), on top of the serving config's other values.
DEFAULT_GRID: dict[str, tuple] = {
    "mmr_lambda": (1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.0),
    "max_per_creator": (K, 2, 1),  # K: no cap
    "max_per_category": (K, 5),
    "exploration_slots": (0, 2),
}
SETTING_COLUMNS = ("mmr_lambda", "max_per_creator", "max_per_category", "exploration_slots")
BASELINE, DEFAULT = "no re-rank", "current default"
# On test, beside the re-rank: the ranked order at the configured feed score, where validation picked
# another (``tradeoff_of_version``), so the pick is checked on test too.
CONFIGURED_FEED = "no re-rank, configured feed score"


@dataclass
class Feeds:
    """The re-rank's inputs for the query users of one window: per user the ranked candidates (raw ids,
    combined scores, task predictions), the encoded history, the request time, and the relevant raw ids."""

    user_ids: np.ndarray
    request_times: np.ndarray
    candidates: list[np.ndarray]
    scores: list[np.ndarray]
    tasks: list[np.ndarray]
    histories: list[np.ndarray]
    relevant: list[set[int]]
    # With the ranker: its own scores and the two-tower's, per candidate (``scores`` is their ``blend``).
    ranker_scores: list[np.ndarray] = field(default_factory=list)
    retrieval_scores: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_ids)

    def blended(self, retrieval_weight: float) -> Feeds:
        """These feeds scored by ``blend`` at ``retrieval_weight`` (``InvalidInput`` without the ranker's
        own scores)."""
        if len(self.ranker_scores) != len(self):
            raise InvalidInput("these feeds were not ranked: there are no ranker scores to blend")
        scores = [
            blend(r, t, retrieval_weight)
            for r, t in zip(self.ranker_scores, self.retrieval_scores, strict=True)
        ]
        return replace(self, scores=scores)


# The feed score's retrieval weights compared on validation (``blend_sweep``); 0 is the ranker alone.
BLEND_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def no_rerank(base: ServingConfig, k: int = K) -> ServingConfig:
    """``base`` reduced to the ranked order: lambda 1 (pure score), no caps that bind in ``k`` slots, no
    exploration slots."""
    return replace(base, mmr_lambda=1.0, max_per_creator=k, max_per_category=k, exploration_slots=0)


def settings(base: ServingConfig, grid: Mapping[str, Sequence], k: int = K) -> dict[str, ServingConfig]:
    """The named settings of a sweep: the baseline, the current default (``base``) and every combination
    of ``grid`` (re-rank settings only; ``ConfigError`` on another key or an out-of-range value)."""
    unknown = sorted(set(grid) - set(VARIANT_SETTINGS))
    if unknown:
        raise ConfigError(
            f"a trade-off grid may vary re-rank settings only {VARIANT_SETTINGS}, got {unknown}"
        )
    named = {BASELINE: no_rerank(base, k), DEFAULT: base}
    keys = list(grid)
    for values in itertools.product(*(grid[key] for key in keys)):
        config = replace(base, **dict(zip(keys, values, strict=True)))
        named.setdefault(", ".join(f"{key}={value}" for key, value in zip(keys, values, strict=True)), config)
    return named


def _served(rerank: DiversityRerank, feeds: Feeds, k: int) -> list[np.ndarray]:
    return [
        rerank(
            feeds.candidates[u], feeds.scores[u], feeds.tasks[u], feeds.histories[u], k,
            int(feeds.request_times[u]), Fallback.NONE, user_id=int(feeds.user_ids[u]),
        ).video_ids
        for u in range(len(feeds))
    ]  # fmt: skip


def feed_metrics(served: Sequence[np.ndarray], feeds: Feeds, catalog: Catalog, k: int = K) -> dict:
    """``recall@k`` (mean over users, as the offline evaluation computes it), ``coverage@k``,
    ``creator_gini`` of served feeds, plus ``per_user_recall`` (what the bootstrap resamples)."""
    top = np.full((len(served), k), -1, dtype=np.int64)  # -1 pads a feed shorter than k (no raw id is < 0)
    for row, ids in zip(top, served, strict=True):
        row[: min(k, len(ids))] = ids[:k]
    per_user = metrics.per_user_retrieval_metrics(top, feeds.relevant, [k])[f"recall@{k}"]
    shown = top[top >= 0]
    rows = catalog.rows(shown)
    rows = rows[~np.isnan(rows)].astype(np.int64)
    creators = np.unique(catalog.creator)
    exposure = np.bincount(np.searchsorted(creators, catalog.creator[rows]), minlength=len(creators))
    return {
        f"recall@{k}": float(per_user.mean()),
        f"coverage@{k}": metrics.coverage(shown, len(np.unique(catalog.raw_ids))),
        "creator_gini": gini(exposure),
        "per_user_recall": per_user,
    }


def blend_sweep(
    feeds: Feeds, catalog: Catalog, base: ServingConfig, weights: Sequence[float] = BLEND_WEIGHTS, k: int = K
) -> list[dict]:
    """recall@k and coverage@k of the ranked order (no re-rank) at each feed-score ``weights`` (the serving
    setting ``retrieval_weight``), and of the two-tower's order alone (``weight`` None)."""
    plain = DiversityRerank(catalog, no_rerank(base, k))
    rows = []
    for weight in (*weights, None):
        scored = replace(feeds, scores=feeds.retrieval_scores) if weight is None else feeds.blended(weight)
        m = feed_metrics(_served(plain, scored, k), scored, catalog, k)
        rows.append(
            {"retrieval_weight": weight, f"recall@{k}": m[f"recall@{k}"], f"coverage@{k}": m[f"coverage@{k}"]}
        )
    return rows


def best_blend(rows: Sequence[Mapping], k: int = K) -> float:
    """The feed-score weight of ``blend_sweep`` ``rows`` with the highest recall@k (the two-tower alone
    is not a feed score the serving ranking step offers; a tie keeps the smaller weight)."""
    blends = [row for row in rows if row["retrieval_weight"] is not None]
    return min(blends, key=lambda row: (-row[f"recall@{k}"], row["retrieval_weight"]))["retrieval_weight"]


def candidate_coverage(feeds: Feeds, catalog: Catalog) -> float:
    """The share of the catalog among anybody's candidates: the most coverage any re-rank can reach."""
    every = np.concatenate(feeds.candidates) if len(feeds) else np.array([], dtype=np.int64)
    return len(np.unique(every)) / len(np.unique(catalog.raw_ids))


def sweep(
    feeds: Feeds,
    catalog: Catalog,
    base: ServingConfig,
    grid: Mapping[str, Sequence] | None = None,
    k: int = K,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per setting (``settings(base, grid, k)``): its name, ``SETTING_COLUMNS``, recall@k,
    coverage@k, creator Gini and the relative recall loss against the baseline (the first row)."""
    if not len(feeds):
        raise InvalidInput("no query users to sweep the re-rank settings on: the window is too small")
    say = progress or (lambda _m: None)
    rows = []
    named = settings(base, DEFAULT_GRID if grid is None else grid, k)
    for i, (name, config) in enumerate(named.items()):
        if i % 10 == 0:
            say(f"re-rank setting {i + 1}/{len(named)}")
        m = feed_metrics(_served(DiversityRerank(catalog, config), feeds, k), feeds, catalog, k)
        rows.append(
            {"setting": name, **{c: getattr(config, c) for c in SETTING_COLUMNS}}
            | {
                f"recall@{k}": m[f"recall@{k}"],
                f"coverage@{k}": m[f"coverage@{k}"],
                "creator_gini": m["creator_gini"],
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs["users"] = len(feeds)
    baseline = frame[f"recall@{k}"].iloc[0]
    frame["recall_loss"] = 1 - frame[f"recall@{k}"] / baseline if baseline > 0 else 0.0
    return frame


def choose(
    frame: pd.DataFrame,
    min_coverage: float = MIN_COVERAGE,
    max_recall_loss: float = MAX_RECALL_LOSS,
    k: int = K,
) -> dict:
    """The rule on a ``sweep`` frame: among settings with coverage@k >= ``min_coverage`` and a relative
    recall loss <= ``max_recall_loss``, the one with the highest recall (then coverage, then the lowest
    Gini). ``{"met": bool, "chosen": row or None, "rule": ..., "closest": ...}``: when none qualifies,
    ``closest`` holds the most covering setting within the recall budget and the least recall-losing
    setting that reaches the coverage (either None when no setting has that property)."""
    recall, coverage = f"recall@{k}", f"coverage@{k}"
    ordered = frame.sort_values(
        [recall, coverage, "creator_gini"], ascending=[False, False, True], kind="stable"
    )
    within = ordered["recall_loss"] <= max_recall_loss + 1e-12
    covering = ordered[coverage] >= min_coverage
    qualifying = ordered[within & covering]

    def row(frame: pd.DataFrame) -> dict | None:
        return _plain(frame.iloc[0].to_dict()) if len(frame) else None

    return {
        "met": bool(len(qualifying)),
        "chosen": row(qualifying),
        "rule": {"min_coverage": min_coverage, "max_recall_loss": max_recall_loss, "k": k},
        "closest": {
            "most_coverage_within_recall_loss": row(
                ordered[within].sort_values(coverage, ascending=False, kind="stable")
            ),
            "least_recall_loss_reaching_coverage": row(ordered[covering]),
        },
    }


def _plain(row: dict) -> dict:
    return {key: (value.item() if isinstance(value, np.generic) else value) for key, value in row.items()}


def window_feeds(
    features: FeatureArtifacts,
    model_dir: Path,
    window: str,
    base: ServingConfig,
    use_ranker: bool = True,
) -> tuple[Feeds, Catalog]:
    """The ``Feeds`` of ``window`` (``valid``: history = train; ``test``: history = train + valid) through
    the serving steps of the version in ``model_dir``, and the version's ``Catalog``; scored as ``base``'s
    ``retrieval_weight`` blends them, with both scores kept (``Feeds.blended``). ``use_ranker`` False keeps
    the retrieval order and scores (task predictions NaN). ``InvalidInput`` for another window."""
    if window not in ("valid", "test"):
        raise InvalidInput(f"the trade-off runs on the valid or test window, got {window!r}")
    from reels.feature_store.encoding import RequestEncoder
    from reels.models.index import load_index
    from reels.models.inputs import QUERY_FEATURES
    from reels.models.query_tower_numpy import load_query_tower
    from reels.models.ranker_numpy import load_ranker
    from reels.models.serving.catalog import video_metadata
    from reels.models.serving.ranking import Ranking, aligned
    from reels.models.serving.request import QUERY_USER_FIELDS, QueryFeatures
    from reels.models.serving.retrieval import Retrieval
    from reels.models.serving.video_table import VideoTable
    from reels.models.two_tower import query_inputs
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.spec import REQUEST_CONTEXT

    before = [features.read_split("train")] + ([features.read_split("valid")] if window == "test" else [])
    catalog = Catalog(model_dir, video_metadata(OfflineStore(features.manifest().store)))
    queries = build_queries(
        pd.concat(before, ignore_index=True), features.read_split(window), catalog.raw_ids
    )
    retrieval = Retrieval(
        load_query_tower(model_dir / "query_tower", base.query_tower_backend),
        load_index(model_dir / "items.faiss"),
        np.array([], dtype=np.int64), base, catalog,
    )  # fmt: skip
    ranking = (
        Ranking(
            VideoTable.from_features(features),
            load_ranker(model_dir / "ranker", base.ranker_backend),
            RequestEncoder(features.workflow_dir),
            base.ranker_backend,
        )  # fmt: skip
        if use_ranker
        else None
    )
    frame = queries.frame
    inputs = query_inputs(frame, tuple(dict.fromkeys(QUERY_FEATURES + QUERY_USER_FIELDS + REQUEST_CONTEXT)))
    feeds = Feeds(
        frame["raw_user_id"].to_numpy(np.int64), frame["event_time"].to_numpy(np.int64), [], [], [], [],
        [{int(catalog.raw_ids[p]) for p in rel} for rel in queries.relevant],
    )  # fmt: skip
    for u in range(len(frame)):
        features_u = {name: values[u : u + 1] for name, values in inputs.items()}
        query = QueryFeatures(
            features_u, catalog.raw_ids[queries.seen[u]], Fallback.NONE, int(feeds.request_times[u])
        )
        candidates, scores = retrieval(query, query.seen)
        if ranking is not None:
            # The ranker alone (weight 0), so that any blend can be computed from the two scores kept.
            ranked, ranker_scores, tasks, _ = ranking(query, candidates, scores)
            feeds.ranker_scores.append(ranker_scores)
            feeds.retrieval_scores.append(aligned(candidates, scores, ranked))
            candidates, scores = ranked, ranker_scores  # blended below, once every feed is in
        else:
            tasks = np.full((len(candidates), len(RANKER_TASKS)), np.nan, dtype=np.float32)
        feeds.candidates.append(candidates)
        feeds.scores.append(scores)
        feeds.tasks.append(tasks)
        feeds.histories.append(features_u[HISTORY][0])
    return (feeds.blended(base.retrieval_weight) if ranking is not None else feeds), catalog


def assemble(
    frame: pd.DataFrame,
    choice: dict,
    named: Mapping[str, ServingConfig],
    test_feeds: Feeds,
    catalog: Catalog,
    base: ServingConfig,
    seed: int = 42,
    configured_feeds: Feeds | None = None,
) -> dict:
    """The trade-off result from a validation ``sweep`` frame, its ``choose`` verdict and the test
    window's feeds: the baseline, current default and chosen setting (where none meets the rule, the
    most covering one within the recall budget, labelled ``closest``) served on test, with bootstrap
    intervals of recall over test users and of each setting's recall relative to the baseline's (paired
    resamples). ``configured_feeds``: the same test feeds scored by the configured feed score, whose
    ranked order is then reported too (``CONFIGURED_FEED``, with the baseline's recall relative to it)."""
    if not len(test_feeds):
        raise InvalidInput("no test users with new viewed videos: the test window is too small")
    picked = choice["chosen"] or choice["closest"]["most_coverage_within_recall_loss"]
    picked_label = "chosen" if choice["met"] else "closest"
    report, per_user = {}, {}
    served = [(BASELINE, BASELINE, test_feeds), (DEFAULT, DEFAULT, test_feeds)]
    served.append((picked_label, picked["setting"], test_feeds))
    pairs = [(picked_label, BASELINE), (DEFAULT, BASELINE)]
    if configured_feeds is not None:
        served.append((CONFIGURED_FEED, BASELINE, configured_feeds))
        pairs.append((BASELINE, CONFIGURED_FEED))
    for label, name, feeds in served:
        config = named[name]
        m = feed_metrics(_served(DiversityRerank(catalog, config), feeds, K), feeds, catalog, K)
        per_user[label] = {f"recall@{K}": m.pop("per_user_recall")}
        report[label] = {"setting": name, **{c: getattr(config, c) for c in SETTING_COLUMNS}, **m}
    intervals = bootstrap.retrieval_intervals(per_user, [f"recall@{K}"], pairs, seed=seed)
    for label, bounds in intervals["models"].items():
        report[label]["ci95"] = bounds
    valid_users = frame.attrs.get("users")
    return {
        "validation": [_plain(r) for r in frame.to_dict("records")],
        "choice": choice,
        "test": report,
        "_ratios": intervals["ratios"],
        "_protocol": {
            "k": K, "valid_users": valid_users, "test_users": len(test_feeds),
            "catalog": int(len(np.unique(catalog.raw_ids))), "candidates": base.candidates,
            "fresh_candidates": base.fresh_candidates, "bootstrap_resamples": bootstrap.RESAMPLES,
        },
    }  # fmt: skip


def tradeoff_of_version(
    features: FeatureArtifacts,
    model_dir: Path,
    base: ServingConfig | None = None,
    grid: Mapping[str, Sequence] | None = None,
    seed: int = 42,
    progress: Progress | None = None,
    use_ranker: bool = True,
    pick_feed_score: bool = True,
) -> dict:
    """Sweep on validation, choose by the rule, report baseline / current default / choice on test
    (``assemble``) for the version in ``model_dir``: ``{"validation": [rows], "choice": choose(...),
    "test": {label: metrics}, "_ratios", "_protocol"}``. ``use_ranker`` False sweeps the retrieval order
    (the two-tower's scores) instead of the ranked one. With the ranker and ``pick_feed_score``, the feed
    score is picked first: the ``BLEND_WEIGHTS`` weight whose ranked order has the best validation
    recall@k (``blend_sweep``), and the re-rank settings are then swept and reported on that order; else
    on ``base``'s ``retrieval_weight``."""
    say = progress or (lambda _m: None)
    base = base or ServingConfig()
    configured_weight = base.retrieval_weight
    grid = DEFAULT_GRID if grid is None else grid
    say("trade-off: retrieval and ranking of the validation window")
    valid_feeds, catalog = window_feeds(features, model_dir, "valid", base, use_ranker)
    blends = blend_sweep(valid_feeds, catalog, base) if use_ranker else None
    if blends is not None and pick_feed_score:
        weight = best_blend(blends)
        say(f"trade-off: feed score picked on validation: retrieval_weight {weight:g}")
        base = replace(base, retrieval_weight=weight)
        valid_feeds = valid_feeds.blended(weight)
    frame = sweep(valid_feeds, catalog, base, grid, K, say)
    say("trade-off: the test window")
    test_feeds, catalog = window_feeds(features, model_dir, "test", base, use_ranker)
    configured_feeds = None
    if blends is not None and pick_feed_score and base.retrieval_weight != configured_weight:
        configured_feeds = test_feeds.blended(configured_weight)
    result = assemble(
        frame, choose(frame), settings(base, grid, K), test_feeds, catalog, base, seed, configured_feeds
    )
    result["_protocol"]["scores"] = "ranker" if use_ranker else "retrieval"
    result["_protocol"]["valid_candidate_coverage"] = candidate_coverage(valid_feeds, catalog)
    result["_protocol"]["retrieval_weight"] = base.retrieval_weight
    result["_protocol"]["configured_retrieval_weight"] = configured_weight
    result["_protocol"]["feed_score_picked"] = blends is not None and pick_feed_score
    if blends is not None:
        result["feed_score"] = blends
    return result


def evaluate_tradeoff(
    features: FeatureArtifacts,
    trained: TrainedModels,
    config: EvaluationConfig,
    ranker_config: RankerConfig | None = None,
    progress: Progress | None = None,
    serving: ServingConfig | None = None,
) -> dict:
    """``offline.evaluate``'s inputs -> ``tradeoff_of_version`` on the version ``trained`` wrote (its
    exported ranker already carries ``ranker_config``'s score weights)."""
    return tradeoff_of_version(
        features, Path(trained.directory), serving, seed=config.seed, progress=progress,
        pick_feed_score=config.pick_feed_score,
    )  # fmt: skip


def markdown(result: dict, name: str = "", plot_path: Path | str | None = None) -> str:
    """A RESULTS.md section: the rule, the choice (or the closest settings), the test numbers with their
    intervals, the plot and the validation grid (folded)."""
    proto, choice, test = result["_protocol"], result["choice"], result["test"]
    rule, k = choice["rule"], proto["k"]
    order = "the two-tower's retrieval order" if proto.get("scores") == "retrieval" else "the ranker's order"
    lines = [f"### Diversity trade-off{f' on {name}' if name else ''}", ""]
    lines += [
        f"Re-rank settings swept on the validation window ({proto['valid_users']} query users, each served "
        f"through the pipeline's retrieval, ranking and re-rank steps: {proto['candidates']} candidates, "
        f"{proto['fresh_candidates']} of them fresh) and chosen there by the rule: coverage@{k} >= "
        f"{rule['min_coverage']:.0%} for at most {rule['max_recall_loss']:.0%} relative recall@{k} loss against "
        f"{order} without re-rank. Then measured on the test window ({proto['test_users']} query users, "
        f"catalog {proto['catalog']:,} videos). Creator Gini counts every creator of the catalog.",
        "",
    ]
    if "valid_candidate_coverage" in proto:
        lines += [
            f"The validation users' candidates hold {proto['valid_candidate_coverage']:.1%} of the catalog: "
            "no re-rank setting can cover more.",
            "",
        ]
    if result.get("feed_score"):
        lines += feed_score_markdown(
            result["feed_score"], proto.get("retrieval_weight"), k,
            picked=proto.get("feed_score_picked", False), configured=proto.get("configured_retrieval_weight"),
        )  # fmt: skip
    if choice["met"]:
        row = choice["chosen"]
        lines.append(f"Chosen: **{describe(row)}** (validation: recall loss {row['recall_loss']:.1%}, "
                     f"coverage@{k} {row[f'coverage@{k}']:.1%}).")  # fmt: skip
    else:
        lines.append("No setting meets the rule on validation. Closest:")
        for what, row in choice["closest"].items():
            text = (f"{describe(row)} (recall loss {row['recall_loss']:.1%}, coverage@{k} {row[f'coverage@{k}']:.1%})"
                    if row else "none")  # fmt: skip
            lines.append(f"- {what.replace('_', ' ')}: {text}")
    lines += [
        "",
        f"| test window | setting | recall@{k} [95 % CI] | coverage@{k} | creator Gini |",
        "|---|---|---:|---:|---:|",
    ]
    for label, row in test.items():
        lo, hi = row["ci95"][f"recall@{k}"]
        lines.append(
            f"| {label} | {describe(row)} | {row[f'recall@{k}']:.4f} [{lo:.4f}, {hi:.4f}] | "
            f"{row[f'coverage@{k}']:.1%} | {row['creator_gini']:.3f} |"
        )
    lines.append("")
    if proto["test_users"] < bootstrap.MIN_TEST_USERS:
        lines += [
            f"Only {proto['test_users']} test users (fewer than {bootstrap.MIN_TEST_USERS}): the test intervals "
            "are too wide to confirm or refute the choice.",
            "",
        ]
    for pair, by_metric in result["_ratios"].items():
        r = by_metric[f"recall@{k}"]
        if r["ci"][0] is not None:
            a, b = pair.split("/")
            lines.append(f"- recall@{k} of {a} / {b}: {r['ratio']:.3f}x [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
    if plot_path:
        lines += ["", f"![diversity trade-off]({plot_path})"]
    lines += ["", f"<details><summary>Validation grid ({len(result['validation'])} settings)</summary>", ""]
    lines += [
        f"| | λ | per creator | per category | exploration slots | recall@{k} | coverage@{k} | creator Gini "
        "| recall loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["validation"]:
        label = row["setting"] if row["setting"] in (BASELINE, DEFAULT) else ""
        lines.append(
            f"| {label} | {row['mmr_lambda']:g} | {row['max_per_creator']} | {row['max_per_category']} | "
            f"{row['exploration_slots']} | {row[f'recall@{k}']:.4f} | {row[f'coverage@{k}']:.1%} | "
            f"{row['creator_gini']:.3f} | {row['recall_loss']:.1%} |"
        )
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def feed_score_markdown(
    rows: Sequence[Mapping],
    serving_weight: float | None,
    k: int = K,
    picked: bool = False,
    configured: float | None = None,
) -> list[str]:
    """The feed-score table of ``blend_sweep`` (validation window, ranked order without re-rank) and
    which weight the re-rank below ran on (``picked`` there, or the configured one)."""
    used = f"{serving_weight:g}" if serving_weight is not None else "n/a"
    how = (
        f"picked on this table by recall@{k}: **retrieval_weight {used}** (configured: {configured:g}); "
        "the re-rank settings below are swept and reported on that order"
        if picked and configured is not None
        else f"this version's sweep used {used}"
    )
    lines = [
        f"Feed score on the validation window, ranked order without re-rank: the ranker's score blended "
        f"with the two-tower's (serving setting `retrieval_weight`; {how}).",
        "",
        f"| feed score | recall@{k} | coverage@{k} |",
        "|---|---:|---:|",
    ]
    for row in rows:
        weight = row["retrieval_weight"]
        label = (
            "two-tower alone"
            if weight is None
            else "ranker alone"
            if weight == 0
            else f"retrieval_weight {weight:g}"
        )
        lines.append(f"| {label} | {row[f'recall@{k}']:.4f} | {row[f'coverage@{k}']:.1%} |")
    return [*lines, ""]


def describe(row: Mapping, k: int = K) -> str:
    """A setting in a few words, e.g. ``λ 0.7, ≤2 per creator, ≤5 per category, 2 exploration slots``
    (a cap of ``k`` or more never binds in ``k`` slots: "no ... cap")."""

    def cap(value: int, what: str) -> str:
        return f"no {what} cap" if value >= k else f"≤{value} per {what}"

    return (
        f"λ {row['mmr_lambda']:g}, {cap(row['max_per_creator'], 'creator')}, "
        f"{cap(row['max_per_category'], 'category')}, {row['exploration_slots']} exploration slots"
    )


def plot(result: dict, path: Path, title: str = "") -> Path:
    """Two panels over the validation grid, recall@k against coverage@k and against creator Gini, with
    the rule's bounds drawn (dashed: the recall budget; dotted: the coverage target) and the baseline,
    current default and choice marked; writes a PNG at ``path``."""
    k = result["_protocol"]["k"]
    frame = pd.DataFrame(result["validation"])
    rule, choice = result["choice"]["rule"], result["choice"]
    baseline = frame[f"recall@{k}"].iloc[0]
    picked = choice["chosen"] or choice["closest"]["most_coverage_within_recall_loss"]
    marks = [(frame[frame["setting"] == name].iloc[0], name, "s", "black") for name in (BASELINE,)]
    marks.append(
        (
            frame[frame["setting"] == DEFAULT].iloc[0],
            f"{DEFAULT} ({describe(frame[frame['setting'] == DEFAULT].iloc[0])})",
            "D",
            "tab:orange",
        )
    )
    if picked:
        marks.append(
            (
                picked,
                f"{'chosen' if choice['met'] else 'closest (rule not met)'}: {describe(picked)}",
                "*",
                "tab:red",
            )
        )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, x, label in (
        (axes[0], f"coverage@{k}", f"coverage@{k}"),
        (axes[1], "creator_gini", "creator Gini"),
    ):
        points = ax.scatter(
            frame[x],
            frame[f"recall@{k}"],
            c=frame["mmr_lambda"],
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=28,
            zorder=2,
        )
        for row, name, marker, colour in marks:
            star = marker == "*"
            ax.scatter(row[x], row[f"recall@{k}"], marker=marker, s=200 if star else 80,
                       facecolors=colour if star else "none", edgecolors=colour, linewidths=1.8,
                       label=name, zorder=4 if star else 3)  # fmt: skip
        ax.axhline(baseline * (1 - rule["max_recall_loss"]), color="grey", linestyle="--", linewidth=1)
        if x == f"coverage@{k}":
            ax.axvline(rule["min_coverage"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"{label} (validation)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"recall@{k} (validation)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.3, top=0.9, right=0.86, wspace=0.08)
    fig.colorbar(points, cax=fig.add_axes((0.88, 0.3, 0.015, 0.6)), label="MMR λ")
    fig.suptitle(title or "Diversity trade-off across re-rank settings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
