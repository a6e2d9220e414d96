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

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import scipy.special
import scipy.stats

from reels.models import baselines, metrics
from reels.models.baselines import catalog_popularity, catalog_positions
from reels.models.config import RANKER_ARCHITECTURES, RANKER_TASKS, EvaluationConfig, RankerConfig
from reels.models.evaluation import bootstrap
from reels.models.index import index_vectors, query_vectors
from reels.models.inputs import feature_schema
from reels.models.ranker import BINARY_TASKS, Ranker
from reels.models.train import TrainedModels
from reels.workflows.errors import ConfigError, InvalidInput
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.spec import HISTORY

Progress = Callable[[str], None]


@dataclass
class Queries:
    """The query users of one window, their relevant and already seen catalog positions."""

    frame: pd.DataFrame  # one row per query user: the first event in the window
    relevant: list[set[int]]  # catalog positions viewed in the window and unseen before
    seen: list[np.ndarray]  # catalog positions interacted with before the window
    prior_views: pd.DataFrame  # raw_user_id, position: views before the window (for ALS)


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


def tune_trending(
    train: pd.DataFrame, queries: Queries, catalog_ids: np.ndarray, config: EvaluationConfig, k: int = 20
) -> dict:
    """The trending window (``config.trending_days``) with the best recall@k on ``queries`` (the
    validation window): ``{"days": best, "valid_recall@20": its recall}``."""
    best = None
    for days in config.trending_days:
        scorer = baselines.popularity_scorer(baselines.recent_popularity(train, catalog_ids, days))
        top = baselines.top_k(scorer, len(queries.frame), queries.seen, k)
        recall = metrics.retrieval_metrics(top, queries.relevant, [k])[f"recall@{k}"]
        if best is None or recall > best[f"valid_recall@{k}"]:
            best = {"days": days, f"valid_recall@{k}": recall}
    return best


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


# The generator's response noise: affinity ~ N(0, 0.6) inside a logit scaled by 1.6, plus N(0, 0.8).
_RESPONSE_NOISE_SD = float(np.hypot(1.6 * 0.6, 0.8))


def _view_curve(truth, view_threshold: float) -> Callable[[np.ndarray], np.ndarray]:
    """P(watch fraction >= ``view_threshold``) of one impression as a function of the noiseless affinity,
    averaged over the feed position it is shown at (session lengths 1 + Poisson(mean - 1), so position p
    is reached with P(length > p)). Thresholds near 1 ignore replays (watch fraction above 1)."""
    mean_length = max(float(truth.mean_session_length) - 1.0, 1e-9)
    positions = np.arange(int(6 * mean_length) + 30)
    reach = np.where(positions == 0, 1.0, scipy.stats.poisson.sf(positions - 1, mean_length))
    reach /= reach.sum()
    threshold = scipy.special.logit(min(view_threshold, 1.0 - 1e-6))
    grid = np.linspace(-15.0, 15.0, 3001)
    engagement = grid[:, None] - float(truth.position_bias) * positions[None, :]
    curve = scipy.stats.norm.cdf((1.6 * engagement - 0.6 - threshold) / _RESPONSE_NOISE_SD) @ reach
    return lambda affinity: np.interp(affinity, grid, curve)


def _feed_day(truth, day: int) -> dict[str, np.ndarray]:
    """What the generator's feeds draw from on ``day``: each video's weight (popularity x freshness, 0
    before its upload), the weight per category and the number of videos out per creator."""
    from reels.workflows.synthetic import CATEGORIES

    available = truth.video_upload_day < day
    age = np.maximum(day - truth.video_upload_day, 0.0)
    weight = np.where(available, truth.video_popularity * (1.0 + 3.0 * np.exp(-age / 5.0)), 0.0)
    n_creators = int(max(truth.favourite_creators.max(), truth.video_creator.max())) + 1
    return {
        "available": available,
        "weight": weight,
        "category_weight": np.bincount(truth.video_category, weights=weight, minlength=len(CATEGORIES)),
        "creator_videos": np.bincount(truth.video_creator[available], minlength=n_creators),
    }


