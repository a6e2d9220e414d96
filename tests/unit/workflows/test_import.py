"""`reels data import`: the two worked mappings on small files the tests write, the input formats and
fsspec URLs, and bad input that must be refused with a clear error and nothing written."""

import json
import re

import fsspec
import numpy as np
import pandas as pd
import pytest

from reels.client.cli import main
from reels.workflows.errors import AlreadyExists, InvalidInput, NotFound
from reels.workflows.importer import (
    ImportRejected,
    Mapping,
    check_name,
    import_logs,
    known_source,
    recorded_split,
    resolve_mapping,
)
from reels.workflows.offline_store import OfflineStore

START_S = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def ratings(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A MovieLens-style ratings.csv: userId, movieId, rating (0.5-5 stars), timestamp (unix seconds)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "userId": rng.integers(1, 40, n),
            "movieId": rng.integers(1, 120, n),
            "rating": rng.choice([0.5, 1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0], n),
            "timestamp": START_S + rng.integers(0, 20 * 86_400, n),
        }
    )


def kuairand_log(n: int = 500, seed: int = 1) -> pd.DataFrame:
    """A KuaiRand-style log with the published columns (values random, shapes as in the data set)."""
    rng = np.random.default_rng(seed)
    time_ms = (START_S + rng.integers(0, 10 * 86_400, n)) * 1000 + rng.integers(0, 1000, n)
    stamp = pd.to_datetime(time_ms, unit="ms")
    duration_ms = rng.integers(5_000, 60_000, n).astype(float)
    duration_ms[:3] = np.nan  # the published logs have a few videos without a duration
    play_time_ms = np.minimum(rng.exponential(15_000, n), 90_000).round()

    def flag(share: float) -> np.ndarray:
        return (rng.random(n) < share).astype(int)

    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, n), "video_id": rng.integers(0, 80, n),
            "date": stamp.strftime("%Y%m%d").astype(int), "hourmin": stamp.strftime("%H%M").astype(int),
            "time_ms": time_ms, "is_click": flag(0.5), "is_like": flag(0.1), "is_follow": flag(0.02),
            "is_comment": flag(0.03), "is_forward": flag(0.02), "is_hate": flag(0.01),
            "long_view": flag(0.4), "play_time_ms": play_time_ms, "duration_ms": duration_ms,
            "profile_stay_time": 0, "comment_stay_time": 0, "is_profile_enter": flag(0.05),
            "is_rand": flag(0.01), "tab": rng.integers(0, 5, n),
        }
    )  # fmt: skip


def kuairand_videos(ids) -> pd.DataFrame:
    """A KuaiRand-style video_features_basic file for ``ids``."""
    ids = np.asarray(sorted(ids))
    return pd.DataFrame(
        {
            "video_id": ids, "author_id": 1000 + ids % 7, "video_type": np.where(ids % 5, "NORMAL", "AD"),
            "upload_dt": "2023-11-01", "upload_type": "ShortImport", "visible_status": "public",
            "video_duration": np.where(ids % 9 == 0, np.nan, 30_000.0), "server_width": 720,
            "server_height": 1280, "music_id": np.where(ids % 4 == 0, np.nan, ids * 3.0), "music_type": 4.0,
            "tag": "28",
        }
    )  # fmt: skip


def shipped(name: str) -> Mapping:
    return Mapping.load(resolve_mapping(name))


