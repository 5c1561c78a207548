"""The ml-latest-small protocol: splits, text sources, the report tables, and notebook 10's
``run_protocol`` end to end on a tiny synthetic release (never on ../shared or datasets/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlens import artifacts, protocol
from mmlens.config import Config
from mmlens.errors import UserError
from mmlens.features import text


def _ratings(n_users: int = 30, n_movies: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = [(u, m) for u in range(1, n_users + 1) for m in range(1, n_movies + 1)
             if rng.random() < 0.4]
    df = pd.DataFrame(pairs, columns=["userId", "movieId"]).astype("int32")
    df["rating"] = rng.choice(np.arange(1, 11) / 2, len(df)).astype("float32")
    df["timestamp"] = np.arange(len(df), dtype=np.int64)
    return df.assign(label=(df["rating"] > 3).astype("int8"))


def test_warm_split_tests_exactly_the_protocol_pairs() -> None:
    ratings = _ratings()
    pairs = ratings.sample(frac=0.2, random_state=1)[["userId", "movieId"]].astype(np.int64)
    split = protocol.warm_split(ratings, pairs.reset_index(drop=True), seed=3)
    key = ["userId", "movieId"]

    def as_set(df: pd.DataFrame) -> set:
        return set(map(tuple, df[key].to_numpy().tolist()))

    assert as_set(split.test) == as_set(pairs)
    assert not as_set(split.valid) & as_set(split.test)
    assert not as_set(split.train) & (as_set(split.valid) | as_set(split.test))
    assert len(split.train) + len(split.valid) + len(split.test) == len(ratings)
    assert len(split.valid) == round(0.1 * (len(ratings) - len(pairs)))
    missing = pd.DataFrame({"userId": [999], "movieId": [1]})
    with pytest.raises(ValueError, match="no rating"):
        protocol.warm_split(ratings, missing, seed=3)


def test_cold_split_holds_out_whole_movies_and_a_cold_valid_set() -> None:
    ratings = _ratings()
    cold = np.array([2, 5, 7, 11, 13, 17, 19, 23])
    split = protocol.cold_split(ratings, cold, seed=3)
    test_movies, valid_movies = set(split.test["movieId"]), set(split.valid["movieId"])
    train_movies = set(split.train["movieId"])
    assert test_movies == set(cold.tolist()) & set(ratings["movieId"])
    assert not valid_movies & train_movies and not valid_movies & test_movies
    assert not train_movies & test_movies and len(valid_movies) == round(0.1 * 32)
    assert split.definition["valid_movies"] == sorted(valid_movies)
    assert len(split.train) + len(split.valid) + len(split.test) == len(ratings)


def test_read_protocol_and_missing_datasets(tmp_path: Path) -> None:
    (tmp_path / "warm_test_pairs.csv").write_text("userId,movieId\r\n1,2\r\n3,4\r\n")
    (tmp_path / "cold_movies.csv").write_text("movieId\n9\n4\n")
    pairs, cold = protocol.read_protocol(tmp_path)
    assert pairs.to_numpy().tolist() == [[1, 2], [3, 4]] and cold.tolist() == [4, 9]
    with pytest.raises(FileNotFoundError, match="datasets/ folder"):
        protocol.datasets_dir(tmp_path)


def test_metadata_text_sources(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path, dataset="ml-latest-small")
    movies = pd.DataFrame({"movieId": [1, 2, 3], "title": ["Heat", "Up", " "],
                           "year": pd.array([1995, None, 2001], dtype="Int16"),
                           "genres": [["Action", "Crime"], [], []]})
    tags = pd.DataFrame({"userId": [1, 2, 3, 4], "movieId": [1, 1, 1, 2],
                         "tag": ["heist", "Pacino", "pacino", " "], "timestamp": [0, 1, 2, 3]})
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    artifacts.write_parquet(tags, artifacts.path(cfg, "tags"))
    ids = np.array([1, 2, 3, 4])
    assert text.synopsis_texts(cfg, ids, "title+genres+tags") == [
        "Heat (1995). Genres: Action, Crime. Tags: Pacino, heist", "Up", None, None]
    assert text.synopsis_texts(cfg, ids, "title+genres")[0] == "Heat (1995). Genres: Action, Crime"
    with pytest.raises(ValueError, match="text source"):
        text.synopsis_texts(cfg, ids, "plot")


def test_baselines_read_the_readme_table(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "# Protocol\n\nText.\n\n| model | features | warm AUC | cold AUC |\n|---|---|---|---|\n"
        "| user mean | - | 0.7311 | 0.7310 |\n| LightFM (logistic loss) | ids + text | **0.8179** "
        "| 0.7854 |\n\nNote: | not a row\n")
    table = protocol.baselines(tmp_path)
    assert table.columns.tolist() == ["model", "features", "warm", "cold"]
    assert table["model"].tolist() == ["user mean", "LightFM (logistic loss)"]
    assert table["warm"].tolist() == [0.7311, 0.8179] and table["cold"].dtype == float


def test_seed_range_epoch_cap_and_text_sources_read_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(protocol.SEEDS_ENV, raising=False)
    monkeypatch.delenv(protocol.EPOCHS_ENV, raising=False)
    assert protocol.seed_range() == (1, 2, 3) and protocol.epoch_cap() is None
    monkeypatch.setenv(protocol.SEEDS_ENV, "1")
    monkeypatch.setenv(protocol.EPOCHS_ENV, "2")
    assert protocol.seed_range() == (1,) and protocol.epoch_cap() == 2
    assert protocol.seed_range(2) == (1, 2) and protocol.epoch_cap(5) == 5
    monkeypatch.delenv(protocol.SOURCES_ENV, raising=False)
    assert protocol.text_sources() == protocol.TEXT_SOURCES
    monkeypatch.setenv(protocol.SOURCES_ENV, " generated-synopsis, title+genres,title+genres ")
    assert protocol.text_sources() == ("generated-synopsis", "title+genres")
    assert protocol.text_sources(("synopsis",)) == ("synopsis",)  # the CLI's -o sources=(...)
    for bad in ("plot", ",", ("title",)):
        with pytest.raises(UserError, match="text sources must be among"):
            protocol.text_sources(bad)
    with pytest.raises(ValueError, match="at least one seed"):
        protocol.seed_range(0)
    with pytest.raises(ValueError, match="text source"):
        protocol.source_config(Path("/tmp"), "reviews")


# (text source, candidate) -> per setting (validation AUC, test AUC) offsets from the base
OFFSETS = {
    ("title+genres", "id-only"): {"warm": (0.0, 0.0), "cold": (0.0, 0.0)},
    ("title+genres", "text, all dims"): {"warm": (0.01, 0.01), "cold": (-0.005, 0.02)},
    ("title+genres", "text, 64 dims"): {"warm": (0.002, 0.005), "cold": (-0.001, 0.03)},
    ("title+genres+tags", "text, all dims"): {"warm": (0.02, 0.03), "cold": (0.02, 0.03)},
    ("title+genres+tags", "text, 64 dims"): {"warm": (0.01, 0.02), "cold": (0.03, 0.025)},
}


def _summary(n_seeds: int = 2) -> pd.DataFrame:
    """run_protocol-shaped rows of two text sources at two widths (ID-only in the first only)."""
    rows = []
    for (text_source, cand), by_setting in OFFSETS.items():
        variant = "id-only" if cand == "id-only" else "+text"
        for setting, base in (("warm", 0.80), ("cold", 0.70)):
            val, test = by_setting[setting]
            rows.append({"setting": setting, "variant": variant, "text": text_source,
                         "candidate": cand, "val_auc_mean": base + val, "auc_mean": base + test,
                         "auc_std": 0.002, "ens_auc": base + test + 0.005, "n_seeds": n_seeds})
            rows.append({"setting": setting, "variant": "popularity", "text": text_source,
                         "candidate": cand, "val_auc_mean": np.nan, "auc_mean": base - 0.1,
                         "auc_std": 0.0, "ens_auc": np.nan, "n_seeds": 1})
    return pd.DataFrame(rows)


def test_text_is_chosen_on_validation_per_source_and_setting() -> None:
    picks = protocol.chosen(_summary()).set_index(["text", "setting"])
    assert picks["chosen"].to_dict() == {
        ("title+genres", "warm"): "text, all dims", ("title+genres", "cold"): "id-only",
        ("title+genres+tags", "warm"): "text, all dims",
        ("title+genres+tags", "cold"): "text, 64 dims"}
    # the test AUC of the chosen model is reported, never used to choose
    assert picks.loc[("title+genres", "cold"), "auc_mean"] == pytest.approx(0.70)
    assert picks.loc[("title+genres+tags", "cold"), "auc_mean"] == pytest.approx(0.725)
    assert (picks["variant"] == "+text").all()
    table = protocol.widths(_summary())
    assert table.loc[("title+genres", "cold"), ("valid", "id-only")] == pytest.approx(0.70)
    assert table.loc[("title+genres+tags", "warm"), ("test", "text, 64 dims")] == \
        pytest.approx(0.82)
    assert table.loc[("title+genres+tags", "warm"), ("test", "id-only")] == pytest.approx(0.80)
    assert protocol.candidate("id-only", 64) == "id-only"
    assert protocol.candidate("+text") == "text, all dims"


def test_comparison_lifts_and_gaps() -> None:
    summary = _summary()
    table = protocol.comparison(summary)
    assert table.columns.tolist() == ["model", "features", "warm", "cold",
                                      "chosen on validation (warm / cold)"]
    # ID-only, then each source's chosen model (one model, ensemble), popularity once
    pair = ["mmlens, one model (2 seeds)", "mmlens, 2-seed ensemble"]
    assert table["model"].tolist() == pair * 3 + ["popularity"]
    assert table["features"].iloc[0] == protocol.ID_FEATURES
    assert table["features"].iloc[5].endswith("text: title+genres+tags")
    assert table["warm"].iloc[0] == "0.8000 ± 0.0020" and table["cold"].iloc[1] == "0.7050"
    assert table["cold"].iloc[2] == "0.7000 ± 0.0020"  # title+genres, cold: ID-only chosen
    assert table.iloc[2, 4] == "text, all dims / id-only"
    assert table["warm"].iloc[6] == "0.7000"
    shuffled = protocol.comparison(summary.iloc[::-1])  # e.g. rows read back from json
    assert shuffled["features"].iloc[0] == protocol.ID_FEATURES
    assert shuffled["model"].iloc[-1] == "popularity"
    single = protocol.comparison(_summary(n_seeds=1))
    assert "ensemble" not in " ".join(single["model"]) and len(single) == 4
    lift = protocol.lifts(summary).set_index(["text", "setting"])
    assert lift.loc[("title+genres", "cold"), "lift"] == 0.0  # ID-only chosen: equal
    assert lift.loc[("title+genres+tags", "warm"), "ens_lift"] == pytest.approx(0.03)
    assert lift.loc[("title+genres+tags", "cold"), "chosen"] == "text, 64 dims"
    assert lift["spread"].tolist() == [0.002] * 4
    base = pd.DataFrame({"model": ["a", "b"], "features": ["x", "y"], "warm": [0.79, 0.81],
                         "cold": [0.75, 0.70]})
    gaps = protocol.against_baselines(summary, base).set_index("setting")
    assert gaps.loc["warm", "best baseline"] == "b: y"
    assert gaps.loc["warm", "gap"] == pytest.approx(0.83 - 0.81)
    assert gaps.loc["cold", "ens_gap"] == pytest.approx(0.73 - 0.75)
    assert gaps.loc["cold", "chosen"] == "text, 64 dims"
    no_tags = protocol.against_baselines(summary[summary["text"] == "title+genres"], base)
    assert no_tags.empty and no_tags.columns.tolist() == gaps.reset_index().columns.tolist()


def test_run_on_real_synopses_alone_prints_every_table(tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m mmlens 10 -o sources="('synopsis',)"``: a run without the baselines' text."""
    from mmlens._nb import real_data_protocol

    seen: dict[str, object] = {}

    def trained(work_dir: Path, datasets: Path, seeds: tuple[int, ...], **kw: object):
        seen.update(seeds=seeds, **kw)
        rows = _summary()
        return rows[rows["text"] == "title+genres"].assign(text=protocol.SYNOPSIS)

    monkeypatch.setattr(real_data_protocol, "run_protocol", trained)
    monkeypatch.setenv(protocol.SOURCES_ENV, "title+genres+tags")  # the argument wins
    cfg = Config(data_dir=tmp_path, dataset=protocol.RELEASE_DIR)
    summary = protocol.run(cfg, seeds=1, epochs=1, sources=(protocol.SYNOPSIS,))
    assert seen["sources"] == (protocol.SYNOPSIS,) and seen["seeds"] == (1,)
    assert seen["epochs"] == 1 and set(summary["text"]) == {protocol.SYNOPSIS}
    out = capsys.readouterr().out
    assert "text: synopsis" in out and "not in this run" in out
    assert (tmp_path / "protocol" / protocol.METRICS_FILE).is_file()


