"""The one conversion loop every python-backend model uses: Triton request tensors -> a step -> response
tensors, with exactly one response per request and errors as per-request Triton errors (the model keeps
serving). ``pb_utils`` is passed in because it only exists inside Triton's python backend."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

import numpy as np

from reels.models.serving.request import BadRequest


def _error(pb_utils, message: str, invalid: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid else "INTERNAL", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def execute(
    pb_utils, requests, inputs: Sequence[str], step: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
):
    responses = []
    for request in requests:
        try:
            tensors = {}
            for name in inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise BadRequest(f"missing input tensor {name!r}")
                tensors[name] = tensor.as_numpy()
            outputs = step(tensors)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in outputs.items()]
                )
            )
        except BadRequest as exc:
            responses.append(_error(pb_utils, str(exc), invalid=True))
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the model down
            responses.append(
                _error(
                    pb_utils, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", invalid=False
                )
            )
    return responses
