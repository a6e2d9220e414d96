"""A/B experiments without servers or models: deterministic bucketing (also across processes), the
experiment config section, and the report's statistics and join on known values. The serving side (exposure
log, propensities, simulator + report on real feeds) is in tests/integration/test_experiment.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from reels.client.config import load_config
from reels.models.evaluation.abtest import _exploration, join, two_proportion_z, welch_p, wilson
from reels.models.serving.experiment import Experiment
from reels.workflows.errors import ConfigError

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
