"""Stage 02 enrichment: cleaning, parsing, images, politeness, faults, cache and resume."""

from __future__ import annotations

import bisect
import io
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
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
from mmlens.enrich import cache as enrich_cache
from mmlens.enrich.cache import CacheEntry, CacheKey, ResponseCache, write_atomic
from mmlens.enrich.fetch import Fetcher, FetchError, RateLimiter
from mmlens.enrich.images import InvalidImage, check_image_content_type, normalize_image
from mmlens.enrich.imdb_page import PageInfo, decode_page, full_size_image_url
from mmlens.enrich.manifest import MovieResult, Outcome, manifest_frame
from mmlens.enrich.providers import Client, Movie, parse_title_page
from mmlens.enrich.text import clean_synopsis
from mmlens.errors import UserError
from mmlens.net import RetryPolicy
from mmlens.sample import Fault, serve

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
    """The mirror's log once it holds ``n`` requests."""
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


@pytest.mark.parametrize("raw", [
    None, "", "   ", "<p></p>", "Add a Plot", "Add a plot &raquo;", "The plot is unknown.",
    "Plot unknown at this time", "Add a plot in your language", "::Someone", 42,
    "We don't have an overview translated in English. Help us expand our database by adding one.",
])
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


def test_title_page_og_image_alone_is_no_poster_og_description_is_a_plot() -> None:
    """og:image does not mark the title's poster (pages without one show a still or a logo)."""
    for extra in ("", '<script type="application/ld+json">{"@type": "Movie", </script>'):
        info = parse_title_page(_page(OG + extra))
        assert info == PageInfo(None, "From og & meta.")


def test_title_page_with_nothing_and_non_http_image() -> None:
    info = parse_title_page(_page('<meta property="og:image" content="javascript:alert(1)">'))
    assert (info.image, info.description) == (None, None)


# Small pages in the layouts IMDb used over the years (written for these tests, not copied).
TT_URL = "https://www.imdb.com/title/tt0111161/"
MV = "https://m.media-amazon.com/images/M/MV5BNDE3ODcxYzMtY2YzZC00NmNlLWJiNDMtZDViZWM2MzIxZDYw"
OLD = "http://ia.media-imdb.com/images/M/MV5BODU4MjU4NjIwNl5BMl5BanBnXkFtZTgwMDU2MjEyMDE"
OTHER = "https://m.media-amazon.com/images/M/MV5BOTHERTITLEPOSTER"
PLOT = "Two imprisoned men bond over a number of years."
CREDITS = "Directed by Frank Darabont. With Tim Robbins, Morgan Freeman, Bob Gunton."

NEXTJS_2023 = f"""<!DOCTYPE html><html lang="en-US"><head><meta charset="utf-8"/>
<title>The Shawshank Redemption (1994) - IMDb</title>
<meta name="description" content="The Shawshank Redemption: {CREDITS} {PLOT}"/>
<meta property="og:description" content="2h 22m | R"/>
<meta property="og:image" content="{MV}@._V1_FMjpg_UX1000_.jpg"/>
<script type="application/ld+json">{{"@context":"https://schema.org","@type":"Movie",
"url":"https://www.imdb.com/title/tt0111161/","name":"The Shawshank Redemption",
"image":"{MV}@._V1_.jpg","description":"Over the course of several years, two convicts
 form a friendship.","trailer":{{"@type":"VideoObject","description":"Trailer",
"thumbnailUrl":"{OTHER}._V1_.jpg"}}}}</script></head>
<body><section><div data-testid="hero-media__poster" class="ipc-poster ipc-poster--baseAlt">
<img alt="Poster" class="ipc-image" src="{MV}@._V1_QL75_UX190_CR0,2,190,281_.jpg"/></div>
<p data-testid="plot"><span role="presentation" data-testid="plot-xl">{PLOT}</span></p>
</section><script>window.ads = {{"description": "not a plot"}};</script>
<script id="__NEXT_DATA__" type="application/json">{{"props":{{"pageProps":{{
"moreLikeThis":{{"id":"tt0068646","primaryImage":{{"url":"{OTHER}._V1_.jpg"}}}},
"aboveTheFoldData":{{"id":"tt0111161","primaryImage":{{"id":"rm1","url":"{MV}@._V1_.jpg"}},
"plot":{{"plotText":{{"plainText":"{PLOT}"}}}}}}}}}}}}</script></body></html>"""

