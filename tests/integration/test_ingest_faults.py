"""The ingest worker killed (kill -9) in each crash window, and Redis going away under it, on the real
components: a real redis-server, the worker as a real subprocess, a real offline store on disk. After a
restart under a new consumer name, the Redis counters count each event exactly once and the offline
store holds each event and each hide exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from reels.deploy.redis_server import RedisServer, free_port
from reels.feature_store.encoding import Vocabulary
from reels.feature_store.ingest import IngestStats, IngestWorker
from reels.feature_store.store import FeatureStoreUnavailable, OnlineStore
from reels.feature_store.streams import EventProducer, hide_id
from reels.workflows.errors import NotFound
from reels.workflows.offline_store import OfflineStore

HISTORY_LENGTH = 5  # TINY_FEATURES

# One ingest worker over the real Redis and offline store: argv = Redis URL, workflow dir, offline root,
# consumer name, seconds to run ("drain": until the stream is drained), the event stream's shard count.
WORKER = """
import sys
from reels.feature_store.encoding import Vocabulary
from reels.feature_store.ingest import IngestStats, IngestWorker
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore
from reels.workflows.offline_store import OfflineStore

url, workflow, offline, consumer, seconds, shards = sys.argv[1:]
# No redis-py retries (as `reels ingest` runs it): an outage reaches the worker's own backoff at once
# instead of being ridden out, or not, by retries inside one command depending on timing.
client = RedisSettings(url=url).client(timeout_s=2.0, retries=False)
worker = IngestWorker(
    OnlineStore(client, namespace_ttl_s=0.0), Vocabulary(workflow, "video_id"), 5, consumer=consumer,
    offline=OfflineStore(offline), claim_idle_ms=100, shards=int(shards),
)
worker.reconnect_max_s = 1.0
stats = worker.run(seconds=None if seconds == "drain" else float(seconds), idle_exit=seconds == "drain")
print(stats, flush=True)
"""


def _worker(
    url: str,
    tiny_features,
    offline: OfflineStore,
    consumer: str,
    seconds: str,
    log,
    fault: str = "",
    shards: int = 1,
):
    env = dict(os.environ, REELS_FAULT=fault)
    argv = [url, str(tiny_features.workflow_dir), str(offline.root), consumer, seconds, str(shards)]
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *argv], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _events(tiny_store, n: int, start_id: int) -> list[dict]:
    frame = tiny_store.read_events().compute().tail(n).reset_index(drop=True)
    frame["event_id"] = start_id + np.arange(len(frame))
    frame["timestamp"] = pd.Timestamp("2026-02-01")
    return frame.to_dict("records")


def _counted(store: OnlineStore, videos) -> Counter:
    ns = store.namespace()
    return Counter(
        {
            v: int(store.client.hget(store.keys.counters(ns, v), "events") or 0)
            for v in {int(v) for v in videos}
        }
    )


def _offline_events(offline: OfflineStore) -> list[int]:
    try:
        return sorted(offline.read_events().compute()["event_id"])
    except NotFound:
        return []


def _offline_hides(offline: OfflineStore) -> pd.DataFrame:
    files = offline.files("hides")
    return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame(columns=["hide_id"])


@pytest.mark.parametrize(
    "fault", ["ingest:after_apply", "offline:before_commit", "ingest:after_offline", "ingest:before_ack"]
)
@pytest.mark.parametrize("kind", ["events", "hides"])
def test_a_worker_killed_in_a_crash_window_is_resumed_exactly_once(
    loaded_store, redis_server, tiny_features, tiny_store, tmp_path, fault, kind
):
    _killed_and_resumed(
        loaded_store, redis_server, tiny_features, tiny_store, tmp_path, fault, kind, shards=1
    )


@pytest.mark.parametrize(
    ("fault", "kind"), [("ingest:after_apply", "events"), ("ingest:before_ack", "hides")]
)
def test_a_worker_of_two_shards_killed_in_a_crash_window_is_resumed_exactly_once(
    loaded_store, redis_server, tiny_features, tiny_store, tmp_path, fault, kind
):
    """Killed while handling its first shard's batch, after reading both shards': the other shard's
    messages are pending with the dead worker too, and are claimed and applied once."""
    _killed_and_resumed(
        loaded_store, redis_server, tiny_features, tiny_store, tmp_path, fault, kind, shards=2
    )


def _killed_and_resumed(loaded_store, redis_server, tiny_features, tiny_store, tmp_path, fault, kind, shards):
    offline = OfflineStore(tmp_path / "offline")
    producer = EventProducer(loaded_store.client, shards=shards)
    pending = lambda: sum(loaded_store.client.xpending(s, "ingest")["pending"] for s in producer.streams)  # noqa: E731
    batch = _events(tiny_store, 30, start_id=20 * 10**9)
    other_parity = next(int(e["user_id"]) for e in batch if (e["user_id"] - batch[0]["user_id"]) % 2)
    users = [int(e["user_id"]) for e in batch[:4]] + [other_parity]  # on both shards of two
    if kind == "events":
        sent = producer.send(batch)
    else:
        sent = [producer.hide_creator(user, 40 + i) for i, user in enumerate(users)]
    assert all(loaded_store.client.xlen(stream) for stream in producer.streams)  # every shard has work

    with (tmp_path / "doomed.log").open("wb") as log:
        doomed = _worker(redis_server.url(), tiny_features, offline, "doomed", "drain", log, fault, shards)
        assert doomed.wait(timeout=180) == -signal.SIGKILL, (tmp_path / "doomed.log").read_text()[-3000:]
    # Killed before acknowledging anything: every message is still pending with the dead consumer.
    assert pending() == len(sent)
    committed = fault in ("ingest:after_offline", "ingest:before_ack")
    if kind == "events":
        assert _offline_events(offline) == (sorted(e["event_id"] for e in batch) if committed else [])

    time.sleep(0.2)  # past the restarted worker's claim_idle_ms
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    survivor = IngestWorker(
        loaded_store, vocabulary, HISTORY_LENGTH, consumer="survivor", claim_idle_ms=100, offline=offline,
        shards=shards,
    )  # fmt: skip
    stats = survivor.run(idle_exit=True)
    assert stats.claimed == len(sent)
    assert pending() == 0
    assert set(offline.files("events") + offline.files("hides")) == {
        *(offline.root / "events").rglob("part-*.parquet"),
        *(offline.root / "hides").rglob("part-*.parquet"),
    }  # the dead writer's uncommitted parts are gone
    if kind == "events":
        videos = [int(e["video_id"]) for e in batch]
        assert _counted(loaded_store, videos) == Counter(videos)  # exactly once in Redis
        assert _offline_events(offline) == sorted(e["event_id"] for e in batch)  # exactly once offline
    else:
        for i, user in enumerate(users):
            assert 40 + i in set(loaded_store.hidden_creators(user))
        hides = _offline_hides(offline)
        shard_of = producer.layout.shard_of
        assert sorted(hides["hide_id"]) == sorted(
            hide_id(entry, shard_of(user), shards) for entry, user in zip(sent, users, strict=True)
        )
        assert sorted(zip(hides["user_id"], hides["creator_id"], strict=True)) == sorted(
            (user, 40 + i) for i, user in enumerate(users)
        )


def test_a_hide_reaches_the_offline_store_once(loaded_store, tiny_features, tmp_path):
    offline = OfflineStore(tmp_path / "offline")
    entry = EventProducer(loaded_store.client).hide_creator(12, 34)
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    worker = IngestWorker(loaded_store, vocabulary, HISTORY_LENGTH, consumer="hider", offline=offline)
    taken = worker.read_only(10)
    worker.process(taken, IngestStats())
    worker.process(taken, IngestStats())  # the same message delivered again
    hides = offline.read_table("hides")
    assert hides[["hide_id", "user_id", "creator_id"]].values.tolist() == [[entry.decode(), 12, 34]]
    assert hides["timestamp"].iloc[0] == pd.Timestamp(int(entry.split(b"-")[0]), unit="ms")
    assert list(loaded_store.hidden_creators(12)) == [34]


def test_the_worker_rides_out_a_redis_restart(tiny_features, tiny_store, tmp_path):
    port = free_port()
    server = RedisServer(tmp_path / "redis", port=port).start()
    offline = OfflineStore(tmp_path / "offline")
    store = OnlineStore(server.client(timeout_s=5.0), namespace_ttl_s=0.0)
    store.load(tiny_features)
    producer = EventProducer(store.client)
    first, second = _events(tiny_store, 10, 30 * 10**9), _events(tiny_store, 10, 31 * 10**9)
    log_path = tmp_path / "worker.log"
    log = log_path.open("wb")
    worker = _worker(server.url(), tiny_features, offline, "steady", "300", log)
    try:
        producer.send(first)
        _wait(lambda: sum(_counted(store, [e["video_id"] for e in first]).values()) == 10, worker, log_path)
        time.sleep(1.5)  # appendfsync everysec: the first batch's effects are on disk

        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        server.process = None
        time.sleep(4)  # the worker sees refused connections for a while, and backs off
        assert worker.poll() is None, log_path.read_text()[-3000:]
        server = RedisServer(tmp_path / "redis", port=port).start()
        store = OnlineStore(server.client(timeout_s=5.0), namespace_ttl_s=0.0)
        EventProducer(store.client).send(second)

        videos = [e["video_id"] for e in first + second]
        _wait(lambda: _counted(store, videos) == Counter(int(v) for v in videos), worker, log_path)
        _wait(
            lambda: _offline_events(offline) == sorted(e["event_id"] for e in first + second),
            worker,
            log_path,
        )
        assert worker.poll() is None  # never exited
        assert "Redis unavailable" in log_path.read_text() and "Redis is back" in log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        log.close()
        server.stop()


def _wait(condition, worker: subprocess.Popen, log_path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert worker.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)


class _NamespaceAwayFor(OnlineStore):
    """The real store, whose namespace read reports Redis unavailable for its first ``away_s`` (what a
    worker sees during a Redis Cluster failover when the namespace key's primary died but the stream's
    did not): a fault injected at the store's seam, over a real redis-server."""

    def __init__(self, client, away_s: float):
        super().__init__(client, namespace_ttl_s=0.0)
        self.back_at = time.monotonic() + away_s

    def namespace(self) -> str:
        if time.monotonic() < self.back_at:
            raise FeatureStoreUnavailable("Redis unreachable: the namespace's primary is failing over")
        return super().namespace()


def test_the_worker_waits_while_the_online_store_reports_itself_unavailable(
    loaded_store, redis_server, tiny_features, tiny_store
):
    """Reads of the stream work but the store's own read fails as unavailable: the worker backs off and
    applies the batch once the store answers again, instead of dying (it did, in a cluster failover)."""
    store = _NamespaceAwayFor(redis_server.client(timeout_s=5.0), away_s=1.0)
    batch = _events(tiny_store, 10, start_id=40 * 10**9)
    EventProducer(store.client).send(batch)
    worker = IngestWorker(
        store, Vocabulary(tiny_features.workflow_dir, "video_id"), 20, consumer="away", batch=50
    )
    worker.reconnect_min_s = worker.reconnect_max_s = 0.2
    stats = worker.run(seconds=3.0)
    assert stats.applied == 10
    assert _counted(store, [e["video_id"] for e in batch]) == Counter(int(e["video_id"]) for e in batch)
