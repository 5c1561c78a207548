"""Stages 07-09 in Keras on a small synthetic ETL output: data, models, training, recommend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmlens import artifacts, capabilities
from mmlens.artifacts import MissingArtifactError
from mmlens.config import Config
from mmlens.train import data, recommend

sys.path.insert(0, str(Path(__file__).parent))
from etl_fixture import make_etl, raw_id  # noqa: E402

keras = pytest.importorskip("keras")
from mmlens.train import ablation, evaluate, keras_train, layers, models  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = Config(data_dir=tmp_path_factory.mktemp("data"), sample_profile="small", seed=5)
    dirs = make_etl(cfg)
    schemas = {s: data.load_schema(d / "schema.json") for s, d in dirs.items()}
    tables = {s: data.load_tables(d, schemas[s]) for s, d in dirs.items()}
    return {"cfg": cfg, "dirs": dirs, "schemas": schemas, "tables": tables}


def _ds(world: dict[str, Any], part: str, split: str = "random", **kw: Any) -> Any:
    return data.make_dataset(world["dirs"][split] / part, world["schemas"][split], **kw)


def test_streamed_dataset_equals_in_memory(world: dict[str, Any]) -> None:
    mem = list(_ds(world, "train", batch_size=64, in_memory=True))
    stream = list(_ds(world, "train", batch_size=64, in_memory=False))
    assert len(mem) == len(stream)
    for (fm, ym), (fs, ys) in zip(mem, stream, strict=True):
        assert set(fm) == set(fs) == {"userId", "movieId", "genres", "year", "poster", "text",
                                      "has_poster", "has_text"}
        for key in fm:
            np.testing.assert_array_equal(fm[key].numpy(), fs[key].numpy())
        np.testing.assert_array_equal(ym.numpy(), ys.numpy())
    assert mem[0][0]["genres"].shape[1] == 3  # multi-hot padded to hotness


def test_pad_lists_and_masked_mean() -> None:
    padded = data.pad_lists([[5, 6], None, [7, 8, 9, 10]], 3)
    assert padded.tolist() == [[5, 6, 0], [0, 0, 0], [7, 8, 9]]
    vectors = np.arange(18, dtype="float32").reshape(3, 3, 2)
    out = np.asarray(layers.MaskedMean()([padded, vectors]))
    np.testing.assert_allclose(out[0], vectors[0, :2].mean(0))
    np.testing.assert_allclose(out[1], [0, 0])  # all padding: zero, not NaN
    np.testing.assert_allclose(out[2], vectors[2].mean(0))


def test_frozen_tables_unchanged_while_model_learns(world: dict[str, Any]) -> None:
    schema, tables = world["schemas"]["random"], world["tables"]["random"]
    keras_train.set_seed(0)
    model = models.build_mlp(schema, tables, emb_dim=8, mlp=(32,))
    before = {m: model.get_layer(f"pretrained_{m}").get_weights()[0].copy() for m in tables}
    user_before = model.get_layer("emb_userId").get_weights()[0].copy()
    for m in tables:  # stored with unit rows (normalize=True), the same direction as given
        np.testing.assert_allclose(before[m], models.unit_rows(tables[m]), rtol=1e-6)
        assert not model.get_layer(f"pretrained_{m}").trainable
    models.compile_model(model, lr=1e-2)
    history = keras_train.fit(model, _ds(world, "train", batch_size=64, shuffle=True),
                              _ds(world, "valid", batch_size=256), epochs=6, patience=10)
    for m in tables:
        after = model.get_layer(f"pretrained_{m}").get_weights()[0]
        assert after.tobytes() == before[m].tobytes()
    assert not np.array_equal(model.get_layer("emb_userId").get_weights()[0], user_before)
    assert history["loss"][-1] < 0.9 * history["loss"][0]


def test_fine_tune_moves_the_tables(world: dict[str, Any]) -> None:
    schema, tables = world["schemas"]["random"], world["tables"]["random"]
    model = models.build_mlp(schema, tables, modalities=("text",), emb_dim=4, mlp=(8,),
                             trainable_tables=True)
    models.compile_model(model, lr=1e-2)
    model.fit(_ds(world, "train", batch_size=64, modalities=("text",)), epochs=1, verbose=0,
              shuffle=False)
    assert model.get_layer("pretrained_text").trainable
    assert not np.array_equal(model.get_layer("pretrained_text").get_weights()[0], tables["text"])


def test_wide_deep_roundtrips_through_keras_file(world: dict[str, Any], tmp_path: Path) -> None:
    schema, tables = world["schemas"]["random"], world["tables"]["random"]
    model = models.build_wide_deep(schema, tables, emb_dim=4, mlp=(8,))
    keras_train.fit(model, _ds(world, "train", batch_size=128), _ds(world, "valid"), epochs=1,
                    out_dir=tmp_path)
    assert (tmp_path / "history.json").exists() and (tmp_path / "curves.png").exists()
    saved = models.save_model(model, tmp_path)
    again = models.load_model(saved)
    test = _ds(world, "test", batch_size=256)
    p1, p2 = keras_train.predict(model, test), keras_train.predict(again, test)
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    assert ((p1 > 0) & (p1 < 1)).all()


def test_unknown_modality_variant_and_option_raise(world: dict[str, Any]) -> None:
    schema, tables = world["schemas"]["random"], world["tables"]["random"]
    with pytest.raises(ValueError, match="audio"):
        models.build_mlp(schema, tables, modalities=("audio",))
    with pytest.raises(ValueError, match="variant"):
        models.build("transformer", schema, tables)
    with pytest.raises(TypeError, match="emb_size"):  # a misspelt option is not ignored
        models.build_wide_deep(schema, tables, emb_size=4)


def test_run_keras_writes_model_history_and_metrics(world: dict[str, Any]) -> None:
    from mmlens.train import recommend_for, run_keras

    cfg = world["cfg"]
    out = run_keras(cfg, epochs=2, batch_size=128)
    keras_dir = artifacts.path(cfg, "keras_dir", split="random", variant="mlp")
    for name in ("model.keras", "history.json", "curves.png", "best.weights.h5"):
        assert (keras_dir / name).exists(), name
    saved = json.loads(artifacts.path(cfg, "metrics", stage="08").read_text())
    assert saved["random"]["mlp"]["auc"] == pytest.approx(out["auc"])
    assert 0 <= out["hr@10"] <= 1 and 0 <= out["ndcg@10"] <= out["hr@10"]
    assert out["rows"] == world["schemas"]["random"]["rows"]["test"]
    rated = recommend.rated_movies(world["dirs"]["random"], world["schemas"]["random"], raw_id(5))
    recs = recommend_for(cfg, user_id=raw_id(5), k=3)
    assert len(recs) == 3 and not set(recs["movieId"]) & set(rated)


def test_run_keras_ensemble_saves_the_average_of_its_members(world: dict[str, Any]) -> None:
    from mmlens.train import run_keras

    cfg, split = world["cfg"], "cold-items"
    etl_dir, schema = world["dirs"][split], world["schemas"][split]
    out = run_keras(cfg, split=split, variant="wide_deep", epochs=1, batch_size=128,
                    ranking=False, ensemble=2, average=(1, 1))
    assert out["ensemble"] == 2 and [m["auc"] for m in out["members"]] != [out["auc"]] * 2
    assert [m["average"] for m in out["members"]] == [[1, 1]] * 2
    model = models.load_model(artifacts.path(cfg, "keras_dir", split=split,
                                                  variant="wide_deep") / "model.keras")
    members = [model.get_layer(f"wide_deep_seed{s}") for s in (cfg.seed, cfg.seed + 1)]
    feats, labels = data.read_part(data.part_dir(etl_dir, schema, "test"), schema)
    each = [models.predict_features(m, feats) for m in members]
    np.testing.assert_allclose(models.predict_features(model, feats),
                               (each[0] + each[1]) / 2, atol=1e-6)
    assert evaluate.auc(labels, (each[0] + each[1]) / 2) == pytest.approx(out["auc"], abs=1e-6)
    assert ablation.seed_ensemble(labels, each)["auc"] == pytest.approx(out["auc"], abs=1e-6)
    with pytest.raises(ValueError, match="ensemble"):
        run_keras(cfg, split=split, ensemble=0)
    with pytest.raises(ValueError, match="distinct names"):
        models.average([members[0], members[0]])


def test_stage_07_falls_back_to_keras(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mmlens.train import hugectr_script

    monkeypatch.setattr(capabilities, "has_hugectr", lambda: False)
    out = hugectr_script.run(world["cfg"], epochs=1, batch_size=256, mlp=(16,))
    assert "HugeCTR is not available" in capsys.readouterr().out
    assert out["engine"] == "keras" and 0 <= out["auc"] <= 1
    saved = json.loads(artifacts.path(world["cfg"], "metrics", stage="07").read_text())
    assert saved["random"]["engine"] == "keras"


def test_stage_07_without_hugectr_trains_even_when_a_table_is_too_wide(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from etl_fixture import FixtureSpec

    from mmlens.train import hugectr_script

    cfg = Config(data_dir=tmp_path)
    make_etl(cfg, FixtureSpec(n_users=10, n_movies=12, dims={"poster": 1030}), splits=("random",))
    monkeypatch.setattr(capabilities, "has_hugectr", lambda: False)
    out = hugectr_script.run(cfg, epochs=1, batch_size=256, mlp=(4,), emb_dim=4)
    assert out["script"] is None and "PCA" in out["script_error"]
    assert "PCA" in capsys.readouterr().out and 0 <= out["auc"] <= 1
    monkeypatch.setattr(capabilities, "has_hugectr", lambda: True)
    with pytest.raises(hugectr_script.ScriptInputError, match="PCA"):
        hugectr_script.run(cfg, epochs=1)


def test_recommend_ranks_every_catalog_movie(world: dict[str, Any]) -> None:
    etl_dir, schema = world["dirs"]["cold-items"], world["schemas"]["cold-items"]
    model = models.build_mlp(schema, world["tables"]["cold-items"], emb_dim=4, mlp=(8,))
    items = recommend.catalog_items(etl_dir, schema)
    mapping = recommend.load_category_mapping(etl_dir / "workflow", "movieId")
    assert len(items) == len(mapping) == schema["slots"][1]["cardinality"] - 3
    cold = set(schema["cold_movie_codes"])
    assert set(items.loc[~items["in_train"], "movieId"]) == cold
    user = raw_id(5)
    everything = recommend.recommend(model, schema, user, k=len(items), items=items,
                                     workflow_dir=etl_dir / "workflow")
    assert sorted(everything["code"]) == sorted(items["movieId"])
    assert (everything["movieId"] == everything["code"].map(raw_id)).all()
    assert set(everything.loc[everything["cold"], "code"]) == cold
    assert everything["score"].is_monotonic_decreasing
    assert everything["rank"].tolist() == list(range(1, len(items) + 1))
    rated = recommend.rated_movies(etl_dir, schema, user)
    assert rated
    top = recommend.recommend(model, schema, user, k=5, items=items,
                              workflow_dir=etl_dir / "workflow", exclude=rated)
    assert len(top) == 5 and not set(top["movieId"]) & set(rated)


def test_ablation_writes_table_and_figure(world: dict[str, Any]) -> None:
    cfg = world["cfg"]
    summary = ablation.run(cfg, seeds=(1,), variants=("id-only", "+both"), epochs=1,
                           batch_size=256)
    assert isinstance(summary, pd.DataFrame)
    assert set(summary["setting"]) == {"warm", "cold"}
    assert set(summary["variant"]) == {"id-only", "+both", "popularity"}
    runs = pd.read_csv(artifacts.path(cfg, "ablation_table"))
    assert len(runs) == 2 * 2 + 2 and runs["auc"].between(0, 1).all()
    saved = json.loads(artifacts.path(cfg, "metrics", stage="09").read_text())
    assert saved["cold"]["+both"]["auc_mean"] == pytest.approx(
        runs.loc[(runs["setting"] == "cold") & (runs["variant"] == "+both"), "auc"].iloc[0])
    # one seed: the "ensemble" is that model, scored again on the same rows
    assert saved["cold"]["+both"]["ens_auc"] == pytest.approx(saved["cold"]["+both"]["auc_mean"])
    assert summary.set_index(["setting", "variant"])["ens_auc"].isna().sum() == 2  # popularity
    boots = summary.set_index(["setting", "variant"])["val_boot"]
    assert boots[("cold", "popularity")] is None
    assert all(boots[(s, v)].shape == (ablation.DRAWS,) for s in ("warm", "cold")
               for v in ("id-only", "+both"))
    picked = saved["chosen_on_validation"]
    assert set(picked) == {f"{s}/{v}" for s in ("warm", "cold") for v in ("id-only", "+both")}
    assert picked["warm/id-only"]["chosen"] == "id-only"  # nothing smaller to choose
    by_variant = summary.set_index(["setting", "variant"])
    for key, rec in picked.items():  # each record holds the numbers of the row it chose
        setting, chosen = key.split("/")[0], rec["chosen"]
        assert rec["auc_mean"] == pytest.approx(saved[setting][chosen]["auc_mean"])
        assert rec["val_auc_mean"] == pytest.approx(by_variant.loc[(setting, chosen),
                                                                   "val_auc_mean"])
        if chosen != "id-only":  # content replaces ID-only only with a validation lead
            assert rec["val_auc_mean"] > by_variant.loc[(setting, "id-only"), "val_auc_mean"]
    assert (artifacts.path(cfg, "figures") / ablation.FIGURE_NAME).stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown variants"):
        ablation.run(cfg, variants=("+audio",))
    written = artifacts.path(cfg, "metrics", stage="09").read_bytes()
    tuned = ablation.run(cfg, seeds=(1,), variants=("+both",), splits=("cold-items",), epochs=1,
                         batch_size=256, fine_tune=True, write=False)
    assert set(tuned["variant"]) == {"+both", "popularity"} and set(tuned["setting"]) == {"cold"}
    assert artifacts.path(cfg, "metrics", stage="09").read_bytes() == written


def test_seed_ensemble_averages_probabilities() -> None:
    labels = np.array([0, 0, 1, 1], np.float32)
    # each model alone mis-ranks one pair; their mean ranks every pair right
    a, b = np.array([0.1, 0.6, 0.5, 0.9]), np.array([0.5, 0.1, 0.9, 0.4])
    assert ablation.seed_ensemble(labels, [a])["auc"] == pytest.approx(0.75)
    both = ablation.seed_ensemble(labels, [a, b])
    assert both["auc"] == pytest.approx(1.0)
    assert both["logloss"] == pytest.approx(evaluate.logloss(labels, (a + b) / 2))
    with pytest.raises(ValueError, match="no model scores"):
        ablation.seed_ensemble(labels, [])
    summary = pd.DataFrame({"setting": ["warm", "warm"], "variant": ["+text", "popularity"]})
    out = ablation.with_ensembles(summary, {("warm", "+text"): both})
    assert out["ens_auc"].iloc[0] == 1.0 and np.isnan(out["ens_auc"].iloc[1])


def _val_summary(val: dict[str, float], test: dict[str, float]) -> pd.DataFrame:
    rows = [{"setting": "cold", "variant": v, "val_auc_mean": val[v], "auc_mean": test[v],
             "auc_std": 0.001, "ens_auc": test[v]} for v in val]
    return pd.DataFrame(rows + [{"setting": "cold", "variant": "popularity", "auc_mean": 0.5}])


def test_choice_on_validation_falls_back_to_fewer_tables() -> None:
    variants = list(ablation.VARIANTS)
    candidates = ablation.nested_candidates(variants)
    assert candidates["id-only"] == ["id-only"] and candidates["+text"] == ["id-only", "+text"]
    assert candidates["+both"] == variants
    # the text looks worse on validation: +text falls back to ID-only (test values only carried)
    summary = _val_summary({"id-only": 0.70, "+poster": 0.74, "+text": 0.69, "+both": 0.73},
                           {"id-only": 0.71, "+poster": 0.75, "+text": 0.80, "+both": 0.76})
    out = ablation.choose_on_validation(summary, candidates).set_index("variant")
    assert out["chosen"].to_dict() == {"id-only": "id-only", "+poster": "+poster",
                                       "+text": "id-only", "+both": "+poster"}
    assert out.loc["+text", "auc_mean"] == 0.71 and out.loc["+both", "auc_mean"] == 0.75
    assert set(out["setting"]) == {"cold"} and "popularity" not in out.index
    # a gain inside the seeds' spread of validation AUC keeps the simpler model
    noisy = summary.assign(val_auc_std=[0.0, 0.05, 0.0, 0.0, None])
    out = ablation.choose_on_validation(noisy, candidates).set_index("variant")
    assert out.loc["+poster", "chosen"] == "id-only"  # 0.74 > 0.70, but not by more than 0.05
    assert out.loc["+both", "chosen"] == "+both"  # 0.73 beats ID-only by more than 0 ...
    tie = summary.assign(val_auc_mean=[0.70, 0.70, 0.70, 0.70, None])
    assert set(ablation.choose_on_validation(tie, candidates)["chosen"]) == {"id-only"}


def test_movie_bootstrap_redraws_whole_movies_the_same_way_for_every_model() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    movies = rng.integers(0, 40, 600) * 7 + 1000  # ids need not be 0..n-1
    labels = (rng.random(600) < 0.5).astype(np.float32)
    good = labels + rng.normal(0, 1.0, 600)
    better = good + 0.5 * labels
    boot = ablation.movie_bootstrap(labels, good, movies, draws=50)
    assert boot.shape == (50,) and np.isfinite(boot).all()
    np.testing.assert_array_equal(boot, ablation.movie_bootstrap(labels, good, movies, draws=50))
    # draw k by hand: 40 movies drawn with replacement, every row of each drawn movie
    ids = np.unique(movies)
    pick = np.random.default_rng(0).integers(0, len(ids), len(ids))
    rows = np.concatenate([np.flatnonzero(movies == ids[i]) for i in pick])
    assert boot[0] == pytest.approx(roc_auc_score(labels[rows], good[rows]))
    # paired: the same redraws for both models, so their difference is far less noisy than
    # either AUC alone (redraws of other movies would not cancel)
    lift = ablation.movie_bootstrap(labels, better, movies, draws=50) - boot
    assert (lift > 0).all() and lift.std() < boot.std()
    unpaired = ablation.movie_bootstrap(labels, better, movies, draws=50, seed=1) - boot
    assert lift.std() < unpaired.std()


def test_choice_margin_includes_the_validation_movies_noise() -> None:
    candidates = {"+text": ["id-only", "+text"]}
    summary = _val_summary({"id-only": 0.70, "+text": 0.72}, {"id-only": 0.71, "+text": 0.73})
    assert ablation.choose_on_validation(summary, candidates)["chosen"].item() == "+text"
    base = np.linspace(0.65, 0.75, 300)
    for paired_noise, chosen in ((0.05, "id-only"), (0.005, "+text")):
        shift = np.random.default_rng(0).normal(0.02, paired_noise, 300)
        boots = pd.Series([base, base + shift, None], dtype=object)
        out = ablation.choose_on_validation(summary.assign(val_boot=boots), candidates)
        assert out["chosen"].item() == chosen  # a lead of 0.02 against that noise
    # the seeds' spread still counts when the redraws agree
    boots = pd.Series([base, base + 0.02, None], dtype=object)
    noisy = summary.assign(val_boot=boots, val_auc_std=[0.03, 0.0, None])
    assert ablation.choose_on_validation(noisy, candidates)["chosen"].item() == "id-only"


def test_ablation_summary_mean_and_std() -> None:
    runs = pd.DataFrame({"setting": ["warm"] * 3 + ["cold"], "variant": ["+text"] * 4,
                         "seed": [1, 2, 3, 1], "auc": [0.6, 0.7, 0.8, 0.55],
                         "logloss": [0.5, 0.5, 0.8, 0.7]})
    out = ablation.summarize(runs).set_index("setting")
    assert out.loc["warm", "auc_mean"] == pytest.approx(0.7)
    assert out.loc["warm", "auc_std"] == pytest.approx(np.std([0.6, 0.7, 0.8]))
    assert out.loc["warm", "logloss_mean"] == pytest.approx(0.6)
    assert out.loc["warm", "n_seeds"] == 3 and out.loc["cold", "auc_std"] == 0


def test_missing_etl_names_notebook_06(tmp_path: Path) -> None:
    from mmlens.train import run_keras

    with pytest.raises(MissingArtifactError, match="06-ETL"):
        run_keras(Config(data_dir=tmp_path), epochs=1)


def test_effective_batch_size() -> None:
    assert keras_train.effective_batch_size(1024, 5760) == 288  # 20 steps per epoch
    assert keras_train.effective_batch_size(1024, 10_000_000) == 1024
    assert keras_train.effective_batch_size(1024, 100) == 32
    assert keras_train.effective_batch_size(16, 100) == 16
    with pytest.raises(ValueError):
        keras_train.effective_batch_size(0, 100)


def test_unseen_movies_share_one_zero_id_vector(world: dict[str, Any], tmp_path: Path) -> None:
    schema, tables = world["schemas"]["cold-items"], world["tables"]["cold-items"]
    card = schema["slots"][1]["cardinality"]
    seen = data.seen_codes(world["dirs"]["cold-items"] / "train", schema, "movieId")
    cold = schema["cold_movie_codes"]
    assert not set(cold) & set(seen.tolist())
    known = layers.known_mask(card, seen)

    def build(known_items: np.ndarray | None) -> Any:
        keras_train.set_seed(0)
        model = models.build_wide_deep(schema, tables, emb_dim=4, mlp=(8,), tower=True,
                                       known_items=known_items, item_dropout=0.3)
        emb = model.get_layer("emb_movieId")
        weights = emb.get_weights()[0]
        # a different untrained row per cold movie: none may reach the prediction
        weights[cold] = 0.5 * np.arange(1, len(cold) + 1, dtype=np.float32)[:, None]
        emb.set_weights([weights])
        wide = model.get_layer("wide_movieId")
        wide.set_weights([0.01 * np.arange(card, dtype=np.float32)[:, None]])
        return model

    model = build(known)
    feats, _ = data.read_part(world["dirs"]["cold-items"] / "test", schema)
    p = models.predict_features(model, feats)
    swapped = {**feats, "movieId": np.full_like(feats["movieId"], cold[0])}
    np.testing.assert_allclose(p, models.predict_features(model, swapped), rtol=1e-6)
    ungated = build(None)  # without the mask the same swap moves the predictions
    assert not np.allclose(models.predict_features(ungated, feats),
                           models.predict_features(ungated, swapped))
    warm = {**feats, "movieId": np.full_like(feats["movieId"], seen[0])}
    assert not np.allclose(p, models.predict_features(model, warm))
    saved = models.save_model(model, tmp_path)  # the mask travels with the model
    again = models.load_model(saved)
    np.testing.assert_allclose(models.predict_features(again, swapped), p, rtol=1e-5)
    with pytest.raises(ValueError, match="known_items"):
        models.build_mlp(schema, tables, known_items=known[:-1])
    with pytest.raises(ValueError, match="outside"):
        layers.known_mask(card, [card])


def test_item_dropout_only_while_training() -> None:
    gate = layers.ItemIdGate(n_codes=4, rate=0.5, seed=3)
    gate.set_weights([np.array([0, 1, 1, 1], np.float32)])
    ids = np.array([0, 1, 2, 3] * 50)
    inference = np.asarray(gate(ids, training=False))[:, 0]
    np.testing.assert_array_equal(inference, (ids > 0).astype(np.float32))
    training = np.asarray(gate(ids, training=True))[:, 0]
    assert set(np.unique(training)) == {0.0, 1.0}  # zeroed, never rescaled
    assert (training[ids == 0] == 0).all() and 0.2 < training[ids > 0].mean() < 0.8
    with pytest.raises(ValueError, match="rate"):
        layers.ItemIdGate(rate=1.0)


def test_content_helps_cold_movies_with_default_model(world: dict[str, Any]) -> None:
    etl_dir, schema = world["dirs"]["cold-items"], world["schemas"]["cold-items"]
    auc = {}
    for name, mods in (("id-only", ()), ("+both", ("poster", "text"))):
        keras.backend.clear_session()
        _, metrics = keras_train.train_and_evaluate(etl_dir, schema, modalities=mods, epochs=8,
                                                    seed=1, batch_size=64, lr=5e-3)
        assert metrics["unseen_items"] == "zero"
        auc[name] = metrics["auc"]
    assert auc["+both"] > auc["id-only"] + 0.1, auc


def test_refit_trains_on_train_and_valid_for_the_chosen_epochs(world: dict[str, Any]) -> None:
    etl_dir, schema = world["dirs"]["cold-items"], world["schemas"]["cold-items"]
    parts = [data.part_dir(etl_dir, schema, p) for p in ("train", "valid")]
    assert data.part_rows(parts) == data.part_rows(parts[0]) + data.part_rows(parts[1])
    model, metrics = keras_train.train_and_evaluate(
        etl_dir, schema, modalities=("text",), epochs=3, seed=1, batch_size=64, refit=True)
    assert metrics["refit"] and 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 3
    # the model scored is the refit: best_epoch epochs over every train and valid row
    steps = -(-data.part_rows(parts) // metrics["batch_size"])
    assert int(model.optimizer.iterations) == metrics["best_epoch"] * steps
    known = model.get_layer(layers.GATE_LAYER).get_weights()[0]
    valid_movies = data.seen_codes(parts[1], schema, "movieId")
    assert known[valid_movies].all()  # the refit model has seen the validation movies
    assert not known[schema["cold_movie_codes"]].any()  # test movies stay unknown


def _drive_average(callback: Any, per_epoch: list[tuple[float, float | None]]) -> float:
    """Run ``callback`` over epochs whose single weight is ``value`` and whose ``val_auc`` is
    ``score`` (None: no validation); return the weight it ends training on."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, (value, score) in enumerate(per_epoch):
        model.layers[0].kernel.assign(np.full((1, 1), value, np.float32))
        callback.on_epoch_end(epoch, {} if score is None else {"val_auc": score})
    callback.on_train_end()
    return float(np.asarray(model.layers[0].kernel)[0, 0])


