"""The keyword options of ``run``, ``map``, ``amap`` and ``arun``: defaults, and validation.

The options are defined once, as the fields of :class:`Options` (names,
types, defaults). :class:`RunOptions` spells the same names and types for
type checkers and IDEs (a test keeps the two equal), and
:func:`lists_options` gives each front door a signature that lists them all
with their defaults, for ``help()``, ``inspect.signature`` and notebooks.

Every check names the parameter, says what it got and what is accepted, so a
mistake is fixed from the message alone.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, cast

from ._exceptions import JournalError
from ._rate import parse_rate
from ._records import Record
from ._retry import ErrorMatcher, Retry, check_matcher

if TYPE_CHECKING:
    import inspect

__all__ = [
    "BACKENDS",
    "DEFAULT_WORKERS",
    "Options",
    "RunOptions",
    "check_positive_int",
    "lists_options",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Threads by default: most long item lists are network calls, which wait far
#: more than they compute. 32 matches the stdlib's upper bound for IO work.
DEFAULT_WORKERS = 32

#: Names accepted by ``backend=``.
BACKENDS = ("threads", "async", "processes", "auto", "dask")


class RunOptions(TypedDict, total=False):
    """The keyword options of :func:`manyhands.run`, :func:`manyhands.map`,
    :func:`manyhands.amap` and :func:`manyhands.arun`, with their defaults.

    workers: how many calls run at once (default 32; threads accept thousands).
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
    initializer, initargs: with processes: called as ``initializer(*initargs)``
        once in each worker process before any item (a DB connection, a
        model); if it raises, the run fails with WorkerInitError before any
        item runs.
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
        running calls finish, and ends items waiting for a retry with their
        last failure; the Report's ``stopped`` says why.
    timeout: seconds an item's call may run (each attempt); past it the item
        fails with ``"manyhands.Timeout"`` and its worker is freed. Python
        cannot stop a thread: the call goes on in an abandoned thread, which a
        new one replaces (at most ``workers`` of them; the Report counts
        them). Items then travel one per batch. Default None: no limit.
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
    durability: ``"normal"`` (default: survives a crash of the process) or
        ``"full"`` (fsync at every commit: survives a power cut too).
    changed_items: with ``key=``, what to do with an item whose content
        differs from the one recorded under its key: ``"refuse"`` (default:
        stop with JournalError), ``"rerun"`` or ``"skip"``.
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
    progress: bool | None
    total: int | None
    journal: str | os.PathLike[str] | None
    key: Callable[[Any], Any] | None
    retry_failed: bool
    store_results: bool | Literal["pickle"]
    durability: str
    changed_items: str


_set = object.__setattr__


