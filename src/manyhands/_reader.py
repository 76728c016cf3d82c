"""Reading a run's input: lazily, in the consuming thread, through the journal if there is one.

The reader never sizes or copies the input: it takes ``size`` items at a
time. An exception from the user's iterable ends the input there (the run
raises InputError once everything read before it is done). With a journal,
:meth:`Journal.take` reads instead and splits the input into segments to
run and segments to skip (done before, or duplicate keys).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._journal import Journal, Segment

__all__ = ["Feed", "Reader", "input_broke"]


def input_broke(exc: BaseException) -> bool:
    """Whether ``exc``, raised by the user's input, ends it with an InputError.

    Any Exception, and asyncio's CancelledError: raised by an iterator's own
    ``next``, it is the input's error, not a cancellation of the run (nothing
    awaits there), and taken for one it would end the run quietly, as if
    the input had ended. KeyboardInterrupt and SystemExit go on as they are.
    """
    if isinstance(exc, Exception):
        return True
    asyncio = sys.modules.get("asyncio")  # (not imported: nothing raised its CancelledError)
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


class Feed:
    """What reads a run's input in a thread or a task of its own (``ThreadFeed``,
    ``AsyncFeed``, ``LoopFeed``), in the user's iterable's place.

    Only a Feed is asked whether more may come (``waiting``) or handed a chunk
    to fill (``take``): the user's own iterator is never asked, whatever
    attributes it has.
    """

    #: Said with an error of the input whose text mentions threads (read in a
    #: thread, an input bound to its creator's thread fails: say what to do).
    thread_hint = ""

    @property
    def waiting(self) -> bool:
        """Nothing to take for now, and more may come."""
        return False

    def take(self, chunk: list[Any], size: int) -> bool:
        """Fill ``chunk`` with up to ``size`` items there now; False: not supported."""
        return False


class Reader:
    """The input of one run.

    Attributes:
        pulled: items read so far.
        exhausted: nothing more will be read (the end, an error, or a stop).
        error: what the input (or the journal) raised, if reading ended that way.
    """

    def __init__(self, items: Iterator[Any]) -> None:
        self._feed: Feed | None = None
        self.items = items
        self.pulled = 0
        self.exhausted = False
        self.error: BaseException | None = None

    @property
    def items(self) -> Iterator[Any]:
        return self._items

    @items.setter
    def items(self, items: Iterator[Any]) -> None:  # (a feed that reads it instead)
        self._items = items
        self._feed = items if isinstance(items, Feed) else None

    @property
    def waiting(self) -> bool:
        """An input read by a feed, with nothing for now, which has not ended."""
        return self._feed is not None and self._feed.waiting

    def hint(self, error: BaseException) -> str:
        """What to say with the InputError of ``error`` (a thread-bound input read in a thread)."""
        if self._feed is None or not self._feed.thread_hint:
            return ""
        try:
            told = str(error)
        except Exception:  # (a broken __str__: no hint)
            return ""
        return self._feed.thread_hint if "thread" in told.lower() else ""

    def read(self, size: int) -> list[Any]:
        """Up to ``size`` items (fewer at the end, or from an async input for now)."""
        chunk: list[Any] = []
        try:
            feed = self._feed
            if feed is None or not feed.take(chunk, size):  # (a feed's: what it has, at once)
                chunk.extend(islice(self.items, size))  # keeps the items before an exception
        except BaseException as exc:  # the user's iterable broke: InputError at the end
            if not input_broke(exc):
                raise
            self.error = exc
            self.exhausted = True
        self.pulled += len(chunk)
        if len(chunk) < size and not self.waiting:
            self.exhausted = True
        return chunk

    def segment(self, journal: Journal, size: int, room: int) -> Segment | None:
        """The next segment through the journal: ``size`` items to run or ``room`` to skip.

        None once the input ended (then ``error`` says why, if it broke).
        """
        segment = journal.take(self.items, size, room)
        self.pulled = journal.pulled
        if segment is None:
            self.exhausted = True
            self.error = journal.error
        return segment

    def stop(self) -> None:
        """Read nothing more (a stop rule, or the run is ending)."""
        self.exhausted = True
