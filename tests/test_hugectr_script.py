"""Stage 07: the generated HugeCTR script against a synthetic ETL output.

HugeCTR exists only in NVIDIA's container, so the script is executed against a recording stand-in
module: every layer, argument and call the script makes is checked against the schema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmlens import capabilities
from mmlens.config import Config
from mmlens.train import hugectr_script
from mmlens.train.hugectr_script import ScriptInputError, generate_script, validate_script_inputs

sys.path.insert(0, str(Path(__file__).parent))
from etl_fixture import make_etl  # noqa: E402

FAKE_HUGECTR = '''
"""Records what a HugeCTR training script asks for (test stand-in, no GPU)."""
import json


class _Names:
    def __getattr__(self, name):
        return name


DataReaderType_t = Check_t = Embedding_t = Layer_t = Optimizer_t = Update_t = _Names()


def _record(kind):
    def make(*args, **kwargs):
        return {"kind": kind, "args": list(args), **kwargs}
    return make


CreateSolver = _record("solver")
DataReaderParams = _record("reader")
CreateOptimizer = _record("optimizer")
Input = _record("Input")
SparseEmbedding = _record("SparseEmbedding")
DenseLayer = _record("DenseLayer")
DataReaderSparseParam = _record("DataReaderSparseParam")


class Model:
    def __init__(self, solver, reader, optimizer):
        self.log = {"solver": solver, "reader": reader, "layers": [], "calls": []}

    def add(self, layer):
        self.log["layers"].append(layer)

    def graph_to_json(self, graph_config_file):
        self.log["calls"].append(["graph_to_json", [], {}])
        with open(graph_config_file, "w") as f:
            json.dump(self.log, f)

    def get_eval_metrics(self):
        return [("AUC", 0.75)]

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.log["calls"].append([name, list(args), kwargs])
        return call
'''


@pytest.fixture()
def etl(tmp_path: Path) -> tuple[Config, Path, dict[str, Any]]:
    cfg = Config(data_dir=tmp_path / "data", sample_profile="small")
    etl_dir = make_etl(cfg, splits=("random",))["random"]
    return cfg, etl_dir, json.loads((etl_dir / "schema.json").read_text())


def _run_recorded(etl: tuple[Config, Path, dict[str, Any]], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg, _, _ = etl
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "hugectr.py").write_text(FAKE_HUGECTR)
    monkeypatch.setenv("PYTHONPATH", f"{fake}")
    monkeypatch.setattr(capabilities, "has_hugectr", lambda: True)
    result = hugectr_script.run(cfg, epochs=2, batch_size=256, mlp=(64, 32))
    out_dir = Path(result["script"]).parent
    return result, json.loads((out_dir / "model.json").read_text())


def test_generated_script_compiles_and_declares_every_slot(etl: Any, tmp_path: Path) -> None:
    _, etl_dir, schema = etl
    script = generate_script(schema, etl_dir, tmp_path / "out", batch_size=128, mlp=(8, 4))
    code = script.read_text()
    compile(code, str(script), "exec")
    assert f"slot_size_array={schema['slot_size_array']}" in code
    assert "DistributedSlotSparseEmbeddingHash" in code and "BinaryCrossEntropyLoss" in code
    groups = hugectr_script.embedding_groups(schema)
    assert [s["name"] for g in groups for s in g["slots"]] == [s["name"] for s in schema["slots"]]
    assert [g["modality"] for g in groups] == [None, "poster", "text"]


def test_recorded_run_matches_schema(etl: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, etl_dir, schema = etl
    result, log = _run_recorded(etl, tmp_path, monkeypatch)
    assert result["engine"] == "hugectr" and result["auc"] == pytest.approx(0.75)
    reader = log["reader"]
    assert reader["slot_size_array"] == schema["slot_size_array"]
    assert reader["data_reader_type"] == "Parquet" and reader["check_type"] == "Non"
    for listed in [*reader["source"], reader["eval_source"]]:
        lines = Path(listed).read_text().split()
        assert int(lines[0]) == len(lines) - 1 and all(Path(p).exists() for p in lines[1:])
    layers = log["layers"]
    params = {p["args"][0]: p["args"] for p in layers[0]["data_reader_sparse_param_array"]}
    nnz = [n for args in params.values() for n in args[1]]
    assert nnz == [s["hotness"] for s in schema["slots"]]
    assert sum(args[3] for args in params.values()) == len(schema["slots"])
    embeddings = {e["sparse_embedding_name"]: e for e in layers if e["kind"] == "SparseEmbedding"}
    for name, emb in embeddings.items():
        assert emb["bottom_name"] in params and emb["combiner"] == "mean"
        reshape = next(lay for lay in layers if lay.get("bottom_names") == [name])
        assert reshape["layer_type"] == "Reshape"
        assert reshape["leading_dim"] == emb["embedding_vec_size"] * params[emb["bottom_name"]][3]
    for m, info in schema["pretrained"].items():
        assert embeddings[f"{m}_table"]["embedding_vec_size"] == info["dim"]
    dense = [lay["num_output"] for lay in layers if lay.get("layer_type") == "InnerProduct"]
    assert dense == [64, 32, 1]
    assert layers[-1]["layer_type"] == "BinaryCrossEntropyLoss"
    calls = [c[0] for c in log["calls"]]
    assert calls.index("compile") < calls.index("load_sparse_weights") < calls.index("fit")
    loaded = log["calls"][calls.index("load_sparse_weights")][1][0]
    assert set(loaded) == {f"{m}_table" for m in schema["pretrained"]}
    assert all((Path(p) / "key").exists() for p in loaded.values())
    frozen = [c[1][0] for c in log["calls"] if c[0] == "freeze_embedding"]
    assert sorted(frozen) == sorted(loaded)
    last_freeze = max(i for i, c in enumerate(calls) if c == "freeze_embedding")
    assert calls.index("load_sparse_weights") < last_freeze < calls.index("fit")


def test_validate_accepts_the_fixture(etl: Any) -> None:
    _, etl_dir, schema = etl
    validate_script_inputs(schema, etl_dir)


def test_table_wider_than_1024_raises(etl: Any, tmp_path: Path) -> None:
    _, etl_dir, schema = etl
    schema["pretrained"]["poster"]["dim"] = 2048
    with pytest.raises(ScriptInputError, match="PCA"):
        generate_script(schema, etl_dir, tmp_path / "out")
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
