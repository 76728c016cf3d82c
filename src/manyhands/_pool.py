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
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._api import POOL_OPTIONS, open_run, run_to_end
from ._backends import Backend, backend_kind, create_backend
from ._options import DEFAULT_WORKERS, check_positive_int, check_start_timeout, lists_options
from ._readers import Readers
from ._report import Report
from ._signal_waits import WAIT_SLICE
from ._stream import AsyncOutcomes, Outcomes, reader_of

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from typing_extensions import Unpack

    from ._executor import PoolCalls
    from ._run_options import RunOptions

__all__ = ["POOL_BACKENDS", "Pool"]

POOL_BACKENDS = ("threads", "processes", "async", "auto", "dask")

T = TypeVar("T")
R = TypeVar("R")


class Pool:
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
        given, backend = backend, backend_kind(backend) or ""
        if backend not in POOL_BACKENDS:
            raise ValueError(
                f"backend={given!r} is not a backend a Pool has; accepted: "
                + ", ".join(repr(name) for name in POOL_BACKENDS)
                + ", a Dask scheduler's address or a distributed.Client"
            )
        if workers is None and backend != "dask":  # (Dask: the cluster's threads)
            workers = (os.cpu_count() or 1) if backend == "processes" else DEFAULT_WORKERS
        if workers is not None:
            check_positive_int("workers", workers, "the number of calls to run at once, e.g. 16")
        check_positive_int("spare", spare, "threads kept for urgent work, e.g. 2", zero=True)
        if spare and backend != "threads":
            raise ValueError("spare= applies to backend='threads' only")
        if initargs and initializer is None:
            raise ValueError(
                "initargs= is passed to initializer=, and none was given: pass "
                "initializer=fn as well (it runs once in each worker process), or leave "
                "initargs out"
            )
        processes = None
        if backend in ("processes", "auto"):
            processes = {
                "start_method": start_method,
                "initializer": initializer,
                "initargs": initargs,
                "start_timeout": start_timeout,
            }
            if start_timeout is not None:
                check_start_timeout(start_timeout)
        elif (
            start_method is not None
            or initializer is not None
            or initargs
            or start_timeout is not None
        ):
            raise ValueError(
                "start_method, initializer, initargs and start_timeout apply to "
                "backend='processes' (or 'auto') only"
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
        self._life = life = _Life(self._backend, self._pid)
        self._all_calls: list[PoolCalls] = life.calls  # the executors' calls, in the order made
        weakref.finalize(self, life.dropped)
        _watch(life)

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
                if _Exit.exiting:  # (its calls would never be made: the workers stop next)
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

    # -- what runs need (see open_run) ---------------------------------------

    def backend_for_run(self, on_loop: bool) -> tuple[Backend, bool]:
        """The backend a new run uses, and whether the run owns it.

        A run started from one of the pool's own workers cannot wait for the
        pool's workers (they may all be waiting the same way): on threads it
        runs inline in that worker; on asyncio, as tasks of its own on the
        pool's loop. Any other run is refused once the interpreter's exit
        began, as a call submitted then is: the workers stop with it.
        """
        with self._state:
            self._check_open()
        if not self._backend.inside():
            if _Exit.exiting:
                raise RuntimeError(
                    "cannot start a run on a manyhands.Pool after interpreter shutdown "
                    "began (the main thread has ended): the pool's workers stop as it "
                    "exits. Start the run before the main thread returns, or join the "
                    "thread that starts it there"
                )
            return self._backend, False
        if self._name == "async":
            return create_backend("async", self._workers, own_loop=not on_loop), True
        from ._backends._inline import InlineBackend

        return InlineBackend(), True

    def processes_for_auto(self) -> tuple[Backend, int] | None:
        """The processes a run on auto moves to: started by the first, shared by all."""
        if self._name != "auto":
            return None
        with self._state:
            self._check_open()
            if self._processes is None:
                cores = os.cpu_count() or 1
                backend = create_backend(
                    "processes", cores, shared=True, processes=self._processes_options
                )
                backend.start()  # (raises if no worker starts: the run stays on threads)
                self._processes = self._life.processes = backend
                self._process_count = cores
            return self._processes, self._process_count

    def run_begins(self) -> None:
        with self._state:
            self._check_open()
            self._active += 1
            self._life.active = self._active

    def run_ends(self) -> None:
        with self._state:
            self._active -= 1
            self._life.active = self._active
            self._state.notify_all()

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

    def _check_open(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this manyhands.Pool was made in process {self._pid}, and this process "
                f"({os.getpid()}) has a copy of it (it was forked, a worker process with "
                "the fork start method, say): the pool's workers are not here. Make a "
                "Pool in this process, or use the pool from the process that made it"
            )
        if self._closed:
            raise RuntimeError("this manyhands.Pool is shut down: it accepts no new run or call")

    def _check_can_wait(self, call: str) -> None:
        """Refuse to wait from where the wait could never end."""
        if self._backend.inside():
            raise RuntimeError(
                f"{call} was called {_where_inside(self._name)}, and would wait for "
                "that thread forever: use shutdown(wait=False) there (the pool stops once "
                "what is under way is done), or shut it down from the thread that made it"
            )
        self._readers.check_can_wait(call)

    def _wait_idle(self) -> None:
        """Wait until no run is under way; a map whose reading thread ended is stopped.

        (In slices, which also look for such maps: a Ctrl-C another thread took
        ends the wait, see ``_signal_waits``.)
        """
        while True:
            self._readers.stop_orphans(time.monotonic())
            with self._state:
                if self._state.wait_for(lambda: not self._active, WAIT_SLICE):
                    return

    def _stop_when_idle(self, background: bool = False) -> None:
        """Wait for the runs and calls under way, then stop the workers.

        Interrupted (Ctrl-C), the wait goes on in a thread of its own, which
        stops the workers once they are done: the pool never stays up for good.
        """
        try:
            self._wait_idle()
            with self._state:
                all_calls = list(self._all_calls)
            for calls in all_calls:
                calls.shutdown(wait=True)
        except BaseException:
            if not background:
                threading.Thread(
                    target=self._stop_when_idle,
                    args=(True,),
                    name="manyhands-pool-stop",
                    daemon=True,
                ).start()
            raise
        self._life.stop_workers()


class _Life:
    """The workers of a Pool, and its executors' calls: what must stop with it.

    A Pool dropped without ``shutdown`` stops them once its submitted calls are
    settled (its finalizer). At interpreter exit, the calls submitted to the
    pools still open are made before the program ends, as the standard
    library's executors do; then the workers of the pools with no run under
    way stop (an async pool's loop, worker processes).
    """

    __slots__ = (
        "__weakref__",
        "_lock",
        "_stopped",
        "active",
        "backend",
        "calls",
        "pid",
        "processes",
    )

    def __init__(self, backend: Backend, pid: int) -> None:
        self.backend = backend
        self.processes: Backend | None = None  # (auto) the processes runs moved to
        self.calls: list[PoolCalls] = []
        self.pid = pid
        self.active = 0  # runs under way (a copy of the pool's count)
        self._lock = threading.Lock()
        self._stopped = False

    def stop_workers(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.backend.shutdown(0.0)
        finally:
            if self.processes is not None:
                self.processes.shutdown(0.0)

    def finish_calls(self) -> None:
        """Make every submitted call, then accept no new one (the interpreter exits)."""
        if self.pid != os.getpid() or self._stopped:
            return
        for calls in list(self.calls):
            calls.finish_at_exit()

    def dropped(self) -> None:
        """(The Pool's finalizer) it was collected, or the interpreter exits, unclosed."""
        if self.pid != os.getpid():  # a forked copy: its workers are the parent's
            quiet = getattr(self.backend, "forget_copied_tasks", None)
            if quiet is not None:
                quiet()
            return
        if self._stopped:
            return
        if _Exit.exiting:  # (threading's exit hook made the submitted calls already)
            # (A run left unread ends as the interpreter exits: its workers stay for
            # it, but an event loop's, which it no longer waits for.)
            if not self.active or self.backend.name == "async":
                self.stop_workers()
            return
        for calls in list(self.calls):
            calls.shutdown(wait=False)
        # (Not here: the collection may run in any thread, one of the pool's own too.)
        threading.Thread(target=self._stop_later, name="manyhands-pool-stop", daemon=True).start()

    def _stop_later(self) -> None:
        for calls in list(self.calls):
            calls.shutdown(wait=True)
        self.stop_workers()


class _Exit:
    """The interpreter's exit, as the pools see it."""

    hooked = False  # the hook is registered (once, by the first Pool)
    exiting = False  # it ran: the submitted calls were made


_lives: weakref.WeakSet[_Life] = weakref.WeakSet()  # the pools of this process, not collected


def _watch(life: _Life) -> None:
    """Register ``life`` for the interpreter's exit (the hook, once)."""
    _lives.add(life)
    if not _Exit.hooked:
        _Exit.hooked = True
        # (before the threads are joined, where the stdlib's executors finish; not at
        # all once the interpreter is exiting already). threading._register_atexit is
        # private, yet the only hook that runs there: atexit runs after the non-daemon
        # threads are joined, too late for a thread that waits for a call; the
        # stdlib's own executors use it. Its test: the calls made at exit
        # (tests/test_pool_faults.py).
        with contextlib.suppress(AttributeError, RuntimeError):
            threading._register_atexit(_at_exit)  # type: ignore[attr-defined]


def _at_exit() -> None:
    """The interpreter exits: the calls submitted to open pools are made first."""
    for life in list(_lives):
        life.finish_calls()
    _Exit.exiting = True


def _where_inside(backend: str) -> str:
    """Which of the pool's own threads this is, for a refusal to wait there."""
    from ._executor_call import calling_a_call
    from ._executor_future import in_callback

    if calling_a_call():
        return "from one of the pool's own calls"
    if in_callback():
        return (
            "in a done callback of one of the pool's Futures (run by the pool's own "
            "thread that settled it)"
        )
    if backend == "async":
        return "on the pool's event loop (in one of its calls, or a callback there)"
    if backend == "processes":
        return "on the thread that reads the pool's worker processes' results (in a callback there)"
    return "from one of the pool's own calls"


def check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (higher runs first), got {value!r}")
