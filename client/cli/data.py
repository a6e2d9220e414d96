"""`reels data`, `reels features`, `reels demo`: fill the offline store, build features, and the whole
path end to end (data, features, training, then Redis + Triton and a few recommendations)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from reels.client.cli.common import SOURCES, add_source, load_config, spinner, uses_ml_stack, video_table

if TYPE_CHECKING:
    from rich.console import Console

    from reels.deploy.config import Config
    from reels.workflows.manifest import FeatureArtifacts
    from reels.workflows.sources import IngestReport


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data``, ``features`` and ``demo``."""
    p = subparsers.add_parser(
        "data",
        help="fill the offline store from a source (synthetic generator or MovieLens-100k); "
        "`reels data compact SOURCE` merges the store's small parts",
    )
    p.add_argument(
        "source", choices=[*SOURCES, "compact"],
        help="the source to fill, or `compact` then a source: merge each day's parts (one per ingest "
        "batch) and each table's parts into one, atomically",
    )  # fmt: skip
    p.add_argument("compact_source", nargs="?", choices=SOURCES, metavar="SOURCE", help="with `compact`")
    p.add_argument("--events", type=int, help="synthetic: number of events (overrides synthetic.n_events)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_data)

    p = subparsers.add_parser(
        "features", help="fit the NVTabular workflow on the training window and write features"
    )
    add_source(p)
    p.set_defaults(func=cmd_features)

    p = subparsers.add_parser(
        "demo", help="end to end: data, features, training, then Redis + Triton serving and recommendations"
    )
    p.add_argument("--no-train", action="store_true", help="stop after the feature workflows")
    p.add_argument("--no-serve", action="store_true", help="stop after training")
    p.add_argument(
        "--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="which data sets to run (default: both)"
    )  # fmt: skip
    p.set_defaults(func=cmd_demo)


def import_source(config: Config, source: str, overwrite: bool, console: Console) -> IngestReport:
    """Fill the source's store with a per-day progress bar, then print what was written."""
    from tqdm import tqdm

    from reels.deploy import jobs

    report = jobs.import_source(
        config, source, overwrite, progress=console.print,
        days=lambda days: tqdm(days, total=config.synthetic.n_days, unit="day", leave=False),
    )  # fmt: skip
    console.print(
        f"{report.events:,} events, {report.users:,} users, {report.videos:,} videos over {report.days} days "
        f"in {report.seconds:.1f}s ({report.events_per_s:,.0f} events/s)"
    )
    return report


def compact(config: Config, source: str, console: Console) -> int:
    """Compact the source's offline store and print the part files per table before and after."""
    from reels.deploy import jobs

    report = jobs.offline_store(config, source).compact()
    for table, before in report.files_before.items():
        if before:
            console.print(f"{table}: {before:,} part files -> {report.files_after[table]:,}")
    if report.duplicates_dropped:
        console.print(
            f"dropped {report.duplicates_dropped:,} rows whose key a day already held (re-written events)"
        )
    return 0


def build_features(config: Config, source: str, console: Console) -> FeatureArtifacts:
    """Build the source's features under a spinner, then print the build's summary."""
    from reels.client.render import print_feature_summary
    from reels.deploy import jobs

    with spinner(console, "building features") as say:
        features = jobs.build_features(config, source, say)
    print_feature_summary(features, console)
    return features


def cmd_data(args: argparse.Namespace) -> int:
    """Fill the offline store (``--events`` overrides the synthetic event count), or compact it."""
    from dataclasses import replace

    from rich.console import Console

    from reels.workflows.errors import InvalidInput

    config = load_config(args)
    if args.source == "compact":
        if args.compact_source is None:
            raise InvalidInput(f"`reels data compact` needs a source: one of {', '.join(SOURCES)}")
        return compact(config, args.compact_source, Console())
    if args.compact_source is not None:
        raise InvalidInput(f"`reels data {args.source}` takes no second source (did you mean `compact`?)")
    if args.events:
        config = replace(config, synthetic=replace(config.synthetic, n_events=args.events))
    import_source(config, args.source, args.overwrite, Console())
    return 0


@uses_ml_stack
def cmd_features(args: argparse.Namespace) -> int:
    """Build the features of a source's store."""
    from rich.console import Console

    build_features(load_config(args), args.source, Console())
    return 0


@uses_ml_stack
def cmd_demo(args: argparse.Namespace) -> int:
    """Data, features and training for each source, then serve the first and ask for a few feeds."""
    import pandas as pd
    from rich.console import Console

    from reels.client.cli.train import train_version
    from reels.client.render import print_recommendations
    from reels.client.triton_client import ReelsClient
    from reels.deploy import jobs
    from reels.deploy.stack import source_stack
    from reels.workflows.spec import OOV

    config = load_config(args)
    console = Console()
    for source in args.sources:
        console.rule(f"[bold]{source}: data and features")
        import_source(config, source, overwrite=True, console=console)
        build_features(config, source, console)
        if not args.no_train:
            console.rule(f"[bold]{source}: training")
            train_version(config, source, console)
    if args.no_train or args.no_serve:
        return 0
    source = args.sources[0]
    console.rule(f"[bold]{source}: serving with Redis + Triton")
    users = pd.read_parquet(jobs.features_of(config, source).users_path, columns=["user_id", "raw_user_id"])
    active = users.loc[users["user_id"] > OOV, "raw_user_id"].head(2).tolist()  # two users the model knows
    videos = video_table(config, source)
    with source_stack(config, source, console.print) as (_, triton):
        with ReelsClient(triton.http_url, "http") as client:
            for user in active:
                print_recommendations(client.recommend(int(user), k=10, device="ios"), videos, console)
            print_recommendations(
                client.recommend(10**9, k=5), videos, console, title="A brand-new user (cold start)"
            )
        with ReelsClient(triton.grpc_url, "grpc") as client:
            recs = client.recommend(int(active[0]), k=10, device="ios")
            console.print(f"same request over gRPC: {list(recs.video_ids)}")
    return 0
