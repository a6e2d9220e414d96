"""Zero-downtime promotion of a trained version into a running Triton + Redis (``reels promote``, and
``reels retrain`` once the gate passes).

Order of operations, each step leaving the server able to answer every request:

1. load the version's features into a *new* Redis namespace, pinned (no activation drops it) but not
   yet active (the serving release keeps reading the namespace it is pinned to);
2. write the release (its own step models ``<step>_v<N>``, each moved into the repository in one
   rename, + ``serving-N.json`` pinned to that namespace). Triton polls the repository (it refuses
   load/unload requests, see ``deploy/triton_server.py``): it loads the new step models while the
   running ensemble and its step models keep answering untouched. Once all four are ready, the
   ensemble's config is rewritten (one rename) to name them, and Triton's next poll reloads the
   ensemble over them and swaps it in; requests already inside the old one finish on the old release;
3. activate the new namespace (the ingest workers follow it), keep the previous one for requests in
   flight and the previous release (kept loaded for a rollback), delete releases older than the
   previous one (Triton unloads what leaves the repository) and unpin their namespaces;
4. with ``mark``, point ``<models>/serving`` at the new version.

If the new release's models fail to load (or are not ready within ``LOAD_TIMEOUT_S``), the release is
removed and the ensemble never named it, so the serving version keeps serving. Events ingested between the feature build and step 3
are in the offline store but not in the new namespace's histories (the next build picks them up).

The journal: before each step, ``promotion-journal.json`` at the repository root records what is done
(written to a temporary file, fsynced, renamed, the directory fsynced). A promotion killed part-way is
reconciled by the next ``reels promote`` (``recover``, with Triton running) and by the next `reels serve`
start-up (which re-exports the repository: only the pointer is decided there). The rule: once Triton had
loaded the new release and swapped the ensemble to it (phase ``triton_loaded``), the promotion rolls
*forward* — that release was already answering every request, so the namespace is activated and the
pointer written, as the promotion would have; before that it rolls *back* — the previous release never
stopped serving, so the ensemble is pinned back to it and the new release, its step models and its
namespace are removed. Afterwards the pointer, the ensemble's release, that release's namespace and
the active namespace agree.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reels.deploy.config import Config
from reels.deploy.triton.release import ENSEMBLE, STEPS, Release, step_model
from reels.deploy.triton.repository import (
    ENSEMBLE_VERSION,
    STAMP,
    add_release,
    instances_of,
    pin_ensemble,
    pinned_version,
    remove_release,
    written_stamp,
)
from reels.feature_store.settings import RedisSettings
from reels.feature_store.store import OnlineStore, fault_point
from reels.models.registry import check_manifest, check_servable, fsync_dir, mark_serving
from reels.models.serving.config import ServingConfig
from reels.workflows.errors import InvalidInput, ReelsError
from reels.workflows.manifest import FeatureArtifacts

JOURNAL = "promotion-journal.json"
LOCK = ".promotion.lock"  # held by the one promotion (or reconciliation) running on a repository
# What a journal entry says is done, in order; each is written before the next step starts.
PHASES = ("started", "features_loaded", "release_written", "triton_loaded", "activated", "pointer_written")
ROLL_FORWARD_FROM = PHASES.index("triton_loaded")
Say = Callable[[str], None]


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
    finished_interrupted: bool = False  # an earlier promotion of this version, killed once Triton served it


class PromotionBusy(InvalidInput):
    """Another promotion into the same repository is running (the second one changes nothing)."""


@contextmanager
def promotion_lock(repository: Path) -> Iterator[None]:
    """Hold the repository's promotion lock for the block: promotions run one at a time, and a
    reconciliation never touches a journal a live promotion is still writing. ``PromotionBusy`` when
    another process holds it; the kernel releases it when its holder dies, SIGKILL included."""
    fd = os.open(Path(repository) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PromotionBusy(
                f"another promotion into {repository} is running: wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


# ---- the journal ------------------------------------------------------------------------------------------
def journal_path(repository: Path) -> Path:
    """Where a promotion into ``repository`` keeps its journal (a file at the root: Triton ignores it)."""
    return Path(repository) / JOURNAL


def read_journal(repository: Path) -> dict | None:
    """The journal of an unfinished promotion into ``repository`` (None: nothing to reconcile)."""
    path = journal_path(repository)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _write_journal(repository: Path, entry: dict, phase: str) -> None:
    """Record ``phase`` as done: atomically and durably (the entry survives a kill or a power cut)."""
    entry["phase"] = phase
    entry["written_at"] = time.time()
    path = journal_path(repository)
    tmp = path.with_name(f".{JOURNAL}.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(entry, indent=2))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def _clear_journal(repository: Path) -> None:
    journal_path(repository).unlink(missing_ok=True)
    fsync_dir(Path(repository))


# ---- promotion --------------------------------------------------------------------------------------------
@dataclass
class Replica:
    """One tritonserver a promotion goes through: the repository it polls and a gRPC client to it (None:
    not running, then only files are reconciled)."""

    repository: Path
    client: object | None = None


def promote(
    repository: Path,
    model_dir: Path,
    triton_url: str | None,
    store: OnlineStore,
    redis: RedisSettings,
    config: ServingConfig | None = None,
    progress: Say | None = None,
    mark: bool = False,
    replicas: list[tuple[Path, str]] | None = None,
) -> PromotionReport:
    """Hot-swap ``model_dir`` into the Triton serving ``repository`` (gRPC at ``triton_url``); with
    ``mark``, point ``<models>/serving`` at it once it serves. An unfinished earlier promotion into the
    same repository is reconciled first (``recover``). A version the gate rejected is refused.

    ``replicas``: (repository, gRPC url) of each tritonserver of a replica set (`reels serve --replicas`);
    ``repository`` is then the set's folder, which holds the journal and the lock. The release goes to one
    replica at a time (rolling): the next one starts loading only once the previous one serves it, so at
    most one replica pays for a load while the others answer at full speed, and a release that fails to
    load on one replica is rolled back on all of them."""
    import tritonclient.grpc as grpc

    say = progress or (lambda _m: None)
    started = time.perf_counter()
    manifest = check_manifest(model_dir)
    check_servable(model_dir)
    targets = replicas if replicas is not None else [(repository, triton_url)]
    # Only read-only calls (readiness, configs, the repository index): Triton polls the repository.
    clients = [grpc.InferenceServerClient(url) for _, url in targets]
    try:
        with promotion_lock(repository):
            members = [
                Replica(Path(repo), client) for (repo, _), client in zip(targets, clients, strict=True)
            ]
            return _promote(
                Path(repository), members, model_dir, manifest, store, redis, config, say, mark, started
            )
    finally:
        for client in clients:
            client.close()


def _promote(
    root: Path,
    replicas: list[Replica],
    model_dir: Path,
    manifest: dict,
    store: OnlineStore,
    redis: RedisSettings,
    config: ServingConfig | None,
    say: Say,
    mark: bool,
    started: float,
) -> PromotionReport:
    """``promote`` under the promotion lock of ``root`` (a repository, or a replica set's folder)."""
    recovered = recover(root, store, progress=say, replicas=replicas)
    version = int(manifest["version"])
    previous = _pinned(replicas)
    if version == previous:
        if recovered and recovered["outcome"] == "forward" and recovered["version"] == version:
            # The interrupted promotion was of this very version: finishing it is this promotion.
            if mark:
                mark_serving(Path(model_dir).parent, version)
            return PromotionReport(
                version, recovered["previous"], recovered["namespace"], 0.0, 0.0,
                time.perf_counter() - started, finished_interrupted=True,
            )  # fmt: skip
        raise InvalidInput(f"version {version} is already serving")
    features = FeatureArtifacts(Path(manifest["features"]["path"]))
    active = store.client.get(store.keys.active)
    entry = {
        "version": version, "previous": previous, "model_dir": str(Path(model_dir).resolve()),
        "namespace": None, "previous_active": active.decode() if active else None, "mark": mark,
        "repositories": [str(r.repository) for r in replicas], "swapped": [],
        # A release still there from before (promoting back to an older version): a rollback before
        # its files are rewritten leaves it, and its loaded models, alone.
        "release_existed": [Release.spec_path(r.repository, version).exists() for r in replicas],
    }  # fmt: skip
    _write_journal(root, entry, "started")
    try:
        say(f"loading the features of version {version} into a new Redis namespace")
        loaded = store.load(features, activate=False, pin=True)
        entry["namespace"] = loaded.namespace
        _write_journal(root, entry, "features_loaded")
        fault_point("promote:after_features_loaded")
        features_s = time.perf_counter() - started
        # The A/B test carries over: same variants and salt, so users keep their buckets across versions.
        experiment = Release.read(replicas[0].repository, previous).experiment
        instances = instances_of(replicas[0].repository, previous)
    except Exception:
        try:  # Triton was never asked to load anything: undo now rather than at the next start
            _roll_back(root, store, replicas, entry)
        except Exception:  # noqa: BLE001 - e.g. Redis still away: the journal stays for the next start
            pass
        raise
    t0 = time.perf_counter()
    for i, replica in enumerate(replicas):
        try:
            add_release(
                replica.repository, model_dir, redis, config, namespace=loaded.namespace,
                experiment=experiment, instances=instances,
            )  # fmt: skip
        except Exception:
            try:
                _roll_back(root, store, replicas, entry)
            except Exception:  # noqa: BLE001 - the journal stays for the next start
                pass
            raise
        if i == 0:
            _write_journal(root, entry, "release_written")
            fault_point("promote:after_release_written")
        where = f" on replica {i + 1} of {len(replicas)}" if len(replicas) > 1 else ""
        say(
            f"loading release {version}'s step models beside release {previous}, then the ensemble over them{where}"
        )
        _load_release(root, store, replicas, i, entry)
        entry["swapped"].append(str(replica.repository))
        _write_journal(root, entry, "release_written")
        if len(replicas) > 1:
            fault_point("promote:after_replica_swapped")
    _write_journal(root, entry, "triton_loaded")
    fault_point("promote:after_triton_load")
    models_s = time.perf_counter() - t0
    _finish(root, store, replicas, entry)
    say(
        f"version {version} serving (namespace {loaded.namespace}); version {previous} kept loaded for rollback"
    )
    return PromotionReport(
        version, previous, loaded.namespace, features_s, models_s, time.perf_counter() - started
    )


def _pinned(replicas: list[Replica]) -> int:
    """The release every replica's ensemble config names (they must agree)."""
    versions = {pinned_version(r.repository) for r in replicas}
    if len(versions) != 1:
        raise InvalidInput(f"the replicas serve different releases: {sorted(versions)}")
    return versions.pop()


LOAD_TIMEOUT_S = 600.0  # a release's step models load in 30-90 s on two busy cores
POLL_EVERY_S = 0.25


def _load_release(root: Path, store: OnlineStore, replicas: list[Replica], i: int, entry: dict) -> None:
    """Wait for replica ``i``'s Triton to load the new step models, then pin its ensemble to them and wait
    for the swap; on failure, every replica back to the previous release (``PromotionFailed``)."""
    from tritonclient.utils import InferenceServerException

    version, previous = entry["version"], entry["previous"]
    client, repository = replicas[i].client, replicas[i].repository
    try:
        # New models, not new versions of the serving ones: reloading the serving step models failed
        # requests here ("failed to find the requested model version"); new models leave them untouched.
        steps = [step_model(s, version) for s in STEPS]
        _wait(client, steps, lambda: _not_loaded_as_written(client, repository, steps))
        pin_ensemble(repository, version)
        _wait(client, [ENSEMBLE], lambda: _not_serving(client, version))
    except (InferenceServerException, PromotionFailed) as exc:
        _roll_back(root, store, replicas, entry)
        raise PromotionFailed(
            f"version {version} failed to load, version {previous} keeps serving: {exc}"
        ) from exc


def _wait(
    client, models: list[str], pending: Callable[[], list[str]], timeout_s: float = LOAD_TIMEOUT_S
) -> None:
    """Until Triton's poll has every model of ``models`` ready and ``pending()`` is empty; raises
    ``PromotionFailed`` at once when one of them failed to load, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {m["name"]: m for m in _index(client)}
        failed = [
            f"{name}: {states[name].get('reason')}"
            for name in models
            if states.get(name, {}).get("state") == "UNAVAILABLE"
            and states[name].get("reason") not in ("", None, "unloaded")
        ]
        if failed:
            raise PromotionFailed(f"Triton could not load {failed}")
        waiting = [m for m in models if states.get(m, {}).get("state") != "READY"] or pending()
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise PromotionFailed(f"not ready after {timeout_s:.0f} s: {waiting}")
        time.sleep(POLL_EVERY_S)


def _not_loaded_as_written(client, repository: Path, models: list[str]) -> list[str]:
    """The step models whose loaded config is not the one in the repository yet (an older writing)."""
    return [
        m
        for m in models
        if client.get_model_config(m).config.parameters[STAMP].string_value != written_stamp(repository, m)
    ]


def _index(client) -> list[dict]:
    """Triton's repository index (name, version, state, reason per model) as dicts."""
    from google.protobuf.json_format import MessageToDict

    index = client.get_model_repository_index()
    return MessageToDict(index, preserving_proto_field_name=True).get("models", [])


def _not_serving(client, version: int) -> list[str]:
    """What keeps Triton from serving release ``version`` through the ensemble (empty: it does)."""
    ready = {step_model(s, version): "1" for s in STEPS} | {ENSEMBLE: str(ENSEMBLE_VERSION)}
    missing = [m for m, v in ready.items() if not client.is_model_ready(m, v)]
    serving = {s.model_name for s in client.get_model_config(ENSEMBLE).config.ensemble_scheduling.step}
    if serving != {step_model(s, version) for s in STEPS}:
        missing.append(f"{ENSEMBLE} still runs {sorted(serving)}")
    return missing


def _finish(root: Path, store: OnlineStore, replicas: list[Replica], entry: dict) -> None:
    """Steps 3 and 4 once every replica serves the new release (idempotent: a roll forward runs them again)."""
    version, previous, namespace = entry["version"], entry["previous"], entry["namespace"]
    if namespace is not None and store.client.get(store.keys.active) != namespace.encode():
        store.activate(namespace)
    _write_journal(root, entry, "activated")
    for replica in replicas:
        for old in Release.versions(replica.repository):
            if old not in (version, previous):  # the previous release stays loaded for a rollback
                _retire(replica.repository, replica.client, old)  # Triton's next poll unloads it
    # Pinned namespaces no release reads any more: those of removed releases, and a re-promoted
    # release's former one (its spec now names the new load).
    unread = store.pinned() - set().union(*(_release_namespaces(r.repository) for r in replicas))
    for namespace in unread:
        store.unpin(namespace)
    if unread:  # the namespace active before the swap stays for requests still reading it
        store.collect_garbage(keep={entry.get("previous_active")})
    if entry.get("mark"):
        mark_serving(Path(entry["model_dir"]).parent, version)
        _write_journal(root, entry, "pointer_written")
    _clear_journal(root)


SETTLED = ("READY", "UNAVAILABLE")  # Triton is done loading (or unloading) the model
RETIRE_TIMEOUT_S = 180.0


def _retire(repository: Path, client, version: int, timeout_s: float = RETIRE_TIMEOUT_S) -> None:
    """Remove release ``version``'s files; with Triton running, only once Triton is done loading its step
    models, and return once Triton has unloaded them.

    A step model's folder must not leave the repository while Triton loads it: its python stub then
    fails to start ("Python model file not found") and tritonserver 2.51 waits for that stub forever,
    and with it every later load and unload of the repository (seen when a promotion killed just after
    writing a release was rolled back a second later). And a release's models must be gone before the
    same names can be written again (a promotion back to this version), or its load would race the
    unload. When Triton never settles within ``timeout_s`` the files are removed anyway: they cannot be
    worse than a load that never ends."""
    models = [step_model(s, version) for s in STEPS if (repository / step_model(s, version)).exists()]
    if client is not None:
        _wait_states(client, models, lambda _model, state: state in SETTLED, timeout_s)
    remove_release(repository, version)
    if client is not None:  # out of the index, or listed unavailable, and not answering either
        _wait_states(client, models, lambda model, state: state in (None, "", "UNAVAILABLE")
                     and not client.is_model_ready(model), timeout_s)  # fmt: skip


def _wait_states(
    client, models: list[str], done: Callable[[str, str | None], bool], timeout_s: float
) -> bool:
    """Until ``done(model, state)`` holds for each of ``models`` in Triton's repository index (state None:
    not in the index, "": found in the repository but not loaded yet); False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {m["name"]: m.get("state", "") for m in _index(client)}
        if all(done(model, states.get(model)) for model in models):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_EVERY_S)


def _release_namespaces(repository: Path) -> set[str]:
    """The namespaces the releases still in ``repository`` read."""
    spaces = {Release.read(repository, v).namespace for v in Release.versions(repository)}
    return {ns for ns in spaces if ns is not None}


def _roll_back(root: Path, store: OnlineStore | None, replicas: list[Replica], entry: dict) -> None:
    """Every replica back to the previous release: its ensemble pinned to it (with Triton running, until
    Triton's poll swapped it back), the new release deleted (Triton unloads it); then the new namespace
    unpinned and dropped, and the journal cleared."""
    version, previous, namespace = entry["version"], entry["previous"], entry["namespace"]
    existed = entry.get("release_existed")
    for i, replica in enumerate(replicas):
        repository, client = replica.repository, replica.client
        repinned = pinned_version(repository) != previous and Release.spec_path(repository, previous).exists()
        if repinned:
            pin_ensemble(repository, previous)
        # Before the features were in, a release there from before was not rewritten yet: it stays loaded.
        was_there = existed[i] if isinstance(existed, list) else bool(existed)
        if not (was_there and entry["phase"] == "started"):
            _retire(repository, client, version)
        if client is not None and repinned:  # Triton's poll swaps the ensemble back: wait for it
            _wait(client, [ENSEMBLE], lambda client=client: _not_serving(client, previous))
    if store is not None and namespace is not None:
        store.unpin(namespace)
        if store.client.get(store.keys.active) != namespace.encode():
            store.drop(namespace)
    _clear_journal(root)


def recover(
    repository: Path,
    store: OnlineStore | None = None,
    client=None,
    progress: Say | None = None,
    replicas: list[Replica] | None = None,
) -> dict | None:
    """Reconcile a promotion into ``repository`` that was killed part-way (its journal is there): roll
    forward when Triton had loaded the new release (and, with a ``client``, still serves it), else roll
    back (module docstring). Without a ``client`` (no Triton answers: `reels serve` start-up) only the
    pointer and the repository's files are reconciled; without a ``store`` Redis is left alone (the
    start-up load re-pins it). ``replicas``: a replica set's members (``repository`` is then the set's
    folder); forward only when every replica with a client serves the new release. Returns the journal
    entry with ``outcome`` "forward" or "back", None when there was nothing to reconcile."""
    entry = read_journal(repository)
    if entry is None:
        return None
    say = progress or (lambda _m: None)
    version, previous = entry["version"], entry["previous"]
    if replicas is None:
        clients = {str(Path(repository)): client}
        replicas = [Replica(Path(p), clients.get(p)) for p in entry.get("repositories", [str(repository)])]
    forward = PHASES.index(entry["phase"]) >= ROLL_FORWARD_FROM
    if forward and any(r.client is not None for r in replicas):
        from tritonclient.utils import InferenceServerException

        try:
            forward = not any(_not_serving(r.client, version) for r in replicas if r.client is not None)
        except InferenceServerException:
            forward = False
    if forward:
        say(
            f"an interrupted promotion of version {version} had loaded it into Triton "
            f"(phase {entry['phase']}): rolling forward"
        )
        if store is not None and all(r.client is not None for r in replicas):
            _finish(Path(repository), store, replicas, entry)
        else:
            if entry.get("mark"):
                mark_serving(Path(entry["model_dir"]).parent, version)
            _clear_journal(repository)
        return entry | {"outcome": "forward"}
    say(
        f"an interrupted promotion of version {version} stopped before Triton served it "
        f"(phase {entry['phase']}): rolling back to version {previous}"
    )
    _roll_back(Path(repository), store, replicas, entry)
    return entry | {"outcome": "back"}


def triton_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a tritonserver at ``url`` (HTTP, host:port) answers that it is live. Live, not ready: with
    strict readiness a server is "not ready" while its poll loads models (e.g. the release of a killed
    promotion), and it is still the server a promotion must go through."""
    import tritonclient.http as http

    try:
        client = http.InferenceServerClient(url, connection_timeout=timeout_s)
        try:
            return bool(client.is_server_live())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - connection refused, timeouts, HTTP errors: nobody serving here
        return False


