"""The Dask cluster a retrain runs on: an existing scheduler when given, else a LocalCUDACluster (one
worker per GPU, where GPUs and dask-cuda exist) or a LocalCluster on CPU. While the client is open it is
Dask's default, so NVTabular's fit/transform and the feature build's ``dask.compute`` run on it. A local
cluster's scheduler, dashboard and workers listen on loopback only: Dask's scheduler runs what it is sent, and the
dashboard shows the data's shape and timings to anyone who can reach it.

An existing scheduler (``dask scheduler`` + ``dask worker`` processes, possibly on other machines) must have
workers that run this same environment (they unpickle our functions and NVTabular's operators) and reach the
offline store and the feature build folder at the same paths or URLs as the caller. ``DaskScheduler`` and
``DaskWorker`` run such processes as children (tests, benchmarks, a one-machine cluster of processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reels.deploy.process import ManagedProcess
from reels.workflows.errors import ServiceUnavailable

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster a retrain got: its kind, scheduler address, dashboard link (None if none), workers, and
    the client (open only inside ``dask_cluster``)."""

    kind: str  # scheduler | LocalCUDACluster | LocalCluster
    scheduler: str
    dashboard: str | None
    workers: int
    client: Client | None = field(default=None, repr=False, compare=False)


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
    connect_timeout_s: float = 30.0,
) -> Iterator[ClusterInfo]:
    """Context manager: connect to ``scheduler`` or start a local (CUDA) cluster, yield its ``ClusterInfo``
    while its client is Dask's default, and close the client and any cluster started here on exit. A local
    cluster listens on loopback only (a ``dashboard_address`` without a host means loopback:
    ``loopback_dashboard``); the dashboard moves to a free port when that one is taken.

    ``ServiceUnavailable`` when ``scheduler`` does not answer, or has no worker, within ``connect_timeout_s``
    (work sent to a scheduler without workers would wait forever)."""
    from distributed import Client, LocalCluster

    # The workers' own HTTP servers (/metrics, /health) bind all interfaces by default: loopback too.
    listen = {"host": LOOPBACK, "dashboard_address": loopback_dashboard(dashboard_address),
              "worker_dashboard_address": f"{LOOPBACK}:0"}  # fmt: skip

    if scheduler:
        client = _connect(scheduler, connect_timeout_s)
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
        workers = len(info.get("workers", {}))
        yield ClusterInfo(kind, client.scheduler.address, client.dashboard_link, workers, client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(scheduler: str, timeout_s: float) -> Client:
    """A client of the scheduler at ``scheduler`` once it has at least one worker, all of them with reels."""
    from importlib.metadata import version

    from distributed import Client

    try:
        client = Client(scheduler, timeout=timeout_s)
    except OSError as exc:  # distributed raises OSError (a TimeoutError) when nothing answers
        raise ServiceUnavailable(f"no Dask scheduler answers at {scheduler}: {exc}") from None
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        client.close()
        raise ServiceUnavailable(
            f"the Dask scheduler at {scheduler} has no worker after {timeout_s:.0f}s: start `dask worker {scheduler}`"
        ) from None
    # Workers unpickle our functions: one without reels would fail deep inside the feature build.
    found = client.run(version, "reels", on_error="return")
    if missing := sorted(worker for worker, answer in found.items() if isinstance(answer, Exception)):
        client.close()
        raise ServiceUnavailable(
            f"Dask workers {', '.join(missing)} cannot import reels: run them in this project's environment"
        )
    return client


def dask_cli() -> str:
    """The ``dask`` command of this environment (workers must run the same one: they unpickle our code)."""
    return str(Path(sys.executable).with_name("dask"))


@dataclass
class DaskScheduler(ManagedProcess):
    """A ``dask scheduler`` child process on ``host`` (loopback by default; ``port`` 0: a free one), its
    dashboard on a free loopback port, its log and scheduler file in ``work_dir``; ``address`` once started."""

    work_dir: Path
    host: str = LOOPBACK
    port: int = 0
    address: str = field(default="", init=False)
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self, timeout_s: float = 60.0) -> DaskScheduler:
        """Start it and return ``self`` once it has written its address; ``ServiceUnavailable`` otherwise."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        scheduler_file = self.work_dir / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        command = [
            dask_cli(), "scheduler", "--host", self.host, "--port", str(self.port),
            "--dashboard-address", f"{LOOPBACK}:0", "--scheduler-file", str(scheduler_file),
        ]  # fmt: skip

        def ready() -> bool:
            self.address = json.loads(scheduler_file.read_text())["address"]
            return True

        self._launch("dask scheduler", command, self.work_dir / "scheduler.log", ready, timeout_s, 0.1)
        return self


@dataclass
class DaskWorker(ManagedProcess):
    """One ``dask worker`` process (no nanny: the worker is this child itself) named ``name``, connected to
    ``scheduler``, listening on loopback, with ``nthreads`` threads and its spill folder and log in ``work_dir``."""

    scheduler: str
    name: str
    work_dir: Path
    nthreads: int = 1
    memory_limit: str = "auto"
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self, timeout_s: float = 60.0) -> DaskWorker:
        """Start it and return ``self`` once the scheduler lists a worker of this name."""
        from distributed import Client

        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            dask_cli(), "worker", self.scheduler, "--name", self.name, "--nworkers", "1",
            "--nthreads", str(self.nthreads), "--no-nanny", "--memory-limit", self.memory_limit,
            "--host", LOOPBACK, "--dashboard-address", f"{LOOPBACK}:0", "--local-directory", str(self.work_dir),
        ]  # fmt: skip
        with Client(self.scheduler, timeout=timeout_s) as probe:

            def ready() -> bool:
                return self.name in probe.run_on_scheduler(_worker_names)

            self._launch(
                f"dask worker {self.name}", command, self.work_dir / "worker.log", ready, timeout_s, 0.2
            )
        return self


@contextmanager
def scheduler_and_workers(root: Path, workers: tuple[str, ...]) -> Iterator[str]:
    """A ``dask scheduler`` and one ``dask worker`` per name (folders under ``root``), all on loopback;
    yields the scheduler's address and stops every process on exit (all signalled at once: each takes a
    few seconds to close)."""
    processes: list[ManagedProcess] = [DaskScheduler(root / "scheduler")]
    try:
        address = processes[0].start().address
        for name in workers:
            processes.append(DaskWorker(address, name, root / name))
            processes[-1].start()
        yield address
    finally:
        for process in processes:
            if process.process is not None:
                process.process.terminate()
        for process in processes:
            process.stop()


def _worker_names(dask_scheduler) -> list[str]:
    """Run on the scheduler: the names of its workers."""
    return [str(worker.name) for worker in dask_scheduler.workers.values()]
