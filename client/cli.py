"""The ``reels`` command line: parses arguments, calls the library, prints, exits non-zero on failure."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from reels.workflows.errors import NotFound

# Quiet TensorFlow's C++ start-up chatter before anything imports it (merlin does, transitively).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)
logging.getLogger("absl").setLevel(logging.ERROR)
try:  # absl (used by TF's SavedModel writer) logs through its own handler
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
except ImportError:  # pragma: no cover - absl comes with TensorFlow
    pass
warnings.filterwarnings("ignore", message=".*PyTorch dtype mappings.*")
warnings.filterwarnings("ignore", message=".*NVTabular Dataset in CPU mode.*")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def _config(args: argparse.Namespace):
    from reels.client.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    return load_config(args.config, overrides)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from reels.client.config import as_dict

    print(yaml.safe_dump(as_dict(_config(args)), sort_keys=False), end="")
    return 0


def _ingest(config, source: str, overwrite: bool, console):
    from tqdm import tqdm

    from reels.workflows.sources import generate_synthetic, import_movielens

    root = config.source_dir(source) / "store"
    if source == "movielens":
        console.print(f"importing MovieLens-100k into [bold]{root}[/]")
        return import_movielens(root, overwrite=overwrite)
    cfg = config.synthetic
    console.print(f"generating {cfg.n_events:,} synthetic events over {cfg.n_days} days into [bold]{root}[/]")
    return generate_synthetic(
        root,
        cfg,
        overwrite=overwrite,
        progress=lambda it: tqdm(it, total=cfg.n_days, unit="day", leave=False),
    )


def cmd_data(args: argparse.Namespace) -> int:
    from rich.console import Console

    config = _config(args)
    if args.events:
        config = replace(config, synthetic=replace(config.synthetic, n_events=args.events))
    console = Console()
    report = _ingest(config, args.source, args.overwrite, console)
    console.print(
        f"{report.events:,} events, {report.users:,} users, {report.videos:,} videos over {report.days} days "
        f"in {report.seconds:.1f}s ({report.events_per_s:,.0f} events/s)"
    )
    return 0


def _features(config, source: str, console):
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.pipeline import build_features

    store = OfflineStore(config.source_dir(source) / "store")
    if not store.has("events"):
        raise NotFound(f"no events in {store.root}: run `reels data {source}` first")
    valid_days, test_days = config.split_days(source)
    with console.status("building features") as status:
        return build_features(
            store,
            config.source_dir(source) / "features",
            config.features,
            valid_days=valid_days,
            test_days=test_days,
            device=config.device,
            progress=lambda msg: status.update(msg),
        )


def cmd_features(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reels.client.render import print_feature_summary

    console = Console()
    artifacts = _features(_config(args), args.source, console)
    print_feature_summary(artifacts, console)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.console import Console

    from reels.client.render import print_feature_summary, print_recommendations, print_training_summary
    from reels.client.triton_client import ReelsClient
    from reels.workflows.spec import OOV

    config = _config(args)
    console = Console()
    for source in args.sources:
        console.rule(f"[bold]{source}: data and features")
        report = _ingest(config, source, overwrite=True, console=console)
        console.print(
            f"{report.events:,} events in {report.seconds:.1f}s ({report.events_per_s:,.0f} events/s)"
        )
        artifacts = _features(config, source, console)
        print_feature_summary(artifacts, console)
        if args.no_train:
            continue
        console.rule(f"[bold]{source}: training")
        _, trained = _train(config, source, console)
        print_training_summary(trained.manifest, trained.directory, console)
    if args.no_train or args.no_serve:
        return 0
    source = args.sources[0]
    console.rule(f"[bold]{source}: serving with Redis + Triton")
    users = pd.read_parquet(config.source_dir(source) / "features" / "users.parquet")
    active = users.loc[users["user_id"] > OOV, "raw_user_id"].head(2).tolist()
    videos = _video_table(config, source)
    with _stack(config, source, console) as (_, triton):
        with ReelsClient(triton.http_url, "http") as client:
            for user in active:
                print_recommendations(client.recommend(int(user), k=10, device="ios"), videos, console)
            print_recommendations(
                client.recommend(10**9, k=5), videos, console, title="A brand-new user (cold start)"
            )
        with ReelsClient(triton.grpc_url, "grpc") as client:
            recs = client.recommend(int(active[0]), k=10, device="ios")
            console.print(f"same request over gRPC: {list(recs.video_ids)}")
    return 0


def _ensure_features(config, source: str, console):
    """Features for ``source``, building the store and the features first when they are missing."""
    from reels.workflows.manifest import FeatureArtifacts
    from reels.workflows.offline_store import OfflineStore

    artifacts = FeatureArtifacts(config.source_dir(source) / "features")
    if artifacts.manifest_path.exists():
        return artifacts
    if not OfflineStore(config.source_dir(source) / "store").has("events"):
        _ingest(config, source, overwrite=False, console=console)
    return _features(config, source, console)


def _train(config, source: str, console):
    from reels.models.train import train

    features = _ensure_features(config, source, console)
    with console.status("training") as status:
        return features, train(
            features,
            config.source_dir(source) / "models",
            config.two_tower,
            config.ranker,
            config.index,
            device=config.device,
            progress=lambda msg: status.update(msg),
        )


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reels.client.render import print_training_summary

    console = Console()
    _, trained = _train(_config(args), args.source, console)
    print_training_summary(trained.manifest, trained.directory, console)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import time as _time

    from rich.console import Console

    from reels.client.bench.data import machine
    from reels.models.evaluation.offline import evaluate_ranking, evaluate_retrieval
    from reels.models.evaluation.report import targets, write
    from reels.workflows.manifest import library_versions

    config = _config(args)
    console = Console()
    datasets, provenance = {}, {}
    for source in args.sources:
        console.rule(f"[bold]{source}")
        if args.fresh or not (config.source_dir(source) / "features" / "manifest.json").exists():
            _ingest(config, source, overwrite=True, console=console)
            _features(config, source, console)
        features, trained = _train(config, source, console)
        with console.status("evaluating") as status:
            retrieval = evaluate_retrieval(features, trained, config.evaluation, lambda m: status.update(m))
            ranking = evaluate_ranking(features, trained, config.ranker, lambda m: status.update(m))
        name = "movielens-100k" if source == "movielens" else "synthetic"
        datasets[name] = {"retrieval": retrieval, "ranking": ranking}
        if source == "movielens":
            datasets[name]["targets"] = targets({**retrieval, **ranking})
        provenance[name] = {
            "store_fingerprint": features.manifest().store_fingerprint,
            "split": features.manifest().split,
            "models": str(trained.directory),
        }
        console.print(
            f"{name}: two_tower recall@20 {retrieval['two_tower']['recall@20']:.4f}, "
            f"als {retrieval['als']['recall@20']:.4f}, popularity {retrieval['popularity']['recall@20']:.4f}; "
            f"MMoE AUC view {ranking['mmoe']['auc_view']:.4f} vs shared-bottom {ranking['shared_bottom']['auc_view']:.4f}"
        )
    results = {
        "date": _time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "reels evaluate --sources " + " ".join(args.sources) + (" --fresh" if args.fresh else ""),
        "seeds": {"synthetic": config.synthetic.seed, "two_tower": config.two_tower.seed,
                  "ranker": config.ranker.seed, "evaluation": config.evaluation.seed},
        "data": provenance,
        "libraries": library_versions(),
        "datasets": datasets,
    }  # fmt: skip
    if args.docs:
        for path in write(results, Path(args.docs)):
            console.print(f"wrote {path}")
    return 0


def _stack(config, source: str, console):
    from reels.deploy.stack import serving_stack

    build = Path(config.server.build_dir) / source
    return serving_stack(
        config.source_dir(source), build, config.server, config.serving, progress=console.print,
        experiment=config.experiment,
    )  # fmt: skip


def _video_table(config, source: str):
    from reels.workflows.offline_store import OfflineStore

    return OfflineStore(config.source_dir(source) / "store").read_table("videos").set_index("video_id")


def cmd_export(args: argparse.Namespace) -> int:
    from reels.deploy.triton.repository import export_repository
    from reels.models.registry import serving_model_dir

    config = _config(args)
    s = config.server
    target = Path(config.server.build_dir) / args.source / "repository"
    repo = export_repository(
        serving_model_dir(config.source_dir(args.source) / "models"), target,
        s.redis, config.serving,
        experiment=config.experiment,
    )  # fmt: skip
    print(f"model repository written to {repo}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import time as _time

    from rich.console import Console

    config = _config(args)
    console = Console()
    with _stack(config, args.source, console) as (_, triton):
        console.print(
            f"[bold green]serving[/]: HTTP {triton.http_url}, gRPC {triton.grpc_url}, "
            f"metrics http://127.0.0.1:{config.server.metrics_port}/metrics — Ctrl-C to stop"
        )
        try:
            deadline = _time.monotonic() + args.seconds if args.seconds else None
            while deadline is None or _time.monotonic() < deadline:
                _time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reels.client.render import print_recommendations
    from reels.client.triton_client import ClientError, ReelsClient

    config = _config(args)
    port = config.server.http_port if args.protocol == "http" else config.server.grpc_port
    url = args.url or f"127.0.0.1:{port}"
    try:
        with ReelsClient(url, args.protocol) as client:
            recs = client.recommend(args.user, k=args.k, device=args.device, hour=args.hour)
    except ClientError as exc:
        print(f"reels: the server rejected the request: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - connection refused and friends
        print(
            f"reels: cannot reach Triton at {url} over {args.protocol}: {exc} (is `reels serve` running?)",
            file=sys.stderr,
        )
        return 1
    print_recommendations(recs, _video_table(config, args.source), Console())
    return 0


def _online_store(config):
    return config.server.redis.store(timeout_s=2.0)


def cmd_load(args: argparse.Namespace) -> int:
    """The serving version's features into the configured Redis (a new namespace, then the swap)."""
    from reels.models.registry import serving_model_dir, trained_features

    config = _config(args)
    model_dir = serving_model_dir(config.source_dir(args.source) / "models")
    features = trained_features(model_dir)
    report = _online_store(config).load(features)
    print(
        f"loaded {report.users:,} users, {report.videos:,} videos, {report.seen_lists:,} seen lists of version "
        f"{model_dir.name} into namespace {report.namespace} ({report.keys_per_s:,.0f} keys/s)"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:

    from reels.feature_store.encoding import Vocabulary
    from reels.feature_store.ingest import IngestWorker
    from reels.workflows.manifest import FeatureArtifacts

    config = _config(args)
    features = config.source_dir(args.source) / "features"
    history_length = FeatureArtifacts(features).manifest().history_length
    from reels.workflows.offline_store import OfflineStore

    offline = None if args.no_offline else OfflineStore(config.source_dir(args.source) / "store")
    worker = IngestWorker(
        _online_store(config), Vocabulary(features / "workflow", "video_id"), history_length,
        consumer=args.consumer, claim_idle_ms=args.claim_idle_ms, offline=offline,
    )  # fmt: skip
    stats = worker.run(seconds=args.seconds or None, idle_exit=args.drain)
    print(
        f"read {stats.read:,}, applied {stats.applied:,}, duplicates {stats.duplicates:,}, "
        f"dead-lettered {stats.dead_lettered:,}, claimed from dead consumers {stats.claimed:,}"
    )
    return 0


def cmd_send_events(args: argparse.Namespace) -> int:
    import pandas as pd

    from reels.feature_store.streams import EventProducer
    from reels.workflows.offline_store import OfflineStore

    config = _config(args)
    store = OfflineStore(config.source_dir(args.source) / "store")
    recent = store.read_events().tail(args.count, compute=True).reset_index(drop=True)
    recent["event_id"] = recent["event_id"] + 10**12 + int(pd.Timestamp.utcnow().timestamp()) * 10**3
    recent["timestamp"] = pd.Timestamp.utcnow().tz_localize(None).floor("s")
    ids = EventProducer(_online_store(config).client).send(recent.to_dict("records"))
    print(f"sent {len(ids):,} events (replays of the store's latest, re-stamped now) to the stream")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from reels.workflows.drift import drift_table

    config = _config(args)
    features = _ensure_features(config, args.source, Console())
    train = features.read_split("train")
    recent = pd.concat([features.read_split(w) for w in args.windows], ignore_index=True)
    table = drift_table(train, recent)
    out = Table(title=f"PSI: training window vs {'+'.join(args.windows)} (threshold {args.threshold})")
    for col in ("feature", "kind", "psi", ""):
        out.add_column(col, justify="right" if col == "psi" else "left")
    for row in table.itertuples():
        out.add_row(row.feature, row.kind, f"{row.psi:.4f}", "DRIFT" if row.psi > args.threshold else "")
    Console().print(out)
    drifted = table.loc[table["psi"] > args.threshold, "feature"].tolist()
    if drifted:
        print(f"reels: drift above {args.threshold} in {drifted}", file=sys.stderr)
        return 1
    return 0


def cmd_exposure(args: argparse.Namespace) -> int:
    import tempfile
    import time as _time

    import numpy as np
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from reels.deploy.redis_server import RedisServer, free_port
    from reels.feature_store.store import OnlineStore
    from reels.models.evaluation.exposure import exposure_report
    from reels.models.registry import serving_model_dir
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.workflows.manifest import FeatureArtifacts

    config = _config(args)
    source_dir = config.source_dir(args.source)
    users = pd.read_parquet(source_dir / "features" / "users.parquet")["raw_user_id"].to_numpy()
    sample = np.random.default_rng(0).choice(users, min(args.users, len(users)), replace=False)
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), port=free_port()) as srv:
        store = OnlineStore(srv.client(timeout_s=5.0))
        store.load(FeatureArtifacts(source_dir / "features"))
        pipeline = InProcessPipeline(serving_model_dir(source_dir / "models"), store, config.serving)
        report = exposure_report(pipeline, sample, args.k, int(_time.time()))
    table = Table(
        title=f"Creator exposure over {report['requests']} feeds of {report['k']} ({report['creators']} creators)"
    )
    for col in ("", "Gini", "top-1% creators' share", "creators exposed"):
        table.add_column(col, justify="right")
    for name in ("catalog", "before_rerank", "after_rerank"):
        r = report[name]
        table.add_row(
            name.replace("_", " "),
            f"{r['gini']:.3f}",
            f"{r['top1pct_share']:.1%}",
            f"{r['creators_exposed']:,}",
        )
    Console().print(table)
    return 0


