"""Redis key schema and record layouts of the online feature store.

Keys (``<ns>`` is a load's namespace, e.g. ``v3``; ``<prefix>`` defaults to ``reels``; text in curly
braces is literal: a Redis Cluster hash tag, so every key with the same tag lives in the same hash slot)::

    <prefix>:active                    STRING  the namespace readers use; swapped atomically by a new load
    <prefix>:<ns>:meta                 HASH    record layouts (JSON), row counts, source fingerprints, time
    <prefix>:<ns>:user:{u:<user>}      STRING  one packed user record (see USER_RECORD)
    <prefix>:<ns>:video:<video>        STRING  one packed video record (see VIDEO_RECORD)
    <prefix>:<ns>:seen:{u:<user>}      STRING  packed int64 raw video ids the user has already been shown
                                               (the newest 500 at load; streamed events append, and the
                                               list is trimmed back to 500 once it reaches 1,000)
    <prefix>:hidden_creators:<user>    SET     raw creator ids the user hid (any namespace)
    <prefix>:load_counter              STRING  INCR'd by each load: namespace v<N>
    <prefix>:namespaces                SET     every namespace a load started (what clean-up looks at)
    <prefix>:pinned                    SET     namespaces a release in a model repository reads: never
                                               dropped while pinned (promotion and `reels serve` keep it)
    <prefix>:<ns>:loading              STRING  a load of ``<ns>`` in progress (TTL, refreshed per batch): a
                                               namespace without meta whose marker expired is a crashed
                                               load's, and the next activation removes it
    <prefix>:events                    STREAM  interaction events (field ``event``) and hide-creator
                                               messages (field ``hide_creator``), consumer group ``ingest``
                                               (one shard, ``stream.shards: 1``, the default)
    <prefix>:events:{s<i>[.<k>]}       STREAM  shard ``i`` of the events when ``stream.shards`` is N > 1:
                                               a user's events go to shard ``user_id % N``
                                               (``shard_tag``)
    <prefix>:events:dead               STREAM  dead-lettered messages: ``event``, ``reason``, ``source_id``
    <prefix>:events:dead:{s<i>[.<k>]}          (per shard when N > 1)
    <prefix>:events:shards             STRING  the shard count the ingest workers read (N)
    <prefix>:applied:{u:<user>}:<event>   STRING  dedupe marker of an event's user part (TTL)
    <prefix>:applied:{v:<video>}:<event>  STRING  dedupe marker of an event's video part (TTL)
    <prefix>:applied:{trending}:<event>   STRING  dedupe marker of a view's trending part (TTL)
    <prefix>:offline:<event>           STRING  the offline-store batch an event was written in (TTL)
    <prefix>:offline:hide:<entry_id>   STRING  the same for a hide-creator message (its stream entry id)
    <prefix>:<ns>:counters:{v:<video>} HASH    events / views / likes / completions / hides since the load
    <prefix>:trending:{trending}       ZSET    views per raw video id (streamed trending scores)
    <prefix>:exposures                 STREAM  one entry per served feed (field ``exposure``, JSON)

Hash tags exist for the ingest script (a Lua script's keys must share one slot on Redis Cluster): the
user part of an event touches its marker, seen list and user record (tag ``{u:<user>}``), the video part
its marker and the video's counters (``{v:<video>}``), the trending part its marker and the trending ZSET
(``{trending}``). The event stream's shards carry a tag each (``shard_tag``) that puts shard i of N in
the i-th of N equal ranges of the 16,384 slots, so they spread over the primaries of a cluster whose
slots were split evenly (as ``redis-cli --cluster create`` does). On one redis-server the tags are ordinary characters. Every other key is
read or written on its own (or by commands redis-py splits per slot), so it needs no tag.

Records are fixed-layout little-endian numpy structured records (``dtype.tobytes()``), so one ``MGET``
of a user and 500 videos decodes with a single ``np.frombuffer`` per kind: no per-field parsing. Field
names and order come from the feature spec (``reels.workflows.spec``) and the values are the
*already transformed* model inputs (Categorify ids, standardised floats) written by the feature build.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable

import numpy as np

from reels.workflows.spec import (
    HISTORY,
    USER_CATEGORICAL,
    USER_CONTINUOUS,
    VIDEO_CATEGORICAL,
    VIDEO_CONTINUOUS,
)

DEFAULT_PREFIX = "reels"


def user_record(history_length: int) -> np.dtype:
    """The packed user record: int64 Categorify ids (``USER_CATEGORICAL``), float32 ``USER_CONTINUOUS`` and
    the int64 encoded ``history_video_ids`` of ``history_length`` slots, little-endian, no padding."""
    return np.dtype(
        [(name, "<i8") for name in USER_CATEGORICAL]
        + [(name, "<f4") for name in USER_CONTINUOUS]
        + [(HISTORY, "<i8", (history_length,))]
    )


# upload_time (unix seconds) lets serving compute freshness (video_age) at request time.
VIDEO_RECORD = np.dtype(
    [(name, "<i8") for name in VIDEO_CATEGORICAL]
    + [(name, "<f4") for name in VIDEO_CONTINUOUS]
    + [("upload_time", "<i8")]
)
SEEN_DTYPE = np.dtype("<i8")


@functools.cache
def shard_tag(shard: int, shards: int) -> str:
    """The hash tag of event stream shard ``shard`` of ``shards``: ``{s<shard>}``, or ``{s<shard>.<k>}``
    with the smallest k that puts it in the shard-th of ``shards`` equal ranges of the cluster's slots
    (plain ``{s0}`` and ``{s1}`` hash to the same third of the slots: one primary of three for both)."""
    from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot  # here: `reels config` must not import redis

    low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
    high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    for k in itertools.count():
        tag = f"s{shard}" if k == 0 else f"s{shard}.{k}"
        if low <= key_slot(tag.encode()) < high:
            return f"{{{tag}}}"
    raise AssertionError("unreachable: itertools.count() never ends")


class Keys:
    """Every Redis key of reels, built in one place (the table in the module docstring)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        if "{" in prefix or "}" in prefix:  # a tag in the prefix would put every key in one slot
            raise ValueError(f"a key prefix holds no curly braces (Redis Cluster hash tags): {prefix!r}")
        self.prefix = prefix

    @staticmethod
    def user_tag(raw_user_id: int) -> str:
        """The hash tag of a user's ingest keys (record, seen list, dedupe markers): one slot per user."""
        return f"{{u:{raw_user_id}}}"

    @staticmethod
    def video_tag(raw_video_id: int) -> str:
        """The hash tag of a video's ingest keys (counters, dedupe markers): one slot per video."""
        return f"{{v:{raw_video_id}}}"

    TRENDING_TAG = "{trending}"

    # Vectorised forms of the ingest keys (the names of ``applied``, ``seen``, ``user`` and ``counters``,
    # as bytes): one C-level map per key kind instead of one f-string per key, for a batch of thousands.
    @staticmethod
    def user_tags(raw_user_ids: Iterable[int]) -> list[bytes]:
        """``user_tag`` of each id."""
        return list(map(b"{u:%d}".__mod__, raw_user_ids))

    @staticmethod
    def video_tags(raw_video_ids: Iterable[int]) -> list[bytes]:
        """``video_tag`` of each id."""
        return list(map(b"{v:%d}".__mod__, raw_video_ids))

    def applied_keys(self, event_ids: Iterable[int], tags: Iterable[bytes]) -> list[bytes]:
        """``applied`` of each (event id, tag) pair."""
        template = self.prefix.encode().replace(b"%", b"%%") + b":applied:%b:%d"
        return list(map(template.__mod__, zip(tags, event_ids, strict=True)))

    def seen_keys(self, ns: str, user_tags: Iterable[bytes]) -> list[bytes]:
        """``seen`` of each user, from ``user_tags``."""
        return list(map(f"{self.prefix}:{ns}:seen:".encode().__add__, user_tags))

    def user_keys(self, ns: str, user_tags: Iterable[bytes]) -> list[bytes]:
        """``user`` of each user, from ``user_tags``."""
        return list(map(f"{self.prefix}:{ns}:user:".encode().__add__, user_tags))

    def counters_keys(self, ns: str, video_tags: Iterable[bytes]) -> list[bytes]:
        """``counters`` of each video, from ``video_tags``."""
        return list(map(f"{self.prefix}:{ns}:counters:".encode().__add__, video_tags))

    @property
    def active(self) -> str:
        """The STRING holding the namespace readers use (swapped by a new load)."""
        return f"{self.prefix}:active"

    def meta(self, ns: str) -> str:
        """The namespace's meta HASH: record layouts, row counts, source fingerprints, load time."""
        return f"{self.prefix}:{ns}:meta"

    def user(self, ns: str, raw_user_id: int) -> str:
        """The packed ``user_record`` of a raw user id in namespace ``ns``."""
        return f"{self.prefix}:{ns}:user:{self.user_tag(raw_user_id)}"

    def video(self, ns: str, raw_video_id: int) -> str:
        """The packed ``VIDEO_RECORD`` of a raw video id in namespace ``ns``."""
        return f"{self.prefix}:{ns}:video:{raw_video_id}"

    def seen(self, ns: str, raw_user_id: int) -> str:
        """The packed int64 raw video ids already shown to a raw user id, in namespace ``ns``."""
        return f"{self.prefix}:{ns}:seen:{self.user_tag(raw_user_id)}"

    def hidden_creators(self, raw_user_id: int) -> str:
        """Creators the user hid: raw ids, so it outlives namespace swaps (a SET, not per namespace)."""
        return f"{self.prefix}:hidden_creators:{raw_user_id}"

    def namespace_pattern(self, ns: str) -> str:
        """Every key of one namespace (for SCAN when a namespace is dropped)."""
        return f"{self.prefix}:{ns}:*"

    @property
    def meta_pattern(self) -> str:
        """The meta hash of every namespace (for SCAN)."""
        return f"{self.prefix}:v*:meta"

    def loading(self, ns: str) -> str:
        """Marker of a load of ``ns`` in progress (with a TTL the load refreshes per batch)."""
        return f"{self.prefix}:{ns}:loading"

    @property
    def namespaces(self) -> str:
        """The SET of every namespace a load started."""
        return f"{self.prefix}:namespaces"

    @property
    def pinned(self) -> str:
        """The SET of namespaces a release in a model repository reads (never dropped while there)."""
        return f"{self.prefix}:pinned"

    @property
    def load_counter(self) -> str:
        """INCR'd by each load to name its namespace."""
        return f"{self.prefix}:load_counter"

    @property
    def events(self) -> str:
        """The event stream clients write to when it has one shard (``event_stream(0, 1)``)."""
        return f"{self.prefix}:events"

    @property
    def dead_letters(self) -> str:
        """Messages the ingest workers could not apply, with one shard (``dead_letter_stream(0, 1)``)."""
        return f"{self.prefix}:events:dead"

    def event_stream(self, shard: int, shards: int) -> str:
        """Shard ``shard`` of ``shards`` event streams: the single stream's name with one shard (so a
        deployment that never sharded keeps its stream), else ``<prefix>:events:<shard_tag>``."""
        return self.events if shards == 1 else f"{self.prefix}:events:{shard_tag(shard, shards)}"

    def dead_letter_stream(self, shard: int, shards: int) -> str:
        """The dead letters of shard ``shard`` of ``shards`` (in the slot of its stream)."""
        return self.dead_letters if shards == 1 else f"{self.prefix}:events:dead:{shard_tag(shard, shards)}"

    @property
    def event_shards(self) -> str:
        """The shard count the ingest workers read: producers and workers configured otherwise refuse to
        start rather than write to, or read from, streams nobody else uses."""
        return f"{self.prefix}:events:shards"

    def applied(self, event_id: int, tag: str) -> str:
        """Dedupe marker of one part of an applied event, in the slot of ``tag`` (``user_tag``,
        ``video_tag`` or ``TRENDING_TAG``: the slot of the keys that part updates)."""
        return f"{self.prefix}:applied:{tag}:{event_id}"

    def offline_marker(self, event_id: int | str) -> str:
        """The offline-store batch marker of an event (an int id) or of a hide (``hide:{entry_id}``)."""
        return f"{self.prefix}:offline:{event_id}"

    def counters(self, ns: str, raw_video_id: int) -> str:
        """A video's streamed counters since the namespace was loaded."""
        return f"{self.prefix}:{ns}:counters:{self.video_tag(raw_video_id)}"

    @property
    def trending(self) -> str:
        """Streamed views per raw video id."""
        return f"{self.prefix}:trending:{self.TRENDING_TAG}"

    @property
    def exposures(self) -> str:
        """The exposure log: one entry per served feed."""
        return f"{self.prefix}:exposures"
