"""Creator exposure on the tiny trained models and a real redis-server: the re-rank's creator cap changes
what is served, and that change is what spreads exposure over more creators."""

import numpy as np
import pandas as pd

from reels.feature_store.store import OnlineStore
from reels.models.evaluation.exposure import exposure_report
from reels.models.serving.config import ServingConfig
from reels.models.serving.pipeline import InProcessPipeline
from reels.models.serving.request import Request
from reels.models.serving.rerank import DiversityRerank

K = 10
WHEN = 1_800_000_000
# Pure score order (mmr_lambda 1) and no exploration slots: the only thing the re-rank can change is what
# the caps forbid. The category cap is out of reach (K per category), so only the creator cap acts.
CAPPED = ServingConfig(
    candidates=200, mmr_lambda=1.0, exploration_slots=0, max_per_creator=1, max_per_category=K,
    log_exposures=False,
)  # fmt: skip
UNCAPPED = ServingConfig(
    candidates=200, mmr_lambda=1.0, exploration_slots=0, max_per_creator=K, max_per_category=K,
    log_exposures=False,
)  # fmt: skip


def _max_per_creator(catalog, videos: np.ndarray) -> int:
    rows = catalog.rows(videos)
    assert not np.isnan(rows).any()
    return int(pd.Series(catalog.creator[rows.astype(np.int64)]).value_counts().max())


def test_creator_cap_spreads_creator_exposure(tiny_models, tiny_features, redis_server):
    client = redis_server.client(timeout_s=5.0)
    client.flushall()
    store = OnlineStore(client)
    store.load(tiny_features)
    pipeline = InProcessPipeline(tiny_models.directory, store, CAPPED)
    catalog = pipeline.rerank.catalog
    uncapped = DiversityRerank(catalog, UNCAPPED)
    users = pd.read_parquet(tiny_features.users_path).query("user_id > 2")["raw_user_id"].to_numpy()[:40]

    repeated = 0
    for user in users:
        query = pipeline.feature_transform(Request(int(user), K, request_time_s=WHEN).validate(CAPPED.max_k))
        ids, scores, tasks, fallback = pipeline.ranking(query, *pipeline.retrieval(query, query.seen))
        assert fallback == 0
        ranked = ids[np.argsort(-scores, kind="stable")[:K]]
        history = query.features["history_video_ids"][0]
        capped = pipeline.rerank(ids, scores, tasks, history, K, WHEN, fallback, user_id=int(user))
        free = uncapped(ids, scores, tasks, history, K, WHEN, fallback, user_id=int(user))
        # Without the caps this re-rank serves the ranker's top K unchanged ...
        np.testing.assert_array_equal(free.video_ids, ranked)
        # ... with them, no feed shows a creator twice, and the feed is still the best allowed videos.
        assert len(capped.video_ids) == K and _max_per_creator(catalog, capped.video_ids) == 1
        assert capped.scores.max() == scores.max()
        repeated += _max_per_creator(catalog, ranked) > 1
    # The cap must have had something to do: the ranker repeats creators in many of these feeds.
    assert repeated >= len(users) // 2, repeated

    capped_report = exposure_report(pipeline, users, k=K, request_time_s=WHEN)
    pipeline.rerank = uncapped
    uncapped_report = exposure_report(pipeline, users, k=K, request_time_s=WHEN)
    assert capped_report["requests"] == uncapped_report["requests"] == len(users)
    before, after = capped_report["before_rerank"], capped_report["after_rerank"]
    assert uncapped_report["before_rerank"] == before  # the same ranked feeds both times
    assert uncapped_report["after_rerank"] == before  # no caps: the re-rank changes no exposure
    assert after["gini"] < before["gini"] - 0.01, (before, after)
    assert after["creators_exposed"] > before["creators_exposed"], (before, after)
    assert after["top1pct_share"] < before["top1pct_share"], (before, after)
