import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from reels.workflows.config import SyntheticConfig
from reels.workflows.errors import InvalidInput, NotFound
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


# ---- durability: commits, crashes, concurrent writers, compaction -----------------------------------------
# A writer in a real subprocess: appends ``batches`` batches of events (each spanning two days, ids from
# ``first``) once the file ``go`` exists, so two of them start together.
WRITER = """
import sys, time
from pathlib import Path
import pandas as pd
from reels.workflows.config import SyntheticConfig
from reels.workflows.offline_store import OfflineStore
from reels.workflows.synthetic import SyntheticReels

root, first, batches, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
days = list(SyntheticReels(SyntheticConfig(n_events=2_000, n_users=50, n_creators=10, n_videos=100, n_days=2)).days())
template = pd.concat([days[0].head(10), days[1].head(10)], ignore_index=True)
while not go.exists():
    time.sleep(0.01)
store = OfflineStore(root)
for b in range(batches):
    store.append("events", template.assign(event_id=first + b * len(template) + template.index))
"""


def _writer(root, first: int, batches: int, go, fault: str = "") -> subprocess.Popen:
    env = dict(os.environ, REELS_FAULT=fault)
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(first), str(batches), str(go)], env=env
    )


def _on_disk(store: OfflineStore, table: str) -> set:
    return set((store.root / table).rglob("part-*.parquet"))


def test_a_writer_killed_before_its_commit_leaves_nothing_visible(store, tmp_path):
    before = store.read_events().compute()
    fingerprint, days = store.fingerprint(), store.days()
    go = tmp_path / "go"
    go.touch()
    writer = _writer(store.root, 10**9, 1, go, fault="offline:before_commit")
    assert writer.wait(timeout=120) == -signal.SIGKILL
    # Its two day files were renamed into place (one in a new day folder) but never committed.
    leftovers = _on_disk(store, "events") - set(store.files("events"))
    assert len(leftovers) == 2
    assert store.days() == days and store.fingerprint() == fingerprint
    pd.testing.assert_frame_equal(store.read_events().compute(), before)
    # The next writer (under the lock) deletes them and the dead writer's staging folder.
    extra = next(SyntheticReels(CONFIG).days()).head(5).assign(event_id=lambda f: f["event_id"] + 2 * 10**9)
    store.append("events", extra)
    assert not leftovers & _on_disk(store, "events")
    assert list((store.root / "_staging").iterdir()) == []
    assert _on_disk(store, "events") == set(store.files("events"))
    assert len(store.read_events().compute()) == len(before) + 5


def test_concurrent_writers_take_distinct_sequence_numbers_and_lose_nothing(tmp_path):
    root, go = tmp_path / "store", tmp_path / "go"
    writers = [_writer(root, first, 15, go) for first in (10**9, 2 * 10**9)]
    time.sleep(3)  # both imported and waiting
    go.touch()
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    store = OfflineStore(root)
    files = store.files("events")
    assert len(files) == 2 * 15 * 2  # two writers x 15 batches x 2 days
    assert sorted({f.name.split("-")[1] for f in files}) == [f"{s:06d}" for s in range(30)]
    assert _on_disk(store, "events") == set(files)
    events = store.read_events().compute()
    assert len(events) == 2 * 15 * 20 and events["event_id"].is_unique


