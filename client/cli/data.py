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
        "`reels data import NAME` imports your own logs; `reels data compact SOURCE` merges the store's "
        "small parts",
    )
    p.add_argument(
        "source", metavar="SOURCE",
        help="synthetic or movielens to fill that source; `import` then a new source's name to import "
        "your own logs (--events, --mapping); or `compact` then a source: merge each day's parts (one per "
        "ingest batch) and each table's parts into one, atomically",
    )  # fmt: skip
    p.add_argument("name", nargs="?", metavar="NAME", help="with `import` or `compact`: the source")
    p.add_argument(
        "--events", metavar="N|PATH",
        help="synthetic: number of events (overrides synthetic.n_events); import: the events file "
        "(CSV, Parquet or JSON Lines; a path or any fsspec URL)",
    )  # fmt: skip
    p.add_argument("--users", metavar="PATH", help="import: a users file (default: derived from the events)")
    p.add_argument(
        "--videos", metavar="PATH", help="import: a videos file (default: derived from the events)"
    )
    p.add_argument(
        "--mapping", metavar="FILE|NAME",
        help="import: the YAML mapping from your columns to the Reels schema, or a shipped one "
        "(movielens_ratings, kuairand)",
    )  # fmt: skip
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


def import_own_logs(config: Config, args: argparse.Namespace, console: Console) -> int:
    """`reels data import NAME`: map, validate and write the user's logs, then print what was written."""
    from reels.workflows.errors import InvalidInput
    from reels.workflows.importer import Mapping, check_name, import_logs, resolve_mapping

    if args.name is None:
        raise InvalidInput("`reels data import` needs the new source's name: reels data import NAME ...")
    if not args.events or not args.mapping:
        raise InvalidInput("`reels data import NAME` needs --events PATH_OR_URL and --mapping FILE")
    folder = check_name(args.name, config.data.root)
    mapping = Mapping.load(resolve_mapping(args.mapping))
    with spinner(console, f"importing {args.events} into {folder / 'store'}"):
        report = import_logs(folder, mapping, args.events, args.users, args.videos, overwrite=args.overwrite)
    console.print(
        f"{report.events:,} events, {report.users:,} users ({report.derived_users:,} derived from the "
        f"events), {report.videos:,} videos ({report.derived_videos:,} derived) over {report.days} days "
        f"in {report.seconds:.1f}s ({report.events_per_s:,.0f} events/s); split: "
        f"{mapping.valid_days} validation day(s), {mapping.test_days} test day(s)"
    )
    console.print(f"next: reels features {args.name}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Fill a built-in source's store (``--events`` overrides the synthetic event count), import the
    user's logs as a new source, or compact a source's store."""
    from dataclasses import replace

    from rich.console import Console

    from reels.workflows.errors import InvalidInput
    from reels.workflows.importer import known_source

    config = load_config(args)
    if args.source == "import":
        return import_own_logs(config, args, Console())
    if args.source == "compact":
        if args.name is None:
            raise InvalidInput(
                f"`reels data compact` needs a source: one of {', '.join(SOURCES)} or an imported one"
            )
        return compact(config, known_source(args.name, config.data.root), Console())
    if args.source not in SOURCES:
        raise InvalidInput(
            f"`reels data` fills {' or '.join(SOURCES)} (got {args.source!r}); import your own logs with "
            f"`reels data import {args.source} --events FILE --mapping MAPPING`"
        )
    if args.name is not None:
        raise InvalidInput(f"`reels data {args.source}` takes no second source (did you mean `compact`?)")
    if args.users or args.videos or args.mapping:
        raise InvalidInput("--users, --videos and --mapping go with `reels data import NAME`")
    if args.events:
        if args.source != "synthetic" or not args.events.isdigit():
            raise InvalidInput(
                f"--events for `reels data {args.source}`: expected a number of synthetic events"
            )
        config = replace(config, synthetic=replace(config.synthetic, n_events=int(args.events)))
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
