"""The fixed ml-latest-small evaluation protocol (``shared/data/ml-latest-small-protocol``).

Label ``rating > 3``, metric ROC-AUC (and logloss) over the test rows. Warm: the test rows are the
``(userId, movieId)`` pairs of ``warm_test_pairs.csv``, every other rating is train. Cold: every
rating of the movies in ``cold_movies.csv`` is test, all others train. mmlens carves its
validation part from train only: warm, a seeded share of the train rows; cold, every rating of a
seeded share of the train movies (a cold validation set, so early stopping is cold too).

The two splits are written as the feature store's ``random`` (warm) and ``cold-items`` (cold)
splits, so stage 06 and the stage 08/09 training code run on them unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts, feature_store, splits
from mmlens.config import Config

RELEASE_DIR = "ml-latest-small"
PROTOCOL_DIR = "ml-latest-small-protocol"
LABEL_THRESHOLD = 3.0
VALID_SHARE = 0.1
TEXT_SOURCE = "title+genres+tags"
SPLIT_NAMES = {"warm": "random", "cold": "cold-items"}
# best published results on exactly this protocol (protocol README)
BASELINES = {"warm": ("LightFM ids+genres+text", 0.8179),
             "cold": ("LightFM genres+text", 0.7868)}


def find_shared_data(start: Path | None = None) -> Path | None:
    """``shared/data`` holding both the release and the protocol, looked up from ``start``
    (default: this file) through its parents; None when absent."""
    here = Path(start or __file__).resolve()
    for parent in [here, *here.parents]:
        data = parent / "shared" / "data"
        if (data / RELEASE_DIR / "ratings.csv").exists() and (data / PROTOCOL_DIR).is_dir():
            return data
    return None


def convert_release(cfg: Config, release_dir: Path) -> dict[str, Any]:
    """Convert the extracted CSVs of ``release_dir`` into ``cfg``'s movies/ratings/tags."""
    from mmlens.movielens import convert

    names = ("movies.csv", "ratings.csv", "links.csv", "tags.csv")
    files = {n: Path(release_dir) / n for n in names if (Path(release_dir) / n).exists()}
    out = {name: artifacts.path(cfg, name) for name in ("movies", "ratings", "tags")}
    return convert.convert("csv", files, out)


