"""The ranker's forward in numpy, from weights written beside its SavedModel: the same arithmetic as
``MultiTaskRanker`` at serving (no position-bias tower) without TensorFlow's per-call overhead.

``export_weights`` writes ``ranker.npz`` into the ranker's export folder at ``Ranker.export``: every
embedding table and Dense kernel/bias the served model uses, plus a JSON header (``meta``) holding the
architecture, the layer activations, the input signature and the input layout — the order in which
Merlin's input block concatenates the features (sorted by name; categorical ids through their embedding
table, list features mean-pooled over the whole fixed-length list, continuous features as they are).
Inputs the input block does not read (continuous columns without the ``continuous`` tag) are accepted
and ignored, as the SavedModel does.

``NumpyRanker`` reads it. The first layer of every expert, gate (MMoE, PLE's first level) or of the
shared bottom is linear in the concatenated input, so ``W·[u; v] + b = (W_u·u + b) + W_v·v``:
``score_candidates`` evaluates the user side (user features, history pooling, request context) once per
request and broadcasts it over the candidates; PLE's later levels run per candidate. ``load_ranker``
picks the backend for serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reels.workflows.errors import ConfigError, InvalidInput, NotFound

WEIGHTS_FILE = "ranker.npz"
FORMAT_VERSION = 1
BACKENDS = ("numpy", "savedmodel")
_ACTIVATIONS = ("relu", "linear", "softmax")


def combined_score(predictions: dict, weights: dict[str, float]):
    """The one definition of the ranking score (works on numpy arrays and tensors alike)."""
    return sum(weight * predictions[task] for task, weight in weights.items())


def conditioned(probabilities: dict, conditional_on: dict[str, str]) -> dict:
    """The heads' probabilities with each task of ``conditional_on`` (task -> parent task) read as
    ``P(task | parent)`` and returned as ``P(task) = P(parent) x P(task | parent)`` (as ESMM chains
    conversion on click): the one definition for training, export and the numpy forward (works on numpy
    arrays and tensors alike)."""
    return {
        t: p * probabilities[conditional_on[t]] if t in conditional_on else p
        for t, p in probabilities.items()
    }


# ---- write (at export, from the trained Keras model) ---------------------------------------------------
def _dense_layers(block, name: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """Store the Dense layers of ``block`` (a Dense or nested Sequentials of them) in call order under
    ``name/<i>/kernel|bias``; returns their activation names."""
    dense = [block] if not hasattr(block, "layers") else _flatten(block)
    activations = []
    for i, layer in enumerate(dense):
        activation = layer.activation.__name__
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"{layer.name}: activation {activation!r} has no numpy forward")
        arrays[f"{name}/{i}/kernel"] = layer.kernel.numpy()
        arrays[f"{name}/{i}/bias"] = layer.bias.numpy()
        activations.append(activation)
    return activations


def _flatten(block) -> list:
    out = []
    for layer in block.layers:
        out.extend(_flatten(layer) if hasattr(layer, "layers") else [layer])
    return out


def input_layout(input_block, arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A Merlin input block's concatenation: one entry per feature it reads, sorted by name as Merlin's
    ``ConcatFeatures`` does; each embedding table is stored once under ``embedding/<table>``."""
    entries: dict[str, dict[str, Any]] = {}
    for layer in input_block.submodules:
        kind = type(layer).__name__
        if kind == "EmbeddingTable":
            table = layer.table.embeddings.numpy()
            arrays[f"embedding/{layer.name}"] = table
            for column in layer.schema:
                entries[column.name] = {
                    "name": column.name, "kind": "embedding", "table": layer.name, "width": int(table.shape[1]),
                    "mean_pooled": bool(column.is_list),
                }  # fmt: skip
            if layer.sequence_combiner not in (None, "mean"):
                raise ConfigError(
                    f"{layer.name}: sequence combiner {layer.sequence_combiner!r} not supported"
                )
        elif kind == "Continuous":
            for name in layer.feature_names:
                entries[name] = {"name": name, "kind": "continuous", "width": 1}
    return [entries[name] for name in sorted(entries)]


