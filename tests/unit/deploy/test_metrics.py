"""The step models' own metrics without Triton: the steps report to a sink, the adapter counts refusals
by reason and a flusher thread hands everything to ``pb_utils.MetricFamily`` series (a fake here)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from reels.deploy.triton.adapter import (
    FAMILIES,
    REFUSED,
    Counts,
    Flusher,
    SealedStep,
    TritonMetrics,
    bind,
    execute,
)
from reels.deploy.triton.seal import Seal, Sealer
from reels.deploy.triton.steps import (
    NO_METRICS,
    QUERY_CATEGORICAL,
    DiversityRerankStep,
    RetrievalStep,
    pack,
)
from reels.models.serving.request import BadRequest, Fallback, QueryFeatures
from reels.models.serving.rerank import Recommendation
from reels.workflows.spec import HISTORY, USER_CONTINUOUS


class FakeMetric:
    def __init__(self, labels: dict, buckets):
        self.labels, self.buckets = labels, buckets
        self.value, self.observed, self.updates = 0.0, [], 0

    def increment(self, value: float) -> None:
        self.value += value
        self.updates += 1

    def observe(self, value: float) -> None:
        self.observed.append(value)
        self.updates += 1


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

    def __init__(self, name: str, description: str, kind: str):
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[FakeMetric] = []

    def Metric(self, labels: dict, buckets=None) -> FakeMetric:  # noqa: N802 - pb_utils' spelling
        metric = FakeMetric(labels, buckets)
        self.metrics.append(metric)
        return metric


class FakeTensor:
    def __init__(self, name: str, value: np.ndarray):
        self.name, self.value = name, value

    def as_numpy(self) -> np.ndarray:
        return self.value


class FakeError:
    INVALID_ARG, INTERNAL = "invalid", "internal"

    def __init__(self, message: str, code=None):
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = output_tensors, error


class FakePbUtils:
    MetricFamily = FakeFamily
    TritonError = FakeError
    InferenceResponse = FakeResponse
    Tensor = FakeTensor

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str):
        return FakeTensor(name, request[name]) if name in request else None


def _series(metrics: TritonMetrics) -> dict[tuple[str, tuple], FakeMetric]:
    return {(name, key): metric for (name, key), metric in metrics.series.items()}


def test_refusals_are_counted_by_reason_and_every_request_is_answered():
    sealer = Sealer("k")
    seal = Seal("x_seal", ("x",))

    def step(tensors):
        if tensors["x"][0] < 0:
            raise BadRequest("x must be >= 0")
        if tensors["x"][0] == 13:
            raise RuntimeError("boom")
        return {"y": tensors["x"] + 1}

    sealed = SealedStep(step, sealer, [seal], [])

    def request(x: int, forged: bool = False) -> dict:
        tensors = {"x": np.array([x], np.int64)}
        tensors["x_seal"] = sealer.seal(tensors, seal) if not forged else np.array([b"f" * 32], object)
        return tensors

    counts = Counts()
    requests = [
        request(1),
        request(-1),
        request(2, forged=True),
        request(13),
        {"x_seal": request(1)["x_seal"]},
    ]
    responses = execute(FakePbUtils, requests, ("x", "x_seal"), sealed, counts)
    assert [r.error.code if r.error else None for r in responses] == [
        None, "invalid", "invalid", "internal", "invalid"
    ]  # fmt: skip
    assert "x_seal does not match" in responses[2].error.message
    increments, observations = counts.take()
    assert increments == {
        (REFUSED, (("reason", "bad_input"),)): 2.0,  # x < 0, and a missing tensor
        (REFUSED, (("reason", "bad_seal"),)): 1.0,
        (REFUSED, (("reason", "internal"),)): 1.0,
    }
    assert observations == [] and counts.take() == ({}, [])


def test_counts_reach_triton_once_per_changed_series_with_model_and_version_labels():
    metrics = TritonMetrics(FakePbUtils, "diversity_rerank_v3", "1")
    assert {f.name: f.kind for f in metrics.families.values()} == {n: f.kind for n, f in FAMILIES.items()}
    metrics.declare([(REFUSED, {"reason": "bad_seal"})])
    counts = Counts()
    for _ in range(3):
        counts.count("reels_feeds_total", {"variant": "control", "fallback": "none"})
    counts.count("reels_feeds_total", {"fallback": "none", "variant": "control"}, 2)  # same series
    counts.count("reels_exposure_log_failures_total", None, 0)  # nothing: no update at all
    counts.observe("reels_candidates_retrieved", 200, {"fallback": "none"})
    counts.observe("reels_candidates_retrieved", 150, {"fallback": "none"})
    metrics.flush(counts)
    series = {(name, tuple(m.labels.items())): m for (name, _), m in _series(metrics).items()}
    feeds = series[
        (
            "reels_feeds_total",
            (
                ("model", "diversity_rerank_v3"),
                ("version", "1"),
                ("fallback", "none"),
                ("variant", "control"),
            ),
        )
    ]
    assert (feeds.value, feeds.updates) == (5.0, 1)  # one round trip for five feeds
    candidates = series[
        (
            "reels_candidates_retrieved",
            (("model", "diversity_rerank_v3"), ("version", "1"), ("fallback", "none")),
        )
    ]
    assert candidates.observed == [200.0, 150.0]
    assert candidates.buckets == [float(b) for b in FAMILIES["reels_candidates_retrieved"].buckets]
    refused = series[(REFUSED, (("model", "diversity_rerank_v3"), ("version", "1"), ("reason", "bad_seal")))]
    assert (refused.value, refused.updates, refused.buckets) == (0.0, 0, None)  # declared at zero
    assert not any(name == "reels_exposure_log_failures_total" for name, _ in series)
    metrics.flush(counts)  # nothing new: no update
    assert feeds.updates == 1
    with pytest.raises(KeyError, match="unknown metric"):
        counts.count("reels_typo_total")
    metrics.close()
    assert metrics.series == {} and metrics.families == {}


def test_the_step_model_flushes_off_the_request_path_and_a_broken_metric_fails_no_request():
    model = bind(FakePbUtils)()
    model.inputs = ("x",)
    model.counts = Counts()
    model.sealed = lambda t: (
        model.counts.count("reels_feeds_total", {"variant": "v", "fallback": "none"}),
        t,
    )[1]
    model.metrics = TritonMetrics(FakePbUtils, "m_v1", "1")
    model._metric_errors = 0
    responses = model.execute([{"x": np.array([1])}, {"x": np.array([2])}])
    assert [r.error for r in responses] == [None, None]
    assert model.metrics.series == {}  # execute sends nothing: the flusher does
    model._flush()
    (feeds,) = model.metrics.series.values()
    assert (feeds.value, feeds.updates) == (2.0, 1)

    def broken(value):
        raise RuntimeError("metrics server gone")

    feeds.increment = broken
    responses = model.execute([{"x": np.array([3])}])
    model._flush()
    assert responses[0].error is None and model._metric_errors == 1
    assert model.counts.take() == ({}, [])  # not kept to grow forever


def test_the_flusher_sends_every_interval_and_once_more_when_stopped():
    counts = Counts()
    metrics = TritonMetrics(FakePbUtils, "m_v1", "1")
    flusher = Flusher(lambda: metrics.flush(counts), interval_s=0.02).start()
    counts.count("reels_feeds_total", {"variant": "v", "fallback": "none"}, 3)
    deadline = time.monotonic() + 5
    while not metrics.series and time.monotonic() < deadline:
        time.sleep(0.01)
    (feeds,) = metrics.series.values()
    assert feeds.value == 3.0  # sent by the thread, no call on the request path
    flusher.interval_s = 3600.0  # the thread now sleeps: only stop() can send what comes next
    time.sleep(0.05)
    counts.count("reels_feeds_total", {"variant": "v", "fallback": "none"}, 2)
    flusher.stop()
    assert feeds.value == 5.0 and not flusher._thread.is_alive()


def test_counts_lose_nothing_when_taken_while_threads_report():
    counts = Counts()
    taken: list[float] = []

    def report():
        for _ in range(20_000):
            counts.count("reels_feeds_total", {"variant": "v", "fallback": "none"})

    threads = [threading.Thread(target=report) for _ in range(2)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        taken.append(sum(counts.take()[0].values()))
    for thread in threads:
        thread.join()
    taken.append(sum(counts.take()[0].values()))
    assert sum(taken) == 40_000


def _recommendation(pool, explored, fallback=Fallback.NONE, variant="diverse") -> Recommendation:
    n = len(pool)
    return Recommendation(
        np.arange(n), np.ones(n, np.float32), np.zeros((n, 4), np.float32), np.full(n, -1), fallback,
        np.ones(n, np.float32), np.array(explored, bool), np.ones(n, bool), np.array(pool), variant,
    )  # fmt: skip


class _Exposures:
    failed = 0


class _Rerank:
    def __init__(self, out: Recommendation, lose: bool):
        self.out, self.lose = out, lose
        self.exposures = _Exposures()
        self.variant_configs = {"control": None, "diverse": None}

    def __call__(self, *args, **kwargs) -> Recommendation:
        self.exposures.failed += int(self.lose)
        return self.out


def _rerank_tensors() -> dict[str, np.ndarray]:
    return {
        "k": np.array([5], np.int32), "ranked_ids": np.arange(5), "ranking_scores": np.ones(5, np.float32),
        "candidate_task_predictions": np.zeros((5, 4), np.float32), "history_video_ids": np.zeros(5, np.int64),
        "request_time_s": np.array([1_800_000_000]), "ranking_fallback": np.array([1], np.int32),
        "user_id": np.array([7]), "hidden_creator_ids": np.array([], np.int64),
    }  # fmt: skip


def test_rerank_reports_the_feed_its_slots_and_a_lost_exposure():
    step = object.__new__(DiversityRerankStep)  # no release: only what __call__ reads
    assert step.metrics is NO_METRICS  # outside Triton: reports go nowhere
    step.max_k = 50
    out = _recommendation(
        pool=[0, 7, 0, 7, 0], explored=[False, True, False, False, False], fallback=Fallback.COLD_START
    )
    step.rerank = _Rerank(out, lose=True)
    step(_rerank_tensors())  # NO_METRICS: nothing to see, nothing fails
    step.metrics = counts = Counts()
    step(_rerank_tensors())
    step.rerank.lose = False
    step(_rerank_tensors())
    increments, _ = counts.take()
    assert increments == {
        ("reels_feeds_total", (("fallback", "cold_start"), ("variant", "diverse"))): 2.0,
        ("reels_feed_slots_total", (("slot", "ranked"), ("variant", "diverse"))): 6.0,
        ("reels_feed_slots_total", (("slot", "exploration_greedy"), ("variant", "diverse"))): 2.0,
        ("reels_feed_slots_total", (("slot", "exploration_random"), ("variant", "diverse"))): 2.0,
        ("reels_exposure_log_failures_total", ()): 1.0,
    }
    declared = step.metric_series()
    assert ("reels_feeds_total", {"variant": "control", "fallback": "store_unavailable"}) in declared
    assert ("reels_exposure_log_failures_total", {}) in declared
    assert len(declared) == 2 * 3 + 2 * 3 + 1
    step.rerank.exposures = None  # exposure logging off: no failure series
    assert ("reels_exposure_log_failures_total", {}) not in step.metric_series()


def test_retrieval_observes_candidates_per_request_by_fallback():
    features = {n: np.array([0]) for n in QUERY_CATEGORICAL} | {n: np.array([0.0]) for n in USER_CONTINUOUS}
    features[HISTORY] = np.zeros((1, 5), np.int64)
    tensors = pack(QueryFeatures(features, np.array([], np.int64), Fallback.STORE_UNAVAILABLE, 1_800_000_000))
    step = object.__new__(RetrievalStep)
    step.retrieval = lambda query, seen: (np.arange(42), np.ones(42, np.float32))
    step.metrics = counts = Counts()
    assert len(step(tensors)["candidate_ids"]) == 42
    assert counts.take()[1] == [("reels_candidates_retrieved", (("fallback", "store_unavailable"),), 42.0)]
    assert [labels for _, labels in step.metric_series()] == [
        {"fallback": "none"}, {"fallback": "cold_start"}, {"fallback": "store_unavailable"}
    ]  # fmt: skip


def test_reels_ingest_metrics_flags_default_to_off_and_start_up_loads_no_prometheus_client():
    import json
    import subprocess
    import sys

    from reels.client.cli import build_parser

    args = build_parser().parse_args(["ingest"])
    assert (args.metrics_port, args.metrics_address) == (None, None)
    args = build_parser().parse_args(["ingest", "--metrics-port", "9100", "--metrics-address", "0.0.0.0"])
    assert (args.metrics_port, args.metrics_address) == (9100, "0.0.0.0")
    probe = (
        "import sys, json\nfrom reels.client.cli import main\ntry:\n    main(['ingest', '--help'])\n"
        "except SystemExit:\n    pass\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "prometheus_client" not in json.loads(out.stdout.strip().splitlines()[-1])


def test_ingest_metrics_are_served_over_http_on_loopback():
    import math
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from reels.feature_store.ingest import IngestMetrics, IngestStats

    metrics = IngestMetrics()
    port = metrics.serve(0)  # any free port, 127.0.0.1
    try:
        metrics.counted(IngestStats(read=4, applied=2, duplicates=1, dead_lettered=1))
        metrics.counted(IngestStats(read=1, applied=1))
        metrics.offline_batch("events", 3)
        metrics.redis_unavailable()
        metrics.redis_unavailable()
        metrics.redis_back()
        groups = [{"name": b"ingest", "pending": 2, "lag": 5}, {"name": "audit", "pending": 0, "lag": None}]
        metrics.stream_state(40, 1, groups)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        metrics.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    messages = {dict(k[1])["outcome"]: v for k, v in samples.items() if k[0] == "reels_ingest_messages_total"}
    assert messages == {
        "read": 5,
        "applied": 3,
        "duplicate": 1,
        "dead_lettered": 1,
        "failed_apply": 0,
        "claimed": 0,
    }
    assert samples[("reels_ingest_offline_batches_total", (("table", "events"),))] == 1
    assert samples[("reels_ingest_offline_rows_total", (("table", "events"),))] == 3
    assert samples[("reels_ingest_offline_rows_total", (("table", "hides"),))] == 0
    assert samples[("reels_ingest_redis_unavailable_total", ())] == 2
    assert samples[("reels_ingest_redis_reconnects_total", ())] == 1
    assert samples[("reels_ingest_redis_up", ())] == 1
    assert samples[("reels_ingest_stream_length", ())] == 40
    assert samples[("reels_ingest_dead_letter_length", ())] == 1
    assert samples[("reels_ingest_stream_lag", (("group", "ingest"),))] == 5
    assert math.isnan(samples[("reels_ingest_stream_lag", (("group", "audit"),))])
    assert samples[("reels_ingest_stream_pending", (("group", "ingest"),))] == 2
    assert not any(name.endswith("_created") for name, _ in samples)
