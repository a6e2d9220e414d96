"""Your own interaction logs as a Reels source: read events (and optionally users and videos) from CSV,
Parquet or JSON Lines, local or at any fsspec URL, map their columns onto the Reels schema with a small
YAML mapping, validate everything, then write a fresh offline store in one step.

A mapping file (``workflows/mappings/`` ships worked ones)::

    split:                     # the source's time split (default: 14 validation days, 14 test days)
      valid_days: 14
      test_days: 14
    events:                    # also ``users:`` and ``videos:``, used when that file is given
      read: {format: csv, sep: ","}         # optional; the format defaults to the file's extension
      columns:                 # Reels column: an expression over your columns (a bare name renames)
        user_id: userId
        watch_time_s: play_time_ms / 1000
        liked: rating >= 4
      timestamps:              # how a timestamp column is written: s | ms | us | ns | iso
        timestamp: s
      defaults:                # constants for Reels columns you do not have
        device: web
      fill:                    # the value where a mapped column is empty (null)
        video_duration_s: 0

Expressions are arithmetic, comparisons and ``&``/``|``/``~`` (``and``/``or``/``not``) over your
column names and literals, checked before ``pandas.DataFrame.eval`` runs them: no calls, no attribute
access, no names other than the input's columns. Lossless conversions happen silently (0/1 -> bool,
whole floats -> int, numbers -> string); anything else is reported by the schema checks.

What is left unmapped gets a built-in default (documented in docs/DATA.md): ``event_id`` the row number,
``position`` the event's rank in the user's day, ``device`` ``unknown``, ``creator_id`` and
``video_duration_s`` from the videos file (else 0 and missing), label flags False. Users and videos the
events name but the dimension files lack (or every one, without a file) are derived from the events.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from reels.workflows.errors import AlreadyExists, InvalidInput, NotFound
from reels.workflows.offline_store import OfflineStore
from reels.workflows.schema import EVENTS, LABEL_FLAGS, TABLES, USERS, VIDEOS, Table
from reels.workflows.validate import ValidationError, validate

BUILT_IN_SOURCES = ("synthetic", "movielens")
RESERVED_NAMES = ("compact", "import")  # words `reels data` takes in a source's place
MAPPINGS_DIR = Path(__file__).parent / "mappings"
MAPPING_FILE = "mapping.yaml"  # the mapping used, beside the store: <data.root>/<name>/mapping.yaml
IMPORT_RECORD = "import.json"  # inputs, row counts and split of the last import, beside the store
DEFAULT_SPLIT = (14, 14)  # (valid days, test days): like MovieLens, for logs spanning weeks or months
TIME_UNITS = ("s", "ms", "us", "ns", "iso")
UNKNOWN = "unknown"  # the value of a derived string attribute the input does not have
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}  # fmt: skip
COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")
READ_OPTIONS = ("format", "sep", "encoding", "compression")
TABLE_KEYS = ("read", "columns", "timestamps", "defaults", "fill")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr,
              ast.Invert, ast.Not, ast.USub, ast.UAdd, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE,
              ast.Gt, ast.GtE)  # fmt: skip
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Load, ast.Constant)


# ---- the mapping ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableMapping:
    """How one input file becomes one Reels table (see the module docstring)."""

    columns: dict[str, str] = field(default_factory=dict)
    timestamps: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    fill: dict[str, Any] = field(default_factory=dict)
    read: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mapping:
    """A parsed, checked mapping file; ``text`` is the YAML it came from (recorded beside the store)."""

    events: TableMapping
    users: TableMapping
    videos: TableMapping
    valid_days: int
    test_days: int
    text: str

    @classmethod
    def load(cls, path: str | Path) -> Mapping:
        """Read a mapping file; ``InvalidInput`` names the first thing wrong in it."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NotFound(f"mapping file {path} does not exist") from None
        return cls.parse(text, origin=str(path))

    @classmethod
    def parse(cls, text: str, origin: str = "mapping") -> Mapping:
        """Parse and check mapping YAML: known sections and keys, Reels column names, time units,
        expressions that pass the safety check."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{origin}: not valid YAML: {exc}") from None
        if not isinstance(document, dict) or "events" not in document:
            raise InvalidInput(f"{origin}: expected a mapping with at least an `events:` section")
        _known_keys(document, ("split", "events", "users", "videos"), origin)
        split = document.get("split") or {}
        _known_keys(split, ("valid_days", "test_days"), f"{origin}: split")
        valid_days = split.get("valid_days", DEFAULT_SPLIT[0])
        test_days = split.get("test_days", DEFAULT_SPLIT[1])
        for key, value in (("valid_days", valid_days), ("test_days", test_days)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{origin}: split.{key} must be a whole number >= 1 (got {value!r})")
        tables = {
            name: _table_mapping(document.get(name) or {}, TABLES[name], f"{origin}: {name}")
            for name in ("events", "users", "videos")
        }
        return cls(**tables, valid_days=valid_days, test_days=test_days, text=text)


def _known_keys(section: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(section, dict):
        raise InvalidInput(f"{where}: expected a mapping of keys to values, got {section!r}")
    for key in section:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidInput(f"{where}: unknown key {key!r}{suggestion}; known: {', '.join(allowed)}")


def _table_mapping(section: dict, table: Table, where: str) -> TableMapping:
    _known_keys(section, TABLE_KEYS, where)
    parts = {key: section.get(key) or {} for key in TABLE_KEYS}
    for key in TABLE_KEYS:
        allowed = READ_OPTIONS if key == "read" else tuple(table.names)
        _known_keys(parts[key], allowed, f"{where}.{key}")
    for target, expression in parts["columns"].items():
        if isinstance(expression, bool) or not isinstance(expression, str | int | float):
            raise InvalidInput(f"{where}.columns.{target}: expected an expression, got {expression!r}")
        parts["columns"][target] = str(expression)
        check_expression(str(expression), f"{where}.columns.{target}")
    both = sorted(set(parts["columns"]) & set(parts["defaults"]))
    if both:
        raise InvalidInput(f"{where}: {both} both mapped under `columns` and given `defaults`: keep one")
    for target, unit in parts["timestamps"].items():
        if table.column(target).kind != "timestamp":
            raise InvalidInput(f"{where}.timestamps: {target!r} is not a timestamp column")
        if unit not in TIME_UNITS:
            raise InvalidInput(f"{where}.timestamps.{target}: unit {unit!r}, expected one of {TIME_UNITS}")
    fmt = parts["read"].get("format")
    if fmt is not None and fmt not in set(FORMATS.values()):
        raise InvalidInput(f"{where}.read.format: {fmt!r}, expected csv, parquet or jsonl")
    return TableMapping(**parts)


def check_expression(expression: str, where: str, columns: list[str] | None = None) -> ast.Expression:
    """Parse ``expression`` and allow only arithmetic, comparisons and boolean operators over names and
    literals (and, with ``columns``, only those names); ``InvalidInput`` says what is not allowed."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise InvalidInput(f"{where}: cannot parse expression {expression!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES + _OPERATORS):
            raise InvalidInput(
                f"{where}: {type(node).__name__} is not allowed in expression {expression!r} "
                "(arithmetic, comparisons, &, |, ~, and, or, not over column names and literals only)"
            )
        if isinstance(node, ast.Name) and columns is not None and node.id not in columns:
            hint = difflib.get_close_matches(node.id, columns, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidInput(
                f"{where}: expression {expression!r} names column {node.id!r}, which the input does not "
                f"have{suggestion}; it has {columns}"
            )
    return tree


def shipped_mappings() -> list[str]:
    """Names of the worked mappings shipped with reels (``--mapping NAME`` finds them)."""
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def resolve_mapping(path_or_name: str | Path) -> Path:
    """A mapping file: a path, else the name of a shipped mapping (e.g. ``kuairand``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = MAPPINGS_DIR / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    raise NotFound(
        f"mapping {str(path_or_name)!r}: no such file, and no shipped mapping of that name "
        f"(shipped: {', '.join(shipped_mappings())})"
    )


# ---- source names -----------------------------------------------------------------------------------------
def check_name(name: str, data_root: str | Path) -> Path:
    """The folder of a new imported source ``<data_root>/<name>``; ``InvalidInput`` for a name that is not
    a plain folder name, would leave ``data_root``, or clashes with a built-in source or word."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(
            f"source name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    if name in BUILT_IN_SOURCES or name in RESERVED_NAMES:
        raise InvalidInput(
            f"source name {name!r} is taken by reels (built in: {', '.join(BUILT_IN_SOURCES)})"
        )
    root = Path(data_root).resolve()
    folder = (root / name).resolve()
    if folder.parent != root:  # e.g. a symlink pointing elsewhere
        raise InvalidInput(f"source name {name!r} resolves to {folder}, outside the data root {root}")
    return Path(data_root) / name


def imported_sources(data_root: str | Path) -> list[str]:
    """The sources under ``data_root`` whose offline store holds events, built-in names excluded."""
    root = Path(data_root)
    if not root.is_dir():
        return []
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name not in BUILT_IN_SOURCES and OfflineStore(d / "store").has("events")
    )


