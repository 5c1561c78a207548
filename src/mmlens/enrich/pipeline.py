"""Stage 02: enrich every catalog movie with a poster and a synopsis.

Providers are tried in order; per modality the first success wins and its source is recorded. Work
runs in a thread pool over movies, all requests share one polite :class:`Fetcher`, and every answer
lands in the response cache first, so a killed run resumes where it stopped and a rerun asks again
only what failed for a passing reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mmlens import artifacts
from mmlens.config import Config
from mmlens.enrich.cache import ResponseCache, remove_temp_files, utc_now, write_atomic
from mmlens.enrich.fetch import DEFAULT_RATE, Fetcher, FetchError
from mmlens.enrich.images import (
    MAX_PIXELS,
    InvalidImage,
    check_image_content_type,
    normalize_image,
)
from mmlens.enrich.manifest import (
    MovieResult,
    Outcome,
    manifest_frame,
    pick_failure,
    synopses_frame,
)
from mmlens.enrich.providers import (
    Client,
    Found,
    IMDbProvider,
    InvalidContent,
    Movie,
    Provider,
    TMDBProvider,
)
from mmlens.enrich.text import clean_synopsis
from mmlens.errors import UserError
from mmlens.net import RetryPolicy

MAX_IMAGE_BYTES = 10 * 1024 * 1024
CONCURRENCY = 16  # movies in flight: keeps 40 req/s going at round trips up to ~0.4 s per movie
SAMPLE_CONCURRENCY = 8  # the local mirror shares the machine's cores with the stage
SAMPLE_RATE = 200.0  # req/s to the local mirror: the default sample finishes in seconds
IMDB_NOTICE = ("02 enrich: IMDb title pages are on. IMDb's conditions of use forbid scraping its "
               "pages: you fetch them on your own responsibility.")
SAMPLE_RETRY = RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=5.0, connect_timeout=5.0,
                           read_timeout=15.0)
_STATUS_OF_KIND = {"not_found": "not_found", "invalid": "invalid", "error": "error",
                   "unauthorized": "error"}


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every poster."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_PIXELS


def run(cfg: Config, *, providers: Sequence[Provider | str] | None = None,
        imdb_pages: bool = False, concurrency: int | None = None, rate_limit: float | None = None,
        limit: int | None = None, retry: RetryPolicy | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES, checkpoint_every: int = 100,
        progress: bool = True) -> pd.DataFrame:
    """Fetch posters and synopses for the catalog, print a summary, return the manifest (also
    written to disk with the synopses table and the poster files).

    Providers, tried in order: TMDB (needs ``TMDB_API_KEY`` or ``TMDB_BEARER_TOKEN``; in sample
    mode the local mirror imitates it), then IMDb title pages when ``imdb_pages=True``: IMDb's
    conditions of use forbid scraping, so they are off unless you opt in (a notice is printed).
    ``providers`` replaces that list: instances (e.g. :class:`TableProvider`,
    :class:`LocalDirProvider`) or the names ``"tmdb"`` / ``"imdb"``.

    ``rate_limit``: requests per second to every host; by default 40 to each TMDB host (TMDB's
    published ceiling), 4 to other hosts, 200 to the sample mirror. ``concurrency``: movies in
    flight (default 16, 8 in sample mode). ``limit``: only the first ``limit`` movies.

    Expected wall time for ml-25m (62,423 movies) at the defaults: about 30 minutes. 62,423 TMDB
    documents at 40 requests per second take 26 minutes, the posters come from TMDB's image host
    at the same time, and the limiter's one-second window costs a round trip per 40 requests: with
    50 ms round trips to a local mirror it reached 37.6 requests per second (bench_02_fetch), 28
    minutes for ml-25m; longer real round trips cost a little more. A rerun reuses the cache and
    asks again only what failed for a passing reason (connection errors, timeouts, 5xx, 429);
    permanent answers (404, not an image, no id) are kept.
    """
    concurrency = concurrency or (SAMPLE_CONCURRENCY if cfg.is_sample else CONCURRENCY)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if providers is not None and imdb_pages:
        raise ValueError("imdb_pages applies to the default providers: with providers=[...], "
                         "name 'imdb' in that list instead")
    start = time.perf_counter()
    movies = load_catalog(artifacts.require(cfg, "movies"), limit)
    names = ["tmdb", "imdb"] if imdb_pages else ["tmdb"]
    with _provider_context(cfg, names if providers is None else providers) as (chosen, sample):
        if any(isinstance(p, IMDbProvider) for p in chosen):
            print(IMDB_NOTICE, flush=True)
        fetcher = Fetcher(rate_limit=rate_limit or (SAMPLE_RATE if sample else DEFAULT_RATE),
                          retry=retry or (SAMPLE_RETRY if sample else RetryPolicy()),
                          pool_size=max(concurrency, 4),
                          host_rates=None if sample or rate_limit else _host_rates(chosen))
        for p in chosen:
            for secret in p.secrets():
                fetcher.add_secret(secret)
        try:
            results, client = _enrich_all(cfg, movies, chosen, fetcher, concurrency,
                                          ImageLimits(max_image_bytes), checkpoint_every,
                                          progress)
        finally:
            fetcher.close()
    manifest = _write_outputs(cfg, results)
    _print_summary(manifest, client, chosen, time.perf_counter() - start)
    return manifest


def load_catalog(movies_path: Path, limit: int | None = None) -> list[Movie]:
    """Movies (ids only) from ``movies.parquet`` in catalog order."""
    df = pd.read_parquet(movies_path)
    missing = [c for c in ("movieId", "imdbId", "tmdbId") if c not in df.columns]
    if missing:
        raise ValueError(f"{movies_path} lacks columns {missing}: rerun notebook 01")
    if limit is not None:
        df = df.head(limit)
    titles = df["title"] if "title" in df.columns else pd.Series([""] * len(df))
    return [Movie(int(m), _imdb_id(i), None if pd.isna(t) else int(t), str(title))
            for m, i, t, title in zip(df["movieId"], df["imdbId"], df["tmdbId"], titles,
                                      strict=True)]


def _imdb_id(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip().lower().removeprefix("tt")
    if text.endswith(".0"):
        text = text[:-2]
    return text.zfill(7) if text.isdigit() and int(text) > 0 else None


@contextlib.contextmanager
def _provider_context(cfg: Config, providers: Sequence[Provider | str]
                      ) -> Iterator[tuple[list[Provider], bool]]:
    """The providers to use; starts the sample mirror when a sample run names one."""
    if cfg.is_sample and any(isinstance(p, str) for p in providers):
        from mmlens.sample import serve_sample_world

        with serve_sample_world(cfg) as mirror:
            defaults = {
                "tmdb": lambda: TMDBProvider(mirror.tmdb_api_base, mirror.tmdb_image_base,
                                             api_key=mirror.tmdb_api_key),
                "imdb": lambda: IMDbProvider(mirror.imdb_base),
            }
            yield _resolve(providers, defaults), True
        return
    if "tmdb" in providers and not TMDBProvider.configured():
        raise UserError("stage 02 needs a TMDB API key: set TMDB_API_KEY (or TMDB_BEARER_TOKEN), "
                        "or pass providers=[...] (a table or a folder of posters of your own)")
    yield _resolve(providers, {"tmdb": TMDBProvider, "imdb": IMDbProvider}), False


def _host_rates(providers: Sequence[Provider]) -> dict[str, float]:
    """The published request rates of the providers' hosts (the lowest where two disagree)."""
    rates: dict[str, float] = {}
    for p in providers:
        for host, rate in p.host_rates().items():
            rates[host] = min(rate, rates.get(host, rate))
    return rates


