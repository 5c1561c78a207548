"""What stage 06 reads back from a fitted or saved NVTabular workflow.

The workflow itself (``build_workflow``: vocabularies fitted on train for users and on the whole
catalog for movies, genres and decades) and the HugeCTR slot table are notebook 06's ``#@save``
functions, in ``mmlens._nb.etl_with_nvtabular``. This module reads what NVTabular wrote: each
column's cardinality, the code -> value mapping and the reserved codes of Categorify.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

LABEL = "label"
RATING = "rating"


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
    """First code of each kind, from ``meta.<column>.parquet`` (NVTabular 23.8: pad 0, null 1,
    oov 2, unique 3: the first real value)."""
    meta = pd.read_parquet(Path(workflow_dir) / "categories" / f"meta.{column}.parquet")
    return {str(k): int(o) for k, o in zip(meta["kind"], meta["offset"], strict=True)}
