"""Resumable, verified downloads: stream to ``<dest>.part``, check the md5, then move into place."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from mmlens.artifacts import atomic_path
from mmlens.errors import UserError
from mmlens.net import (
    HTTPError,
    RetryPolicy,
    UnreachableError,
    check_url,
    make_session,
    network_reason,
    redact_url,
)

CHUNK_BYTES = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A download could not be completed or verified."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the published md5."""


class DiskWriteError(DownloadError):
    """Writing the downloaded bytes to disk failed (disk full, permissions)."""


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; ``no_response``: the host never answered."""

    def __init__(
        self, reason: str, retry_after: str | None = None, no_response: bool = False
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.no_response = no_response


_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def file_md5(path: Path) -> str:
    """md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def md5_sibling(path: Path) -> Path:
    """``<path>.md5``: the checksum recorded beside a verified file."""
    return path.with_name(path.name + ".md5")


def recorded_md5(path: Path) -> str | None:
    """The md5 recorded beside ``path`` after an earlier verification, if any."""
    from mmlens.movielens.releases import parse_md5_file

    sibling = md5_sibling(path)
    if not sibling.is_file():
        return None
    try:
        return parse_md5_file(sibling.read_text(), path.name)
    except (ValueError, OSError, UnicodeDecodeError):
        return None