def test_movielens_ratings_mapping(tmp_path):
    frame = ratings()
    frame.to_csv(tmp_path / "ratings.csv", index=False)
    report = import_logs(tmp_path / "ml", shipped("movielens_ratings"), str(tmp_path / "ratings.csv"))
    assert (report.events, report.users, report.videos) == (
        len(frame), frame["userId"].nunique(), frame["movieId"].nunique()
    )  # fmt: skip
    assert report.derived_users == report.users and report.derived_videos == report.videos

    store = OfflineStore(tmp_path / "ml" / "store")
    events = store.read_events().compute().sort_values("event_id").reset_index(drop=True)
    rating = frame["rating"]
    assert (events["user_id"] == frame["userId"]).all() and (events["video_id"] == frame["movieId"]).all()
    assert (events["timestamp"] == pd.to_datetime(frame["timestamp"], unit="s")).all()
    np.testing.assert_allclose(events["watch_time_s"], rating / 5 * 100, rtol=1e-6)
    assert (events["liked"] == (rating >= 4)).all() and (events["completed"] == (rating == 5)).all()
    assert (events["skipped"] == (rating <= 2)).all() and (events["hidden"] == (rating <= 1)).all()
    assert not events[["shared", "commented", "followed_creator"]].any().any()
    assert set(events["device"]) == {"web"} and set(events["creator_id"]) == {0}
    # position: the rank of the event in its user's day
    first_of_day = events.sort_values("timestamp").groupby(["user_id", events["timestamp"].dt.date]).head(1)
    assert (first_of_day["position"] == 0).all()

    users, videos = store.read_table("users"), store.read_table("videos")
    first_rating = events.groupby("user_id")["timestamp"].min()
    assert (users.set_index("user_id")["signup_time"] == first_rating).all()
    assert set(users["country"]) == {"unknown"} and set(videos["category"]) == {"unknown"}
    assert set(videos["duration_s"]) == {100.0}

    assert (tmp_path / "ml" / "mapping.yaml").read_text() == resolve_mapping("movielens_ratings").read_text()
    record = json.loads((tmp_path / "ml" / "import.json").read_text())
    assert record["rows"] == {"events": len(frame), "users": report.users, "videos": report.videos}
    assert recorded_split(tmp_path / "ml") == (14, 14)


def test_kuairand_mapping_with_a_videos_file(tmp_path):
    log = kuairand_log()
    log.to_csv(tmp_path / "log_standard.csv", index=False)
    catalog = kuairand_videos(set(log["video_id"]) - {0, 1})  # two videos missing from the catalog
    catalog.to_csv(tmp_path / "video_features_basic.csv", index=False)
    report = import_logs(
        tmp_path / "kr", shipped("kuairand"), str(tmp_path / "log_standard.csv"),
        videos=str(tmp_path / "video_features_basic.csv"),
    )  # fmt: skip
    assert report.events == len(log) and report.derived_videos == len({0, 1} & set(log["video_id"]))

    store = OfflineStore(tmp_path / "kr" / "store")
    events = store.read_events().compute().sort_values("event_id").reset_index(drop=True)
    assert (events["timestamp"] == pd.to_datetime(log["time_ms"], unit="ms")).all()
    for ours, theirs in [("liked", "is_like"), ("shared", "is_forward"), ("commented", "is_comment"),
                         ("followed_creator", "is_follow"), ("hidden", "is_hate")]:  # fmt: skip
        assert (events[ours] == log[theirs].astype(bool)).all(), ours
    np.testing.assert_allclose(events["watch_time_s"], log["play_time_ms"] / 1000, rtol=1e-6)
    np.testing.assert_allclose(events["video_duration_s"], log["duration_ms"].fillna(0) / 1000, rtol=1e-6)
    assert (events["completed"] == (log["play_time_ms"] >= log["duration_ms"])).all()
    assert (events["skipped"] == (log["play_time_ms"] < 3000)).all()
    # the creator comes from the videos file (author_id); videos it lacks get creator 0
    author = catalog.set_index("video_id")["author_id"]
    expected = log["video_id"].map(author).fillna(0).astype(np.int64)
    assert (events["creator_id"] == expected).all()

    videos = store.read_table("videos").set_index("video_id")
    assert videos.loc[catalog["video_id"], "category"].tolist() == catalog["video_type"].tolist()
    assert (
        videos.loc[catalog["video_id"], "audio_track_id"].tolist() == catalog["music_id"].fillna(0).tolist()
    )
    assert videos.loc[9, "duration_s"] == 0.0 and videos.loc[10, "duration_s"] == 30.0  # filled / ms -> s
    assert recorded_split(tmp_path / "kr") == (2, 2)


