"""Stages 07-09: HugeCTR script generation, Keras training, evaluation and the ablation.

Importing this package is cheap; Keras and its backend load only when a model is built or trained.

- 07 :func:`mmlens.train.hugectr_script.run`
- 08 :func:`run_keras` (:func:`mmlens.train.keras_train.run`)
- 09 :func:`mmlens.train.ablation.run`
"""

from __future__ import annotations

from typing import Any

from mmlens.config import Config


def run_keras(cfg: Config, **options: Any) -> dict[str, Any]:
    """Notebook 08: train and evaluate a Keras model; options and defaults are those of
    :func:`mmlens.train.keras_train.run` (imported here lazily, with Keras)."""
    from mmlens.train import keras_train

    return keras_train.run(cfg, **options)


def recommend_for(cfg: Config, user_id: int, k: int = 10, **options: Any) -> Any:
    """Top-k movies for a raw user id from notebook 08's model; see
    :func:`mmlens.train.recommend.recommend_for`."""
    from mmlens.train import recommend

    return recommend.recommend_for(cfg, user_id, k, **options)


__all__ = ["recommend_for", "run_keras"]