NEXTJS_NO_LD = re.sub(r'<script type="application/ld\+json">.*?</script>', "", NEXTJS_2023,
                      flags=re.S).replace(
    f'content="{MV}@._V1_FMjpg_UX1000_.jpg"',
    'content="https://m.media-amazon.com/images/G/01/imdb/images/social/imdb_logo.png"')
NEXTJS_DATA_ONLY = re.sub(r"<section>.*?</section>", "", NEXTJS_NO_LD, flags=re.S).replace(
    '<meta name="description"', '<meta name="x-description"')

LAYOUT_2018 = f"""<!DOCTYPE html><html><head>
<meta content="{MV}@._V1_UY1200_CR90,0,630,1200_AL_.jpg" property="og:image">
<meta content="{CREDITS} {PLOT}" name="og:description">
<script type="application/ld+json">{{"@context": "http://schema.org",
  "@type": "Organization", "url": "https://www.imdb.com", "logo": "{OTHER}.png"}}</script>
</head><body><div class="title-overview">
<div class="poster"><a href="/title/tt0111161/mediaviewer/rm1?ref_=tt_ov_i">
<img alt="The Shawshank Redemption Poster" src="{MV}@._V1_UX182_CR0,0,182,268_AL_.jpg"></a></div>
<div class="summary_text">
        {PLOT}
    <a href="/title/tt0111161/plotsummary">See full summary</a>&nbsp;&raquo;
</div></div></body></html>"""

LAYOUT_2012 = f"""<html xmlns:og="http://ogp.me/ns#"><head>
<meta name="description" content="{CREDITS}  {PLOT}" />
</head><body><table id="title-overview-widget-layout"><tr>
<td rowspan="2" id="img_primary"><div class="image"><a href="/media/rm1/tt0111161?ref_=tt_ov_i">
<img height="317" width="214" alt="Poster" title="Poster" src="{OLD}@._V1_SX214_AL_.jpg"
 itemprop="image" /></a></div></td><td id="overview-top">
<p itemprop="description">
{PLOT}</p></td></tr></table>
<div class="article"><div class="rec_poster"><img src="{OTHER}._V1_SX76_.jpg"></div></div>
<div class="inline canwrap" itemprop="description"><p>A longer storyline.
<em class="nobr">Written by <a href="/search/title?plot_author=x">someone</a></em></p></div>
</body></html>"""

LAYOUT_2008 = f"""<html><head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">
<title>Les Misérables (1998)</title>
<link rel="image_src" href="{OLD}@@._V1._SX100_SY140_.jpg">
</head><body><div id="tn15lhs"><div class="photo">
<a name="poster" href="/rg/action-box-title/primary-photo/media/rm1/tt0119683" title="Poster">
<img border="0" alt="Poster" src="{OLD}@@._V1._SX94_SY140_.jpg" height="140" width="94"></a>
</div></div><div id="tn15content"><div class="info"><h5>Genre:</h5>
<div class="info-content">Crime | Drama</div></div>
<div class="info"><h5>Plot:</h5><div class="info-content">
Jean Valjean, a bitter ex-convict, is hunted by Inspector Javert for years. Café société.
<a class="tn15more inline" href="/title/tt0119683/plotsummary">full summary</a> |
<a class="tn15more inline" href="/title/tt0119683/synopsis">add synopsis</a>
</div></div></div></body></html>"""


def test_title_page_2023_nextjs_layout() -> None:
    info = parse_title_page(NEXTJS_2023, TT_URL)
    assert info.image == f"{MV}@._V1_.jpg"  # the title's own, not the trailer's thumbnail
    assert info.description == "Over the course of several years, two convicts\n form a friendship."
    # without JSON-LD: the hero poster and the plot element; og:image is only the IMDb logo
    assert parse_title_page(NEXTJS_NO_LD, TT_URL) == PageInfo(f"{MV}@._V1_.jpg", PLOT)
    # only __NEXT_DATA__ left: the node of this title, not "more like this"; og is metadata
    assert parse_title_page(NEXTJS_DATA_ONLY, TT_URL) == PageInfo(f"{MV}@._V1_.jpg", PLOT)


