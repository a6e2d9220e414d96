"""Per-data-set validation search for every learned model of ``reels evaluate`` (never reading the test
window).

Each model — the two-tower and the three ranker architectures — has a small grid of overrides of the
configured settings, the configured settings first. The trials run in one order that interleaves the
models (round 1: every model with its configured settings; round 2: every model's first change; ...),
under one wall-clock budget. The rankers' grids change the same things round by round (learning rate,
then a larger trunk, then more epochs on the larger trunk and then on the configured one), and a round's
ranker trials start together or not at all: only when the seconds per epoch each took so far (a ranker not
timed yet: the slowest ranker) say the whole round ends within the budget. So every architecture is
compared after the same number of rounds, and a budget cut never gives one trunk a trial the others did
not get. The two-tower's trial of a round starts when its own seconds per epoch say it ends in time (its
first whenever time is left). What was not tried is recorded with the reason. Models are trained on the
training window and scored on the validation window: the two-tower by recall@20 (``tune_two_tower``, the
protocol of ``offline.py``), a ranker by its mean AUC over the binary tasks. Each trained two-tower is
also scored with the trending prior at every weight x window of ``EvaluationConfig.trending_prior_weights``
x ``trending_days``, each and none with the category affinity at ``category_prior_weights``, then around
the best of those (``prior_refine_rounds``, ``tune.refine_prior``) (rescoring, no training); a trial's
score is its best, and the prior is part of the trial's settings only where it beats the model without
one.

Picked: the best trial per model (the configured settings where none ran), and as the served ranker the
better multi-task architecture (MMoE or PLE) on validation. The best ranker of each architecture is kept
fitted, so the test-window report scores the very models the search picked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from reels.models.config import RANKER_ARCHITECTURES, EvaluationConfig, RankerConfig, TwoTowerConfig
from reels.workflows.errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from reels.models.ranker import Ranker
    from reels.workflows.manifest import FeatureArtifacts

Progress = Callable[[str], None]
Overrides = dict[str, object]

TWO_TOWER = "two_tower"
MULTI_TASK = ("mmoe", "ple")
# Overrides of the configured settings, in the order they are tried; {} = the configured settings.
TWO_TOWER_GRID: tuple[Overrides, ...] = (
    {},
    {"history_pooling": "attention"},
    {"negatives": "mixed"},
    {"temperature": 0.2},
)
# docs/TUNING.md "Ranker": 3e-3 lifts every trunk where the default under-trains, experts as deep as the
# shared bottom close MMoE's gap, and three epochs at 3e-3 still under-train every trunk. Six epochs run
# first on the larger trunk (two layers everywhere), then on the configured one: one-layer experts alone
# at six epochs against the two-layer shared bottom would compare depths, not trunks.
_EXPERT_GRID: tuple[Overrides, ...] = (
    {},
    {"learning_rate": 0.003},
    {"learning_rate": 0.003, "expert_units": (128, 64)},
    {"learning_rate": 0.003, "expert_units": (128, 64), "epochs": 6},
    {"learning_rate": 0.003, "epochs": 6},
)
# The shared bottom's larger trunk (rounds 3 and 4) is 256-128, as deeper experts are the multi-task
# trunks'.
RANKER_GRID: dict[str, tuple[Overrides, ...]] = {
    "mmoe": _EXPERT_GRID,
    "ple": _EXPERT_GRID,
    "shared_bottom": (
        {},
        {"learning_rate": 0.003},
        {"learning_rate": 0.003, "shared_bottom_units": (256, 128)},
        {"learning_rate": 0.003, "shared_bottom_units": (256, 128), "epochs": 6},
        {"learning_rate": 0.003, "epochs": 6},
    ),
}
MODELS = (TWO_TOWER, *RANKER_ARCHITECTURES)
# The two-tower settings a trial rescores without training again (EvaluationConfig.trending_prior_weights
# x trending_days, each and none x category_prior_weights).
PRIOR_SETTINGS = ("trending_prior", "trending_prior_days", "category_prior")
# Settings the report shows for each model (plus whatever the chosen overrides change).
SHOWN = {
    TWO_TOWER: ("epochs", "learning_rate", "temperature"),
    "mmoe": ("epochs", "learning_rate", "expert_units"),
    "ple": ("epochs", "learning_rate", "expert_units"),
    "shared_bottom": ("epochs", "learning_rate", "shared_bottom_units"),
}


@dataclass
class SearchResult:
    """The search's record (JSON-able: ``record``) and per architecture its best fitted ranker with that
    ranker's training examples per second."""

    record: dict
    rankers: dict[str, tuple[Ranker, float]] = field(default_factory=dict)

    def two_tower_config(self, base: TwoTowerConfig) -> TwoTowerConfig:
        """``base`` with the two-tower overrides picked on validation."""
        return replace(base, **self.record["chosen"][TWO_TOWER])

    def ranker_configs(self, base: RankerConfig) -> dict[str, RankerConfig]:
        """Per architecture, ``base`` with its overrides picked on validation."""
        chosen = self.record["chosen"]
        return {a: replace(base, architecture=a, **chosen[a]) for a in RANKER_ARCHITECTURES}

    @property
    def served_architecture(self) -> str:
        """The ranker architecture to serve: the multi-task one that won on validation."""
        return self.record["chosen"]["served_architecture"]