def test_choice_steps_show_each_comparison_and_its_noise() -> None:
    summary = _summary()
    steps = protocol.choice_steps(summary)
    tags_cold = steps[(steps["text"] == "title+genres+tags") & (steps["setting"] == "cold")]
    assert tags_cold[["choice", "candidate", "replaces"]].values.tolist() == [
        ["id-only", "text, all dims", True], ["text, all dims", "text, 64 dims", True]]
    assert tags_cold["lead"].tolist() == pytest.approx([0.02, 0.01])
    assert (steps["movie_se"] == 0).all()  # no val_boot: the seeds' spread alone (absent: 0)
    # the same 64-d lead of 0.01 inside the validation movies' noise keeps every dimension
    rng = np.random.default_rng(0)
    base = rng.normal(0.7, 0.01, 300)
    noisy = {"text, 64 dims": base + rng.normal(0.0, 0.02, 300)}
    boots = [noisy.get(c, base) if v != "popularity" else None
             for c, v in zip(summary["candidate"], summary["variant"], strict=True)]
    with_noise = summary.assign(val_boot=pd.Series(boots, dtype=object))
    steps = protocol.choice_steps(with_noise).set_index(["text", "setting", "candidate"])
    step = steps.loc[("title+genres+tags", "cold", "text, 64 dims")]
    assert step["movie_se"] == pytest.approx(0.02, rel=0.2) and not step["replaces"]
    picks = protocol.chosen(with_noise).set_index(["text", "setting"])
    assert picks.loc[("title+genres+tags", "cold"), "chosen"] == "text, all dims"


