"""The Reels event schema: one definition of every raw table, used by the generators, the loaders,
ingest validation and the offline store.

Raw ids (user, video, creator, audio track, event) are int64 in the source systems' own numbering;
the NVTabular workflow maps them to contiguous model ids (see ``reels.workflows.features``).
Timestamps are naive UTC ``datetime64[ns]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["int", "float", "bool", "string", "timestamp"]


@dataclass(frozen=True)
class Column:
    """One raw column: its name, value kind and the bounds ``validate`` enforces on ingest."""

    name: str
    kind: Kind
    doc: str = ""
    min_value: float | None = None  # inclusive lower bound checked on ingest
    not_future: bool = False  # timestamps must not lie after "now" on ingest


@dataclass(frozen=True)
class Table:
    """One raw table: its ordered columns, unique key and (for events) the day-partitioning time column."""

    name: str
    columns: tuple[Column, ...]
    key: str  # unique on ingest
    partition_time: str | None = None  # timestamp column that partitions the offline store by day
    docs: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The column names in schema order."""
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """The column called ``name``; raises KeyError when the table has none."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


LABEL_FLAGS = ("completed", "liked", "shared", "commented", "skipped", "followed_creator", "hidden")

EVENTS = Table(
    name="events",
    key="event_id",
    partition_time="timestamp",
    columns=(
        Column("event_id", "int", "unique id of the impression/interaction", min_value=0),
        Column("user_id", "int", "raw user id", min_value=0),
        Column("video_id", "int", "raw video id", min_value=0),
        Column("creator_id", "int", "raw creator id of the video", min_value=0),
        Column("timestamp", "timestamp", "when the video started playing (UTC)", not_future=True),
        Column("position", "int", "0-based position of the video in the served feed", min_value=0),
        Column("device", "string", "client platform: ios | android | web"),
        Column("watch_time_s", "float", "seconds watched (may exceed duration on replays)", min_value=0.0),
        Column("video_duration_s", "float", "duration of the video in seconds", min_value=0.0),
        *(Column(flag, "bool") for flag in LABEL_FLAGS),
    ),
)

USERS = Table(
    name="users",
    key="user_id",
    columns=(
        Column("user_id", "int", min_value=0),
        Column("age_bucket", "string", "e.g. 18-24"),
        Column("country", "string", "ISO 3166 alpha-2"),
        Column("language", "string", "ISO 639-1"),
        Column("signup_time", "timestamp", not_future=True),
    ),
)

VIDEOS = Table(
    name="videos",
    key="video_id",
    columns=(
        Column("video_id", "int", min_value=0),
        Column("creator_id", "int", min_value=0),
        Column("category", "string"),
        Column("audio_track_id", "int", min_value=0),
        Column("duration_s", "float", min_value=0.0),
        Column("language", "string"),
        Column("upload_time", "timestamp", not_future=True),
    ),
)

# "Don't show me this creator" choices, as the ingest worker received them: the online store keeps the
# set per user, this table keeps each choice for retraining. One row per hide message, keyed by its
# stream entry id (a re-delivery keeps the id, so it is written once). The timestamp is when Redis
# accepted the message (its entry id), not a client clock, so it is not checked against "now".
HIDES = Table(
    name="hides",
    key="hide_id",
    partition_time="timestamp",
    columns=(
        Column(
            "hide_id",
            "string",
            "stream entry id of the hide message, e.g. 1767225600000-0 (with a "
            "sharded event stream, prefixed with its shard: 3:1767225600000-0)",
        ),
        Column("user_id", "int", "raw user id", min_value=0),
        Column("creator_id", "int", "raw creator id the user hid", min_value=0),
        Column("timestamp", "timestamp", "when the event stream accepted the message (UTC)"),
    ),
)

TABLES = {t.name: t for t in (EVENTS, USERS, VIDEOS, HIDES)}

DEVICES = ("ios", "android", "web")
