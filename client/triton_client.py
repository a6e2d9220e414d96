"""A small client over tritonclient's HTTP and gRPC APIs with one interface for the ``reels`` ensemble."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reels.models.config import RANKER_TASKS
from reels.workflows.errors import ConfigError, InvalidInput

MODEL = "reels"
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


class ClientError(InvalidInput):
    """The server rejected or failed a request; ``message`` is the server's."""


@dataclass
class Recommendations:
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
        return FALLBACKS.get(self.fallback, str(self.fallback))


class ReelsClient:
    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 10.0):
        if protocol not in ("http", "grpc"):
            raise ConfigError(f"protocol must be http or grpc, got {protocol!r}")
        self.protocol = protocol
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ReelsClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # ---- health and metadata ---------------------------------------------------------------------------
    def health(self) -> dict[str, bool]:
        return {
            "live": self._client.is_server_live(),
            "ready": self._client.is_server_ready(),
            "model_ready": self._client.is_model_ready(MODEL),
        }

    def metadata(self) -> dict:
        meta = self._client.get_model_metadata(MODEL)
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
        from tritonclient.utils import InferenceServerException

        outputs = [self._module.InferRequestedOutput(n) for n in OUTPUTS]
        try:
            result = self._client.infer(MODEL, inputs, outputs=outputs)
        except InferenceServerException as exc:
            raise ClientError(exc.message()) from exc
        return {o.name(): result.as_numpy(o.name()) for o in outputs}

    def recommend(
        self,
        user_id: int,
        k: int = 20,
        device: str | None = None,
        hour: int | None = None,
        request_time: int | None = None,
    ) -> Recommendations:
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


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
