"""End to end: a real redis-server, a real tritonserver running the reels ensemble over exported,
trained models, queried over HTTP and gRPC with the project's client.

The stack is shared by the module, and some tests change it (hide a creator, stop and restart Redis,
hot-swap a new release, read the exposure log). So that any order works: every test serves users of its
own (``users`` below), compares only with what it read itself, restores what it changed in a ``finally``,
and reads the serving release from the repository instead of assuming one."""

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as http

from reels.client.triton_client import ClientError, ReelsClient
from reels.deploy.redis_server import RedisServer
from reels.feature_store.store import OnlineStore
from reels.feature_store.streams import read_exposures
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.spec import HISTORY, OOV
from tests.integration.direct_calls import infer
from tests.integration.stack_data import redis_settings, triton_over_redis

CONFIG = ServingConfig(candidates=200, max_k=50, max_per_creator=2, max_per_category=6)
EXPERIMENT = Experiment(name="e2e", salt="t", variants={"control": {}, "diverse": {"mmr_lambda": 0.4}})
WHEN = 1_800_000_000  # a fixed request time keeps freshness, hence scores, deterministic


@pytest.fixture(scope="module")
def stack(tiny_models, tiny_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    with triton_over_redis(tiny_models, tiny_features, root, CONFIG, EXPERIMENT) as (redis_server, triton):
        yield {"redis": redis_server, "triton": triton, "features": tiny_features}


@pytest.fixture(scope="module")
def users(tiny_features) -> np.ndarray:
    """Raw ids of known users with a viewing history, in file order: each test takes a slice of its own."""
    frame = pd.read_parquet(tiny_features.users_path)
    history = np.stack(frame["history_video_ids"].to_numpy())
    return frame.loc[(frame["user_id"] > OOV) & (history > OOV).any(axis=1), "raw_user_id"].to_numpy()


def _history(store: OnlineStore, video_ids: pd.Series, user: int) -> set[int]:
    """The raw ids of the videos in the user's history, as the online store holds it now."""
    record, _ = store.read_user(user)
    encoded = np.asarray(record[HISTORY])
    return set(video_ids.loc[encoded[encoded > OOV]].tolist())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_recommendations_over_both_protocols_are_deterministic(stack, users, protocol):
    user = int(users[0])
    url = stack["triton"].http_url if protocol == "http" else stack["triton"].grpc_url
    with ReelsClient(url, protocol) as client:
        assert client.health() == {"live": True, "ready": True, "model_ready": True}
        first = client.recommend(user, k=10, device="ios", hour=20, request_time=WHEN)
        second = client.recommend(user, k=10, device="ios", hour=20, request_time=WHEN)
    assert first.fallback == 0
    assert len(first.video_ids) == 10 and len(set(first.video_ids)) == 10
    np.testing.assert_array_equal(first.video_ids, second.video_ids)
    np.testing.assert_allclose(first.scores, second.scores)
    assert set(first.task_predictions) == {"view", "liked", "completed", "watch_fraction"}
    assert all(((p >= 0) & (p <= 1)).all() for p in first.task_predictions.values())


def test_http_and_grpc_agree(stack, users):
    user = int(users[1])
    with (
        ReelsClient(stack["triton"].http_url, "http") as h,
        ReelsClient(stack["triton"].grpc_url, "grpc") as g,
    ):
        a = h.recommend(user, k=15, device="android", request_time=WHEN)
        b = g.recommend(user, k=15, device="android", request_time=WHEN)
    np.testing.assert_array_equal(a.video_ids, b.video_ids)
    np.testing.assert_allclose(a.scores, b.scores)
    np.testing.assert_array_equal(a.explanation_ids, b.explanation_ids)


def test_no_seen_videos_creator_caps_and_explanations_from_the_history(
    stack, users, tiny_store, tiny_features
):
    creators = tiny_store.read_table("videos").set_index("video_id")["creator_id"]
    raw_video = pd.read_parquet(tiny_features.videos_path).set_index("video_id")["raw_video_id"]
    store = OnlineStore(stack["redis"].client())
    with ReelsClient(stack["triton"].http_url) as client:
        for user in map(int, users[2:7]):
            recs = client.recommend(user, k=20, request_time=WHEN)
            _, seen = store.read_user(user)
            history = _history(store, raw_video, user)
            assert recs.fallback == 0 and len(recs.video_ids) == 20
            assert not set(recs.video_ids) & set(seen)
            assert creators.loc[recs.video_ids].value_counts().max() <= CONFIG.max_per_creator
            # Every video is explained by the most similar video the user watched: one of their history.
            assert history, user
            assert len(recs.explanation_ids) == 20
            assert set(recs.explanation_ids) <= history, (user, recs.explanation_ids, history)
        cold = client.recommend(424_242_425, k=5, request_time=WHEN)
    assert (cold.explanation_ids == -1).all()  # no history: nothing to explain with


def test_response_carries_variant_and_propensities_and_is_logged(stack, users, tiny_features):
    served_users = users[20:32]  # 12 users of this test only: both variants among them
    end = int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp())  # fresh videos exist
    when = end + 7  # this test's own request time: its feeds are told apart from any other in the log
    with ReelsClient(stack["triton"].grpc_url, "grpc") as client:
        served = {int(u): client.recommend(int(u), k=10, request_time=when) for u in served_users}
    assert {r.variant for r in served.values()} == {"control", "diverse"}
    log = read_exposures(stack["redis"].client())
    log = log[log["user_id"].isin(served) & (log["request_time_s"] == when)]
    assert log["request_id"].nunique() == len(served_users)  # one logged feed per request
    for user, recs in served.items():
        assert recs.variant == EXPERIMENT.assign(user)
        assert recs.propensities.dtype == np.float32 and len(recs.propensities) == 10
        assert ((recs.propensities > 0) & (recs.propensities <= 1)).all()
        entry = log[log["user_id"] == user].sort_values("position")
        assert (entry["variant"] == recs.variant).all()
        np.testing.assert_array_equal(entry["video_id"], recs.video_ids)
        np.testing.assert_allclose(entry["propensity"], recs.propensities)
    assert (log["pool"] > 0).sum() >= len(served_users)  # exploration slots filled from fresh candidates
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
        (5, -3, "user_id must be an integer between 0 and"),
    ],
)
def test_bad_requests_are_rejected_and_the_server_keeps_serving(stack, users, k, user, message):
    with ReelsClient(stack["triton"].http_url) as client:
        with pytest.raises(ClientError, match=message):
            client.recommend(user, k=k, request_time=WHEN)
        assert len(client.recommend(int(users[9]), k=5, request_time=WHEN).video_ids) == 5


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


