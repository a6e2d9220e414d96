"""A/B tests and exploration against a real redis-server and the tiny trained models: bucketing, the
exposure log, epsilon-greedy propensities, the simulator + report statistics, and the CLI."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from reels.client.cli import main
from reels.client.config import load_config
from reels.deploy.redis_server import free_port
from reels.feature_store.streams import ExposureLog, read_exposures
from reels.models.evaluation.abtest import (
    _exploration,
    ab_report,
    join,
    simulate,
    two_proportion_z,
    welch_p,
    wilson,
)
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.models.serving.pipeline import InProcessPipeline
from reels.models.serving.rerank import DiversityRerank
from reels.workflows.errors import ConfigError
from reels.workflows.synthetic import GroundTruth

CONFIG = ServingConfig(candidates=200, max_per_creator=2, max_per_category=6, exploration_slots=3)
AB = Experiment(name="t", salt="s1", variants={"control": {"weight": 0.3}, "treatment": {"weight": 0.7}})


# ---- bucketing ------------------------------------------------------------------------------------------------
def test_bucketing_is_deterministic_and_follows_the_weights():
    users = range(100_000, 120_000)
    first = [AB.assign(u) for u in users]
    assert first == [Experiment(**AB.as_dict()).assign(u) for u in users]  # a fresh object, same answers
    share = np.mean([v == "control" for v in first])
    assert abs(share - 0.3) < 0.015
    resalted = Experiment(name="t", salt="s2", variants=AB.variants)
    moved = np.mean([a != resalted.assign(u) for a, u in zip(first, users, strict=True)])
    assert 0.3 < moved < 0.55  # a new salt reshuffles independently (expected 2 * 0.3 * 0.7 = 0.42)


def test_bucketing_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "import json; from reels.models.serving.experiment import Experiment; "
        f"e = Experiment(**{AB.as_dict()!r}); print(json.dumps([e.assign(u) for u in range(1000)]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [AB.assign(u) for u in range(1000)]


def test_experiment_config_section_and_its_errors():
    config = load_config(None, ["experiment.variants={a: {weight: 1}, b: {weight: 3, mmr_lambda: 0.2}}"])
    assert config.experiment.names == ["a", "b"]
    assert config.experiment.serving_config("b", config.serving).mmr_lambda == 0.2
    assert load_config().experiment.names == ["control", "diverse"]  # the default experiment
    with pytest.raises(ConfigError, match="unknown settings \\['candidates'\\]"):
        load_config(None, ["experiment.variants={a: {candidates: 10}}"])
    with pytest.raises(ConfigError, match="weight must be > 0"):
        load_config(None, ["experiment.variants={a: {weight: 0}}"])
    with pytest.raises(ConfigError, match="exploration_epsilon"):
        load_config(None, ["experiment.variants={a: {exploration_epsilon: 1.5}}"])


# ---- serving: exposure log and exploration ------------------------------------------------------------------
@pytest.fixture(scope="module")
def end_s(tiny_features) -> int:
    """The end of the tiny data: the last two days' uploads are fresh, so exploration has candidates."""
    return int(pd.Timestamp(tiny_features.manifest().split["end"]).timestamp())


@pytest.fixture(scope="module")
def users(tiny_features) -> np.ndarray:
    frame = pd.read_parquet(tiny_features.users_path)
    return frame.loc[frame["user_id"] > 2, "raw_user_id"].to_numpy()


def test_feeds_are_logged_with_variant_and_valid_propensities(loaded_store, tiny_models, users, end_s):
    from reels.models.serving.request import Request

    pipeline = InProcessPipeline(tiny_models.directory, loaded_store, CONFIG, AB)
    served = [pipeline.recommend(Request(int(u), 10, request_time_s=end_s)) for u in users[:60]]
    log = read_exposures(loaded_store.client)
    assert log["request_id"].nunique() == 60 and pipeline.rerank.exposures.failed == 0
    for user, rec in zip(users[:60], served, strict=True):
        entry = log[log["user_id"] == user].sort_values("position")
        assert rec.variant == AB.assign(int(user)) == entry["variant"].iloc[0]
        np.testing.assert_array_equal(entry["video_id"], rec.video_ids)
        np.testing.assert_allclose(entry["propensity"], rec.propensities, rtol=1e-6)
        assert ((rec.propensities > 0) & (rec.propensities <= 1)).all()
        ranked = rec.pool == 0
        assert (rec.propensities[ranked] == 1).all() and not rec.explored[ranked].any()
        slots = ~ranked
        eps = CONFIG.exploration_epsilon
        expected = np.where(rec.greedy[slots], 1 - eps, 0) + eps / rec.pool[slots]
        np.testing.assert_allclose(rec.propensities[slots], expected, rtol=1e-6)
        assert (
            rec.greedy[slots] | rec.explored[slots]
        ).all()  # a non-greedy video means the coin said explore
    slots = log[log["pool"] > 0]
    assert len(slots) > 60, "the tiny data has fresh candidates at its end: exploration slots must fill"
    assert 0.05 < slots["explored"].mean() < 0.45  # epsilon 0.2
    again = pipeline.recommend(Request(int(users[0]), 10, request_time_s=end_s))
    np.testing.assert_array_equal(again.video_ids, served[0].video_ids)  # seeded: a replay is identical


