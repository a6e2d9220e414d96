"""A real Dask cluster: a `dask scheduler` and two separate `dask worker` processes on loopback (not a
LocalCluster), each running in a folder of its own. The feature build reads the offline store by its
``file://`` URL and writes to a ``file://`` URL; the scheduler's task stream shows the work (parquet reads,
NVTabular's fit statistics, the transform and the output parts) ran on both workers, and the features equal a
LocalCluster build's. ``reels retrain --scheduler`` takes the store and the build folder by URL (a whole
retrain on such a cluster, gate included, takes minutes: ``python -m reels.client.bench.retrain_cluster``
runs it beside the LocalCluster path).

The store read path is the same fsspec code for any filesystem: a copy of the store in fsspec's in-memory
filesystem (a non-local one) reads back the same rows and builds the same features."""

from __future__ import annotations

import collections
import contextlib
import io

import fsspec
import pandas as pd
import pytest
from dask.utils import key_split
from distributed import get_task_stream

from reels.client.cli import main
from reels.deploy.dask_cluster import DaskScheduler, dask_cluster, scheduler_and_workers
from reels.deploy.redis_server import free_port
from reels.workflows.errors import InvalidInput, NotFound, ServiceUnavailable
from reels.workflows.manifest import SPLITS, FeatureArtifacts
from reels.workflows.offline_store import OfflineStore
from reels.workflows.pipeline import build_features

from ..conftest import TINY_FEATURES

WORKERS = ("worker-a", "worker-b")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> str:
    """A `dask scheduler` and two one-thread `dask worker` processes; the scheduler's address."""
    with scheduler_and_workers(tmp_path_factory.mktemp("dask"), WORKERS) as address:
        yield address


@pytest.fixture(scope="module")
def local_build(tiny_store, tmp_path_factory) -> FeatureArtifacts:
    """The reference: the same build on a LocalCluster (one worker process)."""
    out = tmp_path_factory.mktemp("local") / "features"
    with dask_cluster(n_workers=1, dashboard_address=":0") as info:
        assert info.kind == "LocalCluster"
        return build_features(tiny_store, out, TINY_FEATURES, device="cpu", client=info.client)


def _assert_same_features(got: FeatureArtifacts, want: FeatureArtifacts) -> None:
    """Same vocabularies, row counts, split, output rows (in event order) and online-store tables."""
    got_manifest, want_manifest = got.manifest(), want.manifest()
    assert got_manifest.rows == want_manifest.rows
    assert got_manifest.split == want_manifest.split
    assert got_manifest.columns == want_manifest.columns
    vocabularies = sorted(p.name for p in (want.workflow_dir / "categories").glob("*.parquet"))
    assert vocabularies and vocabularies == sorted(
        p.name for p in (got.workflow_dir / "categories").glob("*.parquet")
    )
    for name in vocabularies:
        pd.testing.assert_frame_equal(
            pd.read_parquet(got.workflow_dir / "categories" / name),
            pd.read_parquet(want.workflow_dir / "categories" / name),
        )
    for split in SPLITS:
        pd.testing.assert_frame_equal(
            got.read_split(split).sort_values("event_id", ignore_index=True),
            want.read_split(split).sort_values("event_id", ignore_index=True),
        )
    for table, key in ((got.users_path, "raw_user_id"), (got.videos_path, "raw_video_id")):
        want_path = want.root / table.name
        pd.testing.assert_frame_equal(
            pd.read_parquet(table).sort_values(key, ignore_index=True),
            pd.read_parquet(want_path).sort_values(key, ignore_index=True),
        )


def test_a_feature_build_on_a_scheduler_and_two_workers_equals_the_local_cluster_build(
    scheduler, tiny_store, local_build, tmp_path, monkeypatch
):
    store = OfflineStore(tiny_store.url)  # file:///...: the address every worker uses
    assert store.url.startswith("file:///") and store.files("events") == tiny_store.files("events")
    monkeypatch.chdir(tmp_path)  # the caller's working directory is not the workers'
    with dask_cluster(scheduler) as info, get_task_stream(info.client) as stream:
        assert info.kind == "scheduler" and info.workers == len(WORKERS)
        names = {address: w["name"] for address, w in info.client.scheduler_info()["workers"].items()}
        built = build_features(
            store, f"file://{tmp_path}/features", TINY_FEATURES, device="cpu", client=info.client
        )
    assert built.root == tmp_path / "features"

    per_worker = collections.defaultdict(collections.Counter)
    for task in stream.data:
        per_worker[names[task["worker"]]][key_split(task["key"])] += 1
    assert set(per_worker) == set(WORKERS), dict(per_worker)
    ran = sum(per_worker.values(), collections.Counter())
    # Parquet reads of the store, NVTabular's Categorify statistics (the fit) and the workflow transform,
    # the feature parts written: all by the worker processes.
    for prefix in ("read-parquet", "categories", "transform", "write_partition"):
        assert ran[prefix] > 0, (prefix, dict(per_worker))
    for name in WORKERS:
        assert sum(per_worker[name].values()) >= 10, dict(per_worker)

    _assert_same_features(built, local_build)


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["--device", "cpu", *args])
    return code, out.getvalue()


def test_reels_retrain_takes_the_store_and_the_feature_folder_by_url(scheduler, tiny_store, tmp_path):
    """The flags reach the store and the build folder, with clear errors for a missing store and for an
    object-store build folder."""
    base = ["--set", f"data.root={tmp_path}", "retrain", "synthetic", "--scheduler", scheduler]
    code, out = _cli(*base, "--store", f"file://{tmp_path}/nothing-here")
    assert code == NotFound.exit_code, out
    assert f"no events in {tmp_path}/nothing-here" in out
    code, out = _cli(*base, "--store", tiny_store.url, "--work", "s3://bucket/retrain")
    assert code == InvalidInput.exit_code, out
    assert "feature builds go to a local path or a file:// URL" in out


def test_a_store_read_through_a_non_local_fsspec_filesystem_builds_the_same_features(
    tiny_store, local_build, tmp_path
):
    """fsspec's in-memory filesystem stands in for an object store (no network here): the same read calls."""
    memory = fsspec.filesystem("memory")
    memory.put(str(tiny_store.root), "/shared-store", recursive=True)
    try:
        store = OfflineStore("memory:///shared-store")
        assert not store.local and store.url == "memory:///shared-store"
        assert [f.name for f in store.files("events")] == [f.name for f in tiny_store.files("events")]
        assert store.part_rows("events") == tiny_store.part_rows("events")
        assert store.fingerprint() == tiny_store.fingerprint()
        with pytest.raises(InvalidInput, match="read-only here"):
            store.append("users", store.read_table("users"))
        # No cluster: the in-memory filesystem exists only in this process (threads share it).
        built = build_features(store, tmp_path / "features", TINY_FEATURES, device="cpu")
    finally:
        memory.rm("/shared-store", recursive=True)
    assert built.manifest().store == "memory:///shared-store"
    _assert_same_features(built, local_build)


def test_clear_errors_for_an_object_store_output_and_a_missing_or_empty_scheduler(tmp_path):
    with pytest.raises(InvalidInput, match="local path or a file:// URL"):
        build_features(OfflineStore(tmp_path), "s3://bucket/features")
    with pytest.raises(ServiceUnavailable, match="no Dask scheduler answers"):
        with dask_cluster(f"tcp://127.0.0.1:{free_port()}", connect_timeout_s=2):
            pass
    with DaskScheduler(tmp_path / "empty") as lonely:
        with pytest.raises(ServiceUnavailable, match="has no worker"):
            with dask_cluster(lonely.address, connect_timeout_s=2):
                pass
