"""A real HTTP API on loopback, for ``manyhands demo``, the tests and the benchmarks.

It behaves like someone else's API on a bad day: a limit from the zoo of
:mod:`._servers` (a token bucket for the demo) answers 429 above it, with a
Retry-After in seconds, as an HTTP date, or none; ``failure_rate`` of the
requests it accepts fail with 503; and with ``missing_every=k``, every k-th
item id is a 404 that no retry will fix. It listens on 127.0.0.1 only, on an
asyncio loop in a daemon thread of this process (:func:`flaky_api`,
:func:`serve`) or in a process of its own (:func:`serve_elsewhere`, so that a
benchmark's client and server do not share an interpreter lock), and stops
when its ``with`` block ends. ``GET /_counters`` returns what it answered so far.

:func:`fetch` (blocking, urllib) and :func:`afetch` (asyncio streams) are the
clients: a refusal with a Retry-After becomes :class:`RetryAfter` (seconds or
HTTP date), one without becomes :class:`Refused` (an ``HTTPError``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from email.message import Message

from ._retry import RetryAfter
from ._servers import Model, TokenBucket

__all__ = [
    "Counters",
    "ItemFetcher",
    "Refused",
    "afetch",
    "fetch",
    "flaky_api",
    "is_throttle",
    "is_transient",
    "serve",
    "serve_elsewhere",
]


@dataclass
class Counters:
    """What the API answered so far."""

    requests: int = 0
    throttled: int = 0  # refused for the limit (429, or the model's status)
    unavailable: int = 0  # random 503s
    missing: int = 0  # 404

    def update(self, figures: dict[str, int]) -> None:
        """Take the figures another process reported."""
        for name, value in figures.items():
            setattr(self, name, value)


class Refused(urllib.error.HTTPError):
    """A 429 or 503 that did not say when to come back (``throttle_on=is_throttle``)."""


class _Api:
    """The request handler: one model, answered on one event loop."""

    def __init__(self, model: Model, failure_rate: float, missing_every: int, seed: int) -> None:
        self.model = model
        self.failure_rate = failure_rate
        self.missing_every = missing_every
        self.rng = random.Random(seed)
        self.counters = Counters()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            if path == "/_counters":
                await self._answer(writer, 200, json.dumps(asdict(self.counters)).encode())
                return
            status, latency, retry_after = self._decide(path)
            if latency > 0:
                await asyncio.sleep(latency)
            body = {200: path.encode(), 404: b"no such item", 503: b"try again"}.get(
                status, b"slow down"
            )
            await self._answer(writer, status, body, retry_after)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError):
            pass
        finally:
            writer.close()

    def _decide(self, path: str) -> tuple[int, float, str | None]:
        counters = self.counters
        counters.requests += 1
        # The wall clock: a fixed window resets on the calendar second, and a
        # Retry-After date names a whole second of it.
        answer = self.model.request(time.time())
        if not answer.accepted:
            counters.throttled += 1
            return answer.status, answer.latency, _worded(answer.retry_after)
        if self.failure_rate and self.rng.random() < self.failure_rate:
            counters.unavailable += 1
            return 503, answer.latency, None
        if _is_missing(path, self.missing_every):
            counters.missing += 1
            return 404, answer.latency, None
        return 200, answer.latency, None

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter, status: int, body: bytes, retry_after: str | None = None
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        if retry_after is not None:
            lines.append(f"Retry-After: {retry_after}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()


def _worded(delay: float | None) -> str | None:
    """The Retry-After header for a delay the model worded (whole seconds: an integer)."""
    if delay is None:
        return None
    if delay >= 1 and float(delay).is_integer():
        return str(int(delay))
    # An HTTP date: the model worded the delay to end on a whole second.
    return email.utils.formatdate(round(time.time() + delay), usegmt=True)


@contextmanager
def serve(
    model: Model, failure_rate: float = 0.0, missing_every: int = 0, seed: int = 1
) -> Iterator[tuple[str, Counters]]:
    """Serve ``model`` on 127.0.0.1 from a thread until the block ends; yields (URL, counters)."""
    api = _Api(model, failure_rate, missing_every, seed)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    async def main() -> None:
        server = await asyncio.start_server(api.handle, "127.0.0.1", 0, backlog=4096)
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        asyncio.set_event_loop(loop)
        task = loop.create_task(main())
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="manyhands-demo-api", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port[0]}", api.counters
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(5)


def serve_main(name: str) -> None:  # pragma: no cover - runs in a child process
    """Serve ``MODELS[name]``; print the base URL; stop when standard input closes."""
    import sys

    from ._servers import CONTROLS, MODELS

    with serve({**MODELS, **CONTROLS}[name]()) as (base, _):
        print(base, flush=True)
        sys.stdin.read()


@contextmanager
def serve_elsewhere(name: str) -> Iterator[tuple[str, Counters]]:
    """:func:`serve` a fresh ``MODELS[name]`` of :mod:`._servers` from a process of its own.

    The counters are filled in when the block ends (``GET /_counters`` reads
    them meanwhile).
    """
    import subprocess
    import sys

    code = f"from manyhands._demo_api import serve_main; serve_main({name!r})"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    counters = Counters()
    try:
        base = child.stdout.readline().strip()
        if not base:
            raise RuntimeError(f"the API for {name!r} did not start")
        yield base, counters
        counters.update(json.loads(fetch(f"{base}/_counters")))
    finally:
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck server
            child.kill()
            child.wait()


@contextmanager
def flaky_api(
    capacity: float = 200.0,
    burst: float = 10.0,
    latency: float = 0.01,
    failure_rate: float = 0.05,
    seed: int = 1,
    missing_every: int = 0,
) -> Iterator[tuple[str, Counters]]:
    """The demo's API: a token bucket of ``capacity``/s; yields (base URL, counters)."""
    with serve(TokenBucket(capacity, burst, latency), failure_rate, missing_every, seed) as api:
        yield api


