"""Request types of the serving pipeline: the request, its validation, the query features passed between
steps and the fallback flags."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from reels.workflows.errors import InvalidInput
from reels.workflows.spec import HISTORY, MAX_RAW_ID, USER_CATEGORICAL, USER_CONTINUOUS

QUERY_USER_FIELDS = USER_CATEGORICAL + USER_CONTINUOUS + (HISTORY,)


class Fallback(enum.IntEnum):
    """Why a feed was not fully personalised (0 = it was); sent to clients as this integer."""

    NONE = 0
    COLD_START = 1  # unknown user: trending videos
    STORE_UNAVAILABLE = 2  # Redis unreachable: trending videos, no personal features


class BadRequest(InvalidInput):
    """Malformed request: reported to the caller as an invalid-argument error."""


# Request times outside this window are mistakes (milliseconds for seconds, a sign error): rejected.
EARLIEST_REQUEST_S = 946_684_800  # 2000-01-01 UTC
LATEST_REQUEST_S = 4_102_444_800  # 2100-01-01 UTC


@dataclass
class Request:
    """One recommendation request: a raw user id, feed length ``k`` and optional device, UTC hour and time."""

    user_id: int
    k: int = 20
    device: str | None = None
    hour: int | None = None  # 0-23 UTC; None = from request_time
    request_time_s: int | None = None  # unix seconds; None = now

    def validate(self, max_k: int) -> Request:
        """Check the fields (``BadRequest`` on an id outside 0..2^53-1, ``k`` outside 1..max_k, an hour
        outside 0-23 or a request time outside 2000-2100), fill a missing ``request_time_s`` with now, and
        return ``self``."""
        if not isinstance(self.user_id, int | np.integer) or not 0 <= self.user_id <= MAX_RAW_ID:
            raise BadRequest(f"user_id must be an integer between 0 and 2^53-1, got {self.user_id!r}")
        if not 0 < self.k <= max_k:
            raise BadRequest(f"k must be between 1 and {max_k}, got {self.k}")
        if self.hour is not None and not 0 <= self.hour <= 23:
            raise BadRequest(f"hour must be between 0 and 23, got {self.hour}")
        if (
            self.request_time_s is not None
            and not EARLIEST_REQUEST_S <= self.request_time_s < LATEST_REQUEST_S
        ):
            raise BadRequest(
                f"request_time must be unix seconds between 2000 and 2100 (or 0 for now), got {self.request_time_s}"
            )
        if self.request_time_s is None:
            self.request_time_s = int(time.time())
        return self


@dataclass
class QueryFeatures:
    """Everything the later steps need about the requester (1-row arrays, model-ready)."""

    features: dict[str, np.ndarray]  # QUERY_USER_FIELDS + REQUEST_CONTEXT, each shaped (1,) or (1, L)
    seen: np.ndarray  # raw video ids to exclude
    fallback: Fallback
    request_time_s: int
    hidden_creators: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))  # raw ids
