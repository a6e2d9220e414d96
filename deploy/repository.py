"""``reels export``: fill a build model repository from the source ``model_repository/`` (config.pbtxt +
thin model.py, in git) and trained artifact versions (never committed).

A *release* is one trained artifact version (``data/<source>/models/<N>``) served as Triton model version
``N`` of every python step, described by ``serving-N.json`` at the repository root (artifacts, feature
workflow, Redis namespace) next to its cold-start feed ``trending-N.npy``. The ``reels`` ensemble pins
every step to one release, so a request never mixes two releases' vocabularies; the steps keep two
versions loaded (``version_policy latest 2``), which is what lets a promotion load the next release
beside the serving one and then re-point the ensemble (see ``reels.deploy.promotion``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from reels.models.experiment import Experiment
from reels.models.serving import ServingConfig
from reels.models.train import check_manifest
from reels.models.triton_steps import export_trending, release_spec, release_trending

SOURCE = Path(__file__).resolve().parents[1] / "model_repository"
STEPS = ("feature_transform", "retrieval", "ranking", "diversity_rerank")
ENSEMBLE = "reels"
MODELS = (*STEPS, ENSEMBLE)
SERVING_POINTER = "serving"  # data/<source>/models/serving: the promoted version (absent: the latest)


def export_repository(
    model_dir: Path,
    target: Path,
    redis: dict,
    config: ServingConfig | None = None,
    source: Path = SOURCE,
    instances: int = 1,
    namespace: str | None = None,
    experiment: Experiment | None = None,
) -> Path:
    """A fresh repository serving ``model_dir`` as its only release.

    ``instances``: execution instances per python model (``instance_group { count }``), the knob the
    serving benchmark tunes; the source configs say 1. ``namespace``: the Redis namespace the release
    reads (None: whichever is active). ``experiment``: the A/B test the re-rank step runs (None: one
    variant, "default")."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in MODELS:
        (target / name).mkdir()
        config_text = (source / name / "config.pbtxt").read_text()
        if instances != 1:
            config_text = config_text.replace("count: 1 kind: KIND_CPU", f"count: {instances} kind: KIND_CPU")
        (target / name / "config.pbtxt").write_text(config_text)
    version = add_release(target, model_dir, redis, config, namespace, experiment, source)
    pin_ensemble(target, version)
    return target


def add_release(
    repository: Path,
    model_dir: Path,
    redis: dict,
    config: ServingConfig | None = None,
    namespace: str | None = None,
    experiment: Experiment | None = None,
    source: Path = SOURCE,
) -> int:
    """Write release ``N`` (= the artifact version) into ``repository``: a version folder per step and the
    release spec. Nothing is loaded; returns ``N``."""
    manifest = check_manifest(model_dir)
    config = config or ServingConfig()
    version = int(manifest["version"])
    features_dir = Path(manifest["features"]["path"])
    history_length = json.loads((features_dir / "manifest.json").read_text())["feature_config"][
        "history_length"
    ]
    spec = {
        "model_dir": str(Path(model_dir).resolve()),
        "features_dir": str(features_dir),
        "history_length": history_length,
        "redis": redis,
        "namespace": namespace,
        "serving": asdict(config),
        "model_version": version,
        "experiment": experiment.as_dict() if experiment else None,
    }
    # Spec and feed first: a step version must never exist without the files its initialize() reads.
    release_spec(repository, version).write_text(json.dumps(spec, indent=2))
    export_trending(release_trending(repository, version), features_dir, config)
    for name in STEPS:
        folder = repository / name / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name / "1" / "model.py", folder / "model.py")
    return version


def pin_ensemble(repository: Path, version: int) -> None:
    """Point every step of the ensemble at one release (an ensemble folder must hold the version too)."""
    (repository / ENSEMBLE / str(version)).mkdir(parents=True, exist_ok=True)
    path = repository / ENSEMBLE / "config.pbtxt"
    path.write_text(re.sub(r"model_version: -?\d+", f"model_version: {version}", path.read_text()))


def pinned_version(repository: Path) -> int:
    versions = set(
        re.findall(r"model_version: (-?\d+)", (repository / ENSEMBLE / "config.pbtxt").read_text())
    )
    if len(versions) != 1:
        raise ValueError(f"the ensemble in {repository} pins several versions: {sorted(versions)}")
    return int(versions.pop())


def releases(repository: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in repository.glob("serving-*.json"))


def remove_release(repository: Path, version: int) -> None:
    """Delete an unloaded release's files (the step versions and its spec)."""
    for name in MODELS:
        shutil.rmtree(repository / name / str(version), ignore_errors=True)
    release_spec(repository, version).unlink(missing_ok=True)
    release_trending(repository, version).unlink(missing_ok=True)


def latest_model_dir(models_root: Path) -> Path:
    versions = sorted((p for p in models_root.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise FileNotFoundError(f"no trained models under {models_root}: run `reels train` first")
    return versions[-1]


def serving_model_dir(models_root: Path) -> Path:
    """The promoted version (``reels retrain`` writes the pointer), else the latest trained one."""
    pointer = models_root / SERVING_POINTER
    if pointer.exists():
        directory = models_root / pointer.read_text().strip()
        if not (directory / "manifest.json").exists():
            raise FileNotFoundError(f"{pointer} points at {directory}, which holds no trained models")
        return directory
    return latest_model_dir(models_root)


def mark_serving(models_root: Path, version: int) -> None:
    tmp = models_root / f".{SERVING_POINTER}.tmp"
    tmp.write_text(f"{version}\n")
    tmp.replace(models_root / SERVING_POINTER)  # atomic on POSIX
