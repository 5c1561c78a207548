"""Stream ratings from CSV/DAT blocks to parquet: validate each block, write it while the next one
is parsed, and find duplicate (userId, movieId) pairs without holding the file in memory.

Real releases are sorted by userId then movieId, so a strictly increasing pair key proves there
are no duplicates; only files that are not sorted (ml-1m, ml-100k, edited files) are read back
once to find them, and rewritten only when some exist.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mmlens.artifacts import atomic_path
from mmlens.movielens.schema import RATINGS_SCHEMA, ConvertError, TableReport

PIECE_BYTES = 16 << 20
# Ratings are never null once validated: required columns need no definition levels (faster to
# write and read). Plain encodings (ids and timestamps are near-unique: dictionaries only cost
# time), a dictionary for the ten rating values. Snappy only where it pays: on ml-25m-shaped data it
# shrinks the sorted userId 20x for little time, but movieId by 3% and timestamps by 25% for most of
# the time spent writing (bench/bench_01_convert.py), so those stay uncompressed.
OUTPUT_SCHEMA = pa.schema([pa.field(f.name, f.type, nullable=False) for f in RATINGS_SCHEMA])
PARQUET_OPTIONS: dict[str, Any] = {
    "use_dictionary": ["rating"],
    "compression": {"userId": "snappy", "movieId": "none", "rating": "none", "timestamp": "none"},
}
DUPLICATE = "duplicate_user_movie (latest kept)"

Pieces = Callable[[], Iterator[pa.Table]]
T = TypeVar("T")


def csv_pieces(
    path: Path, names: list[str] | None = None, delimiter: str = ",", skip: int = 0
) -> Pieces:
    """The ratings columns of ``path``, as tables of about ``PIECE_BYTES`` of text each.

    Pieces end at line ends and each is parsed by pyarrow's multithreaded reader, so memory stays
    bounded while all cores parse. Without ``names`` the file has a header; with them it is
    headerless and each separator is ``skip + 1`` delimiters (``::`` is read as ``:`` twice with
    an empty column between). Numeric rating files hold no quoted line breaks.
    """
    types = {f.name: f.type for f in RATINGS_SCHEMA}
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=list(types))

    def pieces() -> Iterator[pa.Table]:
        with open(path, "rb") as fh:
            columns = _column_names(fh, parse, names, skip)
            read = pacsv.ReadOptions(column_names=columns, block_size=1 << 20)
            for offset, text in _line_pieces(fh):
                if len(text) < 4096 and not bytes(text).strip():
                    continue
                try:
                    yield pacsv.read_csv(pa.py_buffer(text), read_options=read,
                                         parse_options=parse, convert_options=convert)
                except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
                    raise ConvertError(
                        f"cannot read {path} (in the lines from byte {offset}): {exc}"
                    ) from exc

    return pieces


def _line_pieces(fh: BinaryIO) -> Iterator[tuple[int, memoryview]]:
    """Whole lines of ``fh`` in pieces of up to ``PIECE_BYTES`` (more for a longer line), with
    their byte offsets. One buffer is reused: a piece is valid until the next one is asked for."""
    buf = bytearray(PIECE_BYTES)
    filled, offset = 0, fh.tell()
    while True:
        n = fh.readinto(memoryview(buf)[filled:])
        end = filled + n
        if end == 0:
            return
        cut = end if n == 0 else buf.rfind(b"\n", 0, end) + 1
        if cut == 0:  # no line end in a full buffer: a very long line, read on in a larger one
            buf, filled = buf + bytes(len(buf)), end
            continue
        yield offset, memoryview(buf)[:cut]
        offset += cut
        buf[: end - cut] = buf[cut:end]  # same length: allowed while views of ``buf`` live on
        filled = end - cut


def _column_names(
    fh: Any, parse: pacsv.ParseOptions, names: list[str] | None, skip: int
) -> list[str]:
    """Column names: the header line's (consumed from ``fh``) or ``names`` with gap columns."""
    if names is None:
        header = fh.readline()
        try:
            return pacsv.read_csv(pa.py_buffer(header), parse_options=parse).column_names
        except pa.ArrowInvalid as exc:
            raise ConvertError(f"cannot read the header of {fh.name}: {exc}") from exc
    columns: list[str] = []
    for i, name in enumerate(names):
        columns.append(name)
        if i < len(names) - 1:
            columns += [f"_gap{i}_{j}" for j in range(skip)]
    return columns


