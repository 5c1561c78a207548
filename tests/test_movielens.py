"""Stage 01: releases, resumable verified download, safe extraction, conversion, the stage."""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import json
import shutil
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mmlens import artifacts, movielens
from mmlens.config import Config
from mmlens.movielens import download as download_mod
from mmlens.movielens import ratings as ratings_mod
from mmlens.movielens.convert import convert, split_title_year
from mmlens.movielens.download import ChecksumError, DiskWriteError, DownloadError, download
from mmlens.movielens.extract import ExtractError, extract
from mmlens.movielens.releases import RELEASES, get_release, parse_md5_file
from mmlens.net import HTTPError, RetryPolicy
from mmlens.sample import Fault, ensure_world, serve

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, read_timeout=10)
REAL_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
ZIP = "ml-sample.zip"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small sample world (its zip is ~50 kB), generated once for the module."""
    cfg = Config(data_dir=tmp_path_factory.mktemp("data"), sample_profile="small")
    return ensure_world(cfg)


@pytest.fixture
def mirror(world: Path) -> Iterator:
    with serve(world) as m:
        yield m


def _zip_gets(mirror) -> list:
    return [r for r in mirror.requests if r.path.endswith(ZIP)]


# ----------------------------------------------------------------------------- releases


def test_release_registry() -> None:
    assert {"ml-100k", "ml-1m", "ml-latest-small", "ml-25m", "ml-32m", "sample"} <= set(RELEASES)
    assert RELEASES["ml-25m"].md5 == "6b51fb2759a8657d3bfcbfc42b592ada"
    assert RELEASES["ml-1m"].format == "ml-1m" and RELEASES["ml-100k"].format == "ml-100k"
    assert RELEASES["sample"].zip_name == ZIP and RELEASES["sample"].md5 is None
    assert RELEASES["ml-25m"].url() == "https://files.grouplens.org/datasets/movielens/ml-25m.zip"
    assert RELEASES["sample"].url("http://h:1/x/") == "http://h:1/x/ml-sample.zip"
    with pytest.raises(ValueError, match="ml-25m"):
        get_release("ml-26m")


@pytest.mark.parametrize("text", [
    "6b51fb2759a8657d3bfcbfc42b592ada\n",
    "6B51FB2759A8657D3BFCBFC42B592ADA  ml-25m.zip\r\n",
    "MD5 (ml-25m.zip) = 6b51fb2759a8657d3bfcbfc42b592ada\n",
])
def test_parse_md5_file_forms(text: str) -> None:
    assert parse_md5_file(text, "ml-25m.zip") == "6b51fb2759a8657d3bfcbfc42b592ada"


def test_parse_md5_file_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_md5_file("<html>not found</html>")
    with pytest.raises(ValueError):
        parse_md5_file("")
    with pytest.raises(ValueError, match="ml-1m.zip"):
        parse_md5_file("6b51fb2759a8657d3bfcbfc42b592ada  ml-25m.zip", "ml-1m.zip")


# ----------------------------------------------------------------------------- download


def test_download_verifies_and_skips_on_rerun(mirror, world: Path, tmp_path: Path) -> None:
    dest = tmp_path / ZIP
    url = f"{mirror.movielens_base_url}/{ZIP}"
    md5 = _md5(world / ZIP)
    assert download(url, dest, md5=md5, retry=FAST) == dest
    assert _md5(dest) == md5
    assert parse_md5_file((tmp_path / f"{ZIP}.md5").read_text(), ZIP) == md5
    assert not (tmp_path / f"{ZIP}.part").exists()
    assert len(_zip_gets(mirror)) == 1
    download(url, dest, md5=md5, retry=FAST)
    download(url, dest, md5=None, retry=FAST)  # the recorded md5 vouches for the file
    assert len(_zip_gets(mirror)) == 1
    download(url, dest, md5=md5, retry=FAST, force=True)
    assert len(_zip_gets(mirror)) == 2


def test_dropped_connection_is_resumed_with_range(mirror, world: Path, tmp_path: Path) -> None:
    mirror.add_fault(ZIP + "$", Fault("drop", after_bytes=20_000))
    dest = tmp_path / ZIP
    download(f"{mirror.movielens_base_url}/{ZIP}", dest, md5=_md5(world / ZIP), retry=FAST)
    assert _md5(dest) == _md5(world / ZIP)
    assert [r.status for r in _zip_gets(mirror)] == [200, 206]  # the second asked for a Range


def test_existing_part_is_resumed_after_restart(mirror, world: Path, tmp_path: Path) -> None:
    dest = tmp_path / ZIP
    data = (world / ZIP).read_bytes()
    (tmp_path / f"{ZIP}.part").write_bytes(data[:30_000])
    download(f"{mirror.movielens_base_url}/{ZIP}", dest, md5=_md5(world / ZIP), retry=FAST)
    assert dest.read_bytes() == data
    assert [r.status for r in _zip_gets(mirror)] == [206]


def test_complete_part_answered_416_is_accepted(mirror, world: Path, tmp_path: Path) -> None:
    dest = tmp_path / ZIP
    shutil.copyfile(world / ZIP, tmp_path / f"{ZIP}.part")
    download(f"{mirror.movielens_base_url}/{ZIP}", dest, md5=_md5(world / ZIP), retry=FAST)
    assert _md5(dest) == _md5(world / ZIP)
    assert [r.status for r in _zip_gets(mirror)] == [416]


def test_server_error_then_success(mirror, world: Path, tmp_path: Path) -> None:
    mirror.add_fault(ZIP + "$", Fault("status", status=500))
    mirror.add_fault(ZIP + "$", Fault("status", status=503, retry_after="0"))
    dest = tmp_path / ZIP
    download(f"{mirror.movielens_base_url}/{ZIP}", dest, md5=_md5(world / ZIP), retry=FAST)
    assert [r.status for r in _zip_gets(mirror)] == [500, 503, 200]
    assert _md5(dest) == _md5(world / ZIP)


def test_gives_up_after_max_attempts(mirror, tmp_path: Path) -> None:
    mirror.add_fault(ZIP + "$", Fault("status", status=503), times=10)
    with pytest.raises(DownloadError, match="4 failed attempts"):
        download(f"{mirror.movielens_base_url}/{ZIP}", tmp_path / ZIP, md5=None, retry=FAST)
    assert len(_zip_gets(mirror)) == 4
    assert not (tmp_path / ZIP).exists()


def test_404_names_the_url(mirror, tmp_path: Path) -> None:
    url = f"{mirror.movielens_base_url}/ml-nothing.zip"
    with pytest.raises(HTTPError, match="404") as info:
        download(url, tmp_path / "ml-nothing.zip", md5=None, retry=FAST)
    assert info.value.status == 404 and "ml-nothing.zip" in str(info.value)
    assert len(mirror.requests) == 1  # a 404 is not retried


def test_md5_mismatch_leaves_no_file(mirror, tmp_path: Path) -> None:
    dest = tmp_path / ZIP
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        download(f"{mirror.movielens_base_url}/{ZIP}", dest, md5="0" * 32, retry=FAST)
    assert not dest.exists() and not (tmp_path / f"{ZIP}.part").exists()


def test_rejects_non_http_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        download("file:///etc/passwd", tmp_path / "x.zip", md5=None)


def test_disk_full_is_a_clear_error(mirror, world: Path, tmp_path: Path, monkeypatch) -> None:
    real_open = builtins.open

    class FullDisk:
        def __init__(self, fh) -> None:
            self._fh, self._written = fh, 0

        def write(self, chunk: bytes) -> int:
            if self._written + len(chunk) > 10_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self._written += len(chunk)
            return self._fh.write(chunk)

        def __getattr__(self, name: str):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._fh.close()

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return FullDisk(fh) if str(file).endswith(".part") and "b" in mode and mode != "rb" else fh

    monkeypatch.setattr(download_mod, "open", fake_open, raising=False)
    dest = tmp_path / ZIP
    with pytest.raises(DiskWriteError, match="No space left"):
        download(f"{mirror.movielens_base_url}/{ZIP}", dest, md5=_md5(world / ZIP), retry=FAST)
    assert not dest.exists()


class _NoRangeHandler(BaseHTTPRequestHandler):
    """Serves one payload, ignoring Range (a server or proxy without range support)."""

    payload = b""
    ranges: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).ranges.append(self.headers.get("Range"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args) -> None:
        pass


def test_200_answer_to_range_restarts_from_zero(world: Path, tmp_path: Path) -> None:
    data = (world / ZIP).read_bytes()
    _NoRangeHandler.payload, _NoRangeHandler.ranges = data, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoRangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / f"{ZIP}.part").write_bytes(b"stale bytes from another file" * 100)
        url = f"http://127.0.0.1:{server.server_address[1]}/{ZIP}"
        download(url, tmp_path / ZIP, md5=_md5(world / ZIP), retry=FAST)
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / ZIP).read_bytes() == data
    assert _NoRangeHandler.ranges == ["bytes=2900-"]


# ----------------------------------------------------------------------------- extract


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_only_needed_members(world: Path, tmp_path: Path) -> None:
    out = extract(world / ZIP, tmp_path / "raw", ["movies.csv", "ratings.csv"],
                  optional=["tags.csv", "nothere.txt"])
    assert set(out) == {"movies.csv", "ratings.csv", "tags.csv"}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(out)
    assert out["movies.csv"].read_text().startswith("movieId,title,genres")


def test_extract_html_page_is_a_clear_error(tmp_path: Path) -> None:
    page = tmp_path / "ml-25m.zip"
    page.write_text("<!DOCTYPE html><html><body>Please log in</body></html>")
    with pytest.raises(ExtractError, match="HTML"):
        extract(page, tmp_path / "raw", ["movies.csv"])


def test_extract_truncated_zip(world: Path, tmp_path: Path) -> None:
    cut = tmp_path / ZIP
    cut.write_bytes((world / ZIP).read_bytes()[:20_000])
    with pytest.raises(ExtractError, match="truncated"):
        extract(cut, tmp_path / "raw", ["movies.csv"])
    assert not (tmp_path / "raw" / "movies.csv").exists()


def test_extract_bad_crc(tmp_path: Path) -> None:
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ml/movies.csv", b"movieId,title,genres\n1,A (1999),Drama\n")
    data = bytearray(zpath.read_bytes())
    at = data.index(b"1,A (1999)")
    data[at] = ord("2")
    zpath.write_bytes(bytes(data))
    with pytest.raises(ExtractError, match="damaged"):
        extract(zpath, tmp_path / "raw", ["movies.csv"])
    assert not (tmp_path / "raw" / "movies.csv").exists()


@pytest.mark.parametrize("name", ["../movies.csv", "ml/../../movies.csv", "/etc/movies.csv"])
def test_extract_refuses_escaping_members(tmp_path: Path, name: str) -> None:
    zpath = _zip(tmp_path / "evil.zip", {name: b"x"})
    with pytest.raises(ExtractError, match="escaping"):
        extract(zpath, tmp_path / "raw", ["movies.csv"])
    assert not (tmp_path / "movies.csv").exists()


def test_extract_refuses_symlinks_and_bombs(tmp_path: Path) -> None:
    zpath = tmp_path / "link.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        info = zipfile.ZipInfo("ml/movies.csv")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ExtractError, match="symlink"):
        extract(zpath, tmp_path / "raw", ["movies.csv"])
    bomb = _zip(tmp_path / "bomb.zip", {"ml/ratings.csv": b"0" * (4 << 20)})
    with pytest.raises(ExtractError, match="zip bomb"):
        extract(bomb, tmp_path / "raw", ["ratings.csv"])
    with pytest.raises(ExtractError, match="over the limit"):
        extract(bomb, tmp_path / "raw", ["ratings.csv"], max_member_bytes=1000)


def test_extract_missing_member_lists_content(tmp_path: Path) -> None:
    zpath = _zip(tmp_path / "a.zip", {"ml/movies.csv": b"x"})
    with pytest.raises(ExtractError, match=r"no ratings.csv.*movies.csv"):
        extract(zpath, tmp_path / "raw", ["ratings.csv"])


# ----------------------------------------------------------------------------- convert

MOVIES_CSV = (
    "movieId,title,genres\r\n"
    "1,Toy Story (1995),Adventure|Animation|Children\r\n"
    '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Drama|Sci-Fi\r\n'
    "40,Babylon 5 ,Sci-Fi\r\n"
    "41,Fawlty Towers (1975-1979) ,Comedy\r\n"
    "42,Amélie (Fabuleux destin d'Amélie Poulain; Le) (2001),(no genres listed)\r\n"
    "43,\"Movie, \"\"Quoted\"\" (2010)\",Drama\r\n"
    "43,Duplicate id (2011),Drama\r\n"
)
LINKS_CSV = (
    "movieId,imdbId,tmdbId\n"
    "1,0114709,862\n"
    "29,112682,902\n"
    "40,10541088,\n"
    "41,0072500,\n"
    "999,0000001,1\n"
)
RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n"
    "1,1,4.0,100\n"
    "1,29,3.5,101\n"
    "1,1,2.5,300\n"          # duplicate pair, later: kept; the first one dropped
    "2,1,5.0,50\n"
    "2,1,4.5,50\n"           # duplicate with equal timestamp: the last row wins
    "2,29,5.5,60\n"          # out of range
    "2,40,0.0,61\n"          # out of range
    "2,41,3.3,62\n"          # not a half step
    "3,777,4.0,70\n"         # unknown movie
    "3,42,,71\n"             # missing value
    "3,43,0.5,72\n"
)
TAGS_CSV = (
    "userId,movieId,tag,timestamp\r\n"
    '1,1,"pixar, funny",100\r\n'
    "1,1,naïve,101\r\n"
    '2,29,"   ",102\r\n'
    "2,777,ghost,103\r\n"
)


def _write(tmp: Path, **files: str) -> dict[str, Path]:
    out = {}
    for stem, text in files.items():
        p = tmp / f"{stem}.csv"
        p.write_bytes(text.encode("utf-8"))
        out[p.name] = p
    return out


def _outs(tmp: Path) -> dict[str, Path]:
    return {n: tmp / "out" / f"{n}.parquet" for n in ("movies", "ratings", "tags")}


def test_convert_csv_schema_titles_links(tmp_path: Path) -> None:
    files = _write(tmp_path, movies=MOVIES_CSV, links=LINKS_CSV, ratings=RATINGS_CSV,
                   tags=TAGS_CSV)
    out = _outs(tmp_path)
    report = convert("csv", files, out)
    schema = pq.read_schema(out["movies"])
    assert [str(t) for t in schema.types] == ["int32", "string", "int16", "list<element: string>",
                                              "string", "int64"]
    movies = pd.read_parquet(out["movies"]).set_index("movieId")
    assert list(movies.index) == [1, 29, 40, 41, 42, 43]
    assert movies.loc[29, "title"] == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert movies.loc[29, "year"] == 1995 and movies.loc[41, "year"] == 1975
    assert movies.loc[41, "title"] == "Fawlty Towers"
    assert movies.loc[40, "title"] == "Babylon 5" and pd.isna(movies.loc[40, "year"])
    assert movies.loc[42, "title"] == "Amélie (Fabuleux destin d'Amélie Poulain; Le)"
    assert movies.loc[43, "title"] == 'Movie, "Quoted"'
    assert list(movies.loc[1, "genres"]) == ["Adventure", "Animation", "Children"]
    assert list(movies.loc[42, "genres"]) == []
    assert movies.loc[1, "imdbId"] == "0114709" and movies.loc[29, "imdbId"] == "0112682"
    assert movies.loc[40, "imdbId"] == "10541088" and pd.isna(movies.loc[42, "imdbId"])
    assert movies.loc[1, "tmdbId"] == 862 and pd.isna(movies.loc[41, "tmdbId"])
    assert str(movies["year"].dtype) == "Int16" and str(movies["tmdbId"].dtype) == "Int64"
    assert report["movies"]["dropped"] == {"duplicate_movieId": 1}
    assert report["links"]["dropped"] == {"unknown_movie": 1}


def test_convert_csv_drops_bad_ratings_with_reasons(tmp_path: Path) -> None:
    files = _write(tmp_path, movies=MOVIES_CSV, links=LINKS_CSV, ratings=RATINGS_CSV,
                   tags=TAGS_CSV)
    out = _outs(tmp_path)
    report = convert("csv", files, out)
    ratings = pd.read_parquet(out["ratings"])
    assert [str(t) for t in ratings.dtypes] == ["int32", "int32", "float32", "int64"]
    assert ratings.values.tolist() == [[1, 29, 3.5, 101], [1, 1, 2.5, 300], [2, 1, 4.5, 50],
                                       [3, 43, 0.5, 72]]
    assert report["ratings"] == {"rows_read": 11, "rows_kept": 4, "dropped": {
        "missing_value": 1, "rating_out_of_range": 2, "rating_not_half_step": 1,
        "unknown_movie": 1, "duplicate_user_movie (latest kept)": 2}}
    tags = pd.read_parquet(out["tags"])
    assert tags["tag"].tolist() == ["pixar, funny", "naïve"]
    assert report["tags"]["dropped"] == {"empty_tag": 1, "unknown_movie": 1}


def test_convert_lf_and_crlf_give_the_same_tables(tmp_path: Path) -> None:
    results = []
    for eol in ("\n", "\r\n"):
        d = tmp_path / repr(eol)
        d.mkdir()
        texts = {k: v.replace("\r\n", "\n").replace("\n", eol) for k, v in
                 {"movies": MOVIES_CSV, "links": LINKS_CSV, "ratings": RATINGS_CSV}.items()}
        convert("csv", _write(d, **texts), _outs(d))
        results.append([pd.read_parquet(p) for p in _outs(d).values()])
    for a, b in zip(*results, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_convert_missing_column_is_clear(tmp_path: Path) -> None:
    files = _write(tmp_path, movies="movieId,name\n1,A\n", links=LINKS_CSV, ratings=RATINGS_CSV)
    with pytest.raises(ValueError, match="movies.csv"):
        convert("csv", files, _outs(tmp_path))


def test_split_title_year_edge_cases() -> None:
    titles, years = split_title_year(pd.Series([
        "Heat (1995)", "Shogun (1980-)", " (1995)", "1408 (2007)", "No year here", "Odd (19xx)"]))
    assert titles.tolist() == ["Heat", "Shogun", "(1995)", "1408", "No year here", "Odd (19xx)"]
    assert years.astype(object).where(years.notna(), None).tolist() == [
        1995, 1980, 1995, 2007, None, None]


def test_convert_ml1m(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Ça ira: Star Wars: Episode IV (1977)::Action\n".encode("latin-1"))
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978302109\n2::3::4::1\n")
    files = {n: tmp_path / n for n in ("movies.dat", "ratings.dat")}
    report = convert("ml-1m", files, _outs(tmp_path))
    movies = pd.read_parquet(_outs(tmp_path)["movies"])
    assert movies["title"].tolist() == ["Toy Story", "Ça ira: Star Wars: Episode IV"]
    assert list(movies["genres"][0]) == ["Animation", "Children's", "Comedy"]
    assert movies["imdbId"].isna().all() and movies["tmdbId"].isna().all()
    assert report["ratings"]["rows_kept"] == 2 and report["ratings"]["dropped"] == {
        "unknown_movie": 1}
    assert len(pd.read_parquet(_outs(tmp_path)["tags"])) == 0


def test_convert_ml100k(tmp_path: Path) -> None:
    genres = ["unknown", "Action", "Comedy"]
    (tmp_path / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (tmp_path / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/x|0|0|1\n"
        "2|Café Flore (1996)|01-Jan-1996||http://us.imdb.com/y|0|1|1\n"
        "267|unknown||||1|0|0\n".encode("latin-1"))
    (tmp_path / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t6\t891717742\n")
    files = {n: tmp_path / n for n in ("u.data", "u.item", "u.genre")}
    report = convert("ml-100k", files, _outs(tmp_path))
    movies = pd.read_parquet(_outs(tmp_path)["movies"])
    assert movies["title"].tolist() == ["Toy Story", "Café Flore", "unknown"]
    assert [list(g) for g in movies["genres"]] == [["Comedy"], ["Action", "Comedy"], []]
    assert report["ratings"]["dropped"] == {"rating_out_of_range": 1}


ML25M_MOVIES_CSV = (
    "movieId,title,genres\n"
    '1,"""Great Performances"" Cats (1998)",Musical\n'
    "2,Fawlty Towers (1975\u20131979),Comedy\n"
    '3,"Millions Game, The (Das Millionenspiel)",Action|Drama|Sci-Fi|Thriller\n'
    "4,Hyena Road,(no genres listed)\n"
    '5,"Nine Lives of Tomas Katz, The (2000) ",Comedy|Drama|Fantasy\n'
    "6,Big Bang Theory (2007-),Comedy\n"
)


