"""Stand-ins for what the examples of README.md and docs/ leave to the reader.

The examples call ``fetch(url)``, ``api.my_operation(item)``, ``render(page)``... on
``urls``, ``items``, ``pages``: the reader's own function and data. When the examples
run as tests (``conftest.py``), each page starts with these names bound, so every block
runs for real, against these local functions: nothing here touches a network, and each
call takes about a millisecond. They fail the way a real API does, so that the
examples' failure handling has something to handle:

- ``fetch`` and ``api.my_operation``: every 50th item (7, 57, 107, ...) is "not found"
  (``LookupError``), every time;
- ``call_api``: every 10th item fails with ``ConnectionError`` on its first attempt
  and succeeds when retried.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

__all__ = ["names"]

ITEMS = 200


def _number(item: Any) -> int:
    return int(str(item).rsplit("/", 1)[-1])


def fetch(url: str) -> str:
    """A call to someone's API: 1 ms, and every 50th item is missing."""
    number = _number(url)
    time.sleep(0.001)
    if number % 50 == 7:
        raise LookupError(f"404 Not Found: {url}")
    return f"<item {number}>"


_tried: set[int] = set()
_tried_lock = threading.Lock()


def call_api(item: Any) -> str:
    """Every 10th item fails once with ConnectionError, then succeeds."""
    number = _number(item)
    with _tried_lock:
        first = number not in _tried
        _tried.add(number)
    time.sleep(0.001)
    if first and number % 10 == 3:
        raise ConnectionError(f"connection reset while calling for item {number}")
    return f"ok {number}"


def render(page: int) -> int:
    """CPU-bound work: a few milliseconds of arithmetic."""
    return sum(i * i for i in range(20_000 + page))


class _Response:
    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> _Response:
        await asyncio.sleep(0.001)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def text(self) -> str:
        return fetch(self.url)


class _Session:
    """Like an ``aiohttp.ClientSession`` or ``httpx.AsyncClient``: ``get(url)``."""

    def get(self, url: str) -> _Response:
        return _Response(url)


saved: dict[Any, Any] = {}


def names() -> dict[str, Any]:
    """The names each page of the docs starts with."""
    urls = [f"https://api.example.com/items/{n}" for n in range(ITEMS)]
    saved.clear()
    return {
        "fetch": fetch,
        "urls": urls,
        "items": list(urls),
        "api": SimpleNamespace(my_operation=fetch),
        "call_api": call_api,
        "render": render,
        "pages": list(range(40)),
        "session": _Session(),
        "save": saved.__setitem__,
        "log": logging.getLogger("docs-example"),
    }
