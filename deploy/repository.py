"""``reels export``: fill a build model repository from the source ``model_repository/`` (config.pbtxt +
thin model.py, in git) and a trained artifact version (never committed), plus ``serving.json`` telling the
python models where the artifacts and Redis are."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from reels.models.experiment import Experiment
from reels.models.serving import ServingConfig
from reels.models.train import check_manifest
from reels.models.triton_steps import SERVING_FILE, export_trending

SOURCE = Path(__file__).resolve().parents[1] / "model_repository"
MODELS = ("feature_transform", "retrieval", "ranking", "diversity_rerank", "reels")


def export_repository(
    model_dir: Path,
    target: Path,
    redis: dict,
    config: ServingConfig | None = None,
    source: Path = SOURCE,
    instances: int = 1,
    experiment: Experiment | None = None,
) -> Path:
    """``instances``: execution instances per python model (``instance_group { count }``), the knob the
    serving benchmark tunes; the source configs say 1. ``experiment``: the A/B test the re-rank step runs
    (None: one variant, "default")."""
    manifest = check_manifest(model_dir)
    config = config or ServingConfig()
    features_dir = Path(manifest["features"]["path"])
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in MODELS:
        shutil.copytree(
            source / name, target / name, ignore=shutil.ignore_patterns("__pycache__", ".gitkeep")
        )
        (target / name / "1").mkdir(exist_ok=True)
        config_path = target / name / "config.pbtxt"
        if instances != 1:
            config_path.write_text(
                config_path.read_text().replace(
                    "count: 1 kind: KIND_CPU", f"count: {instances} kind: KIND_CPU"
                )
            )
    history_length = json.loads((features_dir / "manifest.json").read_text())["feature_config"][
        "history_length"
    ]
    spec = {
        "model_dir": str(Path(model_dir).resolve()),
        "features_dir": str(features_dir),
        "history_length": history_length,
        "redis": redis,
        "serving": asdict(config),
        "model_version": manifest["version"],
        "experiment": experiment.as_dict() if experiment else None,
    }
    (target / SERVING_FILE).write_text(json.dumps(spec, indent=2))
    export_trending(target, features_dir, config)
    return target


def latest_model_dir(models_root: Path) -> Path:
    versions = sorted((p for p in models_root.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise FileNotFoundError(f"no trained models under {models_root}: run `reels train` first")
    return versions[-1]
