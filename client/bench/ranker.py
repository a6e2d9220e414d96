"""Ranker forward benchmark: the exported ranker over one request's candidates, per backend, same weights,
same requests, in the same run (each request is timed on every backend in turn, so machine noise falls
on all of them alike):

- ``savedmodel``: the TensorFlow SavedModel signature, user inputs repeated once per candidate (the
  ranking step's former path, ``np.repeat`` included);
- ``numpy``: ``NumpyRanker`` called the same way (every row complete);
- ``numpy user-once``: ``NumpyRanker.score_candidates``: the user side once, broadcast over the candidates
  (the ranking step's default path).

Requests are real: each takes one impression's user, history and context from the feature build's test
window and ``--candidates`` impressions' videos (with their video age) from the same window. The ranker
is the served version's export; a version exported without ``ranker.npz`` is re-trained (the configured
ranker, one epoch, on that version's features) into a scratch folder, so both backends run its weights.

With ``--onnx`` (needs ``pip install onnxruntime tf2onnx``), also ``onnxruntime``: the SavedModel
converted by tf2onnx (opset 15) and run by ONNX Runtime on one thread, called like the SavedModel.

With ``--pipeline``, the in-process pipeline (feature transform, retrieval, ranking, re-rank; a scratch
redis-server loaded with the source's features) runs each request once per backend, interleaved, with no
exploration slots so that feeds are comparable: its latency per backend and how many top-``k`` feeds
are identical.

With ``--video-features``, the in-process pipeline with candidate video records from memory (the
release's video table, the default) against the same pipeline reading them from Redis, each request on
both in turn (identical feeds counted), and the reads alone: the user's record from Redis plus
``--candidates`` video records from Redis (two round trips, as the steps read them) or from memory.

With ``--query-tower``, the served version's two-tower query tower for one user per request (as the
retrieval step calls it): its SavedModel signature against its numpy forward (``query_tower.npz``), each
request on both in turn, and their largest embedding difference.

    python -m reels.client.bench.ranker [--source synthetic] [--candidates 500] [--requests 1000] [--onnx] [--pipeline]
        [--video-features] [--query-tower]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from reels.client.record import machine
from reels.deploy.config import Config

# Triton's python backends run with one thread each (deploy/triton_server.py): run this the same way,
# e.g. OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 (OpenBLAS reads OMP_NUM_THREADS).
THREAD_SETTINGS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def _ranker_folder(config: Config, source: str, say) -> tuple[Path, str]:
    """The served version's ranker export, or a scratch re-export where it lacks ``ranker.npz``."""
    from reels.models.ranker_numpy import WEIGHTS_FILE
    from reels.models.registry import serving_model_dir, trained_features

    model_dir = serving_model_dir(config.source_dir(source) / "models")
    folder = model_dir / "ranker"
    if (folder / WEIGHTS_FILE).exists():
        return folder, f"served version {model_dir.name}"
    from reels.models.inputs import feature_schema
    from reels.models.ranker import Ranker

    features = trained_features(model_dir)
    scratch = Path(config.server.build_dir) / "bench-ranker" / model_dir.name / "ranker"
    if not (scratch / WEIGHTS_FILE).exists():
        say(
            f"version {model_dir.name} has no {WEIGHTS_FILE}: training the configured ranker (1 epoch) into {scratch}"
        )
        ranker = Ranker(feature_schema(features), replace(config.ranker, epochs=1), "mmoe")
        ranker.fit(features.read_split("train"))
        scratch.mkdir(parents=True, exist_ok=True)
        ranker.export(scratch)
    return scratch, f"re-trained on version {model_dir.name}'s features (1 epoch)"


