"""Where posters and synopses come from: TMDB, IMDb title pages, a user table, a local folder.

A provider's :meth:`Provider.lookup` returns a :class:`Found` (a poster reference and/or a raw
synopsis) or raises :class:`FetchError`. All network access goes through :class:`Client`, which puts
the response cache in front of the :class:`Fetcher`. Title pages are parsed in ``imdb_page``; what
is taken from a TMDB document is notebook 02's code (``mmlens._nb.data_enrichment``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pandas as pd

from mmlens._nb.data_enrichment import TMDB_POSTER_SIZE, tmdb_fields, tmdb_movie_url
from mmlens.enrich.cache import CacheEntry, CacheKey, ResponseCache
from mmlens.enrich.fetch import MAX_DOCUMENT_BYTES, Fetcher, FetchError
from mmlens.enrich.imdb_page import PageInfo, decode_page, parse_title_page  # noqa: F401
from mmlens.errors import UserError

logger = logging.getLogger("mmlens.enrich")
T = TypeVar("T")

TMDB_API_BASE = "https://api.themoviedb.org/3"
TMDB_IMAGE_BASE = "https://image.tmdb.org/t/p"
# TMDB's rate-limiting page: the legacy limit (40 requests per 10 s) was disabled on 2019-12-16;
# "upper limits ... sit somewhere in the 40 requests per second range" (answer 429 above it).
TMDB_RATE = 40.0  # requests per second to each TMDB host (the API and the image server)
IMDB_BASE = "https://www.imdb.com"
PERMANENT = frozenset({"not_found", "invalid"})  # cached answers: a rerun keeps them
TRANSIENT = "transient"  # a cached record of a passing failure: a rerun asks again
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Movie:
    """The ids a provider may use to find one catalog movie."""

    movie_id: int
    imdb_id: str | None = None  # 7+ digits, no "tt"
    tmdb_id: int | None = None
    title: str = ""


@dataclass
class Found:
    """What a provider knows about a movie; ``status`` is the HTTP status of its document."""

    poster_url: str | None = None
    poster_file: Path | None = None
    poster_key: CacheKey | None = None
    synopsis: str | None = None
    status: int | None = None


class ProviderInputError(UserError, ValueError):
    """A user table or folder given to a provider that cannot be used as one."""


class InvalidContent(ValueError):
    """A complete response whose body is unusable; ``definitive`` ones are cached as negatives."""

    def __init__(self, message: str, definitive: bool = False) -> None:
        super().__init__(message)
        self.definitive = definitive


class ProviderDisabled(FetchError):
    """The provider is switched off for the rest of the run (e.g. TMDB rejected the key)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__("error", message, status)


# --------------------------------------------------------------------------- client


