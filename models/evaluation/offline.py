"""Offline evaluation on the time split: retrieval against baselines, multi-task ranking, beyond accuracy.

Protocol (the same for every method):
- A window W (validation for tuning, test for the report). Query users: those with at least one viewed
  event in W that they had not interacted with before W. Relevant set: those videos.
- The query is the user's first event in W: their features, their history as of then, that event's context.
- Candidates: the full catalog (every video in the video table), minus every video the user interacted
  with before W (any impression, watched or not).
- Models are trained on the training window only. ALS is re-solved per query user from all their views
  before W (the same information the two-tower query sees through its history feature); its factors and
  regularisation are picked on the validation window, never on test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import scipy.stats

from reels.models import baselines, metrics
from reels.models.config import RANKER_ARCHITECTURES, RANKER_TASKS, EvaluationConfig, RankerConfig
from reels.models.evaluation import bootstrap
from reels.models.inputs import feature_schema
from reels.models.ranker import BINARY_TASKS, Ranker
from reels.models.train import TrainedModels
from reels.workflows.errors import ConfigError, InvalidInput
from reels.workflows.manifest import FeatureArtifacts

Progress = Callable[[str], None]


@dataclass
class Queries:
    """The query users of one window, their relevant and already seen catalog positions."""

    frame: pd.DataFrame  # one row per query user: the first event in the window
    relevant: list[set[int]]  # catalog positions viewed in the window and unseen before
    seen: list[np.ndarray]  # catalog positions interacted with before the window
    prior_views: pd.DataFrame  # raw_user_id, position: views before the window (for ALS)


def catalog_positions(catalog_ids: np.ndarray) -> pd.Series:
    """Raw video id -> its row in the catalog (the first row where an id repeats)."""
    positions = pd.Series(np.arange(len(catalog_ids)), index=catalog_ids)
    return positions[~positions.index.duplicated()]


def build_queries(before: pd.DataFrame, window: pd.DataFrame, catalog_ids: np.ndarray) -> Queries:
    """The queries of ``window`` given everything ``before`` it (the protocol in the module doc)."""
    position_of = catalog_positions(catalog_ids)
    before = before[before["raw_video_id"].isin(position_of.index)]
    window = window[window["raw_video_id"].isin(position_of.index)]
    seen_sets = before.groupby("raw_user_id")["raw_video_id"].agg(set)
    viewed = window[window["view"] == 1].groupby("raw_user_id")["raw_video_id"].agg(set)
    first = window.sort_values(["event_time", "event_id"]).drop_duplicates("raw_user_id")
    rows, relevant, seen = [], [], []
    for row in first.itertuples(index=False):
        user = row.raw_user_id
        prior = seen_sets.get(user, set())
        new = viewed.get(user, set()) - prior
        if new:
            rows.append(row)
            relevant.append({int(position_of[v]) for v in new})
            seen.append(position_of.loc[list(prior)].to_numpy() if prior else np.array([], dtype=np.int64))
    frame = pd.DataFrame(rows, columns=first.columns)
    views = before[before["view"] == 1]
    prior_views = pd.DataFrame(
        {
            "raw_user_id": views["raw_user_id"].to_numpy(),
            "position": position_of.loc[views["raw_video_id"]].to_numpy(),
        }
    )
    return Queries(frame.reset_index(drop=True), relevant, seen, prior_views)


def _als_scorer(model: baselines.ALS, queries: Queries, n_items: int) -> baselines.Scorer:
    user_row = pd.Series(np.arange(len(queries.frame)), index=queries.frame["raw_user_id"].to_numpy())
    views = queries.prior_views[queries.prior_views["raw_user_id"].isin(user_row.index)]
    matrix = baselines.interaction_matrix(
        user_row.loc[views["raw_user_id"]].to_numpy(), views["position"].to_numpy(), len(user_row), n_items
    )
    return model.scorer(matrix)


def _train_matrix(train: pd.DataFrame, catalog_ids: np.ndarray):
    position_of = catalog_positions(catalog_ids)
    views = train[(train["view"] == 1) & train["raw_video_id"].isin(position_of.index)]
    users = views["raw_user_id"].astype("category")
    matrix = baselines.interaction_matrix(
        users.cat.codes.to_numpy(), position_of.loc[views["raw_video_id"]].to_numpy(),
        len(users.cat.categories), len(catalog_ids),
    )  # fmt: skip
    return matrix


def catalog_popularity(train: pd.DataFrame, catalog_ids: np.ndarray) -> np.ndarray:
    """Training views per catalog position (the popularity baseline's scores and novelty's p)."""
    popularity = np.zeros(len(catalog_ids))
    counts = train.loc[train["view"] == 1, "raw_video_id"].value_counts()
    position_of = catalog_positions(catalog_ids)
    counts = counts[counts.index.isin(position_of.index)]
    popularity[position_of.loc[counts.index].to_numpy()] = counts.to_numpy()
    return popularity


def _beyond_accuracy(top: np.ndarray, category: np.ndarray, popularity: np.ndarray, k: int = 20) -> dict:
    return {
        f"coverage@{k}": metrics.coverage(top[:, :k], len(category)),
        f"diversity@{k}": metrics.intra_list_diversity(top[:, :k], category),
        f"novelty@{k}": metrics.novelty(top[:, :k], popularity),
    }


def tune_als(train_matrix, queries: Queries, n_items: int, config: EvaluationConfig, k: int = 20) -> dict:
    """The ALS factors and regularisation with the best recall@k on ``queries`` (the validation window)."""
    best = None
    for factors in config.als_factors:
        for reg in config.als_regularization:
            model = baselines.ALS(factors, reg, config.als_iterations, config.seed).fit(train_matrix)
            top = baselines.top_k(_als_scorer(model, queries, n_items), len(queries.frame), queries.seen, k)
            recall = metrics.retrieval_metrics(top, queries.relevant, [k])[f"recall@{k}"]
            if best is None or recall > best["valid_recall@20"]:
                best = {"factors": factors, "regularization": reg, "valid_recall@20": recall}
    return best


def oracle_scorer(
    features: FeatureArtifacts, queries: Queries, catalog_ids: np.ndarray
) -> baselines.Scorer | None:
    """On synthetic data, the generator's own preferences: each query user's expected affinity for every
    catalog video on the day of their query (taste for its category, favourite creator, quality; the
    response model without its noise and position). None when the store has no ``ground_truth.npz``."""
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.synthetic import CATEGORIES, USER_ID_BASE, VIDEO_ID_BASE, GroundTruth

    store = OfflineStore(features.manifest().store)
    path = store.root / "ground_truth.npz"
    if not path.exists():
        return None
    truth = GroundTruth.load(path)
    days = [pd.Timestamp(d).normalize() for d in store.days()]
    users = queries.frame["raw_user_id"].to_numpy() - USER_ID_BASE
    query_days = pd.to_datetime(queries.frame["event_time"], utc=True).dt.tz_localize(None).dt.normalize()
    day_index = np.array([days.index(d) if d in days else len(days) - 1 for d in query_days])
    videos = catalog_ids - VIDEO_ID_BASE
    category, creator, quality = (
        truth.video_category[videos],
        truth.video_creator[videos],
        truth.video_quality[videos],
    )

    def score(rows: np.ndarray) -> np.ndarray:
        w = (day_index[rows] / max(len(days) - 1, 1))[:, None]
        taste = (1 - w) * truth.taste_start[users[rows]] + w * truth.taste_end[users[rows]]
        favourite = (truth.favourite_creators[users[rows]][:, :, None] == creator[None, None, :]).any(axis=1)
        return 2.0 * np.sqrt(taste[:, category] * len(CATEGORIES)) - 2.0 + 1.2 * favourite + 0.5 * quality

    return score


def evaluate_retrieval(
    features: FeatureArtifacts,
    trained: TrainedModels,
    config: EvaluationConfig,
    progress: Progress | None = None,
) -> dict:
    """Recall, NDCG and beyond-accuracy metrics of the two-tower and the baselines on the test window."""
    say = progress or (lambda _m: None)
    train = features.read_split("train")
    valid = features.read_split("valid")
    test = features.read_split("test")
    catalog = pd.read_parquet(features.videos_path)
    ids = catalog["raw_video_id"].to_numpy()
    n_items = len(ids)
    category = catalog["category"].to_numpy()
    popularity = catalog_popularity(train, ids)
    train_matrix = _train_matrix(train, ids)

    say("tuning ALS on the validation window")
    valid_queries = build_queries(train, valid, ids)
    als_choice = tune_als(train_matrix, valid_queries, n_items, config)

    say("scoring the test window")
    queries = build_queries(pd.concat([train, valid], ignore_index=True), test, ids)
    if not len(queries.frame):
        raise InvalidInput("no test users with new viewed videos: the test window is too small")
    als = baselines.ALS(
        als_choice["factors"], als_choice["regularization"], config.als_iterations, config.seed
    )
    als.fit(train_matrix)
    scorers = {
        "two_tower": baselines.embedding_scorer(
            trained.two_tower.query_embeddings(queries.frame), trained.item_embeddings
        ),
        "als": _als_scorer(als, queries, n_items),
        "popularity": baselines.popularity_scorer(popularity),
        "random": baselines.random_scorer(n_items, config.seed),
    }
    oracle = oracle_scorer(features, queries, ids)
    if oracle is not None:
        scorers["oracle"] = oracle
    k_max = min(max(config.ks), n_items)
    ks = [k for k in config.ks if k <= n_items]
    results, per_user = {}, {}
    for name, scorer in scorers.items():
        top = baselines.top_k(scorer, len(queries.frame), queries.seen, k_max)
        per_user[name] = metrics.per_user_retrieval_metrics(top, queries.relevant, ks)
        results[name] = {
            **{metric: float(values.mean()) for metric, values in per_user[name].items()},
            **_beyond_accuracy(top, category, popularity),
        }
    results["als"]["tuned_on_valid"] = als_choice
    say("bootstrap intervals over test users")
    named = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    pairs = [("two_tower", "als"), ("two_tower", "popularity")]
    if oracle is not None:
        pairs += [(model, "oracle") for model in ("two_tower", "als", "popularity")]
    intervals = bootstrap.retrieval_intervals(per_user, named, pairs, seed=config.seed)
    for name, bounds in intervals["models"].items():
        results[name]["ci95"] = bounds
    results["_ratios"] = intervals["ratios"]
    results["_protocol"] = {
        "test_users": len(queries.frame),
        "test_events": int(sum(len(r) for r in queries.relevant)),
        "relevant_per_user": float(np.mean([len(r) for r in queries.relevant])),
        "catalog": n_items,
        "valid_users": len(valid_queries.frame),
        "bootstrap_resamples": bootstrap.RESAMPLES,
    }
    return results


def ranking_metrics(ranker: Ranker, frame: pd.DataFrame) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """AUC and log loss per binary task and RMSE of watch fraction of ``ranker`` on every impression of
    ``frame`` (served path: no position bias), and its predictions per binary task."""
    predictions = ranker.predict(frame)
    row: dict[str, float] = {}
    for task in BINARY_TASKS:
        m = metrics.binary_metrics(frame[task].to_numpy(), predictions[task])
        row[f"auc_{task}"], row[f"logloss_{task}"] = m["auc"], m["logloss"]
    row["rmse_watch_fraction"] = metrics.rmse(
        frame["watch_fraction"].to_numpy(), predictions["watch_fraction"]
    )
    return row, {task: predictions[task] for task in BINARY_TASKS}


def gate_diagnostics(ranker: Ranker, frame: pd.DataFrame, sample: int = 5000, seed: int = 0) -> dict:
    """Expert utilisation of an MMoE or PLE ranker on up to ``sample`` rows of ``frame`` (a validation
    window), per gate (``gate_<task>`` for MMoE, ``gate_<level>_<task|shared>`` for PLE): the experts it
    mixes, their mean gate weight, the mean per-row entropy of the gate (nats; ``max_entropy`` = log of
    the number of experts, a uniform gate), and the entropy of the mean weights (low: the same few experts
    for every row, a collapsed gate). A per-row entropy near the maximum means the gate barely routes:
    the experts are averaged alike for every row. Empty for shared-bottom."""
    rows = frame.sample(min(sample, len(frame)), random_state=seed) if len(frame) else frame
    experts = ranker.gate_experts()
    out = {}
    for gate, weights in ranker.gate_weights(rows).items():
        weights = weights.astype(np.float64)
        mean = weights.mean(axis=0)
        out[gate] = {
            "experts": experts[gate],
            "mean_weight": [round(float(v), 4) for v in mean],
            "mean_entropy": float(scipy.stats.entropy(weights, axis=1).mean()),
            "entropy_of_mean": float(scipy.stats.entropy(mean)),
            "max_entropy": float(np.log(weights.shape[1])),
            "rows": len(rows),
        }
    return out


def compare_rankers(
    features: FeatureArtifacts,
    base: RankerConfig,
    candidates: dict[str, dict],
    progress: Progress | None = None,
) -> dict:
    """Train one ranker per candidate (``RankerConfig`` overrides of ``base``, e.g. ``{"architecture":
    "ple", "epochs": 6}``) on the training window and score it on the validation window only (the test
    window is never read): ``{name: {"overrides", "valid": ranking_metrics, "mean_auc" (over binary
    tasks), "train_s", "gates": gate_diagnostics}}``. Raises ``ConfigError`` on an unknown setting or a
    bad value before anything is trained."""
    say = progress or (lambda _m: None)
    unknown = {name: sorted(set(o) - set(asdict(base))) for name, o in candidates.items()}
    if any(unknown.values()):
        raise ConfigError(f"unknown ranker settings: { {n: u for n, u in unknown.items() if u} }")
    configs = {name: replace(base, **o) for name, o in candidates.items()}  # bad values fail before training
    schema = feature_schema(features)
    train, valid = features.read_split("train"), features.read_split("valid")
    if not len(valid):
        raise InvalidInput("the validation window is empty: nothing to compare rankers on")
    out = {}
    for name, config in configs.items():
        say(f"ranker candidate {name}: {candidates[name]}")
        ranker = Ranker(schema, config)
        report = ranker.fit(train)
        row, _ = ranking_metrics(ranker, valid)
        out[name] = {
            "overrides": candidates[name],
            "valid": row,
            "mean_auc": float(np.mean([row[f"auc_{t}"] for t in BINARY_TASKS])),
            "train_s": round(report.seconds, 1),
            "gates": gate_diagnostics(ranker, valid),
        }
    return out


def evaluate_ranking(
    features: FeatureArtifacts,
    trained: TrainedModels,
    ranker_config: RankerConfig,
    progress: Progress | None = None,
) -> dict:
    """AUC / logloss per binary task and RMSE of watch fraction on every test impression, for the trained
    ranker (``ranker_config.architecture``) and the other architectures trained here with the same
    features, config and budget; bootstrap intervals per model and of each model's AUC minus
    shared-bottom's (``_differences["<model>-shared_bottom"]``); each gated model's expert utilisation on
    the validation window (``_gates``)."""
    say = progress or (lambda _m: None)
    test = features.read_split("test")
    train = features.read_split("train")
    valid = features.read_split("valid")
    served = trained.ranker.model.architecture
    rankers = {served: trained.ranker}
    speed = {served: trained.manifest["metrics"]["ranker"]["examples_per_s"]}
    for architecture in (a for a in RANKER_ARCHITECTURES if a != served):
        say(f"training the {architecture} ranker beside the served {served}")
        rankers[architecture] = Ranker(trained.ranker.schema, ranker_config, architecture)
        speed[architecture] = round(rankers[architecture].fit(train).examples_per_s, 1)
    out, scored = {}, {}
    for name in RANKER_ARCHITECTURES:
        out[name], scored[name] = ranking_metrics(rankers[name], test)
        out[name]["train_examples_per_s"] = speed[name]
    say("bootstrap intervals over test users")
    labels = {task: test[task].to_numpy() for task in BINARY_TASKS}
    intervals = bootstrap.ranking_intervals(test["raw_user_id"].to_numpy(), labels, scored, "shared_bottom")
    for name, bounds in intervals["models"].items():
        out[name]["ci95"] = bounds
    out["_differences"] = intervals["differences"]
    if len(valid):
        out["_gates"] = {name: gate_diagnostics(rankers[name], valid) for name in ("mmoe", "ple")}
    out["_protocol"] = {
        "test_impressions": len(test), "test_users": int(test["raw_user_id"].nunique()),
        "tasks": list(RANKER_TASKS), "bootstrap_resamples": bootstrap.RANKING_RESAMPLES,
        "served_architecture": served,
    }  # fmt: skip
    return out


def evaluate(
    features: FeatureArtifacts,
    trained: TrainedModels,
    config: EvaluationConfig,
    ranker_config: RankerConfig,
    progress: Progress | None = None,
) -> dict:
    """Retrieval against the baselines and ranking against a shared-bottom model, on the test window of
    the build ``trained`` was trained on: ``{"retrieval": ..., "ranking": ...}``."""
    return {
        "retrieval": evaluate_retrieval(features, trained, config, progress),
        "ranking": evaluate_ranking(features, trained, ranker_config, progress),
    }
