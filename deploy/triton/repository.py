"""``reels export``: fill a build model repository from the source ``model_repository/`` (config.pbtxt +
thin model.py, in git) and trained artifact versions (never committed).

A *release* is one trained artifact version (``data/<source>/models/<N>``) served by models of its own,
``<step>_v<N>`` for every python step, described by ``serving-N.json`` at the repository root (artifacts,
feature workflow, Redis namespace) next to its cold-start feed ``trending-N.npy``. Version ``N`` of the
``reels`` ensemble names those models, so a request never mixes two releases' vocabularies, and a
promotion loads the next release's models without touching the serving ones (see
``reels.deploy.promotion``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from reels.deploy.triton.steps import export_trending, release_spec, release_trending
from reels.models.serving.experiment import Experiment
from reels.models.serving.pipeline import ServingConfig
from reels.models.train import check_manifest

SOURCE = Path(__file__).resolve().parents[2] / "model_repository"
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
    (target / ENSEMBLE).mkdir(parents=True)
    shutil.copy2(source / ENSEMBLE / "config.pbtxt", target / ENSEMBLE / "config.pbtxt")
    version = add_release(target, model_dir, redis, config, namespace, experiment, source, instances)
    pin_ensemble(target, version)
    return target


def step_model(step: str, version: int) -> str:
    """The Triton model serving ``step`` for release ``version``."""
    return f"{step}_v{version}"


def release_of(model_name: str) -> int:
    return int(model_name.rsplit("_v", 1)[1])


def add_release(
    repository: Path,
    model_dir: Path,
    redis: dict,
    config: ServingConfig | None = None,
    namespace: str | None = None,
    experiment: Experiment | None = None,
    source: Path = SOURCE,
    instances: int = 1,
) -> int:
    """Write release ``N`` (= the artifact version) into ``repository``: a model per step and the release
    spec. Nothing is loaded; returns ``N``."""
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
        folder = repository / step_model(name, version)
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name / "1" / "model.py", folder / "1" / "model.py")
        config_text = (source / name / "config.pbtxt").read_text()
        config_text = config_text.replace(f'name: "{name}"', f'name: "{step_model(name, version)}"', 1)
        if instances != 1:
            config_text = config_text.replace("count: 1 kind: KIND_CPU", f"count: {instances} kind: KIND_CPU")
        (folder / "config.pbtxt").write_text(config_text)
    return version


_STEP_REF = re.compile(r'model_name: "(' + "|".join(STEPS) + r')(?:_v\d+)?"')


def pin_ensemble(repository: Path, version: int) -> None:
    """Make ensemble version ``version`` (a folder of its own) run release ``version``'s step models."""
    (repository / ENSEMBLE / str(version)).mkdir(parents=True, exist_ok=True)
    path = repository / ENSEMBLE / "config.pbtxt"
    text = _STEP_REF.sub(lambda m: f'model_name: "{step_model(m.group(1), version)}"', path.read_text())
    path.write_text(re.sub(r"model_version: -?\d+", "model_version: 1", text))


def pinned_version(repository: Path) -> int:
    names = re.findall(r'model_name: "(\w+)"', (repository / ENSEMBLE / "config.pbtxt").read_text())
    versions = {release_of(n) for n in names}
    if len(versions) != 1:
        raise ValueError(f"the ensemble in {repository} names several releases: {sorted(versions)}")
    return versions.pop()


def releases(repository: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in repository.glob("serving-*.json"))


def remove_release(repository: Path, version: int) -> None:
    """Delete an unloaded release's files (its step models, ensemble version and spec)."""
    for name in STEPS:
        shutil.rmtree(repository / step_model(name, version), ignore_errors=True)
    shutil.rmtree(repository / ENSEMBLE / str(version), ignore_errors=True)
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
