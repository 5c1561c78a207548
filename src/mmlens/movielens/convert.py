"""Convert any MovieLens release to the common schema: movies, ratings and tags parquet.

Invalid rows are dropped, counted and reported with their reason, never silently:

- ratings: missing values, rating outside 0.5..5 or not a multiple of 0.5, movieId not in the
  catalog, and duplicate (userId, movieId) pairs (the latest rating is kept);
- tags: missing values, empty tags, movieId not in the catalog;
- movies: missing or duplicate movieId; links: unknown movieId, duplicates, malformed imdbId.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mmlens.artifacts import atomic_path
from mmlens.movielens.ratings import Pieces, csv_pieces, write_ratings
from mmlens.movielens.schema import (
    MOVIES_SCHEMA,
    RATINGS_SCHEMA,
    TAGS_SCHEMA,
    ConvertError,
    TableReport,
)

__all__ = ["MOVIES_SCHEMA", "RATINGS_SCHEMA", "TAGS_SCHEMA", "ConvertError", "RawRelease",
           "TableReport", "convert", "split_genres", "split_title_year"]

RATING_COLUMNS = [f.name for f in RATINGS_SCHEMA]

NO_GENRES = "(no genres listed)"

# "Title (1999)", "Title (2006-2007)", "Title (2006-)", "Title (2006–2007)"; the year is the first.
# RE2 syntax (pyarrow.compute): blanks are ASCII and Unicode spaces, as ``str.strip`` sees them.
_BLANK = r"[\s\p{Z}]*"
_TITLE_YEAR = (rf"^(?P<title>.*?){_BLANK}\((?P<year>\d{{4}})"
               rf"(?:{_BLANK}[-–]{_BLANK}(?:\d{{4}})?)?\)$")


@dataclass
class RawRelease:
    """The release read into memory, before validation."""

    movies: pd.DataFrame  # movieId, title (raw, with year), genres (list[str])
    ratings: Pieces  # pieces of userId, movieId, rating, timestamp (may hold nulls)
    tags: Callable[[], pa.Table] | None = None  # read when cleaned, beside the ratings stream
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
    ratings = csv_pieces(files["ratings.csv"])
    links = read_csv(files["links.csv"], {"movieId": pa.int32(), "imdbId": pa.string(),
                                          "tmdbId": pa.int64()})
    tags = None
    if "tags.csv" in files:
        tags = partial(read_csv, files["tags.csv"], _types(TAGS_SCHEMA), newlines_in_values=True)
    frame = movies.to_pandas()
    frame["genres"] = split_genres(frame["genres"], "|")
    return RawRelease(movies=frame, ratings=ratings, tags=tags, links=links)


def read_ml1m_release(files: Mapping[str, Path]) -> RawRelease:
    """ml-1m: ``::``-separated latin-1 ``movies.dat`` and ``ratings.dat``; no links, no tags."""
    ratings = csv_pieces(files["ratings.dat"], RATING_COLUMNS, ":", skip=1)
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
    ratings = csv_pieces(files["u.data"], RATING_COLUMNS, "\t")
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


def _arrow_strings(values: pd.Series) -> pa.Array:
    return pa.array(values.astype(object), type=pa.string(), from_pandas=True)


def split_genres(genres: pd.Series, sep: str) -> pd.Series:
    """``"A|B"`` -> ``["A", "B"]``; ``(no genres listed)`` and empty -> ``[]``."""
    lists = pc.split_pattern(pc.fill_null(_arrow_strings(genres), ""), sep)
    names = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    keep = pc.and_(pc.not_equal(names, ""), pc.not_equal(names, NO_GENRES))
    per_row = np.bincount(pc.list_parent_indices(lists).filter(keep).to_numpy(),
                          minlength=len(lists))
    offsets = pa.array(np.r_[0, np.cumsum(per_row)].astype(np.int32))
    kept = pa.ListArray.from_arrays(offsets, names.filter(keep))
    return kept.to_pandas().set_axis(genres.index)


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Titles without their trailing ``(year)``, and the year (first one of a range) or null."""
    stripped = pc.utf8_trim_whitespace(pc.fill_null(_arrow_strings(titles), ""))
    parts = pc.extract_regex(stripped, _TITLE_YEAR)
    title = pc.utf8_trim_whitespace(parts.field("title"))
    has_year = pc.and_(parts.is_valid(), pc.greater(pc.utf8_length(title), 0))
    title = pc.if_else(has_year, title, stripped)
    year = pc.if_else(parts.is_valid(), parts.field("year"), None).cast(pa.int16())
    year_type = {pa.int16(): pd.Int16Dtype()}.get
    return (title.to_pandas().set_axis(titles.index),
            year.to_pandas(types_mapper=year_type).set_axis(titles.index))