def known_source(name: str, data_root: str | Path) -> str:
    """``name`` when it is a built-in source or an imported one under ``data_root``; ``InvalidInput``
    listing the known sources otherwise."""
    if name in BUILT_IN_SOURCES:
        return name
    imported = imported_sources(data_root)
    if name in imported:
        return name
    listed = ", ".join([*BUILT_IN_SOURCES, *imported])
    raise InvalidInput(
        f"unknown source {name!r} (known under {data_root}: {listed}); import your own logs with "
        f"`reels data import {name} --events FILE --mapping MAPPING`"
    )


def recorded_split(source_dir: str | Path) -> tuple[int, int] | None:
    """(valid days, test days) an imported source's mapping chose, from the record beside its store;
    ``None`` for a source that was not imported."""
    record = Path(source_dir) / IMPORT_RECORD
    if not record.is_file():
        return None
    split = json.loads(record.read_text())["split"]
    return int(split["valid_days"]), int(split["test_days"])


# ---- reading and mapping ----------------------------------------------------------------------------------
def read_input(url: str, options: dict[str, Any]) -> pd.DataFrame:
    """One input file as a frame: CSV, Parquet or JSON Lines, local or at an fsspec URL (pandas opens
    those through fsspec); the format comes from ``options["format"]`` or the file's extension."""
    name = url.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    fmt = options.get("format") or FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise InvalidInput(
            f"{url}: cannot tell the format from the extension; set `read: {{format: csv|parquet|jsonl}}`"
        )
    kwargs = {k: v for k, v in options.items() if k != "format"}
    try:
        if fmt == "csv":
            return pd.read_csv(url, **kwargs)
        if fmt == "parquet":
            return pd.read_parquet(url, **kwargs)
        return pd.read_json(url, lines=True, **kwargs)
    except FileNotFoundError:
        raise NotFound(f"{url}: no such file") from None
    except ImportError as exc:  # fsspec needs an extra package for this protocol, e.g. s3fs
        raise InvalidInput(f"{url}: cannot open it: {exc}") from None
    except (ValueError, TypeError, OSError) as exc:  # parser errors, bad options, unreadable files
        raise InvalidInput(f"{url}: cannot read it as {fmt}: {exc}") from None


