"""Model code that needs no training: configuration checks and metrics on hand-computed cases (the tests
of really trained models are in tests/integration/test_training.py)."""

import numpy as np
import pytest

from reels.models import metrics
from reels.models.config import IndexConfig, RankerConfig, TwoTowerConfig


def test_bad_model_configs_fail_before_training():
    with pytest.raises(ValueError, match="score_weights"):
        RankerConfig(score_weights={"clicks": 1.0})
    with pytest.raises(ValueError, match="epochs"):
        TwoTowerConfig(epochs=0)
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="annoy")
    # Chained heads: binary tasks only, and a parent is never itself chained (no chains of chains).
    for bad in ({"watch_fraction": "view"}, {"liked": "clicks"}, {"liked": "view", "view": "completed"}):
        with pytest.raises(ValueError, match="conditional_on"):
            RankerConfig(conditional_on=bad)
    assert (
        RankerConfig(conditional_on={"liked": "view", "completed": "view"}).conditional_on["liked"] == "view"
    )


def test_metrics_on_a_hand_computed_case():
    top = np.array([[1, 2, 3, 4]])
    out = metrics.retrieval_metrics(top, [{2, 9}], [2, 4])
    assert out["recall@2"] == 0.5
    assert out["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert out["map@2"] == pytest.approx(0.5 / 2)
