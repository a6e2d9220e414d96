"""The jobs behind the ``reels`` commands, as library calls over the typed ``Config``: fill a source's
offline store, build its features, train, evaluate, load Redis, consume and send events, measure creator
exposure, run an A/B simulation. Each takes the configuration and a source name, reports progress through
a callback and returns what it made; the CLI only parses, prints and turns errors into exit codes.

TensorFlow, NVTabular and Dask are imported inside the jobs that use them: `reels data` and `reels
send-events` should not pay seconds of start-up for a model stack they never touch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reels.deploy.config import Config
from reels.workflows.errors import InvalidInput, NotFound, ServiceUnavailable
from reels.workflows.manifest import FeatureArtifacts, library_versions
from reels.workflows.offline_store import OfflineStore

if TYPE_CHECKING:
    import pandas as pd

    from reels.feature_store.ingest import IngestReporter, IngestStats
    from reels.feature_store.store import LoadReport
    from reels.models.evaluation.abtest import SimulationRun, SimulationSpec
    from reels.models.train import TrainedModels
    from reels.workflows.sources import IngestReport

Progress = Callable[[str], None]
DATASETS = {"synthetic": "synthetic", "movielens": "movielens-100k"}  # names in docs/RESULTS.*


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda _m: None)


@contextlib.contextmanager
def redis_errors(doing: str) -> Iterator[None]:
    """Inside the block, a Redis connection or timeout error becomes ``ServiceUnavailable`` (exit 4)."""
    import redis

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"Redis unreachable while {doing}: {exc}") from exc


def offline_store(config: Config, source: str) -> OfflineStore:
    """A source's offline store, which must hold events (``NotFound`` names the command that fills it)."""
    store = OfflineStore(config.source_dir(source) / "store")
    if not store.has("events"):
        raise NotFound(f"no events in {store.root}: run `reels data {source}` first")
    return store


def features_of(config: Config, source: str) -> FeatureArtifacts:
    """A source's feature build as `reels features` writes it (it may not exist yet)."""
    return FeatureArtifacts(config.source_dir(source) / "features")


# ---- data, features, models -------------------------------------------------------------------------------
def import_source(
    config: Config,
    source: str,
    overwrite: bool = False,
    progress: Progress | None = None,
    days: Callable[[Iterable], Iterable] | None = None,
) -> IngestReport:
    """Fill a source's offline store: MovieLens-100k, or ``config.synthetic`` generated day by day
    (``days`` wraps the day iterator, e.g. with tqdm). ``AlreadyExists`` unless ``overwrite``."""
    from reels.workflows.sources import generate_synthetic, import_movielens

    say = _say(progress)
    root = config.source_dir(source) / "store"
    if source not in ("synthetic", "movielens"):  # never generate synthetic data over an imported source
        raise InvalidInput(f"{source!r} is an imported source: `reels data import {source} ...` refills it")
    if source == "movielens":
        say(f"importing MovieLens-100k into {root}")
        return import_movielens(root, overwrite=overwrite)
    synthetic = config.synthetic
    say(f"generating {synthetic.n_events:,} synthetic events over {synthetic.n_days} days into {root}")
    return generate_synthetic(root, synthetic, overwrite=overwrite, progress=days)


def build_features(config: Config, source: str, progress: Progress | None = None) -> FeatureArtifacts:
    """Fit the workflow on the source's training window and write its feature build (`reels features`)."""
    from reels.workflows.pipeline import build_features as build

    valid_days, test_days = config.split_days(source)
    return build(
        offline_store(config, source), features_of(config, source).root, config.features,
        valid_days=valid_days, test_days=test_days, device=config.device, progress=progress,
        event_fractions=config.event_fractions(source),
    )  # fmt: skip


def split_changed(config: Config, source: str) -> bool:
    """Whether the source's feature build was split otherwise than ``config`` now splits its store (the
    split settings changed, or events were appended since); False where there is no build or no store."""
    features = features_of(config, source)
    store = OfflineStore(config.source_dir(source) / "store")
    if not features.exists() or not store.has("events"):
        return False
    split = store.split(*config.split_days(source), config.event_fractions(source))
    return features.manifest().split != split.as_dict()


