"""FAISS inner-product index over item embeddings, keyed by raw video id.

``auto`` builds an exact ``IndexFlatIP`` for catalogs up to ``exact_max_items``. Above, it measures
instead of assuming: exact search and an IVF index at each nprobe of ``ivf_nprobe_ladder``, recall@K
against exact search on sample queries of the trained query tower, and single-query search latency (one
thread, as in the serving step). It keeps the smallest nprobe reaching ``min_recall`` when its median
search time beats exact search's, else exact search. Measuring matters because approximate recall on trained
two-tower embeddings is far below recall on random clustered vectors (measured: IVF nprobe 128 0.66 vs
0.96, HNSW ef 1024 0.75 vs 0.97). With ``device="gpu"`` and faiss GPU support, the index is moved to GPU 0
for search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from reels.models.config import IndexConfig
from reels.models.registry import load_manifest
from reels.workflows.device import DeviceUnavailable, resolve_device
from reels.workflows.errors import ConfigError
from reels.workflows.spec import FIRST_ID


@dataclass(frozen=True)
class IndexReport:
    """What ``build_and_measure`` built: index kind, item count, build seconds and recall@k against exact."""

    kind: str
    items: int
    build_s: float
    recall_at_k: float  # against exact search; 1.0 for the exact index
    k: int
    nprobe: int | None = None  # IVF only
    search_p99_ms: float | None = (
        None  # single-query top-k, one thread (measured by ``auto`` above exact_max_items)
    )
    tried: tuple[
        dict, ...
    ] = ()  # what ``auto`` measured: kind, nprobe, recall_at_k, search_p50_ms, search_p99_ms


def trending_prior(views: np.ndarray, weight: float) -> np.ndarray | None:
    """The retrieval prior of each item: ``weight`` x log(1 + its recent ``views``); None when ``weight`` is
    0 (no prior: the index holds the embeddings alone)."""
    return weight * np.log1p(views).astype(np.float32) if weight > 0 else None


@dataclass(frozen=True)
class CategoryAffinity:
    """The category-affinity prior of a version (``two_tower.category_prior``): ``weight`` x the log share
    of each video's category among the query's history. The index holds ``weight`` x a one-hot of each
    item's category (``item_columns``), the query its history's log shares (``query_columns``), so their
    inner product adds the prior to the two-tower score. ``lookup``: encoded video id -> category row (-1
    for padding, null, out-of-vocabulary and ids outside the catalog: the videos sharing the OOV id have
    no one category)."""

    weight: float
    item_rows: np.ndarray  # category row of each index item, in index order
    lookup: np.ndarray
    n_categories: int

    @classmethod
    def of(cls, video_ids: np.ndarray, categories: np.ndarray, weight: float) -> CategoryAffinity | None:
        """From the index items' encoded video ids and categories (any labels); None when ``weight`` is 0."""
        if weight <= 0:
            return None
        _, rows = np.unique(np.asarray(categories), return_inverse=True)
        return cls.from_rows(video_ids, rows, weight)

    @classmethod
    def from_rows(cls, video_ids: np.ndarray, item_rows: np.ndarray, weight: float) -> CategoryAffinity:
        """From the index items' encoded video ids and category rows (as a version stores them)."""
        video_ids = np.asarray(video_ids, dtype=np.int64)
        item_rows = np.asarray(item_rows, dtype=np.int64)
        lookup = np.full(max(int(video_ids.max(initial=0)) + 1, FIRST_ID), -1, dtype=np.int64)
        vocabulary = video_ids >= FIRST_ID
        lookup[video_ids[vocabulary]] = item_rows[vocabulary]
        return cls(weight, item_rows, lookup, int(item_rows.max(initial=-1)) + 1)

    @classmethod
    def of_version(cls, model_dir: Path, items: pd.DataFrame) -> CategoryAffinity | None:
        """A trained version's affinity from its ``item_embeddings.parquet`` rows (``items``) and the weight
        its manifest was trained with (a version folder: a release step's artifacts have no manifest);
        None when the version has none (no ``category_row`` column)."""
        if "category_row" not in items.columns:
            return None
        weight = load_manifest(model_dir)["config"]["two_tower"]["category_prior"]
        return cls.from_rows(items["video_id"].to_numpy(), items["category_row"].to_numpy(), weight)

    def item_columns(self) -> np.ndarray:
        """(n_items, C) float32: ``weight`` x each item's one-hot category."""
        return (self.weight * np.eye(self.n_categories, dtype=np.float32)[self.item_rows]).astype(np.float32)

    def query_columns(self, histories) -> np.ndarray:
        """(n, C) float32 ``category_affinity`` of each query's history (encoded video ids, (n, L))."""
        return category_affinity(np.stack([np.asarray(h) for h in histories]), self.lookup, self.n_categories)


