"""The synthetic MovieLens-shaped sample world: catalog, users, ratings, tags and their web pages.

Rating model (all draws from one ``numpy.random.Generator(seed)``; latent dimension ``K = 16``):

- Each movie has a synopsis topic ``t`` (one of 8, see ``synopses.TOPICS``), 1-3 of the 19
  MovieLens genres drawn with weights that depend on the topic (so topic and genre correlate), and a
  poster style ``s`` (one of 8, see ``posters.STYLES``) drawn from a softmax over per-genre style
  preferences (correlated with genre, not determined by it).
- Movie vector ``m = 0.45 G@genres/sqrt(n_genres) + 0.65 Style[s] + 0.60 Topic[t] + 0.40 idio`` with
  ``G``, ``Style``, ``Topic``, ``idio`` standard normal: style and topic carry 60-75% of the
  variance of the user-movie affinity ``u.m`` (measured per world in ``truth/world.json``).
- Movie bias ``b_i = 0.45 q_style[s] + 0.45 q_topic[t] + 0.30 appeal`` (``appeal`` is the
  idiosyncratic part), user bias ``b_u ~ N(0, 0.35^2)``, user vector ``u ~ N(0, I/K)``.
- Which movies a user rates: a Zipf-like popularity (``1/rank``), tilted towards liked and good
  movies (``log pop + 0.6 u.m + 0.3 b_i`` with Gumbel top-k sampling), only movies released before
  the user's last session. Ratings per user follow a log-normal long tail, at least 5 each.
- ``score = b_u + b_i + 0.8 u.m + N(0, 0.55^2)``; scores are mapped by their quantiles onto a
  MovieLens-like half-star histogram (0.5..5.0) with 55% of ratings above 3.
- Timestamps: each user is active in a window between 1996 and 2019, rates in sessions (seconds
  apart inside a session) and never before a movie's release; they increase per user in time.

Coverage on the simulated web (TMDB first, then IMDb) is drawn in ``web.py`` and recorded in
``truth/movies.parquet``; the pipeline never reads ``truth/``. Release CSVs use LF line endings
(ml-25m parity) and UTF-8.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens.sample import synopses, web
from mmlens.sample.posters import N_STYLES

WORLD_VERSION = 2  # 2: IMDb pages show the poster in the hero slot
RELEASE = "ml-sample"
K = 16
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
GENRE_BASE = np.array(
    [1.2, 0.8, 0.3, 0.4, 2.0, 0.8, 0.3, 2.6, 0.5, 0.1, 0.7, 0.1, 0.3, 0.4, 1.0, 0.5, 1.0, 0.3, 0.2]
)
# genres each topic favours (multiplies the base weight by e^2)
TOPIC_GENRES: tuple[tuple[str, ...], ...] = (
    ("Sci-Fi", "Adventure", "Action", "IMAX"),
    ("Crime", "Thriller", "Action", "Comedy"),
    ("Romance", "Comedy", "Drama", "Musical"),
    ("War", "Drama", "Action"),
    ("Horror", "Mystery", "Thriller"),
    ("Drama", "Comedy", "Children"),
    ("Drama", "Crime", "Thriller", "Mystery", "Film-Noir"),
    ("Comedy", "Children", "Adventure", "Animation"),
)
HALF_STARS = np.arange(1, 11) / 2
HALF_STAR_PROBS = np.array([0.015, 0.03, 0.02, 0.08, 0.06, 0.245, 0.13, 0.24, 0.07, 0.11])
MIN_TS = int(datetime(1996, 3, 29, tzinfo=timezone.utc).timestamp())
MAX_TS = int(datetime(2019, 11, 20, tzinfo=timezone.utc).timestamp())
DAY = 86_400
ZIP_DATE = (2019, 11, 21, 0, 0, 0)


@dataclass(frozen=True)
class SampleProfile:
    """Size of a sample world."""

    n_movies: int
    n_users: int
    n_ratings: int


PROFILES = {"default": SampleProfile(600, 800, 60_000), "small": SampleProfile(120, 150, 8_000)}


def profile_named(name: str) -> SampleProfile:
    """The profile called ``name``, or a clear error listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown sample profile {name!r}; known: {sorted(PROFILES)}") from None


