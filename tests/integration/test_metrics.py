"""Metrics of our own, scraped from real processes: the ``reels_*`` series a real tritonserver exports on
its metrics port next to its ``nv_*`` ones (feeds by fallback and variant, slots by how they were filled,
lost exposure-log entries, candidates per request, refused requests), and the ``reels_ingest_*`` series
of a real ``reels ingest --metrics-port`` process. Every assertion is on exact increments between two
scrapes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from reels.client.triton_client import ClientError, ReelsClient
from reels.deploy.redis_server import free_port
from reels.feature_store.streams import EventProducer, read_exposures
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.spec import OOV
from tests.integration.direct_calls import infer
from tests.integration.stack_data import triton_over_redis

CONFIG = ServingConfig(candidates=200, max_k=50, max_per_creator=2, max_per_category=6)
EXPERIMENT = Experiment(name="metrics", salt="m", variants={"control": {}, "diverse": {"mmr_lambda": 0.4}})
COLD_USER = 424_242_426


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at ``url`` as ``{(name, sorted label pairs): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def settled(url: str, timeout_s: float = 15.0) -> dict[tuple[str, tuple], float]:
    """A scrape once the steps' flushers have sent what the requests so far counted: after one flush
    interval, the first scrape whose ``reels_*`` samples equal the previous one's (a flush interval
    apart)."""
    from reels.deploy.triton.adapter import FLUSH_INTERVAL_S

    deadline = time.monotonic() + timeout_s
    time.sleep(FLUSH_INTERVAL_S)
    last = scrape(url)
    while True:
        time.sleep(FLUSH_INTERVAL_S * 1.2)
        sample = scrape(url)
        ours = {k: v for k, v in sample.items() if k[0].startswith("reels_")}
        if (
            ours == {k: v for k, v in last.items() if k[0].startswith("reels_")}
            or time.monotonic() > deadline
        ):
            return sample
        last = sample


def moved(before: dict, after: dict, prefix: str) -> dict[tuple[str, tuple], float]:
    """The samples named ``prefix``* whose value changed between two scrapes, by how much."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key[0].startswith(prefix) and after[key] != before.get(key, 0.0)
    }


def key(name: str, **labels) -> tuple[str, tuple]:
    """The scrape key of one sample."""
    return name, tuple(sorted(labels.items()))


# ---- Triton -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tiny_models, tiny_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    with triton_over_redis(tiny_models, tiny_features, root, CONFIG, EXPERIMENT) as (redis_server, triton):
        yield {"redis": redis_server, "triton": triton}


def _known_user(tiny_features) -> int:
    frame = pd.read_parquet(tiny_features.users_path)
    history = np.stack(frame["history_video_ids"].to_numpy())
    return int(frame.loc[(frame["user_id"] > OOV) & (history > OOV).any(axis=1), "raw_user_id"].iloc[0])


