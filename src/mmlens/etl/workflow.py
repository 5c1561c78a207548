"""The NVTabular workflow of stage 06 and what is read back from a saved one.

Vocabularies: userId is fitted on the split's train part only (a user first seen later is OOV);
movieId, genres and year decades come from the whole catalog (``items.parquet``) through
Categorify's ``vocabs``, so a cold movie has a code and, with it, its content rows.
NVTabular is imported inside functions: it is heavy and pulls in TensorFlow when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmlens.etl import ops

LABEL = "label"
RATING = "rating"


@dataclass(frozen=True)
class SlotSpec:
    """A categorical HugeCTR slot and the ETL column that feeds it."""

    name: str
    column: str


def slot_specs(modalities: tuple[str, ...]) -> list[SlotSpec]:
    """Slots in HugeCTR order: user, movie, genres, year, then one per pretrained modality."""
    base = [SlotSpec("userId", "userId"), SlotSpec("movieId", "movieId"),
            SlotSpec("genres", "genres"), SlotSpec("year", "year_bucket")]
    return base + [SlotSpec(m, f"{m}_id") for m in modalities]


def catalog_vocabularies(items: pd.DataFrame) -> dict[str, pd.Series]:
    """movieId in catalog order, sorted genres and sorted decades of the whole catalog."""
    genres = sorted({g for gs in items["genres"] for g in gs})
    decades = sorted(set(ops.year_to_decade(items["year"].dropna()).tolist()))
    return {
        "movieId": items["movieId"].reset_index(drop=True),
        "genres": pd.Series(genres, dtype="object"),
        "year_bucket": pd.Series(decades, dtype="float64"),
    }


def join_table(items: pd.DataFrame, modalities: tuple[str, ...]) -> pd.DataFrame:
    """The item columns joined onto every rating (flags as int8)."""
    table = items[["movieId", "genres", "year"]].copy()
    for m in modalities:
        table[f"has_{m}"] = items[f"has_{m}"].astype("int8")
    return table


def build_workflow(items: pd.DataFrame, modalities: tuple[str, ...], fit_dir: Path) -> Any:
    """An unfitted workflow; Categorify writes its statistics under ``fit_dir``."""
    import nvtabular as nvt
    from nvtabular import ops as nvt_ops

    vocabs = catalog_vocabularies(items)
    out = str(fit_dir)
    table = join_table(items, modalities)
    joined = ["movieId"] >> nvt_ops.JoinExternal(table, on="movieId", how="left",
                                                 columns_ext=list(table.columns))
    users = ["userId"] >> nvt_ops.Categorify(out_path=out)
    movies = joined["movieId"] >> nvt_ops.Categorify(
        vocabs={"movieId": vocabs["movieId"]}, out_path=out)
    genres = joined["genres"] >> nvt_ops.Categorify(
        vocabs={"genres": vocabs["genres"]}, out_path=out)
    year = (joined["year"] >> nvt_ops.LambdaOp(ops.year_to_decade)
            >> nvt_ops.Rename(name="year_bucket")
            >> nvt_ops.Categorify(vocabs={"year_bucket": vocabs["year_bucket"]}, out_path=out))
    features = users + movies + genres + year
    for m in modalities:
        features += movies >> nvt_ops.LambdaOp(ops.copy_codes) >> nvt_ops.Rename(name=f"{m}_id")
    flags = [f"has_{m}" for m in modalities]
    if flags:
        features += joined[flags]
    label = [LABEL] >> nvt_ops.LambdaOp(ops.to_float32)
    return nvt.Workflow(features + label + [RATING])


def cardinalities(workflow: Any, columns: list[str]) -> dict[str, int]:
    """Each column's cardinality from the fitted workflow's output schema (never assumed)."""
    schema = workflow.output_schema
    out = {}
    for col in columns:
        props = schema[col].properties
        size = props.get("embedding_sizes", {}).get("cardinality")
        domain_max = props.get("domain", {}).get("max")
        if size is None or domain_max is None or int(size) != int(domain_max) + 1:
            raise ValueError(f"workflow output {col!r} has no consistent cardinality: {props}")
        out[col] = int(size)
    return out


def category_mapping(workflow_dir: Path, column: str) -> pd.Series:
    """Code -> value for ``column``, read from the saved workflow's ``unique.<column>.parquet``.

    NVTabular 23.8 stores the codes as the parquet's (pandas) index; ``meta.<column>.parquet``
    gives the offset of the first real code, which is checked against it.
    """
    cat_dir = Path(workflow_dir) / "categories"
    unique = pd.read_parquet(cat_dir / f"unique.{column}.parquet")
    codes = unique.index.to_numpy()
    first = reserved_codes(workflow_dir, column).get("unique")
    if first is not None and len(codes) and (codes[0] != first or (pd.Series(codes).diff()
                                                                  .dropna() != 1).any()):
        raise ValueError(f"unexpected codes in {cat_dir}/unique.{column}.parquet: {codes[:5]}...")
    return pd.Series(unique[column].to_numpy(), index=codes, name=column)


def reserved_codes(workflow_dir: Path, column: str) -> dict[str, int]:
    """First code of each kind (pad, null, oov, unique) from ``meta.<column>.parquet``."""
    meta = pd.read_parquet(Path(workflow_dir) / "categories" / f"meta.{column}.parquet")
    return {str(k): int(o) for k, o in zip(meta["kind"], meta["offset"], strict=True)}
