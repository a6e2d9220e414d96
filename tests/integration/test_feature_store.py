"""The online store against a real redis-server process."""

import numpy as np
import pandas as pd
import pytest

from reels.deploy.redis_server import RedisServer, free_port
from reels.feature_store.store import FeatureStoreUnavailable, NoActiveNamespace, OnlineStore
from reels.workflows.spec import HISTORY, USER_CONTINUOUS, VIDEO_CATEGORICAL


@pytest.fixture()
def online(redis_server):
    client = redis_server.client()
    client.flushall()
    return OnlineStore(client, namespace_ttl_s=0.0)


def test_empty_store_says_what_to_do(online):
    with pytest.raises(NoActiveNamespace, match="empty"):
        online.namespace()


def test_load_then_read_matches_the_offline_features(online, tiny_features):
    report = online.load(tiny_features)
    users = pd.read_parquet(tiny_features.users_path).set_index("raw_user_id")
    videos = pd.read_parquet(tiny_features.videos_path).set_index("raw_video_id")
    assert (report.users, report.videos) == (len(users), len(videos))
    assert report.keys_per_s > 0
    user = int(users.index[5])
    wanted = videos.index[:50].to_numpy()
    rows = online.read(user, wanted)
    assert rows.user["user_id"] == users.loc[user, "user_id"]
    for name in USER_CONTINUOUS:
        assert rows.user[name] == pytest.approx(users.loc[user, name])
    np.testing.assert_array_equal(rows.user[HISTORY], users.loc[user, HISTORY])
    np.testing.assert_array_equal(rows.video_ids, wanted)
    for name in VIDEO_CATEGORICAL:
        np.testing.assert_array_equal(rows.videos[name], videos.loc[wanted, name].to_numpy())


def test_unknown_user_and_videos_are_reported_not_crashed(online, tiny_features):
    online.load(tiny_features)
    known = int(pd.read_parquet(tiny_features.videos_path)["raw_video_id"].iloc[0])
    rows = online.read(987_654_321, np.array([known, 123, 456]))
    assert rows.user is None
    assert list(rows.video_ids) == [known]
    assert len(rows.seen) == 0


def test_seen_list_holds_the_users_shown_videos(online, tiny_features, tiny_store):
    online.load(tiny_features)
    events = tiny_store.read_events(columns=["user_id", "video_id"]).compute()
    user = int(events["user_id"].iloc[0])
    rows = online.read(user, np.array([], dtype=np.int64))
    assert set(rows.seen) <= set(events.loc[events["user_id"] == user, "video_id"])
    assert len(rows.seen) == min(500, events.loc[events["user_id"] == user, "video_id"].size)


def test_a_new_load_swaps_namespaces_and_drops_the_oldest(online, tiny_features, redis_server):
    first = online.load(tiny_features).namespace
    second = online.load(tiny_features).namespace
    third = online.load(tiny_features).namespace
    client = redis_server.client()
    assert client.get("reels:active").decode() == third
    assert client.exists(f"reels:{second}:meta")  # previous kept for in-flight readers
    assert not list(client.scan_iter(match=f"reels:{first}:*"))
    assert first != second != third


def test_redis_going_away_raises_unavailable(tiny_features, tmp_path):
    srv = RedisServer(tmp_path / "r", port=free_port()).start()
    store = OnlineStore(srv.client(timeout_s=0.2), namespace_ttl_s=0.0)
    store.load(tiny_features)
    srv.stop()
    with pytest.raises(FeatureStoreUnavailable):
        store.read(1, np.array([1, 2]))
