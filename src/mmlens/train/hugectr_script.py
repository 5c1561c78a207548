"""Stage 07: generate (and, in NVIDIA's Merlin HugeCTR container, run) a HugeCTR training script.

The script reads the ETL parquet through HugeCTR's Parquet reader, keeps one trainable embedding
group for the id/genre/year slots and one frozen table per pretrained modality (loaded from the
sparse-model files of notebook 06), and trains an MLP with binary cross-entropy. Everything the
reader will check is validated here first, without HugeCTR: slot columns, sizes, key offsets and
vector widths. Without HugeCTR the same architecture trains in Keras.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmlens import artifacts, capabilities
from mmlens.config import Config
from mmlens.train import data, evaluate

MAX_VEC_SIZE = 1024  # HugeCTR's limit on embedding_vec_size
SCRIPT_NAME = "train_hugectr.py"
METRICS_NAME = "hugectr_metrics.json"
UNAVAILABLE = ("HugeCTR is not available (it ships only in NVIDIA's Merlin HugeCTR container): "
               "training the same architecture in Keras instead")


class ScriptInputError(ValueError):
    """The ETL output does not match what the HugeCTR script would declare."""


def embedding_groups(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Consecutive trainable slots form one group; each pretrained slot is its own group.

    Groups follow slot order, which is the order HugeCTR's Parquet reader assigns keys to inputs.
    """
    by_slot = {info["slot"]: m for m, info in schema["pretrained"].items()}
    groups: list[dict[str, Any]] = []
    for slot in schema["slots"]:
        modality = by_slot.get(slot["name"])
        if modality is None and groups and groups[-1]["modality"] is None:
            groups[-1]["slots"].append(slot)
            continue
        name = f"{modality}_table" if modality else f"trainable_{len(groups)}"
        groups.append({"name": name, "input": f"{name}_keys", "modality": modality,
                       "slots": [slot]})
    return groups


def check_vec_sizes(schema: dict[str, Any]) -> None:
    """Raise when a pretrained table is wider than HugeCTR allows (never truncate silently)."""
    for m, info in schema["pretrained"].items():
        if int(info["dim"]) > MAX_VEC_SIZE:
            raise ScriptInputError(
                f"pretrained table {m!r} is {info['dim']}-d but HugeCTR's embedding_vec_size is "
                f"capped at {MAX_VEC_SIZE}: reduce it with PCA in notebook 05 (feature store) "
                f"and re-run 06"
            )


def _workspace_mb(rows: int, width: int, states: int = 3) -> int:
    """Per-GPU workspace for a hash table: weights + optimizer states, with 2x headroom."""
    return max(1, math.ceil(2 * rows * width * 4 * states / 2**20))


def generate_script(
    schema: dict[str, Any],
    etl_dir: Path,
    out_dir: Path,
    *,
    batch_size: int = 2048,
    lr: float = 1e-3,
    epochs: int = 1,
    max_iter: int | None = None,
    mlp: Sequence[int] = (256, 128),
    emb_dim: int = 32,
    gpus: Sequence[int] = (0,),
) -> Path:
    """Write ``out_dir/train_hugectr.py`` and return its path.

    ``max_iter`` defaults to ``epochs`` passes over the train rows. The script writes its
    evaluation metrics to ``hugectr_metrics.json``, snapshots under ``snapshots/`` and the graph
    to ``model.json`` in ``out_dir``.
    """
    check_vec_sizes(schema)
    etl_dir, out_dir = Path(etl_dir).resolve(), Path(out_dir).resolve()
    train_dir = data.part_dir(etl_dir, schema, "train")
    valid_dir = data.part_dir(etl_dir, schema, "valid")
    train_rows = int(schema.get("rows", {}).get("train") or 0) or data.part_rows(train_dir)
    if max_iter is None:
        max_iter = max(1, epochs * math.ceil(train_rows / batch_size))
    groups = embedding_groups(schema)
    dense_dim = len(schema.get("dense", []))
    lines = _header(schema, train_dir, valid_dir, batch_size, lr, gpus, out_dir)
    lines += _inputs(groups, dense_dim)
    concat: list[str] = []
    for g in groups:
        if g["modality"]:
            width = int(schema["pretrained"][g["modality"]]["dim"])
            rows = int(g["slots"][0]["cardinality"])
        else:
            width, rows = emb_dim, sum(int(s["cardinality"]) for s in g["slots"])
        lines += _embedding(g["name"], g["input"], width, _workspace_mb(rows, width))
        lines += _layer("Reshape", [g["name"]], [f"{g['name']}_flat"],
                        leading_dim=width * len(g["slots"]))
        concat.append(f"{g['name']}_flat")
    if dense_dim:
        concat.append("dense")
    lines += _layer("Concat", concat, ["concat"])
    bottom = "concat"
    for i, units in enumerate(mlp):
        lines += _layer("InnerProduct", [bottom], [f"fc{i}"], num_output=int(units))
        lines += _layer("ReLU", [f"fc{i}"], [f"relu{i}"])
        bottom = f"relu{i}"
    lines += _layer("InnerProduct", [bottom], ["logit"], num_output=1)
    lines += _layer("BinaryCrossEntropyLoss", ["logit", "label"], ["loss"])
    lines += _footer(schema, etl_dir, groups, max_iter, train_rows, batch_size, out_dir)
    script = "\n".join(lines) + "\n"
    compile(script, SCRIPT_NAME, "exec")  # a generator bug fails here, not on the GPU box
    target = out_dir / SCRIPT_NAME
    with artifacts.atomic_path(target) as tmp:
        tmp.write_text(script)
    return target


