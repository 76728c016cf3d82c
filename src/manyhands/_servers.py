"""A zoo of server limits, for the tests, the benchmarks and ``manyhands demo``.

Each model is a small value with one method, ``request(now) -> Answer``: what
a server limited that way answers to a request arriving at ``now`` (seconds,
any clock), and how long the answer takes. The same objects run in-process on
a fake clock (the slowdown's simulation tests) and behind the loopback HTTP
API of :mod:`._demo_api` on the real one (the benchmarks, the demo).

========================  ==============================================  ==========
model                     limit                                           above it
========================  ==============================================  ==========
``TokenBucket``           ``rate``/s, bursts of ``burst``                 429
``SlidingWindow``         ``limit`` requests in any rolling ``window``    429
``FixedWindow``           ``limit`` per calendar ``window``               429
``ConcurrencyCap``        ``limit`` requests in progress                  429 or 503
``Overload``              a queue in front of ``servers`` servers         slower only
``Changing``              another model whose capacity changes on a       its own
                          schedule (halves, later recovers)
========================  ==============================================  ==========

The window models take ``count_rejected``: some servers count every request
toward the window, rejected or not, so a client that ignores Retry-After
there gets almost nothing through. ``retry_after`` (on each model) says how
the server words Retry-After: ``"seconds"`` (rounded up, at least 1),
``"date"`` (an HTTP date: whole seconds of the wall clock) or ``None`` (no
header). ``Answer.retry_after`` is the delay a client reads from it.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "CONTROLS",
    "MODELS",
    "Answer",
    "Changing",
    "ConcurrencyCap",
    "FixedWindow",
    "Model",
    "Overload",
    "SlidingWindow",
    "TokenBucket",
    "Unlimited",
    "Varying",
    "bound_of",
]

RetryAfterStyle = Literal["seconds", "date"] | None


@dataclass(frozen=True)
class Answer:
    """A server's answer: HTTP ``status``, ``latency`` until it arrives, ``retry_after``."""

    status: int
    latency: float
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        """The request was served (not refused for the limit)."""
        return self.status < 400


class Model(Protocol):
    """A server's limit: the answer to each request, in order of arrival."""

    capacity: float  # requests per second the server can serve at most

    def request(self, now: float) -> Answer:
        """Answer a request arriving at ``now``."""

    def scale(self, factor: float) -> None:
        """Change the capacity to ``factor`` times the original one."""


def worded(delay: float, now: float, style: RetryAfterStyle) -> float | None:
    """The Retry-After delay a client reads when the server means ``delay``.

    >>> worded(0.004, 10.3, "seconds"), worded(0.004, 10.3, "date"), worded(1.2, 10.3, None)
    (1.0, 0.7, None)
    """
    if style is None:
        return None
    if style == "seconds":
        return float(max(1, math.ceil(delay - 1e-9)))
    # An HTTP date has whole seconds: the first one at or after the moment meant.
    return round(math.ceil(now + delay - 1e-9) - now, 9)


class TokenBucket:
    """``rate`` requests per second, bursts of ``burst``; each takes ``latency``.

    >>> bucket = TokenBucket(rate=10, burst=2)
    >>> [bucket.request(0.0).status for _ in range(3)], bucket.request(0.1).status
    ([200, 200, 429], 200)
    """

    def __init__(
        self,
        rate: float = 200.0,
        burst: float = 10.0,
        latency: float = 0.01,
        retry_after: RetryAfterStyle = "seconds",
    ) -> None:
        self.capacity = self._rate = rate
        self._base = rate
        self._burst = burst
        self._latency = latency
        self._style = retry_after
        self._tokens = burst
        self._refilled: float | None = None

    def request(self, now: float) -> Answer:
        if self._refilled is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return Answer(200, self._latency)
        wait = (1 - self._tokens) / self._rate
        return Answer(429, 0.0, worded(wait, now, self._style))

    def scale(self, factor: float) -> None:
        self.capacity = self._rate = self._base * factor


