"""Online-store benchmark against a real redis-server on loopback: pipelined bulk load of 100k users and
100k videos (keys/s) and the read of one user + 500 candidate videos (p50/p95/p99), each next to its
baseline in the same run — one SET per round trip for the load, one GET per key for the read.

Records are random but shaped exactly like the feature build's output (the spec's columns and dtypes).

    reels bench store [--users 100000] [--videos 100000] [--record]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from reels.client.record import machine
from reels.deploy.config import Config
from reels.workflows.spec import (
    HISTORY,
    USER_CATEGORICAL,
    USER_CONTINUOUS,
    VIDEO_CATEGORICAL,
    VIDEO_CONTINUOUS,
)


def frames(
    n_users: int, n_videos: int, history_length: int = 20, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, np.ndarray]]:
    """Random user rows, video rows and seen lists shaped like a feature build's (the spec's columns)."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({c: rng.integers(0, 1000, n_users) for c in USER_CATEGORICAL})
    for c in USER_CONTINUOUS:
        users[c] = rng.random(n_users, dtype=np.float32)
    users[HISTORY] = list(rng.integers(0, n_videos, (n_users, history_length)))
    users["raw_user_id"] = np.arange(n_users, dtype=np.int64)
    videos = pd.DataFrame({c: rng.integers(0, 1000, n_videos) for c in VIDEO_CATEGORICAL})
    for c in VIDEO_CONTINUOUS:
        videos[c] = rng.random(n_videos, dtype=np.float32)
    videos["upload_time"] = rng.integers(1_700_000_000, 1_800_000_000, n_videos)
    videos["raw_video_id"] = np.arange(n_videos, dtype=np.int64)
    seen = {u: rng.integers(0, n_videos, 100).astype(np.int64) for u in range(n_users)}
    return users, videos, seen


def _percentiles(ms: list[float]) -> dict:
    a = np.array(ms)
    return {f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 95, 99)}


def run(n_users: int, n_videos: int, reads: int) -> dict:
    """Bulk load and read latency on a temporary redis-server, each next to its baseline."""
    from reels.deploy.stack import temporary_store

    users, videos, seen = frames(n_users, n_videos)
    with temporary_store(maxmemory="4gb") as store:
        client = store.client
        report = store.load_frames(users, videos, seen, history_length=20)
        # Baseline: the same kind of SET, one round trip each, on a 10k-key sample.
        sample = [(f"bench:{i}", bytes(100)) for i in range(10_000)]
        t0 = time.perf_counter()
        for key, value in sample:
            client.set(key, value)
        unpipelined = len(sample) / (time.perf_counter() - t0)

        rng = np.random.default_rng(1)
        one_trip, per_key = [], []
        for _ in range(reads):
            user = int(rng.integers(0, n_users))
            candidates = rng.integers(0, n_videos, 500)
            t0 = time.perf_counter()
            rows = store.read(user, candidates)
            one_trip.append((time.perf_counter() - t0) * 1000)
            assert rows.user is not None and len(rows.video_ids) == 500
        ns = store.namespace()
        for _ in range(max(reads // 10, 20)):
            user = int(rng.integers(0, n_users))
            candidates = rng.integers(0, n_videos, 500)
            t0 = time.perf_counter()
            client.get(store.keys.user(ns, user))
            client.get(store.keys.seen(ns, user))
            for v in candidates:
                client.get(store.keys.video(ns, int(v)))
            per_key.append((time.perf_counter() - t0) * 1000)
    read = _percentiles(one_trip)
    baseline = _percentiles(per_key)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": f"reels bench store --users {n_users} --videos {n_videos}",
        "load": {
            "users": report.users, "videos": report.videos, "seen_lists": report.seen_lists,
            "seconds": report.seconds, "keys_per_s": report.keys_per_s, "unpipelined_keys_per_s": unpipelined,
        },
        "read_user_plus_500": {**read, "per_key_get_baseline": baseline, "speedup_p50": baseline["p50_ms"] / read["p50_ms"]},
    }  # fmt: skip


def table(r: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    load, read = r["load"], r["read_user_plus_500"]
    base = read["per_key_get_baseline"]
    return "\n".join(
        [
            f"### Online store (Redis) — {r['date']}",
            "",
            f"Machine: {r['machine']}. Command: `{r['command']}`; real redis-server 7.0 on loopback.",
            "",
            f"- Bulk load, pipelined (5,000 commands per round trip): {load['users']:,} users + {load['videos']:,} "
            f"videos + {load['seen_lists']:,} seen lists in {load['seconds']:.1f} s = **{load['keys_per_s']:,.0f} keys/s** "
            f"(baseline, one SET per round trip: {load['unpipelined_keys_per_s']:,.0f} keys/s, "
            f"{load['keys_per_s'] / load['unpipelined_keys_per_s']:.1f}x).",
            f"- Read one user + seen list + 500 videos, one round trip (MGET + GET): p50 {read['p50_ms']:.2f} ms, "
            f"p95 {read['p95_ms']:.2f} ms, p99 {read['p99_ms']:.2f} ms (baseline, 502 GETs: p50 {base['p50_ms']:.1f} ms, "
            f"p99 {base['p99_ms']:.1f} ms; {read['speedup_p50']:.0f}x).",
            "",
        ]
    )


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench store`: ``--users`` users and ``--videos`` videos, ``--reads`` timed reads."""
    return run(args.users, args.videos, args.reads)
