"""The Pool: workers that outlive a run, shared by any number of concurrent runs.

::

     pool.run(fn_a, ...) ──┐                      ┌─▶ worker ─┐
     pool.map(fn_b, ...) ──┼─▶ lanes ─────────────┼─▶ worker ─┼─▶ each batch back to its run
     pool.submit(fn, ...) ─┘  (priority, then     └─▶ worker ─┘   (settle, retry, deliver,
                               fair share)                          journal, Report)

Each run keeps everything of its own (function, options, retries, journal,
Report) and drives itself from the thread that consumes it; the pool owns
only the workers and chooses which run a free worker serves next (see
:mod:`manyhands._lanes`). ``manyhands.run``/``map``/``amap`` are the same
runs on a private pool of their own.

Here: the Pool's face (what it offers, its options, its end). Its arguments
are checked in :mod:`._pool_options`; what its runs ask of it, and its wait
for them to end, are in :mod:`._pool_runs` (a mixin of the Pool); what must
stop with it, also when it is dropped unclosed or the interpreter exits, in
:mod:`._pool_life`; its Executor face in :mod:`._executor`.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._api import POOL_OPTIONS, open_run, run_to_end
from ._backends import Backend, create_backend
from ._option_signatures import lists_options
from ._pool_life import AtExit, Life, watch_exit
from ._pool_options import check_int, pool_options
from ._pool_runs import PoolRuns
from ._readers import Readers
from ._report import Report
from ._stream import AsyncOutcomes, Outcomes, reader_of

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from typing_extensions import Unpack

    from ._executor import PoolCalls
    from ._run_options import RunOptions

__all__ = ["Pool"]

T = TypeVar("T")
R = TypeVar("R")


class Pool(PoolRuns):
    """Workers shared by several loops, with priorities between them.

    Each ``pool.run``/``pool.map``/``pool.amap`` is a run of its own (its own
    function, options, retries, journal and Report) on the pool's workers.
    Any number of them may run at once, from any threads; one's ``break``,
    Ctrl-C, stop rule or journal never disturbs the others. A free worker
    serves the run with the highest ``priority`` that has work; runs of equal
    priority share the workers' time; a low-priority run is slowed down,
    never stopped (it gets a batch at least once a second). ``pool.submit``
    and :meth:`executor` make the workers usable as a
    ``concurrent.futures.Executor``.

    Args:
        workers: how many calls run at once, across all runs (default 32 for
            threads and async, the number of CPUs for processes).
        backend: ``"threads"`` (default), ``"processes"``, ``"async"``
            (coroutine functions, on an event loop of the pool's own),
            ``"auto"``: threads, and each run that measures CPU-bound calls
            moves to worker processes (one per core) that the pool starts on
            the first such run and shares between them (see ``backend="auto"``
            of :func:`manyhands.run`), or ``"dask"``: a LocalCluster for the
            pool's life (or pass a scheduler's address or a ``distributed.Client``:
            the cluster is shared, and left running).
        spare: threads kept for urgent work (threads only; default 0). A call
            cannot be interrupted, so urgent work waits for the next worker to
            come free, up to one bulk call. With ``spare=N``, work of priority
            above 0 also starts on one of N more threads when every worker is
            busy: it never waits behind the bulk, at the cost of up to N more
            calls at once than ``workers`` while it runs.
        start_method: for processes (and auto): how workers start, as for
            :func:`manyhands.run`.
        initializer: for processes (and auto): called once in each worker, for
            every run it serves (on auto, also once in this process, whose
            threads run calls until a run moves). What it sets up must be reachable from the runs'
            functions through a module (e.g. a global of ``mymodule``): a
            function of ``__main__`` travels by value, with globals of its own.
        initargs: the initializer's arguments.
        start_timeout: for processes (and auto): seconds a worker process may
            take to start, its initializer included (default 60); one that
            does not report ready by then is killed.

    The workers stop at the end of the ``with`` block (``async with`` in async
    code: the event loop goes on while the runs end), or on :meth:`shutdown`.

    >>> import manyhands
    >>> with manyhands.Pool(workers=8) as pool:
    ...     report = pool.run(lambda x: x * 2, range(100))
    ...     urgent = pool.map(str.upper, ["a", "b"], priority=5, ordered=True)
    ...     values = [out.value for out in urgent]
    >>> report.succeeded, values
    (100, ['A', 'B'])
    """

    def __init__(
        self,
        workers: int | None = None,
        backend: str | Any = "threads",
        *,
        spare: int = 0,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        start_timeout: float | None = None,
    ) -> None:
        given = backend
        backend, workers, processes = pool_options(
            given,
            workers,
            spare=spare,
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
            start_timeout=start_timeout,
        )
        if backend == "auto" and initializer is not None:
            from ._auto import initialize_here

            initialize_here(initializer, initargs)  # (the pool's threads run calls here)
        self._name = backend
        self._pid = os.getpid()  # (a forked child has a copy of the pool, not its workers)
        self._backend: Backend = create_backend(
            "threads" if backend == "auto" else backend,
            workers,
            shared=True,
            spare=spare,
            processes=None if backend == "auto" else processes,
            given=given,
        )
        self._workers: int = getattr(self._backend, "workers", None) or workers or 1
        self._processes_options = processes  # auto: the processes CPU-bound runs move to
        self._processes: Backend | None = None
        self._process_count = 0
        self._state = threading.Condition()
        self._active = 0  # runs begun and not ended
        self._closed = False
        self._calls_by_priority: dict[int, PoolCalls] = {}  # the executors' calls, by priority
        self._readers = Readers()  # who reads each pool.map and pool.amap
        self._backend.start()
        # What must stop with the pool, also when it is dropped without being closed
        # (the finalizer holds it, not the pool: nothing of it refers to the pool).
        self._life = life = Life(self._backend, self._pid)
        self._all_calls: list[PoolCalls] = life.calls  # the executors' calls, in the order made
        weakref.finalize(self, life.dropped)
        watch_exit(life)

    # -- what a Pool offers ------------------------------------------------

    @property
    def workers(self) -> int:
        """How many calls the pool runs at once."""
        return self._workers

    @property
    def backend(self) -> str:
        """``"threads"``, ``"processes"``, ``"async"`` or ``"auto"``."""
        return self._name

    @lists_options(leave_out=(*POOL_OPTIONS, "ordered"))
    def run(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        priority: int = 0,
        **options: Unpack[RunOptions],
    ) -> Report:
        """:func:`manyhands.run` on the pool's workers; blocks, returns the Report.

        ``priority``: higher runs first (default 0). The options are those of
        :func:`manyhands.run` but the pool's own (``workers``, ``backend``,
        ``start_method``, ``initializer``, ``initargs``).

        Raises:
            RuntimeError: once the pool is shut down, or the interpreter's exit
                began (a thread still running after the main thread ended).
        """
        run = self._open("pool.run", fn, items, options, priority, report_only=True)
        return run_to_end(run)

    @lists_options(leave_out=POOL_OPTIONS)
    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        priority: int = 0,
        **options: Unpack[RunOptions],
    ) -> Outcomes[T, R]:
        """:func:`manyhands.map` on the pool's workers: an iterator of Outcomes.

        Leaving the ``with`` block of the pool (or ``pool.shutdown()``) from
        the thread that reads it, before its end, stops it as a ``break`` would.

        Raises:
            RuntimeError: as :meth:`run`.
        """
        outcomes: Outcomes[T, R] = Outcomes(self._open("pool.map", fn, items, options, priority))
        self._readers.add(reader_of(outcomes))
        return outcomes

    @lists_options(leave_out=POOL_OPTIONS)
    def amap(
        self,
        fn: Callable[[T], Any],
        items: Iterable[T] | AsyncIterable[T],
        *,
        priority: int = 0,
        **options: Unpack[RunOptions],
    ) -> AsyncOutcomes[T, Any]:
        """:func:`manyhands.amap` on the pool's workers: ``async for`` over the Outcomes.

        The calls run on the pool's workers (its own event loop for
        ``backend="async"``); the Outcomes come to your event loop.
        """
        run = self._open("pool.amap", fn, items, options, priority, on_loop=True)
        outcomes: AsyncOutcomes[T, Any] = AsyncOutcomes(run)
        self._readers.add(reader_of(outcomes))
        return outcomes

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Call ``fn(*args, **kwargs)`` on a worker; a ``concurrent.futures.Future``.

        Stdlib semantics: ``result()``/``exception()``, ``cancel()`` before
        it starts (on processes: before it is sent to a worker process); no
        retries. Same as ``pool.executor().submit(...)``.

        Raises:
            TypeError: on processes, for a call that does not pickle (the
                message names the argument).
            RuntimeError: once the pool is shut down.
        """
        return self._calls(0).shared.submit(fn, *args, **kwargs)

    def executor(self, priority: int = 0) -> Executor:
        """The pool as a ``concurrent.futures.Executor`` (e.g. for ``loop.run_in_executor``).

        Its ``submit`` runs calls on the pool's workers at ``priority``. Each
        call returns an executor of its own: its ``shutdown`` stops only that
        one (its calls finish, or are cancelled with ``cancel_futures=True``),
        not the pool, nor the other executors and ``pool.submit``.
        """
        check_int("priority", priority)
        from ._executor import PoolExecutor

        return PoolExecutor(self._calls(priority), self)

    def _calls(self, priority: int) -> PoolCalls:
        """The calls of the executors at ``priority`` (a task of the workers), made once."""
        with self._state:
            self._check_open()
            calls = self._calls_by_priority.get(priority)
            if calls is None:
                if AtExit.exiting:  # (its calls would never be made: the workers stop next)
                    raise RuntimeError("cannot schedule new futures after interpreter shutdown")
                from ._executor import PoolCalls

                calls = self._calls_by_priority[priority] = PoolCalls(self._backend, priority)
                self._all_calls.append(calls)
            return calls

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers once the runs and calls under way are done.

        No new run or call is accepted after it. ``wait=False`` returns at
        once and lets what is under way finish in the background;
        ``cancel_futures=True`` cancels the submitted calls no worker began.

        A ``pool.map`` that this thread reads and has not read to its end is
        stopped (as a ``break`` would), not waited for: nobody else would
        read it. Runs read by other threads are waited for (one whose reading
        thread ended is stopped once nobody read from it for 5 s).

        Raises:
            RuntimeError: with ``wait=True``, from one of the pool's own calls
                (or while reading a ``pool.map``'s input): it would wait for
                itself. Nothing is shut down then; ``wait=False`` works there.
        """
        if os.getpid() != self._pid:
            return  # a forked copy: none of the pool's workers is in this process
        if wait:
            self._check_can_wait("pool.shutdown()")
        with self._state:
            self._closed = True
            all_calls = list(self._all_calls)
        for calls in all_calls:
            calls.shutdown(wait=False, cancel_futures=cancel_futures)
        if not wait:
            threading.Thread(
                target=self._stop_when_idle, args=(True,), name="manyhands-pool-stop", daemon=True
            ).start()
            return
        self._readers.stop_here()
        self._stop_when_idle()

    def close(self) -> None:
        """``shutdown(wait=True)``."""
        self.shutdown(wait=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Ctrl-C (or SystemExit) on its way out does not wait for the other runs:
        # they go on in the background, and the pool stops once they are done.
        #
        # On an event loop that reads a pool.amap not ended, waiting would block
        # the loop that run needs: the pool stops once it ends (async with waits).
        stopping = isinstance(exc, (KeyboardInterrupt, SystemExit))
        if stopping or self._readers.loop_here():
            self._readers.stop_here()  # (this thread's own maps, as with wait=True)
            stopping = True
        self.shutdown(wait=not stopping, cancel_futures=exc is not None)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``async with``: as ``with``, and the event loop goes on while the runs end.

        The ``pool.amap`` runs this task reads and left unfinished stop first (as
        the ``pool.map`` runs this thread reads do); those of other tasks, and
        of other threads, are waited for.
        """
        import asyncio

        await self._readers.astop_here()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # (as __exit__: no wait)
            self.shutdown(wait=False, cancel_futures=True)
            return
        await asyncio.to_thread(self.shutdown, cancel_futures=exc is not None)

    def __reduce__(self) -> Any:
        # (Pickling is how a value reaches a worker process, where this pool's workers
        # are out of reach: refused with why, rather than a lock's "cannot pickle".)
        raise TypeError(
            "a manyhands.Pool cannot be pickled (sent to a worker process, say): its "
            "workers belong to the process that made it. Call it from this process, or "
            "make a Pool of its own in the worker"
        )

    def __repr__(self) -> str:
        state = "shut down" if self._closed else f"{self._active} runs"
        return f"<manyhands.Pool {self._name}, {self._workers} workers, {state}>"

    # -- inside --------------------------------------------------------------

    def _open(
        self,
        caller: str,
        fn: Any,
        items: Any,
        options: Mapping[str, Any],
        priority: int,
        on_loop: bool = False,
        report_only: bool = False,
    ) -> Any:
        check_int("priority", priority)
        return open_run(
            caller,
            fn,
            items,
            options,
            on_loop=on_loop,
            report_only=report_only,
            pool=self,
            priority=priority,
        )