def normalize_imdb_ids(raw: pd.Series) -> tuple[pd.Series, int]:
    """7-digit zero-padded strings (8-digit ids kept whole); returns them and the invalid count."""
    text = pc.utf8_trim_whitespace(_arrow_strings(raw))
    text = pc.replace_substring_regex(text, "^tt", "")
    valid = pc.fill_null(pc.match_substring_regex(text, r"^\d{1,10}$"), False)
    invalid = pc.sum(pc.and_(pc.invert(valid), pc.not_equal(text, ""))).as_py() or 0
    digits = pc.utf8_ltrim(text, "0")
    digits = pc.if_else(pc.equal(digits, ""), "0", digits)
    padded = pc.if_else(valid, pc.utf8_lpad(digits, 7, "0"), None)
    return padded.to_pandas().astype("string").set_axis(raw.index), int(invalid)


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
    if not any(column.null_count for column in table.columns):
        return table
    mask = None
    for name in table.column_names:
        col_ok = pc.is_valid(table[name])
        mask = col_ok if mask is None else pc.and_(mask, col_ok)
    report.drop("missing_value", len(table) - pc.sum(mask).as_py())
    return table.filter(mask)


def clean_tags(tags: pa.Table | None, catalog: np.ndarray, report: TableReport) -> pa.Table:
    """Tags of catalog movies with a non-empty tag, in file order."""
    if tags is None:
        return TAGS_SCHEMA.empty_table()
    report.rows_read = len(tags)
    tags = _drop_nulls(tags, report)
    blank = pc.or_(pc.utf8_is_space(tags["tag"]), pc.equal(pc.utf8_length(tags["tag"]), 0))
    empty = blank.to_numpy()  # no nulls left; pyarrow 10 (the image's) has no zero_copy_only here
    unknown = ~np.isin(tags["movieId"].to_numpy(), catalog) & ~empty
    report.drop("empty_tag", int(empty.sum()))
    report.drop("unknown_movie", int(unknown.sum()))
    dropped = empty | unknown
    if dropped.any():
        tags = tags.filter(pa.array(~dropped))
    report.rows_kept = len(tags)
    return tags.cast(TAGS_SCHEMA)


# ----------------------------------------------------------------------------- writing


def _write_table(table: pa.Table, target: Path, **options: Any) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, **options)


def _convert_catalog_and_tags(
    raw: RawRelease, catalog: np.ndarray, out: Mapping[str, Path], reports: dict[str, TableReport]
) -> None:
    movies = clean_movies(raw, reports["movies"], reports["links"])
    _write_table(pa.Table.from_pandas(movies, schema=MOVIES_SCHEMA, preserve_index=False),
                 out["movies"])
    tags = raw.tags() if raw.tags is not None else None
    # A dictionary for the tag text only: for ids and timestamps it costs more than it saves.
    _write_table(clean_tags(tags, catalog, reports["tags"]), out["tags"],
                 use_dictionary=["tag"])


def convert(fmt: str, files: Mapping[str, Path], out: Mapping[str, Path]) -> dict[str, Any]:
    """Read a release in ``fmt`` from ``files`` (basename -> path), write the ``out`` parquet files
    (keys ``movies``, ``ratings``, ``tags``); return the per-table report."""
    if fmt not in READERS:
        raise ValueError(f"unknown release format {fmt!r}; known: {', '.join(READERS)}")
    raw = READERS[fmt](files)
    reports = {name: TableReport() for name in ("movies", "links", "ratings", "tags")}
    ids = raw.movies["movieId"]
    catalog = np.unique(ids[ids.notna()].to_numpy(dtype=np.int64)).astype(np.int32)
    # The small tables are cleaned and written beside the ratings stream (mostly GIL-free work).
    with ThreadPoolExecutor(max_workers=1) as pool:
        side = pool.submit(_convert_catalog_and_tags, raw, catalog, out, reports)
        write_ratings(raw.ratings(), catalog, out["ratings"], reports["ratings"])
        side.result()
    result = {name: r.as_dict() for name, r in reports.items()}
    if raw.links is None:
        result.pop("links")
    if raw.tags is None:
        result["tags"]["note"] = "this release has no tags"
    return result
