"""Stage 07: train notebook 07's HugeCTR model in NVIDIA's Merlin HugeCTR container.

The model is notebook 07's code (``mmlens._nb.training_with_hugectr``): one trainable embedding
table for the id/genre/year slots, one frozen table per pretrained modality, an MLP. This module
checks, without HugeCTR, everything HugeCTR's Parquet reader will rely on (slot columns and their
``index`` order in ``_metadata.json``, dtypes, sizes, key offsets, vector widths), writes the run
file and a launcher, runs it as a subprocess whose log streams into the notebook line by line,
and scores the valid and test predictions with :mod:`mmlens.train.evaluate`, the code that scores
notebook 08. Without HugeCTR the same architecture trains in Keras instead, and says so.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts, capabilities
from mmlens._nb.create_feature_store import MAX_VEC_SIZE  # HugeCTR's cap on embedding_vec_size
from mmlens.config import Config
from mmlens.etl.hugectr_files import file_list_paths
from mmlens.train import data, evaluate

SCRIPT_NAME = "train_hugectr.py"
LOG_NAME = "hugectr.log"
UNAVAILABLE = ("HugeCTR is not available (it ships only in NVIDIA's Merlin HugeCTR container and "
               "needs a GPU): training the same architecture in Keras instead")
LAUNCHER = '''"""HugeCTR training for mmlens split {split!r}: notebook 07's model (mmlens._nb).