def retry_after_header(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for: a number of seconds or an HTTP date.

    >>> retry_after_header("2"), retry_after_header(None), retry_after_header("soon")
    (2.0, None, None)
    >>> retry_after_header("Thu, 01 Jan 1970 00:00:10 GMT", now=7.5)
    2.5
    """
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


def _refusal(url: str, code: int, headers: Message) -> Exception:
    asked = retry_after_header(headers.get("Retry-After"))
    if asked is not None:
        return RetryAfter(asked)
    return Refused(url, code, "refused", headers, None)


def fetch(url: str) -> str:
    """GET url; a 429 or 503 becomes RetryAfter (or Refused, without one); other errors raise."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        exc.close()  # its connection: the error may be kept for long (a Failure)
        if exc.code in (429, 503):
            raise _refusal(url, exc.code, exc.headers) from exc
        raise


async def afetch(url: str) -> str:
    """:func:`fetch` on asyncio streams (one connection per request, like urllib)."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port or 80))
    try:
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()
    finally:
        writer.close()
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    code = int(status_line.split(" ", 2)[1])
    if code == 200:
        return body.decode()
    headers = Message()
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip()] = value.strip()
    if code in (429, 503):
        raise _refusal(url, code, headers)
    raise urllib.error.HTTPError(url, code, body.decode(errors="replace"), headers, None)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a 429, a 5xx, or a network error; not a 404.

    >>> is_transient(RetryAfter(1)), is_transient(ConnectionResetError())
    (True, True)
    """
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    return isinstance(error, (RetryAfter, urllib.error.URLError, OSError))


def is_throttle(error: BaseException) -> bool:
    """A refusal for the server's limit without a Retry-After (for ``throttle_on=``).

    >>> is_throttle(Refused("u", 429, "refused", Message(), None)), is_throttle(ValueError())
    (True, False)
    """
    return isinstance(error, Refused)


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
