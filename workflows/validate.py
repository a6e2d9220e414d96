"""Ingest validation: a frame either conforms to its table schema or is rejected whole.

Every problem found is reported at once (column, what is wrong, how many rows), so a producer can fix
a batch in one round trip. Nothing is coerced silently except lossless dtype widening
(int32 -> int64, float64 -> float32 for float columns, category -> string).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reels.workflows.errors import InvalidInput
from reels.workflows.schema import Column, Table


class ValidationError(InvalidInput):
    """A batch does not conform to its table schema; ``problems`` lists every violation."""

    def __init__(self, table: str, problems: list[str]):
        self.table = table
        self.problems = problems
        super().__init__(f"{table}: {len(problems)} problem(s): " + "; ".join(problems))


def _kind_ok(series: pd.Series, column: Column) -> bool:
    dtype = series.dtype
    if column.kind == "int":
        return pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if column.kind == "float":
        return pd.api.types.is_float_dtype(dtype) or (
            pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        )
    if column.kind == "bool":
        return pd.api.types.is_bool_dtype(dtype)
    if column.kind == "string":
        return (
            pd.api.types.is_string_dtype(dtype)
            or isinstance(dtype, pd.CategoricalDtype)
            or pd.api.types.is_object_dtype(dtype)
        )
    if column.kind == "timestamp":
        return pd.api.types.is_datetime64_dtype(dtype)
    raise AssertionError(column.kind)


_CANONICAL = {"int": "int64", "float": "float32", "bool": "bool", "timestamp": "datetime64[ns]"}


def validate(frame: pd.DataFrame, table: Table, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Check ``frame`` against ``table`` and return it with canonical dtypes and column order.

    Raises ``ValidationError`` naming every offending column and the number of rows involved:
    missing or extra columns, wrong dtypes, nulls, values below a column's minimum, timestamps after
    ``now`` (default: the current UTC time) and duplicate keys.
    """
    now = pd.Timestamp.utcnow().tz_localize(None) if now is None else now
    problems: list[str] = []
    present = set(frame.columns)
    missing = [c for c in table.names if c not in present]
    extra = sorted(present - set(table.names))
    if missing:
        problems.append(f"missing column(s) {missing}")
    if extra:
        problems.append(f"unexpected column(s) {extra}")

    for column in table.columns:
        if column.name not in present:
            continue
        series = frame[column.name]
        if not _kind_ok(series, column):
            problems.append(f"column {column.name!r}: expected {column.kind}, got dtype {series.dtype}")
            continue
        nulls = int(series.isna().sum())
        if nulls:
            problems.append(f"column {column.name!r}: {nulls} row(s) are null")
        if column.min_value is not None:
            below = int((series < column.min_value).sum())
            if below:
                problems.append(f"column {column.name!r}: {below} row(s) below {column.min_value}")
        if column.not_future:
            future = int((series > now).sum())
            if future:
                problems.append(f"column {column.name!r}: {future} row(s) lie in the future (after {now})")
        if column.name == table.key:
            duplicated = int(series.duplicated(keep=False).sum())
            if duplicated:
                problems.append(f"column {column.name!r}: {duplicated} row(s) share a duplicate key")

    if problems:
        raise ValidationError(table.name, problems)

    out = frame[table.names].copy()
    for column in table.columns:
        if column.kind == "string":
            out[column.name] = out[column.name].astype(str)
        else:
            out[column.name] = out[column.name].astype(_CANONICAL[column.kind])
    return out.reset_index(drop=True)


def empty_frame(table: Table) -> pd.DataFrame:
    """A zero-row frame with the table's canonical dtypes."""
    return pd.DataFrame(
        {
            c.name: pd.Series([], dtype=object if c.kind == "string" else np.dtype(_CANONICAL[c.kind]))
            for c in table.columns
        }
    )
