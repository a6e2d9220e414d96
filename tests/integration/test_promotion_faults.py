"""Promotions killed part-way (SIGKILL from the ``REELS_FAULT`` hook in a real `reels promote` process)
against the real `reels serve` stack: redis-server + tritonserver in this process, as `reels serve` runs
them. After each kill, the next `reels promote` or the next `reels serve` start-up must leave the serving
pointer, the ensemble's release, that release's namespace and the active namespace in agreement."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reels.client.cli import main
from reels.client.config import load_config
from reels.client.triton_client import ReelsClient
from reels.deploy.promotion import PromotionBusy, promotion_lock, read_journal
from reels.deploy.stack import source_stack
from reels.deploy.triton.release import Release
from reels.deploy.triton.repository import pinned_version
from reels.feature_store.store import OnlineStore
from tests.integration.stack_data import ensemble_release, known_users, stack_settings, two_versions

WHEN = 1_800_000_000


def _promote(overrides: list[str], version: int, fault: str) -> subprocess.CompletedProcess:
    """`reels promote synthetic <version>` in a process of its own, killed at ``fault``."""
    command = [sys.executable, "-m", "reels.client.cli", *overrides, "promote", "synthetic", str(version)]
    return subprocess.run(
        command, env=os.environ | {"REELS_FAULT": fault}, capture_output=True, text=True, timeout=500
    )


def _keys(store: OnlineStore, namespace: str) -> int:
    return sum(1 for _ in store.client.scan_iter(match=store.keys.namespace_pattern(namespace), count=5000))


def _agree(models: Path, repository: Path, triton, store: OnlineStore, version: int, user: int) -> None:
    """Pointer, ensemble config, running ensemble, release namespace and active namespace all say
    ``version``, no journal is left, and the release serves a personal feed."""
    assert (models / "serving").read_text().strip() == str(version)
    assert pinned_version(repository) == version == ensemble_release(triton.http_url)
    namespace = Release.read(repository, version).namespace
    assert namespace == store.namespace() and namespace in store.pinned()
    assert read_journal(repository) is None
    with ReelsClient(triton.http_url) as client:
        assert client.recommend(user, k=5, request_time=WHEN).fallback == 0


def test_a_promotion_killed_part_way_is_reconciled_by_the_next_promote_and_serve(
    tiny_models, tiny_features, tmp_path, capsys
):
    models = two_versions(tiny_models, tmp_path)
    sets = stack_settings(tmp_path)
    overrides = ["--device", "cpu", *(arg for item in sets for arg in ("--set", item))]
    config = load_config(None, sets)
    user = known_users(tiny_features)[0]

    with source_stack(config, "synthetic") as (_, triton):
        repository = triton.repository
        store = config.server.redis.store(timeout_s=5.0, namespace_ttl_s=0.0)
        assert store.pinned() == {store.namespace()} == {Release.read(repository, 1).namespace}

        # 1. Killed once release 2 is written, before the ensemble was pointed at it.
        run = _promote(overrides, 2, "promote:after_release_written")
        assert run.returncode == -signal.SIGKILL, run.stdout[-2000:] + run.stderr[-2000:]
        journal = read_journal(repository)
        assert journal["phase"] == "release_written" and journal["version"] == 2
        abandoned = journal["namespace"]
        # Release 2's step models are in the repository, the ensemble's config does not name them yet.
        assert pinned_version(repository) == 1 == ensemble_release(triton.http_url)
        assert Release.spec_path(repository, 2).exists()
        assert abandoned in store.pinned() and _keys(store, abandoned) > 0

        # `reels load` under a running server is refused: it would freeze the release's namespace.
        assert main([*overrides, "load", "synthetic"]) == 2

        # 2. The next `reels promote` rolls that back, promotes again and is killed after Triton swapped
        # the ensemble to release 2, before the namespace activation.
        run = _promote(overrides, 2, "promote:after_triton_load")
        assert run.returncode == -signal.SIGKILL, run.stdout[-2000:] + run.stderr[-2000:]
        assert "rolling back to version 1" in " ".join(run.stdout.split())
        assert _keys(store, abandoned) == 0 and abandoned not in store.pinned()
        journal = read_journal(repository)
        assert journal["phase"] == "triton_loaded"
        assert ensemble_release(triton.http_url) == 2  # Triton serves release 2 ...
        assert store.namespace() != journal["namespace"] == Release.read(repository, 2).namespace  # ... apart
        assert (models / "serving").read_text().strip() == "1"

        # 3. The next `reels promote` of that version rolls forward and finishes it.
        assert main([*overrides, "promote", "synthetic", "2"]) == 0
        assert "finished the interrupted promotion 1 -> 2" in " ".join(capsys.readouterr().out.split())
        _agree(models, repository, triton, store, 2, user)

        # 4. Killed after the Triton load of a rollback to version 1; then `reels serve` restarts.
        run = _promote(overrides, 1, "promote:after_triton_load")
        assert run.returncode == -signal.SIGKILL, run.stdout[-2000:] + run.stderr[-2000:]
        assert read_journal(repository)["phase"] == "triton_loaded" and ensemble_release(triton.http_url) == 1
        assert (models / "serving").read_text().strip() == "2"
    with source_stack(config, "synthetic") as (_, triton):  # start-up rolls forward: version 1 served
        store = config.server.redis.store(timeout_s=5.0, namespace_ttl_s=0.0)
        _agree(models, triton.repository, triton, store, 1, user)


def test_promotions_into_one_repository_run_one_at_a_time_and_a_killed_holder_frees_the_lock(tmp_path):
    """A second promotion (or a `reels serve` start-up) is refused while one runs; SIGKILL frees the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from reels.deploy.promotion import promotion_lock\n"
         "with promotion_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PromotionBusy, match="another promotion"):
            with promotion_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops a dead process's locks as it reaps it
        try:
            with promotion_lock(tmp_path):
                break
        except PromotionBusy:
            assert time.monotonic() < deadline
            time.sleep(0.1)
