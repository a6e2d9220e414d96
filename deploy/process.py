"""A child server process that starts, is waited for until ready, and stops cleanly (SIGTERM, then
SIGKILL); its output goes to a log file that the errors point at."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from reels.workflows.errors import ServiceUnavailable


class ManagedProcess:
    """Mixin for the server launchers: ``self.process`` is the Popen; ``stop_timeout_s`` how long
    SIGTERM gets before SIGKILL; usable as a context manager around ``start()``."""

    process: subprocess.Popen | None
    stop_timeout_s: float = 10.0

    def start(self):  # pragma: no cover - each launcher defines it
        """Launch the server, wait until it answers, and return ``self``; raises ``ServiceUnavailable``."""
        raise NotImplementedError

    def _launch(
        self,
        name: str,
        command: list[str],
        log_path: Path,
        ready: Callable[[], bool],
        timeout_s: float,
        poll_s: float,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``command`` and wait until ``ready()`` (exceptions count as not ready yet); a process
        that exits or a timeout raises, naming the log."""
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServiceUnavailable(f"{name} exited with {self.process.returncode}; see {log_path}")
                try:
                    if ready():
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(poll_s)
            raise ServiceUnavailable(f"{name} not ready within {timeout_s}s; see {log_path}")
        except BaseException:  # not ready, or interrupted (Ctrl-C, SIGTERM) while waiting: no orphan
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the process, SIGKILL it after ``stop_timeout_s``, and forget it; a no-op when not running."""
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
