"""Stage 02 (notebook 02): posters and synopses from TMDB, IMDb, a table or a local folder.

    from mmlens.enrich import run, coverage
    manifest = run(cfg)                 # TMDB (sample: served by the local mirror)
    manifest = run(cfg, imdb_pages=True)  # then IMDb title pages: opt-in, see the notice
    coverage(manifest)                  # counts per modality x status x source

``pipeline`` runs the stage, ``providers`` knows the sites, ``fetch`` is the polite HTTP client,
``cache`` makes runs resumable, ``images`` and ``text`` validate and clean what comes back.
"""

from __future__ import annotations

from mmlens.enrich.manifest import MANIFEST_COLUMNS, coverage
from mmlens.enrich.pipeline import enrich_movie, load_catalog, run
from mmlens.enrich.providers import (
    IMDbProvider,
    LocalDirProvider,
    Provider,
    TableProvider,
    TMDBProvider,
)

__all__ = [
    "MANIFEST_COLUMNS",
    "IMDbProvider",
    "LocalDirProvider",
    "Provider",
    "TMDBProvider",
    "TableProvider",
    "coverage",
    "enrich_movie",
    "load_catalog",
    "run",
]
