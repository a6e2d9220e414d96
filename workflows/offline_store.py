"""The offline store: append-only, validated parquet on local disk.

Layout under ``root``::

    events/day=YYYY-MM-DD/part-<seq>-<token>.parquet   one folder per UTC day (hive partitioning)
    users/part-<seq>-<token>.parquet                    dimension tables: later parts win per key
    videos/part-<seq>-<token>.parquet
    ground_truth.npz                                    synthetic data only: the latent world

An append validates the whole batch first and writes every file into ``_staging/`` before moving them
into place, so a rejected or failed batch leaves nothing behind. Parts are never rewritten.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from reels.workflows.errors import InvalidInput, NotFound
from reels.workflows.schema import EVENTS, TABLES, Table
from reels.workflows.validate import validate

if TYPE_CHECKING:
    import dask.dataframe as dd


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


class OfflineStore:
    """The append-only parquet event and dimension store under ``root`` (layout in the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ---- writing ----------------------------------------------------------------------------------------
    def append(self, table: str | Table, frame: pd.DataFrame, now: pd.Timestamp | None = None) -> list[Path]:
        """Validate ``frame`` against the table schema and append it; returns the files written."""
        spec = TABLES[table] if isinstance(table, str) else table
        clean = validate(frame, spec, now=now)
        if clean.empty:
            return []
        seq = self._next_sequence(spec)
        token = uuid.uuid4().hex[:8]
        staging = self.root / "_staging" / token
        staging.mkdir(parents=True, exist_ok=True)
        planned: list[tuple[Path, Path]] = []
        try:
            if spec.partition_time:
                day = clean[spec.partition_time].dt.strftime("%Y-%m-%d")
                for value, part in clean.groupby(day, sort=True):
                    name = f"day={value}/part-{seq:06d}-{token}.parquet"
                    planned.append(self._stage(part, staging, name, spec))
            else:
                planned.append(self._stage(clean, staging, f"part-{seq:06d}-{token}.parquet", spec))
            for staged, final in planned:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [final for _, final in planned]

    def _stage(self, part: pd.DataFrame, staging: Path, name: str, spec: Table) -> tuple[Path, Path]:
        staged = staging / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        part.reset_index(drop=True).to_parquet(staged, index=False, engine="pyarrow")
        return staged, self.root / spec.name / name

    def _next_sequence(self, spec: Table) -> int:
        existing = list((self.root / spec.name).rglob("part-*.parquet"))
        return 1 + max((int(p.name.split("-")[1]) for p in existing), default=-1)

    # ---- reading ----------------------------------------------------------------------------------------
    def files(self, table: str) -> list[Path]:
        """The table's part files, sorted by day folder and then by part name (sequence order); may be empty."""
        return sorted((self.root / table).rglob("part-*.parquet"), key=lambda p: (p.parent.name, p.name))

    def has(self, table: str) -> bool:
        """True when the table has at least one part file."""
        return bool(self.files(table))

    def read_table(self, table: str) -> pd.DataFrame:
        """A dimension table (users or videos), the latest part winning for each key."""
        spec = TABLES[table]
        files = self.files(table)
        if not files:
            raise NotFound(f"offline store {self.root} has no {table} table")
        parts = sorted(files, key=lambda p: p.name)  # sequence order
        frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        return frame.drop_duplicates(spec.key, keep="last").reset_index(drop=True)

    def read_events(
        self,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        columns: list[str] | None = None,
    ) -> dd.DataFrame:
        """Events in ``[start, end)`` as a lazy dask frame, one partition per day file."""
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

        ddf = dd.read_parquet([str(f) for f in files], columns=read_cols, engine="pyarrow", index=False)
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

    def fingerprint(self) -> str:
        """A content hash over file names and sizes: changes whenever data is appended."""
        digest = hashlib.sha256()
        for table in TABLES:
            for f in self.files(table):
                digest.update(f"{f.relative_to(self.root)}:{f.stat().st_size}".encode())
        return digest.hexdigest()[:16]
