"""``reels train``: features -> trained two-tower + MMoE -> a versioned artifact directory.

Layout (integer versions, as Triton's model repository expects)::

    <root>/<version>/
        query_tower/            SavedModel, serving_default over QUERY_FEATURES -> query embedding
        item_embeddings.parquet raw_video_id, video_id, embedding (float32 x output_dim), whole catalog
        items.faiss             FAISS inner-product index keyed by raw_video_id
        ranker/                 SavedModel, serving_default over RANKER_FEATURES -> tasks + score
        manifest.json           schema, configs, metrics, data fingerprints, library versions, workflow ref
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reels.models.baselines import recent_popularity
from reels.models.config import IndexConfig, RankerConfig, TwoTowerConfig
from reels.models.index import (
    CategoryAffinity,
    build_and_measure,
    index_vectors,
    query_vectors,
    save_index,
    trending_prior,
)
from reels.models.inputs import feature_schema
from reels.models.ranker import Ranker
from reels.models.registry import VersionClaim, claim_version, workflow_hash, write_manifest
from reels.models.two_tower import TwoTower
from reels.workflows.errors import InvalidInput
from reels.workflows.manifest import FeatureArtifacts, library_versions
from reels.workflows.spec import HISTORY

Progress = Callable[[str], None]
LIBRARIES_EXTRA = ("merlin-models", "tensorflow-cpu", "faiss-cpu", "implicit", "scikit-learn")


@dataclass
class TrainedModels:
    """The in-memory result of ``train``: both models, the catalog's raw ids and (n_items, output_dim)
    float32 embeddings in the same order, the new version directory and its manifest."""

    two_tower: TwoTower
    ranker: Ranker
    item_ids: np.ndarray  # raw video ids, catalog order
    item_embeddings: np.ndarray
    directory: Path
    manifest: dict
    # each item's trending prior, the index's extra column (None: two_tower.trending_prior is 0)
    retrieval_prior: np.ndarray | None = None
    # the category-affinity prior, the index's last columns (None: two_tower.category_prior is 0)
    affinity: CategoryAffinity | None = None


def item_view_counts(train: pd.DataFrame, cardinality: int) -> np.ndarray:
    """Viewed events per encoded ``video_id`` (index = Categorify id), length at least ``cardinality``."""
    return np.bincount(train.loc[train["view"] == 1, "video_id"].to_numpy(), minlength=cardinality)


def schema_summary(schema) -> list[dict]:
    """Per Merlin schema column: name, dtype, sorted tags, plus list length and cardinality where known."""
    out = []
    for col in schema:
        entry = {"name": col.name, "dtype": str(col.dtype.name), "tags": sorted(t.value for t in col.tags)}
        if col.is_list:
            entry["length"] = col.value_count.max
        if col.properties.get("embedding_sizes"):
            entry["cardinality"] = col.properties["embedding_sizes"]["cardinality"]
        out.append(entry)
    return out


def train(
    features: FeatureArtifacts,
    root: str | Path,
    two_tower_config: TwoTowerConfig | None = None,
    ranker_config: RankerConfig | None = None,
    index_config: IndexConfig | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    manifest_extra: dict | None = None,
) -> TrainedModels:
    """Train the two-tower and the MMoE ranker on a feature build and write the next version under ``root``
    (layout in the module docstring): the number is claimed first (``registry.claim_version``), the
    artifacts staged in ``.<N>.partial`` and renamed into place when complete. ``manifest_extra``: keys
    added to the manifest before it is published (`reels retrain` marks its candidate as not gated yet)."""
    say = progress or (lambda _m: None)
    two_tower_config = two_tower_config or TwoTowerConfig()
    ranker_config = ranker_config or RankerConfig()
    index_config = index_config or IndexConfig()
    with claim_version(Path(root)) as claim:  # two trains at once never take the same number
        return _train_into(
            claim, features, two_tower_config, ranker_config, index_config, device, say, manifest_extra
        )


def _train_into(
    claim: VersionClaim,
    features: FeatureArtifacts,
    two_tower_config: TwoTowerConfig,
    ranker_config: RankerConfig,
    index_config: IndexConfig,
    device: str,
    say: Progress,
    manifest_extra: dict | None,
) -> TrainedModels:
    version, staging = claim.version, claim.staging
    schema = feature_schema(features)
    train_rows = features.read_split("train")
    positives = train_rows[train_rows["view"] == 1]
    if positives.empty:
        raise InvalidInput("the training window has no viewed events: nothing to train the two-tower on")
    counts = item_view_counts(train_rows, schema["video_id"].int_domain.max + 1)

    say(f"two-tower: {len(positives):,} positive pairs x {two_tower_config.epochs} epochs")
    two_tower = TwoTower(schema, two_tower_config, counts)
    tt_report = two_tower.fit(positives)
    two_tower.save_query_tower(staging / "query_tower")
    catalog = pd.read_parquet(features.videos_path)
    embeddings = two_tower.item_embeddings(catalog)
    item_ids = catalog["raw_video_id"].to_numpy()
    prior = None  # recent views are counted only for a prior that is on
    if two_tower_config.trending_prior > 0:
        prior = trending_prior(
            recent_popularity(train_rows, item_ids, two_tower_config.trending_prior_days),
            two_tower_config.trending_prior,
        )
    stored = {
        "raw_video_id": item_ids,
        "video_id": catalog["video_id"].to_numpy(),
        "embedding": list(embeddings),
    }
    if prior is not None:  # the index's extra column, for whoever scores with the embeddings (the gate)
        stored["trending_prior"] = prior
    affinity = CategoryAffinity.of(
        catalog["video_id"].to_numpy(), catalog["category"], two_tower_config.category_prior
    )
    if affinity is not None:  # serving and the gate rebuild the query side from these rows
        stored["category_row"] = affinity.item_rows
    pd.DataFrame(stored).to_parquet(staging / "item_embeddings.parquet", index=False)

    say("FAISS index")
    vectors = index_vectors(embeddings, prior, affinity)
    valid = features.read_split("valid")
    sample = (valid if len(valid) else train_rows).sample(
        min(index_config.recall_queries, max(len(valid), 1)), random_state=0
    )
    columns = None if affinity is None else affinity.query_columns(sample[HISTORY].to_numpy())
    queries = query_vectors(vectors.shape[1], two_tower.query_embeddings(sample), columns)
    index, index_report = build_and_measure(vectors, item_ids, queries, index_config, device=device)
    save_index(index, staging / "items.faiss")
    say(f"index {index_report.kind}: recall@{index_report.k} vs exact = {index_report.recall_at_k:.3f}")

    architecture, epochs = ranker_config.architecture, ranker_config.epochs
    say(f"{architecture} ranker: {len(train_rows):,} impressions x {epochs} epochs")
    ranker = Ranker(schema, ranker_config)
    rk_report = ranker.fit(train_rows)
    ranker.export(staging / "ranker")

    data_manifest = features.manifest()
    manifest = {
        "version": version,
        "created": pd.Timestamp.utcnow().isoformat(),
        "device": device,
        "features": {
            "path": str(features.root.resolve()),
            "workflow": str(features.workflow_dir.resolve()),
            "workflow_hash": workflow_hash(features),
            "store_fingerprint": data_manifest.store_fingerprint,
            "split": data_manifest.split,
            "rows": data_manifest.rows,
        },
        "schema": schema_summary(schema),
        "config": {
            "two_tower": asdict(two_tower_config),
            "ranker": asdict(ranker_config),
            "index": asdict(index_config),
        },
        "metrics": {
            "two_tower": {
                "examples": tt_report.examples, "epochs": tt_report.epochs,
                "seconds": round(tt_report.seconds, 2), "examples_per_s": round(tt_report.examples_per_s, 1),
                "final_loss": tt_report.final_loss,
            },
            "ranker": {
                "examples": rk_report.examples, "epochs": rk_report.epochs,
                "seconds": round(rk_report.seconds, 2), "examples_per_s": round(rk_report.examples_per_s, 1),
                "final_loss": rk_report.final_loss,
            },
            "index": asdict(index_report),
        },
        "libraries": library_versions(LIBRARIES_EXTRA),
        **(manifest_extra or {}),
    }  # fmt: skip
    write_manifest(staging, manifest)
    final = claim.publish()
    say(f"artifacts in {final}")
    return TrainedModels(two_tower, ranker, item_ids, embeddings, final, manifest, prior, affinity)
