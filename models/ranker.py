"""Multi-task ranker: MMoE (Zhao et al., RecSys 2019, "Recommending What Video to Watch Next"), PLE (Tang et
al., RecSys 2020, "Progressive Layered Extraction") and the shared-bottom baseline, on Merlin Models'
TensorFlow input blocks.

- Inputs: every query, item and freshness feature (``RANKER_FEATURES``) through Merlin's ``InputBlockV2``
  (categorical embeddings, the history list mean-pooled, continuous features as they are).
- Trunk (``RankerConfig.architecture``): ``num_experts`` expert MLPs mixed by one softmax gate per task
  (MMoE); or ``ple_levels`` extraction levels of task-specific and shared experts (PLE: each task's gate
  mixes its own experts and the shared ones; below the last level a shared gate mixes every expert into
  the next level's shared input, and each task's output is the next level's input for that task; one
  level is CGC); or one shared MLP (shared-bottom) of similar size.
- Heads: one small tower per task — view, like, completion (sigmoid, binary cross-entropy) and watch
  fraction (sigmoid, squared error).
- Position bias: a shallow tower over feed position x device adds a logit to every task *during
  training only*; at serving the position is unknown (the ranker decides it), so the tower is dropped and
  the heads score items as if shown without position bias.
- Serving score: ``sum(score_weights[task] * prediction[task])``, defined once in ``combined_score`` and
  baked into the exported SavedModel's ``score`` output.
- Export: the SavedModel and, beside it, the same weights for the numpy forward (``ranker.npz``, see
  ``reels.models.ranker_numpy``), which serving uses by default.
"""

from __future__ import annotations

import time
from pathlib import Path

import merlin.models.tf as mm
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.dataloader.tensorflow import Loader
from merlin.schema import Schema, Tags

from reels.models.config import RANKER_ARCHITECTURES, RANKER_TASKS, RankerConfig
from reels.models.inputs import QUERY_FEATURES, RANKER_FEATURES, dataset
from reels.models.ranker_numpy import combined_score, conditioned, export_weights
from reels.models.two_tower import TrainReport
from reels.workflows.errors import ConfigError

BINARY_TASKS = tuple(t for t in RANKER_TASKS if t != "watch_fraction")


def _mlp(units: tuple[int, ...], name: str) -> tf.keras.Sequential:
    return tf.keras.Sequential([tf.keras.layers.Dense(u, activation="relu") for u in units], name=name)


def ple_gate_owners(level: int, levels: int) -> tuple[str, ...]:
    """Who owns gates at ``level`` (0-based): every task, plus ``shared`` below the last level."""
    return (*RANKER_TASKS, "shared") if level < levels - 1 else RANKER_TASKS


def ple_gate_experts(config: RankerConfig, owner: str) -> list[str]:
    """The expert names (within one level) that ``owner``'s gate mixes, in the order of its softmax:
    the task's own experts then the shared ones; the shared gate mixes every expert."""
    tasks = RANKER_TASKS if owner == "shared" else (owner,)
    own = [f"{t}_{i}" for t in tasks for i in range(config.num_task_experts)]
    return own + [f"shared_{i}" for i in range(config.num_shared_experts)]


def ple_layers(
    config: RankerConfig,
) -> tuple[dict[str, tf.keras.Sequential], dict[str, tf.keras.layers.Dense]]:
    """PLE's experts (``expert_<level>_<task|shared>_<i>``) and gates (``gate_<level>_<task|shared>``),
    level by level, in the order ``ple_forward`` runs them."""
    experts, gates = {}, {}
    for level in range(config.ple_levels):
        for owner in (*RANKER_TASKS, "shared"):
            count = config.num_shared_experts if owner == "shared" else config.num_task_experts
            for i in range(count):
                name = f"expert_{level}_{owner}_{i}"
                experts[name] = _mlp(config.expert_units, name)
        for owner in ple_gate_owners(level, config.ple_levels):
            width = len(ple_gate_experts(config, owner))
            gates[f"gate_{level}_{owner}"] = tf.keras.layers.Dense(
                width, activation="softmax", name=f"gate_{level}_{owner}"
            )
    return experts, gates


