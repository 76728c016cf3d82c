"""The asyncio backend: worker tasks on an event loop, taking items from queued batches.

Up to ``workers`` tasks each take the next *item* of the oldest queued
batch, await ``fn(item)``, and store its value; the task that finishes a
batch's last item reports the batch. So concurrency is counted in items,
as a user means it ("10,000 in flight"), while the engine still deals in
batches, which amortizes its own per-batch work over many items: with
10,000 calls in flight the event loop thread has no time to spare for a
few microseconds of bookkeeping per item. A batch whose last calls
straggle sends its finished items back before them, in pieces (a run
delivered as completed: see :mod:`._async_pieces`). The loop is
the caller's (``amap``), or a private one in a thread the run owns
(``run``/``map`` with a coroutine function; uvloop's when it is
installed), closed when the run ends.

Stopping early cancels the running calls at once: unlike a thread, a
coroutine can be cancelled, so there is no grace period to wait out.
A ``CancelledError`` raised by the user's own code fails its item; only
the run's own cancellation propagates.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .. import _batch
from .._batch import Batch, Task, leave_if_forked, unwatch_this_thread, watch_forks_in_this_thread
from .._exceptions import Timeout, WorkerInitError
from .._lanes import Lanes
from ._async_pieces import Entry, Stragglers

__all__ = ["AsyncBackend"]


class AsyncBackend:
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
        self._thread: threading.Thread | None = None
        self._pending: deque[Entry] = deque()  # batches with items no worker took yet
        self._lanes: Lanes[Entry] | None = Lanes() if shared else None  # (shared: instead)
        self._entries: dict[int, Entry] = {}  # shared: running batches by id, to abandon
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for an item
        self._stragglers = Stragglers()  # (task.early) see _async_pieces
        self._tasks: set[asyncio.Task[None]] = set()
        self._retired = False  # no more items expected: idle workers may exit
        self._stopping = False  # our own cancellation, not the user's CancelledError
        self.taken = 0  # batches whose calls have all started (the slowdown's opening)
        self.abandoned = 0  # always 0: a timed-out coroutine is cancelled, not abandoned
        self.notes: list[str] = []

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if self._own_loop:
            loop = self._loop = new_private_loop()
            ready = threading.Event()
            self._thread = threading.Thread(
                target=_serve, args=(loop, ready), name="manyhands-asyncio", daemon=True
            )
            try:
                self._thread.start()
            except RuntimeError as exc:  # "can't start new thread": a limit of the system
                loop.close()
                raise WorkerInitError(
                    f"the event loop's thread could not be started ({exc}): the system's "
                    "limit on threads or memory is reached (ulimit -u, ulimit -v, a "
                    "container's pids limit)"
                ) from exc
            ready.wait()
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
        pass

    @property
    def runs_on_caller_loop(self) -> bool:
        """The calls run on the consumer's own event loop (``amap``)."""
        return not self._own_loop

    def inside(self) -> bool:
        """True when called from this backend's event loop thread."""
        return self._thread is not None and threading.current_thread() is self._thread

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
        loop = self._loop
        assert loop is not None
        while count and len(self._tasks) < self._workers:
            task = loop.create_task(self._work() if self._lanes is None else self._work_shared())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            count -= 1

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
        dropped: list[Batch] = self._on_loop(self._cancel, task)
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
        return bool(self._on_loop(self._expire, batch))

    def _expire(self, batch: Batch) -> bool:
        entry = self._entries.pop(id(batch), None)
        if entry is None or entry.abandoned:
            return False
        entry.abandoned = True
        if self._lanes is not None:
            self._lanes.cancel(batch.task)  # (its untaken items, if any, never start)
        for runner in list(entry.runners):
            runner.cancel()
        batch.task.abandoned += len(entry.runners)
        return True

    def _on_loop(self, call: Callable[[Any], Any], argument: Any) -> Any:
        """``call(argument)`` on the loop, from any thread; its result."""
        loop = self._loop
        assert loop is not None
        if not self._own_loop or self.inside():
            return call(argument)

        async def run() -> Any:
            return call(argument)

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    def shutdown(self, grace: float) -> int:
        """Stop from another thread (a private loop): cancel, wait, close the loop."""
        loop = self._loop
        assert loop is not None and self._own_loop
        try:
            future = asyncio.run_coroutine_threadsafe(self.ashutdown(grace), loop)
            return future.result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def ashutdown(self, grace: float) -> int:
        """Cancel every running call and wait until the tasks are gone (on the loop)."""
        del grace  # coroutines are cancelled at once: nothing to wait out
        self._stopping = True
        self._stragglers.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        return 0

    # -- the worker tasks --------------------------------------------------

    async def _work(self) -> None:
        # A deque and one future per idle wait: asyncio.Queue costs several
        # microseconds per hand-off, which 10,000 calls in flight cannot afford.
        # (This is the hot loop of a private backend: everything inline, and one
        # clock read per call: the end of one call is the start of the next.)
        idle, loop, stragglers = self._idle, self._loop, self._stragglers
        running = stragglers.running
        assert loop is not None
        start: float | None = None
        while True:
            pending = self._pending  # (cancel() may replace it)
            if not pending:
                if running:  # no call of ours may end to check on them
                    stragglers.watch(loop)
                if self._retired:
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
                else:
                    call = task.fn(batch.items[index])
                    batch.values[index] = await self._within(call, task.timeout)
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

    async def _work_shared(self) -> None:
        """:meth:`_work` for a pool: the next item of the batch the lanes choose."""
        lanes, idle, loop = self._lanes, self._idle, self._loop
        assert lanes is not None and loop is not None
        while True:
            chosen = lanes.peek()
            if chosen is None:
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
            runner = asyncio.current_task()
            assert runner is not None
            entry.runners.add(runner)
            try:
                await self._call(entry, index)
            except asyncio.CancelledError:
                if self._stopping or not entry.abandoned:
                    raise
            finally:
                entry.runners.discard(runner)
            del entry, task

    async def _call(self, entry: Entry, index: int) -> None:
        """Run one item of a batch; the task that finishes the batch's last item reports it."""
        batch = entry.batch
        task = batch.task
        start = perf_counter()
        try:
            if task.timeout is None:
                batch.values[index] = await task.fn(batch.items[index])
            else:
                batch.values[index] = await self._within(task.fn(batch.items[index]), task.timeout)
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
        if not entry.left and not entry.abandoned:
            batch.elapsed = entry.elapsed
            batch.errors = entry.errors
            self._entries.pop(id(batch), None)
            task.done(batch)

    @staticmethod
    async def _within(call: Any, timeout: float) -> Any:
        """Await ``call``, cancelling it past ``timeout`` seconds (then: Timeout)."""
        if _in_task_timeout is not None:  # Python 3.11+: no extra task per call
            scope = _in_task_timeout(timeout)
            try:
                async with scope:
                    return await call
            except TimeoutError:
                if scope.expired():
                    raise Timeout(
                        f"the call ran past timeout={timeout:g}s and was cancelled"
                    ) from None
                raise  # the call's own TimeoutError
        task = asyncio.ensure_future(call)  # pragma: no cover - Python 3.10
        try:  # pragma: no cover
            finished, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:  # pragma: no cover - the run stops: the call too
            task.cancel()
            await asyncio.wait((task,))
            raise
        if finished:  # pragma: no cover
            return task.result()
        task.cancel()  # pragma: no cover
        await asyncio.wait((task,))  # pragma: no cover
        raise Timeout(  # pragma: no cover
            f"the call ran past timeout={timeout:g}s and was cancelled"
        )


_in_task_timeout: Any = getattr(asyncio, "timeout", None)


def new_private_loop() -> asyncio.AbstractEventLoop:
    """A loop for a run's own thread: uvloop's when it is installed, else asyncio's.

    uvloop (``pip install manyhands[fast]``) turns each call's timer and
    wake-up around in C: a fifth to a quarter less CPU per call at 10,000
    calls in flight (benchmarks/README.md). It is imported here, when a private loop starts,
    never by ``import manyhands``. ``amap`` runs on the caller's own loop,
    whichever it is.
    """
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    watch_forks_in_this_thread()  # a call that forks: see _batch
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        unwatch_this_thread()
