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

SOURCES = ("synthetic", "movielens")
Handler = Callable[[argparse.Namespace], int]


def add_source(parser: argparse.ArgumentParser, default: str = "synthetic") -> None:
    """The optional positional ``source`` most commands take."""
    parser.add_argument(
        "source", choices=SOURCES, nargs="?", default=default, help=f"data set (default: {default})"
    )


def load_config(args: argparse.Namespace) -> Config:
    """The configuration the global flags describe: defaults, ``--config``, ``--set``, ``--device``."""
    from reels.client.config import load_config as load

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    return load(args.config, overrides)


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
