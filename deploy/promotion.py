"""Zero-downtime promotion of a trained version into a running Triton + Redis (``reels promote``, and
``reels retrain`` once the gate passes).

Order of operations, each step leaving the server able to answer every request:

1. load the version's features into a *new* Redis namespace, not yet active (the serving release keeps
   reading the namespace it is pinned to);
2. write the release (its own step models ``<step>_v<N>`` + ``serving-N.json`` pinned to that
   namespace), point the ensemble's config at them, and reload the ensemble with explicit model control:
   Triton loads the new step models while the running ensemble and its step models keep answering
   untouched, then swaps the ensemble; requests already inside the old one finish on the old release;
3. activate the new namespace (the ingest workers follow it), keep the previous one for requests in
   flight, drop older ones, and unload and delete releases older than the previous one.

If the new release fails to load, the ensemble is pinned back, the release removed and the ensemble
reloaded, so the serving version keeps serving. Events ingested between the feature build and step 3
are in the offline store but not in the new namespace's histories (the next build picks them up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reels.deploy.config import Config
from reels.deploy.stack import repository_dir
from reels.deploy.triton.release import ENSEMBLE, STEPS, Release, step_model
from reels.deploy.triton.repository import (
    ENSEMBLE_VERSION,
    add_release,
    instances_of,
    pin_ensemble,
    pinned_version,
    remove_release,
)
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore
from reels.models.registry import check_manifest, mark_serving
from reels.models.serving.config import ServingConfig
from reels.workflows.errors import InvalidInput, ReelsError
from reels.workflows.manifest import FeatureArtifacts


class PromotionFailed(ReelsError):
    """The new version could not be loaded; the serving version is still serving."""

    exit_code = 1


@dataclass
class PromotionReport:
    """What a hot swap did: versions, the new Redis namespace and how long each part took."""

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
    redis: RedisSettings,
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
        raise InvalidInput(f"version {version} is already serving")
    features = FeatureArtifacts(Path(manifest["features"]["path"]))

    say(f"loading the features of version {version} into a new Redis namespace")
    loaded = store.load(features, activate=False)
    features_s = time.perf_counter() - started

    t0 = time.perf_counter()
    # The A/B test carries over: same variants and salt, so users keep their buckets across versions.
    experiment = Release.read(repository, previous).experiment
    add_release(
        repository, model_dir, redis, config, namespace=loaded.namespace, experiment=experiment,
        instances=instances_of(repository, previous),
    )  # fmt: skip
    pin_ensemble(repository, version)
    # The repository API over gRPC: with the (minutes long) load request held on Triton's HTTP front
    # end, one request of an HTTP client timed out in each of two runs here; none did with gRPC control.
    client = grpc.InferenceServerClient(triton_url)
    say(f"loading release {version}'s step models beside release {previous}, then the ensemble over them")
    try:
        # One load request: Triton loads the new release's step models (new models: the serving ones are
        # not touched), then swaps the ensemble to version N once all are ready; until then the running
        # ensemble keeps serving, and requests inside it finish on the old release. Reloading the serving
        # step models instead (new *versions* of the same models) failed requests here ("failed to find
        # the requested model version"), loading them one by one and concurrently alike.
        client.load_model(ENSEMBLE)
        ready = {step_model(s, version): "1" for s in STEPS} | {ENSEMBLE: str(ENSEMBLE_VERSION)}
        missing = [m for m, v in ready.items() if not client.is_model_ready(m, v)]
        serving = {s.model_name for s in client.get_model_config(ENSEMBLE).config.ensemble_scheduling.step}
        if serving != {step_model(s, version) for s in STEPS}:
            missing.append(f"{ENSEMBLE} still runs {sorted(serving)}")
        if missing:
            raise PromotionFailed(f"not ready after the load: {missing}")
    except (InferenceServerException, PromotionFailed) as exc:
        pin_ensemble(repository, previous)
        remove_release(repository, version)
        client.load_model(ENSEMBLE)  # back to the previous release on disk
        _unload(client, version)
        raise PromotionFailed(
            f"version {version} failed to load, version {previous} keeps serving: {exc}"
        ) from exc
    models_s = time.perf_counter() - t0
    store.activate(loaded.namespace)
    for old in Release.versions(repository):
        if old not in (version, previous):  # the previous release stays loaded for a rollback
            _unload(client, old)
            remove_release(repository, old)
    client.close()
    say(
        f"version {version} serving (namespace {loaded.namespace}); version {previous} kept loaded for rollback"
    )
    return PromotionReport(
        version, previous, loaded.namespace, features_s, models_s, time.perf_counter() - started
    )


def _unload(client, version: int) -> None:
    """Unload a release's step models (Triton lets requests in flight finish first)."""
    from tritonclient.utils import InferenceServerException

    for step in STEPS:
        try:
            client.unload_model(step_model(step, version))
        except InferenceServerException:  # never loaded
            pass


def triton_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a tritonserver at ``url`` (HTTP, host:port) answers that it is ready."""
    import tritonclient.http as http

    try:
        client = http.InferenceServerClient(url, connection_timeout=timeout_s)
        try:
            return bool(client.is_server_ready())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - connection refused, timeouts, HTTP errors: nobody serving here
        return False


def promote_or_mark(
    config: Config, source: str, model_dir: Path, progress: Callable[[str], None] | None = None
) -> PromotionReport | None:
    """Serve ``model_dir``: hot-swap it into the running `reels serve` of ``source`` (its repository and
    the configured Redis) and mark it serving. With no server answering, only mark it, so the next
    `reels serve` loads it, and return None. ``PromotionFailed``: the previous version keeps serving."""
    check_manifest(model_dir)
    say = progress or (lambda _m: None)
    models_root, version = model_dir.parent, int(model_dir.name)
    server = config.server
    repository = repository_dir(config, source)
    if not repository.exists() or not triton_answers(f"127.0.0.1:{server.http_port}"):
        say(
            f"no `reels serve` answering on port {server.http_port} with a repository in {repository}: "
            f"version {version} is marked serving and is what the next `reels serve` loads"
        )
        mark_serving(models_root, version)
        return None
    report = promote(
        repository, model_dir, f"127.0.0.1:{server.grpc_port}", server.redis.store(timeout_s=2.0),
        server.redis, config.serving, progress=say,
    )  # fmt: skip
    mark_serving(models_root, version)
    return report
