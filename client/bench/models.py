"""Model benchmark: training throughput of the two-tower, MMoE and shared-bottom models on CPU, and FAISS
build time, single-query and batch-64 latency and recall against exact search for 10k / 100k / 1M items.

Embeddings: the trained two-tower's real item and query embeddings. Catalogs larger than the trained one
are made by resampling trained item embeddings with a small Gaussian jitter (0.1 x each dimension's std),
which keeps the learned geometry (norms, anisotropy) that makes ANN recall on trained embeddings far lower
than on random vectors. The exact IndexFlatIP is the baseline every approximate index is compared with.

    reels bench models [--sizes 10000 100000 1000000] [--record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from reels.client.record import machine
from reels.deploy.config import Config

if TYPE_CHECKING:
    from reels.models.two_tower import TwoTower
    from reels.workflows.manifest import FeatureArtifacts


def _latencies_ms(index: faiss.Index, queries: np.ndarray, k: int, batch: int, repeats: int) -> np.ndarray:
    out = []
    n = len(queries)
    for i in range(repeats):
        start = (i * batch) % max(n - batch, 1)
        q = queries[start : start + batch]
        t0 = time.perf_counter()
        index.search(q, k)
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def catalog_of(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` item embeddings: a sample of ``items``, or ``items`` resampled with jitter (module doc)."""
    if size <= len(items):
        return items[rng.choice(len(items), size, replace=False)]
    base = items[rng.integers(0, len(items), size)]
    jitter = rng.normal(0.0, 1.0, base.shape).astype(np.float32) * (0.1 * items.std(axis=0))
    return np.ascontiguousarray(base + jitter, dtype=np.float32)


def faiss_bench(items: np.ndarray, queries: np.ndarray, sizes: list[int], k: int = 500) -> dict:
    """Build time, latency and recall against exact search of each index kind at each catalog size."""
    from reels.models.config import IndexConfig
    from reels.models.index import build_index, recall_against_exact

    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    results: dict = {}
    for size in sizes:
        catalog = catalog_of(items, size, rng)
        ids = np.arange(size, dtype=np.int64)
        results[str(size)] = {}
        for kind in ("flat", "ivf", "hnsw"):
            config = IndexConfig(kind=kind, ivf_lists=1024, ivf_nprobe=128, hnsw_m=32, hnsw_ef_search=1024)
            t0 = time.perf_counter()
            index = build_index(catalog, ids, config, kind)
            build_s = time.perf_counter() - t0
            single = _latencies_ms(index, queries, k, 1, 200)
            batch = _latencies_ms(index, queries, k, 64, 20)
            recall = 1.0 if kind == "flat" else recall_against_exact(index, catalog, ids, queries[:200], k)
            results[str(size)][kind] = {
                "build_s": build_s,
                "single_p50_ms": float(np.percentile(single, 50)),
                "single_p95_ms": float(np.percentile(single, 95)),
                "single_p99_ms": float(np.percentile(single, 99)),
                "batch64_p50_ms": float(np.percentile(batch, 50)),
                "queries_per_s_batch64": 64 / (float(np.percentile(batch, 50)) / 1000),
                f"recall@{k}_vs_exact": recall,
            }
            print(f"[bench] {size:,} items {kind}: {results[str(size)][kind]}", flush=True)
        flat = results[str(size)]["flat"]["single_p50_ms"]
        for kind in ("ivf", "hnsw"):
            results[str(size)][kind]["single_p50_vs_flat"] = results[str(size)][kind]["single_p50_ms"] / flat
    return results


def training_bench(features_dir: Path, epochs: int = 1) -> tuple[dict, TwoTower, FeatureArtifacts]:
    """Examples/s of one epoch of each model, with the trained two-tower and the features it read."""
    from reels.models.config import RankerConfig, TwoTowerConfig
    from reels.models.inputs import artifacts_at, feature_schema
    from reels.models.ranker import Ranker
    from reels.models.train import item_view_counts
    from reels.models.two_tower import TwoTower

    features = artifacts_at(features_dir)
    schema = feature_schema(features)
    train = features.read_split("train")
    positives = train[train["view"] == 1]
    counts = item_view_counts(train, schema["video_id"].int_domain.max + 1)
    two_tower = TwoTower(schema, TwoTowerConfig(epochs=epochs), counts)
    out = {"two_tower": two_tower.fit(positives).examples_per_s}
    for arch in ("mmoe", "shared_bottom"):
        out[arch] = Ranker(schema, RankerConfig(epochs=epochs), arch).fit(train).examples_per_s
    out["rows"] = {"two_tower_positives": len(positives), "ranker_impressions": len(train)}
    return out, two_tower, features


def run(features_dir: Path, sizes: list[int]) -> dict:
    """Training throughput, then FAISS on the trained embeddings resampled to ``sizes``."""
    import pandas as pd

    print("[bench] training throughput (1 epoch each)", flush=True)
    training, two_tower, features = training_bench(features_dir)
    catalog = pd.read_parquet(features.videos_path)
    items = two_tower.item_embeddings(catalog)
    queries = two_tower.query_embeddings(features.read_split("valid").head(2_000))
    print(f"[bench] FAISS on {len(items):,} trained item embeddings, resampled to {sizes}", flush=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": f"reels bench models --features {features_dir} --sizes " + " ".join(map(str, sizes)),
        "training_examples_per_s": training,
        "faiss": faiss_bench(items, queries, sizes),
        "trained_catalog": len(items),
    }


def table(report: dict) -> str:
    """The run as a markdown section of BENCHMARKS.md."""
    t = report["training_examples_per_s"]
    lines = [
        f"### Models — {report['date']}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "",
        f"Training throughput, 1 epoch, CPU: two-tower {t['two_tower']:,.0f} positive pairs/s "
        f"({t['rows']['two_tower_positives']:,} pairs), MMoE {t['mmoe']:,.0f} impressions/s, shared-bottom "
        f"{t['shared_bottom']:,.0f} impressions/s ({t['rows']['ranker_impressions']:,} impressions).",
        "",
        f"FAISS top-500, 64-d trained embeddings ({report['trained_catalog']:,} real, resampled above that); "
        "IVF1024 nprobe 128, HNSW32 efSearch 1024; the exact index is the baseline:",
        "",
        "| items | index | build s | 1 query p50 ms | p95 | p99 | × exact p50 | batch-64 p50 ms | queries/s (batch 64) | recall@500 vs exact |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, kinds in report["faiss"].items():
        for kind, r in kinds.items():
            ratio = f"{r['single_p50_vs_flat']:.2f}" if "single_p50_vs_flat" in r else "1.00"
            lines.append(
                f"| {int(size):,} | {kind} | {r['build_s']:.2f} | {r['single_p50_ms']:.2f} | {r['single_p95_ms']:.2f} "
                f"| {r['single_p99_ms']:.2f} | {ratio} | {r['batch64_p50_ms']:.1f} | {r['queries_per_s_batch64']:,.0f} "
                f"| {r['recall@500_vs_exact']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, config: Config) -> dict:
    """`reels bench models`: training throughput on ``--features`` and FAISS at ``--sizes``."""
    return run(Path(args.features), args.sizes)
