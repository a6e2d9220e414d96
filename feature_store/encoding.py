"""Request-time feature encoding with the fitted workflow's own vocabularies and statistics.

User and video features arrive already transformed from Redis; only the request context (device, hour,
day of week) and freshness (video age at request time) are encoded per request. They are encoded with
vectorised lookups into the *fitted* workflow's Categorify vocabularies and Normalize statistics — the same
numbers the offline transform used (a parity test checks it) — never with a per-request
``workflow.transform`` (tens of milliseconds on CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import nvtabular as nvt
import pandas as pd
from nvtabular import ops

from reels.workflows.errors import NotFound
from reels.workflows.spec import FIRST_ID, NULL, OOV, REQUEST_CONTEXT


class Vocabulary:
    """One Categorify vocabulary: raw value -> id, unknown -> OOV, null -> NULL."""

    def __init__(self, workflow_dir: Path, column: str):
        path = Path(workflow_dir) / "categories" / f"unique.{column}.parquet"
        if not path.exists():
            raise NotFound(f"no vocabulary for {column!r} in {workflow_dir} (expected {path.name})")
        values = pd.read_parquet(path)[column]
        self.column = column
        self.index = pd.Index(values)
        self._ids = {v: i + FIRST_ID for i, v in enumerate(self.index.tolist())}  # per-request lookups

    def __len__(self) -> int:
        return len(self.index) + FIRST_ID

    def encode(self, values) -> np.ndarray:
        """The int64 Categorify ids of a 1-d sequence of raw values (``FIRST_ID + row``, ``OOV`` if unknown,
        ``NULL`` for None/NaN), flattened to one id per value."""
        values = np.asarray(values, dtype=object if isinstance(values, list) else None).reshape(-1)
        if len(values) <= 64:  # a request's few values: dict lookups beat building a pandas index
            out = np.empty(len(values), dtype=np.int64)
            for i, v in enumerate(values):
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    out[i] = NULL
                else:
                    out[i] = self._ids.get(v.item() if hasattr(v, "item") else v, OOV)
            return out
        series = pd.Series(values)
        positions = self.index.get_indexer(series.astype(self.index.dtype, errors="ignore"))
        ids = np.where(positions >= 0, positions + FIRST_ID, OOV).astype(np.int64)
        ids[series.isna().to_numpy()] = NULL
        return ids


def normalize_stats(workflow: nvt.Workflow, column: str) -> tuple[float, float]:
    """The fitted (mean, std) of a Normalize op over ``column``, searched through every subgraph."""
    seen: set[int] = set()
    stack = [workflow.output_node]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.op, ops.Normalize) and column in (node.op.means or {}):
            return float(node.op.means[column]), float(node.op.stds[column])
        if hasattr(node.op, "graph"):  # Subgraph
            stack.append(node.op.graph.output_node)
        stack.extend(node.parents_with_dependencies)
    raise NotFound(f"the workflow has no fitted Normalize over {column!r}")


class RequestEncoder:
    """Encodes request context and freshness exactly as the fitted workflow does."""

    def __init__(self, workflow_dir: str | Path):
        workflow_dir = Path(workflow_dir)
        self.vocabularies = {c: Vocabulary(workflow_dir, c) for c in REQUEST_CONTEXT}
        self.age_mean, self.age_std = normalize_stats(nvt.Workflow.load(str(workflow_dir)), "video_age")

    def context(self, device, request_time_s) -> dict[str, np.ndarray]:
        """The int64 ``device``, ``hour`` and ``day_of_week`` ids, one per request, for device strings
        (None = unknown) and request times in UTC unix seconds (equal lengths)."""
        seconds = np.asarray(request_time_s, dtype=np.int64).reshape(-1)
        hour = (seconds // 3600) % 24
        day_of_week = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0 as in pandas
        return {
            "device": self.vocabularies["device"].encode(list(device)),
            "hour": self.vocabularies["hour"].encode(hour),
            "day_of_week": self.vocabularies["day_of_week"].encode(day_of_week),
        }

    def video_age(self, request_time_s, upload_time_s) -> np.ndarray:
        """Encoded ``video_age`` (float32): hours since upload at request time (both unix seconds, clipped at 0),
        log1p'd and standardised with the fitted stats, as the workflow's LogOp >> Normalize does."""
        hours = np.clip(
            (np.asarray(request_time_s, np.float64) - np.asarray(upload_time_s, np.float64)) / 3600.0, 0, None
        )
        logged = np.log(hours.astype(np.float32) + 1)
        std = self.age_std if self.age_std > 0 else 1.0
        return ((logged - self.age_mean) / std).astype(np.float32)
