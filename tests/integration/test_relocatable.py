"""A release is self-contained: the exported model repository, copied to another directory, serves the
same feeds (same video ids, same scores) with the original repository, the trained model version, the
feature build and the offline store all moved away, so any absolute path left in it would fail.

Two real tritonserver starts (one on the original, one on the copy) over one real redis-server."""

import json
import os
import shutil
import time

import numpy as np
import pandas as pd

from reels.client.triton_client import ReelsClient
from reels.deploy.redis_server import RedisServer, free_port
from reels.deploy.triton.release import ENSEMBLE, STEPS, step_model
from reels.deploy.triton.repository import export_repository
from reels.deploy.triton_server import TritonServer
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.spec import OOV

# Not the defaults: the serving settings and the experiment must travel with the release too.
CONFIG = ServingConfig(candidates=150, max_k=40, max_per_creator=2, max_per_category=6)
EXPERIMENT = Experiment(name="reloc", salt="r", variants={"control": {}, "diverse": {"mmr_lambda": 0.3}})
WHEN = 1_800_000_000  # a fixed request time keeps freshness, hence scores, deterministic
USERS = 10


def _private_copies(tiny_store, tiny_features, tiny_models, root):
    """Copies of the offline store, the feature build and the model version that this test may move away
    (the session's fixtures are shared), their manifests pointing at each other."""
    store = shutil.copytree(tiny_store.root, root / "store")
    features = shutil.copytree(tiny_features.root, root / "features")
    manifest = json.loads((features / "manifest.json").read_text())
    (features / "manifest.json").write_text(json.dumps({**manifest, "store": str(store)}, indent=2))
    model_dir = shutil.copytree(tiny_models.directory, root / "models" / tiny_models.directory.name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["features"] |= {"path": str(features), "workflow": str(features / "workflow")}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return FeatureArtifacts(features), model_dir


def _users(features: FeatureArtifacts) -> list[int]:
    """Known users with a viewing history: their feeds go through every step (no fallback)."""
    frame = pd.read_parquet(features.users_path)
    history = np.stack(frame["history_video_ids"].to_numpy())
    known = frame.loc[(frame["user_id"] > OOV) & (history > OOV).any(axis=1), "raw_user_id"]
    return [int(u) for u in known.to_numpy()[:USERS]]


def _feeds(repository, build, users) -> tuple[dict, float]:
    """Start a tritonserver on ``repository``, read every user's feed over HTTP, stop it; the feeds and
    the seconds the server took to become ready."""
    started = time.perf_counter()
    triton = TritonServer(repository, build, free_port(), free_port(), free_port()).start()
    ready_s = time.perf_counter() - started
    try:
        with ReelsClient(triton.http_url) as client:
            assert client.health() == {"live": True, "ready": True, "model_ready": True}
            return {
                u: client.recommend(u, k=20, device="ios", hour=20, request_time=WHEN) for u in users
            }, ready_s
    finally:
        triton.stop()


def _sizes(repository) -> dict[str, int]:
    """Bytes (apparent sizes) under each top-level entry of ``repository``."""
    sizes = {}
    for entry in repository.iterdir():
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(p.stat().st_size for p in files)
    return sizes


def test_a_copied_repository_serves_identical_feeds_with_every_original_moved_away(
    tiny_store, tiny_features, tiny_models, tmp_path
):
    features, model_dir = _private_copies(tiny_store, tiny_features, tiny_models, tmp_path)
    users = _users(features)
    redis_server = RedisServer(tmp_path / "redis", port=free_port()).start()
    try:
        OnlineStore(redis_server.client()).load(features)
        started = time.perf_counter()
        original = export_repository(
            model_dir, tmp_path / "repository", RedisSettings(port=redis_server.port), CONFIG,
            experiment=EXPERIMENT,
        )  # fmt: skip
        export_s = time.perf_counter() - started
        version = int(model_dir.name)
        before, first_ready_s = _feeds(original, tmp_path / "build-original", users)

        copy = shutil.copytree(original, tmp_path / "elsewhere" / "copied-repository")
        for name in ("repository", "models", "features", "store"):
            (tmp_path / name).rename(tmp_path / f"moved-away-{name}")
        assert not original.exists() and not model_dir.exists() and not features.root.exists()
        # Nothing in the copy names a path outside it (the specs hold none; the artifacts neither). The
        # python backend leaves model.py's bytecode cache (its source path inside) next to it: not read.
        for path in copy.rglob("*"):
            if path.is_file() and path.parent.name != "__pycache__":
                assert str(tmp_path).encode() not in path.read_bytes(), path

        after, copy_ready_s = _feeds(copy, tmp_path / "build-copy", users)
    finally:
        redis_server.stop()

    sizes = _sizes(copy)
    print(
        f"\nrelocatable: repository {sum(sizes.values()):,} B "
        + ", ".join(f"{name} {size:,} B" for name, size in sorted(sizes.items()))
        + f"; export {export_s:.1f} s, "
        f"tritonserver ready in {first_ready_s:.1f} s (original) / {copy_ready_s:.1f} s (copy)"
    )
    assert set(sizes) == {ENSEMBLE, f"serving-{version}.json", *(step_model(s, version) for s in STEPS)}
    assert len(before) == USERS
    for user in users:
        a, b = before[user], after[user]
        assert a.fallback == 0 and len(a.video_ids) == 20, user  # the whole pipeline ran, no fallback
        np.testing.assert_array_equal(a.video_ids, b.video_ids, err_msg=str(user))
        np.testing.assert_array_equal(a.scores, b.scores, err_msg=str(user))
        np.testing.assert_array_equal(a.explanation_ids, b.explanation_ids, err_msg=str(user))
        np.testing.assert_array_equal(a.propensities, b.propensities, err_msg=str(user))
        for task in a.task_predictions:
            np.testing.assert_array_equal(a.task_predictions[task], b.task_predictions[task])
        assert a.variant == b.variant == EXPERIMENT.assign(user)
    assert {r.variant for r in before.values()} == set(EXPERIMENT.variants)  # the experiment travelled
    assert os.path.isdir(copy / step_model("retrieval", version) / "1" / "artifacts" / "query_tower")