def category_affinity(
    histories: np.ndarray, lookup: np.ndarray, n_categories: int, smoothing: float = 1.0
) -> np.ndarray:
    """Per query, the log share of each category among the videos of its history (encoded video ids,
    (n, L); ids ``lookup`` maps to -1 or does not hold are skipped), with ``smoothing`` added to
    every category's count so that an empty history is uniform: (n, C) float32."""
    histories = np.asarray(histories, dtype=np.int64).reshape(len(histories), -1)
    known = (histories >= 0) & (histories < len(lookup))
    rows = np.where(known, lookup[np.where(known, histories, 0)], -1)
    counts = np.zeros((len(histories), n_categories), dtype=np.float64)
    users, slots = np.nonzero(rows >= 0)
    np.add.at(counts, (users, rows[users, slots]), 1.0)
    shares = (counts + smoothing) / (counts.sum(axis=1, keepdims=True) + smoothing * n_categories)
    return np.log(shares).astype(np.float32)


def index_vectors(
    embeddings: np.ndarray, prior: np.ndarray | None, affinity: CategoryAffinity | None = None
) -> np.ndarray:
    """The vectors the index holds: item embeddings, then the trending prior as one more column where
    there is one (an inner product with a query holding a 1 there adds it to the two-tower score), then
    the category-affinity columns where there are."""
    columns = [np.asarray(embeddings, dtype=np.float32)]
    if prior is not None:
        columns.append(np.asarray(prior, dtype=np.float32).reshape(-1, 1))
    if affinity is not None:
        columns.append(affinity.item_columns())
    return columns[0] if len(columns) == 1 else np.hstack(columns)


def query_vectors(dim: int, embeddings: np.ndarray, affinity: np.ndarray | None = None) -> np.ndarray:
    """Query embeddings as an index of dimension ``dim`` takes them: a 1 where the index holds a trending
    prior column (one wider than the embeddings and the ``affinity`` columns, ``CategoryAffinity
    .query_columns``), then the affinity columns where given."""
    columns = [np.ascontiguousarray(embeddings, dtype=np.float32)]
    width = columns[0].shape[1] + (0 if affinity is None else affinity.shape[1])
    if dim == width + 1:
        columns.append(np.ones((len(columns[0]), 1), dtype=np.float32))
    if affinity is not None:
        columns.append(np.asarray(affinity, dtype=np.float32))
    return columns[0] if len(columns) == 1 else np.ascontiguousarray(np.hstack(columns))


def _kind(config: IndexConfig, n_items: int) -> str:
    if config.kind != "auto":
        return config.kind
    return "flat" if n_items <= config.exact_max_items else "ivf"


def build_index(
    embeddings: np.ndarray, ids: np.ndarray, config: IndexConfig, kind: str | None = None
) -> faiss.Index:
    """An ``IndexIDMap2`` over ``embeddings`` (float32, one row per item) returning ``ids`` (int64)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    kind = kind or _kind(config, n)
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        wanted = config.ivf_lists or int(4 * np.sqrt(n))
        lists = max(1, min(wanted, n // 39))  # faiss wants >= 39 training points per list
        base = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        base.train(embeddings)
        base.nprobe = min(config.ivf_nprobe, lists)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efSearch = config.hnsw_ef_search
    else:
        raise ConfigError(f"unknown index kind {kind!r}")
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(embeddings, np.asarray(ids, dtype=np.int64))
    return index


def recall_against_exact(
    index: faiss.Index, embeddings: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Share of the exact inner-product top-``k`` ids (over ``embeddings``/``ids``) that ``index`` also
    returns for ``queries``, in [0, 1]; ``k`` is capped at the number of items."""
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(embeddings.shape[1]))
    exact.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    k = min(k, len(ids))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return overlap(truth, found)


def overlap(truth: np.ndarray, found: np.ndarray) -> float:
    """Share of the ids in ``truth`` (one row of top-k ids per query) that ``found`` also holds per row."""
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
    return hits / truth.size


