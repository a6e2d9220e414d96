"""The validation search on tiny, really trained models: it keeps to its budget and records every trial,
tried or not; what it picks is what the test-window evaluation then scores; `reels evaluate` can turn it
off."""

from dataclasses import replace

import pytest

from reels.client.cli import build_parser
from reels.models.config import EvaluationConfig, RankerConfig, TwoTowerConfig
from reels.models.evaluation.offline import evaluate_ranking, ranking_metrics
from reels.models.evaluation.search import (
    MODELS,
    RANKER_GRID,
    _Clock,
    _with_best_prior,
    describe_prior,
    markdown,
    search,
    trial_order,
)
from reels.models.evaluation.tune import refine_prior
from reels.workflows.errors import ConfigError

FAST_TWO_TOWER = TwoTowerConfig(epochs=1, batch_size=512, output_dim=16, feature_dim=8, hidden_units=(32,))
FAST_RANKER = RankerConfig(epochs=1, batch_size=1024, expert_units=(8,), tower_units=(8,), num_experts=2,
                           shared_bottom_units=(16,))  # fmt: skip


def test_trials_interleave_the_models_round_by_round():
    grids = {
        "two_tower": ({}, {"temperature": 0.2}),
        "mmoe": ({}, {"epochs": 2}, {"epochs": 3}),
        "ple": ({},),
    }
    assert trial_order(grids) == [
        ("two_tower", {}), ("mmoe", {}), ("ple", {}),
        ("two_tower", {"temperature": 0.2}), ("mmoe", {"epochs": 2}),
        ("mmoe", {"epochs": 3}),
    ]  # fmt: skip


def test_a_rounds_rankers_start_together_or_not_at_all():
    # Every architecture gets the same rounds, changing the same settings (the trunk's size aside) ...
    assert len({len(grid) for grid in RANKER_GRID.values()}) == 1
    for trials in zip(*RANKER_GRID.values(), strict=True):
        shared = [
            {k: v for k, v in t.items() if k not in ("expert_units", "shared_bottom_units")} for t in trials
        ]
        assert all(s == shared[0] for s in shared), trials
    # ... and a round's rankers are admitted together: seconds per epoch so far, an untimed ranker at the
    # slowest's pace, against what is left of the budget.
    clock = _Clock(200.0)
    clock.took("mmoe", 3, 30.0)
    clock.took("ple", 3, 45.0)
    assert clock.why_not_round([("mmoe", 3), ("ple", 3), ("shared_bottom", 3)]) is None  # ~120 s of 200
    reason = clock.why_not_round([("mmoe", 6), ("ple", 6), ("shared_bottom", 6)])  # ~240 s
    assert reason is not None and reason.startswith("budget: the round's rankers need about 240 s")
    assert _Clock(0.0).why_not_round([("mmoe", 1)]) == "budget spent"


def test_more_epochs_are_tried_on_every_trunk_of_the_grid():
    # Three epochs under-train every trunk: a longer round on the configured one-layer experts only would
    # set them against the two-layer shared bottom, comparing depth rather than trunks.
    for architecture, grid in RANKER_GRID.items():
        trunk = "shared_bottom_units" if architecture == "shared_bottom" else "expert_units"
        trunks = {overrides.get(trunk) for overrides in grid}
        assert len(trunks) == 2, architecture  # the configured trunk (None: not overridden) and a larger one
        longer = [overrides.get(trunk) for overrides in grid if "epochs" in overrides]
        assert set(longer) == trunks, architecture
        assert longer[0] is not None, architecture  # the larger first: a budget cut keeps two layers each


def test_a_bad_grid_fails_before_anything_trains(tiny_features):
    config = EvaluationConfig(search_budget_s=60)
    with pytest.raises(ConfigError, match="temprature"):
        search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids={"two_tower": ({"temprature": 1},)})
    with pytest.raises(ConfigError, match="architecture"):
        search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids={"mmoe": ({"architecture": "ple"},)})
    with pytest.raises(ConfigError, match="gbdt"):
        search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids={"gbdt": ({},)})


