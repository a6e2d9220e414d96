"""The whole configuration as typed sections (``Config``), as the commands and the deploy jobs take it.
Loading it from YAML with overrides is ``reels.client.config``; each section checks its own values."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reels.feature_store.settings import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    URL_ENV,
    RedisSettings,
    StreamSettings,
    url_password,
)
from reels.models.config import EvaluationConfig, IndexConfig, RankerConfig, RetrainConfig, TwoTowerConfig
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.config import FeatureConfig, SyntheticConfig
from reels.workflows.errors import ConfigError


def _check_split(section: str, split: str) -> None:
    if split not in ("days", "events"):
        raise ConfigError(f"{section}.split must be days or events, got {split!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where data lives and the synthetic time split (section ``data``)."""

    root: str = "data"  # stores and features live under <root>/<source>/
    source: str = "synthetic"  # synthetic | movielens
    valid_days: int = 1
    test_days: int = 1
    split: str = "days"  # days: the last valid_days + test_days; events: the shares below, whole days
    valid_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check_split("data", self.split)


@dataclass(frozen=True)
class MovieLensConfig:
    """The MovieLens time split (section ``movielens``)."""

    valid_days: int = 14
    test_days: int = 14
    split: str = "days"  # days | events (see data.split)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check_split("movielens", self.split)


@dataclass(frozen=True)
class ServerConfig:
    """Addresses of redis-server and tritonserver, and where builds go (section ``server``)."""

    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    # redis://[user@]host:port/db, or rediss:// for TLS; redis+cluster://host:port for a Redis Cluster;
    # redis+sentinel://host:port[,host:port]/service_name[/db] for Sentinel; replaces redis_host/redis_port
    # when set, and $REELS_REDIS_URL replaces it. No password here: a URL in the config must not carry one.
    redis_url: str = ""
    redis_ca_file: str = ""  # TLS (rediss://): the CA that signed the server's certificate
    redis_cert_file: str = ""  # TLS: a client certificate, for servers that ask for one
    redis_key_file: str = ""  # TLS: the client certificate's key (a path; the key stays in the file)
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    bind_address: str = "127.0.0.1"  # where Triton listens; "0.0.0.0" opens it to the network (containers)
    replicas: int = (
        1  # tritonservers behind HAProxy (`reels serve --replicas N`); 1: Triton alone, no balancer
    )
    build_dir: str = "build"  # the exported model repository and server logs go here

    def __post_init__(self) -> None:
        if self.redis_url:
            if url_password(self.redis_url):  # the message must not echo the secret
                raise ValueError(
                    f"server.redis_url must not hold a password: put it in ${PASSWORD_ENV} or "
                    f"${PASSWORD_FILE_ENV}, or give the whole URL as ${URL_ENV}"
                )
            self._settings(self.redis_url)  # a bad scheme, port or db fails here, naming the key
        elif (self.redis_ca_file or self.redis_cert_file or self.redis_key_file) and not os.environ.get(
            URL_ENV
        ):
            raise ValueError(
                f"server.redis_ca_file/_cert_file/_key_file need a rediss:// server.redis_url or ${URL_ENV}"
            )

    def _settings(self, url: str | None) -> RedisSettings:
        try:
            return RedisSettings(
                self.redis_host, self.redis_port, url=url or None, ca_file=self.redis_ca_file or None,
                cert_file=self.redis_cert_file or None, key_file=self.redis_key_file or None,
            )  # fmt: skip
        except ValueError as exc:
            origin = f"${URL_ENV}" if url and url == os.environ.get(URL_ENV) else "server.redis_url"
            raise ValueError(f"{origin}: {exc}") from None

    @property
    def redis(self) -> RedisSettings:
        """The online store's address: ``$REELS_REDIS_URL``, else ``redis_url``, else host and port (the
        password comes from the environment, never from config)."""
        try:
            return self._settings(os.environ.get(URL_ENV) or self.redis_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


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
    stream: StreamSettings = StreamSettings()  # the event stream's shards
    retrain: RetrainConfig = RetrainConfig()

    def split_days(self, source: str) -> tuple[int, int]:
        """(validation days, test days) of a source's time split."""
        if source == "movielens":
            return self.movielens.valid_days, self.movielens.test_days
        return self.data.valid_days, self.data.test_days

    def event_fractions(self, source: str) -> tuple[float, float] | None:
        """(validation, test) shares of the events when the source splits by events, else None (days)."""
        section = self.movielens if source == "movielens" else self.data
        return (section.valid_fraction, section.test_fraction) if section.split == "events" else None

    def source_dir(self, source: str | None = None) -> Path:
        """Where a source's store, features and models live: ``<data.root>/<source>``."""
        return Path(self.data.root) / (source or self.data.source)
