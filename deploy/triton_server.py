"""Run a real ``tritonserver`` on CPU from the nvidia-pytriton wheel, which needs three set-up steps:

- the wheel ships ``tritonserver`` 2.51, the python backend and per-Python stubs; the 3.11 stub is copied
  into a backend folder of ours, passed as ``--backend-directory``;
- ``LD_LIBRARY_PATH`` holds ``nvidia_pytriton.libs`` (the copied stub no longer finds its CUDA runtime by
  its relative path) and the base interpreter's LIBDIR (libpython3.11);
- the stub ignores PYTHONPATH and resolves ``python3`` through PATH, so the venv's ``bin/`` goes first:
  python models then import ``reels`` and the pinned stack from the venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from reels.deploy.process import ManagedProcess
from reels.deploy.triton.seal import KEY_ENV, new_key
from reels.workflows.errors import NotFound

PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def backend_directory(build: Path) -> Path:
    """``build/triton_backends/python`` = the wheel's python backend + this interpreter's stub."""
    root = _pytriton_root()
    target = build / "triton_backends"
    python_dir = target / "python"
    stub = root / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub"
    if not stub.exists():
        raise NotFound(f"nvidia-pytriton has no python backend stub for Python {PY_VERSION} ({stub})")
    if not (python_dir / "triton_python_backend_stub").exists():
        shutil.copytree(root / "backends" / "python", python_dir, dirs_exist_ok=True)
        shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    return target


def server_environment() -> dict[str, str]:
    """A copy of ``os.environ`` for ``tritonserver``: the wheel's libs and LIBDIR on ``LD_LIBRARY_PATH``,
    the venv's ``bin/`` first on ``PATH``, one thread per op pool and a fresh step seal key unless
    already set."""
    site = Path(_pytriton_root()).parents[1]
    libs = [str(site / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # One thread per op pool in every python-backend process: with four pipeline processes on two cores,
    # this gave +14% requests/s at concurrency 8 and the same latency at concurrency 1 (docs/BENCHMARKS.md).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    # The step models' seal key (deploy/triton/seal.py): fresh for each server, in its environment only.
    env.setdefault(KEY_ENV, new_key())
    return env


@dataclass
class TritonServer(ManagedProcess):
    """One ``tritonserver`` child process over ``repository``, polling it for changes (no model-control
    requests), with its backend folder and log (``tritonserver.log``) under ``build``."""

    repository: Path
    build: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "127.0.0.1"  # HTTP, gRPC and metrics bind here; "0.0.0.0" opens them to the network
    poll_s: int = 1  # how often Triton looks for repository changes (model_control_flags)
    process: subprocess.Popen | None = field(default=None, init=False)
    stop_timeout_s: float = field(default=30.0, init=False)

    def command(self) -> list[str]:
        """The ``tritonserver`` argv (prepares the backend folder under ``build`` as a side effect)."""
        binary = _pytriton_root() / "bin" / "tritonserver"
        return [
            str(binary), f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory(self.build)}",
            f"--http-address={self.address}", f"--grpc-address={self.address}", f"--metrics-address={self.address}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            "--allow-http=true", "--allow-grpc=true", "--allow-metrics=true", "--log-verbose=0",
            "--exit-on-error=false", "--strict-readiness=true", "--exit-timeout-secs=5",
            *self.model_control_flags(),
        ]  # fmt: skip

    def model_control_flags(self) -> list[str]:
        """Poll mode: Triton loads what the repository holds and follows its changes (a promotion writes
        the next release's model folders and then the ensemble's config, see deploy/promotion.py), and
        refuses every load and unload request. So only who may write the repository folder controls the
        models: no request can unload the ensemble or load code it uploads, and there is no key that
        would have to be passed on tritonserver's command line."""
        # One model loads at a time: with the default four threads, a poll that found a release's four
        # new step models once never started one of their stubs and hung the load (tritonserver 2.51).
        return [
            "--model-control-mode=poll",
            f"--repository-poll-secs={self.poll_s}",
            "--model-load-thread-count=1",
        ]

    @property
    def _host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "127.0.0.1", "") else self.address

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (no scheme, as tritonclient takes it)."""
        return f"{self._host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"{self._host}:{self.grpc_port}"

    def start(self, timeout_s: float = 240.0) -> TritonServer:
        """Start the server and return ``self`` once it reports ready over HTTP; raises
        ``ServiceUnavailable`` when it exits or is not ready within ``timeout_s``."""
        import tritonclient.http as http

        self.build.mkdir(parents=True, exist_ok=True)
        client = http.InferenceServerClient(self.http_url)
        self._launch(
            "tritonserver", self.command(), self.build / "tritonserver.log", client.is_server_ready, timeout_s, 0.5,
            env=server_environment(),
        )  # fmt: skip
        return self
