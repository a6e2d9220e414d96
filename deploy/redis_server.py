"""Start and stop a real ``redis-server`` (Debian's package, installed by deploy/setup.sh) for serving,
tests and benchmarks: loopback only by default, its own data directory, durable by default (append-only
file, fsync every second: a kill -9 loses at most the last second of writes, and a restart on the same
directory brings back streams, consumer groups, pending lists, hidden creators and features), optional
password, optional ACL user and optional TLS. The settings go into a ``redis.conf`` (mode 0600) in the
data directory, so the password never appears on a command line; an ACL user's password is stored there
only as its SHA-256."""

from __future__ import annotations

import hashlib
import json
import re
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
    ``durable=False`` turns persistence off (scratch servers for benchmarks).

    ``password`` alone protects the default user (``requirepass``). With ``username`` too, the server has
    that one ACL user (all keys, channels and commands) and the default user is off, so every client must
    name the user. With ``cert_file`` and ``key_file``, ``port`` speaks TLS only (no plain-text port);
    ``ca_file`` is the CA that signed the server's certificate and any client's; client certificates are
    required when ``require_client_cert`` (``client()``, which also checks readiness, then presents
    ``client_cert_file`` and ``client_key_file``)."""

    data_dir: Path
    port: int = 6379
    bind: str = "127.0.0.1"
    password: str | None = field(default=None, repr=False)
    maxmemory: str = "2gb"
    durable: bool = True
    username: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    stop_timeout_s: float = field(default=10.0, init=False)

    def __post_init__(self) -> None:
        if self.username and not self.password:
            raise ValueError("an ACL user needs a password")
        if self.username and not re.fullmatch(r"[A-Za-z0-9_.@-]+", self.username):  # one redis.conf word
            raise ValueError(f"ACL user names are letters, digits and _.@- (got {self.username!r})")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("TLS needs both cert_file and key_file")
        if self.require_client_cert and not (self.ca_file and self.client_cert_file and self.client_key_file):
            raise ValueError("require_client_cert needs ca_file, client_cert_file and client_key_file")

    @property
    def tls(self) -> bool:
        """Whether ``port`` speaks TLS."""
        return self.cert_file is not None

    def url(self) -> str:
        """The server as a Redis URL, without the password (``rediss://`` with TLS, the user if any)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.bind}:{self.port}/0"

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
        if self.tls:  # TLS only: nothing listens in plain text
            settings.update({
                "port": "0", "tls-port": str(self.port), "tls-cert-file": str(self.cert_file),
                "tls-key-file": str(self.key_file),
                "tls-auth-clients": "yes" if self.require_client_cert else "optional",
            })  # fmt: skip
            if self.ca_file:
                settings["tls-ca-cert-file"] = str(self.ca_file)
        lines = [f"{key} {value}\n" for key, value in settings.items()]
        if self.username:
            # The hash, not the password: a copy of redis.conf does not give the password away.
            digest = hashlib.sha256(self.password.encode()).hexdigest()
            lines += ["user default off\n", f"user {self.username} on #{digest} ~* &* +@all\n"]
        elif self.password:
            lines.append(f"requirepass {json.dumps(self.password)}\n")  # a quoted string in redis.conf syntax
        conf = self.data_dir / "redis.conf"
        conf.touch(mode=0o600, exist_ok=True)
        conf.chmod(0o600)
        conf.write_text("".join(lines))
        return [binary, str(conf)]

    def client(self, timeout_s: float = 0.5) -> redis.Redis:
        """A redis-py client to this server with connect and command timeouts of ``timeout_s`` (as the
        ACL user, over TLS verified against ``ca_file``, with the client certificate when one is given)."""
        tls = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": str(self.ca_file) if self.ca_file else None}
            if self.client_cert_file and self.client_key_file:
                tls.update(ssl_certfile=str(self.client_cert_file), ssl_keyfile=str(self.client_key_file))
        return redis.Redis(
            host=self.bind, port=self.port, username=self.username, password=self.password,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **tls,
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
