"""How a Pool's Executor face ends its calls: shutdown, cancel, and the interpreter's exit.

A waiting ``shutdown`` of a Pool's calls (or of one executor's) waits for
them to settle, and is refused where it could never end (from one of its own
calls, in a done callback run by a thread its calls need, on an async pool's
loop); on threads, a waiting worker makes there the calls no worker began.
Cancelling settles the calls no worker began as cancelled; on Dask the
cluster's workers are asked first (``withdraw``). These are the parts of
``PoolCalls`` (:mod:`._executor`) that end calls: a mixin of the one object,
over the state it declares here (``PoolCalls.__init__`` sets it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._backends import Backend
from ._batch import Batch, Task
from ._executor_call import calls_made_here
from ._executor_future import in_callback
from ._signal_waits import wait_sliced

if TYPE_CHECKING:
    from ._executor import PoolExecutor
    from ._executor_future import PoolFuture

__all__ = ["PoolCallsShutdown"]


class PoolCallsShutdown:
    """The calls of a Pool's executors at one priority, as they end (see ``PoolCalls``)."""

    withdraws: bool
    _backend: Backend
    _async: bool
    _free_workers: Callable[[], int] | None
    _task: Task
    _withdraw: Callable[[list[Batch]], list[Batch]] | None
    _sent: dict[int, Batch]
    _withdrawing: threading.RLock
    _lock: threading.Lock
    _futures: dict[int, PoolFuture[Any]]
    _idle: threading.Condition
    _closed: bool
    _exited: bool
    _detached: bool

    # -- what ending the calls asks of PoolCalls ---------------------------

    def _forget(self, key: int) -> PoolFuture[Any] | None:
        """The Future of ``key`` is settled (or never will be): see ``PoolCalls``."""
        raise NotImplementedError

    def _claim(self, future: PoolFuture[Any]) -> bool | None:
        """Take ``future``'s call to run it (see ``PoolCalls``)."""
        raise NotImplementedError

    def _run_here(self, future: PoolFuture[Any]) -> None:
        """Make ``future``'s call in this thread, unless claimed (see ``PoolCalls``)."""
        raise NotImplementedError

    # -- ending them ---------------------------------------------------------

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
            for future in calls_made_here()
        )