def test_slot_frequencies_match_the_logged_propensities(loaded_store, tiny_models, users, end_s):
    """Propensities are probabilities: over many seeds, how often the first exploration slot shows each
    video converges to the propensity logged for it."""
    from reels.models.serving.request import Request

    pipeline = InProcessPipeline(tiny_models.directory, loaded_store, CONFIG)
    user = int(users[0])
    query = pipeline.feature_transform(Request(user, 10, request_time_s=end_s).validate(100))
    ids, scores, tasks, fallback = pipeline.ranking(query, *pipeline.retrieval(query, query.seen))
    rerank = DiversityRerank(
        pipeline.rerank.catalog, ServingConfig(exploration_slots=1, exploration_epsilon=0.5)
    )
    shown, logged = {}, {}
    for seed_user in range(3000):  # the user id only seeds the policy here
        rec = rerank(ids, scores, tasks, query.features["history_video_ids"][0], 10, end_s, fallback,
                     user_id=seed_user)  # fmt: skip
        (slot,) = np.flatnonzero(rec.pool > 0)
        video = int(rec.video_ids[slot])
        shown[video] = shown.get(video, 0) + 1
        logged[video] = float(rec.propensities[slot])
    assert len(shown) > 1, "epsilon 0.5 must show more than the greedy video"
    for video, count in shown.items():
        assert (
            abs(count / 3000 - logged[video]) < 4 * np.sqrt(logged[video] * (1 - logged[video]) / 3000) + 1e-3
        )


def test_a_lost_exposure_log_entry_does_not_fail_the_request(tiny_models, loaded_store, users, end_s):
    from reels.models.serving.request import Request

    pipeline = InProcessPipeline(tiny_models.directory, loaded_store, CONFIG, AB)
    # A real client to a port nothing listens on: every XADD fails with a connection error.
    pipeline.rerank.exposures = ExposureLog(redis.Redis(port=free_port(), socket_timeout=0.2))
    started = time.perf_counter()
    rec = pipeline.recommend(Request(int(users[1]), 10, request_time_s=end_s))
    assert len(rec.video_ids) == 10 and rec.variant in AB.names
    pipeline.recommend(Request(int(users[2]), 10, request_time_s=end_s))  # within the pause: not even tried
    assert time.perf_counter() - started < 2.0  # no retry-with-backoff stall (redis-py's default: ~4 s)
    assert (pipeline.rerank.exposures.written, pipeline.rerank.exposures.failed) == (0, 2)


# ---- statistics --------------------------------------------------------------------------------------------------
def test_interval_and_test_formulas_on_known_values():
    lo, hi = wilson(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # textbook Wilson 95% interval
    assert two_proportion_z(50, 100, 50, 100) == pytest.approx(1.0)
    assert two_proportion_z(60, 100, 40, 100) == pytest.approx(0.0047, abs=2e-4)
    assert welch_p(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4])) == pytest.approx(1.0)


def test_ips_recovers_the_value_of_policies_that_were_not_run():
    """Logged by eps = 0.3 over pools of 4 with item-dependent rewards; IPS must estimate what always-greedy
    and uniformly random would have earned."""
    rng = np.random.default_rng(0)
    n, pool, eps = 200_000, 4, 0.3
    reward_p = np.array([0.6, 0.2, 0.3, 0.1])  # item 0 is greedy
    explore = rng.random(n) < eps
    item = np.where(explore, rng.integers(0, pool, n), 0)
    frame = pd.DataFrame({
        "pool": pool, "greedy": item == 0, "explored": explore,
        "propensity": np.where(item == 0, 1 - eps + eps / pool, eps / pool),
        "viewed": rng.random(n) < reward_p[item], "liked": False,
    })  # fmt: skip
    out = _exploration(frame)["view_rate"]
    assert out["ips_greedy"] == pytest.approx(0.6, abs=0.01)
    assert out["ips_uniform"] == pytest.approx(reward_p.mean(), abs=0.01)
    assert out["snips_greedy"] == pytest.approx(0.6, abs=0.01)