def test_compaction_keeps_what_reads_return_and_drops_the_file_count(store):
    changed = store.read_table("users").head(3).assign(country="ZZ")
    store.append("users", changed)
    for i in range(3):  # more small parts on an existing day
        extra = next(SyntheticReels(CONFIG).days()).head(20)
        store.append("events", extra.assign(event_id=extra["event_id"] + (i + 1) * 10**9))
    events, users = store.read_events().compute(), store.read_table("users")
    days, before = store.days(), {t: len(store.files(t)) for t in ("events", "users")}

    report = store.compact()
    assert report.files_before["events"] == before["events"] and report.files_after["events"] == len(days)
    assert (report.files_before["users"], report.files_after["users"]) == (2, 1)
    assert report.duplicates_dropped == 0
    pd.testing.assert_frame_equal(
        store.read_events().compute().reset_index(drop=True), events.reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(store.read_table("users"), users)
    assert store.days() == days
    assert _on_disk(store, "events") == set(store.files("events"))  # the merged parts are deleted
    # Later appends still win over the compacted part.
    store.append("users", changed.assign(country="YY"))
    assert (store.read_table("users").set_index("user_id").loc[changed["user_id"], "country"] == "YY").all()


def test_compaction_drops_an_event_written_twice(store):
    extra = next(SyntheticReels(CONFIG).days()).head(10).assign(event_id=lambda f: f["event_id"] + 10**9)
    store.append("events", extra)
    store.append("events", extra)  # a re-delivery the writer did not catch
    assert len(store.read_events().compute()) == 6_000 + 20
    assert store.compact(["events"]).duplicates_dropped == 10
    events = store.read_events().compute()
    assert len(events) == 6_000 + 10 and events["event_id"].is_unique


def test_a_store_written_before_the_manifest_is_read_and_adopted(store):
    (store.root / "_manifest.json").unlink()  # what older versions wrote: parts only
    files, events = store.files("events"), store.read_events().compute()
    assert files and len(events) == 6_000
    extra = next(SyntheticReels(CONFIG).days()).head(5).assign(event_id=lambda f: f["event_id"] + 10**9)
    written = store.append("events", extra)
    assert store.files("events") == sorted(files + written, key=lambda p: (p.parent.name, p.name))


def test_batch_tokens_name_commits(store):
    extra = next(SyntheticReels(CONFIG).days()).head(5).assign(event_id=lambda f: f["event_id"] + 10**9)
    store.append("events", extra, token="abc123")
    assert store.committed("events", ["abc123", "nothere"]) == {"abc123"}
    probe = pd.concat([extra.head(2), extra.head(1).assign(event_id=-5)])
    assert store.existing_keys("events", probe) == set(extra["event_id"].head(2))
    with pytest.raises(InvalidInput, match="batch token"):
        store.append("events", extra, token="has-a-dash")


def test_reels_data_compact_merges_a_source_store(tmp_path, capsys):
    from reels.client.cli import main

    base = ["--set", f"data.root={tmp_path}", "--set", "synthetic.n_days=3", "--set", "synthetic.n_users=100"]
    assert main([*base, "data", "compact", "synthetic"]) == 3  # nothing to compact yet: says what to run
    assert "reels data synthetic" in capsys.readouterr().err
    assert main([*base, "data", "synthetic", "--events", "2000"]) == 0
    store = OfflineStore(tmp_path / "synthetic" / "store")
    extra = store.read_events().compute().head(10)
    store.append("events", extra.assign(event_id=extra["event_id"] + 10**9))
    before = len(store.files("events"))
    assert main([*base, "data", "compact", "synthetic"]) == 0
    assert f"events: {before} part files -> 3" in capsys.readouterr().out
    assert main([*base, "data", "compact"]) == 2


def test_split_by_event_shares_keeps_whole_days_and_at_least_the_shares(store):
    events = store.read_events().compute()
    total = len(events)
    split = store.time_split_by_events(valid_fraction=0.2, test_fraction=0.25)
    test = store.read_events(*split.window("test")).compute()
    valid = store.read_events(*split.window("valid")).compute()
    assert len(test) >= 0.25 * total and len(valid) + len(test) >= 0.45 * total
    assert len(store.read_events(*split.window("train")).compute()) > 0
    # Whole days: each boundary is a day's midnight, and one day less would fall short of the share.
    assert (
        split.test_start == split.test_start.normalize()
        and split.valid_start == split.valid_start.normalize()
    )
    assert (events["timestamp"] >= split.test_start + pd.Timedelta(days=1)).sum() < 0.25 * total
    assert store.time_split_by_events(0.1, 0.1).test_start >= split.test_start


def test_split_by_event_shares_refuses_shares_that_leave_no_training_window(store):
    with pytest.raises(ValueError, match="sum below 1"):
        store.time_split_by_events(valid_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ValueError, match="cannot hold a training window"):
        store.time_split_by_events(valid_fraction=0.45, test_fraction=0.5)
