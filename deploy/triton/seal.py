"""Sealed tensors: a step model answers only tensors that an earlier step of the same server produced.

Triton serves the ensemble's step models (``<step>_v<N>``) on the same endpoints as the ensemble, so a
client could call ``diversity_rerank_vN`` directly with made-up ids and have them logged as exposures
for any user, or call a step with tensors no request would produce. The first step validates the
request like any client-facing API and seals what it derived from it: an HMAC-SHA256 over the tensors
(names, dtypes, shapes and bytes) under a key only the server's processes hold. Each later step checks
the seals over its inputs before it runs, and seals its own outputs chained to the request's seal. A
direct call then either replays exactly what the ensemble would compute (harmless) or is refused.

The key comes from ``$REELS_STEP_KEY``: `reels serve` draws a fresh one for each tritonserver it starts
(it lives in that process's environment only, never on a command line or in a file); a deployment that
starts tritonserver itself sets it from a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reels.models.serving.request import BadRequest
from reels.workflows.errors import ConfigError

KEY_ENV = "REELS_STEP_KEY"


def new_key() -> str:
    """A fresh random key (64 hex digits) for one server's steps."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class Seal:
    """A seal tensor ``name`` over the tensors ``covers`` (step-local names), chained to the seal tensor
    ``chain`` when given (so a step's outputs are bound to the request they were computed for)."""

    name: str
    covers: tuple[str, ...]
    chain: str | None = None


class Sealer:
    """Computes and checks seals with one server's key."""

    def __init__(self, key: str | bytes):
        if not key:
            raise ConfigError("the step key is empty")
        self._key = key.encode() if isinstance(key, str) else key

    @classmethod
    def from_environment(cls) -> Sealer:
        """The sealer for ``$REELS_STEP_KEY``; ``ConfigError`` when it is not set."""
        key = os.environ.get(KEY_ENV)
        if not key:
            raise ConfigError(
                f"${KEY_ENV} is not set: start tritonserver through `reels serve` (which draws one), or set "
                "it from a secret (the same value for every process of one server)"
            )
        return cls(key)

    def digest(self, tensors: Mapping[str, np.ndarray], seal: Seal) -> bytes:
        """The seal's 32-byte HMAC over ``tensors[name]`` for each covered name (and the chained seal)."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(seal.name.encode())
        if seal.chain is not None:
            mac.update(_seal_bytes(tensors, seal.chain))
        for name in seal.covers:
            array = np.asarray(tensors[name])
            mac.update(f"|{name}|{array.dtype.str}|{array.shape}|".encode())
            if array.dtype == object:  # BYTES tensors: the elements, length-prefixed
                for item in array.reshape(-1):
                    value = item if isinstance(item, bytes) else str(item).encode()
                    mac.update(len(value).to_bytes(8, "little") + value)
            else:
                mac.update(np.ascontiguousarray(array).tobytes())
        return mac.digest()

    def seal(self, tensors: Mapping[str, np.ndarray], seal: Seal) -> np.ndarray:
        """The seal as a BYTES [1] tensor."""
        return np.array([self.digest(tensors, seal)], dtype=object)

    def check(self, tensors: Mapping[str, np.ndarray], seals: Sequence[Seal]) -> None:
        """Raise ``BadRequest`` unless every seal in ``seals`` matches the tensors it covers."""
        for seal in seals:
            expected = self.digest(tensors, seal)
            if not hmac.compare_digest(expected, _seal_bytes(tensors, seal.name)):
                raise BadRequest(
                    f"{seal.name} does not match {', '.join(seal.covers)}: this step only answers tensors "
                    "produced by the earlier steps of the reels ensemble on this server; call the ensemble"
                )


def _seal_bytes(tensors: Mapping[str, np.ndarray], name: str) -> bytes:
    array = np.asarray(tensors[name]).reshape(-1)
    value = array[0] if array.size == 1 else b""
    return value if isinstance(value, bytes) else b""