def _onnx_ranker(folder: Path):
    """The SavedModel in ``folder`` converted by tf2onnx, as a callable like ``ExportedRanker``, and the
    onnxruntime version; raises ``NotFound`` when onnxruntime or tf2onnx is not installed."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    from reels.workflows.errors import NotFound

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None:
        raise NotFound("--onnx needs onnxruntime and tf2onnx: pip install onnxruntime tf2onnx")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # as the other backends run
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "ranker.onnx"
        convert = [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            str(folder),
            "--output",
            str(model),
        ]
        subprocess.run([*convert, "--opset", "15"], check=True, capture_output=True)
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    dtypes = {i.name: np.int64 if "int64" in i.type else np.float32 for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]

    def call(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: features[name].astype(dtype, copy=False) for name, dtype in dtypes.items()}
        return dict(zip(outputs, session.run(outputs, feed), strict=True))

    return call, ort.__version__


def requests_from(
    features_dir: Path, n_requests: int, candidates: int, seed: int = 0
) -> list[tuple[dict, dict]]:
    """``n_requests`` (user inputs, 1 row each; candidate inputs, ``candidates`` rows each) from the test window."""
    from reels.models.inputs import ITEM_FEATURES, QUERY_FEATURES, artifacts_at
    from reels.models.two_tower import query_inputs

    frame = artifacts_at(features_dir).read_split("test")
    rng = np.random.default_rng(seed)
    users = query_inputs(frame.iloc[rng.integers(0, len(frame), n_requests)], QUERY_FEATURES)
    items = query_inputs(frame, ITEM_FEATURES + ("video_age",))
    out = []
    for i in range(n_requests):
        rows = rng.integers(0, len(frame), candidates)
        out.append(({n: v[i : i + 1] for n, v in users.items()}, {n: v[rows] for n, v in items.items()}))
    return out


def _summary(latencies_ms: list[float], rows: int) -> dict:
    a = np.array(latencies_ms)
    return {
        "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)), "rows_per_s": rows * len(a) / (a.sum() / 1000),
    }  # fmt: skip


def run(
    config: Config,
    source: str,
    candidates: int,
    n_requests: int,
    onnx: bool = False,
    warmup: int = 50,
    say=print,
) -> dict:
    """Each backend over the same requests, interleaved; the largest output difference to the SavedModel."""
    from reels.models.ranker import ExportedRanker
    from reels.models.ranker_numpy import NumpyRanker

    folder, origin = _ranker_folder(config, source, say)
    saved, forward = ExportedRanker(folder), NumpyRanker(folder)
    requests = requests_from(config.source_dir(source) / "features", n_requests + warmup, candidates)

    def as_served(user: dict, items: dict) -> dict:
        return {**{n: np.repeat(v, candidates, axis=0) for n, v in user.items()}, **items}

    calls = {
        "savedmodel": lambda user, items: saved(as_served(user, items)),
        "numpy": lambda user, items: forward(as_served(user, items)),
        "numpy user-once": forward.score_candidates,
    }
    versions = {}
    if onnx:
        onnx_ranker, versions["onnxruntime"] = _onnx_ranker(folder)
        calls["onnxruntime"] = lambda user, items: onnx_ranker(as_served(user, items))
    backends = tuple(calls)
    latencies: dict[str, list[float]] = {b: [] for b in backends}
    max_diff = dict.fromkeys(backends[1:], 0.0)
    for i, (user, items) in enumerate(requests):
        outputs = {}
        for backend in backends:
            t0 = time.perf_counter()
            outputs[backend] = calls[backend](user, items)
            if i >= warmup:
                latencies[backend].append((time.perf_counter() - t0) * 1000)
        for backend in backends[1:]:
            diff = max(
                float(np.abs(outputs[backend][k].reshape(-1) - outputs["savedmodel"][k]).max())
                for k in outputs["savedmodel"]
            )
            max_diff[backend] = max(max_diff[backend], diff)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python -m reels.client.bench.ranker "
        f"--source {source} --candidates {candidates} --requests {n_requests}",
        "settings": {
            "ranker": origin,
            "architecture": forward.architecture,
            "candidates": candidates,
            "requests": n_requests,
            "warmup": warmup,
            **versions,
            "threads": {k: os.environ.get(k, "default") for k in THREAD_SETTINGS},
        },  # fmt: skip
        "backends": {b: _summary(latencies[b], candidates) for b in backends},
        "max_abs_diff_vs_savedmodel": max_diff,
    }


def _per_request(latencies: dict[str, list[float]]) -> dict[str, dict]:
    """``_summary`` of one request per timing, with its rate named requests/s."""
    out = {name: _summary(v, 1) for name, v in latencies.items()}
    for r in out.values():
        r["requests_per_s"] = r.pop("rows_per_s")
    return out


@contextlib.contextmanager
def _workload(config: Config, source: str, n_requests: int, warmup: int) -> Iterator[tuple]:
    """What both in-process runs share: the source's folder, serving settings without exploration or
    exposure logging, ``warmup + n_requests`` users, one request time, and a temporary store holding the
    source's features."""
    from reels.client.bench.serving import request_users
    from reels.deploy.stack import temporary_store
    from reels.models.inputs import artifacts_at

    source_dir = config.source_dir(source)
    serving = replace(config.serving, exploration_slots=0, log_exposures=False)
    users = request_users(source_dir / "features", n_requests + warmup)
    with temporary_store(artifacts_at(source_dir / "features")) as store:
        yield source_dir, serving, users, int(time.time()), store


