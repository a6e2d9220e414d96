"""Retraining on a LocalCluster vs on a real cluster of processes: the same ``reels retrain`` command, once
with its LocalCluster and once with ``--scheduler`` against a ``dask scheduler`` and two ``dask worker``
processes on loopback (one thread each), the offline store and the feature build addressed by ``file://``
URLs. Prints the candidate's gate metrics and the wall time of each run side by side (a Markdown table).

    python -m reels.client.bench.retrain_cluster --root DIR [--set key=value ...] [--cluster-first]

Both runs read the same synthetic store (generated once under ``--root`` from the ``synthetic`` config) and
start with no serving version, so each gate scores only its candidate on the latest window. Each run is a
fresh ``python -m reels.client.cli`` process; the cluster's start is timed apart from the retrain it serves,
since a real cluster outlives one retrain (its workers import NVTabular on their first tasks, inside the
feature build's time, as a LocalCluster's do). Wall times on a busy machine
swing with its other load: run it both ways round (``--cluster-first``) before reading a difference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from reels.client.config import load_config
from reels.client.record import machine
from reels.deploy.dask_cluster import scheduler_and_workers
from reels.workflows.offline_store import OfflineStore
from reels.workflows.sources import generate_synthetic

WORKERS = ("worker-a", "worker-b")
METRICS = ("recall@20", "ndcg@20", "map@20", "auc_view", "auc_liked", "auc_completed", "test_users")


def _retrain(root: Path, sets: list[str], extra: list[str], work: Path) -> tuple[float, dict, dict, str]:
    """One ``reels retrain`` process: its wall seconds, the candidate's gate record, the phases' seconds
    (feature build steps from its manifest, then training and gate from the command's output), the command."""
    command = [sys.executable, "-m", "reels.client.cli", "--device", "cpu", "--set", f"data.root={root}"]
    for item in sets:
        command += ["--set", item]
    command += ["retrain", "synthetic", "--no-promote", *extra]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(f"  1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if run.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed ({run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )
    (version,) = (root / "synthetic" / "models").glob("[0-9]*")
    gate = json.loads((version / "manifest.json").read_text())["gate"]
    (build,) = work.glob("features-*")
    phases = json.loads((build / "manifest.json").read_text())["timings"]
    printed = re.search(r"timings: (.*)", run.stdout)
    for item in printed.group(1).split(", ") if printed else []:
        name, value = item.rsplit(" ", 1)
        phases[name] = float(value)
    return seconds, gate, phases, " ".join(command[1:])


def _cluster_run(root: Path, sets: list[str]) -> tuple[float, dict, dict, str, float]:
    """Start a ``dask scheduler`` and the workers, retrain against them, stop them; ``_retrain``'s answer
    and the seconds the cluster took to start."""
    started = time.perf_counter()
    with scheduler_and_workers(root / "dask", WORKERS) as address:
        cluster_start_s = time.perf_counter() - started
        urls = ["--store", OfflineStore(root / "store").url, "--work", f"file://{root}/shared/retrain"]
        result = _retrain(
            root / "cluster", sets, ["--scheduler", address, *urls], root / "shared" / "retrain"
        )
    print(
        f"scheduler + {len(WORKERS)} workers run: {result[0]:.1f} s (cluster start {cluster_start_s:.1f} s)"
    )
    return (*result, cluster_start_s)


def main(argv: list[str] | None = None) -> int:
    """Generate the store, run both retrains, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="a fresh folder for the store and both runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--cluster-first", action="store_true", help="run the cluster path first")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: give a fresh folder")
    config = load_config(overrides=list(args.set))
    store_dir = root / "store"
    report = generate_synthetic(store_dir, config.synthetic)
    print(
        f"store: {report.events:,} events, {report.users:,} users, {report.videos:,} videos, {report.days} days"
    )
    sets = ["retrain.dashboard_address=:0", *args.set]

    def local_run() -> tuple[float, dict, dict, str]:
        work = root / "local" / "synthetic" / "retrain"
        result = _retrain(root / "local", sets, ["--store", str(store_dir)], work)
        print(f"LocalCluster run: {result[0]:.1f} s")
        return result

    if args.cluster_first:
        cluster_s, cluster_gate, cluster_phases, cluster_command, cluster_start_s = _cluster_run(root, sets)
        local_s, local_gate, local_phases, local_command = local_run()
    else:
        local_s, local_gate, local_phases, local_command = local_run()
        cluster_s, cluster_gate, cluster_phases, cluster_command, cluster_start_s = _cluster_run(root, sets)

    local, cluster = local_gate["candidate"], cluster_gate["candidate"]
    order = "cluster run first" if args.cluster_first else "LocalCluster run first"
    print(f"\nDate: {time.strftime('%Y-%m-%d', time.gmtime())}. Machine: {machine()}. Order: {order}.")
    print(f"LocalCluster command: `{local_command}`")
    print(f"Cluster command: `{cluster_command}`\n")
    print("| | LocalCluster | scheduler + 2 worker processes | difference |")
    print("|---|---|---|---|")
    for name in METRICS:
        fmt = "{:,}" if name == "test_users" else "{:.4f}"
        diff = cluster[name] - local[name]
        print(f"| {name} | {fmt.format(local[name])} | {fmt.format(cluster[name])} | {fmt.format(diff)} |")
    print(f"| gate passed | {local_gate['passed']} | {cluster_gate['passed']} | |")
    print(f"| retrain wall time (s) | {local_s:.1f} | {cluster_s:.1f} | {cluster_s - local_s:+.1f} |")
    for name in [name for name in local_phases if name in cluster_phases]:
        local_v, cluster_v = local_phases[name], cluster_phases[name]
        print(
            f"| {name.removesuffix('_s')} (s) | {local_v:.1f} | {cluster_v:.1f} | {cluster_v - local_v:+.1f} |"
        )
    print(f"| cluster start (s) | (inside the run) | {cluster_start_s:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
