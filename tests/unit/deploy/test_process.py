"""Servers run in a process group of their own: stopping one also stops the children it orphaned by dying
first (tritonserver's python stubs do not exit when tritonserver is SIGKILLed)."""

from __future__ import annotations

import os
import signal
import sys
import time

from reels.deploy.process import ManagedProcess, processes_in_group

# A parent that starts a child which ignores its parent's death, then waits.
PARENT = "import subprocess, time; subprocess.Popen(['sleep', '300']); open(r'{ready}', 'w').close(); time.sleep(300)"


class Sleeper(ManagedProcess):
    def __init__(self, ready_file):
        self.process = None
        self.ready_file = ready_file

    def start(self):
        command = [sys.executable, "-c", PARENT.format(ready=self.ready_file)]
        self._launch(
            "sleeper", command, self.ready_file.with_suffix(".log"), self.ready_file.exists, 30, 0.05
        )
        return self


def test_stop_after_the_server_was_sigkilled_stops_its_orphaned_children(tmp_path):
    server = Sleeper(tmp_path / "ready").start()
    group = server.process.pid
    assert len(processes_in_group(group)) == 2  # the server and its child
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    time.sleep(0.2)
    assert len(processes_in_group(group)) == 1  # the orphan lives on
    server.stop()
    assert processes_in_group(group) == []


def test_stop_of_a_running_server_leaves_nothing_in_its_group(tmp_path):
    with Sleeper(tmp_path / "ready") as server:
        group = server.process.pid
        assert os.getpgid(group) == group != os.getpgid(0)  # a group of its own, not the caller's
    assert processes_in_group(group) == []
