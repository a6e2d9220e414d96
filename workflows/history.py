"""Sessions and recent watch history, computed per user over time-ordered, already-encoded events.

Encoding first and deriving history second gives exactly the ids Categorify would give the raw history
(it maps value by value) without pushing millions of Python list objects through NVTabular, and the
online store keeps the same list with the same rule: append the encoded video id of every *viewed*
event, keep the newest ``length``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

SESSION_GAP_S = 30 * 60


def previous_views(
    user: np.ndarray,
    time: np.ndarray,
    order_key: np.ndarray,
    video: np.ndarray,
    viewed: np.ndarray,
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each event, the encoded ids of the last ``length`` videos the same user viewed strictly
    before it (by ``time``, ties broken by ``order_key``), most recent first, 0-padded.

    Returns ``(history, order)``: ``history`` is (n, length) int64 aligned with the input rows and
    ``order`` the row order sorted by (user, time, order_key).
    """
    n = len(user)
    order = np.lexsort((order_key, time, user))
    u, v, w = user[order], video[order], viewed[order].astype(bool)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    # Number of views before each event within its user: a running count reset at each user start.
    views_so_far = np.cumsum(w) - w  # views strictly before, over the whole array
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    before_user = views_so_far[user_start]
    count = views_so_far - before_user  # views by this user strictly before this event
    viewed_positions = np.flatnonzero(w)  # sorted positions of viewed events
    history_sorted = np.zeros((n, length), dtype=np.int64)
    for k in range(1, length + 1):
        has = count >= k
        # the k-th most recent earlier view is the (views_so_far - k)-th viewed event overall
        history_sorted[has, k - 1] = v[viewed_positions[views_so_far[has] - k]]
    history = np.empty_like(history_sorted)
    history[order] = history_sorted
    return history, order


def session_numbers(user: np.ndarray, time: np.ndarray, order: np.ndarray) -> np.ndarray:
    """0-based session index per user: a new session starts after ``SESSION_GAP_S`` of inactivity."""
    u, t = user[order], time[order]
    n = len(u)
    boundary = np.ones(n, dtype=bool)
    boundary[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > SESSION_GAP_S)
    sessions_so_far = np.cumsum(boundary) - 1
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    first = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    numbers_sorted = sessions_so_far - sessions_so_far[first]
    numbers = np.empty(n, dtype=np.int64)
    numbers[order] = numbers_sorted
    return numbers


def history_array(history: np.ndarray) -> pa.FixedSizeListArray:
    """A fixed-size Arrow list column from an (n, length) matrix, without per-row Python objects."""
    length = history.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(history.reshape(-1)), length)


def latest_history(
    user: np.ndarray, video: np.ndarray, viewed: np.ndarray, order: np.ndarray, length: int
) -> pd.DataFrame:
    """Each user's newest ``length`` viewed videos after all given events (for the online store)."""
    u, v, w = user[order], video[order], viewed[order].astype(bool)
    u, v = u[w], v[w]
    if len(u) == 0:
        return pd.DataFrame({"raw_user_id": pd.Series([], dtype=np.int64), "history_video_ids": []})
    last = np.ones(len(u), dtype=bool)
    last[:-1] = u[:-1] != u[1:]
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    rows = np.zeros((len(ends), length), dtype=np.int64)
    for k in range(length):
        idx = ends - k
        ok = idx >= starts
        rows[ok, k] = v[idx[ok]]
    return pd.DataFrame({"raw_user_id": u[ends], "history_video_ids": list(rows)})
