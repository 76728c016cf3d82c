"""What the parts of the asyncio backend share: its state, and a call between them.

:class:`~._async.AsyncBackend` (what the runs call: its lifecycle, the queue
of batches and the hot worker loop of a private backend) is made of parts
that read and write the same state: the deadlines of ``timeout=`` and the
tasks given up at them (:mod:`._async_deadlines`), and a pool's worker
tasks, which take items from the lanes (:mod:`._async_shared`). They are
mixins of one object, not objects that call each other, so that a call
costs no more than one class's methods would; :class:`AsyncState` declares
what they share (``AsyncBackend.__init__`` sets it, with what each holds)
and the calls each makes on a part after it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .._batch import Task
from .._lanes import Lanes
from ._async_loop import LoopThread
from ._async_pieces import Entry, Stragglers

__all__ = ["AsyncState"]


class AsyncState:
    """The state the parts of an ``AsyncBackend`` share (set by its ``__init__``)."""

    notes: list[str]
    taken: int
    abandoned: int
    _workers: int
    _loop: asyncio.AbstractEventLoop | None
    _own_loop: bool
    _private: LoopThread | None
    _pending: deque[Entry]
    _lanes: Lanes[Entry] | None
    _entries: dict[int, Entry]
    _idle: deque[asyncio.Future[None]]
    _stragglers: Stragglers
    _tasks: set[asyncio.Task[None]]
    _left: dict[asyncio.Task[None], Task | None]
    _kept: dict[asyncio.Task[None], Task]
    _retired: bool
    _stopping: bool

    def _add_worker(self) -> None:
        """(``AsyncBackend``) start one more worker task."""
        raise NotImplementedError

    def _report_shared(self, entry: Entry) -> None:
        """(``AsyncShared``) the last item of a batch ended: the batch goes back to its run."""
        raise NotImplementedError
