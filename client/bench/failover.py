"""Redis Cluster failover under load: `reels serve`'s stack on a local Redis Cluster (3 primaries + 3
replicas), perf_analyzer over HTTP through the ensemble back to back, and an ingest worker applying a known
stream of events, while the primary that holds the event stream is killed with SIGKILL.

    reels bench failover [--source synthetic] [--seconds 20] [--concurrency 2] [--events-per-s 100]

Reported, in three windows (before the kill; the failover, from the kill until every slot has a primary
again; after it): perf_analyzer runs (a run stops at its first failed request, so a failed run is a
request that failed, e.g. an HTTP 5xx) with their p99, the ensemble's failed requests as Triton counts
them, and the feeds Triton served by fallback reason (``reels_feeds_total`` scraped from its metrics
port: a flagged fallback is an answer, not an error).
Also: the seconds from the kill until the replica reports itself primary and until the cluster is ready,
and the events the producer had acknowledged against what the online store counted (each event's video
``events`` counter), so a lost or doubly applied event shows as a difference."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console

from reels.client.bench.serving import perf_analyzer, request_users, write_input_data
from reels.client.record import machine
from reels.deploy.config import Config
from reels.deploy.triton.release import ENSEMBLE

WINDOWS = ("before", "failover", "after")
FAILED = "failed requests"  # the scrape's key for the ensemble's failed requests


def _scrape(metrics_url: str) -> Counter:
    """Triton's counters now: ``reels_feeds_total`` summed by its ``fallback`` label, and under the key
    ``FAILED`` the ensemble's failed requests (``nv_inference_request_failure``: each one an error
    response, over HTTP a 5xx)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "reels_feeds_total":
                counts[sample.labels["fallback"]] += int(sample.value)
            elif sample.name == "nv_inference_request_failure" and sample.labels.get("model") == ENSEMBLE:
                counts[FAILED] += int(sample.value)
    return counts


class _PerfAnalyzerLoop(threading.Thread):
    """perf_analyzer runs of about one second each, back to back, until ``done`` is set; each run with the
    monotonic time it ended (a failed request ends a run at once)."""

    def __init__(self, url: str, input_data: Path, concurrency: int):
        super().__init__(daemon=True)
        self.url, self.input_data, self.concurrency = url, input_data, concurrency
        self.done = threading.Event()
        self.runs: list[dict] = []

    def run(self) -> None:
        while not self.done.is_set():
            finished, measured = perf_analyzer(
                "http", self.url, self.input_data, self.concurrency, 1.0, stability_percentage=1000,
                max_trials=3,
            )  # fmt: skip
            output = finished.stdout + finished.stderr
            # Not stable over its windows (a busy machine, a failover) is not a failed request.
            unstable = "Failed to obtain stable measurement" in output
            run = {"ended": time.monotonic(), "failed": finished.returncode != 0 and not unstable}
            if run["failed"]:
                run["error"] = [line for line in output.splitlines() if "rror" in line][-1:] or output[-300:]
            self.runs.append(run | (measured or {}))


