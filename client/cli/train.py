"""`reels train`, `reels evaluate`, `reels tune`: train a new version, evaluate against the baselines
(docs/RESULTS.*), tune the two-tower on the validation window (docs/TUNING.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from reels.client.cli.common import SOURCE_HELP, add_source, load_config, spinner, uses_ml_stack

if TYPE_CHECKING:
    from rich.console import Console

    from reels.deploy.config import Config
    from reels.models.train import TrainedModels


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``tune``."""
    p = subparsers.add_parser(
        "train", help="train the two-tower and MMoE models and write a versioned artifact directory"
    )
    add_source(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "evaluate", help="train and evaluate against baselines; writes docs/RESULTS.{md,json} + plots"
    )
    p.add_argument(
        "--sources", nargs="+", metavar="SOURCE", default=["movielens", "synthetic"], help=SOURCE_HELP
    )
    p.add_argument("--fresh", action="store_true", help="rebuild the data and features first")
    p.add_argument("--docs", default="docs", help="where RESULTS.md/.json and plots/ go ('' to skip writing)")
    p.add_argument(
        "--search", action=argparse.BooleanOptionalAction, default=None,
        help="pick every learned model's settings on each source's validation window first, within "
        "evaluation.search_budget_s seconds per source (default: evaluation.search in the config)",
    )  # fmt: skip
    p.add_argument(
        "--tradeoff-only", action="store_true",
        help="only sweep the re-rank settings on each source's serving version (no training): prints the "
        "diversity trade-off, writes <docs>/img/tradeoff_<source>.png",
    )  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "tune", help="light two-tower or ranker tuning on the validation window (never the test window)"
    )
    add_source(p, default="movielens")
    p.add_argument(
        "--rankers", metavar="FILE", default=None,
        help="compare ranker candidates instead of tuning the two-tower: a YAML file whose `candidates` "
        "map names to ranker settings (e.g. client/experiments/ranker_trunks.yaml)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[], metavar="SEED",
        help="train every candidate once per seed (default: the configured seed)",
    )  # fmt: skip
    p.add_argument(
        "--trending-priors", nargs="+", type=float, default=[], metavar="WEIGHT",
        help="also score every trained two-tower with each two_tower.trending_prior weight (no retraining)",
    )  # fmt: skip
    p.add_argument(
        "--trending-prior-days", nargs="+", type=float, default=[], metavar="DAYS",
        help="with --trending-priors: score each weight over each of these windows of last training days "
        "(default: the configured two_tower.trending_prior_days)",
    )  # fmt: skip
    p.add_argument(
        "--category-priors", nargs="+", type=float, default=[], metavar="WEIGHT",
        help="also score every trained two-tower (and each trending prior) with each two_tower.category_prior "
        "weight on the query's category affinity, the log share of each category in its history",
    )  # fmt: skip
    p.add_argument(
        "--refine-rounds", type=int, default=0, metavar="N",
        help="then up to N rounds move the best prior's weights by x and / evaluation.prior_refine_factor, "
        "one at a time, while validation recall rises (as reels evaluate's search does)",
    )  # fmt: skip
    p.add_argument(
        "--configured", action="store_true",
        help="train the configured two-tower only, instead of the tuning grid",
    )  # fmt: skip
    p.add_argument("--record", action="store_true", help="append the table to docs/TUNING.md")
    p.set_defaults(func=cmd_tune)


def train_version(config: Config, source: str, console: Console) -> TrainedModels:
    """Train a new version of the source's models under a spinner, then print its summary."""
    from reels.client.render import print_training_summary
    from reels.deploy import jobs

    with spinner(console, "training") as say:
        _, trained = jobs.train(config, source, say)
    print_training_summary(trained.manifest, trained.directory, console)
    return trained


@uses_ml_stack
def cmd_train(args: argparse.Namespace) -> int:
    """Train a new version (building the store and features first where missing)."""
    from rich.console import Console

    train_version(load_config(args), args.source, Console())
    return 0


