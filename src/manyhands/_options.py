"""The keyword options of ``run``, ``map``, ``amap`` and ``arun``: defaults, and validation.

The options are defined once, as the fields of :class:`Options` (names,
types, defaults). :class:`~manyhands._run_options.RunOptions` spells the same
names and types for type checkers and IDEs (a test keeps the two equal), and
:func:`~._option_signatures.lists_options` gives each front door a signature
that lists them all with their defaults, for ``help()``, ``inspect.signature``
and notebooks.

Every check names the parameter, says what it got and what is accepted, so a
mistake is fixed from the message alone (the checks of a value, shared with a
Pool's own arguments, are in :mod:`._option_checks`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

from ._option_checks import (
    check_choice,
    check_journal_location,
    check_positive_int,
    check_seconds,
    check_start_timeout,
    process_options_refused,
)
from ._rate import parse_rate
from ._records import Record
from ._retry import ErrorMatcher, Retry, check_matcher

__all__ = ["BACKENDS", "DEFAULT_WORKERS", "Options"]

#: Threads by default: most long item lists are network calls, which wait far
#: more than they compute. 32 matches the stdlib's upper bound for IO work.
DEFAULT_WORKERS = 32

#: Names accepted by ``backend=``.
BACKENDS = ("threads", "async", "processes", "auto", "dask")


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
    start_timeout: float | None = None
    progress: bool | None = None
    total: int | None = None
    journal: str | os.PathLike[str] | None = None
    key: Callable[[Any], Any] | None = None
    retry_failed: bool = False
    store_results: bool | Literal["pickle"] = False
    durability: str = "normal"
    changed_items: str = "refuse"
    input_thread: bool | None = None

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
        start_timeout: float | None = None,
        progress: bool | None = None,
        total: int | None = None,
        journal: str | os.PathLike[str] | None = None,
        key: Callable[[Any], Any] | None = None,
        retry_failed: bool = False,
        store_results: bool | Literal["pickle"] = False,
        durability: str = "normal",
        changed_items: str = "refuse",
        input_thread: bool | None = None,
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
        _set(self, "start_timeout", start_timeout)
        _set(self, "progress", progress)
        _set(self, "total", total)
        _set(self, "journal", journal)
        _set(self, "key", key)
        _set(self, "retry_failed", retry_failed)
        _set(self, "store_results", store_results)
        _set(self, "durability", durability)
        _set(self, "changed_items", changed_items)
        _set(self, "input_thread", input_thread)

    @classmethod
    def from_kwargs(
        cls, caller: str, kwargs: dict[str, Any], refused: tuple[str, ...] = ()
    ) -> Options:
        """Validate user keyword arguments, raising TypeError/ValueError that name them.

        ``refused``: options the caller does not take (e.g. a Pool's own, on
        ``pool.run``), left out of the names an unknown one is compared with.

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

                own = {"priority"} if caller.startswith("pool.") else set()  # (a Pool's runs)
                accepted = sorted(known.difference(refused) | own)
                close = difflib.get_close_matches(name, accepted, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {accepted}"
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
        check_seconds("grace", self.grace)
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
            check_seconds("timeout", self.timeout, positive=True, hint="None: no limit")
        if self.throttle_on is not None:
            check_matcher("throttle_on", self.throttle_on)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(
                f"progress must be True, False or None (show it on a terminal), "
                f"got {self.progress!r}"
            )
        if self.total is not None:
            check_positive_int("total", self.total, "the number of items, for the ETA", zero=True)
        if self.input_thread is not None and not isinstance(self.input_thread, bool):
            raise TypeError(
                "input_thread must be True (read the items in a thread of their own), False "
                f"(in the thread that consumes the outcomes) or None, got {self.input_thread!r}"
            )
        self._validate_journal()
        self._validate_processes()

    def _validate_processes(self) -> None:
        if self.start_method is not None:
            import multiprocessing

            check_choice(
                "start_method", self.start_method, tuple(multiprocessing.get_all_start_methods())
            )
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError(f"initializer must be callable, got {self.initializer!r}")
        if not isinstance(self.initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {self.initargs!r}")
        if self.initargs and self.initializer is None:
            raise ValueError(
                "initargs= is passed to initializer=, and none was given: pass "
                "initializer=fn as well (it runs once in each worker process), or leave "
                "initargs out"
            )
        if self.start_timeout is not None:
            check_start_timeout(self.start_timeout)
        given = self.process_options_given()
        if given and self.backend not in (None, "processes", "auto"):
            raise ValueError(process_options_refused(given, self.backend))

    def process_options_given(self) -> list[str]:
        """The worker-process options given, which apply to ``backend='processes'`` only."""
        return [name for name in _PROCESS_OPTIONS if getattr(self, name) not in (None, ())]

    def _validate_journal(self) -> None:
        if self.journal is not None:
            if not isinstance(self.journal, (str, os.PathLike)):
                raise TypeError(f"journal must be a file path (str or Path), got {self.journal!r}")
            check_journal_location(os.fspath(self.journal))
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
        check_choice("durability", self.durability, ("normal", "full"))
        check_choice("changed_items", self.changed_items, ("refuse", "rerun", "skip"))
        if self.journal is None:
            for name in ("key", "retry_failed", "store_results"):
                if getattr(self, name):
                    raise ValueError(f"{name}= needs a journal: pass journal='run.db' as well")
            for name, default in (("durability", "normal"), ("changed_items", "refuse")):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} applies to a journal, and there is "
                        "none: pass journal='run.db' as well, or leave it out"
                    )
        if self.changed_items != "refuse" and self.key is None:
            raise ValueError(
                f"changed_items={self.changed_items!r} applies with key= only: without it "
                "an item's key is the item itself, which cannot change under its key. Pass "
                "key=lambda row: row['id'] (what identifies an item), or leave changed_items out"
            )

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
        found = {
            f.name: "set" if f.name in secret else _plain(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }
        return {name: value for name, value in found.items() if value is not None}

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

    A callable that says how a journal should name it (a ``journal_label``:
    the command's ``--key id``, as the user wrote it) is named so, and one
    whose label is empty (the command's default keys) is not recorded (None).

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
        label = getattr(value, "journal_label", None)
        if isinstance(label, str):
            return label or None
        from ._keys import function_name

        return function_name(value)
    return f"<{type(value).__qualname__}>"


_PROCESS_OPTIONS = ("start_method", "initializer", "initargs", "start_timeout")
