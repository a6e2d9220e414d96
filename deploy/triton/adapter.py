"""The one python-backend model every step runs: ``model_repository/<step>/1/model.py`` is two lines,
``TritonPythonModel = bind(pb_utils)``. ``initialize`` reads the model's own config (its tensor names and
dtypes are the contract), the release it serves (from the model name ``<step>_v<N>``) and builds the step;
``execute`` converts Triton request tensors -> seal checks -> the step -> its output seals -> response
tensors, with exactly one response per request and errors as per-request Triton errors (the model keeps
serving): invalid-argument for bad input or a seal that does not match (a step called directly, see
``seal.py``), internal for anything else. ``pb_utils`` is passed in because it only exists inside Triton."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from reels.deploy.triton.seal import Seal, Sealer
from reels.models.serving.request import BadRequest


def _error(pb_utils, message: str, invalid: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid else "INTERNAL", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def execute(
    pb_utils, requests, inputs: Sequence[str], step: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
):
    """Run ``step`` on each request's ``inputs``; bad input -> INVALID_ARG, anything else -> INTERNAL."""
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


class SealedStep:
    """A step behind its seals: check the seals over the inputs, run, seal the outputs."""

    def __init__(
        self,
        step: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        sealer: Sealer,
        checks: Sequence[Seal],
        seals: Sequence[Seal],
    ):
        self.step, self.sealer, self.checks, self.seals = step, sealer, tuple(checks), tuple(seals)

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The step's outputs plus its seals; ``BadRequest`` when an input seal does not match."""
        self.sealer.check(tensors, self.checks)
        outputs = self.step(tensors)
        for seal in self.seals:
            outputs[seal.name] = self.sealer.seal({**tensors, **outputs}, seal)
        return outputs


class StepModel:
    """Triton's ``TritonPythonModel`` for any step; ``bind`` supplies the backend's ``pb_utils``."""

    pb_utils = None

    def initialize(self, args: dict) -> None:
        """Build the step named by the model (``<step>_v<N>``) for release N; check its inputs."""
        from reels.deploy.triton.release import Release, step_of
        from reels.deploy.triton.steps import STEP_CLASSES

        config = json.loads(args["model_config"])
        step_class = STEP_CLASSES[step_of(args["model_name"])]
        self.inputs = tuple(tensor["name"] for tensor in config["input"])
        if set(self.inputs) != set(step_class.inputs):
            raise ValueError(
                f"{args['model_name']}: config inputs {self.inputs} != step inputs {step_class.inputs}"
            )
        sealer = Sealer.from_environment()  # before the (slow) step: a missing key fails the load at once
        self.step = step_class(Release.for_model(args))
        self.sealed = SealedStep(self.step, sealer, step_class.checks, step_class.seals)

    def execute(self, requests):
        """One response per request, in order."""
        return execute(self.pb_utils, requests, self.inputs, self.sealed)

    def finalize(self) -> None:
        """Close the Redis connections ``initialize`` opened."""
        store = getattr(self.step, "store", None)
        if store is not None:
            store.client.close()


def bind(pb_utils) -> type:
    """The ``TritonPythonModel`` class for a ``model.py``, bound to the backend's ``pb_utils`` module."""
    return type("TritonPythonModel", (StepModel,), {"pb_utils": pb_utils})
