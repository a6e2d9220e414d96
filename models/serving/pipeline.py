"""The in-process pipeline: the four steps chained in one Python process (the same classes Triton runs)."""

from __future__ import annotations

from pathlib import Path

from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.store import OnlineStore
from reels.feature_store.streams import ExposureLog
from reels.models.index import load_index
from reels.models.query_tower_numpy import load_query_tower
from reels.models.ranker_numpy import load_ranker
from reels.models.registry import trained_features
from reels.models.serving.catalog import Catalog, trending, video_metadata
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.models.serving.feature_transform import FeatureTransform
from reels.models.serving.ranking import Ranking
from reels.models.serving.request import Request
from reels.models.serving.rerank import DiversityRerank, Recommendation
from reels.models.serving.retrieval import Retrieval
from reels.models.serving.video_table import VideoTable
from reels.workflows.offline_store import OfflineStore
from reels.workflows.spec import HISTORY


class InProcessPipeline:
    """feature_transform -> retrieval -> ranking -> diversity_rerank, in one Python process."""

    def __init__(
        self,
        model_dir: str | Path,
        store: OnlineStore,
        config: ServingConfig | None = None,
        experiment: Experiment | None = None,
    ):
        model_dir = Path(model_dir)
        features = trained_features(model_dir)
        self.config = config or ServingConfig()
        encoder = RequestEncoder(features.workflow_dir)
        manifest = features.manifest()
        offline = OfflineStore(manifest.store)  # read once here, as an export does; never per request
        self.feature_transform = FeatureTransform(store, encoder, manifest.history_length)
        catalog = Catalog(model_dir, video_metadata(offline))
        self.retrieval = Retrieval(
            load_query_tower(model_dir / "query_tower", self.config.query_tower_backend),
            load_index(model_dir / "items.faiss"),
            trending(offline, self.config.trending_days, self.config.trending_size), self.config, catalog,
        )  # fmt: skip
        backend = self.config.ranker_backend
        # video_features: memory (default) builds the release's video table from the same feature build
        videos = VideoTable.from_features(features) if self.config.video_features == "memory" else store
        self.ranking = Ranking(
            videos, load_ranker(model_dir / "ranker", backend), encoder, backend, self.config.retrieval_weight,
            experiment,
        )  # fmt: skip
        exposures = ExposureLog(store.client, store.keys.prefix) if self.config.log_exposures else None
        self.rerank = DiversityRerank(catalog, self.config, experiment, exposures)

    def recommend(self, request: Request) -> Recommendation:
        """The feed for one request (validated first: ``BadRequest`` on bad input)."""
        request.validate(self.config.max_k)
        query = self.feature_transform(request)
        candidates, retrieval_scores = self.retrieval(query, query.seen)
        ids, scores, tasks, fallback = self.ranking(query, candidates, retrieval_scores, request.user_id)
        return self.rerank(
            ids, scores, tasks, query.features[HISTORY][0], request.k, query.request_time_s, fallback,
            user_id=request.user_id, hidden_creators=query.hidden_creators,
        )  # fmt: skip