def test_the_search_keeps_to_its_budget_and_records_what_it_did_not_try(tiny_features):
    budget = 3.0
    grids = {"two_tower": ({}, {"temperature": 0.2}), "shared_bottom": ({}, {"learning_rate": 0.003})}
    config = EvaluationConfig(search_budget_s=budget)
    found = search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids=grids)
    record = found.record
    trials = record["trials"]
    assert [(t["model"], t["overrides"]) for t in trials] == trial_order(grids)  # every trial is recorded
    tried = [t for t in trials if t["status"] == "tried"]
    assert tried and tried[0]["model"] == "two_tower"  # the first trial always runs
    assert tried[0]["metric"] == "valid_recall@20" and 0 <= tried[0]["score"] <= 1
    assert all(t["started_s"] < budget for t in tried)  # nothing starts once the budget is spent
    assert record["elapsed_s"] <= budget + max(t["seconds"] for t in tried) + 1.0
    skipped = [t for t in trials if t["status"] == "not tried"]
    assert skipped and all(t["reason"].startswith("budget") for t in skipped)
    assert record["tried"] + record["not_tried"] == len(trials)
    # Untried models keep their configured settings, as do those the grids leave out.
    untried = {t["model"] for t in trials} - {t["model"] for t in tried}
    assert all(record["chosen"][m] == {} for m in untried | (set(MODELS) - set(grids)))
    text = markdown(record, "tiny")
    assert "not tried (budget" in text and f"{budget:.0f} s budget" in text


def test_what_the_search_picks_is_what_the_test_window_scores(tiny_features, tiny_models):
    grids = {"ple": ({},), "shared_bottom": ({}, {"learning_rate": 0.01})}
    config = EvaluationConfig(search_budget_s=600)
    found = search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids=grids)
    record = found.record
    assert record["not_tried"] == 0 and record["tried"] == 3
    for model in grids:
        rows = [t for t in record["trials"] if t["model"] == model]
        best = max(rows, key=lambda t: t["score"])
        assert record["chosen"][model] == best["overrides"]  # the best validation score is picked
    assert found.served_architecture == "ple"  # the only multi-task trunk searched
    assert found.two_tower_config(FAST_TWO_TOWER) == FAST_TWO_TOWER
    configs = found.ranker_configs(FAST_RANKER)
    assert configs["mmoe"] == replace(FAST_RANKER, architecture="mmoe")  # not searched: as configured

    # tiny_models serves an MMoE; beside it the evaluation scores the search's own fitted PLE and
    # shared-bottom (nothing is retrained), each with the settings the search picked.
    ranking = evaluate_ranking(tiny_features, tiny_models, FAST_RANKER, configs=configs, fitted=found.rankers)
    test = tiny_features.read_split("test")
    for architecture in ("ple", "shared_bottom"):
        fitted, speed = found.rankers[architecture]
        on_test, _ = ranking_metrics(fitted, test)
        assert ranking[architecture]["auc_view"] == pytest.approx(on_test["auc_view"])
        assert ranking[architecture]["train_examples_per_s"] == speed
        chosen_rate = configs[architecture].learning_rate
        assert ranking[architecture]["settings"]["learning_rate"] == chosen_rate


def test_reels_evaluate_search_flag():
    parser = build_parser()
    assert parser.parse_args(["evaluate"]).search is None  # the config decides
    assert parser.parse_args(["evaluate", "--no-search"]).search is False
    assert parser.parse_args(["evaluate", "--search"]).search is True
    assert not EvaluationConfig(search_budget_s=0).searches and not EvaluationConfig(search=False).searches
    with pytest.raises(ValueError, match="search_budget_s"):
        EvaluationConfig(search_budget_s=-1)


def test_a_trending_prior_is_kept_only_where_it_beats_the_model_without_one():
    rows = [
        {"candidate": {}, "valid_recall@20": 0.15},
        {"candidate": {"trending_prior": 1.0, "trending_prior_days": 1}, "valid_recall@20": 0.14},
        {"candidate": {"trending_prior": 2.0, "trending_prior_days": 7}, "valid_recall@20": 0.19},
    ]
    fields = _with_best_prior(rows)
    assert fields["score"] == 0.19 and fields["score_without_prior"] == 0.15
    assert fields["prior"] == {"trending_prior": 2.0, "trending_prior_days": 7}
    assert [r["valid_recall@20"] for r in fields["rescored"]] == [0.14, 0.19]
    worse = [rows[0], {**rows[2], "valid_recall@20": 0.15}]  # a tie keeps the model as trained
    assert "prior" not in _with_best_prior(worse) and _with_best_prior(worse)["score"] == 0.15
    assert _with_best_prior(rows[:1]) == {"score": 0.15}  # no prior grid: the trial as trained


