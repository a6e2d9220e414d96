"""The Merlin Systems peer of the serving benchmark: one model version's trained artifacts served by NVIDIA
Merlin Systems' stock operators, in this process, executed by Merlin's ``LocalExecutor`` one request at a
time. It is the library's own way of chaining the same steps, measured beside ours on the same requests.

    python -m reels.client.bench.merlin_peer --source synthetic --requests 200 [--overlap 50]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: merlin-systems 23.8). The DAG has the shape of
Merlin's multi-stage recommender example::

    raw_user_id ─► LookupFeatures(users) ─┐
    device, hour, day_of_week ────────────┴► TransformWorkflow(user + context subgraphs) ─┐
    raw_user_id ─► LookupFeatures(history, seen) ─► history_video_ids ────────────────────┴► query features
    query features ─► PredictTensorflow(query tower) ─► QueryFaiss(items.faiss, top N)
        ─► FilterCandidates(seen) ─► LookupFeatures(videos) ─► HoursSince(request_time)
        ─► TransformWorkflow(video subgraph + video_age ops)
        ─► UnrollFeatures(query features, once per candidate) ─► PredictTensorflow(ranker)
        ─► TopKByScore(k) over the filtered candidate ids

Stock Merlin operators: ``TransformWorkflow``, ``PredictTensorflow``, ``QueryFaiss``, ``FilterCandidates``,
``UnrollFeatures``, run by ``merlin.dag.runtime.Runtime`` (its ``LocalExecutor``). Three small ones of
ours, where Merlin has none: ``LookupFeatures`` (rows of an in-memory table by key: stands in for Merlin's
``QueryFeast``, as this stack has no Feast repository), ``HoursSince`` (a candidate's age at request time)
and ``TopKByScore`` (the top ``k`` by the ranker's serving score, the weighted sum of its task heads;
Merlin's ``SoftmaxSampling`` samples an order instead of sorting, so its feeds are not comparable). Both
models run as stock ``PredictTensorflow`` over their SavedModels (the ranker's Keras call, which also lists
``position``, read only by the training-time bias tower: requests send 0).

Requests carry raw features, as Merlin's pipeline expects: each user's raw attributes and training-window
aggregates, history (encoded video ids, as the online store keeps them) and seen videos, and the
candidates' raw attributes, all rebuilt from the offline store the way the feature build made them, so
``TransformWorkflow`` re-runs the fitted NVTabular workflow on them per request. ``LocalExecutor`` keeps
no results between nodes: a node reached along several paths of the DAG runs once per path (the result's
``executions_per_request`` counts them; the DAG is kept as linear as Merlin's operators allow). Unknown
users get out-of-vocabulary attributes and the training prior (Merlin has no cold-start fallback).
Retrieval is the FAISS top ``candidates`` minus seen videos: no re-rank and no fresh-video reserve, which
are ours.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reels.client.bench.serving import _summary, request_users
from reels.workflows.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from merlin.dag import Graph

    from reels.feature_store.store import OnlineStore

INSTALL_HINT = "pip install -e '.[bench]'"
SEEN_LIMIT = 500  # newest seen videos per user, as the online store's bulk load keeps them
SEEN = "seen_video_ids"
UNKNOWN_VALUE = "<unknown>"  # a raw attribute value no vocabulary holds: Categorify maps it to OOV


def require_merlin_systems() -> None:
    """Raise ``NotFound`` naming the install command when merlin-systems is not installed."""
    try:
        import merlin.systems  # noqa: F401
    except ImportError:
        raise NotFound(f"the Merlin Systems peer needs merlin-systems 23.8: {INSTALL_HINT}") from None


# ---- raw features, rebuilt from the offline store ---------------------------------------------------------
def raw_tables(features_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Raw user rows (+ ``history_video_ids`` and ``seen_video_ids``, the newest ``SEEN_LIMIT`` raw ids)
    and raw video rows (+ ``upload_time_s``), indexed by raw id: the rows the feature build transformed,
    recomputed from its offline store, split and feature config. Third, the raw row of a user the build
    never saw (every attribute ``UNKNOWN_VALUE``, no events: the training-window prior), which the fitted
    workflow encodes as out-of-vocabulary."""
    from reels.workflows.features import compute_aggregates, user_rows, video_rows
    from reels.workflows.manifest import FeatureArtifacts
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.spec import HISTORY

    artifacts = FeatureArtifacts(Path(features_dir))
    if not artifacts.manifest_path.exists():
        raise NotFound(f"no feature build at {features_dir}: run `reels features` first")
    manifest = artifacts.manifest()
    store = OfflineStore(manifest.store)
    events = store.read_events(columns=["user_id", "video_id", "timestamp"]).compute()
    train = store.read_events(end=pd.Timestamp(manifest.split["valid_start"]))
    aggregates = compute_aggregates(train, manifest.feature_config)
    raw_users = store.read_table("users")
    users = user_rows(raw_users, aggregates).set_index("raw_user_id")
    histories = pd.read_parquet(artifacts.users_path, columns=["raw_user_id", HISTORY]).set_index(
        "raw_user_id"
    )
    users[HISTORY] = histories[HISTORY].reindex(users.index)
    recent = events.sort_values("timestamp", kind="stable").groupby("user_id").tail(SEEN_LIMIT)
    seen = {user: ids.to_numpy(np.int64) for user, ids in recent.groupby("user_id")["video_id"]}
    users[SEEN] = [seen.get(user) for user in users.index]
    videos = video_rows(store.read_table("videos"), aggregates)
    videos["upload_time_s"] = videos["upload_time"].astype("int64") // 10**9
    videos = videos.set_index("raw_video_id")
    stranger = raw_users.iloc[:1].copy()
    stranger["user_id"] = -1  # no events: user_rows fills the prior
    for name in stranger.select_dtypes(include=object).columns:
        stranger[name] = UNKNOWN_VALUE
    cold_user = user_rows(stranger, aggregates).drop(columns=["raw_user_id"]).iloc[0].to_dict()
    return users, videos, cold_user


