"""Convert any MovieLens release to the common schema: movies, ratings and tags parquet.

Invalid rows are dropped, counted and reported with their reason, never silently:

- ratings: missing values, rating outside 0.5..5 or not a multiple of 0.5, movieId not in the
  catalog, and duplicate (userId, movieId) pairs (the latest rating is kept);
- tags: missing values, empty tags, movieId not in the catalog;
- movies: missing or duplicate movieId; links: unknown movieId, duplicates, malformed imdbId.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mmlens.artifacts import atomic_path

NO_GENRES = "(no genres listed)"

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

# "Title (1999)", "Title (2006-2007)", "Title (2006-)", "Title (2006–2007)"; the year is the first.
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)$")


class ConvertError(ValueError):
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


@dataclass
class RawRelease:
    """The release read into memory, before validation."""

    movies: pd.DataFrame  # movieId, title (raw, with year), genres (list[str])
    ratings: pa.Table  # userId, movieId, rating, timestamp (may hold nulls)
    tags: pa.Table | None = None
    links: pa.Table | None = None  # movieId, imdbId (str), tmdbId


# ----------------------------------------------------------------------------- reading


def read_csv(path: Path, types: Mapping[str, pa.DataType], **parse: Any) -> pa.Table:
    """Read the ``types`` columns of a headed UTF-8 CSV with pyarrow (CRLF, quotes, BOM)."""
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=16 << 20),
            parse_options=pacsv.ParseOptions(**parse),
            convert_options=pacsv.ConvertOptions(
                column_types=dict(types), include_columns=list(types),
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
        raise ConvertError(f"cannot read {path}: {exc}") from exc


def _types(schema: pa.Schema) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in schema}


def read_csv_release(files: Mapping[str, Path]) -> RawRelease:
    """ml-latest-small, ml-25m, ml-32m and the sample: ``movies/ratings/links[/tags].csv``."""
    movies = read_csv(files["movies.csv"], {"movieId": pa.int32(), "title": pa.string(),
                                            "genres": pa.string()}, newlines_in_values=True)
    ratings = read_csv(files["ratings.csv"], _types(RATINGS_SCHEMA))
    links = read_csv(files["links.csv"], {"movieId": pa.int32(), "imdbId": pa.string(),
                                          "tmdbId": pa.int64()})
    tags = None
    if "tags.csv" in files:
        tags = read_csv(files["tags.csv"], _types(TAGS_SCHEMA),
                        newlines_in_values=True)
    frame = movies.to_pandas()
    frame["genres"] = split_genres(frame["genres"], "|")
    return RawRelease(movies=frame, ratings=ratings, tags=tags, links=links)


def _read_separated_ints(path: Path, names: list[str], delimiter: str, skip: int) -> pa.Table:
    """Headerless numeric file whose separator is ``skip+1`` delimiters (``::`` is ``:``,``:``)."""
    all_names: list[str] = []
    for i, name in enumerate(names):
        all_names.append(name)
        if i < len(names) - 1:
            all_names += [f"_gap{i}_{j}" for j in range(skip)]
    types = {"userId": pa.int32(), "movieId": pa.int32(), "rating": pa.float32(),
             "timestamp": pa.int64()}
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=all_names, block_size=16 << 20),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={n: types[n] for n in names}, include_columns=names),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
        raise ConvertError(f"cannot read {path}: {exc}") from exc


def read_ml1m_release(files: Mapping[str, Path]) -> RawRelease:
    """ml-1m: ``::``-separated latin-1 ``movies.dat`` and ``ratings.dat``; no links, no tags."""
    ratings = _read_separated_ints(files["ratings.dat"], ["userId", "movieId", "rating",
                                                          "timestamp"], ":", skip=1)
    rows = []
    for n, line in enumerate(files["movies.dat"].read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise ConvertError(f"{files['movies.dat']}:{n}: expected MovieID::Title::Genres")
        rows.append((int(parts[0]), parts[1], parts[2].strip()))
    movies = pd.DataFrame(rows, columns=["movieId", "title", "genres"])
    movies["movieId"] = movies["movieId"].astype("int32")
    movies["genres"] = split_genres(movies["genres"], "|")
    return RawRelease(movies=movies, ratings=ratings)


def read_ml100k_release(files: Mapping[str, Path]) -> RawRelease:
    """ml-100k: tab ``u.data``; pipe latin-1 ``u.item`` with 19 genre flags named in ``u.genre``."""
    ratings = _read_separated_ints(files["u.data"], ["userId", "movieId", "rating", "timestamp"],
                                   "\t", skip=0)
    genre_names: dict[int, str] = {}
    for line in files["u.genre"].read_text(encoding="latin-1").splitlines():
        if line.strip():
            name, _, index = line.rpartition("|")
            genre_names[int(index)] = name
    order = [genre_names[i] for i in sorted(genre_names)]
    rows = []
    for n, line in enumerate(files["u.item"].read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        flags = parts[5:]
        if len(parts) < 5 or len(flags) != len(order) or not parts[0].isdigit():
            raise ConvertError(
                f"{files['u.item']}:{n}: expected id|title|date|video date|url|{len(order)} flags"
            )
        flagged = zip(order, flags, strict=True)
        genres = [g for g, f in flagged if f.strip() == "1" and g != "unknown"]
        rows.append((int(parts[0]), parts[1], genres))
    movies = pd.DataFrame(rows, columns=["movieId", "title", "genres"])
    movies["movieId"] = movies["movieId"].astype("int32")
    return RawRelease(movies=movies, ratings=ratings)


READERS = {"csv": read_csv_release, "ml-1m": read_ml1m_release, "ml-100k": read_ml100k_release}


# ----------------------------------------------------------------------------- cleaning


def split_genres(genres: pd.Series, sep: str) -> pd.Series:
    """``"A|B"`` -> ``["A", "B"]``; ``(no genres listed)`` and empty -> ``[]``."""
    return genres.fillna("").map(
        lambda s: [g.strip() for g in s.split(sep) if g.strip() and g.strip() != NO_GENRES]
    )


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Titles without their trailing ``(year)``, and the year (first one of a range) or null."""
    stripped = titles.fillna("").astype(str).str.strip()
    parts = stripped.str.extract(_TITLE_YEAR)
    title = parts["title"].str.strip()
    title = title.where(parts["year"].notna() & (title.str.len() > 0), stripped)
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int16")
    return title, year


