"""Serving benchmark: perf_analyzer against the ``reels`` ensemble (HTTP and gRPC, several concurrencies),
with Triton's per-model statistics for the server-side breakdown, and — in the same run, on the same
requests — the in-process pipeline (same library code, no Triton) and the compute floor (query tower +
FAISS search + ranker forward only). Ratios against the floor make the numbers comparable across runs.

    reels bench serving [--source synthetic] [--concurrency 1 4 8 16] [--record]
    reels bench serving --catalog 100000 --baseline --merlin   # a 100k-video catalog, built once

``--catalog N`` benchmarks a synthetic source with N videos (``client/bench/catalog.py`` builds it once),
and reports the FAISS setting that training chose for that size with its measured recall. ``--baseline``
adds, in the same run, the ensemble with the previous serving settings (the TensorFlow SavedModel ranker
and candidate video records read from Redis) at concurrency 1 and 8. ``--merlin`` adds Merlin Systems'
stock in-process DAG on the same trained models (the optional ``bench`` extra). Goals are ratios within
the run: ensemble p99 at concurrency 1 against the floor's p99, requests/s at concurrency 8 against the
floor's single-thread requests/s, and the Merlin Systems p50 against ours.

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
    stable = measured is not None
    if done.returncode != 0 and "Failed to obtain stable measurement" in done.stdout + done.stderr:
        # A busy machine: take three windows as they come, and say so in the result.
        before = _model_stats(stats_url)
        done, measured = perf_analyzer(
            protocol, url, input_data, concurrency, seconds, stability_percentage=999, max_trials=3
        )
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
    return {**measured, "stable": stable, "server_breakdown": breakdown}


def _summary(latencies_ms: list[float], seconds: float) -> dict:
    a = np.array(latencies_ms)
    return {
        "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)), "rps": len(a) / seconds,
    }  # fmt: skip


def in_process(model_dir: Path, store: OnlineStore, users: np.ndarray, k: int) -> tuple[dict, dict]:
    """The same pipeline in this process (sequential, concurrency 1) and its compute floor, each on one
    thread (BLAS and FAISS's OpenMP), as the serving steps run (``OMP_NUM_THREADS=1``)."""
    import faiss
    from threadpoolctl import threadpool_limits

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            return _in_process(model_dir, store, users, k)
    finally:
        faiss.omp_set_num_threads(threads)


def _in_process(model_dir: Path, store: OnlineStore, users: np.ndarray, k: int) -> tuple[dict, dict]:
    from reels.models.inputs import ITEM_FEATURES, QUERY_FEATURES
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.models.serving.request import QUERY_USER_FIELDS, Request
    from reels.workflows.spec import REQUEST_CONTEXT

    pipeline = InProcessPipeline(model_dir, store)
    for user in users[:20]:  # warm-up
        pipeline.recommend(Request(int(user), k))
    latencies, started = [], time.perf_counter()
    for user in users:
        t0 = time.perf_counter()
        pipeline.recommend(Request(int(user), k))
        latencies.append((time.perf_counter() - t0) * 1000)
    full = _summary(latencies, time.perf_counter() - started)

    # Floor: the leanest form of the same arithmetic with features already in memory: the query tower,
    # FAISS top-N and the ranker's forward over N candidates with its user side once (as serving runs it).
    request = Request(int(users[0]), k).validate(pipeline.config.max_k)
    query = pipeline.feature_transform(request)
    candidates, _ = pipeline.retrieval(query, query.seen)
    rows = pipeline.ranking.store.read_videos(candidates)
    n = len(rows.video_ids)
    user_inputs = {name: query.features[name] for name in QUERY_USER_FIELDS + REQUEST_CONTEXT}
    item_inputs = {name: rows.videos[name] for name in ITEM_FEATURES}
    item_inputs["video_age"] = np.zeros(n, dtype=np.float32)
    retrieval, ranker = pipeline.retrieval, pipeline.ranking.ranker
    latencies, started = [], time.perf_counter()
    for _ in range(len(users)):
        t0 = time.perf_counter()
        embedding = retrieval.query_tower({name: query.features[name] for name in QUERY_FEATURES})
        retrieval.index.search(retrieval.index_query(embedding, query.features), pipeline.config.candidates)
        ranker.score_candidates(user_inputs, item_inputs)
        latencies.append((time.perf_counter() - t0) * 1000)
    floor = _summary(latencies, time.perf_counter() - started)
    floor["candidates_ranked"] = n
    return full, floor


# the settings before: TensorFlow SavedModels for the query tower and ranker, candidate records from Redis
BASELINE_SERVING = {
    "ranker_backend": "savedmodel",
    "query_tower_backend": "savedmodel",
    "video_features": "redis",
}


def step_stub_pid(server_pid: int, step: str) -> int:
    """The pid of the python-backend stub that tritonserver ``server_pid`` runs for ``step`` (e.g. ``ranking``)."""
    import psutil

    stubs = psutil.Process(server_pid).children()
    for stub in stubs:
        if any(f"/{step}_v" in part for part in stub.cmdline()):
            return stub.pid
    seen = [" ".join(stub.cmdline())[:200] for stub in stubs]
    raise RuntimeError(f"tritonserver {server_pid} runs no python stub of {step}: {seen}")


def profile_steps(pids: dict[str, int], seconds: float, out_dir: Path, run_load) -> dict[str, dict]:
    """Sample each step's stub (``{step: pid}``) with py-spy for ``seconds``, all at once, while
    ``run_load()`` keeps requests coming; each step's collapsed stacks go to ``out_dir/<step>.pyspy.txt``
    and its functions with the most samples (own and inclusive) come back."""
    import shutil
    import threading

    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    samplers = {}
    for step, pid in pids.items():
        command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                   "--format", "raw", "--output", str(out_dir / f"{step}.pyspy.txt"), "--nonblocking"]  # fmt: skip
        samplers[step] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load = threading.Thread(target=run_load, daemon=True)
    load.start()
    for sampler in samplers.values():
        sampler.wait(timeout=seconds + 60)
    load.join()
    return {step: _collapsed_summary(out_dir / f"{step}.pyspy.txt") for step in pids}