# ---- the operators Merlin has none of -------------------------------------------------------------------
def _operators() -> dict[str, type]:
    """Our three small operators, defined on first use so this module imports without merlin-systems."""
    from merlin.dag import BaseOperator, ColumnSelector, DataFormats, Node
    from merlin.schema import ColumnSchema, Schema
    from merlin.table import NumpyColumn, TensorTable

    class LookupFeatures(BaseOperator):
        """The rows of an in-memory table (indexed by raw id) for the ids in the input column, in input
        order. Stands in for ``QueryFeast``. Without ``lists``, a pandas frame of ``columns``, unknown ids
        getting ``unknown`` (column -> value; ``KEY`` for the id itself); with them, a tensor table of those
        list columns only: a width makes the column dense, (rows, width), as a SavedModel's fixed-length list
        input takes it (unknown ids: zeros); None keeps it ragged (unknown ids: empty)."""

        KEY = object()

        def __init__(
            self,
            table: pd.DataFrame,
            columns: list[str],
            lists: dict[str, int | None] | None = None,
            unknown: dict[str, Any] | None = None,
        ):
            super().__init__()
            self.table = table
            self.columns = list(lists) if lists else list(columns)
            self.lists = lists or {}
            self.unknown = unknown or {}

        def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None) -> Schema:
            if self.lists:
                return Schema(
                    [ColumnSchema(c, dtype=np.int64, dims=(None, w)) for c, w in self.lists.items()]
                )
            strings = set(self.table.select_dtypes(include=object).columns)
            return Schema(
                [ColumnSchema(c, dtype=str if c in strings else self.table.dtypes[c]) for c in self.columns]
            )

        def transform(self, col_selector: ColumnSelector, transformable):
            keys = np.asarray(transformable[col_selector.names[0]].values).reshape(-1)
            rows = self.table.reindex(keys)
            if not self.lists:
                rows = rows[self.columns].reset_index(drop=True)
                missing = ~np.isin(keys, self.table.index)
                for name, value in self.unknown.items() if missing.any() else ():
                    column = rows[name].to_numpy(dtype=object)
                    column[missing] = keys[missing] if value is self.KEY else value
                    rows[name] = pd.Series(column).astype(self.table.dtypes[name])
                return rows
            out = {}
            for name, width in self.lists.items():
                values = [v if isinstance(v, np.ndarray) else None for v in rows[name]]
                if width is not None:
                    out[name] = np.stack([np.zeros(width, np.int64) if v is None else v for v in values])
                else:
                    values = [np.array([], np.int64) if v is None else v for v in values]
                    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
                    out[name] = NumpyColumn(np.concatenate(values).astype(np.int64), offsets)
            return TensorTable(out)

        @property
        def supported_formats(self) -> DataFormats:
            return DataFormats.PANDAS_DATAFRAME | DataFormats.NUMPY_TENSOR_TABLE

    class HoursSince(BaseOperator):
        """Adds ``video_age`` to its input columns: hours from ``since`` (unix seconds) to the request's
        ``request_time``, clipped at 0, float32 (the raw value the workflow's video_age ops encode)."""

        def __init__(self, since: str = "upload_time_s", request_time: str = "request_time"):
            super().__init__()
            self.since = since
            self.request_time = request_time

        @property
        def dependencies(self):
            return [self.request_time]

        def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None) -> Schema:
            kept = [c for c in input_schema if c.name != self.request_time]
            return Schema(kept + [ColumnSchema("video_age", dtype=np.float32)])

        def transform(self, col_selector: ColumnSelector, transformable):
            now = float(np.asarray(transformable[self.request_time].values).reshape(-1)[0])
            hours = (now - np.asarray(transformable[self.since].values, np.float64)) / 3600.0
            out = {name: column for name, column in transformable.items() if name != self.request_time}
            out["video_age"] = np.clip(hours, 0.0, None).astype(np.float32)
            return TensorTable(out)

        @property
        def supported_formats(self) -> DataFormats:
            return DataFormats.NUMPY_TENSOR_TABLE

    class TopKByScore(BaseOperator):
        """The ``k`` input ids with the highest weighted sum of task predictions (the ranker's serving
        score), best first: ``ordered_ids`` and ``ordered_scores``, shaped (1, k) like SoftmaxSampling's."""

        def __init__(self, predictions: Node, weights: dict[str, float], k: int):
            super().__init__()
            self.predictions = predictions[list(weights)]
            self.weights = dict(weights)
            self.k = k

        @property
        def dependencies(self):
            return self.predictions

        def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None) -> Schema:
            return Schema(
                [
                    ColumnSchema("ordered_ids", dtype=np.int64, dims=(None, self.k)),
                    ColumnSchema("ordered_scores", dtype=np.float32, dims=(None, self.k)),
                ]
            )

        def transform(self, col_selector: ColumnSelector, transformable):
            ids_name = next(n for n in transformable.columns if n not in self.weights)
            ids = np.asarray(transformable[ids_name].values).reshape(-1)
            score = sum(w * np.asarray(transformable[t].values).reshape(-1) for t, w in self.weights.items())
            best = np.argsort(-score, kind="stable")[: self.k]
            return TensorTable(
                {
                    "ordered_ids": ids[best].astype(np.int64).reshape(1, -1),
                    "ordered_scores": score[best].astype(np.float32).reshape(1, -1),
                }
            )

        @property
        def supported_formats(self) -> DataFormats:
            return DataFormats.NUMPY_TENSOR_TABLE

    return {"LookupFeatures": LookupFeatures, "HoursSince": HoursSince, "TopKByScore": TopKByScore}


