"""Stage 06: NVTabular ETL, pretrained tables re-ordered to the codes, HugeCTR files and offsets."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_feature_store import source_vector, write_inputs

from mmlens import artifacts, etl, feature_store, splits
from mmlens.artifacts import MissingArtifactError
from mmlens.config import Config
from mmlens.etl.hugectr_files import write_sparse_model
from mmlens.etl.workflow import category_mapping

pytest.importorskip("nvtabular")

THRESHOLD = 3.0
TEST_ONLY_USER = 999


def _inputs_with_a_test_only_user(cfg: Config) -> None:
    """Fixture inputs plus a user who rated only movies the cold-items split holds out."""
    write_inputs(cfg)
    path = artifacts.path(cfg, "ratings")
    ratings = pd.read_parquet(path)
    cold = splits.cold_items_split(ratings, seed=cfg.seed).definition["test_movies"][:2]
    extra = pd.DataFrame({"userId": TEST_ONLY_USER, "movieId": cold, "rating": 4.0,
                          "timestamp": ratings["timestamp"].max()})
    artifacts.write_parquet(pd.concat([ratings, extra.astype(ratings.dtypes)]), path)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = Config(data_dir=tmp_path_factory.mktemp("etl"), sample_profile="small")
    _inputs_with_a_test_only_user(cfg)
    feature_store.run(cfg, label_threshold=THRESHOLD)
    etl.run(cfg)
    return cfg


def _schema(cfg: Config, split: str) -> dict:
    return artifacts.read_json(artifacts.path(cfg, "etl_schema", split=split))


def _split_part(cfg: Config, split: str, part: str) -> pd.DataFrame:
    return pd.read_parquet(artifacts.path(cfg, "split", split=split) / f"{part}.parquet")


@pytest.mark.parametrize("split", ["random", "cold-items"])
def test_key_plus_offset_finds_the_03_04_vector(cfg: Config, split: str) -> None:
    schema = _schema(cfg, split)
    root = artifacts.path(cfg, "etl_schema", split=split).parent
    mapping = category_mapping(artifacts.path(cfg, "workflow", split=split), "movieId")
    slots = {s["name"]: s for s in schema["slots"]}
    rng = np.random.default_rng(1)
    for part in ("train", "test"):
        df = etl.read_etl_part(cfg, split, part)
        source_rows = _split_part(cfg, split, part)
        assert len(df) == len(source_rows) == schema["rows"][part]
        # row order is kept, so decoding the code through the mapping gives the input movie
        assert (mapping.loc[df["movieId"]].to_numpy() == source_rows["movieId"].to_numpy()).all()
        for m, info in schema["pretrained"].items():
            keys, vectors = etl.read_sparse_model(root / info["sparse_model"])
            assert (df[f"{m}_id"] == df["movieId"]).all()
            for i in rng.choice(len(df), 10, replace=False):
                code = int(df.loc[i, f"{m}_id"])
                (at,) = np.flatnonzero(keys == code + slots[m]["offset"])
                vec, has = source_vector(cfg, m, int(source_rows.loc[i, "movieId"]))
                assert df.loc[i, f"has_{m}"] == has
                if has:
                    assert vectors[at].tobytes() == vec.tobytes()
                else:
                    assert not vectors[at].any()


def test_slots_metadata_and_cardinalities(cfg: Config) -> None:
    import nvtabular as nvt

    for split in ("random", "cold-items"):
        schema = _schema(cfg, split)
        workflow = nvt.Workflow.load(str(artifacts.path(cfg, "workflow", split=split)))
        columns = [s["column"] for s in schema["slots"]]
        expected = [workflow.output_schema[c].properties["embedding_sizes"]["cardinality"]
                    for c in columns]
        assert schema["slot_size_array"] == expected
        assert [s["offset"] for s in schema["slots"]] == etl.slot_layout(expected)
        assert [s["name"] for s in schema["slots"]] == [
            "userId", "movieId", "genres", "year", "poster", "text"]
        assert schema["slots"][2]["hotness"] == 3
        assert schema["reserved_codes"] == {"pad": 0, "null": 1, "oov": 2}
        root = artifacts.path(cfg, "etl_schema", split=split).parent
        for m, info in schema["pretrained"].items():
            slot = columns.index(f"{m}_id")
            keys, vectors = etl.read_sparse_model(root / info["sparse_model"])
            assert (keys == np.arange(expected[slot]) + schema["slots"][slot]["offset"]).all()
            table = np.load(root / info["table"])
            assert table.shape == (expected[slot], info["dim"]) and not table[:3].any()
            assert np.array_equal(table, vectors)
        for part in splits.PARTS:
            part_dir = artifacts.path(cfg, "etl_output", split=split, part=part)
            meta = artifacts.read_json(part_dir / "_metadata.json")
            assert [c["col_name"] for c in meta["cats"]] == columns
            assert [c["col_name"] for c in meta["labels"]] == ["label"]
            listed = (part_dir / "_file_list.txt").read_text().split()
            assert int(listed[0]) == len(listed) - 1 == len(meta["file_stats"])
            assert all(Path(p).is_file() and Path(p).parent == part_dir for p in listed[1:])


def test_cold_movies_have_codes_and_content_but_no_training_rows(cfg: Config) -> None:
    schema = _schema(cfg, "cold-items")
    cold = set(schema["cold_movie_codes"])
    assert cold and not cold & set(schema["cold_valid_movie_codes"])
    train = etl.read_etl_part(cfg, "cold-items", "train")
    test = etl.read_etl_part(cfg, "cold-items", "test")
    assert not cold & set(train["movieId"])
    assert set(test["movieId"]) == cold
    root = artifacts.path(cfg, "etl_schema", split="cold-items").parent
    mapping = category_mapping(artifacts.path(cfg, "workflow", split="cold-items"), "movieId")
    for m, info in schema["pretrained"].items():
        table = np.load(root / info["table"])
        for code in cold:
            vec, has = source_vector(cfg, m, int(mapping.loc[code]))
            assert table[code].any() == has
            if has:
                assert table[code].tobytes() == vec.tobytes()


def test_labels_and_user_vocabulary_from_train_only(cfg: Config) -> None:
    schema = _schema(cfg, "cold-items")
    oov = schema["reserved_codes"]["oov"]
    train_users = set(_split_part(cfg, "cold-items", "train")["userId"])
    assert TEST_ONLY_USER not in train_users
    users = category_mapping(artifacts.path(cfg, "workflow", split="cold-items"), "userId")
    assert set(users) == train_users
    for part in splits.PARTS:
        df = etl.read_etl_part(cfg, "cold-items", part)
        source = _split_part(cfg, "cold-items", part)
        assert df["label"].dtype == np.float32
        assert (df["label"] == (source["rating"] > THRESHOLD)).all()
        unseen = ~source["userId"].isin(train_users)
        assert ((df["userId"] == oov) == unseen).all()
    test = _split_part(cfg, "cold-items", "test")
    assert (test["userId"] == TEST_ONLY_USER).any()


def test_saved_workflow_reloads_and_encodes_the_catalog(cfg: Config) -> None:
    import nvtabular as nvt

    wf_dir = artifacts.path(cfg, "workflow", split="random")
    workflow = nvt.Workflow.load(str(wf_dir))
    test = _split_part(cfg, "random", "test")
    again = workflow.transform(nvt.Dataset(test, cpu=True)).to_ddf().compute()
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  etl.read_etl_part(cfg, "random", "test"), check_dtype=False)
    items = pd.read_parquet(artifacts.path(cfg, "items"))
    catalog = pd.DataFrame({"userId": np.int32(1), "movieId": items["movieId"],
                            "rating": np.float32(1), "timestamp": 0, "label": np.int8(0)})
    codes = workflow.transform(nvt.Dataset(catalog, cpu=True)).to_ddf().compute()["movieId"]
    mapping = category_mapping(wf_dir, "movieId")
    assert (mapping.loc[codes.to_numpy()].to_numpy() == items["movieId"].to_numpy()).all()


def test_the_notebook_graph_fitted_by_hand_matches_the_batch_run(cfg: Config,
                                                                tmp_path: Path) -> None:
    """What a reader runs in notebook 06 (build_workflow, fit, transform) is the stage's output."""
    import nvtabular as nvt

    from mmlens._nb.etl_with_nvtabular import build_workflow, hugectr_slots

    items = pd.read_parquet(artifacts.path(cfg, "items"))
    split_dir = artifacts.path(cfg, "split", split="cold-items")
    workflow = build_workflow(items, ("poster", "text"), str(tmp_path / "fit"))
    workflow.fit(nvt.Dataset(str(split_dir / "train.parquet"), cpu=True))
    test = workflow.transform(nvt.Dataset(str(split_dir / "test.parquet"), cpu=True))
    pd.testing.assert_frame_equal(test.to_ddf().compute().reset_index(drop=True),
                                  etl.read_etl_part(cfg, "cold-items", "test"), check_dtype=False)
    slots = hugectr_slots(workflow, items, ("poster", "text"))
    assert slots.to_dict("records") == _schema(cfg, "cold-items")["slots"]