def test_title_page_2018_2012_and_2008_layouts() -> None:
    assert parse_title_page(LAYOUT_2018, TT_URL) == PageInfo(f"{MV}@._V1_.jpg", PLOT)
    no_og = LAYOUT_2018.replace('property="og:image"', 'property="og:title"')
    assert parse_title_page(no_og, TT_URL) == PageInfo(f"{MV}@._V1_.jpg", PLOT)
    assert parse_title_page(LAYOUT_2012, TT_URL) == PageInfo(f"{OLD}@._V1_.jpg", PLOT)
    url = "http://www.imdb.com/title/tt0119683/"
    body = LAYOUT_2008.encode("cp1252")  # old pages are Latin-1, declared in a meta tag only
    info = parse_title_page(body, url)
    assert info.image == f"{OLD}@@._V1_.jpg"
    assert info.description == ("Jean Valjean, a bitter ex-convict, is hunted by Inspector Javert "
                                "for years. Café société.")
    no_link = LAYOUT_2008.replace('rel="image_src"', 'rel="stylesheet"')
    assert parse_title_page(no_link, url).image == f"{OLD}@@._V1_.jpg"  # the poster <img>


def _ld(*nodes: str) -> str:
    return "".join(f'<script type="application/ld+json">{n}</script>' for n in nodes)


@pytest.mark.parametrize(("scripts", "image", "description"), [
    (_ld('{"@type": "TVSeries", "image": ["/a.jpg", "/b.jpg"], "description": "Series."}'),
     "https://www.imdb.com/a.jpg", "Series."),
    (_ld('{"@type": "TVEpisode", "image": {"@type": "ImageObject", "contentUrl": "https://x.io/'
         'e.jpg"}, "description": "Episode.", "partOfSeries": {"@type": "TVSeries", '
         '"image": "https://x.io/series.jpg"}}'), "https://x.io/e.jpg", "Episode."),
    (_ld('{"@type": ["VideoGame"], "image": [{"@type": "ImageObject", "url": "https://x.io/g.jpg"'
         '}], "description": {"@value": "Game.", "@language": "en"}}'), "https://x.io/g.jpg",
     "Game."),
    (_ld('{"@type": "http://schema.org/CreativeWork", "image": "https://x.io/c.jpg", '
         '"abstract": "Abstract only."}'), "https://x.io/c.jpg", "Abstract only."),
    (_ld('{"@context": "https://schema.org", "@graph": [{"@type": "WebPage", "image": '
         '{"@id": "#poster"}}, {"@id": "#poster", "@type": "ImageObject", "url": '
         '"https://x.io/p.jpg"}, {"@type": "Movie", "image": {"@id": "#poster"}, '
         '"description": "In a graph."}]}'), "https://x.io/p.jpg", "In a graph."),
    (_ld('{"@type": "Organization", "logo": "https://x.io/logo.png", "image": '
         '"https://x.io/logo.png", "description": "A site."}',
         '{"@type": "BreadcrumbList", "itemListElement": []}',
         '{"@type": "Movie", "url": "/title/tt0068646/", "image": "https://x.io/other.jpg"}',
         '{"@type": "Movie", "url": "/title/tt0111161/", "image": "https://x.io/this.jpg", '
         '"description": "This one."}'), "https://x.io/this.jpg", "This one."),
    (_ld('{&quot;@type&quot;: &quot;Movie&quot;, &quot;image&quot;: &quot;https://x.io/q.jpg'
         '&quot;, &quot;description&quot;: &quot;Escaped &amp;amp; fine.&quot;}'),
     "https://x.io/q.jpg", "Escaped &amp; fine."),
    (_ld('<!--{"@type": "Movie", "image": "https://x.io/m.jpg", "description": "Line one\n'
         'line two."}-->'), "https://x.io/m.jpg", "Line one\nline two."),
])
def test_title_page_json_ld_variants(scripts: str, image: str, description: str) -> None:
    assert parse_title_page(_page(scripts), TT_URL) == PageInfo(image, description)


