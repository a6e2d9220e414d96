"""A/B tests and exploration against a real redis-server and the tiny trained models: the exposure log,
epsilon-greedy propensities, the simulator + report on real feeds, and the CLI. (Bucketing and the
statistics on known values need neither: tests/unit/models/test_experiment.py.)"""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from reels.client.cli import main
from reels.deploy.redis_server import free_port
from reels.feature_store.streams import ExposureLog, read_exposures
from reels.models.evaluation.abtest import ab_report, join, simulate
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.models.serving.pipeline import InProcessPipeline
from reels.models.serving.rerank import DiversityRerank
from reels.workflows.errors import NotFound
from reels.workflows.synthetic import GroundTruth

CONFIG = ServingConfig(candidates=200, max_per_creator=2, max_per_category=6, exploration_slots=3)
AB = Experiment(name="t", salt="s1", variants={"control": {"weight": 0.3}, "treatment": {"weight": 0.7}})


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
    # No simulation for that source: a missing prerequisite (NotFound), with what to run.
    assert main([*common, "ab-report", "movielens"]) == NotFound.exit_code
    assert "reels ab-simulate" in capsys.readouterr().err
