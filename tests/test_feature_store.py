"""Stage 05: item table, pretrained tables keyed on the catalog, labels and leak-free splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlens import artifacts, feature_store, splits
from mmlens.artifacts import MissingArtifactError
from mmlens.config import Config

DIMS = {"poster": 16, "text": 8}
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
REAL_RATINGS = Path(__file__).resolve().parents[2] / "shared/data/ml-latest-small/ratings.csv"


def write_inputs(cfg: Config, n_movies: int = 40, n_users: int = 30, seed: int = 0,
                 modalities: tuple[str, ...] = ("poster", "text")) -> None:
    """Small 01/03/04 outputs: unsorted movie ids, unrated movies, missing content, null years."""
    rng = np.random.default_rng(seed)
    movie_ids = rng.choice(np.arange(1, 10 * n_movies), n_movies, replace=False).astype("int32")
    years = pd.array([None if i % 9 == 0 else 1950 + int(rng.integers(0, 70))
                      for i in range(n_movies)], dtype="Int32")
    genres = [list(rng.choice(GENRES, int(rng.integers(0, 4)), replace=False))
              for _ in range(n_movies)]
    genres[3] = None  # a null genre list reads as no genres
    movies = pd.DataFrame({
        "movieId": movie_ids, "title": [f"Movie {i}" for i in range(n_movies)], "year": years,
        "genres": genres, "imdbId": [f"{i:07d}" for i in range(n_movies)],
        "tmdbId": pd.array(range(n_movies), dtype="Int64"),
    })
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    rated = movie_ids[: int(n_movies * 0.8)]  # the last fifth is never rated
    rows = [(u, m) for u in range(1, n_users + 1)
            for m in rng.choice(rated, int(rng.integers(4, 12)), replace=False)]
    ratings = pd.DataFrame(rows, columns=["userId", "movieId"]).astype("int32")
    ratings["rating"] = (rng.integers(1, 11, len(ratings)) / 2).astype("float32")
    ratings["timestamp"] = rng.integers(10**9, 10**9 + 10**7, len(ratings)).astype("int64")
    artifacts.write_parquet(ratings, artifacts.path(cfg, "ratings"))
    for k, m in enumerate(modalities):
        emb = rng.standard_normal((n_movies, DIMS[m])).astype("float32")
        has = rng.random(n_movies) > 0.25
        has[0] = has[-1] = True
        has[1 + k] = False
        emb[~has] = np.nan if m == "poster" else 7.0  # junk the policy must replace
        order = rng.permutation(n_movies)  # index rows in another order than the catalog
        index = pd.DataFrame({"row": np.arange(n_movies, dtype="int64")[order],
                              "movieId": movie_ids[order], f"has_{m}": has[order]})
        p = artifacts.path(cfg, "embeddings", modality=m)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, emb)
        artifacts.write_parquet(index, artifacts.path(cfg, "embedding_index", modality=m))
        artifacts.write_json(artifacts.path(cfg, "embedding_meta", modality=m),
                             {"model": f"fake-{m}", "dim": DIMS[m]})


def source_vector(cfg: Config, modality: str, movie_id: int) -> tuple[np.ndarray, bool]:
    """The 03/04 vector of one movie and its has-flag, read the way a user would."""
    emb = np.load(artifacts.path(cfg, "embeddings", modality=modality))
    index = pd.read_parquet(artifacts.path(cfg, "embedding_index", modality=modality))
    row = index.set_index("movieId").loc[movie_id]
    return emb[int(row["row"])], bool(row[f"has_{modality}"])


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    cfg = Config(data_dir=tmp_path, sample_profile="small")
    write_inputs(cfg)
    return cfg


def _parts(cfg: Config, split: str) -> tuple[dict[str, pd.DataFrame], dict]:
    return feature_store.read_split(cfg, split)


def test_items_cover_catalog_and_tables_align(cfg: Config) -> None:
    result = feature_store.run(cfg)
    movies = pd.read_parquet(artifacts.path(cfg, "movies"))
    items = pd.read_parquet(artifacts.path(cfg, "items"))
    assert items["movieId"].tolist() == movies["movieId"].tolist()  # unrated movies included
    assert len(items.loc[3, "genres"]) == 0 and items["genres"].notna().all()
    assert result["items"] == len(movies)
    for m in DIMS:
        table = np.load(artifacts.path(cfg, "pretrained", modality=m))
        assert table.dtype == np.float32 and table.shape == (len(items), DIMS[m])
        for i, movie_id in enumerate(items["movieId"]):
            vec, has = source_vector(cfg, m, int(movie_id))
            assert bool(items.loc[i, f"has_{m}"]) == has
            if has:
                assert table[i].tobytes() == vec.tobytes()
            else:
                assert not table[i].any()
        meta = artifacts.read_json(artifacts.path(cfg, "pretrained_meta", modality=m))
        assert meta["n_missing"] == int((~items[f"has_{m}"]).sum()) > 0
        assert meta["source_meta"]["model"] == f"fake-{m}"


def test_rating_counts_come_from_random_train_only(cfg: Config) -> None:
    feature_store.run(cfg)
    items = pd.read_parquet(artifacts.path(cfg, "items")).set_index("movieId")
    parts, _ = _parts(cfg, "random")
    expected = parts["train"].groupby("movieId").size()
    got = items["n_ratings"]
    assert (got.loc[expected.index] == expected).all()
    assert got.drop(expected.index).eq(0).all()
    ratings = pd.read_parquet(artifacts.path(cfg, "ratings"))
    assert got.sum() < len(ratings)


def test_mean_policy_and_pca(cfg: Config) -> None:
    feature_store.run(cfg, missing_policy="mean", pca_dim=4, modalities=("poster",))
    items = pd.read_parquet(artifacts.path(cfg, "items"))
    has = items["has_poster"].to_numpy()
    assert "has_text" not in items
    table = np.load(artifacts.path(cfg, "pretrained", modality="poster"))
    assert table.shape == (len(items), 4) and np.isfinite(table).all()
    np.testing.assert_allclose(table[~has], np.broadcast_to(table[has].mean(0), table[~has].shape),
                               atol=1e-5)
    pca = artifacts.read_json(artifacts.path(cfg, "pretrained_meta", modality="poster"))["pca"]
    ratio = pca["explained_variance_ratio"]
    assert len(ratio) == 4 and ratio == sorted(ratio, reverse=True) and 0 < sum(ratio) <= 1
    assert pca["explained_variance_total"] == pytest.approx(sum(ratio))


def test_splits_partition_ratings_with_labels(cfg: Config) -> None:
    feature_store.run(cfg, label_threshold=3.5)
    ratings = pd.read_parquet(artifacts.path(cfg, "ratings"))
    key = ["userId", "movieId"]
    for name in artifacts.SPLITS:
        parts, meta = _parts(cfg, name)
        union = pd.concat(parts.values())
        assert len(union) == len(ratings) and not union.duplicated(key).any()
        assert union.merge(ratings, on=key).shape[0] == len(ratings)
        for part, df in parts.items():
            assert df["label"].dtype == np.int8
            assert (df["label"] == (df["rating"] > 3.5)).all()
            assert meta["parts"][part]["rows"] == len(df)
            assert meta["parts"][part]["positive_rate"] == pytest.approx(df["label"].mean())
        assert meta["seed"] == cfg.seed and meta["label_threshold"] == 3.5
    parts, _ = _parts(cfg, "temporal")
    assert parts["train"]["timestamp"].max() < parts["test"]["timestamp"].min()
    assert parts["valid"]["timestamp"].min() > parts["train"]["timestamp"].max()


def test_cold_items_hold_out_movies_entirely(cfg: Config) -> None:
    feature_store.run(cfg, cold_share=0.25)
    parts, meta = _parts(cfg, "cold-items")
    test_movies = set(meta["definition"]["test_movies"])
    valid_movies = set(meta["definition"]["valid_movies"])
    assert test_movies and valid_movies and not test_movies & valid_movies
    assert set(parts["test"]["movieId"]) == test_movies
    assert set(parts["valid"]["movieId"]) == valid_movies
    assert not set(parts["train"]["movieId"]) & (test_movies | valid_movies)
    rated = pd.read_parquet(artifacts.path(cfg, "ratings"))["movieId"].nunique()
    assert len(test_movies) == round(0.25 * rated)


def test_random_split_matches_sklearn() -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    df = pd.DataFrame({"userId": np.arange(101), "movieId": np.arange(101) % 7,
                       "rating": np.linspace(0.5, 5, 101)})
    split = splits.random_split(df, seed=42)
    train, test = model_selection.train_test_split(df, test_size=0.2, random_state=42)
    assert split.test["userId"].tolist() == test["userId"].tolist()
    fit, valid = model_selection.train_test_split(train, test_size=0.1, random_state=42)
    assert split.train["userId"].tolist() == fit["userId"].tolist()
    assert split.valid["userId"].tolist() == valid["userId"].tolist()


def test_temporal_last_k_per_user() -> None:
    df = pd.DataFrame({"userId": [1] * 6 + [2] * 2 + [3] * 3,
                       "movieId": range(11), "timestamp": [5, 1, 4, 2, 6, 3, 9, 8, 1, 2, 3]})
    split = splits.temporal_split(df, seed=0, k=2)
    test = split.test.groupby("userId")["timestamp"].apply(sorted).to_dict()
    valid = split.valid.groupby("userId")["timestamp"].apply(sorted).to_dict()
    assert test == {1: [5, 6], 3: [2, 3]}  # user 2 has only k ratings: all train
    assert valid == {1: [3, 4]}
    assert sorted(split.train["timestamp"]) == [1, 1, 2, 8, 9]


def test_missing_modality_names_the_notebook(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    write_inputs(cfg, modalities=("text",))
    with pytest.raises(MissingArtifactError, match="03-Feature-Extraction-Poster"):
        feature_store.run(cfg)
    result = feature_store.run(cfg, modalities=("text",))
    assert result["modalities"] == ["text"]
    assert not artifacts.path(cfg, "pretrained", modality="poster").exists()


@pytest.mark.parametrize("options", [
    {"missing_policy": "drop"}, {"cold_share": 1.0}, {"temporal_k": 0},
    {"modalities": ("audio",)}, {"pca_dim": 0}, {"pca_dim": 10_000},
])
def test_bad_options_fail_clearly(cfg: Config, options: dict) -> None:
    with pytest.raises(ValueError):
        feature_store.run(cfg, **options)


def test_describe_reports_every_split(cfg: Config) -> None:
    feature_store.run(cfg, temporal_k=1)
    table = feature_store.describe(cfg)
    assert len(table) == 3 * 3
    cold_test = table.loc[("cold-items", "test")]
    assert cold_test["movies_unseen_in_train"] == 1.0
    items = pd.read_parquet(artifacts.path(cfg, "items")).set_index("movieId")
    for split in ("random", "temporal", "cold-items"):  # each row describes its own part
        parts, _ = _parts(cfg, split)
        for part, df in parts.items():
            row = table.loc[(split, part)]
            for flag in ("has_poster", "has_text"):
                assert row[f"rows_{flag}"] == pytest.approx(items.loc[df["movieId"], flag].mean())
            unseen = ~df["userId"].isin(parts["train"]["userId"])
            assert row["users_unseen_in_train"] == pytest.approx(unseen.mean())
    assert 0 < table.loc[("random", "train"), "rows_has_poster"] < 1


@pytest.mark.skipif(not REAL_RATINGS.exists(), reason="real ml-latest-small not available")
def test_splits_on_real_ratings() -> None:
    ratings = splits.add_label(pd.read_csv(REAL_RATINGS), 3.0)
    for split in (splits.random_split(ratings), splits.temporal_split(ratings),
                  splits.cold_items_split(ratings)):
        sizes = [len(p) for p in split.parts().values()]
        assert sum(sizes) == len(ratings) and min(sizes) > 0
    cold = splits.cold_items_split(ratings)
    assert not set(cold.train["movieId"]) & set(cold.test["movieId"])


def test_stage_runs_the_notebook_functions() -> None:
    from mmlens._nb import create_feature_store as nb

    assert feature_store.build_items is nb.build_items
    assert feature_store.pretrained_table.__module__ == "mmlens.feature_store"
    movies = pd.DataFrame({"movieId": [30, 10, 20], "year": [2001, None, 1999],
                           "genres": [["Drama"], None, []]})
    train = pd.DataFrame({"movieId": [20, 30, 20]})
    items = nb.build_items(movies, train)
    assert items["movieId"].tolist() == [30, 10, 20]  # catalog order, unrated movie kept
    assert items["n_ratings"].tolist() == [1, 0, 2] and items["genres"][1] == []
    index = pd.DataFrame({"movieId": [20, 10, 30, 10], "row": [0, 1, 2, 3],
                          "has_text": [True, True, False, True]})
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    with pytest.raises(pd.errors.MergeError):  # a duplicated movie in the index
        nb.align_to_catalog(movies["movieId"], vectors, index, "text")
    table, has = nb.align_to_catalog(movies["movieId"], vectors, index.iloc[:3], "text")
    assert table.tolist() == [[4, 5], [2, 3], [0, 1]] and has.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="have no text row"):
        nb.align_to_catalog(pd.Series([10, 99]), vectors, index.iloc[:3], "text")


def test_wider_than_the_cap_is_reduced_by_pca(cfg: Config,
                                              capsys: pytest.CaptureFixture) -> None:
    summary = feature_store.run(cfg, max_dim=8)
    assert summary["pretrained"]["poster"]["dim"] == 8  # 16-d > 8: PCA
    assert summary["pretrained"]["text"]["dim"] == DIMS["text"]  # 8-d fits
    pca = artifacts.read_json(artifacts.path(cfg, "pretrained_meta", modality="poster"))["pca"]
    assert pca["n_components"] == 8
    assert pca["n_fit_rows"] == summary["pretrained"]["poster"]["n_present"]
    out = capsys.readouterr().out
    assert "16-d -> 8-d by PCA" in out
    _, meta = _parts(cfg, "cold-items")
    assert f"{len(meta['definition']['test_movies'])} test movies held out" in out
