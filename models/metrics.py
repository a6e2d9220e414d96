"""Offline metrics. Retrieval metrics take a (n_users, K) matrix of recommended item ids and each user's
set of relevant items; ranking metrics delegate to scikit-learn.

Conventions: Recall@K = |top-K ∩ relevant| / |relevant|; NDCG@K with binary gains and the ideal DCG of
min(|relevant|, K) hits; MAP@K = mean over users of (sum of precision@i at each hit i ≤ K) / min(|relevant|, K).
Users with no relevant items are excluded by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

from reels.workflows.errors import InvalidInput


def _hits(top_k: np.ndarray, relevant: Sequence[set[int]]) -> np.ndarray:
    return np.array(
        [[item in rel for item in row] for row, rel in zip(top_k, relevant, strict=True)], dtype=bool
    )


def per_user_retrieval_metrics(
    top_k: np.ndarray, relevant: Sequence[set[int]], ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """``recall@k``, ``ndcg@k`` and ``map@k`` of each user (one value per row of ``top_k``) for each k in
    ``ks`` (what the bootstrap resamples); raises ``InvalidInput`` with no users or fewer than ``max(ks)``
    columns."""
    if len(top_k) == 0:
        raise InvalidInput("no users to evaluate")
    max_k = max(ks)
    if top_k.shape[1] < max_k:
        raise InvalidInput(f"need {max_k} recommendations per user, got {top_k.shape[1]}")
    hits = _hits(top_k[:, :max_k], relevant)
    n_relevant = np.array([len(r) for r in relevant], dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = hits[:, :k]
        out[f"recall@{k}"] = h.sum(axis=1) / n_relevant
        dcg = (h * discounts[:k]).sum(axis=1)
        ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_relevant])
        out[f"ndcg@{k}"] = dcg / ideal
        precision_at_i = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        out[f"map@{k}"] = (precision_at_i * h).sum(axis=1) / np.minimum(n_relevant, k)
    return out


def retrieval_metrics(top_k: np.ndarray, relevant: Sequence[set[int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean ``recall@k``, ``ndcg@k`` and ``map@k`` over users for each k in ``ks``, from one ranking;
    raises ``InvalidInput`` with no users or fewer than ``max(ks)`` columns."""
    return {
        name: float(np.mean(values))
        for name, values in per_user_retrieval_metrics(top_k, relevant, ks).items()
    }


def coverage(top_k: np.ndarray, catalog_size: int) -> float:
    """Share of the catalog that appears in anybody's top-K."""
    return float(len(np.unique(top_k)) / catalog_size)


def intra_list_diversity(top_k: np.ndarray, item_category: np.ndarray) -> float:
    """Mean share of item pairs in a list that belong to different categories."""
    cats = item_category[top_k]
    k = cats.shape[1]
    same = (cats[:, :, None] == cats[:, None, :]).sum(axis=(1, 2)) - k
    return float(np.mean(1.0 - same / (k * (k - 1))))


def novelty(top_k: np.ndarray, item_popularity: np.ndarray) -> float:
    """Mean self-information -log2 p(item) of recommended items, p = share of training interactions."""
    p = item_popularity / max(item_popularity.sum(), 1.0)
    return float(np.mean(-np.log2(np.maximum(p[top_k], 1e-12))))


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``auc`` (NaN when only one class is present) and ``logloss`` of probabilities clipped to [1e-7, 1-1e-7]."""
    labels = np.asarray(labels).astype(int)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    if labels.min() == labels.max():
        return {"auc": float("nan"), "logloss": float(log_loss(labels, scores, labels=[0, 1]))}
    return {"auc": float(roc_auc_score(labels, scores)), "logloss": float(log_loss(labels, scores))}


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Root mean squared error, in the targets' units."""
    return float(np.sqrt(mean_squared_error(targets, predictions)))
