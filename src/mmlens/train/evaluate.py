"""Metrics and baselines: AUC, logloss, HR@k and NDCG@k with sampled negatives, popularity.

Pointwise metrics (AUC, logloss) score every test row. Ranking metrics put each positive test pair
among ``n_neg`` sampled movies the user has not rated (in train or test) and report where it lands.
Nothing here imports TensorFlow: a model enters as a scoring function ``(users, items) -> scores``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens.config import Config

EPS = 1e-7
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _as_arrays(y_true: Iterable[float], y_pred: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape} vs {p.shape}")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def auc(y_true: Iterable[float], y_pred: Iterable[float]) -> float:
    """ROC-AUC; NaN when the labels hold a single class (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score

    y, p = _as_arrays(y_true, y_pred)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def logloss(y_true: Iterable[float], y_pred: Iterable[float]) -> float:
    """Mean binary cross-entropy with predictions clipped to [EPS, 1 - EPS]."""
    y, p = _as_arrays(y_true, y_pred)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("predictions must be probabilities in [0, 1]")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def pointwise_metrics(y_true: Iterable[float], y_pred: Iterable[float]) -> dict[str, float]:
    """``{"auc", "logloss", "rows", "positive_rate"}``."""
    y, p = _as_arrays(y_true, y_pred)
    return {"auc": auc(y, p), "logloss": logloss(y, p), "rows": int(y.size),
            "positive_rate": float(y.mean())}


def rank_of_positive(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """1-based rank of each positive among itself and its negatives (row-wise).

    Ties count against the positive (pessimistic), so a constant model ranks last, not first.
    """
    pos = np.asarray(pos_scores, dtype=np.float64).reshape(-1, 1)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"negatives must be [n_pos, n_neg], got {neg.shape} for {pos.shape[0]}")
    return 1 + (neg >= pos).sum(axis=1)


def hit_rate_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Share of positives ranked within the top ``k``."""
    ranks = np.asarray(ranks)
    return float((ranks <= k).mean())


def ndcg_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per list: ``1 / log2(rank + 1)`` inside the top k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(gains.mean())


def sample_negatives(
    users: np.ndarray,
    seen: Mapping[int, set[int]],
    catalog: np.ndarray,
    n_neg: int = 99,
    seed: int = 0,
) -> np.ndarray:
    """``[len(users), n_neg]`` movie codes each user has not rated, drawn without replacement.

    Raises ValueError when a user has rated so much of the catalog that ``n_neg`` unseen movies
    do not exist.
    """
    rng = np.random.default_rng(seed)
    catalog = np.asarray(catalog)
    users = np.asarray(users)
    out = np.empty((len(users), n_neg), dtype=np.int64)
    for user in np.unique(users).tolist():
        rated = seen.get(user, set())
        pool = catalog[~np.isin(catalog, list(rated))] if rated else catalog
        if pool.size < n_neg:
            raise ValueError(
                f"user {user} has only {pool.size} unrated movies, fewer than n_neg={n_neg}"
            )
        for i in np.flatnonzero(users == user):
            out[i] = rng.choice(pool, size=n_neg, replace=False)
    return out


def ranking_metrics(
    score_fn: ScoreFn,
    test: pd.DataFrame,
    train: pd.DataFrame,
    catalog: np.ndarray,
    *,
    user_col: str = "userId",
    item_col: str = "movieId",
    label_col: str = "label",
    k: int = 10,
    n_neg: int = 99,
    seed: int = 0,
    max_positives: int | None = 20_000,
) -> dict[str, float]:
    """HR@k and NDCG@k over the positive test pairs, each against ``n_neg`` sampled negatives.

    Negatives exclude every movie the user rated in ``train`` or ``test``. When the catalog is too
    small for ``n_neg``, it is reduced to the largest size every user can supply. At most
    ``max_positives`` positive pairs (a seeded sample) are ranked, which bounds the cost on ml-25m.
    """
    pos = test[test[label_col] > 0.5]
    if max_positives is not None and len(pos) > max_positives:
        pos = pos.sample(n=max_positives, random_state=seed)
    if pos.empty:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), "n_neg": 0, "positives": 0}
    rated = pd.concat([train[[user_col, item_col]], test[[user_col, item_col]]])
    seen = {int(u): set(g.tolist()) for u, g in rated.groupby(user_col)[item_col]}
    users = pos[user_col].to_numpy(np.int64)
    fewest_unseen = min(len(catalog) - len(seen.get(int(u), ())) for u in np.unique(users))
    n_neg = max(1, min(n_neg, fewest_unseen))
    negs = sample_negatives(users, seen, catalog, n_neg=n_neg, seed=seed)
    pos_scores = score_fn(users, pos[item_col].to_numpy(np.int64))
    neg_scores = score_fn(np.repeat(users, n_neg), negs.ravel()).reshape(len(users), n_neg)
    ranks = rank_of_positive(pos_scores, neg_scores)
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k),
            "n_neg": int(n_neg), "positives": int(len(users))}


def popularity_scores(
    train_items: np.ndarray, train_labels: np.ndarray, items: np.ndarray, *, prior: float = 5.0
) -> np.ndarray:
    """Smoothed positive rate of each item in train; unseen items get the global rate.

    ``(positives + prior * global_rate) / (count + prior)``: a movie with few ratings is pulled
    toward the global rate instead of scoring 0 or 1.
    """
    df = pd.DataFrame({"item": np.asarray(train_items), "y": np.asarray(train_labels, float)})
    rate = float(df["y"].mean())
    stats = df.groupby("item")["y"].agg(["sum", "count"])
    smoothed = (stats["sum"] + prior * rate) / (stats["count"] + prior)
    return pd.Series(np.asarray(items)).map(smoothed).fillna(rate).to_numpy(np.float64)


def popularity_baseline(
    train: pd.DataFrame, test: pd.DataFrame, *, item_col: str = "movieId", label_col: str = "label"
) -> dict[str, float]:
    """AUC and logloss of :func:`popularity_scores` on ``test``."""
    scores = popularity_scores(train[item_col].to_numpy(), train[label_col].to_numpy(),
                               test[item_col].to_numpy())
    return pointwise_metrics(test[label_col].to_numpy(), scores)


def popularity_score_fn(train: pd.DataFrame, *, item_col: str = "movieId",
                        label_col: str = "label") -> ScoreFn:
    """A :data:`ScoreFn` that ranks by train popularity (smoothed positive rate, ties by count)."""
    counts = train[item_col].value_counts()
    top = max(int(counts.max()), 1) if len(counts) else 1

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rate = popularity_scores(train[item_col].to_numpy(), train[label_col].to_numpy(), items)
        n = pd.Series(items).map(counts).fillna(0).to_numpy(np.float64)
        return rate + 1e-3 * n / top

    return score


def clean(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy: numpy scalars to Python, NaN to None."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out[key] = clean(value)
        elif isinstance(value, (np.floating, float)):
            out[key] = None if math.isnan(float(value)) else float(value)
        elif isinstance(value, np.integer):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def update_metrics(
    cfg: Config, stage: str, keys: tuple[str, ...], values: Mapping[str, Any]
) -> Path:
    """Merge ``values`` into ``metrics/<stage>.json`` under the nested ``keys``; return the path."""
    target = artifacts.path(cfg, "metrics", stage=stage)
    data: dict[str, Any] = artifacts.read_json(target) if target.exists() else {}
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = clean(values)
    artifacts.write_json(target, data)
    return target
