"""Start and stop a real ``redis-server`` (Debian's package, installed by deploy/setup.sh) for serving,
tests and benchmarks: loopback only by default, its own data directory, durable by default (append-only
file, fsync every second: a kill -9 loses at most the last second of writes, and a restart on the same
directory brings back streams, consumer groups, pending lists, hidden creators and features), optional
password, optional ACL user and optional TLS. The settings go into a ``redis.conf`` (mode 0600) in the
data directory, so the password never appears on a command line; an ACL user's password is stored there
only as its SHA-256. ``RedisCluster`` starts a local Redis Cluster of such servers (``ClusterNode``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from reels.deploy.process import ManagedProcess
from reels.workflows.errors import NotFound, ServiceUnavailable


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


CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on its port + 10000 (the cluster bus)


def cluster_port(tries: int = 100) -> int:
    """A free port for a cluster node whose bus port (``port + 10000``) exists and was free too."""
    for _ in range(tries):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65_535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise ServiceUnavailable(f"no free port pair (port, port + {CLUSTER_BUS_OFFSET}) in {tries} tries")


@dataclass
class ClusterNode(RedisServer):
    """One ``redis-server`` of a Redis Cluster: a ``RedisServer`` whose ``redis.conf`` also turns cluster
    mode on (its node table in ``nodes.conf`` of its own data directory)."""

    node_timeout_ms: int = 2_000

    def command(self) -> list[str]:
        """The ``RedisServer`` argv, its ``redis.conf`` extended with the cluster settings (and, with a
        password, the credentials a replica presents to its primary)."""
        command = super().command()
        conf = self.data_dir / "redis.conf"
        lines = ["cluster-enabled yes\n", "cluster-config-file nodes.conf\n",
                 f"cluster-node-timeout {self.node_timeout_ms}\n"]  # fmt: skip
        if self.password:
            lines.append(f"masterauth {json.dumps(self.password)}\n")
        if self.username:
            lines.append(f"masteruser {self.username}\n")
        conf.write_text(conf.read_text() + "".join(lines))
        return command


@dataclass
class RedisCluster:
    """A local Redis Cluster for tests and benchmarks: ``primaries`` primaries with ``replicas`` replicas
    each (``ClusterNode`` processes on free loopback ports, durable by default), joined by ``redis-cli
    --cluster create`` and ready once every node reports ``cluster_state:ok`` with all 16,384 slots
    covered and every replica in sync. ``node_timeout_ms`` is how long a primary may be silent before its
    replica takes over (Redis' default is 15 s; 2 s keeps failover tests short). ``password`` (and
    ``username``, an ACL user) protect every node as in ``RedisServer``; no TLS: loopback only."""

    data_dir: Path
    primaries: int = 3
    replicas: int = 1
    bind: str = "127.0.0.1"
    durable: bool = True
    node_timeout_ms: int = 2_000
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    nodes: list[ClusterNode] = field(default_factory=list, init=False)

    def url(self) -> str:
        """The cluster as a ``redis+cluster://`` URL naming its first node (any node will do), without the
        password."""
        user = f"{self.username}@" if self.username else ""
        return f"redis+cluster://{user}{self.bind}:{self.nodes[0].port}/0"

    def client(self, timeout_s: float = 0.5) -> redis.RedisCluster:
        """A redis-py cluster client (discovers every node from the first)."""
        return redis.RedisCluster(
            host=self.bind, port=self.nodes[0].port, username=self.username, password=self.password,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        )  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> RedisCluster:
        """Start every node, create the cluster and wait until it is ready; raises ``ServiceUnavailable``
        (and stops what it started) when a node does not start or the cluster is not ready in time."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisNotInstalled("redis-cli not found: `apt-get install redis-tools` (or redis-server)")
        try:
            for _ in range(self.primaries * (1 + self.replicas)):
                port = cluster_port()
                node = ClusterNode(
                    self.data_dir / f"node-{port}", port=port, bind=self.bind, durable=self.durable,
                    node_timeout_ms=self.node_timeout_ms, password=self.password, username=self.username,
                )  # fmt: skip
                self.nodes.append(node)
                node.start(timeout_s)
            user = ["--user", self.username] if self.username else []
            env = dict(os.environ, REDISCLI_AUTH=self.password) if self.password else None  # not argv
            run = subprocess.run(
                [cli, *user, "--cluster", "create", *(f"{self.bind}:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout_s, env=env,
            )  # fmt: skip
            if run.returncode != 0:
                raise ServiceUnavailable(
                    f"redis-cli --cluster create failed: {(run.stdout + run.stderr)[-500:]}"
                )
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        """Whether every running node says ``cluster_state:ok`` with all slots covered, and every replica's
        link to its primary is up."""
        for node in self.running():
            client = node.client()
            info = client.cluster("info")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16_384:
                return False
            replication = client.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def wait_ready(self, timeout_s: float = 30.0) -> float:
        """Wait until ``ready()``; the seconds waited. Raises ``ServiceUnavailable`` after ``timeout_s``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                if self.ready():
                    return time.monotonic() - started
            except redis.RedisError:
                pass  # a node not answering yet
            time.sleep(0.1)
        raise ServiceUnavailable(f"the Redis Cluster in {self.data_dir} is not ready after {timeout_s}s")

    def running(self) -> list[ClusterNode]:
        """The nodes whose process is alive."""
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def primary_nodes(self) -> list[ClusterNode]:
        """The running nodes that are primaries now (a failover changes which)."""
        return [n for n in self.running() if n.client().info("replication")["role"] == "master"]

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (no shutdown, no last write to its append-only file: a crash)."""
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
