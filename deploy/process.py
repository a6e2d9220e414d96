"""A child server process that starts, is waited for, and stops cleanly (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import subprocess


class ManagedProcess:
    """Mixin for the server launchers: ``self.process`` is the Popen; ``stop_timeout_s`` how long
    SIGTERM gets before SIGKILL; usable as a context manager around ``start()``."""

    process: subprocess.Popen | None
    stop_timeout_s: float = 10.0

    def start(self):  # pragma: no cover - each launcher defines it
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
