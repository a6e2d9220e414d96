"""Light tuning on the validation window only (the test window is never looked at).

Two-tower: each candidate is a set of TwoTowerConfig overrides; each is trained on the training window
(once per seed) and scored by Recall@20 on validation queries (same protocol as
``models/evaluation/offline.py``), next to popularity. Rankers (``tune_rankers``): each candidate is a set
of RankerConfig overrides, trained once per seed and scored by its AUCs on every validation impression
(``offline.compare_rankers``), so a difference between trunks can be read against the seed-to-seed spread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from reels.models import baselines, metrics
from reels.models.baselines import catalog_popularity
from reels.models.config import RankerConfig, TwoTowerConfig
from reels.models.evaluation.offline import build_queries, compare_rankers
from reels.models.index import CategoryAffinity, index_vectors, query_vectors, trending_prior
from reels.models.inputs import feature_schema
from reels.models.ranker import BINARY_TASKS
from reels.models.train import item_view_counts
from reels.models.two_tower import TwoTower
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.spec import HISTORY

DEFAULT_GRID = (
    {"epochs": 5, "temperature": 0.1, "learning_rate": 0.001},
    {"epochs": 5, "temperature": 0.1, "learning_rate": 0.001, "logq_correction": False},
    {"epochs": 5, "temperature": 0.3, "learning_rate": 0.001},
    {"epochs": 5, "temperature": 0.5, "learning_rate": 0.001},
    {"epochs": 10, "temperature": 0.5, "learning_rate": 0.001},
    {"epochs": 10, "temperature": 0.5, "learning_rate": 0.003},
    {"epochs": 20, "temperature": 0.5, "learning_rate": 0.001},
)
# History pooling and negatives, on top of the configured learning settings (docs/TUNING.md).
POOLING_NEGATIVES_GRID = (
    {},
    {"history_pooling": "attention"},
    {"history_pooling": "attention", "share_history_embeddings": False},
    {"negatives": "mixed"},
    {"history_pooling": "attention", "negatives": "mixed"},
)
GRIDS = {"default": DEFAULT_GRID, "pooling_negatives": POOLING_NEGATIVES_GRID}


def tune_two_tower(
    features: FeatureArtifacts,
    base: TwoTowerConfig,
    grid: tuple[dict, ...] = DEFAULT_GRID,
    k: int = 20,
    progress: Callable[[str], None] | None = None,
    seeds: tuple[int, ...] = (),
    priors: Sequence[float] = (),
    prior_days: Sequence[float] = (),
    category_priors: Sequence[float] = (),
    refine_rounds: int = 0,
    refine_factor: float = 1.5,
) -> dict:
    """Train one two-tower per ``grid`` entry (overrides of ``base``) and ``seeds`` entry (default: the
    base seed only) and score each by validation recall@``k``, as its index ranks (with the entry's
    ``trending_prior``); each trained model is also scored at every ``trending_prior`` of ``priors``
    (over the last ``trending_prior_days`` of ``prior_days``, each; default: the entry's days) without
    training again (a row of its own, ``rescored``); each of those, and the model without a prior, also
    with every ``category_prior`` of ``category_priors`` (the category affinity of the query's history,
    ``index.CategoryAffinity``). Then up to ``refine_rounds`` rounds of ``refine_prior`` around the best of
    those (rows marked ``refined``).
    Returns ``valid_users``, one row per candidate
    (popularity first; a candidate's recall is its mean over seeds, ``recall_by_seed`` holds each) and
    the ``best`` overrides."""
    say = progress or (lambda _m: None)
    seeds = tuple(seeds) or (base.seed,)
    schema = feature_schema(features)
    train = features.read_split("train")
    valid = features.read_split("valid")
    catalog = pd.read_parquet(features.videos_path)
    ids = catalog["raw_video_id"].to_numpy()
    queries = build_queries(train, valid, ids)
    counts = item_view_counts(train, schema["video_id"].int_domain.max + 1)
    positives = train[train["view"] == 1]

    popularity = catalog_popularity(train, ids)
    top = baselines.top_k(baselines.popularity_scorer(popularity), len(queries.frame), queries.seen, k)
    rows = [
        {
            "candidate": "popularity",
            f"valid_recall@{k}": metrics.retrieval_metrics(top, queries.relevant, [k])[f"recall@{k}"],
        }
    ]
    recent: dict[float, np.ndarray] = {}  # trending_prior_days -> recent views per catalog video

    @functools.cache
    def category_shares() -> tuple[CategoryAffinity, np.ndarray]:
        """The catalog's categories at weight 1 and the queries' history shares: the same for every
        ``category_prior``, so computed once."""
        unit = CategoryAffinity.of(catalog["video_id"].to_numpy(), catalog["category"], 1.0)
        return unit, unit.query_columns(queries.frame[HISTORY].to_numpy())

    def recall(query: np.ndarray, items: np.ndarray, config: TwoTowerConfig) -> float:
        days = config.trending_prior_days
        if days not in recent:
            recent[days] = baselines.recent_popularity(train, ids, days)
        affinity, columns = None, None
        if config.category_prior > 0:
            unit, columns = category_shares()
            affinity = replace(unit, weight=config.category_prior)
        vectors = index_vectors(items, trending_prior(recent[days], config.trending_prior), affinity)
        query = query_vectors(vectors.shape[1], query, columns)
        scorer = baselines.embedding_scorer(query, vectors)
        top = baselines.top_k(scorer, len(queries.frame), queries.seen, k)
        return metrics.retrieval_metrics(top, queries.relevant, [k])[f"recall@{k}"]

    for overrides in grid:
        variants = [dict(overrides)] + [{**overrides, **prior} for prior in prior_grid(priors, prior_days)]
        variants += [{**v, "category_prior": c} for c in category_priors for v in list(variants)]
        trained, seconds = [], []
        for seed in seeds:
            config = replace(base, **{"seed": seed, **overrides})
            say(f"two-tower {overrides} seed {config.seed}")
            model = TwoTower(schema, config, counts)
            seconds.append(model.fit(positives).seconds)
            trained.append((config, model.query_embeddings(queries.frame), model.item_embeddings(catalog)))

        def by_seed(variant: dict, trained: list = trained) -> dict[int, float]:
            """The trained models' recall, one per seed, scored as ``variant`` sets the priors."""
            return {c.seed: recall(query, items, replace(c, **variant)) for c, query, items in trained}

        scored = [(variant, by_seed(variant)) for variant in variants]
        refined = refine_prior(scored[1:], by_seed, refine_rounds, refine_factor)
        for i, (variant, scores) in enumerate(scored + refined):
            row = {
                "candidate": variant,
                f"valid_recall@{k}": float(np.mean(list(scores.values()))),
                "train_s": round(float(np.mean(seconds)), 1),
            }
            if i:
                row["rescored"] = True  # the model above, scored with this prior: no training of its own
            if i >= len(scored):
                row["refined"] = True
            if len(seeds) > 1:
                row["recall_by_seed"] = scores
            rows.append(row)
    best = max(rows[1:], key=lambda r: r[f"valid_recall@{k}"])
    return {"valid_users": len(queries.frame), "rows": rows, "best": best["candidate"]}


# The prior weights ``refine_prior`` moves (the window, trending_prior_days, stays as the grid found it).
PRIOR_WEIGHTS = ("trending_prior", "category_prior")


def refine_prior(
    scored: Sequence[tuple[dict, dict[int, float]]],
    score: Callable[[dict], dict[int, float]],
    rounds: int,
    factor: float,
) -> list[tuple[dict, dict[int, float]]]:
    """Coordinate steps around the best of ``scored`` (prior overrides, recall per seed) that sets a prior
    weight: each round scores every weight it sets times and divided by ``factor``, one weight at a time
    (rounded to 3 decimals, skipping overrides already scored), and moves to the best of those while the
    mean recall rises; at most ``rounds`` rounds. Returns what it scored, in order."""

    def mean(entry: tuple[dict, dict[int, float]]) -> float:
        return float(np.mean(list(entry[1].values())))

    with_weight = [e for e in scored if any(e[0].get(key) for key in PRIOR_WEIGHTS)]
    if not with_weight or rounds <= 0:
        return []
    tried = {_key(variant) for variant, _ in scored}
    best = max(with_weight, key=mean)
    found: list[tuple[dict, dict[int, float]]] = []
    for _ in range(rounds):
        steps = []
        for key in PRIOR_WEIGHTS:
            for weight in (best[0][key] * factor, best[0][key] / factor) if best[0].get(key) else ():
                variant = {**best[0], key: round(float(weight), 3)}
                if _key(variant) not in tried:
                    tried.add(_key(variant))
                    steps.append((variant, score(variant)))
        found += steps
        step = max(steps, key=mean, default=None)
        if step is None or mean(step) <= mean(best):
            break
        best = step
    return found


def _key(variant: Mapping) -> str:
    return repr(sorted((name, float(v) if isinstance(v, int) else v) for name, v in variant.items()))


def prior_grid(weights: Sequence[float], days: Sequence[float] = ()) -> list[dict[str, float]]:
    """Two-tower overrides for every trending prior weight of ``weights`` over each window of ``days``
    (none given: the configured window, so only the weight is overridden), days by days."""
    if not days:
        return [{"trending_prior": w} for w in weights]
    return [{"trending_prior": w, "trending_prior_days": d} for d in days for w in weights]


def markdown(result: dict, header: str) -> str:
    """A markdown section under ``header``: the best candidate and a table of validation recall per candidate."""
    key = next(k for k in result["rows"][0] if k.startswith("valid_recall"))
    seeds = next((list(r["recall_by_seed"]) for r in result["rows"] if "recall_by_seed" in r), [])
    lines = [header, "", f"{result['valid_users']} validation users; best: `{result['best']}`.", ""]
    if seeds:  # several seeds: the mean, then each seed's recall
        lines += [
            f"| candidate | {key} (mean) | {' | '.join(f'seed {s}' for s in seeds)} | train s (mean) |",
            "|---|---:|" + "---:|" * len(seeds) + "---:|",
        ]
    else:
        lines += [f"| candidate | {key} | train s |", "|---|---:|---:|"]
    for row in result["rows"]:
        per_seed = row.get("recall_by_seed", {})
        cells = [f"{per_seed[s]:.4f}" if s in per_seed else "" for s in seeds]
        middle = "".join(f" {c} |" for c in cells)
        seconds = (
            ("refined" if row.get("refined") else "rescored")
            if row.get("rescored")
            else row.get("train_s", "")
        )
        lines.append(f"| `{row['candidate']}` | {row[key]:.4f} |{middle} {seconds} |")
    return "\n".join(lines) + "\n"


def tune_rankers(
    features: FeatureArtifacts,
    base: RankerConfig,
    candidates: Mapping[str, Mapping],
    seeds: Sequence[int] = (),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train each candidate (RankerConfig overrides of ``base``, typed: a YAML file's go through
    ``client.config.section_overrides``) once per seed (default: the base seed; the seed overrides any in
    the candidate) on the training
    window and score it on the validation window: ``valid_impressions``, ``seeds``, one row per candidate
    (each binary task's AUC and the mean AUC averaged over seeds, ``mean_auc_by_seed``, the mean training
    seconds) and the ``best`` candidate by mean AUC. ``ConfigError`` on an unknown setting before anything
    trains."""
    seeds = tuple(seeds) or (base.seed,)
    overrides = {name: {k: v for k, v in o.items() if k != "seed"} for name, o in candidates.items()}
    runs = {
        seed: compare_rankers(
            features, base, {n: {**o, "seed": seed} for n, o in overrides.items()}, progress
        )
        for seed in seeds
    }
    rows = []
    for name, o in overrides.items():
        results = [runs[seed][name] for seed in seeds]
        row: dict = {"candidate": name, "overrides": o}
        for task in BINARY_TASKS:
            row[f"auc_{task}"] = float(np.mean([r["valid"][f"auc_{task}"] for r in results]))
        row["mean_auc"] = float(np.mean([r["mean_auc"] for r in results]))
        row["mean_auc_by_seed"] = {seed: r["mean_auc"] for seed, r in zip(seeds, results, strict=True)}
        row["train_s"] = round(float(np.mean([r["train_s"] for r in results])), 1)
        rows.append(row)
    return {
        "valid_impressions": len(features.read_split("valid")),
        "seeds": list(seeds),
        "rows": rows,
        "best": max(rows, key=lambda r: r["mean_auc"])["candidate"],
    }


def rankers_markdown(result: dict, header: str) -> str:
    """A markdown section under ``header``: per candidate, each task's validation AUC and the mean AUC
    (means over seeds), the mean AUC of each seed, and the training seconds."""
    seeds = result["seeds"]
    tasks = " | ".join(f"AUC {t}" for t in BINARY_TASKS)
    lines = [
        header,
        "",
        f"{result['valid_impressions']:,} validation impressions; seeds {', '.join(map(str, seeds))}; "
        f"best mean AUC: `{result['best']}`.",
        "",
        f"| candidate | overrides | {tasks} | mean AUC | {' | '.join(f'seed {s}' for s in seeds)} | train s |",
        "|---|---|" + "---:|" * (len(BINARY_TASKS) + 1 + len(seeds) + 1),
    ]
    for row in result["rows"]:
        overrides = ", ".join(
            f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in row["overrides"].items()
        )
        cells = [f"{row[f'auc_{t}']:.4f}" for t in BINARY_TASKS] + [f"**{row['mean_auc']:.4f}**"]
        cells += [f"{row['mean_auc_by_seed'][s]:.4f}" for s in seeds] + [f"{row['train_s']:.1f}"]
        lines.append(f"| {row['candidate']} | `{overrides}` | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