def settings(config: TwoTowerConfig | RankerConfig, model: str, overrides: Mapping = ()) -> dict:
    """The settings of ``config`` the report shows for ``model`` (``SHOWN`` plus ``overrides``' keys)."""
    values = asdict(config)
    names = dict.fromkeys((*SHOWN[model], *overrides))
    return {name: _plain(values[name]) for name in names}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def trial_rounds(grids: Mapping[str, Sequence[Overrides]]) -> list[list[tuple[str, Overrides]]]:
    """Round i: (model, overrides) for every model of ``grids`` with an i-th entry, in ``grids`` order."""
    rounds = max((len(g) for g in grids.values()), default=0)
    return [[(m, dict(g[i])) for m, g in grids.items() if i < len(g)] for i in range(rounds)]


def trial_order(grids: Mapping[str, Sequence[Overrides]]) -> list[tuple[str, Overrides]]:
    """(model, overrides) in round-robin order over the models of ``grids``, round by round."""
    return [trial for trials in trial_rounds(grids) for trial in trials]


def _check(grids: Mapping[str, Sequence[Overrides]], two_tower: TwoTowerConfig, ranker: RankerConfig) -> None:
    """Every model known and every override a valid setting, before anything trains (``ConfigError``)."""
    unknown = sorted(set(grids) - set(MODELS))
    if unknown:
        raise ConfigError(f"unknown models in the search grid: {unknown} (known: {list(MODELS)})")
    for model, grid in grids.items():
        base = two_tower if model == TWO_TOWER else ranker
        for overrides in grid:
            bad = sorted(set(overrides) - set(asdict(base)) | ({"architecture"} & set(overrides)))
            if bad:
                raise ConfigError(f"{model}: settings the search cannot override: {bad}")
            replace(base, **overrides)  # the section's own checks