def test_triton_exports_feeds_slots_candidates_and_refusals(stack, tiny_features, tiny_models):
    from reels.deploy.triton.repository import pinned_version
    from reels.deploy.triton.steps import SEALED_REQUEST

    triton = stack["triton"]
    metrics_url = f"http://127.0.0.1:{triton.metrics_port}/metrics"
    version = pinned_version(triton.repository)
    rerank, retrieval, transform = (
        f"{s}_v{version}" for s in ("diversity_rerank", "retrieval", "feature_transform")
    )
    user = _known_user(tiny_features)
    end = int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp())
    when = end + 11  # fresh videos exist: exploration slots are filled; this test's feeds only

    before = scrape(metrics_url)
    assert any(name.startswith("nv_inference_count") for name, _ in before)  # next to Triton's own
    # Declared at zero when the models loaded: scraped before their first event.
    assert before[key("reels_requests_refused_total", model=transform, version="1", reason="bad_seal")] == 0
    assert (
        before[key("reels_feeds_total", model=rerank, version="1", variant="diverse", fallback="cold_start")]
        == 0
    )
    with ReelsClient(triton.http_url) as client:
        personal = [client.recommend(user, k=10, request_time=when) for _ in range(2)]
        cold = client.recommend(COLD_USER, k=5, request_time=when)
        with pytest.raises(ClientError, match="k must be between"):
            client.recommend(user, k=0, request_time=when)
    request = {
        "user_id": np.array([user], np.int64), "k": np.array([5], np.int32),
        "device": np.array([b"ios"], object), "hour": np.array([-1], np.int32),
        "request_time": np.array([when], np.int64),
    }  # fmt: skip
    sealed = {n: (request | infer(triton.http_url, transform, request))[n] for n in SEALED_REQUEST}
    with pytest.raises(Exception, match="request_seal does not match"):
        infer(triton.http_url, retrieval, sealed | {"user_id": np.array([user + 1], np.int64)})
    after = settled(metrics_url)  # our metrics reach Triton from each step's flusher thread

    assert [r.fallback for r in personal] == [0, 0] and cold.fallback == 1
    base = {"version": "1"}
    changed = moved(before, after, "reels_")
    # Feeds by fallback and variant, on the last step only.
    feeds = {k: v for k, v in changed.items() if k[0] == "reels_feeds_total"}
    expected = {
        key("reels_feeds_total", model=rerank, variant=personal[0].variant, fallback="none", **base): 2.0
    }
    cold_key = key("reels_feeds_total", model=rerank, variant=cold.variant, fallback="cold_start", **base)
    expected[cold_key] = 1.0
    assert feeds == expected
    # Refusals: the bad k at step 1 (bad input), the forged user at retrieval (bad seal); nothing else.
    refused = {k: v for k, v in changed.items() if k[0] == "reels_requests_refused_total"}
    assert refused == {
        key("reels_requests_refused_total", model=transform, reason="bad_input", **base): 1.0,
        key("reels_requests_refused_total", model=retrieval, reason="bad_seal", **base): 1.0,
    }
    # Candidates: one observation per request that reached retrieval (the direct call was refused).
    count = {k: v for k, v in changed.items() if k[0] == "reels_candidates_retrieved_count"}
    assert count == {
        key("reels_candidates_retrieved_count", model=retrieval, fallback="none", **base): 2.0,
        key("reels_candidates_retrieved_count", model=retrieval, fallback="cold_start", **base): 1.0,
    }
    total = changed[key("reels_candidates_retrieved_sum", model=retrieval, fallback="none", **base)]
    assert total == 2 * CONFIG.candidates  # the tiny catalog has enough videos for a full list
    # Slots: exactly how the exposure log says the three feeds were filled.
    log = read_exposures(stack["redis"].client())
    log = log[log["user_id"].isin([user, COLD_USER]) & (log["request_time_s"] == when)]
    assert log["request_id"].nunique() == 3
    slots = {k: v for k, v in changed.items() if k[0] == "reels_feed_slots_total"}
    from_log: dict = {}
    for variant, rows in log.groupby("variant"):
        kinds = np.where(
            rows["pool"] == 0,
            "ranked",
            np.where(rows["explored"], "exploration_random", "exploration_greedy"),
        )
        for slot, n in pd.Series(kinds).value_counts().items():
            from_log[key("reels_feed_slots_total", model=rerank, variant=variant, slot=slot, **base)] = float(
                n
            )
    assert slots == from_log
    assert sum(slots.values()) == 25
    assert any(dict(k[1])["slot"] != "ranked" for k in slots)  # exploration slots were served
    assert not {k for k in changed if k[0] == "reels_exposure_log_failures_total"}

    # Redis away: every feed is a flagged fallback and its exposure entry is lost, each one counted.
    redis_server = stack["redis"]
    redis_server.stop()
    try:
        before = settled(metrics_url)
        with ReelsClient(triton.http_url) as client:
            outage = [client.recommend(user, k=5, request_time=when + 1) for _ in range(3)]
        after = settled(metrics_url)
    finally:
        redis_server.start()
    assert [r.fallback for r in outage] == [2, 2, 2]
    changed = moved(before, after, "reels_")
    variant = outage[0].variant
    assert (
        changed[key("reels_feeds_total", model=rerank, variant=variant, fallback="store_unavailable", **base)]
        == 3
    )
    assert changed[key("reels_exposure_log_failures_total", model=rerank, **base)] == 3
    assert {k for k in changed if k[0] == "reels_feeds_total"} == {
        key("reels_feeds_total", model=rerank, variant=variant, fallback="store_unavailable", **base)
    }


