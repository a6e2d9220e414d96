"""The in-process pipeline with the numpy forwards of the query tower and the ranker (the default) against
the same pipeline with their SavedModels, on a real redis-server and the tiny trained models: the same
feeds, in the same order, up to float32 ties."""

import numpy as np
import pandas as pd

from reels.models.query_tower_numpy import NumpyQueryTower
from reels.models.ranker import ExportedRanker
from reels.models.ranker_numpy import NumpyRanker
from reels.models.serving.config import ServingConfig
from reels.models.serving.pipeline import InProcessPipeline
from reels.models.serving.request import Request
from reels.models.two_tower import QueryTower

# No exploration (random slots) and no exposure log: the feed depends on the scores only; and the ranker's
# own scores (retrieval_weight 0), whose ulps standardising would magnify.
CONFIG = ServingConfig(
    candidates=200, max_k=20, exploration_slots=0, log_exposures=False, retrieval_weight=0.0
)
REQUESTS = 200


def test_numpy_and_savedmodel_towers_serve_the_same_feeds(loaded_store, tiny_models, tiny_features):
    numpy_pipeline = InProcessPipeline(tiny_models.directory, loaded_store, CONFIG)
    saved_pipeline = InProcessPipeline(
        tiny_models.directory,
        loaded_store,
        ServingConfig(
            **{**vars(CONFIG), "ranker_backend": "savedmodel", "query_tower_backend": "savedmodel"}
        ),
    )
    assert isinstance(numpy_pipeline.ranking.ranker, NumpyRanker)
    assert isinstance(saved_pipeline.ranking.ranker, ExportedRanker)
    assert isinstance(numpy_pipeline.retrieval.query_tower, NumpyQueryTower)
    assert isinstance(saved_pipeline.retrieval.query_tower, QueryTower)
    users = pd.read_parquet(tiny_features.users_path)["raw_user_id"].to_numpy()[:REQUESTS]
    when = int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp())
    same = 0
    for user in users:
        request = Request(int(user), 20, device="android", request_time_s=when)
        a, b = numpy_pipeline.recommend(request), saved_pipeline.recommend(request)
        if np.array_equal(a.video_ids, b.video_ids):
            same += 1
            np.testing.assert_allclose(a.scores, b.scores, atol=2e-6)  # float32 tolerance: see the unit test
    # Scores differ by a few float32 ulps, so two candidates within ~1e-7 of each other may swap places
    # (then MMR's later picks can differ too); anything beyond a rare swap is a real difference.
    assert same >= 0.98 * len(users), f"{same} of {len(users)} feeds identical"