def test_metrics_record_the_choice(tmp_path: Path) -> None:
    saved = json.loads(protocol.write_metrics(tmp_path / "m.json", _summary()).read_text())
    assert saved["chosen_on_validation"]["title+genres/cold"]["chosen"] == "id-only"
    assert len(saved["summary"]) == len(_summary())
    boots = pd.Series([np.zeros(3)] * len(_summary()), dtype=object)
    saved = json.loads(protocol.write_metrics(tmp_path / "b.json",
                                              _summary().assign(val_boot=boots)).read_text())
    assert "val_boot" not in saved["summary"][0]  # the arrays stay out of the JSON


def _release(root: Path, n_users: int = 40, n_movies: int = 30) -> Path:
    """A tiny ml-latest-small-shaped release and protocol under ``root``."""
    rng = np.random.default_rng(7)
    release, proto = root / protocol.RELEASE_DIR, root / protocol.PROTOCOL_DIR
    release.mkdir(parents=True)
    proto.mkdir()
    genres = ["Comedy", "Drama", "Horror", "Action|Thriller"]
    movies = pd.DataFrame({"movieId": np.arange(1, n_movies + 1),
                           "title": [f"Movie {i} ({1980 + i})" for i in range(1, n_movies + 1)],
                           "genres": [genres[i % 4] for i in range(n_movies)]})
    taste = rng.normal(size=n_users)
    rows = [(u, m, float(np.clip(np.round(2 * (3 + taste[u - 1] * (m % 4 - 1.5) / 2
                                                 + rng.normal(0, 0.7))) / 2, 0.5, 5)), 1000 + m)
            for u in range(1, n_users + 1) for m in range(1, n_movies + 1) if rng.random() < 0.6]
    ratings = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    movies.to_csv(release / "movies.csv", index=False)
    ratings.to_csv(release / "ratings.csv", index=False)
    pd.DataFrame({"movieId": movies["movieId"], "imdbId": [f"{i:07d}" for i in movies["movieId"]],
                  "tmdbId": movies["movieId"] + 100}).to_csv(release / "links.csv", index=False)
    pd.DataFrame({"userId": [1, 2, 3], "movieId": [1, 1, 5], "tag": ["funny", "cult", "gory"],
                  "timestamp": [5, 6, 7]}).to_csv(release / "tags.csv", index=False)
    ratings.sample(frac=0.2, random_state=1)[["userId", "movieId"]].to_csv(
        proto / "warm_test_pairs.csv", index=False)
    pd.DataFrame({"movieId": [3, 8, 13, 21, 26]}).to_csv(proto / "cold_movies.csv", index=False)
    return root


