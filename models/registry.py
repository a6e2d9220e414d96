"""The model registry: versioned artifact directories ``<models>/<N>/`` (written by ``reels train``), their
manifests, and the serving pointer ``<models>/serving`` naming the promoted version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reels.workflows.errors import InvalidInput, NotFound
from reels.workflows.manifest import FeatureArtifacts

SERVING_POINTER = "serving"  # <models>/serving: the promoted version (absent: the latest)


def next_version(root: Path) -> int:
    """One above the highest integer-named directory under ``root`` (1 when there is none)."""
    versions = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def workflow_hash(features: FeatureArtifacts) -> str:
    """16 hex digits of SHA-256 over the relative paths and bytes of every file in the fitted workflow."""
    digest = hashlib.sha256()
    for f in sorted(features.workflow_dir.rglob("*")):
        if f.is_file():
            digest.update(f.relative_to(features.workflow_dir).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def load_manifest(directory: Path) -> dict:
    """The parsed ``manifest.json`` of a model version directory; raises ``NotFound`` when it has none."""
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise NotFound(f"{directory} is not a model artifact directory (no manifest.json)")
    return json.loads(path.read_text())


def check_manifest(directory: Path) -> dict:
    """Load a manifest and verify the workflow it was trained with is still the one it points to."""
    manifest = load_manifest(directory)
    features = FeatureArtifacts(Path(manifest["features"]["path"]))
    if not features.workflow_dir.exists():
        raise NotFound(f"the workflow {features.workflow_dir} these models were trained with is gone")
    current = workflow_hash(features)
    if current != manifest["features"]["workflow_hash"]:
        raise InvalidInput(
            f"the workflow at {features.workflow_dir} changed since training (hash {current} != "
            f"{manifest['features']['workflow_hash']}): retrain or restore the features"
        )
    return manifest


def trained_features(directory: Path) -> FeatureArtifacts:
    """The feature build a model version was trained on (checked: its workflow is unchanged)."""
    return FeatureArtifacts(Path(check_manifest(directory)["features"]["path"]))


def latest_model_dir(models_root: Path) -> Path:
    """The highest-numbered version directory under ``models_root``; raises ``NotFound`` when there is none."""
    versions = sorted((p for p in models_root.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise NotFound(f"no trained models under {models_root}: run `reels train` first")
    return versions[-1]


def serving_model_dir(models_root: Path) -> Path:
    """The promoted version (``reels retrain`` writes the pointer), else the latest trained one."""
    pointer = models_root / SERVING_POINTER
    if pointer.exists():
        directory = models_root / pointer.read_text().strip()
        if not (directory / "manifest.json").exists():
            raise NotFound(f"{pointer} points at {directory}, which holds no trained models")
        return directory
    return latest_model_dir(models_root)


def mark_serving(models_root: Path, version: int) -> None:
    """Point ``<models_root>/serving`` at ``version``, replacing the pointer atomically."""
    tmp = models_root / f".{SERVING_POINTER}.tmp"
    tmp.write_text(f"{version}\n")
    tmp.replace(models_root / SERVING_POINTER)  # atomic on POSIX