def test_alignment_check_is_all_equal(cfg: Config) -> None:
    table = etl.alignment_check(cfg, "cold-items", n=12)
    assert len(table) == 12 * 2 and table["equal"].all()
    assert set(table["expected_from"]) <= {"03/04 embedding", "05 table"}
    text = table[table["modality"] == "text"]  # full-width: compared with 04's own vectors
    assert text["has_content"].any()
    assert (text.loc[text["has_content"], "expected_from"] == "03/04 embedding").all()


def test_alignment_check_catches_a_wrong_offset(cfg: Config, tmp_path: Path) -> None:
    broken = cfg.with_(data_dir=tmp_path)
    shutil.copytree(cfg.dataset_dir, broken.dataset_dir)
    sparse = artifacts.path(broken, "sparse_model", split="random", modality="text")
    keys, vectors = etl.read_sparse_model(sparse)
    shutil.rmtree(sparse)
    write_sparse_model(sparse, keys - 1, vectors)  # off by one: another movie's vector
    assert not etl.alignment_check(broken, "random", n=12)["equal"].all()


def test_sparse_model_files_are_raw_little_endian(tmp_path: Path) -> None:
    keys = np.array([5, 6, 7], dtype=np.int64)
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_sparse_model(tmp_path / "m", keys, vectors)
    assert (tmp_path / "m" / "key").read_bytes() == keys.astype("<i8").tobytes()
    assert (tmp_path / "m" / "emb_vector").stat().st_size == 6 * 4
    got_keys, got = etl.read_sparse_model(tmp_path / "m")
    assert (got_keys == keys).all() and np.array_equal(got, vectors)
    assert etl.slot_layout([154, 125, 23]) == [0, 154, 279]
    with pytest.raises(ValueError):
        etl.slot_layout([3, 0])


