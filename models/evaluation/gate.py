"""The promotion gate of ``reels retrain``: score an exported version (query tower + item embeddings +
ranker, exactly what Triton serves) on the latest time window, and compare a candidate with the serving
version on the same window.

Both versions see the same events, each encoded with its *own* fitted workflow (vocabularies,
normalisation stats): the serving version's features for the window come from ``build_features`` with
that version's workflow reused instead of refitted. Relevant sets and candidates are the candidate's
catalog, so videos uploaded after the serving version was trained count against it (it cannot retrieve
them): that staleness is what a retrain is for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from reels.models import baselines, metrics
from reels.models.baselines import catalog_positions
from reels.models.evaluation.offline import build_queries
from reels.models.index import CategoryAffinity, index_vectors, query_vectors
from reels.models.inputs import QUERY_FEATURES, RANKER_FEATURES
from reels.models.ranker import BINARY_TASKS
from reels.models.two_tower import query_inputs
from reels.workflows.errors import ConfigError, InvalidInput
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.spec import HISTORY

BATCH = 4096


@dataclass(frozen=True)
class GateConfig:
    """Which metrics the gate checks, the relative tolerance on each, and the retrieval cut-offs scored."""

    metrics: tuple[str, ...] = ("recall@20", "auc_view")  # every one must pass
    tolerance: float = 0.0  # relative: candidate >= serving x (1 - tolerance)
    ks: tuple[int, ...] = (20,)


@dataclass
class GateDecision:
    """The gate's verdict: both versions' metrics (``serving`` None for a first version) and one check per
    gated metric."""

    candidate: dict
    serving: dict | None
    checks: dict = field(default_factory=dict)  # metric -> {candidate, serving, threshold, passed}

    @property
    def passed(self) -> bool:
        """True when every gated metric's check passed."""
        return all(c["passed"] for c in self.checks.values())


def _batched(fn, frame: pd.DataFrame, names) -> list:
    return [fn(query_inputs(frame.iloc[i : i + BATCH], names)) for i in range(0, len(frame), BATCH)]


def score_version(model_dir: Path, window: FeatureArtifacts, catalog_ids: np.ndarray, ks=(20,)) -> dict:
    """Retrieval (full catalog, seen excluded) and ranking metrics of the exported ``model_dir`` on the
    test window of ``window`` (features encoded with that version's workflow)."""
    from reels.models.ranker import ExportedRanker
    from reels.models.two_tower import QueryTower

    model_dir = Path(model_dir)
    before = pd.concat([window.read_split("train"), window.read_split("valid")], ignore_index=True)
    test = window.read_split("test")
    queries = build_queries(before, test, catalog_ids)
    if not len(queries.frame):
        raise InvalidInput("no users with new viewed videos in the latest window: nothing to gate on")
    items = pd.read_parquet(model_dir / "item_embeddings.parquet")
    position = catalog_positions(catalog_ids)
    known = items["raw_video_id"].isin(position.index).to_numpy()
    rows = position[items.loc[known, "raw_video_id"]].to_numpy()  # this version's videos in the catalog
    matrix = np.zeros((len(catalog_ids), len(items["embedding"].iloc[0])), dtype=np.float32)
    matrix[rows] = np.stack(items.loc[known, "embedding"])
    unknown = np.ones(len(catalog_ids), dtype=bool)
    unknown[rows] = False
    prior = None  # the index's trending prior, where it has one, by catalog position
    if "trending_prior" in items.columns:
        prior = np.zeros(len(catalog_ids), dtype=np.float32)
        prior[rows] = items.loc[known, "trending_prior"].to_numpy(np.float32)
    # The index's category-affinity columns, where it has them.
    affinity = CategoryAffinity.of_version(model_dir, items)
    if affinity is not None:
        category = np.zeros(len(catalog_ids), dtype=np.int64)
        category[rows] = items.loc[known, "category_row"].to_numpy()
        affinity = replace(affinity, item_rows=category)  # by catalog position, like the matrix
    vectors = index_vectors(matrix, prior, affinity)  # as the version's index holds them

    tower = QueryTower(model_dir / "query_tower")
    query = np.concatenate(_batched(tower, queries.frame, QUERY_FEATURES)).astype(np.float32)

    shares = None if affinity is None else affinity.query_columns(queries.frame[HISTORY].to_numpy())
    query = query_vectors(vectors.shape[1], query, shares)

    def scorer(rows: np.ndarray) -> np.ndarray:
        scores = query[rows] @ vectors.T
        scores[:, unknown] = -np.inf  # a video this version never saw cannot be retrieved
        return scores

    top = baselines.top_k(scorer, len(queries.frame), queries.seen, max(ks))
    out = metrics.retrieval_metrics(top, queries.relevant, ks)
    ranker = ExportedRanker(model_dir / "ranker")
    predictions = _batched(ranker, test, RANKER_FEATURES)
    for task in BINARY_TASKS:
        scores = np.concatenate([p[task].reshape(-1) for p in predictions])
        out[f"auc_{task}"] = metrics.binary_metrics(test[task].to_numpy(), scores)["auc"]
    out["test_users"] = len(queries.frame)
    out["test_impressions"] = len(test)
    out["catalog_known"] = float(1 - unknown.mean())
    return out


def decide(candidate: dict, serving: dict | None, config: GateConfig) -> GateDecision:
    """Pass when every gated metric of the candidate is at least the serving one's minus the tolerance
    (no serving version: the first one always passes)."""
    decision = GateDecision(candidate, serving)
    for name in config.metrics:
        if name not in candidate:
            raise ConfigError(f"gate metric {name!r} is not computed (have: {sorted(candidate)})")
        threshold = None if serving is None else serving[name] * (1 - config.tolerance)
        decision.checks[name] = {
            "candidate": candidate[name],
            "serving": None if serving is None else serving[name],
            "threshold": threshold,
            "passed": threshold is None or candidate[name] >= threshold,
        }
    return decision