def _resolve(providers: Sequence[Provider | str], defaults: dict[str, Any]) -> list[Provider]:
    out: list[Provider] = []
    for p in providers:
        if isinstance(p, Provider):
            out.append(p)
        elif isinstance(p, str) and p.lower() in defaults:
            out.append(defaults[p.lower()]())
        else:
            raise ValueError(f"unknown provider {p!r}: pass a Provider or one of {list(defaults)}")
    if not out:
        raise ValueError("no providers given")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"provider names must be unique (they are recorded as sources): {names}")
    return out


def _enrich_all(cfg: Config, movies: list[Movie], providers: list[Provider], fetcher: Fetcher,
                concurrency: int, limits: ImageLimits, checkpoint_every: int,
                progress: bool) -> tuple[list[MovieResult], Client]:
    cache = ResponseCache(artifacts.path(cfg, "enrich_cache"))
    posters_dir = artifacts.path(cfg, "posters_dir")
    posters_dir.mkdir(parents=True, exist_ok=True)
    cache.clean_temp()  # leftovers of a killed run: never complete, safe to drop
    remove_temp_files(posters_dir)
    remove_temp_files(artifacts.path(cfg, "enrich_manifest").parent, recursive=False)
    client = Client(fetcher, cache)
    results: list[MovieResult | None] = [None] * len(movies)
    done = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="enrich") as pool:
        futures = {pool.submit(enrich_movie, m, providers, client, posters_dir, limits): i
                   for i, m in enumerate(movies)}
        try:
            for fut in tqdm(as_completed(futures), total=len(futures), desc="02 enrich",
                            unit="movie", disable=not progress):
                results[futures[fut]] = fut.result()
                done += 1
                if checkpoint_every > 0 and done % checkpoint_every == 0 and done < len(movies):
                    artifacts.write_parquet(manifest_frame([r for r in results if r]),
                                            artifacts.path(cfg, "enrich_manifest"))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [r for r in results if r is not None], client