@pytest.mark.slow
def test_run_protocol_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmlens._nb.real_data_protocol import run_protocol
    from mmlens.train import ablation, evaluate

    datasets = _release(tmp_path / "datasets")
    calls: list[tuple[np.ndarray, list[np.ndarray], dict[str, float]]] = []
    original = ablation.seed_ensemble

    def recording(labels: np.ndarray, probs: list[np.ndarray]) -> dict[str, float]:
        calls.append((labels, list(probs), out := original(labels, probs)))
        return out

    monkeypatch.setattr(ablation, "seed_ensemble", recording)
    summary = run_protocol(tmp_path / "work", datasets, (1, 2), widths=(None, 8), epochs=1,
                           patience=1, refit=False)
    models = summary[summary["variant"] != "popularity"]
    assert sorted(zip(models["candidate"], models["text"], models["setting"], strict=True)) == \
        sorted([("id-only", "title+genres", s) for s in ("warm", "cold")]
               + [(f"text, {w} dims", t, s) for t in protocol.TEXT_SOURCES for w in ("all", 8)
                  for s in ("warm", "cold")])
    assert (models["n_seeds"] == 2).all() and models["auc_mean"].between(0, 1).all()
    # the seed ensemble scores the mean of the two seeds' probabilities on the same test rows
    assert len(calls) == len(models)
    for labels, probs, out in calls:
        assert len(probs) == 2 and all(p.shape == labels.shape for p in probs)
        assert out["auc"] == pytest.approx(evaluate.auc(labels, (probs[0] + probs[1]) / 2))
    assert sorted(models["ens_auc"]) == pytest.approx(sorted(out["auc"] for *_, out in calls))
    # ... and its members are the seeds' own test predictions: their AUCs average to auc_mean
    seed_means = [np.mean([evaluate.auc(labels, p) for p in probs]) for labels, probs, _ in calls]
    assert sorted(models["auc_mean"]) == pytest.approx(sorted(seed_means))
    pairs = pd.read_csv(datasets / protocol.PROTOCOL_DIR / "warm_test_pairs.csv")
    assert len(calls[0][0]) == len(pairs)  # the first call: warm, ID-only, on the protocol's pairs
    on_pairs = sum(len(labels) == len(pairs) for labels, *_ in calls)
    assert on_pairs == (models["setting"] == "warm").sum()  # every warm model, no cold one
    texts = [text.synopsis_texts(protocol.source_config(tmp_path / "work", s), np.array([1]), s)[0]
             for s in protocol.TEXT_SOURCES]
    assert texts[:2] == ["Movie 1 (1981). Genres: Comedy",
                         "Movie 1 (1981). Genres: Comedy. Tags: cult, funny"]
    assert "Movie 1" not in texts[2] and len(texts[2].split()) > 15  # synopsis-shaped
    assert len(protocol.comparison(summary)) == 9
    assert set(protocol.chosen(summary)["chosen"]) <= {"id-only", "text, all dims", "text, 8 dims"}