def promote_or_mark(
    config: Config, source: str, model_dir: Path, progress: Say | None = None
) -> PromotionReport | None:
    """Serve ``model_dir``: hot-swap it into the running `reels serve` of ``source`` (its repository and
    the configured Redis) and mark it serving. With no server answering, only mark it, so the next
    `reels serve` loads it, and return None. ``PromotionFailed``: the previous version keeps serving;
    ``InvalidInput``: the gate rejected this version, nothing changes."""
    from reels.deploy.replicas import members_of, read_record
    from reels.deploy.stack import build_dir, repository_dir  # the stack imports this module

    check_servable(model_dir)
    check_manifest(model_dir)
    say = progress or (lambda _m: None)
    models_root, version = model_dir.parent, int(model_dir.name)
    server = config.server
    set_root = build_dir(config, source) / "replicas"
    record = read_record(set_root)
    if record is not None and triton_answers(f"127.0.0.1:{record['http_port']}"):
        # `reels serve --replicas N` runs: a rolling promotion, one replica at a time.
        return promote(
            set_root, model_dir, None, server.redis.store(timeout_s=2.0), server.redis, config.serving,
            progress=say, mark=True, replicas=members_of(record),
        )  # fmt: skip
    repository = repository_dir(config, source)
    if not repository.exists() or not triton_answers(f"127.0.0.1:{server.http_port}"):
        if repository.exists():
            with promotion_lock(repository):
                recover(repository, progress=say)  # no Triton: the pointer only
        say(
            f"no `reels serve` answering on port {server.http_port} with a repository in {repository}: "
            f"version {version} is marked serving and is what the next `reels serve` loads"
        )
        mark_serving(models_root, version)
        return None
    return promote(
        repository, model_dir, f"127.0.0.1:{server.grpc_port}", server.redis.store(timeout_s=2.0),
        server.redis, config.serving, progress=say, mark=True,
    )  # fmt: skip