def ple_forward(
    experts: dict, gates: dict, config: RankerConfig, x: tf.Tensor, training: bool
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """PLE's task outputs and gate weights. Level 0 reads the input block's output ``x`` everywhere;
    each later level reads, per task, that task's previous output, and for its shared experts the
    previous shared gate's output (Tang et al. 2020, eq. 4-6)."""
    inputs = dict.fromkeys((*RANKER_TASKS, "shared"), x)
    weights: dict[str, tf.Tensor] = {}
    for level in range(config.ple_levels):
        outputs = {}
        for name, expert in experts.items():
            if name.startswith(f"expert_{level}_"):
                local = name.removeprefix(f"expert_{level}_")  # <task|shared>_<i>
                outputs[local] = expert(inputs[local.rsplit("_", 1)[0]], training=training)
        mixed = {}
        for owner in ple_gate_owners(level, config.ple_levels):
            gate = f"gate_{level}_{owner}"
            weights[gate] = gates[gate](inputs[owner])
            stacked = tf.stack([outputs[e] for e in ple_gate_experts(config, owner)], axis=1)
            mixed[owner] = tf.einsum("be,bed->bd", weights[gate], stacked)
        inputs = mixed
    return {t: inputs[t] for t in RANKER_TASKS}, weights


class MultiTaskRanker(tf.keras.Model):
    """The Keras ranker: ``RANKER_FEATURES`` -> MMoE, PLE or shared-bottom trunk -> one sigmoid head per
    ``RANKER_TASKS``; the position-bias tower is built when configured and applied only in training."""

    def __init__(self, schema: Schema, config: RankerConfig, architecture: str | None = None, **kwargs):
        architecture = architecture or config.architecture
        super().__init__(name=f"{architecture}_ranker", **kwargs)
        if architecture not in RANKER_ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {RANKER_ARCHITECTURES}, got {architecture!r}")
        self.architecture = architecture
        self.config = config
        features = schema.select_by_name(list(RANKER_FEATURES))
        self.feature_schema = features
        self.inputs_block = mm.Encoder(
            mm.InputBlockV2(
                features,
                categorical=mm.Embeddings(
                    features.select_by_tag(Tags.CATEGORICAL), dim=config.feature_dim, sequence_combiner="mean"
                ),
            )
        )
        if architecture == "mmoe":
            self.experts = [_mlp(config.expert_units, f"expert_{i}") for i in range(config.num_experts)]
            self.gates = {
                t: tf.keras.layers.Dense(config.num_experts, activation="softmax", name=f"gate_{t}")
                for t in RANKER_TASKS
            }
        elif architecture == "ple":
            self.ple_experts, self.ple_gates = ple_layers(config)
        else:
            self.bottom = _mlp(config.shared_bottom_units, "shared_bottom")
        self.towers = {
            t: tf.keras.Sequential(
                [_mlp(config.tower_units, f"tower_{t}"), tf.keras.layers.Dense(1)], name=f"head_{t}"
            )
            for t in RANKER_TASKS
        }
        if config.position_bias:
            position_card = schema["position"].int_domain.max + 1
            device_card = schema["device"].int_domain.max + 1
            self.position_embedding = tf.keras.layers.Embedding(position_card, 8, name="bias_position")
            self.device_embedding = tf.keras.layers.Embedding(device_card, 4, name="bias_device")
            self.bias_dropout = tf.keras.layers.Dropout(0.1)
            self.bias_logits = tf.keras.layers.Dense(len(RANKER_TASKS), name="bias_logits")

    def _trunk(self, features, training: bool) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """Each task's trunk output, and the softmax weights of every gate by gate name (empty for
        shared-bottom)."""
        x = self.inputs_block(features, training=training)
        if self.architecture == "mmoe":
            experts = tf.stack([e(x, training=training) for e in self.experts], axis=1)  # (b, E, d)
            gates = {f"gate_{t}": self.gates[t](x) for t in RANKER_TASKS}
            mixed = {t: tf.einsum("be,bed->bd", gates[f"gate_{t}"], experts) for t in RANKER_TASKS}
            return mixed, gates
        if self.architecture == "ple":
            return ple_forward(self.ple_experts, self.ple_gates, self.config, x, training)
        return dict.fromkeys(RANKER_TASKS, self.bottom(x, training=training)), {}

    def gate_weights(self, features) -> dict[str, tf.Tensor]:
        """Every gate's softmax weights over the experts it mixes, (batch, experts) by gate name, at
        serving (``gate_<task>`` for MMoE, ``gate_<level>_<task|shared>`` for PLE; empty for
        shared-bottom)."""
        return self._trunk(features, training=False)[1]

    def task_logits(self, features, training=False) -> dict[str, tf.Tensor]:
        """Per-task logits, shape (batch,); with ``training`` and position bias on, the bias logit is added
        (``features`` must then hold ``position`` and ``device``)."""
        mixed, _ = self._trunk(features, training)
        logits = {t: tf.squeeze(self.towers[t](mixed[t], training=training), -1) for t in RANKER_TASKS}
        if training and self.config.position_bias:
            bias_in = tf.concat(
                [
                    self.position_embedding(tf.reshape(features["position"], (-1,))),
                    self.device_embedding(tf.reshape(features["device"], (-1,))),
                ],
                axis=-1,
            )
            bias = self.bias_logits(self.bias_dropout(bias_in, training=training))
            logits = {t: logits[t] + bias[:, i] for i, t in enumerate(RANKER_TASKS)}
        return logits

    def call(self, features, training=False):
        """Per-task probabilities in (0, 1), shape (batch,): the sigmoid of ``task_logits``, a task of
        ``config.conditional_on`` times its parent's (its head learns ``P(task | parent)``)."""
        probabilities = {t: tf.sigmoid(v) for t, v in self.task_logits(features, training=training).items()}
        return conditioned(probabilities, self.config.conditional_on)


class Ranker:
    """Training, prediction and export around ``MultiTaskRanker``."""

    def __init__(self, schema: Schema, config: RankerConfig, architecture: str | None = None):
        """``architecture`` overrides ``config.architecture`` (evaluation trains the others beside it)."""
        tf.keras.utils.set_random_seed(config.seed)
        self.config = config
        self.schema = schema
        self.model = MultiTaskRanker(schema, config, architecture)
        losses = {t: ("mse" if t == "watch_fraction" else "binary_crossentropy") for t in RANKER_TASKS}
        self.model.compile(
            optimizer=tf.keras.optimizers.Adam(config.learning_rate),
            loss=losses,
            loss_weights=config.loss_weights,
        )
        self._columns = RANKER_FEATURES + ("position",) + RANKER_TASKS

    def _loader(self, frame: pd.DataFrame, shuffle: bool) -> Loader:
        columns = self._columns if "view" in frame.columns else RANKER_FEATURES
        data = dataset(frame, self.schema, columns)
        return Loader(data, batch_size=self.config.batch_size, shuffle=shuffle)

    def fit(self, train: pd.DataFrame) -> TrainReport:
        """Train ``config.epochs`` epochs on a feature frame holding ``RANKER_FEATURES``, ``position`` and the
        task labels; returns the final epoch's loss and the wall seconds."""
        loader = self._loader(train, shuffle=True)
        loader = loader.map(
            lambda x, y: (x, {t: tf.cast(tf.reshape(y[t], (-1,)), tf.float32) for t in RANKER_TASKS})
        )
        started = time.perf_counter()
        history = self.model.fit(loader, epochs=self.config.epochs, verbose=0)
        seconds = time.perf_counter() - started
        loss = float(history.history["loss"][-1])
        return TrainReport(len(train), self.config.epochs, seconds, loss, self.model.architecture)

    def predict(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-task predictions (served path: no position-bias tower) and the combined score."""
        parts: dict[str, list[np.ndarray]] = {t: [] for t in RANKER_TASKS}
        for batch in self._loader(frame[list(RANKER_FEATURES)], shuffle=False):
            features = batch[0] if isinstance(batch, tuple) else batch
            out = self.model(features, training=False)
            for t in RANKER_TASKS:
                parts[t].append(out[t].numpy())
        predictions = {t: np.concatenate(v) for t, v in parts.items()}
        predictions["score"] = combined_score(predictions, self.config.score_weights)
        return predictions

    def gate_experts(self) -> dict[str, list[str]]:
        """The experts each gate of ``gate_weights`` mixes, in the order of its weights."""
        model = self.model
        if model.architecture == "mmoe":
            return {
                f"gate_{t}": [f"expert_{i}" for i in range(self.config.num_experts)] for t in RANKER_TASKS
            }
        if model.architecture == "ple":
            return {name: ple_gate_experts(self.config, name.split("_", 2)[2]) for name in model.ple_gates}
        return {}

    def gate_weights(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Every gate's softmax weights on ``frame``'s rows at serving: (rows, experts) float32 by gate
        name (``MultiTaskRanker.gate_weights``); empty for shared-bottom."""
        parts: dict[str, list[np.ndarray]] = {}
        for batch in self._loader(frame[list(RANKER_FEATURES)], shuffle=False):
            features = batch[0] if isinstance(batch, tuple) else batch
            for name, weights in self.model.gate_weights(features).items():
                parts.setdefault(name, []).append(weights.numpy())
        return {name: np.concatenate(v) for name, v in parts.items()}

    def signature_specs(self) -> dict[str, tf.TensorSpec]:
        """The exported signature's inputs by feature name: float32 for continuous, int64 ids otherwise,
        shape (None,) or (None, list length) for lists such as the history."""
        specs = {}
        for col in self.model.feature_schema:
            dtype = tf.float32 if Tags.CONTINUOUS in col.tags else tf.int64
            if col.is_list:
                specs[col.name] = tf.TensorSpec((None, col.value_count.max), dtype, name=col.name)
            else:
                specs[col.name] = tf.TensorSpec((None,), dtype, name=col.name)
        return specs

    def export(self, path: Path) -> None:
        """SavedModel with a ``serving_default`` signature: RANKER_FEATURES in; one output per task + ``score``;
        beside it ``ranker.npz``, the same weights for ``NumpyRanker``."""
        model, weights = self.model, dict(self.config.score_weights)

        @tf.function(input_signature=[self.signature_specs()])
        def serve(features):
            predictions = model(features, training=False)
            return {**predictions, "score": combined_score(predictions, weights)}

        tf.saved_model.save(model, str(path), signatures={"serving_default": serve})
        export_weights(model, weights, self.signature_specs(), QUERY_FEATURES, Path(path))


class ExportedRanker:
    """A ranker SavedModel written by ``Ranker.export``, called with numpy arrays; returns numpy arrays per
    task plus ``score``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        self.inputs = dict(self._fn.structured_input_signature[1])

    def __call__(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {n: tf.convert_to_tensor(features[n], dtype=s.dtype) for n, s in self.inputs.items()}
        return {k: v.numpy() for k, v in self._fn(**tensors).items()}

    def score_candidates(
        self, query: dict[str, np.ndarray], candidates: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``NumpyRanker.score_candidates``' contract: the request's 1-row inputs are repeated once per
        candidate, as the SavedModel takes them."""
        rows = len(next(iter(candidates.values())))
        repeated = {name: np.repeat(value, rows, axis=0) for name, value in query.items()}
        return self({**repeated, **candidates})