# ---- the DAG ------------------------------------------------------------------------------------------------
def _video_age_workflow(workflow):
    """The fitted ops that encode ``video_age`` (LogOp >> Normalize), as a workflow of their own."""
    import nvtabular as nvt
    from nvtabular import ops

    stack, seen = [workflow.get_subworkflow("context").output_node], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.op, ops.Normalize) and "video_age" in (node.op.means or {}):
            return nvt.Workflow(node)
        stack.extend(node.parents_with_dependencies)
    raise NotFound("the fitted workflow has no Normalize over video_age")


def _combined(workflow, *parts):
    """One workflow of the fitted ``parts`` (their outputs side by side), its schema from ``workflow``'s
    inputs: one TransformWorkflow instead of one per part."""
    import nvtabular as nvt

    node = parts[0].output_node
    for part in parts[1:]:
        node = node + part.output_node
    combined = nvt.Workflow(node)
    combined.graph.construct_schema(workflow.input_schema)
    return combined


def build_graph(model_dir: Path, features_dir: Path, k: int, candidates: int) -> tuple[Graph, dict[str, Any]]:
    """The Merlin Systems DAG over one model version (see the module doc) and what it is made of:
    ``operators`` (class names, stock or ours) and ``executions_per_request`` (per operator, how many
    times ``LocalExecutor`` runs it for one request)."""
    require_merlin_systems()
    import nvtabular as nvt
    from merlin.dag import Graph, Node
    from merlin.schema import ColumnSchema, Schema
    from merlin.systems.dag.ops.faiss import QueryFaiss
    from merlin.systems.dag.ops.session_filter import FilterCandidates
    from merlin.systems.dag.ops.tensorflow import PredictTensorflow
    from merlin.systems.dag.ops.unroll_features import UnrollFeatures
    from merlin.systems.dag.ops.workflow import TransformWorkflow

    from reels.workflows.spec import HISTORY

    ours = _operators()
    model_dir, features_dir = Path(model_dir), Path(features_dir)
    for artifact in ("query_tower", "ranker", "items.faiss", "manifest.json"):
        if not (model_dir / artifact).exists():
            raise NotFound(f"{model_dir} has no {artifact}: not a trained model version")
    for artifact in ("workflow", "manifest.json", "users.parquet"):
        if not (features_dir / artifact).exists():
            raise NotFound(f"{features_dir} has no {artifact}: not a feature build (run `reels features`)")
    weights = json.loads((model_dir / "manifest.json").read_text())["config"]["ranker"]["score_weights"]
    workflow = nvt.Workflow.load(str(features_dir / "workflow"))
    users, videos, cold_user = raw_tables(features_dir)
    history_length = next(len(h) for h in users[HISTORY] if isinstance(h, np.ndarray))
    query_workflow = _combined(
        workflow,
        workflow.get_subworkflow("user"),
        nvt.Workflow.load(str(features_dir / "workflow"))  # remove_inputs edits the graph: its own copy
        .get_subworkflow("context")
        .remove_inputs(["position", "video_age"]),
    )
    candidate_workflow = _combined(workflow, workflow.get_subworkflow("video"), _video_age_workflow(workflow))
    context = ["device", "hour", "day_of_week"]
    user_columns = [c for c in query_workflow.input_schema.column_names if c not in context]
    video_columns = [c for c in candidate_workflow.input_schema.column_names if c != "video_age"]

    lookup = ours["LookupFeatures"]
    ops = {  # label -> operator, the labels naming them in executions_per_request
        "LookupFeatures(users)": lookup(users, user_columns, unknown={**cold_user, "user_id": lookup.KEY}),
        "LookupFeatures(history, seen)": lookup(users, [], lists={HISTORY: history_length, SEEN: None}),
        "TransformWorkflow(user, context)": TransformWorkflow(query_workflow),
        "PredictTensorflow(query_tower)": PredictTensorflow(str(model_dir / "query_tower")),
        "QueryFaiss": QueryFaiss(str(model_dir / "items.faiss"), topk=candidates),
        "LookupFeatures(videos)": lookup(videos, video_columns + ["upload_time_s"]),
        "HoursSince": ours["HoursSince"](),
        "TransformWorkflow(video, video_age)": TransformWorkflow(candidate_workflow),
        "PredictTensorflow(ranker)": PredictTensorflow(str(model_dir / "ranker")),
    }
    ops["QueryFaiss"].load_artifacts(None)  # None: read the index where index_path says
    # Each node below feeds the next only, where Merlin allows: LocalExecutor keeps no results, so a node
    # with two consumers runs twice.
    user_lists = ["raw_user_id"] >> ops["LookupFeatures(history, seen)"]
    raw_query = (["raw_user_id"] >> ops["LookupFeatures(users)"]) + context
    # The history first: the executor converts a `+` node's inputs to the format of its first one, and a
    # pandas round trip would turn the dense (1, L) history into a ragged list the query tower refuses.
    query = user_lists[HISTORY] + (raw_query >> ops["TransformWorkflow(user, context)"])
    # The query tower takes exactly its own inputs (Merlin refuses extra columns): the ranker's user rate
    # features are not among them.
    tower_inputs = ops["PredictTensorflow(query_tower)"].input_schema.column_names
    filtered = (
        query[tower_inputs]
        >> ops["PredictTensorflow(query_tower)"]
        >> ops["QueryFaiss"]
        >> FilterCandidates(filter_out=user_lists[SEEN])
    )
    candidate_features = (
        filtered
        >> ops["LookupFeatures(videos)"]
        >> ops["HoursSince"]
        >> ops["TransformWorkflow(video, video_age)"]
    )
    # position: an input of the ranker's call signature that only its training-time bias tower reads.
    # (`query + [...]` would add to `query` itself: `+` on a `+` node appends in place.)
    unrolled = Node.construct_from(["position"]) + query
    predictions = (
        candidate_features >> UnrollFeatures("video_id", unrolled) >> ops["PredictTensorflow(ranker)"]
    )
    ops["FilterCandidates"] = filtered.op
    ops["UnrollFeatures"] = predictions.parents[0].op
    ops["TopKByScore"] = ours["TopKByScore"](predictions, weights, k)
    graph = Graph(filtered >> ops["TopKByScore"])
    graph.construct_schema(
        Schema(
            [
                ColumnSchema("raw_user_id", dtype=np.int64),
                ColumnSchema("device", dtype=str),
                ColumnSchema("hour", dtype=np.int64),
                ColumnSchema("day_of_week", dtype=np.int64),
                ColumnSchema("request_time", dtype=np.int64),
                ColumnSchema("position", dtype=np.int64),
            ]
        )
    )
    labels = {id(op): label for label, op in ops.items()}
    executions: Counter[str] = Counter()
    pending = [graph.output_node]
    while pending:  # the executor's own recursion: every parent and dependency, once per path
        node = pending.pop()
        if id(node.op) in labels:
            executions[labels[id(node.op)]] += 1
        pending.extend(node.parents_with_dependencies)
    stock = [label for label in labels.values() if type(ops[label]).__module__.startswith("merlin")]
    return graph, {
        "operators": list(ops),
        "custom_operators": [label for label in ops if label not in stock],
        "executions_per_request": dict(executions),
    }


