"""A/B experiments on the re-rank: deterministic user bucketing, per-variant serving settings, the
seeded exploration policy's randomness, and the exposure log every served feed is written to.

Bucketing: ``u = blake2b(f"{salt}:{user_id}") / 2**64`` (uniform in [0, 1), identical in every process
and on every machine, unlike Python's salted ``hash()``), then the first variant whose cumulative
normalised weight exceeds ``u``. Changing the salt reshuffles users independently of earlier experiments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from reels.models.serving.pipeline import ServingConfig

log = logging.getLogger(__name__)

# Settings a variant may change: the re-rank's only. Retrieval and ranking are shared by all variants, so
# candidates / max_k / trending stay global, and so does fresh_hours (retrieval builds the fresh pool).
VARIANT_SETTINGS = (
    "mmr_lambda", "max_per_creator", "max_per_category", "exploration_slots", "exploration_epsilon",
)  # fmt: skip
DEFAULT_VARIANT = "default"  # the variant name when no experiment runs
EXPOSURES = "exposures"  # stream {prefix}:exposures


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from ``parts``, stable across processes, runs and machines."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def seed_of(*parts: object) -> int:
    """A 64-bit seed for ``np.random.default_rng`` from ``parts`` (same stability as ``unit_hash``)."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _default_variants() -> dict[str, dict[str, Any]]:
    return {"control": {"weight": 0.5}, "diverse": {"weight": 0.5, "mmr_lambda": 0.5}}