@dataclass(frozen=True, init=False, repr=False, eq=False)  # (see _records)
class Options(Record):
    """Validated options; see :class:`RunOptions` for their meaning."""

    workers: int = DEFAULT_WORKERS
    backend: str | Any | None = None
    ordered: bool = False
    batch_size: int | None = None
    window: int | None = None
    keep_failures: int = 1000
    grace: float = 2.0
    retry: Retry | int | None = None
    rate: str | float | None = None
    stop_after_failures: int | None = None
    stop_after_failure_rate: float | tuple[float, int] | None = None
    throttle_on: ErrorMatcher | None = None
    timeout: float | None = None
    start_method: str | None = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    progress: bool | None = None
    total: int | None = None
    journal: str | os.PathLike[str] | None = None
    key: Callable[[Any], Any] | None = None
    retry_failed: bool = False
    store_results: bool | Literal["pickle"] = False
    durability: str = "normal"
    changed_items: str = "refuse"

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        backend: str | Any | None = None,
        ordered: bool = False,
        batch_size: int | None = None,
        window: int | None = None,
        keep_failures: int = 1000,
        grace: float = 2.0,
        retry: Retry | int | None = None,
        rate: str | float | None = None,
        stop_after_failures: int | None = None,
        stop_after_failure_rate: float | tuple[float, int] | None = None,
        throttle_on: ErrorMatcher | None = None,
        timeout: float | None = None,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        progress: bool | None = None,
        total: int | None = None,
        journal: str | os.PathLike[str] | None = None,
        key: Callable[[Any], Any] | None = None,
        retry_failed: bool = False,
        store_results: bool | Literal["pickle"] = False,
        durability: str = "normal",
        changed_items: str = "refuse",
    ) -> None:
        _set(self, "workers", workers)
        _set(self, "backend", backend)
        _set(self, "ordered", ordered)
        _set(self, "batch_size", batch_size)
        _set(self, "window", window)
        _set(self, "keep_failures", keep_failures)
        _set(self, "grace", grace)
        _set(self, "retry", retry)
        _set(self, "rate", rate)
        _set(self, "stop_after_failures", stop_after_failures)
        _set(self, "stop_after_failure_rate", stop_after_failure_rate)
        _set(self, "throttle_on", throttle_on)
        _set(self, "timeout", timeout)
        _set(self, "start_method", start_method)
        _set(self, "initializer", initializer)
        _set(self, "initargs", initargs)
        _set(self, "progress", progress)
        _set(self, "total", total)
        _set(self, "journal", journal)
        _set(self, "key", key)
        _set(self, "retry_failed", retry_failed)
        _set(self, "store_results", store_results)
        _set(self, "durability", durability)
        _set(self, "changed_items", changed_items)

    @classmethod
    def from_kwargs(cls, caller: str, kwargs: dict[str, Any]) -> Options:
        """Validate user keyword arguments, raising TypeError/ValueError that name them.

        >>> Options.from_kwargs("run", {"workers": 8}).workers
        8
        >>> Options.from_kwargs("run", {"worker": 8})
        Traceback (most recent call last):
        TypeError: run() got an unexpected keyword argument 'worker'; did you mean 'workers'?
        """
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                import difflib  # (only for this message: it slows down `import manyhands`)

                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {sorted(known)}"
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
        options = cls(**kwargs)
        options._validate()
        return options

    def _validate(self) -> None:
        from ._backends import backend_kind

        check_positive_int("workers", self.workers, "the number of calls to run at once, e.g. 16")
        if self.backend is not None and backend_kind(self.backend) not in (*BACKENDS, "executor"):
            raise ValueError(
                f"backend={self.backend!r} is not a known backend; accepted: "
                + ", ".join(repr(name) for name in BACKENDS)
                + ", a Dask scheduler's address ('tcp://host:8786'), a distributed.Client "
                "or a concurrent.futures.Executor"
            )
        if not isinstance(self.ordered, bool):
            raise TypeError(f"ordered must be True or False, got {self.ordered!r}")
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size, "or None to adapt it automatically")
        if self.window is not None:
            check_positive_int("window", self.window, "or None for the default")
        check_positive_int("keep_failures", self.keep_failures, "0 keeps only counts", zero=True)
        _non_negative_float("grace", self.grace)
        Retry.coerce(self.retry)
        parse_rate(self.rate)
        if self.stop_after_failures is not None:
            check_positive_int("stop_after_failures", self.stop_after_failures, "or None")
        if self.stop_after_failure_rate is not None:
            share, last = self._failure_rate()
            if not (isinstance(share, (int, float)) and 0 <= share < 1):
                raise ValueError(
                    "stop_after_failure_rate must be a share in [0, 1), e.g. 0.5, or "
                    f"(share, last_n), got {self.stop_after_failure_rate!r}"
                )
            check_positive_int("stop_after_failure_rate's last_n", last, "e.g. (0.5, 100)")
        if self.timeout is not None:
            _non_negative_float("timeout", self.timeout)
            if self.timeout == 0:
                raise ValueError("timeout must be more than 0 seconds (or None for no limit)")
        if self.throttle_on is not None:
            check_matcher("throttle_on", self.throttle_on)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(
                f"progress must be True, False or None (show it on a terminal), "
                f"got {self.progress!r}"
            )
        if self.total is not None:
            check_positive_int("total", self.total, "the number of items, for the ETA", zero=True)
        self._validate_journal()
        self._validate_processes()

    def _validate_processes(self) -> None:
        if self.start_method is not None:
            import multiprocessing

            _choice(
                "start_method", self.start_method, tuple(multiprocessing.get_all_start_methods())
            )
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError(f"initializer must be callable, got {self.initializer!r}")
        if not isinstance(self.initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {self.initargs!r}")
        uses = self.start_method is not None or self.initializer is not None or self.initargs
        if uses and self.backend not in (None, "processes", "auto"):
            raise ValueError(
                "start_method, initializer and initargs apply to backend='processes' "
                "(or 'auto', if it moves to processes) only"
            )

    def _validate_journal(self) -> None:
        if self.journal is not None:
            if not isinstance(self.journal, (str, os.PathLike)):
                raise TypeError(f"journal must be a file path (str or Path), got {self.journal!r}")
            _check_journal_location(os.fspath(self.journal))
        if self.key is not None and not callable(self.key):
            raise TypeError(
                f"key must be a callable taking an item, e.g. key=lambda row: row['id'], "
                f"got {self.key!r}"
            )
        if not isinstance(self.retry_failed, bool):
            raise TypeError(f"retry_failed must be True or False, got {self.retry_failed!r}")
        if not isinstance(self.store_results, bool) and self.store_results != "pickle":
            raise ValueError(
                "store_results must be True (store values as JSON), 'pickle' (any picklable "
                "value; resuming unpickles them, which runs code from the journal file: only "
                f"for files you trust) or False, got {self.store_results!r}"
            )
        _choice("durability", self.durability, ("normal", "full"))
        _choice("changed_items", self.changed_items, ("refuse", "rerun", "skip"))
        if self.journal is None:
            for name in ("key", "retry_failed", "store_results"):
                if getattr(self, name):
                    raise ValueError(f"{name}= needs a journal: pass journal='run.db' as well")

    def _failure_rate(self) -> tuple[float, int]:
        rule = self.stop_after_failure_rate
        if isinstance(rule, tuple) and len(rule) == 2:
            return rule
        if isinstance(rule, (int, float)) and not isinstance(rule, bool):
            return float(rule), 100
        raise TypeError(
            f"stop_after_failure_rate must be a float share or a (share, last_n) pair, got {rule!r}"
        )

    @property
    def stop_rate_share(self) -> float | None:
        """The failure share above which the run stops, if that rule is on."""
        return None if self.stop_after_failure_rate is None else self._failure_rate()[0]

    @property
    def failure_rate_window(self) -> int:
        """How many recent outcomes the failure-rate stop rule looks at."""
        return self._failure_rate()[1] if self.stop_after_failure_rate is not None else 100

    def recorded(self) -> dict[str, Any]:
        """The options worth recording in a journal's run history (set ones only).

        Plain values as they are; a callable or policy by its name, never its
        arguments; ``initializer`` and ``initargs`` only as "set": they carry
        secrets (an API key, a password), and the journal is a file on disk.

        >>> Options(workers=4, initargs=("api-key",), rate="5/s").recorded()
        {'workers': 4, 'rate': '5/s', 'initargs': 'set'}
        """
        defaults = Options()
        secret = ("initializer", "initargs")
        return {
            f.name: "set" if f.name in secret else _plain(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name) and f.name != "key"
        }

    @property
    def retry_policy(self) -> Retry | None:
        """The retry policy, or None."""
        return Retry.coerce(self.retry)

    @property
    def rate_per_second(self) -> float | None:
        """The rate limit in calls per second, or None."""
        return parse_rate(self.rate)

    @property
    def item_window(self) -> int:
        """Most items admitted and not yet delivered."""
        return self.window if self.window is not None else max(16384, 2 * self.workers)


def _plain(value: object) -> object:
    """An option's value as plain data, without what a repr or a closure could reveal.

    >>> _plain((ValueError, "x", 2)), _plain(len)
    (['builtins.ValueError', 'x', 2], 'builtins.len')
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (tuple, list)):
        return [_plain(element) for element in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.repr}
    if callable(value):
        from ._keys import function_name

        return function_name(value)
    return f"<{type(value).__qualname__}>"


def lists_options(*, leave_out: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a front door a signature listing every option, keyword-only, with its default.

    ``run(fn, items, **options)`` is shown by ``help()`` and
    ``inspect.signature`` as ``run(fn, items, *, workers: int = 32, ...)``,
    built from :class:`Options`, so no list of options is copied by hand.
    Its own ``*args`` and ``**options`` are left out of what is shown, and so
    are the options named in ``leave_out``.
    """

    def decorate(fn: F) -> F:
        import inspect  # (dataclasses imported it already; nothing runs per call)

        own = inspect.signature(fn)
        shown = [
            p
            for p in own.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        shown += [p for p in _option_parameters() if p.name not in leave_out]
        cast(Any, fn).__signature__ = own.replace(parameters=shown)
        return fn

    return decorate


@functools.cache
def _option_parameters() -> tuple[inspect.Parameter, ...]:
    """Every option as a keyword-only parameter with its type and default."""
    import inspect

    keyword = inspect.Parameter.KEYWORD_ONLY
    return tuple(
        inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
        for f in fields(Options)
    )


def _check_journal_location(path: str) -> None:
    """Refuse a journal whose directory is missing, before anything runs."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        problem = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise JournalError(
            f"journal={path!r}: the directory {folder} {problem}; create it first "
            "(os.makedirs), or pass a path in an existing directory"
        )
    if os.path.isdir(path):
        raise JournalError(
            f"journal={path!r} is a directory; pass a file path, e.g. "
            f"{os.path.join(path, 'run.db')!r}"
        )


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(
            f"{name}={value!r} is not accepted; use one of " + ", ".join(map(repr, accepted))
        )


def check_positive_int(name: str, value: object, hint: str, *, zero: bool = False) -> None:
    """Refuse anything but an int >= 1 (>= 0 with ``zero``), naming ``name`` and a hint."""
    lowest = 0 if zero else 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {lowest} ({hint}), got {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be >= {lowest} ({hint}), got {value!r}")


def _non_negative_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
