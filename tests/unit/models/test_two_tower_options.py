"""Two-tower options: attention pooling of the history (shared or own table) and mixed negatives each train
a few steps on the tiny features, export a query tower whose serving signature is the mean-pooling one, and
the reloaded SavedModel reproduces the in-memory tower; padding never reaches the pooled history."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from reels.models.config import TwoTowerConfig
from reels.models.inputs import feature_schema
from reels.models.query_tower_numpy import WEIGHTS_FILE, load_query_tower
from reels.models.train import item_view_counts
from reels.models.two_tower import (
    HistoryAttention,
    HistoryMean,
    QueryTower,
    TwoTower,
    _video_table,
    query_inputs,
)
from reels.workflows.errors import ConfigError
from tests.conftest import TINY_TWO_TOWER

FEW_STEPS = replace(TINY_TWO_TOWER, epochs=1, batch_size=256, sampled_negatives=64)
TRAIN_ROWS = 1_024  # positives: four steps, enough to move every weight
# Mixed negatives change training only, so two models cover every option the exported tower can hold.
CASES = {
    "attention-shared-mixed": {"history_pooling": "attention", "negatives": "mixed"},
    "attention-own-table": {
        "history_pooling": "attention", "share_history_embeddings": False, "attention_layers": 0,
    },
    "masked-mean-shared": {"history_pooling": "masked_mean"},
}  # fmt: skip


@pytest.fixture(scope="module")
def training(tiny_features):
    schema = feature_schema(tiny_features)
    train = tiny_features.read_split("train")
    counts = item_view_counts(train, schema["video_id"].int_domain.max + 1)
    positives = train[train["view"] == 1].head(TRAIN_ROWS)
    queries = tiny_features.read_split("valid").head(200)
    return schema, counts, positives, queries


def _export(config: TwoTowerConfig, training, path) -> TwoTower:
    schema, counts, positives, _ = training
    model = TwoTower(schema, config, counts)
    assert np.isfinite(model.fit(positives).final_loss)
    model.save_query_tower(path)
    return model


def _signature(path) -> dict:
    return {name: (spec.dtype, tuple(spec.shape)) for name, spec in QueryTower(path).inputs.items()}


@pytest.fixture(scope="module")
def mean_signature(training, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("mean") / "query_tower"
    _export(FEW_STEPS, training, path)
    return _signature(path)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, training, tmp_path_factory) -> tuple[str, TwoTower, object]:
    path = tmp_path_factory.mktemp(request.param) / "query_tower"
    return request.param, _export(replace(FEW_STEPS, **CASES[request.param]), training, path), path


def test_exported_tower_keeps_the_signature_and_reproduces_the_trained_one(
    exported, training, mean_signature
):
    _, model, path = exported
    queries = training[3]
    assert _signature(path) == mean_signature  # serving feeds the same arrays as with mean pooling
    assert not (path / WEIGHTS_FILE).exists()  # no numpy forward for these poolings: the SavedModel serves
    tower = load_query_tower(path)
    assert isinstance(tower, QueryTower)
    served = tower(query_inputs(queries, tower.inputs))
    assert served.shape == (len(queries), FEW_STEPS.output_dim)
    assert np.abs(served - model.query_embeddings(queries)).max() < 1e-5


def test_shared_history_table_is_the_item_video_table(exported):
    case, model, _ = exported
    query_variables = {id(v) for v in model.model.query_encoder.trainable_variables}
    item_video_table = _video_table(model.model.candidate_encoder.blocks[0]).embeddings
    assert item_video_table.shape[1] == FEW_STEPS.feature_dim
    shared = CASES[case].get("share_history_embeddings", True)
    assert (id(item_video_table) in query_variables) == shared


def test_attention_masks_padding_and_pools_an_empty_history_to_zeros():
    pooling = HistoryAttention(length=5, dim=8, cardinality=50, heads=2, layers=1)
    ids = tf.constant([[7, 3, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=tf.int64)
    before = pooling(ids).numpy()
    table = pooling.embeddings.embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], tf.fill([1, 8], 9.0)))  # scramble padding's row
    after = pooling(ids).numpy()
    np.testing.assert_allclose(after, before, atol=1e-6)
    np.testing.assert_array_equal(after[1], np.zeros(8, dtype=np.float32))
    assert np.abs(after[0]).max() > 0


def test_masked_mean_is_the_mean_of_the_real_videos_only():
    pooling = HistoryMean(length=5, dim=8, cardinality=50)
    ids = tf.constant([[7, 3, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=tf.int64)
    pooled = pooling(ids).numpy()
    table = pooling.embeddings.embeddings.numpy()
    np.testing.assert_allclose(pooled[0], (table[7] + table[3]) / 2, atol=1e-6)
    np.testing.assert_array_equal(pooled[1], np.zeros(8, dtype=np.float32))


@pytest.mark.parametrize(
    "bad",
    [
        {"history_pooling": "lstm"},
        {"negatives": "uniform"},
        {"sampled_negatives": 0},
        {"attention_heads": 0},
        {"attention_layers": -1},
    ],
)
def test_bad_option_values_fail_before_training(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TwoTowerConfig(**bad)