class Client:
    """Cache-first fetching: a cached answer (a body or a permanent failure) is never fetched again.

    A passing failure (connection error, timeout, 5xx or 429 after the retries, an HTML page where
    an image was expected, a rejected key) is recorded as ``transient``: the next run asks again
    and counts it in ``retried`` (and in ``mended`` when it then succeeds).
    """

    def __init__(self, fetcher: Fetcher, cache: ResponseCache) -> None:
        self.fetcher = fetcher
        self.cache = cache
        self.retried = 0
        self.mended = 0
        self.transient = 0  # passing failures recorded in this run
        self._lock = threading.Lock()

    def fetch(self, key: CacheKey, url: str, validate: Callable[[bytes, str], T], *,
              params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
              max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[T, int | None]:
        """``(validate(body, content_type), http_status)`` from the cache or the network."""
        entry = self.cache.get(key)
        retry = entry is not None and entry.outcome not in PERMANENT and not entry.ok
        if entry is not None and not retry:
            if not entry.ok:
                raise FetchError(entry.outcome, entry.error, entry.status)
            try:
                return validate(entry.body, entry.content_type), entry.status
            except InvalidContent:
                self.cache.drop(key)  # stale rules or a damaged entry: fetch again
        if retry:
            with self._lock:
                self.retried += 1
        try:
            got = self.fetcher.get(url, params=params, headers=headers, max_bytes=max_bytes)
        except FetchError as exc:
            self._record(key, exc.kind if exc.kind in PERMANENT else TRANSIENT,
                         CacheEntry("", exc.status, error=str(exc), url=self.fetcher.scrub(url)))
            raise
        try:
            value = validate(got.body, got.content_type)
        except InvalidContent as exc:
            message = f"{exc} ({got.url})"
            self._record(key, "invalid" if exc.definitive else TRANSIENT,
                         CacheEntry("", got.status, got.content_type, got.url, error=message))
            raise FetchError("invalid", message, got.status) from None
        self.cache.put(key, CacheEntry("ok", got.status, got.content_type, got.url,
                                       body=got.body))
        if retry:
            with self._lock:
                self.mended += 1
        return value, got.status

    def _record(self, key: CacheKey, outcome: str, entry: CacheEntry) -> None:
        """Cache a failure: a permanent answer, or a ``transient`` record for the next run."""
        entry.outcome = outcome
        self.cache.put(key, entry)
        if outcome == TRANSIENT:
            with self._lock:
                self.transient += 1


# --------------------------------------------------------------------------- providers


class Provider:
    """Base class: ``name`` is recorded as the source; ``modalities`` what it can deliver."""

    name = "provider"
    modalities: tuple[str, ...] = ("poster", "synopsis")

    def lookup(self, movie: Movie, client: Client) -> Found:
        raise NotImplementedError

    def host_rates(self) -> dict[str, float]:
        """Requests per second that this provider's hosts publish (``netloc`` -> rate)."""
        return {}

    def secrets(self) -> list[str]:
        """Values that must never appear in messages or files."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class TMDBProvider(Provider):
    """TMDB API v3 ``/movie/{tmdbId}``: ``poster_path`` and ``overview`` (notebook 02's
    ``tmdb_movie_url`` and ``tmdb_fields``), at most :data:`TMDB_RATE` requests per second per host.

    The key comes from ``api_key``, else ``TMDB_API_KEY`` (sent as the ``api_key`` query parameter)
    or ``TMDB_BEARER_TOKEN`` (an ``Authorization: Bearer`` header). It is never logged, cached or
    shown. A 401 disables the provider for the run with a single error message.
    """

    name = "tmdb"

    def __init__(self, api_base: str = TMDB_API_BASE, image_base: str = TMDB_IMAGE_BASE,
                 size: str = TMDB_POSTER_SIZE, api_key: str | None = None,
                 bearer_token: str | None = None) -> None:
        self.api_base = api_base.rstrip("/")
        self.image_base = image_base.rstrip("/")
        self.size = size
        self._key = api_key or (None if bearer_token else os.environ.get("TMDB_API_KEY"))
        self._bearer = bearer_token or (None if self._key else
                                        os.environ.get("TMDB_BEARER_TOKEN"))
        if not (self._key or self._bearer):
            raise ValueError("TMDBProvider needs a key: pass api_key or set TMDB_API_KEY "
                             "(v3 key) or TMDB_BEARER_TOKEN (v4 read access token)")
        self._disabled: str | None = None
        self._lock = threading.Lock()

    @staticmethod
    def configured() -> bool:
        """Whether a TMDB key is set in the environment."""
        return bool(os.environ.get("TMDB_API_KEY") or os.environ.get("TMDB_BEARER_TOKEN"))

    def host_rates(self) -> dict[str, float]:
        return {urlsplit(u).netloc.lower(): TMDB_RATE for u in (self.api_base, self.image_base)}

    def secrets(self) -> list[str]:
        return [s for s in (self._key, self._bearer) if s]

    @property
    def disabled(self) -> bool:
        return self._disabled is not None

    def _disable(self, status: int | None) -> None:
        with self._lock:
            first = self._disabled is None
            self._disabled = f"TMDB rejected the API key (HTTP {status}); TMDB skipped"
        if first:
            logger.error("TMDB rejected the API key (HTTP %s): skipping TMDB for the rest of this "
                         "run, the other providers continue. Check TMDB_API_KEY or "
                         "TMDB_BEARER_TOKEN.", status)

    def lookup(self, movie: Movie, client: Client) -> Found:
        if self._disabled:
            raise ProviderDisabled(self._disabled, 401)
        if movie.tmdb_id is None:
            raise FetchError("not_found", "no tmdbId in links")
        params = {"api_key": self._key} if self._key else None
        headers = {"Authorization": f"Bearer {self._bearer}"} if self._bearer else None
        headers = {**(headers or {}), "Accept": "application/json"}
        try:
            doc, status = client.fetch(CacheKey(self.name, "movie", str(movie.tmdb_id)),
                                       tmdb_movie_url(self.api_base, movie.tmdb_id),
                                       parse_json_object, params=params, headers=headers)
        except FetchError as exc:
            if exc.kind == "unauthorized":
                self._disable(exc.status)
                raise ProviderDisabled(self._disabled or "TMDB disabled", exc.status) from None
            raise
        url, overview = tmdb_fields(doc, self.image_base, self.size)
        return Found(poster_url=url, poster_key=CacheKey(self.name, "poster", str(movie.tmdb_id)),
                     synopsis=overview, status=status)

    def __repr__(self) -> str:
        return f"TMDBProvider(api_base={self.api_base!r}, image_base={self.image_base!r})"


class IMDbProvider(Provider):
    """IMDb title pages ``/title/tt<id>/`` of any layout (see :mod:`mmlens.enrich.imdb_page`)."""

    name = "imdb"

    def __init__(self, base: str = IMDB_BASE) -> None:
        self.base = base.rstrip("/")

    def lookup(self, movie: Movie, client: Client) -> Found:
        if not movie.imdb_id:
            raise FetchError("not_found", "no imdbId in links")
        url = f"{self.base}/title/tt{movie.imdb_id}/"
        page, status = client.fetch(
            CacheKey(self.name, "page", f"tt{movie.imdb_id}"), url,
            lambda body, ctype: parse_title_page(decode_html(body, ctype), url),
            headers={"Accept": "text/html", "Accept-Language": "en-US,en;q=0.8"})
        return Found(poster_url=page.image, poster_key=CacheKey(self.name, "poster",
                                                                f"tt{movie.imdb_id}"),
                     synopsis=page.description, status=status)

    def __repr__(self) -> str:
        return f"IMDbProvider(base={self.base!r})"


class TableProvider(Provider):
    """A user table (CSV or parquet) with ``movieId`` and ``poster_url`` and/or ``synopsis``.

    ``poster_url`` may be an http(s) URL or a file path (relative to the table's folder).
    """

    def __init__(self, path: str | Path, name: str = "table") -> None:
        self.path = Path(path)
        self.name = name
        table = _read_table(self.path)
        if "movieId" not in table.columns:
            raise ProviderInputError(f"{self.path} has no movieId column "
                                     f"(columns: {list(table.columns)})")
        present = [c for c in ("poster_url", "synopsis") if c in table.columns]
        if not present:
            raise ProviderInputError(f"{self.path} needs a poster_url and/or synopsis column "
                                     f"(columns: {list(table.columns)})")
        self.modalities = tuple("poster" if c == "poster_url" else "synopsis" for c in present)
        table = table.dropna(subset=["movieId"])
        table = table.assign(movieId=_movie_ids(table["movieId"], self.path))
        table = table.drop_duplicates("movieId", keep="first")
        self._rows: dict[int, dict[str, Any]] = {
            int(r["movieId"]): {c: (None if pd.isna(r[c]) else str(r[c])) for c in present}
            for r in table.to_dict("records")
        }

    def lookup(self, movie: Movie, client: Client) -> Found:
        row = self._rows.get(movie.movie_id)
        if row is None:
            raise FetchError("not_found", f"movieId {movie.movie_id} not in {self.path.name}")
        found = Found(synopsis=row.get("synopsis"))
        ref = (row.get("poster_url") or "").strip()
        if urlsplit(ref).scheme.lower() in ("http", "https"):
            found.poster_url = ref
            found.poster_key = CacheKey(self.name, "poster", str(movie.movie_id))
        elif ref:
            p = Path(ref).expanduser()
            found.poster_file = p if p.is_absolute() else self.path.parent / p
        return found

    def __repr__(self) -> str:
        return f"TableProvider({str(self.path)!r}, name={self.name!r})"


class LocalDirProvider(Provider):
    """Posters already on disk as ``<dir>/<movieId>.<ext>`` (jpg, png, webp, ...)."""

    modalities = ("poster",)

    def __init__(self, directory: str | Path, name: str = "local") -> None:
        self.directory = Path(directory)
        self.name = name
        if not self.directory.is_dir():
            raise ProviderInputError(f"poster folder {self.directory} does not exist")
        self._files: dict[str, Path] = {}
        for p in sorted(self.directory.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self._files.setdefault(p.stem, p)

    def lookup(self, movie: Movie, client: Client) -> Found:
        p = self._files.get(str(movie.movie_id))
        if p is None:
            raise FetchError("not_found", f"no {movie.movie_id}.<ext> in {self.directory}")
        return Found(poster_file=p)

    def __repr__(self) -> str:
        return f"LocalDirProvider({str(self.directory)!r}, name={self.name!r})"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ProviderInputError(f"provider table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise ProviderInputError(f"provider table {path} must be .csv, .tsv or .parquet")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as exc:
        raise ProviderInputError(f"provider table {path} is not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start}): save it as UTF-8 or parquet") from exc
    except (ValueError, OSError) as exc:  # pandas' ParserError and pyarrow's errors included
        raise ProviderInputError(f"provider table {path} cannot be read: "
                                 f"{' '.join(str(exc).split())}") from exc


def _movie_ids(ids: pd.Series, path: Path) -> pd.Series:
    """``ids`` as int64, or a ProviderInputError naming the first value that is not a whole
    number (blank ids are dropped before)."""
    numbers = pd.to_numeric(ids, errors="coerce")
    bad = numbers.isna() | (numbers % 1 != 0)
    if bad.any():
        raise ProviderInputError(f"{path}: {int(bad.sum())} movieId values are not whole "
                                 f"numbers (e.g. {ids[bad].iloc[0]!r})")
    return numbers.astype("int64")


# --------------------------------------------------------------------------- parsing


def parse_json_object(body: bytes, content_type: str = "") -> dict[str, Any]:
    """A JSON object from ``body``; anything else raises InvalidContent (not cached)."""
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        kind = content_type.split(";")[0].strip() or "no content type"
        raise InvalidContent(f"malformed JSON ({kind}): {exc}") from None
    if not isinstance(data, dict):
        raise InvalidContent(f"expected a JSON object, got {type(data).__name__}")
    return data


def decode_html(body: bytes, content_type: str = "") -> str:
    """Text of an HTML response; a non-HTML content type raises InvalidContent (not cached)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind and kind not in ("text/html", "application/xhtml+xml", "text/plain"):
        raise InvalidContent(f"expected an HTML page, got content type {kind!r}")
    return decode_page(body, content_type)
