import numpy as np
import pandas as pd
import pytest

from reels.deploy.redis_server import RedisServer, free_port
from reels.feature_store.store import OnlineStore
from reels.models.evaluation.exposure import exposure_report, gini, top_share
from reels.models.serving.config import ServingConfig
from reels.models.serving.pipeline import InProcessPipeline


def test_gini_and_top_share_on_known_distributions():
    assert gini(np.ones(100)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(99), 10.0]) == pytest.approx(0.99)
    assert top_share(np.r_[np.ones(99), 101.0], 0.01) == pytest.approx(0.505)


def test_rerank_caps_spread_creator_exposure(tiny_models, tiny_features, tmp_path):
    with RedisServer(tmp_path / "redis", port=free_port()) as srv:
        store = OnlineStore(srv.client(timeout_s=5.0))
        store.load(tiny_features)
        pipeline = InProcessPipeline(
            tiny_models.directory, store, ServingConfig(candidates=200, max_per_creator=1)
        )
        users = pd.read_parquet(tiny_features.users_path)["raw_user_id"].to_numpy()[:40]
        report = exposure_report(pipeline, users, k=10, request_time_s=1_800_000_000)
    assert report["requests"] == 40
    assert report["after_rerank"]["creators_exposed"] >= report["before_rerank"]["creators_exposed"]
    assert report["after_rerank"]["top1pct_share"] <= report["before_rerank"]["top1pct_share"] + 1e-9