@pytest.mark.parametrize("head", [
    '<meta content="https://x.io/o.jpg" property="og:image"><meta content="{d}" '
    'property="og:description">',
    '<meta name="og:image" content="https://x.io/o.jpg"><meta name="og:description" '
    'content="{d}">',
    '<meta itemprop="image" content="https://x.io/o.jpg"><meta itemprop="description" '
    'content="{d}">',
    '<meta name="twitter:image" content="https://x.io/o.jpg"><meta name="description" '
    'content="{d}">',
    '<link href="https://x.io/o.jpg" rel="image_src"><meta name="description" content="{d}">',
])
def test_title_page_meta_tags_give_a_plot_never_a_poster(head: str) -> None:
    info = parse_title_page(_page(head.format(d="A plot told in enough words.")), TT_URL)
    assert (info.image, info.description) == (None, "A plot told in enough words.")


@pytest.mark.parametrize(("text", "plot"), [
    (f"{CREDITS} {PLOT}", PLOT),
    ("Pulp Fiction: Directed by Quentin Tarantino. With John Travolta, Uma Thurman, Samuel L. "
     "Jackson, Robert Downey Jr.. The lives of two mob hitmen intertwine.",
     "The lives of two mob hitmen intertwine."),
    ("Star Wars: Episode IV - A New Hope: Created by J.J. Abrams. With Mark Hamill. Luke joins "
     "the rebels to save the princess.", "Luke joins the rebels to save the princess."),
    ("Directed by J.J. Abrams. With Chris Pine, Zachary Quinto.", None),  # credits, no plot
    ("With the world at war, a young soldier must choose a side.",
     "With the world at war, a young soldier must choose a side."),
    ("2h 22m | R", None),
    ("TV Series | 2008-2013", None),
])
def test_title_page_meta_description_credits(text: str, plot: str | None) -> None:
    assert parse_title_page(_page(f'<meta name="description" content="{text}">')
                            ).description == plot


def test_title_page_placeholders_are_no_poster() -> None:
    page = _page(
        '<meta property="og:image" content="https://m.media-amazon.com/images/G/01/imdb/images/'
        'social/imdb_logo.png"><link rel="image_src" href="http://ia.media-imdb.com/images/G/01/'
        'imdb/images/logos/imdb_fb_logo-1730868325._CB522736557_.png">'
        f'<meta property="og:description" content="{PLOT}">').replace(
        "<h1>x</h1>", '<div class="poster"><img src="https://m.media-amazon.com/images/S/sash/'
        'nopicture/film.png"></div><div class="rec_poster"><img src="' + OTHER + '.jpg"></div>')
    assert parse_title_page(page, TT_URL) == PageInfo(None, PLOT)
    no_poster_ld = _ld('{"@type": "Movie", "image": "https://www.imdb.com/images/no-poster.jpg"}')
    assert parse_title_page(_page(no_poster_ld + OG)).image is None


FIXTURES = Path(__file__).parent / "fixtures" / "imdb"
AMZ = "https://m.media-amazon.com/images/M/MV5B"
IA = "http://ia.media-imdb.com/images/M/MV5B"


