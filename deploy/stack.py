"""Redis + Triton together, as `reels serve` and the demo run them: start redis-server (or reuse one
that already answers on the configured port), load the online store, export the model repository,
start tritonserver, and stop everything it started on exit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from reels.deploy.config import ServerConfig
from reels.deploy.redis_server import RedisServer
from reels.deploy.triton.repository import export_repository
from reels.deploy.triton_server import TritonServer
from reels.feature_store.store import OnlineStore
from reels.models.registry import serving_model_dir, trained_features
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment


@contextmanager
def serving_stack(
    source_dir: Path,
    build_dir: Path,
    server: ServerConfig,
    serving: ServingConfig,
    progress: Callable[[str], None] | None = None,
    instances: int = 1,
    experiment: Experiment | None = None,
    model_dir: Path | None = None,
) -> Iterator[tuple[RedisServer | None, TritonServer]]:
    """``model_dir``: the version to serve (default: the one marked serving, else the latest)."""
    say = progress or (lambda _m: None)
    model_dir = model_dir or serving_model_dir(source_dir / "models")
    # The features the served models were trained with (a retrain writes its own feature build).
    features = trained_features(model_dir)
    settings = server.redis
    password = settings.resolved_password()
    started_redis = None
    probe = settings.client(timeout_s=0.5)
    try:
        probe.ping()
        say(f"using the redis-server already on {server.redis_host}:{server.redis_port}")
    except redis.RedisError:
        say(f"starting redis-server on {server.redis_host}:{server.redis_port}")
        started_redis = RedisServer(
            build_dir / "redis", port=server.redis_port, bind=server.redis_host, password=password
        )
        started_redis.start()
    triton = None
    try:
        client = started_redis.client() if started_redis else probe
        report = OnlineStore(client).load(features)
        say(f"online store: {report.users:,} users, {report.videos:,} videos in namespace {report.namespace}")
        repo = export_repository(
            model_dir, build_dir / "repository",
            settings, serving,
            instances=instances, namespace=report.namespace, experiment=experiment,
        )  # fmt: skip
        say(f"starting tritonserver (models from {model_dir})")
        triton = TritonServer(
            repo, build_dir, server.http_port, server.grpc_port, server.metrics_port
        ).start()
        yield started_redis, triton
    finally:
        if triton is not None:
            triton.stop()
        if started_redis is not None:
            started_redis.stop()
