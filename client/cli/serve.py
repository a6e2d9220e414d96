"""`reels export`, `reels serve`, `reels recommend`, `reels load`, `reels promote`: the model repository,
Redis + Triton, a feed from the running ensemble, the online store, and hot-swapping a version in."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from reels.client.cli.common import SOURCE_HELP, add_source, load_config, uses_ml_stack, video_table

if TYPE_CHECKING:
    from rich.console import Console

    from reels.deploy.config import Config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``serve``, ``recommend``, ``load``, ``publish`` and ``promote``."""
    p = subparsers.add_parser(
        "export", help="fill a Triton model repository (build/<source>/repository) from the latest models"
    )
    add_source(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "serve", help="start redis-server + tritonserver (CPU) with the latest models; Ctrl-C stops"
    )
    add_source(p)
    p.add_argument(
        "--seconds", type=float, default=0, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    p.add_argument(
        "--replicas", type=int,
        help="run N tritonservers behind haproxy on the configured ports (overrides server.replicas)",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("recommend", help="ask the running ensemble for a user's feed and print it")
    p.add_argument("user", type=int, help="raw user id")
    p.add_argument("--k", type=int, default=10)
    # Its own dest: the global --device is the compute device (cpu/gpu/auto), this one the client's.
    p.add_argument("--device", dest="client_device", choices=["ios", "android", "web"])
    p.add_argument("--hour", type=int, help="0-23 (UTC); default: now")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--url", help="host:port (default: 127.0.0.1 and the configured port)")
    p.add_argument("--source", default="synthetic", help=f"for video metadata: {SOURCE_HELP}")
    p.set_defaults(func=cmd_recommend)

    p = subparsers.add_parser(
        "load",
        help="load the serving version's features into the configured Redis (refused while `reels serve` "
        "answers: `reels promote` swaps features with their models)",
    )
    add_source(p)
    p.set_defaults(func=cmd_load)

    p = subparsers.add_parser(
        "publish",
        help="for tritonservers run without `reels serve` (Kubernetes): load the serving version's features "
        "into a new pinned namespace and export the repository pinned to it",
    )
    add_source(p)
    p.set_defaults(func=cmd_publish)

    p = subparsers.add_parser(
        "promote", help="serve a trained version: hot-swap it into a running `reels serve`"
    )
    add_source(p)
    p.add_argument("version", type=int, help="the model version (data/<source>/models/<version>)")
    p.set_defaults(func=cmd_promote)


@uses_ml_stack
def cmd_export(args: argparse.Namespace) -> int:
    """Write the serving version's model repository."""
    from reels.deploy import jobs

    print(f"model repository written to {jobs.export(load_config(args), args.source)}")
    return 0


@uses_ml_stack
def cmd_serve(args: argparse.Namespace) -> int:
    """Run Redis + Triton until Ctrl-C, SIGTERM or ``--seconds``, then stop what was started."""
    import signal

    from rich.console import Console

    config = load_config(args)
    console = Console()
    # systemd, Docker and Kubernetes stop a service with SIGTERM: stop the children as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _serve_until_stopped(config, args, console)
    except Terminated:  # a stop request during start-up: what was started is stopped, and that is success
        console.print("stopped")
    return 0


def _serve_until_stopped(config, args: argparse.Namespace, console) -> None:
    import time

    from reels.deploy.replicas import ReplicaSet
    from reels.deploy.stack import source_stack

    if args.replicas is not None:
        config.server.replicas = args.replicas
    with source_stack(config, args.source, console.print) as (_, triton):
        if isinstance(triton, ReplicaSet):
            metrics = ", ".join(f"http://127.0.0.1:{s.metrics_port}/metrics" for s in triton.servers)
            where = f"{len(triton.servers)} replicas behind haproxy; metrics {metrics}"
        else:
            where = f"metrics http://127.0.0.1:{config.server.metrics_port}/metrics"
        console.print(
            f"[bold green]serving[/]: HTTP {triton.http_url}, gRPC {triton.grpc_url}, {where} — Ctrl-C to stop"
        )
        try:
            deadline = time.monotonic() + args.seconds if args.seconds else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
        except KeyboardInterrupt:  # the way to stop a server: not an interrupted command
            console.print("stopping")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the same clean-up runs as for Ctrl-C."""


def _interrupt(signum: int, _frame) -> None:
    import signal

    signal.signal(signum, signal.SIG_IGN)  # one stop request: a second must not cut the clean-up short
    raise Terminated(f"signal {signum}")


def cmd_recommend(args: argparse.Namespace) -> int:
    """One feed from the running ensemble (rejected: exit 2; Triton unreachable: exit 4)."""
    from reels.client.triton_client import ReelsClient

    config = load_config(args)
    port = config.server.http_port if args.protocol == "http" else config.server.grpc_port
    with ReelsClient(args.url or f"127.0.0.1:{port}", args.protocol) as client:
        recs = client.recommend(args.user, k=args.k, device=args.client_device, hour=args.hour)
    from rich.console import Console  # rendering imports come after the request: a failure stays fast

    from reels.client.render import print_recommendations

    print_recommendations(recs, video_table(config, args.source), Console())
    return 0


@uses_ml_stack
def cmd_publish(args: argparse.Namespace) -> int:
    """Load + export for servers that restart onto the new repository (refused under `reels serve`: exit 2)."""
    from reels.deploy import jobs

    repository, report, pinned = jobs.publish(load_config(args), args.source)
    print(
        f"published: namespace {report.namespace} ({report.users:,} users, {report.videos:,} videos) active, "
        f"repository {repository} reads it; pinned namespaces: {', '.join(sorted(pinned))}"
    )
    return 0


@uses_ml_stack
def cmd_load(args: argparse.Namespace) -> int:
    """Load the serving version's features into the configured Redis (a new namespace, then the swap);
    refused while a `reels serve` answers (exit 2)."""
    from reels.deploy import jobs

    model_dir, report = jobs.load_serving_features(load_config(args), args.source)
    print(
        f"loaded {report.users:,} users, {report.videos:,} videos, {report.seen_lists:,} seen lists of version "
        f"{model_dir.name} into namespace {report.namespace} ({report.keys_per_s:,.0f} keys/s)"
    )
    return 0


def promote_version(config: Config, source: str, model_dir: Path, console: Console) -> int:
    """Hot-swap ``model_dir`` into the running `reels serve` (or only mark it serving) and say which."""
    from reels.deploy.promotion import promote_or_mark

    report = promote_or_mark(config, source, model_dir, progress=console.print)
    if report is not None and report.finished_interrupted:
        console.print(f"finished the interrupted promotion {report.previous} -> {report.version}")
    elif report is not None:
        console.print(
            f"hot swap {report.previous} -> {report.version} in {report.seconds:.1f} s (features "
            f"{report.features_load_s:.1f} s, models {report.models_load_s:.1f} s)"
        )
    return 0


@uses_ml_stack
def cmd_promote(args: argparse.Namespace) -> int:
    """Serve a trained version (a failed load rolls back: exit 1; a version the promotion gate rejected is
    refused: exit 2). An earlier promotion killed part-way is reconciled first."""
    from rich.console import Console

    config = load_config(args)
    model_dir = config.source_dir(args.source) / "models" / str(args.version)
    return promote_version(config, args.source, model_dir, Console())