class _EventLoop(threading.Thread):
    """Sends ``events`` in batches at about ``per_s`` events a second until ``done`` is set or they run
    out; a batch whose XADD fails (the stream's primary is away) is sent again until acknowledged. The
    acknowledged events are ``acked``."""

    def __init__(self, producer, events: list[dict], per_s: int):
        super().__init__(daemon=True)
        self.producer, self.events, self.per_s = producer, events, per_s
        self.done = threading.Event()
        self.acked: list[dict] = []
        self.failed_sends = 0

    def run(self) -> None:
        import redis
        from redis.exceptions import RedisClusterException

        batch = max(1, self.per_s // 10)
        for start in range(0, len(self.events), batch):
            if self.done.is_set():
                return
            chunk = self.events[start : start + batch]
            while True:
                try:
                    self.producer.send(chunk)
                    break
                except (redis.RedisError, RedisClusterException):
                    self.failed_sends += 1
                    time.sleep(0.05)
            self.acked.extend(chunk)
            time.sleep(0.1)


class _IngestLoop(threading.Thread):
    """One ingest worker (as `reels ingest` runs it: no redis-py retries, its own backoff) until ``done``."""

    def __init__(self, worker):
        super().__init__(daemon=True)
        self.worker = worker
        self.done = threading.Event()
        self.totals: Counter = Counter()

    def run(self) -> None:
        while not self.done.is_set():
            stats = self.worker.run(seconds=2.0)
            for name in ("read", "applied", "duplicates", "dead_lettered", "claimed"):
                self.totals[name] += getattr(stats, name)


def _events(source_dir: Path, n: int) -> list[dict]:
    """The source's latest ``n`` events with new ids and the time now (ingest applies them as new)."""
    import pandas as pd

    from reels.workflows.offline_store import OfflineStore

    frame = OfflineStore(source_dir / "store").read_events().tail(n, compute=True).reset_index(drop=True)
    if len(frame) < n:
        frame = frame.sample(n, replace=True, random_state=0).reset_index(drop=True)
    frame["event_id"] = 3 * 10**13 + np.arange(n)
    frame["timestamp"] = pd.Timestamp.utcnow().tz_localize(None).floor("s")
    return frame.to_dict("records")


def _counted(store, videos: set[int]) -> Counter:
    """Each video's streamed ``events`` counter in the active namespace."""
    ns = store.namespace()
    pipe = store.client.pipeline(transaction=False)
    ordered = sorted(videos)
    for video in ordered:
        pipe.hget(store.keys.counters(ns, video), "events")
    return Counter({v: int(n or 0) for v, n in zip(ordered, pipe.execute(), strict=True)})


def _replica_of(cluster, victim):
    """The running node that replicates ``victim``."""
    for node in cluster.running():
        info = node.client().info("replication")
        if info["role"] == "slave" and int(info["master_port"]) == victim.port:
            return node
    raise RuntimeError(f"no replica of the primary on port {victim.port}")


@contextmanager
def _stack_on_a_cluster(config: Config, source: str, model_dir: Path, root: Path, say) -> Iterator[tuple]:
    """A fresh local Redis Cluster under ``root`` and `reels serve`'s stack on it (free ports, one
    tritonserver); yields ``(cluster, redis settings, triton)``."""
    from reels.deploy.redis_server import RedisCluster, free_port
    from reels.deploy.stack import serving_stack

    with RedisCluster(root / "cluster") as cluster:
        server = dataclasses.replace(
            config.server, redis_url=cluster.url(), http_port=free_port(), grpc_port=free_port(),
            metrics_port=free_port(), replicas=1,
        )  # fmt: skip
        with serving_stack(
            config.source_dir(source), root / "build", server, config.serving, say,
            experiment=config.experiment, model_dir=model_dir,
        ) as (_, triton):  # fmt: skip
            yield cluster, server.redis, triton


def _kill(cluster, victim, replica, marks: dict) -> None:
    """SIGKILL ``victim``; mark when its replica reports itself primary and when the cluster is ready."""
    marks["kill"] = time.monotonic()
    cluster.kill(victim)
    while replica.client().info("replication")["role"] != "master":
        if time.monotonic() - marks["kill"] > 60:
            raise RuntimeError("the replica was not promoted within 60 s")
        time.sleep(0.02)
    marks["promoted"] = time.monotonic()
    cluster.wait_ready(60.0)
    marks["ready"] = time.monotonic()


def _wait_counted(
    store, videos: set[int], before: Counter, expected: Counter, timeout_s: float = 120.0
) -> Counter:
    """Each video's counter increase since ``before``, once it reaches ``expected`` (or after
    ``timeout_s``), read again two seconds later: an event applied twice would show by then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _counted(store, videos) - before != expected:
        time.sleep(0.5)
    time.sleep(2.0)
    after = _counted(store, videos)
    return Counter({v: after[v] - before[v] for v in videos})


def _windows(runs: list[dict], marks: dict, scrapes: dict) -> dict:
    """Each window's perf_analyzer runs (by the time each ended) and feeds by fallback."""
    bounds = {"before": ("start", "kill"), "failover": ("kill", "ready"), "after": ("ready", "end")}
    windows = {}
    for name, (first, last) in bounds.items():
        inside = [r for r in runs if marks[first] <= r["ended"] < marks[last]]
        p99s = [r["p99_ms"] for r in inside if "p99_ms" in r]
        feeds = scrapes[last] - scrapes[first]
        failed = feeds.pop(FAILED, 0)
        windows[name] = {
            "seconds": round(marks[last] - marks[first], 2),
            "perf_analyzer_runs": len(inside),
            "perf_analyzer_failed_runs": sum(r["failed"] for r in inside),
            "perf_analyzer_errors": sorted({str(r["error"]) for r in inside if r["failed"]})[:3],
            "perf_analyzer_p99_ms_median_run": float(np.median(p99s)) if p99s else None,
            "perf_analyzer_p99_ms_worst_run": max(p99s, default=None),
            "failed_requests": failed,
            "feeds": sum(feeds.values()),
            "feeds_by_fallback": dict(sorted(feeds.items())),
        }
    return windows


def run(
    config: Config, source: str, seconds: float, concurrency: int, events_per_s: int, console: Console
) -> dict:
    """Serve the source's serving version from a fresh local Redis Cluster and measure the three windows."""
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.feature_store.streams import EventProducer
    from reels.models.registry import serving_model_dir, trained_features

    source_dir = config.source_dir(source)
    model_dir = serving_model_dir(source_dir / "models")
    features = trained_features(model_dir)
    shards = config.stream.shards
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "command": f"reels bench failover --source {source} --seconds {seconds:g} "
                   f"--concurrency {concurrency} --events-per-s {events_per_s}",
        "serving_version": int(model_dir.name), "perf_analyzer_concurrency": concurrency,
        "stream_shards": shards,
    }  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="reels-failover-") as tmp,
        _stack_on_a_cluster(config, source, model_dir, Path(tmp), console.print) as (
            cluster,
            settings,
            triton,
        ),
    ):
        input_data = Path(tmp) / "requests.json"
        write_input_data(input_data, request_users(features.root, 1000), 20)
        metrics_url = f"http://127.0.0.1:{triton.metrics_port}/metrics"
        store = settings.store(timeout_s=2.0, namespace_ttl_s=0.0)
        producer = EventProducer(settings.client(timeout_s=1.0), settings.prefix, shards=shards)
        events = _events(source_dir, int(events_per_s * (3 * seconds + 120)))
        videos = {int(e["video_id"]) for e in events}
        counted_before = _counted(store, videos)
        worker = IngestWorker(
            # As `reels ingest` runs it: no redis-py retries, the worker's own backoff.
            settings.store(timeout_s=2.0, retries=False), Vocabulary(features.workflow_dir, "video_id"),
            features.manifest().history_length, consumer="failover-bench", shards=shards,
        )  # fmt: skip
        worker.reconnect_max_s = 1.0
        # The victim: the primary that holds the event stream (its shard 0), so ingest loses it too.
        owner = store.client.get_node_from_key(producer.streams[0])
        (victim,) = [n for n in cluster.primary_nodes() if n.port == owner.port]
        replica = _replica_of(cluster, victim)
        pa = _PerfAnalyzerLoop(triton.http_url, input_data, concurrency)
        sender, ingest = _EventLoop(producer, events, events_per_s), _IngestLoop(worker)
        for thread in (pa, sender, ingest):
            thread.start()
        marks, scrapes = {"start": time.monotonic()}, {"start": _scrape(metrics_url)}
        console.print(f"window: before ({seconds:g} s)")
        time.sleep(seconds)
        scrapes["kill"] = _scrape(metrics_url)
        console.print(f"SIGKILL the primary on port {victim.port} (it holds {producer.streams[0]})")
        _kill(cluster, victim, replica, marks)
        scrapes["ready"] = _scrape(metrics_url)
        console.print(f"window: after ({seconds:g} s)")
        time.sleep(seconds)
        marks["end"], scrapes["end"] = time.monotonic(), _scrape(metrics_url)
        for thread in (pa, sender):
            thread.done.set()
            thread.join(timeout=120)
        expected = Counter(int(e["video_id"]) for e in sender.acked)
        applied = _wait_counted(store, videos, counted_before, expected)
        ingest.done.set()
        ingest.join(timeout=120)
    report.update(
        primary_killed_port=victim.port,
        replica_promoted_s=round(marks["promoted"] - marks["kill"], 2),
        cluster_ready_s=round(marks["ready"] - marks["kill"], 2),
        events_acknowledged=len(sender.acked),
        events_send_retries=sender.failed_sends,
        events_counted=sum(applied.values()),
        events_lost=sum((expected - applied).values()),
        events_counted_twice=sum((applied - expected).values()),
        ingest=dict(ingest.totals),
        windows=_windows(pa.runs, marks, scrapes),
    )
    return report