def world_dir(cfg: Any) -> Path:
    """Where ``ensure_world`` keeps the world of ``cfg``'s profile and seed."""
    return Path(cfg.data_dir) / "_sample_world" / f"{cfg.sample_profile}-seed{cfg.seed}"


def ensure_world(cfg: Any) -> Path:
    """Generate the world for ``cfg.sample_profile`` / ``cfg.seed`` once; reuse it afterwards.

    The world is written into a temporary sibling directory and renamed, so a killed run never
    leaves a half world behind.
    """
    from mmlens.artifacts import atomic_path

    profile = profile_named(cfg.sample_profile)
    target = world_dir(cfg)
    manifest = target / "world.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == WORLD_VERSION:
        return target
    with atomic_path(target) as tmp:
        generate_world(tmp, profile, cfg.seed)
    return target


def generate_world(out_dir: Path, profile: SampleProfile, seed: int) -> Path:
    """Write a complete world (release zip, web pages, images, truth) into ``out_dir``."""
    if min(profile.n_movies, profile.n_users) < 20 or profile.n_ratings < 5 * profile.n_users:
        raise ValueError(f"profile too small: {profile} (>= 20 movies/users, >= 5 ratings/user)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    movies = draw_catalog(rng, profile.n_movies)
    users = draw_users(rng, profile.n_users, profile.n_ratings, movies)
    ratings = draw_ratings(rng, movies, users)
    tags = draw_tags(rng, movies, ratings)
    movies = web.draw_coverage(rng, movies)
    zip_md5 = write_release(out_dir, movies, ratings, tags)
    web.write_sites(out_dir, movies, rng)
    stats = _model_stats(movies, users, ratings)
    _write_truth(out_dir / "truth", movies, users, stats)
    manifest = {
        "version": WORLD_VERSION, "seed": seed, "profile": profile.__dict__,
        "release": RELEASE, "zip_md5": zip_md5, "line_endings": "LF",
        "tmdb_api_key": web.TMDB_API_KEY, "n_ratings": len(ratings), "n_tags": len(tags),
    }
    (out_dir / "world.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


# ---------------------------------------------------------------------------- latent model


def draw_catalog(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Movies with ids, titles, years, genres, topic, style, latent vector, bias and popularity."""
    n_topics = len(synopses.TOPICS)
    topic = rng.integers(n_topics, size=n)
    favoured = np.array([[g in fav for g in GENRES] for fav in TOPIC_GENRES])
    genre_style = rng.normal(0, 1.0, size=(len(GENRES), N_STYLES))
    onehot = np.zeros((n, len(GENRES)))
    style = np.zeros(n, dtype=int)
    for i in range(n):
        w = GENRE_BASE * np.exp(2.0 * favoured[topic[i]])
        k = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        chosen = rng.choice(len(GENRES), size=k, replace=False, p=w / w.sum())
        onehot[i, chosen] = 1
        logits = genre_style[chosen].sum(axis=0)
        p = np.exp(logits - logits.max())
        style[i] = rng.choice(N_STYLES, p=p / p.sum())
    genre_part = onehot @ rng.normal(size=(len(GENRES), K)) / np.sqrt(onehot.sum(1, keepdims=True))
    style_vecs, topic_vecs = rng.normal(size=(N_STYLES, K)), rng.normal(size=(n_topics, K))
    idio = rng.normal(size=(n, K))
    vec_style, vec_topic = 0.65 * style_vecs[style], 0.60 * topic_vecs[topic]
    vectors = 0.45 * genre_part + vec_style + vec_topic + 0.40 * idio
    appeal = rng.normal(size=n)
    bias = (0.45 * rng.normal(size=N_STYLES)[style] + 0.45 * rng.normal(size=n_topics)[topic]
            + 0.30 * appeal)
    popularity = 1.0 / rng.permutation(np.arange(1, n + 1))
    years = np.clip(2019 - np.floor(rng.exponential(16, size=n)), 1921, 2019).astype(int)
    release_ts = np.array([_year_start(y) for y in years]) + rng.integers(0, 300, size=n) * DAY

    used: set[str] = set()
    n_foreign = max(3, round(0.05 * n))
    foreign = set(rng.choice(n, size=n_foreign, replace=False).tolist())
    display, ml_title = [], []
    n_foreign_done = 0
    for i in range(n):
        if i in foreign:
            d, t = synopses.foreign_title(n_foreign_done)
            n_foreign_done += 1
        else:
            d, t = synopses.make_title(rng, int(topic[i]), used)
        display.append(d)
        ml_title.append(t)
    year_col: list[int | None] = years.tolist()
    no_year = int(rng.integers(n))
    year_col[no_year] = None
    release_ts[no_year] = _year_start(1995)
    genres = [[GENRES[j] for j in np.flatnonzero(row)] for row in onehot]
    listed = [list(g) for g in genres]
    listed[int(rng.integers(n))] = []  # one movie with "(no genres listed)"
    return pd.DataFrame({
        "movieId": np.cumsum(rng.integers(1, 4, size=n)).astype(np.int32),
        "display_title": display,
        "ml_title": ml_title,
        "year": pd.array(year_col, dtype="Int64"),
        "genres": genres,
        "listed_genres": listed,
        "topic": topic,
        "style": style,
        "vector": list(vectors),
        "vector_style": list(vec_style),
        "vector_topic": list(vec_topic),
        "appeal": appeal,
        "bias": bias,
        "popularity": popularity,
        "release_ts": release_ts.astype(np.int64),
    })


def _year_start(year: int) -> int:
    return int(datetime(int(year), 1, 1, tzinfo=timezone.utc).timestamp())


def draw_users(rng: np.random.Generator, n: int, n_ratings: int,
               movies: pd.DataFrame) -> pd.DataFrame:
    """Users with a taste vector, a bias, a rating count and an activity window.

    A user's window ends late enough for enough movies to be out to fill the rating count.
    """
    start = rng.integers(MIN_TS, MAX_TS - DAY, size=n)
    duration = np.where(rng.random(n) < 0.4, 0, rng.exponential(200, size=n) * DAY).astype(np.int64)
    counts = _ratings_per_user(rng, n, n_ratings, cap=int(0.85 * len(movies)))
    released = np.sort(movies["release_ts"].to_numpy())
    need = np.minimum(np.ceil(np.maximum(counts, 8) / 0.85).astype(int), len(movies))
    end = np.maximum(np.minimum(start + duration, MAX_TS), released[need - 1])
    return pd.DataFrame({
        "userId": np.arange(1, n + 1, dtype=np.int32),
        "vector": list(rng.normal(size=(n, K)) / np.sqrt(K)),
        "bias": rng.normal(0, 0.35, size=n),
        "n_ratings": counts,
        "start_ts": np.minimum(start, end),
        "end_ts": end,
    })


def _ratings_per_user(rng: np.random.Generator, n_users: int, n_ratings: int,
                      cap: int) -> np.ndarray:
    """Long-tailed counts per user, each in [5, cap], summing to ``n_ratings`` when cap allows."""
    raw = rng.lognormal(0, 1.1, size=n_users)
    counts = np.minimum(5 + np.floor(raw / raw.sum() * (n_ratings - 5 * n_users)), cap)
    counts = counts.astype(int)
    for _ in range(50):
        short = n_ratings - counts.sum()
        weight = raw * (counts < cap)
        if short <= 0 or weight.sum() == 0:
            break
        counts = np.minimum(counts + rng.multinomial(short, weight / weight.sum()), cap)
    return counts


def draw_ratings(rng: np.random.Generator, movies: pd.DataFrame,
                 users: pd.DataFrame) -> pd.DataFrame:
    """Who rates what, when, and with how many half stars (see the module docstring)."""
    m = np.stack(movies["vector"].to_numpy())
    u = np.stack(users["vector"].to_numpy())
    affinity = u @ m.T
    released = movies["release_ts"].to_numpy()
    end = users["end_ts"].to_numpy()
    available = released[None, :] <= end[:, None]
    counts = users["n_ratings"].to_numpy()
    logits = (np.log(movies["popularity"].to_numpy())[None, :] + 0.6 * affinity
              + 0.3 * movies["bias"].to_numpy()[None, :] + rng.gumbel(size=affinity.shape))
    logits[~available] = -np.inf
    order = np.argsort(-logits, axis=1)
    rows, cols, stamps = [], [], []
    for ui in range(len(users)):
        chosen = order[ui, : counts[ui]]
        rows.append(np.full(len(chosen), ui))
        cols.append(chosen)
        stamps.append(_timestamps(rng, int(users["start_ts"].iat[ui]), int(end[ui]),
                                  released[chosen]))
    ui, mi = np.concatenate(rows), np.concatenate(cols)
    score = (users["bias"].to_numpy()[ui] + movies["bias"].to_numpy()[mi] + 0.8 * affinity[ui, mi]
             + rng.normal(0, 0.55, size=len(ui)))
    quantile = (np.argsort(np.argsort(score, kind="stable"), kind="stable") + 0.5) / len(score)
    stars = HALF_STARS[np.searchsorted(np.cumsum(HALF_STAR_PROBS)[:-1], quantile, side="right")]
    ratings = pd.DataFrame({
        "userId": users["userId"].to_numpy()[ui],
        "movieId": movies["movieId"].to_numpy()[mi],
        "rating": stars,
        "timestamp": np.concatenate(stamps),
    })
    return ratings.sort_values(["userId", "movieId"], ignore_index=True)


def _timestamps(rng: np.random.Generator, start: int, end: int, released: np.ndarray) -> np.ndarray:
    """Rating times in sessions inside [start, end], never before a movie's release."""
    n_sessions = 1 if end - start < DAY else 2 + rng.poisson((end - start) / (30 * DAY))
    sessions = np.sort(rng.integers(start, end + 1, size=n_sessions))
    sessions[0], sessions[-1] = start, end
    first = np.minimum(np.searchsorted(sessions, released), n_sessions - 1)
    session = first + np.floor(rng.random(len(released)) * (n_sessions - first)).astype(int)
    within = rng.random(len(released))
    order = np.lexsort((within, session))
    gaps = np.floor(rng.exponential(45, size=len(released))).astype(np.int64) + 3
    stamps = np.empty(len(released), dtype=np.int64)
    sorted_sessions = session[order]
    offsets = np.cumsum(gaps)
    is_new = np.r_[True, sorted_sessions[1:] != sorted_sessions[:-1]]
    base = np.maximum.accumulate(np.where(is_new, offsets - gaps, 0))
    stamps[order] = sessions[sorted_sessions] + offsets - base
    return stamps


def draw_tags(rng: np.random.Generator, movies: pd.DataFrame,
              ratings: pd.DataFrame) -> pd.DataFrame:
    """Free-text tags by a few users on movies they rated, a little after rating them."""
    users = ratings["userId"].unique()
    taggers = rng.choice(users, size=max(3, round(0.12 * len(users))), replace=False)
    pool = ratings[ratings["userId"].isin(taggers)]
    n = min(len(pool), max(20, round(0.04 * len(ratings))))
    picked = pool.iloc[np.sort(rng.choice(len(pool), size=n, replace=False))]
    by_id = movies.set_index("movieId")
    text = [
        synopses.tag_for(rng, int(by_id.at[mid, "topic"]), list(by_id.at[mid, "genres"]))
        for mid in picked["movieId"]
    ]
    tags = pd.DataFrame({
        "userId": picked["userId"].to_numpy(),
        "movieId": picked["movieId"].to_numpy(),
        "tag": text,
        "timestamp": picked["timestamp"].to_numpy() + rng.integers(5, 600, size=n),
    })
    tags = tags.drop_duplicates(["userId", "movieId", "tag"])
    return tags.sort_values(["userId", "movieId", "timestamp"], ignore_index=True)


# ---------------------------------------------------------------------------- release files


def ml_title_with_year(row: pd.Series) -> str:
    """The movies.csv title: MovieLens spelling plus `` (year)`` when the year is known."""
    return row["ml_title"] if pd.isna(row["year"]) else f"{row['ml_title']} ({row['year']})"


def _csv_bytes(table: pd.DataFrame) -> bytes:
    """CSV as MovieLens writes it: header, minimal quoting, LF, UTF-8."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(table.columns))
    writer.writerows(table.itertuples(index=False))
    return buf.getvalue().encode("utf-8")


def release_members(movies: pd.DataFrame, ratings: pd.DataFrame,
                    tags: pd.DataFrame) -> dict[str, bytes]:
    """The CSV and README files of the release, keyed by file name."""
    table = pd.DataFrame({
        "movieId": movies["movieId"],
        "title": movies.apply(ml_title_with_year, axis=1),
        "genres": ["|".join(sorted(g)) if g else "(no genres listed)"
                   for g in movies["listed_genres"]],
        "imdbId": movies["imdbId"],
        "tmdbId": ["" if pd.isna(t) else str(int(t)) for t in movies["tmdbId"]],
    })
    stars = ratings.assign(rating=[f"{r:.1f}" for r in ratings["rating"]])
    return {
        "movies.csv": _csv_bytes(table[["movieId", "title", "genres"]]),
        "ratings.csv": _csv_bytes(stars[["userId", "movieId", "rating", "timestamp"]]),
        "links.csv": _csv_bytes(table[["movieId", "imdbId", "tmdbId"]]),
        "tags.csv": _csv_bytes(tags[["userId", "movieId", "tag", "timestamp"]]),
        "README.txt": _readme(movies, ratings, tags).encode("utf-8"),
    }


def _readme(movies: pd.DataFrame, ratings: pd.DataFrame, tags: pd.DataFrame) -> str:
    return (
        "Summary\n=======\n\n"
        f"This is {RELEASE}, a synthetic release generated by mmlens for tests and tutorials. It\n"
        "follows the file formats of the MovieLens ml-25m release (UTF-8, LF line endings) but\n"
        "every movie, user, rating and tag is invented: no real person or film is described.\n\n"
        f"{len(ratings)} ratings and {len(tags)} tag applications across {len(movies)} movies\n"
        f"by {ratings['userId'].nunique()} users.\n\n"
        "Files: movies.csv (movieId,title,genres), ratings.csv (userId,movieId,rating,timestamp),\n"
        "tags.csv (userId,movieId,tag,timestamp), links.csv (movieId,imdbId,tmdbId).\n"
        "Ratings are half stars from 0.5 to 5.0; timestamps are seconds since 1970-01-01 UTC.\n"
    )


def write_release(out_dir: Path, movies: pd.DataFrame, ratings: pd.DataFrame,
                  tags: pd.DataFrame) -> str:
    """Write ``ml-sample.zip`` (fixed member dates: same input, same bytes) and its ``.md5``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        folder = zipfile.ZipInfo(f"{RELEASE}/", date_time=ZIP_DATE)
        folder.create_system, folder.external_attr = 3, (0o40755 << 16) | 0x10
        zf.writestr(folder, b"")
        for name, data in release_members(movies, ratings, tags).items():
            info = zipfile.ZipInfo(f"{RELEASE}/{name}", date_time=ZIP_DATE)
            info.create_system, info.external_attr = 3, 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    data = buf.getvalue()
    md5 = hashlib.md5(data).hexdigest()
    (out_dir / f"{RELEASE}.zip").write_bytes(data)
    (out_dir / f"{RELEASE}.zip.md5").write_text(f"{md5}  {RELEASE}.zip\n")
    return md5


# ---------------------------------------------------------------------------- truth


def _model_stats(movies: pd.DataFrame, users: pd.DataFrame, ratings: pd.DataFrame) -> dict:
    u = np.stack(users["vector"].to_numpy())
    affinity = u @ np.stack(movies["vector"].to_numpy()).T
    content = u @ (np.stack(movies["vector_style"].to_numpy())
                   + np.stack(movies["vector_topic"].to_numpy())).T
    return {
        "latent_dim": K,
        "affinity_variance_share_style_topic": float(content.var() / affinity.var()),
        "share_ratings_above_3": float((ratings["rating"] > 3).mean()),
        "rated_movies": int(ratings["movieId"].nunique()),
    }


def _write_truth(truth_dir: Path, movies: pd.DataFrame, users: pd.DataFrame, stats: dict) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    table = movies.drop(columns=["vector_style", "vector_topic"])
    table = table.rename(columns={"style": "style_id", "topic": "topic_id"})
    table["topic_name"] = [synopses.TOPICS[t].name for t in table["topic_id"]]
    table["title"] = table.apply(ml_title_with_year, axis=1)
    table["vector"] = [np.asarray(v, dtype=np.float32) for v in table["vector"]]
    table.to_parquet(truth_dir / "movies.parquet", index=False)
    users_out = users.copy()
    users_out["vector"] = [np.asarray(v, dtype=np.float32) for v in users_out["vector"]]
    users_out.to_parquet(truth_dir / "users.parquet", index=False)
    (truth_dir / "world.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
