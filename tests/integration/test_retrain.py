"""`reels retrain` on the tiny world: a real Dask LocalCluster builds the features, both models are
retrained, and the gate scores candidate and serving version on the same latest window.

The outcome of each gate is fixed by construction (tolerance 0, so candidate >= serving on every metric):
a candidate trained at a learning rate of 1e-9 is an untrained model and must lose to the trained
serving version (exit 1, nothing marked); served on purpose, that untrained version must then lose to a
properly trained candidate (exit 0, the candidate marked serving). On the tiny data the margins are wide
(recall@20 about 0.04 untrained vs 0.19 trained; auc_view about 0.47 vs 0.63-0.69)."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from reels.client.cli import main
from reels.models.registry import mark_serving, serving_model_dir
from reels.workflows.errors import CheckFailed

GATED = ("recall@20", "auc_view")
TINY = {
    "features.history_length": 5, "features.video_freq_threshold": 2,
    "two_tower.epochs": 3, "two_tower.batch_size": 512, "two_tower.output_dim": 32, "two_tower.feature_dim": 16,
    "two_tower.hidden_units": "[64]", "two_tower.temperature": 0.1, "two_tower.learning_rate": 0.001,
    "ranker.epochs": 2, "ranker.batch_size": 512, "ranker.expert_units": "[32]", "ranker.tower_units": "[16]",
    "ranker.num_experts": 3, "retrain.dashboard_address": ":0", "retrain.gate_tolerance": 0.0,
    "retrain.gate_metrics": f"[{', '.join(GATED)}]",
}  # fmt: skip
# Same architecture, one epoch at a learning rate of 1e-9: the weights stay at their (seeded) initial values.
UNTRAINED = TINY | {
    "two_tower.epochs": 1, "two_tower.learning_rate": "1.0e-9", "ranker.epochs": 1, "ranker.learning_rate": "1.0e-9",
}  # fmt: skip


def _retrain(data_root: Path, sets: dict) -> tuple[int, str]:
    """`reels retrain synthetic --no-promote` under ``data_root``: its exit code and everything it printed."""
    args = ["--device", "cpu", "--set", f"data.root={data_root}"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([*args, "retrain", "synthetic", "--no-promote"])
    return code, out.getvalue()


def _source(root: Path, store: Path) -> Path:
    source = root / "synthetic"
    source.mkdir(parents=True)
    (source / "store").symlink_to(Path(store).resolve())
    return source


def _check_gate(gate: dict, serving_version: int) -> None:
    assert gate["serving_version"] == serving_version
    assert set(gate["checks"]) == set(GATED)
    for check in gate["checks"].values():
        assert 0 <= check["serving"] <= 1 and 0 <= check["candidate"] <= 1
        assert check["threshold"] == pytest.approx(check["serving"])  # tolerance 0
        assert check["passed"] == (check["candidate"] >= check["threshold"])
    # The serving version was scored on the same window, encoded with its own workflow.
    assert gate["candidate"]["test_users"] == gate["serving"]["test_users"] > 0
    assert gate["serving"]["catalog_known"] <= gate["candidate"]["catalog_known"] == 1.0


@pytest.fixture(scope="module")
def rejected_run(tiny_store, tiny_models, tmp_path_factory) -> tuple[int, str, Path]:
    """Serving: the trained tiny models (version 1); candidate: an untrained version 2. The exit code and
    output are captured here and the tests below only read this source, so their order does not matter."""
    root = tmp_path_factory.mktemp("retrain_rejected")
    source = _source(root, tiny_store.root)
    shutil.copytree(tiny_models.directory, source / "models" / "1")
    mark_serving(source / "models", 1)
    code, out = _retrain(root, UNTRAINED)
    return code, out, source


def test_an_untrained_candidate_is_rejected_and_not_marked(rejected_run):
    code, out, source = rejected_run
    assert code == CheckFailed.exit_code == 1, out
    assert "LocalCluster" in out and "dashboard" in out
    assert "not promoted" in out
    gate = json.loads((source / "models" / "2" / "manifest.json").read_text())["gate"]
    _check_gate(gate, serving_version=1)
    assert not gate["passed"]
    assert not any(check["passed"] for check in gate["checks"].values()), gate["checks"]
    assert serving_model_dir(source / "models").name == "1"
    assert not list((source / "retrain").glob("gate-*")), (
        "the serving version's window features are temporary"
    )


def test_a_rejected_candidate_is_never_served_even_without_a_pointer(rejected_run, tmp_path):
    """With no serving pointer the fallback skips the rejected version 2, and `reels promote 2` refuses."""
    _, _, rejected_source = rejected_run
    source = tmp_path / "synthetic"
    for version in ("1", "2"):
        shutil.copytree(rejected_source / "models" / version, source / "models" / version)
    assert serving_model_dir(source / "models").name == "1"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["--device", "cpu", "--set", f"data.root={tmp_path}", "promote", "synthetic", "2"])
    assert code == 2, out.getvalue()
    assert "version 2 is not servable: the promotion gate rejected it" in out.getvalue()
    assert not (source / "models" / "serving").exists()


def test_a_trained_candidate_beats_a_worse_serving_version_and_is_marked(rejected_run, tiny_store, tmp_path):
    """The untrained version 2 of the run above, served on purpose: a properly trained candidate must pass.
    Its gate record is removed first (as if trained by hand with `reels train`): a version the gate
    rejected can never be marked serving."""
    _, _, rejected_source = rejected_run
    source = _source(tmp_path, tiny_store.root)
    shutil.copytree(rejected_source / "models" / "2", source / "models" / "2")
    manifest_path = source / "models" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["gate"]
    manifest_path.write_text(json.dumps(manifest))
    mark_serving(source / "models", 2)
    code, out = _retrain(tmp_path, TINY)
    assert code == 0, out
    assert "LocalCluster" in out and "passed the gate" in out
    gate = json.loads((source / "models" / "3" / "manifest.json").read_text())["gate"]
    _check_gate(gate, serving_version=2)
    assert gate["passed"] and all(check["passed"] for check in gate["checks"].values()), gate["checks"]
    assert serving_model_dir(source / "models").name == "3"
    assert not list((source / "retrain").glob("gate-*"))


@pytest.mark.gpu
def test_gpu_retrain_cluster_is_a_local_cuda_cluster_computing_on_the_gpu():
    from reels.workflows.device import gpu_available

    if not gpu_available():
        pytest.skip(
            "no NVIDIA GPU with the GPU stack (cudf, dask-cuda) here: the GPU cluster path cannot run"
        )
    import dask
    import distributed

    from reels.deploy.dask_cluster import dask_cluster

    def on_gpu() -> float:
        import cupy

        return float(cupy.arange(1000, dtype=cupy.float32).sum())

    with dask_cluster(device="gpu", dashboard_address=":0") as info:
        assert info.kind == "LocalCUDACluster" and info.workers >= 1
        assert distributed.get_client().submit(on_gpu).result(timeout=60) == 499500.0
        assert dask.compute(dask.delayed(on_gpu)())[0] == 499500.0
