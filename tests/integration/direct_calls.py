"""Calling one Triton model directly (a step model of the ensemble), for tests of what it refuses."""

from __future__ import annotations

import numpy as np


def infer(url: str, model: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call ``model`` over HTTP at ``url`` with numpy tensors and return every output it declares."""
    import tritonclient.http as http
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    client = http.InferenceServerClient(url)
    try:
        inputs = []
        for name, value in tensors.items():
            tensor = http.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = {o["name"]: o["datatype"] for o in client.get_model_metadata(model)["outputs"]}
        result = client.infer(model, inputs, outputs=[http.InferRequestedOutput(o) for o in outputs])
        # as_numpy gives an empty tensor float64: the declared dtype keeps it what the model returned
        return {o: result.as_numpy(o).astype(triton_to_np_dtype(t)) for o, t in outputs.items()}
    finally:
        client.close()