def enrich_movie(movie: Movie, providers: Sequence[Provider], client: Client, posters_dir: Path,
                 limits: ImageLimits = ImageLimits()) -> MovieResult:
    """Try ``providers`` in order until both modalities are found (or all were tried)."""
    result = MovieResult(movie.movie_id)
    failures: dict[str, list[Outcome]] = {"poster": [], "synopsis": []}
    done = {"poster": False, "synopsis": False}
    for provider in providers:
        need = [m for m in ("poster", "synopsis") if not done[m] and m in provider.modalities]
        if not need:
            continue
        try:
            found = provider.lookup(movie, client)
        except FetchError as exc:
            for m in need:
                failures[m].append(_failure(exc, provider.name, client))
            continue
        if "synopsis" in need:
            text = clean_synopsis(found.synopsis)
            if text:
                result.synopsis = Outcome("ok", provider.name, found.status)
                result.synopsis_text = text
                done["synopsis"] = True
            else:
                failures["synopsis"].append(Outcome("missing", provider.name, found.status,
                                                    "no synopsis"))
        if "poster" in need:
            done["poster"] = _poster(movie, provider.name, found, client, posters_dir, limits,
                                     result, failures["poster"])
    for m in ("poster", "synopsis"):
        if not done[m]:
            setattr(result, m, pick_failure(failures[m]))
    if not done["poster"]:
        with contextlib.suppress(FileNotFoundError):
            (posters_dir / f"{movie.movie_id}.jpg").unlink()  # stale file of an earlier run
    result.fetched_at = utc_now()
    return result


def _poster(movie: Movie, source: str, found: Found, client: Client, posters_dir: Path,
            limits: ImageLimits, result: MovieResult, failures: list[Outcome]) -> bool:
    """Fetch, validate and store the poster ``found`` points to; True on success."""
    if not (found.poster_url or found.poster_file):
        failures.append(Outcome("missing", source, found.status, "no poster"))
        return False
    try:
        if found.poster_file is not None:
            jpeg, status = _local_image(found.poster_file, limits), None
        else:
            assert found.poster_key is not None and found.poster_url is not None
            jpeg, status = client.fetch(found.poster_key, found.poster_url,
                                        lambda body, ctype: _validate_image(body, ctype, limits),
                                        headers={"Accept": "image/*"},
                                        max_bytes=limits.max_bytes)
    except FetchError as exc:
        failures.append(_failure(exc, source, client))
        return False
    target = posters_dir / f"{movie.movie_id}.jpg"
    write_atomic(target, jpeg)
    result.poster = Outcome("ok", source, status)
    result.poster_bytes = len(jpeg)
    result.poster_sha256 = hashlib.sha256(jpeg).hexdigest()
    return True


def _validate_image(body: bytes, content_type: str, limits: ImageLimits) -> bytes:
    try:
        check_image_content_type(content_type)
    except InvalidImage as exc:
        raise InvalidContent(str(exc), definitive=False) from None  # e.g. a challenge page
    try:
        return normalize_image(body, max_pixels=limits.max_pixels)
    except InvalidImage as exc:
        raise InvalidContent(str(exc), definitive=True) from None


def _local_image(path: Path, limits: ImageLimits) -> bytes:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise FetchError("invalid", f"{path.name} is {size} bytes, over the cap of "
                             f"{limits.max_bytes}")
        return normalize_image(path.read_bytes(), max_pixels=limits.max_pixels)
    except OSError as exc:
        raise FetchError("error", f"cannot read {path}: {exc.strerror or exc}") from None
    except InvalidImage as exc:
        raise FetchError("invalid", f"{path.name}: {exc}") from None


def _failure(exc: FetchError, source: str, client: Client) -> Outcome:
    return Outcome(_STATUS_OF_KIND.get(exc.kind, "error"), source, exc.status,
                   client.fetcher.scrub(str(exc)))


def _write_outputs(cfg: Config, results: list[MovieResult]) -> pd.DataFrame:
    manifest = manifest_frame(results)
    artifacts.write_parquet(synopses_frame(results), artifacts.path(cfg, "synopses"))
    artifacts.write_parquet(manifest, artifacts.path(cfg, "enrich_manifest"))
    return manifest


def _print_summary(manifest: pd.DataFrame, client: Client, providers: list[Provider],
                   seconds: float) -> None:
    """What the run did, in five lines."""
    n = len(manifest)
    names = ", ".join(p.name for p in providers)
    rows, missing = [], {}
    for m, label in (("poster", "posters fetched"), ("synopsis", "synopses")):
        ok = manifest[manifest[f"{m}_status"] == "ok"]
        by_source = ", ".join(f"{s} {c:,}" for s, c in ok[f"{m}_source"].value_counts().items())
        rows.append((label, f"{len(ok):,}/{n:,}" + (f" ({by_source})" if by_source else "")))
        missing[m] = n - len(ok)
    rows.append(("retried", f"{_count(client.retried, 'request')} that failed in an earlier run "
                            f"for a passing reason: {client.mended:,} now succeed"))
    rows.append(("failed", f"{_count(client.transient, 'request')} for a passing reason (a rerun "
                           f"retries them); {_count(missing['poster'], 'movie')} without a poster, "
                           f"{missing['synopsis']:,} without a synopsis (the manifest says why)"))
    print(f"02 enrich: {n:,} movies in {seconds:.1f} s, {client.fetcher.stats.requests:,} requests "
          f"(providers: {names})", *(f"  {label:<16}{text}" for label, text in rows), sep="\n",
          flush=True)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
