"""Evaluation rules on hand-computed cases, without models or servers: the promotion gate's decision and
the creator-exposure statistics. (The gate on really trained versions: tests/integration/test_retrain.py;
exposure of real feeds: tests/integration/test_exposure.py.)"""

import numpy as np
import pytest

from reels.models.evaluation.exposure import gini, top_share
from reels.models.evaluation.gate import GateConfig, decide
from reels.workflows.errors import ConfigError


def test_gate_decision_rules():
    config = GateConfig(metrics=("recall@20", "auc_view"), tolerance=0.1)
    serving = {"recall@20": 0.20, "auc_view": 0.70}
    assert decide({"recall@20": 0.19, "auc_view": 0.64}, serving, config).passed  # within 10%
    failed = decide({"recall@20": 0.17, "auc_view": 0.71}, serving, config)
    assert not failed.passed
    assert not failed.checks["recall@20"]["passed"] and failed.checks["auc_view"]["passed"]
    assert failed.checks["recall@20"]["threshold"] == pytest.approx(0.18)
    exact = GateConfig(metrics=("recall@20",), tolerance=0.0)
    assert decide({"recall@20": 0.20}, {"recall@20": 0.20}, exact).passed  # equal is enough
    assert not decide({"recall@20": 0.1999}, {"recall@20": 0.20}, exact).passed
    first = decide({"recall@20": 0.0, "auc_view": 0.5}, None, config)  # nothing serving yet
    assert first.passed and first.checks["recall@20"]["threshold"] is None
    with pytest.raises(ConfigError, match="ndcg@5"):
        decide({"recall@20": 0.2}, serving, GateConfig(metrics=("ndcg@5",)))


def test_gini_and_top_share_on_known_distributions():
    assert gini(np.ones(100)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(99), 10.0]) == pytest.approx(0.99)
    assert gini(np.zeros(5)) == 0.0
    assert top_share(np.r_[np.ones(99), 101.0], 0.01) == pytest.approx(0.505)