# ---- the ingest worker ------------------------------------------------------------------------------------
def _events(tiny_store, n: int, start_id: int) -> list[dict]:
    frame = tiny_store.read_events().compute().tail(n).reset_index(drop=True)
    frame["event_id"] = start_id + np.arange(len(frame))
    frame["timestamp"] = pd.Timestamp("2026-02-01")
    return frame.to_dict("records")


def _until(condition, url: str, timeout_s: float = 60.0) -> dict:
    """Scrape ``url`` until ``condition(scrape)`` holds; the last scrape (asserted on by the caller)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sample = scrape(url)
        except OSError:  # not listening yet
            sample = {}
        if (sample and condition(sample)) or time.monotonic() > deadline:
            return sample
        time.sleep(0.2)


def test_reels_ingest_serves_counts_lag_and_reconnects(
    loaded_store, redis_server, tiny_features, tiny_store, tmp_path
):
    source = tmp_path / "data" / "synthetic"
    source.mkdir(parents=True)
    (source / "features").symlink_to(tiny_features.root)
    client = loaded_store.client
    stream = loaded_store.keys.events
    client.xgroup_create(stream, "audit", id="0", mkstream=True)  # a group nobody reads: its lag grows
    good = _events(tiny_store, 5, start_id=7 * 10**9)
    producer = EventProducer(client)
    producer.send(good + good[:2])  # 2 duplicates
    producer.send([dict(good[0], event_id=7 * 10**9 + 99, watch_time_s=-3.0)])  # invalid: dead-lettered
    client.xadd(stream, {"event": b"not json"})  # malformed: dead-lettered
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {k: v for k, v in os.environ.items() if k != "REELS_REDIS_URL"}
    argv = [
        sys.executable, "-m", "reels.client.cli", "--set", f"data.root={tmp_path / 'data'}",
        "--set", f"server.redis_url={redis_server.url()}", "ingest", "synthetic", "--consumer", "metrics",
        "--metrics-port", str(port),
    ]  # fmt: skip
    log = open(tmp_path / "ingest.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        messages = lambda s, outcome: s.get(key("reels_ingest_messages_total", outcome=outcome))  # noqa: E731
        lag = lambda s, group: s.get(key("reels_ingest_stream_lag", group=group))  # noqa: E731
        first = _until(lambda s: messages(s, "read") == 9 and lag(s, "ingest") == 0, url)
        assert first, (tmp_path / "ingest.log").read_text()[-3000:]
        assert {o: messages(first, o) for o in ("read", "applied", "duplicate", "dead_lettered", "failed_apply")} == {
            "read": 9, "applied": 5, "duplicate": 2, "dead_lettered": 2, "failed_apply": 0,
        }  # fmt: skip
        assert first[key("reels_ingest_stream_length")] == 9
        assert first[key("reels_ingest_dead_letter_length")] == 2
        assert (lag(first, "ingest"), lag(first, "audit")) == (0, 9)
        assert first[key("reels_ingest_stream_pending", group="ingest")] == 0
        assert first[key("reels_ingest_offline_rows_total", table="events")] == 5
        assert first[key("reels_ingest_offline_batches_total", table="events")] == 1  # one read, one batch
        assert first[key("reels_ingest_redis_up")] == 1
        assert first[key("reels_ingest_redis_reconnects_total")] == 0

        producer.send(_events(tiny_store, 3, start_id=8 * 10**9))  # while it runs
        second = _until(lambda s: messages(s, "applied") == 8 and lag(s, "audit") == 12, url)
        assert (messages(second, "applied"), lag(second, "audit"), lag(second, "ingest")) == (8, 12, 0)
        assert second[key("reels_ingest_offline_rows_total", table="events")] == 8

        # Redis away for a while, then back: failed tries counted, one reconnect, up again.
        redis_server.stop()
        try:
            down = _until(lambda s: s[key("reels_ingest_redis_unavailable_total")] >= 1, url, 30)
            assert down[key("reels_ingest_redis_up")] == 0
        finally:
            redis_server.start()
        back = _until(lambda s: s[key("reels_ingest_redis_reconnects_total")] == 1, url, 30)
        assert back[key("reels_ingest_redis_reconnects_total")] == 1
        assert back[key("reels_ingest_redis_up")] == 1
        assert messages(back, "applied") == 8  # nothing applied twice
        assert worker.poll() is None, (tmp_path / "ingest.log").read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
