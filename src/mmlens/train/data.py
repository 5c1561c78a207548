"""Read the stage-06 ETL output (``etl/<split>/``) as feature arrays or a ``tf.data`` pipeline.

Features are keyed by slot name (``userId``, ``movieId``, ``genres``, ``year``, ``poster``, ...)
plus ``has_<modality>`` flags; the multi-hot ``genres`` slot is padded with code 0 to its hotness.
Large parts stream through ``pyarrow.ParquetFile.iter_batches``; small ones may load in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmlens import artifacts
from mmlens.config import Config

PAD = 0  # Categorify's padding code
IN_MEMORY_MAX_ROWS = 2_000_000
Features = dict[str, np.ndarray]


def load_schema(path: Path) -> dict[str, Any]:
    """Read ``schema.json`` and check the fields that training relies on."""
    schema = json.loads(Path(path).read_text())
    for key in ("label", "slots", "slot_size_array", "pretrained", "parts"):
        if key not in schema:
            raise ValueError(f"{path}: schema lacks {key!r}; re-run notebook 06")
    return schema


def require_split(cfg: Config, split: str) -> tuple[Path, dict[str, Any]]:
    """The ETL directory of ``split`` and its schema; clear errors when 06 has not run."""
    schema_path = artifacts.require(cfg, "etl_schema", split=split)
    schema = load_schema(schema_path)
    for part in schema["parts"]:
        artifacts.require(cfg, "etl_output", split=split, part=schema["parts"][part])
    return schema_path.parent, schema


def part_dir(etl_dir: Path, schema: dict[str, Any], part: str) -> Path:
    return Path(etl_dir) / schema["parts"][part]


def part_files(directory: Path) -> list[Path]:
    """The parquet files of one ETL part, in name order."""
    files = sorted(Path(directory).glob("part_*.parquet")) or sorted(
        p for p in Path(directory).glob("*.parquet") if not p.name.startswith(("_", "."))
    )
    if not files:
        raise FileNotFoundError(f"no parquet files in {directory}; re-run notebook 06")
    return files


def part_rows(directory: Path) -> int:
    """Row count from ``_metadata.json`` when present, else from the parquet footers."""
    meta = Path(directory) / "_metadata.json"
    if meta.exists():
        return sum(int(f["num_rows"]) for f in json.loads(meta.read_text())["file_stats"])
    return sum(pq.ParquetFile(f).metadata.num_rows for f in part_files(directory))


def feature_columns(schema: dict[str, Any], modalities: tuple[str, ...] | None = None) -> list[str]:
    """Parquet columns needed for the slots (all pretrained ones unless ``modalities`` is given)."""
    cols = [s["column"] for s in _slots(schema, modalities)]
    cols += [schema["pretrained"][m]["has_column"] for m in _modalities(schema, modalities)]
    return cols + [schema["label"]]


def _modalities(schema: dict[str, Any], modalities: tuple[str, ...] | None) -> list[str]:
    available = list(schema["pretrained"])
    if modalities is None:
        return available
    missing = [m for m in modalities if m not in available]
    if missing:
        raise ValueError(f"modalities {missing} not in the ETL output (has {available})")
    return list(modalities)


def _slots(schema: dict[str, Any], modalities: tuple[str, ...] | None) -> list[dict[str, Any]]:
    pretrained_slots = {v["slot"]: m for m, v in schema["pretrained"].items()}
    keep = set(_modalities(schema, modalities))
    return [s for s in schema["slots"]
            if s["name"] not in pretrained_slots or pretrained_slots[s["name"]] in keep]


def table_to_features(
    table: pa.Table, schema: dict[str, Any], modalities: tuple[str, ...] | None = None
) -> tuple[Features, np.ndarray]:
    """Arrow rows -> (features by slot name, float32 labels)."""
    feats: Features = {}
    for slot in _slots(schema, modalities):
        col = table.column(slot["column"])
        hotness = int(slot["hotness"])
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values = pad_lists(col.to_pylist(), hotness)
        else:
            values = col.to_numpy().astype(np.int64).reshape(-1, 1)
            if hotness > 1:
                values = np.pad(values, ((0, 0), (0, hotness - 1)), constant_values=PAD)
        feats[slot["name"]] = values if hotness > 1 else values[:, 0]
    for m in _modalities(schema, modalities):
        flag = schema["pretrained"][m]["has_column"]
        feats[flag] = table.column(flag).to_numpy().astype(np.float32)
    labels = table.column(schema["label"]).to_numpy().astype(np.float32)
    return feats, labels


def pad_lists(values: Sequence[Sequence[int] | None], hotness: int) -> np.ndarray:
    """Multi-hot lists -> ``[n, hotness]`` int64 padded with :data:`PAD` (longer lists cut)."""
    out = np.full((len(values), max(hotness, 1)), PAD, dtype=np.int64)
    for i, row in enumerate(values):
        if row is not None and len(row):
            row = list(row)[:hotness]
            out[i, : len(row)] = row
    return out


def read_part(directory: Path, schema: dict[str, Any],
              modalities: tuple[str, ...] | None = None) -> tuple[Features, np.ndarray]:
    """A whole ETL part in memory (for small data and evaluation)."""
    cols = feature_columns(schema, modalities)
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in part_files(directory)])
    return table_to_features(table, schema, modalities)


def read_frame(directory: Path, columns: list[str]) -> pd.DataFrame:
    """Selected columns of a part as a DataFrame."""
    return pd.concat([pd.read_parquet(f, columns=columns) for f in part_files(directory)],
                     ignore_index=True)


def seen_codes(directory: Path, schema: dict[str, Any], slot: str) -> np.ndarray:
    """Sorted unique codes of ``slot`` in one part (e.g. the movies a model trains on)."""
    column = next((s["column"] for s in schema["slots"] if s["name"] == slot), None)
    if column is None:
        raise ValueError(f"the schema has no slot {slot!r}")
    return np.unique(read_frame(directory, [column])[column].to_numpy(np.int64))


def iter_batches(
    directory: Path, schema: dict[str, Any], batch_size: int,
    modalities: tuple[str, ...] | None = None,
) -> Iterator[tuple[Features, np.ndarray]]:
    """Stream a part batch by batch; never holds more than one parquet batch in memory."""
    cols = feature_columns(schema, modalities)
    for f in part_files(directory):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=cols):
            yield table_to_features(pa.Table.from_batches([batch]), schema, modalities)


def make_dataset(
    directory: Path,
    schema: dict[str, Any],
    *,
    batch_size: int = 1024,
    modalities: tuple[str, ...] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    in_memory: bool | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of ``(features, label)`` batches over one ETL part.

    ``in_memory=None`` loads parts up to :data:`IN_MEMORY_MAX_ROWS` rows and streams larger ones
    (streamed parts shuffle within a buffer of a few batches).
    """
    import tensorflow as tf

    if in_memory is None:
        in_memory = part_rows(directory) <= IN_MEMORY_MAX_ROWS
    if in_memory:
        feats, labels = read_part(directory, schema, modalities)
        ds = tf.data.Dataset.from_tensor_slices((feats, labels))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    signature = _signature(schema, modalities)
    ds = tf.data.Dataset.from_generator(
        lambda: iter_batches(directory, schema, batch_size, modalities),
        output_signature=signature,
    ).unbatch()
    if shuffle:
        ds = ds.shuffle(8 * batch_size, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _signature(schema: dict[str, Any], modalities: tuple[str, ...] | None) -> Any:
    import tensorflow as tf

    feats = {}
    for slot in _slots(schema, modalities):
        shape = (None, int(slot["hotness"])) if int(slot["hotness"]) > 1 else (None,)
        feats[slot["name"]] = tf.TensorSpec(shape, tf.int64)
    for m in _modalities(schema, modalities):
        feats[schema["pretrained"][m]["has_column"]] = tf.TensorSpec((None,), tf.float32)
    return feats, tf.TensorSpec((None,), tf.float32)


def load_tables(etl_dir: Path, schema: dict[str, Any],
                modalities: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The pretrained tables (rows = movie codes), checked against the schema."""
    tables = {}
    for m in _modalities(schema, modalities):
        info = schema["pretrained"][m]
        table = np.load(Path(etl_dir) / info["table"], allow_pickle=False)
        slot = next(s for s in schema["slots"] if s["name"] == info["slot"])
        if table.shape != (slot["cardinality"], info["dim"]):
            raise ValueError(
                f"{info['table']} has shape {table.shape}, schema says "
                f"({slot['cardinality']}, {info['dim']}); re-run notebook 06"
            )
        tables[m] = table.astype(np.float32, copy=False)
    return tables
