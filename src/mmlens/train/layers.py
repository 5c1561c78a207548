"""The custom Keras layers of the mmlens models and the schema plumbing around them (one
``keras.Input`` per ETL slot, the known-movie gate, the users' history neighbours).
``keras.ops`` only, so they run on every Keras 3 backend (TensorFlow here, torch in the Merlin
container); registered, so saved models load."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from mmlens.train.data import ITEM_SLOT, PAD, USER_SLOT, _modalities, _slots

GATE_LAYER = "item_id_gate"


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


def unique_with_inverse(flat: Any) -> tuple[Any, Any]:
    """``(unique, inverse)`` of a 1-D tensor with the active backend's own op: ``tf.unique``
    (first-occurrence order) or ``torch.unique`` (sorted). ``keras.ops.unique`` exists only from
    Keras 3.13, and the Merlin container's Python 3.10 stops at Keras 3.12."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tuple(tf.unique(flat))
    if backend == "torch":
        import torch

        return torch.unique(flat, return_inverse=True)
    raise NotImplementedError(f"UniqueIds: tensorflow or torch backend, not {backend}")


@keras.saving.register_keras_serializable(package="mmlens")
class UniqueIds(keras.layers.Layer):
    """``ids [B]`` -> ``(unique ids [U], inverse [B])`` with ``unique[inverse] == ids``: a frozen
    table's rows are looked up, normalised and projected once per distinct movie of the batch.

    The order of ``unique`` differs between backends (:func:`unique_with_inverse`),
    ``unique[inverse]`` does not.
    """

    def call(self, ids: Any) -> tuple[Any, Any]:
        return unique_with_inverse(ops.reshape(ids, (-1,)))

    def compute_output_spec(self, ids: Any) -> tuple[Any, Any]:
        return (keras.KerasTensor((None,), dtype=ids.dtype),
                keras.KerasTensor((None,), dtype="int32"))


@keras.saving.register_keras_serializable(package="mmlens")
class TakeRows(keras.layers.Layer):
    """``rows [U, D]`` taken at ``inverse [B]`` -> ``[B, D]``."""

    def call(self, inputs: list[Any]) -> Any:
        rows, inverse = inputs
        return ops.take(rows, inverse, axis=0)