def export_weights(
    model, score_weights: dict[str, float], signature: dict, query_features: tuple[str, ...], folder: Path
) -> Path:
    """Write ``folder/ranker.npz`` from a trained ``MultiTaskRanker`` (its served path); ``signature``
    maps each SavedModel input to its ``tf.TensorSpec``; ``query_features`` are the inputs that describe
    the request rather than the candidate (computed once per request). Returns the file's path."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "tasks": list(model.towers),
        "score_weights": dict(score_weights),
        "conditional_on": dict(model.config.conditional_on),
        "inputs": {
            name: {"dtype": spec.dtype.name, "shape": [d for d in spec.shape.as_list()]}
            for name, spec in signature.items()
        },
        "layout": input_layout(model.inputs_block, arrays),
        "query_features": list(query_features),
        "towers": {t: _dense_layers(model.towers[t], f"tower_{t}", arrays) for t in model.towers},
    }
    if model.architecture == "mmoe":
        meta["experts"] = [_dense_layers(e, f"expert_{i}", arrays) for i, e in enumerate(model.experts)]
        meta["gates"] = {t: _dense_layers(g, f"gate_{t}", arrays) for t, g in model.gates.items()}
    elif model.architecture == "ple":
        from reels.models.ranker import ple_gate_experts  # the one definition of what each gate mixes

        meta["ple"] = {
            "levels": model.config.ple_levels,
            "experts": {n: _dense_layers(e, n, arrays) for n, e in model.ple_experts.items()},
            "gates": {n: _dense_layers(g, n, arrays) for n, g in model.ple_gates.items()},
            "gate_experts": {
                owner: ple_gate_experts(model.config, owner) for owner in (*model.towers, "shared")
            },
        }
    else:
        meta["bottom"] = _dense_layers(model.bottom, "shared_bottom", arrays)
    path = Path(folder) / WEIGHTS_FILE
    with path.open("wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


# ---- read and run ---------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32 (a few thousand values per request: no library call
    overhead worth paying)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function in float32, stable on both tails (exp of -|x| never overflows)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0, out=x)
    if activation == "softmax":
        return _softmax(x)
    return x


def _run(h: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray, str]]) -> np.ndarray:
    """``h`` through Dense layers (kernel, bias, activation) in order."""
    for kernel, bias, activation in layers:
        h = _activate(h @ kernel + bias, activation)
    return h


def checked_inputs(
    features: dict[str, np.ndarray],
    names,
    rows: int | None,
    list_length: dict[str, int],
    cardinality: dict[str, int],
    model: str,
) -> tuple[dict[str, np.ndarray], int]:
    """``features[name]`` for each of ``names`` as arrays of ``rows`` rows (any count when None), checked
    against the export: list inputs of their fixed length, ids inside their embedding table, numbers
    elsewhere. Returns them and the row count; raises ``InvalidInput`` naming ``model`` and the input."""
    missing = [n for n in names if n not in features]
    if missing:
        raise InvalidInput(f"{model} inputs lack {missing}")
    out = {}
    for name in names:
        value = np.asarray(features[name])
        if value.ndim == 0:
            raise InvalidInput(f"{model} input {name!r} is a scalar, expected one value per row")
        rows = len(value) if rows is None else rows
        if len(value) != rows:
            raise InvalidInput(f"{model} input {name!r} has shape {value.shape}, expected {rows} rows")
        if name in list_length and (value.ndim != 2 or value.shape[1] != list_length[name]):
            raise InvalidInput(
                f"{model} input {name!r} has shape {value.shape}, expected (rows, {list_length[name]})"
            )
        if name in cardinality:
            if not np.issubdtype(value.dtype, np.integer):
                raise InvalidInput(f"{model} input {name!r} must hold integer ids, got {value.dtype}")
            if value.size and (value.min() < 0 or value.max() >= cardinality[name]):
                raise InvalidInput(
                    f"{model} input {name!r} has ids outside [0, {cardinality[name]}): "
                    f"{value.min()}..{value.max()}"
                )
        elif not np.issubdtype(value.dtype, np.number):
            raise InvalidInput(f"{model} input {name!r} must be numeric, got {value.dtype}")
        out[name] = value
    return out, int(rows or 0)


class _Side:
    """One side (user or candidate) of the first layer: its features' columns of the concatenated input
    and the matching rows of the stacked first-layer kernel."""

    def __init__(self, layout: list[dict], tables: dict[str, np.ndarray], kernel_rows: np.ndarray):
        self.layout = layout
        self.tables = tables
        self.kernel = np.ascontiguousarray(kernel_rows)
        self.width = int(sum(e["width"] for e in layout))

    def inputs(self, features: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """The side's part of the concatenated input, (rows, width) float32."""
        x = np.empty((rows, self.width), dtype=np.float32)
        at = 0
        for entry in self.layout:
            value = features[entry["name"]]
            width = entry["width"]
            if entry["kind"] == "embedding":
                vectors = self.tables[entry["table"]][value]
                x[:, at : at + width] = vectors.mean(axis=1) if entry["mean_pooled"] else vectors
            else:
                x[:, at] = value.reshape(-1)
            at += width
        return x

    def project(self, features: dict[str, np.ndarray], rows: int) -> np.ndarray:
        return self.inputs(features, rows) @ self.kernel


