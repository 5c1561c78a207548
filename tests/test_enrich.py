"""Stage 02 enrichment: cleaning, parsing, images, politeness, faults, cache and resume."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmlens import artifacts
from mmlens.config import Config
from mmlens.enrich import (
    MANIFEST_COLUMNS,
    IMDbProvider,
    LocalDirProvider,
    TableProvider,
    TMDBProvider,
    coverage,
    enrich_movie,
    run,
)
from mmlens.enrich.cache import CacheEntry, CacheKey, ResponseCache, write_atomic
from mmlens.enrich.fetch import Fetcher, FetchError, RateLimiter
from mmlens.enrich.images import InvalidImage, check_image_content_type, normalize_image
from mmlens.enrich.manifest import MovieResult, Outcome, manifest_frame
from mmlens.enrich.providers import Client, Movie, parse_title_page
from mmlens.enrich.text import clean_synopsis
from mmlens.net import RetryPolicy
from mmlens.sample import Fault, ensure_world, serve

SRC = Path(__file__).resolve().parents[1] / "src"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=2.0, connect_timeout=2.0,
                         read_timeout=0.5)


# --------------------------------------------------------------------------- helpers


def _jpeg(size: tuple[int, int] = (30, 45), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png_rgba() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (20, 10), (0, 0, 255, 0)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = Config(data_dir=tmp_path_factory.mktemp("world"), sample_profile="small")
    return ensure_world(cfg)


@pytest.fixture(scope="module")
def truth(world: Path) -> pd.DataFrame:
    return pd.read_parquet(world / "truth" / "movies.parquet")


@pytest.fixture()
def mirror(world: Path):
    with serve(world) as m:
        yield m


def _sample_cfg(data_dir: Path, truth: pd.DataFrame, rows: pd.DataFrame | None = None) -> Config:
    """A sample config whose movies.parquet (stage 01's output) lists ``rows`` of the truth."""
    cfg = Config(data_dir=data_dir, sample_profile="small")
    movies = (truth if rows is None else rows)[["movieId", "title", "imdbId", "tmdbId"]].copy()
    movies["movieId"] = movies["movieId"].astype("int32")
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    return cfg


def _providers(mirror, key: str | None = None) -> list:
    return [TMDBProvider(mirror.tmdb_api_base, mirror.tmdb_image_base,
                         api_key=key or mirror.tmdb_api_key), IMDbProvider(mirror.imdb_base)]


def _movie(row: pd.Series) -> Movie:
    tmdb = None if pd.isna(row["tmdbId"]) else int(row["tmdbId"])
    return Movie(int(row["movieId"]), str(row["imdbId"]), tmdb)


def _client(tmp_path: Path, **fetcher_opts) -> Client:
    opts = {"rate_limit": 500.0, "retry": FAST_RETRY, **fetcher_opts}
    return Client(Fetcher(**opts), ResponseCache(tmp_path / "cache"))


def _served(mirror, since: int = 0) -> list[str]:
    return [r.path for r in mirror.requests[since:]]


def _logged(mirror, n: int) -> list:
    """The mirror's log once it holds ``n`` requests (it records after sending a response)."""
    deadline = time.monotonic() + 10
    while len(mirror.requests) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(mirror.requests)


def _settled(mirror) -> list[str]:
    """Paths in the mirror's log once no request has been logged for 0.3 s."""
    seen = -1
    while seen != len(mirror.requests):
        seen = len(mirror.requests)
        time.sleep(0.3)
    return _served(mirror)


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(("raw", "clean"), [
    ("Tom &amp; Jerry&#39;s   big\n day.", "Tom & Jerry's big day."),
    ("A <b>bold</b> plan.<br/>Then more.", "A bold plan. Then more."),
    ("A heist goes wrong.::JaneDoe", "A heist goes wrong."),
    ("Twice &amp;amp; escaped", "Twice & escaped"),
    ("\u00a0 spaced\tout  ", "spaced out"),
])
def test_clean_synopsis(raw: str, clean: str) -> None:
    assert clean_synopsis(raw) == clean


@pytest.mark.parametrize("raw", [None, "", "   ", "<p></p>", "Add a Plot", "::Someone", 42])
def test_clean_synopsis_empty_is_missing(raw: object) -> None:
    assert clean_synopsis(raw) is None


# --------------------------------------------------------------------------- page parsing


def _page(head: str) -> str:
    return f"<!DOCTYPE html><html><head>{head}</head><body><h1>x</h1></body></html>"


OG = ('<meta property="og:image" content="https://img.example/og.jpg">'
      '<meta property="og:description" content="From og &amp; meta.">')


def test_title_page_json_ld_wins_over_og() -> None:
    ld = ('<script type="application/ld+json">{"@type": "Movie", "image": '
          '"https://img.example/ld.jpg", "description": "From LD."}</script>')
    info = parse_title_page(_page(OG + ld), "https://www.imdb.com/title/tt0000001/")
    assert (info.image, info.description) == ("https://img.example/ld.jpg", "From LD.")


def test_title_page_json_ld_list_graph_and_image_object() -> None:
    ld = ('<script type="application/ld+json">[{"@type": "WebSite", "name": "IMDb"}, '
          '{"@graph": [{"@type": "Organization", "logo": "x"}, {"@type": "Movie", '
          '"image": {"@type": "ImageObject", "url": "/media/p.jpg"}, '
          '"description": "Graph text."}]}]</script>')
    info = parse_title_page(_page(ld), "https://www.imdb.com/title/tt0000001/")
    assert info.image == "https://www.imdb.com/media/p.jpg"  # relative URL resolved
    assert info.description == "Graph text."


def test_title_page_without_or_with_broken_json_ld_falls_back_to_og() -> None:
    for extra in ("", '<script type="application/ld+json">{"@type": "Movie", </script>'):
        info = parse_title_page(_page(OG + extra))
        assert info.image == "https://img.example/og.jpg"
        assert info.description == "From og & meta."


def test_title_page_with_nothing_and_non_http_image() -> None:
    info = parse_title_page(_page('<meta property="og:image" content="javascript:alert(1)">'))
    assert (info.image, info.description) == (None, None)


# --------------------------------------------------------------------------- images


def test_normalize_image_gives_rgb_jpeg() -> None:
    out = normalize_image(_png_rgba())
    with Image.open(io.BytesIO(out)) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (20, 10))
        assert im.getpixel((5, 5))[0] > 240  # transparent became white


