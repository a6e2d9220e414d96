"""Offline store -> features: time split, training-window aggregates, NVTabular fit on the training window,
transform of every window, history and sessions, written as model-ready parquet.

Output folder (``FeatureArtifacts``)::

    workflow/                  the fitted nvt.Workflow (vocabularies, stats): the single source of truth
    train/ valid/ test/        part-*.parquet + schema.pbtxt (Merlin schema, incl. history_video_ids)
    users.parquet              transformed user rows + latest history (for the online store)
    videos.parquet             transformed video rows (for the item tower and the online store)
    manifest.json              split boundaries, row counts, config, data fingerprint, library versions

On a Dask cluster (``client``): the workers read the store's parts by absolute URL, write the joined windows,
Categorify's vocabularies and the output parts themselves, and NVTabular fits and transforms through
``Workflow(client=...)``. So the output folder must be a local path or ``file://`` URL on a filesystem that
the caller and every worker mount at the same path (training then reads it with local file APIs); the store
may be any fsspec URL (``OfflineStore``). Paths are made absolute here: a worker runs in its own directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import numpy as np
import nvtabular as nvt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from merlin.io import Dataset
from merlin.schema import ColumnSchema, Schema, Tags
from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

from reels.workflows import history as hist
from reels.workflows.config import FeatureConfig
from reels.workflows.device import resolve_device, to_pandas
from reels.workflows.errors import InvalidInput
from reels.workflows.features import build_workflow, compute_aggregates, enrich_events, user_rows, video_rows
from reels.workflows.manifest import SPLITS, FeatureArtifacts, FeatureManifest, library_versions
from reels.workflows.offline_store import OfflineStore, TimeSplit
from reels.workflows.spec import HISTORY

if TYPE_CHECKING:
    from distributed import Client

ROWS_PER_PARTITION = 250_000

Progress = Callable[[str], None]


def _output_schema(workflow: nvt.Workflow, config: FeatureConfig) -> Schema:
    schema = workflow.output_schema
    video = schema["video_id"]
    history = ColumnSchema(
        HISTORY,
        tags=[Tags.CATEGORICAL, Tags.LIST, Tags.SEQUENCE, Tags.USER, Tags.ITEM_ID],
        properties={
            **video.properties,
            "value_count": {"min": config.history_length, "max": config.history_length},
        },
        dtype=video.dtype,
        is_list=True,
        is_ragged=False,
    )
    session = ColumnSchema("session_id", tags=[Tags.SESSION_ID], dtype=np.int64)
    return schema + Schema([history, session])


def _write_partition(
    frame, index: int, out: Path, split: TimeSplit, config: FeatureConfig
) -> tuple[dict[str, int], pd.DataFrame]:
    """History + sessions for one user-complete partition, then one parquet file per split."""
    frame = to_pandas(frame).reset_index(drop=True)
    if frame.empty:
        none = np.array([], dtype=np.int64)
        return dict.fromkeys(SPLITS, 0), hist.latest_history(none, none, none, none, config.history_length)
    user = frame["raw_user_id"].to_numpy()
    t = frame["event_time"].to_numpy()
    video = frame["video_id"].to_numpy()
    viewed = frame["view"].to_numpy().astype(bool)
    history, order = hist.previous_views(
        user, t, frame["event_id"].to_numpy(), video, viewed, config.history_length
    )
    sessions = hist.session_numbers(user, t, order)
    frame["session_id"] = user * 100_000 + np.minimum(sessions, 99_999)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    counts = {}
    for name in SPLITS:
        lo, hi = split.window(name)
        lo_s, hi_s = lo.value // 10**9, hi.value // 10**9
        rows = np.flatnonzero((t >= lo_s) & (t < hi_s))
        counts[name] = len(rows)
        if not len(rows):
            continue
        rows = rows[np.argsort(rank[rows])]  # (user, time) order
        table = pa.Table.from_pandas(frame.iloc[rows], preserve_index=False)
        table = table.append_column(HISTORY, hist.history_array(history[rows]))
        pq.write_table(table, out / name / f"part-{index:05d}.parquet")
    latest = hist.latest_history(user, video, viewed, order, config.history_length)
    return counts, latest


def local_folder(location: str | os.PathLike) -> Path:
    """The absolute local path of ``location``: a path (made absolute against this process's working
    directory) or a ``file://`` URL; ``InvalidInput`` for another protocol (a feature build is written by
    workers and read by training with local file APIs: use a shared mount)."""
    text = os.fspath(location)
    if "://" in text:
        protocol, path = text.split("://", 1)
        if protocol not in ("file", "local"):
            raise InvalidInput(
                f"feature builds go to a local path or a file:// URL (got {text}): training reads them with "
                "local file APIs, so put them on a filesystem every Dask worker mounts at the same path"
            )
        text = path
    return Path(os.path.abspath(text))


def build_features(
    store: OfflineStore,
    out_dir: str | Path,
    config: FeatureConfig | None = None,
    valid_days: int = 1,
    test_days: int = 1,
    device: str = "auto",
    progress: Progress | None = None,
    fitted: FeatureArtifacts | None = None,
    client: Client | None = None,
    event_fractions: tuple[float, float] | None = None,
) -> FeatureArtifacts:
    """Fit the workflow on the training window and write features for every window (see module doc).

    ``out_dir``: a local path or ``file://`` URL (``local_folder``). ``fitted``: reuse that build's fitted
    workflow instead of fitting a new one (its vocabularies and normalisation stats, the aggregates
    recomputed on this split's training window). The promotion gate uses it to encode the latest window for
    the serving version; such a build holds no ``workflow/``. ``client``: the Dask cluster NVTabular fits and
    transforms on (default: Dask's default client if one is open, else this process). ``event_fractions``:
    split by (validation, test) shares of the events instead of ``valid_days``/``test_days``."""
    config = config or FeatureConfig()
    say = progress or (lambda _msg: None)
    dev = resolve_device(device)
    out = local_folder(out_dir)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    split = store.split(valid_days, test_days, event_fractions)
    users = store.read_table("users")
    videos = store.read_table("videos")
    events = store.read_events()
    file_rows = store.part_rows("events")
    n_rows = sum(file_rows)

    say(f"aggregates over the training window {split.start.date()} .. {split.valid_start.date()}")
    train_raw = events[events["timestamp"] < split.valid_start]
    aggregates = compute_aggregates(train_raw, config)
    # Materialise the joined events once per window, in partitions of about ROWS_PER_PARTITION rows: the
    # workflow fit makes several passes and the transform one more, and re-reading + re-joining many small
    # day files each time dominates otherwise. Store files are day-ordered, so each window is a slice.
    enriched_root = staging / "_enriched"
    file_days = [pd.Timestamp(f.parent.name.split("=")[1]) for f in store.files("events")]
    window_dirs: dict[str, Path] = {}
    for name in SPLITS:
        lo, hi = split.window(name)
        picked = [i for i, day in enumerate(file_days) if lo <= day < hi]
        if not picked:
            continue
        rows = sum(file_rows[i] for i in picked)
        window = enrich_events(events.partitions[picked[0] : picked[-1] + 1], users, videos, aggregates)
        window = window.repartition(npartitions=max(1, math.ceil(rows / ROWS_PER_PARTITION)))
        window_dirs[name] = enriched_root / name
        window.to_parquet(
            window_dirs[name], write_index=False, name_function=lambda i: f"part-{i:05d}.parquet"
        )
    timings["aggregates_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    if fitted is None:
        say(f"fitting the NVTabular workflow on {dev}")
        workflow = build_workflow(config, stats_dir=str(staging / "_stats"), client=client)
        train_files = sorted(str(f) for f in window_dirs["train"].glob("part-*.parquet"))
        workflow.fit(Dataset(train_files, engine="parquet", cpu=dev == "cpu"))
        workflow.save(str(staging / "workflow"))
        shutil.rmtree(staging / "_stats", ignore_errors=True)
    else:
        say(f"reusing the workflow fitted in {fitted.root}")
        workflow = nvt.Workflow.load(str(fitted.workflow_dir), client=client)
    timings["fit_s"] = time.perf_counter() - t0

    say("transforming all windows, adding history and sessions")
    t0 = time.perf_counter()
    all_files = sorted(str(f) for d in window_dirs.values() for f in d.glob("part-*.parquet"))
    transformed = workflow.transform(Dataset(all_files, engine="parquet", cpu=dev == "cpu")).to_ddf()
    n_parts = max(1, math.ceil(n_rows / ROWS_PER_PARTITION))
    by_user = transformed.shuffle("raw_user_id", npartitions=n_parts)
    for name in SPLITS:
        (staging / name).mkdir()
    tasks = [
        dask.delayed(_write_partition)(part, i, staging, split, config)
        for i, part in enumerate(by_user.to_delayed())
    ]
    results = dask.compute(*tasks)
    counts = {name: sum(r[0][name] for r in results) for name in SPLITS}
    latest = pd.concat([r[1] for r in results], ignore_index=True)
    schema = _output_schema(workflow, config)
    for name in SPLITS:
        TensorflowMetadata.from_merlin_schema(schema).to_proto_text_file(str(staging / name))
    shutil.rmtree(enriched_root)
    timings["transform_s"] = time.perf_counter() - t0

    say("transforming user and video tables for the online store")
    user_table = workflow.get_subworkflow("user").transform(user_rows(users, aggregates))
    user_table = to_pandas(user_table)
    user_table["raw_user_id"] = users["user_id"].to_numpy()
    user_table = user_table.merge(latest, on="raw_user_id", how="left")
    empty = np.zeros(config.history_length, dtype=np.int64)
    user_table[HISTORY] = [h if isinstance(h, np.ndarray) else empty for h in user_table[HISTORY]]
    user_table.to_parquet(staging / "users.parquet", index=False)
    video_table = to_pandas(workflow.get_subworkflow("video").transform(video_rows(videos, aggregates)))
    video_table["raw_video_id"] = videos["video_id"].to_numpy()
    video_table.to_parquet(staging / "videos.parquet", index=False)

    manifest = FeatureManifest(
        created=pd.Timestamp.utcnow().isoformat(),
        store=str(store.root) if store.local else store.url,
        store_fingerprint=store.fingerprint(),
        device=dev,
        split=split.as_dict(),
        rows={"events": n_rows, **counts, "users": len(user_table), "videos": len(video_table)},
        feature_config=config,
        workflow_from=str(fitted.root.resolve()) if fitted is not None else None,
        aggregate_prior=aggregates.prior,
        columns={name: schema.column_names for name in SPLITS},
        timings={k: round(v, 3) for k, v in timings.items()},
        libraries=library_versions(),
    )
    (staging / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    say(f"features written to {out} ({counts})")
    return FeatureArtifacts(out)