def synthetic_exposure_probability(truth, users: np.ndarray, day: int, videos: np.ndarray) -> np.ndarray:
    """The synthetic generator's probability that one feed slot of user index ``users[i]`` on 0-based
    ``day`` shows video index ``videos[j]``: a (len(users), len(videos)) array; over every video of the
    world, each row sums to 1. A slot is personalised (category by drifting taste x trend), trending/popular
    (category by popularity x trend) or a favourite creator's video; within a category, videos are drawn by
    popularity x freshness among those uploaded before the day. ``truth`` must hold the feed model
    (``GroundTruth.has_feed_model``)."""
    n_days = truth.category_trend.shape[1]
    day = int(np.clip(day, 0, n_days - 1))
    feed = _feed_day(truth, day)
    weight, category_weight = feed["weight"], feed["category_weight"]
    empty = category_weight <= 0  # the generator then draws from every available video
    trend = truth.category_trend[:, day]
    personal = truth.taste_on_day(users, day, n_days) * trend[None, :]
    personal /= personal.sum(axis=1, keepdims=True)
    popular = truth.category_popularity * trend
    popular /= popular.sum()
    favourites = truth.favourite_creators[users]  # (users, 3): one drawn uniformly per favourite slot
    counts = feed["creator_videos"][favourites]  # their videos out by this day
    share_p, share_f = float(truth.personalised_share), float(truth.favourite_creator_share)
    # A favourite slot keeps its trending draw when the creator has no video out yet.
    share_popular = 1.0 - share_p - share_f + share_f * (counts == 0).mean(axis=1)
    category_mass = share_p * personal + share_popular[:, None] * popular[None, :]
    spill = category_mass[:, empty].sum(axis=1)
    category = truth.video_category[videos]
    within = np.where(empty[category], 0.0, weight[videos] / np.where(empty, 1.0, category_weight)[category])
    shown = category_mass[:, category] * within[None, :] + np.outer(spill, weight[videos] / weight.sum())
    creator = truth.video_creator[videos]
    out_yet = feed["available"][videos]
    for slot in range(favourites.shape[1]):
        per_video = np.where(
            counts[:, slot] > 0, share_f / favourites.shape[1] / np.maximum(counts[:, slot], 1), 0
        )
        shown += (favourites[:, slot][:, None] == creator[None, :]) * out_yet[None, :] * per_video[:, None]
    return shown


def synthetic_view_probability(
    truth, users: np.ndarray, day: int, videos: np.ndarray, view_threshold: float = 0.5
) -> np.ndarray:
    """The synthetic generator's probability that one impression of user index ``users[i]`` on 0-based
    ``day`` is a view (watch fraction >= ``view_threshold``) of video index ``videos[j]``: the
    exposure probability (``synthetic_exposure_probability``) times the response model's chance of a view
    once shown (taste, favourite creator, quality; averaged over feed positions)."""
    from reels.workflows.synthetic import CATEGORIES

    n_days = truth.category_trend.shape[1]
    day = int(np.clip(day, 0, n_days - 1))
    taste = truth.taste_on_day(users, day, n_days)
    category, creator = truth.video_category[videos], truth.video_creator[videos]
    favourite = (truth.favourite_creators[users][:, :, None] == creator[None, None, :]).any(axis=1)
    affinity = (
        2.0 * np.sqrt(taste[:, category] * len(CATEGORIES))
        - 2.0
        + 1.2 * favourite
        + 0.5 * truth.video_quality[videos][None, :]
    )
    view = _view_curve(truth, view_threshold)(affinity)
    return synthetic_exposure_probability(truth, users, day, videos) * view


