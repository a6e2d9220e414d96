"""Shared fixtures: tiny but real data pushed through the real generator, store and NVTabular workflow."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*NVTabular Dataset in CPU mode.*")

from reels.workflows.features import FeatureConfig  # noqa: E402
from reels.workflows.ingest import generate_synthetic  # noqa: E402
from reels.workflows.offline_store import OfflineStore  # noqa: E402
from reels.workflows.pipeline import build_features  # noqa: E402
from reels.workflows.synthetic import SyntheticConfig  # noqa: E402

TINY = SyntheticConfig(
    seed=7, n_events=40_000, n_users=800, n_creators=120, n_videos=1_500, new_videos_per_day=60, n_days=6
)
TINY_FEATURES = FeatureConfig(history_length=5, video_freq_threshold=2)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> OfflineStore:
    root = tmp_path_factory.mktemp("tiny") / "store"
    generate_synthetic(root, TINY)
    return OfflineStore(root)


@pytest.fixture(scope="session")
def tiny_features(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_features") / "features"
    return build_features(tiny_store, out, TINY_FEATURES, valid_days=1, test_days=1, device="cpu")
