"""The shared HTTP policy: user agent, retry delays, Retry-After parsing, URL checks."""

from __future__ import annotations

import email.utils
import random
import socket
import time

import pytest
import requests
import urllib3

from mmlens import __version__
from mmlens.errors import UserError
from mmlens.net import (
    USER_AGENT,
    HTTPError,
    RetryPolicy,
    UnreachableError,
    check_url,
    make_session,
    network_reason,
    parse_retry_after,
    redact_url,
)


def test_session_has_user_agent_and_pool() -> None:
    session = make_session(pool_size=4)
    assert session.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith(f"mmlens/{__version__} (+https://")
    adapter = session.get_adapter("https://example.org/")
    assert adapter._pool_maxsize == 4
    with pytest.raises(ValueError):
        make_session(pool_size=0)


def test_delay_is_full_jitter_within_exponential_bound() -> None:
    random.seed(0)
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    for attempt, bound in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (7, 30.0), (40, 30.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.5  # jitter spreads over the range, not stuck at 0
    with pytest.raises(ValueError):
        policy.delay(0)


def test_delay_is_capped_by_max_delay() -> None:
    policy = RetryPolicy(base_delay=10.0, max_delay=3.0)
    assert all(policy.delay(a) <= 3.0 for a in range(1, 100))
    assert policy.delay(2, retry_after="120") == 3.0


def test_retry_after_seconds_wins_over_backoff() -> None:
    policy = RetryPolicy(base_delay=0.001, max_delay=60.0)
    assert policy.delay(1, retry_after="7") == 7.0
    assert policy.delay(3, retry_after=" 0 ") == 0.0


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(12.0, abs=1.0)
    past = email.utils.formatdate(now - 3600, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 0.0 < RetryPolicy(max_delay=60).delay(1, retry_after=future) <= 21.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3"])
def test_unparseable_retry_after_falls_back_to_backoff(value: str | None) -> None:
    assert parse_retry_after(value) is None
    policy = RetryPolicy(base_delay=0.25, max_delay=30.0)
    assert 0.0 <= policy.delay(1, retry_after=value) <= 0.25


def test_policy_validation_and_timeout() -> None:
    assert RetryPolicy(connect_timeout=3, read_timeout=9).timeout == (3, 9)
    assert 429 in RetryPolicy().retry_statuses and 404 not in RetryPolicy().retry_statuses
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_http_error_names_url_and_status_without_secrets() -> None:
    err = HTTPError("https://api.example.org/3/movie/5?api_key=SECRET123&language=en", 401)
    assert err.status == 401
    assert "401" in str(err) and "api.example.org/3/movie/5" in str(err)
    assert "SECRET123" not in str(err) and "SECRET123" not in err.url
    assert "language=en" in err.url
    assert "hunter2" not in redact_url("https://user:hunter2@example.org/x")


@pytest.mark.parametrize("url", ["ftp://example.org/x.zip", "file:///etc/passwd", "example.org",
                                 "javascript:alert(1)", "http://", ""])
def test_check_url_rejects_non_http(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url)


def test_check_url_accepts_http_and_https() -> None:
    check_url("https://files.grouplens.org/datasets/movielens/ml-25m.zip")
    check_url("http://127.0.0.1:8080/datasets/movielens/ml-sample.zip")


def test_network_reason_is_short() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert network_reason(refused.value) == "connection refused"
    cause = urllib3.exceptions.NameResolutionError("nowhere.invalid", None, OSError("-2"))
    assert network_reason(requests.ConnectionError(cause)) == "its name does not resolve"
    assert network_reason(requests.exceptions.ConnectTimeout()) == "connection timed out"


def test_unreachable_error_names_the_host_and_what_to_do() -> None:
    err = UnreachableError("https://u:pw@files.example.org/a.zip?token=T", "connection refused", 5)
    assert isinstance(err, UserError) and isinstance(HTTPError("https://x.org/", 404), UserError)
    assert err.host == "files.example.org" and "pw" not in str(err) and "=T" not in str(err)
    hinted = err.with_hint("use a mirror")
    assert str(hinted).startswith("cannot reach files.example.org (connection refused; 5 attempts")
    assert str(hinted).endswith(": use a mirror") and hinted.host == err.host
