"""Replica-set benchmark: N tritonservers behind HAProxy (`reels serve --replicas N`) under perf_analyzer and
a probe client, both going through the balancer, in four windows: steady, a rolling promotion across the
replicas, one replica killed with SIGKILL, and the survivors afterwards. Each window reports failed requests
and latencies (``swap.LoadDuringAction``).

    reels bench replicas [--source synthetic] [--replicas 3] [--seconds 20] [--concurrency 2] [--record]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from rich.console import Console

from reels.client.bench.serving import request_users, write_input_data
from reels.client.bench.swap import LoadDuringAction
from reels.client.record import machine
from reels.deploy.config import Config
from reels.workflows.errors import NotFound

WINDOWS = ("steady", "rolling promotion", "replica killed", "after the kill")


def run(
    config: Config, source: str, replicas: int, seconds: float, concurrency: int, console: Console
) -> dict:
    """Serve the second-newest trained version on ``replicas`` replicas, then measure the four windows
    (the rolling promotion is to the newest version). The serving pointer is left as it was."""
    from reels.deploy.promotion import promote
    from reels.deploy.replicas import ReplicaSet
    from reels.deploy.stack import serving_stack
    from reels.models.registry import trained_features

    models_root = config.source_dir(source) / "models"
    versions = sorted(int(p.name) for p in models_root.glob("*") if p.name.isdigit())
    if len(versions) < 2:
        raise NotFound(f"{models_root} holds {len(versions)} trained version(s): train two to promote one")
    serving, candidate = models_root / str(versions[-2]), models_root / str(versions[-1])
    users = request_users(trained_features(serving).root, 1000)
    s = config.server
    report: dict = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "command": f"reels bench replicas --source {source} --replicas {replicas} --seconds {seconds:g} "
                   f"--concurrency {concurrency}",
        "replicas": replicas, "serving_version": int(serving.name), "promoted_version": int(candidate.name),
        "perf_analyzer_concurrency": concurrency, "windows": {},
    }  # fmt: skip
    build = Path(s.build_dir) / f"bench-replicas-{source}"
    with (
        serving_stack(
            config.source_dir(source), build, s, config.serving, console.print, experiment=config.experiment,
            model_dir=serving, replicas=replicas,
        ) as (_, replica_set),
        tempfile.TemporaryDirectory() as tmp,
    ):  # fmt: skip
        assert isinstance(replica_set, ReplicaSet)
        input_data = Path(tmp) / "requests.json"
        write_input_data(input_data, users, 20)

        def window(name: str, action) -> None:
            console.print(f"window: {name}")
            with LoadDuringAction(
                replica_set.grpc_url, replica_set.http_url, input_data, users, concurrency, k=20
            ) as load:
                action()
            report["windows"][name] = load.report.summary()

        window("steady", lambda: time.sleep(seconds))
        started = time.perf_counter()
        window(
            "rolling promotion",
            lambda: promote(
                replica_set.root, candidate, None, s.redis.store(timeout_s=5.0), s.redis, config.serving,
                console.print, replicas=replica_set.members(),
            ),
        )  # fmt: skip
        report["rolling_promotion_s"] = round(time.perf_counter() - started, 1)
        victim = replica_set.servers[-1]

        def kill() -> None:
            time.sleep(seconds / 3)
            os.kill(victim.process.pid, signal.SIGKILL)
            time.sleep(seconds * 2 / 3)

        window("replica killed", kill)
        window("after the kill", lambda: time.sleep(seconds))
    return report


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    lines = [
        f"### {report['replicas']} replicas behind HAProxy — {report['date']}", "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. perf_analyzer (gRPC, concurrency "
        f"{report['perf_analyzer_concurrency']}, repeated 1 s runs) and a probe client (HTTP, one request at a "
        f"time) through the balancer. The rolling promotion {report['serving_version']} → "
        f"{report['promoted_version']} took {report['rolling_promotion_s']:.0f} s; the last replica was "
        "killed (SIGKILL) a third into its window.", "",
        "perf_analyzer runs that stopped before sending a request because the replicas it asked for model "
        "configs were on different releases are counted apart (not started); a failed run is one that "
        "stopped on a failed request.", "",
        "| window | perf_analyzer runs (failed, not started) | worst run p99 ms | probe requests (failed) | "
        "probe p50 ms | probe p99 ms | probe max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name in WINDOWS:
        r = report["windows"][name]
        lines.append(
            f"| {name} | {r['perf_analyzer_runs']} ({r['perf_analyzer_failed_runs']}, "
            f"{r.get('perf_analyzer_runs_not_started_mixed_releases', 0)}) | "
            f"{r['perf_analyzer_p99_ms_worst_run']:.1f} | {r['probe_requests']} ({r['probe_failed']}) | "
            f"{r['probe_p50_ms']:.1f} | {r['probe_p99_ms']:.1f} | {r['probe_max_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench replicas`."""
    return run(config, args.source, args.replicas, args.seconds, args.concurrency, Console())


def sections(report: dict) -> dict[str, dict]:
    """BENCHMARKS.json key ``replicas``."""
    return {"replicas": report}
