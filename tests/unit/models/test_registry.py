"""The model registry without training: version numbers claimed by concurrent processes, the staging
directories of dead trains, and which versions the gate's verdict lets serve."""

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from reels.models.registry import (
    GATE_PENDING,
    check_servable,
    claim_version,
    mark_serving,
    next_version,
    serving_model_dir,
)
from reels.workflows.errors import InvalidInput, NotFound

CLAIMS_PER_PROCESS = 15


def _claim_many(root: str, start_at: float) -> list[int]:
    """Claim and publish versions as fast as possible (runs in a process of its own)."""
    import time

    while time.time() < start_at:  # every process starts claiming at the same moment
        time.sleep(0.001)
    versions = []
    for _ in range(CLAIMS_PER_PROCESS):
        with claim_version(Path(root)) as claim:
            (claim.staging / "manifest.json").write_text(json.dumps({"version": claim.version}))
            claim.publish()
        versions.append(claim.version)
    return versions


def test_concurrent_claims_never_take_the_same_version(tmp_path):
    import time

    processes = 4
    # spawn: a clean interpreter per process, as separate `reels train` commands are
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        start_at = time.time() + 3.0
        claimed = list(pool.map(_claim_many, [str(tmp_path)] * processes, [start_at] * processes))
    every = sorted(v for versions in claimed for v in versions)
    assert every == list(range(1, processes * CLAIMS_PER_PROCESS + 1))
    for version in every:
        manifest = json.loads((tmp_path / str(version) / "manifest.json").read_text())
        assert manifest["version"] == version
    assert not list(tmp_path.glob(".*.partial"))


def test_a_live_claim_is_kept_and_a_dead_trains_staging_is_removed(tmp_path):
    (tmp_path / "1").mkdir()
    dead = tmp_path / ".7.partial"  # a train killed mid-way: no process holds its lock
    (dead / "ranker").mkdir(parents=True)
    with claim_version(tmp_path) as live:
        assert live.version == 2 and not dead.exists()
        with claim_version(tmp_path) as other:  # the live claim's number is taken, its files kept
            assert other.version == 3 and live.staging.exists()
            assert next_version(tmp_path) == 4
        assert not other.staging.exists()  # left without publishing: given back
        assert live.publish() == tmp_path / "2"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".claim")) == ["1", "2"]


def _version(root: Path, version: int, gate: dict | None = None) -> Path:
    directory = root / str(version)
    directory.mkdir(parents=True)
    manifest = {"version": version} | ({"gate": gate} if gate is not None else {})
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


REJECTED = {
    "passed": False,
    "checks": {"recall@20": {"candidate": 0.04, "threshold": 0.19, "passed": False}},
}


def test_the_fallback_never_serves_a_version_the_gate_rejected_or_never_decided(tmp_path):
    _version(tmp_path, 1)  # `reels train`: never gated, servable
    _version(tmp_path, 2, {"passed": True, "checks": {}})
    _version(tmp_path, 3, REJECTED)
    _version(tmp_path, 4, GATE_PENDING)  # a retrain that stopped before its gate decided
    assert serving_model_dir(tmp_path).name == "2"
    with pytest.raises(
        InvalidInput, match=r"version 3 is not servable: .*rejected.*recall@20 0\.0400 < 0\.1900"
    ):
        check_servable(tmp_path / "3")
    with pytest.raises(InvalidInput, match="before the promotion gate decided"):
        mark_serving(tmp_path, 4)
    assert not (tmp_path / "serving").exists()
    mark_serving(tmp_path, 1)
    assert serving_model_dir(tmp_path).name == "1"
    (tmp_path / "serving").write_text("3\n")  # a pointer edited by hand to a rejected version
    with pytest.raises(InvalidInput, match="version 3 is not servable"):
        serving_model_dir(tmp_path)


def test_no_servable_version_is_not_found(tmp_path):
    _version(tmp_path, 1, REJECTED)
    with pytest.raises(NotFound, match="rejected every one"):
        serving_model_dir(tmp_path)


def test_reels_promote_refuses_a_rejected_version(tmp_path, capsys):
    from reels.client.cli import main

    models = tmp_path / "synthetic" / "models"
    _version(models, 1)
    _version(models, 2, REJECTED)
    mark_serving(models, 1)
    code = main(["--set", f"data.root={tmp_path}", "promote", "synthetic", "2"])
    assert code == InvalidInput.exit_code == 2
    assert "version 2 is not servable: the promotion gate rejected it" in capsys.readouterr().err
    assert (models / "serving").read_text().strip() == "1"
    assert os.listdir(tmp_path / "synthetic") == ["models"]  # nothing else was touched
