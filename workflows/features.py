"""The feature spec and the NVTabular workflow that implements it: the single source of truth for every
feature the models see, offline and online.

One fitted ``nvt.Workflow`` holds four named subgraphs. Each can be pulled out with
``workflow.get_subworkflow(name)`` and run on its own, which is how user and video rows are transformed
for the online store and how request context is encoded at serving time:

=========  ============================================================================================
subgraph   outputs (tags)
=========  ============================================================================================
user       user_id (USER_ID), age_bucket, country, user_language (CATEGORICAL, USER);
           user_event_count, user_like_rate, user_completion_rate, user_watch_fraction (CONTINUOUS, USER)
video      video_id (ITEM_ID), creator_id, category, audio_track_id, video_language, duration_bucket
           (CATEGORICAL, ITEM); duration, video_view_count, video_like_rate, video_completion_rate,
           video_watch_fraction (CONTINUOUS, ITEM)
context    device, hour, day_of_week, position (CATEGORICAL, CONTEXT); video_age (CONTINUOUS, CONTEXT)
labels     view, liked, completed, shared (BINARY_CLASSIFICATION, TARGET); watch_fraction (REGRESSION)
=========  ============================================================================================

Id contract (NVTabular ``Categorify``): 0 = padding, 1 = null, 2 = out of vocabulary (unseen, or seen
fewer than ``freq_threshold`` times in the training window), 3.. = vocabulary by descending frequency.
Counts are log1p'd then standardised, durations likewise; rates are Bayesian-smoothed towards the
training-window mean, so users and videos with no training events get the prior instead of a NaN.
All continuous outputs are float32.

``history_video_ids`` (not produced by the workflow but derived from its ``video_id`` encoding, see
``reels.workflows.history``) lists the last ``history_length`` videos the user *viewed* strictly before
each event, most recent first, 0-padded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import nvtabular as nvt
import pandas as pd
from merlin.dag.ops.subgraph import Subgraph
from merlin.schema import Tags
from nvtabular import ops

from reels.workflows.config import FeatureConfig
from reels.workflows.spec import (
    BINARY_LABELS,
    CONTEXT_CATEGORICAL,
    CONTEXT_CONTINUOUS,
    DURATION_BUCKETS_S,
    PASSTHROUGH,
    REGRESSION_LABELS,
    USER_CATEGORICAL,
    USER_CONTINUOUS,
    VIDEO_CATEGORICAL,
    VIDEO_CONTINUOUS,
)

if TYPE_CHECKING:
    from distributed import Client


# ---- aggregates over the training window -------------------------------------------------------------
@dataclass(frozen=True)
class Aggregates:
    """Per-user and per-video counts and smoothed rates computed from training events only."""

    users: pd.DataFrame  # index raw user_id; columns USER_CONTINUOUS
    videos: pd.DataFrame  # index raw video_id; columns VIDEO_CONTINUOUS minus duration
    prior: dict[str, float]  # global training-window rates used for smoothing and for unseen keys


def _watch_fraction(watch_time_s, duration_s):
    return (watch_time_s / duration_s.where(duration_s > 0, 1.0)).clip(0.0, 1.0)


def compute_aggregates(train_events, config: FeatureConfig) -> Aggregates:
    """Per raw user id and raw video id: event count and prior-smoothed like, completion and watch-fraction
    rates (float32), plus the global prior; ``train_events`` is a dask or pandas frame of raw training events."""
    frame = train_events[["user_id", "video_id", "liked", "completed", "watch_time_s", "video_duration_s"]]
    frame = frame.assign(
        liked=frame["liked"].astype("float64"),
        completed=frame["completed"].astype("float64"),
        watch_fraction=_watch_fraction(frame["watch_time_s"], frame["video_duration_s"]),
        one=1.0,
    )[["user_id", "video_id", "liked", "completed", "watch_fraction", "one"]]
    totals = frame[["liked", "completed", "watch_fraction", "one"]].sum()
    by_user = frame.groupby("user_id")[["liked", "completed", "watch_fraction", "one"]].sum()
    by_video = frame.groupby("video_id")[["liked", "completed", "watch_fraction", "one"]].sum()
    if hasattr(totals, "compute"):
        import dask

        totals, by_user, by_video = dask.compute(totals, by_user, by_video)
    n = max(float(totals["one"]), 1.0)
    prior = {
        "like_rate": float(totals["liked"]) / n,
        "completion_rate": float(totals["completed"]) / n,
        "watch_fraction": float(totals["watch_fraction"]) / n,
    }

    def smoothed(sums: pd.DataFrame, prefix: str, count_name: str) -> pd.DataFrame:
        m = config.rate_prior_strength
        denominator = sums["one"] + m
        return pd.DataFrame(
            {
                count_name: sums["one"].astype(np.float64),
                f"{prefix}_like_rate": (sums["liked"] + m * prior["like_rate"]) / denominator,
                f"{prefix}_completion_rate": (sums["completed"] + m * prior["completion_rate"]) / denominator,
                f"{prefix}_watch_fraction": (sums["watch_fraction"] + m * prior["watch_fraction"])
                / denominator,
            }
        ).astype(np.float32)

    return Aggregates(
        users=smoothed(by_user, "user", "user_event_count"),
        videos=smoothed(by_video, "video", "video_view_count"),
        prior=prior,
    )


def _fill_aggregates(
    frame: pd.DataFrame, prefix: str, count_name: str, prior: dict[str, float]
) -> pd.DataFrame:
    return frame.fillna(
        {
            count_name: 0.0,
            f"{prefix}_like_rate": prior["like_rate"],
            f"{prefix}_completion_rate": prior["completion_rate"],
            f"{prefix}_watch_fraction": prior["watch_fraction"],
        }
    )


def user_rows(users: pd.DataFrame, aggregates: Aggregates) -> pd.DataFrame:
    """Raw user table + training aggregates, in the column names the ``user`` subgraph expects."""
    rows = users.rename(columns={"language": "user_language"}).drop(columns=["signup_time"])
    rows = rows.join(aggregates.users, on="user_id")
    rows = _fill_aggregates(rows, "user", "user_event_count", aggregates.prior)
    rows["raw_user_id"] = rows["user_id"]
    return rows


def video_rows(videos: pd.DataFrame, aggregates: Aggregates) -> pd.DataFrame:
    """Raw video table + training aggregates, in the column names the ``video`` subgraph expects."""
    rows = videos.rename(columns={"language": "video_language", "duration_s": "duration"})
    rows = rows.join(aggregates.videos, on="video_id")
    rows = _fill_aggregates(rows, "video", "video_view_count", aggregates.prior)
    rows["duration_bucket"] = rows["duration"]
    rows["raw_video_id"] = rows["video_id"]
    return rows


def enrich_events(events, users: pd.DataFrame, videos: pd.DataFrame, aggregates: Aggregates):
    """Join raw events (dask or pandas) with user and video attributes and training aggregates.

    Events of users or videos missing from the dimension tables keep nulls in those attributes
    (Categorify's null id) and the prior for aggregates.
    """
    user_side = user_rows(users, aggregates).drop(columns=["raw_user_id"])
    video_side = video_rows(videos, aggregates).drop(columns=["raw_video_id", "creator_id"])
    video_side = video_side.rename(columns={"duration": "catalog_duration"})
    joined = events.merge(user_side, on="user_id", how="left").merge(video_side, on="video_id", how="left")
    joined = _fill_aggregates(joined, "user", "user_event_count", aggregates.prior)
    joined = _fill_aggregates(joined, "video", "video_view_count", aggregates.prior)
    # The event's own duration is what the viewer saw; the catalog's fills the bucket for the video side.
    joined = joined.assign(
        duration=joined["video_duration_s"].astype("float32"),
        duration_bucket=joined["video_duration_s"].astype("float32"),
        raw_user_id=joined["user_id"],
        raw_video_id=joined["video_id"],
        event_time=joined["timestamp"].astype("int64") // 10**9,
        hour=joined["timestamp"].dt.hour.astype("int64"),
        day_of_week=joined["timestamp"].dt.dayofweek.astype("int64"),
        video_age=((joined["timestamp"] - joined["upload_time"]).dt.total_seconds() / 3600.0)
        .fillna(0.0)
        .clip(lower=0.0)
        .astype("float32"),
    )
    return joined.drop(columns=["catalog_duration", "upload_time"])


# ---- the workflow ------------------------------------------------------------------------------------
def _float32(col, _frame=None):
    return col.astype("float32")


def _rates_as_continuous() -> ops.LambdaOp:
    # The smoothed rates are already in [0, 1] and need no scaling, but without the CONTINUOUS tag (which
    # Normalize adds for the other continuous columns) Merlin Models' input blocks skip them and the
    # ranker's exported signature would type them as int64 ids.
    return ops.LambdaOp(_float32, dtype=np.float32, tags=[Tags.CONTINUOUS])


def _log_standardise(columns: tuple[str, ...]):
    return list(columns) >> ops.LogOp() >> ops.Normalize(out_dtype=np.float32)


def build_workflow(
    config: FeatureConfig, stats_dir: str | None = None, client: Client | None = None
) -> nvt.Workflow:
    """The unfitted workflow; fit it on enriched training events (``enrich_events``).

    ``stats_dir``: where Categorify writes its vocabularies while fitting. NVTabular's default is the
    current directory (``./categories``), which concurrent fits would share; ``Workflow.save`` copies the
    vocabularies next to the saved graph, so this folder can be deleted after saving. On a Dask cluster the
    workers write there: it must be an absolute path they all reach.

    ``client``: the Dask cluster the fit and transforms run on (NVTabular's multi-node path); None uses
    Dask's default client when one is open.
    """

    def Categorify(**kwargs) -> ops.Categorify:  # noqa: N802 - reads like the op it builds
        return ops.Categorify(out_path=stats_dir, **kwargs) if stats_dir else ops.Categorify(**kwargs)

    user = (
        (["user_id"] >> Categorify(freq_threshold=config.user_freq_threshold) >> ops.TagAsUserID())
        + (["age_bucket", "country", "user_language"] >> Categorify() >> ops.TagAsUserFeatures())
        + (
            (
                _log_standardise(("user_event_count",))
                + (
                    ["user_like_rate", "user_completion_rate", "user_watch_fraction"]
                    >> _rates_as_continuous()
                )
            )
            >> ops.TagAsUserFeatures()
        )
    )
    video = (
        (["video_id"] >> Categorify(freq_threshold=config.video_freq_threshold) >> ops.TagAsItemID())
        + (
            (
                (["creator_id"] >> Categorify(freq_threshold=config.creator_freq_threshold))
                + (["category", "audio_track_id", "video_language"] >> Categorify())
                + (
                    ["duration_bucket"]
                    >> ops.Bucketize({"duration_bucket": list(DURATION_BUCKETS_S)})
                    >> Categorify()
                )
            )
            >> ops.TagAsItemFeatures()
        )
        + (
            (
                _log_standardise(("duration", "video_view_count"))
                + (
                    ["video_like_rate", "video_completion_rate", "video_watch_fraction"]
                    >> _rates_as_continuous()
                )
            )
            >> ops.TagAsItemFeatures()
        )
    )
    max_position = config.max_position

    def clip_position(col, _frame=None):
        return col.clip(upper=max_position)

    context = (
        (["device", "hour", "day_of_week"] >> Categorify())
        + (["position"] >> ops.LambdaOp(clip_position) >> Categorify())
        + _log_standardise(("video_age",))
    ) >> ops.AddTags([Tags.CONTEXT])

    view_threshold = config.view_threshold

    def watch_fraction(col, frame):
        duration = frame["video_duration_s"]
        return (col / duration.where(duration > 0, 1.0)).clip(0.0, 1.0).astype("float32")

    def is_view(col, frame):
        return (watch_fraction(col, frame) >= view_threshold).astype("int32")

    def as_int(col, _frame=None):
        return col.astype("int32")

    watch = ["watch_time_s"]
    labels = (
        (
            (
                watch
                >> ops.LambdaOp(is_view, dependency=["video_duration_s"], dtype=np.int32)
                >> ops.Rename(name="view")
            )
            + (["liked", "completed", "shared"] >> ops.LambdaOp(as_int, dtype=np.int32))
        )
        >> ops.AddTags([Tags.TARGET, Tags.BINARY_CLASSIFICATION])
    ) + (
        watch
        >> ops.LambdaOp(watch_fraction, dependency=["video_duration_s"], dtype=np.float32)
        >> ops.Rename(name="watch_fraction")
        >> ops.AddTags([Tags.TARGET, Tags.REGRESSION])
    )

    graph = (
        Subgraph("user", user)
        + Subgraph("video", video)
        + Subgraph("context", context)
        + Subgraph("labels", labels)
        + list(PASSTHROUGH)
    )
    if client is None:
        return nvt.Workflow(graph)
    with warnings.catch_warnings():
        # NVTabular 23.08 marks the argument deprecated in favour of merlin's global client, which is what
        # it sets; passing it keeps the cluster explicit at the call site.
        warnings.filterwarnings("ignore", "The `client` argument is deprecated", FutureWarning)
        return nvt.Workflow(graph, client=client)


def subgraph_columns() -> dict[str, tuple[str, ...]]:
    """Output columns of each subgraph, in spec order (checked against the fitted workflow in tests)."""
    return {
        "user": USER_CATEGORICAL + USER_CONTINUOUS,
        "video": VIDEO_CATEGORICAL + VIDEO_CONTINUOUS,
        "context": CONTEXT_CATEGORICAL + CONTEXT_CONTINUOUS,
        "labels": BINARY_LABELS + REGRESSION_LABELS,
    }