def _header(schema: dict[str, Any], train_dir: Path, valid_dir: Path, batch_size: int,
            lr: float, gpus: Sequence[int], out_dir: Path) -> list[str]:
    return [
        '"""HugeCTR training script generated by mmlens (notebook 07). Run it inside the Merlin',
        'HugeCTR container: python train_hugectr.py"""',
        "import json",
        "",
        "import hugectr",
        "",
        "solver = hugectr.CreateSolver(",
        f"    max_eval_batches=100, batchsize_eval={batch_size}, batchsize={batch_size},",
        f"    lr={lr!r}, vvgpu=[{list(gpus)!r}], repeat_dataset=True, i64_input_key=True,",
        "    use_mixed_precision=False,",
        ")",
        "reader = hugectr.DataReaderParams(",
        "    data_reader_type=hugectr.DataReaderType_t.Parquet,",
        f"    source=[{str(train_dir / '_file_list.txt')!r}],",
        f"    eval_source={str(valid_dir / '_file_list.txt')!r},",
        "    check_type=hugectr.Check_t.Non,",
        f"    slot_size_array={[int(x) for x in schema['slot_size_array']]!r},",
        ")",
        "optimizer = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam,",
        "                                    update_type=hugectr.Update_t.Global,",
        "                                    beta1=0.9, beta2=0.999, epsilon=1e-7)",
        "model = hugectr.Model(solver, reader, optimizer)",
        f"OUT_DIR = {str(out_dir)!r}",
    ]


def _inputs(groups: list[dict[str, Any]], dense_dim: int) -> list[str]:
    lines = ["model.add(hugectr.Input(",
             f"    label_dim=1, label_name='label', dense_dim={dense_dim}, dense_name='dense',",
             "    data_reader_sparse_param_array=["]
    for g in groups:
        nnz = [int(s["hotness"]) for s in g["slots"]]
        fixed = all(n == 1 for n in nnz)
        lines.append(f"        hugectr.DataReaderSparseParam({g['input']!r}, {nnz!r}, {fixed}, "
                     f"{len(nnz)}),")
    return [*lines, "    ],", "))"]


def _embedding(name: str, bottom: str, width: int, workspace_mb: int) -> list[str]:
    return [
        "model.add(hugectr.SparseEmbedding(",
        "    embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,",
        f"    workspace_size_per_gpu_in_mb={workspace_mb}, embedding_vec_size={width},",
        f"    combiner='mean', sparse_embedding_name={name!r}, bottom_name={bottom!r},",
        "    optimizer=optimizer,",
        "))",
    ]


def _layer(kind: str, bottoms: list[str], tops: list[str], **kwargs: int) -> list[str]:
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return [f"model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.{kind}, "
            f"bottom_names={bottoms!r}, top_names={tops!r}{extra}))"]


def _footer(schema: dict[str, Any], etl_dir: Path, groups: list[dict[str, Any]], max_iter: int,
            train_rows: int, batch_size: int, out_dir: Path) -> list[str]:
    pretrained = {g["name"]: str(etl_dir / schema["pretrained"][g["modality"]]["sparse_model"])
                  for g in groups if g["modality"]}
    eval_every = max(1, min(max_iter, math.ceil(train_rows / batch_size)))
    lines = ["model.compile()", "model.summary()", "",
             "# Pretrained content tables: load the sparse models written by notebook 06, freeze."]
    lines.append(f"model.load_sparse_weights({pretrained!r})")
    lines += [f"model.freeze_embedding({name!r})" for name in pretrained]
    lines += [
        "",
        f"model.fit(max_iter={max_iter}, display={max(1, eval_every // 4)}, "
        f"eval_interval={eval_every}, snapshot={max_iter}, "
        f"snapshot_prefix=OUT_DIR + '/snapshots/mmlens')",
        "model.graph_to_json(graph_config_file=OUT_DIR + '/model.json')",
        "model.eval()",
        "metrics = {name.lower(): float(value) for name, value in model.get_eval_metrics()}",
        f"with open(OUT_DIR + '/{METRICS_NAME}', 'w') as f:",
        "    json.dump(metrics, f, indent=2)",
        "print('mmlens metrics:', json.dumps(metrics))",
    ]
    return lines


