"""Interaction events in real time: clients append to a Redis Stream (or to one of its shards);
``IngestWorker``s in one consumer group per shard validate them, dead-letter the malformed ones, and apply
the rest to the online features.

Keys (``<p>`` = prefix, ``<ns>`` = the active namespace at apply time; braces are Redis Cluster hash tags,
see ``reels.feature_store.layout``)::

    <p>:events                          STREAM  one entry per event, field ``event`` = the event as JSON
    <p>:events:dead                     STREAM  malformed events: ``event``, ``reason``, ``source_id``
    <p>:events:{s<i>}                   STREAM  with ``stream.shards`` N > 1: shard i (users with
    <p>:events:dead:{s<i>}              STREAM  ``user_id % N == i``) and its dead letters
    <p>:events:shards                   STRING  N, as the workers read it
    <p>:applied:{u:<user>}:<event>      STRING  dedupe markers (TTL ``dedupe_ttl_s``), one per part of
    <p>:applied:{v:<video>}:<event>             an event, each in the slot of the keys its part updates
    <p>:applied:{trending}:<event>
    <p>:<ns>:counters:{v:<video>}       HASH    events / views / likes / completions / hides since the load
    <p>:trending:{trending}             ZSET    views per raw video id (streamed trending scores)

Shards: each shard is a stream with its own consumer group ``ingest``; a worker owns a list of shards
(all by default) and reads, claims, acknowledges, dead-letters and trims each on its own (a command's
keys must share a hash slot on Redis Cluster, and each shard has a slot of its own). A user's events all
go to one shard, so they are applied in the order they were sent; everything below holds per shard.

Delivery is at-least-once (a message is acknowledged only after it was applied; a worker that dies
leaves its messages pending, and ``claim_idle_ms`` later another worker of its shard claims them). Updates are
idempotent: an event is applied in parts (its user's seen list and history; its video's counters; a
view's trending score), each part by a Lua script call that sets the part's dedupe marker and applies
its updates atomically, so a re-delivered event skips the parts already applied and no part is ever
half-applied. On one redis-server a batch is one script call, so a whole event is applied at once. On
Redis Cluster the parts live in different hash slots, so a batch is one script call per slot (sent
per node, one round trip per node): an event can be seen partly applied for the moment between them,
and a worker that dies in between leaves the rest to the re-delivery.

With an offline store, applied events and hide-creator choices are appended there too, written once
across crashes: before a write the worker marks each row in Redis (``{p}:offline:{event_id}``,
``{p}:offline:hide:{entry_id}``) with the write's batch token, then commits the batch under that token.
A re-delivered row whose marker names a committed batch is skipped; one whose batch never committed (the
writer died first) is written again, after checking the rows of its days for the key in case the batch
was committed and then compacted. Left: a worker stalled for longer than ``claim_idle_ms`` whose batch
another worker re-wrote can still commit its copy; ``OfflineStore.compact`` drops such repeats.

Crash windows, for tests: ``REELS_FAULT=ingest:after_apply`` (Redis updated, nothing written offline),
``ingest:after_offline`` (offline committed) or ``ingest:before_ack`` SIGKILLs the worker there
(``reels.workflows.offline_store.fault_point``). When Redis goes away, ``run`` logs it and retries with
exponential backoff (``reconnect_max_s``) instead of exiting; unacknowledged messages stay pending and
are re-read once Redis is back.

Metrics: a worker reports to an ``IngestReporter`` (a no-op unless given one); ``IngestMetrics`` is the
Prometheus one that ``reels ingest --metrics-port`` serves (``reels_ingest_*``: messages by outcome,
offline batches, Redis outages and reconnects, and the stream's length, lag and pending entries, read
with ``XINFO GROUPS`` at most every ``stream_every_s``: summed over the worker's shards, and per shard).

Per event: the raw video id is appended to the user's seen list (so it — and a "not interested" hide —
is excluded from the very next request), a viewed video's encoded id is pushed to the front of the
history inside the user's packed record, and the video's counters and (views) trending score are
incremented.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from redis.crc import key_slot
from redis.exceptions import NoScriptError, TryAgainError

from reels.feature_store.encoding import Vocabulary
from reels.feature_store.layout import user_record
from reels.feature_store.settings import StreamSettings
from reels.feature_store.store import UNAVAILABLE, FeatureStoreUnavailable, OnlineStore
from reels.feature_store.streams import GROUP, HIDE_CREATOR, hide_id
from reels.workflows.errors import ConfigError, InvalidInput
from reels.workflows.offline_store import OfflineStore, fault_point
from reels.workflows.schema import EVENTS, HIDES, TABLES
from reels.workflows.spec import HISTORY, MAX_RAW_ID
from reels.workflows.validate import validate

log = logging.getLogger(__name__)

# An event is applied by the APPLY script as one part or, on Redis Cluster, as up to three, each in the hash
# slot of the keys it updates (a Lua script's keys must share one slot there). The user part (``USER_PART``:
# keys = its dedupe marker, the seen list, the user record, all tagged ``{u:<user>}``) appends the raw video
# id to the seen list (trimmed back to the newest entries once it doubles) and, for a view, pushes the
# video's encoded id to the front of the history inside the user record; the video part (``VIDEO_PART``:
# marker, counters, tagged ``{v:<video>}``) bumps the video's counters; a view's trending part
# (``TRENDING_PART``: marker, the trending ZSET, tagged ``{trending}``) bumps its trending score. On one
# redis-server the three go together as one ``EVENT_PART`` (keys: the user part's marker, seen list, user
# record, counters; the trending ZSET is the call's last key, once for all): one marker per event, the
# whole event atomic. One script call applies a
# list of parts whose keys are all in KEYS, part after part; ARGV = ttl, history offset, history bytes,
# seen-list bytes and the packed parts (PART_RECORD each). Per part: set its dedupe marker or skip it; a
# part whose updates fail is unmarked and reported by its error message (the rest go on). Ids must stay
# below 2^53 (Lua numbers are doubles).
APPLY = """
local ttl, offset, length, cap, blob = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out = {}
local function apply_user(seen_key, user_key, base, viewed)
  local seen_length = redis.call('APPEND', seen_key, string.sub(blob, base, base + 7))
  if seen_length > 2 * cap then  -- trim rarely: keep the newest cap bytes
    redis.call('SET', seen_key, redis.call('GETRANGE', seen_key, seen_length - cap, -1))
  end
  if viewed == 1 then
    local user = redis.call('GET', user_key)
    if user then
      local history = string.sub(user, offset + 1, offset + length)
      redis.call('SETRANGE', user_key, offset, string.sub(blob, base + 8, base + 15) .. string.sub(history, 1, length - 8))
    end
  end