def normalize_imdb_ids(raw: pd.Series) -> tuple[pd.Series, int]:
    """7-digit zero-padded strings (8-digit ids kept whole); returns them and the invalid count."""
    text = raw.astype("string").str.strip().str.removeprefix("tt")
    valid = text.str.fullmatch(r"\d{1,10}").fillna(False).astype(bool)
    invalid = int((~valid & text.notna() & (text != "")).sum())
    padded = text.where(valid).str.lstrip("0").replace("", "0").str.zfill(7)
    return padded.astype("string"), invalid


def clean_movies(raw: RawRelease, report: TableReport, links_report: TableReport) -> pd.DataFrame:
    """The catalog: one row per movieId, sorted, with year, genres list and links joined."""
    movies = raw.movies
    report.rows_read = len(movies)
    missing = movies["movieId"].isna()
    report.drop("missing_movieId", missing.sum())
    movies = movies[~missing]
    dup = movies["movieId"].duplicated(keep="first")
    report.drop("duplicate_movieId", dup.sum())
    movies = movies[~dup].sort_values("movieId", kind="stable").reset_index(drop=True)
    title, year = split_title_year(movies["title"])
    out = pd.DataFrame({
        "movieId": movies["movieId"].astype("int32"),
        "title": title.astype(object),
        "year": year,
        "genres": movies["genres"],
    })
    imdb, tmdb = _clean_links(raw.links, out["movieId"], links_report)
    out["imdbId"] = imdb
    out["tmdbId"] = tmdb
    report.rows_kept = len(out)
    return out


def _clean_links(
    links: pa.Table | None, movie_ids: pd.Series, report: TableReport
) -> tuple[pd.Series, pd.Series]:
    n = len(movie_ids)
    if links is None:
        return pd.Series([pd.NA] * n, dtype="string"), pd.Series([pd.NA] * n, dtype="Int64")
    frame = links.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(),
                                          pa.int32(): pd.Int32Dtype()}.get)
    report.rows_read = len(frame)
    missing = frame["movieId"].isna()
    report.drop("missing_movieId", missing.sum())
    frame = frame[~missing]
    unknown = ~frame["movieId"].isin(movie_ids)
    report.drop("unknown_movie", unknown.sum())
    frame = frame[~unknown]
    dup = frame["movieId"].duplicated(keep="first")
    report.drop("duplicate_movieId", dup.sum())
    frame = frame[~dup]
    imdb, invalid = normalize_imdb_ids(frame["imdbId"])
    report.drop("invalid_imdbId (kept as null)", invalid)
    report.rows_kept = len(frame)
    by_id = pd.DataFrame({"imdbId": imdb.to_numpy(), "tmdbId": frame["tmdbId"].to_numpy()},
                         index=frame["movieId"].astype("int64").to_numpy())
    aligned = by_id.reindex(movie_ids.astype("int64").to_numpy())
    return (pd.Series(aligned["imdbId"].to_numpy(), dtype="string"),
            pd.Series(aligned["tmdbId"].to_numpy(), dtype="Int64"))