def evaluate(frame: pd.DataFrame, expression: str, where: str) -> pd.Series:
    """``expression`` (checked by ``check_expression``) over ``frame``'s columns, as a column of it."""
    check_expression(expression, where, [str(c) for c in frame.columns])
    try:
        value = frame.eval(expression, engine="python", local_dict={}, global_dict={})
    except Exception as exc:  # noqa: BLE001 - any evaluation failure is the mapping's fault: say which
        raise InvalidInput(f"{where}: cannot evaluate {expression!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, pd.Series):  # a literal: the same value on every row
        value = pd.Series([value] * len(frame), index=frame.index)
    return value


def _to_timestamps(series: pd.Series, unit: str | None, column: str, problems: list[str]) -> pd.Series:
    """Naive UTC timestamps from datetimes, numbers in ``unit`` or ISO strings; unparsable rows become
    a problem naming the column and their count."""
    if pd.api.types.is_datetime64_any_dtype(series) and unit in (None, "iso"):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric and unit in (None, "iso"):
        problems.append(
            f"column {column!r}: numbers need a unit: add `timestamps: {{{column}: s|ms|us|ns}}` to the mapping"
        )
        return series
    try:
        if unit in (None, "iso"):
            parsed = pd.to_datetime(series, utc=True, errors="coerce").dt.tz_localize(None)
        else:
            parsed = pd.to_datetime(pd.to_numeric(series, errors="coerce"), unit=unit, errors="coerce")
    except (ValueError, TypeError, OverflowError) as exc:
        problems.append(f"column {column!r}: cannot read as timestamps ({unit or 'iso'}): {exc}")
        return series
    bad = int((parsed.isna() & series.notna()).sum())
    if bad:
        problems.append(f"column {column!r}: {bad} row(s) are not timestamps ({unit or 'iso'})")
    return parsed


def _conform(series: pd.Series, kind: str, column: str, problems: list[str]) -> pd.Series:
    """Lossless conversions to the column's kind (0/1 -> bool, whole floats -> int, numbers -> string);
    the rest is left for the schema checks to report."""
    dtype = series.dtype
    if kind == "bool" and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        other = int((series.notna() & ~series.isin([0, 1])).sum())
        if other:
            problems.append(f"column {column!r}: expected bool (or 0/1), {other} row(s) hold other values")
            return series
        return series.astype("boolean") if series.isna().any() else series.astype(bool)
    if kind == "int" and pd.api.types.is_float_dtype(dtype):
        values = series.dropna()
        if (values == np.floor(values)).all() and np.isfinite(values).all():
            return series.astype("Int64")
    if kind == "string" and not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        return series.astype("string")
    return series


def map_table(raw: pd.DataFrame, table: Table, mapping: TableMapping, problems: list[str]) -> pd.DataFrame:
    """The mapped columns of one table (mapped expressions, defaults, fills, timestamps, lossless
    conversions); what the input cannot give is left out for ``complete_*`` to derive. Expression
    errors raise at once; data problems are added to ``problems``."""
    out = pd.DataFrame(index=raw.index)
    for target, expression in mapping.columns.items():
        out[target] = evaluate(raw, expression, f"{table.name}.columns.{target}")
    for target, value in mapping.defaults.items():
        out[target] = pd.Series([value] * len(raw), index=raw.index)
    for target, value in mapping.fill.items():
        if target in out:
            out[target] = out[target].fillna(value)
    for column in table.columns:
        if column.name not in out:
            continue
        if column.kind == "timestamp":
            unit = mapping.timestamps.get(column.name)
            out[column.name] = _to_timestamps(out[column.name], unit, column.name, problems)
        else:
            out[column.name] = _conform(out[column.name], column.kind, column.name, problems)
    return out.reset_index(drop=True)


def _usable(frame: pd.DataFrame, column: str, kind: str) -> bool:
    """True when ``column`` is present, of the kind and null-free: safe to derive other columns from."""
    if column not in frame:
        return False
    series = frame[column]
    ok = {
        "int": pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series),
        "float": pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series),
        "timestamp": pd.api.types.is_datetime64_dtype(series),
    }[kind]
    return ok and not series.isna().any()


