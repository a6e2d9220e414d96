"""``reels export``: fill a build model repository from the source ``model_repository/`` (config.pbtxt +
thin model.py, in git) and trained artifact versions (never committed).

A *release* (``reels.deploy.triton.release``) is one trained artifact version served by models of its
own, ``<step>_v<N>`` for every python step. Version ``N`` of the ``reels`` ensemble names those models, so
a request never mixes two releases' vocabularies, and a promotion loads the next release's models without
touching the serving ones (``reels.deploy.promotion``).

``config.pbtxt`` files are edited as ``ModelConfig`` protobufs (Triton's own schema), never as text.
"""

from __future__ import annotations

import os
import py_compile
import shutil
import uuid
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from reels.deploy.triton.release import ENSEMBLE, STEPS, Release, release_of, step_model, step_of
from reels.feature_store.settings import RedisSettings
from reels.models.registry import check_manifest
from reels.models.serving.catalog import trending, video_metadata
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.errors import InvalidInput
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.offline_store import OfflineStore

SOURCE = Path(__file__).resolve().parents[2] / "model_repository"


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a ``config.pbtxt``."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(Path(path).read_text(), config)
    return config


def write_config(path: Path, config: model_config_pb2.ModelConfig) -> None:
    """Write a ``config.pbtxt`` (protobuf text format, as Triton reads it) in one rename: a Triton polling
    the repository never reads half a file. The temporary file lives outside the model's folder, so the
    folder changes once."""
    path = Path(path)
    tmp = path.parent.parent / f".{path.parent.name}.config.pbtxt.tmp"
    tmp.write_text(text_format.MessageToString(config))
    os.replace(tmp, path)


def staging_dir(repository: Path) -> Path:
    """A folder beside ``repository`` (same file system) where model folders are built and retired, so
    each appears in or leaves the repository in one rename: Triton's poll never sees one half written."""
    return repository.parent / f".{repository.name}.staging"


def export_repository(
    model_dir: Path,
    target: Path,
    redis: RedisSettings,
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


def add_release(
    repository: Path,
    model_dir: Path,
    redis: RedisSettings,
    config: ServingConfig | None = None,
    namespace: str | None = None,
    experiment: Experiment | None = None,
    source: Path = SOURCE,
    instances: int = 1,
) -> int:
    """Write release ``N`` (= the artifact version) into ``repository``: its record ``serving-N.json``,
    then a model per step carrying its own spec and artifacts (``reels.deploy.triton.release``), each
    built beside the repository and moved in with one rename. Nothing is loaded; returns ``N``."""
    manifest = check_manifest(model_dir)
    config = config or ServingConfig()
    features = FeatureArtifacts(Path(manifest["features"]["path"]))
    feature_manifest = features.manifest()
    release = Release(
        version=int(manifest["version"]), model_dir=Path(model_dir), features_dir=features.root,
        history_length=feature_manifest.history_length, redis=redis, namespace=namespace, serving=config,
        experiment=experiment,
    )  # fmt: skip
    offline = OfflineStore(feature_manifest.store)
    # The files derived from the offline store, written once and placed into the steps that read them.
    feed = staging_dir(repository) / f"feed-{release.version}-{os.getpid()}"
    shutil.rmtree(feed, ignore_errors=True)
    release.write_feed(
        feed, trending(offline, config.trending_days, config.trending_size), video_metadata(offline)
    )
    # The record first: a step model in the repository always has one (a promotion lists releases by it).
    release.write(repository)
    try:
        for name in STEPS:
            model = step_model(name, release.version)
            folder = staging_dir(repository) / model
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "1").mkdir(parents=True)
            shutil.copy2(source / name / "1" / "model.py", folder / "1" / "model.py")
            # Compiled now, so the python backend finds a fresh __pycache__ and writes none itself: Triton
            # polls the repository, and a folder that changes after its first load is loaded again.
            py_compile.compile(str(folder / "1" / "model.py"), doraise=True)
            # Everything the step reads, inside its own folder: the folder alone serves (relocatable).
            release.write_step(folder / "1", name, feed)
            model_config = read_config(source / name / "config.pbtxt")
            model_config.name = model
            for group in model_config.instance_group:
                group.count = instances
            # Which writing of the folder this is: a promotion waits until Triton serves this very config
            # (a rewritten release keeps answering READY with its old instances until the reload is done).
            model_config.parameters[STAMP].string_value = uuid.uuid4().hex
            write_config(folder / "config.pbtxt", model_config)
            shutil.rmtree(repository / model, ignore_errors=True)  # a leftover of a failed promotion
            os.replace(folder, repository / model)
    finally:
        shutil.rmtree(feed, ignore_errors=True)
    return release.version


ENSEMBLE_VERSION = 1
STAMP = "release_stamp"  # config parameter: a fresh value each time add_release writes a step model


def written_stamp(repository: Path, model: str) -> str:
    """The stamp of the step model ``model`` as its folder in ``repository`` holds it now."""
    return read_config(repository / model / "config.pbtxt").parameters[STAMP].string_value


def pin_ensemble(repository: Path, version: int) -> None:
    """Make the ensemble run release ``version``'s step models.

    The ensemble keeps one version (``ENSEMBLE_VERSION``) whose config names the serving release: a
    promotion reloads it with the next release's step models, which Triton swaps in once loaded while
    requests in flight finish on the old ones. A new ensemble version per release would change what
    "latest" means in the middle of a client's measurement (perf_analyzer failed its summary with "failed
    to find the requested model version"), and would make a rollback to a lower release impossible
    under a latest-version policy."""
    (repository / ENSEMBLE / str(ENSEMBLE_VERSION)).mkdir(parents=True, exist_ok=True)
    path = repository / ENSEMBLE / "config.pbtxt"
    ensemble = read_config(path)
    for step in ensemble.ensemble_scheduling.step:
        step.model_name = step_model(step_of(step.model_name), version)
        step.model_version = 1
    write_config(path, ensemble)


def pinned_version(repository: Path) -> int:
    """The release the ensemble's config currently names."""
    ensemble = read_config(repository / ENSEMBLE / "config.pbtxt")
    versions = {release_of(step.model_name) for step in ensemble.ensemble_scheduling.step}
    if len(versions) != 1:
        raise InvalidInput(f"the ensemble in {repository} names several releases: {sorted(versions)}")
    return versions.pop()


def instances_of(repository: Path, version: int) -> int:
    """Execution instances per step model of release ``version``."""
    groups = read_config(repository / step_model(STEPS[0], version) / "config.pbtxt").instance_group
    return groups[0].count if groups else 1


def remove_release(repository: Path, version: int) -> None:
    """Delete an unloaded release's files (its step models, which carry its artifacts, then its record)."""
    retired = staging_dir(repository) / "retired"
    retired.mkdir(parents=True, exist_ok=True)
    for name in STEPS:
        folder = repository / step_model(name, version)
        if folder.exists():
            target = retired / f"{folder.name}-{os.getpid()}"
            shutil.rmtree(target, ignore_errors=True)
            os.replace(folder, target)  # gone from the repository in one step, then deleted
            shutil.rmtree(target, ignore_errors=True)
    Release.spec_path(repository, version).unlink(missing_ok=True)
    for legacy in (f"trending-{version}.npy", f"videos-{version}.parquet"):  # written at the root before
        (repository / legacy).unlink(missing_ok=True)
