"""GPU check of the two compute-heavy serving steps, CPU beside GPU on the same machine and inputs:
the ranker forward (our numpy forward of the trained MMoE, run unchanged through CuPy on the GPU) and
exact top-K over the item embeddings (numpy matmul + argpartition on CPU, torch matmul + topk on GPU),
at batch 1 (one request: 500 candidates, one query) and batch 64 (64 requests at once).

    # here, with the trained models: gather the artifacts (ranker.npz, one real request's ranker inputs,
    # the item embeddings and query embeddings of validation users) into a folder
    python -m reels.client.bench.gpu prepare --source synthetic-100k --out .gpu
    # on the GPU machine (needs numpy, cupy and torch, no reels install: PYTHONPATH to a `reels` link)
    python -m reels.client.bench.gpu measure --artifacts .gpu --json out.json

GPU numbers are only ever measured on a GPU: without one, ``measure`` prints the CPU side and says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import types
from pathlib import Path

import numpy as np

BATCHES = (1, 64)


def prepare(source_dir: Path, out: Path, queries: int = 64) -> None:
    """Write what ``measure`` needs from a trained source: the serving version's ``ranker.npz``, one real
    request's ranker inputs (the user side once, 500 candidates), item and query embeddings."""
    import pandas as pd

    from reels.deploy.stack import temporary_store
    from reels.models.inputs import QUERY_FEATURES
    from reels.models.registry import serving_model_dir
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.models.serving.request import Request

    model_dir = serving_model_dir(source_dir / "models")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranker").mkdir(exist_ok=True)
    shutil.copy(model_dir / "ranker" / "ranker.npz", out / "ranker" / "ranker.npz")
    embeddings = pd.read_parquet(model_dir / "item_embeddings.parquet")
    np.save(out / "items.npy", np.stack(embeddings["embedding"].to_numpy()).astype(np.float32))
    users = pd.read_parquet(source_dir / "features" / "users.parquet")["raw_user_id"].to_numpy()
    from reels.workflows.manifest import FeatureArtifacts

    with temporary_store(FeatureArtifacts(source_dir / "features")) as store:
        pipeline = InProcessPipeline(model_dir, store)
        captured: dict = {}
        ranker = pipeline.ranking.ranker
        original = ranker.score_candidates

        def capture(query, candidates):
            captured.update({f"query/{k}": v for k, v in query.items()})
            captured.update({f"item/{k}": v for k, v in candidates.items()})
            return original(query, candidates)

        ranker.score_candidates = capture
        pipeline.recommend(Request(int(users[0]), 20))
        vectors = []
        for user in users[1 : queries + 1]:
            query = pipeline.feature_transform(Request(int(user), 20).validate(pipeline.config.max_k))
            vectors.append(pipeline.retrieval.query_tower({n: query.features[n] for n in QUERY_FEATURES}))
    np.savez(out / "request.npz", **captured)
    np.save(out / "queries.npy", np.concatenate(vectors).astype(np.float32))


def _timed(call, sync, repeats: int) -> dict:
    call()  # warm-up (kernels compiled, memory pools filled)
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1000)
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "repeats": repeats}


def _cupy_namespace(cupy) -> types.SimpleNamespace:
    """CuPy where it has the name, numpy where it has not (dtype helpers such as ``issubdtype``)."""

    class Namespace(types.SimpleNamespace):
        def __getattr__(self, name):
            return getattr(cupy, name) if hasattr(cupy, name) else getattr(np, name)

    return Namespace()


def _to_device(value, cupy):
    if isinstance(value, np.ndarray) and value.dtype != object:
        return cupy.asarray(value)
    if isinstance(value, list):
        return [_to_device(v, cupy) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_device(v, cupy) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, cupy) for k, v in value.items()}
    if hasattr(value, "__dict__") and type(value).__module__.startswith("reels."):
        for k, v in vars(value).items():
            setattr(value, k, _to_device(v, cupy))
    return value


def _sides(request: dict) -> tuple[dict, dict]:
    """The captured request split into its query inputs (one row) and its candidates' inputs (n rows)."""
    query = {k.split("/", 1)[1]: v for k, v in request.items() if k.startswith("query/")}
    items = {k.split("/", 1)[1]: v for k, v in request.items() if k.startswith("item/")}
    return query, items


def _batch_rows(request: dict, requests: int) -> dict:
    """``requests`` copies of the request as complete rows: the query side repeated per candidate, the
    candidates stacked."""
    query, items = _sides(request)
    n = len(next(iter(items.values())))
    rows = {name: np.repeat(value, n * requests, axis=0) for name, value in query.items()}
    rows.update({name: np.concatenate([value] * requests) for name, value in items.items()})
    return rows


