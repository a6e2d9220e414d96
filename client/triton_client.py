"""A small client over tritonclient's HTTP and gRPC APIs with one interface for the ``reels`` ensemble.

tritonclient is imported when a client is made and the ensemble's name (``ENSEMBLE``, defined once with
the releases) when a client first needs it, so importing this module stays cheap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from reels.models.config import RANKER_TASKS
from reels.workflows.errors import ConfigError, InvalidInput, ServiceUnavailable

OUTPUTS = (
    "video_ids",
    "scores",
    "task_predictions",
    "explanation_ids",
    "fallback",
    "propensities",
    "variant",
)
FALLBACKS = {0: "none", 1: "cold start (trending)", 2: "feature store unavailable (trending)"}
# gRPC statuses that mean nobody answered in time, not that the server refused the request.
UNREACHABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
T = TypeVar("T")


class ClientError(InvalidInput):
    """The server rejected or failed a request; the message ends with the server's (exit code 2)."""


class TritonUnavailable(ServiceUnavailable):
    """Triton did not answer: nothing listens at the address, or it timed out (exit code 4)."""


@dataclass
class Recommendations:
    """One feed as the ensemble returned it."""

    user_id: int
    video_ids: np.ndarray
    scores: np.ndarray
    task_predictions: dict[str, np.ndarray]
    explanation_ids: np.ndarray
    fallback: int
    propensities: np.ndarray  # P(this video in this slot); < 1 only in exploration slots
    variant: str  # the user's A/B variant ("default" when no experiment runs)

    @property
    def fallback_reason(self) -> str:
        """Why the feed fell back to trending, in words ("none" when it did not)."""
        return FALLBACKS.get(self.fallback, str(self.fallback))


class ReelsClient:
    """The ``reels`` ensemble over HTTP or gRPC; a context manager that closes its connection."""

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 10.0, model: str | None = None):
        if protocol not in ("http", "grpc"):
            raise ConfigError(f"protocol must be http or grpc, got {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._model = model
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module

    @property
    def model(self) -> str:
        """The ensemble requests go to (``reels.deploy.triton.release.ENSEMBLE`` unless given)."""
        if self._model is None:
            from reels.deploy.triton.release import ENSEMBLE

            self._model = ENSEMBLE
        return self._model

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> ReelsClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _call(self, request: Callable[..., T], *args, **kwargs) -> T:
        """``request`` with tritonclient's failures as ours: unreachable -> ``TritonUnavailable``,
        anything the server answered with -> ``ClientError``."""
        from tritonclient.utils import InferenceServerException

        try:
            return request(*args, **kwargs)
        except OSError as exc:  # HTTP: connection refused or reset, socket timeouts
            raise self._unavailable(exc) from exc
        except InferenceServerException as exc:
            if str(exc.status()) in UNREACHABLE:
                raise self._unavailable(exc.message()) from exc
            raise ClientError(f"the server rejected the request: {exc.message()}") from exc

    def _unavailable(self, reason: object) -> TritonUnavailable:
        return TritonUnavailable(
            f"cannot reach Triton at {self.url} over {self.protocol}: {reason} (is `reels serve` running?)"
        )

    # ---- health and metadata ---------------------------------------------------------------------------
    def health(self) -> dict[str, bool]:
        """Whether the server is live and ready and the ensemble is ready."""
        return {
            "live": self._call(self._client.is_server_live),
            "ready": self._call(self._client.is_server_ready),
            "model_ready": self._call(self._client.is_model_ready, self.model),
        }

    def metadata(self) -> dict:
        """The ensemble's inputs and outputs as Triton describes them (a dict for both protocols)."""
        meta = self._call(self._client.get_model_metadata, self.model)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            return MessageToDict(meta, preserving_proto_field_name=True)
        return meta

    # ---- inference ---------------------------------------------------------------------------------------
    def _input(self, name: str, value: np.ndarray, datatype: str):
        tensor = self._module.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        return tensor

    def infer_raw(self, inputs: list) -> dict[str, np.ndarray]:
        """One inference with prepared ``InferInput``s: every output of the ensemble by name."""
        outputs = [self._module.InferRequestedOutput(n) for n in OUTPUTS]
        # gRPC has no connection timeout of its own: a deadline per request keeps a dead server from hanging us.
        deadline = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = self._call(self._client.infer, self.model, inputs, outputs=outputs, **deadline)
        return {o.name(): result.as_numpy(o.name()) for o in outputs}

    def recommend(
        self,
        user_id: int,
        k: int = 20,
        device: str | None = None,
        hour: int | None = None,
        request_time: int | None = None,
    ) -> Recommendations:
        """The feed of ``k`` videos for ``user_id`` (device, hour and request time default to the server's)."""
        inputs = [
            self._input("user_id", np.array([user_id], dtype=np.int64), "INT64"),
            self._input("k", np.array([k], dtype=np.int32), "INT32"),
            self._input("device", np.array([(device or "").encode()], dtype=object), "BYTES"),
            self._input("hour", np.array([-1 if hour is None else hour], dtype=np.int32), "INT32"),
            self._input("request_time", np.array([request_time or 0], dtype=np.int64), "INT64"),
        ]
        out = self.infer_raw(inputs)
        tasks = out["task_predictions"].reshape(-1, len(RANKER_TASKS))
        return Recommendations(
            user_id=user_id,
            video_ids=out["video_ids"],
            scores=out["scores"],
            task_predictions={t: tasks[:, i] for i, t in enumerate(RANKER_TASKS)},
            explanation_ids=out["explanation_ids"],
            fallback=int(out["fallback"][0]),
            propensities=out["propensities"],
            variant=_text(out["variant"].reshape(-1)[0]),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
