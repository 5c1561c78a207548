"""The MovieLens releases mmlens knows: where they live, their checksum and their file format."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmlens.config import SAMPLE_DATASET
from mmlens.errors import UserError

GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"

# The files each format needs from the zip (basenames), and those used when present.
FORMAT_MEMBERS: dict[str, tuple[str, ...]] = {
    "csv": ("movies.csv", "ratings.csv", "links.csv"),
    "ml-1m": ("movies.dat", "ratings.dat"),
    "ml-100k": ("u.data", "u.item", "u.genre"),
}
FORMAT_OPTIONAL_MEMBERS: dict[str, tuple[str, ...]] = {
    "csv": ("tags.csv", "README.txt"),
    "ml-1m": ("README",),
    "ml-100k": ("README",),
}


class UnknownReleaseError(UserError, ValueError):
    """The dataset name is not a release mmlens knows."""


@dataclass(frozen=True)
class Release:
    """One downloadable MovieLens release.

    ``md5`` is the published checksum when it is fixed; None means "read ``<zip>.md5`` beside the
    zip" (releases that GroupLens re-publishes, and the generated sample). ``expected`` holds row
    counts where they are known; a mismatch is reported, not fatal.
    """

    name: str
    zip_name: str
    format: str
    md5: str | None = None
    base_url: str = GROUPLENS_BASE_URL
    expected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMAT_MEMBERS:
            raise ValueError(f"unknown release format {self.format!r}")

    def url(self, base_url: str | None = None) -> str:
        """Download URL of the zip under ``base_url`` (default: the release's own)."""
        return f"{(base_url or self.base_url).rstrip('/')}/{self.zip_name}"

    @property
    def members(self) -> tuple[str, ...]:
        return FORMAT_MEMBERS[self.format]

    @property
    def optional_members(self) -> tuple[str, ...]:
        return FORMAT_OPTIONAL_MEMBERS[self.format]


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        # Counts as the READMEs state them; ml-1m and ml-100k have no tags file.
        Release("ml-100k", "ml-100k.zip", "ml-100k", md5="0e33842e24a9c977be4e0107933c0723",
                expected={"ratings": 100_000, "movies": 1_682, "rated_movies": 1_682,
                          "users": 943, "tags": 0}),
        Release("ml-1m", "ml-1m.zip", "ml-1m", md5="c4d9eecfca2ab87c1945afe126590906",
                expected={"ratings": 1_000_209, "movies": 3_883, "rated_movies": 3_706,
                          "users": 6_040, "tags": 0}),
        # ml-latest-small is re-published from time to time: counts are those of the 2018 version.
        Release("ml-latest-small", "ml-latest-small.zip", "csv",
                expected={"ratings": 100_836, "movies": 9_742, "rated_movies": 9_724,
                          "tags": 3_683, "users": 610}),
        Release("ml-25m", "ml-25m.zip", "csv", md5="6b51fb2759a8657d3bfcbfc42b592ada",
                expected={"ratings": 25_000_095, "movies": 62_423, "tags": 1_093_360,
                          "users": 162_541}),
        Release("ml-32m", "ml-32m.zip", "csv",
                expected={"ratings": 32_000_204, "movies": 87_585, "tags": 2_000_072,
                          "users": 200_948}),
        Release(SAMPLE_DATASET, "ml-sample.zip", "csv"),
    )
}


def get_release(name: str) -> Release:
    """The release called ``name``, or an :class:`UnknownReleaseError` listing the known ones."""
    try:
        return RELEASES[name]
    except KeyError:
        known = ", ".join(sorted(RELEASES))
        raise UnknownReleaseError(
            f"unknown MovieLens release {name!r} (--dataset, MMLENS_DATASET); known: {known}"
        ) from None


_HEX = r"([0-9a-fA-F]{32})"
_MD5_FORMS = (
    re.compile(rf"^{_HEX}$"),                     # <hex>
    re.compile(rf"^{_HEX}\s+\*?(\S.*)$"),         # <hex>  <name>  (md5sum, also binary '*')
    re.compile(rf"^MD5\s*\((.+)\)\s*=\s*{_HEX}$"),  # MD5 (<name>) = <hex>  (BSD md5)
)


def parse_md5_file(text: str, filename: str | None = None) -> str:
    """The lowercase md5 in a checksum file's text.

    Accepts ``<hex>``, ``<hex>  <name>`` and ``MD5 (<name>) = <hex>``. When ``filename`` is given
    and the file names files, the line for that file is used.
    """
    found: list[tuple[str | None, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := _MD5_FORMS[0].match(line):
            found.append((None, m.group(1)))
        elif m := _MD5_FORMS[1].match(line):
            found.append((m.group(2).strip(), m.group(1)))
        elif m := _MD5_FORMS[2].match(line):
            found.append((m.group(1).strip(), m.group(2)))
        else:
            raise ValueError(f"not an md5 checksum line: {line[:80]!r}")
    if not found:
        raise ValueError("the checksum file holds no md5")
    if filename is not None:
        for name, digest in found:
            if name is not None and name.rsplit("/", 1)[-1] == filename:
                return digest.lower()
        unnamed = [digest for name, digest in found if name is None]
        if unnamed:
            return unnamed[0].lower()
        raise ValueError(f"the checksum file has no md5 for {filename}")
    return found[0][1].lower()
