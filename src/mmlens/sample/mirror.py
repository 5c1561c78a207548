"""A local HTTP mirror of the sample world: GroupLens downloads, the TMDB API, IMDb pages, images.

``serve(world_dir)`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a daemon thread
and stops it on context exit. Routes:

- ``/datasets/movielens/<file>``: the release zip (application/zip) and its ``.md5`` (text/plain)
- ``/tmdb/3/movie/<tmdbId>?api_key=KEY`` (or ``Authorization: Bearer KEY``): TMDB v3 JSON, 401 on
  a missing or wrong key, TMDB's 404 JSON for unknown ids
- ``/tmdb-img/t/p/<size>/<file>.jpg`` and ``/imdb-img/<file>.jpg``: image/jpeg
- ``/imdb/title/tt<7+ digits>/``: HTML; ``{MIRROR}`` in pages becomes the mirror's URL

GET and HEAD, ``Content-Length``, ``Range: bytes=N-`` / ``bytes=N-M`` (206, or 416 out of range).
Faults (``Fault``) are consumed in order for matching paths, then normal service resumes; every
request is recorded in ``Mirror.requests``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from mmlens.sample.web import MIRROR_PLACEHOLDER, TMDB_API_KEY

FAULT_KINDS = ("status", "drop", "html", "delay", "redirect_loop", "truncate", "reset", "big")
BIG_BYTES = 20 * 1024 * 1024
TMDB_NOT_FOUND = {"success": False, "status_code": 34,
                  "status_message": "The resource you requested could not be found."}
TMDB_UNAUTHORIZED = {"status_code": 7,
                     "status_message": "Invalid API key: You must be granted a valid key.",
                     "success": False}
FAULT_HTML = (b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
              b"<body><p>Checking your browser before accessing the site.</p></body></html>\n")
CHUNK = 64 * 1024
LOOP_PARAM = "_mmlens_loop"  # marks the hops of a redirect loop: they keep redirecting

_FILE = r"[A-Za-z0-9_.-]+"
_ROUTES = (
    ("release", re.compile(rf"^/datasets/movielens/({_FILE}\.(?:zip|md5))$")),
    ("tmdb_movie", re.compile(r"^/tmdb/3/movie/([^/]+)/?$")),
    ("tmdb_api", re.compile(r"^/tmdb/3(/.*)?$")),
    ("tmdb_img", re.compile(rf"^/tmdb-img/t/p/(?:w\d+|original)/({_FILE}\.jpg)$")),
    ("imdb_title", re.compile(r"^/imdb/title/tt(\d{7,})/?$")),
    ("imdb_img", re.compile(rf"^/imdb-img/({_FILE}\.jpg)$")),
)


@dataclass
class Fault:
    """A misbehaviour for the next request(s) on matching paths (see ``Mirror.add_fault``).

    kind: ``status`` (``status`` code, optional ``Retry-After``), ``drop`` (full Content-Length,
    ``after_bytes`` of body, then close), ``html`` (200 text/html page), ``delay`` (sleep
    ``seconds``, then serve), ``redirect_loop`` (302 to the same path, with a growing
    ``_mmlens_loop`` query counter so that the client never gets out of it), ``truncate`` (first
    half of the body with a matching Content-Length), ``reset`` (close without a response), ``big``
    (a 20 MiB valid JPEG). ``body`` overrides the body for ``status``, ``html``, ``drop`` and
    ``truncate``. One use of a fault is one client request (a redirect loop counts once).
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    after_bytes: int = 0
    seconds: float = 0.0
    body: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {FAULT_KINDS}")
        if self.after_bytes < 0 or self.seconds < 0:
            raise ValueError("after_bytes and seconds must be >= 0")


class ServedRequest(NamedTuple):
    """One request as the mirror saw it; ``status`` 0: the connection was reset (a fault), -1: the
    client went away while the response was being sent.

    ``time`` (``time.monotonic``) is when the request arrived, before any injected latency, so
    request rates measured from the log are the rates the server was asked for. Entries are
    appended just before the response goes out: a client holding its answer finds it logged.
    """

    method: str
    path: str
    status: int
    time: float


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] | None = None