class SlidingWindow:
    """At most ``limit`` requests in any rolling ``window`` seconds (a log of them).

    >>> log = SlidingWindow(limit=2, window=1.0)
    >>> [log.request(t).status for t in (0.0, 0.5, 0.9, 1.0, 1.1)]
    [200, 200, 429, 200, 429]
    """

    def __init__(
        self,
        limit: int = 200,
        window: float = 1.0,
        latency: float = 0.01,
        count_rejected: bool = False,
        retry_after: RetryAfterStyle = "seconds",
    ) -> None:
        self._base = limit
        self._limit = limit
        self._window = window
        self.capacity = limit / window
        self._latency = latency
        self._count_rejected = count_rejected
        self._style = retry_after
        self._log: deque[float] = deque()

    def request(self, now: float) -> Answer:
        log = self._log
        while log and log[0] <= now - self._window:
            log.popleft()
        if len(log) < self._limit:
            log.append(now)
            return Answer(200, self._latency)
        if self._count_rejected:
            log.append(now)
        wait = log[len(log) - self._limit] + self._window - now
        return Answer(429, 0.0, worded(wait, now, self._style))

    def scale(self, factor: float) -> None:
        self._limit = max(1, round(self._base * factor))
        self.capacity = self._limit / self._window


class FixedWindow:
    """At most ``limit`` requests per calendar ``window`` (the count resets on the second).

    >>> fixed = FixedWindow(limit=2, window=1.0)
    >>> [fixed.request(t).status for t in (0.1, 0.2, 0.9, 1.0)]
    [200, 200, 429, 200]
    """

    def __init__(
        self,
        limit: int = 200,
        window: float = 1.0,
        latency: float = 0.01,
        count_rejected: bool = False,
        retry_after: RetryAfterStyle = "seconds",
    ) -> None:
        self._base = limit
        self._limit = limit
        self._window = window
        self.capacity = limit / window
        self._latency = latency
        self._count_rejected = count_rejected
        self._style = retry_after
        self._current = -1
        self._count = 0

    def request(self, now: float) -> Answer:
        current = math.floor(now / self._window)
        if current != self._current:
            self._current, self._count = current, 0
        if self._count < self._limit:
            self._count += 1
            return Answer(200, self._latency)
        if self._count_rejected:
            self._count += 1
        wait = (current + 1) * self._window - now
        return Answer(429, 0.0, worded(wait, now, self._style))

    def scale(self, factor: float) -> None:
        self._limit = max(1, round(self._base * factor))
        self.capacity = self._limit / self._window


class ConcurrencyCap:
    """At most ``limit`` requests in progress, each taking ``latency``; ``status`` above.

    >>> cap = ConcurrencyCap(limit=1, latency=0.1)
    >>> [cap.request(t).status for t in (0.0, 0.05, 0.1)]
    [200, 429, 200]
    """

    def __init__(
        self,
        limit: int = 20,
        latency: float = 0.1,
        status: int = 429,
        retry_after: RetryAfterStyle = "seconds",
    ) -> None:
        self._base = limit
        self._limit = limit
        self._latency = latency
        self.capacity = limit / latency
        self._status = status
        self._style = retry_after
        self._ends: list[float] = []  # when each request in progress finishes

    def request(self, now: float) -> Answer:
        ends = self._ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        if len(ends) < self._limit:
            heapq.heappush(ends, now + self._latency)
            return Answer(200, self._latency)
        return Answer(self._status, 0.0, worded(ends[0] - now, now, self._style))

    def scale(self, factor: float) -> None:
        self._limit = max(1, round(self._base * factor))
        self.capacity = self._limit / self._latency


class Overload:
    """No refusals: a queue in front of ``servers`` servers, each taking ``service``.

    A request waits for the first free server, so only its rising latency
    tells the client to slow down.

    >>> queue = Overload(servers=2, service=0.1)
    >>> [round(queue.request(0.0).latency, 3) for _ in range(5)]
    [0.1, 0.1, 0.2, 0.2, 0.3]
    """

    def __init__(self, servers: int = 20, service: float = 0.1) -> None:
        self._base = servers
        self._service = service
        self._free = [0.0] * servers  # when each server is free next
        self.capacity = servers / service

    def request(self, now: float) -> Answer:
        start = max(now, heapq.heappop(self._free))
        heapq.heappush(self._free, start + self._service)
        return Answer(200, start + self._service - now)

    def scale(self, factor: float) -> None:
        servers = max(1, round(self._base * factor))
        free = sorted(self._free)
        self._free = (free + [0.0] * servers)[:servers]
        heapq.heapify(self._free)
        self.capacity = servers / self._service


class Unlimited:
    """No limit at all: every request takes ``latency`` (the control case).

    >>> Unlimited(0.1).request(5.0)
    Answer(status=200, latency=0.1, retry_after=None)
    """

    def __init__(self, latency: float = 0.1) -> None:
        self._latency = latency
        self.capacity = math.inf

    def request(self, now: float) -> Answer:
        return Answer(200, self._latency)

    def scale(self, factor: float) -> None:
        pass


