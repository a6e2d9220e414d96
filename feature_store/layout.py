"""Redis key schema and record layouts of the online feature store.

Keys (``{ns}`` is a load's namespace, e.g. ``v3``; ``{prefix}`` defaults to ``reels``)::

    {prefix}:active                    STRING  the namespace readers use; swapped atomically by a new load
    {prefix}:{ns}:meta                 HASH    record layouts (JSON), row counts, source fingerprints, time
    {prefix}:{ns}:user:{raw_user_id}   STRING  one packed user record (see USER_RECORD)
    {prefix}:{ns}:video:{raw_video_id} STRING  one packed video record (see VIDEO_RECORD)
    {prefix}:{ns}:seen:{raw_user_id}   STRING  packed int64 raw video ids the user has already been shown
                                               (the newest 500 at load; streamed events append, and the
                                               list is trimmed back to 500 once it reaches 1,000)
    {prefix}:hidden_creators:{raw_user_id}  SET  raw creator ids the user hid (any namespace)

Records are fixed-layout little-endian numpy structured records (``dtype.tobytes()``), so one ``MGET``
of a user and 500 videos decodes with a single ``np.frombuffer`` per kind: no per-field parsing. Field
names and order come from the feature spec (``reels.workflows.features``) and the values are the
*already transformed* model inputs (Categorify ids, standardised floats) written by the feature build.
"""

from __future__ import annotations

import numpy as np

from reels.workflows.features import (
    HISTORY,
    USER_CATEGORICAL,
    USER_CONTINUOUS,
    VIDEO_CATEGORICAL,
    VIDEO_CONTINUOUS,
)

DEFAULT_PREFIX = "reels"


def user_record(history_length: int) -> np.dtype:
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


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix

    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    def meta(self, ns: str) -> str:
        return f"{self.prefix}:{ns}:meta"

    def user(self, ns: str, raw_user_id: int) -> str:
        return f"{self.prefix}:{ns}:user:{raw_user_id}"

    def video(self, ns: str, raw_video_id: int) -> str:
        return f"{self.prefix}:{ns}:video:{raw_video_id}"

    def seen(self, ns: str, raw_user_id: int) -> str:
        return f"{self.prefix}:{ns}:seen:{raw_user_id}"

    def hidden_creators(self, raw_user_id: int) -> str:
        """Creators the user hid: raw ids, so it outlives namespace swaps (a SET, not per namespace)."""
        return f"{self.prefix}:hidden_creators:{raw_user_id}"

    def namespace_pattern(self, ns: str) -> str:
        return f"{self.prefix}:{ns}:*"
