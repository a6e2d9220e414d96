"""`reels serve --replicas 2`: two real tritonservers behind a real haproxy, as `reels serve` runs them, with
real clients and perf_analyzer going through the balancer. A rolling promotion under load and a replica
killed under load must fail no request."""

import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.http as http

from reels.client.bench.serving import perf_analyzer, write_input_data
from reels.client.config import load_config
from reels.client.triton_client import ReelsClient
from reels.deploy.balancer import GRPC_BACKEND, HTTP_BACKEND
from reels.deploy.process import processes_in_group
from reels.deploy.promotion import promote_or_mark, read_journal
from reels.deploy.replicas import RECORD, ReplicaSet, read_record
from reels.deploy.stack import source_stack
from reels.deploy.triton.release import ENSEMBLE
from reels.deploy.triton.repository import pinned_version
from tests.integration.stack_data import ensemble_release, known_users, stack_settings, two_versions

WHEN = 1_800_000_000

pytestmark = pytest.mark.skipif(
    not (shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy")),
    reason="haproxy is not installed (deploy/setup.sh installs it where apt-get runs as root)",
)


class Load:
    """Client threads sending feed requests through the balancer until stopped; counts answers and failures."""

    def __init__(self, url: str, users: list[int], threads: int = 2):
        self.url, self.users = url, users
        self.answers, self.failures, self.latencies_ms = 0, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with ReelsClient(self.url, timeout_s=30.0) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    client.recommend(int(rng.choice(self.users)), k=10, request_time=WHEN)
                    self.answers += 1
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                    self.failures.append(repr(exc))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture(scope="module")
def replica_stack(tiny_models, tiny_features, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    two_versions(tiny_models, tmp)
    config = load_config(None, stack_settings(tmp, server__replicas=2))
    users = known_users(tiny_features)
    with source_stack(config, "synthetic") as (_, replicas):
        assert isinstance(replicas, ReplicaSet)
        yield config, replicas, users
    assert not (replicas.root / RECORD).exists()  # a stopped set leaves no record for `reels promote`


def test_the_balancer_spreads_http_and_grpc_requests_over_ready_replicas(replica_stack):
    config, replicas, users = replica_stack
    for backend in (HTTP_BACKEND, GRPC_BACKEND):  # "UP 1/3": one check failed, still up
        assert {name: state.split()[0] for name, state in replicas.balancer.states(backend).items()} == {
            "r0": "UP",
            "r1": "UP",
        }, backend
    record = read_record(replicas.root)
    assert record["http_port"] == config.server.http_port and len(record["replicas"]) == 2
    for protocol, url in (("http", replicas.http_url), ("grpc", replicas.grpc_url)):
        with ReelsClient(url, protocol) as client:
            for user in users[:6]:
                feed = client.recommend(user, k=5, request_time=WHEN)
                assert feed.fallback == 0 and len(feed.video_ids) == 5
    # Each replica answered some of them (round robin), counted by Triton itself.
    for server in replicas.servers:
        client = http.InferenceServerClient(server.http_url)
        try:
            stats = client.get_inference_statistics(ENSEMBLE)["model_stats"][0]
        finally:
            client.close()
        assert stats["inference_stats"]["success"]["count"] >= 2


def test_a_rolling_promotion_under_load_fails_no_request(replica_stack):
    config, replicas, users = replica_stack
    said: list[str] = []
    model_dir = config.source_dir("synthetic") / "models" / "2"
    with Load(replicas.http_url, users) as load:
        time.sleep(2)
        report = promote_or_mark(config, "synthetic", model_dir, progress=said.append)
        time.sleep(2)
    assert report is not None and report.version == 2
    assert load.failures == [], load.failures[:5]
    assert load.answers > 20
    # One replica after the other: the second started loading only once the first served the release.
    rolling = [m for m in said if "on replica" in m]
    assert [m.rsplit("on replica", 1)[1].strip() for m in rolling] == ["1 of 2", "2 of 2"]
    for server in replicas.servers:
        assert pinned_version(server.repository) == 2 == ensemble_release(server.http_url)
    assert read_journal(replicas.root) is None
    assert (config.source_dir("synthetic") / "models" / "serving").read_text().strip() == "2"
    p50, p99 = np.percentile(load.latencies_ms, [50, 99])
    print(f"rolling promotion: {load.answers} requests, 0 failed, p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def test_a_replica_killed_under_perf_analyzer_load_fails_no_request(replica_stack, tmp_path):
    """perf_analyzer over gRPC and two HTTP clients (tritonclient) through the balancer while a replica is
    killed. perf_analyzer's own HTTP client (libcurl) is not used here: when the balancer closes a keep-alive
    connection whose replica died, libcurl cannot resend a request body it has already streamed ("rewinding
    of the data stream failed"); clients that retry on a fresh connection, as tritonclient does, see no
    failure (docs/SCALING.md)."""
    config, replicas, users = replica_stack
    input_data = tmp_path / "input.json"
    write_input_data(input_data, np.array(users[:50]), 10)
    victim = replicas.servers[1]
    killer = threading.Timer(3.0, lambda: os.kill(victim.process.pid, signal.SIGKILL))
    with Load(replicas.http_url, users) as load:
        killer.start()
        try:  # three 3-second windows at concurrency 2 over gRPC, the kill in the first
            done, measured = perf_analyzer(
                "grpc", replicas.grpc_url, input_data, 2, 3.0, stability_percentage=999, max_trials=3
            )
        finally:
            killer.join()
    assert victim.process.poll() == -signal.SIGKILL
    assert "had error" not in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0 and measured is not None, done.stdout[-2000:] + done.stderr[-2000:]
    assert load.failures == [], load.failures[:5]
    assert load.answers > 10
    deadline = time.monotonic() + 10
    while replicas.balancer.states(HTTP_BACKEND)["r1"] != "DOWN":  # three failed checks
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with ReelsClient(replicas.http_url) as client:  # the survivor answers
        assert client.recommend(users[0], k=5, request_time=WHEN).fallback == 0
    group = victim.process.pid  # the dead server's python stubs outlive it, in its process group
    victim.stop()
    assert processes_in_group(group) == []
    p99 = np.percentile(load.latencies_ms, 99)
    print(
        f"replica killed under load: perf_analyzer gRPC p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} "
        f"ms; HTTP clients {load.answers} requests, 0 failed, p99 {p99:.1f} ms"
    )
