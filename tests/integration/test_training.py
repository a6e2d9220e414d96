"""Real Merlin Models training on tiny real features (the session fixture ``tiny_models``): beats chance,
exports faithfully, indexes well. Slow (the training alone is about a minute on 2 cores), so it runs with the
real-component tests."""

import json

import numpy as np
import pandas as pd
import pytest

from reels.models import baselines, metrics
from reels.models.config import IndexConfig
from reels.models.evaluation.offline import build_queries
from reels.models.index import build_and_measure, load_index
from reels.models.ranker import ExportedRanker
from reels.models.ranker_numpy import NumpyRanker
from reels.models.registry import check_manifest
from reels.models.two_tower import QueryTower, query_inputs
from tests.conftest import TINY_RANKER, TINY_TWO_TOWER

TT, RK = TINY_TWO_TOWER, TINY_RANKER


@pytest.fixture(scope="module")
def trained(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def valid_queries(tiny_features, trained):
    train_rows = tiny_features.read_split("train")
    valid = tiny_features.read_split("valid")
    return build_queries(train_rows, valid, trained.item_ids)


def test_two_tower_beats_random_on_held_out_users(trained, valid_queries):
    q = valid_queries
    assert len(q.frame) > 50
    tt_scores = baselines.embedding_scorer(
        trained.two_tower.query_embeddings(q.frame), trained.item_embeddings
    )
    top_tt = baselines.top_k(tt_scores, len(q.frame), q.seen, 20)
    top_random = baselines.top_k(baselines.random_scorer(len(trained.item_ids), 0), len(q.frame), q.seen, 20)
    tt = metrics.retrieval_metrics(top_tt, q.relevant, [20])["recall@20"]
    chance = metrics.retrieval_metrics(top_random, q.relevant, [20])["recall@20"]
    assert tt > 3 * chance + 0.01, (tt, chance)


def test_recommendations_never_include_seen_videos(trained, valid_queries):
    q = valid_queries
    scorer = baselines.embedding_scorer(trained.two_tower.query_embeddings(q.frame), trained.item_embeddings)
    top = baselines.top_k(scorer, len(q.frame), q.seen, 20)
    for row, seen in zip(top, q.seen, strict=True):
        assert not set(row) & set(seen)


def test_ranker_beats_chance_on_the_test_window(trained, tiny_features):
    test = tiny_features.read_split("test")
    predictions = trained.ranker.predict(test)
    for task in ("view", "liked", "completed"):
        auc = metrics.binary_metrics(test[task].to_numpy(), predictions[task])["auc"]
        assert auc > 0.6, (task, auc)
    assert (
        metrics.rmse(test["watch_fraction"].to_numpy(), predictions["watch_fraction"])
        < test["watch_fraction"].std()
    )


def test_exported_query_tower_reproduces_the_trained_one(trained, tiny_features):
    rows = tiny_features.read_split("test").head(64)
    tower = QueryTower(trained.directory / "query_tower")
    exported = tower(query_inputs(rows, tower.inputs))
    np.testing.assert_allclose(exported, trained.two_tower.query_embeddings(rows), rtol=1e-5, atol=1e-6)


def test_exported_ranker_reproduces_the_trained_one(trained, tiny_features):
    rows = tiny_features.read_split("test").head(64)
    ranker = ExportedRanker(trained.directory / "ranker")
    assert "position" not in ranker.inputs  # the position-bias tower is training-only
    exported = ranker(query_inputs(rows, ranker.inputs))
    in_memory = trained.ranker.predict(rows)
    for key in ("view", "liked", "completed", "watch_fraction", "score"):
        np.testing.assert_allclose(exported[key], in_memory[key], rtol=1e-5, atol=1e-6)
    expected = sum(w * in_memory[t] for t, w in RK.score_weights.items())
    np.testing.assert_allclose(exported["score"], expected, rtol=1e-5)


def test_models_read_the_rate_features(trained, tiny_features):
    # The smoothed like/completion/watch rates reach the ranker as float32 inputs (changing them changes
    # its predictions); the two-tower leaves them out by choice (models/inputs.py RATE_FEATURES).
    rows = tiny_features.read_split("test").head(64)
    user_rates = ["user_like_rate", "user_completion_rate", "user_watch_fraction"]
    video_rates = ["video_like_rate", "video_completion_rate", "video_watch_fraction"]
    flipped = rows.assign(**{c: (1.0 - rows[c]).astype(np.float32) for c in user_rates + video_rates})
    before, after = trained.ranker.predict(rows), trained.ranker.predict(flipped)
    for task in ("view", "liked", "completed", "watch_fraction"):
        assert np.abs(before[task] - after[task]).max() > 1e-4, task
    exported = ExportedRanker(trained.directory / "ranker")
    assert {exported.inputs[c].dtype.name for c in user_rates + video_rates} == {"float32"}
    served = NumpyRanker(trained.directory / "ranker")  # the serving default reads them too
    served_before = served(query_inputs(rows, served.inputs))["score"]
    served_after = served(query_inputs(flipped, served.inputs))["score"]
    np.testing.assert_allclose(served_after, after["score"], rtol=1e-4, atol=1e-5)
    assert np.abs(served_before - served_after).max() > 1e-4
    tower = trained.two_tower
    np.testing.assert_array_equal(tower.query_embeddings(rows), tower.query_embeddings(flipped))
    np.testing.assert_array_equal(tower.item_embeddings(rows), tower.item_embeddings(flipped))


def test_item_embeddings_and_index_cover_the_catalog(trained, tiny_features):
    catalog = pd.read_parquet(tiny_features.videos_path)
    stored = pd.read_parquet(trained.directory / "item_embeddings.parquet")
    assert list(stored["raw_video_id"]) == list(catalog["raw_video_id"])
    index = load_index(trained.directory / "items.faiss")
    assert index.ntotal == len(catalog)
    _, found = index.search(trained.item_embeddings[:5], 1)
    assert set(found[:, 0]) <= set(catalog["raw_video_id"])


def test_approximate_indexes_keep_recall_on_trained_embeddings(trained, valid_queries):
    queries = trained.two_tower.query_embeddings(valid_queries.frame)
    config = IndexConfig(ivf_lists=16, ivf_nprobe=8, hnsw_ef_search=256, recall_k=20)
    for kind, floor in (("ivf", 0.85), ("hnsw", 0.9)):
        _, report = build_and_measure(trained.item_embeddings, trained.item_ids, queries, config, kind=kind)
        assert report.recall_at_k >= floor, (kind, report.recall_at_k)


def test_manifest_records_what_reproduces_the_models(trained, tiny_features):
    manifest = json.loads((trained.directory / "manifest.json").read_text())
    assert manifest["version"] == int(trained.directory.name)
    assert manifest["features"]["store_fingerprint"] == tiny_features.manifest().store_fingerprint
    assert {c["name"] for c in manifest["schema"]} >= {"user_id", "video_id", "history_video_ids"}
    assert manifest["config"]["two_tower"]["output_dim"] == TT.output_dim
    assert manifest["metrics"]["two_tower"]["examples_per_s"] > 0
    assert {"tensorflow-cpu", "merlin-models", "faiss-cpu", "nvtabular"} <= set(manifest["libraries"])
    assert check_manifest(trained.directory)["version"] == manifest["version"]
