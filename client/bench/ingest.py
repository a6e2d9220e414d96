"""Ingest benchmark against a real redis-server: throughput of one worker draining the stream (batch
500, next to the same worker reading one event per round trip as the baseline) and freshness — the time
from XADD of an event to its effect being visible in the user's online features (what the next
recommendation reads), with a worker running.

    reels bench ingest [--source synthetic] [--events 20000] [--record]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from reels.client.record import machine
from reels.deploy.config import Config
from reels.workflows.offline_store import OfflineStore


def _events(store: OfflineStore, n: int, start: int) -> list[dict]:
    import pandas as pd

    frame = store.read_events().tail(n, compute=True).reset_index(drop=True)
    if len(frame) < n:
        frame = frame.sample(n, replace=True, random_state=0).reset_index(drop=True)
    frame["event_id"] = start + np.arange(n)
    frame["timestamp"] = pd.Timestamp("2026-06-01")
    return frame.to_dict("records")


def run(source_dir: Path, n_events: int, freshness_samples: int, batch: int = 2_000) -> dict:
    """Drain throughput (batched and one event per round trip) and XADD-to-visible freshness, against a
    temporary redis-server loaded with the source's features."""
    from reels.deploy.stack import temporary_store
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.feature_store.streams import EventProducer
    from reels.workflows.manifest import FeatureArtifacts

    features = FeatureArtifacts(source_dir / "features")
    history_length = features.manifest().history_length
    vocabulary = Vocabulary(features.workflow_dir, "video_id")
    store = OfflineStore(source_dir / "store")
    with temporary_store(features) as online:
        producer = EventProducer(online.client, online.keys.prefix)

        def drain(batch: int, events: list[dict], name: str) -> float:
            for i in range(0, len(events), 5_000):
                producer.send(events[i : i + 5_000])
            worker = IngestWorker(online, vocabulary, history_length, consumer=name, batch=batch)
            started = time.perf_counter()
            stats = worker.run(idle_exit=True)
            assert stats.applied == len(events), stats
            return len(events) / (time.perf_counter() - started)

        batched = drain(batch, _events(store, n_events, 10**12), "bench-batched")
        single = drain(1, _events(store, min(n_events, 2_000), 2 * 10**12), "bench-single")

        worker = IngestWorker(online, vocabulary, history_length, consumer="bench-live", batch=batch)
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                worker.step(block_ms=50)

        thread = threading.Thread(target=work)
        thread.start()
        latencies = []
        try:
            for event in _events(store, freshness_samples, 3 * 10**12):
                # The marker is set by the same atomic script that updates the user's seen list and history,
                # so its appearance is the moment the next request sees the event.
                marker = online.keys.applied(
                    int(event["event_id"]), online.keys.user_tag(int(event["user_id"]))
                )
                started = time.perf_counter()
                producer.send([event])
                while True:
                    if online.client.exists(marker):
                        break
                    if time.perf_counter() - started > 5:
                        raise TimeoutError("event not visible after 5 s")
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            stop.set()
            thread.join()
    a = np.array(latencies)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": f"reels bench ingest --events {n_events} --batch {batch}",
        "ingest": {
            "batch": batch,
            "events_per_s": batched,
            "one_per_round_trip_events_per_s": single,
            "speedup": batched / single,
        },
        "freshness": {f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 95, 99)} | {"samples": len(a)},
    }


def table(r: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    i, f = r["ingest"], r["freshness"]
    return "\n".join(
        [
            f"### Event ingest — {r['date']}",
            "",
            f"Machine: {r['machine']}. Command: `{r['command']}`; real redis-server, one worker.",
            "",
            f"- Throughput, batches of {i['batch']}: **{i['events_per_s']:,.0f} events/s** (baseline, one event per round "
            f"trip: {i['one_per_round_trip_events_per_s']:,.0f} events/s; {i['speedup']:.1f}x). Target: 20,000.",
            f"- Freshness, XADD → visible in the user's online features ({f['samples']} events): p50 "
            f"{f['p50_ms']:.1f} ms, p95 {f['p95_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms. Target: p99 < 100 ms.",
            "",
        ]
    )


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench ingest` on ``--source``'s store and features."""
    return run(config.source_dir(args.source), args.events, args.samples, args.batch)


def sections(report: dict) -> dict[str, dict]:
    """BENCHMARKS.json keys: the run under ``ingest``, and freshness and throughput at the top level too
    (where earlier runs recorded them)."""
    return {"ingest": report, "freshness": report["freshness"], "ingest_throughput": report["ingest"]}
