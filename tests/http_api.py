"""A real HTTP API on loopback for tests: latency, a 429 capacity limit, random 503s."""

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

import manyhands


@dataclass
class Counters:
    requests: int = 0
    throttled: int = 0  # 429
    unavailable: int = 0  # 503
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    capacity: float
    burst: float
    latency: float
    failure_rate: float
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
        if not allowed:
            self._answer(429, b"slow down", retry_after="1")
            return
        time.sleep(server.latency)
        if fail:
            self._answer(503, b"try again")
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
) -> Iterator[tuple[str, Counters]]:
    """Serve on 127.0.0.1 until the block ends; yields (base URL, counters)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.capacity, server.burst, server.latency = capacity, burst, latency
    server.failure_rate, server.counters = failure_rate, Counters()
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
            raise manyhands.RetryAfter(float(exc.headers.get("Retry-After", "1"))) from exc
        raise