def test_missing_store_names_notebook_05(tmp_path: Path) -> None:
    with pytest.raises(MissingArtifactError, match="05-Create-Feature-Store"):
        etl.run(Config(data_dir=tmp_path))
    with pytest.raises(ValueError, match="unknown splits"):
        etl.run(Config(data_dir=tmp_path), splits=("warm",))


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["workers", "scheduler"])
def test_local_cluster_matches_single_process(cfg: Config, tmp_path: Path, cluster: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    other = cfg.with_(data_dir=tmp_path)
    shutil.copytree(cfg.dataset_dir / "store", other.dataset_dir / "store")
    if cluster == "workers":
        seen: dict[str, int] = {}
        original = etl.dask_context

        @contextlib.contextmanager
        def spy(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with original(*args, **kwargs) as client:
                seen["workers"] = len(client.scheduler_info()["workers"])
                yield client
                seen["transitions"] = client.cluster.scheduler.transition_counter

        monkeypatch.setattr(etl, "dask_context", spy)
        etl.run(other, splits=("random",), workers=2)
        assert seen["workers"] == 2 and seen["transitions"] > 0  # the work ran on 2 workers
    else:
        from distributed import LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                          dashboard_address=None) as running:
            etl.run(other, splits=("random",), scheduler=running.scheduler_address)
            assert running.scheduler.transition_counter > 0  # the work ran on that cluster
    for part in splits.PARTS:
        pd.testing.assert_frame_equal(etl.read_etl_part(other, "random", part),
                                      etl.read_etl_part(cfg, "random", part))
    assert _schema(other, "random") == _schema(cfg, "random")
    for m in ("poster", "text"):
        for name in ("etl_pretrained",):
            a = np.load(artifacts.path(cfg, name, split="random", modality=m))
            b = np.load(artifacts.path(other, name, split="random", modality=m))
            assert a.tobytes() == b.tobytes()
