"""The feed score: the ranker's score blended with the two-tower's (serving setting ``retrieval_weight``),
on hand-made scores and through the real serving steps of the tiny trained version, also per A/B variant."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from reels.feature_store.encoding import RequestEncoder
from reels.models.evaluation.tradeoff import (
    CONFIGURED_FEED,
    _served,
    best_blend,
    blend_sweep,
    feed_metrics,
    markdown,
    no_rerank,
    tradeoff_of_version,
    window_feeds,
)
from reels.models.ranker_numpy import load_ranker
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.models.serving.ranking import Ranking, aligned, blend
from reels.models.serving.request import QUERY_USER_FIELDS, Fallback, QueryFeatures
from reels.models.serving.rerank import DiversityRerank
from reels.models.serving.video_table import VideoTable
from reels.models.two_tower import query_inputs
from reels.workflows.errors import ConfigError
from reels.workflows.spec import REQUEST_CONTEXT


def test_weight_zero_is_the_ranker_alone_and_a_large_weight_the_two_tower_order():
    ranker = np.array([0.9, 0.1, 0.5, 0.3], dtype=np.float32)
    retrieval = np.array([1.0, 4.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(blend(ranker, retrieval, 0.0), ranker)
    assert list(np.argsort(-blend(ranker, retrieval, 1000.0))) == list(np.argsort(-retrieval))
    # Equal weight: standardised sums, whatever the two scales are.
    mixed = blend(ranker, retrieval * 100 + 7, 1.0)
    expected = (ranker - ranker.mean()) / ranker.std() + (retrieval - retrieval.mean()) / retrieval.std()
    np.testing.assert_allclose(mixed, expected, rtol=1e-5)
    # One candidate, or all scores equal: finite, no division by zero.
    assert np.isfinite(blend(np.array([0.4]), np.array([2.0]), 4.0)).all()
    assert np.isfinite(blend(np.full(3, 0.5), np.full(3, 1.0), 4.0)).all()


def test_scores_follow_their_ids_when_a_video_read_drops_some():
    candidates = np.array([40, 10, 30, 20], dtype=np.int64)
    scores = np.array([4.0, 1.0, 3.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(aligned(candidates, scores, np.array([10, 20])), [1.0, 2.0])
    np.testing.assert_array_equal(aligned(candidates, scores, candidates), scores)


def test_a_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="retrieval_weight"):
        ServingConfig(retrieval_weight=-1.0)


def test_served_feeds_are_scored_by_the_blend_and_the_sweep_reaches_both_ends(tiny_features, tiny_models):
    base = replace(ServingConfig(), retrieval_weight=2.0)
    feeds, catalog = window_feeds(tiny_features, tiny_models.directory, "valid", base)
    assert len(feeds) > 0
    for u in range(len(feeds)):
        np.testing.assert_array_equal(
            feeds.scores[u], blend(feeds.ranker_scores[u], feeds.retrieval_scores[u], 2.0)
        )
    retrieval_only, _ = window_feeds(tiny_features, tiny_models.directory, "valid", base, use_ranker=False)
    rows = {row["retrieval_weight"]: row for row in blend_sweep(feeds, catalog, base, weights=(0.0, 1e9))}
    # An overwhelming weight ranks as the two-tower does; the two-tower row is the retrieval order itself.
    assert rows[1e9]["recall@20"] == pytest.approx(rows[None]["recall@20"])
    plain = DiversityRerank(catalog, no_rerank(base))
    two_tower = feed_metrics(_served(plain, retrieval_only, 20), retrieval_only, catalog)
    assert two_tower["recall@20"] == pytest.approx(rows[None]["recall@20"])
    assert 0.0 <= rows[0.0]["recall@20"] <= 1.0


def test_an_experiment_variant_sets_its_own_feed_score(tiny_features, tiny_models):
    experiment = Experiment(
        name="feed-score", salt="t",
        variants={"control": {"weight": 0.5}, "blend": {"weight": 0.5, "retrieval_weight": 4}},
    )  # fmt: skip
    ranker = load_ranker(tiny_models.directory / "ranker")
    videos, encoder = VideoTable.from_features(tiny_features), RequestEncoder(tiny_features.workflow_dir)
    alone = Ranking(videos, ranker, encoder)
    tested = Ranking(videos, ranker, encoder, experiment=experiment)
    users = range(1, 201)
    variants = {u: experiment.assign(u) for u in users}
    assert set(variants.values()) == {"control", "blend"}
    assert all(tested.weight_for(u) == (4.0 if variants[u] == "blend" else 0.0) for u in users)
    assert tested.weight_for(None) == 0.0  # no user id: the configured weight

    row = tiny_features.read_split("valid").head(1)
    query = QueryFeatures(
        features=query_inputs(row, QUERY_USER_FIELDS + REQUEST_CONTEXT),
        seen=np.array([], dtype=np.int64), fallback=Fallback.NONE,
        request_time_s=int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp()),
    )  # fmt: skip
    candidates = pd.read_parquet(tiny_features.videos_path)["raw_video_id"].to_numpy()[:100]
    retrieval = np.random.default_rng(0).random(len(candidates)).astype(np.float32)
    ids, ranker_scores, _, _ = alone(query, candidates, retrieval)
    for variant in ("control", "blend"):
        user = next(u for u in users if variants[u] == variant)
        got_ids, scores, _, _ = tested(query, candidates, retrieval, user)
        np.testing.assert_array_equal(got_ids, ids)
        expected = (
            blend(ranker_scores, aligned(candidates, retrieval, ids), 4.0)
            if variant == "blend"
            else ranker_scores
        )
        np.testing.assert_array_equal(scores, expected)
    with pytest.raises(ConfigError, match="retrieval_weight"):
        Experiment(variants={"control": {}, "bad": {"retrieval_weight": -1.0}})


def test_the_best_blend_is_the_feed_score_with_the_best_recall():
    rows = [
        {"retrieval_weight": 0.0, "recall@20": 0.07},
        {"retrieval_weight": 1.0, "recall@20": 0.18},
        {"retrieval_weight": 2.0, "recall@20": 0.18},  # a tie keeps the smaller weight
        {"retrieval_weight": None, "recall@20": 0.30},  # the two-tower alone is not a feed score
    ]
    assert best_blend(rows) == 1.0


@pytest.mark.parametrize("pick", [True, False])
def test_the_tradeoff_reranks_on_the_feed_score_picked_on_validation(tiny_features, tiny_models, pick):
    base = replace(ServingConfig(), retrieval_weight=0.3)  # not a weight of the sweep: a pick moves it
    result = tradeoff_of_version(
        tiny_features, tiny_models.directory, base, grid={"mmr_lambda": (1.0, 0.5)}, pick_feed_score=pick
    )
    proto = result["_protocol"]
    weight = best_blend(result["feed_score"]) if pick else 0.3
    assert proto["retrieval_weight"] == weight and proto["configured_retrieval_weight"] == 0.3
    assert proto["feed_score_picked"] is pick
    assert ("picked on this table" in markdown(result, "tiny")) is pick
    # The test window also serves the configured feed score's ranked order where validation moved it.
    assert (CONFIGURED_FEED in result["test"]) is pick
    assert (f"no re-rank/{CONFIGURED_FEED}" in result["_ratios"]) is pick
    if pick:  # the re-rank's baseline is the ranked order at the picked weight: its feed-score row
        blend_row = next(r for r in result["feed_score"] if r["retrieval_weight"] == weight)
        assert result["validation"][0]["recall@20"] == pytest.approx(blend_row["recall@20"])
        test_feeds, catalog = window_feeds(tiny_features, tiny_models.directory, "test", base)
        configured = feed_metrics(
            _served(DiversityRerank(catalog, no_rerank(base)), test_feeds, 20), test_feeds, catalog
        )
        assert result["test"][CONFIGURED_FEED]["recall@20"] == pytest.approx(configured["recall@20"])
