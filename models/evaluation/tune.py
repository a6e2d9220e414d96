"""Light tuning of the two-tower on the validation window only (the test window is never looked at).

Each candidate is a set of TwoTowerConfig overrides; each is trained on the training window and scored by
Recall@20 on validation queries (same protocol as ``models/evaluation/offline.py``), next to popularity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pandas as pd

from reels.models import baselines, metrics
from reels.models.config import TwoTowerConfig
from reels.models.evaluation.offline import build_queries, catalog_popularity
from reels.models.inputs import feature_schema
from reels.models.train import item_view_counts
from reels.models.two_tower import TwoTower
from reels.workflows.manifest import FeatureArtifacts

DEFAULT_GRID = (
    {"epochs": 5, "temperature": 0.1, "learning_rate": 0.001},
    {"epochs": 5, "temperature": 0.1, "learning_rate": 0.001, "logq_correction": False},
    {"epochs": 5, "temperature": 0.3, "learning_rate": 0.001},
    {"epochs": 5, "temperature": 0.5, "learning_rate": 0.001},
    {"epochs": 10, "temperature": 0.5, "learning_rate": 0.001},
    {"epochs": 10, "temperature": 0.5, "learning_rate": 0.003},
    {"epochs": 20, "temperature": 0.5, "learning_rate": 0.001},
)


def tune_two_tower(
    features: FeatureArtifacts,
    base: TwoTowerConfig,
    grid: tuple[dict, ...] = DEFAULT_GRID,
    k: int = 20,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train one two-tower per ``grid`` entry (overrides of ``base``) and score each by validation
    recall@``k``; returns ``valid_users``, one row per candidate (popularity first) and the ``best`` overrides."""
    say = progress or (lambda _m: None)
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
    for overrides in grid:
        config = replace(base, **overrides)
        say(f"two-tower {overrides}")
        model = TwoTower(schema, config, counts)
        report = model.fit(positives)
        scorer = baselines.embedding_scorer(
            model.query_embeddings(queries.frame), model.item_embeddings(catalog)
        )
        top = baselines.top_k(scorer, len(queries.frame), queries.seen, k)
        recall = metrics.retrieval_metrics(top, queries.relevant, [k])[f"recall@{k}"]
        rows.append(
            {"candidate": overrides, f"valid_recall@{k}": recall, "train_s": round(report.seconds, 1)}
        )
    best = max(rows[1:], key=lambda r: r[f"valid_recall@{k}"])
    return {"valid_users": len(queries.frame), "rows": rows, "best": best["candidate"]}


def markdown(result: dict, header: str) -> str:
    """A markdown section under ``header``: the best candidate and a table of validation recall per candidate."""
    key = next(k for k in result["rows"][0] if k.startswith("valid_recall"))
    lines = [header, "", f"{result['valid_users']} validation users; best: `{result['best']}`.", ""]
    lines += [f"| candidate | {key} | train s |", "|---|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| `{row['candidate']}` | {row[key]:.4f} | {row.get('train_s', '')} |")
    return "\n".join(lines) + "\n"
