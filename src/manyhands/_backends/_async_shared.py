"""A pool's worker tasks on the asyncio backend: items from the lanes, one call at a time.

A shared backend (a :class:`~manyhands.Pool` with ``backend="async"``) keeps
each run's batches in :class:`~manyhands._lanes.Lanes`: a worker task that
comes free takes the next item of the batch the lanes choose (priority,
then fairness by items), and the task that finishes a batch's last item
sends it back to its run. A part of :class:`~._async.AsyncBackend` (see
:mod:`._async_state`).
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from .. import _batch
from .._batch import leave_if_forked
from ._async_deadlines import AsyncDeadlines
from ._async_pieces import Entry

__all__ = ["AsyncShared"]


class AsyncShared(AsyncDeadlines):
    """The worker tasks of a shared backend (a pool's)."""

    async def _work_shared(self) -> None:
        """:meth:`_work` for a pool: the next item of the batch the lanes choose."""
        lanes, idle, loop = self._lanes, self._idle, self._loop
        assert lanes is not None and loop is not None
        runner = asyncio.current_task()
        assert runner is not None
        while True:
            chosen = lanes.peek()
            if chosen is None:
                if self._stopping:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                idle.append(waiter)
                await waiter
                continue
            task, entry = chosen
            index = entry.taken
            entry.taken = index + 1
            if entry.taken == len(entry.batch.items):
                lanes.pop(task)
                self.taken += 1
            lanes.charge(task, 1)
            entry.runners.add(runner)
            try:
                await self._call(entry, index, runner)
            except asyncio.CancelledError:
                if self._stopping or not entry.abandoned:
                    raise
            finally:
                entry.runners.discard(runner)
                self._kept.pop(runner, None)  # (kept past its call's end: a worker again)
            del entry, task
            if runner in self._left:
                return  # given up (past its deadline, or its run ended): replaced

    async def _call(self, entry: Entry, index: int, runner: asyncio.Task[None]) -> None:
        """Run one item of a batch; the task that finishes the batch's last item reports it."""
        batch = entry.batch
        task = batch.task
        start = perf_counter()
        try:
            if task.timeout is None:
                batch.values[index] = await task.fn(batch.items[index])
            elif not await self._timed(entry, index, start, runner):
                return  # given up at its deadline (its item failed then)
        except asyncio.CancelledError as exc:
            if self._stopping or entry.abandoned:
                raise  # the run is stopping: this is our cancellation
            entry.fail(index, exc)
        except BaseException as exc:
            entry.fail(index, exc)
        if _batch._forked:  # this is a child the call forked: it must not go on
            leave_if_forked(entry.errors and entry.errors.get(index))
        entry.elapsed += perf_counter() - start
        entry.left -= 1
        if not entry.left:
            self._report_shared(entry)

    def _report_shared(self, entry: Entry) -> None:
        """(A shared pool) the last item of a batch ended: the batch goes back to its run."""
        if entry.abandoned:
            return  # its run ended
        batch = entry.batch
        batch.elapsed = entry.elapsed
        batch.errors = entry.errors
        self._entries.pop(id(batch), None)
        batch.task.done(batch)
