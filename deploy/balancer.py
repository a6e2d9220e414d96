"""HAProxy in front of the tritonservers of a replica set (`reels serve --replicas N`): one HTTP and one
gRPC (HTTP/2) frontend on the ports clients already use, each balancing requests over the replicas,
which are health-checked on Triton's ``/v2/health/ready``.

Why these settings:

- a replica is checked every second; after a failed check, every 0.25 s, and it is taken out after three
  failed checks in a row (a killed replica within about a second), back after two good ones; a check may
  take 2 s, because a busy two-core replica answers readiness slowly and must not be taken out for that;
- only requests the balancer logs are errors, retries and health-check changes (``haproxy.log``);
- a request whose connection to a replica fails, or whose replica closes the connection without an
  answer (killed mid-request), is retried on another replica (``retry-on conn-failure empty-response
  junk-response response-timeout``, ``option redispatch``); the whole request is buffered first
  (``option http-buffer-request``) so it can be sent again. A retried request that the dead replica had already run writes its exposure
  log entry twice: the exposure log is at-least-once (the A/B report counts distinct request ids);
- the runtime API (drain a replica, read the servers' states) is a unix socket readable by the owner only:
  whoever may change the balancer must be able to read this folder.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from reels.deploy.process import ManagedProcess
from reels.workflows.errors import InvalidInput, NotFound

HTTP_BACKEND = "triton_http"
GRPC_BACKEND = "triton_grpc"


@dataclass(frozen=True)
class Upstream:
    """One replica as the balancer sees it: a name and its loopback HTTP and gRPC ports."""

    name: str
    http_port: int
    grpc_port: int
    host: str = "127.0.0.1"


def haproxy_binary() -> str:
    """The ``haproxy`` executable (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise NotFound(
            "haproxy is not installed: `sudo apt-get install haproxy` (or run deploy/setup.sh as root)"
        )
    return found


def haproxy_config(
    upstreams: list[Upstream], address: str, http_port: int, grpc_port: int, admin_socket: Path
) -> str:
    """The ``haproxy.cfg`` text: an HTTP and an HTTP/2 (gRPC) frontend over ``upstreams``."""
    http_servers = "\n".join(f"    server {u.name} {u.host}:{u.http_port} check" for u in upstreams)
    # gRPC is HTTP/2 end to end; the health check still asks the replica's HTTP port for readiness.
    grpc_servers = "\n".join(
        f"    server {u.name} {u.host}:{u.grpc_port} proto h2 check port {u.http_port} check-proto h1"
        for u in upstreams
    )
    return f"""global
    stats socket {admin_socket} mode 600 level admin
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    option log-health-checks
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 60s
    timeout check 2s
    retries 3
    option redispatch 1
    option http-buffer-request
    retry-on conn-failure empty-response junk-response response-timeout
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 1s fall 3 rise 2

frontend http_in
    bind {address}:{http_port}
    default_backend {HTTP_BACKEND}

frontend grpc_in
    bind {address}:{grpc_port} proto h2
    default_backend {GRPC_BACKEND}

backend {HTTP_BACKEND}
    balance roundrobin
{http_servers}

backend {GRPC_BACKEND}
    balance roundrobin
{grpc_servers}
"""


@dataclass
class LoadBalancer(ManagedProcess):
    """One ``haproxy`` child process in the foreground, its config, admin socket and log under ``build``."""

    build: Path
    upstreams: list[Upstream]
    http_port: int
    grpc_port: int
    address: str = "127.0.0.1"  # the frontends bind here; "0.0.0.0" opens them to the network
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def config_path(self) -> Path:
        """The generated ``haproxy.cfg`` (owner-only)."""
        return self.build / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        """The runtime API's unix socket (mode 0600); absolute, since haproxy reads a relative one as
        host:port."""
        return self.build.resolve() / "haproxy.sock"

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP frontend (no scheme, as tritonclient takes it)."""
        return f"{'127.0.0.1' if self.address in ('0.0.0.0', '') else self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC (HTTP/2) frontend."""
        return f"{'127.0.0.1' if self.address in ('0.0.0.0', '') else self.address}:{self.grpc_port}"

    def write_config(self) -> Path:
        """Write ``haproxy.cfg`` (owner-only) and have haproxy check it; ``InvalidInput`` naming the problem."""
        self.build.mkdir(parents=True, exist_ok=True)
        text = haproxy_config(self.upstreams, self.address, self.http_port, self.grpc_port, self.admin_socket)
        if len(str(self.admin_socket)) > 100:  # sun_path holds 108 bytes
            raise InvalidInput(
                f"the balancer's folder {self.build.resolve()} is too deep for a unix socket path"
            )
        self.config_path.write_text(text)
        self.config_path.chmod(0o600)
        check = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            alerts = [line for line in (check.stdout + check.stderr).splitlines() if "ALERT" in line]
            raise InvalidInput(f"haproxy rejected {self.config_path}: " + " ".join(alerts))
        return self.config_path

    def start(self, timeout_s: float = 30.0) -> LoadBalancer:
        """Start haproxy and return ``self`` once at least one replica is up behind it."""
        self.write_config()
        self.admin_socket.unlink(missing_ok=True)
        self._launch(
            "haproxy", [haproxy_binary(), "-db", "-f", str(self.config_path)], self.build / "haproxy.log",
            lambda: "UP" in self.states(HTTP_BACKEND).values(), timeout_s, 0.2,
        )  # fmt: skip
        return self

    def command(self, line: str) -> str:
        """One runtime-API command over the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self, backend: str = HTTP_BACKEND) -> dict[str, str]:
        """Each replica's state in ``backend`` as haproxy sees it (UP, DOWN, DRAIN, MAINT, ...)."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def set_state(self, replica: str, state: str) -> None:
        """``ready``, ``drain`` or ``maint`` for ``replica`` in both backends (runtime only)."""
        for backend in (HTTP_BACKEND, GRPC_BACKEND):
            answer = self.command(f"set server {backend}/{replica} state {state}").strip()
            if answer:
                raise InvalidInput(
                    f"haproxy refused `set server {backend}/{replica} state {state}`: {answer}"
                )
