"""Read the stage-06 ETL output (``etl/<split>/``) as feature arrays or batches for Keras.

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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmlens import artifacts
from mmlens.config import Config

PAD = 0  # Categorify's padding code
USER_SLOT, ITEM_SLOT = "userId", "movieId"
IN_MEMORY_MAX_ROWS = 2_000_000
RATING_COLUMN = "rating"  # the raw star rating the ETL carries beside the 0/1 label
RATING_RANGE = (0.5, 5.0)
Features = dict[str, np.ndarray]
Parts = Path | Sequence[Path]  # one ETL part directory, or several read as one


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


def _directories(directory: Parts) -> list[Path]:
    return [Path(directory)] if isinstance(directory, str | Path) else [Path(d) for d in directory]


def part_files(directory: Parts) -> list[Path]:
    """The parquet files of one ETL part (or of several, read as one), in name order."""
    return [f for d in _directories(directory) for f in _files_of(d)]


def _files_of(directory: Path) -> list[Path]:
    files = sorted(directory.glob("part_*.parquet")) or sorted(
        p for p in directory.glob("*.parquet") if not p.name.startswith(("_", "."))
    )
    if not files:
        raise FileNotFoundError(f"no parquet files in {directory}; re-run notebook 06")
    return files


def part_rows(directory: Parts) -> int:
    """Row count from ``_metadata.json`` when present, else from the parquet footers."""
    return sum(_rows_of(d) for d in _directories(directory))


def _rows_of(directory: Path) -> int:
    meta = directory / "_metadata.json"
    if meta.exists():
        return sum(int(f["num_rows"]) for f in json.loads(meta.read_text())["file_stats"])
    return sum(pq.ParquetFile(f).metadata.num_rows for f in _files_of(directory))


def feature_columns(schema: dict[str, Any], modalities: tuple[str, ...] | None = None,
                    rating_mix: float = 0.0) -> list[str]:
    """Parquet columns needed for the slots (all pretrained ones unless ``modalities`` is given);
    with ``rating_mix``, the rating column too (see :func:`table_to_features`)."""
    cols = [s["column"] for s in _slots(schema, modalities)]
    cols += [schema["pretrained"][m]["has_column"] for m in _modalities(schema, modalities)]
    return cols + [schema["label"]] + ([RATING_COLUMN] if rating_mix else [])


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


def soft_labels(labels: np.ndarray, ratings: np.ndarray, rating_mix: float) -> np.ndarray:
    """``(1 - rating_mix) * label + rating_mix * rating`` with the rating scaled to [0, 1]: a
    graded training target that still ranks like the label (for rating_mix < 1)."""
    if not 0.0 <= rating_mix <= 1.0:
        raise ValueError(f"rating_mix must be in [0, 1], got {rating_mix}")
    low, high = RATING_RANGE
    scaled = np.clip((np.asarray(ratings, np.float32) - low) / (high - low), 0.0, 1.0)
    return ((1.0 - rating_mix) * labels + rating_mix * scaled).astype(np.float32)


def table_to_features(
    table: pa.Table, schema: dict[str, Any], modalities: tuple[str, ...] | None = None,
    rating_mix: float = 0.0,
) -> tuple[Features, np.ndarray]:
    """Arrow rows -> (features by slot name, float32 labels); with ``rating_mix`` > 0 the labels
    are :func:`soft_labels` (training targets only: evaluation keeps the 0/1 label)."""
    feats: Features = {}
    for slot in _slots(schema, modalities):
        col = table.column(slot["column"])
        hotness = int(slot["hotness"])
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values = pad_list_column(col, hotness)
        else:
            values = col.to_numpy().astype(np.int64).reshape(-1, 1)
            if hotness > 1:
                values = np.pad(values, ((0, 0), (0, hotness - 1)), constant_values=PAD)
        feats[slot["name"]] = values if hotness > 1 else values[:, 0]
    for m in _modalities(schema, modalities):
        flag = schema["pretrained"][m]["has_column"]
        feats[flag] = table.column(flag).to_numpy().astype(np.float32)
    labels = table.column(schema["label"]).to_numpy().astype(np.float32)
    if rating_mix:
        if RATING_COLUMN not in table.column_names:
            raise ValueError(f"rating_mix needs a {RATING_COLUMN!r} column in the ETL output")
        labels = soft_labels(labels, table.column(RATING_COLUMN).to_numpy(), rating_mix)
    return feats, labels


def pad_lists(values: Sequence[Sequence[int] | None], hotness: int) -> np.ndarray:
    """Multi-hot lists -> ``[n, hotness]`` int64 padded with :data:`PAD` (longer lists cut)."""
    out = np.full((len(values), max(hotness, 1)), PAD, dtype=np.int64)
    for i, row in enumerate(values):
        if row is not None and len(row):
            row = list(row)[:hotness]
            out[i, : len(row)] = row
    return out


def pad_list_column(column: pa.ChunkedArray | pa.Array, hotness: int) -> np.ndarray:
    """:func:`pad_lists` of an Arrow list column, vectorised (no per-row Python)."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    values = pc.list_flatten(column).to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.full((len(lengths), max(hotness, 1)), PAD, dtype=np.int64)
    keep = position < hotness
    out[rows[keep], position[keep]] = values[keep]
    return out


def read_part(directory: Parts, schema: dict[str, Any],
              modalities: tuple[str, ...] | None = None,
              rating_mix: float = 0.0) -> tuple[Features, np.ndarray]:
    """A whole ETL part in memory (for small data and evaluation)."""
    cols = feature_columns(schema, modalities, rating_mix)
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in part_files(directory)])
    return table_to_features(table, schema, modalities, rating_mix)


