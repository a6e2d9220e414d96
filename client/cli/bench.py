"""`reels bench <name>`: run one benchmark of ``reels.client.bench``, print its section and, with
--record, write it to docs/BENCHMARKS.md and docs/BENCHMARKS.json."""

from __future__ import annotations

import argparse

from reels.client.cli.common import SOURCE_HELP, load_config, uses_ml_stack


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its benchmarks."""
    p = subparsers.add_parser(
        "bench", help="benchmarks; results go to docs/BENCHMARKS.md and docs/BENCHMARKS.json"
    )
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bench.add_parser("data", help="generation events/s and NVTabular fit+transform time and peak memory")
    b.add_argument(
        "--events", type=int, nargs="+", default=[1_000_000, 10_000_000], help="event counts to run"
    )
    b.add_argument("--workdir", default="build/bench", help="scratch folder for stores and features")
    b = bench.add_parser("models", help="training examples/s; FAISS build, latency and recall per index type")
    b.add_argument("--features", default="data/synthetic/features", help="feature artifacts to train on")
    b.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="catalog sizes")
    b = bench.add_parser(
        "store", help="Redis online store: bulk-load keys/s and one-user+500-videos read latency"
    )
    b.add_argument("--users", type=int, default=100_000)
    b.add_argument("--videos", type=int, default=100_000)
    b.add_argument("--reads", type=int, default=1000)
    b = bench.add_parser(
        "serving", help="perf_analyzer on the ensemble (HTTP/gRPC) vs in-process vs compute floor"
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    b.add_argument("--seconds", type=float, default=5.0, help="perf_analyzer measurement window")
    b.add_argument(
        "--instances", type=int, nargs="+", default=[1], help="instances per model; the first is the full run"
    )
    b.add_argument("--requests", type=int, default=1000, help="distinct requests in the input data")
    b.add_argument(
        "--catalog",
        type=int,
        metavar="N",
        help="a synthetic source with N videos (built once) instead of --source",
    )
    b.add_argument("--baseline", action="store_true", help="also the previous serving settings, same run")
    b.add_argument("--merlin", action="store_true", help="also Merlin Systems' in-process DAG (extra: bench)")
    b.add_argument(
        "--profile", type=float, default=0.0, metavar="S", help="py-spy the four steps' stubs for S seconds"
    )
    b = bench.add_parser(
        "hops",
        help="the ensemble's fixed cost: the same contract with steps that do no work, vs the real one",
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument(
        "--catalog",
        type=int,
        metavar="N",
        help="a synthetic source with N videos (built once) instead of --source",
    )
    b.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    b.add_argument("--seconds", type=float, default=5.0, help="perf_analyzer measurement window")
    b = bench.add_parser(
        "swap", help="promote a trained version into a running Triton under perf_analyzer load"
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--version", type=int, help="the version to promote (default: the newest trained one)")
    b.add_argument("--seconds", type=float, default=30.0, help="length of the steady-state window")
    b.add_argument("--concurrency", type=int, default=2, help="perf_analyzer concurrency")
    b = bench.add_parser("ingest", help="event stream: ingest events/s and event-to-online-feature freshness")
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--events", type=int, default=20_000)
    b.add_argument("--samples", type=int, default=300, help="events timed one by one for freshness")
    b.add_argument("--batch", type=int, default=2_000, help="events per worker read / script call")
    b = bench.add_parser(
        "ranker",
        help="the MMoE forward over 500 candidates: SavedModel vs numpy vs numpy with the user side once",
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--candidates", type=int, default=500)
    b.add_argument("--requests", type=int, default=1000)
    b.add_argument("--pipeline", action="store_true", help="also the in-process pipeline with each backend")
    b.add_argument("--onnx", action="store_true", help="also ONNX Runtime (needs onnxruntime and tf2onnx)")
    b.add_argument(
        "--video-features", action="store_true",
        help="also the pipeline with candidate video records from memory vs from Redis",
    )  # fmt: skip
    b.add_argument(
        "--query-tower", action="store_true", help="also the query tower for one user: SavedModel vs numpy"
    )
    b = bench.add_parser(
        "replicas", help="N tritonservers behind haproxy: steady, rolling promotion, a replica killed, after"
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--replicas", type=int, default=3)
    b.add_argument("--seconds", type=float, default=20.0, help="length of the steady and kill windows")
    b.add_argument("--concurrency", type=int, default=2, help="perf_analyzer concurrency")
    b = bench.add_parser(
        "failover",
        help="a Redis Cluster primary killed under perf_analyzer load and ingest: failover time, errors, events",
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--seconds", type=float, default=20.0, help="length of the windows before and after")
    b.add_argument("--concurrency", type=int, default=2, help="perf_analyzer concurrency")
    b.add_argument("--events-per-s", type=int, default=100, help="events sent to the stream per second")
    b = bench.add_parser(
        "capacity", help="a deployment plan for a target load from measured key sizes and recorded benchmarks"
    )
    b.add_argument("--source", default="synthetic", help=SOURCE_HELP)
    b.add_argument("--users", type=int, default=100_000_000)
    b.add_argument("--videos", type=int, default=10_000_000)
    b.add_argument("--rps", type=float, default=50_000, help="feed requests per second")
    b.add_argument("--events", type=int, default=5_000, help="events streamed before the key sizes are read")
    for b in bench.choices.values():  # every benchmark records the same way
        b.add_argument(
            "--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json"
        )
        b.set_defaults(func=cmd_bench)


@uses_ml_stack
def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``reels.client.bench.<name>``, print its section and record it with ``--record``."""
    import importlib

    from reels.client.record import benchmark

    bench = importlib.import_module(f"reels.client.bench.{args.bench}")
    report = bench.measure(args, load_config(args))
    text = bench.table(report)
    print(text)
    if args.record:
        sections = bench.sections(report) if hasattr(bench, "sections") else {args.bench: report}
        markdown_path, json_path = benchmark(sections, text)
        print(f"recorded in {markdown_path} and {json_path}")
    return 0
