"""Stage 07: notebook 07's HugeCTR model, its runner and the checks on the ETL output.

HugeCTR exists only in NVIDIA's container, so the model is built against
``mmlens.train.hugectr_standin``: HugeCTR 23.08's names and argument lists, recording every call.
The runner runs as a real subprocess, with a ``hugectr`` module on its path that is the stand-in.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmlens import capabilities
from mmlens._nb import training_with_hugectr as nb
from mmlens.config import Config
from mmlens.etl.hugectr_files import file_list_paths
from mmlens.train import hugectr_script, hugectr_standin
from mmlens.train.hugectr_script import ScriptInputError, validate_script_inputs

sys.path.insert(0, str(Path(__file__).parent))
from etl_fixture import make_etl  # noqa: E402

SHIM = '''"""`import hugectr` gives mmlens' recording stand-in (test only)."""
import sys

from mmlens.train import hugectr_standin

sys.modules[__name__] = hugectr_standin
'''


@pytest.fixture()
def etl(tmp_path: Path) -> tuple[Config, Path, dict[str, Any]]:
    cfg = Config(data_dir=tmp_path / "data", sample_profile="small")
    etl_dir = make_etl(cfg, splits=("random",))["random"]
    return cfg, etl_dir, json.loads((etl_dir / "schema.json").read_text())


@pytest.fixture()
def standin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``hugectr`` for subprocesses is the stand-in; its calls land in the returned file."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "hugectr.py").write_text(SHIM)
    log = tmp_path / "standin_calls.json"
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setenv(hugectr_standin.LOG_ENV, str(log))
    monkeypatch.setattr(capabilities, "has_hugectr", lambda: True)
    return log


def _calls(log: Path, name: str) -> list[dict[str, Any]]:
    return [c for c in json.loads(log.read_text()) if c["call"] == name]


BUILD_OPTIONS = nb.TrainOptions(batch_size=64, mlp=(8, 4), emb_dim=12)  # none the default


def _build(etl: Any) -> list[dict[str, Any]]:
    _, etl_dir, schema = etl
    hugectr_standin.CALLS.clear()
    sources = {p: str(etl_dir / p / "_file_list.txt") for p in ("train", "valid", "test")}
    sparse = {m: str(etl_dir / i["sparse_model"]) for m, i in schema["pretrained"].items()}
    nb.build_model(hugectr_standin, schema, sources, sparse, BUILD_OPTIONS)
    return list(hugectr_standin.CALLS)


def test_model_is_built_from_the_schema(etl: Any) -> None:
    _, _, schema = etl
    calls = _build(etl)
    solver = next(c for c in calls if c["call"] == "CreateSolver")
    assert solver["batchsize"] == solver["batchsize_eval"] == 64 and solver["i64_input_key"]
    assert solver["max_eval_batches"] == math.ceil(schema["rows"]["valid"] / 64)
    assert set(solver["metrics_spec"]) == {"MetricsType.AUC", "MetricsType.AverageLoss"}
    reader = next(c for c in calls if c["call"] == "DataReaderParams")
    assert reader["slot_size_array"] == schema["slot_size_array"]
    assert reader["data_reader_type"] == "DataReaderType_t.Parquet"
    added = [next(v for k, v in c.items() if k != "call")
             for c in calls if c["call"] == "Model.add"]
    params = {p["top_name"]: p for p in added[0]["data_reader_sparse_param_array"]}
    assert [n for p in params.values() for n in p["nnz_per_slot"]] == \
        [s["hotness"] for s in schema["slots"]]
    assert sum(p["slot_num"] for p in params.values()) == len(schema["slots"])
    embeddings = {e["sparse_embedding_name"]: e for e in added if e["kind"] == "SparseEmbedding"}
    for m, info in schema["pretrained"].items():
        assert embeddings[f"{m}_table"]["embedding_vec_size"] == info["dim"]
    trainable = {n: e for n, e in embeddings.items()
                 if n not in {f"{m}_table" for m in schema["pretrained"]}}
    assert trainable and {e["embedding_vec_size"] for e in trainable.values()} == {12}
    for name, emb in embeddings.items():
        reshape = next(a for a in added if a.get("bottom_names") == [name])
        slots = params[emb["bottom_name"]]["slot_num"]
        assert reshape["leading_dim"] == emb["embedding_vec_size"] * slots
    assert [a["num_output"] for a in added if a.get("layer_type") == "Layer_t.InnerProduct"] == \
        [8, 4, 1]
    assert added[-1]["layer_type"] == "Layer_t.BinaryCrossEntropyLoss"
    order = [c["call"] for c in calls]
    loaded = calls[order.index("Model.load_sparse_weights")]["sparse_embedding_files"]
    assert set(loaded) == {f"{m}_table" for m in schema["pretrained"]}
    frozen = [c["embedding_name"] for c in calls if c["call"] == "Model.freeze_embedding"]
    assert sorted(frozen) == sorted(loaded)
    assert order.index("Model.compile") < order.index("Model.load_sparse_weights") < \
        order.index("Model.freeze_embedding")


def test_standin_rejects_what_hugectr_2308_rejects(etl: Any) -> None:
    s = hugectr_standin
    with pytest.raises(TypeError, match="unknown \\['batch_size'\\]"):
        s.CreateSolver(batch_size=8)  # 23.08 spells it batchsize
    with pytest.raises(TypeError, match="missing \\['eval_source', 'check_type'\\]"):
        s.DataReaderParams(data_reader_type=s.DataReaderType_t.Parquet, source=["a"])
    with pytest.raises(AttributeError, match="no member 'Dense'"):
        _ = s.Layer_t.Dense
    with pytest.raises(ValueError, match="1024"):
        s.SparseEmbedding(embedding_type=s.Embedding_t.DistributedSlotSparseEmbeddingHash,
                          embedding_vec_size=1025, combiner="mean",
                          sparse_embedding_name="t", bottom_name="k")
    model = s.Model(s.CreateSolver(), None, s.CreateOptimizer())
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(max_iter=10)
    model.compile()
    with pytest.raises(ValueError, match="No such embedding name: poster_table"):
        model.load_sparse_weights({"poster_table": str(etl[1])})
    with pytest.raises(ValueError, match="No such embedding name"):
        model.freeze_embedding("text_table")


def test_run_evaluates_whole_sets_snapshots_and_streams_the_log(
        etl: Any, standin_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _, schema = etl
    result = hugectr_script.run(cfg, epochs=2, batch_size=64, mlp=(8, 4))
    assert result["engine"] == "hugectr"
    # the stand-in predicts each row's label: AUC 1 means predictions came back in file order
    assert result["rows"] == schema["rows"]["test"] and result["auc"] == pytest.approx(1.0)
    assert result["valid"]["rows"] == schema["rows"]["valid"]
    assert result["valid"]["auc"] == pytest.approx(1.0)
    steps = math.ceil(schema["rows"]["train"] / 64)
    (fit,) = _calls(standin_path, "Model.fit")
    assert fit["max_iter"] == 2 * steps and fit["eval_interval"] == steps
    assert fit["snapshot"] == 0
    (solver,) = _calls(standin_path, "CreateSolver")
    assert solver["repeat_dataset"] is True
    layers = [next(v for k, v in c.items() if k != "call")
              for c in _calls(standin_path, "Model.add")]  # run's options reached the script
    assert [a["num_output"] for a in layers if a.get("layer_type") == "Layer_t.InnerProduct"] \
        == [8, 4, 1]
    assert solver["max_eval_batches"] * 64 >= schema["rows"]["valid"] > \
        (solver["max_eval_batches"] - 1) * 64  # every validation row, each evaluation
    (saved,) = _calls(standin_path, "Model.save_params_to_files")
    assert saved["iter"] == 2 * steps
    out_dir = Path(result["script"]).parent
    assert (out_dir / result["snapshot"]["dense"]).exists()
    assert len(result["snapshot"]["sparse"]) == len(schema["pretrained"]) + 1
    assert all((out_dir / p / "key").exists() for p in result["snapshot"]["sparse"])
    for pred, part in zip(_calls(standin_path, "InferenceModel.predict"), ("valid", "test"),
                          strict=True):
        assert pred["num_batches"] == math.ceil(schema["rows"][part] / 64)
        assert pred["slot_size_array"] == schema["slot_size_array"]
    printed = capsys.readouterr().out
    assert "mmlens: " in printed and "07 random (HugeCTR): valid AUC 1.0000" in printed
    assert "mmlens: " in (out_dir / "hugectr.log").read_text()
    saved_metrics = json.loads((cfg.dataset_dir / "metrics" / "07.json").read_text())
    assert saved_metrics["random"]["valid"]["rows"] == schema["rows"]["valid"]


def test_launcher_runs_after_the_data_volume_moved(etl: Any, standin_path: Path,
                                                   tmp_path: Path) -> None:
    cfg, _, schema = etl
    script = Path(hugectr_script.run(cfg, epochs=1, batch_size=64, mlp=(4,))["script"])
    old_root = cfg.data_dir.resolve()
    moved = tmp_path / "mounted" / "elsewhere"
    shutil.move(str(cfg.data_dir), str(moved))
    launcher = moved / script.resolve().relative_to(old_root)
    stale = sorted(launcher.parent.glob("*_predictions.npy"))  # the relaunch must write anew
    assert [p.name for p in stale] == ["test_predictions.npy", "valid_predictions.npy"]
    for p in stale:
        p.unlink()
    proc = subprocess.run([sys.executable, str(launcher)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in ("train", "valid", "test"):
        paths = file_list_paths(launcher.parent / f"{part}_file_list.txt")
        assert paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)
        assert all(Path(p).is_relative_to(moved.resolve()) for p in paths)
    source = _calls(standin_path, "DataReaderParams")[0]["source"][0]
    assert Path(source).is_relative_to(moved.resolve())
    predictions = np.load(launcher.parent / "test_predictions.npy")
    assert len(predictions) == schema["rows"]["test"]


def test_slots_follow_the_index_field_not_the_list_order(etl: Any) -> None:
    _, etl_dir, schema = etl
    meta_path = etl_dir / "valid" / "_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["cats"] = meta["cats"][::-1]  # listed backwards, same indices: HugeCTR reads the same
    meta_path.write_text(json.dumps(meta))
    validate_script_inputs(schema, etl_dir)
    a, b = meta["cats"][0], meta["cats"][1]
    a["index"], b["index"] = b["index"], a["index"]  # listed in order, but indices swapped
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ScriptInputError, match="ordered by index") as err:
        validate_script_inputs(schema, etl_dir)
    assert "has index" in str(err.value)  # and the indices no longer match the parquet columns


def test_index_and_dtypes_must_match_the_parquet_file(etl: Any) -> None:
    _, etl_dir, schema = etl
    part = etl_dir / "test" / "part_0.parquet"
    df = pd.read_parquet(part)
    df["label"] = df["label"].astype("int8")
    df[["label", *[c for c in df.columns if c != "label"]]].to_parquet(part, index=False)
    with pytest.raises(ScriptInputError) as err:
        validate_script_inputs(schema, etl_dir)
    text = str(err.value)
    assert "'label' has index" in text and "HugeCTR reads float32" in text


def test_table_wider_than_1024_raises(etl: Any, tmp_path: Path) -> None:
    _, etl_dir, schema = etl
    schema["pretrained"]["poster"]["dim"] = 2048
    with pytest.raises(ScriptInputError, match="PCA"):
        hugectr_script.check_vec_sizes(schema)
    with pytest.raises(ScriptInputError, match="1024"):
        validate_script_inputs(schema, etl_dir)


def test_key_outside_slot_range_raises(etl: Any) -> None:
    _, etl_dir, schema = etl
    key_file = etl_dir / schema["pretrained"]["text"]["sparse_model"] / "key"
    keys = np.fromfile(key_file, dtype=np.int64)
    (keys - schema["slots"][-1]["offset"]).tofile(key_file)  # offsets forgotten
    with pytest.raises(ScriptInputError, match="text: keys span"):
        validate_script_inputs(schema, etl_dir)


def test_undeclared_slot_and_size_mismatch_raise(etl: Any) -> None:
    _, etl_dir, schema = etl
    meta_path = etl_dir / "valid" / "_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["cats"] = [c for c in meta["cats"] if c["col_name"] != "poster_id"]
    meta_path.write_text(json.dumps(meta))
    schema["slot_size_array"][0] += 1
    with pytest.raises(ScriptInputError) as err:
        validate_script_inputs(schema, etl_dir)
    text = str(err.value)
    assert "'poster_id' is not declared" in text and "slot_size_array" in text


def test_wrong_offset_and_vector_width_raise(etl: Any) -> None:
    _, etl_dir, schema = etl
    schema["slots"][2]["offset"] += 1
    schema["pretrained"]["poster"]["dim"] = 15
    with pytest.raises(ScriptInputError) as err:
        validate_script_inputs(schema, etl_dir)
    assert "offset" in str(err.value) and "emb_vector" in str(err.value)