def read_protocol(protocol_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The warm test pairs and the cold movie ids."""
    protocol_dir = Path(protocol_dir)
    pairs = pd.read_csv(protocol_dir / "warm_test_pairs.csv", dtype=np.int64)
    cold = pd.read_csv(protocol_dir / "cold_movies.csv", dtype=np.int64)["movieId"].to_numpy()
    if list(pairs.columns) != ["userId", "movieId"] or pairs.duplicated().any():
        raise ValueError(f"{protocol_dir}/warm_test_pairs.csv must hold unique userId,movieId")
    return pairs, np.sort(cold)


def warm_split(ratings: pd.DataFrame, test_pairs: pd.DataFrame, *, seed: int,
               valid_share: float = VALID_SHARE) -> splits.Split:
    """Test: the protocol's pairs; valid: a seeded ``valid_share`` of the remaining rows."""
    key = pd.MultiIndex.from_frame(ratings[["userId", "movieId"]].astype(np.int64))
    in_test = key.isin(pd.MultiIndex.from_frame(test_pairs))
    if in_test.sum() != len(test_pairs):
        raise ValueError(f"{len(test_pairs) - in_test.sum()} protocol test pairs have no rating")
    train_all = ratings[~in_test].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(len(train_all), bool)
    is_valid[rng.choice(len(train_all), round(valid_share * len(train_all)), replace=False)] = True
    definition = {"kind": "protocol-warm", "seed": seed, "valid_share": valid_share,
                  "text": f"test: the {len(test_pairs)} pairs of warm_test_pairs.csv; valid: "
                          f"{valid_share:.0%} of the other ratings drawn with seed {seed}"}
    return splits.Split("random", train_all[~is_valid].reset_index(drop=True),
                        train_all[is_valid].reset_index(drop=True),
                        ratings[in_test].reset_index(drop=True), definition)


def cold_split(ratings: pd.DataFrame, cold_movies: np.ndarray, *, seed: int,
               valid_share: float = VALID_SHARE) -> splits.Split:
    """Test: every rating of ``cold_movies``; valid: every rating of a seeded ``valid_share``
    of the other rated movies."""
    in_test = ratings["movieId"].isin(cold_movies).to_numpy()
    rest = np.sort(ratings.loc[~in_test, "movieId"].unique())
    rng = np.random.default_rng(seed)
    valid_movies = np.sort(rng.choice(rest, round(valid_share * len(rest)), replace=False))
    in_valid = ratings["movieId"].isin(valid_movies).to_numpy()
    test_movies = np.sort(ratings.loc[in_test, "movieId"].unique())
    definition = {"kind": "protocol-cold", "seed": seed, "valid_share": valid_share,
                  "text": f"test: all ratings of the {len(test_movies)} rated movies of "
                          f"cold_movies.csv; valid: all ratings of {len(valid_movies)} other "
                          f"movies ({valid_share:.0%}) drawn with seed {seed}",
                  "test_movies": [int(m) for m in test_movies],
                  "valid_movies": [int(m) for m in valid_movies]}
    parts = (ratings[~in_test & ~in_valid], ratings[in_valid], ratings[in_test])
    return splits.Split("cold-items", *(p.reset_index(drop=True) for p in parts), definition)


def write_store(cfg: Config, protocol_dir: Path, *, modalities: tuple[str, ...] = ("text",),
                valid_share: float = VALID_SHARE) -> dict[str, Any]:
    """Stage 05 on the protocol: items, pretrained tables (from 03/04 outputs) and both splits."""
    ratings = splits.add_label(pd.read_parquet(artifacts.require(cfg, "ratings")),
                               LABEL_THRESHOLD)
    pairs, cold = read_protocol(protocol_dir)
    cut = {"random": warm_split(ratings, pairs, seed=cfg.seed, valid_share=valid_share),
           "cold-items": cold_split(ratings, cold, seed=cfg.seed, valid_share=valid_share)}
    summary: dict[str, Any] = {
        name: feature_store.write_split(cfg, split, LABEL_THRESHOLD)
        for name, split in cut.items()}
    movies = pd.read_parquet(artifacts.require(cfg, "movies"))
    items = feature_store.build_items(movies, cut["random"].train)
    for m in modalities:
        paths = [artifacts.require(cfg, n, modality=m)
                 for n in ("embeddings", "embedding_index", "embedding_meta")]
        table, has, meta = feature_store.pretrained_table(movies["movieId"], m, *paths)
        items[f"has_{m}"] = has
        with artifacts.atomic_path(artifacts.path(cfg, "pretrained", modality=m)) as tmp:
            np.save(tmp, table)
        artifacts.write_json(artifacts.path(cfg, "pretrained_meta", modality=m), meta)
    artifacts.write_parquet(items, artifacts.path(cfg, "items"))
    return summary


def prepare(cfg: Config, shared_data: Path, *, text_source: str = TEXT_SOURCE,
            text_batch_size: int = 64) -> dict[str, Any]:
    """01 (convert), 04 (text embeddings of ``text_source``), 05 (protocol splits) and 06 (ETL)
    for ``cfg`` (dataset ``ml-latest-small``); returns the split sizes."""
    from mmlens import etl
    from mmlens.features import text

    convert_release(cfg, Path(shared_data) / RELEASE_DIR)
    text.run(cfg, text_source=text_source, batch_size=text_batch_size)
    summary = write_store(cfg, Path(shared_data) / PROTOCOL_DIR)
    etl.run(cfg, splits=tuple(SPLIT_NAMES.values()))
    return summary
