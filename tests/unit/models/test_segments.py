"""The hindsight feed (the best feed shared by every user, picked from the window itself), the recall split
by whether a query user had a history before the window, and how much the ranking tasks share."""

import numpy as np
import pandas as pd
import pytest

from reels.models import baselines, metrics
from reels.models.evaluation.offline import Queries, hindsight_scorer, segment_intervals, task_transfer


def _queries(relevant: list[set[int]], seen: list[list[int]]) -> Queries:
    return Queries(
        frame=pd.DataFrame({"raw_user_id": np.arange(len(relevant))}),
        relevant=relevant,
        seen=[np.array(s, dtype=np.int64) for s in seen],
        prior_views=pd.DataFrame({"raw_user_id": [], "position": []}),
    )


def test_hindsight_scores_what_the_other_users_view_weighted_by_their_recall():
    queries = _queries([{0, 1}, {1}, {1, 2, 3}], [[], [4], []])
    scores = hindsight_scorer(queries, n_items=5)(np.arange(3))
    # User 0 sees what users 1 (1 video: weight 1) and 2 (3 videos: 1/3 each) view, never its own views.
    np.testing.assert_allclose(scores[0], [0, 1 + 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(scores[1], [0.5, 0.5 + 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(scores[2], [0.5, 1.5, 0, 0, 0])
    # Rows can be asked for in any order and subset, as top_k does in chunks.
    np.testing.assert_allclose(hindsight_scorer(queries, 5)(np.array([2, 0])), scores[[2, 0]])


def test_the_hindsight_feed_is_the_best_common_feed_when_nobody_is_left_out():
    rng = np.random.default_rng(0)
    relevant = [set(rng.choice(40, size=rng.integers(1, 8), replace=False).tolist()) for _ in range(60)]
    queries = _queries(relevant, [[] for _ in relevant])
    own = hindsight_scorer(queries, 40)(np.arange(60)) + np.array(
        [np.isin(np.arange(40), list(r)) / len(r) for r in relevant]
    )  # add each user's own share back: the in-sample optimum of mean recall@k over one common list
    common = own[0]
    np.testing.assert_allclose(own, np.broadcast_to(common, own.shape))
    best = baselines.top_k(baselines.popularity_scorer(common), 60, queries.seen, 5)
    recall = metrics.per_user_retrieval_metrics(best, relevant, [5])["recall@5"].mean()
    for _ in range(200):  # no random common list of 5 does better
        other = np.tile(rng.choice(40, size=5, replace=False), (60, 1))
        assert metrics.per_user_retrieval_metrics(other, relevant, [5])["recall@5"].mean() <= recall + 1e-12


def test_segments_split_users_by_history_and_keep_each_models_numbers():
    per_user = {
        "two_tower": {"recall@20": np.array([0.1, 0.2, 0.5, 0.7])},
        "popularity": {"recall@20": np.array([0.1, 0.1, 0.2, 0.2])},
    }
    has_history = np.array([False, False, True, True])
    out = segment_intervals(per_user, has_history, [("two_tower", "popularity")], seed=0)
    assert list(out) == ["no history", "with history"]
    assert out["no history"]["users"] == 2 and out["with history"]["users"] == 2
    assert out["no history"]["recall@20"]["two_tower"] == pytest.approx(0.15)
    assert out["with history"]["ratios"]["two_tower/popularity"]["ratio"] == pytest.approx(3.0)
    lo, hi = out["with history"]["ci95"]["two_tower"]
    assert 0.5 <= lo <= 0.6 <= hi <= 0.7
    # A segment nobody falls in is left out rather than reported empty.
    assert list(segment_intervals(per_user, np.ones(4, bool), [("two_tower", "popularity")], 0)) == [
        "with history"
    ]


def test_task_transfer_shows_nested_labels_and_heads_that_rank_each_others_tasks():
    rating = np.random.default_rng(1).integers(1, 6, 3000)
    labels = {"view": rating > 2, "liked": rating >= 4, "completed": rating == 5}
    heads = {"view": rating / 5.0, "liked": rating / 5.0, "completed": (rating == 5) * 0.9 + 0.05}
    out = task_transfer(labels, heads)
    # Nested thresholds of one rating: every completed is liked, every liked is a view.
    assert out["given"]["completed"] == {"view": 1.0, "liked": 1.0, "completed": 1.0}
    assert out["given"]["liked"]["view"] == 1.0 and out["given"]["view"]["completed"] < 0.5
    # Heads scoring the rating itself rank every task perfectly: nothing task-specific to learn.
    assert out["auc"]["view"]["liked"] == out["auc"]["liked"]["completed"] == 1.0
    assert out["auc"]["completed"]["view"] < 1.0
