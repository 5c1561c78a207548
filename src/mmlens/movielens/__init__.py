"""Stage 01: download a MovieLens release, verify it, and convert it to the common schema.

``run(cfg)`` is what notebook 01 and ``python -m mmlens 01`` call; the notebook then reads the
tables back and checks them in the open.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmlens import __version__, artifacts
from mmlens.config import Config
from mmlens.movielens import convert, download, extract
from mmlens.movielens.convert import ConvertError
from mmlens.movielens.download import (
    ChecksumError,
    DownloadError,
    fetch_text,
    file_md5,
    recorded_md5,
    write_md5_sibling,
)
from mmlens.movielens.extract import ExtractError
from mmlens.movielens.releases import (
    RELEASES,
    Release,
    UnknownReleaseError,
    get_release,
    parse_md5_file,
)
from mmlens.net import HTTPError, UnreachableError, redact_url

# The submodules stay reachable as ``movielens.download`` etc.; their functions are not re-exported
# under the same names, which would shadow the modules.
__all__ = [
    "RELEASES", "ChecksumError", "ConvertError", "DownloadError", "ExtractError", "Release",
    "UnknownReleaseError", "convert", "download", "extract", "get_release", "run",
]

OUTPUTS = ("movies", "ratings", "tags", "convert_report")
OTHER_SOURCE = ("download from a mirror (base_url=URL; CLI: -o base_url=URL) or use a zip you "
                "already have (zip_path=PATH)")
UNREACHABLE_HINT = f"check the network or proxy, or {OTHER_SOURCE}"


def run(
    cfg: Config, *, base_url: str | None = None, zip_path: Path | None = None, force: bool = False
) -> dict[str, Any]:
    """Download (or take ``zip_path``), verify, extract and convert ``cfg.dataset``.

    Sample datasets download from the local sample mirror unless ``base_url`` or ``zip_path`` is
    given. Work is skipped when the outputs exist and were made from a zip with the same md5.
    Prints what was done (bytes, md5, rows kept and dropped, seconds); returns the conversion
    report (also written to the ``convert_report`` artifact).
    """
    release = get_release(cfg.dataset)
    dest = artifacts.path(cfg, "raw_dir") / release.zip_name
    if zip_path is not None:
        source = _use_local_zip(release, Path(zip_path), dest, force)
    else:
        with _base_url(cfg, base_url) as base:
            source = _download_release(release, base, dest, force)

    previous = _previous_report(cfg)
    if not force and previous is not None and previous.get("source", {}).get("md5") == \
            source["md5"]:
        print(f"{release.name}: the tables on disk were converted from this zip; force=True "
              "converts again")
        return previous

    start = time.perf_counter()
    files = extract.extract(dest, dest.parent, release.members, optional=release.optional_members)
    out = {name: artifacts.path(cfg, name) for name in ("movies", "ratings", "tags")}
    tables = convert.convert(release.format, files, out)
    report = {
        "dataset": cfg.dataset,
        "release": release.name,
        "format": release.format,
        "source": source,
        "tables": tables,
        "expected_mismatches": _expected_mismatches(release, cfg),
        "outputs": {name: str(p.relative_to(cfg.dataset_dir)) for name, p in out.items()},
        "convert_seconds": round(time.perf_counter() - start, 2),
        "mmlens_version": __version__,
    }
    artifacts.write_json(artifacts.path(cfg, "convert_report"), report)
    _print_summary(report)
    return report


@contextlib.contextmanager
def _base_url(cfg: Config, base_url: str | None) -> Iterator[str]:
    """The base URL to download from; in sample mode the local mirror, started for the block."""
    if base_url is not None:
        yield base_url
    elif cfg.is_sample:
        from mmlens.sample import serve_sample_world

        with serve_sample_world(cfg) as mirror:
            yield mirror.movielens_base_url
    else:
        yield get_release(cfg.dataset).base_url


def _download_release(release: Release, base: str, dest: Path, force: bool) -> dict[str, Any]:
    """Download the release zip to ``dest`` unless a verified copy is there; print what was done."""
    url = release.url(base)
    md5, md5_source = _published_md5(release, url, dest, force)
    source = {"url": url, "md5": md5, "md5_source": md5_source, "verified": True}
    if not force and download.is_verified(dest, md5):
        print(f"{release.zip_name}: {_size(dest)} on disk, md5 {md5} verified against "
              f"{_md5_origin(release, md5_source)}")
        return source
    start = time.perf_counter()
    try:
        download.download(url, dest, md5=md5, force=force)
    except UnreachableError as exc:
        raise exc.with_hint(UNREACHABLE_HINT) from None
    except HTTPError as exc:
        raise DownloadError(f"{exc}; {OTHER_SOURCE}") from exc
    seconds = time.perf_counter() - start
    print(f"{release.zip_name}: downloaded {_size(dest)} in {seconds:.1f} s, md5 {md5} verified "
          f"against {_md5_origin(release, md5_source)}")
    return {**source, "bytes": dest.stat().st_size, "seconds": round(seconds, 2)}


def _published_md5(release: Release, url: str, dest: Path, force: bool) -> tuple[str, str]:
    """The md5 to verify against and where it came from: the registry, the ``.md5`` file
    published beside the zip, or (when that is unreachable) the one recorded after an earlier
    verified download."""
    if release.md5 is not None:
        return release.md5, "registry"
    md5_url = url + ".md5"
    try:
        return parse_md5_file(fetch_text(md5_url), release.zip_name), md5_url
    except (DownloadError, HTTPError, UnreachableError, ValueError) as exc:
        recorded = recorded_md5(dest) if dest.is_file() and not force else None
        if recorded is not None:
            print(f"warning: {redact_url(md5_url)} unavailable ({exc}); using the md5 recorded "
                  f"beside {dest.name}")
            return recorded, "recorded earlier"
        if isinstance(exc, UnreachableError):
            raise exc.with_hint(UNREACHABLE_HINT) from None
        raise DownloadError(
            f"cannot get the checksum {redact_url(md5_url)} ({exc}); {OTHER_SOURCE}"
        ) from exc


def _md5_origin(release: Release, md5_source: str) -> str:
    if md5_source == "registry":
        return f"the md5 published for {release.name}"
    if md5_source == "recorded earlier":
        return "the md5 recorded at its first download"
    return f"the published {release.zip_name}.md5"


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def _use_local_zip(release: Release, zip_path: Path, dest: Path, force: bool) -> dict[str, Any]:
    """Check a local zip, then copy it into ``raw_dir``: it must be a zip holding the release's
    files, with the release's published md5 or, when there is none, the md5 of a ``<zip>.md5``
    file beside it if present. Nothing is written before these checks pass."""
    if not zip_path.is_file():
        raise ExtractError(f"zip_path {zip_path} does not exist")
    extract.check_zip(zip_path, release.members,
                      advice=f"zip_path= takes the release zip itself ({release.zip_name})")
    digest = file_md5(zip_path)
    expected, md5_source = release.md5, "registry"
    beside = zip_path.with_name(zip_path.name + ".md5")
    if expected is None and beside.is_file():
        expected, md5_source = parse_md5_file(beside.read_text(), zip_path.name), str(beside)
    if expected is not None and digest != expected:
        raise ChecksumError(
            f"{zip_path} has md5 {digest}, but {release.name} is published with {expected} "
            f"({md5_source})"
        )
    same_file = dest.is_file() and zip_path.resolve() == dest.resolve()
    if not same_file and (force or not dest.is_file() or recorded_md5(dest) != digest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with artifacts.atomic_path(dest) as tmp:
            shutil.copyfile(zip_path, tmp)
    write_md5_sibling(dest, digest)
    check = (f"verified against {_md5_origin(release, md5_source)}" if expected is not None
             else "(no published md5 to verify against)")
    print(f"{zip_path.name}: local zip, {_size(dest)}, md5 {digest} {check}")
    return {"zip_path": str(zip_path), "md5": digest, "verified": expected is not None,
            "md5_source": md5_source if expected else "computed (no published md5)"}


def _previous_report(cfg: Config) -> dict[str, Any] | None:
    if not all(artifacts.path(cfg, name).is_file() for name in OUTPUTS):
        return None
    try:
        return artifacts.read_json(artifacts.path(cfg, "convert_report"))
    except ValueError:
        return None


def _expected_mismatches(release: Release, cfg: Config) -> dict[str, dict[str, int]]:
    if not release.expected:
        return {}
    actual = _counts(cfg)
    return {
        name: {"expected": want, "actual": actual[name]}
        for name, want in release.expected.items()
        if name in actual and actual[name] != want
    }


def _counts(cfg: Config) -> dict[str, int]:
    import pyarrow.parquet as pq

    ratings = pq.read_table(artifacts.path(cfg, "ratings"), columns=["userId", "movieId"])
    return {
        "ratings": ratings.num_rows,
        "movies": pq.read_metadata(artifacts.path(cfg, "movies")).num_rows,
        "tags": pq.read_metadata(artifacts.path(cfg, "tags")).num_rows,
        "users": _distinct(ratings["userId"].to_numpy()),
        "rated_movies": _distinct(ratings["movieId"].to_numpy()),
    }


def _distinct(ids: np.ndarray) -> int:
    """Number of distinct ids: a bincount for the usual small non-negative ids, else a sort."""
    if len(ids) == 0:
        return 0
    if ids.min() >= 0 and ids.max() < 100_000_000:
        return int(np.count_nonzero(np.bincount(ids)))
    return len(np.unique(ids))


def _print_summary(report: dict[str, Any]) -> None:
    print(f"converted in {report['convert_seconds']:.1f} s:")
    for name, table in report["tables"].items():
        line = f"  {name}: {table['rows_kept']:,} kept of {table['rows_read']:,} read"
        if table["dropped"]:
            line += "; dropped " + ", ".join(f"{n:,} {why}" for why, n in table["dropped"].items())
        print(line)
    for name, m in report["expected_mismatches"].items():
        print(f"note: {name} = {m['actual']:,}, the release is documented with {m['expected']:,}")
