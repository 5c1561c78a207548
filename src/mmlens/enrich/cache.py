"""A crash-safe response cache keyed by provider, kind and id.

One file per entry, ``<root>/<provider>/<kind>/<id>.entry``: a JSON header line, then the raw body.
Entries are written to a ``.tmp-`` sibling and renamed with ``os.replace``, so a run killed at any
moment leaves either the complete entry or none (plus temp files that :meth:`clean_temp` removes).
Definitive negatives (404, an undecodable image) are cached with an empty body, so a rerun does not
fetch them again; a transient failure is only recorded (outcome ``transient``), so that a rerun
fetches it again and can say how many it retried. Keys never hold URLs or secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SAFE_PART = re.compile(r"^[a-z0-9_-]{1,40}$")
TEMP_PREFIX = ".tmp-"


def utc_now() -> str:
    """Current UTC time as ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CacheKey:
    """Which provider fetched what (``kind``: movie, page, poster, ...) for which id."""

    provider: str
    kind: str
    id: str

    def __post_init__(self) -> None:
        for part in (self.provider, self.kind):
            if not _SAFE_PART.match(part):
                raise ValueError(f"cache key part must match {_SAFE_PART.pattern}: {part!r}")
        if not str(self.id):
            raise ValueError("cache key id must not be empty")

    def relpath(self) -> Path:
        ident = str(self.id)
        if not _SAFE_ID.match(ident) or ident.startswith("."):
            ident = "h-" + hashlib.sha256(ident.encode()).hexdigest()[:32]
        return Path(self.provider) / self.kind / f"{ident}.entry"


@dataclass
class CacheEntry:
    """A cached response: ``outcome`` is ``ok`` (body valid), a permanent negative (``not_found``,
    ``invalid``) or ``transient`` (a passing failure, asked again by the next run)."""

    outcome: str
    status: int | None = None
    content_type: str = ""
    url: str = ""
    error: str = ""
    fetched_at: str = field(default_factory=utc_now)
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_bytes(self) -> bytes:
        header = {k: v for k, v in asdict(self).items() if k != "body"}
        header["body_len"] = len(self.body)
        return json.dumps(header, sort_keys=True).encode() + b"\n" + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> CacheEntry:
        line, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("no header line")
        header = json.loads(line)
        if header.pop("body_len") != len(body):
            raise ValueError("body length does not match the header")
        return cls(body=body, **header)


class ResponseCache:
    """Atomic, thread-safe get/put of :class:`CacheEntry` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, key: CacheKey) -> Path:
        return self.root / key.relpath()

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The entry for ``key``, or None when absent or unreadable (then it is fetched again)."""
        p = self.path_of(key)
        try:
            return CacheEntry.from_bytes(p.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            with contextlib.suppress(OSError):
                p.unlink()
            return None

    def put(self, key: CacheKey, entry: CacheEntry) -> None:
        write_atomic(self.path_of(key), entry.to_bytes())

    def drop(self, key: CacheKey) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(key).unlink()

    def clean_temp(self) -> int:
        """Remove temp files left by a killed run; returns how many."""
        return remove_temp_files(self.root)


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp sibling of ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_temp_files(root: Path, recursive: bool = True) -> int:
    """Delete every ``.tmp-*`` file or folder under ``root`` (or directly in it)."""
    if not Path(root).exists():
        return 0
    count = 0
    pattern = Path(root).rglob if recursive else Path(root).glob
    for p in sorted(pattern(f"{TEMP_PREFIX}*"), key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            count += 1
    return count
