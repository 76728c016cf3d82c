"""Reading a slow input in a thread of its own, so that finished outcomes never wait for it.

A run reads its input in the consuming thread (so that a thread-bound
iterable, a database cursor say, works). An input that blocks, lines from a
pipe that come one every few seconds, then holds back the outcomes that
finished meanwhile: the consumer is stuck in ``next()``. :class:`ThreadFeed`
wraps such an input: once a run attaches to it, a thread reads it into a
bounded buffer, and the run takes what is there without ever blocking. It
is woken when items arrive in an empty buffer and when the input ends, as an
async input's feed wakes it (:class:`manyhands._aio.AsyncFeed`). The
command line reads a pipe or a terminal this way, a file as before.

Iterated by anything else, before a run attaches to it, it is the plain
iterator it wraps.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._reader import Feed

__all__ = ["ThreadFeed"]

LIMIT = 1024  # items read ahead of the run, at most


class ThreadFeed(Feed):
    """An iterable that a run reads in a thread of its own.

    >>> feed = ThreadFeed(iter("ab"))
    >>> list(feed)  # (no run attached: a plain iterator)
    ['a', 'b']
    """

    def __init__(self, source: Iterable[Any], limit: int = LIMIT) -> None:
        self._source: Iterator[Any] = iter(source)
        self._limit = max(limit, 1)
        self._buffer: deque[Any] = deque()
        self._room = threading.Event()
        self._full = False  # the thread waits for room
        self._wake: Callable[[], None] | None = None
        self._threaded = False  # read by the thread (a run attached)
        self._stopped = False
        self.finished = False
        self.error: BaseException | None = None

    def attach(self, wake: Callable[[], None]) -> None:
        """A run reads it: start the thread; ``wake()`` when items arrive or the input ends."""
        self._wake = wake
        self._threaded = True
        threading.Thread(target=self._fill, name="manyhands-input", daemon=True).start()

    def __iter__(self) -> ThreadFeed:
        return self

    def __next__(self) -> Any:
        if not self._threaded:  # not a run's input (yet): read it here
            return next(self._source)
        try:
            item = self._buffer.popleft()
        except IndexError:
            if self.finished and self.error is not None:
                error, self.error = self.error, None
                raise error from None
            raise StopIteration from None  # (for now, unless it finished)
        if self._full:
            self._full = False
            self._room.set()
        return item

    def _fill(self) -> None:
        buffer, room, wake = self._buffer, self._room, self._wake
        assert wake is not None
        try:
            for item in self._source:
                buffer.append(item)
                if len(buffer) == 1:
                    wake()
                while len(buffer) >= self._limit and not self._stopped:
                    room.clear()
                    self._full = True
                    if len(buffer) >= self._limit:  # (taken from meanwhile: go on)
                        room.wait(0.1)
                if self._stopped:
                    return
        except Exception as exc:  # the user's iterable broke: an InputError later
            self.error = exc
        finally:
            self.finished = True
            wake()

    @property
    def waiting(self) -> bool:
        """Read by the thread, and not ended for the run: more may come (or just came).

        (An item may arrive between a read that came up short and this
        question: it is then in the buffer, and a wake-up is on its way.)
        """
        finished = self.finished  # (first: once it is set, every item is in the buffer)
        return self._threaded and (not finished or bool(self._buffer))

    def stop(self) -> None:
        """Read no more (the run ended); an item being read is the last."""
        self._stopped = True
        self._room.set()
