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
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import wait as futures_wait
from concurrent.futures._base import CANCELLED_AND_NOTIFIED
from typing import Any, TypeVar, cast

from ._backends import Backend
from ._batch import Batch, Task
from ._executor_pickles import call_pickled, pickled_call, unpickled_outcome
from ._outcome import Failure
from ._signal_waits import wait_sliced

__all__ = ["PoolCalls", "PoolExecutor", "PoolFuture"]

R = TypeVar("R")
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_TAKEN = object()  # what a worker gives back for a call another worker took first

_keys = itertools.count()
#: The Futures whose calls run in this worker thread, outermost first: a call
#: made inline (at a nested submit, or taken back by a wait) runs on top of the
#: call that waits for it (asyncio: any wait on the pool's loop is refused, see
#: check_not_inside).
_calling: contextvars.ContextVar[tuple[PoolFuture[Any], ...]] = contextvars.ContextVar(
    "manyhands_calling", default=()
)


#: This thread runs the done callbacks of a Future of the pool's (it settles it).
_settling = threading.local()


def _set(future: Future[Any], ok: bool, value: Any) -> None:
    """Settle ``future``; its done callbacks run here, told apart by ``in_callback``."""
    _settling.depth = getattr(_settling, "depth", 0) + 1
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    finally:
        _settling.depth -= 1


def _cancel_running(future: Future[Any]) -> None:
    """Settle a running ``future`` as cancelled (``cancel()`` refuses once it runs).

    As ``set_running_or_notify_cancel`` does for a cancelled one: waiters
    (``concurrent.futures.wait``) see it cancelled, its callbacks run.

    No public API settles a running Future as cancelled (``cancel()`` refuses,
    and ``set_exception(CancelledError())`` leaves ``cancelled()`` False), yet
    asyncio's ``run_coroutine_threadsafe`` does it for a coroutine that ends
    in CancelledError. So this reads the stdlib's Future internals, as
    ``Future.cancel`` itself does: its ``_condition`` (the lock), ``_state``,
    ``_waiters`` (those of ``wait``/``as_completed``) and
    ``_invoke_callbacks``; ``tests/test_pool_faults.py`` checks that they
    still behave so.
    """
    with future._condition:
        if future.done():
            return
        future._state = CANCELLED_AND_NOTIFIED
        for waiter in future._waiters:
            waiter.add_cancelled(future)
        future._condition.notify_all()
    _settling.depth = getattr(_settling, "depth", 0) + 1
    try:
        future._invoke_callbacks()  # type: ignore[attr-defined]
    finally:
        _settling.depth -= 1


def in_callback() -> bool:
    """This thread runs the done callbacks of one of a pool's Futures."""
    return getattr(_settling, "depth", 0) > 0


