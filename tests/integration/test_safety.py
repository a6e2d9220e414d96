"""Safe defaults on the real servers: nothing listens beyond loopback unless asked, and what Redis
accepted survives a kill -9 of redis-server."""

from __future__ import annotations

import ipaddress
import os
import signal
import time

import psutil
import pytest

from reels.deploy.redis_server import RedisServer, free_port
from reels.deploy.triton_server import TritonServer
from reels.feature_store.layout import Keys
from reels.feature_store.streams import EventProducer


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # gRPC listens on ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def _listening(pid: int) -> set[str]:
    process = psutil.Process(pid)
    procs = [process, *process.children(recursive=True)]
    return {
        conn.laddr.ip
        for proc in procs
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def test_tritonserver_listens_on_loopback_only(tmp_path):
    repository = tmp_path / "repository"
    repository.mkdir()
    with TritonServer(repository, tmp_path / "build", free_port(), free_port(), free_port()) as triton:
        addresses = _listening(triton.process.pid)
    assert addresses and all(_loopback(a) for a in addresses), addresses


def test_redis_server_listens_on_loopback_only_and_keeps_the_password_off_argv(tmp_path):
    with RedisServer(tmp_path / "redis", port=free_port(), password="not-on-argv") as server:
        addresses = _listening(server.process.pid)
        argv = " ".join(psutil.Process(server.process.pid).cmdline())
        assert server.client().ping()
    assert addresses and all(_loopback(a) for a in addresses), addresses
    assert "not-on-argv" not in argv
    assert oct((tmp_path / "redis" / "redis.conf").stat().st_mode & 0o777) == "0o600"


def test_accepted_writes_survive_a_kill_9_of_redis_without_save(tmp_path):
    port = free_port()
    keys = Keys()
    server = RedisServer(tmp_path / "redis", port=port).start()
    client = server.client(timeout_s=5.0)
    ids = EventProducer(client).send([{"event_id": i, "user_id": 1, "video_id": 2} for i in range(10)])
    client.xgroup_create(keys.events, "ingest", id="0")
    client.xreadgroup("ingest", "worker-1", {keys.events: ">"}, count=3)  # 3 delivered, not acknowledged
    client.sadd(keys.hidden_creators(1), 42)
    time.sleep(1.5)  # appendfsync everysec: what was accepted more than a second ago is on disk
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.process = None
    restarted = RedisServer(tmp_path / "redis", port=port).start()
    try:
        client = restarted.client(timeout_s=5.0)
        assert client.xlen(keys.events) == len(ids)
        pending = client.xpending(keys.events, "ingest")
        assert pending["pending"] == 3
        assert client.smembers(keys.hidden_creators(1)) == {b"42"}
    finally:
        restarted.stop()


def test_scratch_servers_can_turn_persistence_off(tmp_path):
    with RedisServer(tmp_path / "redis", port=free_port(), durable=False) as server:
        assert server.client().config_get("appendonly") == {"appendonly": "no"}


def test_poison_messages_are_dead_lettered_and_the_rest_applied(loaded_store, tiny_features, tiny_store):
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker

    keys = loaded_store.keys
    frame = tiny_store.read_events().compute().tail(10).reset_index(drop=True)
    frame["event_id"] = 7 * 10**9 + frame.index
    frame["timestamp"] = frame["timestamp"].max()
    valid = frame.to_dict("records")
    too_big = dict(valid[0], event_id=2**53 + 1)
    EventProducer(loaded_store.client).send([*valid, too_big])
    loaded_store.client.xadd(keys.events, {"event": "[" * 100_000 + "]" * 100_000})  # RecursionError
    loaded_store.client.xadd(keys.events, {"event": b"\xff\xfe not utf-8"})
    loaded_store.client.xadd(keys.events, {"event": "[1, 2, 3]"})  # JSON, but not an event
    worker = IngestWorker(loaded_store, Vocabulary(tiny_features.workflow_dir, "video_id"), 5, consumer="w")
    stats = worker.run(idle_exit=True)
    assert (stats.applied, stats.dead_lettered) == (10, 4)
    assert loaded_store.client.xpending(keys.events, "ingest")["pending"] == 0
    reasons = [fields[b"reason"].decode() for _, fields in loaded_store.client.xrange(keys.dead_letters)]
    assert any("2^53" in r for r in reasons) and any("JSON" in r for r in reasons), reasons


def test_reels_serve_stops_its_servers_on_sigterm(tiny_models, tmp_path):
    import subprocess
    import sys
    import urllib.request

    source = tmp_path / "data" / "synthetic"
    source.mkdir(parents=True)
    (source / "models").symlink_to(tiny_models.directory.parent)
    http_port = free_port()
    settings = {
        "data.root": tmp_path / "data", "server.build_dir": tmp_path / "build", "server.redis_port": free_port(),
        "server.http_port": http_port, "server.grpc_port": free_port(), "server.metrics_port": free_port(),
    }  # fmt: skip
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "reels.client.cli", *overrides, "serve", "synthetic"]
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1
                ) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
        children = psutil.Process(serve.pid).children(recursive=True)
        assert {c.name() for c in children} >= {"tritonserver", "redis-server"}
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], [c.name() for c in alive]
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()


