"""Interaction events in real time: clients append to a Redis Stream; ``IngestWorker``s in one consumer
group validate them, dead-letter the malformed ones, and apply the rest to the online features.

Keys (``<p>`` = prefix, ``<ns>`` = the active namespace at apply time; braces are Redis Cluster hash tags,
see ``reels.feature_store.layout``)::

    <p>:events                          STREAM  one entry per event, field ``event`` = the event as JSON
    <p>:events:dead                     STREAM  malformed events: ``event``, ``reason``, ``source_id``
    <p>:applied:{u:<user>}:<event>      STRING  dedupe markers (TTL ``dedupe_ttl_s``), one per part of
    <p>:applied:{v:<video>}:<event>             an event, each in the slot of the keys its part updates
    <p>:applied:{trending}:<event>
    <p>:<ns>:counters:{v:<video>}       HASH    events / views / likes / completions / hides since the load
    <p>:trending:{trending}             ZSET    views per raw video id (streamed trending scores)

Delivery is at-least-once (a message is acknowledged only after it was applied; a worker that dies
leaves its messages pending, and ``claim_idle_ms`` later another worker claims them). Updates are
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
with ``XINFO GROUPS`` at most every ``stream_every_s``).

Per event: the raw video id is appended to the user's seen list (so it — and a "not interested" hide —
is excluded from the very next request), a viewed video's encoded id is pushed to the front of the
history inside the user's packed record, and the video's counters and (views) trending score are
incremented.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from redis.crc import key_slot
from redis.exceptions import NoScriptError, TryAgainError

from reels.feature_store.encoding import Vocabulary
from reels.feature_store.layout import user_record
from reels.feature_store.store import UNAVAILABLE, OnlineStore
from reels.feature_store.streams import GROUP, HIDE_CREATOR
from reels.workflows.errors import InvalidInput
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
# record, counters, trending ZSET): one marker per event, the whole event atomic. One script call applies a
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
  if viewed == 1 then apply_trending(KEYS[k + 4], base) end
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
  k = k + (part == 0 and 5 or part == 1 and 3 or 2)
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
        """The event stream's length, the dead-letter stream's, and ``XINFO GROUPS`` of the stream."""


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
            name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
            lag = group.get("lag")
            self.lag.labels(name).set(math.nan if lag is None else int(lag))
            self.pending.labels(name).set(int(group["pending"]))


NO_REPORTS = IngestReporter()


class IngestWorker:
    """One consumer of group ``ingest`` on the event stream: validates, dead-letters, applies events to the
    active namespace with the ``APPLY`` script and optionally appends them to the offline store."""

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
    ):
        """``offline``: also append applied events to this offline store (one part per batch), so the
        next retraining sees them; acknowledged only once both are written. ``metrics``: where to report
        (default: nowhere)."""
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
        self.stream, self.dead = store.keys.events, store.keys.dead_letters
        self.prefix = store.keys.prefix
        self._apply = self.client.register_script(APPLY)
        self._reread_own = False  # after a lost connection: re-read this consumer's own pending first
        self._create_group()

    def _create_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists."""
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self, block_ms: int = 200) -> IngestStats:
        """Claim messages a dead consumer left pending, then read new ones; apply and acknowledge."""
        stats = IngestStats()
        own = []
        if self._reread_own:  # what this worker read before the connection dropped: no wait for a claim
            replies = self.client.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch)
            own = [(i, f) for _, entries in replies or [] for i, f in entries if f is not None]
            self._reread_own = len(own) == self.batch
        _, claimed, _ = self.client.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        stats.claimed = len(claimed)
        fresh = self.client.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms
        )
        messages = {}  # by message id: a message both re-read and claimed is handled once
        for message_id, fields in [*own, *claimed, *(e for _, entries in fresh or [] for e in entries)]:
            messages.setdefault(message_id, fields)
        self.process(list(messages.items()), stats)
        return stats

    def read_only(self, count: int) -> list:
        """Read without processing — what a consumer that dies mid-batch leaves behind (tests use it)."""
        fresh = self.client.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=count)
        return [entry for _, entries in fresh or [] for entry in entries]

    def process(self, messages: list, stats: IngestStats) -> None:
        """Handle ``(message_id, fields)`` stream entries: hide-creator messages, then events (validated,
        applied, appended offline), acknowledging each once handled; counts go into ``stats``."""
        stats.read += len(messages)
        hides = [(i, f) for i, f in messages if HIDE_CREATOR.encode() in f]
        if hides:
            self._hide_creators(hides, stats)
            messages = [(i, f) for i, f in messages if HIDE_CREATOR.encode() not in f]
        good, good_ids = self.validated(messages, stats)
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
                self.client.xack(self.stream, GROUP, *[i for i, ok in zip(good_ids, done, strict=True) if ok])
            if failed:
                self._retry_or_dead_letter(messages, failed, stats)

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

    def _retry_or_dead_letter(self, messages: list, failed: dict, stats: IngestStats) -> None:
        """Leave a message whose apply failed pending (claimed and retried after ``claim_idle_ms``) until
        it was delivered ``max_deliveries`` times, then dead-letter it: a message that always fails must
        not be handed back forever."""
        for message_id, reason in failed.items():
            entry = self.client.xpending_range(self.stream, GROUP, min=message_id, max=message_id, count=1)
            delivered = int(entry[0]["times_delivered"]) if entry else self.max_deliveries
            stats.failed_applies += 1
            if delivered < self.max_deliveries:
                continue
            try:
                self._dead(
                    message_id,
                    fields_of(messages, message_id)[:4096],
                    f"apply failed {delivered} times: {reason}",
                    stats,
                )
            except redis.ResponseError as exc:  # e.g. out of memory: it stays pending, retried later
                stats.reasons.append(f"could not dead-letter {message_id!r}: {exc}")

    def _hide_creators(self, messages: list, stats: IngestStats) -> None:
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
                self._dead(message_id, raw, f"bad hide_creator message: {exc}", stats)
                continue
            pipe.sadd(self.store.keys.hidden_creators(user), creator)
            done.append(message_id)
            entry = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
            rows.append((entry, user, creator, pd.Timestamp(int(entry.partition("-")[0]), unit="ms")))
        if done:
            pipe.execute()
            fault_point("ingest:after_apply")
            if self.offline is not None:
                hides = pd.DataFrame(rows, columns=HIDES.names)
                markers = [self.keys.offline_marker(f"hide:{entry}") for entry in hides["hide_id"]]
                self._append_offline(HIDES.name, hides, markers)
            fault_point("ingest:before_ack")
            self.client.xack(self.stream, GROUP, *done)
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

    def validated(self, messages: list, stats: IngestStats) -> tuple[pd.DataFrame, list]:
        """Valid events and their message ids; invalid ones are dead-lettered (with the reason) and acked.

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
                self._dead(message_id, raw[:4096], f"not a JSON event: {str(exc)[:200]}", stats)
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
                self._dead(message_id, raw[:4096], f"{type(exc).__name__}: {str(exc)[:500]}", stats)
        frame = pd.concat(good, ignore_index=True) if good else pd.DataFrame(columns=EVENTS.names)
        return frame, good_ids

    @staticmethod
    def _frame(events: list[dict]) -> pd.DataFrame:
        """One frame of parsed events, timestamps as datetimes."""
        frame = pd.DataFrame(events)
        if "timestamp" in frame:
            frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        return frame

    def _dead(self, message_id, raw: bytes, reason: str, stats: IngestStats) -> None:
        self.client.xadd(
            self.dead, {"event": raw, "reason": reason, "source_id": message_id},
            maxlen=self.dead_letter_limit, approximate=True,
        )  # fmt: skip
        self.client.xack(self.stream, GROUP, message_id)
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

    def parts(self, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """The parts of ``events`` (``PART_RECORD``s), the row of the event each belongs to, and each
        part's KEYS (its dedupe marker first)."""
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
    ) -> list[list[str]]:
        """The KEYS of each part, in the order of ``parts``' parts (the marker first)."""
        keys, trending = self.keys, self.keys.trending
        events = list(zip(event_ids.tolist(), users.tolist(), videos.tolist(), strict=True))
        if not self.store.cluster:
            return [
                [
                    keys.applied(e, keys.user_tag(u)),
                    keys.seen(ns, u),
                    keys.user(ns, u),
                    keys.counters(ns, v),
                    trending,
                ]
                for e, u, v in events
            ]
        user_parts = [
            [keys.applied(e, keys.user_tag(u)), keys.seen(ns, u), keys.user(ns, u)] for e, u, _ in events
        ]
        video_parts = [[keys.applied(e, keys.video_tag(v)), keys.counters(ns, v)] for e, _, v in events]
        trending_parts = [[keys.applied(e, keys.TRENDING_TAG), trending] for e in event_ids[viewed].tolist()]
        return user_parts + video_parts + trending_parts

    def _run_parts(self, parts: np.ndarray, keys: list[list[str]]) -> list[int | str]:
        """Run the ``APPLY`` script over ``parts``: one call on a single server (atomic, as one batch
        always was); on Redis Cluster one call per hash slot, sent per node (one round trip per node,
        ``_run_per_node``). Returns each part's result in input order."""
        head = [self.dedupe_ttl_s, self.history_offset, self.history_bytes, self.seen_bytes]
        if not self.store.cluster:
            groups = [np.arange(len(parts))]
        else:
            by_slot: dict[int, list[int]] = {}
            for i, part_keys in enumerate(keys):
                by_slot.setdefault(key_slot(part_keys[0].encode()), []).append(i)
            groups = [np.array(members) for members in by_slot.values()]
        if len(groups) == 1:
            flat = [key for part_keys in keys for key in part_keys]
            replies = [self._apply(keys=flat, args=[*head, parts.tobytes()])]
        else:
            commands, routing = [], []
            for group in groups:
                flat = [key for i in group.tolist() for key in keys[i]]
                commands.append(("EVALSHA", self._apply.sha, len(flat), *flat, *head, parts[group].tobytes()))
                routing.append(flat[0])
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
            except (*UNAVAILABLE, redis.ResponseError) as exc:
                # Away: unreachable, or (Redis Cluster) a slot without a primary during a failover.
                nogroup = isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc)
                if not (nogroup or isinstance(exc, UNAVAILABLE)):
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
        """Report the event stream's length, the dead-letter stream's and every group's lag and pending
        entries (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xlen(self.dead)
        pipe.xinfo_groups(self.stream)
        try:
            length, dead_letters, groups = pipe.execute()
        except redis.ResponseError as exc:  # e.g. the stream is gone (Redis restarted empty): next time
            log.debug("ingest %s: no stream state (%s)", self.consumer, exc)
            return
        self.metrics.stream_state(int(length), int(dead_letters), list(groups))

    def _recreate_group(self) -> None:
        """The group is gone (Redis came back without its data): create it again, if Redis answers."""
        try:
            self._create_group()
        except UNAVAILABLE:
            pass  # still down: the next try of the loop tells

    def trim_acknowledged(self) -> int:
        """Drop stream entries that every consumer group has acknowledged and that are older than
        ``keep_s`` (``XTRIM MINID``): the stream stays bounded, an event not applied yet is never dropped,
        and a day of events stays readable for live A/B reports. Returns how many entries went."""
        floor = _stream_id(f"{int((time.time() - self.keep_s) * 1000)}-0")
        for group in self.client.xinfo_groups(self.stream):
            pending = self.client.xpending(self.stream, group["name"])
            oldest = pending["min"] if pending["pending"] else group["last-delivered-id"]
            floor = min(floor, _stream_id(oldest))
        if floor == (0, 0):
            return 0
        return int(self.client.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


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
