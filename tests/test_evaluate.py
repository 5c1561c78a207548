"""Metrics and baselines against hand-computed small cases (no TensorFlow here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlens.config import Config
from mmlens.train import evaluate


def test_auc_counts_correctly_ordered_pairs() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right
    assert evaluate.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert math.isnan(evaluate.auc([1, 1], [0.2, 0.3]))


def test_logloss_by_hand() -> None:
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert evaluate.logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected)
    # clipping to [EPS, 1 - EPS] keeps a confident mistake finite
    assert evaluate.logloss([1], [0.0]) == pytest.approx(-math.log(evaluate.EPS))
    assert evaluate.logloss([0], [1.0]) == pytest.approx(-math.log(evaluate.EPS), rel=1e-6)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="length"):
        evaluate.auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        evaluate.logloss([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="probabilities"):
        evaluate.logloss([0, 1], [0.5, 1.5])


def test_rank_hr_ndcg_by_hand() -> None:
    pos = np.array([0.9, 0.5, 0.2])
    neg = np.array([[0.1, 0.2], [0.6, 0.5], [0.3, 0.4]])
    ranks = evaluate.rank_of_positive(pos, neg)
    assert ranks.tolist() == [1, 3, 3]  # the tie at 0.5 counts against the positive
    assert evaluate.hit_rate_at_k(ranks, 2) == pytest.approx(1 / 3)
    assert evaluate.ndcg_at_k(ranks, 2) == pytest.approx(1 / 3)
    assert evaluate.ndcg_at_k(ranks, 3) == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_sample_negatives_excludes_rated_and_is_seeded() -> None:
    catalog = np.arange(10, 30)
    seen = {1: {10, 11, 12}, 2: set(range(10, 25))}
    users = np.array([1, 2, 1])
    a = evaluate.sample_negatives(users, seen, catalog, n_neg=5, seed=3)
    b = evaluate.sample_negatives(users, seen, catalog, n_neg=5, seed=3)
    assert (a == b).all() and a.shape == (3, 5)
    for u, row in zip(users, a, strict=True):
        assert not set(row.tolist()) & seen[int(u)]
        assert len(set(row.tolist())) == 5
    with pytest.raises(ValueError, match="fewer than n_neg"):
        evaluate.sample_negatives(np.array([2]), seen, catalog, n_neg=6)


def _pairs() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    train = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 11, 10], "label": [1, 0, 1]})
    test = pd.DataFrame({"userId": [1, 2, 2], "movieId": [12, 13, 14], "label": [1, 1, 0]})
    return train, test, np.arange(10, 40)


def test_ranking_metrics_oracle_and_constant() -> None:
    train, test, catalog = _pairs()
    positives = {(1, 12), (2, 13)}

    def oracle(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.array([float((u, i) in positives) for u, i in zip(users, items, strict=True)])

    best = evaluate.ranking_metrics(oracle, test, train, catalog, n_neg=20, seed=0)
    assert best["hr@10"] == 1.0 and best["ndcg@10"] == 1.0 and best["positives"] == 2
    flat = evaluate.ranking_metrics(lambda u, i: np.zeros(len(u)), test, train, catalog,
                                    n_neg=20, seed=0)
    assert flat["hr@10"] == 0.0 and flat["ndcg@10"] == 0.0


def test_ranking_metrics_shrinks_negatives_to_catalog() -> None:
    train, test, _ = _pairs()
    out = evaluate.ranking_metrics(lambda u, i: np.zeros(len(u)), test, train,
                                   np.arange(10, 20), n_neg=99)
    assert out["n_neg"] == 10 - 3  # each user rated 3 of the 10 catalog movies


def test_popularity_scores_smoothed() -> None:
    scores = evaluate.popularity_scores(np.array([1, 1, 2]), np.array([1, 1, 0]),
                                        np.array([1, 2, 3]), prior=1.0)
    rate = 2 / 3
    assert scores == pytest.approx([(2 + rate) / 3, rate / 2, rate])


def test_popularity_baseline_beats_chance_when_items_differ() -> None:
    rng = np.random.default_rng(0)
    items = rng.integers(0, 20, size=2000)
    labels = (rng.random(2000) < items / 20).astype(int)
    df = pd.DataFrame({"movieId": items, "label": labels})
    out = evaluate.popularity_baseline(df.iloc[:1500], df.iloc[1500:])
    assert out["auc"] > 0.7 and out["rows"] == 500


def test_update_metrics_merges_and_cleans(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    evaluate.update_metrics(cfg, "08", ("random", "mlp"), {"auc": np.float32(0.5)})
    path = evaluate.update_metrics(cfg, "08", ("random", "wide_deep"), {"auc": float("nan")})
    saved = json.loads(path.read_text())
    assert saved == {"random": {"mlp": {"auc": 0.5}, "wide_deep": {"auc": None}}}


def test_ranking_metrics_caps_positives() -> None:
    train, test, catalog = _pairs()
    out = evaluate.ranking_metrics(lambda u, i: np.zeros(len(u)), test, train, catalog,
                                   n_neg=5, max_positives=1)
    assert out["positives"] == 1
