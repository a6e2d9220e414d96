"""``reels tune --rankers``: ranker candidates trained once per seed on the training window and scored on
the validation window, on the tiny feature build (really trained)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from reels.client.cli import main
from reels.client.config import load_config, section_overrides
from reels.models.evaluation.tune import rankers_markdown, tune_rankers
from reels.workflows.errors import ConfigError
from tests.conftest import TINY_RANKER


def test_each_candidate_is_trained_per_seed_and_reported_with_its_spread(tiny_features):
    from_yaml = {
        "shared_bottom": {"architecture": "shared_bottom", "shared_bottom_units": [32, 16]},  # YAML lists
        "mmoe": {"architecture": "mmoe", "seed": 99},  # the seeds below win over a candidate's own
    }
    candidates = {name: section_overrides(load_config(), "ranker", o) for name, o in from_yaml.items()}
    result = tune_rankers(tiny_features, replace(TINY_RANKER, epochs=1), candidates, seeds=(1, 2))
    assert result["seeds"] == [1, 2] and result["valid_impressions"] > 0
    assert [row["candidate"] for row in result["rows"]] == ["shared_bottom", "mmoe"]
    for row in result["rows"]:
        assert set(row["mean_auc_by_seed"]) == {1, 2}
        assert row["mean_auc"] == pytest.approx(np.mean(list(row["mean_auc_by_seed"].values())))
        assert row["mean_auc"] == pytest.approx(
            np.mean([row[f"auc_{t}"] for t in ("view", "liked", "completed")])
        )
        assert 0.0 <= row["mean_auc"] <= 1.0
    assert result["rows"][0]["overrides"]["shared_bottom_units"] == (32, 16)
    # Two seeds train two different networks: the spread is what a difference between trunks is read against.
    assert result["rows"][0]["mean_auc_by_seed"][1] != result["rows"][0]["mean_auc_by_seed"][2]
    assert result["best"] == max(result["rows"], key=lambda r: r["mean_auc"])["candidate"]
    text = rankers_markdown(result, "### header")
    assert (
        "| seed 1 | seed 2 |" in text and "`architecture=shared_bottom, shared_bottom_units=[32, 16]`" in text
    )
    assert sum(line.startswith("|") for line in text.splitlines()) == 2 + 2  # header, separator, candidates
    assert "seed=99" not in text  # the seeds decide: a candidate's own seed is not shown as a setting


def test_an_unknown_setting_fails_before_anything_trains(tiny_features):
    with pytest.raises(ConfigError, match="expert_unit"):
        tune_rankers(tiny_features, TINY_RANKER, {"typo": {"expert_unit": [8]}})


def test_reels_tune_refuses_a_missing_or_empty_candidates_file(tmp_path):
    assert main(["tune", "synthetic", "--rankers", str(tmp_path / "absent.yaml")]) == 2
    empty = tmp_path / "empty.yaml"
    empty.write_text("candidates: {}\n")
    assert main(["tune", "synthetic", "--rankers", str(empty)]) == 2


def test_candidates_are_checked_as_a_config_files_ranker_section_before_anything_trains(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'expert_units'"):
        section_overrides(load_config(), "ranker", {"expert_unit": [8]})
    with pytest.raises(ConfigError, match="ranker.epochs: expected int"):
        section_overrides(load_config(), "ranker", {"epochs": "six"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidates:\n  typo: {epochs: six}\n")
    assert main(["--set", f"data.root={tmp_path}", "tune", "synthetic", "--rankers", str(bad)]) == 2