def complete_events(events: pd.DataFrame, videos: pd.DataFrame | None) -> pd.DataFrame:
    """Built-in defaults for the event columns the mapping left out (see the module docstring)."""
    events = events.copy()
    if "event_id" not in events:
        events["event_id"] = np.arange(len(events), dtype=np.int64)
    if "device" not in events:
        events["device"] = UNKNOWN
    for flag in LABEL_FLAGS:
        if flag not in events:
            events[flag] = False
    catalog = videos if videos is not None and _usable(videos, "video_id", "int") else None
    if catalog is not None and _usable(events, "video_id", "int"):
        catalog = catalog.drop_duplicates("video_id", keep="last").set_index("video_id")
        if "creator_id" not in events and _usable(catalog.reset_index(), "creator_id", "int"):
            creator = events["video_id"].map(catalog["creator_id"])
            events["creator_id"] = creator.fillna(0).astype(np.int64)  # a video the catalog lacks: 0
        if "video_duration_s" not in events and "duration_s" in catalog:
            events["video_duration_s"] = events["video_id"].map(catalog["duration_s"])
    if "creator_id" not in events:
        events["creator_id"] = np.int64(0)
    if (
        "position" not in events
        and _usable(events, "user_id", "int")
        and _usable(events, "timestamp", "timestamp")
    ):
        # Logs rarely record feed positions: rank the event among the user's events that day.
        order = events.sort_values(["user_id", "timestamp", "event_id"], kind="stable")
        day = order["timestamp"].dt.floor("D")
        events["position"] = order.groupby([order["user_id"], day]).cumcount().astype(np.int64)
    return events