def ensure_features(config: Config, source: str, progress: Progress | None = None) -> FeatureArtifacts:
    """The source's feature build, filling the store and building the features first where missing."""
    features = features_of(config, source)
    if features.exists():
        return features
    if not OfflineStore(config.source_dir(source) / "store").has("events"):
        import_source(config, source, progress=progress)
    return build_features(config, source, progress)


def train(
    config: Config, source: str, progress: Progress | None = None
) -> tuple[FeatureArtifacts, TrainedModels]:
    """Train a new model version on the source's features (built first where missing)."""
    from reels.models.train import train as train_models

    features = ensure_features(config, source, progress)
    trained = train_models(
        features, config.source_dir(source) / "models", config.two_tower, config.ranker, config.index,
        device=config.device, progress=progress,
    )  # fmt: skip
    return features, trained


def evaluate(
    config: Config,
    sources: Sequence[str],
    fresh: bool = False,
    progress: Progress | None = None,
    search: bool | None = None,
) -> dict:
    """Train and evaluate against the baselines on each source (data and features rebuilt first with
    ``fresh`` or where missing): the results document of docs/RESULTS.json, less machine and command.
    With ``search`` (default: ``config.evaluation.searches``) every learned model's settings are first
    picked on the source's validation window within ``evaluation.search_budget_s`` (the record is each
    result's ``search``) and the models reported are trained with them; without, the configured settings.
    Each result's ``settings`` says which settings every model used and whether they were picked there."""
    from dataclasses import replace

    from reels.models.evaluation.offline import evaluate as evaluate_version
    from reels.models.evaluation.report import RATIO_TARGETS, targets
    from reels.models.evaluation.search import TWO_TOWER, settings
    from reels.models.evaluation.search import search as validation_search
    from reels.models.evaluation.tradeoff import evaluate_tradeoff
    from reels.workflows.errors import ConfigError

    say = _say(progress)
    searching = config.evaluation.searches if search is None else search
    if searching and config.evaluation.search_budget_s <= 0:
        raise ConfigError("the validation search needs evaluation.search_budget_s above 0 seconds")
    datasets, provenance = {}, {}
    for source in sources:
        if fresh or not features_of(config, source).exists():
            import_source(config, source, overwrite=True, progress=say)
            build_features(config, source, say)
        elif split_changed(config, source):
            say(f"{source}: the configured split differs from the feature build's: rebuilding the features")
            build_features(config, source, say)
        chosen, configs, fitted, record = config, None, {}, None
        if searching:
            say(f"{source}: validation search ({config.evaluation.search_budget_s:.0f} s budget)")
            found = validation_search(
                ensure_features(config, source, say), config.two_tower, config.ranker, config.evaluation, say
            )
            configs = found.ranker_configs(config.ranker)
            chosen = replace(
                config,
                two_tower=found.two_tower_config(config.two_tower),
                ranker=configs[found.served_architecture],
            )
            fitted, record = found.rankers, found.record
        features, trained = train(chosen, source, say)
        say(f"{source}: evaluating version {trained.directory.name}")
        result = evaluate_version(
            features, trained, config.evaluation, chosen.ranker, say,
            ranker_configs=configs, fitted_rankers=fitted,
        )  # fmt: skip
        result["settings"] = {
            "picked_on_validation": searching,
            TWO_TOWER: settings(chosen.two_tower, TWO_TOWER, record["chosen"][TWO_TOWER] if record else ()),
            "served_ranker": chosen.ranker.architecture,
        }
        if record:
            result["search"] = record
        say(f"{source}: re-rank settings, recall vs coverage (validation choice, test report)")
        result["tradeoff"] = evaluate_tradeoff(
            features, trained, config.evaluation, chosen.ranker, say, serving=config.serving
        )
        # Every data set's ranker target; the two-tower's stated ratios where RATIO_TARGETS has some.
        result["targets"] = targets(result["retrieval"], result["ranking"], RATIO_TARGETS.get(source, {}))
        manifest = features.manifest()
        name = DATASETS.get(source, source)  # an imported source goes by its own name
        datasets[name] = result
        provenance[name] = {
            "store_fingerprint": manifest.store_fingerprint,
            "split": manifest.split,
            "models": str(trained.directory),
        }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "seeds": {"synthetic": config.synthetic.seed, "two_tower": config.two_tower.seed,
                  "ranker": config.ranker.seed, "evaluation": config.evaluation.seed},
        "data": provenance,
        "libraries": library_versions(),
        "datasets": datasets,
    }  # fmt: skip


