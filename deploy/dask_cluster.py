"""The Dask cluster a retrain runs on: an existing scheduler when given, else a LocalCUDACluster (one
worker per GPU, where GPUs and dask-cuda exist) or a LocalCluster on CPU. While the client is open it is
Dask's default, so NVTabular's fit/transform and the feature build's ``dask.compute`` run on it. A local
cluster's scheduler, dashboard and workers listen on loopback only: Dask's scheduler runs what it is sent, and the
dashboard shows the data's shape and timings to anyone who can reach it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster a retrain got: its kind, scheduler address, dashboard link (None if none) and workers."""

    kind: str  # scheduler | LocalCUDACluster | LocalCluster
    scheduler: str
    dashboard: str | None
    workers: int


LOOPBACK = "127.0.0.1"


def loopback_dashboard(address: str) -> str:
    """A dashboard address with no host (``:8787``, ``8787``) bound to loopback; one naming a host (such as
    ``0.0.0.0:8787``, to open it on purpose) unchanged."""
    host, colon, port = address.rpartition(":")
    if not colon:  # just a port
        return f"{LOOPBACK}:{address}"
    return address if host else f"{LOOPBACK}:{port}"


@contextmanager
def dask_cluster(
    scheduler: str | None = None,
    device: str = "cpu",
    n_workers: int | None = None,
    dashboard_address: str = f"{LOOPBACK}:8787",
) -> Iterator[ClusterInfo]:
    """Context manager: connect to ``scheduler`` or start a local (CUDA) cluster, yield its ``ClusterInfo``
    while its client is Dask's default, and close the client and any cluster started here on exit. A local
    cluster listens on loopback only (a ``dashboard_address`` without a host means loopback:
    ``loopback_dashboard``); the dashboard moves to a free port when that one is taken."""
    from distributed import Client, LocalCluster

    # The workers' own HTTP servers (/metrics, /health) bind all interfaces by default: loopback too.
    listen = {"host": LOOPBACK, "dashboard_address": loopback_dashboard(dashboard_address),
              "worker_dashboard_address": f"{LOOPBACK}:0"}  # fmt: skip

    if scheduler:
        client = Client(scheduler)
        cluster = None
        kind = "scheduler"
    elif device == "gpu":
        from dask_cuda import LocalCUDACluster  # lazy: only with the GPU stack

        cluster = LocalCUDACluster(**listen)
        client = Client(cluster)
        kind = "LocalCUDACluster"
    else:
        # Threads share the pinned numpy/pandas/pyarrow memory without pickling partitions between
        # processes; one worker process per 2 cores keeps memory accounting per worker meaningful.
        workers = n_workers or max(1, (os.cpu_count() or 2) // 2)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=max(1, (os.cpu_count() or 2) // workers),
            **listen,
            silence_logs=40,  # errors only
        )
        client = Client(cluster)
        kind = "LocalCluster"
    try:
        info = client.scheduler_info()
        yield ClusterInfo(kind, client.scheduler.address, client.dashboard_link, len(info.get("workers", {})))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
