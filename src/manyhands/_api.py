"""The front doors: :func:`run` and :func:`map`."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ._backends import create_backend
from ._engine import Engine
from ._exceptions import InputError, JournalError
from ._options import Options
from ._progress import progress_wanted
from ._report import Report
from ._stream import AsyncOutcomes, Outcomes

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._journal import Journal
    from ._options import RunOptions

__all__ = ["amap", "is_coroutine_function", "map", "run"]

T = TypeVar("T")
R = TypeVar("R")


def run(fn: Callable[[T], R], items: Iterable[T], **options: Unpack[RunOptions]) -> Report:
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

    Returns:
        The Report: counts, elapsed time, latency, failures by type.

    Raises:
        TypeError, ValueError: at the call, for an invalid argument or option.
        InputError: when iterating ``items`` raised; raised after every item
            read before it has run, with their Report as ``.report``.
        KeyboardInterrupt: on Ctrl-C, after running calls had the grace
            period to finish; no new item is started after it.

    >>> import manyhands
    >>> report = manyhands.run(lambda x: 1 / x, [1, 2, 0, 4])
    >>> report.succeeded, report.failed, report.errors_by_type
    (3, 1, {'builtins.ZeroDivisionError': 1})
    """
    engine = _engine("run", fn, items, options)
    try:
        for _ in engine.batches():
            pass
    except (InputError, JournalError) as exc:
        exc.report = engine.report()
        raise
    return engine.report()


def map(fn: Callable[[T], R], items: Iterable[T], **options: Unpack[RunOptions]) -> Outcomes[T, R]:
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
    return Outcomes(_engine("map", fn, items, options))


def amap(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    **options: Unpack[RunOptions],
) -> AsyncOutcomes[T, Any]:
    """The twin of :func:`map` for async code: ``async for`` over the Outcomes.

    ``fn`` is a coroutine function; the calls run as tasks on the caller's
    event loop, at most ``workers`` at once. ``items`` may be a sync or an
    async iterable; either is read lazily, so memory stays bounded by the
    window. Leaving the loop early (``break``, an exception), ``aclose()`` or
    the end of an ``async with`` block cancels the running calls and leaves
    no task behind. Options are those of :func:`run`.

    >>> import asyncio, manyhands
    >>> async def double(x):
    ...     await asyncio.sleep(0)
    ...     return 2 * x
    >>> async def main():
    ...     return sorted([out.value async for out in manyhands.amap(double, range(5))])
    >>> asyncio.run(main())
    [0, 2, 4, 6, 8]
    """
    return AsyncOutcomes(_engine("amap", fn, items, options, on_loop=True))


def _engine(caller: str, fn: Any, items: Any, options: Any, on_loop: bool = False) -> Engine:
    if not callable(fn):
        raise TypeError(f"fn must be callable (a function taking one item), got {fn!r}")
    opts = Options.from_kwargs(caller, options)
    backend_name = _backend_for(caller, fn, opts.backend, on_loop)
    if backend_name == "async" and not on_loop and _loop_running():
        raise RuntimeError(
            f"manyhands.{caller}() with a coroutine function was called from a running "
            "event loop, which it would block. In async code use "
            "`async for outcome in manyhands.amap(fn, items)` instead."
        )
    source = None
    if on_loop and hasattr(items, "__aiter__"):
        source, iterator = items, iter(())
    else:
        try:
            iterator = iter(items)
        except TypeError:
            accepted = "an iterable or an async iterable" if on_loop else "an iterable"
            raise TypeError(
                f"items must be {accepted} (a list, a generator, an open file...), "
                f"got {type(items).__qualname__}"
            ) from None
    total = opts.total
    if total is None and source is None and progress_wanted(opts.progress):
        total = _length(items)
    processes = None
    if backend_name == "processes":
        if "workers" not in options:  # CPU-bound: one worker per CPU
            opts = dataclasses.replace(opts, workers=os.cpu_count() or 1)
        processes = {
            "start_method": opts.start_method,
            "initializer": opts.initializer,
            "initargs": opts.initargs,
        }
    backend = create_backend(
        backend_name, opts.workers, opts.timeout, own_loop=not on_loop, processes=processes
    )
    engine = Engine(fn, iterator, opts, backend, total, _journal_opener(fn, opts))
    engine.async_source = source
    return engine


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


def _backend_for(caller: str, fn: Any, asked: str | None, on_loop: bool) -> str:
    """The backend a run uses: as asked, else ``async`` for coroutine functions."""
    is_async = is_coroutine_function(fn)
    if on_loop and not is_async:
        raise TypeError(
            f"{caller}() needs a coroutine function (async def); for a regular function "
            "use manyhands.run() or manyhands.map()"
        )
    if asked is None:
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


def is_coroutine_function(fn: Any) -> bool:
    """Whether ``fn`` (a function, a partial, or an object with ``async def __call__``) is async."""
    import inspect  # not at import time: it is a heavy module

    if inspect.iscoroutinefunction(fn):
        return True
    return inspect.iscoroutinefunction(fn.__call__)  # an object with `async def __call__`


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