def read_frame(directory: Parts, columns: list[str]) -> pd.DataFrame:
    """Selected columns of a part as a DataFrame."""
    return pd.concat([pd.read_parquet(f, columns=columns) for f in part_files(directory)],
                     ignore_index=True)


def seen_codes(directory: Parts, schema: dict[str, Any], slot: str) -> np.ndarray:
    """Sorted unique codes of ``slot`` in one part (e.g. the movies a model trains on)."""
    column = next((s["column"] for s in schema["slots"] if s["name"] == slot), None)
    if column is None:
        raise ValueError(f"the schema has no slot {slot!r}")
    return np.unique(read_frame(directory, [column])[column].to_numpy(np.int64))


def iter_batches(
    directory: Parts, schema: dict[str, Any], batch_size: int,
    modalities: tuple[str, ...] | None = None, rating_mix: float = 0.0,
) -> Iterator[tuple[Features, np.ndarray]]:
    """Stream a part batch by batch; never holds more than one parquet batch in memory."""
    cols = feature_columns(schema, modalities, rating_mix)
    for f in part_files(directory):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=cols):
            yield table_to_features(pa.Table.from_batches([batch]), schema, modalities,
                                    rating_mix)


SHUFFLE_BATCHES = 8  # a streamed part shuffles within chunks of this many batches
GROUP_BATCHES = 8  # batches the Python generator hands to tf.data at once (cut there, in C++)


def _take(feats: Features, labels: np.ndarray, rows: Any) -> tuple[Features, np.ndarray]:
    return {k: v[rows] for k, v in feats.items()}, labels[rows]


def rebatch(chunks: Iterator[tuple[Features, np.ndarray]], batch_size: int, *,
            rng: np.random.Generator | None = None) -> Iterator[tuple[Features, np.ndarray]]:
    """Batches of exactly ``batch_size`` rows (the last one shorter) from chunks of any size,
    rows carried over between chunks; with ``rng``, each chunk's rows are permuted first."""
    carry: tuple[Features, np.ndarray] | None = None
    for feats, labels in chunks:
        if rng is not None:
            feats, labels = _take(feats, labels, rng.permutation(len(labels)))
        if carry is not None:
            feats = {k: np.concatenate([carry[0][k], v]) for k, v in feats.items()}
            labels = np.concatenate([carry[1], labels])
        full = len(labels) - len(labels) % batch_size
        for start in range(0, full, batch_size):
            yield _take(feats, labels, slice(start, start + batch_size))
        carry = _take(feats, labels, slice(full, None)) if full < len(labels) else None
    if carry is not None:
        yield carry


def owned_batches(part: tuple[Features, np.ndarray], batch_size: int, *,
                  rng: np.random.Generator | None = None) -> Iterator[tuple[Features, np.ndarray]]:
    """:func:`rebatch` of an in-memory part, every batch a copy. TensorFlow (and torch) may wrap
    a yielded numpy array without copying and later reuse that buffer for an op's output: a
    view into ``part``, which every epoch reads again, came back corrupted (validation labels
    of 2440 after a few epochs)."""
    for feats, labels in rebatch(iter([part]), batch_size, rng=rng):
        yield {k: v.copy() for k, v in feats.items()}, labels.copy()


def make_dataset(
    directory: Parts,
    schema: dict[str, Any],
    *,
    batch_size: int = 1024,
    modalities: tuple[str, ...] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    in_memory: bool | None = None,
    rating_mix: float = 0.0,
) -> Any:
    """``(features, label)`` batches over one ETL part (or several), as Keras' backend takes
    them: a ``tf.data.Dataset`` on TensorFlow, a ``keras.utils.PyDataset`` on other backends.

    ``in_memory=None`` loads parts up to :data:`IN_MEMORY_MAX_ROWS` rows and streams larger ones
    (streamed parts shuffle within chunks of :data:`SHUFFLE_BATCHES` batches; in-memory ones
    over the whole part, a new permutation every epoch). Rows are shuffled as whole arrays, never
    row by row. On TensorFlow the generator yields :data:`GROUP_BATCHES` batches at a time that
    ``Dataset.rebatch`` cuts (the same rows in the same order), so the Python side stays cheap
    beside the model. ``rating_mix`` > 0 yields :func:`soft_labels` as targets (training parts).
    """
    import keras

    rows = part_rows(directory)
    if in_memory is None:
        in_memory = rows <= IN_MEMORY_MAX_ROWS
    rng = np.random.default_rng(seed) if shuffle else None
    if in_memory:
        part = read_part(directory, schema, modalities, rating_mix)

        def batches(size: int) -> Iterator[tuple[Features, np.ndarray]]:
            return owned_batches(part, size, rng=rng)
    else:
        chunk = SHUFFLE_BATCHES * batch_size

        def batches(size: int) -> Iterator[tuple[Features, np.ndarray]]:
            return rebatch(iter_batches(directory, schema, chunk, modalities, rating_mix),
                           size, rng=rng)
    n_batches = -(-rows // batch_size)
    if keras.backend.backend() != "tensorflow":
        from mmlens.train.pydataset import SequentialBatches

        return SequentialBatches(lambda: batches(batch_size), n_batches)
    import tensorflow as tf

    ds = tf.data.Dataset.from_generator(lambda: batches(GROUP_BATCHES * batch_size),
                                        output_signature=_signature(schema, modalities))
    ds = ds.rebatch(batch_size)  # the groups are cut into exactly n_batches batches
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(tf.data.AUTOTUNE)


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
