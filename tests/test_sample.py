"""The sample world (files, formats, coverage, rating model) and its mirror (routes, faults)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import socket
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from mmlens.config import Config
from mmlens.sample import PROFILES, Fault, ensure_world, generate_world, serve, world_dir
from mmlens.sample import mirror as mirror_module
from mmlens.sample.web import clean_imdb_description

SEED = 7
MEMBERS = ("movies.csv", "ratings.csv", "links.csv", "tags.csv", "README.txt")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = Config(data_dir=tmp_path_factory.mktemp("data"), sample_profile="small", seed=SEED)
    return ensure_world(cfg)


@pytest.fixture(scope="module")
def release(world: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(world / "ml-sample.zip") as zf:
        return {Path(n).name: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


@pytest.fixture(scope="module")
def tables(release: dict[str, bytes]) -> dict[str, pd.DataFrame]:
    opts = {"dtype": {"imdbId": str}, "keep_default_na": False}
    return {n[:-4]: pd.read_csv(io.BytesIO(b), **opts) for n, b in release.items() if ".csv" in n}


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- the world


def test_ensure_world_layout_and_reuse(world: Path) -> None:
    cfg = Config(data_dir=world.parent.parent, sample_profile="small", seed=SEED)
    assert world == world_dir(cfg) == cfg.data_dir / "_sample_world" / f"small-seed{SEED}"
    for sub in ("tmdb", "tmdb-img", "imdb", "imdb-img", "truth"):
        assert (world / sub).is_dir()
    stamp = (world / "world.json").stat().st_mtime_ns
    assert ensure_world(cfg) == world and (world / "world.json").stat().st_mtime_ns == stamp
    assert not [p for p in world.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="unknown sample profile"):
        ensure_world(cfg.with_(sample_profile="huge"))


def test_same_seed_same_bytes_other_seed_differs(world: Path, tmp_path: Path) -> None:
    again = generate_world(tmp_path / "again", PROFILES["small"], SEED)
    other = generate_world(tmp_path / "other", PROFILES["small"], SEED + 1)
    assert _md5(again / "ml-sample.zip") == _md5(world / "ml-sample.zip")
    assert _md5(other / "ml-sample.zip") != _md5(world / "ml-sample.zip")
    assert sorted(p.name for p in (again / "tmdb").iterdir()) == sorted(
        p.name for p in (world / "tmdb").iterdir())
    md5_line = (world / "ml-sample.zip.md5").read_text()
    assert re.fullmatch(r"[0-9a-f]{32}  ml-sample\.zip\n", md5_line)
    assert md5_line.split()[0] == _md5(world / "ml-sample.zip")


def test_zip_members_and_line_endings(world: Path, release: dict[str, bytes]) -> None:
    with zipfile.ZipFile(world / "ml-sample.zip") as zf:
        names = set(zf.namelist())
    assert names == {"ml-sample/"} | {f"ml-sample/{m}" for m in MEMBERS}
    for name, data in release.items():
        assert b"\r\n" not in data, name
        data.decode("utf-8")
    assert release["movies.csv"].startswith(b"movieId,title,genres\n")
    assert release["ratings.csv"].startswith(b"userId,movieId,rating,timestamp\n")
    assert release["links.csv"].startswith(b"movieId,imdbId,tmdbId\n")
    assert release["tags.csv"].startswith(b"userId,movieId,tag,timestamp\n")


def test_movies_csv_details(release: dict[str, bytes], tables: dict[str, pd.DataFrame]) -> None:
    raw = release["movies.csv"].decode()
    assert re.search(r'^\d+,"[^"\n]+, The \(\d{4}\)",', raw, re.M), "quoted comma titles"
    movies = tables["movies"]
    assert movies["movieId"].is_unique and movies["movieId"].is_monotonic_increasing
    assert any(not t.isascii() for t in movies["title"])
    assert (movies["genres"] == "(no genres listed)").sum() == 1
    assert (~movies["title"].str.contains(r" \(\d{4}\)$")).sum() == 1
    genres = {g for gs in movies["genres"] for g in gs.split("|")}
    assert {"Drama", "Comedy", "Sci-Fi", "(no genres listed)"} <= genres
    assert all(len(set(gs.split("|"))) == len(gs.split("|")) <= 3 for gs in movies["genres"])


def test_links_and_ratings_details(tables: dict[str, pd.DataFrame]) -> None:
    movies, links, ratings = tables["movies"], tables["links"], tables["ratings"]
    assert links["movieId"].tolist() == movies["movieId"].tolist()
    assert links["imdbId"].str.fullmatch(r"\d{7}").all() and links["imdbId"].is_unique
    assert links["imdbId"].str.startswith("0").any()
    n_empty = (links["tmdbId"] == "").sum()
    assert 1 <= n_empty <= 0.1 * len(links)
    assert set(ratings["rating"]) == set(np.arange(1, 11) / 2)
    assert set(ratings["movieId"]) <= set(movies["movieId"])
    per_user = ratings.groupby("userId").size()
    assert per_user.min() >= 5 and per_user.max() > 2 * per_user.median()  # long tail
    assert len(ratings) == PROFILES["small"].n_ratings
    assert not ratings.duplicated(["userId", "movieId"]).any()
    ts = pd.to_datetime(ratings["timestamp"], unit="s")
    assert ts.min() >= pd.Timestamp("1996-01-01") and ts.max() < pd.Timestamp("2020-01-01")
    assert 0.5 <= (ratings["rating"] > 3).mean() <= 0.6


def test_tags_and_timestamps_follow_ratings(release: dict[str, bytes],
                                            tables: dict[str, pd.DataFrame],
                                            truth: pd.DataFrame) -> None:
    tags, ratings = tables["tags"], tables["ratings"]
    assert len(tags) > 0 and tags["tag"].str.contains(",").any()
    assert re.search(rb'^\d+,\d+,"[^"\n]*,[^"\n]*",\d+$', release["tags.csv"], re.M)
    joined = tags.merge(ratings, on=["userId", "movieId"], suffixes=("_tag", ""))
    assert len(joined) == len(tags) and (joined["timestamp_tag"] > joined["timestamp"]).all()
    released = ratings.merge(truth[["movieId", "release_ts"]], on="movieId")
    assert (released["timestamp"] >= released["release_ts"]).all()


def test_coverage_matches_served_files(world: Path, truth: pd.DataFrame) -> None:
    n = len(truth)
    share = truth["poster_source"].value_counts() / n
    assert share["tmdb"] >= 0.65 and 0.05 <= share["imdb"] <= 0.25
    assert 0.04 <= (truth["synopsis_source"] == "none").mean() <= 0.1
    assert 0.01 <= (truth["poster_defect"] != "").mean() <= 0.05
    assert (truth["poster_defect"] == "html").sum() >= 1
    for row in truth.itertuples():
        doc_path = world / "tmdb" / f"{row.tmdbId}.json"
        assert doc_path.exists() == bool(row.tmdb_doc)
        if row.tmdb_doc:
            doc = json.loads(doc_path.read_text())
            assert doc["id"] == row.tmdbId and doc["imdb_id"] == f"tt{row.imdbId}"
            assert (doc["poster_path"] is not None) == row.tmdb_poster
            assert (doc["overview"] != "") == row.tmdb_overview
        assert (world / "imdb" / f"tt{row.imdbId}.html").exists() == row.imdb_page
        if row.synopsis_source == "tmdb":
            assert row.synopsis == doc["overview"]
        elif row.synopsis_source == "imdb":
            assert row.synopsis == clean_imdb_description(row.imdb_description_raw)
        else:
            assert row.synopsis is None
    assert truth["imdb_description_raw"].str.contains("&#39;|&amp;", na=False).any()
    assert truth["imdb_description_raw"].str.contains("::", na=False).any()


def test_posters_decode_except_defects(world: Path, truth: pd.DataFrame) -> None:
    for row in truth[truth["tmdb_poster"]].itertuples():
        data = (world / "tmdb-img" / row.tmdb_poster_path.lstrip("/")).read_bytes()
        if row.poster_defect == "html":
            assert data.lstrip().startswith(b"<!DOCTYPE html>")
        elif row.poster_defect == "truncated":
            with pytest.raises(OSError):
                Image.open(io.BytesIO(data)).load()
        else:
            img = Image.open(io.BytesIO(data))
            img.load()
            assert img.size == (180, 270) and img.mode == "RGB"


def test_style_and_topic_are_visible(world: Path, truth: pd.DataFrame) -> None:
    """A nearest-centroid classifier on tiny thumbnails / word counts recovers style / topic."""
    rows = truth[truth["poster_source"] == "tmdb"]
    thumbs = np.stack([
        np.asarray(Image.open(world / "tmdb-img" / p.lstrip("/")).resize((6, 9)), dtype=float)
        for p in rows["tmdb_poster_path"]
    ]).reshape(len(rows), -1)
    assert _centroid_accuracy(thumbs, rows["style_id"].to_numpy()) > 0.9
    texts = truth[truth["synopsis_source"] != "none"]
    vocab = sorted({w for t in texts["synopsis"] for w in re.findall(r"[a-z]+", t.lower())})
    index = {w: i for i, w in enumerate(vocab)}
    counts = np.zeros((len(texts), len(vocab)))
    for r, text in enumerate(texts["synopsis"]):
        for w in re.findall(r"[a-z]+", text.lower()):
            counts[r, index[w]] = 1
    counts *= np.log(len(texts) / counts.sum(axis=0))  # idf
    counts /= np.linalg.norm(counts, axis=1, keepdims=True)
    assert _centroid_accuracy(counts, texts["topic_id"].to_numpy()) > 0.85  # measured 0.93


def _centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy on odd rows of nearest centroids fitted on even rows."""
    train, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    labels = np.unique(y[train])
    centroids = np.stack([x[train][y[train] == c].mean(axis=0) for c in labels])
    dist = ((x[test][:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((labels[dist.argmin(1)] == y[test]).mean())


def _r2_on_one_hots(target: np.ndarray, style: np.ndarray, topic: np.ndarray) -> float:
    x = np.concatenate([np.eye(8)[style], np.eye(8)[topic]], axis=1)
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    resid = target - x @ coef
    return float(1 - (resid**2).sum() / ((target - target.mean(axis=0)) ** 2).sum())


def test_content_explains_ratings(world: Path, truth: pd.DataFrame,
                                  tables: dict[str, pd.DataFrame]) -> None:
    """Poster style and synopsis topic carry much of the movie effect and the user affinity."""
    stats = tables["ratings"].groupby("movieId")["rating"].agg(["mean", "size"])
    rated = truth.set_index("movieId").join(stats, how="inner")
    rated = rated[rated["size"] >= 10]
    r2 = _r2_on_one_hots(rated["mean"].to_numpy(), rated["style_id"].to_numpy(),
                         rated["topic_id"].to_numpy())
    assert r2 > 0.5  # measured 0.74 on this world; with shuffled means ~0.2
    users = pd.read_parquet(world / "truth" / "users.parquet")
    affinity = np.stack(users["vector"].to_numpy()) @ np.stack(truth["vector"].to_numpy()).T
    assert _r2_on_one_hots(affinity.T, truth["style_id"].to_numpy(),
                           truth["topic_id"].to_numpy()) > 0.5
    shuffled = np.random.default_rng(0).permutation(truth["style_id"].to_numpy())
    assert _r2_on_one_hots(affinity.T, shuffled, shuffled) < 0.2  # measured 0.72 and 0.06


# ---------------------------------------------------------------------------- the mirror


def test_release_download_md5_and_range(mirror, world: Path) -> None:
    base = mirror.movielens_base_url
    assert base == mirror.url + "/datasets/movielens" and mirror.url.startswith("http://127.0.0.1:")
    full = requests.get(f"{base}/ml-sample.zip", timeout=10)
    assert full.status_code == 200 and full.headers["Content-Type"] == "application/zip"
    assert int(full.headers["Content-Length"]) == len(full.content)
    md5 = requests.get(f"{base}/ml-sample.zip.md5", timeout=10)
    assert md5.headers["Content-Type"].startswith("text/plain")
    assert md5.text.split()[0] == hashlib.md5(full.content).hexdigest()
    head = requests.head(f"{base}/ml-sample.zip", timeout=10)
    assert head.content == b"" and int(head.headers["Content-Length"]) == len(full.content)
    cut = len(full.content) // 3
    part = requests.get(f"{base}/ml-sample.zip", headers={"Range": f"bytes={cut}-"}, timeout=10)
    assert part.status_code == 206
    size = len(full.content)
    assert part.headers["Content-Range"] == f"bytes {cut}-{size - 1}/{size}"
    assert full.content[:cut] + part.content == full.content
    past = requests.get(f"{base}/ml-sample.zip", headers={"Range": f"bytes={size}-"}, timeout=10)
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{size}"
    assert requests.get(f"{base}/ml-25m.zip", timeout=10).status_code == 404
    assert [(r.method, r.status) for r in mirror.requests][:3] == [
        ("GET", 200), ("GET", 200), ("HEAD", 200)]


def test_tmdb_auth_documents_and_images(mirror, truth: pd.DataFrame) -> None:
    row = truth[truth["poster_source"] == "tmdb"].iloc[0]
    url = f"{mirror.tmdb_api_base}/movie/{row['tmdbId']}"
    for kwargs in ({}, {"params": {"api_key": "wrong"}}):
        bad = requests.get(url, timeout=10, **kwargs)
        assert bad.status_code == 401 and bad.json()["status_code"] == 7
    ok = requests.get(url, params={"api_key": mirror.tmdb_api_key}, timeout=10)
    assert ok.status_code == 200 and ok.headers["Content-Type"].startswith("application/json")
    auth = {"Authorization": f"Bearer {mirror.tmdb_api_key}"}
    bearer = requests.get(url, headers=auth, timeout=10)
    assert bearer.json() == ok.json() and ok.json()["overview"] == row["synopsis"]
    missing = truth[truth["tmdbId"].notna() & ~truth["tmdb_doc"]].iloc[0]
    gone = requests.get(f"{mirror.tmdb_api_base}/movie/{missing['tmdbId']}",
                        params={"api_key": mirror.tmdb_api_key}, timeout=10)
    assert gone.status_code == 404 and gone.json() == {
        "success": False, "status_code": 34,
        "status_message": "The resource you requested could not be found."}
    img = requests.get(f"{mirror.tmdb_image_base}/w500{ok.json()['poster_path']}", timeout=10)
    assert img.status_code == 200 and img.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(img.content)).size == (180, 270)
    assert requests.get(f"{mirror.url}/elsewhere", timeout=10).status_code == 404


def test_imdb_pages_json_ld_and_og(mirror, truth: pd.DataFrame) -> None:
    with_ld = truth[truth["imdb_jsonld"]].iloc[0]
    page = requests.get(f"{mirror.imdb_base}/title/tt{with_ld['imdbId']}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    block = re.search(r'<script type="application/ld\+json">(.*?)</script>', page.text, re.S)
    ld = json.loads(block.group(1))
    assert ld["@type"] == "Movie" and ld["image"].startswith(mirror.url + "/imdb-img/")
    assert clean_imdb_description(ld["description"]) == clean_imdb_description(
        with_ld["imdb_description_raw"])
    img = requests.get(ld["image"], timeout=10)
    assert img.status_code == 200 and img.headers["Content-Type"] == "image/jpeg"
    no_ld = truth[truth["imdb_page"] & ~truth["imdb_jsonld"]].iloc[0]
    html_text = requests.get(f"{mirror.imdb_base}/title/tt{no_ld['imdbId']}/", timeout=10).text
    assert "application/ld+json" not in html_text and "{MIRROR}" not in html_text
    og = re.search(r'<meta property="og:image" content="([^"]+)"', html_text).group(1)
    assert requests.get(og, timeout=10).status_code == 200
    absent = truth[~truth["imdb_page"]].iloc[0]
    assert requests.get(f"{mirror.imdb_base}/title/tt{absent['imdbId']}/", timeout=10
                        ).status_code == 404


def test_fault_status_html_redirect_and_order(mirror) -> None:
    url = f"{mirror.movielens_base_url}/ml-sample.zip.md5"
    mirror.add_fault(r"\.md5$", Fault("status", status=429, retry_after="2"), times=2)
    mirror.add_fault(r"\.md5$", Fault("html"))
    first, second = requests.get(url, timeout=10), requests.get(url, timeout=10)
    assert first.status_code == second.status_code == 429 and first.headers["Retry-After"] == "2"
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert requests.get(url, timeout=10).text.endswith("  ml-sample.zip\n")
    mirror.add_fault(r"\.md5$", Fault("redirect_loop"))
    with pytest.raises(requests.TooManyRedirects):
        requests.get(url, timeout=10)
    tmdb = requests.get(f"{mirror.tmdb_api_base}/movie/1", timeout=10)  # unmatched path
    assert tmdb.status_code == 401
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")


def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds the mirror (same process) sleeps from now on; it sleeps no more."""
    slept: list[float] = []
    monkeypatch.setattr(mirror_module, "time",
                        SimpleNamespace(monotonic=time.monotonic, sleep=slept.append))
    return slept


def test_fault_drop_truncate_delay(mirror, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = (world / "ml-sample.zip").read_bytes()
    mirror.add_fault(r"ml-sample\.zip$", Fault("drop", after_bytes=1000))
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    conn.request("GET", "/datasets/movielens/ml-sample.zip")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(body)
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == body[:1000]
    conn.close()
    mirror.add_fault(r"ml-sample\.zip$", Fault("truncate"))
    short = requests.get(f"{mirror.movielens_base_url}/ml-sample.zip", timeout=10)
    assert short.status_code == 200 and short.content == body[: len(body) // 2]
    mirror.add_fault(r"ml-sample\.zip$", Fault("delay", seconds=0.05))
    slept = recorded_sleeps(monkeypatch)
    assert requests.get(f"{mirror.movielens_base_url}/ml-sample.zip", timeout=10).content == body
    assert slept == [0.05]


def test_fault_reset_and_big(mirror) -> None:
    url = f"{mirror.movielens_base_url}/ml-sample.zip.md5"
    mirror.add_fault(r"\.md5$", Fault("reset"))
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=10)
    assert requests.get(url, timeout=10).status_code == 200
    mirror.add_fault(r"/imdb-img/", Fault("big"))
    big = requests.get(f"{mirror.url}/imdb-img/anything.jpg", timeout=30)
    assert big.headers["Content-Type"] == "image/jpeg" and len(big.content) >= 20 * 1024 * 1024
    Image.open(io.BytesIO(big.content)).load()
    assert [r.status for r in mirror.requests] == [0, 200, 200]


def test_latency_and_server_stops(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slept = recorded_sleeps(monkeypatch)
    with serve(world, faults={r"\.md5$": Fault("status", status=503)}, latency_s=0.01) as m:
        port = m.port
        assert requests.get(f"{m.movielens_base_url}/ml-sample.zip.md5", timeout=10
                            ).status_code == 503
        assert len(m.requests) == 1 and m.requests[0].path.endswith(".md5")
        assert slept == [0.01]  # the latency, before the fault's answer
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_serve_rejects_a_directory_without_a_world(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a sample world"), serve(tmp_path):
        pass
