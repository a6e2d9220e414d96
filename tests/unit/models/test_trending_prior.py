"""The two-tower's retrieval priors: the trending prior, one more index column (weight x log(1 + recent
views)) that the query meets with a 1, and the category affinity, one column per category (weight x the
item's one-hot category) that the query meets with its history's log category shares; FAISS ranks by
two-tower score + priors. The served retrieval step, the offline scorer, the promotion gate and the
validation tuning all rank the same way, and without a prior nothing changes."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from reels.models import baselines, metrics
from reels.models.baselines import recent_popularity
from reels.models.config import IndexConfig, RankerConfig, TwoTowerConfig
from reels.models.evaluation.gate import score_version
from reels.models.evaluation.offline import _two_tower_scorer, build_queries
from reels.models.evaluation.tradeoff import window_feeds
from reels.models.evaluation.tune import markdown, tune_two_tower
from reels.models.index import CategoryAffinity, index_vectors, load_index, query_vectors, trending_prior
from reels.models.serving.catalog import Catalog, video_metadata
from reels.models.serving.config import ServingConfig
from reels.models.train import train
from reels.workflows.errors import ConfigError
from reels.workflows.offline_store import OfflineStore
from reels.workflows.spec import HISTORY

FAST_TWO_TOWER = TwoTowerConfig(epochs=1, batch_size=512, output_dim=16, feature_dim=8, hidden_units=(32,))
FAST_RANKER = RankerConfig(epochs=1, batch_size=1024, expert_units=(8,), tower_units=(8,), num_experts=2)


def test_recent_popularity_counts_the_last_days_views_of_catalog_videos():
    day = 86_400
    events = pd.DataFrame(
        {
            "event_time": [0, 2 * day, 2 * day + 5, 2 * day + 9, 2 * day + 10, 2 * day + 11],
            "raw_video_id": [5, 5, 7, 9, 5, 42],  # 42 is not in the catalog
            "view": [1, 1, 1, 1, 0, 1],
        }
    )
    np.testing.assert_array_equal(recent_popularity(events, np.array([9, 5, 7, 3]), 1), [1, 1, 1, 0])
    np.testing.assert_array_equal(recent_popularity(events, np.array([9, 5, 7, 3]), 3), [1, 2, 1, 0])


def test_an_index_with_the_prior_column_adds_the_prior_to_the_dot_product():
    rng = np.random.default_rng(0)
    items, query = rng.normal(size=(6, 4)), rng.normal(size=(2, 4))
    views = np.array([0, 1, 3, 10, 0, 100])
    prior = trending_prior(views, 0.5)
    vectors = index_vectors(items, prior)
    assert vectors.shape == (6, 5) and trending_prior(views, 0.0) is None
    scores = query_vectors(vectors.shape[1], query) @ vectors.T
    np.testing.assert_allclose(scores, query @ items.T + 0.5 * np.log1p(views), rtol=1e-5)
    assert query_vectors(4, query).shape == (2, 4)  # an index without the column takes the query as it is
    with pytest.raises(ConfigError, match="trending_prior"):
        TwoTowerConfig(trending_prior=-1.0)


@pytest.mark.parametrize("category_prior", [0.0, 4.0])
def test_served_retrieval_and_the_offline_scorer_rank_by_score_plus_prior(
    tiny_features, tmp_path, category_prior
):
    config = replace(FAST_TWO_TOWER, trending_prior=2.0, category_prior=category_prior)
    trained = train(tiny_features, tmp_path, config, FAST_RANKER, IndexConfig())
    index = load_index(trained.directory / "items.faiss")
    stored = pd.read_parquet(trained.directory / "item_embeddings.parquet")
    if category_prior:
        n_categories = pd.read_parquet(tiny_features.videos_path)["category"].nunique()
        assert trained.affinity is not None and trained.affinity.n_categories == n_categories > 1
        assert index.d == config.output_dim + 1 + n_categories
        np.testing.assert_array_equal(stored["category_row"], trained.affinity.item_rows)
    else:
        assert trained.affinity is None and "category_row" not in stored
        assert index.d == config.output_dim + 1
    train_rows = tiny_features.read_split("train")
    views = recent_popularity(train_rows, trained.item_ids, config.trending_prior_days)
    assert views.max() > 0
    np.testing.assert_allclose(stored["trending_prior"], 2.0 * np.log1p(views), rtol=1e-5)
    np.testing.assert_allclose(trained.retrieval_prior, 2.0 * np.log1p(views), rtol=1e-5)

    # The serving step's candidates and scores are the offline scorer's, prior included.
    feeds, _ = window_feeds(
        tiny_features, trained.directory, "valid", ServingConfig(fresh_candidates=0), use_ranker=False
    )
    queries = build_queries(train_rows, tiny_features.read_split("valid"), trained.item_ids)
    assert list(feeds.user_ids) == list(queries.frame["raw_user_id"])
    offline = _two_tower_scorer(trained, queries)(np.arange(len(queries.frame)))
    position = {int(v): i for i, v in enumerate(trained.item_ids)}
    for u in range(min(len(feeds), 20)):
        top = [position[int(v)] for v in feeds.candidates[u][:10]]
        np.testing.assert_allclose(feeds.scores[u][:10], offline[u, top], rtol=1e-3, atol=1e-3)
        assert np.all(np.diff(feeds.scores[u][:10]) <= 1e-5)

    # The promotion gate scores the version's test window with the prior too: the offline scorer's recall.
    test_queries = build_queries(
        pd.concat([train_rows, tiny_features.read_split("valid")], ignore_index=True),
        tiny_features.read_split("test"),
        trained.item_ids,
    )
    top = baselines.top_k(
        _two_tower_scorer(trained, test_queries), len(test_queries.frame), test_queries.seen, 20
    )
    offline_recall = metrics.retrieval_metrics(top, test_queries.relevant, [20])["recall@20"]
    gated = score_version(trained.directory, tiny_features, trained.item_ids)
    assert gated["recall@20"] == pytest.approx(offline_recall, abs=0.003)

    # A release step's artifacts hold the version's item rows but no manifest: the served query side
    # needs none, and meets the index with the same history shares.
    step = tmp_path / "step_artifacts"
    step.mkdir()
    shutil.copy(trained.directory / "item_embeddings.parquet", step)
    catalog = Catalog(step, video_metadata(OfflineStore(tiny_features.manifest().store)))
    if category_prior:
        histories = queries.frame[HISTORY]
        np.testing.assert_array_equal(
            catalog.affinity.query_columns(histories), trained.affinity.query_columns(histories)
        )
    else:
        assert catalog.affinity is None


def test_a_version_without_the_prior_keeps_the_plain_index(tiny_models):
    assert tiny_models.retrieval_prior is None
    assert load_index(tiny_models.directory / "items.faiss").d == tiny_models.item_embeddings.shape[1]
    assert "trending_prior" not in pd.read_parquet(tiny_models.directory / "item_embeddings.parquet")


def test_tuning_rescores_each_trained_two_tower_with_every_prior(tiny_features):
    result = tune_two_tower(tiny_features, FAST_TWO_TOWER, grid=({},), priors=(0.5, 1.0))
    rows = result["rows"]
    assert [r["candidate"] for r in rows] == [
        "popularity",
        {},
        {"trending_prior": 0.5},
        {"trending_prior": 1.0},
    ]
    assert [r.get("rescored", False) for r in rows[1:]] == [False, True, True]
    assert all(0.0 <= r["valid_recall@20"] <= 1.0 for r in rows)


def test_reels_tune_takes_the_priors_and_the_configured_two_tower_alone():
    from reels.client.cli import build_parser

    args = build_parser().parse_args(["tune", "synthetic", "--configured", "--trending-priors", "0.5", "1"])
    assert args.configured and args.trending_priors == [0.5, 1.0]
    assert build_parser().parse_args(["tune", "synthetic"]).trending_priors == []
    args = build_parser().parse_args(
        ["tune", "movielens", "--trending-priors", "1", "--trending-prior-days", "1", "7"]
    )
    assert args.trending_prior_days == [1.0, 7.0]


def test_each_prior_weight_is_scored_over_each_window():
    from reels.models.evaluation.tune import prior_grid

    assert prior_grid((1.0, 2.0), (1, 7)) == [
        {"trending_prior": 1.0, "trending_prior_days": 1}, {"trending_prior": 2.0, "trending_prior_days": 1},
        {"trending_prior": 1.0, "trending_prior_days": 7}, {"trending_prior": 2.0, "trending_prior_days": 7},
    ]  # fmt: skip
    assert prior_grid((0.5,)) == [{"trending_prior": 0.5}]  # no windows given: the configured one
    assert prior_grid(()) == []


def test_reels_tune_refuses_prior_days_without_weights(capsys):
    from reels.client.cli import main

    assert main(["tune", "synthetic", "--trending-prior-days", "7"]) != 0
    assert "--trending-prior-days needs --trending-priors" in capsys.readouterr().err


def test_category_affinity_is_the_smoothed_log_share_of_each_category_in_the_history():
    # Encoded ids 3..5 are catalog videos; 2 (out of vocabulary) has no one category.
    affinity = CategoryAffinity.of(np.array([3, 4, 5, 2]), np.array(["drama", "news", "drama", "sport"]), 2.0)
    assert affinity.n_categories == 3 and list(affinity.item_rows) == [0, 1, 0, 2]
    assert list(affinity.lookup[:3]) == [-1, -1, -1]
    assert CategoryAffinity.of(np.array([3]), np.array(["drama"]), 0.0) is None
    histories = np.array([[3, 5, 4, 0], [0, 0, 0, 0], [2, 1, 99, 4]])  # padding, null, OOV, unknown skipped
    shares = np.exp(affinity.query_columns(histories))
    np.testing.assert_allclose(shares[0], [3 / 6, 2 / 6, 1 / 6], rtol=1e-6)  # add-one smoothing
    np.testing.assert_allclose(shares[1], [1 / 3] * 3, rtol=1e-6)  # an empty history is uniform
    np.testing.assert_allclose(shares[2], [1 / 4, 2 / 4, 1 / 4], rtol=1e-6)
    # In the index: the inner product adds weight x log share of the item's category, after the prior.
    rng = np.random.default_rng(0)
    items, query = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    prior = np.array([0.5, 0.0, 1.0, 2.0], dtype=np.float32)
    for with_prior in (prior, None):
        vectors = index_vectors(items, with_prior, affinity)
        scores = query_vectors(vectors.shape[1], query, affinity.query_columns(histories)) @ vectors.T
        expected = query @ items.T + (0 if with_prior is None else prior)
        expected = expected + 2.0 * np.log(shares)[:, affinity.item_rows]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="category_prior"):
        TwoTowerConfig(category_prior=-1.0)


def test_tuning_rescores_with_the_category_affinity_too(tiny_features):
    result = tune_two_tower(
        tiny_features, FAST_TWO_TOWER, grid=({},), priors=(1.0,), category_priors=(0.0, 2.0)
    )
    rows = {str(r["candidate"]): r["valid_recall@20"] for r in result["rows"]}
    assert list(rows) == [
        "popularity", "{}", "{'trending_prior': 1.0}",
        "{'category_prior': 0.0}", "{'trending_prior': 1.0, 'category_prior': 0.0}",
        "{'category_prior': 2.0}", "{'trending_prior': 1.0, 'category_prior': 2.0}",
    ]  # fmt: skip
    # A weight of 0 adds nothing: the same recall as without the affinity.
    assert rows["{'category_prior': 0.0}"] == rows["{}"]
    assert rows["{'trending_prior': 1.0, 'category_prior': 0.0}"] == rows["{'trending_prior': 1.0}"]
    assert all(0.0 <= r <= 1.0 for r in rows.values())


def test_tuning_refines_the_best_prior_and_marks_those_rows(tiny_features):
    result = tune_two_tower(
        tiny_features, FAST_TWO_TOWER, grid=({},), priors=(1.0,), category_priors=(2.0,),
        refine_rounds=1, refine_factor=2.0,
    )  # fmt: skip
    rows = result["rows"][1:]
    grid, refined = rows[:4], rows[4:]
    assert not any(r.get("refined") for r in grid) and all(r["refined"] and r["rescored"] for r in refined)
    start = max(grid[1:], key=lambda r: r["valid_recall@20"])["candidate"]  # the best with a weight set
    steps = [{k: v for k, v in start.items() if k != key} | {key: start[key] * f}
             for key in ("trending_prior", "category_prior") if key in start for f in (2.0, 0.5)]  # fmt: skip
    assert [r["candidate"] for r in refined] == steps  # one round: each weight set, x and / 2
    assert "| refined |" in markdown(result, "### t")
    best = max(rows, key=lambda r: r["valid_recall@20"])
    assert result["best"] == best["candidate"]


def test_reels_tune_refuses_negative_refine_rounds(capsys):
    from reels.client.cli import main

    assert main(["tune", "synthetic", "--refine-rounds", "-1"]) != 0
    assert "--refine-rounds: expected 0 or more" in capsys.readouterr().err
