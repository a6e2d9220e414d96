"""Data-layer configuration: the synthetic generator and the feature workflow (config sections
``synthetic`` and ``features``). Cheap to import; each dataclass checks its values when built."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from reels.workflows.errors import ConfigError


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic event generator (config section ``synthetic``); raises ``ConfigError``
    on an out-of-range value."""

    seed: int = 42
    n_events: int = 1_000_000
    n_users: int = 20_000
    n_creators: int = 2_000
    n_videos: int = 40_000  # catalog before the first day
    new_videos_per_day: int = 400
    n_days: int = 14
    start: str = "2026-01-05"
    n_audio_tracks: int = 3_000
    mean_session_length: float = 8.0
    personalised_share: float = 0.65  # feed slots drawn from the user's tastes (rest: trending/popular)
    favourite_creator_share: float = 0.10  # feed slots drawn from a favourite creator
    drift: float = 0.6  # how far tastes move from start to end of the period (0 = stationary)
    trend_amplitude: float = 0.5  # strength of rising/falling category trends
    position_bias: float = 0.06  # logit penalty per feed position

    def __post_init__(self) -> None:
        checks = {
            "n_events": self.n_events > 0,
            "n_users": self.n_users > 0,
            "n_creators": self.n_creators > 0,
            "n_videos": self.n_videos > 0,
            "n_days": self.n_days > 0,
            "mean_session_length": self.mean_session_length >= 1,
            "personalised_share": 0 <= self.personalised_share <= 1,
            "favourite_creator_share": 0 <= self.favourite_creator_share <= 1 - self.personalised_share,
            "drift": 0 <= self.drift <= 1,
            "new_videos_per_day": self.new_videos_per_day >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid synthetic config values: {bad} (got {asdict(self)})")


@dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the NVTabular feature workflow (config section ``features``); raises ``ConfigError``
    on an out-of-range value."""

    user_freq_threshold: int = 1  # users with fewer training events share the OOV id
    video_freq_threshold: int = 1
    creator_freq_threshold: int = 1
    history_length: int = 20
    max_position: int = 50  # feed positions beyond this share one id
    view_threshold: float = 0.5  # watch fraction that counts as a view (label and history)
    rate_prior_strength: float = 10.0  # pseudo-events pulling rates towards the global mean

    def __post_init__(self) -> None:
        bad = [
            name
            for name, ok in {
                "user_freq_threshold": self.user_freq_threshold >= 0,
                "video_freq_threshold": self.video_freq_threshold >= 0,
                "creator_freq_threshold": self.creator_freq_threshold >= 0,
                "history_length": self.history_length >= 1,
                "max_position": self.max_position >= 1,
                "view_threshold": 0 < self.view_threshold <= 1,
                "rate_prior_strength": self.rate_prior_strength >= 0,
            }.items()
            if not ok
        ]
        if bad:
            raise ConfigError(f"invalid feature config values: {bad} (got {asdict(self)})")
