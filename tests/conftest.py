"""Shared fixtures: tiny but real data pushed through the real generator, store and NVTabular workflow."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*NVTabular Dataset in CPU mode.*")

from reels.feature_store.store import OnlineStore  # noqa: E402
from reels.models.config import IndexConfig, RankerConfig, TwoTowerConfig  # noqa: E402
from reels.models.train import train  # noqa: E402
from reels.workflows.config import FeatureConfig, SyntheticConfig  # noqa: E402
from reels.workflows.offline_store import OfflineStore  # noqa: E402
from reels.workflows.pipeline import build_features  # noqa: E402
from reels.workflows.sources import generate_synthetic  # noqa: E402
from tests.integration.stack_data import redis_choice, selected_redis, stop_stack_clusters  # noqa: E402

INTEGRATION = Path(__file__).parent / "integration"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "single_redis(reason): about one redis-server itself (its process, its port, AUTH on it): skipped "
        "with the reason when REELS_TEST_REDIS=cluster runs the integration tests on a Redis Cluster",
    )
    try:
        redis_choice()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config):
    return f"redis for integration tests: {redis_choice()} (REELS_TEST_REDIS)"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ talks to real servers: mark it so `-m "not integration"` skips it."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _tail(run: subprocess.CompletedProcess) -> str:
    return " ".join((run.stdout + run.stderr).split())[-300:]


@functools.cache
def server_problems() -> tuple[str, ...]:
    """What keeps the real redis-server and tritonserver from running here (empty when both start)."""
    problems = []
    redis = shutil.which("redis-server")
    if redis is None:
        problems.append("redis-server is not on PATH: `apt-get install redis-server` (Debian's package)")
    else:
        run = subprocess.run([redis, "--version"], capture_output=True, text=True, timeout=60)
        if run.returncode != 0 or "Redis server" not in run.stdout:
            problems.append(f"`{redis} --version` failed: {_tail(run)}")
    # tritonserver, its python backend and the per-Python stubs come from the nvidia-pytriton wheel
    # (deploy/triton_server.py); find_spec locates it without importing it.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        problems.append(
            "nvidia-pytriton is not installed in this environment, so there is no tritonserver: "
            "`pip install -c deploy/constraints-cpu.txt nvidia-pytriton==0.7.0`"
        )
    else:
        root = Path(spec.origin).parent / "tritonserver"
        binary = root / "bin" / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not os.access(binary, os.X_OK):
            problems.append(f"no executable tritonserver at {binary} (a broken nvidia-pytriton install?)")
        else:
            from reels.deploy.triton_server import server_environment

            run = subprocess.run(
                [str(binary), "--help"], env=server_environment(), capture_output=True, text=True, timeout=60
            )
            if "Usage: tritonserver" not in run.stdout + run.stderr:  # --help exits 1 after the usage
                problems.append(f"{binary} does not start (missing shared libraries?): {_tail(run)}")
        if not stub.exists():
            problems.append(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    return tuple(problems)


def pytest_runtest_setup(item):
    """Integration tests need the real servers: where one is missing or does not start, each of them fails
    here, before any fixture tries to start it, with what is wrong and how to install it. Never a skip: CI
    installs both (`bash deploy/setup.sh`), so a missing server there is a broken setup to see."""
    if item.get_closest_marker("integration") and (problems := server_problems()):
        pytest.fail(
            "integration tests run the real redis-server and tritonserver "
            "(`bash deploy/setup.sh` installs both):\n  " + "\n  ".join(problems),
            pytrace=False,
        )
    if redis_choice() == "cluster" and (single := item.get_closest_marker("single_redis")):
        pytest.skip(f"single-node Redis only: {single.kwargs.get('reason') or ' '.join(single.args)}")


TINY = SyntheticConfig(
    seed=7, n_events=40_000, n_users=800, n_creators=120, n_videos=1_500, new_videos_per_day=60, n_days=6
)
TINY_FEATURES = FeatureConfig(history_length=5, video_freq_threshold=2)
TINY_TWO_TOWER = TwoTowerConfig(
    epochs=3,
    batch_size=512,
    output_dim=32,
    feature_dim=16,
    hidden_units=(64,),
    temperature=0.1,
    learning_rate=0.001,
)
TINY_RANKER = RankerConfig(
    epochs=4, batch_size=512, learning_rate=0.003, expert_units=(32,), tower_units=(16,), num_experts=3
)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> OfflineStore:
    root = tmp_path_factory.mktemp("tiny") / "store"
    generate_synthetic(root, TINY)
    return OfflineStore(root)


@pytest.fixture(scope="session")
def tiny_features(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_features") / "features"
    return build_features(tiny_store, out, TINY_FEATURES, valid_days=1, test_days=1, device="cpu")


@pytest.fixture(scope="session")
def tiny_models(tiny_features, tmp_path_factory):
    return train(tiny_features, tmp_path_factory.mktemp("models"), TINY_TWO_TOWER, TINY_RANKER, IndexConfig())


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real Redis for the test module: one redis-server, or with ``REELS_TEST_REDIS=cluster`` a local
    Redis Cluster of 3 primaries + 3 replicas (``client()``, ``url()``, ``stop()`` and ``start()`` alike)."""
    with selected_redis(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(scope="module", autouse=True)
def _stack_clusters():
    """The Redis Clusters `stack_settings` started for this module's stacks stop with the module."""
    yield
    stop_stack_clusters()


@pytest.fixture()
def loaded_store(redis_server, tiny_features) -> OnlineStore:
    """An emptied Redis with the tiny features loaded (the namespace is re-read on every access)."""
    client = redis_server.client(timeout_s=5.0)
    client.flushall()
    store = OnlineStore(client, namespace_ttl_s=0.0)
    store.load(tiny_features)
    return store
