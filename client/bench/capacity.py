"""Capacity plan: what a deployment for a target load needs (Triton CPU cores, Redis memory and shards,
ingest workers, FAISS index memory and rebuild time), computed from numbers measured here, never guessed.

Measured in this run: Redis bytes per key of each kind (``MEMORY USAGE`` over a sample, after loading the
source's features into a temporary redis-server and streaming events through the real ingest worker).
Taken from the latest recorded benchmarks (docs/BENCHMARKS.json, their dates printed beside them):
serving requests/s on two cores, the Redis read of a user + 500 videos, ingest events/s per worker, FAISS
build times. GPU figures are not measured on this machine and are left out.

    reels bench capacity [--source synthetic] [--users 100000000] [--videos 10000000] [--rps 50000]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from reels.client.record import DOCS, machine
from reels.deploy.config import Config

KINDS = ("user", "seen", "video", "counters", "applied", "offline", "hidden_creators")
SAMPLE = 500  # keys per kind whose MEMORY USAGE is read
SHARD_MEMORY_GB = 25.0  # a primary's dataset, leaving headroom on a 32 GB node (fork for AOF rewrites)


def _kind(key: str) -> str | None:
    parts = key.split(":")
    for kind in KINDS:
        if kind in parts:
            return kind
    return None


def key_sizes(client, sample: int = SAMPLE) -> dict[str, dict]:
    """Per key kind: keys seen, mean ``MEMORY USAGE`` bytes over up to ``sample`` keys, and TTL if any."""
    seen: dict[str, list[str]] = {kind: [] for kind in KINDS}
    counts = dict.fromkeys(KINDS, 0)
    for raw in client.scan_iter(count=5000):
        key = raw.decode()
        kind = _kind(key)
        if kind is None:
            continue
        counts[kind] += 1
        if len(seen[kind]) < sample:
            seen[kind].append(key)
    out = {}
    for kind, keys in seen.items():
        if not keys:
            continue
        sizes = [client.memory_usage(k, samples=0) or 0 for k in keys]
        ttl = client.ttl(keys[0])
        out[kind] = {
            "keys": counts[kind],
            "bytes_per_key": float(np.mean(sizes)),
            "ttl_s": ttl if ttl > 0 else None,
        }
    return out


def run(source_dir: Path, n_events: int) -> dict:
    """Key sizes after a features load and ``n_events`` streamed through the ingest worker."""
    from reels.client.bench.ingest import _events
    from reels.deploy.stack import temporary_store
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.feature_store.streams import EventProducer
    from reels.workflows.manifest import FeatureArtifacts
    from reels.workflows.offline_store import OfflineStore

    features = FeatureArtifacts(source_dir / "features")
    manifest = features.manifest()
    with temporary_store(features) as online:
        producer = EventProducer(online.client, online.keys.prefix)
        events = _events(OfflineStore(source_dir / "store"), n_events, 10**12)
        for i in range(0, len(events), 5_000):
            producer.send(events[i : i + 5_000])
        vocabulary = Vocabulary(features.workflow_dir, "video_id")
        worker = IngestWorker(online, vocabulary, manifest.history_length, consumer="capacity", batch=2_000)
        worker.run(idle_exit=True)
        sizes = key_sizes(online.client)
    return {"history_length": manifest.history_length, "events_streamed": n_events, "keys": sizes}


def _recorded(docs: Path) -> dict:
    path = docs / "BENCHMARKS.json"
    return json.loads(path.read_text()) if path.exists() else {}


def plan(measured: dict, recorded: dict, users: int, videos: int, rps: float) -> dict:
    """The deployment for ``users``, ``videos`` and ``rps`` from the measured key sizes and recorded runs."""
    keys = measured["keys"]
    per_user = sum(keys[k]["bytes_per_key"] for k in ("user", "seen") if k in keys)
    per_video = sum(keys[k]["bytes_per_key"] for k in ("video", "counters") if k in keys)
    redis_gb = (users * per_user + videos * per_video) / 1e9
    out: dict = {"users": users, "videos": videos, "rps": rps, "bytes_per_user": per_user,
                 "bytes_per_video": per_video, "redis_dataset_gb": redis_gb}  # fmt: skip
    serving = recorded.get("serving", {})
    if serving:
        rps_two_cores = max(v["rps"] for p in ("grpc", "http") for v in serving.get(p, {}).values())
        out["serving"] = {
            "date": serving["date"], "requests_per_s_two_cores": rps_two_cores,
            "cpu_ms_per_request": 2000.0 / rps_two_cores, "cores": math.ceil(rps / rps_two_cores * 2),
        }  # fmt: skip
    store = recorded.get("store", {}).get("read_user_plus_500")
    if store:
        # One serving read = a user + 500 videos; per shard it is one round trip (grouped per node).
        reads_per_s_per_core = 1000.0 / store["p50_ms"]
        out["redis_reads"] = {"date": recorded["store"]["date"], "read_p50_ms": store["p50_ms"],
                              "reads_per_s_per_core": reads_per_s_per_core}  # fmt: skip
    shards_memory = math.ceil(redis_gb / SHARD_MEMORY_GB)
    if store:
        shards_reads = math.ceil(rps / out["redis_reads"]["reads_per_s_per_core"])
        out["redis_shards"] = {"for_memory": shards_memory, "for_reads": shards_reads,
                               "primaries": max(shards_memory, shards_reads)}  # fmt: skip
    ingest = recorded.get("ingest", {}).get("ingest")
    if ingest:
        events_per_s = rps * 20  # one event per video shown: a feed of 20, every impression logged
        applied = keys.get("applied", {})
        marker_gb = events_per_s * (applied.get("ttl_s") or 0) * applied.get("bytes_per_key", 0) / 1e9
        out["ingest"] = {
            "date": recorded["ingest"]["date"], "events_per_s": events_per_s,
            "events_per_s_per_worker": ingest["events_per_s"],
            "workers": math.ceil(events_per_s / ingest["events_per_s"]), "dedupe_markers_gb": marker_gb,
        }  # fmt: skip
    faiss = recorded.get("models", {}).get("faiss", {})
    if faiss:
        sizes = sorted(faiss, key=int)
        largest = sizes[-1]
        ivf = faiss[largest].get("ivf", {})
        dim = 64
        out["faiss"] = {
            "date": recorded["models"]["date"], "measured_at": int(largest),
            "ivf_build_s": ivf.get("build_s"),
            "ivf_build_s_at_target": ivf.get("build_s", 0) * videos / int(largest),
            "flat_index_gb": videos * dim * 4 / 1e9,
        }  # fmt: skip
    return out


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench capacity`: key sizes measured now, the plan for the target load."""
    started = time.perf_counter()
    measured = run(config.source_dir(args.source), args.events)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "command": f"reels bench capacity --source {args.source} --users {args.users} --videos {args.videos} "
                   f"--rps {args.rps:g}",
        "measured": measured,
        "plan": plan(measured, _recorded(DOCS), args.users, args.videos, args.rps),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    return report


