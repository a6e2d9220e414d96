"""The Redis online feature store: pipelined bulk load into a fresh namespace, atomic swap, batched reads.

A load registers its namespace (``{prefix}:namespaces``) with a loading marker whose TTL each batch
refreshes, writes every record under it, then its meta, then points ``{prefix}:active`` at it with one
SET (atomic). An activation then removes every other namespace except the one it replaced (kept for
in-flight readers), the pinned ones (``{prefix}:pinned``: a release in a model repository reads them,
the previous release kept loaded for a rollback included) and loads in progress; a namespace without
meta whose loading marker expired is a crashed load's and is removed too, pinned or not.
Readers cache the active namespace for ``namespace_ttl_s`` and fetch a user, their seen list and all
candidate videos in one round trip (a pipeline of one MGET and one GET).

On Redis Cluster (a ``redis.cluster.RedisCluster`` client) the same keys are read with single-key
commands grouped per node: each node gets its share in one pipelined write, so a read costs one round
trip per node, all nodes at once (the 500 videos of a read hash to ~500 slots, so a per-slot MGET would
buy nothing). No step relies on a multi-key transaction: the load's registration writes its
loading marker before registering the namespace, so a clean-up never sees one without the other.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterError, RedisClusterException, TryAgainError

from reels.feature_store.breaker import CircuitBreaker
from reels.feature_store.layout import DEFAULT_PREFIX, SEEN_DTYPE, VIDEO_RECORD, Keys, user_record
from reels.workflows.errors import InvalidInput, NotFound, ReelsError, ServiceUnavailable
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.offline_store import OfflineStore

# Redis cannot answer now: unreachable, timed out, or (Redis Cluster) a slot without a primary while a
# replica takes over (SlotNotCoveredError, a RedisClusterException), or a slot being migrated, or no node
# reachable at all: redis-py then raises a bare RedisClusterException ("Redis Cluster cannot be
# connected"), which is not a RedisError. (Its other use, keys of one command in several slots, cannot
# happen here: every multi-key command stays in one slot.)
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException, TryAgainError)

FAULT_ENV = "REELS_FAULT"  # names a crash point (``<job>:<point>``) for the fault-injection tests


def fault_point(name: str) -> None:
    """Crash injection for tests: SIGKILL this process here when ``$REELS_FAULT`` equals ``name`` (nothing
    runs after it: no ``finally``, no clean-up, as with a power cut or the OOM killer)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class FeatureStoreError(ReelsError):
    """Base class of the online store's errors."""


class FeatureStoreUnavailable(FeatureStoreError, ServiceUnavailable):
    """Redis cannot be reached (or timed out): callers serve their documented fallback."""


class NoActiveNamespace(FeatureStoreError, NotFound):
    """Nothing has been loaded yet."""


@dataclass(frozen=True)
class LoadReport:
    """What one load wrote: the new namespace (``v<N>``), record counts per kind and the wall seconds."""

    namespace: str
    users: int
    videos: int
    seen_lists: int
    seconds: float

    @property
    def keys_per_s(self) -> float:
        """User, video and seen-list keys written per wall-clock second."""
        return (self.users + self.videos + self.seen_lists) / self.seconds


@dataclass
class OnlineRows:
    """One request's features: ``user`` is None for unknown users; ``videos`` holds only known videos
    (``video_ids`` are their raw ids, in request order); ``seen`` the raw ids already shown;
    ``hidden_creators`` the raw creator ids the user hid."""

    user: np.void | None
    video_ids: np.ndarray
    videos: np.ndarray
    seen: np.ndarray
    hidden_creators: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))


def _pack(frame: pd.DataFrame, dtype: np.dtype) -> np.ndarray:
    records = np.zeros(len(frame), dtype=dtype)
    for name in dtype.names:
        column = frame[name]
        records[name] = np.stack(column.to_numpy()) if column.dtype == object else column.to_numpy()
    return records


def transformed_videos(features: FeatureArtifacts) -> pd.DataFrame:
    """The feature build's transformed videos (spec columns + ``raw_video_id``) with ``upload_time`` in unix
    seconds from the offline store: what a load packs into the video records."""
    videos = pd.read_parquet(features.videos_path)
    upload = OfflineStore(features.manifest().store).read_table("videos").set_index("video_id")["upload_time"]
    videos["upload_time"] = upload.reindex(videos["raw_video_id"]).astype("int64").to_numpy() // 10**9
    return videos


def pack_videos(videos: pd.DataFrame) -> np.ndarray:
    """``VIDEO_RECORD`` records of ``transformed_videos`` rows, in row order (a load writes each one's
    ``tobytes()`` under its video key; a release's in-memory video table holds the same records)."""
    return _pack(videos, VIDEO_RECORD)


