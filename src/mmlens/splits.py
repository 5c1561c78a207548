"""Labels and train/valid/test splits of a ratings table (pure pandas, no I/O).

Every split returns a :class:`Split`: three frames with the same columns as the input plus a
``definition`` dict recorded in ``split.json``. Row order inside a part is a seeded shuffle (the
random split keeps scikit-learn's ``train_test_split`` order, for parity with upstream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

PARTS = ("train", "valid", "test")
VALID_SHARE = 0.1
TEST_SHARE = 0.2
TEMPORAL_QUANTILE = 0.8


@dataclass
class Split:
    """One split: its three parts and a description of how they were cut."""

    name: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    definition: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


def add_label(ratings: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """A copy with ``label = rating > threshold`` as int8 (the rating is kept)."""
    if "rating" not in ratings:
        raise ValueError("ratings need a 'rating' column to derive the label")
    out = ratings.copy()
    out["label"] = (out["rating"] > threshold).astype("int8")
    return out


def _sklearn_order(n: int, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions exactly as ``train_test_split(test_size=share, random_state=seed)``.

    scikit-learn's ShuffleSplit draws one ``RandomState(seed).permutation(n)``; the first
    ``ceil(share * n)`` positions are test, the rest train.
    """
    n_test = math.ceil(test_share * n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def random_split(ratings: pd.DataFrame, seed: int = 42, test_share: float = TEST_SHARE,
                 valid_share: float = VALID_SHARE) -> Split:
    """80/20 train/test by ``seed`` (upstream parity), then ``valid_share`` of train as valid."""
    if len(ratings) < 3:
        raise ValueError(f"need at least 3 ratings to split, got {len(ratings)}")
    train_pos, test_pos = _sklearn_order(len(ratings), test_share, seed)
    train_all = ratings.iloc[train_pos].reset_index(drop=True)
    fit_pos, valid_pos = _sklearn_order(len(train_all), valid_share, seed)
    return Split(
        "random",
        train_all.iloc[fit_pos].reset_index(drop=True),
        train_all.iloc[valid_pos].reset_index(drop=True),
        ratings.iloc[test_pos].reset_index(drop=True),
        {
            "kind": "random",
            "text": f"{1 - test_share:.0%}/{test_share:.0%} train/test of ratings drawn with "
                    f"seed {seed} (same rows as sklearn train_test_split(random_state={seed})), "
                    f"then {valid_share:.0%} of train as valid by the same seed",
            "seed": seed, "test_share": test_share, "valid_share": valid_share,
        },
    )


def _shuffled(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


def temporal_split(ratings: pd.DataFrame, seed: int = 42, k: int | None = None,
                   quantile: float = TEMPORAL_QUANTILE, valid_share: float = VALID_SHARE) -> Split:
    """Global time cut (test: timestamp above the ``quantile``), or per user last ``k`` when given.

    Global: valid is the latest ``valid_share`` of the train period (timestamp above that
    quantile of train). Per user: a user's last ``k`` ratings are test when they have more than
    ``k``, the ``k`` before those are valid when they have more than ``2k``; the rest is train.
    """
    rng = np.random.default_rng(seed)
    if k is None:
        ts = ratings["timestamp"]
        cut = int(ts.quantile(quantile, interpolation="lower"))
        train_all = ratings[ts <= cut]
        valid_cut = int(train_all["timestamp"].quantile(1 - valid_share, interpolation="lower"))
        is_valid = train_all["timestamp"] > valid_cut
        parts = (train_all[~is_valid], train_all[is_valid], ratings[ts > cut])
        definition = {
            "kind": "temporal-global",
            "text": f"test: timestamp > {cut} (the {quantile:.0%} quantile of all timestamps); "
                    f"valid: train rows with timestamp > {valid_cut} (the {1 - valid_share:.0%} "
                    "quantile of the train period)",
            "cut_timestamp": cut, "valid_cut_timestamp": valid_cut, "quantile": quantile,
        }
    else:
        if k < 1:
            raise ValueError(f"temporal_k must be a positive integer, got {k}")
        order = ratings.sort_values(["userId", "timestamp"], kind="stable")
        from_end = order.groupby("userId").cumcount(ascending=False).to_numpy()
        n_user = order.groupby("userId")["userId"].transform("size").to_numpy()
        is_test = (from_end < k) & (n_user > k)
        is_valid = (from_end >= k) & (from_end < 2 * k) & (n_user > 2 * k)
        parts = (order[~is_test & ~is_valid], order[is_valid], order[is_test])
        definition = {
            "kind": "temporal-last-k",
            "text": f"per user, the last {k} ratings are test (users with > {k} ratings), the "
                    f"{k} before them valid (users with > {2 * k}), the rest train",
            "k": k,
        }
    train, valid, test = (_shuffled(p, rng) for p in parts)
    definition["seed"] = seed
    return Split("temporal", train, valid, test, definition)


def cold_items_split(ratings: pd.DataFrame, seed: int = 42, cold_share: float = 0.2,
                     valid_share: float = VALID_SHARE) -> Split:
    """Hold out ``cold_share`` of the rated movies entirely (test) and another disjoint
    ``valid_share`` (valid, so early stopping is cold too); train has every other movie."""
    if not 0 < cold_share < 1 or not 0 < valid_share < 1 or cold_share + valid_share >= 1:
        raise ValueError(
            f"need 0 < cold_share, valid_share and cold_share + valid_share < 1, got "
            f"{cold_share} and {valid_share}"
        )
    rng = np.random.default_rng(seed)
    rated = np.sort(ratings["movieId"].unique())
    n_test = max(1, round(cold_share * len(rated)))
    n_valid = max(1, round(valid_share * len(rated)))
    if n_test + n_valid >= len(rated):
        raise ValueError(f"only {len(rated)} rated movies: too few to hold out cold movies")
    drawn = rng.permutation(rated)
    test_movies, valid_movies = np.sort(drawn[:n_test]), np.sort(drawn[n_test:n_test + n_valid])
    in_test = ratings["movieId"].isin(test_movies)
    in_valid = ratings["movieId"].isin(valid_movies)
    train, valid, test = (
        _shuffled(p, rng) for p in (ratings[~in_test & ~in_valid], ratings[in_valid],
                                    ratings[in_test])
    )
    definition = {
        "kind": "cold-items",
        "text": f"{n_test} of {len(rated)} rated movies ({cold_share:.0%}) drawn with seed {seed} "
                f"have all their ratings in test, another {n_valid} ({valid_share:.0%}) all theirs "
                "in valid; train holds the ratings of every other movie",
        "seed": seed, "cold_share": cold_share, "valid_share": valid_share,
        "test_movies": [int(m) for m in test_movies],
        "valid_movies": [int(m) for m in valid_movies],
    }
    return Split("cold-items", train, valid, test, definition)


def part_stats(df: pd.DataFrame) -> dict[str, Any]:
    """Rows, users, movies and positive rate of one part."""
    return {
        "rows": len(df),
        "users": int(df["userId"].nunique()),
        "movies": int(df["movieId"].nunique()),
        "positive_rate": float(df["label"].mean()) if len(df) else float("nan"),
    }
