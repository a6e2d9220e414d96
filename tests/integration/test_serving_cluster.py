"""The serving stack on a real local Redis Cluster (3 primaries + 3 replicas, an ACL user and password), as
`reels serve` runs it with ``server.redis_url: redis+cluster://...``: tritonserver's step models read the
cluster, write the exposure log there, see ingested events, swap with a `reels promote`, and keep
answering every request while a primary is killed and its replica takes over.

The tests share one stack and run in file order; the failover test kills a primary, so it comes last
of those that use the stack."""

import json
import threading
import time

import numpy as np
import pandas as pd
import pytest

from reels.client.cli import main
from reels.client.config import load_config
from reels.client.triton_client import ReelsClient
from reels.deploy.redis_server import RedisCluster, free_port
from reels.deploy.stack import serving_stack, source_stack
from reels.deploy.triton.release import Release
from reels.feature_store.encoding import Vocabulary
from reels.feature_store.ingest import IngestWorker
from reels.feature_store.settings import PASSWORD_ENV, URL_ENV
from reels.feature_store.streams import EventProducer, read_exposures
from reels.workflows.errors import ServiceUnavailable
from reels.workflows.spec import HISTORY, OOV
from tests.integration.stack_data import ensemble_release, stack_settings, two_versions

PASSWORD = "cluster-secret"  # noqa: S105 - a throwaway test password
WHEN = 1_800_000_000  # a fixed request time keeps scores deterministic
HISTORY_LENGTH = 5  # TINY_FEATURES


@pytest.fixture(scope="module")
def served(tiny_models, tiny_features, tmp_path_factory):
    """A 6-node cluster and `reels serve`'s stack on it (models 1 serving, 2 a copy to promote)."""
    root = tmp_path_factory.mktemp("serving-cluster")
    models = two_versions(tiny_models, root)
    with pytest.MonkeyPatch.context() as env:
        # tritonserver inherits the environment: its step models find the password where serving does.
        env.setenv(PASSWORD_ENV, PASSWORD)
        env.delenv(URL_ENV, raising=False)
        with RedisCluster(root / "redis-cluster", username="reels", password=PASSWORD) as cluster:
            # The ranking step reads its candidates' video records from the cluster too (one round trip per
            # node), not from the release's in-memory table.
            sets = stack_settings(root, server__redis_url=cluster.url(), serving__video_features="redis")
            config = load_config(None, sets)
            assert config.server.redis.cluster
            overrides = ["--device", "cpu", *(arg for item in sets for arg in ("--set", item))]
            messages: list[str] = []
            with source_stack(config, "synthetic", messages.append) as (started_redis, triton):
                assert started_redis is None  # a cluster is never started by the stack
                assert any("using the Redis Cluster" in m for m in messages), messages
                store = config.server.redis.store(timeout_s=5.0, namespace_ttl_s=0.0)
                yield {"cluster": cluster, "triton": triton, "store": store, "overrides": overrides,
                       "models": models}  # fmt: skip


@pytest.fixture(scope="module")
def users(tiny_features) -> np.ndarray:
    """Raw ids of known users with a viewing history: each test takes users of its own."""
    frame = pd.read_parquet(tiny_features.users_path)
    history = np.stack(frame[HISTORY].to_numpy())
    return frame.loc[(frame["user_id"] > OOV) & (history > OOV).any(axis=1), "raw_user_id"].to_numpy()


def test_release_reads_the_cluster_and_personal_feeds_are_logged(served, users):
    triton, store = served["triton"], served["store"]
    redis_spec = json.loads(Release.spec_path(triton.repository, 1).read_text())["redis"]
    assert redis_spec["url"].startswith("redis+cluster://reels@")  # cluster mode, no password
    assert PASSWORD not in Release.spec_path(triton.repository, 1).read_text()
    assert Release.read(triton.repository, 1).namespace == store.namespace()
    when = WHEN + 11  # this test's request time: its feeds are told apart in the exposure log
    feeds = {}
    for protocol, url, user in (("http", triton.http_url, users[0]), ("grpc", triton.grpc_url, users[1])):
        with ReelsClient(url, protocol) as client:
            feeds[int(user)] = recs = client.recommend(int(user), k=10, request_time=when)
        assert recs.fallback == 0, protocol
        assert len(set(recs.video_ids)) == 10
    log = read_exposures(store.client)
    log = log[log["request_time_s"] == when]
    assert set(log["user_id"]) == set(feeds)
    for user, recs in feeds.items():
        entry = log[log["user_id"] == user].sort_values("position")
        np.testing.assert_array_equal(entry["video_id"], recs.video_ids)


def test_ingested_views_leave_the_next_feed(served, users, tiny_store, tiny_features):
    triton, store = served["triton"], served["store"]
    user = int(users[2])
    with ReelsClient(triton.http_url) as client:
        before = client.recommend(user, k=10, request_time=WHEN)
        assert before.fallback == 0
        viewed = [int(v) for v in before.video_ids[:3]]
        template = tiny_store.read_events().compute().tail(len(viewed)).reset_index(drop=True)
        template["user_id"] = user
        template["video_id"] = viewed
        template["event_id"] = 2 * 10**9 + np.arange(len(viewed))
        template["timestamp"] = pd.Timestamp("2026-02-01")
        EventProducer(store.client).send(template.to_dict("records"))
        vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
        stats = IngestWorker(store, vocabulary, HISTORY_LENGTH, consumer="cluster-serving").run(
            idle_exit=True
        )
        assert stats.applied == len(viewed), stats
        assert set(viewed) <= set(store.read_user(user)[1])
        after = client.recommend(user, k=10, request_time=WHEN)
    assert after.fallback == 0
    assert not set(after.video_ids) & set(viewed)


