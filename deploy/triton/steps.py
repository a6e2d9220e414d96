"""The four Triton pipeline steps as plain classes over numpy tensors, so each ``model.py`` in
``model_repository/`` stays a thin converter and the same code is unit-testable without Triton.

Tensor contract (names are the config.pbtxt names; order of packed features comes from the feature spec):

==================  ======================  =========================================================
tensor              dtype / shape           content
==================  ======================  =========================================================
user_id             INT64 [1]               raw user id (>= 0)
k                   INT32 [1]               videos to return (1..max_k)
device              BYTES [1]               ios | android | web | "" (unknown)
hour                INT32 [1]               0-23 UTC, -1 = from request_time
request_time        INT64 [1]               unix seconds, 0 = now
query_categorical   INT64 [7]               QUERY_CATEGORICAL ids (user fields + device, hour, day_of_week)
query_continuous    FP32 [4]                USER_CONTINUOUS values
history_video_ids   INT64 [L]               encoded ids of the last viewed videos, 0-padded
seen_video_ids      INT64 [-1]              raw ids to exclude
hidden_creator_ids  INT64 [-1]              raw creator ids the user hid (their videos are dropped)
query_fallback      INT32 [1]               0 none, 1 cold start (trending), 2 feature store unavailable
request_time_s      INT64 [1]               the request time actually used
candidate_ids       INT64 [-1]              retrieved raw ids;   retrieval_scores FP32 [-1]
ranked_ids          INT64 [-1]              rankable raw ids;    ranking_scores FP32 [-1]
candidate_task_predictions FP32 [-1, 4]     view, liked, completed, watch_fraction per ranked id
ranking_fallback    INT32 [1]               the fallback in force after ranking (codes as ``query_fallback``)
video_ids           INT64 [-1]              the response: raw video ids in feed order (at most k)
scores              FP32 [-1]               ranking score per returned video
task_predictions    FP32 [-1, 4]            per returned video, as candidate_task_predictions
explanation_ids     INT64 [-1]              raw id of the most similar history video, -1 if none
propensities        FP32 [-1]               P(video in its slot | request, earlier slots); 1 = ranked
fallback            INT32 [1]               the fallback in force for the response (codes as ``query_fallback``)
variant             BYTES [1]               the user's experiment variant ("default" without experiment)
request_seal        BYTES [1]               HMAC of the request and step 1's outputs (``REQUEST_SEAL``)
candidates_seal     BYTES [1]               HMAC of the candidates, chained to request_seal
ranked_seal         BYTES [1]               HMAC of the ranking outputs, chained to request_seal
==================  ======================  =========================================================

Each step declares the seals it ``checks`` on its inputs and the ones it ``seals`` on its outputs
(``deploy/triton/seal.py``); the adapter applies them, so a step called directly with tensors that no
earlier step of this server produced answers invalid-argument instead of running.

Metrics: a step reports what it served to its ``metrics`` attribute (a ``MetricsSink``; ``NO_METRICS``
unless the adapter gave it one), by family name (``adapter.FAMILIES``) and labels; no step knows Triton.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from reels.deploy.triton.release import Release
from reels.deploy.triton.seal import Seal
from reels.feature_store.streams import ExposureLog
from reels.models.config import RANKER_TASKS
from reels.models.serving.catalog import Catalog
from reels.models.serving.feature_transform import FeatureTransform
from reels.models.serving.ranking import Ranking
from reels.models.serving.request import BadRequest, Fallback, QueryFeatures, Request
from reels.models.serving.rerank import DiversityRerank
from reels.models.serving.retrieval import Retrieval
from reels.workflows.spec import HISTORY, REQUEST_CONTEXT, USER_CATEGORICAL, USER_CONTINUOUS

QUERY_CATEGORICAL = USER_CATEGORICAL + REQUEST_CONTEXT


class MetricsSink(Protocol):
    """Where a step reports what it served (the adapter's ``Counts`` inside Triton)."""

    def count(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        """Add ``value`` to counter ``name``'s series ``labels``."""

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Record one observation of histogram ``name``'s series ``labels``."""


class NoMetrics:
    """The sink of a step outside Triton: every report is dropped."""

    def count(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        """Drop the increment."""

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Drop the observation."""


NO_METRICS = NoMetrics()
FALLBACK_LABELS = {fallback: fallback.name.lower() for fallback in Fallback}  # none, cold_start, ...

# What step 1 derived from a validated request: every later step reads (a part of) it, so all of it is
# sealed and passed on whole.
REQUEST_SEAL = Seal(
    "request_seal",
    (
        "user_id", "k", "request_time_s", "query_categorical", "query_continuous", "history_video_ids",
        "seen_video_ids", "hidden_creator_ids", "query_fallback",
    ),
)  # fmt: skip
CANDIDATES_SEAL = Seal("candidates_seal", ("candidate_ids", "retrieval_scores"), chain="request_seal")
RANKED_SEAL = Seal(
    "ranked_seal",
    ("ranked_ids", "ranking_scores", "candidate_task_predictions", "ranking_fallback"),
    chain="request_seal",
)
SEALED_REQUEST = (*REQUEST_SEAL.covers, REQUEST_SEAL.name)


def pack(query: QueryFeatures) -> dict[str, np.ndarray]:
    """Step 1's output tensors from the query features (the layout in the module docstring)."""
    f = query.features
    return {
        "query_categorical": np.concatenate([f[n].reshape(1) for n in QUERY_CATEGORICAL]).astype(np.int64),
        "query_continuous": np.concatenate([f[n].reshape(1) for n in USER_CONTINUOUS]).astype(np.float32),
        "history_video_ids": f[HISTORY].reshape(-1).astype(np.int64),
        "seen_video_ids": query.seen.astype(np.int64),
        "hidden_creator_ids": query.hidden_creators.astype(np.int64),
        "query_fallback": np.array([int(query.fallback)], dtype=np.int32),
        "request_time_s": np.array([query.request_time_s], dtype=np.int64),
    }


def unpack(t: dict[str, np.ndarray]) -> QueryFeatures:
    """The query features back from step 1's tensors (the inverse of ``pack``)."""
    features = {n: t["query_categorical"][i : i + 1] for i, n in enumerate(QUERY_CATEGORICAL)}
    features.update({n: t["query_continuous"][i : i + 1] for i, n in enumerate(USER_CONTINUOUS)})
    features[HISTORY] = t["history_video_ids"].reshape(1, -1)
    seen = t.get("seen_video_ids", np.array([], dtype=np.int64))
    hidden = t.get("hidden_creator_ids", np.array([], dtype=np.int64))
    return QueryFeatures(
        features, seen, Fallback(int(t["query_fallback"][0])), int(t["request_time_s"][0]), hidden
    )


class FeatureTransformStep:
    """Step 1 over tensors: validates the request, then ``FeatureTransform``; output packed for step 2."""

    inputs = ("user_id", "k", "device", "hour", "request_time")
    checks: tuple[Seal, ...] = ()
    seals = (REQUEST_SEAL,)
    metrics: MetricsSink = NO_METRICS

    def __init__(self, release: Release):
        self.max_k = release.serving.max_k
        self.store = release.store()
        self.transform = FeatureTransform(self.store, release.encoder(), release.history_length)

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.inputs:
            if np.asarray(tensors[name]).size != 1:
                raise BadRequest(
                    f"{name} must hold exactly one value, got shape {np.asarray(tensors[name]).shape}"
                )
        user_id, k, device, hour, request_time = (tensors[name] for name in self.inputs)
        raw_device = device.reshape(-1)[0]
        try:
            raw_device = raw_device.decode() if isinstance(raw_device, bytes) else str(raw_device)
        except UnicodeDecodeError as exc:
            raise BadRequest(f"device must be UTF-8 text, got {raw_device[:32]!r}") from exc
        request = Request(
            user_id=int(user_id.reshape(-1)[0]),
            k=int(k.reshape(-1)[0]),
            device=raw_device or None,
            hour=None if int(hour.reshape(-1)[0]) < 0 else int(hour.reshape(-1)[0]),
            request_time_s=int(request_time.reshape(-1)[0]) or None,
        ).validate(self.max_k)
        return pack(self.transform(request))


class RetrievalStep:
    """Step 2 over tensors: ``Retrieval`` with the release's query tower, FAISS index and trending feed."""

    inputs = SEALED_REQUEST
    checks = (REQUEST_SEAL,)
    seals = (CANDIDATES_SEAL,)
    metrics: MetricsSink = NO_METRICS

    def __init__(self, release: Release):
        from reels.models.index import load_index
        from reels.models.query_tower_numpy import load_query_tower

        # serving.query_tower_backend: numpy (default; no TensorFlow call per request) or the SavedModel.
        tower = load_query_tower(release.model_dir / "query_tower", release.serving.query_tower_backend)
        self.retrieval = Retrieval(
            tower, load_index(release.model_dir / "items.faiss"),
            release.trending_ids(), release.serving, Catalog(release.model_dir, release.video_metadata()),
        )  # fmt: skip

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query = unpack(tensors)
        ids, scores = self.retrieval(query, query.seen)
        self.metrics.observe(
            "reels_candidates_retrieved", len(ids), {"fallback": FALLBACK_LABELS[query.fallback]}
        )
        return {"candidate_ids": ids.astype(np.int64), "retrieval_scores": scores.astype(np.float32)}

    def metric_series(self) -> list[tuple[str, dict[str, str]]]:
        """The series this step reports, declared at zero when the model loads."""
        return [("reels_candidates_retrieved", {"fallback": f}) for f in FALLBACK_LABELS.values()]


class RankingStep:
    """Step 3 over tensors: ``Ranking`` with the release's exported MMoE and its video table (or, with
    ``video_features: redis``, the online store)."""

    inputs = (*SEALED_REQUEST, *CANDIDATES_SEAL.covers, CANDIDATES_SEAL.name)
    checks = (REQUEST_SEAL, CANDIDATES_SEAL)
    seals = (RANKED_SEAL,)
    metrics: MetricsSink = NO_METRICS

    def __init__(self, release: Release):
        from reels.models.ranker_numpy import load_ranker

        # serving.video_features: memory (default) reads candidate video records from the table the release
        # carries, so this step needs no Redis; redis reads them from the online store per request.
        memory = release.serving.video_features == "memory"
        self.store = None if memory else release.store()
        videos = release.video_table() if memory else self.store
        # serving.ranker_backend: the numpy forward of the exported weights (default; TensorFlow is then
        # never imported by this step) or the SavedModel.
        backend = release.serving.ranker_backend
        ranker = load_ranker(release.model_dir / "ranker", backend)
        self.ranking = Ranking(
            videos, ranker, release.encoder(), backend, release.serving.retrieval_weight, release.experiment
        )

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query = unpack(tensors)
        ids, scores, tasks, fallback = self.ranking(
            query,
            tensors["candidate_ids"],
            tensors["retrieval_scores"],
            int(tensors["user_id"].reshape(-1)[0]),
        )
        return {
            "ranked_ids": ids.astype(np.int64),
            "ranking_scores": scores.astype(np.float32),
            "candidate_task_predictions": tasks.astype(np.float32),
            "ranking_fallback": np.array([int(fallback)], dtype=np.int32),
        }


class DiversityRerankStep:
    """Step 4 over tensors: ``DiversityRerank`` for the user's variant; logs the feed as an exposure."""

    inputs = (*SEALED_REQUEST, *RANKED_SEAL.covers, RANKED_SEAL.name)
    checks = (REQUEST_SEAL, RANKED_SEAL)
    seals: tuple[Seal, ...] = ()
    metrics: MetricsSink = NO_METRICS

    def __init__(self, release: Release):
        self.max_k = release.serving.max_k
        self.store = None
        exposures = None
        if release.serving.log_exposures:
            self.store = release.store()
            exposures = ExposureLog(self.store.client, self.store.keys.prefix)
        self.rerank = DiversityRerank(
            Catalog(release.model_dir, release.video_metadata()),
            release.serving,
            release.experiment,
            exposures,
        )

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        k = int(tensors["k"].reshape(-1)[0])
        if not 0 < k <= self.max_k:
            raise BadRequest(f"k must be between 1 and {self.max_k}, got {k}")
        exposures = self.rerank.exposures
        lost_before = exposures.failed if exposures is not None else 0
        out = self.rerank(
            tensors["ranked_ids"], tensors["ranking_scores"], tensors["candidate_task_predictions"].reshape(-1, len(RANKER_TASKS)),
            tensors["history_video_ids"], k, int(tensors["request_time_s"][0]),
            Fallback(int(tensors["ranking_fallback"][0])), user_id=int(tensors["user_id"].reshape(-1)[0]),
            hidden_creators=tensors["hidden_creator_ids"].reshape(-1),
        )  # fmt: skip
        self._report(out, exposures.failed - lost_before if exposures is not None else 0)
        return {
            "video_ids": out.video_ids.astype(np.int64),
            "scores": out.scores.astype(np.float32),
            "task_predictions": out.task_predictions.astype(np.float32).reshape(-1, len(RANKER_TASKS)),
            "explanation_ids": out.explanation_ids.astype(np.int64),
            "fallback": np.array([int(out.fallback)], dtype=np.int32),
            "propensities": out.propensities.astype(np.float32),
            "variant": np.array([out.variant.encode()], dtype=object),
        }

    def _report(self, out, lost: int) -> None:
        """One feed served: its fallback, how its slots were filled, and its exposure entry if lost."""
        variant = {"variant": out.variant}
        self.metrics.count(
            "reels_feeds_total", {**variant, "fallback": FALLBACK_LABELS[Fallback(out.fallback)]}
        )
        ranked = int((np.asarray(out.pool) == 0).sum())
        random = int(np.asarray(out.explored, dtype=bool).sum())  # every explored slot is an exploration slot
        for slot, n in (("ranked", ranked), ("exploration_greedy", len(out.pool) - ranked - random),
                        ("exploration_random", random)):  # fmt: skip
            self.metrics.count("reels_feed_slots_total", {**variant, "slot": slot}, n)
        self.metrics.count("reels_exposure_log_failures_total", None, lost)

    def metric_series(self) -> list[tuple[str, dict[str, str]]]:
        """The series this step reports, declared at zero when the model loads (per experiment variant)."""
        variants = list(self.rerank.variant_configs)
        series = [
            ("reels_feeds_total", {"variant": v, "fallback": f})
            for v in variants
            for f in FALLBACK_LABELS.values()
        ]
        series += [
            ("reels_feed_slots_total", {"variant": v, "slot": slot})
            for v in variants
            for slot in ("ranked", "exploration_greedy", "exploration_random")
        ]
        if self.rerank.exposures is not None:
            series.append(("reels_exposure_log_failures_total", {}))
        return series


STEP_CLASSES = {
    "feature_transform": FeatureTransformStep,
    "retrieval": RetrievalStep,
    "ranking": RankingStep,
    "diversity_rerank": DiversityRerankStep,
}