# ---- serving ----------------------------------------------------------------------------------------------
def export(config: Config, source: str) -> Path:
    """Write the Triton model repository of the source's serving version (`reels export`)."""
    from reels.deploy.stack import repository_dir
    from reels.deploy.triton.repository import export_repository
    from reels.models.registry import serving_model_dir

    return export_repository(
        serving_model_dir(config.source_dir(source) / "models"), repository_dir(config, source),
        config.server.redis, config.serving, experiment=config.experiment,
    )  # fmt: skip


def _refuse_under_a_server(config: Config, source: str) -> None:
    """``InvalidInput`` while a `reels serve` answers on the configured port: its release reads the
    namespace it was loaded with, and activating another would move the ingest workers away from it."""
    from reels.deploy.promotion import triton_answers

    port = config.server.http_port
    if triton_answers(f"127.0.0.1:{port}"):
        raise InvalidInput(
            f"a `reels serve` answers on port {port}: loading features under it would leave its release "
            f"reading a namespace the ingest workers no longer update. Use `reels promote {source} "
            f"<version>` to serve new features with their models, or stop the server first"
        )


def load_serving_features(config: Config, source: str) -> tuple[Path, LoadReport]:
    """Load the features of the source's serving version into the configured Redis (a new namespace,
    then the swap): the version's directory and the load report.

    Refused (``InvalidInput``) while a `reels serve` answers on the configured port: its release reads the
    namespace it was loaded with, and activating another would move the ingest workers away from it
    (the served seen lists and histories would freeze); `reels promote` swaps features and models together."""
    from reels.models.registry import serving_model_dir, trained_features

    _refuse_under_a_server(config, source)
    model_dir = serving_model_dir(config.source_dir(source) / "models")
    report = config.server.redis.store(timeout_s=2.0).load(trained_features(model_dir))
    return model_dir, report


def publish(config: Config, source: str) -> tuple[Path, LoadReport, set[str]]:
    """`reels publish`: what a fleet of tritonservers without `reels serve` needs for the source's serving
    version (the Kubernetes publish job): its features loaded into a new namespace, pinned and activated,
    and the model repository exported with its release pinned to that namespace. Servers still running
    the previous repository keep reading the previous publish's namespace (still pinned) until they
    restart on the new one; namespaces older than that are unpinned and dropped. Returns the repository,
    the load report and the namespaces pinned now.

    Refused (``InvalidInput``) while a `reels serve` answers on the configured port, as `reels load` is."""
    from reels.deploy.stack import repository_dir
    from reels.deploy.triton.release import Release
    from reels.deploy.triton.repository import export_repository, pinned_version
    from reels.models.registry import serving_model_dir, trained_features

    _refuse_under_a_server(config, source)
    repository = repository_dir(config, source)
    previous = None  # the namespace the repository being replaced reads (servers may still run it)
    if (repository / "reels" / "config.pbtxt").exists():
        previous = Release.read(repository, pinned_version(repository)).namespace
    model_dir = serving_model_dir(config.source_dir(source) / "models")
    store = config.server.redis.store(timeout_s=2.0)
    report = store.load(trained_features(model_dir), pin=True)
    export_repository(
        model_dir, repository, config.server.redis, config.serving, namespace=report.namespace,
        experiment=config.experiment,
    )  # fmt: skip
    keep = {report.namespace} | ({previous} if previous else set())
    store.set_pinned(keep)
    store.collect_garbage(keep=keep)
    return repository, report, keep


# ---- event stream -----------------------------------------------------------------------------------------
def consume_events(
    config: Config,
    source: str,
    consumer: str,
    seconds: float | None = None,
    drain: bool = False,
    to_offline: bool = True,
    claim_idle_ms: int = 10_000,
    metrics: IngestReporter | None = None,
    owned_shards: list[int] | None = None,
) -> IngestStats:
    """Run one ingest worker of the consumer group on the configured Redis (`reels ingest`) for
    ``seconds`` (None: forever), or until the stream is drained; applied events also go to the source's
    offline store unless ``to_offline`` is off. ``metrics``: where the worker reports (``IngestMetrics``).
    ``owned_shards``: which of the ``stream.shards`` shards it reads (None: all)."""
    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker

    features = features_of(config, source)
    history_length = features.manifest().history_length
    offline = OfflineStore(config.source_dir(source) / "store") if to_offline else None
    with redis_errors("consuming the event stream"):
        worker = IngestWorker(
            # No redis-py retries: the worker's own loop backs off and re-reads its pending messages.
            config.server.redis.store(timeout_s=2.0, retries=False), Vocabulary(features.workflow_dir, "video_id"),
            history_length, consumer=consumer, claim_idle_ms=claim_idle_ms, offline=offline, metrics=metrics,
            shards=config.stream.shards, owned_shards=owned_shards,
        )  # fmt: skip
        return worker.run(seconds=seconds, idle_exit=drain)


