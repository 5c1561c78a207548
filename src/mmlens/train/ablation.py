"""Stage 09: do pretrained embeddings help? Warm (random split) and cold (cold-items split).

Every variant is the same MLP; only the content tables differ. ``id-only`` means no pretrained
content (user, movie, genres and year embeddings only). Each variant trains once per seed; the
table reports mean and standard deviation of test AUC and logloss, beside the popularity baseline,
and the seed ensemble: the same seeds' models averaged (mean predicted probability), scored once.
The variants, the training loop and the seed ensemble are notebook 09's ``#@save`` cells
(:mod:`mmlens._nb.do_pretrained_embeddings_help`); this module checks, summarises and writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens._nb.do_pretrained_embeddings_help import (
    DRAWS,
    SETTINGS,
    VARIANTS,
    choice_steps,
    choose_on_validation,
    movie_bootstrap,
    nested_candidates,
    seed_ensemble,
    train_runs,
)
from mmlens.config import Config
from mmlens.train import data, evaluate

__all__ = ["DRAWS", "SETTINGS", "VARIANTS", "choice_steps", "choose_on_validation",
           "movie_bootstrap", "nested_candidates", "run", "seed_ensemble", "summarize",
           "with_ensembles"]
FIGURE_NAME = "09-ablation.png"


def run(
    cfg: Config,
    *,
    seeds: Sequence[int] = (1, 2, 3),
    variants: Sequence[str] = ("id-only", "+poster", "+text", "+both"),
    splits: Sequence[str] = ("random", "cold-items"),
    fine_tune: bool = False,
    epochs: int = 4,
    batch_size: int = 512,
    lr: float = 2e-3,
    patience: int = 2,
    model_options: dict[str, Any] | None = None,
    unseen_items: str = "zero",
    refit: bool = False,
    rating_mix: float = 0.0,
    average: tuple[int, int] | None = None,
    write: bool = True,
    print_table: bool = True,
) -> pd.DataFrame:
    """Train every variant x seed on each split (notebook 09's :func:`train_runs`); return mean/std
    per (setting, variant), the seed ensemble's ``ens_auc`` / ``ens_logloss``
    (:func:`seed_ensemble`) and ``val_boot``, the :func:`movie_bootstrap` of the seeds' mean
    validation predictions (an array per row: what :func:`choose_on_validation` pairs), beside
    the popularity baseline.

    Writes ``metrics/09.json`` (summary, runs, and per variant the one chosen on validation:
    :func:`choose_on_validation` over :func:`nested_candidates`), ``metrics/09-ablation.csv``
    (one row per run) and ``figures/09-ablation.png``. ``fine_tune=True`` lets the pretrained
    tables train too; ``model_options``, ``unseen_items``, ``refit``, ``rating_mix`` and
    ``average`` go to :func:`keras_train.train_and_evaluate` (default: the cold-aware model,
    movies unseen in train as unknown, no refit on train + valid, no weight averaging).
    ``write=False`` only returns the summary (e.g. a fine-tuned comparison beside the frozen
    results already written). Prints what it trained and
    (``print_table``) the summary table.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    loaded = {split: data.require_split(cfg, split) for split in splits}
    for split, (_, schema) in loaded.items():
        for variant in variants:
            missing = [m for m in VARIANTS[variant] if m not in schema["pretrained"]]
            if missing:
                raise ValueError(f"variant {variant!r} needs {missing}, absent from etl/{split}")
    start = time.perf_counter()
    runs, scores = train_runs(
        cfg, splits, variants, seeds, epochs=epochs, batch_size=batch_size, lr=lr,
        patience=patience, fine_tune=fine_tune, model_options=model_options,
        unseen_items=unseen_items, refit=refit, rating_mix=rating_mix, average=average)
    popularity = [{"split": split, "setting": SETTINGS.get(split, split), "variant": "popularity",
                   "seed": -1, **_popularity(etl_dir, schema)}
                  for split, (etl_dir, schema) in loaded.items()]
    runs = pd.concat([runs, pd.DataFrame(popularity)], ignore_index=True)
    summary = with_ensembles(summarize(runs), {
        (SETTINGS.get(split, split), variant): seed_ensemble(labels, probs)
        for (split, variant, part), (labels, probs) in scores.items() if part == "test"})
    summary["val_boot"] = pd.Series(validation_bootstraps(summary, loaded, scores),
                                    index=summary.index, dtype=object)
    if write:
        _write(cfg, runs, summary, fine_tune)
    print(f"09 ablation: {len(splits) * len(variants) * len(seeds)} models ({len(splits)} splits "
          f"x {len(variants)} variants x {len(seeds)} seeds"
          f"{', tables fine-tuned' if fine_tune else ''}) trained and scored in "
          f"{time.perf_counter() - start:.0f} s" + ("" if write else " (not written)"))
    if print_table:
        print(summary.drop(columns="val_boot").to_string(index=False,
                                                         float_format=lambda x: f"{x:.4f}"))
    return summary


def validation_bootstraps(summary: pd.DataFrame, loaded: dict[str, tuple[Any, dict[str, Any]]],
                          scores: dict[Any, Any]) -> list[np.ndarray | None]:
    """Per summary row, the :func:`movie_bootstrap` of its seeds' mean validation predictions
    (None for the popularity baseline, which has none)."""
    boots = {}
    for (split, variant, part), (labels, probs) in scores.items():
        if part == "valid":
            etl_dir, schema = loaded[split]
            movies = data.read_frame(data.part_dir(etl_dir, schema, "valid"), [data.ITEM_SLOT])
            boots[SETTINGS.get(split, split), variant] = movie_bootstrap(
                labels, np.mean(np.stack(probs), axis=0), movies[data.ITEM_SLOT].to_numpy())
    return [boots.get(key) for key in zip(summary["setting"], summary["variant"], strict=True)]


def _popularity(etl_dir: Any, schema: dict[str, Any]) -> dict[str, float]:
    cols = ["movieId", schema["label"]]
    train = data.read_frame(data.part_dir(etl_dir, schema, "train"), cols)
    test = data.read_frame(data.part_dir(etl_dir, schema, "test"), cols)
    m = evaluate.popularity_baseline(train, test, label_col=schema["label"])
    return {"auc": m["auc"], "logloss": m["logloss"], "epochs_run": 0}


def with_ensembles(summary: pd.DataFrame,
                   ensembles: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    """``summary`` plus ``ens_auc`` / ``ens_logloss`` per (setting, variant); NaN without one."""
    out = summary.copy()
    keys = list(zip(out["setting"], out["variant"], strict=True))
    for col in ("auc", "logloss"):
        out[f"ens_{col}"] = [ensembles[k][col] if k in ensembles else np.nan for k in keys]
    return out


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof=0) of test AUC and logloss per setting and variant
    (and of the best validation AUC when the runs have it)."""
    grouped = runs.groupby(["setting", "variant"], sort=False)
    stats = {"auc_mean": ("auc", "mean"), "auc_std": ("auc", lambda x: x.std(ddof=0)),
             "logloss_mean": ("logloss", "mean"),
             "logloss_std": ("logloss", lambda x: x.std(ddof=0))}
    if "val_auc" in runs:
        stats["val_auc_mean"] = ("val_auc", "mean")
        stats["val_auc_std"] = ("val_auc", lambda x: x.std(ddof=0))
    out = grouped.agg(**stats, n_seeds=("seed", "nunique"))
    return out.reset_index()


def _write(cfg: Config, runs: pd.DataFrame, summary: pd.DataFrame, fine_tune: bool) -> None:
    table = artifacts.path(cfg, "ablation_table")
    with artifacts.atomic_path(table) as tmp:
        runs.to_csv(tmp, index=False)
    nested: dict[str, Any] = {"fine_tune": fine_tune}
    for rec in summary.to_dict("records"):
        nested.setdefault(rec["setting"], {})[rec["variant"]] = {
            k: rec[k] for k in ("auc_mean", "auc_std", "logloss_mean", "logloss_std", "n_seeds",
                                "ens_auc", "ens_logloss") if k in rec}
    variants = [v for v in VARIANTS if v in set(summary["variant"])]
    chosen = choose_on_validation(summary, nested_candidates(variants))
    nested["chosen_on_validation"] = {
        f"{rec['setting']}/{rec['variant']}": evaluate.clean(
            {k: rec[k] for k in ("chosen", "val_auc_mean", "auc_mean", "auc_std", "ens_auc")})
        for rec in chosen.to_dict("records")}
    nested["runs"] = [evaluate.clean(r) for r in runs.to_dict("records")]
    artifacts.write_json(artifacts.path(cfg, "metrics", stage="09"),
                         {k: evaluate.clean(v) if isinstance(v, dict) else v
                          for k, v in nested.items()})
    with artifacts.atomic_path(artifacts.path(cfg, "figures") / FIGURE_NAME) as tmp:
        plot(summary).savefig(tmp, format="png", dpi=100)


def figure_size(summary: pd.DataFrame) -> tuple[float, float]:
    return (1.4 * summary["variant"].nunique() + 2, 3.5)


def plot(summary: pd.DataFrame, fig: Any = None) -> Any:
    """Grouped bar chart of mean test AUC (error bars: std over seeds) per variant and setting,
    drawn on ``fig`` (a new pyplot-free Figure when None)."""
    if fig is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figure_size(summary))
    settings = list(dict.fromkeys(summary["setting"]))
    variants = list(dict.fromkeys(summary["variant"]))
    width = 0.8 / max(len(settings), 1)
    ax = fig.subplots()
    x = np.arange(len(variants))
    for i, setting in enumerate(settings):
        part = summary[summary["setting"] == setting].set_index("variant").reindex(variants)
        ax.bar(x + i * width, part["auc_mean"], width, yerr=part["auc_std"].fillna(0),
               label=setting, capsize=3)
    ax.set_xticks(x + width * (len(settings) - 1) / 2, variants)
    ax.set_ylabel("test AUC")
    lo = float(np.nanmin(summary["auc_mean"])) if len(summary) else 0.5
    ax.set_ylim(max(0.0, min(0.5, lo - 0.05)), 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_title("Do pretrained embeddings help?")
    ax.legend()
    fig.tight_layout()
    return fig
