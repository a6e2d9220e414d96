"""A circuit breaker for the serving path's Redis calls.

Closed, calls go to Redis. The first failure opens it: from then on callers skip Redis at once (and
serve their flagged fallback), and a background thread probes Redis with PING every ``probe_every_s``
until it answers, which closes the breaker. No request ever pays for a probe: with Redis stalled
(SIGSTOP) only the request that met the first timeout waits; retrying inline once a second instead made
one request in every few dozen wait a full timeout, and the p99 with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Opens on ``trip()``; closes when ``probe()`` (e.g. ``client.ping``) returns without raising."""

    def __init__(self, probe: Callable[[], object], probe_every_s: float = 0.5, name: str = "redis"):
        self.probe = probe
        self.probe_every_s = probe_every_s
        self.name = name
        self.trips = 0
        self._open = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Whether callers should skip Redis now."""
        return self._open.is_set()

    def trip(self, reason: object = "") -> None:
        """Open the breaker (once: a trip while open changes nothing) and start probing."""
        with self._lock:
            if self._open.is_set():
                return
            self._open.set()
            self.trips += 1
        log.warning("%s unavailable (%s): skipping it until a probe answers", self.name, reason)
        threading.Thread(target=self._probe_until_back, name=f"{self.name}-probe", daemon=True).start()

    def _probe_until_back(self) -> None:
        while not self._stop.wait(self.probe_every_s):
            try:
                self.probe()
            except Exception:  # noqa: BLE001 - any failure means "not back yet"
                continue
            self._open.clear()
            log.warning("%s is back", self.name)
            return

    def close(self) -> None:
        """Stop probing (the owner is shutting down)."""
        self._stop.set()
