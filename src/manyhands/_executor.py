"""A Pool as a ``concurrent.futures.Executor``: ``submit`` calls on its workers.

Imported only when a Pool is first used that way (``concurrent.futures`` is
not light). Each call is a batch of one item of an internal task whose
function unpacks ``(fn, args, kwargs)``; the call's value or exception comes
back as the item's value and settles its Future, with the stdlib's
semantics: a Future cancelled before a worker took it never runs, and
``shutdown(cancel_futures=True)`` settles every one not started as cancelled.

On processes the call travels pickled (refused at ``submit``, naming what does
not pickle), and its Future runs from when a worker process is sent it, told
by the lanes (``Task.leaving``), as with ``ProcessPoolExecutor``'s call queue;
the outcome is pickled in the worker, so one that cannot come back says so
(:mod:`._executor_pickles`).

A worker that waits for a call of its own pool (the nested-submit hang of
``ThreadPoolExecutor``, where every worker waits for calls no worker is free
to start) never waits for a worker: on threads, a call submitted from one of
the pool's calls while no worker is free runs at once, in the submitting
call, and ``result()``/``exception()`` (with no timeout) called in a worker
on a call not started yet take it back and run it there; either way each
call runs once (its Future is claimed once, see ``_claim``). On asyncio,
blocking on such a Future from the pool's event loop is refused: the loop
would wait for itself.

On Dask a call is a task on the cluster from its submit, and nothing in this
process sees it begin: its Future is pending until it settles, and
``cancel()`` asks the workers (``DaskBackend.withdraw``, one round trip for
all the calls ``shutdown(cancel_futures=True)`` cancels). A call no worker
began is taken back and never made (True); one a worker began is running from
then on (False), as the stdlib's are.

Here: ``PoolExecutor`` (what ``pool.executor()`` returns) and ``PoolCalls``
(its calls: submitted, claimed, settled). A Future and its settling are in
:mod:`._executor_future`; a call made by a worker, inline or on the pool's
loop, in :mod:`._executor_call`; shutdown and cancel, in
:mod:`._executor_shutdown`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar, cast

from ._backends import Backend
from ._batch import Batch, Task
from ._executor_call import TAKEN, call_in_thread, call_on_loop, make_call
from ._executor_future import PoolFuture, settle
from ._executor_pickles import call_pickled, pickled_call, unpickled_outcome
from ._executor_shutdown import PoolCallsShutdown
from ._outcome import Failure
from ._signal_waits import wait_sliced

__all__ = ["PoolCalls", "PoolExecutor", "PoolFuture"]

R = TypeVar("R")

_keys = itertools.count()


class PoolExecutor(Executor):
    """``concurrent.futures.Executor`` over a Pool's workers at one priority.

    A Future is pending until its call starts (on processes: until a worker
    process is sent it, as with ``ProcessPoolExecutor``), and ``cancel()``
    works until then. Every Future ends settled: with a value, an exception,
    or cancelled. Each ``pool.executor()`` is one of its own: its
    ``shutdown`` waits for (or cancels) its own calls only, and the others go on.
    """

    def __init__(self, calls: PoolCalls, pool: object = None) -> None:
        self._calls = calls
        # The Pool it came from, kept alive while the executor is: a pool collected
        # stops its workers (``Pool(...).executor()``, its Pool dropped at once, must work).
        self._pool = pool
        self._keys: set[int] = set()  # its calls not settled (under calls._lock)
        self._closed = False

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._calls.submit_for(self, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no new call; ``cancel_futures``: cancel those not started; ``wait``: for the rest.

        Only this executor's calls: those of other executors of the pool, and
        of ``pool.submit``, go on.

        Raises:
            RuntimeError: with ``wait=True``, where the wait could never end:
                from one of its own calls, from another of the pool's own
                threads while its calls have not ended (a done callback), or
                on an async pool's event loop. Nothing is shut down then;
                ``wait=False`` works there.
        """
        calls = self._calls
        if wait:
            calls.check_not_inside(self)
        self._closed = True
        if cancel_futures:
            calls.cancel_of(self)
        if wait:
            calls.take_back(self)
            with calls._lock:  # (in slices: a Ctrl-C another thread took ends it)
                wait_sliced(
                    lambda seconds: calls._idle.wait_for(lambda: not self._keys, seconds), None
                )


