"""`reels retrain`: features on Dask and both models from the offline store, the promotion gate on the
latest window (a rejected candidate exits 1), then promotion; `--if-drift` retrains only after drift."""

from __future__ import annotations

import argparse

from reels.client.cli.common import add_source, load_config, spinner, uses_ml_stack
from reels.workflows.errors import CheckFailed


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``retrain``."""
    p = subparsers.add_parser(
        "retrain",
        help="features on Dask + both models from the offline store, gate on the latest window, hot-swap promotion",
    )
    add_source(p)
    p.add_argument("--scheduler", help="an existing Dask scheduler address (default: config retrain.scheduler, "
                   "else a LocalCluster, or a LocalCUDACluster on GPUs)")  # fmt: skip
    p.add_argument(
        "--store",
        metavar="URL",
        help="the offline store to read: a path or fsspec URL every Dask worker reaches, e.g. "
        "file:///shared/reels/synthetic/store (default: <data.root>/<source>/store)",
    )
    p.add_argument(
        "--work",
        metavar="URL",
        help="where the feature builds go: a path or file:// URL on a filesystem every Dask worker mounts at "
        "the same path (default: <data.root>/<source>/retrain)",
    )
    p.add_argument(
        "--if-drift",
        action="store_true",
        help="retrain only when a feature drifted (retrain.drift_threshold)",
    )
    p.add_argument(
        "--no-promote", action="store_true", help="mark the version serving but do not hot-swap it"
    )
    p.add_argument("--record", action="store_true", help="append the gate table to docs/RETRAIN.md/.json")
    p.set_defaults(func=cmd_retrain)


@uses_ml_stack
def cmd_retrain(args: argparse.Namespace) -> int:
    """Retrain, print the gate, record it with ``--record``, then promote a candidate that passed."""
    from rich.console import Console

    from reels.client import record
    from reels.client.cli.serve import promote_version
    from reels.client.render import print_gate
    from reels.deploy.retrain import retrain
    from reels.models.registry import mark_serving, serving_model_dir, trained_features
    from reels.workflows.drift import check_drift

    config = load_config(args)
    console = Console()
    if args.if_drift:
        threshold = config.retrain.drift_threshold
        # The serving version's own features: a retrain writes builds of its own under retrain/.
        served = trained_features(serving_model_dir(config.source_dir(args.source) / "models"))
        check = check_drift(served, threshold)
        feature, psi = check.largest
        if not check.drifted:
            console.print(f"no drift above {threshold} (largest: {feature} {psi:.3f}): not retraining")
            return 0
        console.print(f"drift: {feature} PSI {psi:.3f} > {threshold}: retraining")
    with spinner(console, "retraining", log=True) as say:
        result = retrain(
            config, args.source, args.scheduler, progress=say, store_url=args.store, work_url=args.work
        )
    print_gate(result, console)
    if args.record:
        console.print(f"recorded in {record.retrain(result, args.command_line)}")
    version = result.candidate_dir.name
    if not result.promoted:
        raise CheckFailed(f"version {version} is worse than the serving one: not promoted")
    console.print(f"[green]version {version} passed the gate")
    if args.no_promote:
        mark_serving(result.candidate_dir.parent, int(version))
        return 0
    return promote_version(config, args.source, result.candidate_dir, console)
