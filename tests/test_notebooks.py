"""The tutorial notebooks: their subject code in the cells, exported to the package, short outputs.

`make test` executes them afterwards, as the series' users do: nbmake, in order, sample mode.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from mmlens import export, notebooks

NOTEBOOKS = notebooks.notebook_paths()
MAX_FUNCTION_LINES = 5
MAX_NOTEBOOK_BYTES = 1_000_000


def _code_cells(nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


# What each notebook teaches, as calls a reader finds in its executed code cells (issue 12).
SUBJECT_CALLS: dict[str, list[str]] = {
    "01": [r"pd\.read_parquet\(", r"\.dtypes"],
    "02": [r"(?i)tmdb", r"poster_path", r"overview"],
    "03": [r"from_pretrained\(|ResNetConfig\(", r"torch\.(no_grad|inference_mode)\(", r"pool"],
    "04": [r"AutoTokenizer", r"AutoModel", r"truncation", r"attention_mask", r"normali[sz]e"],
    "05": [r"\.merge\("],
    "06": [r"Categorify\(", r">>", r"Workflow\(", r"\.fit\(", r"\.transform\(", r"\.to_parquet\(",
           r"output_schema"],
    "07": [r"CreateSolver\(", r"DataReaderParams\(", r"Input\(", r"SparseEmbedding\(",
           r"DenseLayer\(", r"\.compile\(", r"load_sparse_weights\(", r"freeze_embedding\(",
           r"\.fit\("],
    "08": [r"Embedding\(", r"trainable=False", r"\.compile\(", r"\.fit\(", r"\.summary\(\)",
           r"eigh\("],
    "09": [r"for \w+(, \w+)* in ", r"(?i)auc", r"choose_on_validation\(", r"val_auc_mean"],
    "10": [r"run_protocol\(", r"(?i)warm", r"(?i)cold", r"baselines\(", r"content_dim",
           r"widths\("],
}
# Committed outputs show work, briefly: no cache-hit summaries, no random ports.
FORBIDDEN_OUTPUT = [r"cache hits", r"already converted", r"n_computed", r"127\.0\.0\.1:\d+",
                    r"localhost:\d+"]
MAX_OUTPUT_LINES = 150


def _stage(nb_path: Path) -> str:
    return nb_path.name[:2]


def _is_saved(source: str) -> bool:
    return source.partition("\n")[0].strip() == "#@save"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_parameterised_and_plumbing_stays_in_the_package(nb_path: Path) -> None:
    assert nb_path.exists(), f"{nb_path.name} is missing"
    assert nb_path.stat().st_size < MAX_NOTEBOOK_BYTES
    nb = nbformat.read(nb_path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "sample run" in nb.cells[0].source, "first cell says the outputs come from a sample run"
    for source in _code_cells(nb_path):
        if _is_saved(source):
            continue  # exported into mmlens._nb: the package runs this very code
        tree = ast.parse("\n".join(
            line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
        ))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, (
                    f"{nb_path.name} defines {node.name} ({length} lines) outside a #@save cell"
                )


def test_every_notebook_but_the_intro_has_subject_calls() -> None:
    assert set(SUBJECT_CALLS) == {_stage(p) for p in NOTEBOOKS} - {"00"}  # 00 only introduces


@pytest.mark.parametrize("nb_path", [p for p in NOTEBOOKS if _stage(p) in SUBJECT_CALLS],
                         ids=lambda p: p.stem)
def test_notebook_shows_its_subject_calls(nb_path: Path) -> None:
    code = "\n".join(_code_cells(nb_path))
    missing = [pat for pat in SUBJECT_CALLS[_stage(nb_path)] if not re.search(pat, code)]
    assert not missing, f"{nb_path.name}: no code cell shows {missing}"


def test_export_is_current() -> None:
    """The package runs the notebooks' #@save cells: src/mmlens/_nb/ must match them."""
    stale = export.export(check=True)
    assert not stale, f"stale exports {[p.name for p in stale]}: run `make export`"


