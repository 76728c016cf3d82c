"""The asyncio backend: worker tasks on an event loop, taking items from queued batches.

Up to ``workers`` tasks each take the next *item* of the oldest queued
batch, await ``fn(item)``, and store its value; the task that finishes a
batch's last item reports the batch. So concurrency is counted in items,
as a user means it ("10,000 in flight"), while the engine still deals in
batches, which amortizes its own per-batch work over many items: with
10,000 calls in flight the event loop thread has no time to spare for a
few microseconds of bookkeeping per item. A batch whose last calls
straggle sends its finished items back before them, in pieces (a run
delivered as completed: see :mod:`._async_pieces`). A pool's worker
tasks take items from its lanes instead (:mod:`._async_shared`). The loop is
the caller's (``amap``), or a private one in a thread the run owns
(``run``/``map`` with a coroutine function; uvloop's when it is
installed), closed when the run ends.

Stopping early cancels the running calls at once: unlike a thread, a
coroutine can be cancelled, so the grace period is only waited out for a
call that does not end when cancelled; such a call is then left running
on the loop (the run does not wait for it). A ``CancelledError`` raised by
the user's own code fails its item; only the run's own cancellation
propagates.

With ``timeout=``, each call has a timer on the loop (one ``call_later``,
as ``asyncio.timeout`` has): at the deadline its item fails as
:class:`~manyhands.Timeout` and its task is cancelled and *given up*: a
new task takes its place, and the old one leaves once its call ends. A
coroutine may catch its cancellation and go on awaiting; its item, the
run and the other calls do not wait for it. At most ``workers`` given-up
tasks run on at once, as at most ``workers`` threads are abandoned: past
that, the task of a call past its deadline is kept (its item fails all the
same) and takes the next item once the call ends. Given-up tasks still running
when their run ends are cancelled once more, counted in the Report's
``abandoned``, and left on the loop; a private loop's thread runs on
until they end (it does not keep the program alive). See
:mod:`._async_deadlines`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from _thread import TIMEOUT_MAX
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .. import _batch
from .._batch import Batch, Task, leave_if_forked, watch_forks_in_this_thread
from .._lanes import Lanes
from ._async_loop import LoopGone, LoopThread
from ._async_pieces import Entry, Stragglers
from ._async_shared import AsyncShared

__all__ = ["LOOP_SLACK", "AsyncBackend"]

#: Seconds past the grace period a private loop has to answer a shutdown before it
#: is given up as blocked (a call that does not await: ``time.sleep`` in a coroutine).
LOOP_SLACK = 1.0


class AsyncBackend(AsyncShared):
    """Runs batches as tasks on ``loop`` (or on a private loop in its own thread).

    A private backend (one run) hands out the items of its batches first come,
    first served. A shared one (a :class:`~manyhands.Pool` with
    ``backend="async"``, on a loop of its own) keeps each run's batches in
    :class:`~manyhands._lanes.Lanes`, and a worker task that comes free takes
    the next item of the batch the lanes choose.
    """

    name = "async"
    handles_timeouts = True  # the engine leaves timeout= to the worker tasks
    concurrent_items = True  # a batch's items run at the same time, on different tasks
    timeout_action = "it was cancelled"  # (applied in the worker tasks, not by the engine)

    def __init__(self, workers: int, *, own_loop: bool = True, shared: bool = False) -> None:
        self._workers = workers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop = own_loop
        self._private: LoopThread | None = None  # (own_loop) the loop's thread
        self._pending: deque[Entry] = deque()  # batches with items no worker took yet
        self._lanes: Lanes[Entry] | None = Lanes() if shared else None  # (shared: instead)
        self._entries: dict[int, Entry] = {}  # shared: running batches by id, to abandon
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for an item
        self._stragglers = Stragglers()  # (task.early) see _async_pieces
        self._tasks: set[asyncio.Task[None]] = set()  # the workers
        # Tasks given up (a call past its deadline, or its run ended) whose call has not
        # ended yet, with their run's Task until counted as abandoned (then None).
        self._left: dict[asyncio.Task[None], Task | None] = {}
        # Tasks whose call ran past its deadline once ``workers`` given-up tasks were
        # still in theirs (the cap, as threads have): not replaced, they stay workers
        # and take the next item once the call ends (its item failed at the deadline).
        self._kept: dict[asyncio.Task[None], Task] = {}
        self._retired = False  # no more items expected: idle workers may exit
        self._stopping = False  # our own cancellation, not the user's CancelledError
        self.taken = 0  # batches whose calls have all started (the slowdown's opening)
        self.abandoned = 0  # given-up tasks still in their call when their run ended
        self.notes: list[str] = []

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if self._own_loop:
            private = self._private = LoopThread()
            self._loop = private.loop
            private.start()
        else:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "manyhands.amap() and arun() run on an asyncio event loop (asyncio.run, "
                    "uvloop, anyio's asyncio backend), and none runs in this thread; under "
                    "trio, call manyhands.run() or map() in a thread (trio.to_thread.run_sync)"
                ) from None
            watch_forks_in_this_thread()  # a call that forks: see _batch

    def attach(self, task: Task) -> None:
        pass

    def detach(self, task: Task) -> None:
        """A run of a shared pool ended: its given-up calls still running are counted."""
        if self._left:  # (set on the loop before the run's last batch came back or expired)
            self._on_loop(self._count_left, task)

    def forget_copied_tasks(self) -> None:
        """(A forked child's copy) its tasks never run here: none is reported destroyed pending."""
        for task in [*self._tasks, *self._left, *self._kept]:
            with contextlib.suppress(AttributeError):
                task._log_destroy_pending = False  # type: ignore[attr-defined]

    def _count_left(self, task: Task | None) -> None:
        """Cancel once more the given-up calls (of ``task``, or all) still running; count them.

        A worker kept in a call past its deadline (the cap) is given up now:
        its run no longer waits for it.
        """
        left = self._left
        for runner, owner in list(self._kept.items()):
            if task is None or owner is task:
                del self._kept[runner]
                if not runner.done():
                    left[runner] = owner
                    runner.add_done_callback(self._forget)
                    self._tasks.discard(runner)
        for runner, run in list(left.items()):
            if runner.done() or (task is not None and run is not task):
                continue
            runner.cancel()
            if run is not None:
                run.abandoned += 1
                self.abandoned += 1
                left[runner] = None

    @property
    def runs_on_caller_loop(self) -> bool:
        """The calls run on the consumer's own event loop (``amap``)."""
        return not self._own_loop

    def inside(self) -> bool:
        """True when called from this backend's event loop thread."""
        return self._private is not None and self._private.inside()

    def submit(self, batch: Batch) -> None:
        if self._own_loop:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._accept, batch)
        else:
            self._accept(batch)

    def _accept(self, batch: Batch) -> None:
        """Queue a batch's items; wake idle workers or start new ones for them."""
        count = len(batch.items)
        entry = Entry(batch)
        if self._lanes is None:
            self._pending.append(entry)
        else:
            self._lanes.put(entry, batch.task)
            self._entries[id(batch)] = entry
        self._retired = False
        idle = self._idle
        while idle and count:
            waiter = idle.popleft()
            if not waiter.done():  # (a cancelled worker leaves a cancelled waiter)
                waiter.set_result(None)
                count -= 1
        while count and len(self._tasks) < self._workers:
            self._add_worker()
            count -= 1

    def _add_worker(self) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(self._work() if self._lanes is None else self._work_shared())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wind_down(self) -> None:
        if self._lanes is not None:
            return  # a pool's workers wait for more runs
        if self._own_loop:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._retire)
        else:
            self._retire()

    def _retire(self) -> None:
        self._retired = True
        idle = list(self._idle)
        self._idle.clear()  # (in place: each worker holds the deque)
        for waiter in idle:
            if not waiter.done():
                waiter.set_result(None)

    def cancel(self, task: Task) -> list[Batch]:
        """Drop the queued batches of ``task`` no worker began, and return them."""
        dropped: list[Batch] = self._on_loop(self._cancel, task, [])
        return dropped

    def _cancel(self, task: Task) -> list[Batch]:
        if self._lanes is None:  # one run: everything queued is its
            queued, self._pending = self._pending, deque()
        else:
            queued = deque(self._lanes.cancel(task))
        dropped: list[Batch] = []
        for entry in queued:
            if entry.taken:  # some of its items run: expire() cancels them
                entry.taken = len(entry.batch.items)
            else:
                self._entries.pop(id(entry.batch), None)
                dropped.append(entry.batch)
        return dropped

    def expire(self, batch: Batch) -> bool:
        """Cancel the running calls of a batch whose run ended (a shared pool)."""
        return bool(self._on_loop(self._expire, batch, False))

    def _expire(self, batch: Batch) -> bool:
        entry = self._entries.pop(id(batch), None)
        if entry is None or entry.abandoned:
            return False
        entry.abandoned = True
        if self._lanes is not None:
            self._lanes.cancel(batch.task)  # (its untaken items, if any, never start)
        for runner in list(entry.runners):  # (counted at detach if still running then)
            self._give_up(runner, batch.task)
        return True

    def _on_loop(self, call: Callable[[Any], Any], argument: Any, default: Any = None) -> Any:
        """``call(argument)`` on the loop, from any thread; its result.

        ``default`` if the loop's thread no longer runs (at interpreter exit).
        """
        private = self._private
        if private is None or private.inside():
            return call(argument)

        async def run() -> Any:
            return call(argument)

        try:
            return private.call(run())
        except LoopGone:  # (interpreter exit: nothing runs there any more)
            return default

    def shutdown(self, grace: float) -> int:
        """Stop from another thread (a private loop): cancel, wait, stop the loop.

        The loop's thread closes the loop once it stops: at once, or, if
        calls did not end when cancelled, once they end (the thread is a
        daemon: it does not keep the program alive meanwhile).

        A call that blocks the loop (``time.sleep`` in a coroutine) keeps it
        from even starting to cancel: the wait gives up on the loop after
        ``grace`` (and ``LOOP_SLACK``), or at once on a second Ctrl-C, as on
        a hung thread. The loop then cancels everything and stops, once that
        call returns, in its own time.
        """
        private = self._private
        assert private is not None
        try:
            busy = private.call(self.ashutdown(grace), timeout=min(grace + LOOP_SLACK, TIMEOUT_MAX))
        except LoopGone:  # (stopped already, or the interpreter is exiting)
            return 0
        except BaseException as exc:  # (a second Ctrl-C, or the loop blocked: stop now)
            private.loop.call_soon_threadsafe(self._stop_all)
            if isinstance(exc, concurrent.futures.TimeoutError):
                return len(self._tasks) or 1  # (read from here: the loop is stuck)
            raise
        if busy:
            private.stop_once_ended(self._still_running)
        else:
            private.stop()
        return busy

    async def ashutdown(self, grace: float) -> int:
        """Cancel every running call; wait up to ``grace`` for them to end (on the loop).

        Most calls end as soon as they are cancelled. Those that do not (a
        coroutine that catches its cancellation and goes on) are left
        running, and returned: how many. Given-up calls (past their
        deadline) are cancelled once more but not waited for.
        """
        workers = self._cancel_all()
        # (a worker kept in a call past its deadline: its item failed, no grace for it)
        workers = [worker for worker in workers if worker not in self._kept]
        if workers:
            await asyncio.wait(workers, timeout=grace)
        else:
            await asyncio.sleep(0)  # (the cancellations land)
        self._count_left(None)
        return len(self._still_running())

    def _cancel_all(self) -> list[asyncio.Task[None]]:
        """(On the loop) cancel every call and drop what is queued; the workers."""
        self._stopping = True
        self._stragglers.cancel()
        self._pending = deque()  # (a call that ends late takes no new item)
        if self._lanes is not None:
            self._lanes.clear()
        workers = list(self._tasks)
        for worker in workers:
            worker.cancel()
        for runner in self._left:
            runner.cancel()
        return workers

    def _stop_all(self) -> None:
        """(On the loop, once free) :meth:`shutdown` gave up on it: cancel all, stop once ended."""
        self._cancel_all()
        self._count_left(None)
        assert self._private is not None
        self._private.stop_when_ended(self._still_running)

    def _still_running(self) -> list[asyncio.Task[None]]:
        return [task for task in (*self._tasks, *self._left) if not task.done()]

    # -- the worker tasks --------------------------------------------------

    async def _work(self) -> None:
        # A deque and one future per idle wait: asyncio.Queue costs several
        # microseconds per hand-off, which 10,000 calls in flight cannot afford.
        # (This is the hot loop of a private backend: everything inline, and one
        # clock read per call: the end of one call is the start of the next.)
        idle, loop, stragglers = self._idle, self._loop, self._stragglers
        running = stragglers.running
        assert loop is not None
        me = asyncio.current_task()
        assert me is not None
        start: float | None = None
        while True:
            pending = self._pending  # (cancel() may replace it)
            if not pending:
                if running:  # no call of ours may end to check on them
                    stragglers.watch(loop)
                if self._retired or self._stopping:
                    return self._leave()
                waiter: asyncio.Future[None] = loop.create_future()
                idle.append(waiter)
                await waiter
                start = None
                continue
            if start is None:
                start = perf_counter()
            entry = pending[0]
            batch = entry.batch
            task = batch.task
            index = entry.taken
            entry.taken = index + 1
            if entry.taken == len(batch.items):
                self._all_started(pending)
                if task.early:  # its calls all started: from when they would straggle
                    stragglers.started(entry, start)
            try:
                if task.timeout is None:
                    batch.values[index] = await task.fn(batch.items[index])
                elif not await self._timed(entry, index, start, me):
                    return  # past its deadline: a new task took (or takes) this one's place
            except asyncio.CancelledError as exc:
                if self._stopping:
                    raise  # the run is stopping: this is our cancellation
                entry.fail(index, exc)
            except BaseException as exc:
                entry.fail(index, exc)
            if _batch._forked:  # this is a child the call forked: it must not go on
                leave_if_forked(entry.errors and entry.errors.get(index))
            end = perf_counter()
            entry.elapsed += end - start
            start = end
            entry.left -= 1
            if not entry.left:
                task.done(stragglers.finished(entry))
            if running and end > running[0].due:  # (one test per call)
                stragglers.send_pieces(end)
            del batch, entry, task  # an idle worker must not keep its last batch alive

    def _all_started(self, pending: deque[Entry]) -> None:
        """The first pending batch's calls have all started: it leaves the queue."""
        pending.popleft()
        self.taken += 1

    def _leave(self) -> None:
        """A retired worker leaves ``_tasks`` now, not at its done callback.

        A batch accepted before that callback (a retry that came back as the
        workers retired) must find room to start a worker in its place.
        """
        self._tasks.discard(asyncio.current_task())
