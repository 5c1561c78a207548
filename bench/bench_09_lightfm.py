"""LightFM tuned on the protocol's validation parts, on every text source notebook 10 measures.

The protocol README's baselines were measured once, on the title+genres+tags text, with settings
it does not give. This bench puts LightFM (logistic loss) on exactly notebook 10's parts
(``protocol.prepare`` per source: the protocol's test parts; validation drawn from train with
``protocol.SPLIT_SEED``) with each source's own text vectors, so every source's mmlens result has
"LightFM on the same text" beside it:

- warm: item features = the movie's id + its genres + its text vector (the README's best warm
  LightFM); cold: genres + text, no id features (its best cold one: a held-out movie's id vector
  would never be trained);
- :data:`COMPONENTS` factors, learning rate :data:`LEARNING_RATE`, user and item L2
  :data:`ALPHA` (fixed, not searched); the number of epochs (up to :data:`MAX_EPOCHS`) is the one
  with the best validation AUC; the model is then refitted on train + valid for that many epochs
  and scored once on test;
- seeds 1..``MMLENS_PROTOCOL_SEEDS`` (default 3) as LightFM's ``random_state``.

Prints ``BENCH 09 lightfm_<source>_<setting>_auc <mean test AUC over seeds>``. LightFM is not a
dependency of mmlens (its 1.17 source release builds with ``pip install setuptools`` first and
``pip install --no-build-isolation lightfm``); without it the bench says so and exits 1. Work files
as for bench_09_protocol (``MMLENS_BENCH09_DIR`` keeps and reuses one).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from bench_09_protocol import bench_key, in_work_dir
from sklearn.metrics import roc_auc_score

from mmlens import artifacts, protocol, splits
from mmlens.config import Config

COMPONENTS = 64
LEARNING_RATE = 0.05
ALPHA = 1e-5
MAX_EPOCHS = 20
THREADS = 2


class ItemCodes:
    """Users and movies as LightFM's row and column numbers, and the item feature matrices."""

    def __init__(self, cfg: Config, ratings: pd.DataFrame) -> None:
        movies = pd.read_parquet(artifacts.require(cfg, "movies"))
        self.users = pd.Index(np.sort(ratings["userId"].unique()))
        self.movies = pd.Index(movies["movieId"].to_numpy())
        genres = movies["genres"].apply(list)
        vocab = pd.Index(sorted({g for gs in genres for g in gs}))
        onehot = np.zeros((len(self.movies), len(vocab)), np.float32)
        for i, gs in enumerate(genres):
            onehot[i, vocab.get_indexer(gs)] = 1.0 / max(len(gs), 1)
        index = pd.read_parquet(artifacts.require(cfg, "embedding_index", modality="text"))
        vectors = np.load(artifacts.require(cfg, "embeddings", modality="text"))
        text = np.zeros((len(self.movies), vectors.shape[1]), np.float32)
        text[self.movies.get_indexer(index["movieId"])] = vectors[index["row"].to_numpy()]
        self.content = sp.hstack([sp.csr_matrix(onehot), sp.csr_matrix(text)], format="csr")

    def features(self, with_ids: bool) -> sp.csr_matrix:
        """Genres + text, with a one-hot id column per movie first when ``with_ids``."""
        if not with_ids:
            return self.content
        ids = sp.identity(len(self.movies), dtype=np.float32, format="csr")
        return sp.hstack([ids, self.content], format="csr")

    def rows(self, part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (self.users.get_indexer(part["userId"]).astype(np.int32),
                self.movies.get_indexer(part["movieId"]).astype(np.int32))

    def interactions(self, part: pd.DataFrame) -> sp.coo_matrix:
        """+1 for a positive label, -1 for a negative one (LightFM's logistic loss)."""
        user, item = self.rows(part)
        signs = np.where(part["label"].to_numpy() > 0, 1.0, -1.0).astype(np.float32)
        return sp.coo_matrix((signs, (user, item)), shape=(len(self.users), len(self.movies)))


def auc(model: Any, codes: ItemCodes, part: pd.DataFrame, items: sp.csr_matrix) -> float:
    user, item = codes.rows(part)
    return float(roc_auc_score(part["label"], model.predict(user, item, item_features=items,
                                                              num_threads=THREADS)))


def fit_scored(split: splits.Split, codes: ItemCodes, with_ids: bool,
               seed: int) -> dict[str, float]:
    """Epochs chosen on the validation part, refit on train + valid, test AUC."""
    from lightfm import LightFM

    def model() -> Any:
        return LightFM(loss="logistic", no_components=COMPONENTS, learning_rate=LEARNING_RATE,
                       item_alpha=ALPHA, user_alpha=ALPHA, random_state=seed)

    items, first = codes.features(with_ids), model()
    train, curve = codes.interactions(split.train), []
    for _ in range(MAX_EPOCHS):
        first.fit_partial(train, item_features=items, epochs=1, num_threads=THREADS)
        curve.append(auc(first, codes, split.valid, items))
    epochs = int(np.argmax(curve)) + 1
    final = model()
    final.fit(codes.interactions(pd.concat([split.train, split.valid])), item_features=items,
              epochs=epochs, num_threads=THREADS)
    return {"valid": max(curve), "epochs": epochs, "test": auc(final, codes, split.test, items)}


def run_source(cfg: Config, source: str, seeds: tuple[int, ...]) -> dict[str, list[float]]:
    protocol.prepare(cfg, protocol.datasets_dir(), text_source=source)
    ratings = splits.add_label(pd.read_parquet(artifacts.require(cfg, "ratings")),
                               protocol.LABEL_THRESHOLD)
    pairs, cold = protocol.read_protocol(protocol.datasets_dir() / protocol.PROTOCOL_DIR)
    parts = {"warm": (protocol.warm_split(ratings, pairs, seed=cfg.seed), True),
             "cold": (protocol.cold_split(ratings, cold, seed=cfg.seed), False)}
    codes, tests = ItemCodes(cfg, ratings), {}
    for setting, (split, with_ids) in parts.items():
        tests[setting] = []
        for seed in seeds:
            start = time.perf_counter()
            r = fit_scored(split, codes, with_ids, seed)
            tests[setting].append(r["test"])
            print(f"  {source} {setting} seed {seed}: valid {r['valid']:.4f} at {r['epochs']} "
                  f"epochs, test {r['test']:.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return tests


def _run(work: Path) -> int:
    seeds = protocol.seed_range()
    for source in protocol.TEXT_SOURCES:
        tests = run_source(protocol.source_config(work, source), source, seeds)
        for setting, values in tests.items():
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"  {source} {setting}: test AUC {statistics.mean(values):.4f} "
                  f"+- {spread:.4f} over {len(values)} seeds")
            print(f"BENCH 09 lightfm_{bench_key(source)}_{setting}_auc "
                  f"{statistics.mean(values):.4f}")
    return 0


def main() -> int:
    try:
        import lightfm  # noqa: F401
    except ImportError:
        print("bench_09_lightfm needs lightfm: pip install setuptools && "
              "pip install --no-build-isolation lightfm")
        return 1
    return in_work_dir(_run)


if __name__ == "__main__":
    sys.exit(main())
