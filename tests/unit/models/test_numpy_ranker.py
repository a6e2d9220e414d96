"""The ranker's numpy forward (``ranker.npz`` written by ``Ranker.export``) against its SavedModel: every
architecture (MMoE, shared-bottom, PLE with one and two levels, chained heads), every output, 10k real
feature rows; the user-side-once call; bad input; the backend switch."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from reels.models.config import RANKER_TASKS
from reels.models.inputs import ITEM_FEATURES, QUERY_FEATURES, RANKER_FEATURES, feature_schema
from reels.models.ranker import ExportedRanker, Ranker
from reels.models.ranker_numpy import WEIGHTS_FILE, NumpyRanker, load_ranker, with_backend
from reels.models.serving.config import ServingConfig
from reels.models.two_tower import query_inputs
from reels.workflows.errors import ConfigError, InvalidInput
from tests.conftest import TINY_RANKER

# float32 outputs in (0, 1), where one ulp is at most 1.2e-7. numpy (OpenBLAS) and TensorFlow (Eigen)
# sum the first layer's ~200-term dot products in different orders, so the two differ by a few ulps
# (measured: at most 1.8e-7 on 10k rows). 2e-6 (~16 ulps) leaves room for other BLAS kernels; a wrong
# layout, a missed pooling or activation moves outputs by 1e-3 and more.
TOLERANCE = 2e-6
ROWS = 10_000


# Trunks exported besides the session's MMoE, each trained one epoch here: name -> config overrides.
TRAINED_HERE = {
    "shared_bottom": {"architecture": "shared_bottom"},
    "ple": {"architecture": "ple", "ple_levels": 2, "num_task_experts": 1, "num_shared_experts": 2},
    "cgc": {"architecture": "ple", "ple_levels": 1, "num_task_experts": 2, "num_shared_experts": 1},
    # Chained heads: liked and completed predicted as P(view) x P(task | view).
    "chained": {"architecture": "mmoe", "conditional_on": {"liked": "view", "completed": "view"}},
}
ARCHITECTURES = ["mmoe", *TRAINED_HERE]


@pytest.fixture(scope="module")
def exports(tiny_features, tiny_models, tmp_path_factory):
    """Every architecture exported (SavedModel + npz): the session's trained MMoE, and shared-bottom, PLE
    (two levels) and CGC (PLE with one level) trained one epoch here on the same tiny features."""
    schema, train = feature_schema(tiny_features), tiny_features.read_split("train")
    out = {"mmoe": tiny_models.directory / "ranker"}
    for name, overrides in TRAINED_HERE.items():
        ranker = Ranker(schema, replace(TINY_RANKER, epochs=1, **overrides))
        ranker.fit(train)
        out[name] = tmp_path_factory.mktemp(name) / "ranker"
        ranker.export(out[name])
    return out


@pytest.fixture(scope="module")
def saved(exports):
    """Each export's SavedModel, loaded once (a load takes seconds)."""
    return {architecture: ExportedRanker(folder) for architecture, folder in exports.items()}


@pytest.fixture(scope="module")
def rows(tiny_features):
    frame = tiny_features.read_split("train")
    assert len(frame) >= ROWS
    return query_inputs(frame.sample(ROWS, random_state=0), RANKER_FEATURES)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_numpy_forward_matches_the_savedmodel_on_10k_rows(exports, saved, rows, architecture):
    forward = NumpyRanker(exports[architecture])
    assert forward.architecture == TRAINED_HERE.get(architecture, {}).get("architecture", architecture)
    expected, got = saved[architecture](rows), forward(rows)
    assert set(got) == set(expected) == {*RANKER_TASKS, "score"}
    for name in expected:
        assert got[name].dtype == np.float32 and got[name].shape == (ROWS,)
        diff = float(np.abs(got[name] - expected[name]).max())
        assert diff <= TOLERANCE, (architecture, name, diff)
    for task, parent in TRAINED_HERE.get(architecture, {}).get("conditional_on", {}).items():
        assert (got[task] <= got[parent]).all()  # a chained task is never likelier than its parent


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_user_side_once_equals_the_repeated_rows(exports, saved, rows, architecture):
    saved, forward = saved[architecture], NumpyRanker(exports[architecture])
    user = {name: rows[name][7:8] for name in QUERY_FEATURES}
    candidates = {name: rows[name][:500] for name in (*ITEM_FEATURES, "video_age")}
    expected = saved({**{n: np.repeat(v, 500, axis=0) for n, v in user.items()}, **candidates})
    for got in (forward.score_candidates(user, candidates), saved.score_candidates(user, candidates)):
        for name in expected:
            assert float(np.abs(got[name] - expected[name]).max()) <= TOLERANCE, name


def test_bad_inputs_get_clear_errors(exports, rows):
    forward = NumpyRanker(exports["mmoe"])
    few = {name: value[:4] for name, value in rows.items()}
    with pytest.raises(InvalidInput, match="lack"):
        forward({k: v for k, v in few.items() if k != "creator_id"})
    bad_id = {**few, "video_id": np.array([0, 1, 2, 10**9])}
    with pytest.raises(InvalidInput, match="outside"):
        forward(bad_id)
    negative = {**few, "history_video_ids": -few["history_video_ids"] - 1}
    with pytest.raises(InvalidInput, match="outside"):
        forward(negative)
    short_history = {**few, "history_video_ids": few["history_video_ids"][:, :2]}
    with pytest.raises(InvalidInput, match="history_video_ids"):
        forward(short_history)
    ragged = {**few, "duration": few["duration"][:3]}
    with pytest.raises(InvalidInput, match="rows"):
        forward(ragged)
    with pytest.raises(InvalidInput, match="numeric"):
        forward({**few, "duration": np.array(["a", "b", "c", "d"])})
    with pytest.raises(InvalidInput, match="integer ids"):
        forward({**few, "category": few["category"].astype(np.float32)})
    user = {name: rows[name][:2] for name in QUERY_FEATURES}  # two users for one request
    with pytest.raises(InvalidInput, match="1 rows"):
        forward.score_candidates(user, {name: rows[name][:5] for name in (*ITEM_FEATURES, "video_age")})


def test_backend_setting_picks_the_forward(exports, saved, tmp_path):
    folder, saved = exports["shared_bottom"], saved["shared_bottom"]
    assert isinstance(load_ranker(folder), NumpyRanker)
    assert isinstance(with_backend(saved, "numpy"), NumpyRanker)
    assert with_backend(saved, "savedmodel") is saved
    assert isinstance(with_backend(NumpyRanker(folder), "savedmodel"), ExportedRanker)
    older = tmp_path / "ranker"  # exported before the numpy weights: the SavedModel serves
    shutil.copytree(folder, older, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
    fallback = load_ranker(older)
    assert isinstance(fallback, ExportedRanker)
    assert with_backend(fallback, "numpy") is fallback
    with pytest.raises(ConfigError, match="onnx"):
        load_ranker(folder, "onnx")
    with pytest.raises(ConfigError, match="ranker_backend"):
        ServingConfig(ranker_backend="onnx")
    assert ServingConfig().ranker_backend == "numpy"
