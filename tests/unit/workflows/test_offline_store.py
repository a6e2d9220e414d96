import pandas as pd
import pytest

from reels.workflows.config import SyntheticConfig
from reels.workflows.errors import NotFound
from reels.workflows.offline_store import OfflineStore
from reels.workflows.synthetic import SyntheticReels

CONFIG = SyntheticConfig(n_events=6_000, n_users=200, n_creators=30, n_videos=400, n_days=4)


@pytest.fixture()
def store(tmp_path):
    world = SyntheticReels(CONFIG)
    store = OfflineStore(tmp_path / "store")
    store.append("users", world.users())
    store.append("videos", world.videos())
    for day in world.days():
        store.append("events", day)
    return store


def test_events_are_partitioned_by_day(store):
    folders = sorted({f.parent.name for f in store.files("events")})
    assert folders == [f"day=2026-01-0{d}" for d in range(5, 9)]
    for f in store.files("events"):
        day = pd.read_parquet(f)["timestamp"].dt.strftime("%Y-%m-%d").unique()
        assert list(day) == [f.parent.name.removeprefix("day=")]


def test_append_only_adds_files(store):
    before = {f: f.stat().st_mtime_ns for f in store.files("events")}
    extra = next(SyntheticReels(CONFIG).days()).assign(event_id=lambda f: f["event_id"] + 10**9)
    written = store.append("events", extra)
    after = {f: f.stat().st_mtime_ns for f in store.files("events")}
    assert set(after) == set(before) | set(written)
    assert all(after[f] == before[f] for f in before)
    assert len(store.read_events().compute()) == 6_000 - _truncated(store, before) + len(extra)


def _truncated(store, before) -> int:
    return 6_000 - sum(len(pd.read_parquet(f)) for f in before)


def test_dimension_tables_keep_the_latest_row(store):
    users = store.read_table("users")
    changed = users.head(3).assign(country="ZZ")
    store.append("users", changed)
    again = store.read_table("users")
    assert len(again) == len(users)
    assert (again.set_index("user_id").loc[changed["user_id"], "country"] == "ZZ").all()


def test_time_split_windows_are_disjoint_and_ordered(store):
    split = store.time_split(valid_days=1, test_days=1)
    assert split.start < split.valid_start < split.test_start < split.end
    windows = {name: store.read_events(*split.window(name)).compute() for name in ("train", "valid", "test")}
    assert sum(len(w) for w in windows.values()) == len(store.read_events().compute())
    assert windows["train"]["timestamp"].max() < windows["valid"]["timestamp"].min()
    assert windows["valid"]["timestamp"].max() < windows["test"]["timestamp"].min()
    ids = [set(w["event_id"]) for w in windows.values()]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])


def test_split_needs_enough_days(store):
    with pytest.raises(ValueError, match="need at least 5 days"):
        store.time_split(valid_days=2, test_days=2)


def test_reading_an_empty_store_says_so(tmp_path):
    with pytest.raises(NotFound, match="has no events"):
        OfflineStore(tmp_path).read_events()
