"""Shared by ``bench_05_scale.py`` and ``bench_06_scale.py``: an ml-25m-shaped world, the stages run
in fresh subprocesses with their peak RSS, and a plain pandas implementation of each transform.

The world (seeded numpy, written straight to parquet under a temp dir, deleted after):
``movies.parquet`` in the stage-01 schema (62,423 movies, null years, genre lists, some empty),
``ratings.parquet`` (25,000,095 rows: userId/movieId int32 over 162,541 users with a long-tailed
count per user and Zipf-like movie popularity, float32 half stars, int64 timestamps) and the 03/04
outputs: a 2048-d poster table (wider than HugeCTR's cap, so 05 reduces it by PCA) and a 384-d
text table, each with ~10% of the catalog lacking content and an index in another row order.

``MMLENS_BENCH_RATINGS`` (default 25,000,095) sets the number of ratings for a quick run;
``MMLENS_BENCH_DIMS`` (default ``poster=2048,text=384``) the tables.

Each measured side runs in a fresh ``python scale_world.py --child <mode> <dir>`` that reports its
seconds, rows and ``VmHWM`` (its own peak RSS, not inherited from the parent). ``ratio_vs_pandas``
is pandas seconds / mmlens seconds of the same run (> 1: mmlens is faster).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from childproc import report, run_child

N_RATINGS = int(os.environ.get("MMLENS_BENCH_RATINGS", "25000095"))
N_USERS = 162_541
N_MOVIES = 62_423
MAX_MOVIE_ID = 209_171
TS_RANGE = (789_652_009, 1_574_327_703)
RATING_SHARES = (0.016, 0.031, 0.016, 0.066, 0.050, 0.195, 0.126, 0.266, 0.085, 0.149)
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")
DATASET = "ml-25m-bench"
LABEL_THRESHOLD = 3.0
ETL_SPLITS = ("random", "cold-items")  # etl.run's default
RESERVED = 3  # Categorify's pad, null and OOV codes


def dims() -> dict[str, int]:
    """Pretrained table widths per modality, from ``MMLENS_BENCH_DIMS``."""
    spec = os.environ.get("MMLENS_BENCH_DIMS", "poster=2048,text=384")
    return {k: int(v) for k, v in (item.split("=") for item in spec.split(","))}


def config(folder: Path) -> Any:
    from mmlens.config import Config

    return Config(data_dir=folder, dataset=DATASET)


# ----------------------------------------------------------------------------- the world


def write_movies(cfg: Any, rng: np.random.Generator) -> np.ndarray:
    """movies.parquet in the stage-01 schema; returns the movie ids (catalog order)."""
    from mmlens import artifacts
    from mmlens.movielens.schema import MOVIES_SCHEMA

    ids = np.sort(rng.choice(np.arange(2, MAX_MOVIE_ID + 1), N_MOVIES - 1, replace=False))
    ids = np.r_[1, ids].astype(np.int32)
    years = rng.integers(1900, 2020, N_MOVIES).astype(np.int16)
    n_genres = rng.integers(0, 4, N_MOVIES)
    picks = rng.integers(0, len(GENRES), n_genres.sum())
    genres = pa.ListArray.from_arrays(np.r_[0, np.cumsum(n_genres)].astype(np.int32),
                                      pa.array(np.array(GENRES)[picks]))
    table = pa.table({
        "movieId": ids, "title": [f"Movie {m}" for m in ids.tolist()],
        "year": pa.array(years, mask=rng.random(N_MOVIES) < 0.01), "genres": genres,
        "imdbId": [f"{i:07d}" for i in rng.integers(1, 11_000_000, N_MOVIES).tolist()],
        "tmdbId": pa.array(rng.integers(2, 700_000, N_MOVIES), mask=rng.random(N_MOVIES) < 0.02),
    }, schema=MOVIES_SCHEMA)
    target = artifacts.path(cfg, "movies")
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return ids


def write_ratings(cfg: Any, movie_ids: np.ndarray, rng: np.random.Generator) -> None:
    """``N_RATINGS`` ratings, grouped by user like the release (pairs may repeat)."""
    from mmlens import artifacts

    per_user = rng.lognormal(mean=4.3, sigma=1.0, size=N_USERS)
    per_user = np.floor(per_user * (N_RATINGS / per_user.sum())).astype(np.int64)
    users = np.repeat(np.arange(1, N_USERS + 1, dtype=np.int32), per_user)
    users = np.sort(np.r_[users, rng.integers(1, N_USERS + 1, N_RATINGS - len(users))])
    popularity = 1.0 / np.arange(1, N_MOVIES + 1) ** 0.9
    rated = movie_ids[rng.permutation(N_MOVIES)]  # popularity independent of id
    movies = rated[rng.choice(N_MOVIES, N_RATINGS, p=popularity / popularity.sum())]
    stars = rng.choice(10, N_RATINGS, p=np.array(RATING_SHARES) / sum(RATING_SHARES))
    table = pa.table({
        "userId": users, "movieId": movies.astype(np.int32),
        "rating": ((stars + 1) / 2).astype(np.float32),
        "timestamp": rng.integers(*TS_RANGE, N_RATINGS, dtype=np.int64),
    })
    pq.write_table(table, artifacts.path(cfg, "ratings"))


def write_embeddings(cfg: Any, movie_ids: np.ndarray, rng: np.random.Generator) -> None:
    """03/04 outputs per modality: table, index (shuffled rows, ~10% without content), meta."""
    from mmlens import artifacts

    for modality, dim in dims().items():
        target = artifacts.path(cfg, "embeddings", modality=modality)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, rng.standard_normal((N_MOVIES, dim), dtype=np.float32))
        order = rng.permutation(N_MOVIES)
        index = pd.DataFrame({"row": order.astype(np.int64), "movieId": movie_ids[order],
                              f"has_{modality}": rng.random(N_MOVIES) > 0.1})
        index.to_parquet(artifacts.path(cfg, "embedding_index", modality=modality), index=False)
        artifacts.write_json(artifacts.path(cfg, "embedding_meta", modality=modality),
                             {"model": f"bench-{modality}", "dim": dim})


def generate(folder: Path, seed: int = 0) -> None:
    """The whole world under ``folder``."""
    cfg = config(folder)
    rng = np.random.default_rng(seed)
    movie_ids = write_movies(cfg, rng)
    write_ratings(cfg, movie_ids, rng)
    write_embeddings(cfg, movie_ids, rng)


# ----------------------------------------------------------------------------- plain pandas


def pandas_05(cfg: Any) -> int:
    """Stage 05's transform in plain pandas/numpy: label, three splits, items, tables."""
    from mmlens import artifacts

    out = cfg.dataset_dir / "pandas05"
    out.mkdir()
    movies = pd.read_parquet(artifacts.path(cfg, "movies"))
    ratings = pd.read_parquet(artifacts.path(cfg, "ratings"))
    ratings["label"] = (ratings["rating"] > LABEL_THRESHOLD).astype("int8")
    rng = np.random.default_rng(cfg.seed)
    n = len(ratings)
    perm = rng.permutation(n)
    n_test, n_valid = int(0.2 * n), int(0.08 * n)
    parts = {"random": (perm[n_test + n_valid:], perm[n_test:n_test + n_valid], perm[:n_test])}
    ts = ratings["timestamp"].to_numpy()
    cut = np.quantile(ts, 0.8, method="lower")
    valid_cut = np.quantile(ts[ts <= cut], 0.9, method="lower")
    parts["temporal"] = (np.flatnonzero(ts <= valid_cut),
                         np.flatnonzero((ts > valid_cut) & (ts <= cut)), np.flatnonzero(ts > cut))
    rated = rng.permutation(ratings["movieId"].unique())
    n_cold, n_cold_valid = round(0.2 * len(rated)), round(0.1 * len(rated))
    in_test = ratings["movieId"].isin(rated[:n_cold]).to_numpy()
    in_valid = ratings["movieId"].isin(rated[n_cold:n_cold + n_cold_valid]).to_numpy()
    parts["cold-items"] = (np.flatnonzero(~in_test & ~in_valid), np.flatnonzero(in_valid),
                           np.flatnonzero(in_test))
    for name, positions in parts.items():
        (out / name).mkdir()
        for part, pos in zip(("train", "valid", "test"), positions, strict=True):
            ratings.iloc[rng.permutation(pos)].to_parquet(out / name / f"{part}.parquet",
                                                          index=False)
    train = ratings.iloc[parts["random"][0]]
    items = movies[["movieId", "year", "genres"]].copy()
    items["n_ratings"] = items["movieId"].map(train["movieId"].value_counts()).fillna(0)
    for modality in dims():
        index = pd.read_parquet(artifacts.path(cfg, "embedding_index", modality=modality))
        index = index.set_index("movieId").loc[movies["movieId"]]
        has = index[f"has_{modality}"].to_numpy()
        table = np.load(artifacts.path(cfg, "embeddings", modality=modality))[index["row"]]
        np.save(out / f"{modality}.npy", pandas_pca(table, has, min(table.shape[1], 1024)))
        items[f"has_{modality}"] = has
    items.to_parquet(out / "items.parquet", index=False)
    return n


