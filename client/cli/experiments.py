"""`reels ab-simulate`, `reels ab-report`: simulated users answer served feeds (exposures + events), and
the per-variant report with intervals, tests and IPS estimates (docs/EXPERIMENTS.md with --record)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reels.client.cli.common import add_source, load_config, uses_ml_stack


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ab-simulate`` and ``ab-report``."""
    p = subparsers.add_parser(
        "ab-simulate",
        help="simulated users (synthetic ground truth) get feeds and respond: exposures + events",
    )
    add_source(p)
    p.add_argument("--users", type=int, default=2000, help="simulated users (known users, sampled)")
    p.add_argument("--sessions", type=int, default=1, help="feeds per user, one hour apart")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="user sample and response noise")
    p.add_argument("--start", help="first request time (default: the end of the data, so fresh videos exist)")
    p.add_argument("--redis", action="store_true", help="use the configured Redis instead of a temporary one")
    p.add_argument("--dir", help="where exposures/events parquet go (default: data/<source>/ab)")
    p.set_defaults(func=cmd_ab_simulate)

    p = subparsers.add_parser(
        "ab-report", help="per-variant view/like rate and watch time with CIs, tests, IPS for exploration"
    )
    add_source(p)
    p.add_argument("--dir", help="folder written by ab-simulate (default: data/<source>/ab)")
    p.add_argument("--redis", action="store_true", help="read the exposure and event streams from Redis")
    p.add_argument("--record", action="store_true", help="append the tables to docs/EXPERIMENTS.md")
    p.add_argument("--docs", default="docs", help="folder of EXPERIMENTS.md")
    p.set_defaults(func=cmd_ab_report)


@uses_ml_stack
def cmd_ab_simulate(args: argparse.Namespace) -> int:
    """Run the simulation and say what it served and wrote."""
    from rich.console import Console
    from tqdm import tqdm

    from reels.deploy import jobs
    from reels.models.evaluation.abtest import SimulationSpec

    config = load_config(args)
    console = Console()
    spec = SimulationSpec(args.users, args.sessions, args.k, args.seed, args.start)
    with tqdm(total=spec.users * spec.sessions, unit="feed", leave=False) as bar:
        run = jobs.simulate_ab(
            config, args.source, spec, out=args.dir, configured_redis=args.redis, command=args.command_line,
            progress=bar.update,
        )  # fmt: skip
    split = ", ".join(f"{v} {n:,}" for v, n in run.feeds_per_variant.items())
    console.print(
        f"{run.users:,} users x {run.sessions} session(s): {run.feeds:,} feeds ({split}), {run.events:,} events "
        f"sent to the stream; exposure log: {run.exposures_written:,} written, {run.exposures_lost:,} lost"
    )
    console.print(f"wrote {run.exposures_path} and {run.events_path}; next: reels ab-report")
    return 0


def cmd_ab_report(args: argparse.Namespace) -> int:
    """Report on a simulation's folder (or ``--redis``'s streams); ``--record`` appends the tables."""
    import time

    from rich.console import Console

    from reels.client.record import append_section, machine
    from reels.client.render import print_ab_report
    from reels.deploy import jobs
    from reels.models.evaluation.abtest import ab_report, join, markdown, read_simulation

    config = load_config(args)
    console = Console()
    data = "live traffic"
    if args.redis:
        exposures, events = jobs.read_ab_logs(config)
        origin = f"Redis streams on {config.server.redis.host}:{config.server.redis.port}"
    else:
        folder = jobs.ab_dir(config, args.source, args.dir)
        exposures, events, run = read_simulation(folder)
        origin = str(folder)
        if run is not None:
            data = (
                f"`{run['command']}` ({run['feeds']:,} feeds, {run['events']:,} events, {run['seconds']} s)"
            )
    order = [v for v in config.experiment.names if v in set(exposures["variant"])] or None
    report = ab_report(join(exposures, events), order)
    print_ab_report(report, origin, console)
    if args.record:
        header = (
            f"### {report['experiment']} — {time.strftime('%Y-%m-%d')}\n\n"
            f"Machine: {machine()}. Data: {data}; then `reels ab-report --record`; "
            f"control = {report['control']}; "
            f"variants: {config.experiment.variants}; serving: mmr_lambda {config.serving.mmr_lambda}, "
            f"exploration {config.serving.exploration_slots} slots, epsilon {config.serving.exploration_epsilon}."
        )
        path = append_section(Path(args.docs) / "EXPERIMENTS.md", markdown(report, header), "# Experiments\n")
        console.print(f"recorded in {path}")
    return 0