def validate_script_inputs(schema: dict[str, Any], etl_dir: Path, *,
                           check_widths: bool = True) -> None:
    """Check, without HugeCTR, everything the generated script relies on; raise ScriptInputError.

    Every slot column is declared in each part's ``_metadata.json`` cats, the label in its labels;
    ``slot_size_array`` equals the slot cardinalities and offsets are their prefix sums; each
    sparse-model key file holds keys inside ``[offset, offset + cardinality)`` and its vectors have
    the table's width, which is at most 1024.
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
        raise ScriptInputError("the ETL output does not fit the HugeCTR script:\n- "
                               + "\n- ".join(problems))


def _check_metadata(part_dir: Path, schema: dict[str, Any]) -> list[str]:
    meta_path = part_dir / "_metadata.json"
    if not meta_path.exists():
        return [f"{meta_path} is missing"]
    meta = json.loads(meta_path.read_text())
    cats = [c["col_name"] for c in meta.get("cats", [])]
    labels = [c["col_name"] for c in meta.get("labels", [])]
    problems = [f"{meta_path}: slot column {s['column']!r} is not declared in cats"
                for s in schema["slots"] if s["column"] not in cats]
    declared = [c for c in cats if c in {s["column"] for s in schema["slots"]}]
    if not problems and declared != [s["column"] for s in schema["slots"]]:
        problems.append(f"{meta_path}: cats order {declared} differs from slot order")
    if schema["label"] not in labels:
        problems.append(f"{meta_path}: label {schema['label']!r} is not declared in labels")
    if not (part_dir / "_file_list.txt").exists():
        problems.append(f"{part_dir / '_file_list.txt'} is missing")
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
    """Notebook 07: generate the script into ``models/hugectr/<split>``, validate, train.

    Runs the script with HugeCTR when this machine has it (GPU + Merlin container); otherwise
    trains the equivalent Keras model (same slots, frozen tables, same MLP). A pretrained table
    wider than 1024 raises with HugeCTR; without it, no script is written (the reason is printed
    and stored) and the Keras model still trains. Merges the result into
    ``metrics/07.json[split]`` and returns it.
    """
    etl_dir, schema = data.require_split(cfg, split)
    for m in schema["pretrained"]:
        artifacts.require(cfg, "sparse_model", split=split, modality=m)
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
        print(f"07: no HugeCTR script written: {too_wide}")
    else:
        script = generate_script(schema, etl_dir, out_dir, batch_size=batch_size, lr=lr,
                                 epochs=epochs, mlp=mlp, emb_dim=emb_dim)
        print(f"07 wrote {script} ({len(schema['slots'])} slots, "
              f"{len(schema['pretrained'])} frozen tables)")
    if use_hugectr and script is not None:
        metrics = _run_hugectr(script, out_dir)
        metrics["engine"] = "hugectr"
    else:
        print(UNAVAILABLE)
        metrics = _run_keras_equivalent(etl_dir, schema, cfg.seed, batch_size=batch_size,
                                        lr=lr, epochs=epochs, mlp=mlp, emb_dim=emb_dim)
        metrics["engine"] = "keras"
    metrics["script"] = str(script) if script else None
    if too_wide:
        metrics["script_error"] = too_wide
    evaluate.update_metrics(cfg, "07", (split,), metrics)
    auc = metrics.get("auc")
    print(f"07 {split} ({metrics['engine']}): AUC {auc if auc is None else round(auc, 4)}")
    return evaluate.clean(metrics)


def _run_hugectr(script: Path, out_dir: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(script)], cwd=out_dir, text=True,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"HugeCTR training failed (exit {proc.returncode}):\n{tail}")
    return dict(artifacts.read_json(out_dir / METRICS_NAME))


def _run_keras_equivalent(etl_dir: Path, schema: dict[str, Any], seed: int, *, batch_size: int,
                          lr: float, epochs: int, mlp: Sequence[int],
                          emb_dim: int) -> dict[str, Any]:
    from mmlens.train import keras_train

    _, metrics = keras_train.train_and_evaluate(
        etl_dir, schema, variant="mlp", modalities=tuple(schema["pretrained"]), epochs=epochs,
        seed=seed, batch_size=batch_size, lr=lr,
        unseen_items="keep",
        model_options={"mlp": tuple(mlp), "emb_dim": emb_dim, "project_dim": None,
                       "has_flags": False, "normalize": False, "tower": False,
                       "item_dropout": 0.0})
    return metrics
