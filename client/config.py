"""Configuration: a YAML file (defaults in ``default_config.yaml``) with ``--set section.key=value``
overrides from the command line. Unknown sections or keys and values of the wrong type fail at once,
naming the key and, where one is close, the key that was probably meant.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from reels.deploy.config import Config
from reels.workflows.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).with_name("default_config.yaml")


SECTIONS = {f.name: f for f in fields(Config)}


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def _coerce(value: Any, target: Any, key: str) -> Any:
    kind = type(target)
    if isinstance(value, str) and kind is not str:
        value = yaml.safe_load(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple and isinstance(value, list | tuple):
        inner = type(target[0]) if target else None
        value = tuple(float(v) if inner is float and isinstance(v, int) else v for v in value)
        if inner is not None and not all(isinstance(v, inner) for v in value):
            raise ConfigError(f"{key}: expected a list of {inner.__name__}, got {value!r}")
    if kind is dict and isinstance(value, dict):
        value = {
            k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()
        }
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _apply(config: Config, section: str, key: str, value: Any) -> Config:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}" + _suggest(section, list(SECTIONS)))
    current = getattr(config, section)
    if not hasattr(current, "__dataclass_fields__"):  # a top-level scalar such as `device`
        return replace(config, **{section: _coerce(value, current, section)})
    names = [f.name for f in fields(current)]
    if key not in names:
        raise ConfigError(f"unknown key {section}.{key}" + _suggest(key, names))
    coerced = _coerce(value, getattr(current, key), f"{section}.{key}")
    try:
        updated = replace(current, **{key: coerced})
    except ValueError as exc:  # the section's own checks (__post_init__)
        raise ConfigError(str(exc)) from exc
    return replace(config, **{section: updated})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` like ``features.history_length=10``."""
    config = Config()
    for source in [DEFAULT_CONFIG, *([Path(path)] if path else [])]:
        if not source.exists():
            raise ConfigError(f"config file {source} does not exist")
        document = yaml.safe_load(source.read_text()) or {}
        if not isinstance(document, dict):
            raise ConfigError(f"{source}: expected a mapping of sections")
        for section, body in document.items():
            if isinstance(body, dict):
                for key, value in body.items():
                    config = _apply(config, section, key, value)
            else:
                config = _apply(config, section, "", body)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        section, _, key = dotted.partition(".")
        config = _apply(config, section, key, value)
    if config.data.source not in ("synthetic", "movielens") and not re.fullmatch(
        r"[A-Za-z0-9_-]+", config.data.source
    ):
        raise ConfigError(
            f"data.source must be synthetic, movielens or an imported source's name (got {config.data.source!r})"
        )
    if config.device not in ("cpu", "gpu", "auto"):
        raise ConfigError(f"device must be cpu, gpu or auto (got {config.device!r})")
    return config


def section_overrides(config: Config, section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (e.g. one candidate read from a YAML file) as typed overrides of ``section``: each key
    checked and coerced exactly as a config file's would be (YAML lists become tuples); ``ConfigError``
    naming an unknown key or a bad value."""
    for key, value in values.items():
        config = _apply(config, section, key, value)
    current = getattr(config, section)
    return {key: getattr(current, key) for key in values}


def as_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain YAML-able sections (what `reels config` prints)."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        value = getattr(config, name)
        out[name] = (
            {f.name: getattr(value, f.name) for f in fields(value)}
            if hasattr(value, "__dataclass_fields__")
            else value
        )
    return out
