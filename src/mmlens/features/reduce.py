"""PCA of an embedding table, fitted on the catalog rows that have content.

HugeCTR caps ``embedding_vec_size`` at 1024, so a 2048-d ResNet table must be reduced (never
truncated). ``write_pca`` stores the reduced table beside the full one, in the ``embeddings_pca``
artifact directory ``features/<modality>_pca<dim>/``: ``embeddings.npy`` (float32, catalog order,
zero rows where the content is missing), ``components.npy``, ``mean.npy`` and ``meta.json``
(explained variance ratio, the source table's input hash).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmlens import artifacts
from mmlens.config import Config
from mmlens.features import outputs

BLOCK_ROWS = 8192


def fit_pca(emb: np.ndarray, has: np.ndarray, n_components: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(components [k, dim], mean [dim], explained variance ratio [k]) of the present rows.

    Eigen-decomposition of the covariance in float64; each component's sign is fixed so that its
    largest-magnitude entry is positive (deterministic output).
    """
    emb = np.asarray(emb)
    has = np.asarray(has, dtype=bool)
    if emb.ndim != 2 or len(has) != len(emb):
        raise ValueError(f"need emb [n, dim] and has [n], got {emb.shape} and {has.shape}")
    n_present, dim = int(has.sum()), emb.shape[1]
    if not 1 <= n_components <= min(n_present, dim):
        raise ValueError(f"n_components must be in 1..min(present rows {n_present}, dim {dim}), "
                         f"got {n_components}")
    total_sum, gram = np.zeros(dim), np.zeros((dim, dim))
    present = np.flatnonzero(has)
    for lo in range(0, n_present, BLOCK_ROWS):  # blockwise: never the whole table in float64
        x = np.asarray(emb[present[lo:lo + BLOCK_ROWS]], dtype=np.float64)
        total_sum += x.sum(axis=0)
        gram += x.T @ x
    mean = total_sum / n_present
    cov = (gram - n_present * np.outer(mean, mean)) / max(n_present - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    top = np.argsort(values)[::-1][:n_components]
    components = vectors[:, top].T
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    total = values.clip(min=0).sum()
    ratio = values[top].clip(min=0) / total if total > 0 else np.zeros(n_components)
    return components, mean, ratio


def pca_reduce(emb: np.ndarray, has: np.ndarray, n_components: int
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """Project every present row onto the top ``n_components``; missing rows stay zero."""
    components, mean, ratio = fit_pca(emb, has, n_components)
    has = np.asarray(has, dtype=bool)
    reduced = np.zeros((len(has), n_components), dtype=np.float32)
    present = np.flatnonzero(has)
    for lo in range(0, len(present), BLOCK_ROWS):
        rows = present[lo:lo + BLOCK_ROWS]
        reduced[rows] = ((np.asarray(emb[rows], np.float64) - mean) @ components.T)
    info = {"n_components": n_components, "fitted_on": "catalog rows with content",
            "n_fit_rows": int(has.sum()), "explained_variance_ratio": ratio.round(6).tolist(),
            "explained_variance_total": float(ratio.sum()), "missing_rows": "zeros",
            "components": components.astype(np.float32), "mean": mean.astype(np.float32)}
    return reduced, info


def write_pca(cfg: Config, modality: str, n_components: int) -> dict[str, Any]:
    """Reduce the final ``modality`` table and write the ``embeddings_pca`` directory."""
    emb, index, meta = outputs.load_embeddings(cfg, modality)
    target = artifacts.path(cfg, "embeddings_pca", modality=modality, dim=str(n_components))
    meta_path = target / "meta.json"
    if meta_path.exists() and artifacts.read_json(meta_path).get("source_input_hash") == \
            meta["input_hash"]:
        print(f"{modality} PCA-{n_components} up to date: {target}")
        return artifacts.read_json(meta_path)
    reduced, info = pca_reduce(emb, index[f"has_{modality}"].to_numpy(bool), n_components)
    components, mean = info.pop("components"), info.pop("mean")
    info.update({"modality": modality, "source_input_hash": meta["input_hash"],
                 "source_dim": int(meta["dim"]), "model_id": meta.get("model_id"),
                 "weights": meta.get("weights")})
    with artifacts.atomic_path(target) as tmp:
        tmp.mkdir()
        np.save(tmp / "embeddings.npy", reduced)
        np.save(tmp / "components.npy", components)
        np.save(tmp / "mean.npy", mean)
        artifacts.write_json(tmp / "meta.json", info)
    print(f"{modality} PCA {meta['dim']} -> {n_components}: "
          f"{info['explained_variance_total']:.1%} of the variance kept: {target}")
    return info
