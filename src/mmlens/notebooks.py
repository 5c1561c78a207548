"""Execute the tutorial notebooks headless, in order (`make demo`, `make notebooks`, the tests).

A notebook reads its settings from ``MMLENS_*`` environment variables (see :mod:`mmlens.config`)
through its ``parameters`` cell, so running one in sample mode means setting those variables
for the kernel. Executed copies keep their outputs; the committed notebooks carry the outputs of a
sample run.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmlens.artifacts import NOTEBOOKS

REPO_ROOT = Path(__file__).resolve().parents[2]

# TensorFlow's C++ info and warning lines written before absl's logging starts (its oneDNN notice,
# for one) ignore TF_CPP_MIN_LOG_LEVEL; the level the runs below set hides them, so do the outputs.
EARLY_TF_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*)\n?", re.MULTILINE)


def notebook_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The tutorial notebooks in execution order."""
    return [root / name for _, name in sorted(NOTEBOOKS.items())]


@contextmanager
def _environ(overrides: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def strip_prefix(nb: Any, prefix: str) -> int:
    """Remove ``prefix`` (e.g. this checkout's absolute path plus ``/``) from the text outputs of
    ``nb``, so committed outputs show repository-relative paths; returns how many were removed."""
    removed = 0

    def clean(text: str) -> str:
        nonlocal removed
        removed += text.count(prefix)
        return text.replace(prefix, "")

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if isinstance(out.get("text"), str):
                out["text"] = clean(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = clean(value)
    return removed


def tidy_streams(nb: Any) -> None:
    """Merge each cell's consecutive stream outputs of one name (stdout, stderr), keep what a
    notebook shows of a progress bar (the text after a line's last carriage return) and drop
    TensorFlow's early log lines from stderr (:data:`EARLY_TF_LOG`)."""
    for cell in nb.cells:
        merged: list[Any] = []
        for out in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and last is not None
                    and last.get("output_type") == "stream" and last["name"] == out["name"]):
                last["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                lines = out["text"].split("\n")
                out["text"] = "\n".join(line.rsplit("\r", 1)[-1] for line in lines)
                if out["name"] == "stderr":
                    out["text"] = EARLY_TF_LOG.sub("", out["text"])
        if "outputs" in cell:
            cell["outputs"] = [o for o in merged
                               if o.get("output_type") != "stream" or o["text"]]


def execute(
    notebook: Path,
    out_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: int = 7200,  # per cell: notebook 10's protocol cell takes most of an hour on 2 cores
    relative_to: Path | None = None,
) -> float:
    """Execute one notebook in its own directory; write the executed copy to ``out_path``
    (with ``relative_to``: paths under it shown relative to it, see :func:`strip_prefix`).

    Returns the wall time in seconds. Raises ``nbclient.exceptions.CellExecutionError`` (with the
    failing cell and traceback) when a cell fails; the partly executed copy is still written.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
        # the kernel's own start-up warnings (e.g. about its loopback TCP transport) are not output
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    start = time.perf_counter()
    with _environ(dict(env or {})):
        try:
            client.execute()
        finally:
            if out_path is not None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = out_path.with_name(f".tmp-{out_path.name}")
                tidy_streams(nb)
                if relative_to is not None:
                    strip_prefix(nb, f"{Path(relative_to).resolve()}/")
                nbformat.write(nb, tmp)
                os.replace(tmp, out_path)
    return time.perf_counter() - start


def sample_env(data_dir: Path, profile: str = "default") -> dict[str, str]:
    """Environment for a headless sample-mode run."""
    return {
        "MMLENS_DATA_DIR": str(Path(data_dir).resolve()),
        "MMLENS_DATASET": "sample",
        "MMLENS_SAMPLE_PROFILE": profile,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONWARNINGS": "ignore",  # as the Makefile: e.g. NVTabular's CPU-mode notices
        "TQDM_MININTERVAL": "5",  # progress bars: a few lines in saved outputs, not hundreds
    }


def run_all(
    out_dir: Path | None, env: Mapping[str, str], *, in_place: bool = False
) -> dict[str, float]:
    """Execute every notebook in order; executed copies go to ``out_dir``, or back in place with
    repository-relative paths in their outputs (the committed outputs)."""
    timings: dict[str, float] = {}
    for nb in notebook_paths():
        target = nb if in_place else Path(out_dir or ".") / nb.name
        print(f"executing {nb.name} ...", flush=True)
        timings[nb.name] = execute(nb, target, env,
                                   relative_to=REPO_ROOT if in_place else None)
        print(f"  done in {timings[nb.name]:.1f} s", flush=True)
    return timings


def summary(data_dir: Path, profile: str, timings: Mapping[str, float]) -> str:
    """Markdown summary of a sample run: time per notebook, then the metrics of stages 07-09."""
    from mmlens.artifacts import path
    from mmlens.config import Config

    cfg = Config(data_dir=Path(data_dir), sample_profile=profile)
    lines = ["| notebook | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in timings.items()]
    lines += ["", metrics_table(path(cfg, "metrics", stage="x").parent)]
    return "\n".join(lines)


CHOSEN_KEY = "chosen_on_validation"


def metrics_table(metrics_dir: Path) -> str:
    """A markdown table of every numeric metric that stages 07-09 wrote as JSON, and of the
    models 09 chose on validation (by name: their numbers are the rows above)."""
    rows: list[tuple[str, str, str]] = []
    for f in sorted(Path(metrics_dir).glob("*.json")):
        for key, value in _flatten(json.loads(f.read_text())):
            if key.startswith(f"{CHOSEN_KEY}."):
                if key.endswith(".chosen"):
                    rows.append((f.stem, key, str(value)))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((f.stem, key, f"{float(value):.4f}"))
    lines = ["| stage | metric | value |", "|---|---|---|"]
    lines += [f"| {s} | {k} | {v} |" for s, k, v in rows]
    return "\n".join(lines)


def _flatten(obj: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        return
    else:
        yield prefix, obj
