"""A replica set: N tritonservers, each polling its own copy of the model repository, behind one HAProxy
(``deploy/balancer.py``) on the ports clients use. What `reels serve --replicas N` runs.

Each replica gets its own repository (releases are relocatable: a copy serves unchanged), so a promotion
can go to one replica at a time (``promotion.promote(..., replicas=...)``): in poll mode a shared
repository would make every replica load the next release at once. The set's folder
(``<build>/<source>/replicas``) holds one folder per replica (repository, backends, log), the
balancer's config and admin socket, the promotion journal and lock, and ``replicas.json``, the record
`reels promote` reads to find the replicas while the set runs.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reels.deploy.balancer import LoadBalancer, Upstream
from reels.deploy.redis_server import free_port
from reels.deploy.triton_server import TritonServer

RECORD = "replicas.json"


def replica_name(i: int) -> str:
    """The ``i``-th replica's name: its folder and its server name in the balancer."""
    return f"r{i}"


@dataclass
class ReplicaSet:
    """Running replicas and their balancer. ``http_url``/``grpc_url`` are the balancer's."""

    root: Path
    servers: list[TritonServer]
    balancer: LoadBalancer

    @property
    def repository(self) -> Path:
        """Where the promotion journal and lock of the set live (the set's folder)."""
        return self.root

    @property
    def http_url(self) -> str:
        """The balancer's HTTP ``host:port``."""
        return self.balancer.http_url

    @property
    def grpc_url(self) -> str:
        """The balancer's gRPC ``host:port``."""
        return self.balancer.grpc_url

    def members(self) -> list[tuple[Path, str]]:
        """(repository, gRPC url) of each replica, in promotion order."""
        return [(server.repository, server.grpc_url) for server in self.servers]

    def record(self) -> dict:
        """What ``replicas.json`` holds: the balancer's ports and each replica's repository and ports."""
        return {
            "http_port": self.balancer.http_port,
            "grpc_port": self.balancer.grpc_port,
            "replicas": [
                {
                    "name": replica_name(i),
                    "repository": str(s.repository),
                    "http_port": s.http_port,
                    "grpc_port": s.grpc_port,
                    "metrics_port": s.metrics_port,
                }  # fmt: skip
                for i, s in enumerate(self.servers)
            ],
        }

    def stop(self) -> None:
        """Stop the balancer, then the replicas, and remove the record (nothing runs any more)."""
        (self.root / RECORD).unlink(missing_ok=True)
        self.balancer.stop()
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda server: server.stop(), self.servers))


def read_record(root: Path) -> dict | None:
    """The record of the replica set last started in ``root`` (None: none there)."""
    path = Path(root) / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def members_of(record: dict) -> list[tuple[Path, str]]:
    """(repository, gRPC url) of each replica of a record."""
    return [(Path(r["repository"]), f"127.0.0.1:{r['grpc_port']}") for r in record["replicas"]]


def start_replica_set(
    root: Path, repository: Path, count: int, http_port: int, grpc_port: int, address: str = "127.0.0.1"
) -> ReplicaSet:
    """Copy ``repository`` (just exported) into ``count`` replica folders under ``root``, start a
    tritonserver on each (loopback, free ports) and HAProxy on ``address``:``http_port``/``grpc_port``;
    stop what was started when any part fails."""
    servers = []
    for i in range(count):
        folder = root / replica_name(i)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(repository, folder / "repository", symlinks=True)
        servers.append(TritonServer(folder / "repository", folder, free_port(), free_port(), free_port()))
    balancer = LoadBalancer(
        root, [Upstream(replica_name(i), s.http_port, s.grpc_port) for i, s in enumerate(servers)],
        http_port, grpc_port, address=address,
    )  # fmt: skip
    replica_set = ReplicaSet(root, servers, balancer)
    try:
        with ThreadPoolExecutor(count) as pool:  # the loads overlap where there are cores for them
            list(pool.map(lambda server: server.start(), servers))
        balancer.start()
        (root / RECORD).write_text(json.dumps(replica_set.record(), indent=2))
    except BaseException:
        replica_set.stop()
        raise
    return replica_set