def test_a_stalled_redis_costs_one_timeout_then_fails_fast_until_a_probe_finds_it_back(
    tiny_features, tmp_path
):
    from reels.feature_store.settings import RedisSettings
    from reels.feature_store.store import FeatureStoreUnavailable

    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        settings = RedisSettings(port=server.port)
        settings.store(timeout_s=5.0).load(tiny_features)
        store = settings.store(timeout_s=0.2, retries=False, unavailable_pause_s=1.0)
        store.read(1, [])  # warm: connection open, namespace cached
        os.kill(server.process.pid, signal.SIGSTOP)  # a stalled server: connections hang, nothing refused
        try:
            waits = []
            stalled_until = time.monotonic() + 3.0  # three probe intervals: no read ever waits for a probe
            while time.monotonic() < stalled_until:
                started = time.perf_counter()
                with pytest.raises(FeatureStoreUnavailable):
                    store.read_videos([1, 2, 3])
                waits.append(time.perf_counter() - started)
                time.sleep(0.005)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert waits[0] < 1.0  # one timeout (0.2 s), no retries with backoff
        assert max(waits[1:]) < 0.01, max(waits[1:])  # open: PINGs probe in the background, reads never wait
        assert store.breaker.trips == 1
        time.sleep(1.5)
        assert store.read_videos([1, 2, 3]).user is None  # closed again: Redis answers


def test_ingest_packs_histories_with_the_namespace_history_length(loaded_store, tiny_features, tiny_store):
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.workflows.spec import HISTORY

    event = tiny_store.read_events().compute().tail(1).to_dict("records")[0]
    event.update(event_id=8 * 10**9, watch_time_s=event["video_duration_s"], skipped=False, hidden=False)
    user = int(event["user_id"])
    before, _ = loaded_store.read_user(user)
    EventProducer(loaded_store.client).send([event])
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    # A worker started with another build's length (20) must follow the namespace's own (5).
    IngestWorker(loaded_store, vocabulary, history_length=20, consumer="w-len").run(idle_exit=True)
    after, _ = loaded_store.read_user(user)
    assert len(after[HISTORY]) == len(before[HISTORY]) == 5
    assert after[HISTORY][0] == vocabulary.encode([event["video_id"]])[0]
    assert list(after[HISTORY][1:]) == list(before[HISTORY][:-1])
    assert after["user_like_rate"] == before["user_like_rate"]  # the rest of the record is untouched


def test_the_event_stream_is_trimmed_only_below_what_is_acknowledged(loaded_store, tiny_features, tiny_store):
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker

    keys = loaded_store.keys
    frame = tiny_store.read_events().compute().tail(10).reset_index(drop=True)
    frame["event_id"] = 9 * 10**9 + frame.index
    frame["timestamp"] = frame["timestamp"].max()
    events = frame.to_dict("records")
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    worker = IngestWorker(loaded_store, vocabulary, 5, consumer="w-trim", claim_idle_ms=3_600_000)
    worker.keep_s = 0.0  # keep nothing that is acknowledged
    EventProducer(loaded_store.client).send(events[:5])
    assert worker.run(idle_exit=True).applied == 5
    later = EventProducer(loaded_store.client).send(events[5:])
    stuck = IngestWorker(loaded_store, vocabulary, 5, consumer="w-stuck").read_only(3)  # delivered, not acked
    worker.trim_acknowledged()
    remaining = [entry_id for entry_id, _ in loaded_store.client.xrange(keys.events)]
    assert remaining == later  # the five acknowledged entries went; the unacknowledged ones all stayed
    assert [entry_id for entry_id, _ in stuck] == later[:3]


def test_an_event_whose_apply_keeps_failing_is_dead_lettered_after_three_deliveries(
    loaded_store, tiny_features, tiny_store
):
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker

    keys = loaded_store.keys
    frame = tiny_store.read_events().compute().drop_duplicates("user_id").tail(6).reset_index(drop=True)
    frame["event_id"] = 11 * 10**9 + frame.index
    frame["timestamp"] = frame["timestamp"].max()
    events = frame.to_dict("records")
    poisoned = int(events[2]["user_id"])
    seen = keys.seen(loaded_store.namespace(), poisoned)
    loaded_store.client.delete(seen)
    loaded_store.client.hset(seen, "not", "a string")  # the script's APPEND on it fails with WRONGTYPE
    EventProducer(loaded_store.client).send(events)
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    worker = IngestWorker(loaded_store, vocabulary, 5, consumer="w-fail", claim_idle_ms=0, max_deliveries=3)
    stats = worker.run(idle_exit=True)
    assert (stats.applied, stats.duplicates, stats.dead_lettered) == (5, 0, 1), stats
    assert loaded_store.client.xpending(keys.events, "ingest")["pending"] == 0
    [(_, dead)] = loaded_store.client.xrange(keys.dead_letters)
    assert b"apply failed 3 times" in dead[b"reason"] and b"WRONGTYPE" in dead[b"reason"]
    ns = loaded_store.namespace()
    counted = sum(
        int(loaded_store.client.hget(keys.counters(ns, int(e["video_id"])), "events") or 0) for e in events
    )
    # One redis-server applies an event atomically: the failing one never. A Redis Cluster applies an
    # event's parts slot by slot: the failing event's video part, in another slot than its user part
    # (whose seen list fails), is applied, once.
    assert counted == (6 if loaded_store.cluster else 5)  # the five good events exactly once
