"""Stage 02 polite fetcher against the local mirror with 50 ms of latency per request.

A default-profile sample world (generated under /tmp, removed afterwards) is served with
``latency_s=0.05``. The URL list is what stage 02 asks for: TMDB documents and posters, IMDb title
pages and posters, in catalog order. Rounds of the settings below run interleaved (the median of
the rounds is reported, so that load from other processes hits every setting alike):

- concurrency: 8 threads share one ``Fetcher`` without a rate limit; ideal 8 / 0.05 = 160 req/s;
- ratelimit: 8 threads, rate limit 40 req/s (stage 02's default for TMDB hosts, TMDB's published
  ceiling; the limit binds); ideal 40 req/s;
- mirror: 8 threads of bare ``http.client`` requests (no fetcher), the mirror's own capacity.

Then one full ``enrich.run`` (concurrency 8, no rate limit) against the same mirror, and a rerun of
it (everything answered: it must make no request).

Prints ``BENCH 02 fetch_vs_ideal_concurrency``, ``BENCH 02 fetch_vs_ideal_ratelimit`` (throughput /
ideal; target >= 0.8), ``BENCH 02 max_rate_over_limit`` (most requests the mirror logged, by arrival
time, in any closed 1-second window of any rate-limited round, over the limit; must be <= 1.0),
``BENCH 02 mirror_vs_ideal_concurrency`` (the in-process ThreadingHTTPServer's own capacity at this
latency: it is the ceiling when the machine is busy), ``BENCH 02 fetch_vs_mirror_capacity``
(fetcher / bare client, per round), ``BENCH 02 run_vs_ideal_concurrency`` (whole stage,
including poster decoding and the cache, which share the two cores with the mirror),
``BENCH 02 rerun_requests`` (must be 0) and ``BENCH 02 ml25m_tmdb_minutes`` (62,423 ml-25m TMDB
documents at the measured rate-limited pace, 50 ms round trips: the estimate the docs quote).
"""

from __future__ import annotations

import bisect
import http.client
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pandas as pd

from mmlens import artifacts
from mmlens.config import Config
from mmlens.enrich import IMDbProvider, TMDBProvider, run
from mmlens.enrich.fetch import Fetcher
from mmlens.enrich.providers import TMDB_RATE
from mmlens.net import RetryPolicy
from mmlens.sample import Mirror, ensure_world, serve

LATENCY = 0.05
CONCURRENCY = 8
RATE = TMDB_RATE
ROUNDS = 3
N_FREE = 640  # requests per unlimited round (~4 s)
N_LIMITED = 240  # requests per rate-limited round (~6 s)
ML25M_MOVIES = 62_423
RETRY = RetryPolicy(max_attempts=2, base_delay=0.1, connect_timeout=10.0, read_timeout=30.0)

Request = tuple[str, dict[str, str] | None]


def stage02_requests(mirror: Mirror, truth: pd.DataFrame) -> list[Request]:
    """Every URL stage 02 fetches for this world, in catalog order."""
    key = {"api_key": mirror.tmdb_api_key}
    out: list[Request] = []
    for row in truth.itertuples():
        if row.tmdb_doc:
            out.append((f"{mirror.tmdb_api_base}/movie/{int(row.tmdbId)}", key))
        if row.tmdb_poster:
            out.append((f"{mirror.tmdb_image_base}/w500{row.tmdb_poster_path}", None))
        if row.imdb_page:
            out.append((f"{mirror.imdb_base}/title/tt{row.imdbId}/", None))
            out.append((f"{mirror.url}/imdb-img/{row.imdb_image_file}", None))
    return out


def timed(fn: Callable[[Request], int], reqs: list[Request]) -> float:
    """Requests per second of ``fn`` over ``reqs`` on CONCURRENCY threads; all must answer 200."""
    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses = list(pool.map(fn, reqs))
    elapsed = time.perf_counter() - start
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed: {bad[:5]}")
    return len(reqs) / elapsed


def fetcher_round(reqs: list[Request], rate: float) -> float:
    fetcher = Fetcher(rate_limit=rate, retry=RETRY, pool_size=CONCURRENCY)
    try:
        return timed(lambda r: fetcher.get(r[0], params=r[1]).status, reqs)
    finally:
        fetcher.close()