def _recommend_each(pipelines: dict, user, k: int, when: int, latencies: dict | None) -> dict:
    """Each pipeline's feed for ``user``, timed into ``latencies[name]`` (ms) unless it is None (warm-up)."""
    from reels.models.serving.request import Request

    feeds = {}
    for name, pipeline in pipelines.items():
        t0 = time.perf_counter()
        feeds[name] = pipeline.recommend(Request(int(user), k, request_time_s=when))
        if latencies is not None:
            latencies[name].append((time.perf_counter() - t0) * 1000)
    return feeds


def pipeline_run(
    config: Config, source: str, folder: Path, n_requests: int, k: int = 20, warmup: int = 20
) -> dict:
    """The in-process pipeline per backend on the same requests (module doc): latency and identical feeds."""
    from reels.models.ranker_numpy import load_ranker
    from reels.models.registry import serving_model_dir
    from reels.models.serving.pipeline import InProcessPipeline

    with _workload(config, source, n_requests, warmup) as (source_dir, serving, users, when, store):
        pipelines = {}
        for backend in ("savedmodel", "numpy"):
            pipeline = InProcessPipeline(serving_model_dir(source_dir / "models"), store, serving)
            pipeline.ranking.ranker = load_ranker(folder, backend)  # the benchmarked export's weights
            pipelines[backend] = pipeline
        latencies: dict[str, list[float]] = {b: [] for b in pipelines}
        identical = 0
        for i, user in enumerate(users):
            feeds = _recommend_each(pipelines, user, k, when, latencies if i >= warmup else None)
            if i >= warmup:
                identical += np.array_equal(feeds["numpy"].video_ids, feeds["savedmodel"].video_ids)
    out = _per_request(latencies)
    return {"backends": out, "identical_feeds": identical, "requests": n_requests, "k": k}


def video_features_run(
    config: Config, source: str, candidates: int, n_requests: int, k: int = 20, warmup: int = 20
) -> dict:
    """The in-process pipeline with video features from memory vs Redis, and the reads alone (module doc)."""
    from reels.models.registry import serving_model_dir
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.models.serving.video_table import VideoTable

    with _workload(config, source, n_requests, warmup) as (source_dir, serving, users, when, store):
        model_dir = serving_model_dir(source_dir / "models")
        pipelines = {
            where: InProcessPipeline(model_dir, store, replace(serving, video_features=where))
            for where in ("memory", "redis")
        }
        video_table = pipelines["memory"].ranking.videos
        assert isinstance(video_table, VideoTable)
        rng = np.random.default_rng(0)
        latencies: dict[str, list[float]] = {
            name: [] for name in (*pipelines, "read redis", "read memory", "videos alone from memory")
        }
        identical = 0
        for i, user in enumerate(users):
            feeds = _recommend_each(pipelines, user, k, when, latencies if i >= warmup else None)
            ids = rng.choice(video_table.raw_video_ids, candidates, replace=False)
            for name, videos in (("read redis", store), ("read memory", video_table)):
                t0 = time.perf_counter()
                store.read(int(user), np.array([], dtype=np.int64))  # the user's record, seen list: Redis
                videos.read_videos(ids)
                if i >= warmup:
                    latencies[name].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            video_table.read_videos(ids)
            if i >= warmup:
                latencies["videos alone from memory"].append((time.perf_counter() - t0) * 1000)
                identical += all(
                    np.array_equal(getattr(feeds["memory"], f), getattr(feeds["redis"], f))
                    for f in ("video_ids", "scores", "task_predictions")
                )
    out = _per_request(latencies)
    return {
        "sources": out, "identical_feeds": identical, "requests": n_requests, "k": k, "candidates": candidates,
        "videos": len(video_table), "bytes_per_video": VideoTable.bytes_per_video(),
        "table_bytes": video_table.raw_video_ids.nbytes + video_table.records.nbytes,
    }  # fmt: skip