class _Validator:
    """Keeps the valid rows of each block; tracks whether the pair keys still strictly increase."""

    def __init__(self, catalog: np.ndarray, report: TableReport) -> None:
        self.report = report
        self.low = int(catalog.min()) - 1 if len(catalog) else 0
        # known[i] says whether movieId low + i is in the catalog; both ends are False sentinels.
        size = int(catalog.max()) - self.low + 2 if len(catalog) else 2
        self.known = np.zeros(size, dtype=bool)
        self.known[catalog.astype(np.int64) - self.low] = True
        self.last_key: int | None = None
        self.increasing = True

    def __call__(self, piece: pa.Table) -> pa.Table:
        self.report.rows_read += piece.num_rows
        piece = self._drop_nulls(piece)
        # Batch by batch, as parsed: numpy views of the columns, no concatenation.
        return pa.Table.from_batches([self._batch(b) for b in piece.to_batches()],
                                     schema=OUTPUT_SCHEMA)

    def _batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        cols = [batch.column(i).to_numpy() for i in range(4)]
        bad = self._bad_rows(cols[1], cols[2])
        if bad is not None:
            cols = [c[~bad] for c in cols]
        self._track_order(cols[0], cols[1])
        self.report.rows_kept += len(cols[0])
        return pa.record_batch([pa.array(c) for c in cols], schema=OUTPUT_SCHEMA)

    def _bad_rows(self, movie: np.ndarray, rating: np.ndarray) -> np.ndarray | None:
        """Mask of the rows to drop (each counted under its first failing reason), or None."""
        twice = rating * 2
        checks = {
            "rating_out_of_range": (rating >= 0.5) & (rating <= 5.0),
            "rating_not_half_step": twice == np.rint(twice),
            # Ids outside the table land on its False sentinels at either end.
            "unknown_movie": np.take(self.known, np.subtract(movie, self.low, dtype=np.int64),
                                     mode="clip"),
        }
        in_range, half_step, known = checks.values()
        if (in_range & half_step & known).all():
            return None
        bad = np.zeros(len(rating), dtype=bool)
        for reason, ok in checks.items():
            failing = ~ok & ~bad
            self.report.drop(reason, int(np.count_nonzero(failing)))
            bad |= failing
        return bad

    def _drop_nulls(self, piece: pa.Table) -> pa.Table:
        if not any(piece.column(i).null_count for i in range(piece.num_columns)):
            return piece
        valid = np.ones(piece.num_rows, dtype=bool)
        for i in range(piece.num_columns):
            valid &= piece.column(i).is_valid().to_numpy(zero_copy_only=False)
        self.report.drop("missing_value", piece.num_rows - int(valid.sum()))
        return piece.filter(pa.array(valid))

    def _track_order(self, user: np.ndarray, movie: np.ndarray) -> None:
        if not self.increasing or len(user) == 0:
            return
        key = pair_keys(user, movie)
        after_last = self.last_key is None or key[0] > self.last_key
        self.increasing = after_last and bool(np.all(key[1:] > key[:-1]))
        self.last_key = int(key[-1])


def pair_keys(user: np.ndarray, movie: np.ndarray) -> np.ndarray:
    """One int64 per (userId, movieId) pair, ordered like the pairs."""
    return (user.astype(np.int64) << 32) | (movie.astype(np.int64) & 0xFFFFFFFF)


def write_ratings(
    pieces: Iterable[pa.Table], catalog: np.ndarray, target: Path, report: TableReport
) -> None:
    """Validate ``pieces`` one by one and write the kept rows, in file order, to ``target``.

    Drops (counted in ``report``): missing values, ratings outside 0.5..5 or off the half steps,
    movies not in ``catalog``, and all but the latest (then last) row of a repeated pair.
    """
    validate = _Validator(catalog, report)
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, OUTPUT_SCHEMA, **PARQUET_OPTIONS) as writer:
            # Three stages, each in its own thread: parse, validate, write.
            for kept in read_ahead(map(validate, read_ahead(pieces))):
                writer.write_table(kept)
        if not validate.increasing:
            _drop_older_duplicates(tmp, report)


_END = object()


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """The items of ``items``, each next one produced in a worker thread while the caller works on
    the current one (pyarrow and numpy release the GIL, so the two overlap on separate cores)."""
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, source, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, source, _END)
            yield item


def _drop_older_duplicates(path: Path, report: TableReport) -> None:
    """Rewrite ``path`` without the older rows of repeated pairs, if there are any."""
    cols = pq.read_table(path, columns=["userId", "movieId", "timestamp"])
    older = older_duplicates(cols["userId"].to_numpy(), cols["movieId"].to_numpy(),
                             cols["timestamp"].to_numpy())
    del cols
    n = int(older.sum())
    if not n:
        return
    report.drop(DUPLICATE, n)
    report.rows_kept -= n
    rewritten = path.with_name(path.name + ".dedup")
    source = pq.ParquetFile(path)
    start = 0
    with pq.ParquetWriter(rewritten, OUTPUT_SCHEMA, **PARQUET_OPTIONS) as writer:
        for i in range(source.num_row_groups):
            group = source.read_row_group(i)
            stop = start + group.num_rows
            writer.write_table(group.filter(pa.array(~older[start:stop])))
            start = stop
    os.replace(rewritten, path)


def older_duplicates(user: np.ndarray, movie: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Mask of rows that repeat a (user, movie) pair and are not its latest (then last) row."""
    key = pair_keys(user, movie)
    older = np.zeros(len(key), dtype=bool)
    rows = np.flatnonzero(pd.Series(key).duplicated(keep=False).to_numpy())
    if len(rows) == 0:
        return older
    order = np.lexsort((rows, ts[rows], key[rows]))
    sorted_rows = rows[order]
    sorted_keys = key[sorted_rows]
    is_last = np.r_[sorted_keys[1:] != sorted_keys[:-1], True]
    older[sorted_rows[~is_last]] = True
    return older