@dataclass(frozen=True)
class Experiment:
    """``variants``: name -> ``{"weight": w, <ServingConfig re-rank setting>: value, ...}``, in order; the
    first is the control the report compares the others with. One variant = no experiment."""

    name: str = "rerank-diversity"
    salt: str = "2026-11"
    variants: dict = field(default_factory=_default_variants)

    def __post_init__(self) -> None:
        from reels.models.serving.pipeline import ServingConfig  # serving imports this module

        if not self.variants:
            raise ValueError("experiment.variants: at least one variant is needed")
        base = ServingConfig()
        for variant, settings in self.variants.items():
            if not isinstance(settings, dict):
                raise ValueError(f"experiment.variants.{variant}: expected a mapping, got {settings!r}")
            weight = settings.get("weight", 1.0)
            if not isinstance(weight, int | float) or weight <= 0:
                raise ValueError(f"experiment.variants.{variant}.weight must be > 0, got {weight!r}")
            unknown = set(settings) - {"weight", *VARIANT_SETTINGS}
            if unknown:
                raise ValueError(
                    f"experiment.variants.{variant}: unknown settings {sorted(unknown)} "
                    f"(a variant may set weight and {', '.join(VARIANT_SETTINGS)})"
                )
            self.serving_config(variant, base)  # type-checks the values now, not at the first request

    @property
    def names(self) -> list[str]:
        return list(self.variants)

    @property
    def weights(self) -> np.ndarray:
        w = np.array([float(s.get("weight", 1.0)) for s in self.variants.values()])
        return w / w.sum()

    def assign(self, user_id: int) -> str:
        u = unit_hash(self.salt, int(user_id))
        i = int(np.searchsorted(np.cumsum(self.weights), u, side="right"))
        return self.names[min(i, len(self.names) - 1)]  # min: guards float rounding of the last sum

    def serving_config(self, variant: str, base: ServingConfig) -> ServingConfig:
        overrides = {k: v for k, v in self.variants[variant].items() if k != "weight"}
        for key, value in overrides.items():
            expected = type(getattr(base, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                overrides[key] = float(value)
            elif not isinstance(value, expected) or isinstance(value, bool):
                raise ValueError(
                    f"experiment.variants.{variant}.{key}: expected {expected.__name__}, got {value!r}"
                )
        return replace(base, **overrides)  # ServingConfig checks the values

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> Experiment | None:
        return None if spec is None else cls(**spec)


# ---- exposure log -----------------------------------------------------------------------------------------
@dataclass
class Exposure:
    """One served feed, as logged: position i of every list is the item at feed position i."""

    user_id: int
    request_time_s: int
    experiment: str
    variant: str
    fallback: int
    video_ids: list[int]
    propensities: list[float]  # P(policy puts this video in this slot | request, earlier slots)
    explored: list[bool]  # the exploration coin said "explore" for this slot
    greedy: list[bool]  # the video is what the greedy (epsilon = 0) policy would have put here
    pool: list[int]  # exploration slot: fresh candidates it chose among; 0 = a ranked slot
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> str:
        return json.dumps(self.__dict__ | {"positions": list(range(len(self.video_ids)))})


class ExposureLog:
    """XADDs one entry per served feed to ``{prefix}:exposures`` (field ``exposure`` = JSON), trimmed
    approximately to ``maxlen``. Logging never fails a request and never holds it up: the log's client
    does not retry (redis-py's default retries cost ~4 s per call when Redis is down), and after a
    failure entries are dropped without trying for ``pause_s``. Lost entries are counted and logged."""

    def __init__(
        self, client: redis.Redis, prefix: str = "reels", maxlen: int = 1_000_000, pause_s: float = 1.0
    ):
        self.client = _without_retries(client)
        self.stream = f"{prefix}:{EXPOSURES}"
        self.maxlen = maxlen
        self.pause_s = pause_s
        self.written = 0
        self.failed = 0
        self._paused_until = 0.0

    def write(self, exposure: Exposure) -> bool:
        if time.monotonic() < self._paused_until:
            self.failed += 1
            return False
        try:
            self.client.xadd(
                self.stream, {"exposure": exposure.to_json()}, maxlen=self.maxlen, approximate=True
            )
        except (redis.RedisError, OSError) as exc:
            self.failed += 1
            self._paused_until = time.monotonic() + self.pause_s
            log.warning("exposure log: %d entries lost so far (%s)", self.failed, exc)
            return False
        self.written += 1
        return True


def _without_retries(client: redis.Redis) -> redis.Redis:
    """A client to the same server whose commands fail at once instead of retrying with backoff."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs, retry=Retry(NoBackoff(), 0))
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def read_exposures(client: redis.Redis, prefix: str = "reels", chunk: int = 5_000) -> pd.DataFrame:
    """The exposure stream as one row per served item (request_id, user_id, request time, variant,
    position, video_id, propensity, explored, greedy, pool, fallback)."""
    return explode_exposures(read_stream_json(client, f"{prefix}:{EXPOSURES}", "exposure", chunk))


def read_stream_json(client: redis.Redis, stream: str, field: str, chunk: int = 5_000) -> list[dict]:
    """Every entry of ``stream`` (oldest first), its JSON ``field`` decoded, read ``chunk`` at a time."""
    last, rows = "-", []
    while True:
        entries = client.xrange(stream, min=last, max="+", count=chunk)
        if last != "-":
            entries = entries[1:]  # XRANGE's min is inclusive
        if not entries:
            return rows
        rows.extend(json.loads(fields_[field.encode()]) for _, fields_ in entries)
        last = entries[-1][0].decode()


def explode_exposures(entries: list[dict]) -> pd.DataFrame:
    columns = ["video_ids", "positions", "propensities", "explored", "greedy", "pool"]
    frame = pd.DataFrame(entries, columns=[
        "request_id", "user_id", "request_time_s", "experiment", "variant", "fallback", *columns
    ])  # fmt: skip
    frame = frame.explode(columns, ignore_index=True).dropna(subset=["video_ids"])
    frame = frame.rename(
        columns={"video_ids": "video_id", "positions": "position", "propensities": "propensity"}
    )
    types = {"user_id": "int64", "request_time_s": "int64", "fallback": "int64", "video_id": "int64",
             "position": "int64", "propensity": "float64", "explored": "bool", "greedy": "bool",
             "pool": "int64"}  # fmt: skip
    return frame.astype(types).reset_index(drop=True)