def table(report: dict) -> str:
    """The run as a markdown section (docs/SCALING.md)."""
    lines = [
        f"### A Redis Cluster primary killed under load — {report['date']}", "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. A local Redis Cluster (3 primaries "
        f"+ 3 replicas, cluster-node-timeout 2 s); the primary holding the event stream (port "
        f"{report['primary_killed_port']}) was killed with SIGKILL. Its replica reported itself primary "
        f"{report['replica_promoted_s']:.2f} s after the kill; every slot had a primary again "
        f"after {report['cluster_ready_s']:.2f} s.", "",
        "| window | seconds | perf_analyzer runs (failed) | p99 ms median run | p99 ms worst run | failed "
        "requests (Triton) | feeds | feeds by fallback |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for name in WINDOWS:
        w = report["windows"][name]
        median, worst = w["perf_analyzer_p99_ms_median_run"], w["perf_analyzer_p99_ms_worst_run"]
        fallbacks = ", ".join(f"{k}: {v}" for k, v in w["feeds_by_fallback"].items())
        p99 = " | ".join("-" if ms is None else f"{ms:.1f}" for ms in (median, worst))
        lines.append(
            f"| {name} | {w['seconds']:.1f} | {w['perf_analyzer_runs']} ({w['perf_analyzer_failed_runs']}) "
            f"| {p99} | {w['failed_requests']} | {w['feeds']} | {fallbacks} |"
        )
    ingest = report["ingest"]
    lines += [
        "",
        f"Events: {report['events_acknowledged']} acknowledged by the stream "
        f"({report['events_send_retries']} sends retried while its primary was away), "
        f"{report['events_counted']} counted by the online store: "
        f"{report['events_lost']} lost, {report['events_counted_twice']} counted twice. The worker read "
        f"{ingest.get('read', 0)}, applied {ingest.get('applied', 0)}, skipped {ingest.get('duplicates', 0)} "
        f"duplicates, dead-lettered {ingest.get('dead_lettered', 0)}.",
    ]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench failover`."""
    return run(config, args.source, args.seconds, args.concurrency, args.events_per_s, Console())


def sections(report: dict) -> dict[str, dict]:
    """BENCHMARKS.json key ``redis_cluster_failover``."""
    return {"redis_cluster_failover": report}
