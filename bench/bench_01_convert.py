"""Stage 01 conversion: an ml-25m-sized release against pyarrow's CSV reader, and peak memory.

Generates (under /tmp, deleted after) an ml-25m-shaped release: a 25,000,095-row ``ratings.csv``
(~680 MB, ml-25m header, sorted by userId then movieId, no duplicate pairs, the release's rating
distribution, 9-10 digit timestamps), plus 62,423 movies (quoted titles with ``""``, trailing
spaces, ``(2006–2007)`` ranges), links and 1,093,360 tags. Then, alternating in fresh subprocesses
(so each starts equal: imports done, file in page cache):

- ``pyarrow``: ``pyarrow.csv.read_csv`` of ``ratings.csv`` alone with the output column types;
- ``mmlens``: ``convert.convert("csv", ...)`` of the whole release (movies, links, ratings, tags
  read, validated and written to parquet), with its peak RSS (``VmHWM``).

- ``ratings``: ``ratings.write_ratings`` of ``ratings.csv`` alone (the ratings part of convert).

Prints `BENCH 01 convert_vs_pyarrow <best pyarrow time / best mmlens time>` (target >= 0.8),
`BENCH 01 convert_ratings_vs_pyarrow <best pyarrow time / best ratings-only time>` and
`BENCH 01 convert_peak_rss_gb <peak RSS of the mmlens subprocess, GB>` (target <= 3).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from childproc import report, run_child

N_RATINGS = 25_000_095
N_USERS = 162_541
N_MOVIES = 62_423
N_TAGS = 1_093_360
MAX_MOVIE_ID = 209_171
TS_RANGE = (789_652_009, 1_574_327_703)
RATING_VALUES = ("0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0")
# Shares of each rating value in ml-25m (rounded).
RATING_SHARES = (0.016, 0.031, 0.016, 0.066, 0.050, 0.195, 0.126, 0.266, 0.085, 0.149)
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")
TAG_WORDS = ("funny", "atmospheric", "Pixar", "sci-fi", "based on a book", "twist ending",
             'the "best"', "dark, comedy", "visually appealing", "Oscar (Best Picture)")
ROUNDS = 3


def _write_csv(table: pa.Table, path: Path, quoting: str = "needed") -> None:
    opts = pacsv.WriteOptions(include_header=False, batch_size=1 << 16, quoting_style=quoting)
    with open(path, "wb") as fh:
        fh.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, fh, write_options=opts)


def _as_text(values: np.ndarray, labels: tuple[str, ...]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(values.astype(np.int32)),
                                          pa.array(labels)).cast(pa.string())


def generate_ratings(path: Path, movie_ids: np.ndarray, rng: np.random.Generator) -> None:
    """``N_RATINGS`` distinct (user, movie) pairs sorted like ml-25m, written as ml-25m writes."""
    per_user = rng.lognormal(mean=4.3, sigma=1.0, size=N_USERS)
    per_user = np.maximum(20, per_user * (N_RATINGS / per_user.sum())).astype(np.int64)
    popularity = 1.0 / np.arange(1, len(movie_ids) + 1) ** 0.7
    popularity /= popularity.sum()
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < N_RATINGS:
        want = int((N_RATINGS - len(keys)) * 1.1) + 1000
        users = rng.choice(N_USERS, size=want, p=per_user / per_user.sum()) + 1
        movies = movie_ids[rng.choice(len(movie_ids), size=want, p=popularity)]
        keys = np.unique(np.concatenate([keys, (users.astype(np.int64) << 32) | movies]))
    keys = np.sort(rng.choice(keys, size=N_RATINGS, replace=False))
    rating = rng.choice(len(RATING_VALUES), size=N_RATINGS, p=np.array(RATING_SHARES) /
                        sum(RATING_SHARES))
    table = pa.table({
        "userId": pa.array((keys >> 32).astype(np.int32)),
        "movieId": pa.array((keys & 0xFFFFFFFF).astype(np.int32)),
        "rating": _as_text(rating, RATING_VALUES),
        "timestamp": pa.array(rng.integers(*TS_RANGE, size=N_RATINGS)),
    })
    _write_csv(table, path, quoting="none")


def generate_small_files(folder: Path, movie_ids: np.ndarray, rng: np.random.Generator) -> None:
    """movies.csv, links.csv and tags.csv of ml-25m's size and quirks."""
    n = len(movie_ids)
    years = rng.integers(1900, 2020, size=n)
    titles = []
    for i, (mid, year) in enumerate(zip(movie_ids.tolist(), years.tolist(), strict=True)):
        kind = i % 50
        if kind == 0:
            titles.append(f'"""Great Performances"" Show {mid} ({year})"')
        elif kind == 1:
            titles.append(f"Series {mid} ({year}\u2013{year + 3})")
        elif kind == 2:
            titles.append(f"No Year {mid} ")
        elif kind == 3:
            titles.append(f'"Movie {mid}, The ({year}) "')
        else:
            titles.append(f"Movie {mid} ({year})")
    genre_idx = rng.integers(0, len(GENRES), size=(n, 3))
    genres = ["|".join(sorted({GENRES[g] for g in row})) for row in genre_idx.tolist()]
    genres[::97] = ["(no genres listed)"] * len(genres[::97])
    lines = ["movieId,title,genres"] + [f"{m},{t},{g}" for m, t, g in
                                        zip(movie_ids.tolist(), titles, genres, strict=True)]
    (folder / "movies.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    imdb = rng.integers(1, 11_000_000, size=n)
    tmdb = [str(t) if i % 40 else "" for i, t in enumerate(rng.integers(2, 700_000, n).tolist())]
    lines = ["movieId,imdbId,tmdbId"] + [f"{m},{i:07d},{t}" for m, i, t in
                                         zip(movie_ids.tolist(), imdb.tolist(), tmdb, strict=True)]
    (folder / "links.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tags = pa.table({
        "userId": pa.array(rng.integers(1, N_USERS + 1, size=N_TAGS).astype(np.int32)),
        "movieId": pa.array(movie_ids[rng.integers(0, n, size=N_TAGS)]),
        "tag": _as_text(rng.integers(0, len(TAG_WORDS), size=N_TAGS), TAG_WORDS),
        "timestamp": pa.array(rng.integers(*TS_RANGE, size=N_TAGS)),
    })
    _write_csv(tags, folder / "tags.csv")


