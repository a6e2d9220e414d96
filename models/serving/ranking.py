"""Pipeline step 3, ``ranking``: candidate video features and the MMoE over all candidates in one batch.

The candidates' video records come from the release's in-memory ``VideoTable`` (the serving setting
``video_features: memory``, the default: they are static within the release's namespace) or from Redis
(``video_features: redis``); only the Redis read can fail, and then the step serves a flagged fallback.

The ranker runs as its numpy forward (``reels.models.ranker_numpy``: the user side once per request,
broadcast over the candidates) when its export holds ``ranker.npz``, else as the SavedModel; the serving
setting ``ranker_backend: savedmodel`` keeps the SavedModel."""

from __future__ import annotations

import numpy as np

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import FeatureStoreError
from reels.models.config import RANKER_TASKS
from reels.models.inputs import ITEM_FEATURES
from reels.models.ranker import ExportedRanker
from reels.models.ranker_numpy import NumpyRanker, with_backend
from reels.models.serving.request import (
    QUERY_USER_FIELDS,
    Fallback,
    QueryFeatures,
)
from reels.models.serving.video_table import VideoReader
from reels.workflows.spec import REQUEST_CONTEXT


class Ranking:
    """Step 3: scores the retrieved candidates with the exported MMoE over their video features."""

    def __init__(
        self,
        videos: VideoReader,
        ranker: ExportedRanker | NumpyRanker,
        encoder: RequestEncoder,
        backend: str = "numpy",
    ):
        """``videos``: where candidate video records are read (a ``VideoTable`` or the ``OnlineStore``);
        ``ranker``: the exported ranker; ``backend`` (``numpy`` | ``savedmodel``) picks how it runs: a
        SavedModel whose folder holds ``ranker.npz`` runs as ``NumpyRanker`` unless it is ``savedmodel``."""
        self.videos = videos
        self.ranker = with_backend(ranker, backend)
        self.encoder = encoder

    @property
    def store(self) -> VideoReader:
        """Where candidate video records are read (the name callers used when that was always Redis)."""
        return self.videos

    def __call__(
        self, query: QueryFeatures, candidates: np.ndarray, retrieval_scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fallback]:
        """The candidates with video features (raw video ids, input order), their float32 combined scores,
        per-task predictions (n, len(RANKER_TASKS)) and the fallback in force; without video features, the
        input candidates with their retrieval scores and NaN predictions."""
        fallback = query.fallback
        try:
            rows = self.videos.read_videos(candidates) if len(candidates) else None
        except FeatureStoreError:  # Redis unreachable, or restarted empty (no namespace): flagged fallback
            rows = None
            fallback = Fallback.STORE_UNAVAILABLE
        if rows is None or len(rows.video_ids) == 0:
            tasks = np.full((len(candidates), len(RANKER_TASKS)), np.nan, dtype=np.float32)
            return candidates, retrieval_scores.astype(np.float32), tasks, fallback
        n = len(rows.video_ids)
        user = {name: query.features[name] for name in QUERY_USER_FIELDS + REQUEST_CONTEXT}
        items = {name: rows.videos[name] for name in ITEM_FEATURES}
        items["video_age"] = self.encoder.video_age(
            np.full(n, query.request_time_s), rows.videos["upload_time"]
        )
        out = self.ranker.score_candidates(user, items)  # the user side once, not once per candidate
        tasks = np.stack([out[t] for t in RANKER_TASKS], axis=1).astype(np.float32)
        return rows.video_ids, out["score"].astype(np.float32), tasks, fallback
