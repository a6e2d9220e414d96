"""The two-tower's query tower in numpy (``query_tower.npz`` written beside its SavedModel at export)
against the SavedModel: the same embeddings on 10k real feature rows and for one user; bad input; the
backend switch, and the SavedModel where no weights were written (older exports)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from reels.models.inputs import QUERY_FEATURES, QUERY_TOWER_FEATURES
from reels.models.query_tower_numpy import WEIGHTS_FILE, NumpyQueryTower, load_query_tower
from reels.models.serving.config import ServingConfig
from reels.models.two_tower import QueryTower, query_inputs
from reels.workflows.errors import ConfigError, InvalidInput

# Embeddings of magnitude ~1: numpy (OpenBLAS) and TensorFlow (Eigen) sum the first layer's dot products in
# different orders, so the two differ by float32 rounding (measured 1.8e-7); a wrong layout, pooling or
# activation moves them by 1e-2 and more.
TOLERANCE = 2e-6
ROWS = 10_000


@pytest.fixture(scope="module")
def folder(tiny_models):
    return tiny_models.directory / "query_tower"


@pytest.fixture(scope="module")
def rows(tiny_features):
    frame = tiny_features.read_split("train")
    assert len(frame) >= ROWS
    return query_inputs(frame.sample(ROWS, random_state=0), QUERY_FEATURES)  # extra inputs are ignored


def test_numpy_tower_matches_the_savedmodel_on_10k_rows_and_one_user(folder, rows):
    assert (folder / WEIGHTS_FILE).exists()  # mean pooling: the export writes the weights
    saved, forward = QueryTower(folder), NumpyQueryTower(folder)
    expected, got = saved(rows), forward(rows)
    assert got.dtype == np.float32 and got.shape == expected.shape == (ROWS, expected.shape[1])
    assert float(np.abs(got - expected).max()) <= TOLERANCE
    assert float(np.abs(got).max()) > 0.05  # not a degenerate tower
    one = {name: value[3:4] for name, value in rows.items()}  # serving embeds one user per request
    assert float(np.abs(forward(one) - saved(one)).max()) <= TOLERANCE


def test_bad_inputs_get_clear_errors(folder, rows):
    forward = NumpyQueryTower(folder)
    few = {name: value[:4] for name, value in rows.items()}
    with pytest.raises(InvalidInput, match="query tower inputs lack"):
        forward({k: v for k, v in few.items() if k != "user_id"})
    with pytest.raises(InvalidInput, match="outside"):
        forward({**few, "user_id": np.array([0, 1, 2, 10**9])})
    with pytest.raises(InvalidInput, match="history_video_ids"):
        forward({**few, "history_video_ids": few["history_video_ids"][:, :2]})
    with pytest.raises(InvalidInput, match="rows"):
        forward({**few, "device": few["device"][:3]})


def test_backend_setting_picks_the_tower(folder, tmp_path):
    assert set(NumpyQueryTower(folder).inputs) == set(QUERY_TOWER_FEATURES)  # the SavedModel's signature
    assert isinstance(load_query_tower(folder), NumpyQueryTower)
    assert isinstance(load_query_tower(folder, "savedmodel"), QueryTower)
    older = tmp_path / "query_tower"  # exported before the numpy weights: the SavedModel serves
    shutil.copytree(folder, older, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
    assert isinstance(load_query_tower(older), QueryTower)
    with pytest.raises(ConfigError, match="onnx"):
        load_query_tower(folder, "onnx")
    with pytest.raises(ConfigError, match="query_tower_backend"):
        ServingConfig(query_tower_backend="onnx")
    assert ServingConfig().query_tower_backend == "numpy"
