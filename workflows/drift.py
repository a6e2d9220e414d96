"""Feature drift: the population stability index (PSI) of every model input between the training window
and a recent window, on the transformed features (what the models actually see).

PSI = Σ (p_recent − p_train) · ln(p_recent / p_train) over bins: categorical ids as they are (the
vocabulary is the binning), continuous features in 10 quantile bins of the training window. Empty bins
get a small floor so a category that appears only recently counts instead of dividing by zero.
Rule of thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 significant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reels.workflows.errors import InvalidInput
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.spec import (
    CONTEXT_CATEGORICAL,
    CONTEXT_CONTINUOUS,
    USER_CATEGORICAL,
    USER_CONTINUOUS,
    VIDEO_CATEGORICAL,
    VIDEO_CONTINUOUS,
)

# Ids have thousands of values that change with every window, and a 1-2 day window always differs from
# a two-week one in day of week: monitoring them would flag every run, so they are left out by default.
SKIPPED_BY_DEFAULT = ("user_id", "video_id", "creator_id", "day_of_week")
CATEGORICAL = tuple(c for c in USER_CATEGORICAL + VIDEO_CATEGORICAL + CONTEXT_CATEGORICAL)
CONTINUOUS = USER_CONTINUOUS + VIDEO_CONTINUOUS + CONTEXT_CONTINUOUS
FLOOR = 1e-4


def _psi(p: np.ndarray, q: np.ndarray) -> float:
    p = np.maximum(p / max(p.sum(), 1e-12), FLOOR)
    q = np.maximum(q / max(q.sum(), 1e-12), FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_categorical(train: pd.Series, recent: pd.Series) -> float:
    """PSI of a categorical feature, its values as the bins."""
    values = np.union1d(train.unique(), recent.unique())
    p = train.value_counts().reindex(values, fill_value=0).to_numpy(dtype=float)
    q = recent.value_counts().reindex(values, fill_value=0).to_numpy(dtype=float)
    return _psi(p, q)


def psi_continuous(train: pd.Series, recent: pd.Series, bins: int = 10) -> float:
    """PSI of a continuous feature over ``bins`` quantile bins of the training window."""
    edges = np.unique(np.quantile(train.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(
        np.searchsorted(edges, train.to_numpy(dtype=float), side="right"), minlength=len(edges) + 1
    )
    q = np.bincount(
        np.searchsorted(edges, recent.to_numpy(dtype=float), side="right"), minlength=len(edges) + 1
    )
    return _psi(p.astype(float), q.astype(float))


def drift_table(
    train: pd.DataFrame, recent: pd.DataFrame, skip: tuple[str, ...] = SKIPPED_BY_DEFAULT
) -> pd.DataFrame:
    """PSI per feature present in both frames (minus ``skip``), largest first."""
    if recent.empty or train.empty:
        raise InvalidInput(
            f"both windows need rows to compare (got train {len(train)}, recent {len(recent)})"
        )
    rows = []
    for name in CATEGORICAL + CONTINUOUS:
        if name in train.columns and name in recent.columns and name not in skip:
            kind = "categorical" if name in CATEGORICAL else "continuous"
            fn = psi_categorical if kind == "categorical" else psi_continuous
            rows.append({"feature": name, "kind": kind, "psi": fn(train[name], recent[name])})
    return pd.DataFrame(rows).sort_values("psi", ascending=False, ignore_index=True)


@dataclass(frozen=True)
class DriftCheck:
    """A feature build's training window against its recent windows: the PSI table and the verdict."""

    table: pd.DataFrame  # feature, kind, psi; largest first
    windows: tuple[str, ...]
    threshold: float

    @property
    def drifted(self) -> list[str]:
        """The features whose PSI is above the threshold (largest first)."""
        return self.table.loc[self.table["psi"] > self.threshold, "feature"].tolist()

    @property
    def largest(self) -> tuple[str, float]:
        """The feature that moved most, and its PSI."""
        top = self.table.iloc[0]
        return str(top["feature"]), float(top["psi"])


def check_drift(
    features: FeatureArtifacts, threshold: float, windows: tuple[str, ...] = ("valid", "test")
) -> DriftCheck:
    """PSI of every model input of ``features`` between its training window and ``windows`` together.

    ``reels drift`` runs it on a source's feature build, ``reels retrain --if-drift`` on the build the
    serving version was trained with (a retrain writes builds of its own)."""
    recent = pd.concat([features.read_split(w) for w in windows], ignore_index=True)
    return DriftCheck(drift_table(features.read_split("train"), recent), tuple(windows), threshold)
