import numpy as np
import pandas as pd
import pytest

from reels.workflows.config import SyntheticConfig
from reels.workflows.schema import EVENTS, USERS, VIDEOS
from reels.workflows.synthetic import CATEGORIES, GroundTruth, SyntheticReels
from reels.workflows.validate import validate

SMALL = SyntheticConfig(seed=3, n_events=60_000, n_users=1_500, n_creators=200, n_videos=3_000, n_days=8)


def _events(config: SyntheticConfig) -> pd.DataFrame:
    return pd.concat(list(SyntheticReels(config).days()), ignore_index=True)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return _events(SMALL)


@pytest.fixture(scope="module")
def world() -> SyntheticReels:
    return SyntheticReels(SMALL)


def test_same_seed_same_data(events):
    again = _events(SMALL)
    pd.testing.assert_frame_equal(events, again)


def test_other_seed_other_data(events):
    other = _events(SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not events["video_id"].head(1000).equals(other["video_id"].head(1000))


def test_tables_conform_to_the_schema(events, world):
    validate(events, EVENTS)
    validate(world.users(), USERS)
    validate(world.videos(), VIDEOS)
    assert events["event_id"].is_unique
    assert len(events) <= SMALL.n_events and len(events) > 0.99 * SMALL.n_events


def test_events_reference_known_users_and_videos(events, world):
    assert events["user_id"].isin(world.users()["user_id"]).all()
    videos = world.videos().set_index("video_id")
    assert events["video_id"].isin(videos.index).all()
    assert (videos.loc[events["video_id"], "creator_id"].to_numpy() == events["creator_id"].to_numpy()).all()


def test_video_popularity_is_heavy_tailed(events):
    counts = events["video_id"].value_counts().to_numpy()
    top_share = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top_share > 0.15, f"top 1% of videos get only {top_share:.1%} of impressions"
    assert counts[0] > 20 * np.median(counts)


def test_position_bias_lowers_watching(events):
    by_position = (
        (events["watch_time_s"] / events["video_duration_s"]).clip(upper=1).groupby(events["position"]).mean()
    )
    assert by_position.loc[0] - by_position.loc[10] > 0.03
    assert np.corrcoef(by_position.loc[:15].index, by_position.loc[:15].to_numpy())[0, 1] < -0.9


def _category_shift(config: SyntheticConfig) -> float:
    world = SyntheticReels(config)
    frame = pd.concat(list(world.days()), ignore_index=True)
    category = world.video_category[frame["video_id"].to_numpy() - 5_000_000]
    day = (frame["timestamp"] - pd.Timestamp(config.start)).dt.days.to_numpy()
    first = np.bincount(category[day < 2], minlength=len(CATEGORIES)) + 1.0
    last = np.bincount(category[day >= config.n_days - 2], minlength=len(CATEGORIES)) + 1.0
    p, q = first / first.sum(), last / last.sum()
    return float(np.sum((p - q) * np.log(p / q)))  # population stability index


def test_drift_is_present_and_controlled_by_config():
    drifting = _category_shift(SMALL)
    stationary = _category_shift(SyntheticConfig(**{**SMALL.__dict__, "drift": 0.0, "trend_amplitude": 0.0}))
    assert drifting > 0.05
    assert drifting > 3 * stationary


def test_new_videos_arrive_daily_and_only_after_upload(events, world):
    videos = world.videos().set_index("video_id")
    uploaded = videos.loc[events["video_id"], "upload_time"].to_numpy()
    assert (uploaded <= events["timestamp"].to_numpy()).all()
    fresh = videos["upload_time"] >= pd.Timestamp(SMALL.start)
    assert fresh.sum() == SMALL.new_videos_per_day * SMALL.n_days
    assert events["video_id"].isin(videos.index[fresh]).mean() > 0.02


def test_affinity_drives_engagement(events, world):
    truth = world.truth
    user = events["user_id"].to_numpy() - 100_000
    category = truth.video_category[events["video_id"].to_numpy() - 5_000_000]
    taste = truth.taste_start[user, category]
    high = taste > np.quantile(taste, 0.8)
    low = taste < np.quantile(taste, 0.2)
    assert events["liked"][high].mean() > 1.5 * events["liked"][low].mean()
    assert events["skipped"][low].mean() > events["skipped"][high].mean()


def test_ground_truth_round_trips(world, tmp_path):
    path = tmp_path / "truth.npz"
    world.truth.save(path)
    loaded = GroundTruth.load(path)
    np.testing.assert_array_equal(loaded.taste_end, world.truth.taste_end)
    assert loaded.taste_start.shape == (SMALL.n_users, len(CATEGORIES))


def test_bad_config_fails_early():
    with pytest.raises(ValueError, match="n_events"):
        SyntheticConfig(n_events=0)
