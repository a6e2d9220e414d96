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


# A load in a process of its own, killed (SIGKILL via the fault hook) right after its first batch: a
# loading marker that lives 1 s, batches of 500 keys, so most of the namespace is never written.
_CRASHING_LOAD = """
import sys
from pathlib import Path
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore
from reels.workflows.manifest import FeatureArtifacts
store = OnlineStore(RedisSettings(url=sys.argv[1]).client(timeout_s=5), loading_ttl_s=1)
store.load(FeatureArtifacts(Path(sys.argv[2])), batch=500)
"""


def _keys(client, namespace: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"reels:{namespace}:*", count=5000))


def test_a_load_killed_mid_way_leaves_keys_that_the_next_load_removes(online, tiny_features, redis_server):
    import os
    import signal
    import subprocess
    import sys
    import time

    client = redis_server.client()
    first = online.load(tiny_features).namespace
    run = subprocess.run(
        [sys.executable, "-c", _CRASHING_LOAD, redis_server.url(), str(tiny_features.root)],
        env=os.environ | {"REELS_FAULT": "load:after_batch"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    crashed = f"v{int(client.get('reels:load_counter'))}"
    assert crashed != first and _keys(client, crashed) >= 500  # written, never finished: no meta
    assert not client.exists(f"reels:{crashed}:meta")
    assert client.get("reels:active").decode() == first  # readers never saw it
    online.activate(first)  # its marker has not expired: maybe a load still running, so kept
    assert _keys(client, crashed) >= 500
    time.sleep(1.2)
    second = online.load(tiny_features).namespace
    assert _keys(client, crashed) == 0
    assert crashed.encode() not in client.smembers("reels:namespaces")
    assert _keys(client, first) > 0 and client.get("reels:active").decode() == second  # previous kept


def test_a_pinned_namespace_survives_activations_until_unpinned(online, tiny_features, redis_server):
    client = redis_server.client()
    pinned = online.load(tiny_features).namespace
    online.pin(pinned)  # as a release in a model repository reading it
    keys = _keys(client, pinned)
    # A promotion's load: pinned from its first key, never active yet; another load must not drop it.
    promoted = online.load(tiny_features, activate=False, pin=True).namespace
    for _ in range(3):
        latest = online.load(tiny_features).namespace
    assert _keys(client, pinned) == keys and _keys(client, promoted) == keys
    assert online.pinned() == {pinned, promoted}
    online.unpin(pinned)
    online.unpin(promoted)
    online.load(tiny_features)
    assert _keys(client, pinned) == _keys(client, promoted) == 0
    assert _keys(client, latest) == keys  # the one the activation replaced stays for readers
