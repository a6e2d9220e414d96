"""`reels retrain` on the tiny world: a real Dask LocalCluster builds the features, both models are
retrained, and the gate scores candidate and serving version on the same latest window."""

import json
import shutil

import pytest

from reels.client.cli import main
from reels.models.evaluation.gate import GateConfig, decide
from reels.models.registry import mark_serving, serving_model_dir


def _tiny_args(root) -> list[str]:
    sets = {
        "data.root": root, "features.history_length": 5, "features.video_freq_threshold": 2,
        "two_tower.epochs": 3, "two_tower.batch_size": 512, "two_tower.output_dim": 32, "two_tower.feature_dim": 16,
        "two_tower.hidden_units": "[64]", "two_tower.temperature": 0.1, "two_tower.learning_rate": 0.001,
        "ranker.epochs": 2, "ranker.batch_size": 512, "ranker.expert_units": "[32]", "ranker.tower_units": "[16]",
        "ranker.num_experts": 3, "retrain.dashboard_address": ":0", "retrain.gate_tolerance": 0.5,
    }  # fmt: skip
    out = ["--device", "cpu"]
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


def test_retrain_gates_against_the_serving_version_and_marks_the_winner(
    tiny_store, tiny_models, tmp_path, capsys
):
    source = tmp_path / "synthetic"
    source.mkdir()
    (source / "store").symlink_to(tiny_store.root.resolve())
    shutil.copytree(tiny_models.directory, source / "models" / "1")  # the serving version
    mark_serving(source / "models", 1)

    code = main([*_tiny_args(tmp_path), "retrain", "synthetic", "--no-promote"])
    out = capsys.readouterr().out
    assert code in (0, 3), out
    assert "LocalCluster" in out and "dashboard" in out
    gate = json.loads((source / "models" / "2" / "manifest.json").read_text())["gate"]
    assert gate["serving_version"] == 1
    for name in ("recall@20", "auc_view"):
        check = gate["checks"][name]
        assert 0 <= check["serving"] <= 1 and 0 <= check["candidate"] <= 1
        assert check["threshold"] == pytest.approx(check["serving"] * 0.5)
        assert check["passed"] == (check["candidate"] >= check["threshold"])
    # The serving version was scored on the same window, encoded with its own workflow.
    assert gate["candidate"]["test_users"] == gate["serving"]["test_users"] > 0
    assert gate["serving"]["catalog_known"] <= gate["candidate"]["catalog_known"] == 1.0
    assert (code == 0) == gate["passed"]
    assert serving_model_dir(source / "models").name == ("2" if gate["passed"] else "1")
    assert not list((source / "retrain").glob("gate-*")), (
        "the serving version's window features are temporary"
    )


def test_gate_decision_rules():
    config = GateConfig(metrics=("recall@20", "auc_view"), tolerance=0.1)
    serving = {"recall@20": 0.20, "auc_view": 0.70}
    assert decide({"recall@20": 0.19, "auc_view": 0.64}, serving, config).passed  # within 10%
    failed = decide({"recall@20": 0.17, "auc_view": 0.71}, serving, config)
    assert (
        not failed.passed and not failed.checks["recall@20"]["passed"] and failed.checks["auc_view"]["passed"]
    )
    assert decide({"recall@20": 0.0, "auc_view": 0.5}, None, config).passed  # nothing serving yet
    with pytest.raises(KeyError, match="ndcg@5"):
        decide({"recall@20": 0.2}, serving, GateConfig(metrics=("ndcg@5",)))


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
