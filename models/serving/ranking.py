"""Pipeline step 3, ``ranking``: candidate video features and the MMoE over all candidates in one batch.

The candidates' video records come from the release's in-memory ``VideoTable`` (the serving setting
``video_features: memory``, the default: they are static within the release's namespace) or from Redis
(``video_features: redis``); only the Redis read can fail, and then the step serves a flagged fallback.

The ranker runs as its numpy forward (``reels.models.ranker_numpy``: the user side once per request,
broadcast over the candidates) when its export holds ``ranker.npz``, else as the SavedModel; the serving
setting ``ranker_backend: savedmodel`` keeps the SavedModel.

The score a candidate is ranked by is the ranker's weighted task predictions, optionally blended with the
two-tower's score (``blend``, serving setting ``retrieval_weight``, off by default): the ranker estimates
engagement once a video is shown, the two-tower how likely this user is to watch it at all. An A/B
experiment's variants may set their own weight: the step buckets the user as the re-rank does."""

from __future__ import annotations

import numpy as np

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import FeatureStoreError
from reels.models.config import RANKER_TASKS
from reels.models.inputs import ITEM_FEATURES
from reels.models.ranker import ExportedRanker
from reels.models.ranker_numpy import NumpyRanker, with_backend
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.models.serving.request import (
    QUERY_USER_FIELDS,
    Fallback,
    QueryFeatures,
)
from reels.models.serving.video_table import VideoReader
from reels.workflows.spec import REQUEST_CONTEXT


def standardised(values: np.ndarray) -> np.ndarray:
    """``values`` minus their mean, over their standard deviation (zeros where they are all equal)."""
    values = values.astype(np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def blend(ranker_scores: np.ndarray, retrieval_scores: np.ndarray, retrieval_weight: float) -> np.ndarray:
    """One request's feed scores: the ranker's scores where ``retrieval_weight`` is 0, else
    z(ranker) + ``retrieval_weight`` * z(retrieval), each standardised over the request's candidates (the
    two scores live on different scales: probabilities and dot products)."""
    if retrieval_weight == 0:
        return ranker_scores.astype(np.float32)
    mixed = standardised(ranker_scores) + retrieval_weight * standardised(retrieval_scores)
    return mixed.astype(np.float32)


def aligned(candidates: np.ndarray, scores: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``scores`` (one per ``candidates``) of the ids ``found``: a subsequence of ``candidates``, as a
    video read returns them (known videos, request order)."""
    order = np.argsort(candidates, kind="stable")
    return scores[order[np.searchsorted(candidates[order], found)]]


class Ranking:
    """Step 3: scores the retrieved candidates with the exported MMoE over their video features."""

    def __init__(
        self,
        videos: VideoReader,
        ranker: ExportedRanker | NumpyRanker,
        encoder: RequestEncoder,
        backend: str = "numpy",
        retrieval_weight: float = 0.0,
        experiment: Experiment | None = None,
    ):
        """``videos``: where candidate video records are read (a ``VideoTable`` or the ``OnlineStore``);
        ``ranker``: the exported ranker; ``backend`` (``numpy`` | ``savedmodel``) picks how it runs: a
        SavedModel whose folder holds ``ranker.npz`` runs as ``NumpyRanker`` unless it is ``savedmodel``;
        ``retrieval_weight``: the two-tower score's weight in the feed score (``blend``); ``experiment``:
        an A/B test whose variants may set their own ``retrieval_weight`` (by the user's variant)."""
        self.videos = videos
        self.retrieval_weight = retrieval_weight
        self.experiment = experiment
        # Each variant's weight as the experiment resolves its settings (the re-rank's own rule); a user is
        # bucketed per request only when the variants' weights differ.
        base = ServingConfig(retrieval_weight=retrieval_weight)
        weights = (
            {v: experiment.serving_config(v, base).retrieval_weight for v in experiment.names}
            if experiment
            else {}
        )
        distinct = set(weights.values())
        self.variant_weights = weights if len(distinct) > 1 else {}
        if len(distinct) == 1:  # every variant the same weight: that one, for everybody
            self.retrieval_weight = distinct.pop()
        self.ranker = with_backend(ranker, backend)
        self.encoder = encoder

    @property
    def store(self) -> VideoReader:
        """Where candidate video records are read (the name callers used when that was always Redis)."""
        return self.videos

    def weight_for(self, user_id: int | None) -> float:
        """The feed score's ``retrieval_weight`` for a raw user id: their experiment variant's where the
        variants' weights differ, else the one every user gets (also without a user id)."""
        if not self.variant_weights or user_id is None:
            return self.retrieval_weight
        return self.variant_weights[self.experiment.assign(user_id)]

    def __call__(
        self,
        query: QueryFeatures,
        candidates: np.ndarray,
        retrieval_scores: np.ndarray,
        user_id: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fallback]:
        """The candidates with video features (raw video ids, input order), their float32 feed scores,
        per-task predictions (n, len(RANKER_TASKS)) and the fallback in force; without video features, the
        input candidates with their retrieval scores and NaN predictions. ``user_id`` (raw) picks the
        experiment variant's feed score."""
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
        weight = self.weight_for(user_id)
        if weight:
            retrieval = aligned(np.asarray(candidates), np.asarray(retrieval_scores), rows.video_ids)
            scores = blend(out["score"], retrieval, weight)
        else:
            scores = out["score"].astype(np.float32)
        return rows.video_ids, scores, tasks, fallback