class PoolFuture(Future[R]):
    """A Future of the pool's: a wait from one of the pool's own workers cannot hang.

    ``result()``/``exception()`` without a timeout, called in one of the
    pool's worker threads on a call no worker has started, run the call
    there (work stealing); on an async pool's event loop they raise
    RuntimeError. Anywhere else, the stdlib's Future.
    """

    __slots__ = ("call", "calls", "claimed", "key", "owner")

    def __init__(self, calls: PoolCalls, owner: PoolExecutor, key: int, call: Call | None) -> None:
        super().__init__()
        self.calls = calls  # the PoolCalls that runs it
        self.owner = owner  # the executor it was submitted to (its shutdown waits for it)
        self.key = key
        self.call = call  # (threads, asyncio) what to call; None once it is made
        self.claimed = False  # a worker (or a waiter) took it: it is run, or found cancelled

    def result(self, timeout: float | None = None) -> R:
        self.calls.before_wait(self, timeout)
        return super().result(self._wait_sliced(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self.calls.before_wait(self, timeout)
        return super().exception(self._wait_sliced(timeout))

    def _wait_sliced(self, timeout: float | None) -> float | None:
        """The main thread waits in slices (Ctrl-C that a worker thread took: see
        _signal_waits); the timeout left for the stdlib's wait: 0 once waited."""
        if self.done() or threading.current_thread() is not threading.main_thread():
            return timeout
        wait_sliced(self._done_within, timeout)
        return 0.0

    def _done_within(self, seconds: float) -> bool:
        return bool(futures_wait((self,), seconds).done)

    def cancel(self) -> bool:
        """Cancel the call unless a worker began it; True if it is cancelled (never made).

        On Dask, the cluster's workers are asked first (a round trip): a call
        a worker began is running from then on, and this returns False.
        """
        if self.calls.withdraws:
            self.calls.withdraw([self])
            return self.cancelled()
        return super().cancel()


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


class PoolCalls:
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
        call = _call_async if is_async else (call_pickled if self._processes else _call)
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

        if not self._async and is_coroutine_function(fn):
            raise TypeError(
                f"{getattr(fn, '__qualname__', 'fn')} is a coroutine function, which this "
                "pool's workers would not await: use manyhands.Pool(backend='async')"
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
        claimed and gives back ``_TAKEN``.
        """
        claimed = self._claim(future)
        if claimed is None:
            return  # a worker runs it (or ran it): wait for it as usual
        outcome = _make(future) if claimed else None
        self._forget(future.key)
        if outcome is not None:
            _set(future, *outcome)

    async def _run_on_loop(self, future: PoolFuture[Any]) -> None:
        """(asyncio) Await ``future``'s call in a task of its own, and settle it."""
        try:
            outcome = await _call_async((future.key, future))
        finally:
            self._forget(future.key)
        if outcome is not None and not future.done():
            _set(future, *outcome)

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
        if batch.values and batch.values[0] is _TAKEN:
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
            _set(future, False, error)
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
                _set(
                    future,
                    False,
                    RuntimeError(f"what the call gave could not be read back here: {exc!r}"),
                )
                return
        _set(future, *outcome)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no new call; ``cancel_futures``: cancel those not started; ``wait``: for the rest.

        Raises:
            RuntimeError: with ``wait=True``, where the wait could never end:
                from one of its own calls, from another of the pool's own
                threads while calls are not settled (a done callback, run by
                a worker or by the thread that reads the worker processes'
                results), or on an async pool's event loop. Nothing is shut
                down then; ``wait=False`` works there.
        """
        if wait:
            self.check_not_inside(None)
        with self._lock:
            self._closed = True
        if cancel_futures:
            self._cancel_queued()
        if wait:
            with self._lock:
                self._wait_settled()
                detach, self._detached = not self._detached, True
            if detach:
                self._backend.detach(self._task)

    def _cancel_queued(self) -> None:
        """Cancel every call not started; those no worker will take are settled here.

        The others (on their way to a worker) are settled by the worker, or
        by ``_leaving``, which find them cancelled. On Dask, those no worker
        began are taken back (``withdraw``).
        """
        if self.withdraws:
            with self._lock:
                pending = list(self._futures.values())
            self.withdraw(pending)
            return
        again = []
        for batch in self._backend.cancel(self._task):  # taken back: no worker will see them
            key = batch.items[0][0]
            with self._lock:
                future = self._futures.get(key)
            if future is None:
                continue
            if future.cancel():
                # (so that wait() sees it cancelled; None: a waiter claimed it first)
                if self._claim(future) is not None:
                    self._forget(key)
            else:  # started: sent to a worker process that died before it began it, or
                # taken back by a waiting worker (the worker that takes it skips it)
                again.append(batch)
        for batch in again:
            self._backend.submit(batch)
        with self._lock:
            pending = list(self._futures.values())
        for future in pending:
            future.cancel()  # (False for a call already running)

    def finish_at_exit(self) -> None:
        """(The interpreter exits) make every call submitted, then accept no new one.

        New calls are accepted while the wait lasts (a call may submit another),
        and refused from the moment none is left, under the same lock: a call
        submitted later (by a thread still running) would never be made, as the
        workers stop next, so it is refused as the stdlib's executors do.
        """
        with self._lock:
            self._wait_settled()
            self._exited = True

    def _wait_settled(self) -> None:
        """(Under the lock) wait until every call is settled, in slices (see ``_signal_waits``)."""
        wait_sliced(lambda seconds: self._idle.wait_for(lambda: not self._futures, seconds), None)

    def take_back(self, owner: PoolExecutor) -> None:
        """(Threads, in one of the pool's workers) make here ``owner``'s calls no worker began.

        So that its shutdown, waiting there (in a done callback, or in a
        call of the pool's that used an executor), waits only for calls that
        run: never for a worker that may be this very thread.
        """
        if self._free_workers is None or not self._backend.inside():
            return
        with self._lock:
            pending = [self._futures[key] for key in owner._keys if key in self._futures]
        for future in pending:
            self._run_here(future)  # (claimed already: a worker runs it)

    def cancel_of(self, owner: PoolExecutor) -> None:
        """Cancel the calls of ``owner`` no worker began (those of other executors go on).

        Their batches stay queued: the worker (or ``_leaving``) that takes one
        finds it claimed, and skips it. On Dask, those no worker began are
        taken back (``withdraw``: each its own batch, the other executors'
        calls go on).
        """
        with self._lock:
            pending = [self._futures[key] for key in owner._keys if key in self._futures]
        if self.withdraws:
            self.withdraw(pending)
            return
        for future in pending:
            if future.cancel() and self._claim(future) is not None:
                self._forget(future.key)  # (None: a worker claimed it first, and forgets it)

    def withdraw(self, futures: list[PoolFuture[Any]]) -> None:
        """(Dask) Cancel those of ``futures`` whose calls no worker began; the others run on.

        The cluster is asked once for all of them (``DaskBackend.withdraw``):
        a call taken back is never made, and its Future is cancelled; one a
        worker began (or that came back meanwhile) is running from now on, and
        settles with what it gives. One at a time (a cancel in a done
        callback of the Futures it cancels comes in): two never decide a call apart.
        """
        assert self._withdraw is not None
        with self._withdrawing:
            with self._lock:
                sent = [
                    (future, self._sent[future.key])
                    for future in futures
                    if not future.claimed and future.key in self._sent
                ]
            batches = [batch for _, batch in sent]
            taken = {id(batch) for batch in self._withdraw(batches)} if sent else set()
            cancelled = [future for future, batch in sent if id(batch) in taken]
            with self._lock:
                for future in cancelled:
                    future.claimed = True  # (before any callback runs: see below)
            for future in futures:
                if not future.claimed:
                    self._claim(future)  # begun: running from now on
            for future in cancelled:  # (their callbacks may cancel others: claimed, these
                Future.cancel(future)  # are left alone by a withdraw there)
                future.set_running_or_notify_cancel()
                self._forget(future.key)

    def check_not_inside(self, owner: PoolExecutor | None) -> None:
        """Refuse a waiting shutdown (of ``owner``, or None: every call) that could never end."""
        if self._async and self._backend.inside():
            where = "on the pool's event loop, which its calls need"
        elif self._backend.inside():
            # One of the pool's own threads (a worker, the thread that reads the worker
            # processes' results, where done callbacks run): a call of these may
            # need it to end. Nothing left to wait for: nothing to refuse.
            with self._lock:
                if not (self._futures if owner is None else owner._keys):
                    return
            if self._calls_here(owner):
                where = "from one of its own calls"
            elif self._free_workers is not None and owner is not None:
                return  # (threads: the wait makes here the calls no worker began)
            else:
                where = (
                    "in a done callback of one of the pool's Futures (run by the pool's "
                    "thread that settled it)"
                    if in_callback()
                    else "in one of the pool's own threads (a call of the pool's)"
                ) + ", while calls of this executor that may need that thread have not ended"
        else:
            # (the calls of this thread, if one is of these: a worker's, or one run
            # inline at its submit, which is in no list of these calls)
            if not self._calls_here(owner):
                return
            where = "from one of its own calls"
        raise RuntimeError(
            f"executor.shutdown() was called {where}, and would wait forever: "
            "use shutdown(wait=False) there"
        )

    def _calls_here(self, owner: PoolExecutor | None) -> bool:
        """One of the calls this thread runs (any of its stack) is ``owner``'s (None: any of these).

        Not only the innermost: a call of ``owner``'s that waits for a nested
        call made here (inline) ends only after it, up this same stack.
        """
        return any(
            future.calls is self and (owner is None or future.owner is owner)
            for future in _calling.get()
        )


def calling_a_call() -> bool:
    """This thread is in a call submitted to a pool (``pool.submit``, an executor's)."""
    return bool(_calling.get())


def _call(item: tuple[int, PoolFuture[Any]]) -> Any:
    """In a worker thread: make the call unless its Future was cancelled (or taken)."""
    future = item[1]
    claimed = future.calls._claim(future)
    if claimed is None:
        return _TAKEN
    return _make(future) if claimed else None


def _make(future: PoolFuture[Any]) -> tuple[bool, Any]:
    """Make ``future``'s call here: ``(True, value)`` or ``(False, exception)``."""
    call, future.call = future.call, None
    assert call is not None
    fn, args, kwargs = call
    calling = _calling.set((*_calling.get(), future))
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc
    finally:
        _calling.reset(calling)


async def _call_async(item: tuple[int, PoolFuture[Any]]) -> Any:
    """On the pool's event loop: await the call unless its Future was cancelled."""
    future = item[1]
    if not future.calls._claim(future):
        return None
    call, future.call = future.call, None
    assert call is not None
    fn, args, kwargs = call
    try:
        call = fn(*args, **kwargs)
        # (Checked on the value: a lambda or a decorator may well return a coroutine.)
        if not inspect.isawaitable(call):
            raise TypeError(
                "a Pool of backend='async' awaits what it is given, and "
                f"{getattr(fn, '__qualname__', 'fn')} returned {type(call).__qualname__}: "
                "submit a coroutine function, or a regular one to a pool of threads"
            )
        return True, await call
    except asyncio.CancelledError:  # the pool stops, or the call was: its Future is
        _cancel_running(future)  # cancelled, as asyncio.run_coroutine_threadsafe's is
        raise
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc
