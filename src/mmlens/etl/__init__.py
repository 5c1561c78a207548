"""Stage 06: NVTabular ETL of the 05 splits into HugeCTR- and Keras-ready files.

Per split, under ``etl/<split>/``: the fitted workflow, ``train``/``valid``/``test`` parquet with
``_file_list.txt`` and ``_metadata.json``, each pretrained table re-ordered to the movieId codes
read from the saved workflow (reserved rows zero), HugeCTR sparse-model dirs whose keys carry the
slot offsets, and ``schema.json`` (the contract 07/08/09 read). NVTabular runs on cuDF when cuDF
and a GPU are present, else on pandas; ``workers``/``scheduler`` run it on a Dask cluster.
The workflow graph and the slot table are notebook 06's ``#@save`` functions
(``mmlens._nb.etl_with_nvtabular``, imported when a split runs: NVTabular is slow to import).

Inputs are read in partitions of about ``PART_SIZE`` (whole parquet row groups), not NVTabular's
default of an eighth of the machine's memory: peak memory then does not grow with the split size
or the machine (ml-25m: ~11.7 GB peak with the default on a 24 GB machine, see bench_06_scale).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts, capabilities
from mmlens.artifacts import MODALITIES
from mmlens.config import Config
from mmlens.etl.hugectr_files import (
    point_file_list,
    read_file_list,
    read_sparse_model,
    slot_layout,
    write_sparse_model,
)
from mmlens.etl.workflow import LABEL, RATING, category_mapping, reserved_codes
from mmlens.splits import PARTS

__all__ = ["alignment_check", "read_etl_part", "read_sparse_model", "run", "slot_layout"]

PART_SIZE = "64MB"


def run(cfg: Config, *, splits: tuple[str, ...] | list[str] = ("random", "cold-items"),
        workers: int | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """ETL every split in ``splits``; returns {split: schema.json content}."""
    if isinstance(splits, str):
        splits = (splits,)
    unknown = set(splits) - set(artifacts.SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; known: {artifacts.SPLITS}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    items = pd.read_parquet(artifacts.require(cfg, "items"))
    modalities = tuple(m for m in MODALITIES if f"has_{m}" in items.columns)
    tables = {m: np.load(artifacts.require(cfg, "pretrained", modality=m)) for m in modalities}
    split_dirs = {s: artifacts.require(cfg, "split", split=s) for s in splits}
    cpu = not capabilities.has_cudf()
    print(f"NVTabular on {'CPU (pandas)' if cpu else 'GPU (cuDF)'}; pretrained tables: "
          f"{', '.join(modalities) or 'none'}")
    results = {}
    with dask_context(workers, scheduler, gpu=not cpu) as client:
        for split, split_dir in split_dirs.items():
            start = time.perf_counter()
            results[split] = _etl_split(cfg, split, split_dir, items, tables, cpu, client)
            print(_describe_split(cfg, results[split], time.perf_counter() - start))
    return results


def _describe_split(cfg: Config, schema: dict[str, Any], seconds: float) -> str:
    """Two lines about one split's ETL: rows and bytes written, slot sizes, tables, time."""
    root = artifacts.path(cfg, "etl_schema", split=schema["split"]).parent
    megabytes = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6
    rows = " / ".join(str(n) for n in schema["rows"].values())
    sizes = {slot["name"]: slot["cardinality"] for slot in schema["slots"]}
    tables = ", ".join(f"{m} {sizes[m]}x{info['dim']}" for m, info in schema["pretrained"].items())
    return (f"{schema['split']}: train/valid/test {rows} rows encoded, {megabytes:.1f} MB written "
            f"in {seconds:.1f} s\n  slot_size_array {schema['slot_size_array']}; pretrained "
            f"tables re-ordered to the movie codes: {tables or 'none'}")