@pytest.mark.parametrize(("page", "poster", "plot"), [  # page: file/title id
    pytest.param("2009-tn15-poster/tt0400001", f"{IA}LANTERNKEEPERPOSTER@@._V1_.jpg",
                 "A lighthouse keeper on a northern island finds a stranger washed ashore after "
                 "the winter storm.", id="2009-poster-and-plot-block"),
    pytest.param("2009-tn15-no-poster/tt0400002", None,
                 "Two ferry captains race each other across the bay every morning for thirty "
                 "years.", id="2009-add-poster-image-and-share-logo"),
    pytest.param("2011-overview-plain-plot/tt1100001", f"{IA}PAPERSATELLITES._V1_.jpg",
                 "A schoolteacher in a mining town builds a radio telescope from scrap, hoping to "
                 "hear from her missing brother.", id="2011-plain-paragraph-under-the-rating"),
    pytest.param("2011-overview-cut-plot/tt1100002", f"{IA}GLASSORCHARD._V1_.jpg",
                 "After their father's death, three sisters return to the family orchard and find "
                 "its greenhouses full of glass trees that ring in the wind.",
                 id="2011-see-full-summary-takes-the-storyline"),
    pytest.param("2011-no-poster-share-logo/tt1100003", None, None,
                 id="2011-share-logo-and-add-a-plot"),
    pytest.param("2014-itemprop-no-poster-still/tt3300001", None,
                 "A night ferry's radio operator picks up a distress call that no other ship can "
                 "hear.", id="2014-promotional-still"),
    pytest.param("2018-poster-see-full-summary/tt5500001", f"{AMZ}SALTANDCOPPER@._V1_.jpg",
                 "Two rival coppersmiths in a coastal town must share one forge when a storm "
                 "destroys the other, and learn that their grandfathers built it together.",
                 id="2018-see-full-summary-takes-the-storyline"),
    pytest.param("2018-cut-plot-only/tt5500002", f"{AMZ}WINTERARCHIVE@._V1_.jpg",
                 "An archivist cataloguing a dead composer's letters finds a score that was never "
                 "performed and a name that was erased from ...",
                 id="2018-cut-plot-alone-kept-without-link-text"),
    pytest.param("2019-no-poster-promo-still/tt5500003", None, None,
                 id="2019-promotional-still-other-titles-poster-plot-unknown"),
    pytest.param("2023-nextjs-poster/tt9900001", f"{AMZ}CARTOGRAPHERSDAUGHTER@._V1_.jpg",
                 "A mapmaker's daughter redraws the coastline to hide her village from a tax "
                 "collector.", id="2023-poster-and-plot"),
    pytest.param("2023-nextjs-no-poster-promo-still/tt9900002", None, None,
                 id="2023-promotional-still-plot-unknown"),
    pytest.param("2025-nextjs-share-logo-add-plot/tt30000001", None, None,
                 id="2025-share-logo-add-a-plot"),
    pytest.param("2025-nextjs-poster-storyline/tt30000002", f"{AMZ}BELLFOUNDERS@._V1_.jpg",
                 "In a river town, a family of bell founders must cast the largest bell of the "
                 "century before the spring flood, while the youngest daughter plans to leave for "
                 "the city.", id="2025-cut-plot-takes-the-storyline"),
])
def test_title_page_fixture(page: str, poster: str | None, plot: str | None) -> None:
    """Only the title's own poster, only a real plot, whole where the page has it whole."""
    name, tt = page.split("/")
    info = parse_title_page((FIXTURES / f"{name}.html").read_bytes(),
                            f"https://www.imdb.com/title/{tt}/")
    assert info.image == poster
    assert clean_synopsis(info.description) == plot


@pytest.mark.parametrize(("url", "full"), [
    (f"{MV}@._V1_UX182_CR0,0,182,268_AL_.jpg", f"{MV}@._V1_.jpg"),
    (f"{MV}@._V1_QL75_UY281_CR0,0,190,281_.jpg", f"{MV}@._V1_.jpg"),
    (f"{MV}@._V1_SX300.jpg", f"{MV}@._V1_.jpg"),
    (f"{MV}@._V1_FMjpg_UX1000_.jpg", f"{MV}@._V1_.jpg"),
    (f"{OLD}@@._V1._SX100_SY140_.jpg", f"{OLD}@@._V1_.jpg"),
    (f"{MV}@._V1_.jpg", f"{MV}@._V1_.jpg"),
    (f"{MV}@._V1_SY150_CR0,0,101,150_.png", f"{MV}@._V1_.png"),
    ("https://image.tmdb.org/t/p/w500/abc.jpg", "https://image.tmdb.org/t/p/w500/abc.jpg"),
    ("http://127.0.0.1:8000/imdb-img/0a1b2c.jpg", "http://127.0.0.1:8000/imdb-img/0a1b2c.jpg"),
])
def test_full_size_image_url(url: str, full: str) -> None:
    assert full_size_image_url(url) == full


def test_decode_page_charsets() -> None:
    text = "<p>Café – déjà vu</p>"
    assert decode_page(text.encode("utf-8")) == text
    assert decode_page(text.encode("cp1252")) == text  # undeclared and not UTF-8
    assert decode_page(text.encode("cp1252"), "text/html; charset=ISO-8859-1") == text
    assert decode_page(b"\xef\xbb\xbf" + text.encode("utf-8")) == text
    assert decode_page(text.encode("utf-8"), "text/html; charset=no-such-charset") == text


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


def _starts(limiter: RateLimiter, host: str, n: int) -> list[float]:
    """Start times of ``n`` requests, each answered at once."""
    starts = []
    for _ in range(n):
        ticket = limiter.acquire(host)
        limiter.release(ticket)
        starts.append(ticket.started)
    return starts