def _known_videos(raw_video_ids: np.ndarray, values: list) -> tuple[np.ndarray, np.ndarray]:
    """The ids found in Redis (request order) and their decoded records; missing videos are skipped."""
    found = [i for i, v in enumerate(values) if v is not None]
    return raw_video_ids[found], np.frombuffer(b"".join(values[i] for i in found), dtype=VIDEO_RECORD)


class OnlineStore:
    """Reads and loads packed feature records in Redis under namespaced keys (``Keys``); Redis failures
    surface as ``FeatureStoreUnavailable``, an empty store as ``NoActiveNamespace``."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        namespace_ttl_s: float = 1.0,
        pinned_namespace: str | None = None,
        unavailable_pause_s: float = 0.0,
        loading_ttl_s: int = 60,
    ):
        """``pinned_namespace``: always read this namespace instead of the active one (a served release
        reads the features it was loaded with, so two releases can serve side by side during a swap).
        ``loading_ttl_s``: how long a load's marker lives without a new batch; after that a namespace
        without meta counts as a crashed load's."""
        self.client = client
        self.cluster = isinstance(client, RedisCluster)  # reads go per node, not as one MGET
        self.loading_ttl_s = loading_ttl_s
        self.pinned_namespace = pinned_namespace
        self.keys = Keys(prefix)
        self.namespace_ttl_s = namespace_ttl_s
        self._namespace: str | None = None
        self._namespace_read_at = 0.0
        self._user_dtype: np.dtype | None = None
        # Circuit breaker: after Redis failed, reads fail at once (instead of each waiting for a timeout)
        # until a background PING, every unavailable_pause_s, answers (0: off). Serving sets it; its
        # callers then serve their flagged fallback.
        self.unavailable_pause_s = unavailable_pause_s
        self.breaker = (
            CircuitBreaker(client.ping, probe_every_s=unavailable_pause_s, name="online store")
            if unavailable_pause_s
            else None
        )

    # ---- loading ----------------------------------------------------------------------------------------
    def load(
        self,
        features: FeatureArtifacts,
        seen_limit: int = 500,
        batch: int = 5_000,
        activate: bool = True,
        pin: bool = False,
    ) -> LoadReport:
        """Load transformed users, videos and seen lists from a feature build into a new namespace, then
        make it the active one (or leave that to a later ``activate``, as a model promotion does).
        ``pin``: pin the namespace from its first key on (a promotion's release will read it)."""
        try:
            return self._load(features, seen_limit, batch, activate, pin)
        except UNAVAILABLE as exc:
            raise FeatureStoreUnavailable(f"Redis unreachable during load: {exc}") from exc

    def _load(
        self, features: FeatureArtifacts, seen_limit: int, batch: int, activate: bool, pin: bool
    ) -> LoadReport:
        started = time.perf_counter()
        manifest = features.manifest()
        history_length = manifest.history_length
        users = pd.read_parquet(features.users_path)
        videos = transformed_videos(features)
        offline = OfflineStore(manifest.store)
        events = offline.read_events(columns=["user_id", "video_id", "timestamp"]).compute()
        events = events.sort_values("timestamp", kind="stable")
        recent = (
            events.groupby("user_id").tail(seen_limit).sort_values(["user_id", "timestamp"], kind="stable")
        )
        seen_users = recent["user_id"].to_numpy()
        bounds = np.flatnonzero(np.diff(seen_users)) + 1
        seen = dict(
            zip(
                seen_users[np.r_[0, bounds]] if len(seen_users) else [],
                np.split(recent["video_id"].to_numpy(dtype=SEEN_DTYPE), bounds),
                strict=False,
            )
        )
        source = {
            "store_fingerprint": manifest.store_fingerprint,
            "features": str(features.root.resolve()),
        }
        return self.load_frames(users, videos, seen, history_length, source, batch, started, activate, pin)

    def load_frames(
        self,
        users: pd.DataFrame,
        videos: pd.DataFrame,
        seen: dict[int, np.ndarray],
        history_length: int,
        source: dict[str, str] | None = None,
        batch: int = 5_000,
        started: float | None = None,
        activate: bool = True,
        pin: bool = False,
    ) -> LoadReport:
        """Load already-transformed frames (spec columns + raw ids; videos with upload_time in unix s)."""
        started = time.perf_counter() if started is None else started
        user_dtype = user_record(history_length)
        user_records = _pack(users, user_dtype)
        video_records = pack_videos(videos)
        namespace = f"v{int(self.client.incr(self.keys.load_counter))}"
        loading = self.keys.loading(namespace)
        # The marker first: a clean-up never sees the namespace registered without its loading marker
        # (and these keys live in different slots of a cluster, so no transaction could cover them).
        self.client.set(loading, 1, ex=self.loading_ttl_s)
        self.client.sadd(self.keys.namespaces, namespace)
        if pin:
            self.client.sadd(self.keys.pinned, namespace)
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        batches = 0

        def flush_if(full: bool) -> None:
            nonlocal pending, batches
            if pending and (full or pending >= batch):
                pipe.set(loading, 1, ex=self.loading_ttl_s)  # still alive: keep the marker
                pipe.execute()
                pending = 0
                batches += 1
                if batches == 1:
                    fault_point("load:after_batch")

        for raw, record in zip(users["raw_user_id"].to_numpy(), user_records, strict=True):
            pipe.set(self.keys.user(namespace, int(raw)), record.tobytes())
            pending += 1
            flush_if(False)
        for raw, record in zip(videos["raw_video_id"].to_numpy(), video_records, strict=True):
            pipe.set(self.keys.video(namespace, int(raw)), record.tobytes())
            pending += 1
            flush_if(False)
        for raw, ids in seen.items():
            pipe.set(self.keys.seen(namespace, int(raw)), ids.tobytes())
            pending += 1
            flush_if(False)
        flush_if(True)
        meta = {
            "user_record": json.dumps(user_dtype.descr),
            "video_record": json.dumps(VIDEO_RECORD.descr),
            "history_length": history_length,
            "users": len(users),
            "videos": len(videos),
            "seen_lists": len(seen),
            **(source or {}),
            "loaded_at": pd.Timestamp.utcnow().isoformat(),
        }
        self.client.hset(self.keys.meta(namespace), mapping={k: str(v) for k, v in meta.items()})
        if activate:
            self.activate(namespace)
        # Only now: until activated (or pinned), the marker keeps another process's clean-up off it.
        self.client.delete(loading)
        return LoadReport(namespace, len(users), len(videos), len(seen), time.perf_counter() - started)

    def activate(self, namespace: str) -> None:
        """Make ``namespace`` the one readers and the ingest workers use (one SET: atomic), keep the one it
        replaces for requests still in flight, and drop every other namespace that is neither pinned nor
        being loaded (``collect_garbage``)."""
        if not self.client.exists(self.keys.meta(namespace)):
            raise NoActiveNamespace(f"namespace {namespace!r} was never loaded")
        previous = self.client.set(self.keys.active, namespace, get=True)
        self.collect_garbage(keep={namespace, previous.decode() if previous else None})
        self._namespace = None  # re-read on next access

    def meta(self, namespace: str | None = None) -> dict[str, str]:
        """The meta hash of ``namespace`` (default: the one read now) as str -> str; empty if never loaded."""
        raw = self.client.hgetall(self.keys.meta(namespace or self.namespace()))
        return {k.decode(): v.decode() for k, v in raw.items()}

    # ---- pinned namespaces and clean-up -----------------------------------------------------------------
    def pin(self, namespace: str) -> None:
        """Keep ``namespace`` through every activation (a release in a model repository reads it)."""
        self.client.sadd(self.keys.pinned, namespace)

    def unpin(self, namespace: str) -> None:
        """No release reads ``namespace`` any more: the next clean-up may drop it unless it is active."""
        self.client.srem(self.keys.pinned, namespace)

    def pinned(self) -> set[str]:
        """The pinned namespaces."""
        return {ns.decode() for ns in self.client.smembers(self.keys.pinned)}

    def set_pinned(self, namespaces: set[str]) -> None:
        """Replace the pinned set (a fresh model repository whose releases read exactly ``namespaces``)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.pinned)
        if namespaces:
            pipe.sadd(self.keys.pinned, *namespaces)
        pipe.execute()

    def namespaces(self) -> set[str]:
        """Every namespace with keys in Redis as far as the store knows: registered by a load, or with meta
        (namespaces loaded before the registry existed)."""
        prefix = self.keys.prefix + ":"
        known = {ns.decode() for ns in self.client.smembers(self.keys.namespaces)}
        for key in self.client.scan_iter(match=self.keys.meta_pattern, count=1000):
            known.add(key.decode().removeprefix(prefix).split(":")[0])
        return known

    def collect_garbage(self, keep: set[str | None] = frozenset()) -> list[str]:
        """Drop every namespace that is not active, not in ``keep``, not being loaded and not pinned; a
        namespace without meta whose loading marker expired (a crashed load) is dropped even when pinned.
        Returns the dropped namespaces."""
        active = self.client.get(self.keys.active)
        keep = set(keep) | {active.decode() if active else None}
        pinned = self.pinned()
        dropped = []
        for ns in sorted(self.namespaces() - keep):
            if self.client.exists(self.keys.loading(ns)):
                continue  # a load in progress (maybe in another process)
            if ns in pinned and self.client.exists(self.keys.meta(ns)):
                continue  # a release reads it
            self.drop(ns)
            dropped.append(ns)
        return dropped

    def drop(self, namespace: str) -> None:
        """Delete every key of ``namespace`` and forget it (never the active one: ``InvalidInput``)."""
        active = self.client.get(self.keys.active)
        if active is not None and active.decode() == namespace:
            raise InvalidInput(f"namespace {namespace!r} is the active one: activate another first")
        batch = []
        for key in self.client.scan_iter(match=self.keys.namespace_pattern(namespace), count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                self.client.unlink(*batch)
                batch = []
        if batch:
            self.client.unlink(*batch)  # split per slot by redis-py on a cluster
        # Unpinned before it is forgotten: a crash in between leaves a registered namespace without keys,
        # which the next clean-up drops again.
        self.client.srem(self.keys.pinned, namespace)
        self.client.srem(self.keys.namespaces, namespace)

    # ---- reading ----------------------------------------------------------------------------------------
    def _tripped(self, exc: Exception) -> FeatureStoreUnavailable:
        """Open the circuit breaker (when one is set) and describe the failure."""
        if self.breaker is not None:
            self.breaker.trip(exc)
        return FeatureStoreUnavailable(f"Redis unreachable: {exc}")

    def _check_breaker(self) -> None:
        if self.breaker is not None and self.breaker.is_open:
            raise FeatureStoreUnavailable("Redis failed moments ago: skipping it until a probe answers")

    def namespace(self) -> str:
        """The namespace reads use: the pinned one, else ``{prefix}:active``, cached for ``namespace_ttl_s``;
        raises ``NoActiveNamespace`` when nothing is loaded."""
        now = time.monotonic()
        if self._namespace is None or now - self._namespace_read_at > self.namespace_ttl_s:
            try:
                value = self.pinned_namespace or self.client.get(self.keys.active)
                if value is None:
                    raise NoActiveNamespace(
                        "the online store is empty: run `reels serve` or `reels load` first"
                    )
                namespace = value.decode() if isinstance(value, bytes) else value
                if namespace != self._namespace or self._user_dtype is None:
                    meta = self.client.hget(self.keys.meta(namespace), "user_record")
                    if meta is None:
                        raise NoActiveNamespace(f"the online store has no namespace {namespace!r}")
                    self._user_dtype = np.dtype(
                        [tuple(f) if len(f) == 2 else (f[0], f[1], tuple(f[2])) for f in json.loads(meta)]
                    )
            except UNAVAILABLE as exc:
                raise self._tripped(exc) from exc
            self._namespace, self._namespace_read_at = namespace, now
        return self._namespace

    def read(self, raw_user_id: int, raw_video_ids: np.ndarray) -> OnlineRows:
        """The user's record, their seen list and every known candidate video in one round trip."""
        self._check_breaker()
        ns = self.namespace()
        raw_video_ids = np.asarray(raw_video_ids, dtype=np.int64)
        keys = [self.keys.user(ns, raw_user_id)] + [self.keys.video(ns, int(v)) for v in raw_video_ids]
        seen_key, hidden_key, meta_key = (
            self.keys.seen(ns, raw_user_id), self.keys.hidden_creators(raw_user_id), self.keys.meta(ns)
        )  # fmt: skip
        try:
            if self.cluster:
                replies = self._cluster_read(
                    [("GET", k) for k in keys]
                    + [("GET", seen_key), ("SMEMBERS", hidden_key), ("EXISTS", meta_key)]
                )
                values, (seen_blob, hidden, loaded) = replies[:-3], replies[-3:]
            else:
                pipe = self.client.pipeline(transaction=False)
                pipe.mget(keys)
                pipe.get(seen_key)
                pipe.smembers(hidden_key)
                pipe.exists(meta_key)
                values, seen_blob, hidden, loaded = pipe.execute()
        except UNAVAILABLE as exc:
            raise self._tripped(exc) from exc
        self._check_loaded(ns, loaded)
        user = np.frombuffer(values[0], dtype=self._user_dtype)[0] if values[0] is not None else None
        seen = np.frombuffer(seen_blob, dtype=SEEN_DTYPE) if seen_blob else np.array([], dtype=SEEN_DTYPE)
        hidden_creators = np.array(sorted(int(c) for c in hidden), dtype=np.int64)
        return OnlineRows(user, *_known_videos(raw_video_ids, values[1:]), seen, hidden_creators)

    def read_videos(self, raw_video_ids: np.ndarray) -> OnlineRows:
        """Known videos among ``raw_video_ids`` (one MGET, one round trip); ``user`` and ``seen`` are left
        empty."""
        self._check_breaker()
        ns = self.namespace()
        raw_video_ids = np.asarray(raw_video_ids, dtype=np.int64)
        keys = [self.keys.video(ns, int(v)) for v in raw_video_ids]
        try:
            if self.cluster:
                *values, loaded = self._cluster_read(
                    [("GET", k) for k in keys] + [("EXISTS", self.keys.meta(ns))]
                )
            else:
                pipe = self.client.pipeline(transaction=False)
                pipe.mget(keys)
                pipe.exists(self.keys.meta(ns))
                values, loaded = pipe.execute()
        except UNAVAILABLE as exc:
            raise self._tripped(exc) from exc
        self._check_loaded(ns, loaded)
        return OnlineRows(None, *_known_videos(raw_video_ids, values), np.array([], dtype=SEEN_DTYPE))

    def mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` (None: missing), in order: one MGET on a single server, one MGET per
        slot in one pipeline on a cluster."""
        return self.client.mget_nonatomic(keys) if self.cluster else self.client.mget(keys)

    def _cluster_read(self, commands: list[tuple[str, str]]) -> list:
        """The replies of single-key read ``commands`` (name, key) on a Redis Cluster, in order, one round
        trip per node (``per_node``). When that fails (a stale slot map: MOVED/ASK, a node gone, a
        failover under way) the read is done again by redis-py's cluster pipeline, which follows
        redirections and refreshes the map; the cluster pipeline alone costs ~20 us of Python per command
        (~10 ms per 500 keys), hence the direct path first."""
        try:
            return self.per_node(commands, [key for _, key in commands])
        except (redis.RedisError, OSError, KeyError, IndexError):
            pipe = self.client.pipeline(transaction=False)
            for name, key in commands:
                pipe.execute_command(name, key)
            return pipe.execute()

    def per_node(self, commands: list[tuple], keys: list[str]) -> list:
        """Run ``commands`` (argument tuples, each touching one slot: ``keys[i]``'s) on a Redis Cluster and
        return their replies in order: the commands are grouped by the primary that owns their slot in
        the client's slot map, each node gets its share in one pipelined write, then every node's replies
        are read (one round trip per node, all nodes at once). An error reply (``MOVED`` from a stale
        map, ``NOSCRIPT``, ...) or a lost connection raises, after dropping the connections whose replies
        were left unread; callers retry through redis-py's cluster pipeline."""
        slots = self.client.nodes_manager.slots_cache
        by_node: dict[str, tuple] = {}
        for i, key in enumerate(keys):
            node = slots[key_slot(key.encode())][0]  # the slot's primary
            by_node.setdefault(node.name, (node, []))[1].append(i)
        sent = []
        try:
            for node, indices in by_node.values():
                pool = self.client.get_redis_connection(node).connection_pool
                connection = pool.get_connection()
                sent.append((pool, connection, indices))
                connection.send_packed_command(connection.pack_commands([commands[i] for i in indices]))
            replies: list = [None] * len(commands)
            for _, connection, indices in sent:
                for i in indices:
                    replies[i] = connection.read_response()  # raises on an error reply
            return replies
        except BaseException:
            for _, connection, _ in sent:
                connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            for pool, connection, _ in sent:
                pool.release(connection)

    def _check_loaded(self, namespace: str, loaded: int) -> None:
        """Raise ``NoActiveNamespace`` when ``namespace``'s meta is gone: Redis restarted without its data
        (or the namespace was dropped). Checked in the same round trip as each read, so known users are
        never mistaken for cold starts, not even for the namespace cache's second."""
        if not loaded:
            self._namespace = None
            raise NoActiveNamespace(
                f"the online store lost namespace {namespace!r}: reload it (`reels load`)"
            )

    def read_user(self, raw_user_id: int) -> tuple[np.void | None, np.ndarray]:
        """The user's packed record (None if unknown) and their int64 raw seen video ids, in one round trip."""
        rows = self.read(raw_user_id, np.array([], dtype=np.int64))
        return rows.user, rows.seen

    def hidden_creators(self, raw_user_id: int) -> np.ndarray:
        """The raw creator ids the user hid, int64, ascending (empty if none)."""
        return self.read(raw_user_id, np.array([], dtype=np.int64)).hidden_creators
