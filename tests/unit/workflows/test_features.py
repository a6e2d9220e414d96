"""The NVTabular workflow on tiny real data: names, dtypes, round trip, OOV, leakage, history."""

import numpy as np
import nvtabular as nvt
import pandas as pd
import pytest
from merlin import dtypes as md
from merlin.schema import Tags

from reels.workflows.features import compute_aggregates, enrich_events, subgraph_columns
from reels.workflows.history import previous_views
from reels.workflows.manifest import SPLITS
from reels.workflows.spec import HISTORY, PASSTHROUGH, USER_CONTINUOUS, VIDEO_CONTINUOUS

OOV, NULL = 2, 1
RATES = (
    "user_like_rate",
    "user_completion_rate",
    "user_watch_fraction",
    "video_like_rate",
    "video_completion_rate",
    "video_watch_fraction",
)


def test_output_names_follow_the_spec(tiny_features):
    workflow = tiny_features.load_workflow()
    expected = [c for cols in subgraph_columns().values() for c in cols] + list(PASSTHROUGH)
    assert workflow.output_schema.column_names == expected
    for name, columns in subgraph_columns().items():
        assert workflow.get_subworkflow(name).output_schema.column_names == list(columns)
    train = tiny_features.read_split("train")
    assert list(train.columns) == expected + ["session_id", HISTORY]


def test_continuous_features_are_float32(tiny_features):
    train = tiny_features.read_split("train")
    for column in (
        "user_event_count",
        "user_like_rate",
        "duration",
        "video_view_count",
        "video_age",
        "watch_fraction",
    ):
        assert train[column].dtype == np.float32, column
    assert train["watch_fraction"].between(0, 1).all()


def test_rates_are_tagged_continuous_float32(tiny_features):
    # Merlin Models' input blocks read continuous inputs by the CONTINUOUS tag: an untagged float column
    # is silently left out of the models (and exported as an int64 id).
    from merlin.io import Dataset

    files = sorted(str(p) for p in tiny_features.split_dir("train").glob("part-*.parquet"))
    written = Dataset(files, engine="parquet").schema
    fitted = tiny_features.load_workflow().output_schema
    for schema in (fitted, written):
        for column in RATES:
            assert Tags.CONTINUOUS in schema[column].tags, column
            assert schema[column].dtype == md.float32, column
        for column in RATES[:3]:
            assert Tags.USER in schema[column].tags, column
        for column in RATES[3:]:
            assert Tags.ITEM in schema[column].tags, column
    assert set(written.select_by_tag(Tags.CONTINUOUS).column_names) >= set(USER_CONTINUOUS + VIDEO_CONTINUOUS)


def test_save_load_transform_round_trip(tiny_features, tiny_store, tmp_path):
    workflow = tiny_features.load_workflow()
    workflow.save(str(tmp_path / "again"))
    reloaded = nvt.Workflow.load(str(tmp_path / "again"))
    split = tiny_store.time_split(1, 1)
    events = tiny_store.read_events(*split.window("test")).compute().head(500)
    train = tiny_store.read_events(*split.window("train"))
    aggregates = compute_aggregates(train, tiny_features.manifest().feature_config)
    rows = enrich_events(events, tiny_store.read_table("users"), tiny_store.read_table("videos"), aggregates)
    first = workflow.transform(rows)
    second = reloaded.transform(rows)
    pd.testing.assert_frame_equal(first, second)
    written = tiny_features.read_split("test").set_index("event_id").loc[events["event_id"]].reset_index()
    pd.testing.assert_frame_equal(first, written[first.columns], check_dtype=False)


def test_unseen_ids_map_to_oov_without_crashing(tiny_features):
    user = tiny_features.load_workflow().get_subworkflow("user")
    known = pd.read_parquet(tiny_features.users_path).query("user_id > 2").iloc[0]
    # NVTabular 23.08's Categorify fails on a batch where a column is *entirely* null (it peeks at the
    # first non-null value), so the unknown row travels with a known one, as it does in real batches.
    rows = pd.DataFrame(
        {
            "user_id": [int(known["raw_user_id"]), 123_456_789], "age_bucket": ["18-24", "99+"],
            "country": ["US", "XX"], "user_language": ["en", None], "user_event_count": [3.0, 0.0],
            "user_like_rate": [0.2, 0.2], "user_completion_rate": [0.2, 0.2], "user_watch_fraction": [0.5, 0.5],
        }
    )  # fmt: skip
    out = user.transform(rows)
    assert out.loc[0, "user_id"] == known["user_id"]
    assert out.loc[1, "user_id"] == OOV
    assert out.loc[1, "age_bucket"] == OOV
    assert out.loc[1, "country"] == OOV
    assert out.loc[1, "user_language"] == NULL


def test_video_table_covers_the_catalog(tiny_features, tiny_store):
    videos = pd.read_parquet(tiny_features.videos_path)
    assert len(videos) == len(tiny_store.read_table("videos"))
    # Videos uploaded after training ended were never seen in training: OOV, not a crash.
    catalog = tiny_store.read_table("videos")
    late = catalog.loc[catalog["upload_time"] >= tiny_store.time_split(1, 1).valid_start, "video_id"]
    assert len(late) > 0
    assert (videos.set_index("raw_video_id").loc[late, "video_id"] == OOV).all()