class _Clock:
    """Wall seconds since the search began, and the seconds per epoch each model has taken so far."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self.per_epoch: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def why_not(self, model: str, epochs: int) -> str | None:
        """None when a trial of ``model`` for ``epochs`` may start now, else why it may not. A model not
        timed yet is estimated from the slowest ranker so far (a ranker) or not at all (the two-tower)."""
        left = self.budget_s - self.elapsed()
        if left <= 0:
            return "budget spent"
        rankers = [s for m, s in self.per_epoch.items() if m != TWO_TOWER]
        per_epoch = self.per_epoch.get(model, max(rankers, default=None) if model != TWO_TOWER else None)
        if per_epoch is not None and per_epoch * epochs > left:
            return f"budget: needs about {per_epoch * epochs:.0f} s, {left:.0f} s left"
        return None

    def why_not_round(self, trials: Sequence[tuple[str, int]]) -> str | None:
        """None when the rankers' trials of one round ((model, epochs) each) may all start now, else why
        none may: the budget is spent, or their estimated seconds together exceed what is left."""
        left = self.budget_s - self.elapsed()
        if left <= 0:
            return "budget spent"
        slowest = max((s for m, s in self.per_epoch.items() if m != TWO_TOWER), default=0.0)
        needed = sum(self.per_epoch.get(model, slowest) * epochs for model, epochs in trials)
        if needed > left:
            return f"budget: the round's rankers need about {needed:.0f} s, {left:.0f} s left"
        return None

    def took(self, model: str, epochs: int, seconds: float) -> None:
        self.per_epoch[model] = max(self.per_epoch.get(model, 0.0), seconds / epochs)


def search(
    features: FeatureArtifacts,
    two_tower: TwoTowerConfig,
    ranker: RankerConfig,
    config: EvaluationConfig,
    progress: Progress | None = None,
    grids: Mapping[str, Sequence[Overrides]] | None = None,
) -> SearchResult:
    """Run the validation search on ``features`` within ``config.search_budget_s`` (module doc). ``grids``:
    per model, the overrides to try (default ``TWO_TOWER_GRID`` and ``RANKER_GRID``; a model left out keeps
    its configured settings untried). ``ConfigError`` on a bad grid before anything trains;
    ``InvalidInput`` when the validation window is empty."""
    from reels.models.evaluation.offline import ranking_metrics
    from reels.models.evaluation.tune import tune_two_tower
    from reels.models.inputs import feature_schema
    from reels.models.ranker import BINARY_TASKS, Ranker

    say = progress or (lambda _m: None)
    grids = dict(grids if grids is not None else {TWO_TOWER: TWO_TOWER_GRID, **RANKER_GRID})
    _check(grids, two_tower, ranker)
    schema = feature_schema(features)
    train, valid = features.read_split("train"), features.read_split("valid")
    if not len(valid):
        raise InvalidInput("the validation window is empty: nothing to pick settings on")
    clock = _Clock(config.search_budget_s)
    trials: list[dict] = []
    best: dict[str, dict] = {}
    fitted: dict[str, tuple[Ranker, float]] = {}
    seen: dict[str, list[dict]] = {m: [] for m in grids}
    candidate: tuple[Ranker, float] | None = None
    record: dict = {
        "budget_s": config.search_budget_s,
        "valid_impressions": len(valid),
        "trending_prior_grid": {
            "weights": list(config.trending_prior_weights),
            "days": list(config.trending_days),
            "category_weights": list(config.category_prior_weights),
            "refine_rounds": config.prior_refine_rounds,
            "refine_factor": config.prior_refine_factor,
        },
    }
    rounds: list[list[tuple[str, Overrides, dict, dict]]] = []  # (model, overrides, resolved, row)
    for round_trials in trial_rounds(grids):
        planned = []
        for model, overrides in round_trials:
            base = two_tower if model == TWO_TOWER else replace(ranker, architecture=model)
            resolved = asdict(replace(base, **overrides))
            if resolved in seen[model]:  # e.g. the configured learning rate is already 3e-3
                continue
            seen[model].append(resolved)
            row: dict = {"model": model, "overrides": {k: _plain(v) for k, v in overrides.items()}}
            trials.append(row)
            planned.append((model, overrides, resolved, row))
        rounds.append(planned)
    for planned in rounds:
        rankers = [(model, resolved["epochs"]) for model, _, resolved, _ in planned if model != TWO_TOWER]
        round_reason: str | None = None
        round_checked = False
        for model, overrides, resolved, row in planned:
            if model == TWO_TOWER:
                reason = clock.why_not(model, resolved["epochs"])
            else:  # the round's rankers are checked together, when the first of them is due
                if not round_checked:
                    round_reason, round_checked = clock.why_not_round(rankers), True
                reason = round_reason
            if reason:
                row.update(status="not tried", reason=reason)
                continue
            row["started_s"] = round(clock.elapsed(), 1)
            say(
                f"validation search: {model} {overrides or 'configured settings'} ({row['started_s']:.0f} s in)"
            )
            began = time.perf_counter()
            try:
                if model == TWO_TOWER:
                    result = tune_two_tower(
                        features, two_tower, grid=(overrides,), k=20, progress=say,
                        priors=config.trending_prior_weights, prior_days=config.trending_days,
                        category_priors=config.category_prior_weights,
                        refine_rounds=config.prior_refine_rounds, refine_factor=config.prior_refine_factor,
                    )  # fmt: skip
                    row.update(metric="valid_recall@20", **_with_best_prior(result["rows"][1:]))
                    record["valid_users"] = result["valid_users"]
                    record["popularity_valid_recall@20"] = float(result["rows"][0]["valid_recall@20"])
                else:
                    fitting = Ranker(schema, replace(ranker, architecture=model, **overrides))
                    speed = round(fitting.fit(train).examples_per_s, 1)
                    candidate = (fitting, speed)
                    valid_row, _ = ranking_metrics(fitting, valid)
                    mean_auc = float(np.mean([valid_row[f"auc_{t}"] for t in BINARY_TASKS]))
                    row.update(metric="valid_mean_auc", score=mean_auc, valid=valid_row)
            except Exception as exc:  # one setting that cannot train must not sink the search
                # One line for the report's table: the exception and its message's first line.
                first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
                row.update(status="failed", reason=f"{type(exc).__name__}: {first}"[:200].replace("|", "/"))
                say(f"validation search: {model} {overrides} failed: {row['reason']}")
                candidate = fitting = None
                continue
            seconds = time.perf_counter() - began
            row.update(status="tried", seconds=round(seconds, 1))
            clock.took(model, resolved["epochs"], seconds)
            if model not in best or row["score"] > best[model]["score"]:
                best[model] = row
                if candidate is not None:
                    fitted[model] = candidate
            candidate = fitting = None  # a worse ranker is dropped at once
    chosen = {m: {**best[m]["overrides"], **best[m].get("prior", {})} if m in best else {} for m in MODELS}
    for model in MODELS:  # the record holds lists (JSON); the configs want tuples
        chosen[model] = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen[model].items()}
    chosen["served_architecture"] = _served(ranker.architecture, best)
    record.update(
        elapsed_s=round(clock.elapsed(), 1),
        trials=trials,
        chosen=chosen,
        tried=sum(r["status"] == "tried" for r in trials),
        not_tried=sum(r["status"] == "not tried" for r in trials),
        failed=sum(r["status"] == "failed" for r in trials),
    )
    return SearchResult(record, fitted)


def _with_best_prior(rows: Sequence[dict]) -> dict:
    """A two-tower trial's fields from its ``tune_two_tower`` rows (the trained model, then the same model
    rescored at each trending prior): ``score``, the best recall@20; with a prior that beats the model as
    trained, that ``prior`` (its overrides) and ``score_without_prior``; ``rescored``: each prior's
    recall."""
    plain, rescored = rows[0], rows[1:]
    fields: dict = {"score": float(plain["valid_recall@20"])}
    best = max(rescored, key=lambda r: r["valid_recall@20"], default=None)
    if best is not None and best["valid_recall@20"] > plain["valid_recall@20"]:
        prior = {k: best["candidate"][k] for k in PRIOR_SETTINGS if k in best["candidate"]}
        fields.update(score=float(best["valid_recall@20"]), prior=prior, score_without_prior=fields["score"])
    if rescored:
        fields["rescored"] = [
            {**{k: r["candidate"][k] for k in PRIOR_SETTINGS if k in r["candidate"]},
             "valid_recall@20": float(r["valid_recall@20"]), **({"refined": True} if r.get("refined") else {})}
            for r in rescored
        ]  # fmt: skip
    return fields


def describe_prior(prior: Mapping) -> str:
    """A two-tower trial's rescoring prior in words, e.g. ``trending prior 2 over 1 days + category
    affinity 4``."""
    parts = []
    if prior.get("trending_prior"):
        days = f" over {prior['trending_prior_days']:g} days" if "trending_prior_days" in prior else ""
        parts.append(f"trending prior {prior['trending_prior']:g}{days}")
    if prior.get("category_prior"):
        parts.append(f"category affinity {prior['category_prior']:g}")
    return " + ".join(parts)


def _served(configured: str, best: Mapping[str, dict]) -> str:
    """The better multi-task architecture on validation; the configured one when neither was scored or
    when the configuration asks for shared-bottom outright."""
    scored = [a for a in MULTI_TASK if a in best]
    if configured == "shared_bottom" or not scored:
        return configured
    return max(scored, key=lambda a: best[a]["score"])


def markdown(record: dict, name: str) -> str:
    """A RESULTS.md section: the budget, each trial (tried or not, with its validation score) and what was
    picked per model."""
    left = record["not_tried"]
    lines = [
        f"### Validation search on {name}",
        "",
        "Every learned model's settings picked on the validation window "
        f"({record.get('valid_users', '?')} retrieval query users, {record['valid_impressions']:,} ranking "
        f"impressions; the test window is never read): {record['tried']} trials in "
        f"{record['elapsed_s']:.0f} s of a {record['budget_s']:.0f} s budget"
        + (f", {left} not tried for lack of time" if left else "")
        + (f", {record['failed']} failed to train (reason below)" if record.get("failed") else "")
        + ".",
        "Two-tower trials are scored by recall@20, rankers by mean AUC over view, liked and completed; "
        "a round's ranker trials run together or not at all, so every architecture gets the same rounds.",
    ]
    if "popularity_valid_recall@20" in record:
        lines.append(f"Popularity's validation recall@20: {record['popularity_valid_recall@20']:.4f}.")
    prior_grid = record.get("trending_prior_grid", {})
    if prior_grid.get("weights") or prior_grid.get("category_weights"):
        category = prior_grid.get("category_weights")
        lines.append(
            "Each trained two-tower is also scored with the trending prior at weights "
            f"{', '.join(f'{w:g}' for w in prior_grid['weights'])} over the training window's last "
            f"{', '.join(f'{d:g}' for d in prior_grid['days'])} days"
            + (
                f", each and the model alone also with the category affinity at weights "
                f"{', '.join(f'{w:g}' for w in category)}"
                if category
                else ""
            )
            + " (no retraining)"
            + (
                f", then up to {prior_grid['refine_rounds']} rounds move the best one's weights by x and / "
                f"{prior_grid['refine_factor']:g} while recall rises"
                if prior_grid.get("refine_rounds")
                else ""
            )
            + "; the best is kept where it beats the model without a prior."
        )
    lines += ["", "| model | overrides | score | seconds | picked |", "|---|---|---:|---:|---|"]
    chosen = record["chosen"]
    for row in record["trials"]:
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "configured"
        if "prior" in row:
            overrides += f" + {describe_prior(row['prior'])} ({row['score_without_prior']:.4f} without)"
        trial = {**row["overrides"], **row.get("prior", {})}
        picked = {k: _plain(v) for k, v in chosen[row["model"]].items()} == trial
        if row["status"] == "tried":
            score = f"{row['score']:.4f}"
            mark = "**picked**" if picked else ""
            if picked and row["model"] == chosen["served_architecture"]:
                mark += " (served)"
            lines.append(f"| {row['model']} | {overrides} | {score} | {row['seconds']:.0f} | {mark} |")
        else:
            lines.append(f"| {row['model']} | {overrides} | {row['status']} ({row['reason']}) | | |")
    return "\n".join(lines) + "\n"
