"""Which features each model reads, derived from the feature spec, and Merlin datasets built from them.

The schema always comes from the artifacts (the ``schema.pbtxt`` the feature build wrote), never typed by
hand: cardinalities, tags and list shapes are whatever the fitted workflow produced.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*NVTabular Dataset in CPU mode.*")

import pandas as pd  # noqa: E402
from merlin.io import Dataset  # noqa: E402
from merlin.schema import Schema  # noqa: E402

from reels.workflows.errors import InvalidInput, NotFound  # noqa: E402
from reels.workflows.manifest import FeatureArtifacts  # noqa: E402
from reels.workflows.spec import (  # noqa: E402
    HISTORY,
    REQUEST_CONTEXT,
    USER_CATEGORICAL,
    USER_CONTINUOUS,
    VIDEO_CATEGORICAL,
    VIDEO_CONTINUOUS,
)

QUERY_FEATURES = USER_CATEGORICAL + USER_CONTINUOUS + (HISTORY,) + REQUEST_CONTEXT
ITEM_FEATURES = VIDEO_CATEGORICAL + VIDEO_CONTINUOUS
RANKER_FEATURES = QUERY_FEATURES + ITEM_FEATURES + ("video_age",)
# The smoothed like/completion/watch rates: the ranker reads them, the two-tower does not — with them its
# validation recall@20 on MovieLens-100k fell from 0.167 to 0.159 over three seeds (docs/MODELS.md).
RATE_FEATURES = tuple(
    name for name in USER_CONTINUOUS + VIDEO_CONTINUOUS if name.endswith(("_rate", "_fraction"))
)
QUERY_TOWER_FEATURES = tuple(name for name in QUERY_FEATURES if name not in RATE_FEATURES)
ITEM_TOWER_FEATURES = tuple(name for name in ITEM_FEATURES if name not in RATE_FEATURES)
BIAS_FEATURES = ("position", "device")  # training-only inputs of the position-bias tower


def feature_schema(artifacts: FeatureArtifacts) -> Schema:
    """The Merlin schema the feature build wrote for its model-ready parquet (read from the train window)."""
    files = sorted(str(p) for p in artifacts.split_dir("train").glob("part-*.parquet"))
    return Dataset(files[:1], engine="parquet").schema


def dataset(frame: pd.DataFrame, schema: Schema, columns: tuple[str, ...]) -> Dataset:
    """A Merlin ``Dataset`` of ``columns`` of ``frame`` with their part of ``schema``; raises
    ``InvalidInput`` when the frame lacks one."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"feature frame lacks columns {missing}")
    return Dataset(frame[list(columns)].reset_index(drop=True), schema=schema.select_by_name(list(columns)))


def artifacts_at(path: str | Path) -> FeatureArtifacts:
    """The finished feature build at ``path``; raises ``NotFound`` when it has no manifest."""
    artifacts = FeatureArtifacts(Path(path))
    if not artifacts.manifest_path.exists():
        raise NotFound(f"no feature artifacts at {path}: run `reels features` first")
    return artifacts