def _busiest_second(times: list[float]) -> int:
    """Most of ``times`` in any closed 1-second window."""
    times = sorted(times)
    return max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))


def test_rate_limiter_spaces_requests_per_host() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
    starts = _starts(limiter, "a", 4)
    assert [round(s - starts[0], 9) for s in starts] == [0.0, 0.25, 0.5, 0.75]
    assert _starts(limiter, "b", 1) == [clock.now]  # another host is not held up
    # the 5th waits for 1 s after the answer to the 1st: answers came at once, so 1.0 s
    assert round(_starts(limiter, "a", 1)[0] - starts[0], 6) == 1.001
    clock.now += 10.0  # an idle host does not bank tokens: no burst afterwards
    a, b = _starts(limiter, "a", 2)
    assert (a, round(b - a, 9)) == (clock.now - 0.25, 0.25)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_rate_limiter_per_host_rates() -> None:
    """A host with a published limit (TMDB: 40 req/s) runs at it; the others at the default."""
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep, host_rates={"API.example": 40.0})
    fast, slow = _starts(limiter, "api.example", 40), _starts(limiter, "www.example", 4)
    assert round(fast[1] - fast[0], 9) == 0.025 and _busiest_second(fast) == 40
    assert round(slow[1] - slow[0], 9) == 0.25
    assert _busiest_second(fast + _starts(limiter, "api.example", 40)) <= 40
    tmdb = TMDBProvider("https://api.example/3", "https://img.example/t/p", api_key="k")
    assert tmdb.host_rates() == {"api.example": 40.0, "img.example": 40.0}


def test_rate_limiter_holds_at_the_server_whatever_the_delays() -> None:
    """Requests that reach the server late (by up to 0.4 s) never crowd one second there."""
    rng = np.random.default_rng(7)
    for rate in (3.0, 20.0, 2.5):
        clock = FakeClock()
        limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
        starts, arrivals, naive = [], [], []
        for k in range(8 * int(rate) + 1):
            ticket = limiter.acquire("h")
            delay = float(rng.choice([0.0, 0.4], p=[0.8, 0.2]))
            starts.append(ticket.started)
            arrivals.append(ticket.started + delay)
            naive.append(k / rate + delay)  # spacing alone
            limiter.release(ticket, at=ticket.started + delay + 0.05)  # answered 50 ms later
        assert _busiest_second(arrivals) <= math.floor(rate)
        assert _busiest_second(naive) > math.floor(rate)  # what the window rule is for
        assert (len(starts) - 1) / (starts[-1] - starts[0]) > 0.6 * rate  # at a fair pace


def test_rate_limiter_late_wake_up_pushes_the_next_ones_back() -> None:
    """A caller that wakes up late must not let the callers after it bunch up: the spacing
    counts from the late start, not from when it should have started."""
    clock, late = FakeClock(), iter([0.25])  # the first sleep ends 0.25 s late

    def oversleep(seconds: float) -> None:
        clock.now += seconds + next(late, 0.0)

    limiter = RateLimiter(10.0, clock=clock, sleep=oversleep)
    starts = _starts(limiter, "a", 4)
    assert [round(d, 9) for d in np.diff(starts)] == [0.35, 0.1, 0.1]


def test_measured_rate_never_exceeds_limit(mirror, truth: pd.DataFrame) -> None:
    fetcher = Fetcher(rate_limit=20.0, retry=FAST_RETRY)
    ids = [int(t) for t in truth[truth["tmdb_doc"]]["tmdbId"].dropna()[:24]]
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
    times = sorted(r.time for r in _logged(mirror, len(urls)))  # arrival times at the mirror
    assert len(times) == 24
    # a bound, not a speed: a loaded machine only spreads the arrivals further apart
    assert _busiest_second(times) <= 20
    assert (len(times) - 1) / (times[-1] - times[0]) <= 20.0


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


