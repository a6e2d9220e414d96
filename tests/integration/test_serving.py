"""End to end: a real redis-server, a real tritonserver running the reels ensemble over exported,
trained models, queried over HTTP and gRPC with the project's client."""

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as http

from reels.client.triton_client import ClientError, ReelsClient
from reels.deploy.redis_server import RedisServer, free_port
from reels.deploy.triton.repository import export_repository
from reels.deploy.triton_server import TritonServer
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore
from reels.feature_store.streams import read_exposures
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment

CONFIG = ServingConfig(candidates=200, max_k=50, max_per_creator=2, max_per_category=6)
EXPERIMENT = Experiment(name="e2e", salt="t", variants={"control": {}, "diverse": {"mmr_lambda": 0.4}})
WHEN = 1_800_000_000  # a fixed request time keeps freshness, hence scores, deterministic


@pytest.fixture(scope="module")
def stack(tiny_models, tiny_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    redis_server = RedisServer(root / "redis", port=free_port()).start()
    OnlineStore(redis_server.client()).load(tiny_features)
    repo = export_repository(
        tiny_models.directory, root / "repository", RedisSettings(port=redis_server.port), CONFIG,
        experiment=EXPERIMENT,
    )  # fmt: skip
    triton = TritonServer(repo, root / "build", free_port(), free_port(), free_port()).start()
    yield {"redis": redis_server, "triton": triton, "features": tiny_features}
    triton.stop()
    redis_server.stop()


@pytest.fixture(scope="module")
def known_user(tiny_features):
    users = pd.read_parquet(tiny_features.users_path)
    return int(users.loc[users["user_id"] > 2, "raw_user_id"].iloc[0])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_recommendations_over_both_protocols_are_deterministic(stack, known_user, protocol):
    url = stack["triton"].http_url if protocol == "http" else stack["triton"].grpc_url
    with ReelsClient(url, protocol) as client:
        assert client.health() == {"live": True, "ready": True, "model_ready": True}
        first = client.recommend(known_user, k=10, device="ios", hour=20, request_time=WHEN)
        second = client.recommend(known_user, k=10, device="ios", hour=20, request_time=WHEN)
    assert first.fallback == 0
    assert len(first.video_ids) == 10 and len(set(first.video_ids)) == 10
    np.testing.assert_array_equal(first.video_ids, second.video_ids)
    assert set(first.task_predictions) == {"view", "liked", "completed", "watch_fraction"}
    assert all(((p >= 0) & (p <= 1)).all() for p in first.task_predictions.values())


def test_http_and_grpc_agree(stack, known_user):
    with (
        ReelsClient(stack["triton"].http_url, "http") as h,
        ReelsClient(stack["triton"].grpc_url, "grpc") as g,
    ):
        a = h.recommend(known_user, k=15, device="android", request_time=WHEN)
        b = g.recommend(known_user, k=15, device="android", request_time=WHEN)
    np.testing.assert_array_equal(a.video_ids, b.video_ids)
    np.testing.assert_allclose(a.scores, b.scores)


def test_no_seen_videos_and_creator_caps(stack, known_user, tiny_store):
    with ReelsClient(stack["triton"].http_url) as client:
        recs = client.recommend(known_user, k=20, request_time=WHEN)
    seen = set(OnlineStore(stack["redis"].client()).read_user(known_user)[1])
    assert not set(recs.video_ids) & seen
    creators = tiny_store.read_table("videos").set_index("video_id").loc[recs.video_ids, "creator_id"]
    assert creators.value_counts().max() <= CONFIG.max_per_creator
    explained = recs.explanation_ids[recs.explanation_ids >= 0]
    assert len(explained) > 0


def test_response_carries_variant_and_propensities_and_is_logged(stack, tiny_features):
    users = pd.read_parquet(tiny_features.users_path)
    users = users.loc[users["user_id"] > 2, "raw_user_id"].to_numpy()[:12]
    end = int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp())  # fresh videos exist
    client_redis = stack["redis"].client()
    client_redis.delete("reels:exposures")
    with ReelsClient(stack["triton"].grpc_url, "grpc") as client:
        served = {int(u): client.recommend(int(u), k=10, request_time=end) for u in users}
    assert {r.variant for r in served.values()} == {"control", "diverse"}  # 12 users: both variants
    log = read_exposures(client_redis)
    for user, recs in served.items():
        assert recs.variant == EXPERIMENT.assign(user)
        assert recs.propensities.dtype == np.float32 and len(recs.propensities) == 10
        assert ((recs.propensities > 0) & (recs.propensities <= 1)).all()
        entry = log[log["user_id"] == user].sort_values("position")
        assert (entry["variant"] == recs.variant).all()
        np.testing.assert_array_equal(entry["video_id"], recs.video_ids)
        np.testing.assert_allclose(entry["propensity"], recs.propensities)
    assert (log["pool"] > 0).sum() >= len(users)  # exploration slots filled from fresh candidates
    assert (log["propensity"] < 1).any()


def test_cold_start_user_gets_trending_videos(stack):
    with ReelsClient(stack["triton"].http_url) as client:
        recs = client.recommend(424_242_424, k=10, request_time=WHEN)
    assert recs.fallback == 1
    assert len(recs.video_ids) == 10
    assert (recs.explanation_ids == -1).all()