def measure(artifacts: Path, repeats: int = 50) -> dict:
    """CPU and (where there is one) GPU timings of the ranker forward and exact top-500."""
    from reels.models import ranker_numpy
    from reels.models.ranker_numpy import NumpyRanker

    with np.load(artifacts / "request.npz") as data:
        request = {k: data[k] for k in data.files}
    items = np.load(artifacts / "items.npy")
    queries = np.load(artifacts / "queries.npy")
    k = 500
    report: dict = {"items": int(len(items)), "dim": int(items.shape[1]), "k": k, "cpu": {}, "gpu": {}}
    ranker = NumpyRanker(artifacts / "ranker")
    query, candidates = _sides(request)
    report["candidates"] = int(len(next(iter(candidates.values()))))
    for batch in BATCHES:
        rows = _batch_rows(request, batch)
        if batch == 1:  # as the serving step runs it: the user side once
            report["cpu"]["ranker_b1"] = _timed(
                lambda: ranker.score_candidates(query, candidates), lambda: None, repeats
            )
        else:
            report["cpu"][f"ranker_b{batch}"] = _timed(
                lambda rows=rows: ranker(rows), lambda: None, max(5, repeats // 5)
            )
        q = queries[:batch]

        def top_cpu(q=q):
            scores = q @ items.T
            part = np.argpartition(-scores, k, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
            return np.take_along_axis(part, order, 1)

        report["cpu"][f"topk_b{batch}"] = _timed(top_cpu, lambda: None, repeats)
    try:
        import cupy
        import torch

        if not torch.cuda.is_available():
            raise ImportError("no CUDA device")
    except ImportError as exc:
        report["gpu"] = {"not_measured": f"no GPU here ({exc})"}
        return report
    report["gpu_name"] = torch.cuda.get_device_name(0)
    reference = ranker.score_candidates(query, candidates)["score"]
    gpu_ranker = _to_device(NumpyRanker(artifacts / "ranker"), cupy)
    cpu_np, ranker_numpy.np = ranker_numpy.np, _cupy_namespace(cupy)  # the same forward, arrays on the GPU
    try:
        gpu_query, gpu_candidates = _to_device(query, cupy), _to_device(candidates, cupy)
        on_gpu = gpu_ranker.score_candidates(gpu_query, gpu_candidates)["score"]
        report["gpu"]["ranker_max_abs_diff_vs_cpu"] = float(np.abs(cupy.asnumpy(on_gpu) - reference).max())
        sync = cupy.cuda.Device(0).synchronize
        for batch in BATCHES:
            if batch == 1:
                call = lambda: gpu_ranker.score_candidates(gpu_query, gpu_candidates)  # noqa: E731
            else:
                rows = _to_device(_batch_rows(request, batch), cupy)
                call = lambda rows=rows: gpu_ranker(rows)  # noqa: E731
            report["gpu"][f"ranker_b{batch}"] = _timed(call, sync, repeats)
    finally:
        ranker_numpy.np = cpu_np
    device_items = torch.from_numpy(items).cuda()
    for batch in BATCHES:
        q = torch.from_numpy(queries[:batch]).cuda()
        report["gpu"][f"topk_b{batch}"] = _timed(
            lambda q=q: torch.topk(q @ device_items.T, k, dim=1), torch.cuda.synchronize, repeats
        )
    return report


def table(report: dict) -> str:
    """The measurement as a markdown table: CPU and GPU p50/p99 per step and batch."""
    lines = [
        f"Items {report['items']:,} x {report['dim']}, top-{report['k']}; ranker over {report['candidates']} "
        f"candidates per request; GPU: {report.get('gpu_name', report['gpu'].get('not_measured'))}.",
        "",
        "| step | batch (requests) | CPU p50 ms | CPU p99 ms | GPU p50 ms | GPU p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step in ("ranker", "topk"):
        for batch in BATCHES:
            cpu, gpu = report["cpu"][f"{step}_b{batch}"], report["gpu"].get(f"{step}_b{batch}")
            g = f"{gpu['p50_ms']:.3f} | {gpu['p99_ms']:.3f}" if gpu else "not measured | not measured"
            lines.append(f"| {step} | {batch} | {cpu['p50_ms']:.3f} | {cpu['p99_ms']:.3f} | {g} |")
    if "ranker_max_abs_diff_vs_cpu" in report["gpu"]:
        lines += [
            "",
            f"Ranker scores GPU vs CPU: max abs diff {report['gpu']['ranker_max_abs_diff_vs_cpu']:.2e}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """``prepare`` (here, with the trained models) or ``measure`` (on the GPU machine)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--source", default="synthetic")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p = sub.add_parser("measure")
    p.add_argument("--artifacts", type=Path, default=Path(".gpu"))
    p.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        from reels.client.config import load_config

        prepare(load_config().source_dir(args.source), args.out)
        return
    report = measure(args.artifacts)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