@contextlib.contextmanager
def dask_context(workers: int | None, scheduler: str | None, *, gpu: bool) -> Iterator[Any]:
    """Serial, a LocalCluster (LocalCUDACluster on GPU) of ``workers``, or ``scheduler``."""
    from merlin.core.utils import Distributed, Serial

    if workers is None and scheduler is None:
        with Serial():
            yield None
        return
    from distributed import Client

    cluster = None
    if scheduler is not None:
        client = Client(scheduler)
    else:
        if gpu:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(n_workers=workers)
        else:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        client = Client(cluster)
    try:
        with Distributed(client=client):
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _etl_split(cfg: Config, split: str, split_dir: Path, items: pd.DataFrame,
               tables: dict[str, np.ndarray], cpu: bool, client: Any) -> dict[str, Any]:
    import nvtabular as nvt

    from mmlens._nb.etl_with_nvtabular import build_workflow, hugectr_slots

    root = artifacts.path(cfg, "etl_schema", split=split).parent
    modalities = tuple(tables)
    with artifacts.atomic_path(root) as tmp:
        tmp.mkdir()

        def staged(name: str, **fmt: str) -> Path:
            return tmp / artifacts.path(cfg, name, split=split, **fmt).relative_to(root)

        workflow = build_workflow(items, modalities, str(tmp / "_fit"))
        workflow.fit(_dataset(split_dir / "train.parquet", cpu))
        wf_dir = staged("workflow")
        workflow.save(str(wf_dir))
        _keep_category_meta(tmp / "_fit", wf_dir)
        loaded = nvt.Workflow.load(str(wf_dir), client=client)
        if loaded.output_schema.column_names != workflow.output_schema.column_names:
            raise RuntimeError(f"the saved workflow {wf_dir} does not reload to the same outputs")

        slots = hugectr_slots(loaded, items, modalities)
        cats = slots["column"].tolist()
        rows = {}
        for part in PARTS:
            out = staged("etl_output", part=part)
            dataset = _dataset(split_dir / f"{part}.parquet", cpu)
            loaded.transform(dataset).to_parquet(
                str(out), cats=cats, conts=[], labels=[LABEL], shuffle=None, out_files_per_proc=1)
            point_file_list(out, artifacts.path(cfg, "etl_output", split=split, part=part))
            meta = artifacts.read_json(out / "_metadata.json")
            rows[part] = sum(int(f["num_rows"]) for f in meta["file_stats"])

        by_name = slots.set_index("name")
        n_codes = int(by_name.loc["movieId", "cardinality"])
        reserved = reserved_codes(wf_dir, "movieId")
        codes = _movie_codes(wf_dir, items, n_codes, reserved["unique"])
        pretrained = {}
        for m, table in tables.items():
            by_code = reorder_to_codes(table, codes, n_codes)
            table_path = staged("etl_pretrained", modality=m)
            np.save(table_path, by_code)
            keys = np.arange(len(by_code), dtype=np.int64) + int(by_name.loc[m, "offset"])
            sparse = staged("sparse_model", modality=m)
            write_sparse_model(sparse, keys, by_code)
            pretrained[m] = {"slot": m, "dim": int(by_code.shape[1]), "table": table_path.name,
                             "sparse_model": str(sparse.relative_to(tmp)),
                             "has_column": f"has_{m}"}
        schema = _schema(split, slots, pretrained, rows, reserved)
        if split == "cold-items":
            definition = artifacts.read_json(split_dir / "split.json")["definition"]
            schema["cold_movie_codes"] = _codes_of(codes, definition["test_movies"])
            schema["cold_valid_movie_codes"] = _codes_of(codes, definition["valid_movies"])
        artifacts.write_json(staged("etl_schema"), schema)
    return schema


def _dataset(path: Path, cpu: bool) -> Any:
    """An NVTabular dataset of one 05 parquet file, in partitions of about ``PART_SIZE``."""
    import nvtabular as nvt

    return nvt.Dataset(str(path), cpu=cpu, part_size=PART_SIZE)


def _keep_category_meta(fit_dir: Path, wf_dir: Path) -> None:
    """Move Categorify's ``meta.<col>.parquet`` (reserved code offsets) beside the uniques
    (``Workflow.save`` copies only the uniques), then drop the fit directory."""
    for meta in (fit_dir / "categories").glob("meta.*.parquet"):
        shutil.move(meta, wf_dir / "categories" / meta.name)
    shutil.rmtree(fit_dir)


def _movie_codes(wf_dir: Path, items: pd.DataFrame, cardinality: int,
                 first_code: int) -> pd.Series:
    """movieId -> code for every catalog movie, from the saved workflow's category file."""
    mapping = category_mapping(wf_dir, "movieId")
    codes = pd.Series(mapping.index.to_numpy(), index=mapping.to_numpy())
    missing = ~items["movieId"].isin(codes.index)
    if missing.any() or codes.index.duplicated().any():
        raise ValueError(f"{missing.sum()} catalog movies lack a unique movieId code in {wf_dir}")
    if codes.min() < first_code or codes.max() >= cardinality:
        raise ValueError(f"movieId codes outside {first_code}..{cardinality - 1} in {wf_dir}")
    return codes.loc[items["movieId"].to_numpy()]


