"""A release: one trained artifact version served by Triton models of its own (``<step>_v<N>``).

Releases are self-contained and relocatable: everything a step model reads lives inside its own model
folder, referenced relatively, so a copy of the repository (or of one model folder, as Triton makes for a
remote repository) serves the same feeds from anywhere::

    <repository>/
        serving-N.json                 the release's record (the promotion's journal and roll-back read it)
        reels/                         the ensemble (its config names release N's step models)
        retrieval_vN/
            config.pbtxt
            1/
                model.py
                release.json           the spec, as serving-N.json plus the step and its artifacts folder
                artifacts/             query_tower/ items.faiss item_embeddings.parquet trending.npy
                                       videos.parquet
        ranking_vN/1/artifacts/        ranker/ workflow/ (the request encoder's part of the fitted workflow)
                                       video_table.npz (the packed video records a load writes to Redis)
        feature_transform_vN/1/artifacts/   workflow/
        diversity_rerank_vN/1/artifacts/    item_embeddings.parquet videos.parquet

Where the spec lives: twice, the same content. ``serving-N.json`` at the repository root (a file: Triton
treats every folder there as a model) is what the promotion code lists and reads (``versions``,
``read``: namespace, experiment); ``<step>_vN/1/release.json`` is what the step's ``initialize`` reads
(``for_model``: from the model's own folder, never from its parent). Neither holds a path: a step's
artifacts are the folder ``artifacts`` beside its ``release.json``, so a ``Release`` read from a step
folder has ``model_dir == features_dir ==`` that folder (the artifacts keep the names they have in the
model version and the feature build), and one read from the root has neither (its artifact methods
raise ``NotFound``).

Each step carries only what it reads (``STEP_ARTIFACTS``), copied from the model version and the feature
build (not hard-linked: see ``place``), so it shares no file with anything outside. Of the fitted workflow only
what ``RequestEncoder`` reads travels (``ENCODER_FILES``: the pickled graph for the Normalize statistics
and the request-context vocabularies), not the user and video vocabularies that grow with the catalog.

``Release`` is the one place that writes the spec (``reels export``, a promotion) and reads it (each step
model's ``initialize``), so the two sides cannot drift apart. The spec holds no secret: the Redis password
comes from the environment of the tritonserver process (``reels.feature_store.settings``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reels.feature_store.settings import RedisSettings
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.errors import InvalidInput, NotFound
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.spec import REQUEST_CONTEXT

if TYPE_CHECKING:
    from reels.feature_store.encoding import RequestEncoder
    from reels.feature_store.store import OnlineStore
    from reels.models.serving.video_table import VideoTable

STEPS = ("feature_transform", "retrieval", "ranking", "diversity_rerank")
ENSEMBLE = "reels"  # the ensemble clients call; version N runs release N's step models
MODELS = (*STEPS, ENSEMBLE)

SPEC = "release.json"  # in each step model's version folder
ARTIFACTS = "artifacts"  # beside it: the files the step reads
TRENDING = "trending.npy"  # the release's cold-start / fallback feed (raw video ids, most watched first)
VIDEOS = "videos.parquet"  # the release's video metadata (creator, category, upload time by raw video id)
WORKFLOW = "workflow"
# The ranking step's candidate video records, packed from the feature build as a load packs them for Redis
# (``reels.models.serving.video_table``): the step reads them from memory unless video_features is redis.
VIDEO_TABLE = "video_table.npz"
# What ``RequestEncoder`` reads of the fitted workflow: ``nvt.Workflow.load`` needs the pickled graph and
# its metadata (it re-points the stat ops at the folder it loads from without reading their files), the
# Normalize statistics are in the graph, and only the request-context vocabularies are read.
ENCODER_FILES = (
    "workflow.pkl",
    "metadata.json",
    *(f"categories/unique.{column}.parquet" for column in REQUEST_CONTEXT),
)
# What each step's initialize() reads, by name in its artifacts folder.
STEP_ARTIFACTS = {
    "feature_transform": (WORKFLOW,),
    "retrieval": ("query_tower", "items.faiss", "item_embeddings.parquet", TRENDING, VIDEOS),
    "ranking": ("ranker", WORKFLOW, VIDEO_TABLE),
    "diversity_rerank": ("item_embeddings.parquet", VIDEOS),
}


def step_model(step: str, version: int) -> str:
    """The Triton model serving ``step`` for release ``version``."""
    return f"{step}_v{version}"


def release_of(model_name: str) -> int:
    """The release a step model serves (``ranking_v3`` -> 3)."""
    return int(model_name.rsplit("_v", 1)[1])


def step_of(model_name: str) -> str:
    """The step a model runs (``ranking_v3`` -> ``ranking``; a bare step name is returned as is)."""
    return model_name.rsplit("_v", 1)[0] if "_v" in model_name else model_name


def place(source: Path, target: Path) -> None:
    """Copy the file or folder ``source`` to ``target`` (contents and modification times).

    A copy, never a hard link: Triton's poll takes a file's change time as the later of its mtime and its
    ctime, and an inode's ctime changes whenever a link to it is made or removed anywhere. Step models
    sharing inodes with the model version (or with another release of the same feature build) would be
    reloaded by Triton whenever a promotion links the next release or deletes an old one (measured: the
    serving release's feature_transform and ranking reloaded while the next one loaded, and the server
    aborted in the hot swap test)."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise NotFound(f"a release needs {source}, which is not there")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


