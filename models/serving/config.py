"""The serving settings shared by every step (config section ``serving``)."""

from __future__ import annotations

from dataclasses import dataclass

from reels.models.ranker_numpy import BACKENDS as RANKER_BACKENDS
from reels.workflows.errors import ConfigError

VIDEO_FEATURE_SOURCES = ("memory", "redis")  # where the ranking step reads candidate video records


@dataclass(frozen=True)
class ServingConfig:
    """Retrieval, re-rank and exploration settings shared by every step (config section ``serving``);
    raises ``ConfigError`` on an out-of-range value."""

    candidates: int = 500  # retrieved and ranked per request
    max_k: int = 100
    mmr_lambda: float = 0.7  # 1 = pure score, 0 = pure diversity
    max_per_creator: int = 2
    max_per_category: int = 5
    fresh_candidates: int = 50  # of the candidates: fresh videos closest to the query (the exploration pool)
    exploration_slots: int = 2  # positions reserved for fresh videos
    exploration_epsilon: float = 0.2  # per exploration slot: P(a uniformly random fresh video)
    fresh_hours: float = 48.0
    trending_days: int = 3
    trending_size: int = 1000
    log_exposures: bool = True  # one entry per served feed in the Redis stream reels:exposures
    # numpy: the ranker's numpy forward (its export's ranker.npz; the SavedModel where that is absent);
    # savedmodel: the TensorFlow SavedModel
    ranker_backend: str = "numpy"
    # the same two backends for the two-tower's query tower (numpy needs its export's query_tower.npz,
    # written for mean history pooling; otherwise, and with savedmodel, the SavedModel runs)
    query_tower_backend: str = "numpy"
    # memory: candidate video records from the release's in-memory table (built from the same feature
    # build as the namespace it reads); redis: read from the online store on every request
    video_features: str = "memory"
    # The feed's score: z(ranker score) + retrieval_weight * z(two-tower score), both standardised over the
    # request's candidates; 0 (default) keeps the ranker's score alone. Offline, the blend lifts recall@20
    # of logged views far above the ranker alone; in simulated sessions (users answering from the synthetic
    # generator's true view and like probabilities) it lowers views and likes per impression. The ranker
    # predicts engagement once shown, which is what a feed is for; docs/TUNING.md "Feed score".
    retrieval_weight: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "candidates": self.candidates > 0,
            "max_k": self.max_k > 0,
            "mmr_lambda": 0.0 <= self.mmr_lambda <= 1.0,
            "max_per_creator": self.max_per_creator > 0,
            "max_per_category": self.max_per_category > 0,
            "fresh_candidates": 0 <= self.fresh_candidates <= self.candidates,
            "exploration_slots": self.exploration_slots >= 0,
            "exploration_epsilon": 0.0 <= self.exploration_epsilon <= 1.0,
            "fresh_hours": self.fresh_hours >= 0,
            "ranker_backend": self.ranker_backend in RANKER_BACKENDS,
            "query_tower_backend": self.query_tower_backend in RANKER_BACKENDS,
            "video_features": self.video_features in VIDEO_FEATURE_SOURCES,
            "retrieval_weight": self.retrieval_weight >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid serving config values: {bad} (got {self})")
