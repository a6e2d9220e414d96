"""Start and stop a real ``redis-server`` (Debian's package, installed by deploy/setup.sh) for serving,
tests and benchmarks: loopback only by default, its own data directory, durable by default (append-only
file, fsync every second: a kill -9 loses at most the last second of writes, and a restart on the same
directory brings back streams, consumer groups, pending lists, hidden creators and features), optional
password. The settings go into a ``redis.conf`` (mode 0600) in the data directory, so the password
never appears on a command line."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from reels.deploy.process import ManagedProcess
from reels.workflows.errors import NotFound


class RedisNotInstalled(NotFound):
    """No ``redis-server`` binary on PATH."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; another process may take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer(ManagedProcess):
    """One ``redis-server`` child process, its config, append-only file and log (``redis.log``) in ``data_dir``.
    ``durable=False`` turns persistence off (scratch servers for benchmarks)."""

    data_dir: Path
    port: int = 6379
    bind: str = "127.0.0.1"
    password: str | None = None
    maxmemory: str = "2gb"
    durable: bool = True
    process: subprocess.Popen | None = field(default=None, init=False)
    stop_timeout_s: float = field(default=10.0, init=False)

    def command(self) -> list[str]:
        """The ``redis-server`` argv for these settings; raises ``RedisNotInstalled`` when there is no binary."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled(
                "redis-server not found: run `bash deploy/setup.sh` (installs Debian's redis-server) "
                "or `apt-get install redis-server`"
            )
        settings = {
            "port": str(self.port), "bind": self.bind, "dir": str(self.data_dir), "daemonize": "no",
            "maxmemory": self.maxmemory, "save": '""', "appendonly": "yes" if self.durable else "no",
            "appendfsync": "everysec", "protected-mode": "yes" if self.password is None else "no",
        }  # fmt: skip
        if self.password:
            settings["requirepass"] = json.dumps(self.password)  # a quoted string in redis.conf syntax
        conf = self.data_dir / "redis.conf"
        conf.touch(mode=0o600, exist_ok=True)
        conf.chmod(0o600)
        conf.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
        return [binary, str(conf)]

    def client(self, timeout_s: float = 0.5) -> redis.Redis:
        """A redis-py client to this server with connect and command timeouts of ``timeout_s``."""
        return redis.Redis(
            host=self.bind, port=self.port, password=self.password, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )  # fmt: skip

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and return ``self`` once it answers PING; raises ``ServiceUnavailable`` when it
        exits or is not ready within ``timeout_s``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = self.client()
        self._launch(
            "redis-server", self.command(), self.data_dir / "redis.log", client.ping, timeout_s, 0.05
        )
        return self
