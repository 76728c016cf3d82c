"""The front doors: :func:`run`, :func:`map`, :func:`amap` and :func:`arun`.

Each takes ``fn``, ``items`` and keyword options. ``*more_items`` is there
only to catch ``map(fn, xs, ys)`` with a message that says to zip them (type
checkers flag it too); the signature shown by ``help()`` lists every option
instead (:func:`~manyhands._option_signatures.lists_options`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._backends import Backend, backend_kind, create_backend
from ._checks import check_fn, check_items, check_report_only, is_coroutine_function
from ._exceptions import ManyhandsError, ended_early
from ._option_checks import process_options_refused
from ._option_signatures import lists_options
from ._options import Options
from ._progress import progress_wanted
from ._report import Report
from ._run import Run
from ._stream import AsyncOutcomes, Outcomes

if TYPE_CHECKING:
    from typing_extensions import Never, Unpack

    from ._journal import Journal
    from ._pool import Pool
    from ._run_options import RunOptions

__all__ = [
    "POOL_OPTIONS",
    "amap",
    "arun",
    "arun_to_end",
    "is_coroutine_function",
    "map",
    "open_run",
    "run",
    "run_to_end",
]

T = TypeVar("T")
R = TypeVar("R")


@lists_options(leave_out=("ordered",))
def run(
    fn: Callable[[T], R],
    items: Iterable[T],
    *more_items: Never,
    **options: Unpack[RunOptions],
) -> Report:
    """Call ``fn`` on every item, many at a time; return a :class:`Report`.

    Blocks until every item has an outcome. An item whose call raises is
    recorded as a failure and the run goes on: ``run`` never raises because
    of an item. Memory stays bounded by the in-flight window, whatever the
    length of ``items`` (an endless generator is fine, and never ``len()``-ed).

    Args:
        fn: called as ``fn(item)`` in a worker thread.
        items: any iterable, read lazily in the calling thread.
        **options: see :class:`manyhands.RunOptions` (``workers``,
            ``retry``, ``rate``, ``stop_after_failures``, ``progress``...).
            ``ordered=True`` is refused: ``run`` yields no outcomes.

    Returns:
        The Report: counts, elapsed time, latency, failures by type.

    Raises:
        TypeError, ValueError: at the call, for an invalid argument or option
            (``fn`` that cannot take one item, two iterables...).
        JournalError: when the journal cannot be used, before any item runs.
        TypeError: when ``fn`` returned a coroutine (it calls an async
            function without awaiting it): the run stops at the first one.
        InputError: when iterating ``items`` raised; raised after every item
            read before it has run, with their Report as ``.report``.
        KeyboardInterrupt: on Ctrl-C, after running calls had the grace
            period to finish; no new item is started after it.

    >>> import manyhands
    >>> report = manyhands.run(lambda x: 1 / x, [1, 2, 0, 4])
    >>> report.succeeded, report.failed, report.errors_by_type
    (3, 1, {'builtins.ZeroDivisionError': 1})
    """
    return run_to_end(open_run("run", fn, items, options, more=more_items, report_only=True))


def run_to_end(run: Run) -> Report:
    """Drive ``run`` to its end; its Report (also on the ManyhandsError that ends it early)."""
    delivered = run.delivered
    batches = run.batches()
    try:
        for batch in batches:
            delivered(batch)
    except BaseException as exc:
        # Raised here (a Ctrl-C between two batches, a record that failed) or in
        # the run: it ends now, saying why, not "left early" once it is collected
        # (the traceback keeps this frame, and the run in it, alive).
        run.exit_status = run.exit_status or ended_early(exc)
        batches.close()
        if isinstance(exc, ManyhandsError):  # the run ended early (input, journal, workers)
            exc.report = run.report()
        raise
    return run.report()


@lists_options()
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *more_items: Never,
    **options: Unpack[RunOptions],
) -> Outcomes[T, R]:
    """Call ``fn`` on every item, many at a time, yielding one :class:`Outcome` each.

    Lazy: nothing runs until you iterate. Outcomes come as they complete, or
    in input order with ``ordered=True`` (a bounded reorder buffer: a slow
    item holds back at most the window). Every failure is in the stream, with
    no limit, even beyond the Report's ``keep_failures``.

    Args:
        fn: called as ``fn(item)`` in a worker thread.
        items: any iterable, read lazily by the thread that iterates.
        **options: see :class:`manyhands.RunOptions`.

    Returns:
        An iterator of Outcomes with a ``.report`` of what it delivered so far.

    Raises:
        TypeError, ValueError: at the call, for an invalid argument or option.
        InputError: from the iterator, after the outcome of every item read
            before the iterable raised was yielded.
        KeyboardInterrupt: as for :func:`run`.

    Examples:
        >>> import manyhands
        >>> [out.value for out in manyhands.map(str.upper, ["a", "b"], ordered=True)]
        ['A', 'B']
    """
    return Outcomes(open_run("map", fn, items, options, more=more_items))


@lists_options()
def amap(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    *more_items: Never,
    **options: Unpack[RunOptions],
) -> AsyncOutcomes[T, Any]:
    """The twin of :func:`map` for async code: ``async for`` over the Outcomes.

    ``fn`` is a coroutine function; the calls run as tasks on the caller's
    event loop, at most ``workers`` at once. ``items`` may be a sync or an
    async iterable; either is read lazily, so memory stays bounded by the
    window, and never makes the loop wait (a sync one that is not a
    collection in memory, a generator say, is read in a thread). Leaving
    the loop early (``break``, an exception), ``aclose()`` or the end of an
    ``async with`` block cancels the running calls and leaves no task behind.
    Options are those of :func:`run`. For the Report alone, ``await``
    :func:`arun`.

    >>> import asyncio, manyhands
    >>> async def double(x):
    ...     await asyncio.sleep(0)
    ...     return 2 * x
    >>> async def main():
    ...     return sorted([out.value async for out in manyhands.amap(double, range(5))])
    >>> asyncio.run(main())
    [0, 2, 4, 6, 8]
    """
    return AsyncOutcomes(open_run("amap", fn, items, options, on_loop=True, more=more_items))


@lists_options(leave_out=("ordered",))
async def arun(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    *more_items: Never,
    **options: Unpack[RunOptions],
) -> Report:
    """The twin of :func:`run` for async code: ``await`` it for the :class:`Report`.

    ``fn`` is a coroutine function; the calls run as tasks on the caller's
    event loop, as with :func:`amap`, and ``items`` may be a sync or an async
    iterable. Options and errors are those of :func:`run`: a
    :class:`ManyhandsError` (an :class:`InputError`, a :class:`JournalError`...)
    that ends the run carries the Report of what ran as ``.report``.
    Cancelling the awaiting task cancels the running calls.

    >>> import asyncio, manyhands
    >>> async def half(x):
    ...     await asyncio.sleep(0)
    ...     return 1 / x
    >>> report = asyncio.run(manyhands.arun(half, [1, 2, 0]))
    >>> report.succeeded, report.failed
    (2, 1)
    """
    run = open_run("arun", fn, items, options, on_loop=True, more=more_items, report_only=True)
    return await arun_to_end(run)


async def arun_to_end(run: Run) -> Report:
    """:func:`run_to_end` on the running event loop."""
    delivered = run.delivered
    batches = run.abatches()
    try:
        async with contextlib.aclosing(batches):
            try:
                async for batch in batches:
                    delivered(batch)
            except BaseException as exc:  # (as in run_to_end: before aclosing closes it)
                run.exit_status = run.exit_status or ended_early(exc)
                raise
    except ManyhandsError as exc:  # the run ended early (input, journal, workers)
        exc.report = run.report()
        raise
    return run.report()


def open_run(
    caller: str,
    fn: Any,
    items: Any,
    options: Mapping[str, Any],
    *,
    on_loop: bool = False,
    more: tuple[Any, ...] = (),
    report_only: bool = False,
    pool: Pool | None = None,
    priority: int = 0,
) -> Run:
    """A new run for a front door (or a Pool's method), after every check at the call.

    ``more``: positional arguments after ``items``, refused with a hint.
    ``report_only``: the caller yields no outcomes (``run``, ``arun``).
    Without ``pool``, the run gets a private pool: a backend of its own,
    started and shut down with it.
    """
    refused: tuple[str, ...] = ()
    if pool is not None:
        _refuse_pool_options(caller, options)
        refused = (*POOL_OPTIONS, "ordered") if report_only else POOL_OPTIONS
        options = {**options, "backend": pool.backend}
    opts = Options.from_kwargs(caller, dict(options), refused)
    if report_only:
        check_report_only(caller, opts)
    check_fn(caller, fn)
    is_async = is_coroutine_function(fn)
    kind = backend_kind(opts.backend) if opts.backend is not None else None
    backend_name = _backend_for(caller, is_async, kind, on_loop, pool is not None)
    if pool is None:
        _refuse_process_options(caller, opts, backend_name)
    if backend_name == "async" and not on_loop and _loop_running():
        raise RuntimeError(_blocks_the_loop(caller, pool is not None))
    source, iterator = check_items(caller, items, more, on_loop)
    if opts.input_thread is not None and source is not None:
        raise ValueError(
            f"input_thread= applies to a sync iterable; items is an async iterable, which "
            f"{caller}() reads in a task on the event loop: leave input_thread out"
        )
    if opts.input_thread and not on_loop:
        from ._thread_feed import ThreadFeed

        iterator = iterator if isinstance(iterator, ThreadFeed) else ThreadFeed(iterator)
    total = opts.total
    if total is None and source is None and progress_wanted(opts.progress):
        total = _length(items)
    if pool is not None:
        backend, owns = pool.backend_for_run(on_loop)
        workers = pool.workers
    else:
        if opts.backend == "auto" and backend_name == "threads" and opts.initializer:
            from ._auto import initialize_here

            initialize_here(opts.initializer, opts.initargs)  # (its first calls run here)
        backend, workers = _private_backend(backend_name, opts, options, on_loop)
        owns = True
    return Run(
        fn,
        iterator,
        opts,
        backend,
        workers=workers,
        owns_backend=owns,
        total=total,
        open_journal=_journal_opener(fn, opts),
        consumer=not report_only,
        priority=priority,
        async_source=source,
        auto=opts.backend == "auto"
        and (backend_name == "threads" if pool is None else not owns),  # (not inline)
        hooks=pool,
    )


def _private_backend(
    name: str, opts: Options, given: Mapping[str, Any], on_loop: bool
) -> tuple[Backend, int]:
    """A backend for one run (``manyhands.run``, ``map``, ``amap``), and its workers."""
    workers: int | None = opts.workers
    processes = None
    if name == "dask" and "workers" not in given:
        workers = None  # the cluster's threads
    if name == "processes":
        if "workers" not in given:  # CPU-bound: one worker per CPU
            workers = os.cpu_count() or 1
        processes = {
            "start_method": opts.start_method,
            "initializer": opts.initializer,
            "initargs": opts.initargs,
            "start_timeout": opts.start_timeout,
        }
    backend = create_backend(
        name,
        workers,
        timeout=opts.timeout,
        own_loop=not on_loop,
        processes=processes,
        given=opts.backend,
    )
    return backend, getattr(backend, "workers", workers or opts.workers)


def _blocks_the_loop(caller: str, pooled: bool) -> str:
    """Why a blocking run of a coroutine function was refused on a running loop, and what instead.

    >>> print(_blocks_the_loop("pool.run", True))  # doctest: +ELLIPSIS
    pool.run() with a coroutine function ... use `async for outcome in pool.amap(fn, items)` ...
    """
    if pooled:  # (manyhands.arun/amap would run on workers of their own, outside the pool)
        name = caller
        instead = "`async for outcome in pool.amap(fn, items)` (on the pool's workers)"
    else:
        name = f"manyhands.{caller}"
        instead = (
            "`report = await manyhands.arun(fn, items)`, or "
            "`async for outcome in manyhands.amap(fn, items)`"
        )
    return (
        f"{name}() with a coroutine function was called from a running event loop, which "
        f"it would block. In async code use {instead}."
    )


#: Options that belong to a Pool: its workers serve every run.
POOL_OPTIONS = ("workers", "backend", "start_method", "initializer", "initargs", "start_timeout")


def _refuse_pool_options(caller: str, given: Mapping[str, Any]) -> None:
    for name in (*POOL_OPTIONS, "spare"):
        if name in given:
            elsewhere = (
                ""  # (spare= is the Pool's alone: a run of its own has no spare workers)
                if name == "spare"
                else f", or call manyhands.{caller.rsplit('.', maxsplit=1)[-1]}() for a "
                "run with workers of its own"
            )
            raise TypeError(
                f"{caller}() got {name}=, which belongs to the pool: its workers serve "
                f"every run. Pass it to manyhands.Pool({name}=...){elsewhere}"
            )


def _refuse_process_options(caller: str, opts: Options, backend_name: str) -> None:
    """Refuse worker-process options on a run that starts no worker process.

    Left unchecked, ``initializer=`` on threads runs nothing, and every call
    then fails on what it should have set up.
    """
    if backend_name == "processes" or (opts.backend == "auto" and backend_name == "threads"):
        return
    given = opts.process_options_given()
    if given:
        raise ValueError(process_options_refused(given, backend_name, caller))


def _journal_opener(fn: Any, opts: Options) -> Callable[[], Journal] | None:
    if opts.journal is None:
        return None
    path = opts.journal

    def open_journal() -> Journal:
        from ._journal import Journal

        return Journal(
            path,
            fn,
            key=opts.key,
            retry_failed=opts.retry_failed,
            store_results=opts.store_results,
            durability=opts.durability,
            changed_items=opts.changed_items,
            options=opts.recorded(),
        )

    return open_journal


def _backend_for(
    caller: str, is_async: bool, asked: str | None, on_loop: bool, pooled: bool = False
) -> str:
    """The backend a run uses: as asked, else ``async`` for coroutine functions."""
    if pooled:  # a Pool's workers: a run's function must be of their kind
        if is_async != (asked == "async"):
            kind = "a coroutine function" if is_async else "a regular function"
            raise TypeError(
                f"{caller}() got {kind}, which a pool of backend={asked!r} cannot run: "
                "coroutine functions need manyhands.Pool(backend='async'), regular "
                "functions a pool of threads or processes"
            )
        return str(asked)
    if on_loop and not is_async:
        raise TypeError(
            f"{caller}() needs a coroutine function (async def); for a regular function "
            "use manyhands.run() or manyhands.map(), or, from async code, "
            + (
                "the amap() of a pool of threads (`async with manyhands.Pool() as pool:` "
                "then `async for out in pool.amap(fn, items)`), which calls it in the "
                "pool's threads"
                if caller == "amap"
                else "`report = await asyncio.to_thread(manyhands.run, fn, items)`"
            )
        )
    if asked is None or asked == "auto":  # (auto: threads, then measured; see _auto)
        return "async" if is_async else "threads"
    if asked == "async" and not is_async:
        raise TypeError(
            "backend='async' needs a coroutine function (async def); a regular function "
            "would block the event loop: use backend='threads'"
        )
    if asked != "async" and is_async:
        raise TypeError(
            f"fn is a coroutine function, which backend={asked!r} cannot await; leave "
            "backend unset (or pass backend='async')"
        )
    return asked


def _loop_running() -> bool:
    asyncio = sys.modules.get("asyncio")  # not imported: no loop can be running
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _length(items: Any) -> int | None:
    """``len(items)`` for a sized collection; None for an iterator or on any error."""
    if iter(items) is items:  # an iterator: never consumed to count it
        return None
    try:
        return len(items)
    except Exception:  # unsized, or a broken __len__: no ETA, nothing else lost
        return None