def _fallbacks(url: str, users, n: int) -> list[int]:
    """The fallback flags of ``n`` feeds requested one after another over HTTP."""
    with ReelsClient(url) as client:
        return [
            client.recommend(int(users[i % len(users)]), k=10, request_time=WHEN).fallback for i in range(n)
        ]


def _breaker_trips(triton) -> list[str]:
    """The step models' circuit-breaker warnings in tritonserver's log so far (why Redis was skipped)."""
    log = (triton.build / "tritonserver.log").read_text(errors="replace")
    return [line for line in log.splitlines() if "online store unavailable" in line]


def test_promotion_swaps_release_and_namespace_on_the_cluster(served, users):
    triton, store, models = served["triton"], served["store"], served["models"]
    first = store.namespace()
    sample = [int(u) for u in users[20:60]]
    trips = len(_breaker_trips(triton))
    before = _fallbacks(triton.http_url, sample, 60)
    assert main([*served["overrides"], "promote", "synthetic", "2"]) == 0
    namespace = Release.read(triton.repository, 2).namespace
    assert namespace != first
    assert store.namespace() == namespace and namespace in store.pinned()
    assert (models / "serving").read_text().strip() == "2" and ensemble_release(triton.http_url) == 2
    after = _fallbacks(triton.http_url, sample, 60)
    reasons = _breaker_trips(triton)[trips:]
    print(
        f"\nfeeds flagged as fallbacks: {sum(map(bool, before))} of {len(before)} before the promotion, "
        f"{sum(map(bool, after))} of {len(after)} after; breaker trips meanwhile: {reasons}"
    )
    assert set(before) | set(after) <= {0, 2}  # personal, or flagged: the store did not answer in time
    assert after[0] == 0  # the new release's first feed is personal


class _Load(threading.Thread):
    """Feed requests over HTTP back to back: (start, fallback) per answer, and every failure."""

    def __init__(self, url: str, users: list[int]):
        super().__init__(daemon=True)
        self.url, self.users, self.done = url, users, threading.Event()
        self.answers: list[tuple[float, int]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with ReelsClient(self.url, timeout_s=30.0) as client:
            i = 0
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    recs = client.recommend(self.users[i % len(self.users)], k=10, request_time=WHEN)
                    self.answers.append((started, recs.fallback))
                except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                    self.failures.append(repr(exc))
                i += 1


def _wait_personal_streak(load: _Load, since: float, streak: int = 20, timeout_s: float = 60.0) -> bool:
    """Wait until the last ``streak`` answers to requests started after ``since`` are all personal feeds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        recent = [f for t, f in load.answers if t >= since][-streak:]
        if len(recent) == streak and not any(recent):
            return True
        time.sleep(0.2)
    return False


def test_a_primary_killed_under_load_costs_no_request(served, users):
    """SIGKILL the primary holding a served user's record while a client sends feeds over HTTP: no request
    fails (flagged fallbacks while a slot has no primary), and personal feeds come back after the failover."""
    cluster, triton, store = served["cluster"], served["triton"], served["store"]
    load_users = [int(u) for u in users[4:12]]
    # The primary that holds the first user's record: every feed also reads videos from every primary.
    owner = store.client.get_node_from_key(store.keys.user(store.namespace(), load_users[0]))
    (victim,) = [n for n in cluster.primary_nodes() if n.port == owner.port]
    load = _Load(triton.http_url, load_users)
    load.start()
    try:
        # Steady state first: the step models' first requests on a busy machine may time out on Redis.
        assert _wait_personal_streak(load, since=0.0), load.answers[-20:]
        killed = time.monotonic()
        cluster.kill(victim)
        assert _wait_personal_streak(load, since=killed), "no personal feeds again within 60 s of the kill"
    finally:
        load.done.set()
        load.join(timeout=60)
    before = [f for t, f in load.answers if t < killed]
    after = [(t, f) for t, f in load.answers if t >= killed]
    last_fallback = max((t for t, f in after if f != 0), default=killed)
    recovered = min(t for t, f in after if f == 0 and t > last_fallback)
    during = [f for t, f in after if t < recovered]
    print(
        f"\nprimary killed under HTTP load: {len(load.failures)} errors in"
        f" {len(load.answers) + len(load.failures)} requests; personal feeds again {recovered - killed:.2f} s"
        f" after the kill; {sum(1 for f in during if f)} of the {len(during)} answers in between were"
        f" flagged fallbacks; {sum(1 for f in before if f)} of {len(before)} before the kill (warm-up)"
    )
    assert not load.failures, load.failures[:5]
    assert all(f in (0, 2) for f in during)  # 2: the feature store unavailable, flagged
    assert cluster.wait_ready(30.0) >= 0  # the replica owns the dead primary's slots


def test_a_cluster_that_does_not_answer_is_a_clear_error_and_nothing_is_started(tiny_models, tmp_path):
    config = load_config(None, [f"server.redis_url=redis+cluster://127.0.0.1:{free_port()}/0"])
    build = tmp_path / "build"
    with pytest.raises(ServiceUnavailable, match="does not answer"):
        with serving_stack(tmp_path, build, config.server, config.serving, model_dir=tiny_models.directory):
            pass
    assert not (build / "redis").exists()  # no redis-server was started in its place
