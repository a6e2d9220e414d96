import numpy as np
import pytest

from reels.workflows.movielens import fetch_movielens, load_movielens
from reels.workflows.schema import EVENTS, USERS, VIDEOS
from reels.workflows.validate import validate


@pytest.fixture(scope="module")
def tables():
    return load_movielens(fetch_movielens())


def test_sizes_match_movielens_100k(tables):
    assert len(tables["events"]) == 100_000
    assert len(tables["users"]) == 943
    assert len(tables["videos"]) == 1_682


def test_tables_conform_to_the_schema(tables):
    validate(tables["events"], EVENTS)
    validate(tables["users"], USERS)
    validate(tables["videos"], VIDEOS)


def test_rating_mapping(tables):
    events = tables["events"]
    rating = events["watch_time_s"] / events["video_duration_s"] * 5
    np.testing.assert_allclose(rating, np.round(rating), atol=1e-4)
    assert (events["liked"] == (rating >= 3.999)).all()
    assert (events["completed"] == (rating >= 4.999)).all()
    assert (events["skipped"] == (rating <= 2.001)).all()
    assert (events["hidden"] == (rating <= 1.001)).all()
    assert not events["shared"].any()


def test_creators_come_from_directors(tables):
    videos = tables["videos"]
    assert (videos["creator_id"] > 0).mean() > 0.9
    # Hitchcock directed several films in ml-100k: directors must group films.
    assert videos.loc[videos["creator_id"] > 0, "creator_id"].value_counts().iloc[0] >= 5


def test_positions_and_upload_times(tables):
    events = tables["events"]
    assert events["position"].min() == 0
    uploaded = tables["videos"].set_index("video_id").loc[events["video_id"], "upload_time"].to_numpy()
    assert (uploaded <= events["timestamp"].to_numpy()).all()