def test_wrong_dtype_and_shape_are_rejected(stack, users):
    client = http.InferenceServerClient(stack["triton"].http_url)
    with pytest.raises(Exception, match="(?i)data.?type|INT64"):
        client.infer("reels", _inputs(np.array([1.5], dtype=np.float32), "FP32"))
    with pytest.raises(Exception, match="(?i)shape"):
        client.infer("reels", _inputs(np.array([1, 2], dtype=np.int64), "INT64"))
    with pytest.raises(Exception, match="(?i)missing required input"):
        client.infer("reels", _inputs(np.array([1], dtype=np.int64), "INT64")[:1])
    client.close()
    with ReelsClient(stack["triton"].http_url) as ok:
        assert ok.recommend(int(users[9]), k=3, request_time=WHEN).fallback == 0


def test_step_models_answer_only_tensors_sealed_by_the_ensembles_earlier_steps(stack, users):
    from reels.deploy.triton.repository import pinned_version
    from reels.deploy.triton.steps import SEALED_REQUEST

    url, user = stack["triton"].http_url, int(users[40])
    version = pinned_version(stack["triton"].repository)
    request = {
        "user_id": np.array([user], np.int64), "k": np.array([5], np.int32),
        "device": np.array([b"ios"], object), "hour": np.array([-1], np.int32),
        "request_time": np.array([WHEN], np.int64),
    }  # fmt: skip
    # Step 1 validates the request like the ensemble does, so calling it directly is allowed.
    query = infer(url, f"feature_transform_v{version}", request)
    sealed = {n: (request | query)[n] for n in SEALED_REQUEST}
    # Its outputs, unchanged, are what the ensemble would pass on: retrieval answers them.
    candidates = infer(url, f"retrieval_v{version}", sealed)
    assert len(candidates["candidate_ids"]) > 0
    # Any change to a sealed tensor, or a seal made up by the caller, is refused.
    tampered = sealed | {"history_video_ids": np.roll(sealed["history_video_ids"], 1) + 1}
    with pytest.raises(Exception, match="request_seal does not match"):
        infer(url, f"retrieval_v{version}", tampered)
    exposures_before = len(read_exposures(stack["redis"].client()))
    made_up = {
        "ranked_ids": candidates["candidate_ids"][:5], "ranking_scores": np.ones(5, np.float32),
        "candidate_task_predictions": np.ones((5, 4), np.float32),
        "ranking_fallback": np.array([0], np.int32), "ranked_seal": np.array([b"x" * 32], object),
    }  # fmt: skip
    with pytest.raises(Exception, match="ranked_seal does not match"):
        infer(url, f"diversity_rerank_v{version}", sealed | made_up)
    forged_user = sealed | {"user_id": np.array([user + 1], np.int64)}
    with pytest.raises(Exception, match="request_seal does not match"):
        infer(url, f"diversity_rerank_v{version}", forged_user | made_up)
    assert len(read_exposures(stack["redis"].client())) == exposures_before  # nothing logged
    with ReelsClient(url) as client:  # and the ensemble itself keeps serving
        assert len(client.recommend(user, k=5, request_time=WHEN).video_ids) == 5