def test_statistics_come_from_the_training_window_only(tiny_features, tiny_store):
    split = tiny_store.time_split(1, 1)
    train = tiny_store.read_events(*split.window("train")).compute()
    later = tiny_store.read_events(split.valid_start, split.end).compute()
    new_users = set(later["user_id"]) - set(train["user_id"])
    assert new_users, "the tiny data should have users who first appear after training"
    users = pd.read_parquet(tiny_features.users_path).set_index("raw_user_id")
    fresh = users.loc[sorted(new_users)]
    assert (fresh["user_id"] == OOV).all()  # not in the training vocabulary
    assert fresh["user_event_count"].nunique() == 1  # all at the zero-count value
    prior = tiny_features.manifest().aggregate_prior
    np.testing.assert_allclose(fresh["user_like_rate"], prior["like_rate"], rtol=1e-5)
    # The standardised log-count orders users exactly as a direct count over the training window does.
    counts = train["user_id"].value_counts()
    standardised = users.loc[counts.index, "user_event_count"].to_numpy()
    order = np.argsort(counts.to_numpy(), kind="stable")
    assert np.all(np.diff(standardised[order]) >= -1e-5)


def test_vocabulary_is_fitted_on_training_events_only(tiny_features, tiny_store):
    split = tiny_store.time_split(1, 1)
    train_videos = set(
        tiny_store.read_events(*split.window("train"), columns=["video_id"]).compute()["video_id"]
    )
    test = tiny_features.read_split("test")
    unseen = ~test["raw_video_id"].isin(train_videos)
    assert unseen.any()
    assert (test.loc[unseen, "video_id"] == OOV).all()


def test_windows_do_not_overlap_in_time(tiny_features):
    bounds = tiny_features.manifest().split
    edges = {
        "train": ("start", "valid_start"),
        "valid": ("valid_start", "test_start"),
        "test": ("test_start", "end"),
    }
    for name in SPLITS:
        frame = tiny_features.read_split(name, columns=["event_time"])
        lo, hi = (pd.Timestamp(bounds[e]).value // 10**9 for e in edges[name])
        assert frame["event_time"].between(lo, hi - 1).all(), name


def _brute_force_history(frame: pd.DataFrame, length: int) -> dict[int, list[int]]:
    out = {}
    for _, events in frame.sort_values(["raw_user_id", "event_time", "event_id"]).groupby("raw_user_id"):
        viewed: list[int] = []
        for row in events.itertuples():
            out[row.event_id] = (viewed[::-1][:length] + [0] * length)[:length]
            if row.view:
                viewed.append(row.video_id)
    return out


def test_history_holds_only_earlier_views(tiny_features):
    frames = [tiny_features.read_split(name) for name in SPLITS]
    everything = pd.concat(frames, ignore_index=True)
    sample_users = everything["raw_user_id"].drop_duplicates().sample(60, random_state=0)
    subset = everything[everything["raw_user_id"].isin(sample_users)]
    expected = _brute_force_history(subset, 5)
    got = {row.event_id: list(row.history_video_ids) for row in subset.itertuples()}
    assert got == expected


def test_history_matches_the_latest_views_in_the_user_table(tiny_features):
    everything = pd.concat([tiny_features.read_split(name) for name in SPLITS], ignore_index=True)
    users = pd.read_parquet(tiny_features.users_path).set_index("raw_user_id")
    user = everything["raw_user_id"].value_counts().index[0]
    views = everything[(everything["raw_user_id"] == user) & (everything["view"] == 1)]
    latest = views.sort_values(["event_time", "event_id"])["video_id"].to_numpy()[::-1][:5]
    np.testing.assert_array_equal(users.loc[user, HISTORY][: len(latest)], latest)


def test_previous_views_ties_and_padding():
    user = np.array([1, 1, 1, 2, 2])
    time = np.array([10, 10, 20, 5, 6])
    order_key = np.array([0, 1, 2, 3, 4])
    video = np.array([11, 12, 13, 21, 22])
    viewed = np.array([1, 0, 1, 1, 1])
    history, _ = previous_views(user, time, order_key, video, viewed, 3)
    np.testing.assert_array_equal(history, [[0, 0, 0], [11, 0, 0], [11, 0, 0], [0, 0, 0], [21, 0, 0]])


def test_schema_file_describes_the_history_column(tiny_features):
    from merlin.io import Dataset

    files = sorted(str(p) for p in tiny_features.split_dir("train").glob("part-*.parquet"))
    schema = Dataset(files, engine="parquet", schema=None).schema
    assert HISTORY in schema.column_names
    loaded = nvt.Workflow.load(str(tiny_features.workflow_dir))
    assert loaded.output_schema["video_id"].properties["domain"]["max"] > OOV


@pytest.mark.gpu
def test_gpu_features_match_cpu(tiny_store, tiny_features, tmp_path):
    from reels.workflows.device import gpu_available
    from reels.workflows.pipeline import build_features

    if not gpu_available():
        pytest.skip("no NVIDIA GPU with cudf on this machine: the GPU path is exercised on GPU hosts only")
    gpu = build_features(
        tiny_store, tmp_path / "gpu", tiny_features.manifest().feature_config, 1, 1, device="gpu"
    )
    cpu_train = tiny_features.read_split("train").sort_values("event_id").reset_index(drop=True)
    gpu_train = gpu.read_split("train").sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        cpu_train.drop(columns=[HISTORY]), gpu_train.drop(columns=[HISTORY]), atol=1e-5
    )
