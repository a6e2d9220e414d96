"""Pipeline steps 2-4 (retrieval, ranking, diversity re-rank) and the in-process pipeline.

The same classes run inside the Triton python-backend models (``model_repository/*/1/model.py`` only
converts tensors) and in-process (``InProcessPipeline``, the comparison baseline of the serving benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from reels.feature_store.serving import (
    CONTEXT_FIELDS,
    QUERY_USER_FIELDS,
    Fallback,
    FeatureTransform,
    QueryFeatures,
    Request,
)
from reels.feature_store.store import FeatureStoreUnavailable, OnlineStore
from reels.feature_store.transform import RequestEncoder
from reels.models.config import RANKER_TASKS
from reels.models.index import load_index
from reels.models.inputs import ITEM_FEATURES, QUERY_FEATURES, RANKER_FEATURES
from reels.models.ranker import ExportedRanker
from reels.models.train import check_manifest
from reels.models.two_tower import QueryTower
from reels.workflows.features import HISTORY
from reels.workflows.offline_store import OfflineStore
from reels.workflows.pipeline import FeatureArtifacts


@dataclass(frozen=True)
class ServingConfig:
    candidates: int = 500  # retrieved and ranked per request
    max_k: int = 100
    mmr_lambda: float = 0.7  # 1 = pure score, 0 = pure diversity
    max_per_creator: int = 2
    max_per_category: int = 5
    exploration_slots: int = 2  # positions reserved for fresh videos
    fresh_hours: float = 48.0
    trending_days: int = 3
    trending_size: int = 1000


def trending(store: OfflineStore, days: int, limit: int) -> np.ndarray:
    """Raw ids of the most watched (not skipped) videos over the store's last ``days`` days."""
    last = store.days()[-1] + pd.Timedelta(days=1)
    events = store.read_events(
        last - pd.Timedelta(days=days), last, columns=["video_id", "skipped"]
    ).compute()
    counts = events.loc[~events["skipped"], "video_id"].value_counts()
    return counts.index.to_numpy(dtype=np.int64)[:limit]


class Catalog:
    """In-memory item side: embeddings by raw id, creator/category/upload time, encoded -> raw ids."""

    def __init__(self, model_dir: Path, features: FeatureArtifacts):
        stored = pd.read_parquet(model_dir / "item_embeddings.parquet")
        self.raw_ids = stored["raw_video_id"].to_numpy(dtype=np.int64)
        embeddings = np.stack(stored["embedding"].to_numpy()).astype(np.float32)
        self.unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        self.row_of = pd.Series(np.arange(len(self.raw_ids)), index=self.raw_ids)
        raw = OfflineStore(features.manifest()["store"]).read_table("videos").set_index("video_id")
        raw = raw.reindex(self.raw_ids)
        self.creator = raw["creator_id"].fillna(-1).to_numpy(dtype=np.int64)
        self.category = raw["category"].fillna("").to_numpy()
        categories, self.category_code = np.unique(self.category, return_inverse=True)
        self.n_categories = len(categories)
        self.upload_s = raw["upload_time"].astype("int64").to_numpy() // 10**9
        encoded = stored["video_id"].to_numpy()
        known = encoded > 2  # OOV/null ids are shared by many videos: no unique raw id to explain with
        self.raw_of_encoded = pd.Series(self.raw_ids[known], index=encoded[known])
        self.raw_of_encoded = self.raw_of_encoded[~self.raw_of_encoded.index.duplicated()]

    def rows(self, raw_ids: np.ndarray) -> np.ndarray:
        return self.row_of.reindex(raw_ids).to_numpy()