def _event_days(times: pd.Series) -> pd.Series:
    """UTC midnight of each event time (epoch seconds or timestamps), timezone-naive."""
    if pd.api.types.is_numeric_dtype(times):
        stamps = pd.to_datetime(times, unit="s", utc=True)
    else:
        stamps = pd.to_datetime(times, utc=True)
    return stamps.dt.tz_localize(None).dt.normalize()


def oracle_scorer(
    features: FeatureArtifacts, queries: Queries, catalog_ids: np.ndarray, window: pd.DataFrame | None = None
) -> baselines.Scorer | None:
    """On synthetic data, the generator's own chance that each query user views each catalog video during
    ``window`` (the events of the evaluated window; only the query's own day without it): the sum over
    the window's days from the user's query day on of the day's impressions x
    ``synthetic_view_probability`` — the formula the generator samples from, popularity and trending
    included, so no model that learns from the logs can rank better in expectation. None when the store
    has no ``ground_truth.npz``. A ground truth saved before the feed model was kept gives the older
    taste-only affinity (taste, favourite creator, quality), which ignores what users were shown."""
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.synthetic import USER_ID_BASE, VIDEO_ID_BASE, GroundTruth

    manifest = features.manifest()
    store = OfflineStore(manifest.store)
    path = store.root / "ground_truth.npz"
    if not path.exists():
        return None
    truth = GroundTruth.load(path)
    first_day = pd.Timestamp(store.days()[0]).normalize()
    users = queries.frame["raw_user_id"].to_numpy() - USER_ID_BASE
    query_day = (_event_days(queries.frame["event_time"]) - first_day).dt.days.to_numpy()
    videos = catalog_ids - VIDEO_ID_BASE
    if not truth.has_feed_model:
        return _taste_only_scorer(truth, users, query_day, videos)
    if window is not None and len(window):
        per_day = (_event_days(window["event_time"]) - first_day).dt.days.value_counts().sort_index()
    else:
        per_day = pd.Series(1, index=np.unique(query_day))
    view_threshold = manifest.feature_config.view_threshold

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), len(videos)))
        for day, impressions in per_day.items():
            active = np.flatnonzero(query_day[rows] <= day)  # the window from each user's query on
            if len(active):
                probability = synthetic_view_probability(
                    truth, users[rows[active]], int(day), videos, view_threshold
                )
                out[active] += impressions * probability
        return out

    return score


def _taste_only_scorer(
    truth, users: np.ndarray, query_day: np.ndarray, videos: np.ndarray
) -> baselines.Scorer:
    """The affinity of the response model without noise or position, on each user's query day."""
    from reels.workflows.synthetic import CATEGORIES

    n_days = truth.category_trend.shape[1]
    category, creator = truth.video_category[videos], truth.video_creator[videos]
    quality = truth.video_quality[videos]

    def score(rows: np.ndarray) -> np.ndarray:
        w = (np.clip(query_day[rows], 0, n_days - 1) / max(n_days - 1, 1))[:, None]
        taste = (1 - w) * truth.taste_start[users[rows]] + w * truth.taste_end[users[rows]]
        favourite = (truth.favourite_creators[users[rows]][:, :, None] == creator[None, None, :]).any(axis=1)
        return 2.0 * np.sqrt(taste[:, category] * len(CATEGORIES)) - 2.0 + 1.2 * favourite + 0.5 * quality

    return score


def hindsight_scorer(queries: Queries, n_items: int) -> baselines.Scorer:
    """The best feed one could show every query user alike, chosen in hindsight: each video scores the
    recall it earns among the *other* query users (the sum of ``1 / |relevant|`` over those who view it
    in the window), so a user's own views never rank their feed. It reads the window it is scored on: a
    reference, not a model. A model above it knows something about the user that no common feed of the
    window's hits shows."""
    weight = [1.0 / len(relevant) for relevant in queries.relevant]
    total = np.zeros(n_items)
    for relevant, w in zip(queries.relevant, weight, strict=True):
        total[list(relevant)] += w

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.tile(total, (len(rows), 1))
        for r, row in enumerate(rows):
            out[r, list(queries.relevant[row])] -= weight[row]
        return out

    return score


