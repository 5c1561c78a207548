"""Shared HTTP policy: one user agent, pooled sessions, retry timing and URL checks.

Every stage that talks to the network (01 download, 02 enrichment) uses these, so politeness and
error messages are the same everywhere.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from mmlens import __version__
from mmlens.errors import UserError

USER_AGENT = f"mmlens/{__version__} (+https://github.com/mmlens/mmlens; tutorial data fetcher)"

_ALLOWED_SCHEMES = ("http", "https")


def make_session(pool_size: int = 16) -> requests.Session:
    """A ``requests.Session`` with a connection pool of ``pool_size`` and our user agent.

    Retries are not delegated to urllib3: callers use :class:`RetryPolicy` so that they can resume
    partial bodies and report each attempt.
    """
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between attempts of one request."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must be >= 0")

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeout tuple for ``requests``."""
        return (self.connect_timeout, self.read_timeout)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Without ``Retry-After``: full jitter, uniform in ``[0, min(max_delay, base * 2**(n-1))]``.
        A ``Retry-After`` header (delta seconds or an HTTP date) wins when parseable. The result is
        always capped at ``max_delay``.
        """
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        server_wait = parse_retry_after(retry_after)
        if server_wait is not None:
            return min(self.max_delay, server_wait)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 62))
        return random.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None when absent or unparseable.

    Accepts delta seconds (``"120"``) and HTTP dates (``"Wed, 21 Oct 2015 07:28:00 GMT"``); a date
    in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are GMT by definition
        when = when.replace(tzinfo=dt.timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class HTTPError(UserError, RuntimeError):
    """A request failed for good. The message names the URL (without secrets) and the status."""

    def __init__(self, url: str, status: int | None, detail: str = "") -> None:
        self.url = redact_url(url)
        self.status = status
        what = f"HTTP {status}" if status is not None else "no HTTP response"
        msg = f"{what} for {self.url}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class UnreachableError(UserError, RuntimeError):
    """No answer at all from a host after every attempt (name not resolved, connection refused or
    timed out). ``hint`` says what the caller can do instead."""

    def __init__(self, url: str, reason: str, attempts: int, hint: str = "") -> None:
        self.url = redact_url(url)
        self.host = urlsplit(url).hostname or "?"
        self.reason, self.attempts, self.hint = reason, attempts, hint
        msg = f"cannot reach {self.host} ({reason}; {attempts} attempts for {self.url})"
        super().__init__(f"{msg}: {hint}" if hint else msg)

    def with_hint(self, hint: str) -> UnreachableError:
        """The same failure, saying what to do instead."""
        return UnreachableError(self.url, self.reason, self.attempts, hint)


def network_reason(exc: BaseException) -> str:
    """A few words for a failed connection (``requests``' own messages run to several hundred
    characters): the name does not resolve, refused, timed out, reset, a proxy error."""
    chain = list(_chain(exc))
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if isinstance(exc, requests.exceptions.ProxyError):
        return "the proxy failed"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer in time"
    if "NameResolutionError" in text or "Failed to resolve" in text or "name resolution" in text:
        return "its name does not resolve"
    if "Connection refused" in text:
        return "connection refused"
    if "Connection reset" in text or "RemoteDisconnected" in text:
        return "connection reset"
    return type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, contexts, exception arguments, urllib3's ``reason``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = (getattr(e, "reason", None), e.__cause__, e.__context__, *e.args)
        todo.extend(x for x in inner if isinstance(x, BaseException))


_SECRET_PARAMS = ("api_key", "apikey", "key", "token", "access_token", "password", "secret")


def redact_url(url: str) -> str:
    """The URL with credentials in the userinfo and secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if sep and k.lower() in _SECRET_PARAMS else f"{k}{sep}{v}"
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL with a host."""
    if not isinstance(url, str):
        raise ValueError(f"URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _ALLOWED_SCHEMES:
        raise ValueError(f"only http and https URLs are allowed, got {redact_url(url)!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {redact_url(url)!r}")