def _drop_nulls(table: pa.Table, report: TableReport) -> pa.Table:
    mask = None
    for name in table.column_names:
        col_ok = pc.is_valid(table[name])
        mask = col_ok if mask is None else pc.and_(mask, col_ok)
    if mask is None:
        return table
    report.drop("missing_value", len(table) - pc.sum(mask).as_py() if len(table) else 0)
    return table.filter(mask)


def clean_ratings(ratings: pa.Table, catalog: np.ndarray, report: TableReport) -> pa.Table:
    """Valid ratings of catalog movies, one per (userId, movieId), the latest kept; file order."""
    report.rows_read = len(ratings)
    ratings = _drop_nulls(ratings, report)
    user = ratings["userId"].to_numpy().astype(np.int32, copy=False)
    movie = ratings["movieId"].to_numpy().astype(np.int32, copy=False)
    rating = ratings["rating"].to_numpy().astype(np.float32, copy=False)
    ts = ratings["timestamp"].to_numpy().astype(np.int64, copy=False)
    keep = np.ones(len(user), dtype=bool)

    def drop(reason: str, bad: np.ndarray) -> None:
        bad = bad & keep
        report.drop(reason, int(bad.sum()))
        keep[bad] = False

    drop("rating_out_of_range", ~((rating >= 0.5) & (rating <= 5.0)))
    drop("rating_not_half_step", (rating * 2) != np.round(rating * 2))
    drop("unknown_movie", ~np.isin(movie, catalog))
    drop("duplicate_user_movie (latest kept)", _older_duplicates(user, movie, ts, keep))
    report.rows_kept = int(keep.sum())
    return pa.table([user[keep], movie[keep], rating[keep], ts[keep]], schema=RATINGS_SCHEMA)


def _older_duplicates(
    user: np.ndarray, movie: np.ndarray, ts: np.ndarray, keep: np.ndarray
) -> np.ndarray:
    """Mask of kept rows that repeat a (user, movie) pair and are not its latest (then last) row."""
    key = (user.astype(np.int64) << 32) | (movie.astype(np.int64) & 0xFFFFFFFF)
    rows = np.flatnonzero(keep)
    repeated = pd.Series(key[rows]).duplicated(keep=False).to_numpy()
    older = np.zeros(len(key), dtype=bool)
    rows = rows[repeated]
    if len(rows) == 0:
        return older
    order = np.lexsort((rows, ts[rows], key[rows]))
    sorted_rows = rows[order]
    sorted_keys = key[sorted_rows]
    is_last = np.r_[sorted_keys[1:] != sorted_keys[:-1], True]
    older[sorted_rows[~is_last]] = True
    return older


def clean_tags(tags: pa.Table | None, catalog: np.ndarray, report: TableReport) -> pa.Table:
    """Tags of catalog movies with a non-empty tag, in file order."""
    if tags is None:
        return TAGS_SCHEMA.empty_table()
    report.rows_read = len(tags)
    tags = _drop_nulls(tags, report)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(tags["tag"])), 0).to_numpy(
        zero_copy_only=False)
    report.drop("empty_tag", int(empty.sum()))
    tags = tags.filter(pa.array(~empty))
    unknown = ~np.isin(tags["movieId"].to_numpy(), catalog)
    report.drop("unknown_movie", int(unknown.sum()))
    tags = tags.filter(pa.array(~unknown))
    report.rows_kept = len(tags)
    return tags.cast(TAGS_SCHEMA)


# ----------------------------------------------------------------------------- writing


def _write_table(table: pa.Table, target: Path) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def convert(fmt: str, files: Mapping[str, Path], out: Mapping[str, Path]) -> dict[str, Any]:
    """Read a release in ``fmt`` from ``files`` (basename -> path), write the ``out`` parquet files
    (keys ``movies``, ``ratings``, ``tags``); return the per-table report."""
    if fmt not in READERS:
        raise ValueError(f"unknown release format {fmt!r}; known: {', '.join(READERS)}")
    raw = READERS[fmt](files)
    reports = {name: TableReport() for name in ("movies", "links", "ratings", "tags")}
    movies = clean_movies(raw, reports["movies"], reports["links"])
    catalog = movies["movieId"].to_numpy()
    ratings = clean_ratings(raw.ratings, catalog, reports["ratings"])
    tags = clean_tags(raw.tags, catalog, reports["tags"])
    _write_table(pa.Table.from_pandas(movies, schema=MOVIES_SCHEMA, preserve_index=False),
                 out["movies"])
    _write_table(ratings, out["ratings"])
    _write_table(tags, out["tags"])
    result = {name: r.as_dict() for name, r in reports.items()}
    if raw.links is None:
        result.pop("links")
    if raw.tags is None:
        result["tags"]["note"] = "this release has no tags"
    return result
