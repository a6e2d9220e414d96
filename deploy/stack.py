"""Redis + Triton together, as `reels serve` and the demo run them: start redis-server (or reuse one
that already answers on the configured port, or use the Redis Cluster a ``redis+cluster://`` URL names),
load the online store, export the model repository, start tritonserver, and stop everything it started
on exit. Also the throw-away online store that the exposure report, the A/B simulation and the
benchmarks run against (``temporary_store``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import redis
from redis.exceptions import RedisClusterException

from reels.deploy.config import Config, ServerConfig
from reels.deploy.promotion import promotion_lock, recover
from reels.deploy.redis_server import RedisServer, free_port
from reels.deploy.replicas import RECORD, ReplicaSet, start_replica_set
from reels.deploy.triton.repository import export_repository
from reels.deploy.triton_server import TritonServer
from reels.feature_store.store import OnlineStore
from reels.models.registry import serving_model_dir, trained_features
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.errors import InvalidInput, ServiceUnavailable
from reels.workflows.manifest import FeatureArtifacts


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
    replicas: int = 1,
) -> Iterator[tuple[RedisServer | None, TritonServer | ReplicaSet]]:
    """Redis (a local single server started unless one answers; a Redis Cluster, ``redis+cluster://``,
    must answer: it is never started here) + the online store + the exported repository + tritonserver;
    with ``replicas`` > 1, that many tritonservers behind HAProxy (``deploy/replicas.py``) on the
    configured ports, each replica on loopback.

    ``model_dir``: the version to serve (default: the one marked serving, else the latest the promotion
    gate did not reject). A promotion into the repository that was killed part-way is reconciled first
    (``promotion.recover``): its journal decides whether the pointer moves to the version it promoted."""
    say = progress or (lambda _m: None)
    if replicas < 1:
        raise InvalidInput(f"replicas must be at least 1, not {replicas}")
    repository = build_dir / "repository"
    set_root = build_dir / "replicas"
    for root in (repository, set_root):
        if (root / "promotion-journal.json").exists():  # before the export below replaces the files
            with promotion_lock(root):  # busy: a promotion into a server still running there
                recover(root, progress=say)
    (set_root / RECORD).unlink(missing_ok=True)  # a set killed before it could remove its record
    model_dir = model_dir or serving_model_dir(source_dir / "models")
    # The features the served models were trained with (a retrain writes its own feature build).
    features = trained_features(model_dir)
    settings = server.redis
    password = settings.resolved_password()
    started_redis = triton = None
    try:  # everything started inside is stopped in ``finally``, however the block is left
        where = settings.describe()
        try:
            probe = settings.client(timeout_s=0.5)  # a cluster client asks its first node for the map here
            probe.ping()
            say(f"using the {'Redis Cluster' if settings.cluster else 'redis-server'} already at {where}")
        except (redis.RedisError, RedisClusterException) as exc:
            if settings.cluster or settings.tls or settings.host not in ("127.0.0.1", "localhost", "::1"):
                # Only a local plain-text single server is ours to start; a remote or TLS one, or a
                # Redis Cluster (its nodes and slots are set up outside `reels serve`), is someone else's.
                raise ServiceUnavailable(f"the Redis at {where} does not answer: {exc}") from exc
            say(f"starting redis-server on {settings.host}:{settings.port}")
            started_redis = RedisServer(
                build_dir / "redis", port=settings.port, bind=settings.host, password=password,
                username=settings.resolved_username(),
            )  # fmt: skip
            started_redis.start()
        client = started_redis.client() if started_redis else probe
        store = OnlineStore(client, prefix=settings.prefix)
        report = store.load(features)
        # The fresh repository's one release reads this namespace: the only one pinned from now on (the
        # namespaces of an earlier repository's releases go at the next activation).
        store.set_pinned({report.namespace})
        say(f"online store: {report.users:,} users, {report.videos:,} videos in namespace {report.namespace}")
        repo = export_repository(
            model_dir, repository,
            settings, serving,
            instances=instances, namespace=report.namespace, experiment=experiment,
        )  # fmt: skip
        if replicas > 1:
            say(f"starting {replicas} tritonservers behind haproxy (models from {model_dir})")
            triton = start_replica_set(
                set_root, repo, replicas, server.http_port, server.grpc_port, address=server.bind_address
            )
        else:
            say(f"starting tritonserver (models from {model_dir})")
            triton = TritonServer(
                repo,
                build_dir,
                server.http_port,
                server.grpc_port,
                server.metrics_port,
                address=server.bind_address,
            )
            triton.start()
        yield started_redis, triton
    finally:
        if triton is not None:
            triton.stop()
        if started_redis is not None:
            started_redis.stop()


def build_dir(config: Config, source: str) -> Path:
    """Where a source's model repository and server logs go: ``<server.build_dir>/<source>``."""
    return Path(config.server.build_dir) / source


def repository_dir(config: Config, source: str) -> Path:
    """The model repository `reels export` and `reels serve` write and a promotion adds releases to."""
    return build_dir(config, source) / "repository"


def source_stack(
    config: Config, source: str, progress: Callable[[str], None] | None = None
) -> AbstractContextManager[tuple[RedisServer | None, TritonServer | ReplicaSet]]:
    """``serving_stack`` for a source as the configuration describes it (what `reels serve` runs)."""
    return serving_stack(
        config.source_dir(source), build_dir(config, source), config.server, config.serving,
        progress=progress, experiment=config.experiment, replicas=config.server.replicas,
    )  # fmt: skip


@contextmanager
def temporary_store(
    features: FeatureArtifacts | None = None, timeout_s: float = 5.0, maxmemory: str = "2gb"
) -> Iterator[OnlineStore]:
    """An online store on a redis-server of its own (a free loopback port, a temporary folder), with
    ``features`` loaded when given; the server and its folder are gone on exit."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp), port=free_port(), maxmemory=maxmemory) as server,
    ):
        store = OnlineStore(server.client(timeout_s=timeout_s))
        if features is not None:
            store.load(features)
        yield store
