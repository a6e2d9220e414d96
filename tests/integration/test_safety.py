"""Safe defaults on the real servers: nothing listens beyond loopback unless asked, and what Redis
accepted survives a kill -9 of redis-server."""

from __future__ import annotations

import ipaddress
import os
import signal
import time

import psutil

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
