"""A/B experiments on the re-rank and the feed score: deterministic user bucketing, per-variant serving
settings and the seeded exploration policy's randomness (the exposure log lives in
``reels.feature_store.streams``).

Bucketing: ``u = blake2b(f"{salt}:{user_id}") / 2**64`` (uniform in [0, 1), identical in every process
and on every machine, unlike Python's salted ``hash()``), then the first variant whose cumulative
normalised weight exceeds ``u``. Changing the salt reshuffles users independently of earlier experiments.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from reels.workflows.errors import ConfigError

if TYPE_CHECKING:
    from reels.models.serving.config import ServingConfig

log = logging.getLogger(__name__)

# Settings a variant may change: the re-rank's, and the feed score's retrieval_weight (the ranking step
# buckets the user the same way). Retrieval and the ranker are shared by all variants, so candidates /
# max_k / trending stay global, and so does fresh_hours (retrieval builds the fresh pool).
VARIANT_SETTINGS = (
    "mmr_lambda", "max_per_creator", "max_per_category", "exploration_slots", "exploration_epsilon",
    "retrieval_weight",
)  # fmt: skip
DEFAULT_VARIANT = "default"  # the variant name when no experiment runs


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from ``parts``, stable across processes, runs and machines."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def seed_of(*parts: object) -> int:
    """A 64-bit seed for ``np.random.default_rng`` from ``parts`` (same stability as ``unit_hash``)."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _default_variants() -> dict[str, dict[str, Any]]:
    return {"control": {"weight": 0.5}, "diverse": {"weight": 0.5, "mmr_lambda": 0.5}}


@dataclass(frozen=True)
class Experiment:
    """An A/B experiment on the re-rank and the feed score (config section ``experiment``); raises
    ``ConfigError`` when built with a bad variant.

    ``variants``: name -> ``{"weight": w, <ServingConfig setting of VARIANT_SETTINGS>: value, ...}``, in
    order; the first is the control the report compares the others with. One variant = no experiment."""

    name: str = "rerank-diversity"
    salt: str = "2026-11"
    variants: dict = field(default_factory=_default_variants)

    def __post_init__(self) -> None:
        from reels.models.serving.config import ServingConfig  # serving imports this module

        if not self.variants:
            raise ConfigError("experiment.variants: at least one variant is needed")
        base = ServingConfig()
        for variant, settings in self.variants.items():
            if not isinstance(settings, dict):
                raise ConfigError(f"experiment.variants.{variant}: expected a mapping, got {settings!r}")
            weight = settings.get("weight", 1.0)
            if not isinstance(weight, int | float) or weight <= 0:
                raise ConfigError(f"experiment.variants.{variant}.weight must be > 0, got {weight!r}")
            unknown = set(settings) - {"weight", *VARIANT_SETTINGS}
            if unknown:
                raise ConfigError(
                    f"experiment.variants.{variant}: unknown settings {sorted(unknown)} "
                    f"(a variant may set weight and {', '.join(VARIANT_SETTINGS)})"
                )
            self.serving_config(variant, base)  # type-checks the values now, not at the first request

    @property
    def names(self) -> list[str]:
        """The variant names in config order (the first is the control)."""
        return list(self.variants)

    @property
    def weights(self) -> np.ndarray:
        """The variants' traffic shares, normalised to sum to 1, in ``names`` order."""
        w = np.array([float(s.get("weight", 1.0)) for s in self.variants.values()])
        return w / w.sum()

    def assign(self, user_id: int) -> str:
        """The variant of a raw user id, by the salted bucketing in the module docstring (deterministic)."""
        u = unit_hash(self.salt, int(user_id))
        i = int(np.searchsorted(np.cumsum(self.weights), u, side="right"))
        return self.names[min(i, len(self.names) - 1)]  # min: guards float rounding of the last sum

    def serving_config(self, variant: str, base: ServingConfig) -> ServingConfig:
        """``base`` with the variant's overrides applied (ints widened to float where the field is);
        raises ``ConfigError`` on a mistyped or out-of-range value."""
        overrides = {k: v for k, v in self.variants[variant].items() if k != "weight"}
        for key, value in overrides.items():
            expected = type(getattr(base, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                overrides[key] = float(value)
            elif not isinstance(value, expected) or isinstance(value, bool):
                raise ConfigError(
                    f"experiment.variants.{variant}.{key}: expected {expected.__name__}, got {value!r}"
                )
        return replace(base, **overrides)  # ServingConfig checks the values

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``name``, ``salt``, ``variants``), the inverse of ``from_dict``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> Experiment | None:
        """The experiment described by ``as_dict`` output, or None for None (no experiment)."""
        return None if spec is None else cls(**spec)
