"""The ``reels`` command line: ``build_parser`` assembles one module per command group, each with
``register(subparsers)`` and ``cmd_*`` handlers that parse, call the library, print and return an exit
code; ``main`` runs one command and turns errors into exit codes (``reels.workflows.errors``):

==========  ===============================================================================
exit code   when
==========  ===============================================================================
0           success
1           ``CheckFailed``: drift found, the gate rejected a candidate, a promotion rolled back
2           ``InvalidInput`` / ``AlreadyExists`` / other ``ReelsError``; bad arguments (argparse);
            the server rejected a `reels recommend` request
3           ``NotFound``: no data, features, models, release or GPU yet
4           ``ServiceUnavailable``, or a Redis / socket connection error that escaped: Redis or
            Triton does not answer
70          any other exception: a bug (the traceback is printed)
130         Ctrl-C
==========  ===============================================================================

Importing this package and building the parser load nothing heavy: every handler imports what it
needs, so `reels --help` and `reels config` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback

from reels.client.cli import bench, data, experiments, monitor, retrain, serve, settings, stream, train
from reels.workflows.errors import BUG_EXIT_CODE, INTERRUPTED_EXIT_CODE, ReelsError, ServiceUnavailable

# In the order `reels --help` lists them: the data flow, then operations, then benchmarks.
COMMAND_GROUPS = (settings, data, train, serve, stream, monitor, experiments, retrain, bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``reels`` parser: the global flags and every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="reels",
        description="Reels recommender: data, features, training and serving (see README.md).",
    )
    parser.add_argument("--config", help="YAML config file layered over client/default_config.yaml")
    parser.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "gpu", "auto"], help="compute device (default: config, auto)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def _unreachable(exc: BaseException) -> bool:
    """A connection error raised below a library call that did not wrap it in ``ServiceUnavailable``."""
    if isinstance(exc, ConnectionError):  # refused, reset, aborted
        return True
    redis = sys.modules.get("redis")  # only loaded when a command talked to Redis: never import it here
    return redis is not None and isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def _fail(message: str, code: int) -> int:
    print(f"reels: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one `reels` command with ``argv`` (default: the process's arguments); its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["reels", *argv])  # what records name as the command that ran
    try:
        return args.func(args)
    except ReelsError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT_CODE
    except Exception as exc:  # noqa: BLE001 - the last line of defence: classify, never swallow
        if _unreachable(exc):
            return _fail(f"a service does not answer: {exc}", ServiceUnavailable.exit_code)
        traceback.print_exc()
        return _fail(f"unexpected {type(exc).__name__} (a bug: the traceback is above)", BUG_EXIT_CODE)
