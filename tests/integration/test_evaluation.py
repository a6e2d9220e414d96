"""The offline evaluation on really trained tiny models: bootstrap intervals for every method, the oracle from
the synthetic generator's ground truth, and targets judged on interval bounds (or not judged)."""

import pytest

from reels.models.config import EvaluationConfig, RankerConfig
from reels.models.evaluation.bootstrap import MIN_TEST_USERS
from reels.models.evaluation.offline import evaluate
from reels.models.evaluation.report import markdown, targets

FAST = EvaluationConfig(ks=(10, 20), als_factors=(8,), als_regularization=(0.1,), als_iterations=3)
FAST_RANKER = RankerConfig(epochs=1, batch_size=512, expert_units=(16,), tower_units=(8,), num_experts=2)


def test_every_number_comes_with_an_interval_and_the_oracle_bounds_what_is_learnable(
    tiny_features, tiny_models
):
    result = evaluate(tiny_features, tiny_models, FAST, FAST_RANKER)
    retrieval, ranking = result["retrieval"], result["ranking"]
    methods = ("two_tower", "als", "popularity", "trending", "random", "hindsight", "oracle")
    assert set(methods) <= set(retrieval)
    for method in methods:
        lo, hi = retrieval[method]["ci95"]["recall@20"]
        assert lo <= retrieval[method]["recall@20"] <= hi
    share = retrieval["_ratios"]["two_tower/oracle"]["recall@20"]
    assert share["ci"][0] <= share["ratio"] <= share["ci"][1]
    # The generator's own view probabilities bound what is learnable: above every learned model and
    # popularity, far above chance.
    for method in ("two_tower", "als", "popularity", "trending"):
        assert retrieval["oracle"]["recall@20"] > retrieval[method]["recall@20"]
    assert retrieval["oracle"]["recall@20"] > 2 * retrieval["random"]["recall@20"]
    assert retrieval["_protocol"]["test_events"] >= retrieval["_protocol"]["test_users"]
    # Query users split by history: the segments hold every user, and their numbers add up to the whole.
    users = retrieval["_protocol"]["test_users"]
    segments = retrieval["_segments"]
    assert sum(s["users"] for s in segments.values()) == users
    for method in methods:
        whole = sum(s["users"] * s["recall@20"][method] for s in segments.values()) / users
        assert whole == pytest.approx(retrieval[method]["recall@20"])
    # The served model's heads on every task's labels: its own task's AUC on the diagonal.
    transfer = ranking["_task_transfer"]
    served = ranking["_protocol"]["served_architecture"]
    for task in transfer["auc"]:
        assert transfer["auc"][task][task] == pytest.approx(ranking[served][f"auc_{task}"])
        assert transfer["given"][task][task] == 1.0
    for task_bounds in ranking["_differences"]["mmoe-shared_bottom"].values():
        assert task_bounds[0] <= task_bounds[1]
    # Each ranker says what it was trained with: the served one the version's, the others the given config.
    assert ranking["mmoe"]["settings"]["learning_rate"] == tiny_models.ranker.config.learning_rate
    assert ranking["ple"]["settings"]["epochs"] == FAST_RANKER.epochs
    judged = targets(retrieval, ranking)
    if retrieval["_protocol"]["test_users"] < MIN_TEST_USERS:
        assert list(judged) == ["not_judged"]
    else:
        assert judged["two_tower_recall@20_vs_als"]["met"] == (
            judged["two_tower_recall@20_vs_als"]["ci95"][0] >= 1.2
        )
    text = markdown(
        {"command": "c", "date": "d", "machine": "m", "datasets": {"tiny": {**result, "targets": judged}}}
    )
    assert "95 % bootstrap intervals" in text and "as a share of the oracle" in text
    assert (
        "| row task |" in text
        and "| query users | users |" in text
        and "- two_tower / hindsight, recall@20" in text
    )
    # The trending window is picked on validation from the configured grid, and the report says which.
    assert retrieval["trending"]["tuned_on_valid"]["days"] in FAST.trending_days
    assert "- two_tower / trending, recall@20" in text and "Trending (the most viewed" in text