def generate(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    movie_ids = np.sort(rng.choice(np.arange(2, MAX_MOVIE_ID + 1), size=N_MOVIES - 1,
                                   replace=False))
    movie_ids = np.r_[1, movie_ids].astype(np.int32)
    generate_small_files(folder, movie_ids, rng)
    generate_ratings(folder / "ratings.csv", movie_ids, rng)


# ----------------------------------------------------------------------------- measuring


def child(mode: str, folder: Path) -> None:
    """Time one side in this fresh process; print json with seconds and peak RSS (kB)."""
    if mode == "pyarrow":
        from mmlens.movielens.convert import RATINGS_SCHEMA

        types = {f.name: f.type for f in RATINGS_SCHEMA}
        start = time.perf_counter()
        table = pacsv.read_csv(folder / "ratings.csv", convert_options=pacsv.ConvertOptions(
            column_types=types))
        seconds = time.perf_counter() - start
        rows = table.num_rows
    elif mode == "ratings":
        from mmlens.movielens.convert import TableReport
        from mmlens.movielens.ratings import csv_pieces, write_ratings

        catalog = pacsv.read_csv(folder / "movies.csv")["movieId"].to_numpy()
        table_report = TableReport()
        start = time.perf_counter()
        write_ratings(csv_pieces(folder / "ratings.csv")(), catalog,
                      folder / "out" / "ratings-only.parquet", table_report)
        seconds = time.perf_counter() - start
        rows = table_report.rows_kept
    else:
        from mmlens.movielens.convert import convert

        files = {p.name: p for p in folder.glob("*.csv")}
        out = {n: folder / "out" / f"{n}.parquet" for n in ("movies", "ratings", "tags")}
        start = time.perf_counter()
        converted = convert("csv", files, out)
        seconds = time.perf_counter() - start
        rows = converted["ratings"]["rows_kept"]
        assert converted["ratings"]["rows_read"] == N_RATINGS, converted
        assert converted["tags"]["rows_kept"] == N_TAGS, converted
    report(seconds=seconds, rows=rows)


def measure(mode: str, folder: Path) -> dict:
    return run_child(__file__, mode, str(folder))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="mmlens-bench01-convert-"))
    try:
        start = time.perf_counter()
        generate(folder)
        size_mb = (folder / "ratings.csv").stat().st_size / 1e6
        print(f"generated ratings.csv {size_mb:.0f} MB in {time.perf_counter() - start:.1f} s")
        results: dict[str, list[dict]] = {"pyarrow": [], "mmlens": [], "ratings": []}
        for _ in range(ROUNDS):
            for mode in results:
                results[mode].append(measure(mode, folder))
                r = results[mode][-1]
                print(f"{mode}: {r['seconds']:.2f} s, {r['rows']:,} rows, "
                      f"peak RSS {r['peak_kb'] / 1e6:.2f} GB", flush=True)
        best = {mode: min(r["seconds"] for r in runs) for mode, runs in results.items()}
        peak_gb = max(r["peak_kb"] for r in results["mmlens"]) / 1e6
        print(f"throughput: pyarrow {size_mb / best['pyarrow']:.0f} MB/s, "
              f"mmlens {size_mb / best['mmlens']:.0f} MB/s")
        print(f"BENCH 01 convert_vs_pyarrow {best['pyarrow'] / best['mmlens']:.3f}")
        print(f"BENCH 01 convert_ratings_vs_pyarrow {best['pyarrow'] / best['ratings']:.3f}")
        print(f"BENCH 01 convert_peak_rss_gb {peak_gb:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
