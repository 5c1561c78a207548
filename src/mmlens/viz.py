"""Figures and small tables for the notebooks, so that the notebooks only call and show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens.config import Config
from mmlens.features import neighbours
from mmlens.features.outputs import load_embeddings


def _new_figure(figsize: tuple[float, float]) -> Any:
    """A pyplot figure that notebooks display once, as the returned value.

    Made through pyplot so that Jupyter's inline backend is active and renders it; closed in pyplot
    right away so that the backend does not show it a second time at the end of the cell.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize)
    plt.close(fig)
    return fig


def _subplots(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    fig = _new_figure(figsize)
    return fig, fig.subplots(*args, **kwargs)


def _movies(cfg: Config) -> pd.DataFrame:
    return pd.read_parquet(artifacts.require(cfg, "movies"))


def long_tail(cfg: Config) -> Any:
    """Ratings per user and per movie (sorted, log scale) and the rating histogram."""
    ratings = pd.read_parquet(
        artifacts.require(cfg, "ratings"), columns=["userId", "movieId", "rating"]
    )
    fig, axes = _subplots(1, 3, figsize=(14, 3.5))
    for ax, col in zip(axes[:2], ("userId", "movieId"), strict=False):
        counts = ratings.groupby(col).size().sort_values(ascending=False).to_numpy()
        ax.plot(np.arange(1, len(counts) + 1), counts)
        ax.set(
            yscale="log", xlabel=f"{col} rank", ylabel="ratings", title=f"ratings per {col[:-2]}"
        )
    ratings["rating"].value_counts().sort_index().plot.bar(ax=axes[2], title="rating histogram")
    fig.tight_layout()
    return fig


def poster_grid(
    cfg: Config, movie_ids: Sequence[int], captions: Sequence[str] | None = None
) -> Any:
    """Posters of ``movie_ids`` side by side, titled with the movie title (or ``captions``)."""
    from PIL import Image

    titles = _movies(cfg).set_index("movieId")["title"]
    posters = artifacts.require(cfg, "posters_dir")
    fig, axes = _subplots(1, len(movie_ids), figsize=(2.1 * len(movie_ids), 3.6), squeeze=False)
    for i, (ax, movie_id) in enumerate(zip(axes[0], movie_ids, strict=True)):
        with Image.open(posters / f"{movie_id}.jpg") as img:
            ax.imshow(img.convert("RGB"))
        ax.set_title(
            captions[i] if captions else str(titles.get(movie_id, movie_id))[:20], fontsize=8
        )
        ax.axis("off")
    fig.tight_layout()
    return fig


def _neighbour_table(cfg: Config, modality: str, query_row: int, k: int) -> pd.DataFrame:
    emb, index, _ = load_embeddings(cfg, modality)
    near = neighbours.nearest(emb, index[f"has_{modality}"].to_numpy(), query_row, k)
    rows = pd.concat([pd.DataFrame({"row": [query_row], "similarity": [1.0]}), near])
    movies = _movies(cfg)
    table = rows.assign(movieId=index["movieId"].to_numpy()[rows["row"].to_numpy()]).merge(
        movies[["movieId", "title", "genres"]], on="movieId", how="left"
    )
    table.insert(0, "role", ["query"] + [f"#{i}" for i in range(1, len(table))])
    return table.reset_index(drop=True)


def poster_neighbours(cfg: Config, query_row: int, k: int = 5) -> Any:
    """The query poster beside its ``k`` nearest neighbours by cosine similarity."""
    table = _neighbour_table(cfg, "poster", query_row, k)
    captions = [f"{r.role} {r.similarity:.2f}\n{str(r.title)[:16]}" for r in table.itertuples()]
    return poster_grid(cfg, table["movieId"].tolist(), captions)


def text_neighbours(cfg: Config, query_row: int, k: int = 5) -> pd.DataFrame:
    """The query synopsis and its ``k`` nearest neighbours, with genres and each text's start."""
    table = _neighbour_table(cfg, "text", query_row, k)
    synopses = pd.read_parquet(artifacts.require(cfg, "synopses")).set_index("movieId")["synopsis"]
    table["synopsis"] = table["movieId"].map(synopses).str.slice(0, 120)
    return table.drop(columns="row")


def embedding_map(cfg: Config, modality: str, top_genres: int = 8) -> Any:
    """A 2-D PCA map of the embeddings, each movie coloured by its first genre."""
    emb, index, meta = load_embeddings(cfg, modality)
    has = index[f"has_{modality}"].to_numpy()
    coords = neighbours.project_2d(emb, has)
    first = (
        _movies(cfg)
        .set_index("movieId")
        .loc[index["movieId"], "genres"]
        .map(lambda g: g[0] if len(g) else "(none)")
        .to_numpy()
    )
    common = pd.Series(first[has]).value_counts().index[:top_genres]
    fig, ax = _subplots(figsize=(7, 5.5))
    for genre in common:
        sel = has & (first == genre)
        ax.scatter(coords[sel, 0], coords[sel, 1], s=10, alpha=0.7, label=genre)
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title(f"{modality} embeddings ({meta.get('model_id', '?')}), PCA to 2-D")
    return fig


def genre_agreement(cfg: Config, modality: str) -> dict[str, Any]:
    """Spearman correlation between embedding cosine similarity and genre Jaccard overlap."""
    emb, index, _ = load_embeddings(cfg, modality)
    genres = _movies(cfg).set_index("movieId").loc[index["movieId"], "genres"].tolist()
    return neighbours.genre_agreement(emb, index[f"has_{modality}"].to_numpy(), genres)


def training_curves(cfg: Config, split: str = "random", variant: str = "mlp") -> Any:
    """Loss and AUC per epoch, train and validation, from the saved Keras history."""
    from mmlens.train.keras_train import CURVES_SIZE, curves_figure

    keras_dir = artifacts.require(cfg, "keras_dir", split=split, variant=variant)
    history = artifacts.read_json(keras_dir / "history.json")
    return curves_figure(history, _new_figure(CURVES_SIZE))


def ablation_chart(cfg: Config) -> Any:
    """Mean test AUC per variant, warm and cold, with the spread over seeds (from notebook 09)."""
    from mmlens.train import ablation

    runs = pd.read_csv(artifacts.require(cfg, "ablation_table"))
    summary = ablation.summarize(runs)
    return ablation.plot(summary, _new_figure(ablation.figure_size(summary)))


def coverage_chart(coverage: pd.DataFrame) -> Any:
    """Stacked bars: for each modality, how many movies each source/status delivered."""
    labels = coverage["status"].where(
        coverage["status"] != "ok", "ok: " + coverage["source"].astype(str)
    )
    table = coverage.assign(outcome=labels).pivot_table(
        index="modality", columns="outcome", values="movies", aggfunc="sum", fill_value=0
    )
    fig, ax = _subplots(figsize=(8, 2.8))
    table.plot.barh(stacked=True, ax=ax, title="coverage per modality: source or failure")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig
