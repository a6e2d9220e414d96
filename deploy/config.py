"""The whole configuration as typed sections (``Config``), as the commands and the deploy jobs take it.
Loading it from YAML with overrides is ``reels.client.config``; each section checks its own values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reels.feature_store.settings import RedisSettings
from reels.models.config import EvaluationConfig, IndexConfig, RankerConfig, RetrainConfig, TwoTowerConfig
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.config import FeatureConfig, SyntheticConfig


@dataclass(frozen=True)
class DataConfig:
    """Where data lives and the synthetic time split (section ``data``)."""

    root: str = "data"  # stores and features live under <root>/<source>/
    source: str = "synthetic"  # synthetic | movielens
    valid_days: int = 1
    test_days: int = 1


@dataclass(frozen=True)
class MovieLensConfig:
    """The MovieLens time split (section ``movielens``)."""

    valid_days: int = 14
    test_days: int = 14


@dataclass(frozen=True)
class ServerConfig:
    """Addresses of redis-server and tritonserver, and where builds go (section ``server``)."""

    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    bind_address: str = "127.0.0.1"  # where Triton listens; "0.0.0.0" opens it to the network (containers)
    build_dir: str = "build"  # the exported model repository and server logs go here

    @property
    def redis(self) -> RedisSettings:
        """The online store's address (the password comes from the environment, never from config)."""
        return RedisSettings(self.redis_host, self.redis_port)


@dataclass(frozen=True)
class Config:
    """Every section of the configuration; ``reels.client.config.load_config`` builds one."""

    device: str = "auto"
    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    movielens: MovieLensConfig = MovieLensConfig()
    features: FeatureConfig = FeatureConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    ranker: RankerConfig = RankerConfig()
    index: IndexConfig = IndexConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    serving: ServingConfig = ServingConfig()
    experiment: Experiment = Experiment()
    server: ServerConfig = ServerConfig()
    retrain: RetrainConfig = RetrainConfig()

    def split_days(self, source: str) -> tuple[int, int]:
        """(validation days, test days) of a source's time split."""
        if source == "movielens":
            return self.movielens.valid_days, self.movielens.test_days
        return self.data.valid_days, self.data.test_days

    def source_dir(self, source: str | None = None) -> Path:
        """Where a source's store, features and models live: ``<data.root>/<source>``."""
        return Path(self.data.root) / (source or self.data.source)