def test_weight_average_means_the_epochs_around_the_best() -> None:
    scores = [0.60, 0.70, 0.80, 0.75, 0.74, 0.73, 0.72]
    epochs = list(zip([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], scores, strict=True))
    # best = epoch 3: epochs 2..3 before it and up to 5 after it
    assert _drive_average(models.WeightAverage(2, 2), epochs) == pytest.approx(3.5)
    assert _drive_average(models.WeightAverage(3, 0), epochs) == pytest.approx(2.0)
    # a later best restarts the window; training ending early shortens it
    later = [*epochs[:5], (9.0, 0.90)]
    assert _drive_average(models.WeightAverage(2, 2), later) == pytest.approx(7.0)
    # a refit without validation: the best epoch is given
    fixed = [(v, None) for v, _ in epochs]
    assert _drive_average(models.WeightAverage(2, 1, best_epoch=4), fixed) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="val_auc"):
        _drive_average(models.WeightAverage(2, 1), fixed)
    with pytest.raises(ValueError, match="before >= 1"):
        models.WeightAverage(0, 1)


def test_averaged_training_scores_the_model_it_keeps(world: dict[str, Any]) -> None:
    etl_dir, schema = world["dirs"]["random"], world["schemas"]["random"]
    keras.backend.clear_session()
    model, metrics = keras_train.train_and_evaluate(
        etl_dir, schema, modalities=("text",), epochs=4, seed=1, batch_size=64, average=(2, 1))
    labels, probs = keras_train.score_part(model, etl_dir, schema, "valid", ("text",))
    assert metrics["average"] == [2, 1]
    kept = evaluate.pointwise_metrics(labels, probs)["auc"]
    assert metrics["best_val_auc"] == pytest.approx(kept)
    keras.backend.clear_session()
    _, refit = keras_train.train_and_evaluate(
        etl_dir, schema, modalities=("text",), epochs=3, seed=1, batch_size=64, average=(2, 1),
        refit=True, keep_valid=True)
    assert refit["refit"] and 0.5 < refit["auc"] <= 1.0
    # the validation scores kept are the first fit's (the refit trained on the valid rows)
    valid_labels, valid_probs = refit.pop("valid_scores")
    np.testing.assert_array_equal(valid_labels, labels)
    assert evaluate.pointwise_metrics(valid_labels, valid_probs)["auc"] == pytest.approx(
        refit["best_val_auc"])


