"""Parity: what the online path computes for request context equals the offline workflow transform."""

import numpy as np
import pandas as pd

from reels.feature_store.encoding import RequestEncoder
from reels.workflows.spec import OOV


def test_online_context_matches_the_offline_transform(tiny_features, tiny_store):
    encoder = RequestEncoder(tiny_features.workflow_dir)
    test = tiny_features.read_split("test").head(2_000)
    raw = tiny_store.read_events().compute().set_index("event_id").loc[test["event_id"]]
    seconds = raw["timestamp"].astype("int64").to_numpy() // 10**9
    online = encoder.context(raw["device"].to_numpy(), seconds)
    for name in ("device", "hour", "day_of_week"):
        np.testing.assert_array_equal(online[name], test[name].to_numpy(), err_msg=name)
    upload = tiny_store.read_table("videos").set_index("video_id").loc[raw["video_id"], "upload_time"]
    age = encoder.video_age(seconds, upload.astype("int64").to_numpy() // 10**9)
    np.testing.assert_allclose(age, test["video_age"].to_numpy(), rtol=1e-4, atol=1e-4)


def test_unknown_and_missing_context_values(tiny_features):
    encoder = RequestEncoder(tiny_features.workflow_dir)
    ids = encoder.context(["fridge", None, "ios"], np.array([0, 0, 0]))["device"]
    assert ids[0] == OOV
    assert ids[1] == 1
    assert ids[2] > OOV
    assert pd.Series(encoder.video_age([100.0], [200.0])).notna().all()  # uploaded "after" the request: age 0
