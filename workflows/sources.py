"""Filling the offline store from a source: the synthetic generator or MovieLens-100k."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reels.workflows.config import SyntheticConfig
from reels.workflows.errors import AlreadyExists
from reels.workflows.movielens import load_movielens
from reels.workflows.offline_store import OfflineStore
from reels.workflows.synthetic import SyntheticReels


@dataclass(frozen=True)
class IngestReport:
    """Row counts written to the offline store by one source import, the days covered and the wall seconds."""

    events: int
    users: int
    videos: int
    days: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        """Events written per wall-clock second (``inf`` when no time was measured)."""
        return self.events / self.seconds if self.seconds else float("inf")


def _fresh(root: Path, overwrite: bool) -> OfflineStore:
    store = OfflineStore(root)
    if store.has("events"):
        if not overwrite:
            raise AlreadyExists(
                f"{root} already holds events; pass overwrite=True (--overwrite) to replace it"
            )
        shutil.rmtree(root)
    return store


def generate_synthetic(
    root: str | Path,
    config: SyntheticConfig,
    overwrite: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,  # e.g. tqdm
) -> IngestReport:
    """Generate synthetic Reels data day by day into a fresh store at ``root``."""
    store = _fresh(Path(root), overwrite)
    started = time.perf_counter()
    world = SyntheticReels(config)
    users, videos = world.users(), world.videos()
    store.append("users", users)
    store.append("videos", videos)
    world.truth.save(store.root / "ground_truth.npz")
    days = world.days()
    if progress is not None:
        days = progress(days)
    n = 0
    for frame in days:
        store.append("events", frame)
        n += len(frame)
    return IngestReport(n, len(users), len(videos), config.n_days, time.perf_counter() - started)


def import_movielens(root: str | Path, overwrite: bool = False) -> IngestReport:
    """Fetch (once) and map MovieLens-100k into a fresh store at ``root``."""
    store = _fresh(Path(root), overwrite)
    started = time.perf_counter()
    tables = load_movielens()
    for name in ("users", "videos", "events"):
        store.append(name, tables[name])
    return IngestReport(
        len(tables["events"]),
        len(tables["users"]),
        len(tables["videos"]),
        len(store.days()),
        time.perf_counter() - started,
    )
