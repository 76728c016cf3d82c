"""The front doors: :func:`run` and :func:`map`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ._backends import create_backend
from ._engine import Engine
from ._exceptions import InputError, JournalError
from ._options import Options
from ._progress import progress_wanted
from ._report import Report
from ._stream import Outcomes

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._options import RunOptions

__all__ = ["map", "run"]

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

    >>> import manyhands
    >>> [out.value for out in manyhands.map(str.upper, ["a", "b"], ordered=True)]
    ['A', 'B']
    """
    return Outcomes(_engine("map", fn, items, options))


def _engine(caller: str, fn: Any, items: Any, options: Any) -> Engine:
    if not callable(fn):
        raise TypeError(f"fn must be callable (a function taking one item), got {fn!r}")
    opts = Options.from_kwargs(caller, options)
    try:
        iterator = iter(items)
    except TypeError:
        raise TypeError(
            "items must be an iterable (a list, a generator, an open file...), "
            f"got {type(items).__qualname__}"
        ) from None
    total = opts.total
    if total is None and progress_wanted(opts.progress):
        total = _length(items)
    journal = None
    if opts.journal is not None:
        from ._journal import Journal

        journal = Journal(
            opts.journal,
            fn,
            key=opts.key,
            retry_failed=opts.retry_failed,
            store_results=opts.store_results,
            durability=opts.durability,
            changed_items=opts.changed_items,
            options=opts.recorded(),
        )
    backend = create_backend(opts.backend, opts.workers, timed=opts.timeout is not None)
    return Engine(fn, iterator, opts, backend, total, journal)


def _length(items: Any) -> int | None:
    """``len(items)`` for a sized collection; None for an iterator or on any error."""
    if iter(items) is items:  # an iterator: never consumed to count it
        return None
    try:
        return len(items)
    except Exception:  # unsized, or a broken __len__: no ETA, nothing else lost
        return None