def build_and_measure(
    embeddings: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
    kind: str | None = None,
    device: str = "cpu",
) -> tuple[faiss.Index, IndexReport]:
    """Build the index (on CPU: that is the copy that gets saved) and measure its recall against exact
    search, on a GPU copy when ``device`` resolves to gpu and faiss has GPU support."""
    if kind is None and config.kind == "auto" and len(ids) > config.exact_max_items:
        return choose_index(embeddings, ids, queries, config)
    started = time.perf_counter()
    index = build_index(embeddings, ids, config, kind)
    build_s = time.perf_counter() - started
    chosen = kind or _kind(config, len(ids))
    sample = queries[: config.recall_queries]
    searcher = index
    if device != "cpu" and resolve_device(device) == "gpu":
        if faiss_has_gpu():
            searcher = to_device(index, "gpu")
        elif device == "gpu":
            raise DeviceUnavailable("--device gpu: this faiss build has no GPU support (install faiss-gpu)")
    recall = (
        1.0 if chosen == "flat" else recall_against_exact(searcher, embeddings, ids, sample, config.recall_k)
    )
    return index, IndexReport(chosen, len(ids), build_s, recall, config.recall_k)


def search_latency_ms(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of single-query top-``k`` searches over ``queries``, on one thread (each
    serving step instance runs with OMP_NUM_THREADS=1)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:1], k)  # warm-up
        times = []
        for row in range(len(queries)):
            started = time.perf_counter()
            index.search(queries[row : row + 1], k)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        faiss.omp_set_num_threads(threads)
    p50, p99 = np.percentile(times, [50, 99])
    return float(p50), float(p99)


def choose_index(
    embeddings: np.ndarray, ids: np.ndarray, queries: np.ndarray, config: IndexConfig
) -> tuple[faiss.Index, IndexReport]:
    """``auto`` above ``exact_max_items``: the smallest nprobe of ``config.ivf_nprobe_ladder`` whose
    recall@``recall_k`` against exact search reaches ``min_recall``, when its median search time beats
    exact search's; otherwise exact search. Every measured setting is kept in the report's ``tried``."""
    sample = np.ascontiguousarray(queries[: config.recall_queries], dtype=np.float32)
    k = min(config.recall_k, len(ids))
    started = time.perf_counter()
    flat = build_index(embeddings, ids, config, "flat")
    flat_build_s = time.perf_counter() - started
    _, truth = flat.search(sample, k)
    flat_p50, flat_p99 = search_latency_ms(flat, sample, k)
    tried = [
        {
            "kind": "flat",
            "nprobe": None,
            "recall_at_k": 1.0,
            "search_p50_ms": flat_p50,
            "search_p99_ms": flat_p99,
        }
    ]
    started = time.perf_counter()
    ivf = build_index(embeddings, ids, config, "ivf")
    ivf_build_s = time.perf_counter() - started
    base = faiss.extract_index_ivf(ivf)
    chosen = None
    for nprobe in sorted(set(config.ivf_nprobe_ladder)):
        if nprobe > base.nlist:
            break
        base.nprobe = nprobe
        _, found = ivf.search(sample, k)
        recall = overlap(truth, found)
        p50, p99 = search_latency_ms(ivf, sample, k)
        tried.append(
            {
                "kind": "ivf",
                "nprobe": nprobe,
                "recall_at_k": recall,
                "search_p50_ms": p50,
                "search_p99_ms": p99,
            }
        )
        if recall >= config.min_recall:  # the median decides: a busy machine's p99 is mostly its noise
            chosen = tried[-1] if p50 < flat_p50 else None
            break
    if chosen is None:
        return flat, IndexReport("flat", len(ids), flat_build_s, 1.0, k, None, flat_p99, tuple(tried))
    base.nprobe = chosen["nprobe"]
    report = IndexReport(
        "ivf",
        len(ids),
        ivf_build_s,
        chosen["recall_at_k"],
        k,
        chosen["nprobe"],
        chosen["search_p99_ms"],
        tuple(tried),
    )
    return ivf, report


def faiss_has_gpu() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_device(index: faiss.Index, device: str) -> faiss.Index:
    """The index itself on CPU; a GPU copy (faiss-gpu) on GPU. ``auto`` must be resolved first."""
    if device != "gpu":
        return index
    if not faiss_has_gpu():
        raise DeviceUnavailable("faiss has no GPU support here: install faiss-gpu (see deploy/README.md)")
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def save_index(index: faiss.Index, path: Path) -> None:
    """Write a CPU index to ``path`` with ``faiss.write_index`` (a GPU copy must be moved back first)."""
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    """Read an index written by ``save_index``, on CPU."""
    return faiss.read_index(str(path))
