"""Column functions used by the workflow's LambdaOps.

They live at module level in mmlens so that a saved workflow (which pickles them by reference)
loads wherever mmlens is installed. Each works on pandas and cuDF series alike.
"""

from __future__ import annotations

from typing import Any


def year_to_decade(col: Any) -> Any:
    """Year to its decade (1994 -> 1990.0); a null year stays null (Categorify's null code)."""
    return (col // 10 * 10).astype("float64")


def copy_codes(col: Any) -> Any:
    """The encoded movieId, unchanged: poster_id and text_id share movieId's codes."""
    return col.copy()


def to_float32(col: Any) -> Any:
    """Labels as float32, the type HugeCTR's Parquet reader expects."""
    return col.astype("float32")