def _ab_dir(config, args) -> Path:
    return Path(args.dir) if args.dir else config.source_dir(args.source) / "ab"


def cmd_ab_simulate(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import tempfile
    import time as _time

    import numpy as np
    import pandas as pd
    from rich.console import Console
    from tqdm import tqdm

    from reels.deploy.redis_server import RedisServer, free_port
    from reels.feature_store.store import OnlineStore
    from reels.feature_store.streams import EventProducer, read_exposures
    from reels.models.evaluation.abtest import read_events, simulate
    from reels.models.registry import latest_model_dir
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.workflows.manifest import FeatureArtifacts
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.spec import OOV
    from reels.workflows.synthetic import GroundTruth

    t0 = _time.time()
    config = _config(args)
    console = Console()
    source_dir = config.source_dir(args.source)
    store_root = source_dir / "store"
    if not (store_root / "ground_truth.npz").exists():
        raise NotFound(f"no ground truth in {store_root}: simulation needs `reels data synthetic`")
    features = FeatureArtifacts(source_dir / "features")
    users = pd.read_parquet(features.users_path)
    users = users.loc[users["user_id"] > OOV, "raw_user_id"].to_numpy()  # known (non-OOV) users
    sample = np.sort(
        np.random.default_rng(args.seed).choice(users, min(args.users, len(users)), replace=False)
    )
    start = pd.Timestamp(args.start) if args.start else pd.Timestamp(features.manifest().split["end"])
    durations = OfflineStore(store_root).read_table("videos").set_index("video_id")["duration_s"]
    out = _ab_dir(config, args)
    with contextlib.ExitStack() as stack:
        if args.redis:  # the configured (e.g. `reels serve`) Redis: streams stay there for ingest/report
            client = _online_store(config).client
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            client = stack.enter_context(RedisServer(tmp, port=free_port())).client(timeout_s=5.0)
            OnlineStore(client).load(features)
        store = OnlineStore(client)
        pipeline = InProcessPipeline(
            latest_model_dir(source_dir / "models"), store, config.serving, config.experiment
        )
        with tqdm(total=len(sample) * args.sessions, unit="feed", leave=False) as bar:
            events = simulate(
                pipeline, GroundTruth.load(store_root / "ground_truth.npz"), durations, sample, args.k,
                int(start.timestamp()), seed=args.seed, sessions=args.sessions,
                position_bias=config.synthetic.position_bias, progress=bar.update,
            )  # fmt: skip
        EventProducer(client).send(events.to_dict("records"))
        log = pipeline.rerank.exposures
        exposures, streamed = read_exposures(client), read_events(client)
    out.mkdir(parents=True, exist_ok=True)
    exposures.to_parquet(out / "exposures.parquet", index=False)
    streamed.to_parquet(out / "events.parquet", index=False)
    run = {
        "command": f"reels ab-simulate {args.source} --users {args.users} --sessions {args.sessions} "
        f"--k {args.k} --seed {args.seed}" + (f" --start {args.start}" if args.start else ""),
        "start": str(start), "feeds": int(exposures["request_id"].nunique()), "events": len(events),
        "exposures_written": log.written, "exposures_lost": log.failed, "seconds": round(_time.time() - t0, 1),
    }  # fmt: skip
    (out / "simulation.json").write_text(json.dumps(run, indent=2))
    split = exposures.drop_duplicates("request_id")["variant"].value_counts().to_dict()
    console.print(
        f"{len(sample):,} users x {args.sessions} session(s): {exposures['request_id'].nunique():,} feeds "
        f"({', '.join(f'{v} {n:,}' for v, n in split.items())}), {len(events):,} events sent to the stream; "
        f"exposure log: {log.written:,} written, {log.failed:,} lost"
    )
    console.print(f"wrote {out / 'exposures.parquet'} and {out / 'events.parquet'}; next: reels ab-report")
    return 0


def cmd_ab_report(args: argparse.Namespace) -> int:
    import json
    import time as _time

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from reels.client.bench.data import machine
    from reels.feature_store.streams import read_exposures
    from reels.models.evaluation.abtest import ab_report, join, markdown, read_events, rows

    config = _config(args)
    console = Console()
    simulated = "live traffic"
    if args.redis:
        client = _online_store(config).client
        exposures, events = read_exposures(client), read_events(client)
        origin = f"Redis streams on {config.server.redis_host}:{config.server.redis_port}"
    else:
        folder = _ab_dir(config, args)
        if not (folder / "exposures.parquet").exists():
            raise NotFound(f"no exposures in {folder}: run `reels ab-simulate` first (or use --redis)")
        exposures = pd.read_parquet(folder / "exposures.parquet")
        events = pd.read_parquet(folder / "events.parquet")
        origin = str(folder)
        if (folder / "simulation.json").exists():
            run = json.loads((folder / "simulation.json").read_text())
            simulated = (
                f"`{run['command']}` ({run['feeds']:,} feeds, {run['events']:,} events, {run['seconds']} s)"
            )
    order = [v for v in config.experiment.names if v in set(exposures["variant"])] or None
    report = ab_report(join(exposures, events), order)
    titles = {"metrics": f"A/B test {report['experiment']!r} per variant (from {origin})",
              "tests": "Differences vs the control: two-proportion z / Welch t per impression; Welch t per user",
              "exploration": "Exploration slots: logged outcome and IPS estimates of other slot policies"}  # fmt: skip
    for name, table in rows(report).items():
        out = Table(title=titles[name])
        for i, col in enumerate(table[0]):
            out.add_column(col, justify="left" if i == 0 else "right")
        for r in table[1:]:
            out.add_row(*r)
        console.print(out)
    if args.record:
        header = (
            f"### {report['experiment']} — {_time.strftime('%Y-%m-%d')}\n\n"
            f"Machine: {machine()}. Data: {simulated}; then `reels ab-report --record`; "
            f"control = {report['control']}; "
            f"variants: {config.experiment.variants}; serving: mmr_lambda {config.serving.mmr_lambda}, "
            f"exploration {config.serving.exploration_slots} slots, epsilon {config.serving.exploration_epsilon}."
        )
        path = Path(args.docs) / "EXPERIMENTS.md"
        existing = path.read_text() if path.exists() else "# Experiments\n"
        path.write_text(existing.rstrip("\n") + "\n\n" + markdown(report, header))
        console.print(f"recorded in {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import time as _time

    from rich.console import Console

    from reels.client.bench.data import machine
    from reels.models.evaluation.tune import markdown, tune_two_tower

    config = _config(args)
    console = Console()
    features = _ensure_features(config, args.source, console)
    with console.status("tuning on the validation window") as status:
        result = tune_two_tower(features, config.two_tower, progress=lambda m: status.update(m))
    header = (
        f"### Two-tower on {args.source}, validation window — {_time.strftime('%Y-%m-%d')}\n\n"
        f"Machine: {machine()}. Command: `reels tune {args.source}`."
    )
    text = markdown(result, header)
    console.print(text)
    if args.record:
        path = Path("docs") / "TUNING.md"
        existing = path.read_text() if path.exists() else "# Tuning (validation windows only)\n"
        path.write_text(existing.rstrip("\n") + "\n\n" + text)
        console.print(f"recorded in {path}")
    return 0


def _triton_answers(config) -> bool:
    import tritonclient.http as http

    try:
        client = http.InferenceServerClient(f"127.0.0.1:{config.server.http_port}", connection_timeout=2.0)
        ready = client.is_server_ready()
        client.close()
        return bool(ready)
    except Exception:  # noqa: BLE001 - connection refused and friends: no server
        return False


def _promote(config, source: str, model_dir: Path, console) -> int:
    """Hot-swap ``model_dir`` into the running `reels serve` of ``source`` (its repository and Redis) and
    mark it serving; with no server running, only mark it (the next `reels serve` loads it)."""
    from reels.deploy.promotion import PromotionFailed, promote
    from reels.models.registry import mark_serving

    models_root, version = model_dir.parent, int(model_dir.name)
    s = config.server
    repository = Path(s.build_dir) / source / "repository"
    if not repository.exists() or not _triton_answers(config):
        console.print(
            f"no `reels serve` answering on port {s.http_port} with a repository in {repository}: "
            f"version {version} is marked serving and is what the next `reels serve` loads"
        )
        mark_serving(models_root, version)
        return 0
    redis = s.redis
    try:
        report = promote(
            repository, model_dir, f"127.0.0.1:{s.grpc_port}", _online_store(config), redis, config.serving,
            progress=console.print,
        )  # fmt: skip
    except PromotionFailed as exc:
        print(f"reels: {exc}", file=sys.stderr)
        return 1
    mark_serving(models_root, version)
    console.print(
        f"hot swap {report.previous} -> {report.version} in {report.seconds:.1f} s (features "
        f"{report.features_load_s:.1f} s, models {report.models_load_s:.1f} s)"
    )
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from reels.deploy.retrain import retrain

    config = _config(args)
    console = Console()
    if args.if_drift:
        import pandas as pd

        from reels.models.registry import serving_model_dir, trained_features
        from reels.workflows.drift import drift_table

        served = trained_features(serving_model_dir(config.source_dir(args.source) / "models"))
        recent = pd.concat([served.read_split("valid"), served.read_split("test")], ignore_index=True)
        table = drift_table(served.read_split("train"), recent)
        worst = table.iloc[0]
        if worst["psi"] <= config.retrain.drift_threshold:
            console.print(
                f"no drift above {config.retrain.drift_threshold} (largest: {worst['feature']} {worst['psi']:.3f}): not retraining"
            )
            return 0
        console.print(
            f"drift: {worst['feature']} PSI {worst['psi']:.3f} > {config.retrain.drift_threshold}: retraining"
        )
    with console.status("retraining") as status:

        def say(message: str) -> None:
            status.update(message)
            console.log(message)

        result = retrain(config, args.source, args.scheduler, progress=say)
    table = Table(title=f"promotion gate: candidate {result.candidate_dir.name} vs serving "
                        f"{result.serving_dir.name if result.serving_dir else '(none)'} on the latest window")  # fmt: skip
    for column in ("metric", "candidate", "serving", "threshold", "passed"):
        table.add_column(column)
    for name, check in result.decision.checks.items():
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(name, fmt(check["candidate"]), fmt(check["serving"]), fmt(check["threshold"]),
                      "yes" if check["passed"] else "[red]no")  # fmt: skip
    console.print(table)
    console.print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    if args.record:
        from reels.deploy.retrain import record

        console.print(f"recorded in {record(result, ' '.join(['reels', *sys.argv[1:]]))}")
    if not result.promoted:
        console.print(
            f"[yellow]version {result.candidate_dir.name} is worse than the serving one: not promoted"
        )
        return 3
    console.print(f"[green]version {result.candidate_dir.name} passed the gate")
    if args.no_promote:
        from reels.models.registry import mark_serving

        mark_serving(result.candidate_dir.parent, int(result.candidate_dir.name))
        return 0
    return _promote(config, args.source, result.candidate_dir, console)


def cmd_promote(args: argparse.Namespace) -> int:
    from rich.console import Console

    from reels.models.registry import check_manifest

    config = _config(args)
    model_dir = config.source_dir(args.source) / "models" / str(args.version)
    check_manifest(model_dir)
    return _promote(config, args.source, model_dir, Console())


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "serving":
        from reels.client.bench.serving import main as bench_serving

        return bench_serving(args, _config(args))
    if args.bench == "swap":
        from reels.client.bench.swap import main as bench_swap

        return bench_swap(args, _config(args))
    if args.bench == "ingest":
        from reels.client.bench.ingest import main as bench_ingest

        return bench_ingest(args, _config(args))
    if args.bench == "store":
        from reels.client.bench.store import main as bench_store

        return bench_store(args)
    if args.bench == "models":
        from reels.client.bench.models import main as bench_models

        return bench_models(args)
    from reels.client.bench.data import main as bench_data

    return bench_data(args)


SOURCES = ("synthetic", "movielens")


def _add_source(parser: argparse.ArgumentParser, default: str = "synthetic") -> None:
    parser.add_argument(
        "source", choices=SOURCES, nargs="?", default=default, help=f"data set (default: {default})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reels",
        description="Reels recommender: data, features, training and serving (see README.md).",
    )
    parser.add_argument("--config", help="YAML config file layered over client/default_config.yaml")
    parser.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "gpu", "auto"], help="compute device (default: config, auto)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the effective configuration")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "data", help="fill the offline store from a source (synthetic generator or MovieLens-100k)"
    )
    p.add_argument("source", choices=["synthetic", "movielens"])
    p.add_argument("--events", type=int, help="synthetic: number of events (overrides synthetic.n_events)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "features", help="fit the NVTabular workflow on the training window and write features"
    )
    _add_source(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "demo", help="end to end: data, features, training, then Redis + Triton serving and recommendations"
    )
    p.add_argument("--no-train", action="store_true", help="stop after the feature workflows")
    p.add_argument("--no-serve", action="store_true", help="stop after training")
    p.add_argument(
        "--sources", nargs="+", choices=["synthetic", "movielens"], default=["synthetic", "movielens"],
        help="which data sets to run (default: both)",
    )  # fmt: skip
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train", help="train the two-tower and MMoE models and write a versioned artifact directory"
    )
    _add_source(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="train and evaluate against baselines; writes docs/RESULTS.{md,json} + plots"
    )
    p.add_argument(
        "--sources", nargs="+", choices=["synthetic", "movielens"], default=["movielens", "synthetic"]
    )
    p.add_argument("--fresh", action="store_true", help="rebuild the data and features first")
    p.add_argument("--docs", default="docs", help="where RESULTS.md/.json and plots/ go ('' to skip writing)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export", help="fill a Triton model repository (build/<source>/repository) from the latest models"
    )
    _add_source(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve", help="start redis-server + tritonserver (CPU) with the latest models; Ctrl-C stops"
    )
    _add_source(p)
    p.add_argument(
        "--seconds", type=float, default=0, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("recommend", help="ask the running ensemble for a user's feed and print it")
    p.add_argument("user", type=int, help="raw user id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--device", choices=["ios", "android", "web"])
    p.add_argument("--hour", type=int, help="0-23 (UTC); default: now")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--url", help="host:port (default: 127.0.0.1 and the configured port)")
    p.add_argument(
        "--source", choices=["synthetic", "movielens"], default="synthetic", help="for video metadata"
    )
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser(
        "ingest", help="consume the event stream into the online store (a consumer-group worker)"
    )
    _add_source(p)
    p.add_argument("--consumer", default=f"worker-{os.getpid()}", help="consumer name within the group")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (default: run forever)")
    p.add_argument("--drain", action="store_true", help="stop once the stream has nothing new")
    p.add_argument(
        "--no-offline", action="store_true", help="do not append applied events to the offline store"
    )
    p.add_argument(
        "--claim-idle-ms", type=int, default=10_000, help="claim messages a dead worker left pending"
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("send-events", help="send interaction events to the stream (replays of recent ones)")
    _add_source(p)
    p.add_argument("--count", type=int, default=1000)
    p.set_defaults(func=cmd_send_events)

    p = sub.add_parser(
        "drift", help="PSI per feature, training window vs recent windows; exit 1 above the threshold"
    )
    _add_source(p)
    p.add_argument("--windows", nargs="+", choices=["valid", "test"], default=["valid", "test"])
    p.add_argument("--threshold", type=float, default=0.25)
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser(
        "exposure", help="creator-exposure concentration (Gini, top-1% share) before/after re-rank"
    )
    _add_source(p)
    p.add_argument("--users", type=int, default=300, help="feeds to generate")
    p.add_argument("--k", type=int, default=20)
    p.set_defaults(func=cmd_exposure)

    p = sub.add_parser(
        "ab-simulate",
        help="simulated users (synthetic ground truth) get feeds and respond: exposures + events",
    )
    _add_source(p)
    p.add_argument("--users", type=int, default=2000, help="simulated users (known users, sampled)")
    p.add_argument("--sessions", type=int, default=1, help="feeds per user, one hour apart")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="user sample and response noise")
    p.add_argument("--start", help="first request time (default: the end of the data, so fresh videos exist)")
    p.add_argument("--redis", action="store_true", help="use the configured Redis instead of a temporary one")
    p.add_argument("--dir", help="where exposures/events parquet go (default: data/<source>/ab)")
    p.set_defaults(func=cmd_ab_simulate)

    p = sub.add_parser(
        "ab-report", help="per-variant view/like rate and watch time with CIs, tests, IPS for exploration"
    )
    _add_source(p)
    p.add_argument("--dir", help="folder written by ab-simulate (default: data/<source>/ab)")
    p.add_argument("--redis", action="store_true", help="read the exposure and event streams from Redis")
    p.add_argument("--record", action="store_true", help="append the tables to docs/EXPERIMENTS.md")
    p.add_argument("--docs", default="docs", help="folder of EXPERIMENTS.md")
    p.set_defaults(func=cmd_ab_report)

    p = sub.add_parser("tune", help="light two-tower tuning on the validation window (never the test window)")
    _add_source(p, default="movielens")
    p.add_argument("--record", action="store_true", help="append the table to docs/TUNING.md")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("load", help="load the serving version's features into the configured Redis")
    _add_source(p)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "retrain",
        help="features on Dask + both models from the offline store, gate on the latest window, hot-swap promotion",
    )
    _add_source(p)
    p.add_argument("--scheduler", help="an existing Dask scheduler address (default: config retrain.scheduler, "
                   "else a LocalCluster, or a LocalCUDACluster on GPUs)")  # fmt: skip
    p.add_argument(
        "--if-drift",
        action="store_true",
        help="retrain only when a feature drifted (retrain.drift_threshold)",
    )
    p.add_argument(
        "--no-promote", action="store_true", help="mark the version serving but do not hot-swap it"
    )
    p.add_argument("--record", action="store_true", help="append the gate table to docs/RETRAIN.md/.json")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("promote", help="serve a trained version: hot-swap it into a running `reels serve`")
    _add_source(p)
    p.add_argument("version", type=int, help="the model version (data/<source>/models/<version>)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("bench", help="benchmarks; results go to docs/BENCHMARKS.md and docs/BENCHMARKS.json")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bench.add_parser("data", help="generation events/s and NVTabular fit+transform time and peak memory")
    b.add_argument(
        "--events", type=int, nargs="+", default=[1_000_000, 10_000_000], help="event counts to run"
    )
    b.add_argument("--workdir", default="build/bench", help="scratch folder for stores and features")
    b.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("models", help="training examples/s; FAISS build, latency and recall per index type")
    b.add_argument("--features", default="data/synthetic/features", help="feature artifacts to train on")
    b.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="catalog sizes")
    b.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser(
        "store", help="Redis online store: bulk-load keys/s and one-user+500-videos read latency"
    )
    b.add_argument("--users", type=int, default=100_000)
    b.add_argument("--videos", type=int, default=100_000)
    b.add_argument("--reads", type=int, default=1000)
    b.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser(
        "serving", help="perf_analyzer on the ensemble (HTTP/gRPC) vs in-process vs compute floor"
    )
    b.add_argument("--source", choices=["synthetic", "movielens"], default="synthetic")
    b.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    b.add_argument("--seconds", type=float, default=5.0, help="perf_analyzer measurement window")
    b.add_argument(
        "--instances", type=int, nargs="+", default=[1], help="instances per model; the first is the full run"
    )
    b.add_argument("--requests", type=int, default=1000, help="distinct requests in the input data")
    b.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser(
        "swap", help="promote a trained version into a running Triton under perf_analyzer load"
    )
    b.add_argument("--source", choices=SOURCES, default="synthetic")
    b.add_argument("--version", type=int, help="the version to promote (default: the newest trained one)")
    b.add_argument("--seconds", type=float, default=30.0, help="length of the steady-state window")
    b.add_argument("--concurrency", type=int, default=2, help="perf_analyzer concurrency")
    b.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("ingest", help="event stream: ingest events/s and event-to-online-feature freshness")
    b.add_argument("--source", choices=SOURCES, default="synthetic")
    b.add_argument("--events", type=int, default=20_000)
    b.add_argument("--samples", type=int, default=300, help="events timed one by one for freshness")
    b.add_argument("--batch", type=int, default=2_000, help="events per worker read / script call")
    b.add_argument("--record", action="store_true", help="append the results to docs/BENCHMARKS.md and .json")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from reels.feature_store.store import FeatureStoreError
    from reels.workflows.device import DeviceUnavailable
    from reels.workflows.errors import ConfigError
    from reels.workflows.validate import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        ConfigError,
        ValidationError,
        DeviceUnavailable,
        FeatureStoreError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"reels: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
