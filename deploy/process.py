"""A child server process that starts, is waited for until ready, and stops cleanly (SIGTERM, then
SIGKILL); its output goes to a log file that the errors point at."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from reels.workflows.errors import ServiceUnavailable


class ManagedProcess:
    """Mixin for the server launchers: ``self.process`` is the Popen; ``stop_timeout_s`` how long
    SIGTERM gets before SIGKILL; usable as a context manager around ``start()``.

    Each server runs in a process group of its own, so that its children (tritonserver's python-backend
    stubs, which do not exit when their parent dies) can be found and stopped even after the server
    itself was SIGKILLed or OOM-killed."""

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
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
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
        """SIGTERM the process, SIGKILL it after ``stop_timeout_s``, then SIGKILL whatever is left of its
        process group (children it orphaned by dying first), and forget it; a no-op when never started."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # the server alone: it stops its own children in order
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_process_group(self.process.pid)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def kill_process_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL every process left in group ``pgid`` and wait (up to ``timeout_s``) until they are gone;
    a no-op when the group is empty or gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while processes_in_group(pgid) and time.monotonic() < deadline:  # a big process takes a moment to exit
        time.sleep(0.05)


def processes_in_group(pgid: int) -> list[int]:
    """Pids of the live processes in group ``pgid`` (zombies excluded: they are only waiting to be reaped)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.info["pid"]) == pgid:
                found.append(process.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return found
