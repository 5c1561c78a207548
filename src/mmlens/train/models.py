"""Keras models over the ETL slots: an MLP and a Wide & Deep, with frozen pretrained tables.

Every categorical slot gets a trainable embedding (the multi-hot ``genres`` slot is a mean over its
codes with the padding code masked). Each pretrained modality is an ``Embedding`` initialised from
``pretrained_<m>.npy`` and frozen (``trainable=False``) unless fine-tuning is asked for, followed by
a learned Dense projection, plus its ``has_<m>`` flag: a missing poster is a flag, not a zero
vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from mmlens.train.data import PAD, _modalities, _slots

ITEM_SLOT = "movieId"


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


def pretrained_layer_name(modality: str) -> str:
    return f"pretrained_{modality}"


def make_inputs(schema: dict[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
    """One ``keras.Input`` per slot (and ``has_<m>`` flag) that the model reads."""
    inputs: dict[str, Any] = {}
    for slot in _slots(schema, tuple(modalities)):
        hot = int(slot["hotness"])
        shape = (hot,) if hot > 1 else ()
        inputs[slot["name"]] = keras.Input(shape=shape, dtype="int64", name=slot["name"])
    for m in modalities:
        flag = schema["pretrained"][m]["has_column"]
        inputs[flag] = keras.Input(shape=(), dtype="float32", name=flag)
    return inputs


def _pool(name: str, ids: Any, hot: int, layer: keras.layers.Layer) -> Any:
    vectors = layer(ids)
    return MaskedMean(name=f"{name}_mean")([ids, vectors]) if hot > 1 else vectors


def _trainable_features(schema: dict[str, Any], inputs: dict[str, Any], emb_dim: int,
                        pretrained_slots: set[str], item_dropout: float) -> list[Any]:
    feats = []
    for slot in schema["slots"]:
        if slot["name"] in pretrained_slots:
            continue
        layer = keras.layers.Embedding(int(slot["cardinality"]), emb_dim,
                                       name=f"emb_{slot['name']}")
        vec = _pool(slot["name"], inputs[slot["name"]], int(slot["hotness"]), layer)
        if slot["name"] == ITEM_SLOT and item_dropout:
            # drop the whole movie-id vector for some rows so the model learns to rank from
            # content too: at test time a cold movie's id vector is an untrained one
            vec = keras.layers.Dropout(item_dropout, noise_shape=(None, 1),
                                       name="item_id_dropout")(vec)
        feats.append(vec)
    return feats


def _pretrained_features(schema: dict[str, Any], inputs: dict[str, Any],
                         tables: Mapping[str, np.ndarray], modalities: Sequence[str], *,
                         trainable: bool, project_dim: int | None, has_flags: bool,
                         normalize: bool) -> list[Any]:
    feats = []
    for m in modalities:
        info = schema["pretrained"][m]
        rows, dim = tables[m].shape
        emb = keras.layers.Embedding(rows, dim, embeddings_initializer="zeros",
                                     trainable=trainable, name=pretrained_layer_name(m))
        vec = emb(inputs[info["slot"]])
        if normalize:  # scale-free content: raw CNN features are large, sentence vectors unit
            vec = keras.layers.UnitNormalization(name=f"{m}_unit")(vec)
        if project_dim:
            vec = keras.layers.Dense(project_dim, activation="relu", name=f"project_{m}")(vec)
        feats.append(vec)
        if has_flags:
            feats.append(keras.layers.Reshape((1,), name=f"{m}_flag")(inputs[info["has_column"]]))
    return feats


def _load_tables(model: keras.Model, tables: Mapping[str, np.ndarray],
                 modalities: Sequence[str]) -> None:
    for m in modalities:
        model.get_layer(pretrained_layer_name(m)).set_weights([np.asarray(tables[m], np.float32)])


def _mlp(x: Any, units: Sequence[int], dropout: float, prefix: str) -> Any:
    for i, n in enumerate(units):
        x = keras.layers.Dense(n, activation="relu", name=f"{prefix}_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout_{i}")(x)
    return x


def _check(schema: dict[str, Any], tables: Mapping[str, np.ndarray],
           modalities: Sequence[str] | None) -> tuple[str, ...]:
    mods = tuple(_modalities(schema, None if modalities is None else tuple(modalities)))
    for m in mods:
        if m not in tables:
            raise ValueError(f"no pretrained table given for modality {m!r}")
    return mods


def _deep(schema: dict[str, Any], tables: Mapping[str, np.ndarray], mods: tuple[str, ...], *,
          emb_dim: int, mlp: Sequence[int], trainable_tables: bool, project_dim: int | None,
          has_flags: bool, dropout: float, normalize: bool,
          item_dropout: float) -> tuple[dict[str, Any], Any]:
    inputs = make_inputs(schema, mods)
    pretrained_slots = {info["slot"] for info in schema["pretrained"].values()}
    feats = _trainable_features(schema, inputs, emb_dim, pretrained_slots, item_dropout)
    feats += _pretrained_features(schema, inputs, tables, mods, trainable=trainable_tables,
                                  project_dim=project_dim, has_flags=has_flags,
                                  normalize=normalize)
    x = keras.layers.Concatenate(name="concat")(feats) if len(feats) > 1 else feats[0]
    return inputs, _mlp(x, mlp, dropout, "deep")


def build_mlp(
    schema: dict[str, Any],
    tables: Mapping[str, np.ndarray],
    *,
    modalities: Sequence[str] | None = None,
    emb_dim: int = 32,
    mlp: Sequence[int] = (128, 64),
    trainable_tables: bool = False,
    project_dim: int | None = 32,
    has_flags: bool = True,
    dropout: float = 0.0,
    normalize: bool = True,
    item_dropout: float = 0.0,
    name: str = "mlp",
) -> keras.Model:
    """Embeddings (trainable ids/genres/year, frozen pretrained tables) -> MLP -> sigmoid.

    ``modalities=()`` gives the content-free model (ids, genres, year); ``None`` uses every table
    in the schema. ``project_dim=None`` concatenates the raw pretrained vectors (HugeCTR's layout);
    ``normalize`` scales each looked-up content vector to unit length (the table itself is kept);
    ``item_dropout`` zeroes the whole movie-id vector of that share of training rows.
    """
    mods = _check(schema, tables, modalities)
    inputs, x = _deep(schema, tables, mods, emb_dim=emb_dim, mlp=mlp,
                      trainable_tables=trainable_tables, project_dim=project_dim,
                      has_flags=has_flags, dropout=dropout, normalize=normalize,
                      item_dropout=item_dropout)
    out = keras.layers.Dense(1, activation="sigmoid", name="prediction")(x)
    model = keras.Model(inputs=inputs, outputs=out, name=name)
    _load_tables(model, tables, mods)
    return model


def build_wide_deep(
    schema: dict[str, Any],
    tables: Mapping[str, np.ndarray],
    *,
    modalities: Sequence[str] | None = None,
    emb_dim: int = 32,
    mlp: Sequence[int] = (128, 64),
    trainable_tables: bool = False,
    project_dim: int | None = 32,
    has_flags: bool = True,
    dropout: float = 0.0,
    normalize: bool = True,
    item_dropout: float = 0.0,
    name: str = "wide_deep",
) -> keras.Model:
    """Wide (a linear model over one-hot ids, genres and year) + deep (:func:`build_mlp`'s body)."""
    mods = _check(schema, tables, modalities)
    inputs, x = _deep(schema, tables, mods, emb_dim=emb_dim, mlp=mlp,
                      trainable_tables=trainable_tables, project_dim=project_dim,
                      has_flags=has_flags, dropout=dropout, normalize=normalize,
                      item_dropout=item_dropout)
    deep_logit = keras.layers.Dense(1, name="deep_logit")(x)
    pretrained_slots = {info["slot"] for info in schema["pretrained"].values()}
    wide_terms = []
    for slot in schema["slots"]:
        if slot["name"] in pretrained_slots:
            continue
        hot = int(slot["hotness"])
        layer = keras.layers.Embedding(int(slot["cardinality"]), 1, embeddings_initializer="zeros",
                                       name=f"wide_{slot['name']}")
        term = _pool(f"wide_{slot['name']}", inputs[slot["name"]], hot, layer)
        wide_terms.append(term)
    logit = keras.layers.Add(name="wide_plus_deep")([deep_logit, *wide_terms])
    out = keras.layers.Activation("sigmoid", name="prediction")(logit)
    model = keras.Model(inputs=inputs, outputs=out, name=name)
    _load_tables(model, tables, mods)
    return model


BUILDERS = {"mlp": build_mlp, "wide_deep": build_wide_deep}


def build(variant: str, schema: dict[str, Any], tables: Mapping[str, np.ndarray],
          **kwargs: Any) -> keras.Model:
    """``variant`` is ``mlp`` or ``wide_deep``."""
    if variant not in BUILDERS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[variant](schema, tables, **kwargs)
