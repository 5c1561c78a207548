"""Keras models over the ETL slots: an MLP and a Wide & Deep, with frozen pretrained tables.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mmlens import artifacts
from mmlens.train.data import Features, _modalities, _slots
from mmlens.train.layers import ItemIdGate, MaskedMean, TakeRows, UniqueIds

ITEM_SLOT = "movieId"
USER_SLOT = "userId"
GATE_LAYER = "item_id_gate"


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


def known_mask(cardinality: int, seen_codes: Any) -> np.ndarray:
    """float32 ``[cardinality]``: 1 for the codes in ``seen_codes`` (e.g. movies in train)."""
    mask = np.zeros(int(cardinality), np.float32)
    codes = np.asarray(seen_codes, np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= cardinality):
        raise ValueError(f"seen codes outside 0..{cardinality - 1}")
    mask[codes] = 1.0
    return mask


def _item_gate(schema: dict[str, Any], known_items: np.ndarray | None,
               rate: float) -> ItemIdGate | None:
    if known_items is None and not rate:
        return None
    card = _slot(schema, ITEM_SLOT)["cardinality"]
    if known_items is not None and np.shape(known_items) != (card,):
        raise ValueError(f"known_items must have shape ({card},), got {np.shape(known_items)}")
    return ItemIdGate(0 if known_items is None else card, rate, name=GATE_LAYER)


def _slot(schema: dict[str, Any], name: str) -> dict[str, Any]:
    for slot in schema["slots"]:
        if slot["name"] == name:
            return slot
    raise ValueError(f"the schema has no {name!r} slot")


def _trainable_features(schema: dict[str, Any], inputs: dict[str, Any], emb_dim: int,
                        pretrained_slots: set[str], keep: Any,
                        emb_l2: float) -> dict[str, Any]:
    feats = {}
    reg = keras.regularizers.L2(emb_l2) if emb_l2 else None
    for slot in schema["slots"]:
        if slot["name"] in pretrained_slots:
            continue
        layer = keras.layers.Embedding(int(slot["cardinality"]), emb_dim,
                                       embeddings_regularizer=reg, name=f"emb_{slot['name']}")
        vec = _pool(slot["name"], inputs[slot["name"]], int(slot["hotness"]), layer)
        if slot["name"] == ITEM_SLOT and keep is not None:
            vec = keras.layers.Multiply(name="item_id_gated")([vec, keep])
        feats[slot["name"]] = vec
    return feats


def _pretrained_features(schema: dict[str, Any], inputs: dict[str, Any],
                         tables: Mapping[str, np.ndarray], modalities: Sequence[str], *,
                         trainable: bool, project_dim: int | None, has_flags: bool,
                         normalize: bool) -> tuple[list[Any], dict[str, Any]]:
    """Deep-part features and, per modality, the (normalised) content vectors of the batch's
    distinct movies with the inverse index that maps them back to rows."""
    feats, content = [], {}
    for m in modalities:
        info = schema["pretrained"][m]
        rows, dim = tables[m].shape
        emb = keras.layers.Embedding(rows, dim, embeddings_initializer="zeros",
                                     trainable=trainable, name=pretrained_layer_name(m))
        unique, inverse = UniqueIds(name=f"{m}_unique")(inputs[info["slot"]])
        vec = emb(unique)
        if normalize and trainable:  # frozen tables are stored with unit rows (_load_tables)
            vec = keras.layers.UnitNormalization(name=f"{m}_unit")(vec)
        content[m] = (vec, inverse)
        if project_dim:
            vec = keras.layers.Dense(project_dim, activation="relu", name=f"project_{m}")(vec)
        feats.append(TakeRows(name=f"{m}_rows")([vec, inverse]))
        if has_flags:
            feats.append(keras.layers.Reshape((1,), name=f"{m}_flag")(inputs[info["has_column"]]))
    return feats, content


def unit_rows(table: np.ndarray) -> np.ndarray:
    """``table`` (float32) with every non-zero row scaled to unit length; zero rows stay zero."""
    table = np.asarray(table, np.float32)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    return table / np.maximum(norms, 1e-12).astype(np.float32)


def _load_tables(model: keras.Model, tables: Mapping[str, np.ndarray],
                 modalities: Sequence[str], known_items: np.ndarray | None, *,
                 unit: bool) -> None:
    """Pretrained tables into their layers (``unit``: with unit rows), and the known-items mask."""
    for m in modalities:
        table = unit_rows(tables[m]) if unit else np.asarray(tables[m], np.float32)
        model.get_layer(pretrained_layer_name(m)).set_weights([table])
    if known_items is not None:
        model.get_layer(GATE_LAYER).set_weights([np.asarray(known_items, np.float32)])


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


def _tower(trainable: dict[str, Any], content: dict[str, Any], emb_dim: int) -> Any:
    """``<user vector, item vector>``, item vector = id (gated) + genre + year vectors + a linear
    projection (no bias: missing content adds nothing) of each content vector."""
    parts = [v for name, v in trainable.items() if name != USER_SLOT]
    parts += [TakeRows(name=f"tower_{m}_rows")(
        [keras.layers.Dense(emb_dim, use_bias=False, name=f"tower_{m}")(v), inverse])
        for m, (v, inverse) in content.items()]
    item = keras.layers.Add(name="tower_item")(parts) if len(parts) > 1 else parts[0]
    return keras.layers.Dot(axes=1, name="tower_dot")([trainable[USER_SLOT], item])


@dataclass(frozen=True)
class DeepOptions:
    """The options both builders share (keywords of :func:`build_mlp` / :func:`build_wide_deep`).

    ``modalities=()`` gives the content-free model (ids, genres, year); ``None`` uses every table
    in the schema. ``project_dim=None`` concatenates the raw pretrained vectors (HugeCTR's layout);
    ``normalize`` scales each content vector to unit length: a frozen table is stored with unit
    rows (the same function, and no per-step normalisation: bench_08), a fine-tuned one is
    normalised at every lookup. ``trainable_tables`` fine-tunes the pretrained tables.
    ``known_items`` (0/1 per movie code, see :func:`known_mask`), ``item_dropout`` and ``tower``:
    the cold-movie options of the module docstring. ``emb_l2`` is an L2 penalty on the trainable
    embedding tables.
    """

    modalities: Sequence[str] | None = None
    emb_dim: int = 32
    mlp: Sequence[int] = (128, 64)
    trainable_tables: bool = False
    project_dim: int | None = 32
    has_flags: bool = True
    dropout: float = 0.0
    normalize: bool = True
    item_dropout: float = 0.0
    known_items: np.ndarray | None = None
    tower: bool = False
    emb_l2: float = 0.0


def _deep(schema: dict[str, Any], tables: Mapping[str, np.ndarray], mods: tuple[str, ...],
          o: DeepOptions) -> tuple[dict[str, Any], Any, Any, Any]:
    """Inputs, the deep MLP output, the tower logit (or None) and the item keep factor."""
    inputs = make_inputs(schema, mods)
    gate = _item_gate(schema, o.known_items, o.item_dropout)
    keep = gate(inputs[ITEM_SLOT]) if gate is not None else None
    pretrained_slots = {info["slot"] for info in schema["pretrained"].values()}
    trainable = _trainable_features(schema, inputs, o.emb_dim, pretrained_slots, keep, o.emb_l2)
    content_feats, content = _pretrained_features(
        schema, inputs, tables, mods, trainable=o.trainable_tables, project_dim=o.project_dim,
        has_flags=o.has_flags, normalize=o.normalize)
    feats = [*trainable.values(), *content_feats]
    x = keras.layers.Concatenate(name="concat")(feats) if len(feats) > 1 else feats[0]
    dot = _tower(trainable, content, o.emb_dim) if o.tower else None
    return inputs, _mlp(x, o.mlp, o.dropout, "deep"), dot, keep


def _finish(inputs: dict[str, Any], terms: list[Any], name: str, tables: Mapping[str, np.ndarray],
            mods: tuple[str, ...], o: DeepOptions) -> keras.Model:
    """Sum of the logit ``terms`` -> sigmoid; the model with its tables and mask loaded."""
    logit = keras.layers.Add(name="logit")(terms) if len(terms) > 1 else terms[0]
    out = keras.layers.Activation("sigmoid", name="prediction")(logit)
    model = keras.Model(inputs=inputs, outputs=out, name=name)
    _load_tables(model, tables, mods, o.known_items, unit=o.normalize and not o.trainable_tables)
    return model


def build_mlp(schema: dict[str, Any], tables: Mapping[str, np.ndarray], *, name: str = "mlp",
              **options: Any) -> keras.Model:
    """Embeddings (trainable ids/genres/year, frozen pretrained tables) -> MLP -> sigmoid, plus
    the tower term when asked; ``options`` are the fields of :class:`DeepOptions`."""
    o = DeepOptions(**options)
    mods = _check(schema, tables, o.modalities)
    inputs, x, dot, _ = _deep(schema, tables, mods, o)
    terms = [keras.layers.Dense(1, name="deep_logit")(x)]
    return _finish(inputs, terms if dot is None else [*terms, dot], name, tables, mods, o)


def build_wide_deep(schema: dict[str, Any], tables: Mapping[str, np.ndarray], *,
                    name: str = "wide_deep", **options: Any) -> keras.Model:
    """Wide (a linear model over one-hot ids, genres and year) + deep (:func:`build_mlp`'s body);
    the movie's wide weight is gated like its id vector. ``options``: :class:`DeepOptions`."""
    o = DeepOptions(**options)
    mods = _check(schema, tables, o.modalities)
    inputs, x, dot, keep = _deep(schema, tables, mods, o)
    terms = [keras.layers.Dense(1, name="deep_logit")(x)]
    pretrained_slots = {info["slot"] for info in schema["pretrained"].values()}
    for slot in schema["slots"]:
        if slot["name"] in pretrained_slots:
            continue
        hot = int(slot["hotness"])
        layer = keras.layers.Embedding(int(slot["cardinality"]), 1, embeddings_initializer="zeros",
                                       name=f"wide_{slot['name']}")
        term = _pool(f"wide_{slot['name']}", inputs[slot["name"]], hot, layer)
        if slot["name"] == ITEM_SLOT and keep is not None:
            term = keras.layers.Multiply(name="wide_item_gated")([term, keep])
        terms.append(term)
    return _finish(inputs, terms if dot is None else [*terms, dot], name, tables, mods, o)


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
