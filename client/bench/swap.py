"""Load while something changes under it: perf_analyzer runs back to back against the ``reels`` ensemble,
and a probe client sends requests one after another and counts every failure, while an action (a model
promotion) runs. Used by the hot-swap test and ``reels bench swap``.

perf_analyzer aborts a run on the first failed request (non-zero exit), so "every run exited 0" means
no request it sent failed; the probe gives an exact count of its own requests and their outcome."""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from reels.client.bench.serving import perf_analyzer, request_users, write_input_data
from reels.client.record import machine
from reels.deploy.config import Config
from reels.workflows.errors import NotFound


def _last_error_line(output: str) -> str:
    """The line of perf_analyzer's output that says why it stopped (its last line mentioning an error)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "ailed" in line]
    return (errors or lines or [""])[-1][:300]


@dataclass
class LoadReport:
    """What the load saw: every perf_analyzer run and each probe request's outcome and latency."""

    perf_analyzer_runs: list[dict] = field(default_factory=list)  # per run: exit code, p50/p99, rps, count
    probe_ok: int = 0
    probe_failed: int = 0
    probe_errors: list[str] = field(default_factory=list)
    probe_latencies_ms: list[float] = field(default_factory=list)

    @property
    def perf_analyzer_failed_runs(self) -> int:
        """perf_analyzer runs that stopped on a failed request."""
        return sum(1 for r in self.perf_analyzer_runs if r["failed"])

    def summary(self) -> dict:
        """The numbers BENCHMARKS.md reports for a window."""
        lat = np.array(self.probe_latencies_ms or [0.0])
        return {
            "perf_analyzer_runs": len(self.perf_analyzer_runs),
            "perf_analyzer_failed_runs": self.perf_analyzer_failed_runs,
            "perf_analyzer_runs_spanning_the_swap": sum(
                1 for r in self.perf_analyzer_runs if r.get("spanned_swap")
            ),
            "perf_analyzer_runs_not_started_mixed_releases": sum(
                1 for r in self.perf_analyzer_runs if r.get("not_started")
            ),
            "perf_analyzer_requests": sum(r.get("requests", 0) for r in self.perf_analyzer_runs),
            "perf_analyzer_p99_ms_worst_run": max(
                (r.get("p99_ms", 0.0) for r in self.perf_analyzer_runs), default=0
            ),
            "probe_requests": self.probe_ok + self.probe_failed,
            "probe_failed": self.probe_failed,
            "probe_p50_ms": float(np.percentile(lat, 50)),
            "probe_p99_ms": float(np.percentile(lat, 99)),
            "probe_max_ms": float(lat.max()),
            # What stopped the failed perf_analyzer runs and probe requests (distinct messages, a few).
            "perf_analyzer_errors": sorted(
                {
                    _last_error_line(r["error"])
                    for r in self.perf_analyzer_runs
                    if r["failed"] and r.get("error")
                }
            )[:5],
            "probe_errors": sorted(set(self.probe_errors))[:5],
        }


class LoadDuringAction:
    """``with LoadDuringAction(...) as load: action()`` — load starts before the block and stops after it
    (each perf_analyzer run lasts about ``window_s``; the last one is allowed to finish)."""

    def __init__(
        self,
        grpc_url: str,
        http_url: str,
        input_data: Path,
        users: np.ndarray,
        concurrency: int = 2,
        window_s: float = 1.0,
        k: int = 10,
    ):
        self.grpc_url, self.http_url = grpc_url, http_url
        self.input_data, self.users = input_data, users
        self.concurrency, self.window_s, self.k = concurrency, window_s, k
        self.report = LoadReport()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._perf_analyzer_loop, daemon=True),
            threading.Thread(target=self._probe_loop, daemon=True),
        ]

    def __enter__(self) -> LoadDuringAction:
        for t in self._threads:
            t.start()
        time.sleep(1.0)  # load is on before the action starts
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)  # and stays on a moment after it
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.window_s * 10 + 60)

    def _perf_analyzer_loop(self) -> None:
        while not self._stop.is_set():
            done, measured = perf_analyzer(
                "grpc", self.grpc_url, self.input_data, self.concurrency, self.window_s,
                stability_percentage=1000, max_trials=3,
            )  # fmt: skip
            output = done.stdout + done.stderr
            # A failed request makes perf_analyzer stop with the error and exit non-zero. It also exits
            # non-zero when latency was not stable over its windows (expected while models load, so the
            # stability band is wide): that is not a failed request.
            unstable = "Failed to obtain stable measurement" in output
            # perf_analyzer summarises server-side statistics per composing model of the ensemble. When a
            # promotion swaps the composing models inside its window, it cannot, and stops with this
            # message after its requests were answered (a failed request stops it with "had error" and
            # the request's error instead). Such a window is counted apart; the probe client measures
            # every request across it.
            spanned_swap = (
                "failed to find the requested model version" in output and "had error" not in output
            )
            # Through a balancer during a rolling promotion, perf_analyzer may read the ensemble's config from
            # a replica already on the new release and then ask another, still on the old one, for a
            # composing model's config: it stops before sending any request ("failed to create model
            # parser ... unknown model"). No request failed; counted apart too.
            not_started = "failed to create model parser" in output and "had error" not in output
            run = {
                "exit_code": done.returncode, "spanned_swap": spanned_swap, "not_started": not_started,
                "failed": done.returncode != 0 and not unstable and not spanned_swap and not not_started,
            }  # fmt: skip
            if done.returncode != 0:
                run["error"] = output[-1500:]
            run.update(measured or {})
            counts = re.findall(r"Request count: (\d+)", done.stdout)
            if counts:
                run["requests"] = int(counts[-1])
            self.report.perf_analyzer_runs.append(run)

    def _probe_loop(self) -> None:
        from reels.client.triton_client import ReelsClient

        # A generous timeout: a request slower than this counts as failed, anything faster is a latency.
        with ReelsClient(self.http_url, "http", timeout_s=60.0) as client:
            i = 0
            while not self._stop.is_set():
                user = int(self.users[i % len(self.users)])
                i += 1
                t0 = time.perf_counter()
                try:
                    client.recommend(user, k=self.k)
                    self.report.probe_ok += 1
                    self.report.probe_latencies_ms.append((time.perf_counter() - t0) * 1000)
                except Exception as exc:  # noqa: BLE001 - every failure is what we count
                    self.report.probe_failed += 1
                    self.report.probe_errors.append(f"{type(exc).__name__}: {exc}"[:300])