def pandas_pca(table: np.ndarray, has: np.ndarray, dim: int) -> np.ndarray:
    """Plain numpy PCA fitted on the present rows (identity when ``dim`` is the full width);
    missing rows zero."""
    out = np.zeros((len(table), dim), np.float32)
    if dim == table.shape[1]:
        out[has] = table[has]
        return out
    x = table[has].astype(np.float64)
    x -= x.mean(axis=0)
    _, vectors = np.linalg.eigh(x.T @ x)
    out[has] = x @ np.ascontiguousarray(vectors[:, ::-1][:, :dim])
    return out


def write_tables_by_code(cfg: Any, flags: list[str], out: Path) -> None:
    """Each 05 table with its rows moved to movie codes (reserved rows zero), as .npy and as a
    HugeCTR key/emb_vector pair (keys without offsets: the same bytes to write)."""
    from mmlens import artifacts

    for modality in (f[4:] for f in flags):
        table = np.load(artifacts.path(cfg, "pretrained", modality=modality))
        by_code = np.zeros((len(table) + RESERVED, table.shape[1]), np.float32)
        by_code[RESERVED:] = table
        np.save(out / f"pretrained_{modality}.npy", by_code)
        np.arange(len(by_code), dtype=np.int64).tofile(out / f"{modality}_key")
        by_code.tofile(out / f"{modality}_emb_vector")


