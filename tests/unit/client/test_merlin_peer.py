"""The Merlin Systems peer's own operators on tiny real tables (the peer needs the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("merlin.systems", reason="merlin-systems is the optional `bench` extra")

from merlin.dag import ColumnSelector, Node  # noqa: E402
from merlin.table import TensorTable  # noqa: E402

from reels.client.bench.merlin_peer import _operators, merlin_systems_pipeline  # noqa: E402
from reels.workflows.errors import InvalidInput  # noqa: E402

OPS = _operators()
USERS = pd.DataFrame(
    {
        "user_id": [10, 11],
        "country": ["de", "fr"],
        "user_event_count": np.array([3.0, 5.0], np.float32),
        "history_video_ids": [np.array([7, 8, 9]), np.array([4, 5, 6])],
        "seen_video_ids": [np.array([100, 101]), None],
    },
    index=[10, 11],
)


def test_lookup_returns_rows_in_request_order_and_fills_unknown_ids():
    lookup = OPS["LookupFeatures"](
        USERS,
        ["user_id", "country", "user_event_count"],
        unknown={"user_id": OPS["LookupFeatures"].KEY, "country": "<unknown>", "user_event_count": 0.0},
    )
    rows = lookup.transform(
        ColumnSelector(["raw_user_id"]), TensorTable({"raw_user_id": np.array([11, 99, 10])})
    )
    assert rows["user_id"].tolist() == [11, 99, 10]
    assert rows["country"].tolist() == ["fr", "<unknown>", "de"]
    assert rows["user_event_count"].tolist() == [5.0, 0.0, 3.0]
    assert rows["user_id"].dtype == np.int64 and rows["user_event_count"].dtype == np.float32


def test_lookup_lists_are_dense_with_a_width_and_ragged_without():
    lookup = OPS["LookupFeatures"](USERS, [], lists={"history_video_ids": 3, "seen_video_ids": None})
    out = lookup.transform(
        ColumnSelector(["raw_user_id"]), TensorTable({"raw_user_id": np.array([10, 11, 99])})
    )
    assert out["history_video_ids"].values.tolist() == [[7, 8, 9], [4, 5, 6], [0, 0, 0]]
    assert out["seen_video_ids"].values.tolist() == [100, 101]  # user 11 has none, 99 is unknown
    assert out["seen_video_ids"].offsets.tolist() == [0, 2, 2, 2]


def test_hours_since_adds_the_clipped_age_and_keeps_the_other_columns():
    hours_since = OPS["HoursSince"]()
    now = 1_000_000
    out = hours_since.transform(
        ColumnSelector(["upload_time_s"]),
        TensorTable(
            {"upload_time_s": np.array([now - 7200, now + 3600]), "request_time": np.array([now])},
        ),
    )
    assert sorted(out.columns) == ["upload_time_s", "video_age"]
    assert out["video_age"].values.tolist() == [2.0, 0.0]  # an upload after the request counts as new


def test_top_k_orders_ids_by_the_weighted_task_score():
    top = OPS["TopKByScore"](Node.construct_from(["view", "liked"]), {"view": 0.5, "liked": 1.0}, k=2)
    out = top.transform(
        ColumnSelector(["filtered_ids"]),
        TensorTable(
            {
                "filtered_ids": np.array([5, 6, 7], np.int32),
                "view": np.array([0.9, 0.1, 0.4], np.float32),
                "liked": np.array([0.0, 0.9, 0.2], np.float32),
            }
        ),
    )
    assert out["ordered_ids"].values.tolist() == [[6, 5]]  # scores 0.45, 0.95, 0.4
    np.testing.assert_allclose(out["ordered_scores"].values, [[0.95, 0.45]], rtol=1e-6)


def test_bad_arguments_are_refused_before_anything_is_built():
    with pytest.raises(InvalidInput, match="candidates >= k"):
        merlin_systems_pipeline(Path("nowhere"), Path("nowhere"), np.array([1]), k=20, candidates=10)


def test_the_peer_serves_a_trained_version_whose_query_tower_reads_fewer_features_than_the_ranker(
    tiny_models, tiny_features
):
    # The query tower leaves out the user rate features the ranker reads: the peer's DAG must hand each
    # model exactly its own inputs (Merlin refuses extra columns).
    users = pd.read_parquet(tiny_features.users_path)["raw_user_id"].to_numpy()[:8]
    out = merlin_systems_pipeline(tiny_models.directory, tiny_features.root, users, k=5, candidates=50)
    assert out["requests"] == 8 and 0 < out["p50_ms"] <= out["p99_ms"]