def run(
    config: Config, source: str, version: int | None, baseline_s: float, concurrency: int, console: Console
) -> dict:
    """Serve the serving version, measure a steady window, then promote ``version`` (default: the newest
    trained one) under the same load, and compare. The serving pointer is left as it was."""
    from reels.deploy.promotion import promote
    from reels.deploy.stack import serving_stack
    from reels.models.registry import latest_model_dir, serving_model_dir, trained_features

    source_dir = config.source_dir(source)
    models_root = source_dir / "models"
    serving = serving_model_dir(models_root)
    candidate = models_root / str(version) if version else latest_model_dir(models_root)
    if candidate == serving:  # e.g. `reels retrain --no-promote` marked it: swap in from the one before
        older = sorted(
            int(p.name)
            for p in models_root.glob("*")
            if p.name.isdigit() and int(p.name) < int(candidate.name)
        )
        if not older:
            raise NotFound(f"no version older than {candidate.name} to swap from: train another one first")
        serving = models_root / str(older[-1])
    build = Path(config.server.build_dir) / f"bench-swap-{source}"
    users = request_users(trained_features(serving).root, 1000)
    s = config.server
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "command": f"reels bench swap --source {source} --version {candidate.name} --concurrency {concurrency}",
        "serving_version": int(serving.name), "promoted_version": int(candidate.name),
        "perf_analyzer_concurrency": concurrency,
    }  # fmt: skip
    with serving_stack(
        source_dir, build, s, config.serving, console.print, experiment=config.experiment, model_dir=serving
    ) as (_, triton):
        with tempfile.TemporaryDirectory() as tmp:
            input_data = Path(tmp) / "requests.json"
            write_input_data(input_data, users, 20)
            console.print(f"steady state: {baseline_s:.0f} s of load, nothing changes")
            with LoadDuringAction(
                triton.grpc_url, triton.http_url, input_data, users, concurrency, k=20
            ) as steady:
                time.sleep(baseline_s)
            console.print(f"promoting version {candidate.name} under the same load")
            with LoadDuringAction(
                triton.grpc_url, triton.http_url, input_data, users, concurrency, k=20
            ) as swap:
                promotion = promote(
                    triton.repository, candidate, triton.grpc_url, s.redis.store(timeout_s=5.0), s.redis,
                    config.serving, console.print,
                )  # fmt: skip
    report["steady"] = steady.report.summary()
    report["swap"] = swap.report.summary()
    report["promotion_s"] = {
        "features_load": round(promotion.features_load_s, 2), "models_load": round(promotion.models_load_s, 2),
        "total": round(promotion.seconds, 2),
    }  # fmt: skip
    return report


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    steady, swap = report["steady"], report["swap"]
    lines = [
        f"### Hot swap under load — {report['date']}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Version {report['serving_version']} → "
        f"{report['promoted_version']}; promotion took {report['promotion_s']['total']:.1f} s (features into a new "
        f"Redis namespace {report['promotion_s']['features_load']:.1f} s, Triton loading the release "
        f"{report['promotion_s']['models_load']:.1f} s).",
        "",
        "| window | perf_analyzer runs (failed) | perf_analyzer requests (measured windows) | worst run p99 ms | probe requests (failed) | probe p50 ms | probe p99 ms | probe max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("steady", steady), ("during swap", swap)):
        lines.append(
            f"| {name} | {r['perf_analyzer_runs']} ({r['perf_analyzer_failed_runs']}) | {r['perf_analyzer_requests']} | "
            f"{r['perf_analyzer_p99_ms_worst_run']:.1f} | {r['probe_requests']} ({r['probe_failed']}) | "
            f"{r['probe_p50_ms']:.1f} | {r['probe_p99_ms']:.1f} | {r['probe_max_ms']:.1f} |"
        )
    lines += [
        "",
        f"During / steady: probe p50 × {swap['probe_p50_ms'] / steady['probe_p50_ms']:.2f}, "
        f"p99 × {swap['probe_p99_ms'] / steady['probe_p99_ms']:.2f}. Failed requests during the swap: "
        f"{swap['probe_failed']} of {swap['probe_requests']} probe requests, "
        f"{swap['perf_analyzer_failed_runs']} of {swap['perf_analyzer_runs']} perf_analyzer runs.",
    ]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench swap`: promote ``--version`` under ``--concurrency`` after a ``--seconds`` steady window."""
    return run(config, args.source, args.version, args.seconds, args.concurrency, Console())