def test_model_control_requests_are_refused_for_everyone(stack, users):
    """Triton polls the repository: who may write that folder controls the models, and no request can
    unload the ensemble or load a model whose code it uploads (over HTTP or gRPC)."""
    import tritonclient.grpc as grpc

    http_client = http.InferenceServerClient(stack["triton"].http_url)
    grpc_client = grpc.InferenceServerClient(stack["triton"].grpc_url)
    try:
        for client in (http_client, grpc_client):
            with pytest.raises(Exception, match="not allowed if polling is enabled"):
                client.unload_model("reels")
            code = b"raise SystemExit('uploaded code ran')"
            with pytest.raises(Exception, match="not allowed if polling is enabled"):
                client.load_model("uploaded", config='{"backend": "python"}', files={"file:1/model.py": code})
        assert http_client.is_model_ready("reels")
    finally:
        http_client.close()
        grpc_client.close()
    with ReelsClient(stack["triton"].http_url) as client:
        assert len(client.recommend(int(users[41]), k=5, request_time=WHEN).video_ids) == 5


def test_hidden_creator_disappears_from_the_next_feed(stack, users, tiny_store, tiny_features):
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.feature_store.streams import EventProducer

    user = int(users[7])  # hides a creator: no other test serves this user
    creators = tiny_store.read_table("videos").set_index("video_id")["creator_id"]
    online = OnlineStore(stack["redis"].client())
    assert len(online.hidden_creators(user)) == 0
    try:
        with ReelsClient(stack["triton"].http_url) as client:
            before = client.recommend(user, k=20, request_time=WHEN)
            hidden = int(creators.loc[before.video_ids[0]])
            EventProducer(online.client).hide_creator(user, hidden)
            IngestWorker(online, Vocabulary(tiny_features.workflow_dir, "video_id"), 5, consumer="t").run(
                idle_exit=True
            )
            assert list(online.hidden_creators(user)) == [hidden]
            after = client.recommend(user, k=20, request_time=WHEN)
        assert hidden not in set(creators.loc[after.video_ids])
        assert len(after.video_ids) == 20
    finally:
        online.client.delete(online.keys.hidden_creators(user))
    assert len(online.hidden_creators(user)) == 0


def _logging_again(url: str, redis_client, user: int, timeout_s: float = 30.0) -> bool:
    """Serve ``user`` until a feed reaches the exposure log again (it pauses after a failed write)."""
    when = WHEN + 1  # request times of this helper only: its feeds are told apart in the log
    deadline = time.monotonic() + timeout_s
    with ReelsClient(url) as client:
        while time.monotonic() < deadline:
            client.recommend(user, k=5, request_time=when)
            log = read_exposures(redis_client)
            if ((log["user_id"] == user) & (log["request_time_s"] == when)).any():
                return True
            time.sleep(0.2)
            when += 1
    return False


