"""Test set-up shared by the tests that run `reels serve`'s stack and promote: a data folder with two model
versions of the session's tiny models, and the settings that point a configuration at it on free ports.

Which Redis the integration tests run against: ``REELS_TEST_REDIS=single`` (the default) starts one
redis-server where a test needs one; ``REELS_TEST_REDIS=cluster`` starts a local Redis Cluster of 3
primaries + 3 replicas in its place (``selected_redis``), and the stacks `reels serve` starts in tests
use one through ``server.redis_url`` (``stack_settings``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reels.deploy.redis_server import RedisCluster, RedisServer, free_port
from reels.feature_store.settings import RedisSettings
from reels.models.registry import mark_serving
from reels.workflows.spec import OOV


def two_versions(tiny_models, root: Path) -> Path:
    """``<root>/data/synthetic/models`` holding versions 1 (marked serving) and 2: the same weights, so a
    promotion to 2 writes another release and loads another namespace."""
    models = root / "data" / "synthetic" / "models"
    shutil.copytree(tiny_models.directory, models / "1")
    shutil.copytree(tiny_models.directory, models / "2")
    manifest = json.loads((models / "2" / "manifest.json").read_text())
    (models / "2" / "manifest.json").write_text(json.dumps(manifest | {"version": 2}))
    mark_serving(models, 1)
    return models


REDIS_CHOICE_ENV = "REELS_TEST_REDIS"
REDIS_CHOICES = ("single", "cluster")


def redis_choice() -> str:
    """``single`` or ``cluster``: the Redis that ``$REELS_TEST_REDIS`` selects for the integration tests
    (unset or empty: ``single``); ``ValueError`` for anything else."""
    choice = os.environ.get(REDIS_CHOICE_ENV, "").strip().lower() or "single"
    if choice not in REDIS_CHOICES:
        raise ValueError(f"${REDIS_CHOICE_ENV} is single or cluster, not {choice!r}")
    return choice


@dataclass
class ClusterForTests(RedisCluster):
    """A local Redis Cluster (3 primaries + 3 replicas, no password) with the surface the tests use of a
    ``RedisServer``: ``client()``, ``url()``, ``port`` (its first node), ``stop()`` and ``start()`` again
    (a restart of the same nodes on the same ports: their ``nodes.conf`` and append-only files bring back
    the slots and the data, as a restarted redis-server brings back its data)."""

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def start(self, timeout_s: float = 30.0) -> ClusterForTests:
        if not self.nodes:  # the first start: create the cluster
            super().start(timeout_s)
            return self
        for node in self.nodes:
            if node.process is None:
                node.start(timeout_s)
        self.wait_ready(timeout_s)
        return self


def selected_redis(data_dir: Path) -> RedisServer | ClusterForTests:
    """A Redis of the kind ``$REELS_TEST_REDIS`` selects, its files under ``data_dir``; not started."""
    if redis_choice() == "cluster":
        return ClusterForTests(data_dir)
    return RedisServer(data_dir, port=free_port())


def redis_settings(redis: RedisServer | ClusterForTests) -> RedisSettings:
    """The ``RedisSettings`` a release uses to reach ``redis`` (host and port of a single server, the
    ``redis+cluster://`` URL of a cluster)."""
    if isinstance(redis, ClusterForTests):
        return RedisSettings(url=redis.url())
    return RedisSettings(port=redis.port)


_STACK_CLUSTERS: list[ClusterForTests] = []  # started by stack_settings, stopped by stop_stack_clusters


def stop_stack_clusters() -> None:
    """Stop the clusters ``stack_settings`` started (conftest calls it at the end of each test module)."""
    while _STACK_CLUSTERS:
        cluster = _STACK_CLUSTERS.pop()
        cluster.stop()
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


def stack_settings(root: Path, **extra) -> list[str]:
    """``--set`` items for a stack under ``root``: data root, build folder and free ports (Redis, HTTP,
    gRPC, metrics), then ``extra`` (dotted keys with ``__`` for the dot, e.g. ``server__replicas=2``).
    With ``REELS_TEST_REDIS=cluster`` and no ``server__redis_url`` in ``extra``, a fresh local Redis
    Cluster is started for the stack (it lives until the end of the test module) and named by
    ``server.redis_url``, so `reels serve` uses it instead of starting a redis-server."""
    settings = {
        "data.root": root / "data", "server.build_dir": root / "build", "server.redis_port": free_port(),
        "server.http_port": free_port(), "server.grpc_port": free_port(), "server.metrics_port": free_port(),
    }  # fmt: skip
    if redis_choice() == "cluster" and "server__redis_url" not in extra:
        # Outside ``root``: a test may copy or delete its data folder while the cluster keeps running.
        cluster = ClusterForTests(Path(tempfile.mkdtemp(prefix="reels-test-cluster-"))).start()
        _STACK_CLUSTERS.append(cluster)
        settings["server.redis_url"] = cluster.url()
    settings |= {key.replace("__", "."): value for key, value in extra.items()}
    return [f"{key}={value}" for key, value in settings.items()]


def known_users(tiny_features) -> list[int]:
    """Raw ids of the users the tiny features know (not out-of-vocabulary)."""
    frame = pd.read_parquet(tiny_features.users_path)
    return frame.loc[frame["user_id"] > OOV, "raw_user_id"].astype(int).tolist()


def ensemble_release(http_url: str) -> int:
    """The release whose step models the running ensemble calls (what Triton serves, not the files)."""
    import tritonclient.http as http

    from reels.deploy.triton.release import ENSEMBLE, release_of

    client = http.InferenceServerClient(http_url)
    try:
        steps = client.get_model_config(ENSEMBLE)["ensemble_scheduling"]["step"]
    finally:
        client.close()
    (release,) = {release_of(s["model_name"]) for s in steps}
    return release


@contextmanager
def triton_over_redis(tiny_models, tiny_features, root: Path, config, experiment) -> Iterator[tuple]:
    """A Redis (``selected_redis``) loaded with the tiny features and a tritonserver over a repository of
    the tiny models (``config``: serving settings, ``experiment``: its A/B test), on free loopback ports;
    yields ``(redis_server, triton)`` and stops both (a stopped Redis's stop is a no-op)."""
    from reels.deploy.triton.repository import export_repository
    from reels.deploy.triton_server import TritonServer
    from reels.feature_store.store import OnlineStore

    redis_server = selected_redis(root / "redis").start()
    try:
        OnlineStore(redis_server.client(timeout_s=5.0)).load(tiny_features)
        repo = export_repository(
            tiny_models.directory, root / "repository", redis_settings(redis_server), config,
            experiment=experiment,
        )  # fmt: skip
        triton = TritonServer(repo, root / "build", free_port(), free_port(), free_port()).start()
        try:
            yield redis_server, triton
        finally:
            triton.stop()
    finally:
        redis_server.stop()