def _simulate_report(loaded_store, tiny_models, tiny_store, users, end_s, experiment) -> dict:
    loaded_store.client.delete("reels:exposures")
    pipeline = InProcessPipeline(tiny_models.directory, loaded_store, CONFIG, experiment)
    truth = GroundTruth.load(Path(tiny_store.root) / "ground_truth.npz")
    durations = tiny_store.read_table("videos").set_index("video_id")["duration_s"]
    events = simulate(pipeline, truth, durations, users, 10, end_s, seed=3, sessions=2)
    return ab_report(join(read_exposures(loaded_store.client), events), experiment.names)


def test_report_finds_a_real_difference_and_not_a_fake_one(
    loaded_store, tiny_models, tiny_store, users, end_s
):
    # B serves random fresh videos in 8 of 10 slots: users like that much less than the ranked feed.
    ab = Experiment(name="ab", salt="x", variants={
        "control": {}, "random": {"exploration_slots": 8, "exploration_epsilon": 1.0},
    })  # fmt: skip
    report = _simulate_report(loaded_store, tiny_models, tiny_store, users, end_s, ab)
    versus = report["variants"]["random"]["vs_control"]
    assert versus["view_rate"]["diff"] < 0 and versus["view_rate"]["p"] < 0.001
    assert versus["view_rate"]["p_users"] < 0.001
    assert versus["like_rate"]["diff"] < 0 and versus["like_rate"]["p"] < 0.05
    # (Watch time is not asserted: random fresh videos run longer than the ranker's picks, so seconds
    # watched can go up while the share of videos watched goes down.)
    exploration = report["variants"]["random"]["exploration"]
    assert exploration["explored_share"] == 1.0  # epsilon 1: IPS of the logged policy is the plain mean
    assert exploration["view_rate"]["ips_uniform"] == pytest.approx(
        exploration["view_rate"]["logged"], abs=1e-6
    )
    aa = Experiment(name="aa", salt="x", variants={"a": {}, "b": {}})
    report = _simulate_report(loaded_store, tiny_models, tiny_store, users, end_s, aa)
    for metric, c in report["variants"]["b"]["vs_control"].items():
        assert c["p"] > 0.05, metric
    control = report["variants"]["a"]
    lo, hi = control["view_rate"]["ci"]
    assert lo < control["view_rate"]["value"] < hi
    assert control["users"] + report["variants"]["b"]["users"] == len(users)


def test_join_attributes_events_to_the_feed_that_showed_them():
    exposures = pd.DataFrame({
        "request_id": ["r1", "r1", "r2"], "user_id": [1, 1, 1], "request_time_s": [100, 100, 200],
        "experiment": "e", "variant": "a", "fallback": 0, "video_id": [7, 8, 7], "position": [0, 1, 0],
        "propensity": 1.0, "explored": False, "greedy": True, "pool": 0,
    })  # fmt: skip
    events = pd.DataFrame({
        "user_id": [1, 1], "video_id": [7, 7], "timestamp": pd.to_datetime([101, 205], unit="s"),
        "skipped": [False, True], "liked": [True, False], "watch_time_s": [9.0, 0.5],
    })  # fmt: skip
    items = join(exposures, events).set_index(["request_id", "video_id"])
    assert items.loc[("r1", 7), "viewed"] and items.loc[("r1", 7), "liked"]
    assert not items.loc[("r1", 8), "viewed"] and items.loc[("r1", 8), "watch_time_s"] == 0
    assert not items.loc[("r2", 7), "viewed"] and items.loc[("r2", 7), "watch_time_s"] == 0.5


# ---- CLI -----------------------------------------------------------------------------------------------------
def test_ab_simulate_then_report_cli(tmp_path, tiny_store, tiny_features, tiny_models, capsys):
    source = tmp_path / "data" / "synthetic"
    source.mkdir(parents=True)
    (source / "store").symlink_to(Path(tiny_store.root).resolve())
    (source / "features").symlink_to(Path(tiny_features.manifest_path).parent.resolve())
    (source / "models").symlink_to(Path(tiny_models.directory).parent.resolve())
    common = ["--set", f"data.root={tmp_path / 'data'}", "--set", "serving.candidates=200"]
    assert main([*common, "ab-simulate", "--users", "80", "--k", "8"]) == 0
    out = capsys.readouterr().out
    assert "80 feeds" in out and "0 lost" in out
    assert main([*common, "ab-report", "--record", "--docs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "control" in out and "diverse" in out and "IPS" in out
    recorded = (tmp_path / "EXPERIMENTS.md").read_text()
    assert "| control |" in recorded and "p (users)" in recorded
    assert main([*common, "ab-report", "movielens"]) == 2  # no simulation there: a clear error