def table(report: dict) -> str:
    """Markdown: the measured key sizes, then the plan with where each input came from."""
    m, p = report["measured"], report["plan"]
    lines = [
        f"## Capacity plan ({report['date']}, {report['machine']})", "", f"Command: `{report['command']}`", "",
        f"Redis key sizes measured now (features loaded, {m['events_streamed']:,} events streamed; history "
        f"length {m['history_length']}):", "",
        "| key kind | keys | bytes per key (MEMORY USAGE) | TTL |", "|---|---|---|---|",
    ]  # fmt: skip
    for kind, k in m["keys"].items():
        lines.append(f"| {kind} | {k['keys']:,} | {k['bytes_per_key']:.0f} | {k['ttl_s'] or '-'} |")
    lines += [
        "", f"Target: {p['users']:,} users, {p['videos']:,} videos, {p['rps']:,.0f} feed requests/s.", "",
        "| what | figure | from |", "|---|---|---|",
        f"| Redis dataset | {p['redis_dataset_gb']:,.0f} GB ({p['bytes_per_user']:.0f} B per user, "
        f"{p['bytes_per_video']:.0f} B per video) | key sizes above |",
    ]  # fmt: skip
    if "redis_shards" in p:
        s, r = p["redis_shards"], p["redis_reads"]
        lines.append(
            f"| Redis primaries | {s['primaries']} (memory at {SHARD_MEMORY_GB:.0f} GB each: {s['for_memory']}; "
            f"reads at {r['reads_per_s_per_core']:,.0f}/s per core: {s['for_reads']}), each with a replica | "
            f"user + 500 videos read p50 {r['read_p50_ms']:.2f} ms ({r['date']}) |"
        )
    if "serving" in p:
        s = p["serving"]
        lines.append(
            f"| Triton CPU cores | {s['cores']:,} ({s['cpu_ms_per_request']:.1f} core-ms per request) | "
            f"{s['requests_per_s_two_cores']:.0f} requests/s on 2 cores ({s['date']}) |"
        )
    lines.append("| Triton GPUs | not measured on this machine | - |")
    if "ingest" in p:
        i = p["ingest"]
        lines.append(
            f"| ingest workers | {i['workers']:,} for {i['events_per_s']:,.0f} events/s (20 impressions per feed); "
            f"dedupe markers {i['dedupe_markers_gb']:,.1f} GB | {i['events_per_s_per_worker']:,.0f} events/s per "
            f"worker ({i['date']}) |"
        )
    if "faiss" in p:
        f = p["faiss"]
        lines.append(
            f"| FAISS | {f['flat_index_gb']:.1f} GB of float32 vectors per copy; IVF rebuild "
            f"~{f['ivf_build_s_at_target']:,.0f} s single-threaded at the target size (linear from "
            f"{f['ivf_build_s']:.2f} s at {f['measured_at']:,}) | models benchmark ({f['date']}) |"
        )
    return "\n".join(lines) + "\n"