def test_list_column_padding_and_rebatch_cover_every_row_once() -> None:
    import pyarrow as pa

    col = pa.chunked_array([pa.array([[5, 6], None, [7, 8, 9, 10], []]), pa.array([[1], [2, 3]])])
    np.testing.assert_array_equal(data.pad_list_column(col, 3), data.pad_lists(col.to_pylist(), 3))
    chunks = [({"x": np.arange(a, b)}, np.arange(a, b, dtype=np.float32))
              for a, b in ((0, 5), (5, 12), (12, 13))]
    plain = list(data.rebatch(iter(chunks), 4))
    assert [len(y) for _, y in plain] == [4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f, _ in plain]), np.arange(13))
    rng = np.random.default_rng(0)
    first, second = ([f["x"] for f, _ in data.rebatch(iter(chunks), 4, rng=rng)]
                     for _ in range(2))
    assert sorted(np.concatenate(first)) == list(range(13))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))  # new order


def test_content_is_projected_once_per_distinct_movie(world: dict[str, Any]) -> None:
    schema, tables = world["schemas"]["random"], world["tables"]["random"]
    model = models.build_mlp(schema, tables, emb_dim=4, mlp=(8,), tower=True)
    feats, _ = data.read_part(world["dirs"]["random"] / "test", schema)
    p = models.predict_features(model, feats)
    one_by_one = np.concatenate([models.predict_features(
        model, {k: v[i:i + 1] for k, v in feats.items()}) for i in range(5)])
    np.testing.assert_allclose(p[:5], one_by_one, rtol=1e-5)  # dedupe changes no prediction
    batch = {k: np.repeat(v[:8], 4, axis=0) for k, v in feats.items()}  # 32 rows, <= 8 movies
    for m, info in schema["pretrained"].items():  # the projection sees each movie once
        projected = keras.Model(model.input, model.get_layer(f"project_{m}").output)
        inputs = {k: batch[k] for k in (t.name.split(":")[0] for t in model.inputs)}
        rows = projected.predict(inputs, batch_size=len(batch[info["slot"]]), verbose=0)
        assert len(rows) == len(np.unique(batch[info["slot"]])) < len(batch[info["slot"]])
    narrow = models.build_mlp(schema, tables, emb_dim=4, mlp=(8,), tower=True, content_dim=3)
    assert {narrow.get_layer(f"pretrained_{m}").get_weights()[0].shape[1]
            for m in schema["pretrained"]} == {3}
    assert np.isfinite(models.predict_features(narrow, feats)).all()


