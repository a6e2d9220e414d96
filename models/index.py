"""FAISS inner-product index over item embeddings, keyed by raw video id.

``auto`` builds an exact ``IndexFlatIP`` for catalogs up to ``exact_max_items`` and an IVF index above;
recall@K of the approximate index against exact search is measured at build time on sample queries
because approximate recall on trained two-tower embeddings is far below recall on random clustered vectors
(measured: IVF nprobe 128 0.66 vs 0.96, HNSW ef 1024 0.75 vs 0.97).
With ``device="gpu"`` and faiss GPU support, the index is moved to GPU 0 for search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from reels.models.config import IndexConfig
from reels.workflows.device import DeviceUnavailable, resolve_device
from reels.workflows.errors import ConfigError


@dataclass(frozen=True)
class IndexReport:
    """What ``build_and_measure`` built: index kind, item count, build seconds and recall@k against exact."""

    kind: str
    items: int
    build_s: float
    recall_at_k: float  # against exact search; 1.0 for the exact index
    k: int


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
        lists = max(1, min(config.ivf_lists, n // 39))  # faiss wants >= 39 training points per list
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
