"""Safe extraction of the few members a converter needs from a release zip."""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mmlens.artifacts import atomic_path
from mmlens.errors import UserError

MAX_MEMBER_BYTES = 16 << 30  # ml-32m's ratings.csv is under 1 GiB
MAX_COMPRESSION_RATIO = 200  # CSV compresses ~5x; zip bombs reach thousands
REDOWNLOAD = "delete it and download again"


class ExtractError(UserError, RuntimeError):
    """The zip is not a usable MovieLens release (not a zip, damaged, unsafe or incomplete)."""


def extract(
    zip_path: Path,
    dest_dir: Path,
    members: Sequence[str],
    *,
    optional: Sequence[str] = (),
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> dict[str, Path]:
    """Extract the members with these basenames into ``dest_dir`` (flat); return name -> path.

    Raises :class:`ExtractError` for a file that is not a zip (an HTML error page, say), a truncated
    zip, a bad CRC, a missing required member, a member path escaping ``dest_dir`` (``../x``,
    absolute), a symlink, or an absurd uncompressed size. Each file appears atomically.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    _check_is_zip(zip_path, REDOWNLOAD)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_safe(info, zip_path)
            wanted = _select(infos, [*members], [*optional], zip_path)
            for info in wanted.values():
                _check_size(info, zip_path, max_member_bytes)
            out: dict[str, Path] = {}
            for name, info in wanted.items():
                out[name] = _extract_one(zf, info, dest_dir / name, zip_path)
            return out
    except zipfile.BadZipFile as exc:
        raise ExtractError(f"{zip_path} is damaged ({exc}); {REDOWNLOAD}") from exc


def check_zip(zip_path: Path, members: Sequence[str], advice: str) -> None:
    """Raise :class:`ExtractError` (its message ending in ``advice``) unless ``zip_path`` is a zip
    that holds ``members`` and no unsafe entry. Reads the zip's directory only, not its data."""
    _check_is_zip(zip_path, advice)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise ExtractError(f"{zip_path} is damaged ({exc}); {advice}") from exc
    for info in infos:
        _check_safe(info, zip_path)
    _select(infos, [*members], [], zip_path)


def _check_is_zip(zip_path: Path, advice: str) -> None:
    if not zip_path.is_file():
        raise ExtractError(f"{zip_path} does not exist")
    if zipfile.is_zipfile(zip_path):
        return
    with open(zip_path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        what = "an HTML/XML page, not a zip (a proxy, login or error page was saved)"
    elif head.startswith(b"PK"):
        what = "a truncated or damaged zip (its central directory is missing)"
    elif not head:
        what = "empty"
    else:
        what = "not a zip file"
    raise ExtractError(f"{zip_path} is {what}; {advice}")


def _check_safe(info: zipfile.ZipInfo, zip_path: Path) -> None:
    name = info.filename
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":") or ".." in posix.parts:
        raise ExtractError(f"{zip_path} holds a member escaping the target directory: {name!r}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ExtractError(f"{zip_path} holds a symlink member, refused: {name!r}")


def _select(
    infos: list[zipfile.ZipInfo], members: list[str], optional: list[str], zip_path: Path
) -> dict[str, zipfile.ZipInfo]:
    by_base: dict[str, list[zipfile.ZipInfo]] = {}
    for info in infos:
        if not info.is_dir():
            by_base.setdefault(PurePosixPath(info.filename).name, []).append(info)
    chosen: dict[str, zipfile.ZipInfo] = {}
    for name in [*members, *optional]:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(f"members are basenames, got {name!r}")
        found = sorted(by_base.get(name, []), key=lambda i: (i.filename.count("/"), i.filename))
        if not found:
            if name in members:
                listing = ", ".join(sorted(by_base)[:20])
                raise ExtractError(f"{zip_path} has no {name} (it holds: {listing})")
            continue
        if len(found) > 1 and found[0].filename.count("/") == found[1].filename.count("/"):
            paths = ", ".join(i.filename for i in found)
            raise ExtractError(f"{zip_path} holds several {name}: {paths}")
        chosen[name] = found[0]
    return chosen


def _check_size(info: zipfile.ZipInfo, zip_path: Path, max_member_bytes: int) -> None:
    if info.file_size > max_member_bytes:
        raise ExtractError(
            f"{zip_path}: {info.filename} claims {info.file_size} bytes uncompressed, over the "
            f"limit of {max_member_bytes}"
        )
    if info.file_size > (1 << 20) and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        raise ExtractError(
            f"{zip_path}: {info.filename} compresses {info.file_size // max(info.compress_size, 1)}"
            "x, refused as a likely zip bomb"
        )


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path) -> Path:
    try:
        with atomic_path(target) as tmp, zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise ExtractError(
            f"{zip_path}: {info.filename} is damaged ({exc}); delete the zip and download again"
        ) from exc
    except (EOFError, zlib.error, zipfile.LargeZipFile) as exc:
        raise ExtractError(
            f"{zip_path}: {info.filename} is truncated or unreadable: {exc}"
        ) from exc
    return target
