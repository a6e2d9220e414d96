"""The ensemble's fixed cost: what Triton's frontends, the ensemble scheduler and four python-backend hops
cost before any step does any work, beside the real ensemble in the same run.

The null ensemble is the repository's own contract — ``model_repository/*/config.pbtxt`` copied as they
are: the same inputs, the same tensors between the steps, the same instance groups and queue policy —
with each step's ``model.py`` replaced by one that reads nothing and returns constant outputs of the
served sizes (500 candidates and their scores, a 20-video feed). perf_analyzer drives the real ensemble
of ``--source`` (or of the ``--catalog N`` synthetic source) and then the null one over gRPC with the
same requests, at each ``--concurrency``.

    reels bench hops [--catalog 100000 | --source synthetic] [--concurrency 1 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from reels.client.record import machine
from reels.deploy.config import Config
from reels.deploy.triton.repository import SOURCE  # the source model_repository/: the contract

STEPS = ("feature_transform", "retrieval", "ranking", "diversity_rerank")
ENSEMBLE = "reels"
# The served sizes of the variable-length tensors: 500 candidates, a 20-video feed and history.
NULL_MODEL = '''"""A step that does no work: constant outputs of the served sizes (``reels bench hops``)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

LENGTHS = {
    "candidate_ids": 500, "retrieval_scores": 500, "ranked_ids": 500, "ranking_scores": 500,
    "candidate_task_predictions": 500, "seen_video_ids": 100, "history_video_ids": 20, "video_ids": 20,
    "scores": 20, "task_predictions": 20, "explanation_ids": 20, "propensities": 20,
}
DTYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}


class TritonPythonModel:
    def initialize(self, args):
        self.outputs = []
        for output in json.loads(args["model_config"])["output"]:
            dims = [LENGTHS.get(output["name"], 1) if int(d) == -1 else int(d) for d in output["dims"]]
            if output["data_type"] == "TYPE_STRING":
                value = np.full(dims, b"0" * 32, dtype=object)
            else:
                value = np.arange(int(np.prod(dims))).reshape(dims).astype(DTYPES[output["data_type"]])
            self.outputs.append((output["name"], value))

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in self.outputs]) for _ in requests]
'''


def null_repository(target: Path, contract: Path = SOURCE) -> Path:
    """``target`` holding the ensemble's and the four steps' ``config.pbtxt`` from ``contract``, each step
    with the null ``model.py``; returns ``target``."""
    for model in (ENSEMBLE, *STEPS):
        (target / model / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(contract / model / "config.pbtxt", target / model / "config.pbtxt")
    for step in STEPS:
        (target / step / "1" / "model.py").write_text(NULL_MODEL)
    return target


def run(config: Config, source: str, concurrency: list[int], seconds: float, say=print) -> dict:
    """perf_analyzer (gRPC) through the real ensemble of ``source``, then through the null ensemble, on
    the same requests at each concurrency, with Triton's per-step compute."""
    from reels.client.bench.serving import request_users, run_perf_analyzer, write_input_data
    from reels.deploy.redis_server import free_port
    from reels.deploy.stack import serving_stack
    from reels.deploy.triton_server import TritonServer

    source_dir = config.source_dir(source)
    build = Path(config.server.build_dir) / f"bench-{source}"
    users = request_users(source_dir / "features", 1000)
    out: dict = {"real": {}, "null": {}}
    with tempfile.TemporaryDirectory() as tmp:
        input_data = Path(tmp) / "requests.json"
        write_input_data(input_data, users, 20)
        with serving_stack(source_dir, build, config.server, config.serving, say, 1) as (_, triton):
            for c in concurrency:
                say(f"real ensemble: perf_analyzer grpc concurrency {c}")
                out["real"][str(c)] = run_perf_analyzer(
                    "grpc", triton.grpc_url, triton.http_url, input_data, c, seconds
                )
        repository = null_repository(Path(tmp) / "repository")
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        server = TritonServer(repository, Path(tmp) / "build", **ports).start()
        try:
            for c in concurrency:
                say(f"null ensemble: perf_analyzer grpc concurrency {c}")
                out["null"][str(c)] = run_perf_analyzer(
                    "grpc", server.grpc_url, server.http_url, input_data, c, seconds
                )
        finally:
            server.stop()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": f"reels bench hops --source {source} --concurrency {' '.join(map(str, concurrency))}",
        "runs": out,
    }


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    lines = [
        f"### Ensemble fixed cost — {report['date']}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. gRPC; the null ensemble is the same "
        "contract with steps that do no work.",
        "",
        "| ensemble | concurrency | p50 ms | p95 ms | p99 ms | requests/s | server-side compute per step, ms |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, runs in report["runs"].items():
        for c, r in runs.items():
            steps = ", ".join(
                f"{m.rsplit('_v', 1)[0]} {b['compute_ms']:.2f}"
                for m, b in r.get("server_breakdown", {}).items()
            )
            lines.append(
                f"| {name}{'' if r.get('stable', True) else ' (unstable)'} | {c} | {r['p50_ms']:.2f} | "
                f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.1f} | {steps} |"
            )
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench hops` with the command's source (or catalog), concurrencies and window."""
    source = args.source
    if args.catalog is not None:
        from reels.client.bench.catalog import ensure_catalog_source

        source = ensure_catalog_source(config, args.catalog, print)
    report = run(config, source, args.concurrency, args.seconds)
    if args.catalog is not None:
        report["command"] = report["command"].replace(f"--source {source}", f"--catalog {args.catalog}")
    return report
