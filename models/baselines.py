"""Retrieval baselines on the same split as the two-tower: popularity, random, and implicit's ALS.

Every method is a ``Scorer``: given query users it returns a (n_users, n_items) score block over the full
catalog (item order = the catalog's row order); ``top_k`` masks already-seen videos and ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

Scorer = Callable[[np.ndarray], np.ndarray]  # user row indices -> (len(rows), n_items) scores


def top_k(scorer: Scorer, n_users: int, seen: Sequence[np.ndarray], k: int, chunk: int = 1024) -> np.ndarray:
    """Top-``k`` catalog positions per user, never returning a position listed in ``seen[user]``; at most
    the catalog's size (a catalog smaller than ``k`` gives every position, ranked)."""
    out = None
    for start in range(0, n_users, chunk):
        rows = np.arange(start, min(start + chunk, n_users))
        scores = np.array(scorer(rows), dtype=np.float32, copy=True)
        if out is None:
            k = min(k, scores.shape[1])
            out = np.empty((n_users, k), dtype=np.int64)
        for i, r in enumerate(rows):
            if len(seen[r]):
                scores[i, seen[r]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[rows] = np.take_along_axis(part, order, axis=1)
    return out if out is not None else np.empty((0, k), dtype=np.int64)


def catalog_positions(catalog_ids: np.ndarray) -> pd.Series:
    """Raw video id -> its row in the catalog (the first row where an id repeats)."""
    positions = pd.Series(np.arange(len(catalog_ids)), index=catalog_ids)
    return positions[~positions.index.duplicated()]


def catalog_popularity(train: pd.DataFrame, catalog_ids: np.ndarray) -> np.ndarray:
    """Training views per catalog position (the popularity baseline's scores and novelty's p)."""
    popularity = np.zeros(len(catalog_ids))
    counts = train.loc[train["view"] == 1, "raw_video_id"].value_counts()
    position_of = catalog_positions(catalog_ids)
    counts = counts[counts.index.isin(position_of.index)]
    popularity[position_of.loc[counts.index].to_numpy()] = counts.to_numpy()
    return popularity


def recent_popularity(events: pd.DataFrame, catalog_ids: np.ndarray, days: float) -> np.ndarray:
    """``catalog_popularity`` of the last ``days`` days of ``events`` (``event_time`` in epoch seconds):
    the trending baseline's scores and the two-tower's trending prior."""
    start = events["event_time"].max() - days * 86400
    return catalog_popularity(events[events["event_time"] > start], catalog_ids)


def popularity_scorer(item_counts: np.ndarray) -> Scorer:
    """A scorer giving every user the same float32 scores, ``item_counts`` (one per catalog row)."""
    scores = item_counts.astype(np.float32)[None, :]
    return lambda rows: np.broadcast_to(scores, (len(rows), scores.shape[1]))


def random_scorer(n_items: int, seed: int) -> Scorer:
    """A scorer of uniform [0, 1) float32 scores, deterministic by ``seed`` and call order."""
    rng = np.random.default_rng(seed)
    return lambda rows: rng.random((len(rows), n_items), dtype=np.float32)


def embedding_scorer(queries: np.ndarray, items: np.ndarray) -> Scorer:
    """A scorer of dot products between query rows of ``queries`` (n_users, d) and ``items`` (n_items, d)."""
    return lambda rows: queries[rows] @ items.T


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary user x item matrix (duplicates collapse to 1)."""
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    matrix.data[:] = 1.0
    return matrix


class ALS:
    """implicit's ALS fitted on training views; query users are re-solved from their full prior views
    (``recalculate_user``), so it sees the same history the two-tower's query tower sees."""

    def __init__(self, factors: int, regularization: float, iterations: int, seed: int):
        self.model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=iterations, random_state=seed,
            calculate_training_loss=False,
        )  # fmt: skip

    def fit(self, user_items: sp.csr_matrix) -> ALS:
        """Fit the factors on a binary (n_users, n_items) training matrix; returns ``self``."""
        self.model.fit(user_items, show_progress=False)
        return self

    def scorer(self, query_items: sp.csr_matrix) -> Scorer:
        """A scorer over query users re-solved from ``query_items`` (row i = query user i's prior views)."""
        factors = self.model.recalculate_user(np.arange(query_items.shape[0]), query_items)
        items = self.model.item_factors
        return lambda rows: factors[rows] @ items.T
