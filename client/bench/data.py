"""Data benchmark: synthetic generation (events/s) and the NVTabular feature build (fit + transform time,
peak memory) at several event counts, each phase in its own process so peak RSS is that phase's alone.

Baseline in the same run: the I/O floor, a dask read of every event file and a write of it back to parquet
(what any pass over the data costs), so the feature build is reported as a ratio to it as well.

    reels bench data --events 1000000 10000000 [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from reels.client.record import machine
from reels.deploy.config import Config


def world_for(n_events: int):
    """A catalog and user base that grow with the event count (about 50 events per user)."""
    from reels.workflows.config import SyntheticConfig

    return SyntheticConfig(
        seed=42,
        n_events=n_events,
        n_users=max(1_000, n_events // 50),
        n_creators=max(100, n_events // 500),
        n_videos=max(2_000, n_events // 50),
        new_videos_per_day=max(50, n_events // 5_000),
        n_days=14,
    )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _phase(phase: str, n_events: int, workdir: Path) -> dict:
    store_dir = workdir / f"store-{n_events}"
    started = time.perf_counter()
    if phase == "generate":
        from reels.workflows.sources import generate_synthetic

        report = generate_synthetic(store_dir, world_for(n_events), overwrite=True)
        result = {"events": report.events, "seconds": report.seconds, "events_per_s": report.events_per_s}
    elif phase == "io_floor":
        import dask.dataframe as dd

        from reels.workflows.offline_store import OfflineStore

        files = [str(f) for f in OfflineStore(store_dir).files("events")]
        out = workdir / f"io-{n_events}"
        shutil.rmtree(out, ignore_errors=True)
        dd.read_parquet(files, engine="pyarrow").to_parquet(out, write_index=False)
        shutil.rmtree(out)
        result = {"seconds": time.perf_counter() - started}
    elif phase == "features":
        from reels.workflows.offline_store import OfflineStore
        from reels.workflows.pipeline import build_features

        artifacts = build_features(OfflineStore(store_dir), workdir / f"features-{n_events}", device="cpu")
        manifest = artifacts.manifest()
        result = {"seconds": time.perf_counter() - started, "rows": manifest.rows, **manifest.timings}
    else:
        raise ValueError(phase)
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def _run_phase(phase: str, n_events: int, workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "reels.client.bench.data", "--phase", phase, "--events", str(n_events),
           "--workdir", str(workdir)]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bench phase {phase} ({n_events:,} events) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(events: list[int], workdir: Path) -> dict:
    """Generation, the I/O floor and the feature build at each event count, each in its own process."""
    workdir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for n in events:
        print(f"[bench] {n:,} events: generating", flush=True)
        gen = _run_phase("generate", n, workdir)
        print(f"[bench] {n:,} events: I/O floor", flush=True)
        floor = _run_phase("io_floor", n, workdir)
        print(f"[bench] {n:,} events: NVTabular fit + transform", flush=True)
        feat = _run_phase("features", n, workdir)
        rows[str(n)] = {
            "generate": gen,
            "io_floor_s": floor["seconds"],
            "features": feat,
            "features_vs_io_floor": feat["seconds"] / floor["seconds"],
        }
        shutil.rmtree(workdir / f"store-{n}", ignore_errors=True)
        shutil.rmtree(workdir / f"features-{n}", ignore_errors=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "reels bench data --events " + " ".join(str(n) for n in events),
        "results": rows,
    }


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    lines = [
        f"### Data pipeline — {report['date']}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}` (CPU, pandas/dask threads).",
        "",
        "| events | generate s | events/s | gen peak MiB | I/O floor s | fit s | transform+history s "
        "| features total s | × I/O floor | features peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in report["results"].items():
        g, f = r["generate"], r["features"]
        lines.append(
            f"| {int(n):,} | {g['seconds']:.1f} | {g['events_per_s']:,.0f} | {g['peak_rss_mib']:,.0f} "
            f"| {r['io_floor_s']:.1f} | {f['fit_s']:.1f} | {f['transform_s']:.1f} | {f['seconds']:.1f} "
            f"| {r['features_vs_io_floor']:.1f} | {f['peak_rss_mib']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench data`: every phase at each of ``--events``."""
    return run(args.events, Path(args.workdir))


if __name__ == "__main__":  # one phase, in its own process (see _run_phase)
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", required=True, choices=["generate", "io_floor", "features"])
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    ns = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(_phase(ns.phase, ns.events, Path(ns.workdir))))