@pytest.mark.parametrize(
    ("k", "user", "message"),
    [
        (0, 1, "k must be between 1 and 50"),
        (51, 1, "k must be between 1 and 50"),
        (5, -3, "user_id must be a non-negative"),
    ],
)
def test_bad_requests_are_rejected_and_the_server_keeps_serving(stack, known_user, k, user, message):
    with ReelsClient(stack["triton"].http_url) as client:
        with pytest.raises(ClientError, match=message):
            client.recommend(user, k=k, request_time=WHEN)
        assert len(client.recommend(known_user, k=5, request_time=WHEN).video_ids) == 5


def _inputs(user_id: np.ndarray, user_type: str) -> list:
    values = {
        "user_id": (user_id, user_type), "k": (np.array([5], np.int32), "INT32"),
        "device": (np.array([b"ios"], object), "BYTES"), "hour": (np.array([-1], np.int32), "INT32"),
        "request_time": (np.array([WHEN], np.int64), "INT64"),
    }  # fmt: skip
    inputs = []
    for name, (value, datatype) in values.items():
        tensor = http.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def test_wrong_dtype_and_shape_are_rejected(stack, known_user):
    client = http.InferenceServerClient(stack["triton"].http_url)
    with pytest.raises(Exception, match="(?i)data.?type|INT64"):
        client.infer("reels", _inputs(np.array([1.5], dtype=np.float32), "FP32"))
    with pytest.raises(Exception, match="(?i)shape"):
        client.infer("reels", _inputs(np.array([1, 2], dtype=np.int64), "INT64"))
    with pytest.raises(Exception, match="(?i)missing required input"):
        client.infer("reels", _inputs(np.array([1], dtype=np.int64), "INT64")[:1])
    client.close()
    with ReelsClient(stack["triton"].http_url) as ok:
        assert ok.recommend(known_user, k=3, request_time=WHEN).fallback == 0


def test_hidden_creator_disappears_from_the_next_feed(stack, known_user, tiny_store, tiny_features):
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.feature_store.streams import EventProducer

    creators = tiny_store.read_table("videos").set_index("video_id")["creator_id"]
    with ReelsClient(stack["triton"].http_url) as client:
        before = client.recommend(known_user, k=20, request_time=WHEN)
        hidden = int(creators.loc[before.video_ids[0]])
        online = OnlineStore(stack["redis"].client())
        EventProducer(online.client).hide_creator(known_user, hidden)
        IngestWorker(online, Vocabulary(tiny_features.workflow_dir, "video_id"), 5, consumer="t").run(
            idle_exit=True
        )
        after = client.recommend(known_user, k=20, request_time=WHEN)
    assert hidden not in set(creators.loc[after.video_ids])
    assert len(after.video_ids) == 20
    online.client.delete(online.keys.hidden_creators(known_user))


def test_redis_down_means_flagged_fallback_and_back_means_personal(stack, known_user):
    redis_server = stack["redis"]
    redis_server.client().save()  # the restart below reloads this snapshot
    redis_server.stop()
    with ReelsClient(stack["triton"].http_url) as client:
        down = client.recommend(known_user, k=10, request_time=WHEN)
        assert down.fallback == 2
        assert len(down.video_ids) == 10
        assert down.variant == EXPERIMENT.assign(known_user)  # the exposure log failed, the request did not
        redis_server.start()
        for _ in range(20):
            again = client.recommend(known_user, k=10, request_time=WHEN)
            if again.fallback == 0:
                break
        assert again.fallback == 0


def test_hot_swap_under_perf_analyzer_load_fails_no_request(stack, tiny_models, tiny_features, tmp_path):
    """Promote another version while perf_analyzer and a probe client keep the ensemble busy."""
    import json
    import shutil

    from reels.client.bench.serving import request_users, write_input_data
    from reels.client.bench.swap import LoadDuringAction
    from reels.deploy.promotion import promote
    from reels.deploy.triton.repository import pinned_version

    repository = stack["triton"].repository
    serving = pinned_version(repository)
    new_dir = tmp_path / "models" / str(serving + 1)  # same weights, but a new release: new Triton
    shutil.copytree(tiny_models.directory, new_dir)  # model versions, a new Redis namespace
    manifest = json.loads((new_dir / "manifest.json").read_text())
    manifest["version"] = serving + 1
    (new_dir / "manifest.json").write_text(json.dumps(manifest))
    users = request_users(tiny_features.root, 200)
    write_input_data(tmp_path / "requests.json", users, 10)
    store = OnlineStore(stack["redis"].client())
    before = store.namespace()
    redis = RedisSettings(port=stack["redis"].port)
    triton = stack["triton"]
    with LoadDuringAction(triton.grpc_url, triton.http_url, tmp_path / "requests.json", users) as load:
        report = promote(repository, new_dir, triton.grpc_url, store, redis, CONFIG)
    summary = load.report.summary()
    print(summary, report)
    assert summary["perf_analyzer_runs"] >= 2, summary
    assert load.report.perf_analyzer_failed_runs == 0, [
        r["error"] for r in load.report.perf_analyzer_runs if r["failed"]
    ]
    assert load.report.probe_failed == 0, load.report.probe_errors[:3]
    assert summary["probe_requests"] > 10
    assert pinned_version(repository) == serving + 1 == report.version
    assert store.namespace() == report.namespace != before
    client = http.InferenceServerClient(triton.http_url)
    assert client.is_model_ready("reels", str(serving + 1))
    assert all(client.is_model_ready(f"{step}_v{serving + 1}") for step in ("retrieval", "ranking"))
    assert all(client.is_model_ready(f"{step}_v{serving}") for step in ("retrieval", "ranking"))  # rollback
    client.close()
