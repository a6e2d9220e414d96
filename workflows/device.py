"""One switch for CPU vs GPU: ``--device cpu|gpu|auto``.

``auto`` picks the GPU only when an NVIDIA GPU is visible *and* the GPU stack (cudf, dask_cudf) imports;
GPU-only modules are imported lazily so CPU machines never need them.
"""

from __future__ import annotations

from typing import Literal

from reels.workflows.errors import ConfigError, NotFound

Device = Literal["cpu", "gpu"]


class DeviceUnavailable(NotFound):
    """``--device gpu`` was asked for but no NVIDIA GPU with an importable GPU stack is present."""


def gpu_available() -> bool:
    """True when merlin-core sees a GPU and cudf imports; never raises."""
    try:
        from merlin.core.compat import HAS_GPU, cudf
    except ImportError:  # pragma: no cover - merlin-core is a hard dependency
        return False
    return bool(HAS_GPU) and cudf is not None


def resolve_device(device: str = "auto") -> Device:
    """Map ``cpu|gpu|auto`` to the concrete ``"cpu"`` or ``"gpu"``; raises ``ConfigError`` on another value
    and ``DeviceUnavailable`` for ``gpu`` without a usable GPU."""
    if device not in ("cpu", "gpu", "auto"):
        raise ConfigError(f"device must be one of cpu, gpu, auto (got {device!r})")
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise DeviceUnavailable(
            "--device gpu needs an NVIDIA GPU and the GPU stack (pip install '.[gpu]' or the NGC Merlin "
            "container, see deploy/README.md); none was found. Use --device cpu or auto."
        )
    return device  # type: ignore[return-value]


def to_pandas(frame):
    """Return a pandas DataFrame for a cudf or pandas frame (a pandas frame is returned as is, not copied)."""
    return frame.to_pandas() if hasattr(frame, "to_pandas") else frame
