"""Creator exposure: how concentrated the creators behind served videos are — Gini coefficient and the
share of exposure going to the top 1% of creators — for the catalog itself, for the ranker's top-K
(before the re-rank) and for what is served (after MMR, caps and exploration)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reels.models.serving.pipeline import InProcessPipeline
from reels.models.serving.request import Request


def gini(counts: np.ndarray) -> float:
    """0 = every creator equally exposed, -> 1 = all exposure on one creator (creators with 0 included)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def top_share(counts: np.ndarray, fraction: float = 0.01) -> float:
    """The share of all exposure that goes to the top ``fraction`` of creators."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    top = max(1, int(round(len(x) * fraction)))
    return float(x[:top].sum() / max(x.sum(), 1.0))


def exposure_report(pipeline: InProcessPipeline, users: np.ndarray, k: int, request_time_s: int) -> dict:
    """Gini, top-1% share and creators exposed for the catalog, the ranker's top-k and the served feeds
    of ``users`` (one request each at ``request_time_s``)."""
    catalog = pipeline.rerank.catalog
    creators = pd.Index(np.unique(catalog.creator))
    before = np.zeros(len(creators))
    after = np.zeros(len(creators))
    for user in users:
        request = Request(int(user), k, request_time_s=request_time_s).validate(pipeline.config.max_k)
        query = pipeline.feature_transform(request)
        candidates, retrieval_scores = pipeline.retrieval(query, query.seen)
        ids, scores, tasks, fallback = pipeline.ranking(query, candidates, retrieval_scores)
        ranked = ids[np.argsort(-scores, kind="stable")[:k]]
        served = pipeline.rerank(
            ids, scores, tasks, query.features["history_video_ids"][0], k, request_time_s, fallback,
            user_id=int(user),
        )  # fmt: skip
        for target, videos in ((before, ranked), (after, served.video_ids)):
            rows = catalog.rows(videos)
            rows = rows[~np.isnan(rows)].astype(np.int64)
            np.add.at(target, creators.get_indexer(catalog.creator[rows]), 1)
    in_catalog = pd.Series(catalog.creator).value_counts().reindex(creators, fill_value=0).to_numpy()
    return {
        name: {
            "gini": gini(counts),
            "top1pct_share": top_share(counts),
            "creators_exposed": int((counts > 0).sum()),
        }
        for name, counts in (("catalog", in_catalog), ("before_rerank", before), ("after_rerank", after))
    } | {"requests": len(users), "k": k, "creators": len(creators)}
