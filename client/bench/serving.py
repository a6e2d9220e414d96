"""Serving benchmark: perf_analyzer against the ``reels`` ensemble (HTTP and gRPC, several concurrencies),
with Triton's per-model statistics for the server-side breakdown, and — in the same run, on the same
requests — the in-process pipeline (same library code, no Triton) and the compute floor (query tower +
FAISS search + ranker forward only). Ratios against the floor make the numbers comparable across runs.

    reels bench serving [--source synthetic] [--concurrency 1 4 8 16] [--record]

perf_analyzer comes with the tritonclient 2.51 wheel (``.venv/bin/perf_analyzer``); it needs Debian's
libb64-0d and libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH (set here).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rich.console import Console

if TYPE_CHECKING:
    from reels.feature_store.store import OnlineStore

from reels.client.record import machine
from reels.deploy.config import Config
from reels.deploy.triton.release import ENSEMBLE


def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer runs in: libcudart.so.12 from its wheel on LD_LIBRARY_PATH."""
    import nvidia.cuda_runtime as cuda_runtime

    cudart = Path(list(cuda_runtime.__path__)[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(cudart), env.get("LD_LIBRARY_PATH", "")]))
    return env


def request_users(features_dir: Path, n: int, seed: int = 0) -> np.ndarray:
    """Realistic traffic: users drawn by their activity (event counts), plus 5% unknown users."""
    users = pd.read_parquet(features_dir / "users.parquet")
    rng = np.random.default_rng(seed)
    known = users["raw_user_id"].to_numpy()
    weights = np.exp(users["user_event_count"].to_numpy())  # standardised log-count -> activity
    picked = rng.choice(known, n, p=weights / weights.sum())
    cold = rng.random(n) < 0.05
    picked[cold] = 10**12 + np.arange(cold.sum())
    return picked


def write_input_data(path: Path, users: np.ndarray, k: int) -> None:
    """perf_analyzer's ``--input-data`` file: one request per user, devices drawn at random."""
    devices = np.random.default_rng(1).choice(["ios", "android", "web"], len(users))
    data = [
        {"user_id": [int(u)], "k": [k], "device": [str(d)], "hour": [-1], "request_time": [0]}
        for u, d in zip(users, devices, strict=True)
    ]
    path.write_text(json.dumps({"data": data}))


def _model_stats(url: str) -> dict[str, dict[str, float]]:
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    stats = client.get_inference_statistics()
    client.close()
    out = {}
    for model in stats["model_stats"]:
        s = model["inference_stats"]
        out[model["name"]] = {
            "count": int(s["success"]["count"]),
            "compute_ns": int(s["compute_input"]["ns"])
            + int(s["compute_infer"]["ns"])
            + int(s["compute_output"]["ns"]),
            "queue_ns": int(s["queue"]["ns"]),
        }
    return out


