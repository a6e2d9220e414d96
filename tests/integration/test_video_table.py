"""The ranking step's in-memory video table against the Redis video records it replaces, on a real
redis-server loaded from the tiny feature build: byte-identical records, identical feeds, and ranking that
no longer depends on Redis being up."""

import json

import numpy as np
import pandas as pd
import pytest

from reels.deploy.redis_server import RedisServer, free_port
from reels.deploy.triton.release import Release
from reels.feature_store.layout import VIDEO_RECORD
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore
from reels.models.serving.config import ServingConfig
from reels.models.serving.pipeline import InProcessPipeline
from reels.models.serving.request import Fallback, Request
from reels.models.serving.video_table import VideoTable
from reels.workflows.errors import ConfigError, InvalidInput

# No exploration (random slots) and no exposure log: the feed depends on the scores only.
MEMORY = ServingConfig(candidates=200, max_k=20, exploration_slots=0, log_exposures=False)
REDIS = ServingConfig(**{**vars(MEMORY), "video_features": "redis"})
REQUESTS = 200


def test_the_table_returns_the_bytes_redis_holds_for_the_same_ids(loaded_store, tiny_features, tmp_path):
    table = VideoTable.load(VideoTable.from_features(tiny_features).save(tmp_path / "videos.npz"))
    known = pd.read_parquet(tiny_features.videos_path)["raw_video_id"].to_numpy()
    assert len(table) == len(np.unique(known))
    rng = np.random.default_rng(0)
    unknown = np.array([known.max() + 1, -5], dtype=np.int64)
    # Shuffled known ids with repeats and unknown ids mixed in, as candidates might come.
    wanted = rng.permutation(np.concatenate([rng.choice(known, 500), unknown, known[:3]]))
    from_redis, from_memory = loaded_store.read_videos(wanted), table.read_videos(wanted)
    assert from_memory.videos.dtype == from_redis.videos.dtype == VIDEO_RECORD
    np.testing.assert_array_equal(from_memory.video_ids, from_redis.video_ids)
    assert from_memory.videos.tobytes() == from_redis.videos.tobytes()
    assert len(from_memory.video_ids) == len(wanted) - 2  # unknown ids skipped, repeats kept
    assert from_memory.user is None and len(from_memory.seen) == 0
    for nothing in (np.array([], dtype=np.int64), unknown):
        assert (
            len(table.read_videos(nothing).video_ids) == len(loaded_store.read_videos(nothing).video_ids) == 0
        )


def test_a_table_of_another_layout_or_unsorted_ids_is_refused():
    with pytest.raises(InvalidInput, match="layout"):
        VideoTable(np.array([1], dtype=np.int64), np.zeros(1, dtype=[("video_id", "<i8")]))
    with pytest.raises(InvalidInput, match="ascending"):
        VideoTable(np.array([2, 1], dtype=np.int64), np.zeros(2, dtype=VIDEO_RECORD))
    with pytest.raises(ConfigError, match="video_features"):
        ServingConfig(video_features="disk")


def test_memory_and_redis_video_features_serve_identical_feeds(loaded_store, tiny_models, tiny_features):
    memory = InProcessPipeline(tiny_models.directory, loaded_store, MEMORY)
    redis = InProcessPipeline(tiny_models.directory, loaded_store, REDIS)
    assert isinstance(memory.ranking.videos, VideoTable) and redis.ranking.videos is loaded_store
    users = pd.read_parquet(tiny_features.users_path)["raw_user_id"].to_numpy()[:REQUESTS]
    when = int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp())
    for user in users:
        request = Request(int(user), 20, device="android", request_time_s=when)
        a, b = memory.recommend(request), redis.recommend(request)
        for name in ("video_ids", "scores", "task_predictions", "explanation_ids", "propensities"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"user {user}: {name}")
        assert a.fallback == b.fallback


def test_with_redis_down_memory_ranking_keeps_the_earlier_steps_flag(tiny_models, tiny_features, tmp_path):
    """Redis gone: the user read fails (the flag says so) and the trending candidates are still ranked from
    memory; reading video records from Redis leaves them unranked."""
    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        OnlineStore(server.client(timeout_s=5.0)).load(tiny_features)
        store = OnlineStore(server.client(timeout_s=0.2), namespace_ttl_s=0.0)
        memory = InProcessPipeline(tiny_models.directory, store, MEMORY)
        redis = InProcessPipeline(tiny_models.directory, store, REDIS)
        user = int(pd.read_parquet(tiny_features.users_path)["raw_user_id"].iloc[0])
        assert memory.recommend(Request(user, 10)).fallback == Fallback.NONE
    request = Request(user, 10)  # the server has stopped
    from_memory, from_redis = memory.recommend(request), redis.recommend(request)
    assert from_memory.fallback == from_redis.fallback == Fallback.STORE_UNAVAILABLE
    assert len(from_memory.video_ids) == 10 and not np.isnan(from_memory.task_predictions).any()
    assert np.isnan(from_redis.task_predictions).all()


def test_a_release_exported_before_the_video_table_keeps_reading_videos_from_redis(tmp_path):
    release = Release(version=3, model_dir=None, features_dir=None, history_length=5, redis=RedisSettings())
    release.write(tmp_path)
    assert Release.read(tmp_path, 3).serving.video_features == "memory"
    path = Release.spec_path(tmp_path, 3)
    spec = json.loads(path.read_text())
    del spec["serving"]["video_features"]
    path.write_text(json.dumps(spec))
    assert Release.read(tmp_path, 3).serving.video_features == "redis"
