"""The simulated web of the sample world: TMDB documents, IMDb title pages and poster files.

``draw_coverage`` decides per movie what each site knows (recorded as truth columns);
``write_sites`` renders it under the world directory, where ``mirror.py`` serves it:

- ``tmdb/<tmdbId>.json``: TMDB API v3 movie documents (some with ``poster_path`` null or an empty
  ``overview``); movies without a document get TMDB's 404.
- ``tmdb-img/<hex>.jpg`` and ``imdb-img/<hex>.jpg``: poster JPEGs (a few truncated, one or two an
  HTML page; the mirror serves them as image/jpeg anyway).
- ``imdb/tt<imdbId>.html``: title pages with JSON-LD (``{MIRROR}`` is replaced by the mirror's URL
  at serve time), og: meta tags and the poster in the hero poster slot; a few without JSON-LD, some
  descriptions with HTML entities and an IMDb-style ``::author`` suffix.

Expected outcome of a scraper that tries TMDB first and IMDb second (stage 02 with
``imdb_pages=True``; by default it asks TMDB alone, and the ``imdb`` rows end without) is recorded
in ``poster_source`` / ``synopsis_source`` (``tmdb``, ``imdb`` or ``none``) and ``synopsis`` (the
clean text).
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mmlens.sample import synopses
from mmlens.sample.posters import jpeg_bytes, render_poster

TMDB_API_KEY = "mmlens-sample-key"
MIRROR_PLACEHOLDER = "{MIRROR}"
TMDB_GENRES = {
    "Action": (28, "Action"), "Adventure": (12, "Adventure"), "Animation": (16, "Animation"),
    "Children": (10751, "Family"), "Comedy": (35, "Comedy"), "Crime": (80, "Crime"),
    "Documentary": (99, "Documentary"), "Drama": (18, "Drama"), "Fantasy": (14, "Fantasy"),
    "Horror": (27, "Horror"), "Musical": (10402, "Music"), "Mystery": (9648, "Mystery"),
    "Romance": (10749, "Romance"), "Sci-Fi": (878, "Science Fiction"),
    "Thriller": (53, "Thriller"), "War": (10752, "War"), "Western": (37, "Western"),
}
HTML_NOT_AN_IMAGE = (
    b"<!DOCTYPE html><html><head><title>Image not available</title></head>"
    b"<body><p>Sorry, this image is not available.</p></body></html>\n"
)
AUTHORS = ("JaneDoe", "filmfan1984", "Anonymous", "Rick_Reviews", "MoviePilot")


def _pick_flags(rng: np.random.Generator, candidates: np.ndarray, k: int, n: int) -> np.ndarray:
    """Boolean mask of length ``n`` with ``k`` of ``candidates`` set."""
    mask = np.zeros(n, dtype=bool)
    k = min(k, len(candidates))
    mask[rng.choice(candidates, size=k, replace=False)] = True
    return mask


def draw_coverage(rng: np.random.Generator, movies: pd.DataFrame) -> pd.DataFrame:
    """Ids, per-site availability, defects, texts and file names for every movie."""
    n = len(movies)
    df = movies.copy()
    df["imdbId"] = [f"{x:07d}" for x in rng.choice(2_990_000, size=n, replace=False) + 10_000]
    tmdb_ids = rng.choice(700_000, size=n, replace=False) + 2

    perm = rng.permutation(n)
    n_neither, n_imdb = max(2, round(0.05 * n)), max(4, round(0.12 * n))
    neither, imdb_only = perm[:n_neither], perm[n_neither:n_neither + n_imdb]
    on_tmdb = np.sort(perm[n_neither + n_imdb:])
    q_neither, q_imdb = max(1, n_neither // 4), max(1, n_imdb // 4)
    unlisted = np.r_[neither[:q_neither], imdb_only[:q_imdb]]
    tmdb_doc = np.zeros(n, dtype=bool)
    tmdb_doc[on_tmdb] = True
    tmdb_doc[neither[q_neither:2 * q_neither]] = True  # a document with nothing useful in it
    k_missing = max(1, round(0.04 * len(on_tmdb)))
    tmdb_poster = np.zeros(n, dtype=bool)
    tmdb_poster[on_tmdb] = True
    tmdb_poster &= ~_pick_flags(rng, on_tmdb, k_missing, n)
    tmdb_overview = np.zeros(n, dtype=bool)
    tmdb_overview[on_tmdb] = True
    tmdb_overview &= ~_pick_flags(rng, on_tmdb, k_missing, n)
    imdb_page = np.ones(n, dtype=bool)
    imdb_page[neither] = False
    pages = np.flatnonzero(imdb_page)
    imdb_jsonld = imdb_page & ~_pick_flags(rng, pages, max(2, round(0.12 * len(pages))), n)

    n_defect = max(2, round(0.02 * n))
    defective = rng.choice(np.flatnonzero(tmdb_poster), size=n_defect, replace=False)
    defect = np.array([""] * n, dtype=object)
    n_html = 1 if n < 300 else 2
    defect[defective[:n_html]] = "html"
    defect[defective[n_html:]] = "truncated"

    tmdb_text, imdb_text, imdb_raw = [], [], []
    for i in range(n):
        topic, genres = int(df["topic"].iat[i]), list(df["genres"].iat[i])
        tmdb_text.append(synopses.synopsis(rng, topic, genres, int(rng.integers(2, 6)))
                         if tmdb_overview[i] else "")
        if imdb_page[i]:
            text = synopses.synopsis(rng, topic, genres, int(rng.integers(2, 4)))
            imdb_text.append(text)
            imdb_raw.append(_imdb_description(rng, text))
        else:
            imdb_text.append(None)
            imdb_raw.append(None)

    unlisted_set = set(unlisted.tolist())
    df["tmdbId"] = pd.array(
        [None if i in unlisted_set else int(t) for i, t in enumerate(tmdb_ids)], dtype="Int64")
    df["tmdb_doc"] = tmdb_doc
    df["tmdb_poster"] = tmdb_poster
    df["tmdb_overview"] = tmdb_overview
    df["imdb_page"] = imdb_page
    df["imdb_jsonld"] = imdb_jsonld
    df["poster_defect"] = defect.astype(str)
    fallback = np.where(imdb_page, "imdb", "none")
    df["poster_source"] = np.where(defect != "", "none", np.where(tmdb_poster, "tmdb", fallback))
    df["synopsis_source"] = np.where(tmdb_overview, "tmdb", fallback)
    df["tmdb_overview_text"] = tmdb_text
    df["imdb_description_raw"] = imdb_raw
    df["synopsis"] = [t if t else i for t, i in zip(tmdb_text, imdb_text, strict=True)]
    df["tmdb_poster_path"] = [f"/{rng.bytes(14).hex()[:27]}.jpg" if p else None
                              for p in tmdb_poster]
    df["imdb_image_file"] = [f"{rng.bytes(10).hex()}.jpg" if p else None for p in imdb_page]
    return df


def _imdb_description(rng: np.random.Generator, text: str) -> str:
    """The description as IMDb pages carry it: sometimes entity-escaped, sometimes signed."""
    raw = text
    if rng.random() < 0.5:
        raw = raw.replace("&", "&amp;").replace("'", "&#39;")
    if rng.random() < 0.35:
        raw = f"{raw}::{synopses.pick(rng, AUTHORS)}"
    return raw


def clean_imdb_description(raw: str) -> str:
    """Reverse of the page encoding: unescape entities and drop a ``::author`` suffix."""
    return html.unescape(raw.split("::")[0]).strip()


def write_sites(out_dir: Path, movies: pd.DataFrame, rng: np.random.Generator) -> None:
    """Write TMDB documents, IMDb pages and poster files for ``movies`` under ``out_dir``."""
    for sub in ("tmdb", "tmdb-img", "imdb", "imdb-img"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    for row in tqdm(movies.itertuples(index=False), total=len(movies), desc="sample world",
                    leave=False):
        if row.tmdb_doc:
            doc = tmdb_document(row)
            (out_dir / "tmdb" / f"{row.tmdbId}.json").write_text(
                json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        if row.tmdb_poster or row.imdb_page:
            image = jpeg_bytes(render_poster(int(row.style), row.display_title, rng))
            if row.poster_defect == "truncated":
                image = image[: int(len(image) * 0.55)]
            elif row.poster_defect == "html":
                image = HTML_NOT_AN_IMAGE
            if row.tmdb_poster:
                (out_dir / "tmdb-img" / row.tmdb_poster_path.lstrip("/")).write_bytes(image)
            if row.imdb_page:
                (out_dir / "imdb-img" / row.imdb_image_file).write_bytes(image)
        if row.imdb_page:
            (out_dir / "imdb" / f"tt{row.imdbId}.html").write_text(imdb_page(row), encoding="utf-8")


def _release_date(row: Any) -> str:
    if pd.isna(row.year):
        return ""
    ts = int(row.release_ts)
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def tmdb_document(row: Any) -> dict:
    """A TMDB API v3 ``/movie/{id}`` document for one movie row."""
    return {
        "adult": False,
        "backdrop_path": None,
        "genres": [{"id": TMDB_GENRES[g][0], "name": TMDB_GENRES[g][1]}
                   for g in row.genres if g in TMDB_GENRES],
        "id": int(row.tmdbId),
        "imdb_id": f"tt{row.imdbId}",
        "original_language": "en",
        "original_title": row.display_title,
        "overview": row.tmdb_overview_text,
        "popularity": round(float(row.popularity) * 100, 3),
        "poster_path": row.tmdb_poster_path if row.tmdb_poster else None,
        "release_date": _release_date(row),
        "status": "Released",
        "tagline": "",
        "title": row.display_title,
        "video": False,
        "vote_average": 0.0,
        "vote_count": 0,
    }


def imdb_page(row: Any) -> str:
    """An IMDb-title-shaped HTML page for one movie row."""
    title = row.display_title
    year = "" if pd.isna(row.year) else f" ({row.year})"
    image = f"{MIRROR_PLACEHOLDER}/imdb-img/{row.imdb_image_file}"
    raw = row.imdb_description_raw
    clean = clean_imdb_description(raw)
    esc = html.escape
    head = [
        '<meta charset="utf-8">',
        f"<title>{esc(title)}{year} - IMDb</title>",
        f'<meta property="og:title" content="{esc(title)}{year} - IMDb">',
        '<meta property="og:type" content="video.movie">',
        f'<meta property="og:image" content="{esc(image)}">',
        f'<meta property="og:description" content="{esc(clean)}">',
        f'<meta name="description" content="{esc(clean)}">',
    ]
    if row.imdb_jsonld:
        ld = {
            "@context": "https://schema.org",
            "@type": "Movie",
            "url": f"/title/tt{row.imdbId}/",
            "name": title,
            "image": image,
            "description": raw,
            "genre": list(row.genres),
            "datePublished": _release_date(row),
        }
        payload = json.dumps(ld, ensure_ascii=False).replace("</", "<\\/")
        head.append(f'<script type="application/ld+json">{payload}</script>')
    body = (f'<h1 data-testid="hero-title-block__title">{esc(title)}</h1>\n'
            f'<div class="ipc-poster" data-testid="hero-media__poster">'
            f'<img alt="{esc(title)}" class="ipc-image" src="{esc(image)}"></div>\n'
            f'<p data-testid="plot">{esc(clean)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n" + "\n".join(head)
            + "\n</head>\n<body>\n" + body + "\n</body>\n</html>\n")
