"""Synthetic Reels interactions: deterministic by seed, vectorised, streamed to the offline store one day
at a time so memory stays bounded by a day's events.

The world it simulates (and keeps as ground truth, for later user simulation):
- creators and videos with power-law popularity; new videos upload every day and become servable the
  day after, with a freshness boost that decays over a week;
- users with heavy-tailed activity, a latent taste over categories (sparse Dirichlet) that drifts from
  ``taste_start`` to ``taste_end`` over the period, and a few favourite creators;
- category trends that rise and fall over the period (global drift);
- feeds served in sessions; what a user watches depends on affinity (taste x category, favourite
  creator, video quality) and on feed position (lower positions are watched less: position bias).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reels.workflows.config import SyntheticConfig

CATEGORIES = (
    "comedy", "dance", "food", "sports", "music", "pets", "travel", "fashion", "beauty", "gaming",
    "education", "diy", "fitness", "art", "tech", "cars", "nature", "news", "family", "asmr",
    "memes", "science", "film", "books",
)  # fmt: skip
COUNTRIES = ("US", "BR", "IN", "GB", "DE", "FR", "MX", "ID", "JP", "ES")
COUNTRY_WEIGHTS = (0.25, 0.12, 0.15, 0.08, 0.07, 0.06, 0.08, 0.08, 0.06, 0.05)
COUNTRY_LANGUAGE = {"US": "en", "BR": "pt", "IN": "hi", "GB": "en", "DE": "de", "FR": "fr",
                    "MX": "es", "ID": "id", "JP": "ja", "ES": "es"}  # fmt: skip
AGE_BUCKETS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_WEIGHTS = (0.10, 0.32, 0.28, 0.15, 0.09, 0.06)
DEVICE_WEIGHTS = {"ios": 0.45, "android": 0.47, "web": 0.08}
# Evening-heavy diurnal pattern (UTC hours), used to place session starts.
HOUR_WEIGHTS = np.array(
    [3, 2, 1.5, 1, 1, 1.2, 2, 3, 3.5, 3.5, 3.5, 4, 4.5, 4, 4, 4.2, 4.5, 5, 6, 7, 7.5, 7, 6, 4.5]
)

USER_ID_BASE = 100_000
VIDEO_ID_BASE = 5_000_000
CREATOR_ID_BASE = 900_000


@dataclass
class GroundTruth:
    """The latent world behind the events; saved next to the data for simulations and tests."""

    taste_start: np.ndarray  # (n_users, n_categories), rows sum to 1
    taste_end: np.ndarray
    favourite_creators: np.ndarray  # (n_users, 3) creator index
    video_quality: np.ndarray  # (n_videos_total,)
    video_category: np.ndarray  # (n_videos_total,) category index
    video_creator: np.ndarray  # (n_videos_total,) creator index
    category_trend: np.ndarray  # (n_categories, n_days) multiplier
    # How feeds are filled (what the generator samples impressions from); None in files written before
    # these were saved, which then support only the taste-based part of the world.
    video_popularity: np.ndarray | None = None  # (n_videos_total,) base exposure weight
    video_upload_day: np.ndarray | None = None  # (n_videos_total,) upload time, days since the start
    category_popularity: np.ndarray | None = None  # (n_categories,) the trending/popular feed's mix
    personalised_share: float | None = None  # feed slots drawn from the user's tastes
    favourite_creator_share: float | None = None  # feed slots drawn from a favourite creator
    position_bias: float | None = None  # logit penalty per feed position
    mean_session_length: float | None = None  # feed videos per session

    def save(self, path: Path) -> None:
        """Write every field as one array of a compressed ``.npz`` at ``path`` (read back by ``load``)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        np.savez_compressed(path, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        """Read a ground truth written by ``save`` (fields an older file lacks stay None)."""
        with np.load(path) as data:
            values = {k: data[k] for k in cls.__dataclass_fields__ if k in data.files}
        return cls(**{k: v.item() if v.ndim == 0 else v for k, v in values.items()})

    @property
    def has_feed_model(self) -> bool:
        """Whether the file holds how feeds were filled (popularity, uploads, shares), not only tastes."""
        return self.video_popularity is not None and self.mean_session_length is not None

    def taste_on_day(self, user_index: np.ndarray, day: int, n_days: int) -> np.ndarray:
        """The (len(user_index), n_categories) tastes on 0-based ``day``, linearly between ``taste_start``
        (day 0) and ``taste_end`` (day ``n_days - 1``); ``user_index`` is the 0-based user index, not the id."""
        w = day / max(n_days - 1, 1)
        return (1 - w) * self.taste_start[user_index] + w * self.taste_end[user_index]


def _sample_rows(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a (n, k) probability matrix, vectorised."""
    cumulative = np.cumsum(probabilities, axis=1)
    u = rng.random(len(probabilities)) * cumulative[:, -1]
    return np.minimum((cumulative < u[:, None]).sum(axis=1), probabilities.shape[1] - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Responses:
    """What users did with the videos they were shown, one entry per impression."""

    watch_fraction: np.ndarray
    watch_time_s: np.ndarray  # float32
    skipped: np.ndarray
    completed: np.ndarray
    liked: np.ndarray
    shared: np.ndarray
    commented: np.ndarray
    followed_creator: np.ndarray
    hidden: np.ndarray

    def flags(self) -> dict[str, np.ndarray]:
        """The event schema's label flags, by column name."""
        return {name: getattr(self, name) for name in
                ("completed", "liked", "shared", "commented", "skipped", "followed_creator", "hidden")}  # fmt: skip


def respond(
    taste: np.ndarray,
    favourite: np.ndarray,
    quality: np.ndarray,
    position: np.ndarray,
    duration: np.ndarray,
    position_bias: float,
    rng: np.random.Generator,
) -> Responses:
    """The ground-truth response model: per impression, the user's taste for the video's category
    (a row of ``GroundTruth.taste_on_day``), whether its creator is a favourite, its latent quality, its
    0-based feed position and its duration -> watch time and flags. The generator and the A/B simulator
    both call this, so simulated experiments answer to the same world the models were trained on.
    The order of the random draws is part of the contract (it keeps generated data stable by seed)."""
    n = len(taste)
    n_cat = len(CATEGORIES)
    affinity = 2.0 * np.sqrt(taste * n_cat) - 2.0 + 1.2 * favourite + 0.5 * quality + rng.normal(0.0, 0.6, n)
    engagement = affinity - position_bias * position
    watch_fraction = _sigmoid(1.6 * engagement - 0.6 + rng.normal(0.0, 0.8, n))
    replay = (watch_fraction > 0.9) & (rng.random(n) < 0.3)
    watch_fraction = np.where(replay, 1.0 + rng.exponential(0.5, n), watch_fraction)
    skipped = watch_fraction < 0.12
    watched = ~skipped
    return Responses(
        watch_fraction=watch_fraction,
        watch_time_s=(watch_fraction * duration).astype(np.float32),
        skipped=skipped,
        completed=watch_fraction >= 0.95,
        liked=watched & (rng.random(n) < _sigmoid(1.3 * engagement - 3.3)),
        shared=watched & (rng.random(n) < _sigmoid(engagement - 5.0)),
        commented=watched & (rng.random(n) < _sigmoid(engagement - 5.3)),
        followed_creator=watched & (rng.random(n) < _sigmoid(engagement + 1.5 * favourite - 6.5)),
        hidden=skipped & (rng.random(n) < _sigmoid(-1.5 * affinity - 3.5)),
    )


class SyntheticReels:
    """Builds the world from a config, then yields one day of events at a time."""

    def __init__(self, config: SyntheticConfig):
        self.config = config
        cfg = config
        rng = np.random.default_rng(cfg.seed)
        self._rng = rng
        self.start = pd.Timestamp(cfg.start)
        n_cat = len(CATEGORIES)

        self.category_popularity = rng.dirichlet(np.full(n_cat, 2.0))
        # Creators: power-law reach, one home category each.
        self.creator_weight = rng.pareto(1.1, cfg.n_creators) + 1.0
        self.creator_category = rng.choice(n_cat, cfg.n_creators, p=self.category_popularity)
        self.creator_language = rng.choice(
            [COUNTRY_LANGUAGE[c] for c in COUNTRIES], cfg.n_creators, p=COUNTRY_WEIGHTS
        )

        # Videos: the initial catalog uploads over the 60 days before start; then new ones daily.
        n_total = cfg.n_videos + cfg.new_videos_per_day * cfg.n_days
        creator_p = self.creator_weight / self.creator_weight.sum()
        self.video_creator = rng.choice(cfg.n_creators, n_total, p=creator_p)
        off_topic = rng.random(n_total) < 0.2
        self.video_category = np.where(
            off_topic,
            rng.choice(n_cat, n_total, p=self.category_popularity),
            self.creator_category[self.video_creator],
        )
        self.video_quality = rng.normal(0.0, 1.0, n_total)
        self.video_duration = np.clip(rng.lognormal(np.log(22.0), 0.7, n_total), 3.0, 180.0).astype(
            np.float32
        )
        self.video_audio = (rng.zipf(1.3, n_total) - 1) % cfg.n_audio_tracks
        upload_offset_s = np.empty(n_total)
        upload_offset_s[: cfg.n_videos] = -rng.random(cfg.n_videos) * 60 * 86400
        new_days = np.repeat(np.arange(cfg.n_days), cfg.new_videos_per_day)
        upload_offset_s[cfg.n_videos :] = (new_days + rng.random(len(new_days))) * 86400
        self.video_upload_s = upload_offset_s
        # Base popularity: creator reach x quality x a heavy-tailed video-level luck factor.
        self.video_popularity = (
            self.creator_weight[self.video_creator] ** 0.7
            * np.exp(0.6 * self.video_quality)
            * rng.pareto(1.5, n_total)
            + 1e-3
        )

        # Users.
        self.user_activity = rng.pareto(1.3, cfg.n_users) + 0.2
        taste_start = rng.dirichlet(np.full(n_cat, 0.25), cfg.n_users)
        taste_new = rng.dirichlet(np.full(n_cat, 0.25), cfg.n_users)
        taste_end = (1 - cfg.drift) * taste_start + cfg.drift * taste_new
        favourites = rng.choice(cfg.n_creators, (cfg.n_users, 3), p=creator_p)
        self.user_country = rng.choice(len(COUNTRIES), cfg.n_users, p=COUNTRY_WEIGHTS)
        self.user_device = rng.choice(len(DEVICE_WEIGHTS), cfg.n_users, p=list(DEVICE_WEIGHTS.values()))

        days = np.arange(cfg.n_days)
        period = rng.uniform(7, 28, n_cat)
        phase = rng.uniform(0, 2 * np.pi, n_cat)
        trend = np.exp(
            cfg.trend_amplitude * np.sin(2 * np.pi * days[None, :] / period[:, None] + phase[:, None])
        )

        self.truth = GroundTruth(
            taste_start=taste_start,
            taste_end=taste_end,
            favourite_creators=favourites,
            video_quality=self.video_quality,
            video_category=self.video_category,
            video_creator=self.video_creator,
            category_trend=trend,
            video_popularity=self.video_popularity,
            video_upload_day=self.video_upload_s / 86400,
            category_popularity=self.category_popularity,
            personalised_share=cfg.personalised_share,
            favourite_creator_share=cfg.favourite_creator_share,
            position_bias=cfg.position_bias,
            mean_session_length=cfg.mean_session_length,
        )
        # Per-day event budget with a weekly rhythm (weekends +15%).
        weekday = (self.start + pd.to_timedelta(days, unit="D")).dayofweek.to_numpy()
        weights = np.where(weekday >= 5, 1.15, 1.0)
        self.events_per_day = np.floor(cfg.n_events * weights / weights.sum()).astype(np.int64)
        self.events_per_day[-1] += cfg.n_events - self.events_per_day.sum()

    # ---- dimension tables -------------------------------------------------------------------------------
    def users(self) -> pd.DataFrame:
        """The users table (``schema.USERS``), raw ids ``USER_ID_BASE + user index``, deterministic by seed."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed + 1)
        signup = self.start - pd.to_timedelta(rng.random(cfg.n_users) * 730, unit="D")
        countries = np.array(COUNTRIES)[self.user_country]
        return pd.DataFrame(
            {
                "user_id": USER_ID_BASE + np.arange(cfg.n_users, dtype=np.int64),
                "age_bucket": rng.choice(AGE_BUCKETS, cfg.n_users, p=AGE_WEIGHTS),
                "country": countries,
                "language": [COUNTRY_LANGUAGE[c] for c in countries],
                "signup_time": signup.floor("s"),
            }
        )

    def videos(self) -> pd.DataFrame:
        """The videos table (``schema.VIDEOS``) for the whole period, including videos uploaded on later days;
        raw ids ``VIDEO_ID_BASE + video index``, creator ids ``CREATOR_ID_BASE + creator index``."""
        n_total = len(self.video_creator)
        return pd.DataFrame(
            {
                "video_id": VIDEO_ID_BASE + np.arange(n_total, dtype=np.int64),
                "creator_id": CREATOR_ID_BASE + self.video_creator.astype(np.int64),
                "category": np.array(CATEGORIES)[self.video_category],
                "audio_track_id": self.video_audio.astype(np.int64),
                "duration_s": self.video_duration,
                "language": self.creator_language[self.video_creator],
                "upload_time": (self.start + pd.to_timedelta(self.video_upload_s, unit="s")).floor("s"),
            }
        )

    # ---- events -----------------------------------------------------------------------------------------
    def days(self) -> Iterator[pd.DataFrame]:
        """Yield each day's events as a frame conforming to ``schema.EVENTS``."""
        next_event_id = 0
        for day in range(self.config.n_days):
            frame = self._day(day, next_event_id)
            next_event_id += len(frame)
            yield frame

    def _available_videos(self, day: int) -> np.ndarray:
        # Videos uploaded before this day's start are servable.
        return np.flatnonzero(self.video_upload_s < day * 86400)

    def _day(self, day: int, first_event_id: int) -> pd.DataFrame:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, day])
        n_events = int(self.events_per_day[day])
        n_cat = len(CATEGORIES)

        # Sessions: a user opens the app and scrolls a feed of ~mean_session_length videos.
        lengths = 1 + rng.poisson(
            cfg.mean_session_length - 1, int(n_events / cfg.mean_session_length * 1.2) + 8
        )
        lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_events) + 1]
        lengths[-1] -= lengths.sum() - n_events
        lengths = lengths[lengths > 0]
        n_sessions = len(lengths)
        session_user = rng.choice(cfg.n_users, n_sessions, p=self.user_activity / self.user_activity.sum())
        session_start = (
            day * 86400
            + rng.choice(24, n_sessions, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum()) * 3600
            + rng.random(n_sessions) * 3600
        )
        session_device = np.where(
            rng.random(n_sessions) < 0.9,
            self.user_device[session_user],
            rng.choice(len(DEVICE_WEIGHTS), n_sessions),
        )
        session_of_event = np.repeat(np.arange(n_sessions), lengths)
        first_index = np.cumsum(lengths) - lengths
        position = np.arange(n_events) - np.repeat(first_index, lengths)
        user = session_user[session_of_event]

        # What the feed shows: personalised by drifting taste, trending, or from a favourite creator.
        taste = self.truth.taste_on_day(user, day, cfg.n_days)
        trend = self.truth.category_trend[:, day]
        personal_p = taste * trend[None, :]
        global_p = self.category_popularity * trend
        mode = rng.random(n_events)
        personalised = mode < cfg.personalised_share
        from_favourite = (mode >= cfg.personalised_share) & (
            mode < cfg.personalised_share + cfg.favourite_creator_share
        )
        category = np.where(
            personalised,
            _sample_rows(personal_p, rng),
            rng.choice(n_cat, n_events, p=global_p / global_p.sum()),
        )

        available = self._available_videos(day)
        age_days = day - self.video_upload_s[available] / 86400
        weight = self.video_popularity[available] * (1.0 + 3.0 * np.exp(-age_days / 5.0))
        video = np.empty(n_events, dtype=np.int64)
        avail_category = self.video_category[available]
        for c in range(n_cat):
            rows = np.flatnonzero(category == c)
            pool = available[avail_category == c]
            if len(rows) == 0:
                continue
            if len(pool) == 0:  # no video of this category yet: fall back to the whole catalog
                pool, pool_w = available, weight
            else:
                pool_w = weight[avail_category == c]
            cumulative = np.cumsum(pool_w)
            picks = np.searchsorted(cumulative, rng.random(len(rows)) * cumulative[-1])
            video[rows] = pool[np.minimum(picks, len(pool) - 1)]

        # Favourite-creator slots: a random available video by one of the user's favourite creators.
        fav_rows = np.flatnonzero(from_favourite)
        if len(fav_rows):
            by_creator = available[np.argsort(self.video_creator[available], kind="stable")]
            creators_sorted = self.video_creator[by_creator]
            creator = self.truth.favourite_creators[user[fav_rows], rng.integers(0, 3, len(fav_rows))]
            lo = np.searchsorted(creators_sorted, creator, side="left")
            hi = np.searchsorted(creators_sorted, creator, side="right")
            has = hi > lo
            pick = lo + (rng.random(len(fav_rows)) * np.maximum(hi - lo, 1)).astype(np.int64)
            video[fav_rows[has]] = by_creator[pick[has]]

        # Responses, all driven by affinity, feed position and noise (the one response model, shared
        # with the A/B simulator).
        vcat = self.video_category[video]
        vcreator = self.video_creator[video]
        favourite = (self.truth.favourite_creators[user] == vcreator[:, None]).any(axis=1)
        duration = self.video_duration[video]
        r = respond(
            taste[np.arange(n_events), vcat], favourite, self.video_quality[video], position, duration,
            cfg.position_bias, rng,
        )  # fmt: skip
        watch_time = r.watch_time_s

        # Timestamps: events in a session follow each other by the time watched plus a swipe.
        step = watch_time.astype(np.float64) + 0.5 + rng.exponential(1.0, n_events)
        elapsed = np.cumsum(step) - step
        elapsed -= np.repeat(elapsed[first_index], lengths)
        seconds = session_start[session_of_event] + elapsed
        timestamp = self.start + pd.to_timedelta(np.round(seconds * 1000), unit="ms")

        # The log ends at the period's cut-off: sessions still running then are truncated.
        keep = seconds < cfg.n_days * 86400
        frame = pd.DataFrame(
            {
                "event_id": first_event_id + np.arange(n_events, dtype=np.int64),
                "user_id": USER_ID_BASE + user.astype(np.int64),
                "video_id": VIDEO_ID_BASE + video,
                "creator_id": CREATOR_ID_BASE + vcreator.astype(np.int64),
                "timestamp": timestamp,
                "position": position.astype(np.int64),
                "device": np.array(list(DEVICE_WEIGHTS))[session_device[session_of_event]],
                "watch_time_s": watch_time,
                "video_duration_s": duration,
                **r.flags(),
            }
        )
        frame = frame[keep]
        frame["event_id"] = first_event_id + np.arange(len(frame), dtype=np.int64)
        return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
