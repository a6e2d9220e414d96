"""The feature spec: every feature's name, group and id encoding, in one place. The NVTabular workflow
(``reels.workflows.features``), the Redis record layouts (``reels.feature_store.layout``), the Triton
tensors and the models' inputs all derive from these tuples. Importing this module is cheap (no
NVTabular), so the CLI and the serving adapters can read the spec without loading the ML stack.

Id contract (NVTabular ``Categorify``): ``PAD`` 0 = padding, ``NULL`` 1 = null, ``OOV`` 2 = out of
vocabulary (unseen, or seen fewer than ``freq_threshold`` times in the training window), ``FIRST_ID`` 3..
= the vocabulary, row ``i`` of ``unique.<col>.parquet`` having id ``FIRST_ID + i``.
"""

from __future__ import annotations

PAD, NULL, OOV = 0, 1, 2
FIRST_ID = 3
# Raw ids (events, users, videos) stay below 2^53: the ingest script's Lua numbers are doubles.
MAX_RAW_ID = 2**53 - 1

USER_CATEGORICAL = ("user_id", "age_bucket", "country", "user_language")
USER_CONTINUOUS = ("user_event_count", "user_like_rate", "user_completion_rate", "user_watch_fraction")
VIDEO_CATEGORICAL = (
    "video_id",
    "creator_id",
    "category",
    "audio_track_id",
    "video_language",
    "duration_bucket",
)
VIDEO_CONTINUOUS = (
    "duration",
    "video_view_count",
    "video_like_rate",
    "video_completion_rate",
    "video_watch_fraction",
)
CONTEXT_CATEGORICAL = ("device", "hour", "day_of_week", "position")
CONTEXT_CONTINUOUS = ("video_age",)
BINARY_LABELS = ("view", "liked", "completed", "shared")
REGRESSION_LABELS = ("watch_fraction",)
HISTORY = "history_video_ids"
# Carried through untransformed: raw keys for joins and the online store, time for splits and history.
PASSTHROUGH = ("event_id", "raw_user_id", "raw_video_id", "event_time")

DURATION_BUCKETS_S = (5.0, 10.0, 15.0, 30.0, 60.0, 120.0)
# Request-time context: known only when a request arrives, encoded online with the fitted vocabularies.
REQUEST_CONTEXT = ("device", "hour", "day_of_week")
