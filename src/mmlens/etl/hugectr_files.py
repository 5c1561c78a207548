"""What HugeCTR reads: slot offsets, sparse-model files and the Parquet part lists.

HugeCTR's Parquet reader adds the prefix sums of ``slot_size_array`` to every key, so a pretrained
table loaded as a sparse model must carry the same offsets in its ``key`` file. Both come from
:func:`slot_layout`, which stage 07 imports too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

KEY_FILE = "key"
VECTOR_FILE = "emb_vector"


def slot_layout(slot_sizes: list[int]) -> list[int]:
    """Per-slot key offsets, the exclusive prefix sums of the sizes: [3, 4, 5] -> [0, 3, 7]."""
    sizes = [int(s) for s in slot_sizes]
    if any(s < 1 for s in sizes):
        raise ValueError(f"slot sizes must be positive, got {sizes}")
    return [int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []


def write_sparse_model(target: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    """A HugeCTR sparse-model dir: ``key`` int64 and ``emb_vector`` float32, raw little-endian."""
    keys = np.asarray(keys)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(keys) != len(vectors):
        raise ValueError(f"need one vector per key, got {keys.shape} keys and {vectors.shape}")
    target.mkdir(parents=True)
    keys.astype("<i8").tofile(target / KEY_FILE)
    np.ascontiguousarray(vectors, dtype="<f4").tofile(target / VECTOR_FILE)


def read_sparse_model(directory: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Keys (int64) and vectors (float32, one row per key) of a HugeCTR sparse-model dir."""
    directory = Path(directory)
    keys = np.fromfile(directory / KEY_FILE, dtype="<i8")
    flat = np.fromfile(directory / VECTOR_FILE, dtype="<f4")
    if len(keys) == 0 or flat.size % len(keys):
        raise ValueError(f"{directory}: {flat.size} floats do not split into {len(keys)} rows")
    return keys, flat.reshape(len(keys), -1)


def part_file_names(part_dir: Path) -> list[str]:
    """The parquet file names of a part, in ``_metadata.json`` order (HugeCTR's reading order);
    raises when one of them is missing."""
    meta = json.loads((Path(part_dir) / "_metadata.json").read_text())
    names = [f["file_name"] for f in meta["file_stats"]]
    missing = [n for n in names if not (Path(part_dir) / n).exists()]
    if missing:
        raise FileNotFoundError(f"{part_dir}: _metadata.json names missing files {missing}")
    return names


def write_file_list(part_dir: Path, target: Path, location: Path | None = None) -> list[str]:
    """Write a HugeCTR file list (the count, then one path a line) of the part's parquet files.

    HugeCTR opens each listed path as given (relative paths against the process' working
    directory, not the list's) and looks for ``_metadata.json`` beside the first one, so the
    paths are absolute: under ``location`` (default: ``part_dir`` itself, resolved).
    """
    base = Path(location) if location is not None else Path(part_dir).resolve()
    paths = [str(base / n) for n in part_file_names(part_dir)]
    Path(target).write_text("\n".join([str(len(paths)), *paths]) + "\n")
    return paths


def point_file_list(part_dir: Path, final_dir: Path) -> list[str]:
    """Rewrite ``_file_list.txt`` to the parts' final location.

    NVTabular writes absolute paths of the directory it wrote to; the stage writes into a
    temporary directory that is renamed afterwards.
    """
    return write_file_list(part_dir, Path(part_dir) / "_file_list.txt", final_dir)


def file_list_paths(list_file: Path) -> list[str]:
    """The paths listed in a HugeCTR file list, checking the count line."""
    lines = [line for line in Path(list_file).read_text().splitlines() if line.strip()]
    if not lines or int(lines[0]) != len(lines) - 1:
        raise ValueError(f"{list_file}: count line does not match the paths")
    return lines[1:]


def read_file_list(part_dir: Path) -> list[str]:
    """The paths listed in the part's ``_file_list.txt``."""
    return file_list_paths(Path(part_dir) / "_file_list.txt")