def write_md5_sibling(path: Path, digest: str) -> None:
    """Record ``digest`` as ``<hex>  <name>`` in ``<path>.md5`` (atomically)."""
    with atomic_path(md5_sibling(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None,
    session: requests.Session | None = None,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing the default is safe
    force: bool = False,
) -> Path:
    """Download ``url`` to ``dest``; return ``dest``.

    Streams to ``<dest>.part`` and resumes it with a Range request after a dropped connection or a
    restart. Retries network errors and ``retry.retry_statuses``; other HTTP errors raise
    :class:`~mmlens.net.HTTPError`. The bytes are checked against ``md5`` (when given) before the
    file is moved into place, and ``<dest>.md5`` is written beside it. An existing ``dest`` whose
    md5 matches (``md5``, or the recorded one when ``md5`` is None) is kept unless ``force``.
    """
    check_url(url)
    dest = Path(dest)
    expected = md5.strip().lower() if md5 else None
    if expected is not None and len(expected) != 32:
        raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
    if not force and is_verified(dest, expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    if force:
        part.unlink(missing_ok=True)
    own_session = session is None
    session = session or make_session(pool_size=1)
    try:
        digest = _fetch_to_part(session, url, part, retry)
    finally:
        if own_session:
            session.close()
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            # both sums first: they survive a log or terminal that cuts long lines
            f"md5 mismatch: expected {expected}, got {digest} from {redact_url(url)}; the "
            "download was deleted (if this repeats, a proxy, captive portal or mirror serves "
            "another file)"
        )
    md5_sibling(dest).unlink(missing_ok=True)
    os.replace(part, dest)
    write_md5_sibling(dest, digest)
    return dest


def is_verified(dest: Path, md5: str | None) -> bool:
    """Whether ``dest`` exists with md5 ``md5`` (or, when None, the md5 recorded beside it)."""
    if not dest.is_file():
        return False
    expected = md5.strip().lower() if md5 else None
    actual = file_md5(dest)
    if expected is not None:
        if actual == expected and recorded_md5(dest) != actual:
            write_md5_sibling(dest, actual)
        return actual == expected
    return recorded_md5(dest) == actual


def _fetch_to_part(session: requests.Session, url: str, part: Path, retry: RetryPolicy) -> str:
    """Fill ``part`` with the whole body of ``url``; return its md5."""
    failures = 0
    # One bar for all attempts, shown only for a download that takes longer than a second.
    with tqdm(desc=part.name.removesuffix(".part"), unit="B", unit_scale=True,
              unit_divisor=1024, miniters=1, delay=1.0) as bar:
        while True:
            start = part.stat().st_size if part.exists() else 0
            try:
                return _attempt(session, url, part, start, retry, bar)
            except _Retryable as exc:
                # An attempt that moved the file forward does not count against the budget.
                failures = 1 if _grew(part, start) else failures + 1
                if failures >= retry.max_attempts and exc.no_response:
                    raise UnreachableError(url, str(exc), failures) from exc
                if failures >= retry.max_attempts:
                    raise DownloadError(
                        f"giving up on {redact_url(url)} after {failures} failed attempts: {exc}"
                    ) from exc
                time.sleep(retry.delay(failures, exc.retry_after))


def _grew(part: Path, start: int) -> bool:
    return part.exists() and part.stat().st_size > start


def _attempt(
    session: requests.Session, url: str, part: Path, start: int, retry: RetryPolicy, bar: tqdm
) -> str:
    """One GET that appends to ``part`` from ``start``; returns the md5 of the whole file."""
    headers = {"Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=retry.timeout)
    except _NETWORK_ERRORS as exc:
        raise _Retryable(network_reason(exc), no_response=True) from exc
    with resp:
        status = resp.status_code
        if status in retry.retry_statuses:
            raise _Retryable(f"HTTP {status}", resp.headers.get("Retry-After"))
        if status == 416 and start:
            return _range_not_satisfiable(resp, part, start)
        if status >= 400:
            raise HTTPError(url, status, resp.reason or "")
        if status == 206 and not _range_starts_at(resp, start):
            part.unlink(missing_ok=True)
            raise _Retryable("the server answered a different byte range; restarting from 0")
        if status != 206:
            start = 0  # a 200 answer to a Range request: the server sends everything again
        digest = _md5_prefix(part, start)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        bar.total = total
        bar.n = bar.last_print_n = start  # the bytes already in the part file
        with _BackgroundHash(digest) as hasher:
            received = _stream_body(resp, part, start, hasher, bar)
        if total is not None and start + received < total:
            raise _Retryable(f"connection closed after {start + received} of {total} bytes")
    return digest.hexdigest()


def _range_not_satisfiable(resp: requests.Response, part: Path, start: int) -> str:
    """416 on resume: the part may already be complete; otherwise start over."""
    content_range = resp.headers.get("Content-Range", "")
    size = content_range.rpartition("/")[2]
    if size.isdigit() and int(size) == start:
        return file_md5(part)
    part.unlink(missing_ok=True)
    raise _Retryable(f"HTTP 416 for a resume at byte {start}; restarting from 0")


def _range_starts_at(resp: requests.Response, start: int) -> bool:
    content_range = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
    unit, _, spec = content_range.partition(" ")
    first = spec.partition("-")[0]
    return unit == "bytes" and first.isdigit() and int(first) == start


def _md5_prefix(part: Path, start: int) -> hashlib._Hash:
    """md5 state over the first ``start`` bytes of ``part`` (the part being resumed)."""
    digest = hashlib.md5()
    if start:
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
                digest.update(block)
    return digest


class _BackgroundHash:
    """Feeds chunks to a hash in a worker thread (hashlib releases the GIL), so that hashing
    overlaps receiving and writing. The hash is complete when the ``with`` block exits."""

    def __init__(self, digest: hashlib._Hash, max_pending: int = 16) -> None:
        self._digest = digest
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="md5", daemon=True)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def __enter__(self) -> _BackgroundHash:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()


def _stream_body(
    resp: requests.Response, part: Path, start: int, digest: _BackgroundHash, bar: tqdm
) -> int:
    """Append the body to ``part`` (truncated to ``start``); return the number of bytes written."""
    received = 0
    try:
        fh = open(part, "r+b" if start and part.exists() else "wb")  # noqa: SIM115
    except OSError as exc:
        raise DiskWriteError(f"cannot open {part} for writing: {exc}") from exc
    with fh:
        try:
            fh.seek(start)
            fh.truncate()
        except OSError as exc:
            raise DiskWriteError(f"cannot write {part}: {exc}") from exc
        try:
            for chunk in _body_chunks(resp):
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise DiskWriteError(
                        f"writing {part} failed after {start + received} bytes: {exc}. Free some "
                        "space and run again to resume, or delete the .part file."
                    ) from exc
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (*_NETWORK_ERRORS, urllib3.exceptions.HTTPError, _Retryable) as exc:
            _flush(fh, part)
            raise _Retryable(f"{type(exc).__name__} after {start + received} bytes") from exc
        _flush(fh, part)
    return received


def _body_chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: with urllib3 2 ``read1`` keeps every byte received before a drop,
    where ``iter_content`` would lose the last partly filled chunk."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:
        yield from (c for c in resp.iter_content(CHUNK_BYTES) if c)
        return
    while True:
        try:
            chunk = read1(CHUNK_BYTES, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            return
        yield chunk


def _flush(fh: object, part: Path) -> None:
    try:
        fh.flush()  # type: ignore[attr-defined]
    except OSError as exc:
        raise DiskWriteError(f"writing {part} failed: {exc}") from exc


def fetch_text(
    url: str,
    *,
    session: requests.Session | None = None,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008
    max_bytes: int = 1 << 16,
) -> str:
    """GET a small text resource (such as a ``.md5`` file) with retries."""
    check_url(url)
    own_session = session is None
    session = session or make_session(pool_size=1)
    try:
        for attempt in range(1, retry.max_attempts + 1):
            try:
                resp = session.get(url, timeout=retry.timeout)
            except _NETWORK_ERRORS as exc:
                if attempt == retry.max_attempts:
                    raise UnreachableError(url, network_reason(exc), attempt) from exc
                time.sleep(retry.delay(attempt))
                continue
            if resp.status_code in retry.retry_statuses and attempt < retry.max_attempts:
                time.sleep(retry.delay(attempt, resp.headers.get("Retry-After")))
                continue
            if resp.status_code >= 400:
                raise HTTPError(url, resp.status_code, resp.reason or "")
            if len(resp.content) > max_bytes:
                raise DownloadError(f"{redact_url(url)} is larger than {max_bytes} bytes")
            return resp.text
        raise AssertionError("the last attempt returns or raises")
    finally:
        if own_session:
            session.close()
