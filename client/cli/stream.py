"""`reels ingest`, `reels send-events`: consume the event stream into the online store (a worker of the
consumer group), and send events to it (replays of the store's latest, re-stamped now)."""

from __future__ import annotations

import argparse
import os

from reels.client.cli.common import add_source, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ingest`` and ``send-events``."""
    p = subparsers.add_parser(
        "ingest", help="consume the event stream into the online store (a consumer-group worker)"
    )
    add_source(p)
    p.add_argument("--consumer", default=f"worker-{os.getpid()}", help="consumer name within the group")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (default: run forever)")
    p.add_argument("--drain", action="store_true", help="stop once the stream has nothing new")
    p.add_argument(
        "--no-offline",
        action="store_true",
        help="do not append applied events and hide-creator choices to the offline store",
    )
    p.add_argument(
        "--claim-idle-ms", type=int, default=10_000, help="claim messages a dead worker left pending"
    )
    p.add_argument(
        "--own-shards",
        default="",
        metavar="LIST",
        help="the event stream shards this worker reads, e.g. 0,2 or 0-3 (default: all of stream.shards)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics (reels_ingest_*) at http://ADDRESS:PORT/metrics (default: off; "
        "0: any free port)",
    )
    p.add_argument(
        "--metrics-address",
        default=None,
        metavar="ADDRESS",
        help="where the metrics port listens (default: server.bind_address, 127.0.0.1; 0.0.0.0 opens it "
        "to the network)",
    )
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser(
        "send-events", help="send interaction events to the stream (replays of recent ones)"
    )
    add_source(p)
    p.add_argument("--count", type=int, default=1000)
    p.set_defaults(func=cmd_send_events)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run one ingest worker and print its counts (Redis unreachable at the start: exit 4; once running,
    the worker waits out a Redis outage, retrying with backoff; a bad ``--own-shards``, or a shard count the
    streams were not written with: exit 2). With ``--metrics-port``, its metrics are served over HTTP while
    it runs."""
    from reels.deploy import jobs
    from reels.feature_store.ingest import IngestMetrics
    from reels.workflows.errors import InvalidInput

    config = load_config(args)
    try:
        owned = config.stream.owned(args.own_shards)
    except ValueError as exc:
        raise InvalidInput(f"--own-shards: {exc}") from None
    metrics = None
    if args.metrics_port is not None:
        metrics = IngestMetrics()
        address = args.metrics_address or config.server.bind_address
        port = metrics.serve(args.metrics_port, address)
        print(f"metrics: http://{address}:{port}/metrics", flush=True)
    try:
        stats = jobs.consume_events(
            config,
            args.source,
            args.consumer,
            seconds=args.seconds or None,
            drain=args.drain,
            to_offline=not args.no_offline,
            claim_idle_ms=args.claim_idle_ms,
            metrics=metrics,
            owned_shards=owned,
        )
    finally:
        if metrics is not None:
            metrics.close()
    print(
        f"read {stats.read:,}, applied {stats.applied:,}, duplicates {stats.duplicates:,}, "
        f"dead-lettered {stats.dead_lettered:,}, claimed from dead consumers {stats.claimed:,}"
    )
    return 0


def cmd_send_events(args: argparse.Namespace) -> int:
    """Send ``--count`` replayed events to the stream (Redis unreachable: exit 4)."""
    from reels.deploy import jobs

    sent = jobs.send_events(load_config(args), args.source, args.count)
    print(f"sent {sent:,} events (replays of the store's latest, re-stamped now) to the stream")
    return 0
