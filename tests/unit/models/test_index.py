"""``index.kind: auto`` above ``exact_max_items`` measures exact search and an IVF nprobe ladder on the
given queries and keeps the cheapest setting that reaches ``min_recall`` — or exact search."""

from __future__ import annotations

import numpy as np

from reels.models.config import IndexConfig
from reels.models.index import build_and_measure, recall_against_exact


def _clustered(n: int, dim: int = 16, clusters: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return points.astype(np.float32), np.arange(10_000, 10_000 + n, dtype=np.int64)


def test_auto_keeps_the_smallest_nprobe_reaching_min_recall_and_reports_what_it_measured():
    embeddings, ids = _clustered(8000)
    queries = _clustered(200, seed=1)[0]
    config = IndexConfig(exact_max_items=1000, ivf_lists=64, ivf_nprobe_ladder=(1, 4, 16, 64), min_recall=0.9,
                         recall_k=50, recall_queries=200)  # fmt: skip
    index, report = build_and_measure(embeddings, ids, queries, config)
    assert report.tried[0]["kind"] == "flat" and report.tried[0]["recall_at_k"] == 1.0
    ivf_rows = [row for row in report.tried if row["kind"] == "ivf"]
    assert ivf_rows and all(row["search_p99_ms"] > 0 for row in report.tried)
    reached = [row for row in ivf_rows if row["recall_at_k"] >= 0.9]
    assert len(reached) <= 1 and ivf_rows[:-1] == [
        r for r in ivf_rows if r["recall_at_k"] < 0.9
    ]  # stops at the first
    if report.kind == "ivf":  # chosen only when its median beat exact search
        assert (
            report.nprobe == reached[0]["nprobe"]
            and reached[0]["search_p50_ms"] < report.tried[0]["search_p50_ms"]
        )
        assert recall_against_exact(index, embeddings, ids, queries, 50) == report.recall_at_k
    else:
        assert report.kind == "flat" and report.recall_at_k == 1.0


def test_auto_falls_back_to_exact_search_when_no_setting_reaches_min_recall():
    embeddings, ids = _clustered(4000)
    queries = _clustered(100, seed=2)[0]
    config = IndexConfig(
        exact_max_items=1000, ivf_lists=64, ivf_nprobe_ladder=(1,), min_recall=0.999, recall_k=50
    )
    index, report = build_and_measure(embeddings, ids, queries, config)
    assert report.kind == "flat" and report.recall_at_k == 1.0 and index.ntotal == 4000
    assert [row["kind"] for row in report.tried] == ["flat", "ivf"] and report.tried[1]["recall_at_k"] < 0.999


def test_catalogs_up_to_exact_max_items_are_searched_exactly_without_measuring():
    embeddings, ids = _clustered(500)
    _, report = build_and_measure(embeddings, ids, embeddings[:10], IndexConfig())
    assert report.kind == "flat" and report.tried == ()
