"""A synthetic source with a catalog of a given size, for the serving benchmark at Reels-like scale.

    reels bench serving --catalog 100000     # builds data/synthetic-100k once, then benchmarks it

The source is the default synthetic world (same users, events and days) with ``n_videos`` videos before
the first day; it is generated, its features built and its models trained with the default settings,
the FAISS index chosen by ``index.kind: auto`` (exact search or the cheapest IVF setting that reaches
``index.min_recall`` against exact search on the trained embeddings). Each stage is skipped when its output
exists, so a second run goes straight to the benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from reels.deploy.config import Config


def catalog_source_name(n_videos: int) -> str:
    """``synthetic-100k``, ``synthetic-1m``, ... — the source folder under ``data.root``."""
    if n_videos % 1_000_000 == 0:
        return f"synthetic-{n_videos // 1_000_000}m"
    if n_videos % 1_000 == 0:
        return f"synthetic-{n_videos // 1_000}k"
    return f"synthetic-{n_videos}"


def ensure_catalog_source(config: Config, n_videos: int, progress: Callable[[str], None]) -> str:
    """Generate, build and train (each where missing) the synthetic source with ``n_videos`` videos;
    returns the source name."""
    from reels.deploy import jobs
    from reels.workflows.offline_store import OfflineStore
    from reels.workflows.sources import generate_synthetic

    source = catalog_source_name(n_videos)
    source_dir = config.source_dir(source)
    store = OfflineStore(source_dir / "store")
    if not store.has("events"):
        world = dataclasses.replace(config.synthetic, n_videos=n_videos)
        progress(f"{source}: generating {world.n_events:,} events over a catalog of {n_videos:,} videos")
        generate_synthetic(store.root, world, overwrite=True)
    if not jobs.features_of(config, source).exists():
        progress(f"{source}: building features")
        jobs.build_features(config, source, progress)
    if not any(p.name.isdigit() for p in (source_dir / "models").glob("*")):
        progress(f"{source}: training")  # the newest version serves: no pointer is written
        jobs.train(config, source, progress)
    return source