def schema_inputs(schema: dict[str, Any], tables: Mapping[str, np.ndarray],
                  modalities: Sequence[str] | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """One ``keras.Input`` per slot (and ``has_<m>`` flag) that a model over ``modalities``
    (``None``: every pretrained table of the schema) reads, and those modalities, checked."""
    mods = tuple(_modalities(schema, None if modalities is None else tuple(modalities)))
    missing = [m for m in mods if m not in tables]
    if missing:
        raise ValueError(f"no pretrained table given for modality {missing[0]!r}")
    inputs: dict[str, Any] = {}
    for slot in _slots(schema, mods):
        hot = int(slot["hotness"])
        inputs[slot["name"]] = keras.Input(shape=(hot,) if hot > 1 else (), dtype="int64",
                                           name=slot["name"])
    for m in mods:
        flag = schema["pretrained"][m]["has_column"]
        inputs[flag] = keras.Input(shape=(), dtype="float32", name=flag)
    return inputs, mods


def known_mask(cardinality: int, seen_codes: Any) -> np.ndarray:
    """float32 ``[cardinality]``: 1 for the codes in ``seen_codes`` (e.g. movies in train)."""
    mask = np.zeros(int(cardinality), np.float32)
    codes = np.asarray(seen_codes, np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= cardinality):
        raise ValueError(f"seen codes outside 0..{cardinality - 1}")
    mask[codes] = 1.0
    return mask


def item_gate(schema: dict[str, Any], inputs: Mapping[str, Any], known_items: np.ndarray | None,
              rate: float) -> Any:
    """The ``[B, 1]`` keep factor of the batch's movies (:class:`ItemIdGate` holding the
    ``known_items`` mask), or None when neither a mask nor item dropout is asked for."""
    if known_items is None and not rate:
        return None
    card = next(s["cardinality"] for s in schema["slots"] if s["name"] == ITEM_SLOT)
    if known_items is not None and np.shape(known_items) != (card,):
        raise ValueError(f"known_items must have shape ({card},), got {np.shape(known_items)}")
    gate = ItemIdGate(0 if known_items is None else card, rate, name=GATE_LAYER)
    keep = gate(inputs[ITEM_SLOT])
    if known_items is not None:
        gate.set_weights([np.asarray(known_items, np.float32)])
    return keep


NEIGHBOUR_FEATURES = 3  # per modality: top-k mean label, top-k mean similarity, soft label
#: the soft label's softmax temperature on cosine similarity, chosen on notebook 10's cold
#: validation parts (3 seeds, both real texts) from 0.01, 0.02, 0.03, 0.05 and 0.1
NEIGHBOUR_TEMPERATURE = 0.05
#: the most cells a precomputed movie-by-movie similarity may hold (512 MiB of float32): up to
#: 11,585 movies (ml-latest-small has 9,742), the matrix replaces a per-batch matmul
SIMILARITY_CELLS_MAX = 2**27


@keras.saving.register_keras_serializable(package="mmlens")
class HistoryNeighbours(keras.layers.Layer):
    """What a user's own known ratings say about a movie, through its content: for each row
    ``(user code, movie code)`` -> ``[B, 3]``: the mean label of the ``k`` movies of the user's
    history whose content vectors are most like this movie's, their mean cosine similarity, and
    the mean label over the whole history weighted by ``softmax(similarity / temperature)``.

    Non-trainable weights, set once the model is built (:func:`history_neighbours`): the content,
    either as ``vectors`` (unit row per movie code; the batch's movies are compared with every
    movie at each step) or, with ``precomputed``, as the ``similarity`` of every pair of movie
    codes (read, not computed, at each step: the same numbers for ``n_items**2`` floats of
    memory; ``similarity``: a matrix variable to share, :func:`shared_similarity`); ``codes``
    and ``labels`` (per user code, the movie codes and 0/1 labels of the
    training rows, padded with :data:`PAD`). The row's own movie is left out of its user's
    history, so a training row never reads its own label; a user with no other history gets
    zeros.
    """

    def __init__(self, n_users: int, length: int, n_items: int, dim: int, k: int = 5,
                 temperature: float = NEIGHBOUR_TEMPERATURE, precomputed: bool = False,
                 similarity: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1 or temperature <= 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got {k} and {temperature}")
        self.n_users, self.length, self.n_items, self.dim = (int(n_users), int(length),
                                                             int(n_items), int(dim))
        self.k, self.temperature, self.precomputed = int(k), float(temperature), bool(precomputed)
        if self.precomputed and similarity is not None:  # shared: see shared_similarity
            self.content = similarity
        elif self.precomputed:
            self.content = self.add_weight(shape=(self.n_items, self.n_items), initializer="zeros",
                                           trainable=False, name="similarity")
        else:
            self.content = self.add_weight(shape=(self.n_items, self.dim), initializer="zeros",
                                           trainable=False, name="vectors")
        self.codes = self.add_weight(shape=(self.n_users, self.length), initializer="zeros",
                                     dtype="int32", trainable=False, name="codes")
        self.labels = self.add_weight(shape=(self.n_users, self.length), initializer="zeros",
                                      trainable=False, name="labels")

    def _similarity(self, items: Any, codes: Any) -> Any:
        """``[B, L]`` cosine similarity of each row's movie with its user's history movies,
        read from the flat ``[rows * N]`` similarity matrix (no ``[B, N]`` copy)."""
        if self.precomputed:
            rows, sims = items, self.content
        else:
            unique, rows = unique_with_inverse(items)
            sims = ops.matmul(ops.take(self.content, unique, axis=0), ops.transpose(self.content))
        flat = ops.expand_dims(ops.cast(rows, "int32") * self.n_items, 1) + codes
        return ops.take(ops.reshape(sims, (-1,)), flat)

    def call(self, inputs: list[Any]) -> Any:
        users, items = (ops.cast(ops.reshape(x, (-1,)), "int32") for x in inputs)
        codes = ops.take(self.codes, users, axis=0)  # [B, L]
        labels = ops.take(self.labels, users, axis=0)
        sim = self._similarity(items, codes)
        valid = ops.logical_and(ops.not_equal(codes, PAD), ops.not_equal(codes, items[:, None]))
        low = ops.cast(-4.0, sim.dtype)  # below any cosine similarity
        masked = ops.where(valid, sim, low)
        top, where = ops.top_k(masked, min(self.k, self.length), sorted=False)
        chosen = ops.cast(top > low, sim.dtype)
        count = ops.maximum(ops.sum(chosen, axis=1), 1.0)
        top_label = ops.sum(ops.take_along_axis(labels, where, axis=1) * chosen, axis=1) / count
        top_sim = ops.sum(top * chosen, axis=1) / count
        weights = ops.exp((masked - ops.max(masked, axis=1, keepdims=True)) / self.temperature)
        weights = weights * ops.cast(valid, sim.dtype)
        soft = ops.sum(weights * labels, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1e-12)
        return ops.stack([top_label, top_sim, soft], axis=1)

    def compute_output_spec(self, inputs: list[Any]) -> Any:
        return keras.KerasTensor((None, NEIGHBOUR_FEATURES), dtype=self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_users": self.n_users, "length": self.length,
                "n_items": self.n_items, "dim": self.dim, "k": self.k,
                "temperature": self.temperature, "precomputed": self.precomputed}


def user_history(users: np.ndarray, items: np.ndarray, labels: np.ndarray, n_users: int, *,
                 max_length: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per user code, the movie codes ``[n_users, L]`` (int32, :data:`PAD` after the last) and
    0/1 labels (float32) of the given rows; ``L`` is the longest history, at most
    ``max_length`` (a longer one keeps a random ``max_length`` of its rows, fixed by ``seed``)."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    labels = np.asarray(labels, np.float32)
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user codes outside 0..{n_users - 1}")
    order = np.random.default_rng(seed).permutation(len(users))
    order = order[np.argsort(users[order], kind="stable")]
    users, items, labels = users[order], items[order], labels[order]
    starts = np.searchsorted(users, np.arange(n_users))
    position = np.arange(len(users)) - starts[users]
    keep = position < max_length
    length = int(position[keep].max()) + 1 if keep.any() else 1
    codes = np.full((n_users, length), PAD, np.int32)
    values = np.zeros((n_users, length), np.float32)
    codes[users[keep], position[keep]] = items[keep]
    values[users[keep], position[keep]] = labels[keep]
    return codes, values


#: the last similarity matrix built, by a digest of the table it was built from
_SIMILARITY: dict[str, Any] = {}


def shared_similarity(vectors: np.ndarray) -> Any:
    """The non-trainable ``[N, N]`` variable of the unit rows' dot products, shared by the models
    built from the same rows: Keras's ``fit`` (TensorFlow backend) keeps a model's own
    non-trainable weights in memory after the model is gone, 380 MB per model for
    ml-latest-small; a shared one is kept once. Holds one matrix: a new table replaces it."""
    key = hashlib.sha1(np.ascontiguousarray(vectors, np.float32).tobytes()).hexdigest()
    if key not in _SIMILARITY:
        _SIMILARITY.clear()
        _SIMILARITY[key] = keras.Variable(vectors @ vectors.T, trainable=False, name="similarity")
    return _SIMILARITY[key]


def history_neighbours(inputs: Mapping[str, Any], table: np.ndarray,
                       history: tuple[np.ndarray, np.ndarray], name: str, k: int = 5) -> Any:
    """``[B, 3]`` :class:`HistoryNeighbours` features of the batch's (user, movie) rows over
    ``table`` (rows = movie codes; unit-normalised here) and ``history``
    (:func:`user_history`); the movies' similarities are precomputed (and shared,
    :func:`shared_similarity`) where the matrix has at most :data:`SIMILARITY_CELLS_MAX` cells."""
    codes, labels = history
    vectors = np.asarray(table, np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    precomputed = len(vectors) ** 2 <= SIMILARITY_CELLS_MAX
    layer = HistoryNeighbours(codes.shape[0], codes.shape[1], *vectors.shape, k=k,
                              precomputed=precomputed, name=name,
                              similarity=shared_similarity(vectors) if precomputed else None)
    out = layer([inputs[USER_SLOT], inputs[ITEM_SLOT]])
    if not precomputed:
        layer.content.assign(vectors)
    layer.codes.assign(codes)
    layer.labels.assign(labels)
    return out
