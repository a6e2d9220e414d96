"""An imported source goes through `reels features NAME`: the real NVTabular workflow fitted on the
imported store, with the time split its mapping chose."""

import json

import pandas as pd

from reels.client.cli import main
from tests.unit.workflows.test_import import kuairand_log, kuairand_videos


def test_an_imported_kuairand_log_builds_features(tmp_path):
    log = kuairand_log(n=1500)
    log.to_csv(tmp_path / "log.csv", index=False)
    kuairand_videos(set(log["video_id"])).to_parquet(tmp_path / "videos.parquet", index=False)
    base = [
        "--set",
        f"data.root={tmp_path / 'data'}",
        "--set",
        "features.history_length=3",
        "--device",
        "cpu",
    ]
    assert main([*base, "data", "import", "kr", "--events", str(tmp_path / "log.csv"),
                 "--videos", str(tmp_path / "videos.parquet"), "--mapping", "kuairand"]) == 0  # fmt: skip
    assert main([*base, "features", "kr"]) == 0

    features = tmp_path / "data" / "kr" / "features"
    manifest = json.loads((features / "manifest.json").read_text())
    assert manifest["rows"]["events"] == len(log)
    assert sum(manifest["rows"][w] for w in ("train", "valid", "test")) == len(log)
    split = {k: pd.Timestamp(v) for k, v in manifest["split"].items()}
    # the kuairand mapping's split (2 validation days, 2 test days), not the synthetic 1 + 1
    assert split["end"] - split["test_start"] == pd.Timedelta(days=2)
    assert split["test_start"] - split["valid_start"] == pd.Timedelta(days=2)
    videos = pd.read_parquet(features / "videos.parquet")
    assert set(videos["raw_video_id"]) == set(log["video_id"])