def bare_round(reqs: list[Request]) -> float:
    def get(req: Request) -> int:
        parts = urlsplit(req[0])
        path = parts.path + (f"?{urlencode(req[1])}" if req[1] else "")
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    return timed(get, reqs)


def max_window(times: list[float], window: float = 1.0) -> int:
    """Most events in any closed window of ``window`` seconds."""
    times = sorted(times)
    return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)),
               default=0)


def logged_since(mirror: Mirror, since: int, n: int) -> list[float]:
    """Arrival times of the ``n`` requests logged after index ``since`` (all to one host)."""
    deadline = time.monotonic() + 10
    while len(mirror.requests) < since + n and time.monotonic() < deadline:
        time.sleep(0.01)
    return [r.time for r in mirror.requests[since:]]


def full_run(tmp: Path, mirror: Mirror) -> tuple[float, int]:
    """Requests per second of one whole stage 02 run (concurrency 8, no rate limit), and the
    requests a rerun makes."""
    cfg = Config(data_dir=tmp / "run", sample_profile="default")
    truth = pd.read_parquet(mirror.world_dir / "truth" / "movies.parquet")
    movies = truth[["movieId", "title", "imdbId", "tmdbId"]].copy()
    movies["movieId"] = movies["movieId"].astype("int32")
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    providers = [TMDBProvider(mirror.tmdb_api_base, mirror.tmdb_image_base,
                              api_key=mirror.tmdb_api_key), IMDbProvider(mirror.imdb_base)]
    since = len(mirror.requests)
    start = time.perf_counter()
    manifest = run(cfg, providers=providers, concurrency=CONCURRENCY, rate_limit=math.inf,
                   retry=RETRY, progress=False)
    elapsed = time.perf_counter() - start
    served = len(mirror.requests) - since
    ok = int((manifest["poster_status"] == "ok").sum())
    print(f"full run: {len(manifest)} movies, {ok} posters, {served} requests in {elapsed:.1f} s")
    since_rerun = len(mirror.requests)
    run(cfg, providers=providers, concurrency=CONCURRENCY, rate_limit=math.inf, retry=RETRY,
        progress=False)
    return served / elapsed, len(mirror.requests) - since_rerun


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mmlens-bench02-"))
    try:
        world = ensure_world(Config(data_dir=tmp, sample_profile="default"))
        truth = pd.read_parquet(world / "truth" / "movies.parquet")
        ideal_free = min(CONCURRENCY / LATENCY, math.inf)
        ideal_limited = min(CONCURRENCY / LATENCY, RATE)
        with serve(world, latency_s=LATENCY) as mirror:
            reqs = stage02_requests(mirror, truth)
            free, limited, bare, windows = [], [], [], []
            for i in range(ROUNDS):
                lo = i * N_LIMITED % len(reqs)
                free.append(fetcher_round(reqs[:N_FREE], math.inf))
                since = len(mirror.requests)
                limited.append(fetcher_round(reqs[lo:lo + N_LIMITED], RATE))
                windows.append(max_window(logged_since(mirror, since, N_LIMITED)))
                bare.append(bare_round(reqs[:N_FREE]))
                print(f"round {i + 1}: fetcher {free[-1]:.1f} req/s (ideal {ideal_free:.0f}), "
                      f"rate-limited {limited[-1]:.2f} req/s (limit {RATE:.0f}, busiest second "
                      f"{windows[-1]}), bare http.client {bare[-1]:.1f} req/s", flush=True)
            whole, rerun_requests = full_run(tmp, mirror)
        print(f"BENCH 02 fetch_vs_ideal_concurrency {statistics.median(free) / ideal_free:.3f}")
        print(f"BENCH 02 fetch_vs_ideal_ratelimit {statistics.median(limited) / ideal_limited:.3f}")
        print(f"BENCH 02 max_rate_over_limit {max(windows) / RATE:.3f}")
        print(f"BENCH 02 mirror_vs_ideal_concurrency {statistics.median(bare) / ideal_free:.3f}")
        per_round = statistics.median(f / b for f, b in zip(free, bare, strict=True))
        print(f"BENCH 02 fetch_vs_mirror_capacity {per_round:.3f}")
        print(f"BENCH 02 run_vs_ideal_concurrency {whole / ideal_free:.3f}")
        print(f"BENCH 02 rerun_requests {rerun_requests}")
        print(f"BENCH 02 ml25m_tmdb_minutes {ML25M_MOVIES / statistics.median(limited) / 60:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
