"""`reels config`: print the effective configuration (defaults, --config, --set, --device) as YAML."""

from __future__ import annotations

import argparse

from reels.client.cli.common import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``config`` command."""
    p = subparsers.add_parser("config", help="print the effective configuration")
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the configuration as YAML."""
    import yaml

    from reels.client.config import as_dict

    print(yaml.safe_dump(as_dict(load_config(args)), sort_keys=False), end="")
    return 0
