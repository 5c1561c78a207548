"""Stage 08: train a Keras model on the ETL output with frozen pretrained tables.

``fit`` compiles (Adam, binary cross-entropy, AUC), stops early on validation AUC and restores the
best weights, checkpoints each improvement, and writes the history (JSON) and learning curves (PNG).
``run`` is the notebook/CLI entry: it reads ``etl/<split>``, trains, evaluates on the test part and
writes ``models/keras/<split>/<variant>`` and ``metrics/08.json``.

Backend-neutral Keras 3: TensorFlow here (input through ``tf.data``, ``MirroredStrategy`` over
several GPUs), torch in the Merlin container (``KERAS_BACKEND=torch``; input through a
``keras.utils.PyDataset``, one device).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmlens import artifacts
from mmlens.config import Config, seed_everything
from mmlens.train import data, evaluate

HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"
CHECKPOINT_FILE = "best.weights.h5"


def strategy_scope() -> contextlib.AbstractContextManager[Any]:
    """On TensorFlow with more than one visible GPU, a ``MirroredStrategy`` scope; else a no-op
    (other backends train on one device here)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


MIN_STEPS_PER_EPOCH = 20


def effective_batch_size(batch_size: int, train_rows: int,
                         min_steps: int = MIN_STEPS_PER_EPOCH) -> int:
    """``batch_size``, lowered (not below 32) so that a small train part still gives an epoch of
    at least ``min_steps`` updates; large data keeps the requested size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(min(batch_size, 32), min(batch_size, train_rows // min_steps))


def set_seed(seed: int) -> None:
    """Seed Python, numpy, Keras and its backend."""
    import keras

    seed_everything(seed)
    keras.utils.set_random_seed(seed)


def fit(
    model: Any,
    train_ds: Any,
    valid_ds: Any,
    *,
    epochs: int = 5,
    patience: int = 2,
    lr: float = 1e-3,
    out_dir: Path | None = None,
    verbose: int = 0,
    average: tuple[int, int] | None = None,
) -> dict[str, list[float]]:
    """Train with early stopping on ``val_auc`` (best weights restored); return the history.

    ``average=(before, after)`` ends on the mean weights of the epochs around the best one
    (:class:`models.WeightAverage`) instead. With ``out_dir``, checkpoints the best epoch's
    weights and writes ``history.json`` and ``curves.png``.
    """
    import keras

    from mmlens.train import models

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not getattr(model, "compiled", False):
        models.compile_model(model, lr)
    callbacks: list[Any] = [models.early_stopping(patience)]
    if average is not None:
        callbacks.append(models.WeightAverage(*average))  # after early stopping: its mean wins
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(Path(out_dir) / CHECKPOINT_FILE), monitor="val_auc", mode="max",
            save_best_only=True, save_weights_only=True))
    hist = model.fit(train_ds, validation_data=valid_ds, epochs=epochs, callbacks=callbacks,
                     verbose=verbose, shuffle=False)  # the dataset shuffles itself
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if out_dir is not None:
        artifacts.write_json(Path(out_dir) / HISTORY_FILE, history)
        plot_curves(history, Path(out_dir) / CURVES_FILE)
    return history


CURVES_SIZE = (9.0, 3.5)


def curves_figure(history: dict[str, list[float]], fig: Any = None) -> Any:
    """Loss and AUC per epoch, train vs validation, drawn on ``fig`` (a new pyplot-free Figure
    when None)."""
    if fig is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=CURVES_SIZE)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "auc"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(range(1, len(history[prefix + key]) + 1), history[prefix + key], style,
                        label=prefix + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_curves(history: dict[str, list[float]], target: Path) -> Path:
    """Save :func:`curves_figure` as a PNG."""
    with artifacts.atomic_path(target) as tmp:
        curves_figure(history).savefig(tmp, format="png", dpi=100)
    return target


def predict(model: Any, ds: Any) -> np.ndarray:
    """Probabilities for every row of a ``(features, label)`` dataset (:func:`data.make_dataset`),
    in order (``predict`` reads the features and ignores the label)."""
    return np.asarray(model.predict(ds, verbose=0), np.float64).ravel()


def score_part(model: Any, etl_dir: Path, schema: dict[str, Any], part: str,
               modalities: Sequence[str], batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(0/1 labels, predicted probabilities)`` of every row of one ETL part, in file order."""
    directory = data.part_dir(etl_dir, schema, part)
    ds = data.make_dataset(directory, schema, batch_size=batch_size, modalities=tuple(modalities))
    labels = data.read_frame(directory, [schema["label"]])[schema["label"]].to_numpy(np.float32)
    return labels, predict(model, ds)


