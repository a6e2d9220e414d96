"""The offline store: append-only, validated parquet with atomic multi-file commits on local disk, readable
through any fsspec URL.

Layout under ``root``::

    events/day=YYYY-MM-DD/part-<seq>-<token>.parquet   one folder per UTC day (hive partitioning)
    hides/day=YYYY-MM-DD/part-<seq>-<token>.parquet    hide-creator choices, by day like events
    users/part-<seq>-<token>.parquet                    dimension tables: later parts win per key
    videos/part-<seq>-<token>.parquet
    _manifest.json                                      the committed parts: what readers read
    _lock                                               writers hold an ``flock`` on it to commit
    _intent.json                                        parts being moved in or out (crash recovery)
    _staging/<name>/, _staging/<name>.lock              a writer's files before they move into place
    ground_truth.npz                                    synthetic data only: the latent world

An append validates the whole batch, writes and fsyncs its files under ``_staging/`` (writers run in
parallel there), then, holding the store lock, allocates the table's next sequence number, records the
paths in ``_intent.json``, renames the files into place, fsyncs their folders and commits by replacing
``_manifest.json`` (written to a temporary file, fsynced, renamed, folder fsynced). Readers see exactly
the parts the manifest lists, so a batch spanning two days becomes visible all at once or not at all; a
writer killed before the commit leaves parts no reader sees, and the next writer (under the lock) deletes
them (the intent names them) along with any staging folder whose owner's lock is gone. Parts are never
rewritten; ``compact`` merges a folder's parts into one and swaps them in the same commit.

A store written before the manifest existed (parts only) is read by listing its folders; the first
write under the lock adopts those parts into a manifest before moving anything into place.

Where it lives: writes (``append``, ``compact``) need a local POSIX filesystem, because a commit relies on
``flock``, ``fsync`` and atomic ``rename``; one writer machine owns the store. Reads work on a path or an fsspec
URL: ``file:///shared/reels/store`` on a filesystem every Dask worker mounts at the same path, or an object
store copy (``s3://``, ``gs://``, with ``s3fs`` / ``gcsfs`` installed): the manifest, the part list, the parts'
footers and the parts themselves are all read through the URL's fsspec filesystem, and ``urls`` hands Dask
workers absolute URLs, so a worker in another working directory or on another machine reads the same parts.

Fault hook: ``REELS_FAULT`` (comma-separated points) makes ``fault_point`` SIGKILL the process there, so
tests can kill a writer inside a crash window; ``offline:before_commit`` is after the rename, before
the manifest commit. Unset in production, the check is one dict lookup.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import fsspec.core
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from reels.workflows.errors import InvalidInput, NotFound
from reels.workflows.schema import EVENTS, TABLES, Table
from reels.workflows.validate import validate

if TYPE_CHECKING:
    import dask.dataframe as dd

MANIFEST = "_manifest.json"
INTENT = "_intent.json"
TOKEN = re.compile(r"[0-9a-z]{1,32}")


def fault_point(name: str) -> None:
    """SIGKILL this process when ``name`` is listed in ``$REELS_FAULT`` (a test hook that simulates a
    crash at a precise point, e.g. ``offline:before_commit`` or ``ingest:after_apply``)."""
    if name in os.environ.get("REELS_FAULT", "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class TimeSplit:
    """Half-open windows: train = [start, valid_start), valid = [valid_start, test_start), test = [test_start, end)."""

    start: pd.Timestamp
    valid_start: pd.Timestamp
    test_start: pd.Timestamp
    end: pd.Timestamp

    def window(self, name: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The half-open ``(start, end)`` of window ``train``, ``valid`` or ``test``; KeyError on another name."""
        return {
            "train": (self.start, self.valid_start),
            "valid": (self.valid_start, self.test_start),
            "test": (self.test_start, self.end),
        }[name]

    def as_dict(self) -> dict[str, str]:
        """The four boundaries as ``str(Timestamp)`` values, keyed by field name (for manifests and JSON)."""
        return {k: str(getattr(self, k)) for k in ("start", "valid_start", "test_start", "end")}


@dataclass
class Compaction:
    """What ``OfflineStore.compact`` did: part files per table before and after, and the rows it dropped
    because a day held the same key twice (an event written again by a re-delivery)."""

    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0