def send_events(config: Config, source: str, count: int) -> int:
    """Send the store's latest ``count`` events to the configured event stream, re-stamped now and with
    new ids (so ingest applies them as new); returns how many were sent."""
    import pandas as pd

    from reels.feature_store.streams import EventProducer

    recent = offline_store(config, source).read_events().tail(count, compute=True).reset_index(drop=True)
    now = pd.Timestamp.utcnow()
    # Ids far above any generated one, distinct per run (milliseconds of the send time).
    recent["event_id"] = recent["event_id"] + 10**12 + int(now.timestamp()) * 10**3
    recent["timestamp"] = now.tz_localize(None).floor("s")
    settings = config.server.redis
    with redis_errors("sending events"):
        producer = EventProducer(settings.client(timeout_s=2.0), settings.prefix, shards=config.stream.shards)
        return len(producer.send(recent.to_dict("records")))


# ---- monitoring and experiments ---------------------------------------------------------------------------
def exposure(config: Config, source: str, users: int = 300, k: int = 20) -> dict:
    """Creator exposure of ``users`` feeds of ``k`` served in process by the source's serving version from
    a temporary Redis (`reels exposure`; ``models.evaluation.exposure.exposure_report``)."""
    from reels.deploy.stack import temporary_store
    from reels.models.evaluation.abtest import sample_users
    from reels.models.evaluation.exposure import exposure_report
    from reels.models.registry import serving_model_dir
    from reels.models.serving.pipeline import InProcessPipeline

    features = features_of(config, source)
    sample = sample_users(features, users, seed=0, known_only=False)
    with temporary_store(features) as store:
        model_dir = serving_model_dir(config.source_dir(source) / "models")
        pipeline = InProcessPipeline(model_dir, store, config.serving)
        return exposure_report(pipeline, sample, k, int(time.time()))


def ab_dir(config: Config, source: str, directory: str | Path | None = None) -> Path:
    """Where an A/B simulation writes and the report reads: ``directory``, else ``<data>/<source>/ab``."""
    return Path(directory) if directory else config.source_dir(source) / "ab"


def simulate_ab(
    config: Config,
    source: str,
    spec: SimulationSpec,
    out: Path | None = None,
    configured_redis: bool = False,
    command: str = "",
    progress: Callable[[int], None] | None = None,
) -> SimulationRun:
    """Run an A/B simulation (``models.evaluation.abtest.run_simulation``) with the latest version on a
    temporary Redis loaded with the source's features, or with ``configured_redis`` on the configured
    one (e.g. `reels serve`'s, whose streams then stay there for `reels ingest` and `reels ab-report`)."""
    from reels.deploy.stack import temporary_store
    from reels.models.evaluation.abtest import run_simulation
    from reels.models.registry import latest_model_dir

    source_dir = config.source_dir(source)
    features = features_of(config, source)
    with contextlib.ExitStack() as stack:
        if configured_redis:
            stack.enter_context(redis_errors("simulating against the configured Redis"))
            store = config.server.redis.store(timeout_s=5.0)
            store.client.ping()  # fail now, not after serving every feed in fallback mode
        else:
            store = stack.enter_context(temporary_store(features))
        return run_simulation(
            store, latest_model_dir(source_dir / "models"), features, OfflineStore(source_dir / "store"),
            ab_dir(config, source, out), spec, config.serving, config.experiment,
            position_bias=config.synthetic.position_bias, command=command, progress=progress,
        )  # fmt: skip


def read_ab_logs(config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The exposure log and the event stream of the configured Redis (what `ab-report --redis` reads)."""
    from reels.models.evaluation.abtest import read_logs

    settings = config.server.redis
    with redis_errors("reading the exposure and event streams"):
        return read_logs(settings.client(timeout_s=5.0), settings.prefix)