@pytest.mark.slow
def test_real_synopses_come_from_a_user_table(tmp_path: Path) -> None:
    datasets = _release(tmp_path / "datasets")
    cfg = protocol.source_config(tmp_path / "work", protocol.SYNOPSIS)
    with pytest.raises(UserError, match="synopses="):
        protocol.prepare(cfg, datasets, text_source=protocol.SYNOPSIS)
    table = tmp_path / "overviews.csv"
    pd.DataFrame({"movieId": [1, 2, 3],
                  "synopsis": ["A toy cowboy meets a space ranger.", "", "A heist goes wrong."]}
                 ).to_csv(table, index=False)
    protocol.prepare(cfg, datasets, text_source=protocol.SYNOPSIS, synopses=table)
    ids = np.array([1, 2, 3, 4])
    assert text.synopsis_texts(cfg, ids, protocol.SYNOPSIS) == [
        "A toy cowboy meets a space ranger.", None, "A heist goes wrong.", None]
    meta = json.loads(artifacts.path(cfg, "pretrained_meta", modality="text").read_text())
    # the store's text table is this source's: movies 1 and 3 have a vector, the others none
    assert meta["source_meta"]["text_source"] == protocol.SYNOPSIS
    assert meta["n_present"] == 2 and meta["n_missing"] == meta["n_items"] - 2