class Mirror:
    """The served world: base URLs, the accepted TMDB key, request log and fault queue."""

    def __init__(self, world_dir: Path, latency_s: float = 0.0) -> None:
        self.world_dir = Path(world_dir)
        if not (self.world_dir / "world.json").exists():
            raise FileNotFoundError(f"{self.world_dir} is not a sample world (no world.json)")
        self.latency_s = latency_s
        self.tmdb_api_key = TMDB_API_KEY
        self.requests: list[ServedRequest] = []
        self._faults: list[list[Any]] = []  # [compiled regex, fault, remaining]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- URLs
    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def movielens_base_url(self) -> str:
        return self.url + "/datasets/movielens"

    @property
    def tmdb_api_base(self) -> str:
        return self.url + "/tmdb/3"

    @property
    def tmdb_image_base(self) -> str:
        return self.url + "/tmdb-img/t/p"

    @property
    def imdb_base(self) -> str:
        return self.url + "/imdb"

    # -- faults and log
    def add_fault(self, path_regex: str, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` requests whose URL path matches ``path_regex``."""
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        with self._lock:
            self._faults.append([re.compile(path_regex), fault, times])

    def take_fault(self, path: str) -> Fault | None:
        """The first pending fault matching ``path`` (consuming one of its uses), else None."""
        with self._lock:
            for entry in self._faults:
                regex, fault, remaining = entry
                if remaining > 0 and regex.search(path):
                    entry[2] -= 1
                    return fault
        return None

    def record(self, method: str, path: str, status: int, at: float | None = None) -> int:
        """Log a request that arrived at ``at`` (default: now); returns its index in the log."""
        with self._lock:
            self.requests.append(ServedRequest(method, path, status,
                                               time.monotonic() if at is None else at))
            return len(self.requests) - 1

    def amend(self, index: int, status: int) -> None:
        """Change the logged status of request ``index`` (a response that could not be sent)."""
        with self._lock:
            self.requests[index] = self.requests[index]._replace(status=status)

    # -- lifecycle
    def start(self) -> Mirror:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.mirror = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mmlens-mirror-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- content
    def resolve(self, path: str, query: str, headers: Mapping[str, str]) -> _Response:
        """The normal (fault-free) response for a GET of ``path``."""
        for name, pattern in _ROUTES:
            match = pattern.match(path)
            if match:
                return getattr(self, f"_{name}")(match.group(1), query, headers)
        return _Response(404, b"404 Not Found\n")

    def _file(self, rel: str, content_type: str) -> _Response:
        p = self.world_dir / rel
        if not p.is_file():
            return _Response(404, b"404 Not Found\n")
        return _Response(200, p.read_bytes(), content_type)

    def _release(self, name: str, _query: str, _headers: Mapping[str, str]) -> _Response:
        kind = "application/zip" if name.endswith(".zip") else "text/plain; charset=utf-8"
        return self._file(name, kind)

    def _authorized(self, query: str, headers: Mapping[str, str]) -> bool:
        keys = parse_qs(query).get("api_key", [])
        bearer = headers.get("Authorization", "")
        return self.tmdb_api_key in keys or bearer == f"Bearer {self.tmdb_api_key}"

    def _tmdb_movie(self, tmdb_id: str, query: str, headers: Mapping[str, str]) -> _Response:
        if not self._authorized(query, headers):
            return _json(401, TMDB_UNAUTHORIZED)
        p = self.world_dir / "tmdb" / f"{tmdb_id}.json"
        if not tmdb_id.isdigit() or not p.is_file():
            return _json(404, TMDB_NOT_FOUND)
        return _Response(200, p.read_bytes(), "application/json;charset=utf-8")

    def _tmdb_api(self, _rest: str, query: str, headers: Mapping[str, str]) -> _Response:
        if not self._authorized(query, headers):
            return _json(401, TMDB_UNAUTHORIZED)
        return _json(404, TMDB_NOT_FOUND)

    def _tmdb_img(self, name: str, _query: str, _headers: Mapping[str, str]) -> _Response:
        return self._file(f"tmdb-img/{name}", "image/jpeg")

    def _imdb_img(self, name: str, _query: str, _headers: Mapping[str, str]) -> _Response:
        return self._file(f"imdb-img/{name}", "image/jpeg")

    def _imdb_title(self, imdb_id: str, _query: str, _headers: Mapping[str, str]) -> _Response:
        resp = self._file(f"imdb/tt{imdb_id}.html", "text/html; charset=utf-8")
        if resp.status != 200:
            return _Response(404, b"<!DOCTYPE html><html><body><h1>404 Error</h1></body></html>\n",
                             "text/html; charset=utf-8")
        resp.body = resp.body.replace(MIRROR_PLACEHOLDER.encode(), self.url.encode())
        return resp


def _json(status: int, data: dict) -> _Response:
    return _Response(status, json.dumps(data).encode(), "application/json;charset=utf-8")


_BIG_JPEG: bytes | None = None


def big_jpeg() -> bytes:
    """A valid ~20 MB JPEG (a small image padded with comment segments), built once."""
    global _BIG_JPEG
    if _BIG_JPEG is None:
        from PIL import Image

        from mmlens.sample.posters import jpeg_bytes, padded_jpeg

        _BIG_JPEG = padded_jpeg(jpeg_bytes(Image.new("RGB", (64, 96), (90, 40, 40))), BIG_BYTES)
    return _BIG_JPEG


def apply_range(resp: _Response, header: str | None) -> _Response:
    """A 206 or 416 for a single ``bytes=N-`` / ``bytes=N-M`` range on a 200; else unchanged."""
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", (header or "").strip())
    if resp.status != 200 or m is None:
        return resp
    size = len(resp.body)
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if start >= size or end < start:
        return _Response(416, b"", resp.content_type, {"Content-Range": f"bytes */{size}"})
    return _Response(206, resp.body[start:end + 1], resp.content_type,
                     {"Content-Range": f"bytes {start}-{end}/{size}"})


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmlens-mirror/1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: the mirror's log is ``Mirror.requests``."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        arrived = time.monotonic()
        mirror: Mirror = self.server.mirror  # type: ignore[attr-defined]
        if mirror.latency_s > 0:
            time.sleep(mirror.latency_s)
        parts = urlsplit(self.path)
        fault = mirror.take_fault(parts.path)
        logged: list[int] = []

        def log(status: int) -> None:
            logged.append(mirror.record(self.command, self.path, status, arrived))

        try:
            self._respond(mirror, parts.path, parts.query, fault, head, log)
        except (BrokenPipeError, ConnectionResetError):
            if logged:
                mirror.amend(logged[0], -1)
            else:
                log(-1)

    def _respond(self, mirror: Mirror, path: str, query: str, fault: Fault | None,
                 head: bool, log: Callable[[int], None]) -> None:
        kind = fault.kind if fault else None
        if fault is not None and kind == "reset":
            log(0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if fault is not None and kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and kind == "status":
            resp = _fault_status(fault, path)
        elif fault is not None and kind == "html":
            resp = _Response(200, fault.body or FAULT_HTML, "text/html; charset=utf-8")
        elif kind == "redirect_loop" or LOOP_PARAM in parse_qs(query):
            resp = _Response(302, b"", headers={"Location": _loop_location(path, query)})
        elif kind == "big":
            resp = _Response(200, big_jpeg(), "image/jpeg")
        else:
            resp = apply_range(mirror.resolve(path, query, self.headers), self.headers.get("Range"))
            if fault is not None and fault.body is not None:
                resp.body = fault.body
        length = len(resp.body)
        if kind == "truncate":
            resp.body = resp.body[: length // 2]
            length = len(resp.body)
        elif fault is not None and kind == "drop":
            resp.body = resp.body[: fault.after_bytes]
        log(resp.status)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in (resp.headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            view = memoryview(resp.body)
            for start in range(0, len(view), CHUNK):
                self.wfile.write(view[start:start + CHUNK])
        if kind == "drop":
            self.close_connection = True


def _loop_location(path: str, query: str) -> str:
    """The same path with the loop counter in the query bumped (clients see a new URL each hop)."""
    params = parse_qs(query, keep_blank_values=True)
    hop = int((params.pop(LOOP_PARAM, None) or ["0"])[0] or 0) + 1
    return f"{path}?{urlencode({**params, LOOP_PARAM: hop}, doseq=True)}"


def _fault_status(fault: Fault, path: str) -> _Response:
    try:
        reason = HTTPStatus(fault.status).phrase
    except ValueError:
        reason = ""
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    if fault.body is not None:
        return _Response(fault.status, fault.body, headers=headers)
    if path.startswith("/tmdb/"):
        data = {"success": False, "status_code": 25 if fault.status == 429 else 11,
                "status_message": reason or "Error"}
        return _Response(fault.status, json.dumps(data).encode(),
                         "application/json;charset=utf-8", headers)
    return _Response(fault.status, f"{fault.status} {reason}\n".encode(), headers=headers)


def _fault_entries(faults: Any) -> Iterable[tuple[str, Fault, int]]:
    """Normalise ``faults``: a mapping regex -> Fault, or (regex, Fault[, times]) tuples."""
    if faults is None:
        return []
    items = faults.items() if isinstance(faults, Mapping) else faults
    out = []
    for item in items:
        regex, fault, *rest = item
        out.append((regex, fault, int(rest[0]) if rest else 1))
    return out


@contextlib.contextmanager
def serve(world_dir: Path, faults: Any = None, latency_s: float = 0.0) -> Iterator[Mirror]:
    """Serve ``world_dir`` on 127.0.0.1 until the block exits.

    ``faults``: a mapping ``path_regex -> Fault`` or an iterable of ``(path_regex, Fault[, times])``
    registered before the first request; more can be added with ``mirror.add_fault``.
    """
    mirror = Mirror(world_dir, latency_s=latency_s)
    for regex, fault, times in _fault_entries(faults):
        mirror.add_fault(regex, fault, times)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


@contextlib.contextmanager
def serve_sample_world(cfg: Any, faults: Any = None, latency_s: float = 0.0) -> Iterator[Mirror]:
    """``ensure_world(cfg)`` then ``serve`` it."""
    from mmlens.sample.world import ensure_world

    with serve(ensure_world(cfg), faults=faults, latency_s=latency_s) as mirror:
        yield mirror