end
local function apply_video(counters, viewed, liked, completed, hidden)
  redis.call('HINCRBY', counters, 'events', 1)
  if viewed == 1 then redis.call('HINCRBY', counters, 'views', 1) end
  if liked == 1 then redis.call('HINCRBY', counters, 'likes', 1) end
  if completed == 1 then redis.call('HINCRBY', counters, 'completions', 1) end
  if hidden == 1 then redis.call('HINCRBY', counters, 'hides', 1) end
end
local function apply_trending(trending, base)
  local video_id = struct.unpack('<i8', blob, base)
  redis.call('ZINCRBY', trending, 1, string.format('%.0f', video_id))
end
local function apply_event(k, base, viewed, liked, completed, hidden)
  apply_user(KEYS[k + 1], KEYS[k + 2], base, viewed)
  apply_video(KEYS[k + 3], viewed, liked, completed, hidden)
  if viewed == 1 then apply_trending(KEYS[#KEYS], base) end
end
local k = 1
for i = 0, #blob / 21 - 1 do
  local base = i * 21 + 1
  local part, viewed, liked, completed, hidden = string.byte(blob, base + 16, base + 20)
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    local ok, err
    if part == 0 then
      ok, err = pcall(apply_event, k, base, viewed, liked, completed, hidden)
    elseif part == 1 then
      ok, err = pcall(apply_user, KEYS[k + 1], KEYS[k + 2], base, viewed)
    elseif part == 2 then
      ok, err = pcall(apply_video, KEYS[k + 1], viewed, liked, completed, hidden)
    else
      ok, err = pcall(apply_trending, KEYS[k + 1], base)
    end
    if ok then
      out[i + 1] = 1
    else  -- e.g. a key of the wrong type: unmark the part so a retry applies it, and go on with the rest
      redis.call('DEL', KEYS[k])
      out[i + 1] = tostring(type(err) == 'table' and err.err or err)
    end
  else
    out[i + 1] = 0
  end
  k = k + (part == 0 and 4 or part == 1 and 3 or 2)
end
return out
"""
EVENT_PART, USER_PART, VIDEO_PART, TRENDING_PART = 0, 1, 2, 3
PART_RECORD = np.dtype(
    [("video_id", "<i8"), ("video_code", "<i8"), ("part", "u1"), ("viewed", "u1"), ("liked", "u1"),
     ("completed", "u1"), ("hidden", "u1")]
)  # fmt: skip


@dataclass
class IngestStats:
    """Message counts of one ``step`` or ``run``: read, applied, duplicates skipped, dead-lettered, claimed
    from dead consumers, and each dead letter's reason."""

    read: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    failed_applies: int = 0  # messages whose apply failed (retried, or dead-lettered after max_deliveries)
    reasons: list[str] = field(default_factory=list)


class IngestReporter:
    """Where a worker reports what it did; this base ignores everything (a worker without metrics)."""

    enabled = False  # False: the worker does not read the stream's state just to report it

    def counted(self, stats: IngestStats) -> None:
        """The counts of one ``step``."""

    def offline_batch(self, table: str, rows: int) -> None:
        """One batch of ``rows`` rows committed to the offline store's ``table``."""

    def redis_unavailable(self) -> None:
        """One try failed because Redis was away (the worker waits, then tries again)."""

    def redis_back(self) -> None:
        """Redis answered again after failed tries."""

    def stream_state(self, length: int, dead_letters: int, groups: list[dict]) -> None:
        """The event stream's length, the dead-letter stream's, and ``XINFO GROUPS`` of the stream (summed
        over the worker's shards: per group, ``pending`` and ``lag`` added up, ``lag`` None when a shard
        cannot tell)."""

    def shard_state(self, shard: int, length: int, dead_letters: int, groups: list[dict]) -> None:
        """The same for one shard of the event stream."""


class IngestMetrics(IngestReporter):
    """The Prometheus metrics of one worker process (``reels_ingest_*``, in a registry of their own with
    the process collector); ``serve`` exposes them over HTTP at ``/metrics``."""

    enabled = True

    def __init__(self):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            ProcessCollector,
            disable_created_metrics,
        )

        disable_created_metrics()  # no ``*_created`` twin per counter series (process-wide setting)
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.messages = Counter(
            "reels_ingest_messages", "Stream messages handled, by outcome: read (all, claimed ones "
            "included), applied (events and hide-creator choices), duplicate (applied before), "
            "dead_lettered, failed_apply (left pending for a retry, or dead-lettered after max_deliveries), "
            "claimed (from a dead consumer)", ["outcome"], registry=registry,
        )  # fmt: skip
        for outcome in ("read", "applied", "duplicate", "dead_lettered", "failed_apply", "claimed"):
            self.messages.labels(outcome)
        self.offline_batches = Counter(
            "reels_ingest_offline_batches", "Batches committed to the offline store, by table",
            ["table"], registry=registry,
        )  # fmt: skip
        self.offline_rows = Counter(
            "reels_ingest_offline_rows", "Rows committed to the offline store, by table", ["table"],
            registry=registry,
        )  # fmt: skip
        for table in (EVENTS.name, HIDES.name):
            self.offline_batches.labels(table)
            self.offline_rows.labels(table)
        self.unavailable = Counter(
            "reels_ingest_redis_unavailable", "Tries that failed because Redis was away", registry=registry
        )
        self.reconnects = Counter(
            "reels_ingest_redis_reconnects",
            "Times Redis answered again after failed tries",
            registry=registry,
        )
        self.up = Gauge(
            "reels_ingest_redis_up", "1 while the last try reached Redis, else 0", registry=registry
        )
        self.length = Gauge("reels_ingest_stream_length", "Entries in the event stream", registry=registry)
        self.dead_letters = Gauge(
            "reels_ingest_dead_letter_length", "Entries in the dead-letter stream", registry=registry
        )
        self.lag = Gauge(
            "reels_ingest_stream_lag", "Stream entries not yet delivered to the consumer group (XINFO "
            "GROUPS lag; NaN when Redis cannot tell)", ["group"], registry=registry,
        )  # fmt: skip
        self.pending = Gauge(
            "reels_ingest_stream_pending", "Entries delivered to the group's consumers and not yet "
            "acknowledged", ["group"], registry=registry,
        )  # fmt: skip
        self.shard_length = Gauge(
            "reels_ingest_shard_length", "Entries in one shard of the event stream", ["shard"],
            registry=registry,
        )  # fmt: skip
        self.shard_dead_letters = Gauge(
            "reels_ingest_shard_dead_letter_length", "Entries in one shard's dead-letter stream", ["shard"],
            registry=registry,
        )  # fmt: skip
        self.shard_lag = Gauge(
            "reels_ingest_shard_lag", "Entries of one shard not yet delivered to its consumer group (NaN "
            "when Redis cannot tell)", ["shard", "group"], registry=registry,
        )  # fmt: skip
        self.shard_pending = Gauge(
            "reels_ingest_shard_pending", "Entries of one shard delivered to the group's consumers and not "
            "yet acknowledged", ["shard", "group"], registry=registry,
        )  # fmt: skip
        self.server = None

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread (port 0: any free one); the port."""
        from prometheus_client import start_http_server

        self.server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def counted(self, stats: IngestStats) -> None:
        """Add one ``step``'s counts."""
        self.up.set(1)
        for outcome, n in (("read", stats.read), ("applied", stats.applied), ("duplicate", stats.duplicates),
                           ("dead_lettered", stats.dead_lettered), ("failed_apply", stats.failed_applies),
                           ("claimed", stats.claimed)):  # fmt: skip
            if n:
                self.messages.labels(outcome).inc(n)

    def offline_batch(self, table: str, rows: int) -> None:
        """Count one committed offline batch."""
        self.offline_batches.labels(table).inc()
        self.offline_rows.labels(table).inc(rows)

    def redis_unavailable(self) -> None:
        """Count a failed try; Redis is down."""
        self.unavailable.inc()
        self.up.set(0)

    def redis_back(self) -> None:
        """Count a reconnect; Redis is up."""
        self.reconnects.inc()
        self.up.set(1)

    def stream_state(self, length: int, dead_letters: int, groups: list[dict]) -> None:
        """Set the stream gauges."""
        self.up.set(1)
        self.length.set(length)
        self.dead_letters.set(dead_letters)
        for group in groups:
            name = _text(group["name"])
            lag = group.get("lag")
            self.lag.labels(name).set(math.nan if lag is None else int(lag))
            self.pending.labels(name).set(int(group["pending"]))

    def shard_state(self, shard: int, length: int, dead_letters: int, groups: list[dict]) -> None:
        """Set one shard's gauges."""
        label = str(shard)
        self.shard_length.labels(label).set(length)
        self.shard_dead_letters.labels(label).set(dead_letters)
        for group in groups:
            lag = group.get("lag")
            self.shard_lag.labels(label, _text(group["name"])).set(math.nan if lag is None else int(lag))
            self.shard_pending.labels(label, _text(group["name"])).set(int(group["pending"]))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class StreamShard:
    """One shard of the event stream, as a worker reads it: its number, its stream, its dead letters."""

    index: int
    stream: str
    dead: str


NO_REPORTS = IngestReporter()


class IngestWorker:
    """One consumer of group ``ingest`` on the event stream's shards it owns: validates, dead-letters,
    applies events to the active namespace with the ``APPLY`` script and optionally appends them to the
    offline store."""

    trim_every_s = 5.0  # how often ``run`` trims acknowledged entries
    keep_s = 86_400.0  # acknowledged entries younger than this stay (live A/B reports read them)
    reconnect_min_s = 0.1  # first wait after Redis went away; doubles per failed try...
    reconnect_max_s = 5.0  # ...up to this
    stream_every_s = 1.0  # how often ``run`` reads the stream's length, lag and pending for the metrics

    def __init__(
        self,
        store: OnlineStore,
        video_vocabulary: Vocabulary,
        history_length: int,
        consumer: str,
        batch: int = 2_000,  # most a read takes; 2,000 gave 21k events/s vs 17k at 500 (docs/BENCHMARKS.md)
        claim_idle_ms: int = 10_000,
        seen_limit: int = 500,
        dedupe_ttl_s: int = 3600,  # bounds the markers' memory (~200 B/event); re-deliveries come in seconds
        dead_letter_limit: int = 100_000,
        max_deliveries: int = 3,
        offline: OfflineStore | None = None,
        metrics: IngestReporter | None = None,
        shards: int = 1,
        owned_shards: Sequence[int] | None = None,
    ):
        """``offline``: also append applied events to this offline store (one part per batch), so the
        next retraining sees them; acknowledged only once both are written. ``metrics``: where to report
        (default: nowhere). ``shards``: the event stream's shard count (``stream.shards``);
        ``owned_shards``: the shards this worker reads (default: all). ``ConfigError`` when a shard does
        not exist, or when the streams still hold events written with another shard count."""
        self.metrics = metrics or NO_REPORTS
        self.store = store
        self.offline = offline
        self.client = store.client
        self.vocabulary = video_vocabulary
        self._vocabulary_namespace: str | None = None
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.seen_bytes = seen_limit * 8
        self.dedupe_ttl_s = dedupe_ttl_s
        self.dead_letter_limit = dead_letter_limit
        self.max_deliveries = max_deliveries
        self._set_history_layout(history_length)  # until a namespace's own meta says otherwise
        self.keys = store.keys
        self.prefix = store.keys.prefix
        self.shard_count = StreamSettings(shards).shards  # checks the range
        owned = sorted(set(range(shards) if owned_shards is None else (int(i) for i in owned_shards)))
        if not owned or not all(0 <= i < shards for i in owned):
            raise ConfigError(
                f"a worker owns shards among 0 to {shards - 1} (stream.shards {shards}), got {owned}"
            )
        self.shards = [
            StreamShard(i, self.keys.event_stream(i, shards), self.keys.dead_letter_stream(i, shards))
            for i in owned
        ]
        self._shard = {shard.index: shard for shard in self.shards}
        self._turn = 0  # on Redis Cluster, the shard whose read waits next (``_read_new``)
        self._apply = self.client.register_script(APPLY)
        self._reread_own = False  # after a lost connection: re-read this consumer's own pending first
        self._record_shard_count()
        self._create_group()

    @property
    def stream(self) -> str:
        """The stream of this worker's first shard (the only one with ``stream.shards`` 1)."""
        return self.shards[0].stream

    @property
    def dead(self) -> str:
        """The dead letters of this worker's first shard."""
        return self.shards[0].dead

    def _record_shard_count(self) -> None:
        """Record the shard count for producers and other workers (``Keys.event_shards``). Another count
        recorded before is replaced only once the streams written with it are drained (every entry
        delivered and acknowledged): changing it earlier would strand their events."""
        key = self.keys.event_shards
        if self.client.set(key, self.shard_count, nx=True):
            return
        recorded = int(self.client.get(key) or self.shard_count)
        if recorded == self.shard_count:
            return
        waiting = [
            stream
            for stream in (self.keys.event_stream(i, recorded) for i in range(recorded))
            if not self._drained(stream)
        ]
        if waiting:
            raise ConfigError(
                f"stream.shards is {self.shard_count} but the event stream was written with {recorded} "
                f"shard(s) and {len(waiting)} of them still hold events not applied (e.g. {waiting[0]}): "
                f"drain them with workers at stream.shards={recorded} (reels ingest --drain), then switch"
            )
        log.warning("event stream: %d shard(s) from now on (was %d, drained)", self.shard_count, recorded)
        self.client.set(key, self.shard_count)

    def _drained(self, stream: str) -> bool:
        """Whether every entry of ``stream`` was delivered to and acknowledged by each of its groups (a
        stream without groups: whether it is empty; no stream: drained)."""
        if not self.client.exists(stream):
            return True
        groups = self.client.xinfo_groups(stream)
        if not groups:
            return int(self.client.xlen(stream)) == 0
        last = _stream_id(self.client.xinfo_stream(stream)["last-generated-id"])
        return all(
            not group["pending"] and _stream_id(group["last-delivered-id"]) >= last for group in groups
        )

    def _create_group(self) -> None:
        """Create the consumer group (and the stream) of each owned shard unless it exists."""
        for shard in self.shards:
            try:
                self.client.xgroup_create(shard.stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def step(self, block_ms: int = 200) -> IngestStats:
        """On each owned shard, claim messages a dead consumer left pending and read new ones (at most
        ``batch`` each); apply and acknowledge them shard by shard."""
        stats = IngestStats()
        taken: dict[int, list] = {shard.index: [] for shard in self.shards}
        if self._reread_own:  # what this worker read before the connection dropped: no wait for a claim
            full = False
            for shard in self.shards:
                replies = self.client.xreadgroup(GROUP, self.consumer, {shard.stream: "0"}, count=self.batch)
                own = [(i, f) for _, entries in replies or [] for i, f in entries if f is not None]
                taken[shard.index].extend(own)
                full = full or len(own) == self.batch
            self._reread_own = full
        for shard in self.shards:
            _, claimed, _ = self.client.xautoclaim(
                shard.stream, GROUP, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0",
                count=self.batch,
            )  # fmt: skip
            taken[shard.index].extend(claimed)
            stats.claimed += len(claimed)
        for index, entries in self._read_new(block_ms).items():
            taken[index].extend(entries)
        for index, entries in taken.items():
            messages = {}  # by message id: a message both re-read and claimed is handled once
            for message_id, fields in entries:
                messages.setdefault(message_id, fields)
            if messages:
                self.process(list(messages.items()), stats, index)
        return stats

    def _read_new(self, block_ms: int) -> dict[int, list]:
        """New messages per owned shard. One redis-server: one XREADGROUP over every shard, waiting up to
        ``block_ms`` for the first. Redis Cluster (a command's keys must share a slot): one read per
        shard without waiting and, when none had anything, a wait of ``block_ms`` split by the shard
        count on the next shard in turn (so a worker of several shards sees each new message within
        about ``block_ms``; a worker per shard sees it at once)."""
        by_stream = {shard.stream: shard.index for shard in self.shards}
        if len(self.shards) == 1 or not self.store.cluster:
            replies = self.client.xreadgroup(
                GROUP, self.consumer, dict.fromkeys(by_stream, ">"), count=self.batch, block=block_ms
            )
        else:
            replies = []
            for shard in self.shards:
                replies += (
                    self.client.xreadgroup(GROUP, self.consumer, {shard.stream: ">"}, count=self.batch) or []
                )
            if block_ms and not any(entries for _, entries in replies):
                shard = self.shards[self._turn % len(self.shards)]
                self._turn += 1
                wait_ms = max(1, block_ms // len(self.shards))
                replies = self.client.xreadgroup(
                    GROUP, self.consumer, {shard.stream: ">"}, count=self.batch, block=wait_ms
                ) or []  # fmt: skip
        fresh: dict[int, list] = {shard.index: [] for shard in self.shards}
        for stream, entries in replies or []:
            fresh[by_stream[_text(stream)]].extend(entries)
        return fresh

    def read_only(self, count: int, shard: int | None = None) -> list:
        """Read without processing from ``shard`` (default: the first owned) — what a consumer that dies
        mid-batch leaves behind (tests use it)."""
        stream = self._owned(shard).stream
        fresh = self.client.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count)
        return [entry for _, entries in fresh or [] for entry in entries]

    def _owned(self, shard: int | None) -> StreamShard:
        if shard is None:
            return self.shards[0]
        if shard not in self._shard:
            raise ValueError(f"this worker does not own shard {shard} (it owns {sorted(self._shard)})")
        return self._shard[shard]

    def process(self, messages: list, stats: IngestStats, shard: int | None = None) -> None:
        """Handle ``(message_id, fields)`` entries of ``shard``'s stream (default: the first owned):
        hide-creator messages, then events (validated, applied, appended offline), acknowledging each
        once handled; counts go into ``stats``."""
        owner = self._owned(shard)
        stats.read += len(messages)
        hides = [(i, f) for i, f in messages if HIDE_CREATOR.encode() in f]
        if hides:
            self._hide_creators(owner, hides, stats)
            messages = [(i, f) for i, f in messages if HIDE_CREATOR.encode() not in f]
        good, good_ids = self.validated(owner, messages, stats)
        if len(good):
            applied, failed = self._apply_isolating_failures(good, good_ids)
            fault_point("ingest:after_apply")
            done = np.array([message_id not in failed for message_id in good_ids], dtype=bool)
            stats.applied += int((applied & done).sum())
            stats.duplicates += int((~applied & done).sum())
            if self.offline is not None and done.any():
                rows = good[done]
                self._append_offline(
                    EVENTS.name, rows, [self.keys.offline_marker(int(e)) for e in rows["event_id"]]
                )
            # Acknowledged only once Redis (and the offline store) have them.
            if done.any():
                fault_point("ingest:before_ack")
                acked = [i for i, ok in zip(good_ids, done, strict=True) if ok]
                self.client.xack(owner.stream, GROUP, *acked)
            if failed:
                self._retry_or_dead_letter(owner, messages, failed, stats)

    def _apply_isolating_failures(self, events: pd.DataFrame, ids: list) -> tuple[np.ndarray, dict]:
        """Apply the batch in one script call. Returns (applied flags in ``ids`` order, failed message id
        -> reason): an event whose updates failed inside the script, or every event when Redis refused
        the script as a whole (e.g. out of memory)."""
        try:
            results = self.apply(events)
        except redis.ResponseError as exc:
            if isinstance(exc, UNAVAILABLE):  # a failover, not a bad batch: ``run`` waits and re-reads it
                raise
            return np.zeros(len(ids), dtype=bool), dict.fromkeys(ids, str(exc)[:300])
        failed = {i: r[:300] for i, r in zip(ids, results, strict=True) if isinstance(r, str)}
        return np.array([r == 1 for r in results], dtype=bool), failed

    def _retry_or_dead_letter(
        self, shard: StreamShard, messages: list, failed: dict, stats: IngestStats
    ) -> None:
        """Leave a message whose apply failed pending (claimed and retried after ``claim_idle_ms``) until
        it was delivered ``max_deliveries`` times, then dead-letter it: a message that always fails must
        not be handed back forever."""
        for message_id, reason in failed.items():
            entry = self.client.xpending_range(shard.stream, GROUP, min=message_id, max=message_id, count=1)
            delivered = int(entry[0]["times_delivered"]) if entry else self.max_deliveries
            stats.failed_applies += 1
            if delivered < self.max_deliveries:
                continue
            try:
                self._dead(
                    shard,
                    message_id,
                    fields_of(messages, message_id)[:4096],
                    f"apply failed {delivered} times: {reason}",
                    stats,
                )
            except redis.ResponseError as exc:  # e.g. out of memory: it stays pending, retried later
                stats.reasons.append(f"could not dead-letter {message_id!r}: {exc}")

    def _hide_creators(self, shard: StreamShard, messages: list, stats: IngestStats) -> None:
        """Add each hidden creator to the user's set (read by the next request's feature transform) and,
        with an offline store, append the choice to its ``hides`` table (written once, like events)."""
        pipe = self.client.pipeline(transaction=False)
        done, rows = [], []
        for message_id, fields in messages:
            raw = fields[HIDE_CREATOR.encode()]
            try:
                body = json.loads(raw)
                user, creator = int(body["user_id"]), int(body["creator_id"])
                if not (0 <= user <= MAX_RAW_ID and 0 <= creator <= MAX_RAW_ID):
                    raise ValueError("user_id and creator_id must be non-negative and below 2^53")
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                self._dead(shard, message_id, raw, f"bad hide_creator message: {exc}", stats)
                continue
            pipe.sadd(self.store.keys.hidden_creators(user), creator)
            done.append(message_id)
            entry = _text(message_id)
            when = pd.Timestamp(int(entry.partition("-")[0]), unit="ms")
            rows.append((hide_id(entry, shard.index, self.shard_count), user, creator, when))
        if done:
            pipe.execute()
            fault_point("ingest:after_apply")
            if self.offline is not None:
                hides = pd.DataFrame(rows, columns=HIDES.names)
                markers = [self.keys.offline_marker(f"hide:{entry}") for entry in hides["hide_id"]]
                self._append_offline(HIDES.name, hides, markers)
            fault_point("ingest:before_ack")
            self.client.xack(shard.stream, GROUP, *done)
            stats.applied += len(done)

    def _append_offline(self, table: str, rows: pd.DataFrame, markers: list[str]) -> None:
        """Append the rows of ``table`` not yet in the offline store, once across crashes (module doc).

        ``markers[i]`` is row i's Redis marker: missing = never written; a batch token = the row went
        into that batch, which either committed (skip the row) or not (its writer died: write it again,
        unless the key is found in the store, i.e. the batch was committed and then compacted)."""
        key = TABLES[table].key
        values = [v.decode() if v is not None else None for v in self.store.mget(markers)]
        tokens = {v for v in values if v is not None and v != "1"}  # "1": marker of older versions
        landed = self.offline.committed(table, tokens) if tokens else set()
        todo = np.array([v is None or (v != "1" and v not in landed) for v in values], dtype=bool)
        unsure = np.array([v is not None for v in values], dtype=bool) & todo
        if unsure.any():  # a batch that may have been compacted since: look for the keys themselves
            found = self.offline.existing_keys(table, rows[unsure])
            todo &= ~rows[key].isin(found).to_numpy()
        todo_rows = rows[todo].drop_duplicates(key)
        if todo_rows.empty:
            return
        token = uuid.uuid4().hex[:12]
        pipe = self.client.pipeline(transaction=False)
        for marker in np.asarray(markers, dtype=object)[todo]:
            pipe.set(marker, token, ex=self.dedupe_ttl_s)
        pipe.execute()  # before the write: a crash after it leaves markers that name the batch
        self.offline.append(table, todo_rows, token=token)
        self.metrics.offline_batch(table, len(todo_rows))
        fault_point("ingest:after_offline")

    def validated(self, shard: StreamShard, messages: list, stats: IngestStats) -> tuple[pd.DataFrame, list]:
        """Valid events of ``shard`` and their message ids; invalid ones are dead-lettered (with the
        reason) and acked.

        The whole batch is validated at once (one frame); only when that fails is each event checked on
        its own to find the bad ones, so the common case costs one vectorised validation."""
        parsed, ids = [], []
        for message_id, fields in messages:
            raw = fields.get(b"event", b"")
            try:
                event = json.loads(raw)
                if not isinstance(event, dict):
                    raise ValueError(f"expected a JSON object, got {type(event).__name__}")
                parsed.append(event)
                ids.append(message_id)
            except (ValueError, RecursionError) as exc:  # RecursionError: a deeply nested poison pill
                self._dead(shard, message_id, raw[:4096], f"not a JSON event: {str(exc)[:200]}", stats)
        if not parsed:
            return pd.DataFrame(columns=EVENTS.names), []
        try:
            return _checked_ids(validate(self._frame(parsed), EVENTS)), ids
        except Exception:  # noqa: BLE001 - some event is bad: find which, one by one, below
            pass
        good, good_ids = [], []
        for event, message_id in zip(parsed, ids, strict=True):
            try:
                good.append(_checked_ids(validate(self._frame([event]), EVENTS)))
                good_ids.append(message_id)
            except Exception as exc:  # noqa: BLE001 - any bad message is dead-lettered, never kills the worker
                raw = fields_of(messages, message_id)
                self._dead(shard, message_id, raw[:4096], f"{type(exc).__name__}: {str(exc)[:500]}", stats)
        frame = pd.concat(good, ignore_index=True) if good else pd.DataFrame(columns=EVENTS.names)
        return frame, good_ids

    @staticmethod
    def _frame(events: list[dict]) -> pd.DataFrame:
        """One frame of parsed events, timestamps as datetimes."""
        frame = pd.DataFrame(events)
        if "timestamp" in frame:
            frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        return frame

    def _dead(self, shard: StreamShard, message_id, raw: bytes, reason: str, stats: IngestStats) -> None:
        self.client.xadd(
            shard.dead, {"event": raw, "reason": reason, "source_id": message_id},
            maxlen=self.dead_letter_limit, approximate=True,
        )  # fmt: skip
        self.client.xack(shard.stream, GROUP, message_id)
        stats.dead_lettered += 1
        stats.reasons.append(reason)

    def apply(self, events: pd.DataFrame) -> list[int | str]:
        """Apply validated events: per event 1 = applied (some part of it was new: a re-delivery completes
        an event whose parts a failure left half-applied), 0 = every part applied before (a duplicate or a
        re-delivery), or the error message of a part that failed (that part stays unapplied)."""
        owner, parts, keys = self.parts(events)
        results = self._run_parts(parts, keys)
        out: list[int | str] = [0] * len(events)
        for event, result in zip(owner.tolist(), results, strict=True):
            if isinstance(result, str):
                out[event] = result
            elif result == 1 and not isinstance(out[event], str):
                out[event] = 1
        return out

    def parts(self, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[tuple[bytes, ...]]]:
        """The parts of ``events`` (``PART_RECORD``s), the row of the event each belongs to, and each
        part's KEYS (its dedupe marker first; an ``EVENT_PART``'s trending key is added once per call)."""
        ns = self.store.namespace()
        n = len(events)
        event_ids, users, videos = (
            events[name].to_numpy(dtype=np.int64) for name in ("event_id", "user_id", "video_id")
        )
        duration = events["video_duration_s"].to_numpy(dtype=np.float64)
        watched = events["watch_time_s"].to_numpy(dtype=np.float64) / np.where(duration > 0, duration, 1.0)
        viewed = (watched >= 0.5) & ~events["skipped"].to_numpy(dtype=bool)
        if self.store.cluster:
            # Every event's user part, then every event's video part, then each view's trending part:
            # each kind keeps the events' order (a user's seen list and history follow it).
            owner = np.concatenate([np.arange(n), np.arange(n), np.flatnonzero(viewed)])
            kinds = np.repeat([USER_PART, VIDEO_PART, TRENDING_PART], [n, n, len(owner) - 2 * n])
        else:
            owner, kinds = np.arange(n), np.full(n, EVENT_PART)
        parts = np.zeros(len(owner), dtype=PART_RECORD)
        parts["part"] = kinds
        parts["video_id"] = videos[owner]
        parts["video_code"] = self._vocabulary(ns).encode(videos)[owner]
        parts["viewed"] = viewed[owner]
        for name in ("liked", "completed", "hidden"):
            parts[name] = events[name].to_numpy(dtype=bool)[owner]
        return owner, parts, self._part_keys(ns, event_ids, users, videos, viewed)

    def _part_keys(
        self, ns: str, event_ids: np.ndarray, users: np.ndarray, videos: np.ndarray, viewed: np.ndarray
    ) -> list[tuple[bytes, ...]]:
        """The KEYS of each part, in the order of ``parts``' parts (the marker first), built a key kind
        at a time (``Keys.applied_keys`` and co.: a 2,000-event batch needs 8,000 to 14,000 keys)."""
        keys = self.keys
        ids = event_ids.tolist()
        user_tags, video_tags = keys.user_tags(users.tolist()), keys.video_tags(videos.tolist())
        seen, records = keys.seen_keys(ns, user_tags), keys.user_keys(ns, user_tags)
        counters = keys.counters_keys(ns, video_tags)
        if not self.store.cluster:
            return list(zip(keys.applied_keys(ids, user_tags), seen, records, counters, strict=True))
        views = event_ids[viewed].tolist()
        trending_tags = [keys.TRENDING_TAG.encode()] * len(views)
        return [
            *zip(keys.applied_keys(ids, user_tags), seen, records, strict=True),
            *zip(keys.applied_keys(ids, video_tags), counters, strict=True),
            *zip(keys.applied_keys(views, trending_tags), [keys.trending.encode()] * len(views), strict=True),
        ]

    def _run_parts(self, parts: np.ndarray, keys: list[tuple[bytes, ...]]) -> list[int | str]:
        """Run the ``APPLY`` script over ``parts``: one call on a single server (atomic, as one batch
        always was); on Redis Cluster one call per hash slot, sent per node (one round trip per node,
        ``_run_per_node``). Returns each part's result in input order."""
        head = [self.dedupe_ttl_s, self.history_offset, self.history_bytes, self.seen_bytes]
        if not self.store.cluster:
            groups = [np.arange(len(parts))]
        else:
            by_slot: dict[int, list[int]] = {}
            for i, part_keys in enumerate(keys):
                by_slot.setdefault(key_slot(part_keys[0]), []).append(i)
            groups = [np.array(members) for members in by_slot.values()]
        if len(groups) == 1:
            flat = [*itertools.chain.from_iterable(keys)]
            if not self.store.cluster:
                flat.append(self.keys.trending.encode())  # every EVENT_PART's trending ZSET
            replies = [self._apply(keys=flat, args=[*head, parts.tobytes()])]
        else:
            commands, routing = [], []
            for group in groups:
                flat = [key for i in group.tolist() for key in keys[i]]
                commands.append(("EVALSHA", self._apply.sha, len(flat), *flat, *head, parts[group].tobytes()))
                routing.append(flat[0].decode())
            replies = self._run_per_node(commands, routing, reloaded=False)
        results: list[int | str] = [0] * len(parts)
        for group, reply in zip(groups, replies, strict=True):
            for i, result in zip(group.tolist(), reply, strict=True):
                results[i] = result.decode() if isinstance(result, bytes) else int(result)
        return results

    def _run_per_node(self, commands: list[tuple], routing: list[str], reloaded: bool) -> list:
        """The replies of the script calls ``commands`` on a Redis Cluster, one round trip per node
        (``OnlineStore.per_node``). A primary without the script (a replica promoted since) gets it and
        the calls run again; a stale slot map, a lost node or a script still missing sends them through
        redis-py's cluster pipeline as EVALs, which follows redirections. Running parts again is safe: applied ones are skipped by
        their markers."""
        try:
            return self.store.per_node(commands, routing)
        except NoScriptError:
            if not reloaded:
                self.client.script_load(APPLY)  # every primary
                return self._run_per_node(commands, routing, reloaded=True)
        except (redis.RedisError, OSError, KeyError, IndexError) as exc:
            if isinstance(exc, redis.ResponseError) and not isinstance(
                exc, redis.exceptions.MovedError | redis.exceptions.AskError | TryAgainError
            ):
                raise  # e.g. out of memory: the whole batch is retried later
        pipe = self.client.pipeline(transaction=False)
        for _, _, *arguments in commands:  # EVAL with the script itself: no NOSCRIPT on this path
            pipe.execute_command("EVAL", APPLY, *arguments)
        replies = pipe.execute(raise_on_error=False)
        failure = next((r for r in replies if isinstance(r, Exception)), None)
        if failure is not None:
            raise failure
        return replies

    def _vocabulary(self, namespace: str) -> Vocabulary:
        """The video vocabulary of the features loaded into ``namespace``: a promotion swaps in features
        fitted by a new workflow, whose encoded ids differ, so history pushes must follow the swap."""
        if namespace != self._vocabulary_namespace:
            meta = self.store.meta(namespace)
            features = meta.get("features")
            workflow = Path(features) / "workflow" if features else None
            if workflow is not None and workflow.exists():
                self.vocabulary = Vocabulary(workflow, "video_id")
            # The user records of this namespace were packed with its own history length (a retrain may
            # change it): the history offset and size inside a record follow the namespace, too.
            if "history_length" in meta:
                self._set_history_layout(int(meta["history_length"]))
            self._vocabulary_namespace = namespace
        return self.vocabulary

    def _set_history_layout(self, history_length: int) -> None:
        record = user_record(history_length)
        self.history_offset = record.fields[HISTORY][1]  # byte offset of the history inside a user record
        self.history_bytes = history_length * 8

    def run(self, seconds: float | None = None, idle_exit: bool = False) -> IngestStats:
        """Work until ``seconds`` pass (or forever); with ``idle_exit``, stop once the stream is drained.

        Redis going away (connection refused or dropped, a timeout, still loading its append-only file)
        does not end the run: it is logged and retried after ``reconnect_min_s``, doubling up to
        ``reconnect_max_s``; what this worker had read stays pending and is re-read first once Redis is
        back. A stream or group that came back empty (a Redis without persistence) is created again."""
        total = IngestStats()
        deadline = None if seconds is None else time.monotonic() + seconds
        next_trim = time.monotonic() + self.trim_every_s
        next_observe = time.monotonic()  # the stream's state right away, then every stream_every_s
        failures = 0
        while deadline is None or time.monotonic() < deadline:
            try:
                stats = self.step()
                if time.monotonic() >= next_trim:
                    self.trim_acknowledged()
                    next_trim = time.monotonic() + self.trim_every_s
                if self.metrics.enabled and time.monotonic() >= next_observe:
                    self.observe_stream()
                    next_observe = time.monotonic() + self.stream_every_s
            except (*UNAVAILABLE, FeatureStoreUnavailable, redis.ResponseError) as exc:
                # Away: unreachable, or (Redis Cluster) a slot without a primary during a failover; the
                # store's own reads (the namespace) say so with FeatureStoreUnavailable (its breaker).
                nogroup = isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc)
                if not (nogroup or isinstance(exc, (*UNAVAILABLE, FeatureStoreUnavailable))):
                    raise
                self.metrics.redis_unavailable()
                wait = min(self.reconnect_max_s, self.reconnect_min_s * 2**failures)
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                failures += 1
                log.warning(
                    "ingest %s: Redis unavailable (%s); try %d again in %.1fs",
                    self.consumer,
                    exc,
                    failures,
                    wait,
                )
                time.sleep(wait)
                self._reread_own = True
                if nogroup:
                    self._recreate_group()
                continue
            if failures:
                log.warning("ingest %s: Redis is back after %d failed tries", self.consumer, failures)
                self.metrics.redis_back()
                failures = 0
            self.metrics.counted(stats)
            for name in ("read", "applied", "duplicates", "dead_lettered", "claimed", "failed_applies"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            total.reasons.extend(stats.reasons)
            if idle_exit and stats.read == 0:
                break
        try:
            self.trim_acknowledged()
            if self.metrics.enabled:
                self.observe_stream()
        except UNAVAILABLE as exc:  # trimming waits for the next run
            log.warning("ingest %s: could not trim the stream on exit (%s)", self.consumer, exc)
        return total

    def observe_stream(self) -> None:
        """Report each owned shard's length, its dead letters' and every group's lag and pending entries,
        and their sums over the shards (one pipeline)."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards:
            pipe.xlen(shard.stream)
            pipe.xlen(shard.dead)
            pipe.xinfo_groups(shard.stream)
        try:
            replies = pipe.execute()
        except redis.ResponseError as exc:  # e.g. the stream is gone (Redis restarted empty): next time
            log.debug("ingest %s: no stream state (%s)", self.consumer, exc)
            return
        total_length = total_dead = 0
        totals: dict[str, dict] = {}  # per group: pending and lag summed over the shards
        for i, shard in enumerate(self.shards):
            length, dead_letters, groups = replies[3 * i : 3 * i + 3]
            self.metrics.shard_state(shard.index, int(length), int(dead_letters), list(groups))
            total_length += int(length)
            total_dead += int(dead_letters)
            for group in groups:
                total = totals.setdefault(
                    _text(group["name"]), {"name": _text(group["name"]), "pending": 0, "lag": 0}
                )
                total["pending"] += int(group["pending"])
                lag = group.get("lag")
                total["lag"] = None if lag is None or total["lag"] is None else total["lag"] + int(lag)
        self.metrics.stream_state(total_length, total_dead, list(totals.values()))

    def _recreate_group(self) -> None:
        """The group is gone (Redis came back without its data): record the shard count and create the
        groups again, if Redis answers."""
        try:
            self._record_shard_count()
            self._create_group()
        except UNAVAILABLE:
            pass  # still down: the next try of the loop tells

    def trim_acknowledged(self) -> int:
        """Drop entries of each owned shard that every consumer group has acknowledged and that are older
        than ``keep_s`` (``XTRIM MINID``): the streams stay bounded, an event not applied yet is never
        dropped, and a day of events stays readable for live A/B reports. Returns how many entries went."""
        return sum(self._trim(shard.stream) for shard in self.shards)

    def _trim(self, stream: str) -> int:
        floor = _stream_id(f"{int((time.time() - self.keep_s) * 1000)}-0")
        for group in self.client.xinfo_groups(stream):
            pending = self.client.xpending(stream, group["name"])
            oldest = pending["min"] if pending["pending"] else group["last-delivered-id"]
            floor = min(floor, _stream_id(oldest))
        if floor == (0, 0):
            return 0
        return int(self.client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


def _checked_ids(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` unchanged when every id fits a double exactly; ``InvalidInput`` otherwise."""
    for name in ("event_id", "user_id", "video_id"):
        if len(events) and int(events[name].max()) > MAX_RAW_ID:
            raise InvalidInput(f"{name} above 2^53-1 (ids travel through Lua doubles and would be rounded)")
    return events


def fields_of(messages: list, message_id) -> bytes:
    """The raw ``event`` field of ``message_id`` among ``(id, fields)`` stream entries."""
    return next(fields.get(b"event", b"") for mid, fields in messages if mid == message_id)


def _stream_id(value) -> tuple[int, int]:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)`` (comparable)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