def test_parquet_and_json_lines_at_fsspec_urls_with_iso_timestamps(tmp_path):
    frame = ratings(200)
    with fsspec.open("memory://logs/ratings.parquet", "wb") as f:
        frame.to_parquet(f, index=False)
    import_logs(tmp_path / "pq", shipped("movielens_ratings"), "memory://logs/ratings.parquet")
    from_parquet = OfflineStore(tmp_path / "pq" / "store").read_events().compute()

    iso = frame.assign(
        timestamp=pd.to_datetime(frame["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    (tmp_path / "ratings.jsonl").write_text(iso.to_json(orient="records", lines=True))
    mapping = Mapping.parse(shipped("movielens_ratings").text.replace("timestamp: s", "timestamp: iso"))
    import_logs(tmp_path / "js", mapping, f"file://{tmp_path / 'ratings.jsonl'}")
    from_json = OfflineStore(tmp_path / "js" / "store").read_events().compute()
    key = ["event_id"]
    pd.testing.assert_frame_equal(
        from_parquet.sort_values(key).reset_index(drop=True),
        from_json.sort_values(key).reset_index(drop=True),
    )


MINIMAL = """
events:
  columns: {user_id: u, video_id: v, timestamp: t, watch_time_s: w, video_duration_s: 10, liked: w > 5}
  timestamps: {timestamp: s}
"""


def minimal_log(**changes) -> pd.DataFrame:
    frame = pd.DataFrame({"u": [1, 2, 3, 1], "v": [7, 8, 9, 9], "t": START_S + np.arange(4) * 3600,
                          "w": [1.0, 6.0, 10.0, 2.0]})  # fmt: skip
    return frame.assign(**changes)


def test_a_users_file_is_mapped_and_completed_from_the_events(tmp_path):
    minimal_log().to_csv(tmp_path / "log.csv", index=False)
    people = pd.DataFrame({"uid": [1, 2], "ages": ["18-24", "25-34"], "joined": ["2023-01-02", "2023-03-04"]})
    people.to_json(tmp_path / "users.jsonl", orient="records", lines=True)
    mapping = Mapping.parse(
        MINIMAL + "users:\n  columns: {user_id: uid, age_bucket: ages, signup_time: joined}\n"
        "  defaults: {country: DE, language: de}\n"
    )
    report = import_logs(
        tmp_path / "mine", mapping, str(tmp_path / "log.csv"), users=str(tmp_path / "users.jsonl")
    )
    assert (report.users, report.derived_users) == (3, 1)  # user 3 is only in the events
    users = OfflineStore(tmp_path / "mine" / "store").read_table("users").set_index("user_id")
    assert users["age_bucket"].tolist() == ["18-24", "25-34", "unknown"]
    assert users["country"].tolist() == ["DE", "DE", "unknown"]
    assert users.loc[2, "signup_time"] == pd.Timestamp("2023-03-04")
    assert users.loc[3, "signup_time"] == pd.to_datetime(START_S + 2 * 3600, unit="s")  # first event


def rejected(tmp_path, frame: pd.DataFrame, mapping: str = MINIMAL) -> str:
    """Import ``frame``, expect a refusal, check that nothing was written; the error message."""
    frame.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(InvalidInput) as caught:
        import_logs(tmp_path / "mine", Mapping.parse(mapping), str(tmp_path / "log.csv"))
    assert not (tmp_path / "mine").exists()
    return str(caught.value)


def test_a_missing_input_column_is_named(tmp_path):
    message = rejected(tmp_path, minimal_log().drop(columns=["w"]))
    assert "names column 'w', which the input does not have" in message and "'t'" in message


def test_a_schema_column_nobody_maps_is_named(tmp_path):
    message = rejected(tmp_path, minimal_log(), MINIMAL.replace("watch_time_s: w, ", ""))
    assert "missing column(s) ['watch_time_s']" in message and "nothing written" in message


@pytest.mark.parametrize(
    "expression, complaint",
    [("__import__('os').system('true')", "Call is not allowed"), ("w.__class__", "Attribute is not allowed"),
     ("[w for w in w]", "ListComp is not allowed"), ("w >", "cannot parse")],
)  # fmt: skip
def test_an_unsafe_or_broken_expression_is_refused_before_reading(expression, complaint):
    with pytest.raises(InvalidInput, match=complaint):
        Mapping.parse(MINIMAL.replace("liked: w > 5", f'liked: "{expression}"'))


def test_an_expression_that_fails_on_the_data_is_a_clear_error(tmp_path):
    frame = minimal_log(label=["a", "b", "c", "d"])
    message = rejected(tmp_path, frame, MINIMAL.replace("liked: w > 5", "liked: label - 1"))
    assert "events.columns.liked: cannot evaluate 'label - 1'" in message


def test_wrong_types_and_bad_rows_are_counted_per_column(tmp_path):
    frame = minimal_log(u=["a", "b", "c", "d"], w=[1.0, -2.0, -3.0, None])
    frame.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(ImportRejected) as caught:
        import_logs(
            tmp_path / "mine",
            Mapping.parse(MINIMAL.replace("liked: w > 5", "liked: u")),
            str(tmp_path / "log.csv"),
        )
    assert not (tmp_path / "mine").exists()
    assert set(caught.value.problems) == {"events", "users", "videos"} and caught.value.problems["events"]
    message = str(caught.value)
    assert "column 'user_id': expected int, got dtype object" in message
    assert "column 'watch_time_s': 2 row(s) below 0.0" in message
    assert "column 'watch_time_s': 1 row(s) are null" in message
    assert "column 'liked': expected bool, got dtype object" in message


def test_non_binary_flags_and_bad_timestamps_are_counted(tmp_path):
    frame = minimal_log(flag=[0, 1, 2, 3], t=["2024-01-01", "not a time", "2024-01-02", "later"])
    message = rejected(
        tmp_path, frame, MINIMAL.replace("liked: w > 5", "liked: flag").replace("{timestamp: s}", "{}")
    )
    assert "column 'liked': expected bool (or 0/1), 2 row(s) hold other values" in message
    assert "column 'timestamp': 2 row(s) are not timestamps (iso)" in message


@pytest.mark.parametrize(
    "mapping, complaint",
    [("events: {columns: {likd: x}}", "unknown key 'likd' (did you mean 'liked'?)"),
     ("events: {timestamps: {timestamp: hours}}", "unit 'hours'"),
     ("events: {}\nsplit: {test_days: 0}", "split.test_days must be a whole number >= 1"),
     ("videos: {}", "at least an `events:` section"),
     ("events: {columns: {device: d}, defaults: {device: web}}", "both mapped under `columns` and given")],
)  # fmt: skip
def test_a_bad_mapping_names_what_is_wrong(mapping, complaint):
    with pytest.raises(InvalidInput, match=re.escape(complaint)):
        Mapping.parse(mapping)


def test_an_existing_store_is_replaced_only_when_asked(tmp_path):
    minimal_log().to_csv(tmp_path / "log.csv", index=False)
    mapping = Mapping.parse(MINIMAL)
    import_logs(tmp_path / "mine", mapping, str(tmp_path / "log.csv"))
    with pytest.raises(AlreadyExists, match="--overwrite"):
        import_logs(tmp_path / "mine", mapping, str(tmp_path / "log.csv"))
    minimal_log().head(2).to_csv(tmp_path / "log.csv", index=False)
    assert import_logs(tmp_path / "mine", mapping, str(tmp_path / "log.csv"), overwrite=True).events == 2
    assert len(OfflineStore(tmp_path / "mine" / "store").read_events().compute()) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["import.json", "mapping.yaml", "store"]


def test_source_names(tmp_path):
    for bad in ("../escape", "a/b", "..", "synthetic", "movielens", "compact", "import", "-x", ""):
        with pytest.raises(InvalidInput):
            check_name(bad, tmp_path)
    assert check_name("my-logs_2.v1", tmp_path) == tmp_path / "my-logs_2.v1"
    with pytest.raises(InvalidInput, match="known under .*: synthetic, movielens"):
        known_source("mine", tmp_path)
    with pytest.raises(NotFound, match="shipped: kuairand, movielens_ratings"):
        resolve_mapping("no-such-mapping")


def test_the_cli_imports_and_then_knows_the_source(tmp_path, capsys):
    ratings(300).to_csv(tmp_path / "ratings.csv", index=False)
    base = ["--set", f"data.root={tmp_path / 'data'}"]
    importing = [*base, "data", "import", "mine", "--events", str(tmp_path / "ratings.csv")]
    assert main([*importing, "--mapping", "movielens_ratings"]) == 0
    assert "300 events" in capsys.readouterr().out
    assert known_source("mine", tmp_path / "data") == "mine"
    assert main([*importing, "--mapping", "movielens_ratings"]) == 2  # exists: needs --overwrite
    assert main([*base, "data", "compact", "mine"]) == 0
    assert main([*base, "data", "import", "synthetic", "--events", "x.csv", "--mapping", "kuairand"]) == 2
    assert "taken by reels" in capsys.readouterr().err
    assert main([*base, "features", "theirs"]) == 2  # unknown: the error lists the known ones
    assert "(known under" in (err := capsys.readouterr().err) and "movielens, mine)" in err
    assert main([*base, "evaluate", "--sources", "mine", "--fresh"]) == 2  # would overwrite the import
    assert "re-import mine" in capsys.readouterr().err
