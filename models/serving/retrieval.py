"""Pipeline step 2, ``retrieval``: the query tower + FAISS top candidates, plus fresh videos for exploration."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np

from reels.models.index import query_vectors
from reels.models.inputs import QUERY_FEATURES
from reels.models.serving.catalog import Catalog
from reels.models.serving.config import ServingConfig
from reels.models.serving.request import (
    Fallback,
    QueryFeatures,
)
from reels.workflows.spec import HISTORY

if TYPE_CHECKING:  # TensorFlow is imported only where the SavedModel tower runs
    from reels.models.query_tower_numpy import NumpyQueryTower
    from reels.models.two_tower import QueryTower


class Retrieval:
    """FAISS top candidates for the query, plus up to ``fresh_candidates`` fresh videos (uploaded within
    ``fresh_hours``) nearest to the query. Fresh videos have no interactions, so their embeddings (often
    the shared OOV one) almost never reach the FAISS top 500: measured on the default synthetic data, 0
    fresh videos among 500 candidates for every user tried. Without this reserve the exploration slots
    would never have anything to explore."""

    def __init__(
        self,
        query_tower: QueryTower | NumpyQueryTower,
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

    def index_query(self, embedding: np.ndarray, features: dict[str, np.ndarray]) -> np.ndarray:
        """The query embedding as the version's index takes it: with a 1 for its trending prior and the
        history's category shares for its affinity columns, where it has them."""
        affinity = None if self.catalog is None else self.catalog.affinity
        columns = None if affinity is None else affinity.query_columns(features[HISTORY])
        return query_vectors(self.index.d, embedding, columns)

    def __call__(self, query: QueryFeatures, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate raw ids and retrieval scores, without ``excluded`` (seen / hidden) videos."""
        n = self.config.candidates
        if query.fallback != Fallback.NONE:
            ids = self.trending_ids[~np.isin(self.trending_ids, excluded)][:n]
            return ids, np.linspace(1.0, 0.0, len(ids), dtype=np.float32)
        embedding = self.query_tower({name: query.features[name] for name in QUERY_FEATURES})
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        fresh = self.fresh(embedding, query.request_time_s, excluded)
        scores, ids = self.index.search(self.index_query(embedding, query.features), n + len(excluded))
        keep = (ids[0] >= 0) & ~np.isin(ids[0], excluded) & ~np.isin(ids[0], fresh)
        ids, scores = ids[0][keep][: n - len(fresh)], scores[0][keep][: n - len(fresh)]
        if len(fresh) == 0:
            return ids, scores
        # Fresh videos get scored by the ranker like any candidate; their retrieval score only orders a
        # fallback, so they go last.
        floor = scores.min() if len(scores) else 0.0
        return np.concatenate([ids, fresh]), np.concatenate([scores, np.full(len(fresh), floor, np.float32)])