@pytest.mark.parametrize(("data", "match"), [
    (_jpeg()[: len(_jpeg()) // 2], "(?i)truncated"),
    (b"<!DOCTYPE html><html><body>Just a moment...</body></html>", "HTML"),
    (b"", "empty"),
])
def test_invalid_images_are_rejected(data: bytes, match: str) -> None:
    with pytest.raises(InvalidImage, match=match):
        normalize_image(data)


def test_pixel_cap() -> None:
    with pytest.raises(InvalidImage, match="pixels"):
        normalize_image(_jpeg((40, 40)), max_pixels=1000)
    assert normalize_image(_jpeg((20, 20)), max_pixels=1000)


def test_content_type_check() -> None:
    check_image_content_type("image/jpeg")
    check_image_content_type("application/octet-stream")
    check_image_content_type("")
    with pytest.raises(InvalidImage, match="text/html"):
        check_image_content_type("text/html; charset=utf-8")


# --------------------------------------------------------------------------- rate limiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_limiter_spaces_requests_per_host() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
    slots = [limiter.reserve("a") for _ in range(9)]  # nine callers arriving at once
    assert [round(s - slots[0], 9) for s in slots] == [i * 0.25 for i in range(9)]
    assert limiter.reserve("b") == clock.now  # another host is not held up
    clock.now += 10.0  # an idle host does not bank tokens: no burst afterwards
    a, b = limiter.reserve("a"), limiter.reserve("a")
    assert (a, b - a) == (clock.now, 0.25)


def test_rate_limiter_acquire_sleeps_until_slot() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(5):
        limiter.acquire("h")
        times.append(clock.now)
    assert (len(times) - 1) / (times[-1] - times[0]) <= 2.0
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_measured_rate_never_exceeds_limit(mirror, truth: pd.DataFrame) -> None:
    fetcher = Fetcher(rate_limit=25.0, retry=FAST_RETRY)
    ids = [int(t) for t in truth[truth["tmdb_doc"]]["tmdbId"].dropna()[:16]]
    urls = [f"{mirror.tmdb_api_base}/movie/{i}" for i in ids]
    statuses: list[int] = []

    def get(url: str) -> None:
        statuses.append(fetcher.get(url, params={"api_key": mirror.tmdb_api_key}).status)

    threads = [threading.Thread(target=get, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * len(urls)
    times = sorted(r.time for r in _logged(mirror, len(urls)))
    assert len(times) == len(urls)
    # 15 gaps of 1/25 s; allow 10% for jitter in when the server logs each request
    assert (len(times) - 1) / (times[-1] - times[0]) <= 25.0 * 1.1


# --------------------------------------------------------------------------- fetcher faults


def _doc_url(mirror, truth: pd.DataFrame, i: int = 0) -> tuple[str, dict[str, str]]:
    tmdb_id = int(truth[truth["tmdb_doc"] & truth["tmdbId"].notna()]["tmdbId"].iloc[i])
    return f"{mirror.tmdb_api_base}/movie/{tmdb_id}", {"api_key": mirror.tmdb_api_key}


def test_429_retry_after_is_honoured(mirror, truth: pd.DataFrame) -> None:
    url, params = _doc_url(mirror, truth)
    mirror.add_fault(r"^/tmdb/3/movie/", Fault("status", status=429, retry_after="1"))
    fetcher = Fetcher(rate_limit=100.0, retry=FAST_RETRY)
    got = fetcher.get(url, params=params)
    assert got.status == 200 and b'"id"' in got.body
    assert fetcher.stats.retry_waits == [1.0]
    first, second = _logged(mirror, 2)
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.9


@pytest.mark.parametrize("fault", [
    Fault("status", status=500),
    Fault("status", status=503),
    Fault("reset"),
    Fault("delay", seconds=1.5),  # longer than the 0.5 s read timeout
    Fault("drop", after_bytes=5),  # Content-Length promised, connection closed early
])
def test_transient_failures_are_retried(mirror, truth: pd.DataFrame, fault: Fault) -> None:
    url, params = _doc_url(mirror, truth)
    mirror.add_fault(r"^/tmdb/3/movie/", fault)
    fetcher = Fetcher(rate_limit=100.0, retry=FAST_RETRY)
    got = fetcher.get(url, params=params)
    assert got.status == 200 and got.body.startswith(b"{")
    assert fetcher.stats.requests == 2 and fetcher.stats.retries == 1


def test_retries_are_bounded(mirror, truth: pd.DataFrame) -> None:
    url, params = _doc_url(mirror, truth)
    mirror.add_fault(r"^/tmdb/3/movie/", Fault("status", status=502), times=10)
    fetcher = Fetcher(rate_limit=100.0, retry=FAST_RETRY)
    with pytest.raises(FetchError, match="gave up after 4") as err:
        fetcher.get(url, params=params)
    assert (err.value.kind, err.value.status, fetcher.stats.requests) == ("error", 502, 4)
    assert len(_logged(mirror, 4)) == 4


def test_redirect_loop_is_an_error(mirror, truth: pd.DataFrame) -> None:
    url, params = _doc_url(mirror, truth)
    mirror.add_fault(r"^/tmdb/3/movie/", Fault("redirect_loop"), times=50)
    fetcher = Fetcher(rate_limit=100.0, retry=FAST_RETRY)
    with pytest.raises(FetchError, match="redirect") as err:
        fetcher.get(url, params=params)
    assert err.value.kind == "error"
    assert fetcher.stats.requests <= 6  # max_redirects + 1 hops, and a loop is not retried
    assert mirror.tmdb_api_key not in str(err.value)


def test_big_image_is_rejected_by_size(mirror, truth: pd.DataFrame) -> None:
    row = truth[truth["tmdb_poster"] & (truth["poster_defect"] == "")].iloc[0]
    url = f"{mirror.tmdb_image_base}/w500{row['tmdb_poster_path']}"
    mirror.add_fault(r"^/tmdb-img/", Fault("big"))
    fetcher = Fetcher(rate_limit=100.0, retry=FAST_RETRY)
    with pytest.raises(FetchError, match="cap") as err:
        fetcher.get(url, max_bytes=10 * 1024 * 1024)
    assert err.value.kind == "invalid"


def test_non_http_urls_are_refused() -> None:
    with pytest.raises(FetchError, match="http"):
        Fetcher().get("file:///etc/passwd")


# --------------------------------------------------------------------------- cache


def test_cache_roundtrip_corruption_and_temp_files(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    key = CacheKey("tmdb", "movie", "603")
    assert cache.get(key) is None
    cache.put(key, CacheEntry("ok", 200, "application/json", body=b'{"a": 1}\n'))
    entry = cache.get(key)
    assert entry is not None and entry.ok and entry.body == b'{"a": 1}\n'
    cache.path_of(key).write_bytes(b'{"outcome": "ok", "body_len": 99}\n{"a"')  # half written
    assert cache.get(key) is None and not cache.path_of(key).exists()
    (tmp_path / "tmdb" / "movie" / ".tmp-603.entry-x").write_bytes(b"partial")
    assert cache.clean_temp() == 1
    odd = CacheKey("table", "poster", "../../etc")
    assert ".." not in str(odd.relpath()) and odd.relpath().parent == Path("table/poster")
    with pytest.raises(ValueError):
        CacheKey("Bad Provider", "movie", "1")


def test_write_atomic_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x" / "1.jpg"
    write_atomic(target, b"abc")
    assert target.read_bytes() == b"abc" and os.listdir(target.parent) == ["1.jpg"]


# --------------------------------------------------------------------------- providers


def test_table_and_local_dir_providers(tmp_path: Path) -> None:
    posters = tmp_path / "posters"
    posters.mkdir()
    (posters / "1.png").write_bytes(_png_rgba())
    (posters / "2.jpg").write_bytes(_jpeg()[:200])  # truncated
    (tmp_path / "p3.jpg").write_bytes(_jpeg())
    table = tmp_path / "table.csv"
    pd.DataFrame({"movieId": [1, 3], "synopsis": ["One &amp; only.", None],
                  "poster_url": [None, "p3.jpg"]}).to_csv(table, index=False)
    providers = [TableProvider(table), LocalDirProvider(posters)]
    client = _client(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    r1, r2, r3, r4 = (enrich_movie(Movie(i), providers, client, out) for i in (1, 2, 3, 4))
    assert (r1.synopsis.status, r1.synopsis_text, r1.poster.source) == ("ok", "One & only.",
                                                                         "local")
    assert (r2.poster.status, r2.synopsis.status) == ("invalid", "not_found")
    assert (r3.poster.status, r3.poster.source, r3.synopsis.status) == ("ok", "table", "missing")
    assert (r4.poster.status, r4.synopsis.status) == ("not_found", "not_found")
    assert sorted(p.name for p in out.iterdir()) == ["1.jpg", "3.jpg"]
    assert client.fetcher.stats.requests == 0
    with pytest.raises(ValueError, match="movieId"):
        pd.DataFrame({"id": [1], "synopsis": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
        TableProvider(tmp_path / "bad.csv")


def test_tmdb_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMDB_API_KEY", raising=False)
    monkeypatch.delenv("TMDB_BEARER_TOKEN", raising=False)
    with pytest.raises(ValueError, match="TMDB_API_KEY"):
        TMDBProvider()
    monkeypatch.setenv("TMDB_BEARER_TOKEN", "s3cret-token")
    assert "s3cret" not in repr(TMDBProvider())


def test_tmdb_bearer_token_from_env(mirror, truth: pd.DataFrame, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMDB_API_KEY", raising=False)
    monkeypatch.setenv("TMDB_BEARER_TOKEN", mirror.tmdb_api_key)
    row = truth[truth["poster_source"] == "tmdb"].iloc[0]
    tmdb = TMDBProvider(mirror.tmdb_api_base, mirror.tmdb_image_base)
    result = enrich_movie(_movie(row), [tmdb], _client(tmp_path), tmp_path)
    assert (result.poster.status, result.poster.source) == ("ok", "tmdb")
    assert all("api_key" not in p for p in _served(mirror))


def test_fallback_faults_per_movie(mirror, truth: pd.DataFrame, tmp_path: Path) -> None:
    """HTML instead of an image, a truncated JPEG and malformed JSON each fall through to IMDb."""
    good = truth[(truth["poster_source"] == "tmdb") & (truth["synopsis_source"] == "tmdb")
                 & truth["imdb_jsonld"]]
    html_row, trunc_row, json_row = good.iloc[0], good.iloc[1], good.iloc[2]
    mirror.add_fault(f"{html_row['tmdb_poster_path']}$", Fault("html"))
    mirror.add_fault(f"{trunc_row['tmdb_poster_path']}$", Fault("truncate"))
    mirror.add_fault(f"/movie/{int(json_row['tmdbId'])}$", Fault("truncate"))
    client = _client(tmp_path)
    providers = _providers(mirror)
    results = [enrich_movie(_movie(r), providers, client, tmp_path)
               for r in (html_row, trunc_row, json_row)]
    assert [r.poster.source for r in results] == ["imdb", "imdb", "imdb"]
    assert [r.synopsis.source for r in results] == ["tmdb", "tmdb", "imdb"]
    # alone, TMDB reports them: HTML and malformed JSON are retried later, the truncated JPEG
    # (a complete response with undecodable bytes) is cached as a definitive negative
    alone = [enrich_movie(_movie(r), providers[:1], client, tmp_path)
             for r in (html_row, trunc_row, json_row)]
    assert [r.poster.status for r in alone] == ["ok", "invalid", "ok"]
    assert "truncated" in (alone[1].poster.error or "")


def test_imdb_page_without_json_ld_uses_og(mirror, truth: pd.DataFrame, tmp_path: Path) -> None:
    rows = truth[truth["imdb_page"] & ~truth["imdb_jsonld"] & (truth["poster_defect"] == "")]
    assert len(rows) > 0
    client = _client(tmp_path)
    for _, row in rows.iterrows():
        result = enrich_movie(_movie(row), [IMDbProvider(mirror.imdb_base)], client, tmp_path)
        assert (result.poster.status, result.synopsis.status) == ("ok", "ok")
        assert result.synopsis_text == row["synopsis"] or row["synopsis_source"] == "tmdb"


def test_invalid_api_key_gives_one_error_and_imdb_still_works(
        mirror, truth: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad_key = "wrong-key-123456"
    cfg = _sample_cfg(tmp_path / "data", truth, truth.head(40))
    with caplog.at_level(logging.WARNING, logger="mmlens.enrich"):
        manifest = run(cfg, providers=_providers(mirror, key=bad_key), concurrency=4,
                       rate_limit=500.0, retry=FAST_RETRY, progress=False)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "TMDB" in errors[0].getMessage()
    assert sum(p.startswith("/tmdb/3") for p in _served(mirror)) <= 4  # in flight at most
    assert set(manifest["poster_source"]) <= {"imdb", "tmdb"}
    assert set(manifest.loc[manifest["poster_status"] == "ok", "poster_source"]) == {"imdb"}
    expected = int((truth.head(40)["imdb_page"] & (truth.head(40)["poster_defect"] == "")).sum())
    assert (manifest["poster_status"] == "ok").sum() == expected
    out = capsys.readouterr()
    assert bad_key not in out.out + out.err + caplog.text
    assert not any(bad_key.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- whole stage


def test_run_sample_default_matches_the_world(tmp_path: Path, truth: pd.DataFrame,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _sample_cfg(tmp_path, truth)
    manifest = run(cfg, progress=False)  # starts the sample mirror itself
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["movieId"].tolist() == truth["movieId"].tolist()
    merged = manifest.merge(truth, on="movieId", suffixes=("", "_truth"))
    for m in ("poster", "synopsis"):
        got = merged[f"{m}_source"].where(merged[f"{m}_status"] == "ok", "none")
        assert (got == merged[f"{m}_source_truth"]).all(), m
    synopses = pd.read_parquet(artifacts.require(cfg, "synopses"))
    check = synopses.merge(truth[["movieId", "synopsis"]], on="movieId")
    assert len(check) == (truth["synopsis_source"] != "none").sum()
    assert (check["synopsis_x"] == check["synopsis_y"]).all()
    ok = manifest[manifest["poster_status"] == "ok"]
    posters = artifacts.path(cfg, "posters_dir")
    assert sorted(p.name for p in posters.iterdir()) == sorted(f"{i}.jpg" for i in ok["movieId"])
    with Image.open(posters / f"{ok['movieId'].iloc[0]}.jpg") as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")
    assert (ok["poster_bytes"] > 0).all() and ok["poster_sha256"].str.len().eq(64).all()
    table = coverage(manifest)
    assert table.groupby("modality")["movies"].sum().tolist() == [len(truth)] * 2
    assert "02 enrich:" in capsys.readouterr().out


def test_manifest_frame_and_coverage_types() -> None:
    results = [MovieResult(1, Outcome("ok", "tmdb", 200), Outcome("missing", "imdb", 200),
                           poster_bytes=10, poster_sha256="a" * 64, fetched_at="2024-01-01"),
               MovieResult(2, Outcome("error", "tmdb", 503, "HTTP 503"), Outcome("not_found"))]
    df = manifest_frame(results)
    assert str(df["movieId"].dtype) == "int32" and str(df["poster_http_status"].dtype) == "Int64"
    table = coverage(df)
    assert table[(table["modality"] == "synopsis")]["source"].tolist() == ["imdb", "none"]
    with pytest.raises(ValueError):
        Outcome("pending")
    with pytest.raises(ValueError, match="missing columns"):
        coverage(pd.DataFrame({"movieId": [1]}))


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mmlens.config import Config
    from mmlens.enrich import IMDbProvider, TMDBProvider, run
    data_dir, api, img, imdb = sys.argv[1:5]
    cfg = Config(data_dir=Path(data_dir), sample_profile="small")
    run(cfg, providers=[TMDBProvider(api, img), IMDbProvider(imdb)], concurrency=4,
        rate_limit=60.0, checkpoint_every=10, progress=False)
""")


def test_kill_and_resume(world: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg = _sample_cfg(data_dir, truth)
    with serve(world, latency_s=0.01) as mirror:
        env = {**os.environ, "PYTHONPATH": str(SRC), "TMDB_API_KEY": mirror.tmdb_api_key}
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(data_dir), mirror.tmdb_api_base,
             mirror.tmdb_image_base, mirror.imdb_base],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(mirror.requests) < 90 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert running, f"the run ended before it was killed: {err.decode()[-2000:]}"
        first = _settled(mirror)

        for p in artifacts.path(cfg, "enrich_cache").rglob("*.entry"):
            CacheEntry.from_bytes(p.read_bytes())  # complete or absent, never half written
        for p in artifacts.path(cfg, "posters_dir").glob("*.jpg"):
            normalize_image(p.read_bytes())
        checkpoint = artifacts.path(cfg, "enrich_manifest")
        if checkpoint.exists():  # periodic writes: a readable prefix of the catalog
            assert len(pd.read_parquet(checkpoint)) < len(truth)

        os.environ["TMDB_API_KEY"] = mirror.tmdb_api_key
        try:
            tmdb = TMDBProvider(mirror.tmdb_api_base, mirror.tmdb_image_base)
            manifest = run(cfg, providers=[tmdb, IMDbProvider(mirror.imdb_base)],
                           concurrency=4, rate_limit=500.0, progress=False)
            second = _settled(mirror)[len(first):]
            run(cfg, providers=[tmdb, IMDbProvider(mirror.imdb_base)], progress=False)
            third = _settled(mirror)[len(first) + len(second):]
        finally:
            del os.environ["TMDB_API_KEY"]

    assert len(manifest) == len(truth) and manifest["movieId"].is_unique
    merged = manifest.merge(truth, on="movieId", suffixes=("", "_truth"))
    got = merged["poster_source"].where(merged["poster_status"] == "ok", "none")
    assert (got == merged["poster_source_truth"]).all()
    assert len(second) > 0 and third == []
    assert len(set(first) & set(second)) <= 4  # only what was in flight when killed
    assert not list(data_dir.rglob(".tmp-*"))
    key = mirror.tmdb_api_key.encode()
    assert not any(key in p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    assert key not in out + err
