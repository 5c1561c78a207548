"""The custom Keras layers of the mmlens models: ``keras.ops`` only, so they run on every Keras 3
backend (TensorFlow here, torch in the Merlin container), and registered, so saved models load."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mmlens.train.data import PAD


@keras.saving.register_keras_serializable(package="mmlens")
class MaskedMean(keras.layers.Layer):
    """Mean of ``vectors [B, H, D]`` over the positions whose ``ids [B, H]`` are not padding."""

    def __init__(self, pad: int = PAD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, inputs: list[Any]) -> Any:
        ids, vectors = inputs
        mask = ops.expand_dims(ops.cast(ops.not_equal(ids, self.pad), vectors.dtype), -1)
        return ops.sum(vectors * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad}


@keras.saving.register_keras_serializable(package="mmlens")
class ItemIdGate(keras.layers.Layer):
    """``[B, 1]`` keep factor of item codes ``[B]``: 0 outside the ``known`` mask and (training
    only) for a random ``rate`` share of rows, else 1; kept rows are not rescaled.

    ``known`` is a non-trainable 0/1 weight over the codes, saved with the model; with
    ``n_codes=0`` every code counts as known.
    """

    def __init__(self, n_codes: int = 0, rate: float = 0.0, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"item dropout rate must be in [0, 1), got {rate}")
        self.n_codes, self.rate, self.seed = int(n_codes), float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.known = (self.add_weight(shape=(self.n_codes,), initializer="ones",
                                      trainable=False, name="known")
                      if self.n_codes else None)

    def call(self, ids: Any, training: bool | None = None) -> Any:
        keep = ops.ones_like(ops.expand_dims(ops.cast(ids, "float32"), -1))
        if self.known is not None:
            keep = keep * ops.expand_dims(ops.take(self.known, ops.cast(ids, "int32")), -1)
        if training and self.rate:
            draw = keras.random.uniform(ops.shape(keep), seed=self.seed_generator)
            keep = keep * ops.cast(draw >= self.rate, keep.dtype)
        return keep

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_codes": self.n_codes, "rate": self.rate,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="mmlens")
class UniqueIds(keras.layers.Layer):
    """``ids [B]`` -> ``(unique ids [U], inverse [B])`` with ``unique[inverse] == ids``: a frozen
    table's rows are looked up, normalised and projected once per distinct movie of the batch.

    ``keras.ops.unique(sorted=False)`` is ``tf.unique`` on TensorFlow (first-occurrence order)
    and ``torch.unique`` on torch (sorted): the order of ``unique`` differs, ``unique[inverse]``
    does not.
    """

    def call(self, ids: Any) -> tuple[Any, Any]:
        unique, inverse = ops.unique(ops.reshape(ids, (-1,)), sorted=False, return_inverse=True)
        return unique, inverse

    def compute_output_spec(self, ids: Any) -> tuple[Any, Any]:
        return (keras.KerasTensor((None,), dtype=ids.dtype),
                keras.KerasTensor((None,), dtype="int32"))


@keras.saving.register_keras_serializable(package="mmlens")
class TakeRows(keras.layers.Layer):
    """``rows [U, D]`` taken at ``inverse [B]`` -> ``[B, D]``."""

    def call(self, inputs: list[Any]) -> Any:
        rows, inverse = inputs
        return ops.take(rows, inverse, axis=0)
