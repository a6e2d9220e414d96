"""A feature build on disk (``FeatureArtifacts``) and its typed manifest (``FeatureManifest``).

Layout of a build (written by ``reels features`` / ``reels retrain``)::

    <features>/
        workflow/          the fitted nvt.Workflow (vocabularies under workflow/categories/)
        train/ valid/ test/ model-ready parquet parts + schema
        users.parquet      one transformed row per user (raw_user_id + spec columns + history)
        videos.parquet     one transformed row per video (raw_video_id + spec columns)
        manifest.json      ``FeatureManifest``: source store, split, config, row counts, timings, versions

Cheap to import: pandas and NVTabular are imported by the methods that need them.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from reels.workflows.config import FeatureConfig
from reels.workflows.errors import NotFound

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
LIBRARIES = (
    "nvtabular",
    "merlin-core",
    "merlin-models",
    "tensorflow-cpu",
    "numpy",
    "pandas",
    "pyarrow",
    "dask",
)


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the libraries that shape the artifacts (recorded in every manifest)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES + extra:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass(frozen=True)
class FeatureManifest:
    """What a feature build records about itself (``manifest.json``)."""

    store: str  # the offline store the build read
    store_fingerprint: str
    split: dict[str, str]  # TimeSplit.as_dict(): train/valid/test boundaries
    feature_config: FeatureConfig
    rows: dict[str, int] = field(default_factory=dict)
    created: str = ""
    device: str = "cpu"
    workflow_from: str | None = None  # a retrain's gate encodes new windows with an older fitted workflow
    aggregate_prior: dict[str, float] = field(default_factory=dict)
    columns: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)

    @property
    def history_length(self) -> int:
        """Length of the fixed-size ``history_video_ids`` list."""
        return self.feature_config.history_length

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written to ``manifest.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> FeatureManifest:
        """Parse ``manifest.json``; unknown keys are ignored, the feature config is rebuilt and checked."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        values["feature_config"] = FeatureConfig(**document["feature_config"])
        return cls(**values)


@dataclass(frozen=True)
class FeatureArtifacts:
    """A feature build directory; every path inside it comes from here."""

    root: Path

    @property
    def workflow_dir(self) -> Path:
        """Folder of the fitted NVTabular workflow (absent in a build made with ``build_features(fitted=...)``)."""
        return self.root / "workflow"

    def split_dir(self, name: str) -> Path:
        """Parquet parts of one window (``train``, ``valid`` or ``test``)."""
        return self.root / name

    @property
    def users_path(self) -> Path:
        """Transformed user rows (the online store loads these)."""
        return self.root / "users.parquet"

    @property
    def videos_path(self) -> Path:
        """Transformed video rows (the online store loads these)."""
        return self.root / "videos.parquet"

    @property
    def manifest_path(self) -> Path:
        """Path of ``manifest.json``, written last, so it exists only for a finished build."""
        return self.root / "manifest.json"

    def exists(self) -> bool:
        """True once a build finished here (the manifest is written last)."""
        return self.manifest_path.exists()

    def manifest(self) -> FeatureManifest:
        """The typed manifest; warns when the libraries differ from the ones that wrote it."""
        if not self.manifest_path.exists():
            raise NotFound(f"no feature build at {self.root}: run `reels features` first")
        manifest = FeatureManifest.from_dict(json.loads(self.manifest_path.read_text()))
        current = library_versions()
        changed = {
            k: (v, current[k]) for k, v in manifest.libraries.items() if k in current and current[k] != v
        }
        if changed:
            log.warning("feature build %s was written with other library versions: %s", self.root, changed)
        return manifest

    def load_workflow(self):
        """The fitted ``nvt.Workflow`` (imports NVTabular)."""
        import nvtabular as nvt

        return nvt.Workflow.load(str(self.workflow_dir))

    def read_split(self, name: str, columns: list[str] | None = None):
        """One window's ``part-*.parquet`` files concatenated, in part order, into one pandas frame."""
        import pandas as pd

        files = sorted(self.split_dir(name).glob("part-*.parquet"))
        return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)