def perf_analyzer(
    protocol: str,
    url: str,
    input_data: Path,
    concurrency: int,
    seconds: float,
    stability_percentage: int = 50,
    max_trials: int = 6,
) -> tuple[subprocess.CompletedProcess, dict | None]:
    """One perf_analyzer run against the ensemble: the finished process and, when it wrote its
    CSV, the measured p50/p95/p99 latency (ms) and requests/s."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "out.csv"
        cmd = [
            str(binary), "-m", ENSEMBLE, "-u", url, "-i", protocol, "--input-data", str(input_data),
            "--concurrency-range", f"{concurrency}:{concurrency}", "--percentile", "99",
            "--measurement-interval", str(int(seconds * 1000)), "--stability-percentage", str(stability_percentage),
            "--max-trials", str(max_trials), "-f", str(csv_path),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=perf_analyzer_env(), timeout=600)
        row = next(csv.DictReader(csv_path.open()), None) if csv_path.exists() else None
    if row is None:
        return done, None
    return done, {
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p95_ms": float(row["p95 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "rps": float(row["Inferences/Second"]),
    }


def run_perf_analyzer(
    protocol: str, url: str, stats_url: str, input_data: Path, concurrency: int, seconds: float
) -> dict:
    """One measured perf_analyzer run with Triton's per-step compute and queue time over the same window."""
    before = _model_stats(stats_url)
    done, measured = perf_analyzer(protocol, url, input_data, concurrency, seconds)
    after = _model_stats(stats_url)
    if done.returncode != 0 or measured is None:
        raise RuntimeError(
            f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    breakdown = {}
    for model, b in after.items():
        count = b["count"] - before.get(model, {}).get("count", 0)
        if count and model != ENSEMBLE:
            breakdown[model] = {
                "compute_ms": (b["compute_ns"] - before[model]["compute_ns"]) / count / 1e6,
                "queue_ms": (b["queue_ns"] - before[model]["queue_ns"]) / count / 1e6,
            }
    return {**measured, "server_breakdown": breakdown}


def _summary(latencies_ms: list[float], seconds: float) -> dict:
    a = np.array(latencies_ms)
    return {
        "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)), "rps": len(a) / seconds,
    }  # fmt: skip


def in_process(model_dir: Path, store: OnlineStore, users: np.ndarray, k: int) -> tuple[dict, dict]:
    """The same pipeline in this process (sequential, concurrency 1) and its compute floor."""
    from reels.models.inputs import QUERY_FEATURES, RANKER_FEATURES
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.models.serving.request import Request

    pipeline = InProcessPipeline(model_dir, store)
    for user in users[:20]:  # warm-up
        pipeline.recommend(Request(int(user), k))
    latencies, started = [], time.perf_counter()
    for user in users:
        t0 = time.perf_counter()
        pipeline.recommend(Request(int(user), k))
        latencies.append((time.perf_counter() - t0) * 1000)
    full = _summary(latencies, time.perf_counter() - started)

    # Floor: query tower + FAISS top-N + ranker forward over N candidates, features already in memory.
    request = Request(int(users[0]), k).validate(pipeline.config.max_k)
    query = pipeline.feature_transform(request)
    candidates, _ = pipeline.retrieval(query, query.seen)
    rows = pipeline.ranking.store.read_videos(candidates)
    n = len(rows.video_ids)
    ranker_inputs = {name: np.repeat(query.features[name], n, axis=0) for name in QUERY_FEATURES}
    for name in RANKER_FEATURES:
        if name not in ranker_inputs and name != "video_age":
            ranker_inputs[name] = rows.videos[name]
    ranker_inputs["video_age"] = np.zeros(n, dtype=np.float32)
    tower, index, ranker = pipeline.retrieval.query_tower, pipeline.retrieval.index, pipeline.ranking.ranker
    latencies, started = [], time.perf_counter()
    for _ in range(len(users)):
        t0 = time.perf_counter()
        embedding = tower({name: query.features[name] for name in QUERY_FEATURES})
        index.search(np.ascontiguousarray(embedding, dtype=np.float32), pipeline.config.candidates)
        ranker(ranker_inputs)
        latencies.append((time.perf_counter() - t0) * 1000)
    floor = _summary(latencies, time.perf_counter() - started)
    floor["candidates_ranked"] = n
    return full, floor


def run(
    config: Config,
    source: str,
    concurrency: list[int],
    seconds: float,
    requests: int,
    console: Console,
    instances: list[int],
) -> dict:
    """perf_analyzer over gRPC and HTTP at each concurrency (and other instance counts), then the
    in-process pipeline and the compute floor on the same requests."""
    from reels.deploy.stack import serving_stack
    from reels.models.registry import serving_model_dir

    source_dir = config.source_dir(source)
    build = Path(config.server.build_dir) / f"bench-{source}"
    users = request_users(source_dir / "features", requests)
    k = 20
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": f"reels bench serving --source {source} --concurrency {' '.join(map(str, concurrency))}"
        + (f" --instances {' '.join(map(str, instances))}" if len(instances) > 1 else ""),
        "settings": {
            "k": k, "candidates": config.serving.candidates, "instances_per_model": instances[0], "dynamic_batching": False,
            "OMP_NUM_THREADS": 1, "TF_NUM_INTRAOP_THREADS": 1, "TF_NUM_INTEROP_THREADS": 1, "catalog": int(len(pd.read_parquet(source_dir / "features" / "videos.parquet"))),
        },
        "serving": {"grpc": {}, "http": {}},
    }  # fmt: skip
    for extra in instances[1:]:  # other instance counts: same requests, lowest and a loaded concurrency
        with serving_stack(source_dir, build, config.server, config.serving, console.print, extra) as (
            _,
            triton,
        ):
            with tempfile.TemporaryDirectory() as tmp:
                input_data = Path(tmp) / "requests.json"
                write_input_data(input_data, users, k)
                for c in sorted({min(concurrency), 8}):
                    console.print(f"perf_analyzer grpc concurrency {c}, {extra} instances per model")
                    result = run_perf_analyzer(
                        "grpc", triton.grpc_url, triton.http_url, input_data, c, seconds
                    )
                    report.setdefault("instances", {}).setdefault(str(extra), {})[str(c)] = result
    stack = serving_stack(source_dir, build, config.server, config.serving, console.print, instances[0])
    with stack as (_, triton):
        with tempfile.TemporaryDirectory() as tmp:
            input_data = Path(tmp) / "requests.json"
            write_input_data(input_data, users, k)
            for protocol in ("grpc", "http"):
                url = triton.grpc_url if protocol == "grpc" else triton.http_url
                for c in concurrency:
                    console.print(f"perf_analyzer {protocol} concurrency {c}")
                    report["serving"][protocol][str(c)] = run_perf_analyzer(
                        protocol, url, triton.http_url, input_data, c, seconds
                    )

        console.print("in-process pipeline and compute floor")
        store = config.server.redis.store(timeout_s=5.0)  # the stack's Redis, started or found there
        full, floor = in_process(serving_model_dir(source_dir / "models"), store, users, k)
    report["serving"]["in_process"] = full
    report["serving"]["floor"] = floor
    return report


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    s = report["serving"]
    floor = s["floor"]["p50_ms"]
    lines = [
        f"### Serving — {report['date']}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Settings: {report['settings']}.",
        "",
        "| path | concurrency | p50 ms | p95 ms | p99 ms | requests/s | p50 × floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for protocol in ("grpc", "http"):
        for c, r in s[protocol].items():
            lines.append(
                f"| Triton {protocol} | {c} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {r['p50_ms'] / floor:.1f} |"
            )
    for name in ("in_process", "floor"):
        r = s[name]
        lines.append(
            f"| {name.replace('_', '-')} | 1 | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {r['p50_ms'] / floor:.1f} |"
        )
    for n, runs in report.get("instances", {}).items():
        for c, r in runs.items():
            lines.append(
                f"| Triton grpc, {n} instances/model | {c} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {r['p50_ms'] / floor:.1f} |"
            )
    first = next(iter(s["grpc"].values()))
    lines += ["", "Server-side compute per model (gRPC, lowest concurrency), ms per request: "
              + ", ".join(f"{m} {b['compute_ms']:.1f}" for m, b in first["server_breakdown"].items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench serving` with the command's sources, concurrencies and instance counts."""
    return run(config, args.source, args.concurrency, args.seconds, args.requests, Console(), args.instances)


def sections(report: dict) -> dict[str, dict]:
    """BENCHMARKS.json key ``serving``: the paths' numbers next to the run's date, machine and settings."""
    about = {k: report[k] for k in ("date", "machine", "command", "settings")}
    return {"serving": {**report["serving"], **about, "instances": report.get("instances", {})}}
