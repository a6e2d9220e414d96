"""A release: one trained artifact version served by Triton models of its own (``<step>_v<N>``), described
by ``serving-N.json`` at the repository root next to its cold-start feed ``trending-N.npy``.

``Release`` is the one place that writes the spec (``reels export``, a promotion) and reads it (each step
model's ``initialize``), so the two sides cannot drift apart. The spec holds no secret: the Redis password
comes from the environment of the tritonserver process (``reels.feature_store.settings``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reels.feature_store.settings import RedisSettings
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.errors import NotFound
from reels.workflows.manifest import FeatureArtifacts

if TYPE_CHECKING:
    from reels.feature_store.encoding import RequestEncoder
    from reels.feature_store.store import OnlineStore

STEPS = ("feature_transform", "retrieval", "ranking", "diversity_rerank")
ENSEMBLE = "reels"  # the ensemble clients call; version N runs release N's step models
MODELS = (*STEPS, ENSEMBLE)


def step_model(step: str, version: int) -> str:
    """The Triton model serving ``step`` for release ``version``."""
    return f"{step}_v{version}"


def release_of(model_name: str) -> int:
    """The release a step model serves (``ranking_v3`` -> 3)."""
    return int(model_name.rsplit("_v", 1)[1])


def step_of(model_name: str) -> str:
    """The step a model runs (``ranking_v3`` -> ``ranking``; a bare step name is returned as is)."""
    return model_name.rsplit("_v", 1)[0] if "_v" in model_name else model_name


@dataclass(frozen=True)
class Release:
    """Everything a release's step models read at ``initialize``: artifacts, features, store, settings."""

    version: int
    model_dir: Path
    features_dir: Path
    history_length: int
    redis: RedisSettings
    namespace: str | None = None  # None: follow the store's active namespace
    serving: ServingConfig = field(default_factory=ServingConfig)
    experiment: Experiment | None = None  # None: no A/B test (one variant, "default")
    repository: Path | None = field(default=None, compare=False)  # where it was read from

    # ---- files of a release in a repository --------------------------------------------------------------
    @staticmethod
    def spec_path(repository: Path, version: int) -> Path:
        """The spec: a file at the repository root (Triton reads every folder there as a model)."""
        return Path(repository) / f"serving-{version}.json"

    @staticmethod
    def trending_path(repository: Path, version: int) -> Path:
        """The release's cold-start / fallback feed (raw video ids, most watched first)."""
        return Path(repository) / f"trending-{version}.npy"

    @staticmethod
    def videos_path(repository: Path, version: int) -> Path:
        """The release's video metadata (creator, category, upload time by raw video id)."""
        return Path(repository) / f"videos-{version}.parquet"

    @staticmethod
    def versions(repository: Path) -> list[int]:
        """Every release written into ``repository``, oldest first."""
        return sorted(int(p.stem.split("-")[1]) for p in Path(repository).glob("serving-*.json"))

    # ---- write / read -----------------------------------------------------------------------------------
    def write(self, repository: Path, trending_ids: np.ndarray, videos: pd.DataFrame) -> Path:
        """Write the trending feed, the video metadata, then the spec into ``repository`` (the spec last:
        a spec never names files that are not there yet); returns the spec's path."""
        spec = {
            "version": self.version,
            "model_dir": str(Path(self.model_dir).resolve()),
            "features_dir": str(Path(self.features_dir).resolve()),
            "history_length": self.history_length,
            "redis": self.redis.as_spec(),
            "namespace": self.namespace,
            "serving": asdict(self.serving),
            "experiment": self.experiment.as_dict() if self.experiment else None,
        }
        np.save(self.trending_path(repository, self.version), np.asarray(trending_ids, dtype=np.int64))
        videos.to_parquet(self.videos_path(repository, self.version))
        path = self.spec_path(repository, self.version)
        path.write_text(json.dumps(spec, indent=2))
        return path

    @classmethod
    def read(cls, repository: Path, version: int) -> Release:
        """The release ``version`` of ``repository`` as its spec describes it."""
        path = cls.spec_path(repository, version)
        if not path.exists():
            raise NotFound(f"no release {version} in {repository} (expected {path.name})")
        spec = json.loads(path.read_text())
        known = {f.name for f in fields(ServingConfig)}
        return cls(
            version=version,
            model_dir=Path(spec["model_dir"]),
            features_dir=Path(spec["features_dir"]),
            history_length=int(spec["history_length"]),
            redis=RedisSettings.from_spec(spec["redis"]),
            namespace=spec.get("namespace"),
            serving=ServingConfig(**{k: v for k, v in spec.get("serving", {}).items() if k in known}),
            experiment=Experiment.from_dict(spec.get("experiment")),
            repository=Path(repository),
        )

    @classmethod
    def for_model(cls, args: dict) -> Release:
        """From the ``args`` Triton passes to ``initialize``: the model ``<step>_v<N>`` serves release N."""
        return cls.read(Path(args["model_repository"]).parent, release_of(args["model_name"]))

    # ---- what the steps build from it -------------------------------------------------------------------
    def features(self) -> FeatureArtifacts:
        """The feature build the release's models were trained on."""
        return FeatureArtifacts(self.features_dir)

    def trending_ids(self) -> np.ndarray:
        """The cold-start feed written with the release."""
        if self.repository is None:
            raise NotFound("a release built in code has no repository to read its trending feed from")
        return np.load(self.trending_path(self.repository, self.version))

    def video_metadata(self) -> pd.DataFrame:
        """The video metadata written with the release (see ``reels.models.serving.catalog``)."""
        if self.repository is None:
            raise NotFound("a release built in code has no repository to read its video metadata from")
        return pd.read_parquet(self.videos_path(self.repository, self.version))

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

        return RequestEncoder(self.features_dir / "workflow")
