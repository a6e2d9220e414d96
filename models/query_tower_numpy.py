"""The two-tower's query tower in numpy, from weights written beside its SavedModel: the same arithmetic
as the exported ``serving_default`` signature without TensorFlow's per-call overhead (converting a dozen
input tensors and dispatching the graph cost more than the forward itself for one user).

``export_weights`` writes ``query_tower.npz`` into the query tower's SavedModel folder when the tower is
Merlin's input block + MLP (``history_pooling: mean``): its embedding tables, Dense kernels and biases, the
input layout (the order Merlin's input block concatenates features, shared with the ranker's numpy
forward) and the SavedModel's input signature. Attention or masked-mean pooling have no numpy forward:
nothing is written and serving calls the SavedModel. ``load_query_tower`` picks the backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reels.models.ranker_numpy import (
    BACKENDS,
    _activate,
    _run,
    _Side,
    checked_inputs,
    input_layout,
    load_weights,
)
from reels.workflows.errors import ConfigError

WEIGHTS_FILE = "query_tower.npz"
FORMAT_VERSION = 1
_ACTIVATIONS = ("relu", "linear")


def _mlp_dense_layers(mlp, arrays: dict[str, np.ndarray]) -> list[str]:
    """Store the MLP's Dense layers in call order under ``mlp/<i>/kernel|bias``; returns their
    activations. Raises ``ConfigError`` on a layer the numpy forward does not run (dropout, norms)."""
    activations = []
    for layer in mlp.layers:
        kind = type(layer).__name__
        dense = layer.dense if kind == "_Dense" else layer if kind == "Dense" else None
        if dense is None:
            raise ConfigError(f"query tower layer {layer.name} ({kind}) has no numpy forward")
        activation = dense.activation.__name__
        if activation not in _ACTIVATIONS:
            raise ConfigError(
                f"query tower layer {dense.name}: activation {activation!r} has no numpy forward"
            )
        i = len(activations)
        arrays[f"mlp/{i}/kernel"] = dense.kernel.numpy()
        arrays[f"mlp/{i}/bias"] = dense.bias.numpy()
        activations.append(activation)
    return activations


def export_weights(encoder, signature: dict, folder: Path) -> Path | None:
    """Write ``folder/query_tower.npz`` from a trained Merlin query ``Encoder`` (input block, then MLP);
    ``signature`` maps each SavedModel input to its ``tf.TensorSpec``. Returns the file's path, or None
    (nothing written) when the encoder is not that shape."""
    input_block, mlp = encoder.blocks[0], encoder.blocks[-1]
    if len(encoder.blocks) != 2 or type(input_block).__name__ != "ParallelBlock":
        return None  # e.g. HistoryAttention / HistoryMean inputs: served by the SavedModel
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "inputs": {
            name: {"dtype": spec.dtype.name, "shape": list(spec.shape.as_list())}
            for name, spec in signature.items()
        },
        "layout": input_layout(input_block, arrays),
        "mlp": _mlp_dense_layers(mlp, arrays),
    }
    path = Path(folder) / WEIGHTS_FILE
    with path.open("wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


class NumpyQueryTower:
    """A query tower exported with ``query_tower.npz``, called like ``QueryTower``: a dict of numpy inputs
    with n rows (extra keys ignored) -> float32 (n, output_dim). Raises ``InvalidInput`` on a missing
    input, mismatched row counts, a wrong list length or an id outside its embedding table."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        meta, arrays = load_weights(self.path / WEIGHTS_FILE, FORMAT_VERSION, "re-export the two-tower")
        self.inputs: dict[str, dict] = meta["inputs"]
        layout: list[dict] = meta["layout"]
        tables = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("embedding/")}
        self._names = [e["name"] for e in layout]
        self._cardinality = {e["name"]: len(tables[e["table"]]) for e in layout if "table" in e}
        self._list_length = {n: s["shape"][1] for n, s in self.inputs.items() if len(s["shape"]) == 2}
        layers = [(arrays[f"mlp/{i}/kernel"], arrays[f"mlp/{i}/bias"], a) for i, a in enumerate(meta["mlp"])]
        first_kernel, self._first_bias, self._first_activation = layers[0]
        self._input = _Side(layout, tables, first_kernel)  # the first layer's matmul reads the input once
        self._rest = layers[1:]

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """n rows of query features -> (n, output_dim) float32 embeddings."""
        checked, rows = checked_inputs(
            features, self._names, None, self._list_length, self._cardinality, "query tower"
        )
        h = self._input.project(checked, rows) + self._first_bias
        return _run(_activate(h, self._first_activation), self._rest).astype(np.float32, copy=False)


def load_query_tower(folder: str | Path, backend: str = "numpy"):
    """The exported query tower in ``folder`` as serving runs it: ``NumpyQueryTower`` with backend
    ``numpy`` when the folder holds ``query_tower.npz`` (a tower exported without it, or with attention
    pooling, runs its SavedModel), ``QueryTower`` with ``savedmodel``; ``ConfigError`` on another backend."""
    if backend not in BACKENDS:
        raise ConfigError(f"query tower backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy" and (Path(folder) / WEIGHTS_FILE).exists():
        return NumpyQueryTower(folder)
    from reels.models.two_tower import QueryTower  # TensorFlow, only where the SavedModel runs

    return QueryTower(Path(folder))
