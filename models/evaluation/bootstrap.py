"""Bootstrap confidence intervals for the offline evaluation, resampling test *users* (a user's events move
together, so a heavy user cannot look like many independent samples).

Retrieval: each model's per-user metric vector is resampled with the same user draws for every model, so
a ratio between two models (two-tower / ALS) is computed on paired resamples. Ranking: a resample gives
each impression its user's multiplicity as a sample weight (``roc_auc_score(..., sample_weight=)``), the
same weights for every model (MMoE, PLE, shared-bottom). Intervals are the 2.5th and 97.5th percentiles
(95 %)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.metrics import roc_auc_score

RESAMPLES = 1000  # retrieval: cheap (means of per-user vectors)
RANKING_RESAMPLES = 200  # ranking: one AUC over every test impression per resample, per task and model
LEVEL = 0.95
MIN_TEST_USERS = 100  # below this, targets are not judged: the intervals are too wide to say anything


def _bounds(samples: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.nanpercentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def user_draws(n_users: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n_users) user indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_users, size=(resamples, n_users))


def retrieval_intervals(
    per_user: dict[str, dict[str, np.ndarray]],
    metric_names: Iterable[str],
    ratios: Iterable[tuple[str, str]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """``{"models": {model: {metric: [lo, hi]}}, "ratios": {"a/b": {metric: {"ratio", "ci"}}}}`` from
    per-user metric vectors (every model scored on the same users, in the same order)."""
    metric_names = list(metric_names)
    n_users = len(next(iter(per_user.values()))[metric_names[0]])
    draws = user_draws(n_users, resamples, seed)
    means = {
        model: {name: values[name][draws].mean(axis=1) for name in metric_names}
        for model, values in per_user.items()
    }
    out: dict = {
        "models": {m: {n: _bounds(v) for n, v in ms.items()} for m, ms in means.items()},
        "ratios": {},
    }
    for a, b in ratios:
        out["ratios"][f"{a}/{b}"] = {}
        for name in metric_names:
            point_b = per_user[b][name].mean()
            with np.errstate(divide="ignore", invalid="ignore"):
                samples = means[a][name] / means[b][name]
            out["ratios"][f"{a}/{b}"][name] = {
                "ratio": float(per_user[a][name].mean() / point_b) if point_b else float("inf"),
                "ci": _bounds(samples[np.isfinite(samples)]) if np.isfinite(samples).any() else [None, None],
            }
    return out


def ranking_intervals(
    users: np.ndarray,
    labels: dict[str, np.ndarray],
    predictions: dict[str, dict[str, np.ndarray]],
    baseline: str,
    resamples: int = RANKING_RESAMPLES,
    seed: int = 0,
) -> dict:
    """AUC intervals per model and task, and of each model's AUC minus ``baseline``'s (paired), from
    per-impression ``labels[task]``, ``predictions[model][task]`` and each impression's user id."""
    _, codes = np.unique(users, return_inverse=True)
    n_users = codes.max() + 1
    draws = user_draws(n_users, resamples, seed)
    aucs = {model: {task: np.full(resamples, np.nan) for task in labels} for model in predictions}
    for r, draw in enumerate(draws):
        weight = np.bincount(draw, minlength=n_users)[codes]
        for task, y in labels.items():
            w = weight > 0
            if len(np.unique(y[w])) < 2:
                continue  # a resample with one class only has no AUC
            for model, p in predictions.items():
                aucs[model][task][r] = roc_auc_score(y, p[task], sample_weight=weight)
    out: dict = {"models": {}, "differences": {}}
    for model, tasks in aucs.items():
        out["models"][model] = {f"auc_{t}": _bounds(v) for t, v in tasks.items()}
        if model != baseline:
            out["differences"][f"{model}-{baseline}"] = {
                f"auc_{t}": _bounds(v - aucs[baseline][t]) for t, v in tasks.items()
            }
    return out