UNSEEN_POLICIES = ("zero", "keep")
# the cold-aware model of 08/09 (see mmlens.train.models); 07 passes HugeCTR's plain MLP instead.
# The poster table at its 64 main directions: on the sample world's validation parts (3 seeds)
# +both scored within the seeds' spread of every dimension (warm 0.8386 vs 0.8403, cold 0.7895 vs
# 0.7915; 0.8411 and 0.7913 with the directions' own basis, see top_directions), at 0.71 of
# ID-only's step time instead of 0.64. The text keeps every dimension: at 64 or 128 +both lost on
# the sample world's cold validation parts by more than the spread (0.7841, 0.7875 vs 0.7895);
# notebook 10 chooses the text width per source and split on real ratings.
DEFAULT_MODEL_OPTIONS: dict[str, Any] = {"tower": True, "item_dropout": 0.25,
                                         "content_dim": {"poster": 64}}


def train_and_evaluate(
    etl_dir: Path,
    schema: dict[str, Any],
    *,
    variant: str = "mlp",
    modalities: Sequence[str] = ("poster", "text"),
    epochs: int = 5,
    seed: int = 42,
    batch_size: int = 1024,
    lr: float = 1e-3,
    patience: int = 2,
    fine_tune: bool = False,
    out_dir: Path | None = None,
    model_options: dict[str, Any] | None = None,
    unseen_items: str = "zero",
    refit: bool = False,
    rating_mix: float = 0.0,
    average: tuple[int, int] | None = None,
    keep_valid: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Build, fit and score one model on ``etl_dir``; return ``(model, metrics)``.

    ``batch_size`` is an upper bound, see :func:`effective_batch_size`. ``model_options`` go to
    the builder (default :data:`DEFAULT_MODEL_OPTIONS`). ``unseen_items="zero"`` treats movies
    absent from the train part as unknown (zero id vector, :func:`layers.known_mask`), at
    validation, test and recommendation time; ``"keep"`` leaves their untrained id vectors.
    ``refit``: once early stopping has chosen the epoch count on the validation part, train a
    fresh model (same seed) on train + valid for that many epochs and score that one; the test
    part is never looked at before scoring. ``rating_mix`` > 0 trains on graded targets that mix
    the 0/1 label with the scaled star rating (:func:`data.soft_labels`); validation (early
    stopping) and test keep the 0/1 label. ``average=(before, after)``: the model kept is the
    mean of the epochs around the best one (:class:`models.WeightAverage`; a refit runs up to
    ``after`` epochs more, those the first fit ran, and averages the same window), and
    ``best_val_auc`` is that model's validation AUC. ``keep_valid``: ``metrics["valid_scores"]``
    holds ``(labels, probabilities)`` of the validation rows (file order), scored before any
    refit: what a model choice on validation compares (arrays: pop them before writing the
    metrics as JSON).
    """
    if unseen_items not in UNSEEN_POLICIES:
        raise ValueError(f"unseen_items must be one of {UNSEEN_POLICIES}, got {unseen_items!r}")
    set_seed(seed)
    mods = tuple(modalities)
    tables = data.load_tables(etl_dir, schema, mods)
    parts = {p: data.part_dir(etl_dir, schema, p) for p in ("train", "valid", "test")}
    batch_size = effective_batch_size(batch_size, data.part_rows(parts["train"]))
    kw = {"batch_size": batch_size, "modalities": mods}
    options = dict(DEFAULT_MODEL_OPTIONS if model_options is None else model_options)
    spec = {"variant": variant, "schema": schema, "tables": tables, "modalities": mods,
            "fine_tune": fine_tune, "options": options, "lr": lr, "unseen_items": unseen_items,
            "name": f"{variant}_seed{seed}"}
    model = _new_model(spec, parts["train"])
    train_ds = data.make_dataset(parts["train"], schema, shuffle=True, seed=seed,
                                 rating_mix=rating_mix, **kw)
    history = fit(model, train_ds, data.make_dataset(parts["valid"], schema, **kw),
                  epochs=epochs, patience=patience, out_dir=out_dir, average=average)
    best_epoch = int(np.argmax(history["val_auc"])) + 1 if history.get("val_auc") else epochs
    val_auc = max(history.get("val_auc", [float("nan")]))
    valid = (score_part(model, etl_dir, schema, "valid", mods, batch_size)
             if average is not None or keep_valid else None)
    if average is not None:  # the averaged model's own score, not an epoch's
        val_auc = evaluate.pointwise_metrics(*valid)["auc"]
    if refit:
        from mmlens.train import models

        set_seed(seed)
        both = [parts["train"], parts["valid"]]
        model = _new_model(spec, both)
        # the window validation scored: no epochs after the best that the first fit did not run
        ran = len(history.get("loss", [])) or best_epoch
        extra, callbacks = (0, []) if average is None else (
            min(average[1], ran - best_epoch),
            [models.WeightAverage(*average, best_epoch=best_epoch)])
        model.fit(data.make_dataset(both, schema, shuffle=True, seed=seed,
                                    rating_mix=rating_mix, **kw),
                  epochs=best_epoch + extra, verbose=0, shuffle=False, callbacks=callbacks)
    metrics = evaluate.pointwise_metrics(*score_part(model, etl_dir, schema, "test", mods,
                                                     batch_size))
    metrics["epochs_run"] = len(history.get("loss", []))
    metrics["best_epoch"] = best_epoch
    metrics["best_val_auc"] = val_auc
    metrics["average"] = None if average is None else list(average)
    metrics["batch_size"] = batch_size
    metrics["unseen_items"] = unseen_items
    metrics["refit"] = refit
    metrics["rating_mix"] = rating_mix
    if keep_valid:
        metrics["valid_scores"] = valid
    return model, metrics


def training_history(train_parts: data.Parts, schema: dict[str, Any]) -> tuple[Any, Any]:
    """Each user's movie codes and 0/1 labels in ``train_parts`` (:func:`layers.user_history`):
    the history a model with ``neighbours`` reads, at training and prediction time alike."""
    from mmlens.train import layers

    column = {s["name"]: s["column"] for s in schema["slots"]}
    users, items = column[data.USER_SLOT], column[data.ITEM_SLOT]
    rows = data.read_frame(train_parts, [users, items, schema["label"]])
    n_users = next(s["cardinality"] for s in schema["slots"] if s["name"] == data.USER_SLOT)
    return layers.user_history(rows[users].to_numpy(), rows[items].to_numpy(),
                               rows[schema["label"]].to_numpy(), int(n_users))


def _new_model(spec: dict[str, Any], train_parts: data.Parts) -> Any:
    """A compiled model of ``spec``; with ``unseen_items="zero"``, movies absent from
    ``train_parts`` are unknown to it; with ``neighbours``, the users' history is
    ``train_parts``."""
    from mmlens.train import layers, models

    options = dict(spec["options"])
    schema = spec["schema"]
    if spec["unseen_items"] == "zero":
        card = next(s["cardinality"] for s in schema["slots"] if s["name"] == data.ITEM_SLOT)
        seen = data.seen_codes(train_parts, schema, data.ITEM_SLOT)
        options["known_items"] = layers.known_mask(card, seen)
    if options.get("neighbours"):
        options["history"] = training_history(train_parts, schema)
    with strategy_scope():
        model = models.build(spec["variant"], schema, spec["tables"],
                             modalities=spec["modalities"], trainable_tables=spec["fine_tune"],
                             name=spec["name"], **options)
        models.compile_model(model, spec["lr"])
    return model


def run(
    cfg: Config,
    *,
    split: str = "random",
    variant: str = "mlp",
    modalities: Sequence[str] = ("poster", "text"),
    epochs: int = 8,
    seed: int | None = None,
    batch_size: int = 1024,
    lr: float = 2e-3,
    patience: int = 2,
    fine_tune: bool = False,
    ranking: bool = True,
    ensemble: int = 1,
    average: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Notebook 08: train ``variant`` on ``etl/<split>``, evaluate, save; return the metrics.

    Writes ``models/keras/<split>/<variant>/`` (model.keras, history.json, curves.png, best
    checkpoint) and merges ``metrics/08.json[split][variant]``. With ``ranking``, adds HR@10 and
    NDCG@10 (99 sampled negatives) and the popularity baseline on the same test rows.
    ``ensemble`` > 1 trains that many models (seeds ``seed``, ``seed + 1``, ...) and saves and
    scores their average (:func:`models.average`); ``members`` holds each one's own metrics, and
    the history, curves and checkpoint are the first member's. ``average=(before, after)``:
    each member ends on the mean weights around its best epoch (:func:`train_and_evaluate`).
    """
    from mmlens.train import models, recommend

    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    start = time.perf_counter()
    seed = cfg.seed if seed is None else seed
    etl_dir, schema = data.require_split(cfg, split)
    out_dir = artifacts.path(cfg, "keras_dir", split=split, variant=variant)
    members = [train_and_evaluate(
        etl_dir, schema, variant=variant, modalities=modalities, epochs=epochs, seed=seed + i,
        batch_size=batch_size, lr=lr, patience=patience, fine_tune=fine_tune,
        out_dir=out_dir if i == 0 else None, average=average) for i in range(ensemble)]
    model, metrics = members[0]
    if ensemble > 1:
        model = models.average([m for m, _ in members])
        metrics = {**evaluate.pointwise_metrics(*score_part(
            model, etl_dir, schema, "test", modalities, metrics["batch_size"])),
            "ensemble": ensemble, "members": [evaluate.clean(m) for _, m in members]}
    model_path = models.save_model(model, out_dir)
    cols = ["userId", "movieId", schema["label"]]
    train = data.read_frame(data.part_dir(etl_dir, schema, "train"), cols)
    test_df = data.read_frame(data.part_dir(etl_dir, schema, "test"), cols)
    metrics["popularity"] = evaluate.popularity_baseline(train, test_df, label_col=schema["label"])
    if ranking:
        items = recommend.catalog_items(etl_dir, schema)
        score_fn = recommend.model_score_fn(model, schema, items)
        metrics.update(evaluate.ranking_metrics(
            score_fn, test_df, train, items["movieId"].to_numpy(), label_col=schema["label"],
            seed=seed))
    metrics.update({"modalities": list(modalities), "fine_tune": fine_tune, "seed": seed,
                    "model": str(model_path), "seconds": round(time.perf_counter() - start, 1),
                    "train_rows": len(train)})
    evaluate.update_metrics(cfg, "08", (split, variant), metrics)
    print("\n".join(summary_lines(f"{split}/{variant}", metrics,
                                   model_path.relative_to(cfg.dataset_dir).parent)))
    return evaluate.clean(metrics)


def summary_lines(name: str, metrics: dict[str, Any], saved: Path) -> list[str]:
    """What :func:`run` did, in four lines or five."""
    first = metrics["members"][0] if "members" in metrics else metrics
    kind = f", {metrics['ensemble']}-seed ensemble" if "members" in metrics else ""
    pop = metrics["popularity"]["auc"]
    epochs = f"{first['epochs_run']} epochs (best {first['best_epoch']})"
    lines = [f"08 {name}, {'+'.join(metrics['modalities']) or 'id-only'}{kind}: trained on "
             f"{metrics['train_rows']:,} rows, {epochs if not kind else 'first seed ' + epochs}"
             f", batch {first['batch_size']}, {metrics['seconds']:.0f} s",
             f"  test, {metrics['rows']:,} rows: AUC {metrics['auc']:.4f}, logloss "
             f"{metrics['logloss']:.4f} (popularity AUC {pop:.4f})"]
    if "members" in metrics:
        each = ", ".join(f"{m['auc']:.4f}" for m in metrics["members"])
        lines.append(f"  each seed alone: AUC {each}")
    if "hr@10" in metrics:
        lines.append(f"  ranking, {metrics['positives']:,} liked test pairs each among "
                     f"{metrics['n_neg']} sampled negatives: HR@10 {metrics['hr@10']:.4f}, "
                     f"NDCG@10 {metrics['ndcg@10']:.4f}")
    return [*lines, f"  saved {saved}/ (model.keras, history.json, curves.png)"]


def history_of(out_dir: Path) -> dict[str, list[float]]:
    """The saved training history of a run."""
    return json.loads((Path(out_dir) / HISTORY_FILE).read_text())