# Query users split by whether they interacted with the catalog before the window: "no history" is a new
# user, whose query holds only their own features and the request's context.
HISTORY_SEGMENTS = ("no history", "with history")


def segment_intervals(
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    has_history: np.ndarray,
    pairs: list[tuple[str, str]],
    seed: int,
    metric: str = "recall@20",
) -> dict:
    """``metric`` per model, with its bootstrap interval, and the ``pairs`` ratios on each of
    ``HISTORY_SEGMENTS`` (``has_history``: one bool per query user); a segment with no users is left out."""
    out = {}
    for name, mask in zip(HISTORY_SEGMENTS, (~has_history, has_history), strict=True):
        if not mask.any():
            continue
        sliced = {model: {metric: values[metric][mask]} for model, values in per_user.items()}
        intervals = bootstrap.retrieval_intervals(sliced, [metric], pairs, seed=seed)
        out[name] = {
            "users": int(mask.sum()),
            metric: {model: float(values[metric].mean()) for model, values in sliced.items()},
            "ci95": {model: bounds[metric] for model, bounds in intervals["models"].items()},
            "ratios": {pair: by_metric[metric] for pair, by_metric in intervals["ratios"].items()},
        }
    return out


def _two_tower_scorer(trained: TrainedModels, queries: Queries) -> baselines.Scorer:
    """The two-tower as its index ranks: query x item embeddings, plus the version's trending prior and
    category affinity."""
    affinity = trained.affinity
    items = index_vectors(trained.item_embeddings, trained.retrieval_prior, affinity)
    columns = None if affinity is None else affinity.query_columns(queries.frame[HISTORY].to_numpy())
    return baselines.embedding_scorer(
        query_vectors(items.shape[1], trained.two_tower.query_embeddings(queries.frame), columns), items
    )


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
    trending_choice = tune_trending(train, valid_queries, ids, config)

    say("scoring the test window")
    queries = build_queries(pd.concat([train, valid], ignore_index=True), test, ids)
    if not len(queries.frame):
        raise InvalidInput("no test users with new viewed videos: the test window is too small")
    als = baselines.ALS(
        als_choice["factors"], als_choice["regularization"], config.als_iterations, config.seed
    )
    als.fit(train_matrix)
    scorers = {
        "two_tower": _two_tower_scorer(trained, queries),
        "als": _als_scorer(als, queries, n_items),
        "popularity": baselines.popularity_scorer(popularity),
        "trending": baselines.popularity_scorer(
            baselines.recent_popularity(train, ids, trending_choice["days"])
        ),
        "random": baselines.random_scorer(n_items, config.seed),
    }
    oracle = oracle_scorer(features, queries, ids, test)
    if oracle is not None:
        scorers["oracle"] = oracle
    scorers["hindsight"] = hindsight_scorer(queries, n_items)
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
    results["trending"]["tuned_on_valid"] = trending_choice
    say("bootstrap intervals over test users")
    named = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    pairs = [("two_tower", "als"), ("two_tower", "popularity"), ("two_tower", "trending")]
    pairs += [("two_tower", "hindsight")]
    if oracle is not None:
        pairs += [(model, "oracle") for model in ("two_tower", "als", "popularity", "trending")]
    intervals = bootstrap.retrieval_intervals(per_user, named, pairs, seed=config.seed)
    for name, bounds in intervals["models"].items():
        results[name]["ci95"] = bounds
    results["_ratios"] = intervals["ratios"]
    has_history = np.array([len(s) > 0 for s in queries.seen], dtype=bool)
    results["_segments"] = segment_intervals(
        per_user, has_history, [("two_tower", "popularity"), ("two_tower", "hindsight")], config.seed
    )
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