def test_rating_mix_grades_training_targets_only(world: dict[str, Any]) -> None:
    labels = np.array([0.0, 1.0, 1.0], np.float32)
    mixed = data.soft_labels(labels, np.array([0.5, 4.0, 5.0]), 0.5)
    np.testing.assert_allclose(mixed, [0.0, 0.5 + 0.5 * 3.5 / 4.5, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="rating_mix"):
        data.soft_labels(labels, labels, 1.5)
    plain = np.concatenate([y.numpy() for _, y in _ds(world, "train", batch_size=64)])
    for in_memory in (True, False):
        soft = np.concatenate([y.numpy() for _, y in _ds(
            world, "train", batch_size=64, rating_mix=0.5, in_memory=in_memory)])
        assert np.isin(plain, [0.0, 1.0]).all() and not np.array_equal(soft, plain)
        frame = data.read_frame(world["dirs"]["random"] / "train", ["label", "rating"])
        np.testing.assert_allclose(soft, data.soft_labels(
            frame["label"].to_numpy(np.float32), frame["rating"].to_numpy(), 0.5), rtol=1e-6)
    # off by default; on, training sees graded targets while test metrics use the 0/1 label
    etl_dir, schema = world["dirs"]["random"], world["schemas"]["random"]
    model, metrics = keras_train.train_and_evaluate(
        etl_dir, schema, modalities=("text",), epochs=1, seed=1, batch_size=64, rating_mix=0.5)
    assert metrics["rating_mix"] == 0.5
    labels, probs = keras_train.score_part(model, etl_dir, schema, "test", ("text",),
                                           metrics["batch_size"])
    test_labels = data.read_frame(etl_dir / "test", ["label"])["label"].to_numpy()
    np.testing.assert_array_equal(labels, test_labels)  # the 0/1 labels, in file order
    assert metrics["positive_rate"] == pytest.approx(test_labels.mean())
    assert metrics["logloss"] == pytest.approx(evaluate.logloss(labels, probs), rel=1e-5)
    assert metrics["auc"] == pytest.approx(evaluate.auc(labels, probs), rel=1e-5)


def test_unit_rows_keeps_directions_and_zero_rows() -> None:
    table = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(models.unit_rows(table), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert models.unit_rows(table).dtype == np.float32


def test_top_directions_spread_the_variance_over_the_coordinates() -> None:
    from mmlens._nb.training_with_tensorflow import top_directions

    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(64, 32)))
    table = (rng.normal(size=(300, 32)) * 0.8 ** np.arange(32)) @ basis.T  # a decaying spectrum
    eigen = np.linalg.eigvalsh(table.T @ table)[::-1][:32]
    assert eigen[-1] < eigen[0] / 1e5  # in the main directions' own basis: near-constant columns
    share = (top_directions(table, 32) ** 2).mean(axis=0)
    assert share.min() > share.max() / 30
    np.testing.assert_allclose(share.sum(), (table ** 2).sum(axis=1).mean(), rtol=1e-5)


