"""Stage 05: the item table, pretrained tables aligned to the catalog, labels and splits.

- ``items``: one row per catalog movie (``movies.parquet`` order, rated or not): movieId, year,
  genres, ``has_<modality>`` and ``n_ratings``. ``n_ratings`` counts ratings of the *random* split's
  train part only (descriptive; anything fitted on ratings sees train only).
- ``pretrained_<modality>.npy``: float32, row i belongs to ``items`` row i. Rows without content are
  filled by ``missing_policy`` ("zeros" or "mean" of the present rows) and flagged by
  ``has_<modality>``; a table wider than HugeCTR's cap is reduced by PCA fitted on the present
  catalog rows (label-free).
- ``splits/<split>/{train,valid,test}.parquet`` + ``split.json``: userId, movieId, rating,
  timestamp and ``label = rating > label_threshold`` (int8).

The joins, the alignment, the cap and the fill are notebook 05's ``#@save`` functions, imported
from ``mmlens._nb.create_feature_store``: the stage runs the code the reader sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts, splits
from mmlens._nb.create_feature_store import (
    MAX_VEC_SIZE,
    MISSING_POLICIES,
    align_to_catalog,
    build_items,
    fill_missing,
    fit_to_cap,
)
from mmlens.artifacts import MODALITIES, SPLITS
from mmlens.config import Config

__all__ = ["build_items", "describe", "pretrained_table", "read_split", "run", "write_split"]
SPLIT_COLUMNS = ["userId", "movieId", "rating", "timestamp", "label"]


def run(cfg: Config, *, label_threshold: float = 3.0, missing_policy: str = "zeros",
        cold_share: float = 0.2, temporal_k: int | None = None,
        modalities: tuple[str, ...] | list[str] = MODALITIES,
        pca_dim: int | None = None, max_dim: int | None = MAX_VEC_SIZE) -> dict[str, Any]:
    """Build the feature store of ``cfg``'s dataset; prints what it did, returns a small summary.

    ``pca_dim`` reduces every table by PCA fitted on the catalog rows with content. Without it, a
    table wider than ``max_dim`` (default: HugeCTR's 1024 cap on ``embedding_vec_size``) is reduced
    to ``min(max_dim, rows with content)`` dimensions, said in the output; never truncated.
    """
    start = time.perf_counter()
    modalities = _check_options(missing_policy, cold_share, temporal_k, modalities, pca_dim)
    movies = pd.read_parquet(artifacts.require(cfg, "movies"))
    embedding_paths = {m: _require_embeddings(cfg, m) for m in modalities}
    ratings = splits.add_label(_read_ratings(cfg), label_threshold)
    print(f"{len(ratings)} ratings, label = rating > {label_threshold:g}: "
          f"{ratings['label'].mean():.1%} positive")

    cut = {
        "random": splits.random_split(ratings, seed=cfg.seed),
        "temporal": splits.temporal_split(ratings, seed=cfg.seed, k=temporal_k),
        "cold-items": splits.cold_items_split(ratings, seed=cfg.seed, cold_share=cold_share),
    }
    summary: dict[str, Any] = {"splits": {}, "pretrained": {}}
    for name, split in cut.items():
        summary["splits"][name] = write_split(cfg, split, label_threshold)
        sizes = " / ".join(str(n) for n in summary["splits"][name].values())
        held_out = {p: len(split.definition.get(f"{p}_movies", [])) for p in ("valid", "test")}
        print(f"split {name}: train/valid/test {sizes} ratings"
              + (f" ({held_out['valid']} valid and {held_out['test']} test movies held out)"
                 if held_out["test"] else ""))

    items = build_items(movies, cut["random"].train)
    for m in modalities:
        table, has, meta = pretrained_table(movies["movieId"], m, *embedding_paths[m],
                                            missing_policy=missing_policy, pca_dim=pca_dim,
                                            max_dim=max_dim)
        items[f"has_{m}"] = has
        target = artifacts.path(cfg, "pretrained", modality=m)
        with artifacts.atomic_path(target) as tmp:
            np.save(tmp, table)
        artifacts.write_json(artifacts.path(cfg, "pretrained_meta", modality=m), meta)
        summary["pretrained"][m] = {k: meta[k] for k in ("dim", "n_present", "n_missing")}
        print(f"{m}: {_describe_table(meta)}")
    artifacts.write_parquet(items, artifacts.path(cfg, "items"))
    seconds = time.perf_counter() - start
    summary.update(items=len(items), ratings=len(ratings), modalities=list(modalities),
                   seconds=round(seconds, 2))
    print(f"items: {len(items)} catalog movies, {int((items['n_ratings'] == 0).sum())} without a "
          f"train rating (kept); store written: {_store_megabytes(cfg):.1f} MB in {seconds:.1f} s")
    return summary


def _describe_table(meta: dict[str, Any]) -> str:
    """One line about a pretrained table: coverage, fill, width and PCA."""
    width = f"{meta['dim']}-d"
    if meta["pca"] is not None:
        width = (f"{meta['source_dim']}-d -> {meta['dim']}-d by PCA fitted on "
                 f"{meta['pca']['n_fit_rows']} catalog rows "
                 f"({meta['pca']['explained_variance_total']:.1%} of the variance kept)")
    return (f"{meta['n_present']} of {meta['n_items']} movies have content, {meta['n_missing']} "
            f"filled with {meta['missing_policy']}; {width}")


def _store_megabytes(cfg: Config) -> float:
    store = artifacts.path(cfg, "items").parent
    return sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6


def _check_options(missing_policy: str, cold_share: float, temporal_k: int | None,
                   modalities: tuple[str, ...] | list[str], pca_dim: int | None) -> tuple[str, ...]:
    if missing_policy not in MISSING_POLICIES:
        raise ValueError(f"missing_policy must be in {MISSING_POLICIES}, got {missing_policy!r}")
    if not 0 < cold_share < 1:
        raise ValueError(f"cold_share must be in (0, 1), got {cold_share}")
    if temporal_k is not None and (not isinstance(temporal_k, int) or temporal_k < 1):
        raise ValueError(f"temporal_k must be a positive integer or None, got {temporal_k!r}")
    if isinstance(modalities, str):
        modalities = (modalities,)
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: {MODALITIES}")
    if pca_dim is not None and (not isinstance(pca_dim, int) or pca_dim < 1):
        raise ValueError(f"pca_dim must be a positive integer or None, got {pca_dim!r}")
    return tuple(m for m in MODALITIES if m in modalities)


def _require_embeddings(cfg: Config, modality: str) -> tuple[Path, Path, Path]:
    return tuple(  # type: ignore[return-value]
        artifacts.require(cfg, name, modality=modality)
        for name in ("embeddings", "embedding_index", "embedding_meta")
    )


def _read_ratings(cfg: Config) -> pd.DataFrame:
    ratings = pd.read_parquet(artifacts.require(cfg, "ratings"))
    missing = {"userId", "movieId", "rating", "timestamp"} - set(ratings.columns)
    if missing:
        raise ValueError(f"ratings.parquet lacks columns {sorted(missing)}: re-run notebook 01")
    return ratings[["userId", "movieId", "rating", "timestamp"]]


def pretrained_table(movie_ids: pd.Series, modality: str, embeddings_path: Path,
                     index_path: Path, meta_path: Path, *, missing_policy: str = "zeros",
                     pca_dim: int | None = None, max_dim: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The 03/04 embeddings re-keyed to ``movie_ids`` by movieId, the has-flags, a meta dict.

    Keyed through the index parquet (never by position alone); every catalog movie must be in it.
    """
    vectors = np.load(embeddings_path, mmap_mode="r")
    index = pd.read_parquet(index_path)
    has_col = f"has_{modality}"
    if {"row", "movieId", has_col} - set(index.columns):
        raise ValueError(f"{index_path} needs columns row, movieId, {has_col}: re-run its notebook")
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"{embeddings_path} must be a 2-d float32 array, got "
                         f"{vectors.dtype} {vectors.shape}")
    if len(index) and (index["row"].min() < 0 or index["row"].max() >= len(vectors)):
        raise ValueError(f"{index_path} points outside {embeddings_path} ({len(vectors)} rows)")
    table, has = align_to_catalog(movie_ids, vectors, index, modality)
    table, pca = fit_to_cap(table, has, max_dim=max_dim, pca_dim=pca_dim)
    table = fill_missing(table, has, missing_policy)
    meta = {
        "modality": modality, "dim": int(table.shape[1]), "source_dim": int(vectors.shape[1]),
        "n_items": len(table), "n_present": int(has.sum()), "n_missing": int((~has).sum()),
        "missing_policy": missing_policy, "pca": pca,
        "source_meta": artifacts.read_json(meta_path),
        "rows": "aligned to store/items.parquet rows (full catalog)",
    }
    return table, has, meta