def _collapsed_summary(path: Path) -> dict:
    """py-spy's raw (collapsed) stacks -> the 15 functions with the most own and inclusive samples."""
    own, inclusive, total, outside = {}, {}, 0, 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip():  # no Python frame: the stub's C++ loop (waiting for a request, moving tensors)
            outside += int(count)
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]  # fmt: skip
        total += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)

    def top(counts: dict) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:15]]

    return {"samples": total, "outside_python": outside, "own": top(own), "inclusive": top(inclusive)}


def run(
    config: Config,
    source: str,
    concurrency: list[int],
    seconds: float,
    requests: int,
    console: Console,
    instances: list[int],
    catalog: int | None = None,
    baseline: bool = False,
    merlin: bool = False,
    profile: float = 0.0,
) -> dict:
    """perf_analyzer over gRPC and HTTP at each concurrency (and other instance counts), then the
    in-process pipeline and the compute floor on the same requests; optionally the previous serving
    settings and the Merlin Systems peer in the same run."""
    import dataclasses

    from reels.deploy.stack import serving_stack
    from reels.models.registry import load_manifest, serving_model_dir

    if catalog is not None:
        from reels.client.bench.catalog import ensure_catalog_source

        source = ensure_catalog_source(config, catalog, console.print)
    source_dir = config.source_dir(source)
    model_dir = serving_model_dir(source_dir / "models")
    build = Path(config.server.build_dir) / f"bench-{source}"
    users = request_users(source_dir / "features", requests)
    k = 20
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": (f"reels bench serving --catalog {catalog}" if catalog else f"reels bench serving --source {source}")
        + f" --concurrency {' '.join(map(str, concurrency))}"
        + (f" --instances {' '.join(map(str, instances))}" if len(instances) > 1 else "")
        + (" --baseline" if baseline else "") + (" --merlin" if merlin else "")
        + (f" --profile {profile:g}" if profile else ""),
        "settings": {
            "k": k, "candidates": config.serving.candidates, "instances_per_model": instances[0], "dynamic_batching": False,
            "OMP_NUM_THREADS": 1, "TF_NUM_INTRAOP_THREADS": 1, "TF_NUM_INTEROP_THREADS": 1, "catalog": int(len(pd.read_parquet(source_dir / "features" / "videos.parquet"))),
            "ranker_backend": config.serving.ranker_backend, "query_tower_backend": config.serving.query_tower_backend,
            "video_features": config.serving.video_features,
        },
        "index": load_manifest(model_dir)["metrics"]["index"],
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

            if profile:
                console.print(f"py-spy on the four steps' stubs for {profile:.0f} s under gRPC concurrency 1")
                steps = ("feature_transform", "retrieval", "ranking", "diversity_rerank")
                report["profile"] = profile_steps(
                    {step: step_stub_pid(triton.process.pid, step) for step in steps}, profile, build,
                    lambda: perf_analyzer("grpc", triton.grpc_url, input_data, 1, profile, max_trials=1),
                )  # fmt: skip
        console.print("in-process pipeline and compute floor")
        store = config.server.redis.store(timeout_s=5.0)  # the stack's Redis, started or found there
        full, floor = in_process(model_dir, store, users, k)
    report["serving"]["in_process"] = full
    report["serving"]["floor"] = floor
    if baseline:
        before = dataclasses.replace(config.serving, **BASELINE_SERVING)
        with serving_stack(source_dir, build, config.server, before, console.print, instances[0]) as (
            _,
            triton,
        ):
            with tempfile.TemporaryDirectory() as tmp:
                input_data = Path(tmp) / "requests.json"
                write_input_data(input_data, users, k)
                for protocol in ("grpc", "http"):
                    url = triton.grpc_url if protocol == "grpc" else triton.http_url
                    for c in sorted({min(concurrency), 8}):
                        console.print(
                            f"baseline settings {BASELINE_SERVING}: perf_analyzer {protocol} concurrency {c}"
                        )
                        report.setdefault("baseline", {}).setdefault(protocol, {})[str(c)] = (
                            run_perf_analyzer(protocol, url, triton.http_url, input_data, c, seconds)
                        )
    if merlin:
        from reels.client.bench.merlin_peer import merlin_systems_pipeline

        console.print("Merlin Systems in-process DAG on the same models")
        try:
            report["serving"]["merlin_systems"] = merlin_systems_pipeline(
                model_dir,
                source_dir / "features",
                users[: min(len(users), 300)],
                k,
                config.serving.candidates,
            )
        except Exception as exc:  # noqa: BLE001 - the peer is a comparison: keep the run's own results
            report["serving"]["merlin_systems"] = {"error": f"{type(exc).__name__}: {exc}"}
            console.print(f"[red]Merlin Systems peer failed: {type(exc).__name__}: {exc}[/red]")
    report["goals"] = goals(report)
    return report