class Varying:
    """No limit, and a latency that varies by itself, as an API's does (lognormal).

    ``sigma`` 0.5 puts the p95 at 2.3 times the ``median``, 1.0 at 5.2 times;
    the calls in flight change nothing. A client that reads the slow samples
    as a queue only takes calls away.

    >>> answers = Varying(median=0.1, sigma=0.5, seed=1)
    >>> [round(answers.request(0.0).latency, 3) for _ in range(3)]
    [0.19, 0.206, 0.103]
    """

    def __init__(self, median: float = 0.1, sigma: float = 1.0, seed: int = 1) -> None:
        self._median = median
        self._sigma = sigma
        self._random = random.Random(seed)
        self.capacity = math.inf

    def request(self, now: float) -> Answer:
        return Answer(200, self._median * math.exp(self._sigma * self._random.gauss(0.0, 1.0)))

    def scale(self, factor: float) -> None:
        pass


class Changing:
    """``model`` with its capacity scaled on a schedule: ``[(after, factor), ...]``.

    ``after`` counts seconds from the first request. The default halves the
    capacity after 3 s and restores it after 6 s.

    >>> changing = Changing(SlidingWindow(limit=10), [(1.0, 0.5)])
    >>> changing.request(5.0).status, changing.capacity_at(0.5), changing.capacity_at(1.5)
    (200, 10.0, 5.0)
    """

    def __init__(self, model: Model, schedule: list[tuple[float, float]] | None = None) -> None:
        self._model = model
        self._base = model.capacity
        self.schedule = schedule if schedule is not None else [(3.0, 0.5), (6.0, 1.0)]
        self._steps = deque(self.schedule)
        self._first: float | None = None
        self.capacity = model.capacity

    def request(self, now: float) -> Answer:
        if self._first is None:
            self._first = now
        while self._steps and now - self._first >= self._steps[0][0]:
            self._model.scale(self._steps.popleft()[1])
            self.capacity = self._model.capacity
        return self._model.request(now)

    def scale(self, factor: float) -> None:
        self._model.scale(factor)
        self.capacity = self._model.capacity

    def capacity_at(self, elapsed: float) -> float:
        """The capacity ``elapsed`` seconds after the first request."""
        factor = 1.0
        for after, step in self.schedule:
            if elapsed >= after:
                factor = step
        return self._base * factor

    def bound(self, items: int) -> float:
        """Seconds a perfect client needs for ``items`` requests, as the capacity changes."""
        done, now = 0.0, 0.0
        edges = [after for after, _ in self.schedule] + [math.inf]
        for edge in edges:
            rate = self.capacity_at(now)
            if done + rate * (edge - now) >= items:
                return now + (items - done) / rate
            done += rate * (edge - now)
            now = edge
        return now  # pragma: no cover - the last edge is infinite


def bound_of(model: Model, items: int) -> float:
    """Seconds a perfect client needs for ``items`` requests (the capacity bound)."""
    if isinstance(model, Changing):
        return model.bound(items)
    return items / model.capacity


#: The zoo the benchmark and the tests run over: name -> a fresh model at 200/s or C=20.
MODELS: dict[str, Callable[[], Model]] = {
    "token-bucket": lambda: TokenBucket(200, burst=10),
    "sliding-window": lambda: SlidingWindow(200),
    "sliding-window, rejected count": lambda: SlidingWindow(200, count_rejected=True),
    "fixed-window": lambda: FixedWindow(200),
    "fixed-window, rejected count": lambda: FixedWindow(200, count_rejected=True),
    "sliding-window, Retry-After date": lambda: SlidingWindow(200, retry_after="date"),
    "sliding-window, no Retry-After": lambda: SlidingWindow(200, retry_after=None),
    "concurrency 20, 429": lambda: ConcurrencyCap(20),
    "concurrency 20, 503 no Retry-After": lambda: ConcurrencyCap(20, status=503, retry_after=None),
    "overload, no 429": lambda: Overload(20, 0.1),
    "changing: halves at 3 s, back at 6 s": lambda: Changing(TokenBucket(200, burst=10)),
}

#: Servers with no limit, whose answers a client must not slow down for (the benchmark's
#: controls, beside the hand-written rows): latency that varies by itself is no queue.
CONTROLS: dict[str, Callable[[], Model]] = {
    "no limit, latency varies (p95 2.3x the median)": lambda: Varying(0.1, 0.5),
    "no limit, latency varies (p95 5.2x the median)": lambda: Varying(0.1, 1.0),
}