def test_the_search_rescores_each_two_tower_with_the_prior_grid_and_keeps_the_best(tiny_features):
    config = EvaluationConfig(
        search_budget_s=600,
        trending_prior_weights=(1.0, 4.0),
        trending_days=(1, 7),
        category_prior_weights=(2.0,),
        prior_refine_rounds=0,
    )
    found = search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids={"two_tower": ({},)})
    (trial,) = found.record["trials"]
    priors = [(1.0, 1), (4.0, 1), (1.0, 7), (4.0, 7)]
    assert [(r.get("trending_prior"), r.get("trending_prior_days"), r.get("category_prior")) for r in trial["rescored"]] == [
        *((w, d, None) for w, d in priors), (None, None, 2.0), *((w, d, 2.0) for w, d in priors),
    ]  # fmt: skip
    best = max(trial["rescored"], key=lambda r: r["valid_recall@20"])
    chosen = found.two_tower_config(FAST_TWO_TOWER)
    if "prior" in trial:  # the best prior beat the model without one: it is the chosen setting
        assert trial["score"] == best["valid_recall@20"] > trial["score_without_prior"]
        picked = {k: v for k, v in best.items() if k != "valid_recall@20"}
        assert {k: getattr(chosen, k) for k in picked} == picked
        assert f"+ {describe_prior(picked)}" in markdown(found.record, "tiny")
    else:
        assert trial["score"] >= best["valid_recall@20"] and chosen == FAST_TWO_TOWER
    text = markdown(found.record, "tiny")
    assert "trending prior at weights 1, 4 over the training window's last 1, 7 days" in text
    assert "category affinity at weights 2" in text
    assert "rounds move the best one's weights" not in text  # no refinement asked for


def test_refining_steps_each_weight_of_the_best_prior_while_recall_rises():
    # A recall surface peaking at trending 6, category 2 (the test is about the walk, so the surface is a
    # formula; the search test below runs it on a really trained two-tower).
    def surface(variant):
        t, c = variant.get("trending_prior", 0.0), variant.get("category_prior", 0.0)
        return {42: 1.0 - (t - 6.0) ** 2 / 100 - (c - 2.0) ** 2 / 10}

    grid = [
        ({"trending_prior": t, "trending_prior_days": 1, "category_prior": 1.0}, None) for t in (1.0, 4.0)
    ]
    grid = [(v, surface(v)) for v, _ in grid]
    found = refine_prior(grid, surface, rounds=5, factor=1.5)
    walked = [(v["trending_prior"], v["category_prior"]) for v, _ in found]
    # round 1 around (4, 1): category 1.5 wins; round 2 around (4, 1.5): trending 6; round 3 around
    # (6, 1.5): category 2.25; round 4 around (6, 2.25): nothing better and (4, 2.25), (6, 1.5) already
    # scored, so the walk stops before its 5 rounds
    assert walked == [
        (6.0, 1.0), (2.667, 1.0), (4.0, 1.5), (4.0, 0.667),
        (6.0, 1.5), (2.667, 1.5), (4.0, 2.25),
        (9.0, 1.5), (6.0, 2.25),
        (9.0, 2.25), (6.0, 3.375),
    ]  # fmt: skip
    best = max(found, key=lambda e: e[1][42])[0]
    assert (best["trending_prior"], best["category_prior"], best["trending_prior_days"]) == (6.0, 2.25, 1)
    assert len({repr(sorted(v.items())) for v, _ in found}) == len(found)  # nothing scored twice
    assert refine_prior(grid, surface, rounds=0, factor=1.5) == []
    assert refine_prior([({}, {42: 0.5})], surface, rounds=3, factor=1.5) == []  # no weight to move


def test_the_search_refines_the_best_prior_of_the_grid(tiny_features):
    config = EvaluationConfig(
        search_budget_s=600,
        trending_prior_weights=(1.0, 4.0),
        trending_days=(1,),
        category_prior_weights=(2.0,),
        prior_refine_rounds=2,
        prior_refine_factor=2.0,
    )
    found = search(tiny_features, FAST_TWO_TOWER, FAST_RANKER, config, grids={"two_tower": ({},)})
    (trial,) = found.record["trials"]
    grid, refined = trial["rescored"][:5], trial["rescored"][5:]
    assert not any(r.get("refined") for r in grid) and refined and all(r["refined"] for r in refined)
    start = max((r for r in grid if r.get("trending_prior") or r.get("category_prior")),
                key=lambda r: r["valid_recall@20"])  # fmt: skip
    moved = [
        {k for k in ("trending_prior", "category_prior") if r.get(k) != start.get(k)} for r in refined[:2]
    ]
    assert all(len(m) == 1 for m in moved)  # one weight at a time, from the grid's best
    assert trial["score"] == max([trial.get("score_without_prior", trial["score"])]
                                 + [r["valid_recall@20"] for r in trial["rescored"]])  # fmt: skip
    assert "then up to 2 rounds move the best one's weights by x and / 2" in markdown(found.record, "tiny")
