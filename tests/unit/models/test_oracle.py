"""The synthetic oracle is the generator's own formula: its exposure probabilities are a distribution over
the world's videos that the generated feeds follow, its view probabilities match the generated view rate,
and a ground truth saved before the feed model was kept still loads (without it)."""

import numpy as np
import pandas as pd
import pytest

from reels.models.evaluation.offline import synthetic_exposure_probability, synthetic_view_probability
from reels.workflows.config import SyntheticConfig
from reels.workflows.synthetic import USER_ID_BASE, VIDEO_ID_BASE, GroundTruth, SyntheticReels

WORLD = SyntheticConfig(seed=5, n_events=30_000, n_users=300, n_creators=80, n_videos=1_000, n_days=4)
DAY = 2


@pytest.fixture(scope="module")
def world() -> tuple[SyntheticReels, pd.DataFrame]:
    reels = SyntheticReels(WORLD)
    days = list(reels.days())
    return reels, days[DAY]


def test_exposure_is_a_distribution_the_generated_feeds_follow(world):
    reels, day = world
    every_video = np.arange(len(reels.video_creator))
    users = day["user_id"].to_numpy() - USER_ID_BASE
    distinct, impressions = np.unique(users, return_counts=True)
    shown = synthetic_exposure_probability(reels.truth, distinct, DAY, every_video)
    np.testing.assert_allclose(shown.sum(axis=1), 1.0, rtol=1e-9)
    expected = impressions @ shown  # impressions per video the formula predicts for this day's users
    observed = np.bincount(day["video_id"].to_numpy() - VIDEO_ID_BASE, minlength=len(every_video))
    assert (expected[observed > 0] > 0).all()  # nothing was shown that it calls impossible
    # Total variation between the predicted and the generated spread of impressions over videos: what
    # is left is sampling noise (a popularity-only guess is much further off).
    distance = 0.5 * np.abs(expected / expected.sum() - observed / observed.sum()).sum()
    popular_only = reels.video_popularity * (reels.truth.video_upload_day < DAY)
    baseline = 0.5 * np.abs(popular_only / popular_only.sum() - observed / observed.sum()).sum()
    assert distance < 0.25 * baseline


def test_view_probability_matches_the_generated_view_rate(world):
    reels, day = world
    users = day["user_id"].to_numpy() - USER_ID_BASE
    videos = day["video_id"].to_numpy() - VIDEO_ID_BASE
    distinct, row = np.unique(users, return_inverse=True)
    shown = synthetic_exposure_probability(reels.truth, distinct, DAY, videos)
    viewed = synthetic_view_probability(reels.truth, distinct, DAY, videos)
    # P(view | shown) of each impression's own (user, video), averaged over feed positions.
    columns = np.arange(len(videos))
    predicted = viewed[row, columns] / shown[row, columns]
    observed = (day["watch_time_s"] / day["video_duration_s"]).to_numpy() >= 0.5
    assert predicted.mean() == pytest.approx(observed.mean(), abs=0.015)
    # ...and it ranks impressions: the ones it calls likely are viewed far more often.
    likely = predicted > np.quantile(predicted, 0.8)
    unlikely = predicted < np.quantile(predicted, 0.2)
    assert observed[likely].mean() > 2 * observed[unlikely].mean()


def test_a_ground_truth_saved_before_the_feed_model_still_loads(world, tmp_path):
    reels, _ = world
    truth = reels.truth
    assert truth.has_feed_model
    older = GroundTruth(
        truth.taste_start, truth.taste_end, truth.favourite_creators, truth.video_quality,
        truth.video_category, truth.video_creator, truth.category_trend,
    )  # fmt: skip
    older.save(tmp_path / "old.npz")
    loaded = GroundTruth.load(tmp_path / "old.npz")
    assert not loaded.has_feed_model and loaded.personalised_share is None
    truth.save(tmp_path / "new.npz")
    again = GroundTruth.load(tmp_path / "new.npz")
    assert again.has_feed_model and again.position_bias == WORLD.position_bias
    np.testing.assert_array_equal(again.video_popularity, truth.video_popularity)
