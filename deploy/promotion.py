"""Zero-downtime promotion of a trained version into a running Triton + Redis (``reels promote``, and
``reels retrain`` once the gate passes).

Order of operations, each step leaving the server able to answer every request:

1. load the version's features into a *new* Redis namespace, not yet active (the serving release keeps
   reading the namespace it is pinned to);
2. write the release (step version folders + ``serving-N.json`` pinned to that namespace), re-point the
   ensemble at it, and load the ensemble with explicit model control: Triton loads every step with both
   versions (``version_policy latest 2``) while the running ensemble and steps keep answering, then
   swaps the ensemble; requests already inside the old one finish on the old release and namespace;
3. activate the new namespace (the ingest workers follow it), keep the previous one for requests in
   flight, drop older ones, and delete release files Triton no longer loads.

If the new release fails to load, the ensemble is pinned back, the release removed and the ensemble
reloaded, so the serving version keeps serving. Events ingested between the feature build and step 4 are in the offline
store but not in the new namespace's histories (the next build picks them up).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reels.deploy.repository import (
    ENSEMBLE,
    STEPS,
    add_release,
    pin_ensemble,
    pinned_version,
    releases,
    remove_release,
)
from reels.feature_store.store import OnlineStore
from reels.models.experiment import Experiment
from reels.models.serving import ServingConfig
from reels.models.train import check_manifest
from reels.models.triton_steps import release_spec
from reels.workflows.pipeline import FeatureArtifacts


class PromotionFailed(RuntimeError):
    """The new version could not be loaded; the serving version is still serving."""


@dataclass
class PromotionReport:
    version: int
    previous: int
    namespace: str
    features_load_s: float
    models_load_s: float
    seconds: float


def promote(
    repository: Path,
    model_dir: Path,
    triton_url: str,
    store: OnlineStore,
    redis: dict,
    config: ServingConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> PromotionReport:
    """Hot-swap ``model_dir`` into the Triton serving ``repository`` (gRPC at ``triton_url``)."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    say = progress or (lambda _m: None)
    started = time.perf_counter()
    manifest = check_manifest(model_dir)
    version, previous = int(manifest["version"]), pinned_version(repository)
    if version == previous:
        raise ValueError(f"version {version} is already serving")
    features = FeatureArtifacts(Path(manifest["features"]["path"]))

    say(f"loading the features of version {version} into a new Redis namespace")
    loaded = store.load(features, activate=False)
    features_s = time.perf_counter() - started

    t0 = time.perf_counter()
    # The A/B test carries over: same variants and salt, so users keep their buckets across versions.
    experiment = Experiment.from_dict(
        json.loads(release_spec(repository, previous).read_text()).get("experiment")
    )
    add_release(repository, model_dir, redis, config, namespace=loaded.namespace, experiment=experiment)
    pin_ensemble(repository, version)
    # The repository API over gRPC: with the (minutes long) load request held on Triton's HTTP front
    # end, one request of an HTTP client timed out in each of two runs here; none did with gRPC control.
    client = grpc.InferenceServerClient(triton_url)
    say(
        f"loading the ensemble pinned to version {version} (its steps load version {version} beside {previous})"
    )
    try:
        # One load request: Triton (re)loads every step with both versions, and swaps the ensemble only
        # once all are ready; until then the running ensemble and steps keep serving. Loading the steps
        # one by one first failed requests here ("failed to find the requested model version") while
        # each step's reload also reloaded the ensemble that uses it.
        client.load_model(ENSEMBLE)
        missing = [m for m in (*STEPS, ENSEMBLE) if not client.is_model_ready(m, str(version))]
        if missing:
            raise PromotionFailed(f"not ready after the load: {missing}")
    except (InferenceServerException, PromotionFailed) as exc:
        pin_ensemble(repository, previous)
        remove_release(repository, version)
        client.load_model(ENSEMBLE)  # back to the previous release on disk
        raise PromotionFailed(
            f"version {version} failed to load, version {previous} keeps serving: {exc}"
        ) from exc
    models_s = time.perf_counter() - t0
    store.activate(loaded.namespace)
    for old in releases(repository):
        if old not in (version, previous):  # already unloaded by the steps' version policy
            remove_release(repository, old)
    client.close()
    say(
        f"version {version} serving (namespace {loaded.namespace}); version {previous} kept loaded for rollback"
    )
    return PromotionReport(
        version, previous, loaded.namespace, features_s, models_s, time.perf_counter() - started
    )
