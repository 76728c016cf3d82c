"""A real HTTP API on loopback, for ``manyhands demo``, the tests and the benchmarks.

It behaves like someone else's API on a bad day: each request takes
``latency``; above ``capacity`` requests per second (a token bucket with
``burst``) it answers 429 with ``Retry-After: 1``; ``failure_rate`` of the
requests it accepts fail with 503; and with ``missing_every=k``, every k-th
item id is a 404 that no retry will fix. It listens on 127.0.0.1 only, in a
daemon thread of this process, and stops when its ``with`` block ends.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ._retry import RetryAfter

__all__ = ["Counters", "ItemFetcher", "fetch", "flaky_api", "is_transient"]


@dataclass
class Counters:
    """What the API answered so far."""

    requests: int = 0
    throttled: int = 0  # 429
    unavailable: int = 0  # 503
    missing: int = 0  # 404
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    capacity: float
    burst: float
    latency: float
    failure_rate: float
    missing_every: int
    counters: Counters
    tokens: float
    refilled: float
    rng: random.Random


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        server = self.server
        with server.counters.lock:
            server.counters.requests += 1
            now = time.monotonic()
            server.tokens = min(
                server.burst, server.tokens + (now - server.refilled) * server.capacity
            )
            server.refilled = now
            allowed = server.tokens >= 1
            if allowed:
                server.tokens -= 1
            else:
                server.counters.throttled += 1
            fail = allowed and server.rng.random() < server.failure_rate
            if fail:
                server.counters.unavailable += 1
            missing = allowed and not fail and _is_missing(self.path, server.missing_every)
            if missing:
                server.counters.missing += 1
        if not allowed:
            self._answer(429, b"slow down", retry_after="1")
            return
        time.sleep(server.latency)
        if fail:
            self._answer(503, b"try again")
        elif missing:
            self._answer(404, b"no such item")
        else:
            self._answer(200, self.path.encode())

    def _answer(self, status: int, body: bytes, retry_after: str | None = None) -> None:
        self.send_response(status)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def flaky_api(
    capacity: float = 200.0,
    burst: float = 10.0,
    latency: float = 0.01,
    failure_rate: float = 0.05,
    seed: int = 1,
    missing_every: int = 0,
) -> Iterator[tuple[str, Counters]]:
    """Serve on 127.0.0.1 until the block ends; yields (base URL, counters)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.capacity, server.burst, server.latency = capacity, burst, latency
    server.failure_rate, server.counters = failure_rate, Counters()
    server.missing_every = missing_every
    server.tokens, server.refilled = burst, time.monotonic()
    server.rng = random.Random(seed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.counters
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fetch(url: str) -> str:
    """GET url; a 429 becomes RetryAfter with the server's delay, other errors raise."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            raise RetryAfter(float(exc.headers.get("Retry-After", "1"))) from exc
        raise


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a 429, a 5xx, or a network error; not a 404.

    >>> is_transient(RetryAfter(1)), is_transient(ConnectionResetError())
    (True, True)
    """
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500
    return isinstance(error, (RetryAfter, urllib.error.URLError, OSError))


class ItemFetcher:
    """``fetch`` of ``<base>/items/<id>``: a callable whose code does not change with the port.

    (A journal notes the code of the function it runs; a closure or a
    ``functools.partial`` over the base URL would differ on every run.)
    """

    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, item_id: int) -> str:
        return fetch(f"{self.base}/items/{item_id}")


def _is_missing(path: str, every: int) -> bool:
    if every <= 0:
        return False
    tail = path.rsplit("/", 1)[-1]
    return tail.isdigit() and int(tail) % every == every - 1