def complete_users(users: pd.DataFrame | None, events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The users table: the mapped file (if any) plus a derived row for every event user it lacks, and
    derived values for columns it lacks; returns it and the number of derived rows."""
    return _complete_dimension(
        users, events, USERS, "user_id", "signup_time",
        {"age_bucket": UNKNOWN, "country": UNKNOWN, "language": UNKNOWN},
    )  # fmt: skip


def complete_videos(videos: pd.DataFrame | None, events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The videos table, like ``complete_users``: creator and duration from the video's events (its most
    frequent creator, its median duration), upload time its first event."""
    return _complete_dimension(
        videos, events, VIDEOS, "video_id", "upload_time",
        {"category": UNKNOWN, "audio_track_id": np.int64(0), "language": UNKNOWN},
    )  # fmt: skip


def _complete_dimension(
    given: pd.DataFrame | None,
    events: pd.DataFrame,
    table: Table,
    key: str,
    first_seen_column: str,
    constants: dict[str, Any],
) -> tuple[pd.DataFrame, int]:
    frame = given.copy() if given is not None else pd.DataFrame({key: pd.Series([], dtype=np.int64)})
    if not _usable(events, key, "int") or key not in frame:
        return frame, 0  # the schema checks will name what is missing
    derived = pd.DataFrame({key: np.setdiff1d(events[key].unique(), frame[key].dropna().unique())})
    frame = pd.concat([frame, derived], ignore_index=True) if len(derived) else frame
    by_key = events.groupby(key)
    if first_seen_column not in frame and _usable(events, "timestamp", "timestamp"):
        first = by_key["timestamp"].min()
        frame[first_seen_column] = frame[key].map(first).fillna(events["timestamp"].min())
    elif first_seen_column in frame and len(derived) and _usable(events, "timestamp", "timestamp"):
        missing = frame[first_seen_column].isna() & frame[key].isin(derived[key])
        frame.loc[missing, first_seen_column] = frame.loc[missing, key].map(by_key["timestamp"].min())
    if table is VIDEOS:
        if _usable(events, "creator_id", "int"):
            pairs = events.groupby([key, "creator_id"]).size().rename("n").reset_index()
            creator = pairs.sort_values("n", kind="stable").drop_duplicates(key, keep="last")
            creator = creator.set_index(key)["creator_id"]  # the video's most frequent creator
            frame = _fill_from(frame, key, "creator_id", creator, np.int64(0), derived)
        if _usable(events, "video_duration_s", "float"):
            frame = _fill_from(frame, key, "duration_s", by_key["video_duration_s"].median(), 0.0, derived)
    for column, value in constants.items():
        frame = _fill_from(frame, key, column, None, value, derived)
    for column in table.columns:  # derived rows appended to a file's rows turn its int columns float
        if column.kind == "int" and column.name in frame:
            frame[column.name] = _conform(frame[column.name], "int", column.name, [])
    return frame, len(derived)


def _fill_from(frame, key, column, per_key: pd.Series | None, default, derived) -> pd.DataFrame:
    """Set ``column`` from ``per_key`` (else ``default``) where the frame lacks it, or on derived rows."""
    values = frame[key].map(per_key).fillna(default) if per_key is not None else default
    if column not in frame:
        frame[column] = values
    elif len(derived):
        rows = frame[key].isin(derived[key]) & frame[column].isna()
        frame.loc[rows, column] = values[rows] if isinstance(values, pd.Series) else values
    return frame


# ---- the import -------------------------------------------------------------------------------------------
class ImportRejected(InvalidInput):
    """The input does not conform to the schema; ``problems`` lists every violation per table. Nothing
    was written."""

    def __init__(self, name: str, problems: dict[str, list[str]]):
        self.problems = problems
        text = "; ".join(f"{table}: " + "; ".join(found) for table, found in problems.items() if found)
        count = sum(len(found) for found in problems.values())
        super().__init__(f"cannot import {name!r}: {count} problem(s), nothing written: {text}")


@dataclass(frozen=True)
class ImportReport:
    """What ``import_logs`` wrote: row counts, how many users/videos were derived from the events, the
    days covered and the wall seconds."""

    events: int
    users: int
    videos: int
    derived_users: int
    derived_videos: int
    days: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        """Events written per wall-clock second (``inf`` when no time was measured)."""
        return self.events / self.seconds if self.seconds else float("inf")


def import_logs(
    source_dir: str | Path,
    mapping: Mapping,
    events: str,
    users: str | None = None,
    videos: str | None = None,
    overwrite: bool = False,
    now: pd.Timestamp | None = None,
) -> ImportReport:
    """Read, map and validate the inputs, then write ``<source_dir>/store`` (all three tables or
    nothing) and record the mapping and inputs beside it. ``ImportRejected`` lists every data problem;
    ``AlreadyExists`` unless ``overwrite`` when the store holds events."""
    started = time.perf_counter()
    folder = Path(source_dir)
    root = folder / "store"
    if OfflineStore(root).has("events") and not overwrite:
        raise AlreadyExists(f"{root} already holds events; pass overwrite=True (--overwrite) to replace it")
    now = pd.Timestamp.utcnow().tz_localize(None) if now is None else now
    problems: dict[str, list[str]] = {"events": [], "users": [], "videos": []}

    raw_events = read_input(events, mapping.events.read)
    mapped_users = (
        map_table(read_input(users, mapping.users.read), USERS, mapping.users, problems["users"])
        if users
        else None
    )
    mapped_videos = (
        map_table(read_input(videos, mapping.videos.read), VIDEOS, mapping.videos, problems["videos"])
        if videos
        else None
    )
    mapped_events = map_table(raw_events, EVENTS, mapping.events, problems["events"])
    del raw_events
    event_frame = complete_events(mapped_events, mapped_videos)
    user_frame, derived_users = complete_users(mapped_users, event_frame)
    video_frame, derived_videos = complete_videos(mapped_videos, event_frame)

    clean: dict[str, pd.DataFrame] = {}
    for table, frame in (("events", event_frame), ("users", user_frame), ("videos", video_frame)):
        try:
            clean[table] = validate(frame, TABLES[table], now=now)
        except ValidationError as exc:
            problems[table].extend(exc.problems)
    if any(problems.values()):
        raise ImportRejected(folder.name, problems)

    _write_store(root, clean, now, overwrite)
    record = {
        "imported": pd.Timestamp.utcnow().isoformat(),
        "inputs": {"events": events, "users": users, "videos": videos},
        "rows": {table: len(frame) for table, frame in clean.items()},
        "derived": {"users": derived_users, "videos": derived_videos},
        "split": {"valid_days": mapping.valid_days, "test_days": mapping.test_days},
    }
    _write_text(folder / MAPPING_FILE, mapping.text)
    _write_text(folder / IMPORT_RECORD, json.dumps(record, indent=2))
    days = clean["events"]["timestamp"].dt.floor("D").nunique()
    return ImportReport(
        len(clean["events"]), len(clean["users"]), len(clean["videos"]), derived_users, derived_videos,
        int(days), time.perf_counter() - started,
    )  # fmt: skip


def _write_store(root: Path, tables: dict[str, pd.DataFrame], now: pd.Timestamp, overwrite: bool) -> None:
    """Write the three tables into a store beside ``root``, then swap it into place with renames, so
    readers find the old store or the new one, never a mix."""
    partial = root.with_name(f"{root.name}.partial-{uuid.uuid4().hex[:12]}")  # private to this import
    try:
        staged = OfflineStore(partial)
        for table in ("users", "videos", "events"):
            staged.append(table, tables[table], now=now)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if root.exists():
        if OfflineStore(root).has("events") and not overwrite:  # filled meanwhile by another writer
            shutil.rmtree(partial, ignore_errors=True)
            raise AlreadyExists(
                f"{root} already holds events; pass overwrite=True (--overwrite) to replace it"
            )
        retired = root.with_name(f"{root.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(root, retired)
        os.replace(partial, root)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(partial, root)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
