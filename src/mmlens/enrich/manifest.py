"""The enrichment manifest (one row per catalog movie), the synopses table and coverage counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

MODALITIES = ("poster", "synopsis")
STATUSES = ("ok", "missing", "not_found", "error", "invalid")
# when no provider succeeded, the most telling failure is reported
FAILURE_PRECEDENCE = ("error", "invalid", "missing", "not_found")


@dataclass
class Outcome:
    """Result of one modality for one movie."""

    status: str = "missing"
    source: str | None = None
    http_status: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; one of {STATUSES}")


def pick_failure(failures: list[Outcome]) -> Outcome:
    """The failure to report when no provider delivered (``missing`` with no providers)."""
    if not failures:
        return Outcome("missing", error="no provider offers this modality")
    return min(failures, key=lambda o: FAILURE_PRECEDENCE.index(o.status))


@dataclass
class MovieResult:
    """Everything enrichment learned about one movie."""

    movie_id: int
    poster: Outcome = field(default_factory=Outcome)
    synopsis: Outcome = field(default_factory=Outcome)
    poster_bytes: int | None = None
    poster_sha256: str | None = None
    synopsis_text: str | None = None
    fetched_at: str = ""

    def manifest_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"movieId": self.movie_id}
        for name in MODALITIES:
            o: Outcome = getattr(self, name)
            row.update({f"{name}_status": o.status, f"{name}_source": o.source,
                        f"{name}_http_status": o.http_status, f"{name}_error": o.error})
        row.update(poster_bytes=self.poster_bytes, poster_sha256=self.poster_sha256,
                   fetched_at=self.fetched_at)
        return row


MANIFEST_COLUMNS = [
    "movieId",
    *(f"{m}_{c}" for m in MODALITIES for c in ("status", "source", "http_status", "error")),
    "poster_bytes", "poster_sha256", "fetched_at",
]


def manifest_frame(results: list[MovieResult]) -> pd.DataFrame:
    """The manifest table with stable dtypes (nullable ints, strings)."""
    df = pd.DataFrame([r.manifest_row() for r in results], columns=MANIFEST_COLUMNS)
    df["movieId"] = df["movieId"].astype("int32")
    for col in ("poster_http_status", "synopsis_http_status", "poster_bytes"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    for col in MANIFEST_COLUMNS:
        if col.endswith(("_status", "_source", "_error", "_sha256")) and "http" not in col:
            df[col] = df[col].astype("object")
    df["fetched_at"] = pd.to_datetime(df["fetched_at"], utc=True)
    return df


def synopses_frame(results: list[MovieResult]) -> pd.DataFrame:
    """``movieId int32, synopsis str, source str`` for every movie with a synopsis."""
    rows = [(r.movie_id, r.synopsis_text, r.synopsis.source) for r in results
            if r.synopsis.status == "ok" and r.synopsis_text]
    df = pd.DataFrame(rows, columns=["movieId", "synopsis", "source"])
    df["movieId"] = df["movieId"].astype("int32")
    return df


def coverage(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts per modality and (source, status): ``modality, source, status, movies, share``.

    Failed rows keep the source whose failure is reported; ``none`` marks rows without one.
    """
    missing = [c for m in MODALITIES for c in (f"{m}_status", f"{m}_source")
               if c not in manifest.columns]
    if missing:
        raise ValueError(f"not an enrichment manifest: missing columns {missing}")
    parts = []
    for m in MODALITIES:
        part = pd.DataFrame({
            "modality": m,
            "source": manifest[f"{m}_source"].fillna("none").astype(str),
            "status": manifest[f"{m}_status"].astype(str),
        })
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    out = long.groupby(["modality", "status", "source"]).size().rename("movies").reset_index()
    out["share"] = out["movies"] / max(len(manifest), 1)
    order = {s: i for i, s in enumerate(STATUSES)}
    out = out.sort_values(["modality", "status", "source"],
                          key=lambda s: s.map(order) if s.name == "status" else s)
    return out.reset_index(drop=True)