def request_devices(n: int) -> np.ndarray:
    """Devices for ``n`` requests, drawn as the serving benchmark's perf_analyzer input draws them (a
    request always names one here: NVTabular's Categorify fails on a one-row all-null column)."""
    return np.random.default_rng(1).choice(["ios", "android", "web"], n)


def requests_for(users: np.ndarray, devices: np.ndarray, request_time_s: int | None = None) -> list:
    """One Merlin request table per user: raw user id, device, the hour and day of week of the request
    time (now when None), the request time, and position 0 (padding)."""
    from merlin.table import TensorTable

    tables = []
    for user, device in zip(users, devices, strict=True):
        now = int(time.time()) if request_time_s is None else int(request_time_s)
        tables.append(
            TensorTable(
                {
                    "raw_user_id": np.array([user], dtype=np.int64),
                    "device": np.array([device], dtype=object),
                    "hour": np.array([(now // 3600) % 24], dtype=np.int64),
                    "day_of_week": np.array([(now // 86400 + 3) % 7], dtype=np.int64),  # Monday = 0
                    "request_time": np.array([now], dtype=np.int64),
                    "position": np.zeros(1, dtype=np.int64),
                }
            )
        )
    return tables


def recommend(graph: Graph, request) -> tuple[np.ndarray, np.ndarray]:
    """One request through the DAG with Merlin's stock runtime (``LocalExecutor``): raw video ids, scores."""
    from merlin.dag.runtime import Runtime

    out = Runtime().transform(graph, request)
    return np.asarray(out["ordered_ids"].values).reshape(-1), np.asarray(
        out["ordered_scores"].values
    ).reshape(-1)


def merlin_systems_pipeline(
    model_dir: Path, features_dir: Path, users: np.ndarray, k: int, candidates: int
) -> dict:
    """The Merlin Systems pipeline over one model version, timed per request over ``users`` (sequential,
    concurrency 1, after 5 warm-up requests): p50/p95/p99 ms and requests/s as the serving benchmark's other
    paths report them, plus the DAG's operators, per-request executions and its build time. Raises
    ``NotFound`` when merlin-systems or an artifact is missing, ``InvalidInput`` on an empty ``users``,
    ``k`` < 1 or ``candidates`` < ``k``."""
    if len(users) == 0 or k < 1 or candidates < k:
        raise InvalidInput(
            f"need users, k >= 1 and candidates >= k (got {len(users)} users, k={k}, {candidates})"
        )
    started = time.perf_counter()
    graph, about = build_graph(model_dir, features_dir, k, candidates)
    build_s = time.perf_counter() - started
    summary = time_requests(graph, users)
    return {**summary, **about, "k": k, "candidates": candidates, "requests": len(users), "build_s": build_s}


def time_requests(graph: Graph, users: np.ndarray, warm_up: int = 5) -> dict:
    """p50/p95/p99 ms and requests/s of ``graph`` over one request per user, sequentially (the first
    ``warm_up`` requests run once more before, untimed)."""
    requests = requests_for(users, request_devices(len(users)))
    for request in requests[:warm_up]:
        recommend(graph, request)
    latencies, started = [], time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        recommend(graph, request)
        latencies.append((time.perf_counter() - t0) * 1000)
    return _summary(latencies, time.perf_counter() - started)


def overlap_with_in_process(
    graph: Graph, model_dir: Path, store: OnlineStore, users: np.ndarray, k: int
) -> dict[str, float | int]:
    """How many of the peer's top ``k`` our in-process pipeline (SavedModel ranker) also returns for the
    same requests (same user, device and request time), averaged over ``users`` that the store knows:
    ``ranking_overlap`` against our ranking step's top ``k`` by score (before the re-rank), ``feed_overlap``
    against the feed we serve (after MMR, caps and exploration), both as shares of ``k``."""
    from reels.models.serving.config import ServingConfig
    from reels.models.serving.pipeline import InProcessPipeline
    from reels.models.serving.request import Fallback, Request

    pipeline = InProcessPipeline(
        model_dir, store, ServingConfig(ranker_backend="savedmodel", log_exposures=False)
    )
    now = int(time.time())
    devices = request_devices(len(users))
    ranking, feed, compared = [], [], 0
    for user, device, request in zip(users, devices, requests_for(users, devices, now), strict=True):
        ours = Request(int(user), k, device=str(device), request_time_s=now)
        query = pipeline.feature_transform(ours.validate(pipeline.config.max_k))
        if query.fallback != Fallback.NONE:  # cold start: we serve trending, the peer has no fallback
            continue
        peer_ids, _ = recommend(graph, request)
        candidates, retrieval_scores = pipeline.retrieval(query, query.seen)
        ids, scores, _, _ = pipeline.ranking(query, candidates, retrieval_scores)
        ranked = ids[np.argsort(-scores, kind="stable")[:k]]
        served = pipeline.recommend(Request(int(user), k, device=str(device), request_time_s=now)).video_ids
        ranking.append(len(np.intersect1d(peer_ids, ranked)) / k)
        feed.append(len(np.intersect1d(peer_ids, served)) / k)
        compared += 1
    if not compared:
        raise InvalidInput("none of the users is known to the store: nothing to compare")
    return {
        "users_compared": compared,
        "ranking_overlap": float(np.mean(ranking)),
        "ranking_overlap_min": float(np.min(ranking)),
        "feed_overlap": float(np.mean(feed)),
        "feed_overlap_min": float(np.min(feed)),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure the peer on the serving version of ``--source`` and print its summary as JSON;
    ``--overlap N`` also compares N users' top k with the in-process pipeline's (a scratch redis-server)."""
    import tempfile

    from reels.client.config import load_config
    from reels.models.registry import serving_model_dir

    parser = argparse.ArgumentParser(
        prog="python -m reels.client.bench.merlin_peer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=None, help="default: the serving config's")
    parser.add_argument("--overlap", type=int, default=0, metavar="N", help="users to compare with ours")
    parser.add_argument("--config", default=None, help="reels config file (default: the packaged one)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    source_dir = config.source_dir(args.source)
    model_dir = serving_model_dir(source_dir / "models")
    features_dir = source_dir / "features"
    candidates = args.candidates or config.serving.candidates
    if args.requests < 1 or args.k < 1 or candidates < args.k:
        parser.error("need --requests >= 1, --k >= 1 and --candidates >= --k")
    started = time.perf_counter()
    graph, about = build_graph(model_dir, features_dir, args.k, candidates)
    build_s = time.perf_counter() - started
    result = {
        "model_dir": str(model_dir),
        **time_requests(graph, request_users(features_dir, args.requests)),
        **about,
        "k": args.k,
        "candidates": candidates,
        "requests": args.requests,
        "build_s": build_s,
    }
    if args.overlap:
        from reels.deploy.redis_server import RedisServer, free_port
        from reels.feature_store.store import OnlineStore
        from reels.workflows.manifest import FeatureArtifacts

        users = request_users(features_dir, args.overlap, seed=2)  # other users than the timed ones
        with (
            tempfile.TemporaryDirectory() as tmp,
            RedisServer(Path(tmp), port=free_port(), durable=False) as redis,
        ):
            store = OnlineStore(redis.client(timeout_s=5.0))
            store.load(FeatureArtifacts(features_dir))
            result["overlap"] = overlap_with_in_process(graph, model_dir, store, users, args.k)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