class Retrieval:
    def __init__(
        self, query_tower: QueryTower, index: faiss.Index, trending_ids: np.ndarray, config: ServingConfig
    ):
        self.query_tower = query_tower
        self.index = index
        self.trending_ids = trending_ids
        self.config = config

    def __call__(self, query: QueryFeatures, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate raw ids and retrieval scores, without ``excluded`` (seen / hidden) videos."""
        n = self.config.candidates
        if query.fallback != Fallback.NONE:
            ids = self.trending_ids[~np.isin(self.trending_ids, excluded)][:n]
            return ids, np.linspace(1.0, 0.0, len(ids), dtype=np.float32)
        embedding = self.query_tower({name: query.features[name] for name in QUERY_FEATURES})
        scores, ids = self.index.search(np.ascontiguousarray(embedding, dtype=np.float32), n + len(excluded))
        keep = (ids[0] >= 0) & ~np.isin(ids[0], excluded)
        return ids[0][keep][:n], scores[0][keep][:n]


class Ranking:
    def __init__(self, store: OnlineStore, ranker: ExportedRanker, encoder: RequestEncoder):
        self.store = store
        self.ranker = ranker
        self.encoder = encoder

    def __call__(
        self, query: QueryFeatures, candidates: np.ndarray, retrieval_scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fallback]:
        """Known candidates, final scores, per-task predictions (n, 4) and the fallback in force."""
        fallback = query.fallback
        try:
            rows = self.store.read_videos(candidates) if len(candidates) else None
        except FeatureStoreUnavailable:
            rows = None
            fallback = Fallback.STORE_UNAVAILABLE
        if rows is None or len(rows.video_ids) == 0:
            tasks = np.full((len(candidates), len(RANKER_TASKS)), np.nan, dtype=np.float32)
            return candidates, retrieval_scores.astype(np.float32), tasks, fallback
        n = len(rows.video_ids)
        inputs = {}
        for name in QUERY_USER_FIELDS + CONTEXT_FIELDS:
            value = query.features[name]
            inputs[name] = np.repeat(value, n, axis=0)
        for name in ITEM_FEATURES:
            inputs[name] = rows.videos[name]
        inputs["video_age"] = self.encoder.video_age(
            np.full(n, query.request_time_s), rows.videos["upload_time"]
        )
        out = self.ranker({name: inputs[name] for name in RANKER_FEATURES})
        tasks = np.stack([out[t] for t in RANKER_TASKS], axis=1).astype(np.float32)
        return rows.video_ids, out["score"].astype(np.float32), tasks, fallback


@dataclass
class Recommendation:
    video_ids: np.ndarray
    scores: np.ndarray
    task_predictions: np.ndarray  # (k, len(RANKER_TASKS)), NaN where ranking was skipped (fallback)
    explanation_ids: np.ndarray  # raw id of the most similar video in the user's history, -1 if none
    fallback: Fallback


class DiversityRerank:
    def __init__(self, catalog: Catalog, config: ServingConfig):
        self.catalog = catalog
        self.config = config

    def __call__(
        self,
        candidates,
        scores,
        tasks,
        history_encoded: np.ndarray,
        k: int,
        request_time_s: int,
        fallback: Fallback,
    ) -> Recommendation:
        cfg, cat = self.config, self.catalog
        rows = cat.rows(candidates)
        known = ~np.isnan(rows)
        candidates, scores, tasks, rows = (
            candidates[known],
            scores[known],
            tasks[known],
            rows[known].astype(np.int64),
        )
        n = len(candidates)
        if n == 0:
            empty = np.array([], dtype=np.int64)
            return Recommendation(
                empty, np.array([], np.float32), np.zeros((0, len(RANKER_TASKS)), np.float32), empty, fallback
            )
        unit = cat.unit[rows]
        span = scores.max() - scores.min()
        relevance = (scores - scores.min()) / span if span > 0 else np.ones(n)
        # Caps are counted per creator / category code, vectorised (no per-candidate Python loop).
        creator_code = np.unique(cat.creator[rows], return_inverse=True)[1]
        category_code = cat.category_code[rows]
        creator_count = np.zeros(creator_code.max() + 1, dtype=np.int64)
        category_count = np.zeros(cat.n_categories, dtype=np.int64)
        fresh = (request_time_s - cat.upload_s[rows]) < cfg.fresh_hours * 3600
        n_explore = min(cfg.exploration_slots, int(fresh.sum()), max(k - 1, 0))
        selected: list[int] = []
        max_sim = np.zeros(n)  # similarity to the closest selected item (0 before the first pick)
        available = np.ones(n, dtype=bool)
        base = cfg.mmr_lambda * relevance

        def pick(mask: np.ndarray, strict: bool) -> int | None:
            allowed = available & mask
            if strict:
                allowed &= (creator_count[creator_code] < cfg.max_per_creator) & (
                    category_count[category_code] < cfg.max_per_category
                )
            if not allowed.any():
                return None
            mmr = base - (1 - cfg.mmr_lambda) * max_sim
            return int(np.argmax(np.where(allowed, mmr, -np.inf)))

        def take(i: int) -> None:
            selected.append(i)
            available[i] = False
            creator_count[creator_code[i]] += 1
            category_count[category_code[i]] += 1
            similarity = unit @ unit[i]
            if len(selected) == 1:
                max_sim[:] = similarity
            else:
                np.maximum(max_sim, similarity, out=max_sim)

        everything = np.ones(n, dtype=bool)
        while len(selected) < min(k - n_explore, n):
            i = pick(everything, strict=True)
            if i is None:  # caps cannot be met by what is left: fill by MMR alone (documented fallback)
                i = pick(everything, strict=False)
            take(i)
        # Exploration: fresh videos in fixed, evenly spread slots (issue #5 adds bandits and propensities).
        slots = [int(round((j + 1) * k / (n_explore + 1))) for j in range(n_explore)]
        for slot in slots:
            i = pick(fresh, strict=True)
            if i is None:
                i = pick(fresh, strict=False)
            if i is None:
                break
            take(i)
            selected.insert(min(slot, len(selected) - 1), selected.pop())
        while len(selected) < min(k, n):  # exploration found too few fresh videos
            take(pick(everything, strict=False))
        order = np.array(selected, dtype=np.int64)
        return Recommendation(
            candidates[order],
            scores[order],
            tasks[order],
            self._explain(unit[order], history_encoded),
            fallback,
        )

    def _explain(self, unit: np.ndarray, history_encoded: np.ndarray) -> np.ndarray:
        history_raw = self.catalog.raw_of_encoded.reindex(history_encoded[history_encoded > 2]).dropna()
        if history_raw.empty:
            return np.full(len(unit), -1, dtype=np.int64)
        history_ids = history_raw.to_numpy(dtype=np.int64)
        history_unit = self.catalog.unit[self.catalog.rows(history_ids).astype(np.int64)]
        return history_ids[np.argmax(unit @ history_unit.T, axis=1)]


class InProcessPipeline:
    """feature_transform -> retrieval -> ranking -> diversity_rerank, in one Python process."""

    def __init__(self, model_dir: str | Path, store: OnlineStore, config: ServingConfig | None = None):
        model_dir = Path(model_dir)
        manifest = check_manifest(model_dir)
        features = FeatureArtifacts(Path(manifest["features"]["path"]))
        self.config = config or ServingConfig()
        encoder = RequestEncoder(features.workflow_dir)
        history_length = features.manifest()["feature_config"]["history_length"]
        offline = OfflineStore(features.manifest()["store"])
        self.feature_transform = FeatureTransform(store, encoder, history_length)
        self.retrieval = Retrieval(
            QueryTower(model_dir / "query_tower"), load_index(model_dir / "items.faiss"),
            trending(offline, self.config.trending_days, self.config.trending_size), self.config,
        )  # fmt: skip
        self.ranking = Ranking(store, ExportedRanker(model_dir / "ranker"), encoder)
        self.rerank = DiversityRerank(Catalog(model_dir, features), self.config)

    def recommend(self, request: Request) -> Recommendation:
        request.validate(self.config.max_k)
        query = self.feature_transform(request)
        candidates, retrieval_scores = self.retrieval(query, query.seen)
        ids, scores, tasks, fallback = self.ranking(query, candidates, retrieval_scores)
        return self.rerank(
            ids, scores, tasks, query.features[HISTORY][0], request.k, query.request_time_s, fallback
        )