def _seq(path: str | Path) -> int:
    """The sequence number in ``part-<seq>-<token>.parquet``."""
    return int(Path(path).name.split("-")[1])


def _token(path: str | Path) -> str:
    """The batch token in ``part-<seq>-<token>.parquet``."""
    return Path(path).stem.split("-", 2)[2]


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (a folder: so a rename or a new name in it survives
    a power cut)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(path: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of each folder it creates (a new folder is a new name)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        _fsync(folder.parent)


def _write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably: temporary file, fsync, rename, fsync folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


class OfflineStore:
    """The append-only parquet event and dimension store under ``root`` (layout in the module docstring).

    ``root``: a local folder (a ``Path``, or a string without ``://``), or an fsspec URL. A ``file://`` URL is
    a local folder in every respect (``root`` is then its ``Path``); any other protocol opens the store
    read-only (``root`` is a ``PurePosixPath`` inside that filesystem, writes raise ``InvalidInput``)."""

    def __init__(self, root: str | os.PathLike):
        text = os.fspath(root)
        if "://" in text:
            try:
                self.fs, path = fsspec.core.url_to_fs(text)
            except (ImportError, ValueError) as exc:  # no such protocol, or its package is not installed
                raise InvalidInput(f"offline store {text}: {exc}") from None
        else:
            self.fs, path = LocalFileSystem(), text
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root: Path | PurePosixPath = Path(path) if self.local else PurePosixPath(path)

    @property
    def url(self) -> str:
        """The store's absolute URL (``file:///...`` for a local folder): what to hand to other processes."""
        return self._url(self.root)

    def _url(self, path: Path | PurePosixPath) -> str:
        return self.fs.unstrip_protocol(os.path.abspath(path) if self.local else str(path))

    def urls(self, files: Iterable[Path | PurePosixPath]) -> list[str]:
        """Absolute URLs of ``files`` (from ``files``): readable by Dask workers wherever they run, given
        the same mount (``file://``) or the same credentials (object stores)."""
        return [self._url(f) for f in files]

    def part_rows(self, table: str) -> list[int]:
        """Row counts of the table's committed parts, in ``files`` order, from the parquet footers only."""
        import pyarrow.parquet as pq  # imported on use, like dask below

        counts = []
        for f in self.files(table):
            with self.fs.open(str(f), "rb") as handle:
                counts.append(pq.ParquetFile(handle).metadata.num_rows)
        return counts

    def _read_parquet(self, path: Path | PurePosixPath, columns: list[str] | None = None) -> pd.DataFrame:
        with self.fs.open(str(path), "rb") as handle:
            return pd.read_parquet(handle, columns=columns)

    def _require_local(self) -> None:
        if not self.local:
            raise InvalidInput(
                f"offline store {self.url} is read-only here: writes commit with flock, fsync and rename, "
                "which need a local POSIX filesystem (write on the machine that owns the store)"
            )

    # ---- writing ----------------------------------------------------------------------------------------
    def append(
        self,
        table: str | Table,
        frame: pd.DataFrame,
        now: pd.Timestamp | None = None,
        token: str | None = None,
    ) -> list[Path]:
        """Validate ``frame`` against the table schema and append it as one commit (all of its day files
        or none); returns the files written. ``token`` names the batch in its file names (lower-case
        letters and digits; default random), so a caller can later ask ``committed`` whether it landed."""
        self._require_local()
        spec = TABLES[table] if isinstance(table, str) else table
        token = token or uuid.uuid4().hex[:12]
        if not TOKEN.fullmatch(token):
            raise InvalidInput(f"batch token {token!r}: expected 1-32 lower-case letters or digits")
        clean = validate(frame, spec, now=now)
        if clean.empty:
            return []
        with self._staging() as staging:
            staged: list[tuple[Path, str]] = []  # (staged file, folder under the table: "" or "day=...")
            if spec.partition_time:
                day = clean[spec.partition_time].dt.strftime("%Y-%m-%d")
                for value, part in clean.groupby(day, sort=True):
                    staged.append((self._stage(part, staging, f"day={value}"), f"day={value}"))
            else:
                staged.append((self._stage(clean, staging, ""), ""))
            with self._lock():
                manifest = self._prepare()
                seq = 1 + max((_seq(p) for p in manifest["tables"].get(spec.name, [])), default=-1)
                moves = [
                    (path, str(Path(spec.name, folder, f"part-{seq:06d}-{token}.parquet")))
                    for path, folder in staged
                ]
                self._commit(manifest, spec.name, moves, retire=[])
        return [self.root / rel for _, rel in moves]

    def _stage(self, part: pd.DataFrame, staging: Path, folder: str) -> Path:
        """Write one part into the staging folder and fsync it."""
        path = staging / folder / "part.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        part.reset_index(drop=True).to_parquet(path, index=False, engine="pyarrow")
        _fsync(path)
        return path

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        """A private staging folder, ``flock``-ed through its ``.lock`` file while in use, so a writer
        that finds the lock free knows the owner is dead and may delete the folder."""
        area = self.root / "_staging"
        area.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        lock = area / f"{name}.lock"
        with open(lock, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            folder = area / name
            folder.mkdir()
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                lock.unlink(missing_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """The store's writer lock (``flock`` on ``_lock``; the kernel releases it when a writer dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "_lock", "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            yield

    def _prepare(self) -> dict:
        """Under the lock: the manifest (adopting a pre-manifest store's parts), after removing what a
        crashed writer left behind — parts its intent names that the manifest does not, and staging
        folders nobody holds."""
        path = self.root / MANIFEST
        if path.exists():
            manifest = json.loads(path.read_text())
        else:
            manifest = {"format": 1, "tables": self._listed()}
            _write_durably(path, json.dumps(manifest))
        intent = self.root / INTENT
        if intent.exists():
            listed = {p for paths in manifest["tables"].values() for p in paths}
            for rel in json.loads(intent.read_text()):
                if rel not in listed:
                    (self.root / rel).unlink(missing_ok=True)
            intent.unlink()
        for lock in (self.root / "_staging").glob("*.lock"):
            with open(lock, "a") as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer is staging there
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink(missing_ok=True)
        return manifest

    def _commit(self, manifest: dict, table: str, moves: list[tuple[Path, str]], retire: list[str]) -> None:
        """Under the lock: move staged files into place and commit them to the manifest in one atomic
        replace, dropping ``retire`` from it (then deleting those files)."""
        _write_durably(self.root / INTENT, json.dumps([rel for _, rel in moves] + retire))
        for staged, rel in moves:
            final = self.root / rel
            _mkdirs(final.parent)
            os.replace(staged, final)
        for folder in {(self.root / rel).parent for _, rel in moves}:
            _fsync(folder)
        fault_point("offline:before_commit")
        gone = set(retire)
        parts = [p for p in manifest["tables"].get(table, []) if p not in gone]
        manifest["tables"][table] = parts + [rel for _, rel in moves]
        _write_durably(self.root / MANIFEST, json.dumps(manifest))
        for rel in retire:
            (self.root / rel).unlink(missing_ok=True)
        (self.root / INTENT).unlink()

    def compact(self, tables: Iterable[str] | None = None) -> Compaction:
        """Merge each day folder's parts (and each dimension table's parts) into one part, so reads stop
        paying for many small files. Reads give the same rows before and after: a dimension table keeps
        its latest row per key, a day keeps its rows in part order (dropping a key it holds twice, i.e.
        an event written again by a re-delivery, counted in ``duplicates_dropped``). Each merge commits
        atomically; a merge whose parts changed meanwhile (another compaction) is skipped. The merged part
        takes the highest sequence number it replaces, so parts appended meanwhile still win.

        A lazy ``read_events`` frame opened before a compaction fails loudly (missing file) if computed
        after it: compact when no feature build is reading the store."""
        self._require_local()
        report = Compaction()
        with self._lock():
            snapshot = self._prepare()["tables"]
        for table in tables or TABLES:
            spec = TABLES[table]
            parts = snapshot.get(table, [])
            report.files_before[table] = len(parts)
            groups: dict[str, list[str]] = {}
            for rel in parts:
                groups.setdefault(str(Path(rel).parent), []).append(rel)
            merges = {folder: sorted(group, key=_seq) for folder, group in groups.items() if len(group) > 1}
            for group in merges.values():
                with self._staging() as staging:
                    frame = pd.concat([pd.read_parquet(self.root / rel) for rel in group], ignore_index=True)
                    if spec.partition_time:  # event-like: a key seen twice in a day is a re-written event
                        merged = frame.drop_duplicates(spec.key, keep="first")
                        report.duplicates_dropped += len(frame) - len(merged)
                    else:  # dimension: the latest row per key, where read_table would find it
                        merged = frame.drop_duplicates(spec.key, keep="last")
                    path = self._stage(merged, staging, "")
                    last = Path(group[-1])
                    rel = str(last.parent / f"part-{_seq(last):06d}-{uuid.uuid4().hex[:12]}.parquet")
                    with self._lock():
                        manifest = self._prepare()
                        if set(group) <= set(manifest["tables"].get(table, [])):
                            self._commit(manifest, table, [(path, rel)], retire=group)
            report.files_after[table] = len(self.files(table))
        return report

    # ---- reading ----------------------------------------------------------------------------------------
    def _listed(self) -> dict[str, list[str]]:
        """Every table's part files found on disk (a store written before the manifest existed)."""
        if self.local:
            return {
                table: sorted(
                    str(p.relative_to(self.root)) for p in (self.root / table).rglob("part-*.parquet")
                )
                for table in TABLES
                if (self.root / table).is_dir()
            }
        base = str(self.root).rstrip("/")
        return {
            table: sorted(f[len(base) + 1 :] for f in found if PurePosixPath(f).name.startswith("part-"))
            for table in TABLES
            if (found := self.fs.find(f"{base}/{table}", withdirs=False))
        }

    def _parts(self) -> dict[str, list[str]]:
        """The committed parts per table (paths relative to ``root``), from one read of the manifest."""
        path = self.root / MANIFEST
        try:
            text = self.fs.cat_file(str(path))
        except FileNotFoundError:
            return self._listed()
        return json.loads(text)["tables"]

    def files(self, table: str) -> list[Path]:
        """The table's committed part files, sorted by day folder and then by sequence; may be empty
        (``PurePosixPath``s inside ``fs`` for a store opened by a non-local URL)."""
        paths = [self.root / rel for rel in self._parts().get(table, [])]
        return sorted(paths, key=lambda p: (p.parent.name, _seq(p)))

    def has(self, table: str) -> bool:
        """True when the table has at least one committed part file."""
        return bool(self.files(table))

    def committed(self, table: str, tokens: Iterable[str]) -> set[str]:
        """Which of the batch ``tokens`` (see ``append``) have committed parts in ``table`` (a compacted
        batch's token is gone: ask ``existing_keys`` then)."""
        present = {_token(p) for p in self._parts().get(table, [])}
        return present & set(tokens)

    def existing_keys(self, table: str, frame: pd.DataFrame) -> set:
        """The key values of ``frame`` the table already holds; reads only the key column, and for a
        day-partitioned table only the days ``frame`` falls in."""
        spec = TABLES[table]
        files = self.files(table)
        if spec.partition_time:
            days = {f"day={d}" for d in pd.to_datetime(frame[spec.partition_time]).dt.strftime("%Y-%m-%d")}
            files = [f for f in files if f.parent.name in days]
        wanted, found = set(frame[spec.key].tolist()), set()
        for f in files:
            found |= wanted.intersection(self._read_parquet(f, columns=[spec.key])[spec.key].tolist())
        return found

    def read_table(self, table: str) -> pd.DataFrame:
        """A table's rows in part order, the latest part winning for each key (users, videos, hides)."""
        spec = TABLES[table]
        files = self.files(table)
        if not files:
            raise NotFound(f"offline store {self.root} has no {table} table")
        frame = pd.concat([self._read_parquet(p) for p in files], ignore_index=True)
        return frame.drop_duplicates(spec.key, keep="last").reset_index(drop=True)

    def read_events(
        self,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        columns: list[str] | None = None,
    ) -> dd.DataFrame:
        """Events in ``[start, end)`` as a lazy dask frame, one partition per day file; its tasks read the
        parts by absolute URL (``urls``), so they run on any worker that can reach the store."""
        files = self.files(EVENTS.name)
        if not files:
            raise NotFound(f"offline store {self.root} has no events")
        if start is not None or end is not None:
            lo = pd.Timestamp.min if start is None else start.normalize()
            hi = pd.Timestamp.max if end is None else end
            files = [f for f in files if lo <= pd.Timestamp(f.parent.name.split("=")[1]) < hi]
        cols = columns or EVENTS.names
        read_cols = sorted(set(cols) | {"timestamp"}, key=EVENTS.names.index)
        import dask.dataframe as dd  # imported on use: the CLI's light commands never pay for dask

        # split_row_groups=False: one partition per file even for a large compacted day (callers index
        # partitions by file).
        ddf = dd.read_parquet(
            self.urls(files), columns=read_cols, engine="pyarrow", index=False, split_row_groups=False
        )
        if start is not None:
            ddf = ddf[ddf["timestamp"] >= start]
        if end is not None:
            ddf = ddf[ddf["timestamp"] < end]
        return ddf[cols]

    def days(self) -> list[pd.Timestamp]:
        """The UTC days (midnight timestamps) that hold events, ascending; empty for an empty store."""
        return sorted({pd.Timestamp(f.parent.name.split("=")[1]) for f in self.files(EVENTS.name)})

    def time_split(self, valid_days: int = 1, test_days: int = 1) -> TimeSplit:
        """Split by whole days at the end of the store: the last ``test_days`` are test, the
        ``valid_days`` before them validation, everything earlier training."""
        days = self.days()
        if len(days) < valid_days + test_days + 1:
            raise InvalidInput(
                f"need at least {valid_days + test_days + 1} days of events for a "
                f"{valid_days}+{test_days} day valid/test split, the store has {len(days)}"
            )
        one = pd.Timedelta(days=1)
        return TimeSplit(
            start=days[0],
            valid_start=days[-(valid_days + test_days)],
            test_start=days[-test_days],
            end=days[-1] + one,
        )

    def time_split_by_events(self, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> TimeSplit:
        """Split by event quantiles, keeping whole days: the last days holding at least ``test_fraction``
        of all events are test, the days before them up to at least ``valid_fraction + test_fraction``
        validation (one day at least), everything earlier training. For logs whose activity thins out at the end, where a fixed number
        of days can leave a test window of a few dozen users."""
        if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
            raise InvalidInput(
                f"valid_fraction and test_fraction must be in (0, 1) and sum below 1, got "
                f"{valid_fraction} and {test_fraction}"
            )
        per_day: dict[pd.Timestamp, int] = {}
        for f, rows in zip(self.files(EVENTS.name), self.part_rows(EVENTS.name), strict=True):
            day = pd.Timestamp(f.parent.name.split("=")[1])
            per_day[day] = per_day.get(day, 0) + rows
        days = sorted(per_day)
        total = sum(per_day.values())
        boundaries, taken, i = [], 0, len(days)
        for fraction in (test_fraction, test_fraction + valid_fraction):
            start = i
            while i > 0 and (i == start or taken < fraction * total):  # at least one day per window
                i -= 1
                taken += per_day[days[i]]
            boundaries.append(i)
        test_at, valid_at = boundaries
        if valid_at < 1 or valid_at == test_at:
            raise InvalidInput(
                f"the store's {len(days)} days cannot hold a training window, a validation window of "
                f"{valid_fraction:.0%} and a test window of {test_fraction:.0%} of its {total:,} events in whole days"
            )
        return TimeSplit(
            start=days[0],
            valid_start=days[valid_at],
            test_start=days[test_at],
            end=days[-1] + pd.Timedelta(days=1),
        )

    def split(
        self, valid_days: int = 1, test_days: int = 1, event_fractions: tuple[float, float] | None = None
    ) -> TimeSplit:
        """The store's split as a feature build makes it: by ``event_fractions`` ((validation, test) shares
        of the events, whole days; ``time_split_by_events``) when given, else by days (``time_split``)."""
        if event_fractions is None:
            return self.time_split(valid_days=valid_days, test_days=test_days)
        return self.time_split_by_events(*event_fractions)

    def fingerprint(self) -> str:
        """A content hash over committed file names and sizes: changes whenever data is appended."""
        digest = hashlib.sha256()
        for table in TABLES:
            for f in self.files(table):
                digest.update(f"{f.relative_to(self.root)}:{self.fs.size(str(f))}".encode())
        return digest.hexdigest()[:16]
