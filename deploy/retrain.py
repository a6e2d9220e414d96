"""``reels retrain``: the offline store (new events included) -> features -> both models -> the promotion
gate on the latest window -> promotion (hot swap into a running Triton + Redis when one answers).

The feature build runs on a Dask cluster (``deploy.dask_cluster``); training runs in this process
(Keras on CPU, or the GPU). Every retrain writes its own feature build under
``data/<source>/retrain/features-<stamp>`` and a new model version; ``data/<source>/models/serving``
names the promoted one, which ``reels serve`` / ``reels export`` serve.

On a cluster of other machines, the workers read the offline store and write the feature build: pass
``store_url`` (any fsspec URL, e.g. ``file:///shared/reels/synthetic/store`` or ``s3://bucket/store``) and
``work_url`` (a local path or ``file://`` URL on a filesystem every worker mounts at the same path).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reels.deploy.config import Config
from reels.deploy.dask_cluster import ClusterInfo, dask_cluster
from reels.models.config import RetrainConfig
from reels.models.evaluation.gate import GateConfig, GateDecision, decide, score_version
from reels.models.registry import GATE_PENDING, serving_model_dir, trained_features, write_manifest
from reels.models.train import train
from reels.workflows.device import resolve_device
from reels.workflows.errors import NotFound
from reels.workflows.offline_store import OfflineStore
from reels.workflows.pipeline import build_features, local_folder


@dataclass
class RetrainResult:
    """One retrain: the cluster it ran on, the candidate and serving versions and the gate's decision."""

    cluster: ClusterInfo
    candidate_dir: Path
    serving_dir: Path | None
    decision: GateDecision
    promoted: bool
    timings: dict[str, float] = field(default_factory=dict)


def retrain(
    config: Config,
    source: str,
    scheduler: str | None = None,
    progress: Callable[[str], None] | None = None,
    store_url: str | None = None,
    work_url: str | None = None,
) -> RetrainResult:
    """Build features on Dask from the whole offline store, train a candidate version and gate it against
    the serving version on the latest window (the decision is in the result and the candidate's manifest,
    where a rejected candidate is never served: ``registry.check_servable``; promoting one that passed is
    ``reels.deploy.promotion``).

    ``store_url``: the offline store's path or URL (default ``<data.root>/<source>/store``); ``work_url``:
    where the feature builds go (default ``<data.root>/<source>/retrain``); see the module doc for a cluster."""
    say = progress or (lambda _m: None)
    rc: RetrainConfig = config.retrain
    source_dir = config.source_dir(source)
    models_root = source_dir / "models"
    store = OfflineStore(store_url or source_dir / "store")
    if not store.has("events"):
        raise NotFound(f"no events in {store.root}: run `reels data {source}` first")
    try:
        serving_dir: Path | None = serving_model_dir(models_root)
        serving_features = trained_features(serving_dir)
    except NotFound:
        serving_dir = serving_features = None
    valid_days, test_days = config.split_days(source)
    device = resolve_device(config.device)  # auto: the GPU path (LocalCUDACluster, cudf) where one exists
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work_dir = local_folder(work_url or source_dir / "retrain")
    timings: dict[str, float] = {}
    with dask_cluster(
        scheduler or rc.scheduler or None, device, rc.n_workers or None, rc.dashboard_address
    ) as cluster:
        say(
            f"Dask {cluster.kind} at {cluster.scheduler} with {cluster.workers} workers; dashboard {cluster.dashboard}"
        )
        t0 = time.perf_counter()
        features = build_features(
            store, work_dir / f"features-{stamp}", config.features, valid_days=valid_days, test_days=test_days,
            device=device, progress=say, client=cluster.client, event_fractions=config.event_fractions(source),
        )  # fmt: skip
        timings["features_s"] = time.perf_counter() - t0
        serving_window = None
        if serving_dir is not None:
            t0 = time.perf_counter()
            say(f"encoding the same windows with the workflow of serving version {serving_dir.name}")
            # The candidate's windows, encoded with the serving version's own fitted workflow.
            serving_window = build_features(
                store, work_dir / f"gate-{stamp}", serving_features.manifest().feature_config,
                valid_days=valid_days, test_days=test_days, device=device, progress=say, fitted=serving_features,
                client=cluster.client, event_fractions=config.event_fractions(source),
            )  # fmt: skip
            timings["gate_features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # Published as "not gated yet": until the decision below is written, no fallback serves it.
    trained = train(
        features, models_root, config.two_tower, config.ranker, config.index, device=device, progress=say,
        manifest_extra={"gate": GATE_PENDING},
    )  # fmt: skip
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gate = GateConfig(rc.gate_metrics, rc.gate_tolerance)
    catalog = pd.read_parquet(features.videos_path, columns=["raw_video_id"])["raw_video_id"].to_numpy()
    say(f"gate: scoring candidate version {trained.directory.name} on the latest window")
    candidate_scores = score_version(trained.directory, features, catalog, gate.ks)
    serving_scores = None
    if serving_dir is not None:
        say(f"gate: scoring serving version {serving_dir.name} on the same window")
        serving_scores = score_version(serving_dir, serving_window, catalog, gate.ks)
        shutil.rmtree(serving_window.root, ignore_errors=True)
    decision = decide(candidate_scores, serving_scores, gate)
    timings["gate_s"] = time.perf_counter() - t0

    manifest = json.loads((trained.directory / "manifest.json").read_text())
    manifest["gate"] = {
        "config": asdict(gate),
        "serving_version": None if serving_dir is None else int(serving_dir.name),
        "window": features.manifest().split,
        "candidate": candidate_scores,
        "serving": serving_scores,
        "checks": decision.checks,
        "passed": decision.passed,
    }
    write_manifest(trained.directory, manifest, default=_json_default)  # atomic: the verdict or nothing
    return RetrainResult(cluster, trained.directory, serving_dir, decision, decision.passed, timings)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