def test_convert_ml25m_title_quirks(tmp_path: Path) -> None:
    links = "movieId,imdbId,tmdbId\n" + "".join(f"{i},00{i}0000,\n" for i in range(1, 7))
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,1\n"
    files = _write(tmp_path, movies=ML25M_MOVIES_CSV, links=links, ratings=ratings)
    report = convert("csv", files, _outs(tmp_path))
    movies = pd.read_parquet(_outs(tmp_path)["movies"])
    assert movies["title"].tolist() == [
        '"Great Performances" Cats', "Fawlty Towers", "Millions Game, The (Das Millionenspiel)",
        "Hyena Road", "Nine Lives of Tomas Katz, The", "Big Bang Theory"]
    assert movies["year"].astype(object).where(movies["year"].notna(), None).tolist() == [
        1998, 1975, None, None, 2000, 2007]
    assert list(movies["genres"][3]) == [] and report["movies"]["dropped"] == {}


def _ratings_text(eol: str = "\n") -> str:
    rows = ["userId,movieId,rating,timestamp"] + [
        f"{u},{m},{r},{1_000_000_000 + u * 100 + m}" for u in range(1, 40) for m in (1, 29, 41)
        for r in (["3.5"] if (u + m) % 7 else ["4.0", "5"])]  # some pairs twice, in a row
    return "\ufeff" + eol.join(rows)  # a BOM, and no line end after the last row


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_ratings_pieces_give_the_same_result(tmp_path: Path, monkeypatch, eol: str) -> None:
    files = _write(tmp_path, movies=MOVIES_CSV, links=LINKS_CSV, ratings=_ratings_text(eol))
    whole = convert("csv", files, _outs(tmp_path))
    expected = pd.read_parquet(_outs(tmp_path)["ratings"])
    monkeypatch.setattr(ratings_mod, "PIECE_BYTES", 24)  # most pieces hold one line, some part
    pieces = convert("csv", files, _outs(tmp_path))
    assert pieces == whole and whole["ratings"]["dropped"] == {
        "duplicate_user_movie (latest kept)": 16}
    pd.testing.assert_frame_equal(pd.read_parquet(_outs(tmp_path)["ratings"]), expected)
    assert len(expected) == 39 * 3 and set(expected["rating"]) == {3.5, 5.0}


