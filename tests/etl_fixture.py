"""A small synthetic stage-06 ETL output that follows the 06 -> 07/08/09 contract exactly.

Labels come from a hidden user x movie-content affinity that the pretrained tables carry, so a
model can learn them and content features help on cold movies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens.config import Config

RESERVED = 3  # Categorify (NVTabular 23.8) codes 0 pad, 1 null, 2 oov


@dataclass
class FixtureSpec:
    n_users: int = 40
    n_movies: int = 60
    n_genres: int = 6
    n_years: int = 5
    hotness: int = 3
    dims: dict[str, int] = field(default_factory=lambda: {"poster": 16, "text": 8})
    density: float = 0.5
    seed: int = 0


def offsets(sizes: list[int]) -> list[int]:
    """Slot offsets from ``mmlens.etl.slot_layout`` when it exists, else plain prefix sums."""
    import importlib.util

    if importlib.util.find_spec("mmlens.etl") is not None:
        from mmlens import etl

        if hasattr(etl, "slot_layout"):
            layout = etl.slot_layout(sizes)
            return [int(x) for x in (layout["offsets"] if isinstance(layout, dict) else layout)]
    return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])]


def make_etl(cfg: Config, spec: FixtureSpec | None = None,
             splits: tuple[str, ...] = ("random", "cold-items")) -> dict[str, Path]:
    """Write ``etl/<split>/`` for each split under ``cfg.dataset_dir``; return split -> dir."""
    spec = spec or FixtureSpec()
    rng = np.random.default_rng(spec.seed)
    world = _world(spec, rng)
    return {split: _write_split(cfg, spec, world, split, rng) for split in splits}


def _world(spec: FixtureSpec, rng: np.random.Generator) -> dict[str, object]:
    latent = 4
    user_vec = rng.normal(size=(spec.n_users, latent))
    movie_vec = rng.normal(size=(spec.n_movies, latent))
    movie_codes = np.arange(RESERVED, RESERVED + spec.n_movies)
    user_codes = np.arange(RESERVED, RESERVED + spec.n_users)
    genres = [rng.choice(np.arange(RESERVED, RESERVED + spec.n_genres),
                         size=rng.integers(1, spec.hotness + 1), replace=False)
              for _ in range(spec.n_movies)]
    years = rng.integers(RESERVED, RESERVED + spec.n_years, size=spec.n_movies)
    tables, has = {}, {}
    card = RESERVED + spec.n_movies
    for m, dim in spec.dims.items():
        proj = rng.normal(size=(latent, dim))
        table = np.zeros((card, dim), np.float32)
        flag = rng.random(spec.n_movies) > 0.1
        noise = 0.1 * rng.normal(size=(flag.sum(), dim))
        table[movie_codes[flag]] = movie_vec[flag] @ proj + noise
        tables[m], has[m] = table, flag.astype(np.int8)
    pairs = [(u, m) for u in range(spec.n_users) for m in range(spec.n_movies)
             if rng.random() < spec.density]
    u_idx, m_idx = np.array(pairs).T
    affinity = (user_vec[u_idx] * movie_vec[m_idx]).sum(1)
    label = (affinity + 0.3 * rng.normal(size=affinity.size) > 0).astype(np.float32)
    ratings = pd.DataFrame({
        "userId": user_codes[u_idx], "movieId": movie_codes[m_idx],
        "genres": [genres[m].tolist() for m in m_idx], "year_bucket": years[m_idx],
        "poster_id": movie_codes[m_idx], "text_id": movie_codes[m_idx],
        "label": label, "rating": np.where(label == 1, 4.5, 2.0).astype(np.float32),
    })
    for m in spec.dims:
        ratings[f"has_{m}"] = has[m][m_idx]
    return {"ratings": ratings, "tables": tables, "movie_codes": movie_codes,
            "user_codes": user_codes}


def _write_split(cfg: Config, spec: FixtureSpec, world: dict, split: str,
                 rng: np.random.Generator) -> Path:
    ratings: pd.DataFrame = world["ratings"]  # type: ignore[assignment]
    etl_dir = artifacts.path(cfg, "etl_schema", split=split).parent
    cold: list[int] = []
    if split == "cold-items":
        movies = np.asarray(world["movie_codes"])
        cold = sorted(rng.choice(movies, size=len(movies) // 5, replace=False).tolist())
        is_cold = ratings["movieId"].isin(cold).to_numpy()
        warm_idx = rng.permutation(np.flatnonzero(~is_cold))
        cut = int(0.85 * len(warm_idx))
        parts = {"train": ratings.iloc[np.sort(warm_idx[:cut])],
                 "valid": ratings.iloc[np.sort(warm_idx[cut:])], "test": ratings[is_cold]}
    else:
        idx = rng.permutation(len(ratings))
        a, b = int(0.7 * len(idx)), int(0.85 * len(idx))
        parts = {"train": ratings.iloc[np.sort(idx[:a])], "valid": ratings.iloc[np.sort(idx[a:b])],
                 "test": ratings.iloc[np.sort(idx[b:])]}
    slot_defs = [("userId", "userId", RESERVED + spec.n_users, 1),
                 ("movieId", "movieId", RESERVED + spec.n_movies, 1),
                 ("genres", "genres", RESERVED + spec.n_genres, spec.hotness),
                 ("year", "year_bucket", RESERVED + spec.n_years, 1)]
    slot_defs += [(m, f"{m}_id", RESERVED + spec.n_movies, 1) for m in spec.dims]
    sizes = [s[2] for s in slot_defs]
    offs = offsets(sizes)
    slots = [{"name": n, "column": c, "cardinality": k, "offset": o, "hotness": h}
             for (n, c, k, h), o in zip(slot_defs, offs, strict=True)]
    cats = [s["column"] for s in slots]
    for name, df in parts.items():
        part_dir = etl_dir / name
        part_dir.mkdir(parents=True, exist_ok=True)
        file = part_dir / "part_0.parquet"
        df.reset_index(drop=True).to_parquet(file, index=False)
        (part_dir / "_file_list.txt").write_text(f"1\n{file}\n")
        position = {c: i for i, c in enumerate(df.columns)}  # NVTabular: column positions
        meta = {"file_stats": [{"file_name": file.name, "num_rows": len(df)}],
                "labels": [{"col_name": "label", "index": position["label"]}], "conts": [],
                "cats": [{"col_name": c, "index": position[c]} for c in cats]}
        (part_dir / "_metadata.json").write_text(json.dumps(meta))
    pretrained = {}
    tables: dict[str, np.ndarray] = world["tables"]  # type: ignore[assignment]
    for i, (m, table) in enumerate(tables.items()):
        np.save(etl_dir / f"pretrained_{m}.npy", table)
        sparse = etl_dir / "hugectr" / f"{m}_sparse"
        sparse.mkdir(parents=True, exist_ok=True)
        slot = slots[4 + i]
        (np.arange(len(table), dtype=np.int64) + slot["offset"]).tofile(sparse / "key")
        table.astype(np.float32).tofile(sparse / "emb_vector")
        pretrained[m] = {"slot": m, "dim": int(table.shape[1]), "table": f"pretrained_{m}.npy",
                         "sparse_model": f"hugectr/{m}_sparse", "has_column": f"has_{m}"}
    cat_dir = etl_dir / "workflow" / "categories"
    cat_dir.mkdir(parents=True, exist_ok=True)
    for col, codes in (("userId", world["user_codes"]), ("movieId", world["movie_codes"])):
        codes = np.asarray(codes)
        raw = codes * 10 + 7  # raw ids differ from codes on purpose
        pd.DataFrame({col: raw, f"{col}_size": np.ones_like(raw)},
                     index=pd.Index(codes)).to_parquet(cat_dir / f"unique.{col}.parquet")
    schema = {"split": split, "label": "label", "rating": "rating", "dense": [], "slots": slots,
              "slot_size_array": sizes, "pretrained": pretrained,
              "parts": {"train": "train", "valid": "valid", "test": "test"},
              "rows": {k: len(v) for k, v in parts.items()},
              "reserved_codes": {"pad": 0, "null": 1, "oov": 2}, "first_value_code": RESERVED}
    if split == "cold-items":
        schema["cold_movie_codes"] = cold
    (etl_dir / "schema.json").write_text(json.dumps(schema, indent=2))
    return etl_dir


def raw_id(code: int) -> int:
    """The raw id the fixture's category files map ``code`` to."""
    return code * 10 + 7
