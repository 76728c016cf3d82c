"""The deadlines of ``timeout=`` on the asyncio backend, and the tasks given up at them.

Each call of a run with ``timeout=`` has one timer on the loop (a
``call_later``, as ``asyncio.timeout`` has). At the deadline its item fails
as :class:`~manyhands.Timeout` now, not once the call accepts its
cancellation, and its task is *given up*: cancelled, replaced by a new
worker, and forgotten once its call ends. At most ``workers`` given-up tasks
are still in their calls at once; past that, the task of a call past its
deadline is *kept*: it stays a worker and takes the next item once its call
ends. A part of :class:`~._async.AsyncBackend` (see :mod:`._async_state`).
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from .._batch import Task
from .._exceptions import Timeout
from ._async_pieces import Entry
from ._async_state import AsyncState

__all__ = ["AsyncDeadlines"]


class AsyncDeadlines(AsyncState):
    """Calls under ``timeout=``; tasks given up (at a deadline, or as their run ended)."""

    def _give_up(self, runner: asyncio.Task[None], task: Task) -> None:
        """Cancel ``runner``'s call and stop waiting for it: a new worker takes its place.

        The runner leaves once its call ends, whatever it returns (a
        coroutine may catch its cancellation and go on). At most ``workers``
        given-up tasks are still in their calls, as at most ``workers``
        threads are abandoned: past that, the runner is kept, not replaced
        (its run has a worker less until the call ends), so calls that
        ignore their cancellation cannot pile up on the loop without bound.
        """
        runner.cancel()
        if runner in self._left or runner in self._kept:
            return  # (given up already: cancelled once more)
        if len(self._left) >= self._workers:
            self._kept[runner] = task
            return
        self._left[runner] = task
        runner.add_done_callback(self._forget)
        self._tasks.discard(runner)
        if not self._stopping and (self._pending or self._lanes is not None):
            self._add_worker()

    def _forget(self, runner: asyncio.Task[None]) -> None:
        self._left.pop(runner, None)

    async def _timed(
        self, entry: Entry, index: int, start: float, runner: asyncio.Task[None]
    ) -> bool:
        """Run item ``index`` of ``entry`` under its run's ``timeout``; store its value or error.

        False if the call ran past its deadline (:meth:`_overdue`): its item
        failed then, whatever the call did later is dropped, and ``runner``
        is no longer a worker of a private backend (it must leave; if it was
        kept, see :meth:`_kept_call_ended`).
        """
        batch = entry.batch
        task = batch.task
        assert self._loop is not None and task.timeout is not None
        deadline = self._loop.call_later(task.timeout, self._overdue, entry, index, start, runner)
        try:
            value = await task.fn(batch.items[index])
        except BaseException as exc:
            deadline.cancel()
            if runner in self._left or (self._kept and self._kept_call_ended(runner)):
                return False
            if isinstance(exc, asyncio.CancelledError) and (self._stopping or entry.abandoned):
                raise  # the run is stopping: this is our cancellation
            entry.fail(index, exc)
            return True
        deadline.cancel()
        if runner in self._left or (self._kept and self._kept_call_ended(runner)):
            return False
        batch.values[index] = value
        return True

    def _kept_call_ended(self, runner: asyncio.Task[None]) -> bool:
        """Whether ``runner`` was kept in a call past its deadline (the cap), which just ended.

        A pool's worker goes on to its next item; a private backend's leaves,
        and a new task takes its place (its loop has no way back to the top
        for a call whose item was settled at the deadline).
        """
        if self._kept.pop(runner, None) is None:
            return False
        if self._lanes is None:
            self._tasks.discard(runner)
            if not self._stopping and self._pending:
                self._add_worker()
        return True

    def _overdue(self, entry: Entry, index: int, start: float, runner: asyncio.Task[None]) -> None:
        """A call's deadline: its item fails as Timeout now, and its task is given up.

        Now, not once the call accepts its cancellation: a coroutine may
        catch it and go on awaiting, and neither its run nor its worker's
        place waits for it.
        """
        if self._stopping or entry.abandoned:
            return  # (the run ended: its calls are cancelled already)
        batch = entry.batch
        task = batch.task
        self._give_up(runner, task)
        entry.fail(index, Timeout(f"the call ran past timeout={task.timeout:g}s and was cancelled"))
        now = perf_counter()
        entry.elapsed += now - start
        entry.left -= 1
        if self._lanes is not None:
            if not entry.left:
                self._report_shared(entry)
            return
        stragglers = self._stragglers
        if not entry.left:
            task.done(stragglers.finished(entry))
        running = stragglers.running
        if running and now > running[0].due:
            stragglers.send_pieces(now)