def test_write_atomic_leaves_no_partial_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x" / "1.jpg"
    write_atomic(target, b"old")
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["1.jpg"]

    def fail(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(enrich_cache.os, "replace", fail)  # the write fails at the rename
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["1.jpg"]


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


def test_a_user_table_that_cannot_be_used_is_a_user_error(tmp_path: Path) -> None:
    """What people hand to TableProvider: a spreadsheet's export, TMDB's column names, ids with
    decimals or words: each a one-line UserError naming the file, never a traceback."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes("movieId,synopsis\n1,Caf\xe9 noir\n".encode("latin-1"))
    overview = tmp_path / "overview.csv"
    pd.DataFrame({"movieId": [1], "overview": ["x"]}).to_csv(overview, index=False)
    words = tmp_path / "words.csv"
    words.write_text("movieId,synopsis\n1,one\ntt0114709,two\n")
    halves = tmp_path / "halves.csv"
    halves.write_text("movieId,synopsis\n1.5,one\n")
    torn = tmp_path / "torn.parquet"
    torn.write_bytes(b"PAR1 not a parquet file")
    for table, message in [(latin, "not UTF-8"), (overview, r"synopsis column .*'overview'"),
                           (words, "1 movieId values are not whole numbers .*'tt0114709'"),
                           (halves, "not whole numbers"), (torn, "cannot be read"),
                           (tmp_path / "absent.csv", "does not exist")]:
        with pytest.raises(UserError, match=message) as caught:
            TableProvider(table)
        assert str(table) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="does not exist"):
        LocalDirProvider(tmp_path / "no-posters")
    # whole numbers written as floats (a column with blanks) and a byte-order mark are fine
    ok = tmp_path / "ok.csv"
    ok.write_bytes("\ufeffmovieId,synopsis\n1.0,One.\n,orphan\n2,Two.\n2,Again.\n".encode())
    provider = TableProvider(ok)
    assert provider._rows == {1: {"synopsis": "One."}, 2: {"synopsis": "Two."}}


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


def test_imdb_page_without_json_ld_uses_meta_and_hero_poster(mirror, truth: pd.DataFrame,
                                                             tmp_path: Path) -> None:
    rows = truth[truth["imdb_page"] & ~truth["imdb_jsonld"] & (truth["poster_defect"] == "")]
    assert len(rows) > 0
    client = _client(tmp_path)
    for _, row in rows.iterrows():
        result = enrich_movie(_movie(row), [IMDbProvider(mirror.imdb_base)], client, tmp_path)
        assert (result.poster.status, result.synopsis.status) == ("ok", "ok")
        # every such page's own description, cleaned (the world's synopsis may be TMDB's)
        assert result.synopsis_text == clean_synopsis(row["imdb_description_raw"])
        if row["synopsis_source"] == "imdb":
            assert result.synopsis_text == row["synopsis"]


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


@pytest.mark.parametrize("imdb_pages", [False, True], ids=["tmdb-only", "imdb-opt-in"])
def test_run_sample_matches_the_world(tmp_path: Path, truth: pd.DataFrame, imdb_pages: bool,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """TMDB alone by default; IMDb pages only when opted in, with the notice."""
    cfg = _sample_cfg(tmp_path, truth)
    manifest = run(cfg, imdb_pages=imdb_pages, progress=False)  # starts the sample mirror itself
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["movieId"].tolist() == truth["movieId"].tolist()
    merged = manifest.merge(truth, on="movieId", suffixes=("", "_truth"))
    expected = {m: merged[f"{m}_source_truth"].replace({} if imdb_pages else {"imdb": "none"})
                for m in ("poster", "synopsis")}
    assert (expected["poster"] == "imdb").any() == imdb_pages
    for m in ("poster", "synopsis"):
        got = merged[f"{m}_source"].where(merged[f"{m}_status"] == "ok", "none")
        assert (got == expected[m]).all(), m
    synopses = pd.read_parquet(artifacts.require(cfg, "synopses"))
    check = synopses.merge(truth[["movieId", "synopsis"]], on="movieId")
    assert len(check) == (expected["synopsis"] != "none").sum()
    assert (check["synopsis_x"] == check["synopsis_y"]).all()
    ok = manifest[manifest["poster_status"] == "ok"]
    posters = artifacts.path(cfg, "posters_dir")
    assert sorted(p.name for p in posters.iterdir()) == sorted(f"{i}.jpg" for i in ok["movieId"])
    with Image.open(posters / f"{ok['movieId'].iloc[0]}.jpg") as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")
    assert (ok["poster_bytes"] > 0).all() and ok["poster_sha256"].str.len().eq(64).all()
    table = coverage(manifest)
    assert table.groupby("modality")["movies"].sum().tolist() == [len(truth)] * 2
    out = capsys.readouterr().out
    assert out.count("conditions of use forbid scraping") == int(imdb_pages)
    n_posters = int((expected["poster"] != "none").sum())
    assert f"posters fetched {n_posters}/{len(truth)}" in out
    assert "retried         0 requests" in out


def test_real_run_needs_a_tmdb_key_and_one_way_to_ask_for_imdb(
        tmp_path: Path, truth: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _sample_cfg(tmp_path, truth).with_(dataset="ml-latest-small")
    movies = pd.read_parquet(artifacts.path(_sample_cfg(tmp_path, truth), "movies"))
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    monkeypatch.delenv("TMDB_API_KEY", raising=False)
    monkeypatch.delenv("TMDB_BEARER_TOKEN", raising=False)
    with pytest.raises(UserError, match="TMDB_API_KEY"):
        run(cfg, progress=False)
    with pytest.raises(ValueError, match="name 'imdb'"):
        run(cfg, providers=["imdb"], imdb_pages=True, progress=False)


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
        # 90 requests in: at least 10 movies done, so a periodic write (every 10) took place
        written = len(pd.read_parquet(checkpoint))
        assert 0 < written < len(truth) and written % 10 == 0

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


TRANSIENT_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mmlens.config import Config
    from mmlens.enrich import TMDBProvider, run
    from mmlens.net import RetryPolicy
    data_dir, api, img, key = sys.argv[1:5]
    cfg = Config(data_dir=Path(data_dir), sample_profile="small")
    run(cfg, providers=[TMDBProvider(api, img, api_key=key)], concurrency=2, rate_limit=40.0,
        retry=RetryPolicy(max_attempts=1, connect_timeout=5.0, read_timeout=5.0), progress=False)
""")