@dataclass(frozen=True)
class Release:
    """Everything a release's step models read at ``initialize``: artifacts, features, store, settings.

    ``model_dir`` / ``features_dir``: where the artifacts are read from. In a release being written (by
    ``reels.deploy.triton.repository.add_release``) the model version and the feature build they come
    from; in one read from a step model's folder that folder's ``artifacts/``; None in one read from the
    repository root (the record the promotion reads: it has no artifacts)."""

    version: int
    model_dir: Path | None
    features_dir: Path | None
    history_length: int
    redis: RedisSettings
    namespace: str | None = None  # None: follow the store's active namespace
    serving: ServingConfig = field(default_factory=ServingConfig)
    experiment: Experiment | None = None  # None: no A/B test (one variant, "default")
    repository: Path | None = field(default=None, compare=False)  # where it was read from

    # ---- files of a release in a repository --------------------------------------------------------------
    @staticmethod
    def spec_path(repository: Path, version: int) -> Path:
        """The release's record: a file at the repository root (Triton reads every folder there as a
        model). It exists from before the step models are moved in until after they are deleted."""
        return Path(repository) / f"serving-{version}.json"

    @staticmethod
    def step_spec_path(repository: Path, step: str, version: int) -> Path:
        """The spec inside ``step``'s model of release ``version`` (what its ``initialize`` reads)."""
        return Path(repository) / step_model(step, version) / "1" / SPEC

    @staticmethod
    def versions(repository: Path) -> list[int]:
        """Every release written into ``repository``, oldest first."""
        return sorted(int(p.stem.split("-")[1]) for p in Path(repository).glob("serving-*.json"))

    # ---- write ------------------------------------------------------------------------------------------
    def spec(self) -> dict:
        """The spec as JSON: settings only, no path (see the module docstring)."""
        return {
            "version": self.version,
            "history_length": self.history_length,
            "redis": self.redis.as_spec(),
            "namespace": self.namespace,
            "serving": asdict(self.serving),
            "experiment": self.experiment.as_dict() if self.experiment else None,
        }

    def write(self, repository: Path) -> Path:
        """Write the release's record ``serving-N.json`` at the root of ``repository``; returns its path."""
        path = self.spec_path(repository, self.version)
        _write_json(path, self.spec())
        return path

    @staticmethod
    def write_feed(folder: Path, trending_ids: np.ndarray, videos: pd.DataFrame) -> None:
        """Write the files a release derives from the offline store at export (its trending feed and its
        video metadata) into ``folder``, for ``write_step`` to place into the steps that read them."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / TRENDING, np.asarray(trending_ids, dtype=np.int64))
        videos.to_parquet(folder / VIDEOS)

    def write_step(self, version_folder: Path, step: str, feed: Path) -> Path:
        """Fill ``version_folder`` (``<step>_vN/1``) with what ``step`` reads: its artifacts from the model
        version, the feature build and ``feed`` (``write_feed``'s folder), then its spec (last: a spec
        never names files that are not there yet). Returns the spec's path."""
        if self.model_dir is None or self.features_dir is None:
            raise InvalidInput("only a release built from a model version can be written into a step model")
        artifacts = Path(version_folder) / ARTIFACTS
        artifacts.mkdir(parents=True, exist_ok=True)
        for name in STEP_ARTIFACTS[step]:
            if name == WORKFLOW:
                for file in ENCODER_FILES:
                    place(Path(self.features_dir) / WORKFLOW / file, artifacts / WORKFLOW / file)
            elif name == VIDEO_TABLE:
                from reels.models.serving.video_table import VideoTable

                VideoTable.from_features(self.features()).save(artifacts / VIDEO_TABLE)
            elif name in (TRENDING, VIDEOS):
                place(Path(feed) / name, artifacts / name)
            else:
                place(Path(self.model_dir) / name, artifacts / name)
        path = Path(version_folder) / SPEC
        _write_json(path, {**self.spec(), "step": step, "artifacts": ARTIFACTS})
        return path

    # ---- read -------------------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, path: Path, repository: Path | None = None) -> Release:
        """The release a spec file describes; its artifacts (if it names any) are read relative to it."""
        path = Path(path)
        spec = json.loads(path.read_text())
        home = None
        if spec.get("artifacts"):
            if Path(spec["artifacts"]).is_absolute() or ".." in Path(spec["artifacts"]).parts:
                raise InvalidInput(
                    f"{path}: artifacts must be a folder beside the spec, got {spec['artifacts']}"
                )
            home = path.parent / spec["artifacts"]
        known = {f.name for f in fields(ServingConfig)}
        serving = {k: v for k, v in spec.get("serving", {}).items() if k in known}
        # A release exported before the ranking step carried a video table reads its videos from Redis.
        serving.setdefault("video_features", "redis")
        # ... and one exported before the feed score blended in the two-tower's ranks by the ranker alone.
        serving.setdefault("retrieval_weight", 0.0)
        return cls(
            version=int(spec["version"]),
            model_dir=home,
            features_dir=home,
            history_length=int(spec["history_length"]),
            redis=RedisSettings.from_spec(spec["redis"]),
            namespace=spec.get("namespace"),
            serving=ServingConfig(**serving),
            experiment=Experiment.from_dict(spec.get("experiment")),
            repository=repository,
        )

    @classmethod
    def read(cls, repository: Path, version: int) -> Release:
        """The release ``version`` of ``repository`` as its record at the root describes it (settings,
        namespace, experiment; no artifacts: those are read by ``for_model``)."""
        path = cls.spec_path(repository, version)
        if not path.exists():
            raise NotFound(f"no release {version} in {repository} (expected {path.name})")
        release = cls.from_spec(path, Path(repository))
        if release.version != version:
            raise InvalidInput(f"{path} describes release {release.version}, not {version}")
        return release

    @classmethod
    def for_model(cls, args: dict) -> Release:
        """From the ``args`` Triton passes to ``initialize``: the spec inside the model's own version
        folder (``args["model_repository"]`` is the model's folder, possibly Triton's local copy of a
        remote one; nothing outside it is read)."""
        folder = Path(args["model_repository"]) / str(args.get("model_version") or 1)
        path = folder / SPEC
        if not path.exists():
            raise NotFound(
                f"{args['model_name']}: no {SPEC} in {folder} (a repository written before releases were "
                "self-contained: export it again)"
            )
        release = cls.from_spec(path, Path(args["model_repository"]).parent)
        if "_v" in args["model_name"] and release_of(args["model_name"]) != release.version:
            raise InvalidInput(f"{args['model_name']} holds the spec of release {release.version}")
        return release

    # ---- what the steps build from it -------------------------------------------------------------------
    def _artifact(self, name: str) -> Path:
        if self.model_dir is None:
            raise NotFound(
                f"release {self.version} read from the repository root has no artifacts: its step models "
                "carry them (Release.for_model)"
            )
        return Path(self.model_dir) / name

    def features(self) -> FeatureArtifacts:
        """The feature build the release's models were trained on (in a step folder: the part of it the
        step carries)."""
        if self.features_dir is None:
            raise NotFound(f"release {self.version} read from the repository root has no feature files")
        return FeatureArtifacts(Path(self.features_dir))

    def trending_ids(self) -> np.ndarray:
        """The cold-start feed written with the release."""
        return np.load(self._artifact(TRENDING))

    def video_metadata(self) -> pd.DataFrame:
        """The video metadata written with the release (see ``reels.models.serving.catalog``)."""
        return pd.read_parquet(self._artifact(VIDEOS))

    def video_table(self) -> VideoTable:
        """The candidate video records written with the release (the ranking step's)."""
        from reels.models.serving.video_table import VideoTable

        return VideoTable.load(self._artifact(VIDEO_TABLE))

    def store(self) -> OnlineStore:
        """The online store, pinned to the release's namespace, failing fast: no retries, and after a
        failure Redis is skipped until a background PING (every 0.5 s) answers; each step serves its
        flagged fallback meanwhile."""
        return self.redis.store(
            timeout_s=0.2, retries=False, pinned_namespace=self.namespace, unavailable_pause_s=0.5
        )

    def encoder(self) -> RequestEncoder:
        """Request-time encoding with the release's fitted workflow."""
        from reels.feature_store.encoding import RequestEncoder

        return RequestEncoder(self.features().workflow_dir)


def _write_json(path: Path, document: dict) -> None:
    """Write ``path`` through a temporary file and a rename: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)