def task_transfer(labels: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray]) -> dict:
    """How much the tasks share: ``{"auc": {head: {task: AUC of head's predictions on task's labels}},
    "given": {task: {other: P(other = 1 | task = 1)}}}``. A head that ranks another task's labels about
    as well as that task's own head, or labels nested in each other, mean the tasks follow one driver:
    experts kept apart per task then have nothing different to learn, and no multi-task architecture
    can beat one shared trunk by much."""
    auc = {
        head: {task: metrics.binary_metrics(y, predictions[head])["auc"] for task, y in labels.items()}
        for head in labels
    }
    positive = {task: np.asarray(y).astype(bool) for task, y in labels.items()}
    given = {
        task: {other: float(positive[other][y].mean()) if y.any() else float("nan") for other in positive}
        for task, y in positive.items()
    }
    return {"auc": auc, "given": given}


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
    configs: Mapping[str, RankerConfig] | None = None,
    fitted: Mapping[str, tuple[Ranker, float]] | None = None,
) -> dict:
    """AUC / logloss per binary task and RMSE of watch fraction on every test impression, for the trained
    ranker (its architecture is the served one) and the other architectures beside it: ``fitted[a]`` =
    (ranker, its training examples per second) where given (already trained on the training window, e.g.
    by the validation search), else trained here with
    ``configs[a]`` (default: ``ranker_config``); bootstrap intervals per model and of each model's AUC
    minus shared-bottom's (``_differences["<model>-shared_bottom"]``); each gated model's expert
    utilisation on the validation window (``_gates``)."""
    from reels.models.evaluation.search import settings

    say = progress or (lambda _m: None)
    configs, fitted = dict(configs or {}), dict(fitted or {})
    test = features.read_split("test")
    train = features.read_split("train")
    valid = features.read_split("valid")
    served = trained.ranker.model.architecture
    rankers = {served: trained.ranker}
    speed = {served: trained.manifest["metrics"]["ranker"]["examples_per_s"]}
    for architecture in (a for a in RANKER_ARCHITECTURES if a != served):
        if architecture in fitted:
            rankers[architecture], speed[architecture] = fitted[architecture]
            continue
        say(f"training the {architecture} ranker beside the served {served}")
        config = replace(configs.get(architecture, ranker_config), architecture=architecture)
        rankers[architecture] = Ranker(trained.ranker.schema, config)
        speed[architecture] = round(rankers[architecture].fit(train).examples_per_s, 1)
    out, scored = {}, {}
    for name in RANKER_ARCHITECTURES:
        out[name], scored[name] = ranking_metrics(rankers[name], test)
        out[name]["train_examples_per_s"] = speed[name]
        out[name]["settings"] = settings(rankers[name].config, name)
    say("bootstrap intervals over test users")
    labels = {task: test[task].to_numpy() for task in BINARY_TASKS}
    intervals = bootstrap.ranking_intervals(test["raw_user_id"].to_numpy(), labels, scored, "shared_bottom")
    for name, bounds in intervals["models"].items():
        out[name]["ci95"] = bounds
    out["_differences"] = intervals["differences"]
    out["_task_transfer"] = task_transfer(labels, scored[served])
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
    ranker_configs: Mapping[str, RankerConfig] | None = None,
    fitted_rankers: Mapping[str, tuple[Ranker, float]] | None = None,
) -> dict:
    """Retrieval against the baselines and ranking against a shared-bottom model, on the test window of
    the build ``trained`` was trained on: ``{"retrieval": ..., "ranking": ...}`` (``ranker_configs`` and
    ``fitted_rankers``: the other architectures' settings or models, see ``evaluate_ranking``)."""
    return {
        "retrieval": evaluate_retrieval(features, trained, config, progress),
        "ranking": evaluate_ranking(
            features, trained, ranker_config, progress, ranker_configs, fitted_rankers
        ),
    }
