"""Keras models over the ETL slots: an MLP and a Wide & Deep, with frozen pretrained tables.

The model is defined in notebook 08's ``#@save`` cells (exported to
:mod:`mmlens._nb.training_with_tensorflow`): frozen tables (:func:`pretrained_embedding`), their
projection and ``has_<m>`` flag (:func:`content_feature`), trainable id embeddings, the MLP, the
two-tower term and the logit head (:func:`build_mlp`). This module adds the Wide & Deep variant
built from the same parts, the seed ensemble (:func:`average`) and saving/loading.

Every categorical slot gets a trainable embedding (the multi-hot ``genres`` slot is a mean over its
codes with the padding code masked). Each pretrained modality is an ``Embedding`` initialised from
``pretrained_<m>.npy`` and frozen (``trainable=False``) unless fine-tuning is asked for, followed by
a learned Dense projection, plus its ``has_<m>`` flag: a missing poster is a flag, not a zero
vector.

Cold movies (options, all off by default so that the plain MLP stays HugeCTR's architecture):

- ``known_items``: the unseen-id policy. Movie codes never seen in training have an untrained,
  random id vector; with a 0/1 mask of the codes seen in train, their id vector (and wide weight)
  is zero at training and prediction time alike: "unknown movie" is one shared, defined input.
- ``item_dropout``: zeroes the whole id vector of that share of training rows (no rescaling), so
  the network learns to rank from content when the id says nothing, exactly as for a cold movie.
- ``tower``: adds a factorisation term to the logit, ``<user vector, item vector>`` with item
  vector = id vector + genre and year vectors + a linear projection of each unit-normalised
  content vector: content moves a cold movie to where similar movies sit in the user space.
- ``neighbours`` (k): what the user's own training labels say about the k movies of their
  history nearest this one in each frozen table (:class:`layers.HistoryNeighbours`), fed to the
  MLP and to the logit; ``keras_train`` gives it the history of the rows it trains on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mmlens import artifacts
from mmlens._nb.training_with_tensorflow import (
    DeepOptions,
    WeightAverage,
    build_mlp,
    compile_model,
    deep_part,
    early_stopping,
    logit_model,
    unit_rows,
)
from mmlens.train.data import ITEM_SLOT, Features
from mmlens.train.layers import MaskedMean, item_gate, schema_inputs

__all__ = ["BUILDERS", "DeepOptions", "average", "build", "build_mlp", "build_wide_deep",
           "compile_model", "early_stopping", "load_model", "predict_features", "save_model",
           "unit_rows", "WeightAverage"]


def _wide_terms(schema: dict[str, Any], inputs: dict[str, Any], keep: Any) -> list[Any]:
    """One learned weight per code of every id slot (a linear model over one-hot ids, genres
    averaged); the movie's weight gated like its id vector."""
    pretrained = {info["slot"] for info in schema["pretrained"].values()}
    terms = []
    for slot in [s for s in schema["slots"] if s["name"] not in pretrained]:
        name, ids = slot["name"], inputs[slot["name"]]
        term = keras.layers.Embedding(int(slot["cardinality"]), 1, embeddings_initializer="zeros",
                                      name=f"wide_{name}")(ids)
        if int(slot["hotness"]) > 1:
            term = MaskedMean(name=f"wide_{name}_mean")([ids, term])
        if name == ITEM_SLOT and keep is not None:
            term = keras.layers.Multiply(name="wide_item_gated")([term, keep])
        terms.append(term)
    return terms


def build_wide_deep(schema: dict[str, Any], tables: Mapping[str, np.ndarray], *,
                    name: str = "wide_deep", **options: Any) -> keras.Model:
    """Wide (a linear model over one-hot ids, genres and year) + deep (:func:`build_mlp`'s body);
    the movie's wide weight is gated like its id vector. ``options``: :class:`DeepOptions`."""
    o = DeepOptions(**options)
    inputs, mods = schema_inputs(schema, tables, o.modalities)
    keep = item_gate(schema, inputs, o.known_items, o.item_dropout)
    x, terms = deep_part(schema, tables, inputs, mods, keep, o)
    return logit_model(inputs, x, [*_wide_terms(schema, inputs, keep), *terms], name)


def average(members: Sequence[keras.Model], name: str = "seed_ensemble") -> keras.Model:
    """One model whose output is the mean predicted probability of ``members`` (models with the
    same inputs and distinct names, e.g. one variant trained with several seeds): the ensemble
    that the ablation's ``ens_auc`` scores, as a model that saves, loads and recommends like one.
    Each member keeps its own copy of the frozen tables."""
    if not members:
        raise ValueError("give at least one model to average")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"ensemble members need distinct names, got {names}")
    specs = {t.name.split(":")[0]: t for t in members[0].inputs}
    for m in members[1:]:
        if {t.name.split(":")[0] for t in m.inputs} != set(specs):
            raise ValueError(f"{m.name} reads other inputs than {members[0].name}")
    inputs = {k: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=k) for k, t in specs.items()}
    outputs = [m(inputs) for m in members]
    out = keras.layers.Average(name="mean_probability")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs=inputs, outputs=out, name=name)


BUILDERS = {"mlp": build_mlp, "wide_deep": build_wide_deep}


def build(variant: str, schema: dict[str, Any], tables: Mapping[str, np.ndarray],
          **kwargs: Any) -> keras.Model:
    """``variant`` is ``mlp`` or ``wide_deep``."""
    if variant not in BUILDERS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[variant](schema, tables, **kwargs)


MODEL_FILE = "model.keras"


def save_model(model: keras.Model, out_dir: Path) -> Path:
    """Save the whole model (weights, frozen tables, known-items mask) as ``model.keras``,
    atomically."""
    target = Path(out_dir) / MODEL_FILE
    with artifacts.atomic_path(target) as tmp:
        model.save(tmp)
    return target


def load_model(path: Path) -> keras.Model:
    """Load a saved ``.keras`` model (this module registers the custom layers it needs)."""
    return keras.saving.load_model(path)


def predict_features(model: keras.Model, feats: Features, batch_size: int = 4096) -> np.ndarray:
    """Probabilities for in-memory features (keys the model does not read are ignored)."""
    names = {t.name.split(":")[0] for t in model.inputs} if model.inputs else set(feats)
    inputs = {k: v for k, v in feats.items() if k in names}
    return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0), np.float64).ravel()