def goals(report: dict) -> dict:
    """The run's ratios: ensemble p99 at the lowest concurrency over the floor's p99 (per protocol),
    requests/s at concurrency 8 over the floor's single-thread requests/s, Merlin Systems p50 over ours."""
    s = report["serving"]
    floor = s["floor"]
    out = {}
    for protocol in ("grpc", "http"):
        runs = s[protocol]
        lowest = runs[min(runs, key=int)]
        out[f"{protocol}_p99_over_floor_p99"] = lowest["p99_ms"] / floor["p99_ms"]
        if "8" in runs:
            out[f"{protocol}_rps_c8_over_floor_rps"] = runs["8"]["rps"] / floor["rps"]
    if "p50_ms" in s.get("merlin_systems", {}):
        lowest = s["grpc"][min(s["grpc"], key=int)]
        out["merlin_p50_over_grpc_p50"] = s["merlin_systems"]["p50_ms"] / lowest["p50_ms"]
        out["merlin_p50_over_in_process_p50"] = s["merlin_systems"]["p50_ms"] / s["in_process"]["p50_ms"]
    return out


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
                f"| Triton {protocol}{'' if r.get('stable', True) else ' (unstable)'} | {c} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {r['p50_ms'] / floor:.1f} |"
            )
    for protocol, runs in report.get("baseline", {}).items():
        for c, r in runs.items():
            lines.append(
                f"| Triton {protocol}, before (SavedModel towers, videos from Redis) | {c} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {r['p50_ms'] / floor:.1f} |"
            )
    for name in ("in_process", "floor", "merlin_systems"):
        if name not in s or "p50_ms" not in s[name]:
            continue
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
    if "baseline" in report:
        before = next(iter(report["baseline"]["grpc"].values()))
        lines += ["", "Before (SavedModel query tower and ranker, videos from Redis), same run: "
                  + ", ".join(f"{m} {b['compute_ms']:.1f}" for m, b in before["server_breakdown"].items())]  # fmt: skip
    index = report.get("index")
    if index:
        lines += ["", f"FAISS index over {index['items']:,} videos: **{index['kind']}**"
                  + (f" nprobe {index['nprobe']}" if index.get("nprobe") else "")
                  + f", recall@{index['k']} vs exact {index['recall_at_k']:.3f} (trained embeddings, validation queries)."]  # fmt: skip
        if index.get("tried"):
            lines += [
                "",
                "| index setting | recall@K vs exact | search p50 ms | search p99 ms |",
                "|---|---:|---:|---:|",
            ]
            for row in index["tried"]:
                name = row["kind"] + (f" nprobe {row['nprobe']}" if row.get("nprobe") else "")
                lines.append(
                    f"| {name} | {row['recall_at_k']:.3f} | {row['search_p50_ms']:.2f} | {row['search_p99_ms']:.2f} |"
                )
    for step, prof in report.get("profile", {}).items():
        lines += ["", f"py-spy on the {step} step's python stub under gRPC concurrency 1: {prof['samples']:,} samples "
                  f"in Python, {prof['outside_python']:,} more in the stub's C++ loop (waiting for a request or "
                  "moving tensors). Share of the Python samples (top 8 by own samples):", "",
                  "| function (file) | own | inclusive |", "|---|---:|---:|"]  # fmt: skip
        inclusive = dict(prof["inclusive"])
        for name, share in prof["own"][:8]:
            lines.append(f"| `{name}` | {share:.1%} | {inclusive.get(name, share):.1%} |")
    if "error" in s.get("merlin_systems", {}):
        lines += ["", f"The Merlin Systems peer failed in this run: {s['merlin_systems']['error']}"]
    if report.get("goals"):
        lines += ["", "Ratios in this run: " + ", ".join(f"{k} {v:.2f}" for k, v in report["goals"].items())]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench serving` with the command's sources, concurrencies and instance counts."""
    return run(
        config, args.source, args.concurrency, args.seconds, args.requests, Console(), args.instances,
        catalog=args.catalog, baseline=args.baseline, merlin=args.merlin, profile=args.profile,
    )  # fmt: skip


def sections(report: dict) -> dict[str, dict]:
    """BENCHMARKS.json key ``serving``: the paths' numbers next to the run's date, machine and settings."""
    about = {k: report[k] for k in ("date", "machine", "command", "settings")}
    extra = {k: report[k] for k in ("index", "baseline", "goals", "profile") if k in report}
    key = (
        "serving"
        if report["settings"]["catalog"] < 50_000
        else f"serving_catalog_{report['settings']['catalog']}"
    )
    return {key: {**report["serving"], **about, **extra, "instances": report.get("instances", {})}}