class PoolCalls(PoolCallsShutdown):
    """The calls of a Pool's executors at one priority: one task of the pool's workers.

    Every ``pool.executor(priority)`` and ``pool.submit`` share it; each
    executor keeps its own calls (``PoolExecutor``). Shut down with the pool.
    """

    def __init__(self, backend: Backend, priority: int) -> None:
        self._backend = backend
        # (another process runs the calls: they travel pickled, and come back so)
        self._processes = type(backend).__name__ in ("ProcessBackend", "DaskBackend")
        self._async = is_async = type(backend).__name__ == "AsyncBackend"
        # (threads: how many workers are free, to run a nested call at once when none is)
        self._free_workers: Callable[[], int] | None = getattr(backend, "free_workers", None)
        call = call_on_loop if is_async else (call_pickled if self._processes else call_in_thread)
        self._task = Task(call, self._settle, priority=priority, timed=True)
        if type(backend).__name__ == "ProcessBackend":  # (threads, asyncio: the call checks)
            self._task.leaving = self._leaving  # (Dask: a Future is pending until settled)
        # (Dask: a call is a task on the cluster from its submit, begun out of sight: a
        # Future is cancelled only once the workers said none began it, see withdraw.)
        self._withdraw: Callable[[list[Batch]], list[Batch]] | None = getattr(
            backend, "withdraw", None
        )
        self.withdraws = self._withdraw is not None
        self._task.withdrawable = self.withdraws
        self._sent: dict[int, Batch] = {}  # (Dask) the batch of each call not settled, by key
        self._withdrawing = threading.RLock()  # (Dask) held by a withdraw, see there
        self._lock = threading.Lock()
        self._futures: dict[int, PoolFuture[Any]] = {}  # submitted and not settled, by key
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._exited = False  # the interpreter's exit hook made its calls: none is accepted
        self._detached = False
        self._tasks: set[asyncio.Task[None]] = set()  # (asyncio) calls submitted on the loop
        backend.attach(self._task)
        self.shared = PoolExecutor(self)  # pool.submit's: no user shuts it down

    def submit_for(
        self,
        owner: PoolExecutor,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[R]:
        from ._checks import is_coroutine_function

        if is_coroutine_function(fn) != self._async:
            # Refused here, as pool.run refuses it: made first, a regular function would
            # run (and block) the async pool's loop before its value could say so.
            name = getattr(fn, "__qualname__", "fn")
            raise TypeError(
                f"{name} is a regular function, which a Pool of backend='async' cannot "
                "call without blocking its event loop: submit a coroutine function (async "
                "def, a functools.partial of one, or an object with async __call__; not a "
                "lambda that returns a coroutine), or use a pool of threads"
                if self._async
                else f"{name} is a coroutine function, which this pool's workers would not "
                "await: use manyhands.Pool(backend='async')"
            )
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        # (On processes the call travels by value: pickled first, so a call that
        # cannot travel is refused before it has a Future to settle.)
        call = pickled_call(fn, args, kwargs) if self._processes else None
        key = next(_keys)
        future: PoolFuture[R] = PoolFuture(self, owner, key, None if call else (fn, args, kwargs))
        free = self._free_workers
        if free is not None and self._backend.inside() and free() <= 0:
            # From one of the pool's calls, with no worker free: run now, here. (Queued,
            # it could wait forever for workers that all wait for calls like it.)
            self._run_here(future)
            return future
        item: Any = (key, call) if self._processes else (key, future)
        batch = Batch(-1, [item], self._task)
        with self._lock:
            if self._exited:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._closed or owner._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures[key] = future
            owner._keys.add(key)
            if self.withdraws:
                self._sent[key] = batch
        if self._async and self._backend.inside():
            # From the pool's own loop (a call of the pool's, say, that awaits it): a
            # task of its own, as a nested run is, not a worker's place it could wait
            # for forever while every worker awaits a call like it.
            task = asyncio.get_running_loop().create_task(self._run_on_loop(future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return future
        try:
            self._backend.submit(batch)
        except BaseException:
            self._forget(key)
            raise
        return future

    def _forget(self, key: int) -> PoolFuture[Any] | None:
        """The Future of ``key`` is settled (or never will be): nobody waits for it now."""
        with self._lock:
            future = self._futures.pop(key, None)
            self._sent.pop(key, None)
            if future is not None:
                keys = future.owner._keys
                keys.discard(key)
                if not keys or not self._futures:
                    self._idle.notify_all()
        return future

    def _claim(self, future: PoolFuture[Any]) -> bool | None:
        """Take ``future``'s call to run it: True; False if it was cancelled; None if taken.

        A call is claimed once: by the worker that takes its batch, by a worker
        that waits for it (``before_wait``), or by ``shutdown`` cancelling it.
        """
        with self._lock:
            if future.claimed:
                return None
            future.claimed = True
            # (Under the lock: on Dask the one that finds it claimed settles it, only
            # once it runs. This runs no callback: a cancelled one's ran at cancel().)
            return future.set_running_or_notify_cancel()

    def before_wait(self, future: PoolFuture[Any], timeout: float | None) -> None:
        """A wait on ``future`` begins: from one of the pool's own workers it must not hang."""
        if future.done() or not self._backend.inside():
            return
        if self._async:
            raise RuntimeError(
                "a Future of the pool was waited for on the pool's own event loop, which "
                "runs its call: the wait would block it forever. Await it instead: "
                "`await asyncio.wrap_future(future)`"
            )
        if self._processes:
            raise RuntimeError(
                "a Future of a process pool was waited for in a callback of the pool (its "
                "Futures' done callbacks run on the thread that reads the worker processes' "
                "results), which the wait would block forever: wait for it elsewhere, or "
                "chain it with add_done_callback"
            )
        if timeout is None and self._free_workers is not None:
            self._run_here(future)  # (if no worker began it; else wait as usual)

    def _run_here(self, future: PoolFuture[Any]) -> None:
        """Make ``future``'s call in this thread, unless it was claimed (or cancelled) already.

        Its batch, if queued, stays queued: the worker that takes it finds it
        claimed and gives back ``TAKEN``.
        """
        claimed = self._claim(future)
        if claimed is None:
            return  # a worker runs it (or ran it): wait for it as usual
        outcome = make_call(future) if claimed else None
        self._forget(future.key)
        if outcome is not None:
            settle(future, *outcome)

    async def _run_on_loop(self, future: PoolFuture[Any]) -> None:
        """(asyncio) Await ``future``'s call in a task of its own, and settle it."""
        try:
            outcome = await call_on_loop((future.key, future))
        finally:
            self._forget(future.key)
        if outcome is not None and not future.done():
            settle(future, *outcome)

    def _leaving(self, work: object) -> bool:
        """(processes, under the lanes' lock) A worker process is sent a call: it runs now.

        False for a call cancelled while it waited: dropped unsent.
        """
        batch = cast("tuple[Batch, list[int]]", work)[0]
        key = batch.items[0][0]
        with self._lock:
            future = self._futures.get(key)
        if future is None:  # cancelled by shutdown(cancel_futures=True) meanwhile
            return False
        if future.running():  # sent again: the worker it went to died before it began
            return True
        claimed = self._claim(future)
        if claimed:
            return True
        if claimed is False:  # (None: claimed by shutdown, which forgets it)
            self._forget(key)
        return False

    def _settle(self, batch: Batch) -> None:
        """A call came back (or failed to run): settle its Future."""
        if batch.values and batch.values[0] is TAKEN:
            return  # its waiter runs it, and settles it
        future = self._forget(batch.items[0][0])
        if future is None or future.done():
            return
        if self.withdraws and self._claim(future) is False:
            return  # (Dask: never so, as a cancelled call's batch was taken back; None:
            # a cancel found it begun and claimed it, running)
        error = batch.errors.get(0) if batch.errors else None
        if error is not None:  # the call could not even be made (or not sent back)
            if isinstance(error, Failure) and error.exception is not None:
                error = error.exception  # (caught by an asyncio worker)
            if not isinstance(error, BaseException):
                text = f"{error.error_type}: {error.message}" if error.message else error.error_type
                error = RuntimeError(text)
            settle(future, False, error)
            return
        outcome = batch.values[0]
        if outcome is None:  # cancelled before it started
            return
        if self._processes:
            if not future.running() and not future.set_running_or_notify_cancel():
                return  # (cancelled meanwhile)
            try:
                outcome = unpickled_outcome(outcome)
            except Exception as exc:  # e.g. of a class this process cannot import
                settle(
                    future,
                    False,
                    RuntimeError(f"what the call gave could not be read back here: {exc!r}"),
                )
                return
        settle(future, *outcome)
