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
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from reels.feature_store.breaker import CircuitBreaker
from reels.feature_store.layout import DEFAULT_PREFIX, Keys
from reels.feature_store.settings import StreamSettings
from reels.workflows.errors import ConfigError

log = logging.getLogger(__name__)

GROUP = "ingest"
HIDE_CREATOR = "hide_creator"  # stream field of a hide-creator message (interaction events use "event")


def hide_id(entry_id: bytes | str, shard: int, shards: int) -> str:
    """The key of a hide-creator message in the offline store's ``hides`` table: its stream entry id
    (``1767225600000-0``), prefixed with its shard when there are several (``3:1767225600000-0``: entry ids
    are unique within one stream only)."""
    entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return entry if shards == 1 else f"{shard}:{entry}"


def _event_json(event: dict) -> str:
    return json.dumps(
        {k: (str(v) if isinstance(v, pd.Timestamp) else v) for k, v in event.items()}, default=str
    )


class EventProducer:
    """What a client (or the simulator) uses to send interaction events.

    With ``shards`` > 1 (``stream.shards``) each event goes to the stream of its user's shard
    (``user_id % shards``), so one user's events stay in order on one stream; an event without a usable
    ``user_id`` goes to shard 0, where the ingest workers dead-letter it as they do any malformed event.
    The first send checks the shard count the ingest workers recorded (``Keys.event_shards``) and raises
    ``ConfigError`` when it differs: events sent there would wait on streams no worker reads."""

    def __init__(
        self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, maxlen: int | None = None, shards: int = 1
    ):
        """``maxlen``: trim the stream on every send (None, the default: the ingest workers trim only
        what every group acknowledged, so an event not applied yet is never dropped)."""
        self.client = client
        self.keys = Keys(prefix)
        self.layout = StreamSettings(shards)
        self.streams = [self.keys.event_stream(i, shards) for i in range(shards)]
        self.maxlen = maxlen
        self._checked = False

    @property
    def stream(self) -> str:
        """The event stream, when there is one shard (else ``stream_of``)."""
        if len(self.streams) > 1:
            raise ValueError(
                f"the events are spread over {len(self.streams)} streams: use stream_of(user_id)"
            )
        return self.streams[0]

    def stream_of(self, user_id: int) -> str:
        """The stream a user's events and hide-creator messages go to."""
        return self.streams[self.layout.shard_of(user_id)]

    def send(self, events: list[dict]) -> list[bytes]:
        """XADD each raw event (``schema.EVENTS`` fields; timestamps sent as strings) as JSON in field
        ``event`` to its user's shard, in one pipeline; returns the stream entry ids in input order (ids
        are ordered within a shard, not across shards)."""
        self._check_shards()
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                self._stream_of_event(event), {"event": _event_json(event)}, maxlen=self.maxlen,
                approximate=bool(self.maxlen),
            )  # fmt: skip
        return pipe.execute()

    def hide_creator(self, user_id: int, creator_id: int) -> bytes:
        """ "Don't show me this creator": not an impression, so not an event; a message of its own on the
        user's stream, applied as a SADD (idempotent, so re-delivery is harmless) and, by a worker with an
        offline store, appended once to its ``hides`` table keyed by ``hide_id`` of the returned stream
        entry id (the entry id itself with one shard)."""
        self._check_shards()
        body = json.dumps({"user_id": int(user_id), "creator_id": int(creator_id), "timestamp": time.time()})
        return self.client.xadd(
            self.stream_of(user_id), {HIDE_CREATOR: body}, maxlen=self.maxlen, approximate=bool(self.maxlen)
        )

    def _stream_of_event(self, event: dict) -> str:
        if len(self.streams) == 1:
            return self.streams[0]
        try:
            return self.stream_of(int(event["user_id"]))
        except (KeyError, TypeError, ValueError, OverflowError):
            return self.streams[0]  # malformed: the worker of shard 0 dead-letters it with the reason

    def _check_shards(self) -> None:
        """Once per producer: refuse to send when the workers read another number of shards."""
        if self._checked:
            return
        recorded = self.client.get(self.keys.event_shards)
        if recorded is not None and int(recorded) != len(self.streams):
            raise ConfigError(
                f"this producer spreads events over {len(self.streams)} stream shard(s) but the ingest "
                f"workers read {int(recorded)}: set stream.shards to {int(recorded)}"
            )
        self._checked = True


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
        except (redis.RedisError, RedisClusterException, OSError) as exc:  # the latter: no node reachable
            self.failed += 1
            self.breaker.trip(exc)
            log.warning("exposure log: %d entries lost so far (%s)", self.failed, exc)
            return False
        self.written += 1
        return True


def _without_retries(client: redis.Redis) -> redis.Redis:
    """A client to the same server (or the same Sentinel-tracked primary) whose commands fail at once
    instead of retrying with backoff (a Redis Cluster client is used as it is: serving builds it without
    retries, ``RedisSettings.client``)."""
    if isinstance(client, redis.RedisCluster):
        return client
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):  # the same primary, found through the same Sentinels
        return pool.sentinel_manager.master_for(pool.service_name, retry=Retry(NoBackoff(), 0))
    kwargs = dict(pool.connection_kwargs, retry=Retry(NoBackoff(), 0))
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def read_exposures(client: redis.Redis, prefix: str = DEFAULT_PREFIX, chunk: int = 5_000) -> pd.DataFrame:
    """The exposure stream as one row per served item (request_id, user_id, request time, variant,
    position, video_id, propensity, explored, greedy, pool, fallback)."""
    return explode_exposures(read_stream_json(client, Keys(prefix).exposures, "exposure", chunk))


def recorded_shards(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> int:
    """The event stream's shard count as the ingest workers recorded it (1 when none did)."""
    recorded = client.get(Keys(prefix).event_shards)
    return int(recorded) if recorded is not None else 1


def read_event_streams(client: redis.Redis, prefix: str = DEFAULT_PREFIX, chunk: int = 5_000) -> list[dict]:
    """Every interaction event still on the event stream, every shard of it (as many as the workers
    recorded), each shard oldest first, shard after shard; hide-creator messages left out."""
    keys = Keys(prefix)
    shards = recorded_shards(client, prefix)
    rows: list[dict] = []
    for shard in range(shards):
        rows.extend(read_stream_json(client, keys.event_stream(shard, shards), "event", chunk))
    return rows


def read_stream_json(client: redis.Redis, stream: str, field: str, chunk: int = 5_000) -> list[dict]:
    """Every entry of ``stream`` (oldest first) that has ``field``, that field's JSON decoded, read
    ``chunk`` at a time (entries without it, e.g. hide-creator messages on the event stream, are skipped)."""
    last, rows = "-", []
    while True:
        entries = client.xrange(stream, min=last, max="+", count=chunk)
        if last != "-":
            entries = entries[1:]  # XRANGE's min is inclusive
        if not entries:
            return rows
        rows.extend(
            json.loads(fields_[field.encode()]) for _, fields_ in entries if field.encode() in fields_
        )
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
