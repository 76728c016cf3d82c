"""The keyword options of the front doors, for type checkers: :class:`RunOptions`.

A module of its own, imported when ``manyhands.RunOptions`` is first asked for
(``import manyhands`` does not need it): a ``TypedDict`` of string annotations
makes ``typing`` compile each of them when the class is created, about 1 ms.
Type checkers read it through ``Unpack[RunOptions]`` in the signatures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal, TypedDict

from ._retry import ErrorMatcher, Retry

__all__ = ["RunOptions"]


class RunOptions(TypedDict, total=False):
    """The keyword options of :func:`manyhands.run`, :func:`manyhands.map`,
    :func:`manyhands.amap` and :func:`manyhands.arun`, with their defaults.

    workers: how many calls run at once (default 32; threads accept thousands;
        with ``backend="processes"``, the number of CPUs).
    backend: where calls run: ``"threads"``, ``"async"`` (tasks on an event
        loop) for a coroutine function, ``"processes"`` for CPU-bound work
        (workers default to the number of CPUs), or ``"auto"``: threads, until
        the first calls are measured; if they are CPU-bound (and the machine
        has cores to spare), the rest of the run moves to processes, and the
        Report says why. ``"dask"``: batches as tasks on a Dask cluster (a
        LocalCluster of one process per CPU, started for the run), or give
        the cluster: a scheduler address (``"tcp://host:8786"``) or a
        ``distributed.Client``; any ``concurrent.futures.Executor`` is accepted
        too. Default: picked from ``fn`` (threads or async).
    start_method: with processes: ``"forkserver"`` (default where it exists),
        ``"spawn"`` or ``"fork"``.
    initializer, initargs: with processes only (refused on threads and async,
        as are ``start_method`` and ``start_timeout``): called as ``initializer(*initargs)``
        once in each worker process before any item (a DB connection, a
        model); if it raises, the run fails with WorkerInitError before any
        item runs.
    start_timeout: with processes: seconds a worker process may take to
        start, its initializer included (default ``None``: 60); one that does
        not report ready by then is killed.
    ordered: ``map``/``amap`` yield outcomes in input order (default False: as
        completed). ``run``/``arun`` yield nothing, so they refuse ``ordered=True``.
    batch_size: items sent to a worker at once; ``None`` (default) adapts it to
        the measured time per item, so tiny tasks are batched and slow ones are not.
    window: most items admitted but not yet delivered; bounds memory
        (default: ``max(16384, 2 * workers)``).
    keep_failures: how many Failures the Report keeps in full (default 1000);
        all are counted.
    grace: seconds that running calls get to finish when a run stops early
        (break, error, Ctrl-C) before their threads are abandoned (default 2.0).
        ``async def`` calls are cancelled at once; one that goes on all the
        same gets the grace period, then is left running on the event loop.
    retry: a :class:`manyhands.Retry` policy, or a number of retries per item
        with the default policy (default None: no retry). The default policy
        retries any Exception but programming errors (TypeError,
        AttributeError, NameError, SyntaxError, ImportError,
        NotImplementedError), which would fail the same way again.
    rate: most calls started per second across all workers: ``"50/s"``,
        ``"300/min"``, ``"1000/h"`` or a number (default None: no limit).
    stop_after_failures: end the run early once this many items failed for
        good (after their retries).
    stop_after_failure_rate: end the run early once more than this share of
        the last 100 items with a final outcome failed (a float in [0, 1), or
        a pair ``(share, last_n)``). Stopping reads no more items, lets
        running calls finish, and retries nothing more: an item that failed
        with retries left ends not run (the journal leaves it for a resume);
        the Report's ``stopped`` says why.
    timeout: seconds an item's call may run (each attempt); past it the item
        fails with ``"manyhands.Timeout"`` and its worker is freed. Python
        cannot stop a thread: the call goes on in an abandoned thread, which a
        new one replaces (at most ``workers`` of them at once; the Report
        counts them). Past that a call holds its worker, and once every worker
        is held the items left fail at once (``ran`` False: not started).
        Items then travel one per batch. An ``async def`` call is
        cancelled instead; its item fails at the deadline even if it catches
        the cancellation and goes on (then it is left running on the event
        loop, and counted too). Default None: no limit.
    throttle_on: which failures also mean "slow down" for the adaptive
        slowdown (an exception class, a tuple of them, or a predicate), besides
        ``RetryAfter`` and any exception with a ``retry_after`` attribute,
        which always do.
    progress: show live progress on stderr: done, failed, retrying, in
        flight, items/s, latency p50/p95 and an ETA when the total is known
        (default None: when stderr is a terminal, or in a notebook). It is
        redrawn twice a second by a thread of its own, never per item.
    total: how many items there are, for the progress ETA (default: ``len()``
        of a sized collection; an iterator is never consumed to count it).
    journal: path of an SQLite file that records every item's final outcome,
        so that rerunning the same call skips what is already done (default
        None: no journal). See the docs: guide/journal.md.
    key: with a journal, how an item is identified: a callable returning a
        str (or a JSON-like value). Default: the item itself, for str, bytes,
        numbers and JSON-like lists/tuples/dicts of those.
    retry_failed: with a journal, run the items recorded as failed again
        (default False: skip them like the done ones).
    store_results: with a journal, store each value so that a resumed
        ``map`` yields it for skipped items: ``True`` stores JSON (a value
        that is not JSON is not stored, with a JournalWarning; the item is
        still done); ``"pickle"`` stores any picklable value, and resuming
        unpickles it, which runs code from the file: only for journals you
        trust. Default False.
    durability: with a journal: ``"normal"`` (default: survives a crash of the process) or
        ``"full"`` (fsync at every commit: survives a power cut too).
    changed_items: with a journal and ``key=``, what to do with an item whose content
        differs from the one recorded under its key: ``"refuse"`` (default:
        stop with JournalError), ``"rerun"`` or ``"skip"``.
    input_thread: ``True``: read ``items`` in a thread of their own (an input
        that blocks: a pipe, a socket, a queue), so that each item is called
        as soon as it comes and the outcomes that finished are delivered (and
        journaled) while the input waits. ``run``/``map`` otherwise read it
        in the thread that consumes the outcomes (default ``None``), which a
        thread-bound input (a sqlite cursor) needs. ``amap``/``arun`` read a
        sync iterable that is not a collection in memory in a thread anyway;
        ``False`` reads it on the event loop instead (a thread-bound one, that
        never blocks).
    """

    workers: int
    backend: str | Any | None
    ordered: bool
    batch_size: int | None
    window: int | None
    keep_failures: int
    grace: float
    retry: Retry | int | None
    rate: str | float | None
    stop_after_failures: int | None
    stop_after_failure_rate: float | tuple[float, int] | None
    throttle_on: ErrorMatcher | None
    timeout: float | None
    start_method: str | None
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    start_timeout: float | None
    progress: bool | None
    total: int | None
    journal: str | os.PathLike[str] | None
    key: Callable[[Any], Any] | None
    retry_failed: bool
    store_results: bool | Literal["pickle"]
    durability: str
    changed_items: str
    input_thread: bool | None
