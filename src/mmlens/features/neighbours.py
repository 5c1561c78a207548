"""Looking at embeddings in notebooks 03/04: nearest neighbours, a 2-D map, genre agreement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmlens.features.reduce import pca_reduce


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check(emb: np.ndarray, has: np.ndarray) -> np.ndarray:
    has = np.asarray(has, dtype=bool)
    if np.ndim(emb) != 2 or len(has) != len(emb):
        raise ValueError(f"need emb [n, dim] and has [n], got {np.shape(emb)} and {has.shape}")
    return has


def nearest(emb: np.ndarray, has: np.ndarray, query_row: int, k: int = 5, *,
            center: bool = False) -> pd.DataFrame:
    """The ``k`` rows most cosine-similar to ``query_row`` among rows with content (itself
    excluded): a frame with columns ``row`` and ``similarity``, most similar first.

    ``center=True`` subtracts the mean of the rows with content first. Vectors that share one
    dominant direction (pooled ReLU features, above all of a randomly initialised CNN, where every
    raw cosine is close to 1) then get similarities that spread between -1 and 1.
    """
    has = _check(emb, has)
    if not 0 <= query_row < len(has):
        raise IndexError(f"query_row {query_row} outside 0..{len(has) - 1}")
    if not has[query_row]:
        raise ValueError(f"row {query_row} has no content (its embedding is a placeholder)")
    candidates = np.flatnonzero(has & (np.arange(len(has)) != query_row))
    shift = np.asarray(emb[has], dtype=np.float64).mean(axis=0) if center else 0.0
    query = _unit_rows(np.asarray(emb[query_row])[None, :] - shift)[0]
    scores = _unit_rows(np.asarray(emb[candidates]) - shift) @ query
    top = np.argsort(-scores, kind="stable")[:k]
    return pd.DataFrame({"row": candidates[top], "similarity": scores[top]})


def project_2d(emb: np.ndarray, has: np.ndarray) -> np.ndarray:
    """PCA to 2-D fitted on the present rows: float32 [n, 2], NaN for rows without content."""
    has = _check(emb, has)
    coords, _ = pca_reduce(emb, has, 2)
    coords[~has] = np.nan
    return coords


def _rank(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy()


def genre_agreement(emb: np.ndarray, has: np.ndarray, genres: Sequence[Sequence[str]], *,
                    n_pairs: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """How well cosine similarity tracks genre overlap: Spearman correlation between the cosine
    similarity and the Jaccard index of the genre sets over random pairs of present rows.
    Near 0: the embedding ignores genre; higher: similar vectors share genres."""
    has = _check(emb, has)
    if len(genres) != len(has):
        raise ValueError(f"need one genre list per row, got {len(genres)} for {len(has)} rows")
    present = np.flatnonzero(has)
    if len(present) < 3:
        raise ValueError("genre_agreement needs at least 3 rows with content")
    rng = np.random.default_rng(seed)
    a = rng.choice(present, n_pairs)
    b = rng.choice(present, n_pairs)
    keep = a != b
    a, b = a[keep], b[keep]
    unit = _unit_rows(np.asarray(emb[present]))
    pos = np.full(len(has), -1)
    pos[present] = np.arange(len(present))
    cosine = np.einsum("ij,ij->i", unit[pos[a]], unit[pos[b]])
    sets = [frozenset(g) for g in genres]
    jaccard = np.array([len(sets[i] & sets[j]) / max(len(sets[i] | sets[j]), 1)
                        for i, j in zip(a.tolist(), b.tolist(), strict=True)])
    if np.ptp(jaccard) == 0 or np.ptp(cosine) == 0:
        rho = float("nan")
    else:
        rho = float(np.corrcoef(_rank(cosine), _rank(jaccard))[0, 1])
    shared = jaccard > 0
    return {"spearman": rho, "n_pairs": int(len(a)),
            "mean_cosine_shared_genre": float(cosine[shared].mean()) if shared.any() else None,
            "mean_cosine_no_shared_genre": float(cosine[~shared].mean())
            if (~shared).any() else None}
