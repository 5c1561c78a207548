"""The tutorial notebooks: thin by construction, and each one executed in order in sample mode."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from mmlens import notebooks

NOTEBOOKS = notebooks.notebook_paths()
MAX_FUNCTION_LINES = 5
MAX_NOTEBOOK_BYTES = 1_000_000


def _code_cells(nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_parameterised(nb_path: Path) -> None:
    assert nb_path.exists(), f"{nb_path.name} is missing"
    assert nb_path.stat().st_size < MAX_NOTEBOOK_BYTES
    nb = nbformat.read(nb_path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "sample run" in nb.cells[0].source, "first cell says the outputs come from a sample run"
    for source in _code_cells(nb_path):
        tree = ast.parse("\n".join(
            line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
        ))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, (
                    f"{nb_path.name} defines {node.name} ({length} lines): move logic into mmlens"
                )


@pytest.fixture(scope="module")
def sample_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return notebooks.sample_env(tmp_path_factory.mktemp("nb-data"), profile="small")


@pytest.mark.notebook
@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(nb_path: Path, sample_env: dict[str, str], tmp_path: Path) -> None:
    """Notebooks run in order and share one data dir: each reads what the previous ones wrote."""
    notebooks.execute(nb_path, tmp_path / nb_path.name, sample_env)


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