def write_split(cfg: Config, split: splits.Split, label_threshold: float) -> dict[str, Any]:
    target = artifacts.path(cfg, "split", split=split.name)
    stats = {part: splits.part_stats(df) for part, df in split.parts().items()}
    meta = {"split": split.name, "seed": cfg.seed, "label": f"rating > {label_threshold}",
            "label_threshold": label_threshold, "definition": split.definition, "parts": stats,
            "columns": SPLIT_COLUMNS}
    with artifacts.atomic_path(target) as tmp:
        tmp.mkdir()
        for part, df in split.parts().items():
            df[SPLIT_COLUMNS].to_parquet(tmp / f"{part}.parquet", index=False)
        artifacts.write_json(tmp / "split.json", meta)
    return {part: s["rows"] for part, s in stats.items()}


def read_split(cfg: Config, split: str) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The parts of a written split and its split.json."""
    root = artifacts.require(cfg, "split", split=split)
    parts = {part: pd.read_parquet(root / f"{part}.parquet") for part in splits.PARTS}
    return parts, artifacts.read_json(root / "split.json")


def describe(cfg: Config) -> pd.DataFrame:
    """Per split and part: sizes, positive rate, users/movies unseen in train, content coverage."""
    items = pd.read_parquet(artifacts.require(cfg, "items"))
    flags = [c for c in items.columns if c.startswith("has_")]
    content = items.set_index("movieId")[flags]
    rows = []
    for name in SPLITS:
        parts, _ = read_split(cfg, name)
        train_users, train_movies = set(parts["train"]["userId"]), set(parts["train"]["movieId"])
        for part, df in parts.items():
            row: dict[str, Any] = {"split": name, "part": part, **splits.part_stats(df)}
            row["users_unseen_in_train"] = float((~df["userId"].isin(train_users)).mean())
            row["movies_unseen_in_train"] = float((~df["movieId"].isin(train_movies)).mean())
            for flag in flags:
                row[f"rows_{flag}"] = float(content.loc[df["movieId"], flag].mean())
            rows.append(row)
    return pd.DataFrame(rows).set_index(["split", "part"])
