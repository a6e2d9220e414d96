"""The model registry: versioned artifact directories ``<models>/<N>/`` (written by ``reels train``), their
manifests, the promotion gate's verdict on each, and the serving pointer ``<models>/serving`` naming the
promoted version.

Version numbers are claimed, never guessed: ``claim_version`` creates the staging directory
``.<N>.partial`` under an exclusive lock on ``<models>/.claim.lock`` and holds a lock on that directory
while the version is trained, so two trains running at once never take the same number, and a staging
directory whose train died (its lock released by the kernel) is removed by the next claim.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reels.workflows.errors import InvalidInput, NotFound
from reels.workflows.manifest import FeatureArtifacts

SERVING_POINTER = "serving"  # <models>/serving: the promoted version (absent: the latest servable one)
CLAIM_LOCK = ".claim.lock"
_STAGING = re.compile(r"^\.(\d+)\.partial$")


def _claimed_versions(root: Path) -> list[int]:
    """Every version number taken under ``root``: published (``N``) and being trained (``.N.partial``)."""
    taken = []
    for p in Path(root).glob("*"):
        if p.name.isdigit():
            taken.append(int(p.name))
        elif match := _STAGING.match(p.name):
            taken.append(int(match.group(1)))
    return taken


def next_version(root: Path) -> int:
    """One above the highest version taken under ``root``, published or being trained (1 when none)."""
    return max(_claimed_versions(root), default=0) + 1


@dataclass
class VersionClaim:
    """A version number held by one train: its staging directory and the lock on it (held until
    ``publish`` or ``abandon``)."""

    root: Path
    version: int
    staging: Path
    _fd: int | None = None

    def publish(self) -> Path:
        """Rename the staging directory to ``<root>/<N>`` (atomic: readers see all of it or nothing)."""
        final = self.root / str(self.version)
        self.staging.rename(final)
        self._release()
        return final

    def abandon(self) -> None:
        """Delete the staging directory and give the number back."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _locked_dir(path: Path, blocking: bool) -> int | None:
    """A descriptor holding an exclusive flock on directory ``path``, or None when another process holds it
    (or it is gone: a train published it between the listing and now)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def claim_version(root: Path) -> Iterator[VersionClaim]:
    """Claim the next version number under ``root``: yields a ``VersionClaim`` whose staging directory
    ``.<N>.partial`` the caller fills and then publishes; a block left without publishing removes it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = os.open(root / CLAIM_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one claim at a time: numbering and clean-up see a still tree
        for stale in root.glob(".*.partial"):  # a dead train's kernel-released lock: its staging is garbage
            if _STAGING.match(stale.name) and (fd := _locked_dir(stale, blocking=False)) is not None:
                shutil.rmtree(stale, ignore_errors=True)
                os.close(fd)
        version = next_version(root)
        staging = root / f".{version}.partial"
        staging.mkdir()
        claim = VersionClaim(root, version, staging, _locked_dir(staging, blocking=True))
    finally:
        os.close(lock)
    try:
        yield claim
    finally:
        if claim._fd is not None:  # not published
            claim.abandon()


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


def write_manifest(directory: Path, manifest: dict, default=str) -> None:
    """Replace ``manifest.json`` atomically (a temporary file, fsync, rename): a reader never sees half."""
    path = Path(directory) / "manifest.json"
    tmp = path.with_name(".manifest.json.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(manifest, indent=2, default=default))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


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


# ---- the promotion gate's verdict -------------------------------------------------------------------------
GATE_PENDING = {"pending": True}  # what `reels retrain` writes into a candidate before the gate has decided


def gate_verdict(manifest: dict) -> bool | None:
    """None: never gated (`reels train`); True: the gate passed it; False: rejected, or a retrain
    candidate whose gate never decided (the retrain stopped first)."""
    gate = manifest.get("gate")
    if gate is None:
        return None
    return gate.get("passed") is True


def servable(directory: Path) -> bool:
    """Whether a version may be served: it has a manifest and the gate did not reject it."""
    try:
        return gate_verdict(load_manifest(directory)) is not False
    except (NotFound, ValueError):  # no manifest, or one being written by hand and unreadable
        return False


def check_servable(directory: Path) -> dict:
    """The manifest of a version that may be served; ``InvalidInput`` (exit 2) for one the gate rejected
    or never finished gating, ``NotFound`` for a directory without a manifest."""
    manifest = load_manifest(directory)
    if gate_verdict(manifest) is False:
        gate = manifest["gate"]
        if gate.get("pending"):
            why = "its retrain stopped before the promotion gate decided"
        else:
            failed = [
                f"{name} {c['candidate']:.4f} < {c['threshold']:.4f}"
                for name, c in gate.get("checks", {}).items()
                if not c.get("passed")
            ]
            why = f"the promotion gate rejected it ({', '.join(failed) or 'failed'})"
        raise InvalidInput(
            f"version {Path(directory).name} is not servable: {why}; serve another version or retrain"
        )
    return manifest


# ---- which version serves ---------------------------------------------------------------------------------
def latest_model_dir(models_root: Path) -> Path:
    """The highest-numbered version directory under ``models_root``; raises ``NotFound`` when there is none."""
    versions = sorted((p for p in models_root.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise NotFound(f"no trained models under {models_root}: run `reels train` first")
    return versions[-1]


def serving_model_dir(models_root: Path) -> Path:
    """The promoted version (the pointer ``reels promote`` / ``reels retrain`` writes), else the latest
    version the gate did not reject. A pointer naming a rejected version is refused (``InvalidInput``)."""
    pointer = models_root / SERVING_POINTER
    if pointer.exists():
        directory = models_root / pointer.read_text().strip()
        if not (directory / "manifest.json").exists():
            raise NotFound(f"{pointer} points at {directory}, which holds no trained models")
        check_servable(directory)
        return directory
    versions = sorted((p for p in models_root.glob("*") if p.name.isdigit()), key=lambda p: -int(p.name))
    if not versions:
        raise NotFound(f"no trained models under {models_root}: run `reels train` first")
    for directory in versions:
        if servable(directory):
            return directory
    raise NotFound(
        f"no servable version under {models_root}: the promotion gate rejected every one "
        f"({', '.join(p.name for p in versions)}); retrain, or train one with `reels train`"
    )


def mark_serving(models_root: Path, version: int) -> None:
    """Point ``<models_root>/serving`` at ``version`` (refused for a version the gate rejected), replacing
    the pointer atomically and durably (fsync of the file and of the directory)."""
    check_servable(models_root / str(version))
    tmp = models_root / f".{SERVING_POINTER}.tmp"
    with tmp.open("w") as f:
        f.write(f"{version}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(models_root / SERVING_POINTER)  # atomic on POSIX
    fsync_dir(models_root)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename inside it survives a power cut once this returns)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
