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
fallback            INT32 [1]               0 none, 1 cold start (trending), 2 feature store unavailable
request_time_s      INT64 [1]               the request time actually used
candidate_ids       INT64 [-1]              retrieved raw ids;   retrieval_scores FP32 [-1]
ranked_ids          INT64 [-1]              rankable raw ids;    ranking_scores FP32 [-1]
candidate_task_predictions FP32 [-1, 4]     view, liked, completed, watch_fraction per ranked id
video_ids, scores, task_predictions, explanation_ids, propensities (FP32 [-1]): the response (k rows)
variant             BYTES [1]               the user's experiment variant ("default" without experiment)
==================  ======================  =========================================================
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import OnlineStore, connect
from reels.models.serving.experiment import Experiment, ExposureLog
from reels.models.serving.pipeline import (
    Catalog,
    DiversityRerank,
    Ranking,
    Retrieval,
    ServingConfig,
    trending,
)
from reels.models.serving.request import (
    CONTEXT_FIELDS,
    BadRequest,
    Fallback,
    FeatureTransform,
    QueryFeatures,
    Request,
)
from reels.workflows.features import HISTORY, USER_CATEGORICAL, USER_CONTINUOUS

QUERY_CATEGORICAL = USER_CATEGORICAL + CONTEXT_FIELDS


def pack(query: QueryFeatures) -> dict[str, np.ndarray]:
    f = query.features
    return {
        "query_categorical": np.concatenate([f[n].reshape(1) for n in QUERY_CATEGORICAL]).astype(np.int64),
        "query_continuous": np.concatenate([f[n].reshape(1) for n in USER_CONTINUOUS]).astype(np.float32),
        "history_video_ids": f[HISTORY].reshape(-1).astype(np.int64),
        "seen_video_ids": query.seen.astype(np.int64),
        "hidden_creator_ids": query.hidden_creators.astype(np.int64),
        "fallback": np.array([int(query.fallback)], dtype=np.int32),
        "request_time_s": np.array([query.request_time_s], dtype=np.int64),
    }


def unpack(t: dict[str, np.ndarray]) -> QueryFeatures:
    features = {n: t["query_categorical"][i : i + 1] for i, n in enumerate(QUERY_CATEGORICAL)}
    features.update({n: t["query_continuous"][i : i + 1] for i, n in enumerate(USER_CONTINUOUS)})
    features[HISTORY] = t["history_video_ids"].reshape(1, -1)
    seen = t.get("seen_video_ids", np.array([], dtype=np.int64))
    hidden = t.get("hidden_creator_ids", np.array([], dtype=np.int64))
    return QueryFeatures(features, seen, Fallback(int(t["fallback"][0])), int(t["request_time_s"][0]), hidden)


def release_spec(repository: Path, version: int) -> Path:
    """Where a release's spec lives: a file at the repository root (Triton reads every folder there as a
    model, so release files must not be folders)."""
    return Path(repository) / f"serving-{version}.json"


def release_trending(repository: Path, version: int) -> Path:
    return Path(repository) / f"trending-{version}.npy"


class Runtime:
    """Reads a release's spec (written by ``reels export`` / a promotion) and builds only the parts a step
    needs. The step models of release ``N`` read ``serving-N.json``: model artifacts, feature workflow and
    the Redis namespace of that release, so two releases can be loaded side by side during a swap."""

    def __init__(self, repository: Path, version: int):
        spec = json.loads(release_spec(repository, version).read_text())
        self.version = version
        self.model_dir = Path(spec["model_dir"])
        self.features_dir = Path(spec["features_dir"])
        self.redis = spec["redis"]
        self.namespace = spec.get("namespace")  # None: follow the store's active namespace
        known = {f.name for f in fields(ServingConfig)}
        self.config = ServingConfig(**{k: v for k, v in spec.get("serving", {}).items() if k in known})
        self.experiment = Experiment.from_dict(spec.get("experiment"))  # None: no A/B test
        self.history_length = int(spec["history_length"])
        self.trending_path = release_trending(repository, version)

    @classmethod
    def for_model(cls, args: dict) -> Runtime:
        """From the ``args`` Triton passes to ``initialize``: the model ``<step>_v<N>`` serves release N."""
        return cls(Path(args["model_repository"]).parent, int(args["model_name"].rsplit("_v", 1)[1]))

    def store(self) -> OnlineStore:
        return OnlineStore(
            connect(self.redis["host"], self.redis["port"], self.redis.get("password"), timeout_s=0.2),
            pinned_namespace=self.namespace,
        )

    def encoder(self) -> RequestEncoder:
        return RequestEncoder(self.features_dir / "workflow")


