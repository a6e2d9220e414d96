"""Pipeline step 1, ``feature_transform``: a request's user features, history and seen list from Redis,
plus its context encoded with the fitted workflow's vocabularies.

Fallbacks (flagged in ``Fallback``, never an exception): an unknown user is a cold start (retrieval
serves trending videos); Redis unreachable serves the trending feed to everybody until it is back.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import FeatureStoreUnavailable, OnlineStore
from reels.workflows.features import HISTORY, USER_CATEGORICAL, USER_CONTINUOUS

QUERY_USER_FIELDS = USER_CATEGORICAL + USER_CONTINUOUS + (HISTORY,)
CONTEXT_FIELDS = ("device", "hour", "day_of_week")


class Fallback(enum.IntEnum):
    NONE = 0
    COLD_START = 1  # unknown user: trending videos
    STORE_UNAVAILABLE = 2  # Redis unreachable: trending videos, no personal features


class BadRequest(ValueError):
    """Malformed request: reported to the caller as an invalid-argument error."""


@dataclass
class Request:
    user_id: int
    k: int = 20
    device: str | None = None
    hour: int | None = None  # 0-23 UTC; None = from request_time
    request_time_s: int | None = None  # unix seconds; None = now

    def validate(self, max_k: int) -> Request:
        if not isinstance(self.user_id, int | np.integer) or self.user_id < 0:
            raise BadRequest(f"user_id must be a non-negative integer, got {self.user_id!r}")
        if not 0 < self.k <= max_k:
            raise BadRequest(f"k must be between 1 and {max_k}, got {self.k}")
        if self.hour is not None and not 0 <= self.hour <= 23:
            raise BadRequest(f"hour must be between 0 and 23, got {self.hour}")
        if self.request_time_s is None:
            self.request_time_s = int(time.time())
        return self


@dataclass
class QueryFeatures:
    """Everything the later steps need about the requester (1-row arrays, model-ready)."""

    features: dict[str, np.ndarray]  # QUERY_USER_FIELDS + CONTEXT_FIELDS, each shaped (1,) or (1, L)
    seen: np.ndarray  # raw video ids to exclude
    fallback: Fallback
    request_time_s: int
    hidden_creators: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))  # raw ids


class FeatureTransform:
    def __init__(self, store: OnlineStore, encoder: RequestEncoder, history_length: int):
        self.store = store
        self.encoder = encoder
        self.history_length = history_length

    def __call__(self, request: Request) -> QueryFeatures:
        context = self.encoder.context([request.device], [request.request_time_s])
        if request.hour is not None:
            context["hour"] = self.encoder.vocabularies["hour"].encode([request.hour])
        hidden = np.array([], dtype=np.int64)
        try:
            rows = self.store.read(int(request.user_id), np.array([], dtype=np.int64))
            user, seen, hidden = rows.user, rows.seen, rows.hidden_creators
            fallback = Fallback.NONE if user is not None else Fallback.COLD_START
        except FeatureStoreUnavailable:
            user, seen, fallback = None, np.array([], dtype=np.int64), Fallback.STORE_UNAVAILABLE
        features = {name: context[name].reshape(1) for name in CONTEXT_FIELDS}
        if user is not None:
            for name in QUERY_USER_FIELDS:
                value = np.asarray(user[name])
                features[name] = value.reshape(1, -1) if name == HISTORY else value.reshape(1)
        else:  # cold start: the OOV user with an empty history (the models have seen OOV ids in training)
            for name in USER_CATEGORICAL:
                features[name] = np.array([2], dtype=np.int64)
            for name in USER_CONTINUOUS:
                features[name] = np.zeros(1, dtype=np.float32)
            features[HISTORY] = np.zeros((1, self.history_length), dtype=np.int64)
        return QueryFeatures(features, seen, fallback, int(request.request_time_s), hidden)