def test_drops_counted_the_same_in_small_pieces(tmp_path: Path, monkeypatch) -> None:
    files = _write(tmp_path, movies=MOVIES_CSV, links=LINKS_CSV, ratings=RATINGS_CSV)
    whole = convert("csv", files, _outs(tmp_path))
    expected = pd.read_parquet(_outs(tmp_path)["ratings"])
    monkeypatch.setattr(ratings_mod, "PIECE_BYTES", 16)  # one line a piece: every drop alone
    assert convert("csv", files, _outs(tmp_path)) == whole
    pd.testing.assert_frame_equal(pd.read_parquet(_outs(tmp_path)["ratings"]), expected)


def test_read_ahead_keeps_order_and_raises_where_the_source_failed() -> None:
    assert list(ratings_mod.read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad piece")

    got = []
    with pytest.raises(ValueError, match="bad piece"):
        for item in ratings_mod.read_ahead(failing()):
            got.append(item)
    assert got == [1]


def test_sorted_ratings_are_not_read_back(tmp_path: Path, monkeypatch) -> None:
    text = "userId,movieId,rating,timestamp\n1,1,4.0,5\n1,29,3.0,6\n2,1,5.0,7\n2,29,1.0,1\n"
    files = _write(tmp_path, movies=MOVIES_CSV, links=LINKS_CSV, ratings=text)
    monkeypatch.setattr(ratings_mod, "PIECE_BYTES", 30)

    def fail(*_: object) -> None:
        raise AssertionError("a sorted file needs no duplicate search")

    monkeypatch.setattr(ratings_mod, "_drop_older_duplicates", fail)
    report = convert("csv", files, _outs(tmp_path))
    assert report["ratings"]["rows_kept"] == 4
    assert not pq.read_schema(_outs(tmp_path)["ratings"]).field("rating").nullable


def test_bad_number_names_the_file_and_offset(tmp_path: Path) -> None:
    text = "userId,movieId,rating,timestamp\n1,1,4.0,5\n1,x,3.0,6\n"
    files = _write(tmp_path, movies=MOVIES_CSV, links=LINKS_CSV, ratings=text)
    with pytest.raises(ValueError, match=r"ratings\.csv \(in the lines from byte 32\)"):
        convert("csv", files, _outs(tmp_path))


# ----------------------------------------------------------------------------- the stage


def _cfg(tmp_path: Path, **kw) -> Config:
    return Config(data_dir=tmp_path / "data", sample_profile="small", **kw)


def test_run_sample_end_to_end_and_skip(tmp_path: Path, capsys) -> None:
    cfg = _cfg(tmp_path)
    report = movielens.run(cfg)
    assert report["source"]["verified"] and report["release"] == "sample"
    for name in ("movies", "ratings", "tags", "convert_report"):
        assert artifacts.path(cfg, name).is_file()
    assert (artifacts.path(cfg, "raw_dir") / f"{ZIP}.md5").is_file()
    first = capsys.readouterr().out
    md5 = report["source"]["md5"]
    assert f"{ZIP}: downloaded " in first and f"md5 {md5} verified" in first
    rows = report["tables"]["ratings"]["rows_kept"]
    assert "converted in " in first and f"ratings: {rows:,} kept of {rows:,} read" in first
    assert "127.0.0.1" not in first  # no random ports in the notebook's output
    stamp = artifacts.path(cfg, "ratings").stat().st_mtime_ns
    again = movielens.run(cfg)
    assert again == json.loads(json.dumps(report))  # the first run's report, read back
    assert artifacts.path(cfg, "ratings").stat().st_mtime_ns == stamp
    rerun = capsys.readouterr().out
    assert f"{ZIP}: " in rerun and "on disk" in rerun and "force=True converts again" in rerun
    assert pq.read_metadata(artifacts.path(cfg, "ratings")).num_rows == rows
    assert len(pd.read_parquet(artifacts.path(cfg, "movies"))) == \
        report["tables"]["movies"]["rows_kept"]


def test_run_from_local_zip_and_base_url(world: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    report = movielens.run(cfg, zip_path=world / ZIP)
    assert report["source"]["md5"] == _md5(world / ZIP)
    with serve(world) as m:
        m.add_fault(ZIP + "$", Fault("status", status=502))
        forced = movielens.run(cfg, base_url=m.movielens_base_url, force=True)
        assert [r.status for r in _zip_gets(m)] == [502, 200]
    assert forced["tables"] == report["tables"]


def test_run_missing_release_on_a_mirror_says_what_to_do(mirror, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 404 .*ml-sample\.zip\.md5.*zip_path=PATH"):
        movielens.run(_cfg(tmp_path), base_url=f"{mirror.movielens_base_url}/nowhere")
    assert not (artifacts.path(_cfg(tmp_path), "raw_dir") / ZIP).exists()


def test_run_local_zip_with_wrong_md5_for_known_release(tmp_path: Path, world: Path) -> None:
    cfg = _cfg(tmp_path, dataset="ml-25m")
    with pytest.raises(ChecksumError, match="6b51fb27"):
        movielens.run(cfg, zip_path=world / ZIP)
    assert not (artifacts.path(cfg, "raw_dir") / "ml-25m.zip").exists()


def test_run_local_zip_checked_against_md5_beside_it(tmp_path: Path, world: Path) -> None:
    local = tmp_path / "local" / ZIP
    local.parent.mkdir()
    shutil.copyfile(world / ZIP, local)
    (local.parent / f"{ZIP}.md5").write_text(f"MD5 ({ZIP}) = {'a' * 32}\n")
    with pytest.raises(ChecksumError, match="a" * 32):
        movielens.run(_cfg(tmp_path), zip_path=local)
    (local.parent / f"{ZIP}.md5").write_text(f"{_md5(local)}  {ZIP}\n")
    assert movielens.run(_cfg(tmp_path), zip_path=local)["source"]["verified"] is True


ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _release_zip(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{folder}/{name}", data)
    return path


def test_run_ml100k_release_layout_reports_count_mismatches(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    flags = ["0"] * 19
    item = "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "",
                     "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)", *flags[:3], "1", "1",
                     "1", *flags[6:]])
    unknown = "|".join(["267", "unknown", "", "", "", "1", *flags[1:]])
    zpath = _release_zip(tmp_path / "ml-100k.zip", "ml-100k", {
        "u.data": b"196\t1\t3\t881250949\n186\t267\t1\t891717742\n",
        "u.item": f"{item}\n{unknown}\n".encode("latin-1"),
        "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)).encode() + b"\n",
        "u1.base": b"1\t1\t1\t1\n", "README": b"100,000 ratings\n"})
    monkeypatch.setitem(RELEASES, "ml-100k", dataclasses.replace(RELEASES["ml-100k"], md5=None))
    cfg = _cfg(tmp_path, dataset="ml-100k")
    report = movielens.run(cfg, zip_path=zpath)
    assert report["expected_mismatches"] == {
        "ratings": {"expected": 100_000, "actual": 2}, "movies": {"expected": 1_682, "actual": 2},
        "rated_movies": {"expected": 1_682, "actual": 2}, "users": {"expected": 943, "actual": 2}}
    assert "note: ratings = 2, the release is documented with 100,000" in capsys.readouterr().out
    movies = pd.read_parquet(artifacts.path(cfg, "movies"))
    assert [list(g) for g in movies["genres"]] == [["Animation", "Children's", "Comedy"], []]
    tags = pq.read_table(artifacts.path(cfg, "tags"))
    assert tags.num_rows == 0 and tags.schema.names == ["userId", "movieId", "tag", "timestamp"]
    assert report["tables"]["tags"]["note"] == "this release has no tags"


def test_run_ml1m_release_layout(tmp_path: Path, monkeypatch) -> None:
    zpath = _release_zip(tmp_path / "ml-1m.zip", "ml-1m", {
        "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                      "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
                      "3::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1"),
        "ratings.dat": b"1::2::5::978300760\n1::1::3::978302109\n2::2::4::978301968\n",
        "users.dat": b"1::F::1::10::48067\n", "README": b"1,000,209 ratings\n"})
    monkeypatch.setitem(RELEASES, "ml-1m", dataclasses.replace(RELEASES["ml-1m"], md5=None))
    cfg = _cfg(tmp_path, dataset="ml-1m")
    report = movielens.run(cfg, zip_path=zpath)
    assert report["expected_mismatches"]["rated_movies"] == {"expected": 3_706, "actual": 2}
    assert "tags" not in report["expected_mismatches"]
    assert pd.read_parquet(artifacts.path(cfg, "movies"))["title"].tolist()[2] == \
        "Misérables, Les"
    assert pd.read_parquet(artifacts.path(cfg, "ratings"))["movieId"].tolist() == [2, 1, 2]
    assert pq.read_metadata(artifacts.path(cfg, "tags")).num_rows == 0


@pytest.mark.skipif(not REAL_SMALL.is_dir(), reason="real ml-latest-small not available")
def test_real_ml_latest_small(tmp_path: Path) -> None:
    zpath = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(REAL_SMALL.iterdir()):
            zf.write(p, f"ml-latest-small/{p.name}")
    cfg = _cfg(tmp_path, dataset="ml-latest-small")
    report = movielens.run(cfg, zip_path=zpath)
    assert report["expected_mismatches"] == {}
    assert movielens._counts(cfg)["rated_movies"] == 9_724
    assert all(not t["dropped"] for t in report["tables"].values())
    counts = movielens._counts(cfg)
    assert (counts["ratings"], counts["movies"], counts["tags"], counts["users"]) == (
        100_836, 9_742, 3_683, 610)
    movies = pd.read_parquet(artifacts.path(cfg, "movies")).set_index("movieId")
    assert movies.loc[1, "imdbId"] == "0114709" and movies.loc[1, "title"] == "Toy Story"
    assert (movies["imdbId"].str.len() >= 7).all()