def test_top_directions_keep_dot_products_of_a_low_rank_table() -> None:
    from mmlens._nb.training_with_tensorflow import pretrained_embedding, top_directions

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 40))  # rank 3 in 40 dims
    table[7] = 0.0  # a movie without content
    unit = models.unit_rows(table)
    small = top_directions(unit, 3)
    assert small.shape == (50, 3) and small.dtype == np.float32
    np.testing.assert_allclose(small @ small.T, unit @ unit.T, atol=1e-5)
    assert not small[7].any()
    np.testing.assert_array_equal(top_directions(unit, 3), small)  # the basis is fixed
    # fewer directions than the rank: dot products are approximated, not kept
    assert np.abs(top_directions(unit, 2) @ top_directions(unit, 2).T - unit @ unit.T).max() > 0.01
    layer = pretrained_embedding(table, "t", dim=3)
    weights = layer.get_weights()[0]
    assert weights.shape == (50, 3) and not layer.trainable
    np.testing.assert_allclose(weights @ weights.T, unit @ unit.T, atol=1e-5)
    assert pretrained_embedding(table, "u", dim=40).get_weights()[0].shape == (50, 40)


# Run in a child process: Keras picks its backend once, at import.
TORCH_RUN = """
import json, sys
sys.modules["tensorflow"] = None  # as in the Merlin container: no TensorFlow to fall back on
from pathlib import Path
import keras, numpy as np
sys.path.insert(0, sys.argv[2])
from etl_fixture import make_etl, raw_id
from mmlens import artifacts
from mmlens.config import Config
from mmlens.train import data, models, recommend_for, run_keras
cfg = Config(data_dir=Path(sys.argv[1]), sample_profile="small", seed=5)
make_etl(cfg, splits=("cold-items",))
out = run_keras(cfg, split="cold-items", epochs=2, batch_size=64)
model = models.load_model(artifacts.path(cfg, "keras_dir", split="cold-items", variant="mlp")
                          / models.MODEL_FILE)
etl_dir, schema = data.require_split(cfg, "cold-items")
frozen = model.get_layer("pretrained_text").get_weights()[0]
given = models.unit_rows(data.load_tables(etl_dir, schema)["text"])
recs = recommend_for(cfg, user_id=raw_id(5), k=5, split="cold-items")
print(json.dumps({"backend": keras.backend.backend(), "auc": out["auc"], "hr": out["hr@10"],
                  "frozen": bool(np.array_equal(frozen, given)), "recs": len(recs)}))
"""


