"""Redis Streams of the online store: the event stream clients write to (``EventProducer``), the exposure
log every served feed is written to (``ExposureLog``), and readers of both. The consumer-group worker
that applies events to the online features is ``reels.feature_store.ingest``.

Delivery is at-least-once; see ``reels.feature_store.ingest`` for how updates stay idempotent.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from reels.feature_store.breaker import CircuitBreaker
from reels.feature_store.layout import DEFAULT_PREFIX, Keys

log = logging.getLogger(__name__)

GROUP = "ingest"
HIDE_CREATOR = "hide_creator"  # stream field of a hide-creator message (interaction events use "event")


def _event_json(event: dict) -> str:
    return json.dumps(
        {k: (str(v) if isinstance(v, pd.Timestamp) else v) for k, v in event.items()}, default=str
    )


class EventProducer:
    """What a client (or the simulator) uses to send interaction events."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, maxlen: int | None = None):
        """``maxlen``: trim the stream on every send (None, the default: the ingest workers trim only
        what every group acknowledged, so an event not applied yet is never dropped)."""
        self.client = client
        self.stream = Keys(prefix).events
        self.maxlen = maxlen

    def send(self, events: list[dict]) -> list[bytes]:
        """XADD each raw event (``schema.EVENTS`` fields; timestamps sent as strings) as JSON in field
        ``event``, in one pipeline; returns the stream entry ids in input order."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                self.stream, {"event": _event_json(event)}, maxlen=self.maxlen, approximate=bool(self.maxlen)
            )
        return pipe.execute()

    def hide_creator(self, user_id: int, creator_id: int) -> bytes:
        """ "Don't show me this creator": not an impression, so not an event; a message of its own on the
        same stream, applied as a SADD (idempotent, so re-delivery is harmless) and, by a worker with an
        offline store, appended once to its ``hides`` table keyed by the returned stream entry id."""
        body = json.dumps({"user_id": int(user_id), "creator_id": int(creator_id), "timestamp": time.time()})
        return self.client.xadd(
            self.stream, {HIDE_CREATOR: body}, maxlen=self.maxlen, approximate=bool(self.maxlen)
        )


@dataclass
class Exposure:
    """One served feed, as logged (raw user and video ids): position i of every list is feed position i."""

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
        """The JSON stream entry: every field plus ``positions`` (0..len(video_ids)-1)."""
        return json.dumps(self.__dict__ | {"positions": list(range(len(self.video_ids)))})


class ExposureLog:
    """XADDs one entry per served feed to ``{prefix}:exposures`` (field ``exposure`` = JSON), trimmed
    approximately to ``maxlen``. Logging never fails a request and never holds it up: the log's client
    does not retry (redis-py's default retries cost ~4 s per call when Redis is down), and after a
    failure a ``CircuitBreaker`` drops entries at once until a background PING answers again. Lost
    entries are counted and logged."""

    def __init__(
        self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, maxlen: int = 1_000_000, pause_s: float = 0.5
    ):
        self.client = _without_retries(client)
        self.stream = Keys(prefix).exposures
        self.maxlen = maxlen
        self.breaker = CircuitBreaker(self.client.ping, probe_every_s=pause_s, name="exposure log")
        self.written = 0
        self.failed = 0

    def write(self, exposure: Exposure) -> bool:
        """Append one feed to the log; False (never an exception) when the entry was dropped."""
        if self.breaker.is_open:
            self.failed += 1
            return False
        try:
            self.client.xadd(
                self.stream, {"exposure": exposure.to_json()}, maxlen=self.maxlen, approximate=True
            )
        except (redis.RedisError, OSError) as exc:
            self.failed += 1
            self.breaker.trip(exc)
            log.warning("exposure log: %d entries lost so far (%s)", self.failed, exc)
            return False
        self.written += 1
        return True


def _without_retries(client: redis.Redis) -> redis.Redis:
    """A client to the same server whose commands fail at once instead of retrying with backoff (a
    Redis Cluster client is used as it is: serving builds it without retries, ``RedisSettings.client``)."""
    if isinstance(client, redis.RedisCluster):
        return client
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs, retry=Retry(NoBackoff(), 0))
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def read_exposures(client: redis.Redis, prefix: str = DEFAULT_PREFIX, chunk: int = 5_000) -> pd.DataFrame:
    """The exposure stream as one row per served item (request_id, user_id, request time, variant,
    position, video_id, propensity, explored, greedy, pool, fallback)."""
    return explode_exposures(read_stream_json(client, Keys(prefix).exposures, "exposure", chunk))


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
    """Decoded exposure entries as one typed row per served item (the columns of ``read_exposures``);
    entries with an empty feed contribute no rows."""
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
