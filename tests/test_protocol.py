"""The ml-latest-small protocol splits and the metadata text sources (no TF, no shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlens import artifacts, protocol
from mmlens.config import Config
from mmlens.features import text


def _ratings(n_users: int = 30, n_movies: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = [(u, m) for u in range(1, n_users + 1) for m in range(1, n_movies + 1)
             if rng.random() < 0.4]
    df = pd.DataFrame(pairs, columns=["userId", "movieId"]).astype("int32")
    df["rating"] = rng.choice(np.arange(1, 11) / 2, len(df)).astype("float32")
    df["timestamp"] = np.arange(len(df), dtype=np.int64)
    return df.assign(label=(df["rating"] > 3).astype("int8"))


def test_warm_split_tests_exactly_the_protocol_pairs() -> None:
    ratings = _ratings()
    pairs = ratings.sample(frac=0.2, random_state=1)[["userId", "movieId"]].astype(np.int64)
    split = protocol.warm_split(ratings, pairs.reset_index(drop=True), seed=3)
    key = ["userId", "movieId"]

    def as_set(df: pd.DataFrame) -> set:
        return set(map(tuple, df[key].to_numpy().tolist()))

    assert as_set(split.test) == as_set(pairs)
    assert not as_set(split.valid) & as_set(split.test)
    assert not as_set(split.train) & (as_set(split.valid) | as_set(split.test))
    assert len(split.train) + len(split.valid) + len(split.test) == len(ratings)
    assert len(split.valid) == round(0.1 * (len(ratings) - len(pairs)))
    missing = pd.DataFrame({"userId": [999], "movieId": [1]})
    with pytest.raises(ValueError, match="no rating"):
        protocol.warm_split(ratings, missing, seed=3)


def test_cold_split_holds_out_whole_movies_and_a_cold_valid_set() -> None:
    ratings = _ratings()
    cold = np.array([2, 5, 7, 11, 13, 17, 19, 23])
    split = protocol.cold_split(ratings, cold, seed=3)
    test_movies, valid_movies = set(split.test["movieId"]), set(split.valid["movieId"])
    train_movies = set(split.train["movieId"])
    assert test_movies == set(cold.tolist()) & set(ratings["movieId"])
    assert not valid_movies & train_movies and not valid_movies & test_movies
    assert not train_movies & test_movies and len(valid_movies) == round(0.1 * 32)
    assert split.definition["valid_movies"] == sorted(valid_movies)
    assert len(split.train) + len(split.valid) + len(split.test) == len(ratings)


def test_read_protocol_and_missing_shared(tmp_path: Path) -> None:
    (tmp_path / "warm_test_pairs.csv").write_text("userId,movieId\r\n1,2\r\n3,4\r\n")
    (tmp_path / "cold_movies.csv").write_text("movieId\n9\n4\n")
    pairs, cold = protocol.read_protocol(tmp_path)
    assert pairs.to_numpy().tolist() == [[1, 2], [3, 4]] and cold.tolist() == [4, 9]
    assert protocol.find_shared_data(tmp_path) is None


def test_metadata_text_sources(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path, dataset="ml-latest-small")
    movies = pd.DataFrame({"movieId": [1, 2, 3], "title": ["Heat", "Up", " "],
                           "year": pd.array([1995, None, 2001], dtype="Int16"),
                           "genres": [["Action", "Crime"], [], []]})
    tags = pd.DataFrame({"userId": [1, 2, 3, 4], "movieId": [1, 1, 1, 2],
                         "tag": ["heist", "Pacino", "pacino", " "], "timestamp": [0, 1, 2, 3]})
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    artifacts.write_parquet(tags, artifacts.path(cfg, "tags"))
    ids = np.array([1, 2, 3, 4])
    assert text.synopsis_texts(cfg, ids, "title+genres+tags") == [
        "Heat (1995). Genres: Action, Crime. Tags: Pacino, heist", "Up", None, None]
    assert text.synopsis_texts(cfg, ids, "title+genres")[0] == "Heat (1995). Genres: Action, Crime"
    with pytest.raises(ValueError, match="text source"):
        text.synopsis_texts(cfg, ids, "plot")
