"""Pipeline step 1, ``feature_transform``: a request's user features, history and seen list from Redis,
plus its context encoded with the fitted workflow's vocabularies.

Fallbacks (flagged in ``Fallback``, never an exception): an unknown user is a cold start (retrieval
serves trending videos); Redis unreachable, or restarted without its data (no namespace loaded), serves
the trending feed to everybody, flagged, until it is back or reloaded.
"""

from __future__ import annotations

import numpy as np

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import FeatureStoreError, OnlineStore
from reels.models.serving.request import QUERY_USER_FIELDS, Fallback, QueryFeatures, Request
from reels.workflows.spec import HISTORY, OOV, REQUEST_CONTEXT, USER_CATEGORICAL, USER_CONTINUOUS


class FeatureTransform:
    """Step 1: turns a validated ``Request`` into model-ready 1-row ``QueryFeatures`` (user record from Redis,
    encoded context), falling back to the OOV user on a cold start or an unreachable store."""

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
        except FeatureStoreError:  # unreachable, or restarted empty (no namespace): flagged fallback
            user, seen, fallback = None, np.array([], dtype=np.int64), Fallback.STORE_UNAVAILABLE
        features = {name: context[name].reshape(1) for name in REQUEST_CONTEXT}
        if user is not None:
            for name in QUERY_USER_FIELDS:
                value = np.asarray(user[name])
                features[name] = value.reshape(1, -1) if name == HISTORY else value.reshape(1)
        else:  # cold start: the OOV user with an empty history (the models have seen OOV ids in training)
            for name in USER_CATEGORICAL:
                features[name] = np.array([OOV], dtype=np.int64)
            for name in USER_CONTINUOUS:
                features[name] = np.zeros(1, dtype=np.float32)
            features[HISTORY] = np.zeros((1, self.history_length), dtype=np.int64)
        return QueryFeatures(features, seen, fallback, int(request.request_time_s), hidden)
