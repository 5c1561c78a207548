"""The output schemas of stage 01 and the per-table conversion report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmlens.errors import UserError

MOVIES_SCHEMA = pa.schema([
    ("movieId", pa.int32()),
    ("title", pa.string()),
    ("year", pa.int16()),
    ("genres", pa.list_(pa.string())),
    ("imdbId", pa.string()),
    ("tmdbId", pa.int64()),
])
RATINGS_SCHEMA = pa.schema([
    ("userId", pa.int32()),
    ("movieId", pa.int32()),
    ("rating", pa.float32()),
    ("timestamp", pa.int64()),
])
TAGS_SCHEMA = pa.schema([
    ("userId", pa.int32()),
    ("movieId", pa.int32()),
    ("tag", pa.string()),
    ("timestamp", pa.int64()),
])


class ConvertError(UserError, ValueError):
    """An input file cannot be read as the release format says."""


@dataclass
class TableReport:
    """Rows read, kept and dropped (by reason) for one output table."""

    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rows_kept: int = 0

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(n)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "dropped": dict(self.dropped)}
