"""Bootstrap intervals over test users, and targets judged on their lower bounds."""

import numpy as np
import pytest

from reels.models import metrics
from reels.models.evaluation.bootstrap import MIN_TEST_USERS, ranking_intervals, retrieval_intervals
from reels.models.evaluation.report import RATIO_TARGETS, markdown, targets


def test_per_user_metrics_average_to_the_reported_means():
    top = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    relevant = [{2}, {9, 10}, {4}]
    per_user = metrics.per_user_retrieval_metrics(top, relevant, [3])
    assert per_user["recall@3"].tolist() == [1.0, 0.0, 0.0]
    assert metrics.retrieval_metrics(top, relevant, [3])["recall@3"] == pytest.approx(1 / 3)


def test_intervals_contain_the_point_estimate_and_shrink_with_more_users():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2500):
        a = {"recall@20": rng.binomial(1, 0.3, n).astype(float)}
        b = {"recall@20": rng.binomial(1, 0.2, n).astype(float)}
        out = retrieval_intervals({"a": a, "b": b}, ["recall@20"], [("a", "b")], resamples=500)
        lo, hi = out["models"]["a"]["recall@20"]
        assert lo <= a["recall@20"].mean() <= hi
        ratio = out["ratios"]["a/b"]["recall@20"]
        assert ratio["ci"][0] <= ratio["ratio"] <= ratio["ci"][1]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # 25x the users: about 1/5 of the width


def test_ranking_intervals_resample_users_paired_between_models():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(300), 10)
    y = rng.binomial(1, 0.4, len(users))
    good = y + rng.normal(0, 0.8, len(users))
    out = ranking_intervals(users, {"liked": y}, {"mmoe": {"liked": good}, "shared": {"liked": good.copy()}}, "shared",
                            resamples=50)  # fmt: skip
    assert out["differences"]["mmoe-shared"]["auc_liked"] == [0.0, 0.0]  # the same scores: exactly 0
    lo, hi = out["models"]["mmoe"]["auc_liked"]
    assert 0.5 < lo < hi < 1.0


def _dataset(ratio_lo: float, users: int) -> tuple[dict, dict]:
    retrieval = {
        "_protocol": {"test_users": users},
        "_ratios": {
            "two_tower/als": {"recall@20": {"ratio": 1.5, "ci": [ratio_lo, 1.8]}},
            "two_tower/popularity": {"recall@20": {"ratio": 2.5, "ci": [2.1, 2.9]}},
        },
    }
    ranking = {
        "mmoe": {"auc_liked": 0.71}, "shared_bottom": {"auc_liked": 0.70},
        "_differences": {"mmoe-shared_bottom": {"auc_liked": [-0.002, 0.02]}},
    }  # fmt: skip
    return retrieval, ranking


def test_a_target_is_met_only_when_the_lower_bound_clears_it():
    t = targets(*_dataset(1.25, 500))
    assert t["two_tower_recall@20_vs_als"]["met"] and t["two_tower_recall@20_vs_popularity"]["met"]
    assert not t["mmoe_auc_ge_shared_bottom"]["met"]  # higher point estimate, interval crosses 0
    assert not targets(*_dataset(1.1, 500))["two_tower_recall@20_vs_als"]["met"]  # ratio 1.5, bound 1.1


def test_targets_are_not_judged_on_a_tiny_test_window():
    t = targets(*_dataset(1.25, MIN_TEST_USERS - 1))
    assert list(t) == ["not_judged"] and "test users" in t["not_judged"]
    results = {"command": "reels evaluate", "date": "d", "machine": "m", "datasets": {}}
    assert "Results" in markdown(results)


def test_the_oracle_share_is_a_target_where_the_data_set_states_one():
    retrieval, ranking = _dataset(1.25, 500)
    retrieval["_ratios"]["two_tower/oracle"] = {"recall@20": {"ratio": 0.65, "ci": [0.61, 0.69]}}
    judged = targets(retrieval, ranking, RATIO_TARGETS["synthetic"])
    share = judged["two_tower_recall@20_share_of_oracle"]
    assert share["met"] and share["target"] == 0.6 and "two_tower_recall@20_vs_als" not in judged
    retrieval["_ratios"]["two_tower/oracle"]["recall@20"]["ci"] = [0.59, 0.67]  # point 0.65, bound below
    assert not targets(retrieval, ranking, RATIO_TARGETS["synthetic"])["two_tower_recall@20_share_of_oracle"][
        "met"
    ]
    # A data set with no stated ratio (an imported one) is judged on its ranker alone; a stated ratio the
    # results lack (no oracle on MovieLens) is skipped.
    assert list(targets(retrieval, ranking, {})) == ["mmoe_auc_ge_shared_bottom"]
    del retrieval["_ratios"]["two_tower/oracle"]
    assert "two_tower_recall@20_share_of_oracle" not in targets(
        retrieval, ranking, RATIO_TARGETS["synthetic"]
    )