def reorder_to_codes(table: np.ndarray, codes: pd.Series, cardinality: int) -> np.ndarray:
    """Row c = the item row whose movie has code c; rows of unused codes (reserved) stay zero.

    ``codes`` lists one code per item row, in items order.
    """
    out = np.zeros((cardinality, table.shape[1]), dtype=np.float32)
    out[codes.to_numpy()] = table
    return out


def _codes_of(codes: pd.Series, movie_ids: list[int]) -> list[int]:
    return sorted(int(c) for c in codes.loc[movie_ids])


def _schema(split: str, slots: pd.DataFrame, pretrained: dict, rows: dict[str, int],
            reserved: dict[str, int]) -> dict[str, Any]:
    records = json.loads(slots.to_json(orient="records"))  # plain ints for the json file
    return {
        "split": split, "label": LABEL, "rating": RATING, "dense": [], "slots": records,
        "slot_size_array": [s["cardinality"] for s in records], "pretrained": pretrained,
        "parts": {p: p for p in PARTS}, "rows": rows,
        "reserved_codes": {k: v for k, v in reserved.items() if k != "unique"},
        "first_value_code": reserved.get("unique"),
    }


def read_etl_part(cfg: Config, split: str, part: str) -> pd.DataFrame:
    """The ETL output of one part, files in ``_file_list.txt`` order."""
    part_dir = artifacts.require(cfg, "etl_output", split=split, part=part)
    names = [Path(p).name for p in read_file_list(part_dir)]
    return pd.concat([pd.read_parquet(part_dir / n) for n in names], ignore_index=True)


def alignment_check(cfg: Config, split: str = "random", n: int = 8,
                    seed: int = 0) -> pd.DataFrame:
    """For ``n`` sampled train rows and each modality: the movie, its code, its key (code +
    slot offset) and whether the sparse-model vector at that key equals the movie's vector.

    ``expected_from`` says what it is compared with: the 03/04 embedding byte for byte when the
    movie has content and 05 kept the full vectors, else the 05 table row (PCA or filled).
    """
    schema = artifacts.read_json(artifacts.require(cfg, "etl_schema", split=split))
    items = pd.read_parquet(artifacts.require(cfg, "items")).reset_index(drop=True)
    item_row = pd.Series(np.arange(len(items)), index=items["movieId"].to_numpy())
    mapping = category_mapping(artifacts.require(cfg, "workflow", split=split), "movieId")
    df = read_etl_part(cfg, split, "train")
    sample = df.iloc[np.random.default_rng(seed).choice(len(df), min(n, len(df)), replace=False)]
    slots = {s["name"]: s for s in schema["slots"]}
    records = []
    for m, info in schema["pretrained"].items():
        keys, vectors = read_sparse_model(artifacts.path(cfg, "etl_schema", split=split).parent
                                          / info["sparse_model"])
        position = pd.Series(np.arange(len(keys)), index=keys)
        store = np.load(artifacts.require(cfg, "pretrained", modality=m))
        source = _source_lookup(cfg, m, store.shape[1])
        for code in sample[slots[m]["column"]].to_numpy():
            movie_id = int(mapping.loc[code])
            key = int(code) + slots[m]["offset"]
            found = vectors[position.loc[key]]
            has = bool(items.loc[item_row.loc[movie_id], f"has_{m}"])
            expected, origin = store[item_row.loc[movie_id]], "05 table"
            if has and source is not None:
                expected, origin = source(movie_id), "03/04 embedding"
            records.append({"modality": m, "movieId": movie_id, "code": int(code), "key": key,
                            "has_content": has, "expected_from": origin,
                            "equal": found.tobytes() == expected.tobytes()})
    return pd.DataFrame(records)


def _source_lookup(cfg: Config, modality: str, store_dim: int) -> Any:
    """movieId -> 03/04 vector, or None when 05 reduced the dimension (PCA)."""
    emb_path = artifacts.path(cfg, "embeddings", modality=modality)
    index_path = artifacts.path(cfg, "embedding_index", modality=modality)
    meta_path = artifacts.path(cfg, "pretrained_meta", modality=modality)
    if not emb_path.exists() or not index_path.exists():
        return None
    if meta_path.exists() and artifacts.read_json(meta_path).get("pca") is not None:
        return None
    emb = np.load(emb_path, mmap_mode="r")
    if emb.shape[1] != store_dim:
        return None
    rows = pd.read_parquet(index_path).set_index("movieId")["row"]
    return lambda movie_id: np.asarray(emb[int(rows.loc[movie_id])], dtype=np.float32)
