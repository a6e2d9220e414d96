"""`reels drift`, `reels exposure`: feature drift (PSI, training window vs recent windows; exit 1 above the
threshold) and creator-exposure concentration before and after the re-rank."""

from __future__ import annotations

import argparse

from reels.client.cli.common import add_source, load_config, spinner, uses_ml_stack
from reels.workflows.errors import CheckFailed


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``drift`` and ``exposure``."""
    p = subparsers.add_parser(
        "drift", help="PSI per feature, training window vs recent windows; exit 1 above the threshold"
    )
    add_source(p)
    p.add_argument("--windows", nargs="+", choices=["valid", "test"], default=["valid", "test"])
    p.add_argument("--threshold", type=float, default=0.25)
    p.set_defaults(func=cmd_drift)

    p = subparsers.add_parser(
        "exposure", help="creator-exposure concentration (Gini, top-1%% share) before/after re-rank"
    )
    add_source(p)
    p.add_argument("--users", type=int, default=300, help="feeds to generate")
    p.add_argument("--k", type=int, default=20)
    p.set_defaults(func=cmd_exposure)


@uses_ml_stack
def cmd_drift(args: argparse.Namespace) -> int:
    """Print the PSI table of the source's features; drift above ``--threshold`` is ``CheckFailed``."""
    from rich.console import Console

    from reels.client.render import print_drift
    from reels.deploy import jobs
    from reels.workflows.drift import check_drift

    config = load_config(args)
    console = Console()
    with spinner(console, "loading the features") as say:
        features = jobs.ensure_features(config, args.source, say)
    check = check_drift(features, args.threshold, tuple(args.windows))
    print_drift(check, console)
    if check.drifted:
        raise CheckFailed(f"drift above {args.threshold} in {check.drifted}")
    return 0


@uses_ml_stack
def cmd_exposure(args: argparse.Namespace) -> int:
    """Serve ``--users`` feeds in process from a temporary Redis and print the exposure table."""
    from rich.console import Console

    from reels.client.render import print_exposure
    from reels.deploy import jobs

    print_exposure(jobs.exposure(load_config(args), args.source, args.users, args.k), Console())
    return 0