def lookup_scaling(candidates: int, sizes: tuple[int, ...] = (10**6, 10**7), n_requests: int = 1000) -> dict:
    """``VideoTable.read_videos`` of ``candidates`` ids in tables of ``sizes`` videos (synthetic ascending
    ids, zeroed records: the lookup and the gather, not the content, cost the time): p50/p99 ms and MiB."""
    from reels.feature_store.layout import VIDEO_RECORD
    from reels.models.serving.video_table import VideoTable

    rng = np.random.default_rng(0)
    out = {}
    for size in sizes:
        video_table = VideoTable(np.cumsum(rng.integers(1, 1000, size)), np.zeros(size, dtype=VIDEO_RECORD))
        times = []
        for _ in range(n_requests):
            wanted = video_table.raw_video_ids[rng.integers(0, size, candidates)]
            t0 = time.perf_counter()
            video_table.read_videos(wanted)
            times.append((time.perf_counter() - t0) * 1000)
        out[size] = {
            "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mib": (video_table.raw_video_ids.nbytes + video_table.records.nbytes) / 2**20,
        }  # fmt: skip
        del video_table
    return out


def query_tower_run(config: Config, source: str, n_requests: int, warmup: int = 50) -> dict:
    """The served query tower per backend, one user per request (module doc): latency and largest difference."""
    from reels.models.inputs import QUERY_FEATURES
    from reels.models.query_tower_numpy import WEIGHTS_FILE, NumpyQueryTower
    from reels.models.registry import serving_model_dir
    from reels.models.two_tower import QueryTower, query_inputs
    from reels.workflows.errors import NotFound
    from reels.workflows.manifest import FeatureArtifacts

    source_dir = config.source_dir(source)
    folder = serving_model_dir(source_dir / "models") / "query_tower"
    if not (folder / WEIGHTS_FILE).exists():
        raise NotFound(
            f"{folder} has no {WEIGHTS_FILE} (exported before it, or not mean pooling): reels train {source}"
        )
    towers = {"savedmodel": QueryTower(folder), "numpy": NumpyQueryTower(folder)}
    frame = FeatureArtifacts(source_dir / "features").read_split("test")
    rows = query_inputs(
        frame.sample(n_requests + warmup, replace=len(frame) < n_requests + warmup, random_state=0),
        QUERY_FEATURES,
    )
    latencies: dict[str, list[float]] = {b: [] for b in towers}
    max_diff = 0.0
    for i in range(n_requests + warmup):
        one = {name: value[i : i + 1] for name, value in rows.items()}
        out = {}
        for backend, tower in towers.items():
            t0 = time.perf_counter()
            out[backend] = tower(one)
            if i >= warmup:
                latencies[backend].append((time.perf_counter() - t0) * 1000)
        max_diff = max(max_diff, float(np.abs(out["numpy"] - out["savedmodel"]).max()))
    return {"backends": _per_request(latencies), "max_abs_diff": max_diff, "requests": n_requests}


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    base = report["backends"]["savedmodel"]["p50_ms"]
    lines = [
        f"### Ranker forward — {report['date']}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Settings: {report['settings']}.",
        "",
        "| backend | p50 ms | p95 ms | p99 ms | rows/s | p50 × SavedModel | max abs diff vs SavedModel |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, r in report["backends"].items():
        diff = report["max_abs_diff_vs_savedmodel"].get(backend)
        lines.append(
            f"| {backend} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rows_per_s']:,.0f} | "
            f"{r['p50_ms'] / base:.2f} | {'—' if diff is None else f'{diff:.1e}'} |"
        )
    if "pipeline" in report:
        p = report["pipeline"]
        lines += [
            "",
            f"In-process pipeline, {p['requests']} requests, top-{p['k']}, no exploration slots; feeds identical "
            f"across backends: {p['identical_feeds']} of {p['requests']}.",
            "",
            "| ranker backend | p50 ms | p95 ms | p99 ms | requests/s |",
            "|---|---:|---:|---:|---:|",
        ]
        for backend, r in p["backends"].items():
            lines.append(
                f"| {backend} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests_per_s']:.1f} |"
            )
    if "video_features" in report:
        v = report["video_features"]
        per = v["bytes_per_video"]
        lines += [
            "",
            f"Candidate video records from memory vs Redis: in-process pipeline, {v['requests']} requests, "
            f"top-{v['k']}, no exploration slots, each request on both in turn; feeds identical: "
            f"{v['identical_feeds']} of {v['requests']}. Reads alone: the user's record and seen list from "
            f"Redis, then {v['candidates']} video records from Redis (a second round trip) or from memory.",
            "",
            "| path | p50 ms | p95 ms | p99 ms | requests/s |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in v["sources"].items():
            label = {
                "memory": "pipeline, videos from memory",
                "redis": "pipeline, videos from Redis",
                "read redis": f"read: user from Redis + {v['candidates']} videos from Redis",
                "read memory": f"read: user from Redis + {v['candidates']} videos from memory",
                "videos alone from memory": f"read: {v['candidates']} videos from memory alone",
            }[name]
            lines.append(
                f"| {label} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['requests_per_s']:.1f} |"
            )
        lines += [
            "",
            f"Memory: {per} bytes per video (packed record + int64 id); this catalog's {v['videos']:,} videos "
            f"{v['table_bytes'] / 2**20:.2f} MiB; 1M videos {per * 10**6 / 2**20:.0f} MiB, "
            f"10M videos {per * 10**7 / 2**30:.2f} GiB per ranking instance.",
        ]
        for size, r in v.get("lookup_scaling", {}).items():
            lines.append(
                f"- {size:,} videos ({r['mib']:,.0f} MiB): {v['candidates']} videos from memory p50 "
                f"{r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms (synthetic ids, same lookup)"
            )
    if "query_tower" in report:
        q = report["query_tower"]
        base = q["backends"]["savedmodel"]["p50_ms"]
        lines += [
            "",
            f"Query tower, one user per request ({q['requests']} requests, each on both in turn); largest "
            f"embedding difference numpy vs SavedModel: {q['max_abs_diff']:.1e}.",
            "",
            "| query tower backend | p50 ms | p95 ms | p99 ms | requests/s | p50 × SavedModel |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for backend, r in q["backends"].items():
            lines.append(
                f"| {backend} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
                f"{r['requests_per_s']:.1f} | {r['p50_ms'] / base:.2f} |"
            )
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench ranker` with the command's source, candidate count and request count."""
    report = run(config, args.source, args.candidates, args.requests, getattr(args, "onnx", False))
    if getattr(args, "onnx", False):
        report["command"] += " --onnx"
    if getattr(args, "pipeline", False):
        folder, _ = _ranker_folder(config, args.source, print)
        report["pipeline"] = pipeline_run(config, args.source, folder, args.requests)
        report["command"] += " --pipeline"
    if getattr(args, "video_features", False):
        report["video_features"] = video_features_run(config, args.source, args.candidates, args.requests)
        report["video_features"]["lookup_scaling"] = lookup_scaling(args.candidates)
        report["command"] += " --video-features"
    if getattr(args, "query_tower", False):
        report["query_tower"] = query_tower_run(config, args.source, args.requests)
        report["command"] += " --query-tower"
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with the default configuration and print its section."""
    from reels.client.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="synthetic")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--onnx", action="store_true", help="also ONNX Runtime (needs onnxruntime, tf2onnx)")
    p.add_argument("--pipeline", action="store_true", help="also the in-process pipeline per backend")
    p.add_argument(
        "--video-features",
        action="store_true",
        help="also the pipeline with video records from memory vs Redis",
    )
    p.add_argument(
        "--query-tower", action="store_true", help="also the query tower: SavedModel vs numpy forward"
    )
    p.add_argument("--config", default=None, help="configuration file (default: the project's)")
    args = p.parse_args(argv)
    print(table(measure(args, load_config(args.config))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