class FeatureTransformStep:
    def __init__(self, runtime: Runtime):
        self.max_k = runtime.config.max_k
        self.transform = FeatureTransform(runtime.store(), runtime.encoder(), runtime.history_length)

    def __call__(self, user_id, k, device, hour, request_time) -> dict[str, np.ndarray]:
        for name, value in (
            ("user_id", user_id),
            ("k", k),
            ("device", device),
            ("hour", hour),
            ("request_time", request_time),
        ):
            if np.asarray(value).size != 1:
                raise BadRequest(f"{name} must hold exactly one value, got shape {np.asarray(value).shape}")
        raw_device = device.reshape(-1)[0]
        raw_device = raw_device.decode() if isinstance(raw_device, bytes) else str(raw_device)
        request = Request(
            user_id=int(user_id.reshape(-1)[0]),
            k=int(k.reshape(-1)[0]),
            device=raw_device or None,
            hour=None if int(hour.reshape(-1)[0]) < 0 else int(hour.reshape(-1)[0]),
            request_time_s=int(request_time.reshape(-1)[0]) or None,
        ).validate(self.max_k)
        return pack(self.transform(request))


class RetrievalStep:
    def __init__(self, runtime: Runtime):
        from reels.models.index import load_index
        from reels.models.two_tower import QueryTower

        self.retrieval = Retrieval(
            QueryTower(runtime.model_dir / "query_tower"), load_index(runtime.model_dir / "items.faiss"),
            np.load(runtime.trending_path), runtime.config, Catalog(runtime.model_dir, _features(runtime)),
        )  # fmt: skip

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query = unpack(tensors)
        ids, scores = self.retrieval(query, query.seen)
        return {"candidate_ids": ids.astype(np.int64), "retrieval_scores": scores.astype(np.float32)}


class RankingStep:
    def __init__(self, runtime: Runtime):
        from reels.models.ranker import ExportedRanker

        self.ranking = Ranking(
            runtime.store(), ExportedRanker(runtime.model_dir / "ranker"), runtime.encoder()
        )

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query = unpack(tensors)
        ids, scores, tasks, fallback = self.ranking(
            query, tensors["candidate_ids"], tensors["retrieval_scores"]
        )
        return {
            "ranked_ids": ids.astype(np.int64),
            "ranking_scores": scores.astype(np.float32),
            "candidate_task_predictions": tasks.astype(np.float32),
            "ranking_fallback": np.array([int(fallback)], dtype=np.int32),
        }


class DiversityRerankStep:
    def __init__(self, runtime: Runtime):
        self.max_k = runtime.config.max_k
        exposures = None
        if runtime.config.log_exposures:
            store = runtime.store()
            exposures = ExposureLog(store.client, store.keys.prefix)
        self.rerank = DiversityRerank(
            Catalog(runtime.model_dir, _features(runtime)), runtime.config, runtime.experiment, exposures
        )

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        k = int(tensors["k"].reshape(-1)[0])
        if not 0 < k <= self.max_k:
            raise BadRequest(f"k must be between 1 and {self.max_k}, got {k}")
        out = self.rerank(
            tensors["ranked_ids"], tensors["ranking_scores"], tensors["candidate_task_predictions"].reshape(-1, 4),
            tensors["history_video_ids"], k, int(tensors["request_time_s"][0]),
            Fallback(int(tensors["ranking_fallback"][0])), user_id=int(tensors["user_id"].reshape(-1)[0]),
            hidden_creators=tensors["hidden_creator_ids"].reshape(-1),
        )  # fmt: skip
        return {
            "video_ids": out.video_ids.astype(np.int64),
            "scores": out.scores.astype(np.float32),
            "task_predictions": out.task_predictions.astype(np.float32).reshape(-1, 4),
            "explanation_ids": out.explanation_ids.astype(np.int64),
            "fallback": np.array([int(out.fallback)], dtype=np.int32),
            "propensities": out.propensities.astype(np.float32),
            "variant": np.array([out.variant.encode()], dtype=object),
        }


def _features(runtime: Runtime):
    from reels.workflows.pipeline import FeatureArtifacts

    return FeatureArtifacts(runtime.features_dir)


def export_trending(path: Path, features_dir: Path, config: ServingConfig) -> np.ndarray:
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.pipeline import FeatureArtifacts

    store = OfflineStore(FeatureArtifacts(features_dir).manifest()["store"])
    ids = trending(store, config.trending_days, config.trending_size)
    np.save(path, ids)
    return ids