class _Probe(threading.Thread):
    """Requests one user's feed back to back over gRPC, recording (start, seconds, fallback or error)."""

    def __init__(self, url: str, user: int):
        super().__init__(daemon=True)
        self.url, self.user, self.done = url, user, threading.Event()
        self.samples: list[tuple[float, float, int | str]] = []

    def run(self) -> None:
        with ReelsClient(self.url, "grpc", timeout_s=5.0) as client:
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    outcome: int | str = client.recommend(self.user, k=10, request_time=WHEN).fallback
                except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
                    outcome = f"{type(exc).__name__}: {exc}"
                self.samples.append((started, time.monotonic() - started, outcome))

    def window(self, start: float, end: float) -> list[tuple[float, int | str]]:
        """(seconds, outcome) of the requests that started in ``[start, end)``."""
        return [(s, o) for t, s, o in self.samples if start <= t < end]

    def personal_again(self, since: float, timeout_s: float = 30.0) -> bool:
        """Wait until a request started after ``since`` got a personal feed (fallback 0)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(o == 0 for _, o in self.window(since, float("inf"))):
                return True
            time.sleep(0.1)
        return False


@pytest.mark.single_redis(
    reason="SIGSTOPs and SIGKILLs the one redis-server process and restarts it empty on its port "
    "(a cluster's primary killed under load: test_serving_cluster.py)"
)
def test_redis_stalled_killed_or_restarted_empty_costs_no_request_and_no_latency(stack, users, tmp_path):
    """SIGSTOP for 5 s; SIGKILL (no SAVE) and restart; a restart with no data: every request is answered
    (a flagged fallback while Redis is away), p99 under 100 ms in each outage, personal feeds after."""
    user, redis_server = int(users[8]), stack["redis"]
    probe = _Probe(stack["triton"].grpc_url, user)
    probe.start()
    outages: dict[str, tuple[float, float]] = {}
    try:
        assert probe.personal_again(0.0)
        pid = redis_server.process.pid
        start = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(5.0)
        os.kill(pid, signal.SIGCONT)
        outages["stalled 5 s"] = (start, time.monotonic())
        assert probe.personal_again(outages["stalled 5 s"][1]), "not personal again after SIGCONT"

        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # no SAVE: the append-only file is what brings the data back
        redis_server.process.wait()
        redis_server.process = None
        time.sleep(3.0)
        outages["killed"] = (start, time.monotonic())
        redis_server.start()
        assert probe.personal_again(outages["killed"][1]), "not personal again after the restart"

        redis_server.stop()
        start = time.monotonic()
        with RedisServer(tmp_path / "empty", port=redis_server.port):  # the same port, none of the data
            time.sleep(3.0)
            outages["restarted empty"] = (start, time.monotonic())
        redis_server.start()
        assert probe.personal_again(outages["restarted empty"][1]), "not personal again with the data back"
    finally:
        probe.done.set()
        probe.join(timeout=10)
        if redis_server.process is None:
            redis_server.start()
        elif redis_server.process.poll() is None:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        restored = _logging_again(stack["triton"].http_url, redis_server.client(), user)
    assert restored, "the exposure log did not recover after Redis came back"
    errors = [o for _, _, o in probe.samples if isinstance(o, str)]
    assert not errors, errors[:3]
    for name, (start, end) in outages.items():
        window = probe.window(start, end)
        seconds = np.array([s for s, _ in window])
        p99 = float(np.percentile(seconds, 99))
        print(
            f"{name}: {len(window)} requests, p50 {np.median(seconds) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"
        )
        assert len(window) >= 20, f"{name}: only {len(window)} requests answered in {end - start:.1f} s"
        assert {o for _, o in window} <= {0, 2}, name
        assert sum(o == 2 for _, o in window) >= len(window) // 2, f"{name}: flagged as a fallback"
        assert p99 < 0.1, f"{name}: p99 {p99 * 1e3:.0f} ms over {len(window)} requests"


def test_hot_swap_under_perf_analyzer_load_fails_no_request(stack, tiny_models, tiny_features, tmp_path):
    """Promote another version, then roll back to the lower one, while perf_analyzer and a probe client
    keep the ensemble busy."""
    import json
    import shutil

    from reels.client.bench.serving import request_users, write_input_data
    from reels.client.bench.swap import LoadDuringAction
    from reels.deploy.promotion import promote
    from reels.deploy.triton.release import STEPS
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
    redis = redis_settings(stack["redis"])
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
    assert summary["perf_analyzer_runs_spanning_the_swap"] <= 2, summary
    client = http.InferenceServerClient(triton.http_url)
    steps = {s["model_name"] for s in client.get_model_config("reels")["ensemble_scheduling"]["step"]}
    assert steps == {f"{step}_v{serving + 1}" for step in STEPS}  # the ensemble runs the new release
    assert all(
        client.is_model_ready(f"{step}_v{serving}") for step in STEPS
    )  # the old one stays for rollback

    # Roll back to the lower version under the same load: the ensemble names release ``serving`` again.
    with LoadDuringAction(triton.grpc_url, triton.http_url, tmp_path / "requests.json", users) as load:
        back = promote(repository, tiny_models.directory, triton.grpc_url, store, redis, CONFIG)
    assert load.report.perf_analyzer_failed_runs == 0 and load.report.probe_failed == 0, load.report.summary()
    assert pinned_version(repository) == back.version == int(tiny_models.manifest["version"]) < serving + 1
    steps = {s["model_name"] for s in client.get_model_config("reels")["ensemble_scheduling"]["step"]}
    assert steps == {f"{step}_v{back.version}" for step in STEPS}
    client.close()