def test_export_renders_saved_cells_only(tmp_path: Path) -> None:
    saved = "#@save\nimport math\n\n\ndef area(r):\n    return math.pi * r * r"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell(saved),
        nbformat.v4.new_code_cell("# @save is only a marker on the first line\nimport os"),
    ])
    path = tmp_path / "06-ETL-with-NVTabular.ipynb"
    nbformat.write(nb, path)
    assert export.module_name(path) == "etl_with_nvtabular"
    assert [i for i, _ in export.saved_cells(path)] == [1]
    text = export.render(path)
    assert "x = 1" not in text and "import os" not in text
    namespace: dict[str, object] = {}
    exec(text, namespace)  # the generated module runs as written
    assert round(namespace["area"](1.0), 5) == 3.14159


def _rendered(text: str) -> str:
    """Text as a notebook shows it: a carriage return (a progress bar's refresh) overwrites."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def _text_outputs(nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if isinstance(out.get("text"), str):
                texts.append(out["text"])
            elif "text/html" not in out.get("data", {}):
                texts.append(out.get("data", {}).get("text/plain", ""))
    return texts


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_short_and_show_work(nb_path: Path) -> None:
    text = _rendered("\n".join(_text_outputs(nb_path)))
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_OUTPUT_LINES, f"{nb_path.name}: {n_lines} lines of output"
    found = [pat for pat in FORBIDDEN_OUTPUT if re.search(pat, text)]
    assert not found, f"{nb_path.name} outputs show {found}"


def test_strip_prefix_makes_output_paths_relative() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", text="wrote /home/me/repo/runs/a.parquet\n"),
        nbformat.v4.new_output("execute_result", data={
            "text/plain": "PosixPath('/home/me/repo/data')", "image/png": "/home/me/repo/"}),
    ])])
    assert notebooks.strip_prefix(nb, "/home/me/repo/") == 2
    outputs = nb.cells[0].outputs
    assert outputs[0].text == "wrote runs/a.parquet\n"
    assert outputs[1].data["text/plain"] == "PosixPath('data')"
    assert outputs[1].data["image/png"] == "/home/me/repo/"  # only text outputs are touched


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_show_no_absolute_run_paths(nb_path: Path) -> None:
    text = nb_path.read_text(encoding="utf-8")
    assert re.search(r"/[\w.-]+/[\w./-]*runs/notebooks/data", text) is None


def test_tidy_streams_merges_streams_and_keeps_a_bars_last_state() -> None:
    out = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell("x", outputs=[
        out("stream", name="stderr", text="bar:   0%|  | 0/2\r"),
        out("stream", name="stderr", text="bar:  50%|# | 1/2\rbar: 100%|##| 2/2\n"),
        out("stream", name="stdout", text="done\n"),
        out("stream", name="stderr", text="later\n"),
    ])
    nb = nbformat.v4.new_notebook(cells=[cell])
    notebooks.tidy_streams(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [
        ("stderr", "bar: 100%|##| 2/2\n"), ("stdout", "done\n"), ("stderr", "later\n")]


def test_tidy_streams_drops_tensorflows_early_log_lines_only() -> None:
    early = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
             "STDERR\nI0000 00:00:1796571031.786440   14317 port.cc:153] oneDNN custom "
             "operations are on.\n")
    error = "E0000 00:00:1796571031.786440   14317 cuda_dnn.cc:8] cannot load cuDNN\n"
    out = nbformat.v4.new_output
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x", outputs=[out("stream", name="stderr", text=early)]),
        nbformat.v4.new_code_cell("y", outputs=[out("stream", name="stderr", text=early + error),
                                                out("stream", name="stdout", text=early)])])
    notebooks.tidy_streams(nb)
    assert nb.cells[0].outputs == []
    assert [(o.name, o.text) for o in nb.cells[1].outputs] == [("stderr", error),
                                                                ("stdout", early)]


def test_demo_metrics_table_names_the_chosen_models(tmp_path: Path) -> None:
    (tmp_path / "09.json").write_text(json.dumps({
        "warm": {"+text": {"auc_mean": 0.81, "n_seeds": 3}}, "fine_tune": False,
        "chosen_on_validation": {"warm/+text": {"chosen": "id-only", "auc_mean": 0.8}},
        "runs": [{"auc": 0.8}]}))
    table = notebooks.metrics_table(tmp_path)
    assert "| 09 | warm.+text.auc_mean | 0.8100 |" in table
    assert "| 09 | chosen_on_validation.warm/+text.chosen | id-only |" in table
    assert "chosen_on_validation.warm/+text.auc_mean" not in table and "fine_tune" not in table
