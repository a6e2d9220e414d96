"""The online store through Redis Sentinel: a real primary, its replica and one Sentinel on loopback; the
store reached by a ``redis+sentinel://`` URL (passwords from the environment) loads, serves reads, takes
events through the stream, and follows the Sentinel to the new primary after a failover."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from reels.deploy.redis_server import free_port
from reels.feature_store.encoding import Vocabulary
from reels.feature_store.ingest import IngestWorker
from reels.feature_store.settings import PASSWORD_ENV, SENTINEL_PASSWORD_ENV, RedisSettings
from reels.feature_store.streams import EventProducer, Exposure, ExposureLog

PASSWORD = "primary-secret"  # noqa: S105 - throwaway test passwords
SENTINEL_PASSWORD = "sentinel-secret"  # noqa: S105
SERVICE = "reels-primary"


def _start(config: Path, text: str, *flags: str) -> subprocess.Popen:
    config.write_text(text)
    config.chmod(0o600)  # passwords live in the file, never on a command line
    return subprocess.Popen(
        ["redis-server", str(config), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory) -> Iterator[dict]:
    """A primary, its replica and a Sentinel watching them (quorum 1), all with passwords."""
    root = tmp_path_factory.mktemp("sentinel")
    primary, replica, sentinel = free_port(), free_port(), free_port()
    base = f'bind 127.0.0.1\nsave ""\nappendonly no\nrequirepass {PASSWORD}\nmasterauth {PASSWORD}\n'
    processes = [
        _start(root / "primary.conf", f"{base}port {primary}\ndir {root}\ndbfilename p.rdb\n"),
        _start(
            root / "replica.conf",
            f"{base}port {replica}\ndir {root}\ndbfilename r.rdb\nreplicaof 127.0.0.1 {primary}\n",
        ),  # fmt: skip
        _start(
            root / "sentinel.conf",
            f"bind 127.0.0.1\nport {sentinel}\ndir {root}\nrequirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\nsentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\nsentinel failover-timeout {SERVICE} 5000\n",
            "--sentinel",
        ),
    ]
    try:
        watcher = redis.Redis(port=sentinel, password=SENTINEL_PASSWORD, socket_timeout=2)
        _wait(lambda: watcher.sentinel_slaves(SERVICE), "the Sentinel to find the replica")
        yield {"sentinel": watcher, "primary": primary, "replica": replica, "port": sentinel}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


@pytest.fixture(autouse=True)
def _passwords(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(SENTINEL_PASSWORD_ENV, SENTINEL_PASSWORD)


def test_the_store_follows_the_sentinel_through_a_failover(sentinel_setup, tiny_features, tiny_store):
    settings = RedisSettings(url=f"redis+sentinel://127.0.0.1:{sentinel_setup['port']}/{SERVICE}")
    store = settings.store(timeout_s=2.0, namespace_ttl_s=0.0)
    store.load(tiny_features)
    assert store.client.connection_pool.get_master_address()[1] == sentinel_setup["primary"]
    users = pd.read_parquet(tiny_features.users_path)["raw_user_id"].to_numpy()
    videos = pd.read_parquet(tiny_features.videos_path)["raw_video_id"].to_numpy()[:50]
    assert store.read(int(users[0]), videos).user is not None
    assert ExposureLog(store.client).write(Exposure(1, 0, "", "", 0, [1], [1.0], [False], [True], [0]))

    frame = tiny_store.read_events().compute().tail(20).reset_index(drop=True)
    frame["event_id"] = 10**9 + np.arange(len(frame))
    frame["timestamp"] = pd.Timestamp("2026-02-01")
    first, second = frame.iloc[:10].to_dict("records"), frame.iloc[10:].to_dict("records")
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    worker = IngestWorker(store, vocabulary, 5, consumer="sentinel-worker")
    EventProducer(store.client).send(first)
    assert worker.run(idle_exit=True).applied == 10

    # Failover: the replica becomes the primary (the old one turns replica, refusing writes).
    replica = redis.Redis(port=sentinel_setup["replica"], password=PASSWORD, socket_timeout=2)
    _wait(lambda: replica.info("replication")["master_link_status"] == "up", "the replica to sync")
    started = time.monotonic()
    sentinel_setup["sentinel"].execute_command("SENTINEL FAILOVER", SERVICE)
    _wait(
        lambda: (
            int(sentinel_setup["sentinel"].sentinel_get_master_addr_by_name(SERVICE)[1])
            == sentinel_setup["replica"]
        ),
        "the Sentinel to name the new primary",
    )
    _wait(lambda: replica.info("replication")["role"] == "master", "the replica to take over")
    promoted = time.monotonic() - started
    # Until the old primary is told to follow, it still takes writes, which its resync then drops: the
    # asynchronous-replication window of every Redis failover. Done once it replicates the new one.
    old = redis.Redis(port=sentinel_setup["primary"], password=PASSWORD, socket_timeout=2)
    _wait(lambda: old.info("replication")["role"] == "slave", "the old primary to follow the new one")
    following = time.monotonic() - started
    print(
        f"SENTINEL FAILOVER: new primary after {promoted:.2f} s, old one following it after {following:.2f} s"
    )
    _wait(lambda: EventProducer(store.client).send(second), "writes through the new primary")
    assert store.client.connection_pool.get_master_address()[1] == sentinel_setup["replica"]
    assert worker.run(idle_exit=True).applied == 10
    ns = store.namespace()
    counted = sum(
        int(store.client.hget(store.keys.counters(ns, v), "events") or 0)
        for v in set(frame["video_id"].tolist())
    )
    assert counted == 20  # the events applied before the failover came along with the replica, once each
    assert store.read(int(users[0]), videos).user is not None