@uses_ml_stack
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Train and evaluate on each source; write docs/RESULTS.* unless ``--docs ''``."""
    from rich.console import Console

    from reels.client.record import machine
    from reels.deploy import jobs
    from reels.models.evaluation.report import write

    config = load_config(args)
    console = Console()
    if args.tradeoff_only:
        return _tradeoff_only(config, args, console)
    with spinner(console, "evaluating", log=True) as say:
        run = jobs.evaluate(config, args.sources, args.fresh, say, search=args.search)
    for name, dataset in run["datasets"].items():
        retrieval, ranking = dataset["retrieval"], dataset["ranking"]
        served = dataset["settings"]["served_ranker"]
        how = "picked on validation" if dataset["settings"]["picked_on_validation"] else "configured"
        console.print(
            f"{name} (settings {how}): two_tower recall@20 {retrieval['two_tower']['recall@20']:.4f}, "
            f"als {retrieval['als']['recall@20']:.4f}, popularity {retrieval['popularity']['recall@20']:.4f}; "
            f"{served} AUC view {ranking[served]['auc_view']:.4f} vs shared-bottom {ranking['shared_bottom']['auc_view']:.4f}"
        )
    # The date stays first: the other keys of the run follow the machine and the command.
    results = {"date": run["date"], "machine": machine(), "command": args.command_line, **run}
    if args.docs:
        for path in write(results, Path(args.docs)):
            console.print(f"wrote {path}")
    return 0


def _tradeoff_only(config: Config, args: argparse.Namespace, console: Console) -> int:
    """`reels evaluate --tradeoff-only`: the diversity trade-off of each source's serving version."""
    from reels.models.evaluation.tradeoff import markdown, plot, tradeoff_of_version
    from reels.models.registry import serving_model_dir, trained_features

    for source in args.sources:
        model_dir = serving_model_dir(config.source_dir(source) / "models")
        with spinner(console, f"{source}: re-rank settings on version {model_dir.name}", log=True) as say:
            result = tradeoff_of_version(
                trained_features(model_dir),
                model_dir,
                config.serving,
                seed=config.evaluation.seed,
                progress=say,
                pick_feed_score=config.evaluation.pick_feed_score,
            )
        image = None
        if args.docs:
            image = plot(
                result, Path(args.docs) / "img" / f"tradeoff_{source}.png", f"Diversity trade-off, {source}"
            )
        console.print(markdown(result, source, image), markup=False, highlight=False, soft_wrap=True)
    return 0


@uses_ml_stack
def cmd_tune(args: argparse.Namespace) -> int:
    """Tune the two-tower (or, with ``--rankers``, compare ranker candidates) on the validation window
    and print (``--record``: append) the table."""
    import time

    import yaml
    from rich.console import Console

    from reels.client.config import section_overrides
    from reels.client.record import append_section, machine
    from reels.deploy import jobs
    from reels.models.evaluation.tune import (
        DEFAULT_GRID,
        markdown,
        rankers_markdown,
        tune_rankers,
        tune_two_tower,
    )
    from reels.workflows.errors import ConfigError

    config = load_config(args)
    console = Console()
    candidates = None
    if args.trending_prior_days and not args.trending_priors:
        raise ConfigError(
            "--trending-prior-days needs --trending-priors: the weights to score over those days"
        )
    if args.refine_rounds < 0:
        raise ConfigError(f"--refine-rounds: expected 0 or more, got {args.refine_rounds}")
    if args.rankers:
        path = Path(args.rankers)
        if not path.is_file():
            raise ConfigError(f"--rankers: no file {path}")
        candidates = (yaml.safe_load(path.read_text()) or {}).get("candidates")
        if not isinstance(candidates, dict) or not candidates:
            raise ConfigError(f"{path}: expected a `candidates:` mapping of names to ranker settings")
        if not all(isinstance(o, dict) for o in candidates.values()):
            raise ConfigError(f"{path}: each candidate must be a mapping of ranker settings")
        # Checked and typed as a config file's `ranker:` section would be, before anything trains.
        candidates = {name: section_overrides(config, "ranker", o) for name, o in candidates.items()}
    with spinner(console, "tuning on the validation window") as say:
        features = jobs.ensure_features(config, args.source, say)
        if candidates is not None:
            result = tune_rankers(features, config.ranker, candidates, args.seeds, progress=say)
        else:
            grid = ({},) if args.configured else DEFAULT_GRID  # {}: the configured two-tower
            result = tune_two_tower(
                features, config.two_tower, grid, progress=say, seeds=tuple(args.seeds),
                priors=tuple(args.trending_priors), prior_days=tuple(args.trending_prior_days),
                category_priors=tuple(args.category_priors), refine_rounds=args.refine_rounds,
                refine_factor=config.evaluation.prior_refine_factor,
            )  # fmt: skip
    what = "Rankers" if candidates is not None else "Two-tower"
    header = (
        f"### {what} on {args.source}, validation window — {time.strftime('%Y-%m-%d')}\n\n"
        f"Machine: {machine()}. Command: `{args.command_line}`."
    )
    text = rankers_markdown(result, header) if candidates is not None else markdown(result, header)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if args.record:
        path = append_section(Path("docs") / "TUNING.md", text, "# Tuning (validation windows only)\n")
        console.print(f"recorded in {path}")
    return 0
