"""Stage 07's training process: notebook 07's HugeCTR code run on the ETL output.

``python -m mmlens.train.hugectr_runner <out_dir>/hugectr_run.json`` (what the generated
``train_hugectr.py`` does) in NVIDIA's Merlin HugeCTR container. The run file names the ETL
directory relative to itself, so the data volume may be mounted anywhere: the HugeCTR file lists
are written here, at run time, with the absolute paths of the current mount (HugeCTR opens listed
paths as given and finds ``_metadata.json`` beside the first file).

Writes into ``out_dir``: ``<part>_file_list.txt``, the snapshot (``snapshot/``, ``model.json``),
``<part>_predictions.npy`` (float32, one per row of the valid and test parts, in file-list order)
and ``hugectr_result.json``. Scoring happens in the calling stage, with ``mmlens.train.evaluate``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from mmlens._nb import training_with_hugectr as nb
from mmlens.etl.hugectr_files import write_file_list

RUN_FILE = "hugectr_run.json"
RESULT_FILE = "hugectr_result.json"
PARTS = ("train", "valid", "test")
SCORED_PARTS = ("valid", "test")


def options_from(values: dict[str, Any]) -> nb.TrainOptions:
    """:class:`TrainOptions` from JSON values (lists back to tuples); unknown keys raise."""
    tuples = {f.name for f in fields(nb.TrainOptions) if str(f.type).startswith("tuple")}
    return nb.TrainOptions(**{k: tuple(v) if k in tuples else v for k, v in values.items()})


def resolve(run_file: Path) -> tuple[Path, Path, dict[str, Any], nb.TrainOptions]:
    """``(etl_dir, out_dir, schema, options)`` of a run file, paths resolved from where it lies."""
    run_file = Path(run_file).resolve()
    run = json.loads(run_file.read_text())
    etl_dir = (run_file.parent / run["etl_dir"]).resolve()
    schema = json.loads((etl_dir / "schema.json").read_text())
    return etl_dir, run_file.parent, schema, options_from(run["options"])


def point_sources(etl_dir: Path, out_dir: Path, schema: dict[str, Any]) -> dict[str, str]:
    """Write ``out_dir/<part>_file_list.txt`` for the current mount; part -> list path."""
    sources = {}
    for part in PARTS:
        target = out_dir / f"{part}_file_list.txt"
        write_file_list(etl_dir / schema["parts"][part], target)
        sources[part] = str(target)
    return sources


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python -m mmlens.train.hugectr_runner <out_dir>/{RUN_FILE}")
        return 2
    etl_dir, out_dir, schema, opts = resolve(Path(args[0]))
    sources = point_sources(etl_dir, out_dir, schema)
    sparse_models = {m: str(etl_dir / info["sparse_model"])
                     for m, info in schema["pretrained"].items()}

    import hugectr

    model = nb.build_model(hugectr, schema, sources, sparse_models, opts)
    iterations = nb.train(model, schema, opts)
    n_tables = len(nb.embedding_tables(schema, opts.emb_dim))
    snapshot = nb.save_snapshot(hugectr, model, n_tables, str(out_dir), iterations)
    del model  # free the training model's GPU memory before the inference model takes its own
    infer = nb.inference_model(hugectr, snapshot, opts)
    scored = {}
    for part in SCORED_PARTS:
        rows = int(schema["rows"][part])
        pred = nb.predict_part(hugectr, infer, schema, sources[part], rows, opts.batch_size)
        np.save(out_dir / f"{part}_predictions.npy", np.asarray(pred, np.float32))
        scored[part] = {"rows": rows, "file_list": Path(sources[part]).name,
                        "predictions": f"{part}_predictions.npy"}
    result = {"iterations": iterations, "parts": scored,
              "snapshot": {k: _relative(v, out_dir) for k, v in snapshot.items()}}
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(f"mmlens: {iterations} iterations, snapshot and predictions in {out_dir}", flush=True)
    return 0


def _relative(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_relative(v, base) for v in value]
    return str(Path(value).relative_to(base))


if __name__ == "__main__":
    sys.exit(main())