Run it in NVIDIA's Merlin HugeCTR container with mmlens installed: python {script}
It reads {run_file} beside it; paths there are relative, so the data volume may move.
"""
import sys
from pathlib import Path

from mmlens.train import hugectr_runner

sys.exit(hugectr_runner.main([str(Path(__file__).with_name({run_file!r}))]))
'''


class ScriptInputError(ValueError):
    """The ETL output does not match what the HugeCTR model would declare."""


def check_vec_sizes(schema: dict[str, Any]) -> None:
    """Raise when a pretrained table is wider than HugeCTR allows (never truncate silently)."""
    for m, info in schema["pretrained"].items():
        if int(info["dim"]) > MAX_VEC_SIZE:
            raise ScriptInputError(
                f"pretrained table {m!r} is {info['dim']}-d but HugeCTR's embedding_vec_size is "
                f"capped at {MAX_VEC_SIZE}: reduce it with PCA in notebook 05 (feature store) "
                f"and re-run 06"
            )


def train_options(cfg: Config, **options: Any) -> Any:
    """Notebook 07's ``TrainOptions`` with the run's seed."""
    from mmlens._nb.training_with_hugectr import TrainOptions

    return TrainOptions(seed=cfg.seed, **options)


def write_launcher(schema: dict[str, Any], etl_dir: Path, out_dir: Path, opts: Any) -> Path:
    """Write ``hugectr_run.json`` (options; the ETL directory relative to ``out_dir``) and the
    ``train_hugectr.py`` that runs it; return the launcher."""
    from mmlens.train.hugectr_runner import RUN_FILE

    out_dir.mkdir(parents=True, exist_ok=True)
    run = {"etl_dir": os.path.relpath(Path(etl_dir).resolve(), Path(out_dir).resolve()),
           "split": schema["split"], "options": asdict(opts)}
    artifacts.write_json(out_dir / RUN_FILE, run)
    target = out_dir / SCRIPT_NAME
    with artifacts.atomic_path(target) as tmp:
        tmp.write_text(LAUNCHER.format(split=schema["split"], script=SCRIPT_NAME,
                                       run_file=RUN_FILE))
    return target


def validate_script_inputs(schema: dict[str, Any], etl_dir: Path, *,
                           check_widths: bool = True) -> None:
    """Check, without HugeCTR, everything the model relies on; raise ScriptInputError.

    In each part's ``_metadata.json``, the ``cats`` ordered by ``index`` (the order in which
    HugeCTR's Parquet reader assigns them to slots) are exactly the slot columns, each ``index``
    is that column's position in the Parquet files, slots are int64 (lists of int64 for
    multi-hot) and the label float32. ``slot_size_array`` equals the slot cardinalities and the
    offsets are their prefix sums; each sparse-model key file holds keys inside
    ``[offset, offset + cardinality)`` and its vectors have the table's width, at most 1024.
    """
    etl_dir = Path(etl_dir)
    slots = schema["slots"]
    problems: list[str] = []
    cards = [int(s["cardinality"]) for s in slots]
    if [int(x) for x in schema["slot_size_array"]] != cards:
        problems.append(f"slot_size_array {schema['slot_size_array']} != slot cardinalities "
                        f"{cards}")
    expected = 0
    for s in slots:
        if int(s["offset"]) != expected:
            problems.append(f"slot {s['name']!r} offset {s['offset']} != prefix sum {expected}")
        expected += int(s["cardinality"])
    for part in schema["parts"].values():
        problems += _check_metadata(etl_dir / part, schema)
    if check_widths:
        try:
            check_vec_sizes(schema)
        except ScriptInputError as err:
            problems.append(str(err))
    by_name = {s["name"]: s for s in slots}
    for m, info in schema["pretrained"].items():
        if info["slot"] not in by_name:
            problems.append(f"pretrained {m!r} names slot {info['slot']!r}, not in slots")
            continue
        problems += _check_sparse_model(etl_dir / info["sparse_model"], m, int(info["dim"]),
                                        by_name[info["slot"]])
    if problems:
        raise ScriptInputError("the ETL output does not fit the HugeCTR model:\n- "
                               + "\n- ".join(problems))


def _check_metadata(part_dir: Path, schema: dict[str, Any]) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta_path = part_dir / "_metadata.json"
    if not meta_path.exists():
        return [f"{meta_path} is missing"]
    meta = json.loads(meta_path.read_text())
    by_index = [c["col_name"] for c in sorted(meta.get("cats", []), key=lambda c: c["index"])]
    slot_columns = [s["column"] for s in schema["slots"]]
    problems = [f"{meta_path}: slot column {c!r} is not declared in cats"
                for c in slot_columns if c not in by_index]
    if not problems and by_index != slot_columns:
        problems.append(f"{meta_path}: cats ordered by index {by_index} differ from the slots "
                        f"{slot_columns}")
    labels = [c["col_name"] for c in meta.get("labels", [])]
    if schema["label"] not in labels:
        problems.append(f"{meta_path}: label {schema['label']!r} is not declared in labels")
    files = [part_dir / f["file_name"] for f in meta.get("file_stats", [])]
    if not files or not files[0].exists():
        return [*problems, f"{meta_path}: no readable parquet file listed in file_stats"]
    arrow = pq.read_schema(files[0])
    for c in [*meta.get("cats", []), *meta.get("labels", []), *meta.get("conts", [])]:
        at = arrow.names[c["index"]] if 0 <= c["index"] < len(arrow.names) else None
        if at != c["col_name"]:
            problems.append(f"{meta_path}: {c['col_name']!r} has index {c['index']} but column "
                            f"{c['index']} of {files[0].name} is {at!r}")
    for name in slot_columns:
        if name in arrow.names and arrow.field(name).type not in (pa.int64(),
                                                                  pa.list_(pa.int64())):
            problems.append(f"{files[0].name}: slot {name!r} is {arrow.field(name).type}, "
                            "HugeCTR reads int64 keys")
    label = schema["label"]
    if label in arrow.names and arrow.field(label).type != pa.float32():
        problems.append(f"{files[0].name}: label {label!r} is {arrow.field(label).type}, "
                        "HugeCTR reads float32")
    return problems


def _check_sparse_model(sparse_dir: Path, modality: str, dim: int,
                        slot: dict[str, Any]) -> list[str]:
    key_file, vec_file = sparse_dir / "key", sparse_dir / "emb_vector"
    if not key_file.exists() or not vec_file.exists():
        return [f"{sparse_dir}: key or emb_vector missing (notebook 06)"]
    keys = np.fromfile(key_file, dtype=np.int64)
    lo, hi = int(slot["offset"]), int(slot["offset"]) + int(slot["cardinality"])
    problems = []
    if keys.size == 0:
        return [f"{key_file} is empty"]
    if keys.min() < lo or keys.max() >= hi:
        problems.append(f"{modality}: keys span [{keys.min()}, {keys.max()}], outside slot "
                        f"{slot['name']!r} range [{lo}, {hi})")
    n_floats = vec_file.stat().st_size // 4
    if n_floats != keys.size * dim:
        problems.append(f"{modality}: emb_vector holds {n_floats} floats, expected "
                        f"{keys.size} keys x {dim}")
    return problems


def run(
    cfg: Config,
    *,
    split: str = "random",
    batch_size: int = 2048,
    lr: float = 1e-3,
    epochs: int = 3,
    mlp: Sequence[int] = (256, 128),
    emb_dim: int = 32,
) -> dict[str, Any]:
    """Notebook 07: validate the ETL output, write the launcher into ``models/hugectr/<split>``,
    train with HugeCTR where this machine has it (GPU + Merlin container), else train the
    equivalent Keras model (same slots, frozen tables, same MLP).

    A pretrained table wider than 1024 raises with HugeCTR; without it, no launcher is written
    (the reason is printed and stored) and the Keras model still trains. Merges the result into
    ``metrics/07.json[split]`` and returns it: test ``auc``/``logloss``/``rows`` as notebook 08
    reports them, and ``valid`` metrics.
    """
    etl_dir, schema = data.require_split(cfg, split)
    for m in schema["pretrained"]:
        artifacts.require(cfg, "sparse_model", split=split, modality=m)
    opts = train_options(cfg, batch_size=batch_size, lr=lr, epochs=epochs,
                         mlp=tuple(int(u) for u in mlp), emb_dim=emb_dim)
    use_hugectr = capabilities.has_hugectr()
    too_wide = None
    try:
        check_vec_sizes(schema)
    except ScriptInputError as err:
        if use_hugectr:
            raise
        too_wide = str(err)
    validate_script_inputs(schema, etl_dir, check_widths=too_wide is None)
    out_dir = artifacts.path(cfg, "hugectr_dir", split=split)
    script = None
    if too_wide:
        print(f"07: no HugeCTR launcher written: {too_wide}")
    else:
        script = write_launcher(schema, etl_dir, out_dir, opts)
    if use_hugectr and script is not None:
        print(f"07: training with HugeCTR ({len(schema['slots'])} slots, "
              f"{len(schema['pretrained'])} frozen tables); its log follows")
        run_hugectr(script)
        metrics = score_predictions(out_dir, schema)
        metrics["engine"] = "hugectr"
    else:
        print(UNAVAILABLE)
        metrics = _run_keras_equivalent(etl_dir, schema, opts)
        metrics["engine"] = "keras"
    metrics["script"] = str(script) if script else None
    if too_wide:
        metrics["script_error"] = too_wide
    evaluate.update_metrics(cfg, "07", (split,), metrics)
    print(_summary_line(split, metrics))
    return evaluate.clean(metrics)


def run_hugectr(script: Path) -> None:
    """Run the launcher, copying its output here line by line (and into ``hugectr.log``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen([sys.executable, str(script)], cwd=script.parent, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1) as proc, \
            open(script.parent / LOG_NAME, "w") as log:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            log.write(line)
            tail.append(line.rstrip("\n"))
    if proc.returncode != 0:
        raise RuntimeError(f"HugeCTR training failed (exit {proc.returncode}):\n"
                           + "\n".join(tail))


def score_predictions(out_dir: Path, schema: dict[str, Any]) -> dict[str, Any]:
    """Score the runner's predictions with :func:`evaluate.pointwise_metrics`: the test part's
    at the top level (as notebook 08 reports), the validation part's under ``valid``."""
    from mmlens.train.hugectr_runner import RESULT_FILE

    result = artifacts.read_json(out_dir / RESULT_FILE)
    scored = {}
    for part, info in result["parts"].items():
        paths = file_list_paths(out_dir / info["file_list"])
        labels = pd.concat([pd.read_parquet(p, columns=[schema["label"]]) for p in paths],
                           ignore_index=True)[schema["label"]].to_numpy()
        pred = np.load(out_dir / info["predictions"])
        scored[part] = evaluate.pointwise_metrics(labels, pred)
    metrics: dict[str, Any] = dict(scored["test"])
    metrics["valid"] = scored["valid"]
    metrics["iterations"] = result["iterations"]
    metrics["snapshot"] = result["snapshot"]
    return metrics


def _summary_line(split: str, metrics: dict[str, Any]) -> str:
    def fmt(m: dict[str, Any]) -> str:
        auc = m.get("auc")
        auc_text = "n/a" if auc is None or math.isnan(auc) else f"{auc:.4f}"
        return f"AUC {auc_text}, logloss {m.get('logloss', float('nan')):.4f} ({m['rows']} rows)"

    engine = "HugeCTR" if metrics["engine"] == "hugectr" else "Keras stand-in, not HugeCTR"
    valid = f"valid {fmt(metrics['valid'])}; " if "valid" in metrics else ""
    return f"07 {split} ({engine}): {valid}test {fmt(metrics)}"


def _run_keras_equivalent(etl_dir: Path, schema: dict[str, Any], opts: Any) -> dict[str, Any]:
    """The same architecture in Keras, reported like the HugeCTR run: test metrics at the top
    level, the whole validation part's under ``valid``."""
    from mmlens.train import keras_train

    modalities = tuple(schema["pretrained"])
    model, metrics = keras_train.train_and_evaluate(
        etl_dir, schema, variant="mlp", modalities=modalities,
        epochs=opts.epochs, seed=opts.seed, batch_size=opts.batch_size, lr=opts.lr,
        unseen_items="keep",
        model_options={"mlp": tuple(opts.mlp), "emb_dim": opts.emb_dim, "project_dim": None,
                       # has-flags kept: Keras 3.12 (the container's) refuses unused inputs
                       "has_flags": True, "normalize": False, "tower": False,
                       "item_dropout": 0.0})
    metrics["valid"] = evaluate.pointwise_metrics(*keras_train.score_part(
        model, etl_dir, schema, "valid", modalities, metrics["batch_size"]))
    return metrics