def test_training_runs_on_the_torch_backend_without_tensorflow(tmp_path: Path) -> None:
    """The Merlin container runs Keras 3 on torch: build, fit, save, load, rank, recommend."""
    pytest.importorskip("torch")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    proc = subprocess.run([sys.executable, "-c", TORCH_RUN, str(tmp_path),
                           str(Path(__file__).parent)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "torch" and result["frozen"] and result["recs"] == 5
    assert 0.5 < result["auc"] <= 1 and 0 <= result["hr"] <= 1


def _imports_of(path: Path, package: Path) -> set[str]:
    """The mmlens modules a source file imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmlens"):
            for alias in node.names:  # `from mmlens.train import data` imports a submodule
                sub = f"{node.module}.{alias.name}"
                is_module = (package.parent / (sub.replace(".", "/") + ".py")).exists()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mmlens")}
    return found


def test_training_modules_import_no_circle() -> None:
    """E.g. keras_train may use recommend, but then recommend must not use keras_train."""
    import mmlens

    package = Path(mmlens.__file__).parent
    files = [*package.glob("train/*.py"), *package.glob("_nb/*.py")]
    name = {f: ".".join(f.relative_to(package.parent).with_suffix("").parts) for f in files}
    graph = {name[f]: _imports_of(f, package) & set(name.values()) for f in files}

    def cycle_from(node: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if node in path:
            return (*path[path.index(node):], node)
        return next((c for nxt in graph.get(node, ()) if (c := cycle_from(nxt, (*path, node)))),
                    None)

    assert graph["mmlens.train.keras_train"] >= {"mmlens.train.recommend"}
    for start in graph:
        assert cycle_from(start, ()) is None, " -> ".join(cycle_from(start, ()) or ())


def test_in_memory_batches_are_copies_of_the_part() -> None:
    """A backend may reuse a yielded array's buffer: the next epoch must still read the part."""
    part = ({"x": np.arange(10)}, np.zeros(10, np.float32))
    first = list(data.owned_batches(part, 4))
    first[0][1][:] = 2440.0  # what TensorFlow did to validation labels that were views
    first[0][0]["x"][:] = -1
    again = list(data.owned_batches(part, 4))
    assert [len(y) for _, y in again] == [4, 4, 2] and (again[0][1] == 0).all()
    assert again[0][0]["x"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("preset", [None, "0"])
def test_importing_mmlens_turns_tensorflows_onednn_on_unless_the_user_chose(
        preset: str | None) -> None:
    """``mmlens.TENSORFLOW_DEFAULTS`` reach a TensorFlow loaded after mmlens (on AVX2-only CPUs
    TensorFlow alone leaves oneDNN off); a value the user set wins."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    code = ("import os, mmlens, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port as port\n"
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ([preset, "False"] if preset else ["1", "True"])


def _neighbour_reference(vectors: np.ndarray, codes: np.ndarray, labels: np.ndarray,
                         users: np.ndarray, items: np.ndarray, k: int, temperature: float
                         ) -> np.ndarray:
    """:class:`layers.HistoryNeighbours` row by row, in plain numpy."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out = np.zeros((len(users), 3))
    for row, (u, m) in enumerate(zip(users, items, strict=True)):
        keep = (codes[u] != data.PAD) & (codes[u] != m)
        if not keep.any():
            continue
        sim, lab = unit[codes[u][keep]] @ unit[m], labels[u][keep]
        top = np.argsort(-sim, kind="stable")[:k]
        weights = np.exp((sim - sim.max()) / temperature)
        out[row] = lab[top].mean(), sim[top].mean(), (weights * lab).sum() / weights.sum()
    return out


NEIGHBOUR_CASE = {  # 4 user codes (0 is padding), 6 movie codes with 3-d content
    "vectors": [[1, 1, 1], [1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.6], [0.5, 0.5, 0]],
    "rows": [(1, 1, 1.0), (1, 2, 0.0), (1, 3, 1.0), (1, 4, 0.0), (2, 3, 1.0), (2, 5, 1.0)],
    "users": [1, 1, 1, 2, 2, 3], "items": [2, 5, 3, 3, 1, 4],
}


def _neighbour_check(k: int = 2, temperature: float = 0.5, precomputed: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(the layer's features, the reference) on :data:`NEIGHBOUR_CASE`."""
    vectors = np.asarray(NEIGHBOUR_CASE["vectors"], np.float32)
    users, items, labels = (np.array(c) for c in zip(*NEIGHBOUR_CASE["rows"], strict=True))
    codes, values = layers.user_history(users, items, labels, n_users=4)
    layer = layers.HistoryNeighbours(4, codes.shape[1], *vectors.shape, k=k,
                                     temperature=temperature, precomputed=precomputed)
    batch = [np.array(NEIGHBOUR_CASE[c]) for c in ("users", "items")]
    layer(batch)
    unit = models.unit_rows(vectors)
    layer.set_weights([unit @ unit.T if precomputed else unit, codes, values])
    return (np.asarray(keras.ops.convert_to_numpy(layer(batch))),
            _neighbour_reference(vectors, codes, values, *batch, k, temperature))


@pytest.mark.parametrize("precomputed", [False, True])
def test_history_neighbours_read_the_users_own_labels_on_the_nearest_movies(
        precomputed: bool) -> None:
    got, want = _neighbour_check(precomputed=precomputed)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[0, 0] == 1.0 and got[3, 0] == 1.0  # nearest to 2: movies 1 and 3 (liked)
    np.testing.assert_array_equal(got[5], 0.0)  # user 3 has no history
    # k beyond the history: every movie of it, none invented
    wide, _ = _neighbour_check(k=10, precomputed=precomputed)
    np.testing.assert_allclose(wide[:, 0], [2 / 3, 0.5, 1 / 3, 1.0, 1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="k >= 1"):
        layers.HistoryNeighbours(2, 2, 3, 3, k=0)


def test_user_history_pads_and_caps_each_users_rows() -> None:
    codes, labels = layers.user_history(np.array([2, 1, 2, 2]), np.array([5, 6, 7, 8]),
                                        np.array([1, 0, 1, 0]), n_users=4)
    assert codes.shape == (4, 3) and codes.dtype == np.int32
    assert sorted(codes[2]) == [5, 7, 8] and list(codes[1]) == [6, data.PAD, data.PAD]
    assert not codes[[0, 3]].any() and labels[2][codes[2] == 8] == 0.0
    capped, _ = layers.user_history(np.full(50, 1), np.arange(1, 51), np.ones(50), 2,
                                    max_length=8, seed=3)
    again, _ = layers.user_history(np.full(50, 1), np.arange(1, 51), np.ones(50), 2,
                                   max_length=8, seed=3)
    assert capped.shape == (2, 8) and len(set(capped[1])) == 8
    np.testing.assert_array_equal(capped, again)
    with pytest.raises(ValueError, match="outside"):
        layers.user_history(np.array([4]), np.array([1]), np.array([1]), n_users=4)


def test_neighbour_features_train_save_and_follow_the_refit(world: dict[str, Any],
                                                             tmp_path: Path) -> None:
    etl_dir, schema = world["dirs"]["cold-items"], world["schemas"]["cold-items"]
    options = {**keras_train.DEFAULT_MODEL_OPTIONS, "neighbours": 3}
    model, metrics = keras_train.train_and_evaluate(
        etl_dir, schema, modalities=("text",), epochs=2, seed=1, batch_size=64, refit=True,
        model_options=options)
    assert 0.5 < metrics["auc"] <= 1
    near = model.get_layer("neighbours_text")
    n_items = near.n_items
    assert near.precomputed and near.get_weights()[0].shape == (n_items, n_items)  # small world
    codes = near.get_weights()[1]
    valid = data.read_frame(data.part_dir(etl_dir, schema, "valid"), ["userId", "movieId"])
    user, movie = valid.iloc[0]
    assert movie in codes[user]  # the refit model reads the validation rows as history too
    assert not np.isin(codes, schema["cold_movie_codes"]).any()  # never a test rating
    feats, _ = data.read_part(data.part_dir(etl_dir, schema, "test"), schema, ("text",))
    again = models.load_model(models.save_model(model, tmp_path))
    np.testing.assert_allclose(models.predict_features(again, feats),
                               models.predict_features(model, feats), rtol=1e-5)
    with pytest.raises(ValueError, match="history"):
        models.build_mlp(schema, world["tables"]["cold-items"], modalities=("text",),
                         neighbours=3)


def test_neighbour_features_compare_vectors_where_the_similarity_matrix_is_too_big(
        world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    etl_dir, schema = world["dirs"]["cold-items"], world["schemas"]["cold-items"]
    parts = {p: data.part_dir(etl_dir, schema, p) for p in ("train", "valid", "test")}
    history = keras_train.training_history(parts["train"], schema)
    feats, _ = data.read_part(parts["test"], schema, ("text",))
    options = {"modalities": ("text",), "neighbours": 3, "history": history}
    keras.utils.set_random_seed(4)
    small = models.build_mlp(schema, world["tables"]["cold-items"], **options)
    again = models.build_mlp(schema, world["tables"]["cold-items"], **options)
    matrix = small.get_layer("neighbours_text").content
    assert again.get_layer("neighbours_text").content is matrix  # one matrix per table
    monkeypatch.setattr(layers, "SIMILARITY_CELLS_MAX", 0)
    keras.utils.set_random_seed(4)
    big = models.build_mlp(schema, world["tables"]["cold-items"], **options)
    near = big.get_layer("neighbours_text")
    assert not near.precomputed and near.get_weights()[0].shape == (near.n_items, near.dim)
    np.testing.assert_allclose(models.predict_features(big, feats),
                               models.predict_features(small, feats), rtol=1e-5, atol=1e-6)


TORCH_NEIGHBOURS = """
import json, sys
sys.modules["tensorflow"] = None
sys.path.insert(0, sys.argv[1])
import keras
from test_train import _neighbour_check
gaps = [abs(got - want).max() for got, want in (_neighbour_check(precomputed=p) for p in (0, 1))]
print(json.dumps({"backend": keras.backend.backend(), "gap": float(max(gaps))}))
"""


def test_history_neighbours_on_the_torch_backend() -> None:
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", TORCH_NEIGHBOURS, str(Path(__file__).parent)],
                          env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "torch" and result["gap"] < 1e-5
