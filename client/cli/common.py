"""What the command modules share: the source argument, loading the configuration from the global flags,
quieting the ML stack for the commands that load it, a progress spinner and the video metadata table.

Cheap to import (the standard library only): building the parser must not load the ML stack."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from reels.deploy.config import Config

SOURCES = ("synthetic", "movielens")  # built in; `reels data import NAME` adds more under data.root
SOURCE_HELP = "synthetic, movielens or a source imported with `reels data import`"
Handler = Callable[[argparse.Namespace], int]


def add_source(parser: argparse.ArgumentParser, default: str = "synthetic") -> None:
    """The optional positional ``source`` most commands take (checked by ``load_config``)."""
    parser.add_argument(
        "source", nargs="?", default=default, metavar="SOURCE", help=f"{SOURCE_HELP} (default: {default})"
    )


def load_config(args: argparse.Namespace) -> Config:
    """The configuration the global flags describe: defaults, ``--config``, ``--set``, ``--device``.

    Also checks the command's ``source`` / ``sources`` against the known sources (built in, or imported
    under ``data.root``) and, when the command works on one imported source, takes that source's time
    split from its import record unless ``--set data.valid_days`` / ``data.test_days`` says otherwise."""
    from reels.client.config import load_config as load

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    config = load(args.config, overrides)
    if getattr(args, "command", None) == "data":  # `reels data` names sources to create: it checks its own
        return config
    named = getattr(args, "source", None)
    sources = {*([named] if isinstance(named, str) else []), *(getattr(args, "sources", None) or [])}
    imported = sources - set(SOURCES)
    if not imported:
        return config
    from dataclasses import replace

    from reels.workflows.errors import InvalidInput
    from reels.workflows.importer import known_source, recorded_split

    for source in sorted(imported):
        known_source(source, config.data.root)
    if getattr(args, "fresh", False):  # a fresh run re-fills the store: only reels can re-fill its own
        raise InvalidInput(
            f"--fresh rebuilds synthetic and movielens only; re-import {', '.join(sorted(imported))} with "
            "`reels data import NAME ... --overwrite`, then run without --fresh"
        )
    set_keys = {item.split("=", 1)[0] for item in overrides}
    if len(sources) == 1 and not set_keys & {"data.valid_days", "data.test_days"}:
        # data.valid_days/test_days are the split of every source but movielens: for this one command
        # they become the imported source's own (its mapping's `split`).
        split = recorded_split(config.source_dir(sources.pop()))
        if split is not None:
            config = replace(config, data=replace(config.data, valid_days=split[0], test_days=split[1]))
    return config


def quiet_ml_stack() -> None:
    """Silence TensorFlow's C++ start-up chatter, absl's logging and the stack's known warnings; it must
    run before TensorFlow is imported (merlin imports it transitively), so heavy commands call it first."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:  # absl (used by TF's SavedModel writer) logs through its own handler
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        pass
    warnings.filterwarnings("ignore", message=".*PyTorch dtype mappings.*")
    warnings.filterwarnings("ignore", message=".*NVTabular Dataset in CPU mode.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def uses_ml_stack(handler: Handler) -> Handler:
    """Mark a command that loads TensorFlow / NVTabular: ``quiet_ml_stack`` runs before it."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        quiet_ml_stack()
        return handler(args)

    return run


@contextmanager
def spinner(console: Console, message: str, log: bool = False) -> Iterator[Callable[[str], None]]:
    """A status line showing ``message``; the callable it yields replaces the message (and, with ``log``,
    also prints it with a timestamp, for long jobs whose steps are worth keeping on screen)."""
    with console.status(message) as status:

        def say(text: str) -> None:
            status.update(text)
            if log:
                console.log(text)

        yield say


def video_table(config: Config, source: str) -> pd.DataFrame:
    """The source's video metadata (category, creator ...) by raw video id, for printing feeds."""
    from reels.workflows.offline_store import OfflineStore

    return OfflineStore(config.source_dir(source) / "store").read_table("videos").set_index("video_id")
