"""Two-tower retrieval with Merlin Models (TensorFlow API).

Query tower: user id, demographics, training-window user aggregates, the recent-history list (mean of its
embeddings) and request context (device, hour, day of week). Item tower: video id, creator, category,
audio track, language, duration bucket, duration and training-window video aggregates. Both end in a
linear ``output_dim`` layer; the score is their dot product.

Training: in-batch negatives over viewed (watch fraction >= view threshold) training events, with the logQ
correction (logits -= log p(item), p from training view counts) so popular videos are not over-penalised
for being everybody's negative (Yi et al., RecSys 2019).

Export: the query tower as a SavedModel (``serving_default`` signature over QUERY_TOWER_FEATURES) and one
embedding per catalog video (raw id -> vector), computed by the item tower.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import merlin.models.tf as mm
import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.dataloader.tensorflow import Loader
from merlin.models.tf.outputs.base import DotProduct
from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
from merlin.schema import Schema, Tags

from reels.models.config import TwoTowerConfig
from reels.models.inputs import ITEM_TOWER_FEATURES, QUERY_TOWER_FEATURES, dataset


@dataclass
class TrainReport:
    """One model's training run: examples per epoch, epochs, wall seconds, final epoch loss, architecture."""

    examples: int
    epochs: int
    seconds: float
    final_loss: float
    architecture: str = "two_tower"

    @property
    def examples_per_s(self) -> float:
        """Training examples processed per wall-clock second, over all epochs."""
        return self.examples * self.epochs / self.seconds


def _tower(schema: Schema, config: TwoTowerConfig) -> mm.Encoder:
    categorical = schema.select_by_tag(Tags.CATEGORICAL)
    inputs = mm.InputBlockV2(
        schema,
        categorical=mm.Embeddings(categorical, dim=config.feature_dim, sequence_combiner="mean"),
    )
    return mm.Encoder(
        inputs,
        mm.MLPBlock([*config.hidden_units, config.output_dim], no_activation_last_layer=True),
    )


class TwoTower:
    """The trainable two-tower (``mm.TwoTowerModelV2``) over the build's schema: query and item towers,
    in-batch negatives, optional logQ correction; embeds queries and items as float32 ``output_dim`` rows."""

    def __init__(self, schema: Schema, config: TwoTowerConfig, item_view_counts: np.ndarray):
        """``item_view_counts[i]`` = training views of encoded video id i (length = video_id cardinality)."""
        tf.keras.utils.set_random_seed(config.seed)
        self.config = config
        self.query_schema = schema.select_by_name(list(QUERY_TOWER_FEATURES))
        self.item_schema = schema.select_by_name(list(ITEM_TOWER_FEATURES))
        self.schema = schema.select_by_name(list(QUERY_TOWER_FEATURES + ITEM_TOWER_FEATURES))
        post = None
        if config.logq_correction:
            # +1 smoothing: videos never viewed in training still get a finite correction.
            post = PopularityLogitsCorrection(
                item_view_counts.astype(np.float32) + 1.0, schema=self.item_schema
            )
        output = mm.ContrastiveOutput(
            to_call=DotProduct(),
            negative_samplers="in-batch",
            schema=self.item_schema.select_by_tag(Tags.ITEM_ID),
            logits_temperature=config.temperature,
            post=post,
            store_negative_ids=True,  # PopularityLogitsCorrection needs the negatives' ids (merlin-models 23.12)
        )
        self.model = mm.TwoTowerModelV2(
            _tower(self.query_schema, config),
            _tower(self.item_schema, config),
            outputs=output,
            schema=self.schema,
        )
        self.model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))

    def fit(self, positives: pd.DataFrame) -> TrainReport:
        """Train on viewed events (one row per positive (query, video) pair)."""
        data = dataset(positives, self.schema, QUERY_TOWER_FEATURES + ITEM_TOWER_FEATURES)
        started = time.perf_counter()
        history = self.model.fit(
            data, batch_size=self.config.batch_size, epochs=self.config.epochs, shuffle=True, verbose=0
        )
        seconds = time.perf_counter() - started
        return TrainReport(len(positives), self.config.epochs, seconds, float(history.history["loss"][-1]))

    def _encode(self, encoder, frame: pd.DataFrame, schema: Schema, columns) -> np.ndarray:
        loader = Loader(dataset(frame, schema, columns), batch_size=self.config.batch_size, shuffle=False)
        return np.concatenate([encoder(batch, training=False).numpy() for batch, _ in loader]).astype(
            np.float32
        )

    def query_embeddings(self, queries: pd.DataFrame) -> np.ndarray:
        """One row per row of ``queries``, in order."""
        return self._encode(self.model.query_encoder, queries, self.query_schema, QUERY_TOWER_FEATURES)

    def item_embeddings(self, videos: pd.DataFrame) -> np.ndarray:
        """One row per row of ``videos`` (the transformed catalog), in order."""
        return self._encode(self.model.candidate_encoder, videos, self.item_schema, ITEM_TOWER_FEATURES)

    def save_query_tower(self, path: Path) -> None:
        """Save the query encoder as a SavedModel at ``path`` (loaded back by ``QueryTower``)."""
        self.model.query_encoder.save(str(path))


class QueryTower:
    """The exported query tower, called through its SavedModel ``serving_default`` signature; returns one
    float32 ``output_dim`` embedding per row.

    The signature is the fastest way to call it on CPU: measured on a 2-core CPU for one user, p50 0.43 ms
    vs 0.73 ms for keras ``load_model`` + ``tf.function`` and 0.9 ms for calling the loaded object directly.
    """

    def __init__(self, path: Path):
        self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        self.inputs = {name: spec for name, spec in self._fn.structured_input_signature[1].items()}

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {
            name: tf.convert_to_tensor(features[name], dtype=spec.dtype) for name, spec in self.inputs.items()
        }
        outputs = self._fn(**tensors)
        return next(iter(outputs.values())).numpy()


def query_inputs(frame: pd.DataFrame, names) -> dict[str, np.ndarray]:
    """Feature columns as the arrays the SavedModel signature takes: scalars as (n,), lists as (n, L)."""
    out = {}
    for name in names:
        column = frame[name]
        if column.dtype == object:
            out[name] = np.stack(column.to_numpy())
        else:
            out[name] = column.to_numpy()
    return out
