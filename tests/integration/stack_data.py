"""Test set-up shared by the tests that run `reels serve`'s stack and promote: a data folder with two model
versions of the session's tiny models, and the settings that point a configuration at it on free ports."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from reels.deploy.redis_server import free_port
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


def stack_settings(root: Path, **extra) -> list[str]:
    """``--set`` items for a stack under ``root``: data root, build folder and free ports (Redis, HTTP,
    gRPC, metrics), then ``extra`` (dotted keys with ``__`` for the dot, e.g. ``server__replicas=2``)."""
    settings = {
        "data.root": root / "data", "server.build_dir": root / "build", "server.redis_port": free_port(),
        "server.http_port": free_port(), "server.grpc_port": free_port(), "server.metrics_port": free_port(),
    }  # fmt: skip
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
    """A redis-server loaded with the tiny features and a tritonserver over a repository of the tiny
    models (``config``: serving settings, ``experiment``: its A/B test), on free loopback ports; yields
    ``(redis_server, triton)`` and stops both (a stopped redis-server's stop is a no-op)."""
    from reels.deploy.redis_server import RedisServer
    from reels.deploy.triton.repository import export_repository
    from reels.deploy.triton_server import TritonServer
    from reels.feature_store.settings import RedisSettings
    from reels.feature_store.store import OnlineStore

    redis_server = RedisServer(root / "redis", port=free_port()).start()
    try:
        OnlineStore(redis_server.client()).load(tiny_features)
        repo = export_repository(
            tiny_models.directory, root / "repository", RedisSettings(port=redis_server.port), config,
            experiment=experiment,
        )  # fmt: skip
        triton = TritonServer(repo, root / "build", free_port(), free_port(), free_port()).start()
        try:
            yield redis_server, triton
        finally:
            triton.stop()
    finally:
        redis_server.stop()
