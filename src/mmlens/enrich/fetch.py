"""Polite HTTP fetching: one pooled session, per-host rate limits, retries, redirects, size caps.

:class:`Fetcher` is shared by all worker threads. Every request (each redirect hop and each retry
included) holds a slot of the per-host :class:`~mmlens.enrich.ratelimit.RateLimiter` from before it
is sent until its response headers (or its failure) are in, so the request rate a host sees never
exceeds the configured rate. Failures end as :class:`FetchError` whose ``kind`` maps onto the
manifest statuses; messages name redacted URLs only.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests

from mmlens.enrich.ratelimit import RateLimiter
from mmlens.net import RetryPolicy, check_url, make_session, redact_url

DEFAULT_RATE = 4.0  # requests per second to a host without a published limit
MAX_REDIRECTS = 5
MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NOT_FOUND = frozenset({404, 410})
_UNAUTHORIZED = frozenset({401})
_TRANSIENT_EXC = (requests.ConnectionError, requests.Timeout,
                  requests.exceptions.ChunkedEncodingError)
_SECRET_QUERY = re.compile(r"((?:api_key|apikey|token|access_token)=)[^&\s'\"]+", re.IGNORECASE)


class FetchError(Exception):
    """A request failed for good; ``kind``: not_found, unauthorized, invalid or error."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass
class Fetched:
    """A successful response, read completely."""

    status: int
    body: bytes
    content_type: str
    url: str  # final URL after redirects, redacted


@dataclass
class FetchStats:
    """Counters for the summary line and tests (thread-safe through ``lock``)."""

    requests: int = 0
    retries: int = 0
    retry_waits: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, wait: float | None = None) -> None:
        with self.lock:
            self.requests += requests
            if wait is not None:
                self.retries += 1
                self.retry_waits.append(wait)


class Fetcher:
    """GET with rate limiting, retries (RetryPolicy), manual redirects and a streamed size cap.

    ``rate_limit``: requests per second per host (``math.inf``: no limit); threads share it.
    ``host_rates``: other rates for some hosts (``netloc`` -> requests per second).
    """

    def __init__(self, *, rate_limit: float = DEFAULT_RATE, retry: RetryPolicy | None = None,
                 max_redirects: int = MAX_REDIRECTS, session: requests.Session | None = None,
                 pool_size: int = 16, secrets: Iterable[str] = (),
                 sleep: Callable[[float], None] = time.sleep,
                 host_rates: Mapping[str, float] | None = None) -> None:
        if max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {max_redirects}")
        self.retry = retry or RetryPolicy()
        self.max_redirects = max_redirects
        self.session = session or make_session(pool_size=pool_size)
        self.limiter = RateLimiter(rate_limit, sleep=sleep, host_rates=host_rates)
        self.stats = FetchStats()
        self._sleep = sleep
        self._secrets = [s for s in secrets if s]

    def add_secret(self, secret: str) -> None:
        """A value to scrub from every error message (an API key)."""
        if secret:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        """``text`` with secret query values and registered secrets replaced by ``***``."""
        text = _SECRET_QUERY.sub(r"\1***", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def close(self) -> None:
        self.session.close()

    def get(self, url: str, *, params: Mapping[str, str] | None = None,
            headers: Mapping[str, str] | None = None,
            max_bytes: int = MAX_DOCUMENT_BYTES) -> Fetched:
        """GET ``url`` and read the whole body (at most ``max_bytes``), following redirects.

        Retries 429/5xx, timeouts and connection resets with the policy's backoff, honouring
        ``Retry-After``. Raises FetchError: ``not_found`` (404/410), ``unauthorized`` (401),
        ``invalid`` (body over ``max_bytes``), ``error`` (anything else, retries exhausted).
        """
        last: FetchError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return self._follow(url, params, headers, max_bytes)
            except _Retryable as exc:
                last = FetchError("error", exc.message, exc.status)
                if attempt == self.retry.max_attempts:
                    break
                wait = self.retry.delay(attempt, exc.retry_after)
                self.stats.add(wait=wait)
                if wait > 0:
                    self._sleep(wait)
        assert last is not None
        raise FetchError("error", f"{last} (gave up after {self.retry.max_attempts} attempts)",
                         last.status)

    def _follow(self, url: str, params: Mapping[str, str] | None,
                headers: Mapping[str, str] | None, max_bytes: int) -> Fetched:
        seen: set[str] = set()
        current = url
        for _hop in range(self.max_redirects + 1):
            try:
                check_url(current)
            except ValueError as exc:
                raise FetchError("error", self.scrub(str(exc))) from None
            seen.add(current)
            resp = self._send(current, params, headers)
            try:
                if resp.status_code not in _REDIRECTS:
                    return self._finish(resp, current, max_bytes)
                location = resp.headers.get("Location")
                if not location:
                    raise FetchError("error", f"HTTP {resp.status_code} without Location for "
                                     f"{self._show(current)}", resp.status_code)
            finally:
                resp.close()
            nxt = urljoin(current, location)
            if nxt in seen:
                raise FetchError("error", f"redirect loop at {self._show(nxt)}", resp.status_code)
            if urlsplit(nxt).netloc.lower() != urlsplit(current).netloc.lower():
                headers = {k: v for k, v in (headers or {}).items()
                           if k.lower() != "authorization"}  # never leak credentials to others
            current, params = nxt, None  # the Location carries its own query
        raise FetchError("error", f"more than {self.max_redirects} redirects starting at "
                         f"{self._show(url)}")

    def _send(self, url: str, params: Mapping[str, str] | None,
              headers: Mapping[str, str] | None) -> requests.Response:
        host = urlsplit(url).netloc.lower()
        with self.limiter.slot(host):  # released once the headers (or the failure) are in
            self.stats.add(requests=1)
            try:
                return self.session.get(url, params=params, headers=dict(headers or {}),
                                        timeout=self.retry.timeout, stream=True,
                                        allow_redirects=False)
            except _TRANSIENT_EXC as exc:
                raise _Retryable(f"{type(exc).__name__} for {self._show(url)}") from None
            except requests.RequestException as exc:
                raise FetchError("error", f"{type(exc).__name__} for {self._show(url)}: "
                                 f"{self.scrub(str(exc))}") from None

    def _finish(self, resp: requests.Response, url: str, max_bytes: int) -> Fetched:
        status = resp.status_code
        shown = self._show(url)
        if status in self.retry.retry_statuses:
            raise _Retryable(f"HTTP {status} for {shown}", status, resp.headers.get("Retry-After"))
        if status in _NOT_FOUND:
            raise FetchError("not_found", f"HTTP {status} for {shown}", status)
        if status in _UNAUTHORIZED:
            raise FetchError("unauthorized", f"HTTP {status} for {shown}", status)
        if not 200 <= status < 300:
            raise FetchError("error", f"HTTP {status} for {shown}", status)
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError("invalid", f"{shown} is {int(declared)} bytes, over the cap of "
                             f"{max_bytes}", status)
        body = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError("invalid", f"{shown} exceeds the cap of {max_bytes} bytes",
                                     status)
        except _TRANSIENT_EXC as exc:
            raise _Retryable(f"{type(exc).__name__} while reading {shown}") from None
        content_type = resp.headers.get("Content-Type", "")
        return Fetched(status, bytes(body), content_type, shown)

    def _show(self, url: str) -> str:
        return self.scrub(redact_url(url))


class _Retryable(Exception):
    """An attempt failed in a way worth retrying."""

    def __init__(self, message: str, status: int | None = None,
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
