"""asyncio plumbing for the engine's async driver: its completions queue, and its input.

Both live on the caller's event loop and are touched only from it. An async
input is read by a task (:class:`AsyncFeed`); a sync one that is not a
collection in memory, by a thread (:func:`open_feed`, :mod:`._aio_input`),
so that the loop never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._reader import Feed

if TYPE_CHECKING:
    from ._aio_input import LoopFeed

__all__ = ["AsyncFeed", "LoopQueue", "open_feed"]

T = TypeVar("T")

# Iterators over collections in memory (IN_MEMORY): their next item is at hand, so
# they are read on the loop (a thread would only cost). Anything else (a generator,
# a file, a cursor, a map over a function) may wait: it is read in a thread.
_SAMPLES: tuple[Iterator[Any], ...] = (
    iter([]),
    iter(()),
    iter(range(0)),
    iter(range(1 << 64)),
    iter(""),
    iter("\u20ac"),
    iter(b""),
    iter(bytearray()),
    iter({}),
    iter({}.values()),
    iter({}.items()),
    iter(set()),
    iter(deque()),
    reversed([]),
    reversed({}),
)
IN_MEMORY = frozenset(type(iterator) for iterator in _SAMPLES)


class LoopQueue(Generic[T]):
    """The engine's completions on an event loop: ``put`` from the loop, ``await get()``.

    ``None`` may be put to wake the engine without a completion (more input).
    """

    def __init__(self) -> None:
        self._items: deque[T | None] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T | None) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> T | None:
        return self._items.popleft()

    async def get(self, timeout: float | None = None) -> T | None:
        """The next item; None on a wake-up or once ``timeout`` seconds passed."""
        if not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    await asyncio.wait((self._waiter,), timeout=timeout)
            finally:
                self._waiter = None
            if not self._items:
                return None
        return self._items.popleft()


def _cancelling() -> bool:
    """Whether the current task was asked to cancel (Python 3.11+; before: not known)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class AsyncFeed(Feed):
    """Reads an async iterable into a bounded buffer that the engine drains synchronously.

    A task fills the buffer up to ``limit`` items ahead; ``wake`` is called
    when items arrive in an empty buffer and when the input ends, so the engine
    can wait for input and completions on one queue. Iterating the feed never
    blocks: it ends (for now) when the buffer is empty; ``finished`` says
    whether more can come.
    """

    def __init__(self, source: AsyncIterable[Any], limit: int, wake: Callable[[], None]) -> None:
        self._source = source
        self._limit = max(limit, 1)
        self._wake = wake
        self._buffer: deque[Any] = deque()
        self._room = asyncio.Event()
        self.finished = False
        self.error: BaseException | None = None
        self._closing = False  # aclose() cancels the reading task
        self._task = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        buffer = self._buffer
        try:
            async for item in self._source:
                buffer.append(item)
                if len(buffer) == 1:
                    self._wake()
                while len(buffer) >= self._limit:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:  # the user's async iterable broke: an InputError later
            self.error = exc
        except asyncio.CancelledError as exc:
            if self._closing or _cancelling():
                raise  # (the run stops reading, or the loop is ending)
            self.error = exc  # raised by the input itself: an InputError too, not its end
        except (KeyboardInterrupt, SystemExit) as exc:
            # Raised where the run reads the input, as they are: out of this task
            # they would also leave a "Task exception was never retrieved" at exit.
            self.error = exc
        finally:
            self.finished = True
            self._wake()

    def __iter__(self) -> AsyncFeed:
        return self

    def __next__(self) -> Any:
        if self._buffer:
            item = self._buffer.popleft()
            if len(self._buffer) < self._limit:
                self._room.set()
            return item
        if self.finished and self.error is not None:
            error, self.error = self.error, None
            raise error
        raise StopIteration

    @property
    def waiting(self) -> bool:
        """True when the buffer is empty but the input has not ended."""
        return not self._buffer and not self.finished

    async def aclose(self) -> None:
        """Stop reading; close the source if it is an async generator."""
        if not self._task.done():
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):  # a source that breaks while closing
                await aclose()


def open_feed(
    items: Iterator[Any],
    source: AsyncIterable[Any] | None,
    limit: int,
    wake: Callable[[], None],
    in_thread: bool | None = None,
) -> AsyncFeed | LoopFeed | None:
    """What reads a run's input on the running loop, if not the run itself.

    An async ``source``: a task. A sync input that is not a collection in
    memory (see ``IN_MEMORY``): a thread. Either reads up to ``limit`` items
    ahead and calls ``wake`` (on the loop) when items arrive in an empty
    buffer and when the input ends. A collection in memory: None (the run
    reads it itself: it never waits). ``in_thread`` (the ``input_thread=``
    option): True, a thread whatever the input; False, the run reads it.
    """
    if source is not None:
        return AsyncFeed(source, limit, wake)
    if in_thread is False or (type(items) in IN_MEMORY and not in_thread):
        return None
    from ._aio_input import LoopFeed

    feed = LoopFeed(items, limit)
    feed.attach(wake)
    return feed