def test_rerun_after_kill_retries_transient_failures_and_keeps_permanent_ones(
        world: Path, truth: pd.DataFrame, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A poster whose connection was reset in a killed run is fetched by the rerun; 404s and
    undecodable posters answered before the kill are not asked again."""
    data_dir = tmp_path / "data"
    cfg = _sample_cfg(data_dir, truth)
    row = truth[truth["poster_source"] == "tmdb"].iloc[0]
    record = artifacts.path(cfg, "enrich_cache") / "tmdb" / "poster" / f"{row['tmdbId']}.entry"
    with serve(world, latency_s=0.01) as mirror:
        mirror.add_fault(f"{row['tmdb_poster_path']}$", Fault("reset"))  # fails once
        proc = subprocess.Popen(
            [sys.executable, "-c", TRANSIENT_SCRIPT, str(data_dir), mirror.tmdb_api_base,
             mirror.tmdb_image_base, mirror.tmdb_api_key],
            env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert running, f"the run ended before it was killed: {err.decode()[-2000:]}"
        assert CacheEntry.from_bytes(record.read_bytes()).outcome == "transient"
        first = _settled(mirror)
        transient = [p for p in artifacts.path(cfg, "enrich_cache").rglob("*.entry")
                     if CacheEntry.from_bytes(p.read_bytes()).outcome == "transient"]
        permanent = {r.path for r in mirror.requests if r.status == 404} | {
            p for p in first for d in truth.loc[truth["poster_defect"] == "truncated",
                                                "tmdb_poster_path"] if p.endswith(d)}

        capsys.readouterr()
        manifest = run(cfg, providers=[TMDBProvider(mirror.tmdb_api_base, mirror.tmdb_image_base,
                                                    api_key=mirror.tmdb_api_key)],
                       rate_limit=500.0, progress=False)
        second = _settled(mirror)[len(first):]

    got = manifest.set_index("movieId").loc[row["movieId"]]
    assert (got["poster_status"], got["poster_source"]) == ("ok", "tmdb")
    assert (artifacts.path(cfg, "posters_dir") / f"{row['movieId']}.jpg").exists()
    assert second.count(f"/tmdb-img/t/p/w500{row['tmdb_poster_path']}") == 1
    assert permanent and not permanent & set(second)  # 404s and bad images: answered for good
    assert not (manifest["poster_status"] == "error").any()
    out = capsys.readouterr().out
    n = len(transient)
    assert f"retried         {n} request{'s' if n != 1 else ''} that failed" in out
    assert f"{n} now succeed" in out