def load_weights(
    file: Path, format_version: int, remedy: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the arrays of a weights file written by an ``export_weights``; ``NotFound``
    (with ``remedy``) when it is missing, ``ConfigError`` on another format version."""
    if not file.exists():
        raise NotFound(f"no numpy weights at {file}: {remedy}")
    with np.load(file, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {k: data[k] for k in data.files if k != "meta"}
    if meta["format_version"] != format_version:
        raise ConfigError(f"{file}: format version {meta['format_version']}, expected {format_version}")
    return meta, arrays


class NumpyRanker:
    """A ranker exported by ``Ranker.export`` run from its ``ranker.npz``: called like ``ExportedRanker``
    (dict of numpy inputs, n rows -> float32 (n,) per task and ``score``), or with the user side once
    through ``score_candidates``. Raises ``InvalidInput`` on a missing input, mismatched row counts, a
    wrong list length or an id outside its embedding table."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        file = self.path / WEIGHTS_FILE
        meta, arrays = load_weights(file, FORMAT_VERSION, "re-export the ranker")
        self.architecture: str = meta["architecture"]
        self.tasks: tuple[str, ...] = tuple(meta["tasks"])
        self.score_weights: dict[str, float] = meta["score_weights"]
        self.conditional_on: dict[str, str] = meta.get("conditional_on", {})  # older exports: none
        self.inputs: dict[str, dict] = meta["inputs"]  # the SavedModel signature: name -> dtype, shape
        self._layout: list[dict] = meta["layout"]
        self._tables = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("embedding/")}
        self._cardinality = {e["name"]: len(self._tables[e["table"]]) for e in self._layout if "table" in e}
        self._list_length = {n: s["shape"][1] for n, s in self.inputs.items() if len(s["shape"]) == 2}

        def layers(name: str, activations: list[str]) -> list[tuple[np.ndarray, np.ndarray, str]]:
            return [
                (arrays[f"{name}/{i}/kernel"], arrays[f"{name}/{i}/bias"], a)
                for i, a in enumerate(activations)
            ]

        # The first layers of every branch fed by the input, stacked side by side: one matmul per side.
        if self.architecture == "ple":
            firsts = self._load_ple(meta["ple"], layers, file)
        elif self.architecture == "mmoe":
            experts = [layers(f"expert_{i}", a) for i, a in enumerate(meta["experts"])]
            gates = [layers(f"gate_{t}", meta["gates"][t]) for t in self.tasks]
            if any(len(g) != 1 or g[0][2] != "softmax" for g in gates):
                raise ConfigError(f"{file}: each gate must be one softmax Dense layer")
            firsts = [e[0] for e in experts] + [g[0] for g in gates]
            self._expert_rest = [e[1:] for e in experts]
            self._expert_width = experts[0][0][0].shape[1]
            self._expert_activation = experts[0][0][2]
            if any(
                e[0][0].shape[1] != self._expert_width or e[0][2] != self._expert_activation for e in experts
            ):
                raise ConfigError(f"{file}: experts differ in their first layer")
        else:
            bottom = layers("shared_bottom", meta["bottom"])
            firsts = [bottom[0]]
            self._bottom_activation = bottom[0][2]
            self._bottom_rest = bottom[1:]
        kernel = np.concatenate([k for k, _, _ in firsts], axis=1)
        self._first_bias = np.concatenate([b for _, b, _ in firsts])
        # Towers stacked over tasks: (tasks, d_in, d_out) per layer, so all heads run as one batched matmul.
        towers = [layers(f"tower_{t}", meta["towers"][t]) for t in self.tasks]
        self._towers = [
            (
                np.stack([tw[i][0] for tw in towers]),
                np.stack([tw[i][1] for tw in towers])[:, None, :],
                towers[0][i][2],
            )
            for i in range(len(towers[0]))
        ]
        # Split the first-layer kernel's rows by side: the user side is computed once per request.
        query = set(meta["query_features"])
        offsets = np.cumsum([0] + [e["width"] for e in self._layout])

        def side(of_user: bool) -> _Side:
            picked = [i for i, e in enumerate(self._layout) if (e["name"] in query) == of_user]
            rows = [np.arange(offsets[i], offsets[i + 1]) for i in picked]
            kernel_rows = kernel[np.concatenate(rows)] if rows else kernel[:0]
            return _Side([self._layout[i] for i in picked], self._tables, kernel_rows)

        self._user, self._item = side(True), side(False)

    def _load_ple(self, ple: dict, layers, file: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """Keep PLE's experts and gates by level; return the first-level branches' first layers (every
        expert's and gate's at level 0: they all read the input), in the order ``_forward`` splits them."""
        levels = int(ple["levels"])
        self._ple_gate_experts: dict[str, list[str]] = ple["gate_experts"]
        self._ple_experts: list[dict[str, list]] = [{} for _ in range(levels)]
        self._ple_gates: list[dict[str, tuple]] = [{} for _ in range(levels)]
        for name, activations in ple["experts"].items():
            _, level, local = name.split("_", 2)  # expert_<level>_<owner>_<i>
            self._ple_experts[int(level)][local] = layers(name, activations)
        for name, activations in ple["gates"].items():
            _, level, owner = name.split("_", 2)  # gate_<level>_<owner>
            gate = layers(name, activations)
            if len(gate) != 1 or gate[0][2] != "softmax":
                raise ConfigError(f"{file}: each gate must be one softmax Dense layer")
            self._ple_gates[int(level)][owner] = gate[0]
        firsts = [e[0] for e in self._ple_experts[0].values()] + list(self._ple_gates[0].values())
        self._ple_first_widths = [kernel.shape[1] for kernel, _, _ in firsts]
        return firsts

    def _ple_trunk(self, z: np.ndarray, rows: int) -> np.ndarray:
        """PLE's per-task trunk outputs (tasks, rows, d) from level 0's stacked first-layer outputs ``z``."""
        bounds = np.cumsum([0, *self._ple_first_widths])
        experts0, gates0 = self._ple_experts[0], self._ple_gates[0]
        outputs, weights = {}, {}
        for i, (local, expert) in enumerate(experts0.items()):
            h = _activate(z[:, bounds[i] : bounds[i + 1]], expert[0][2])
            outputs[local] = _run(h, expert[1:])
        for j, owner in enumerate(gates0, start=len(experts0)):
            weights[owner] = _softmax(z[:, bounds[j] : bounds[j + 1]])
        inputs: dict[str, np.ndarray] = {}
        for level in range(len(self._ple_experts)):
            if level:  # later levels read each owner's previous output
                outputs = {
                    local: _run(inputs[local.rsplit("_", 1)[0]], expert)
                    for local, expert in self._ple_experts[level].items()
                }
                weights = {
                    owner: _softmax(inputs[owner] @ kernel + bias)
                    for owner, (kernel, bias, _) in self._ple_gates[level].items()
                }
            inputs = {
                owner: np.einsum(
                    "re,red->rd", w, np.stack([outputs[e] for e in self._ple_gate_experts[owner]], axis=1)
                )
                for owner, w in weights.items()
            }
        return np.stack([inputs[t] for t in self.tasks])

    # ---- checks ---------------------------------------------------------------------------------------
    def _checked(self, features: dict[str, np.ndarray], names, rows: int | None) -> tuple[dict, int]:
        return checked_inputs(features, names, rows, self._list_length, self._cardinality, "ranker")

    # ---- forward --------------------------------------------------------------------------------------
    def _forward(self, user: np.ndarray, items: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Heads and score from the user side's first-layer pre-activation ``user`` ((1 or rows, width),
        bias included) and the candidates' inputs."""
        z = self._item.project(items, rows)
        z += user
        if self.architecture == "ple":
            h = self._ple_trunk(z, rows)
        elif self.architecture == "mmoe":
            n_experts, width = len(self._expert_rest), self._expert_width
            split = n_experts * width
            experts = _activate(z[:, :split], self._expert_activation).reshape(rows, n_experts, width)
            if any(self._expert_rest):
                outputs = []
                for e, rest in enumerate(self._expert_rest):
                    h = experts[:, e]
                    for kernel, bias, activation in rest:
                        h = _activate(h @ kernel + bias, activation)
                    outputs.append(h)
                experts = np.stack(outputs, axis=1)
            gates = _softmax(z[:, split:].reshape(rows, len(self.tasks), n_experts))
            h = np.matmul(gates, experts).transpose(1, 0, 2)  # (tasks, rows, d)
        else:
            h = _activate(z, self._bottom_activation)  # the bottom's first layer is z
            for kernel, bias, activation in self._bottom_rest:
                h = _activate(h @ kernel + bias, activation)
            h = h[None]  # the same trunk output for every task
        for kernel, bias, activation in self._towers:
            h = _activate(np.matmul(h, kernel) + bias, activation)
        probabilities = _sigmoid(h[:, :, 0])
        out = conditioned({t: probabilities[i] for i, t in enumerate(self.tasks)}, self.conditional_on)
        out["score"] = combined_score(out, self.score_weights).astype(np.float32)
        return out

    def __call__(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every input with n rows (as the SavedModel takes them) -> float32 (n,) per task and ``score``."""
        checked, rows = self._checked(features, [e["name"] for e in self._layout], None)
        user = self._user.project(checked, rows) + self._first_bias
        return self._forward(user, checked, rows)

    def score_candidates(
        self, query: dict[str, np.ndarray], candidates: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The request's inputs once (1 row each: user, history, request context) and the candidates'
        (n rows each) -> float32 (n,) per task and ``score``, as if the query rows were repeated n times."""
        query_names = [e["name"] for e in self._user.layout]
        item_names = [e["name"] for e in self._item.layout]
        checked_query, _ = self._checked(query, query_names, 1)
        checked_items, rows = self._checked(candidates, item_names, None)
        user = self._user.project(checked_query, 1) + self._first_bias
        return self._forward(user, checked_items, rows)


def load_ranker(folder: str | Path, backend: str = "numpy"):
    """The exported ranker in ``folder`` as serving runs it: ``NumpyRanker`` with backend ``numpy`` when
    the folder holds ``ranker.npz`` (a ranker exported without it falls back to its SavedModel),
    ``ExportedRanker`` with backend ``savedmodel``; raises ``ConfigError`` on another backend."""
    if backend not in BACKENDS:
        raise ConfigError(f"ranker backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy" and (Path(folder) / WEIGHTS_FILE).exists():
        return NumpyRanker(folder)
    from reels.models.ranker import ExportedRanker  # TensorFlow, only where the SavedModel runs

    return ExportedRanker(Path(folder))


def with_backend(ranker, backend: str):
    """A loaded ranker (``ExportedRanker`` or ``NumpyRanker``) as ``backend`` runs it, by ``load_ranker``'s
    rules; its export is reloaded only when it must run the other way."""
    if backend not in BACKENDS:
        raise ConfigError(f"ranker backend must be one of {BACKENDS}, got {backend!r}")
    runs_numpy = isinstance(ranker, NumpyRanker)
    if backend == "savedmodel" and runs_numpy:
        return load_ranker(ranker.path, backend)
    if backend == "numpy" and not runs_numpy and (ranker.path / WEIGHTS_FILE).exists():
        return NumpyRanker(ranker.path)
    return ranker
