import numpy as np
import pandas as pd
import pytest

from reels.workflows.config import SyntheticConfig
from reels.workflows.offline_store import OfflineStore
from reels.workflows.schema import EVENTS
from reels.workflows.synthetic import SyntheticReels
from reels.workflows.validate import ValidationError, validate


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    world = SyntheticReels(
        SyntheticConfig(n_events=2_000, n_users=100, n_creators=20, n_videos=200, n_days=2)
    )
    return next(world.days())


def test_clean_batch_passes_with_canonical_dtypes(day):
    out = validate(day, EVENTS)
    assert list(out.columns) == EVENTS.names
    assert out["watch_time_s"].dtype == np.float32
    assert out["event_id"].dtype == np.int64


def test_missing_column_is_named(day):
    with pytest.raises(ValidationError, match=r"missing column\(s\) \['liked'\]"):
        validate(day.drop(columns=["liked"]), EVENTS)


def test_extra_column_is_named(day):
    with pytest.raises(ValidationError, match=r"unexpected column\(s\) \['mood'\]"):
        validate(day.assign(mood="happy"), EVENTS)


def test_wrong_dtype_names_column_and_dtype(day):
    with pytest.raises(ValidationError, match=r"column 'position': expected int, got dtype object"):
        validate(day.assign(position=day["position"].astype(str)), EVENTS)


def test_negative_watch_time_counts_rows(day):
    bad = day.copy()
    bad.loc[bad.index[:3], "watch_time_s"] = -1.0
    with pytest.raises(ValidationError, match=r"column 'watch_time_s': 3 row\(s\) below 0.0"):
        validate(bad, EVENTS)


def test_future_timestamps_count_rows(day):
    bad = day.copy()
    bad.loc[bad.index[:2], "timestamp"] = pd.Timestamp("2100-01-01")
    with pytest.raises(ValidationError, match=r"column 'timestamp': 2 row\(s\) lie in the future"):
        validate(bad, EVENTS)


def test_duplicate_event_ids_count_rows(day):
    bad = day.copy()
    bad.loc[bad.index[1], "event_id"] = bad.loc[bad.index[0], "event_id"]
    with pytest.raises(ValidationError, match=r"column 'event_id': 2 row\(s\) share a duplicate key"):
        validate(bad, EVENTS)


def test_nulls_are_reported(day):
    bad = day.copy()
    bad["device"] = bad["device"].where(bad.index > 4, None)
    with pytest.raises(ValidationError, match=r"column 'device': 5 row\(s\) are null"):
        validate(bad, EVENTS)


def test_every_problem_is_reported_at_once(day):
    bad = day.drop(columns=["hidden"]).copy()
    bad.loc[bad.index[0], "watch_time_s"] = -5.0
    with pytest.raises(ValidationError) as info:
        validate(bad, EVENTS)
    assert len(info.value.problems) == 2


def test_rejected_batch_writes_nothing(day, tmp_path):
    store = OfflineStore(tmp_path / "store")
    bad = day.copy()
    bad.loc[bad.index[-1], "watch_time_s"] = -1.0
    with pytest.raises(ValidationError):
        store.append("events", bad)
    assert list(tmp_path.rglob("*.parquet")) == []
