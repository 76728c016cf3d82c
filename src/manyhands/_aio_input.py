"""A sync input read in a thread of its own for a run on an event loop (``amap``, ``arun``).

Read on the loop, a generator that waits for each item (lines from a slow
producer) would block the caller's loop, and no call would start until a
batch of items was read. :class:`LoopFeed` reads it in a thread instead;
the run takes what is there without waiting, and is woken when items come.

The thread reads in chunks, ``list.extend(islice(source, n))``, so that a
fast input costs no Python per item (the extend appends each item as it
comes, where the run can take it): one item at a time while items take
long to come, doubling while they come fast. The run takes its items as a
slice. A run that found nothing to take is *hungry*: the thread wakes it
after each chunk, and, in case a chunk is still waiting for its last items
while its first ones are there, the loop looks again a moment later
(``POLL``, backing off to ``POLL_MAX``).

The list and the run's place in it are shared with no lock: under the GIL
an ``extend``'s appends, a slice and a ``del`` of the taken head are each
atomic, and only the thread appends, only the run takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from itertools import chain, islice
from time import perf_counter
from typing import Any

from ._reader import Feed

__all__ = ["LoopFeed"]

CHUNK_MAX = 1024  # items the thread reads in one go, at most
FAST_CHUNK = 200e-6  # a chunk read within this: the next may be twice as long
POLL, POLL_MAX = 0.001, 0.05  # seconds before a hungry run looks again, and at most
CLOSE_WAIT = 1.0  # seconds a closing run waits for the thread to leave the input, at most


class LoopFeed(Feed):
    """Reads a sync iterable in a thread, up to ``limit`` items ahead of the run.

    Started by :meth:`attach` on the running loop; ``wake`` is then called on
    that loop when items arrive for a hungry run and when the input ends.
    Iterating it (or :meth:`take`) never waits: it ends for now when nothing
    is there; ``waiting`` says whether more may come.
    """

    #: Said with an error of the input that mentions threads (a sqlite cursor's).
    thread_hint = (
        "amap reads a sync iterable in a thread of its own, so as not to block the event "
        "loop; for one bound to the loop's thread, such as a sqlite cursor, pass an async "
        "generator over it"
    )

    def __init__(self, source: Iterator[Any], limit: int) -> None:
        self._source = source
        self._limit = max(limit, 2)
        self._items: list[Any] = []
        self._at = 0  # (the run's) items of the list taken
        self._room = threading.Event()
        self._full = False  # the thread waits for room
        self._hungry = False  # the run found nothing: wake it
        self._drained = False  # the source ended (or broke)
        self._stopped = False
        self.finished = False  # the thread is done: every item is in the list
        self.error: BaseException | None = None
        self._wake: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll: asyncio.TimerHandle | None = None
        self._poll_wait = POLL
        self._thread: threading.Thread | None = None

    def attach(self, wake: Callable[[], None]) -> None:
        """Start the thread (in the caller's context variables); ``wake()`` runs on this loop."""
        self._wake = wake
        self._loop = asyncio.get_running_loop()
        fill = functools.partial(contextvars.copy_context().run, self._fill)
        self._thread = threading.Thread(target=fill, name="manyhands-input", daemon=True)
        self._thread.start()

    # -- the run's side (on the loop) -------------------------------------

    def take(self, chunk: list[Any], size: int) -> bool:
        """Add up to ``size`` items read so far to ``chunk``, at once.

        Adds none when none is there yet. Raises what the input raised once
        it is drained (the items taken before it stay in ``chunk``).
        """
        items, at = self._items, self._at
        if (got := min(size, len(items) - at)) > 0:
            chunk.extend(items[at : at + got])
            at += got
            if at >= CHUNK_MAX:
                # The place first, then the items: meanwhile the thread (which only
                # appends) sees less room than there is, never more than its limit.
                self._at = 0
                del items[:at]
                at = 0
            else:
                self._at = at
            if self._full and len(items) - at <= self._limit // 2:
                self._full = False
                self._room.set()
        if got < size:
            self._came_up_short(chunk)
        return True

    def _came_up_short(self, chunk: list[Any]) -> None:
        if self.finished and len(self._items) == self._at:  # (finished first: all is in)
            error, self.error = self.error, None
            if error is not None:
                raise error from None
            return
        self._hungry = True
        if len(self._items) > self._at:  # (came as it was set: the thread may not see it)
            self._wake()
        elif self._poll is None and self._loop is not None:
            self._poll = self._loop.call_later(self._poll_wait, self._look_again)

    def _look_again(self) -> None:
        """A hungry run's second look: a chunk's first items may be there before its end."""
        self._poll = None
        if not self._hungry or self._stopped:
            self._poll_wait = POLL
            return
        if len(self._items) > self._at or self.finished:
            self._poll_wait = POLL
            self._wake()
            return
        self._poll_wait = min(2 * self._poll_wait, POLL_MAX)
        assert self._loop is not None
        self._poll = self._loop.call_later(self._poll_wait, self._look_again)

    def __iter__(self) -> LoopFeed:
        return self

    def __next__(self) -> Any:
        chunk: list[Any] = []
        self.take(chunk, 1)
        if chunk:
            return chunk[0]
        raise StopIteration

    @property
    def waiting(self) -> bool:
        """Not ended for the run: more may come (or just came)."""
        finished = self.finished  # (first: once it is set, every item is in the list)
        return not finished or len(self._items) > self._at

    async def aclose(self) -> None:
        """Read no more, and wait for the thread to leave the input (``CLOSE_WAIT`` at most).

        The thread leaves once the chunk it is reading is in (at once if it
        waits for room), so the caller may read on from its iterator or close
        it. An input whose next item takes longer than ``CLOSE_WAIT`` keeps the
        thread until that item comes (it cannot be interrupted); the thread
        then leaves without reading more.
        """
        self._stopped = True
        self._room.set()
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        thread, waited = self._thread, 0.0
        while thread is not None and thread.is_alive() and waited < CLOSE_WAIT:
            await asyncio.sleep(0.002)
            waited += 0.002

    # -- the thread's side --------------------------------------------------

    def _ended(self) -> Iterator[Any]:
        """Chained after the source: marks its end, yields nothing."""
        self._drained = True
        yield from ()

    def _fill(self) -> None:
        items, limit, room = self._items, self._limit, self._room
        source = chain(self._source, self._ended())
        size = 1
        try:
            while not self._drained and not self._stopped:
                free = limit - (len(items) - self._at)
                if free <= 0:
                    room.clear()
                    self._full = True
                    if len(items) - self._at >= limit:  # (taken from meanwhile: go on)
                        room.wait(0.1)
                    continue
                began = perf_counter()
                items.extend(islice(source, min(size, free)))
                took = perf_counter() - began
                size = min(2 * size, CHUNK_MAX) if took < FAST_CHUNK else 1
                if self._hungry:
                    self._hungry = False
                    self._call_wake()
        except BaseException as exc:  # the user's iterable broke: an InputError later
            # (or, raised as they are where the run reads: KeyboardInterrupt, SystemExit)
            self.error = exc
        finally:
            self.finished = True
            if not self._stopped:
                self._call_wake()

    def _call_wake(self) -> None:
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # (the loop closed: nobody waits)
            loop.call_soon_threadsafe(self._wake)
