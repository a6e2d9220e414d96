"""PLE beside MMoE and shared-bottom: a real PLE trained on the tiny features learns every task, its gate
diagnostics are well-formed, bad architecture settings fail before training, and the report shows all
three rankers with their intervals and gate tables."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from reels.models import metrics
from reels.models.config import RANKER_TASKS, RankerConfig
from reels.models.evaluation.offline import compare_rankers, gate_diagnostics
from reels.models.evaluation.report import markdown, targets
from reels.models.inputs import feature_schema
from reels.models.ranker import BINARY_TASKS, Ranker
from reels.workflows.errors import ConfigError
from tests.conftest import TINY_RANKER

PLE = replace(
    TINY_RANKER, architecture="ple", epochs=2, ple_levels=2, num_task_experts=1, num_shared_experts=2
)


@pytest.fixture(scope="module")
def ple(tiny_features) -> Ranker:
    ranker = Ranker(feature_schema(tiny_features), PLE)
    ranker.fit(tiny_features.read_split("train"))
    return ranker


def test_ple_learns_every_task(ple, tiny_features):
    test = tiny_features.read_split("test")
    predictions = ple.predict(test)
    for task in BINARY_TASKS:
        auc = metrics.binary_metrics(test[task].to_numpy(), predictions[task])["auc"]
        assert auc > 0.6, (task, auc)
    rmse = metrics.rmse(test["watch_fraction"].to_numpy(), predictions["watch_fraction"])
    assert rmse < test["watch_fraction"].std()


def test_gate_diagnostics_describe_every_ple_gate(ple, tiny_features):
    valid = tiny_features.read_split("valid")
    gates = gate_diagnostics(ple, valid, sample=2000)
    # two levels: four task gates each, plus the shared gate below the last level
    assert set(gates) == {f"gate_{level}_{t}" for level in (0, 1) for t in RANKER_TASKS} | {"gate_0_shared"}
    assert gates["gate_1_liked"]["experts"] == ["liked_0", "shared_0", "shared_1"]
    assert len(gates["gate_0_shared"]["experts"]) == 4 * PLE.num_task_experts + PLE.num_shared_experts
    for g in gates.values():
        assert g["rows"] == 2000
        assert sum(g["mean_weight"]) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= g["mean_entropy"] <= g["entropy_of_mean"] + 1e-6 <= g["max_entropy"] + 2e-6
    assert gate_diagnostics(Ranker(feature_schema(tiny_features), TINY_RANKER, "shared_bottom"), valid) == {}


def test_bad_architecture_settings_fail_before_training():
    with pytest.raises(ConfigError, match="architecture"):
        RankerConfig(architecture="moe")
    with pytest.raises(ConfigError, match="ple_levels"):
        RankerConfig(architecture="ple", ple_levels=3)
    with pytest.raises(ConfigError, match="num_shared_experts"):
        RankerConfig(num_shared_experts=0)


def test_report_shows_every_ranker_and_the_served_target():
    auc = {"auc_liked": 0.70, "logloss_liked": 0.5, "train_examples_per_s": 1000.0}
    ranking = {
        "mmoe": dict(auc), "ple": {**auc, "auc_liked": 0.72}, "shared_bottom": dict(auc),
        "_differences": {"mmoe-shared_bottom": {"auc_liked": [-0.01, 0.01]},
                         "ple-shared_bottom": {"auc_liked": [0.005, 0.03]}},
        "_gates": {"ple": {"gate_0_liked": {"experts": ["liked_0", "shared_0"], "mean_weight": [0.25, 0.75],
                                            "mean_entropy": 0.5, "entropy_of_mean": 0.56, "max_entropy": 0.69,
                                            "rows": 100}}},
        "_protocol": {"test_impressions": 10, "test_users": 500, "served_architecture": "ple"},
    }  # fmt: skip
    retrieval = {
        "_protocol": {"test_users": 500, "relevant_per_user": 1.0, "catalog": 10},
        "_ratios": {
            f"two_tower/{b}": {"recall@20": {"ratio": 1.0, "ci": [0.9, 1.1]}} for b in ("als", "popularity")
        },
        **{m: {"recall@20": 0.1} for m in ("two_tower", "als")},
    }
    judged = targets(retrieval, ranking)
    assert judged["ple_auc_ge_shared_bottom"]["met"] and "mmoe_auc_ge_shared_bottom" not in judged
    datasets = {"x": {"retrieval": retrieval, "ranking": ranking, "targets": judged}}
    split = {"start": "2026-01-01 00:00:00", "valid_start": "2026-03-01 00:00:00",
             "test_start": "2026-03-20 00:00:00", "end": "2026-04-02 00:00:00"}  # fmt: skip
    text = markdown(
        {"command": "c", "date": "d", "machine": "m", "datasets": datasets, "data": {"x": {"split": split}}}
    )
    assert "| ple | 0.7200 |" in text and "served: ple" in text
    assert (
        "training from 2026-01-01, validation from 2026-03-01, test from 2026-03-20 until 2026-04-02" in text
    )
    assert "- ple-shared_bottom: auc_liked [+0.0050, +0.0300]" in text
    assert "| ple | gate_0_liked | liked_0 0.25, shared_0 0.75 | 0.500 | 0.690 | 0.560 |" in text
    assert np.isclose(judged["ple_auc_ge_shared_bottom"]["per_task"]["auc_liked"]["ple"], 0.72)


def test_compare_rankers_scores_candidates_on_validation_and_rejects_bad_settings(tiny_features):
    cgc = {"architecture": "ple", "ple_levels": 1, "epochs": 1}
    result = compare_rankers(tiny_features, TINY_RANKER, {"cgc": cgc})
    assert result["cgc"]["overrides"] == cgc and set(result["cgc"]["gates"]) == {
        f"gate_0_{t}" for t in RANKER_TASKS
    }
    assert 0.5 < result["cgc"]["mean_auc"] < 1.0
    with pytest.raises(ConfigError, match="expert_width"):
        compare_rankers(tiny_features, TINY_RANKER, {"typo": {"expert_width": 8}})
    with pytest.raises(ConfigError, match="ple_levels"):
        compare_rankers(tiny_features, TINY_RANKER, {"cgc": cgc, "bad": {"ple_levels": 0}})