def pandas_06(cfg: Any) -> int:
    """Stage 06's transform in plain pandas (pyarrow for the multi-hot list column): codes for
    userId (train vocabulary), movieId, genres and year decade (catalog), flags, label."""
    from mmlens import artifacts

    items = pd.read_parquet(artifacts.path(cfg, "items"))
    movie_index = pd.Index(items["movieId"])
    genre_vocab = pd.Index(sorted({g for gs in items["genres"] for g in gs}))
    genre_lists = pa.array(items["genres"], type=pa.list_(pa.string()))
    genre_codes = pa.ListArray.from_arrays(
        genre_lists.offsets, pa.array(genre_vocab.get_indexer(genre_lists.flatten()) + RESERVED))
    decade = items["year"] // 10 * 10
    year_code = pd.Index(np.sort(decade.dropna().unique())).get_indexer(decade) + RESERVED
    year_code[decade.isna().to_numpy()] = 1  # null
    flags = {c: items[c].astype("int8").to_numpy() for c in items if c.startswith("has_")}
    rows = 0
    for split in ETL_SPLITS:
        split_dir = artifacts.path(cfg, "split", split=split)
        out = cfg.dataset_dir / "pandas06" / split
        out.mkdir(parents=True)
        write_tables_by_code(cfg, list(flags), out)
        users = None
        for part in ("train", "valid", "test"):
            df = pd.read_parquet(split_dir / f"{part}.parquet")
            if users is None:
                users = pd.Index(pd.unique(df["userId"]))
            user = users.get_indexer(df["userId"])
            pos = movie_index.get_indexer(df["movieId"])
            cols = {"userId": np.where(user < 0, 2, user + RESERVED), "movieId": pos + RESERVED,
                    "genres": genre_codes.take(pa.array(pos)), "year_bucket": year_code[pos]}
            cols.update({f"{c[4:]}_id": pos + RESERVED for c in flags})
            cols.update({c: f[pos] for c, f in flags.items()})
            cols.update(label=df["label"].to_numpy(np.float32), rating=df["rating"].to_numpy())
            pq.write_table(pa.table(cols), out / f"{part}.parquet")
            rows += len(df)
    return rows


# ----------------------------------------------------------------------------- measuring


def run_05(cfg: Any) -> int:
    from mmlens import feature_store

    return feature_store.run(cfg)["ratings"]


def run_06(cfg: Any) -> int:
    from mmlens import etl

    result = etl.run(cfg, splits=ETL_SPLITS)
    return sum(sum(schema["rows"].values()) for schema in result.values())


MODES = {"05": run_05, "06": run_06, "pandas05": pandas_05, "pandas06": pandas_06}


def child(mode: str, folder: Path) -> None:
    """Run one side in this fresh process; print json with seconds, rows and peak RSS (kB)."""
    cfg = config(folder)
    start = time.perf_counter()
    rows = MODES[mode](cfg)
    seconds = time.perf_counter() - start
    report(seconds=seconds, rows=rows)


def measure(mode: str, folder: Path) -> dict[str, Any]:
    """One side in a fresh subprocess; its output is passed through, its json returned."""
    result = run_child(__file__, mode, str(folder), echo=mode)
    print(f"{mode}: {result['seconds']:.1f} s, {result['rows']:,} rows, "
          f"peak RSS {result['peak_kb'] / 1e6:.2f} GB", flush=True)
    return result


def bench(stage: str) -> None:
    """Generate the world, run what ``stage`` needs first, then measure it against pandas."""
    folder = Path(tempfile.mkdtemp(prefix=f"mmlens-bench{stage}-scale-"))
    try:
        start = time.perf_counter()
        generate(folder)
        print(f"generated {N_RATINGS:,} ratings, {N_MOVIES:,} movies, tables {dims()} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        if stage == "06":
            measure("05", folder)  # its inputs
        ours, plain = measure(stage, folder), measure(f"pandas{stage}", folder)
        print(f"BENCH {stage} scale_rows_per_s {ours['rows'] / ours['seconds']:.0f}")
        print(f"BENCH {stage} scale_ratio_vs_pandas {plain['seconds'] / ours['seconds']:.3f}")
        print(f"BENCH {stage} scale_peak_rss_gb {ours['peak_kb'] / 1e6:.2f}")
        print(f"BENCH {stage} scale_pandas_peak_rss_gb {plain['peak_kb'] / 1e6:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit("run bench_05_scale.py or bench_06_scale.py")
