"""`reels config`: print the effective configuration (defaults, --config, --set, --device) as YAML, then
the Redis connection actually used (``$REELS_REDIS_URL`` included) as a comment, its password redacted."""

from __future__ import annotations

import argparse

from reels.client.cli.common import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``config`` command."""
    p = subparsers.add_parser("config", help="print the effective configuration")
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the configuration as YAML, and the effective Redis connection as a trailing comment."""
    import yaml

    from reels.client.config import as_dict

    config = load_config(args)
    redis = config.server.redis.describe()  # first: a bad $REELS_REDIS_URL fails before any output
    print(yaml.safe_dump(as_dict(config), sort_keys=False), end="")
    # A comment, so the output still loads as a config file; describe() never shows a password.
    print(f"# redis in use: {redis}")
    return 0
