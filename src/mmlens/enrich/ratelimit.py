"""Per-host request rate limits that hold at the server, whatever delays a request on its way.

Spacing requests ``1/rate`` apart on the client is not enough: a request that is delayed between
leaving the limiter and reaching the server (thread scheduling, connection set-up, a busy machine)
arrives close to the ones behind it, and the server sees more than ``rate`` requests in one
second. :class:`RateLimiter` adds a causal rule: a request reaches the server after it starts and
before its answer comes back, so a request that starts 1 s after the answers to all requests but
the last ``n - 1`` arrives more than 1 s after all of them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

WINDOW = 1.0  # seconds
_EPS = 1e-3  # keeps the window closed: exactly 1 s apart counts as inside


@dataclass
class Ticket:
    """One request's place in its host's queue; ``answered`` is set by ``release``."""

    host: str
    started: float
    answered: float | None = None


@dataclass
class _Host:
    interval: float  # seconds between request starts
    per_window: int | None  # requests in any 1-second window; None: no limit
    next_start: float = -math.inf
    recent: deque[Ticket] = field(default_factory=deque)  # the last n requests, oldest first
    cleared: float = -math.inf  # latest answer among the older requests


class RateLimiter:
    """At most ``rate`` requests per second to each host, counted in any 1-second window.

    Two rules per host: requests start at least ``1 / rate`` s apart (no bursts), and a request
    starts at least 1 s after every request but the last ``n - 1`` was answered, where
    ``n = floor(rate)`` (at least 1). Then no closed 1-second window at the server holds more than
    ``n`` requests. Callers ``acquire`` a :class:`Ticket` before sending and ``release`` it once
    the response headers, or the failure, are in (or use :meth:`slot`). The window rule costs a
    latency per ``n`` requests: at rate 20 and 50 ms latency, about 5% of the throughput.
    ``math.inf`` turns the limit off. ``host_rates`` sets another rate for some hosts
    (``netloc`` -> requests per second), e.g. a documented API limit.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 host_rates: Mapping[str, float] | None = None) -> None:
        for r in (rate, *(host_rates or {}).values()):
            if not r > 0:
                raise ValueError(f"rate must be > 0 requests per second, got {r}")
        self.rate = rate
        self.host_rates = {h.lower(): r for h, r in (host_rates or {}).items()}
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._hosts: dict[str, _Host] = {}
        self._cond = threading.Condition()

    def acquire(self, host: str) -> Ticket:
        """Block until a request to ``host`` may start; the ticket must be released."""
        while True:
            with self._cond:
                if host not in self._hosts:
                    self._hosts[host] = self._new(host)
                state = self._hosts[host]
                n = state.per_window
                while n is not None and len(state.recent) >= n:  # fold the request n back
                    old = state.recent[0]
                    if old.answered is None:
                        self._cond.wait()  # it is still on its way
                        continue
                    state.recent.popleft()
                    state.cleared = max(state.cleared, old.answered)
                now = self._clock()
                wait = max(state.next_start, state.cleared + WINDOW + _EPS) - now
                if wait <= 0:
                    ticket = Ticket(host, now)
                    if n is not None:
                        state.recent.append(ticket)
                    state.next_start = now + state.interval
                    return ticket
            self._sleep(wait)  # then look again: another caller may have gone first

    def rate_of(self, host: str) -> float:
        """Requests per second allowed to ``host``."""
        return self.host_rates.get(host.lower(), self.rate)

    def _new(self, host: str) -> _Host:
        rate = self.rate_of(host)
        return _Host(1.0 / rate, None if math.isinf(rate) else max(1, math.floor(rate * WINDOW)))

    def release(self, ticket: Ticket, at: float | None = None) -> None:
        """The answer to ``ticket``'s request (or its failure) came in at ``at`` (default: now)."""
        with self._cond:
            ticket.answered = self._clock() if at is None else at
            self._cond.notify_all()

    @contextmanager
    def slot(self, host: str) -> Iterator[Ticket]:
        """``acquire`` on entry, ``release`` on exit (after the response headers are in)."""
        ticket = self.acquire(host)
        try:
            yield ticket
        finally:
            self.release(ticket)
