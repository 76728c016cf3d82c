"""The checks an option's value passes where it is given, each naming the option and the fix.

:class:`~._options.Options` checks every option with these, and so do a Pool's
own arguments (:mod:`._pool_options`): a whole number, seconds a thread can
wait, one of a few names, a journal's path that can be a file; and the words
refusing worker-process options to a backend that starts no worker process.
"""

from __future__ import annotations

import contextlib
import os
import stat
from _thread import TIMEOUT_MAX
from typing import Any

from ._exceptions import JournalError

__all__ = [
    "check_choice",
    "check_journal_location",
    "check_positive_int",
    "check_seconds",
    "check_start_timeout",
    "process_options_refused",
]


def process_options_refused(given: list[str], backend: Any, caller: str | None = None) -> str:
    """What refuses worker-process options ``given`` with a backend they do not apply to.

    ``caller``: the function called, when ``backend`` is the one its run got
    without ``backend=`` (threads for a function, asyncio for a coroutine function).
    """
    from ._backends import backend_kind

    names = ", ".join(f"{name}=" for name in given)
    apply = "applies" if len(given) == 1 else "apply"
    head = f"{caller}() got {names} which {apply}" if caller else f"{names} {apply}"
    kind = backend_kind(backend)
    if kind == "dask":
        return (
            f"{head} to the worker processes of backend='processes' only, not to "
            "a Dask cluster's workers, which Dask starts and sets up: set up what fn needs "
            f"on the cluster (e.g. a worker plugin) or on first use in fn, and leave {names} out"
        )
    if kind not in ("threads", "async"):  # (an Executor)
        return (
            f"{head} to the worker processes manyhands starts only, and backend= is "
            "an executor, which starts its own: set them up on it (e.g. "
            f"ProcessPoolExecutor(initializer=...)), and leave {names} out"
        )
    where = "in threads" if kind == "threads" else "as asyncio tasks"
    runs = f"this run's calls run {where}" if caller else f"backend={backend!r} runs calls {where}"
    fix = "pass backend='processes' (or 'auto'), or " if kind == "threads" else ""
    return (
        f"{head} to worker processes only, and {runs}, which start none: {fix}set up what "
        f"fn needs before the run (e.g. in a module-level global) and leave {names} out"
    )


def check_journal_location(path: str) -> None:
    """Refuse a journal path that names no file one can be, before anything runs."""
    if not path:
        raise ValueError(
            "journal= got an empty path (an unset variable?); pass a file path, e.g. "
            "journal='run.db', or leave it out for no journal"
        )
    if "\x00" in path:
        raise ValueError(
            f"journal={path!r} holds a NUL byte, which no file path can; pass the path without it"
        )
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
    with contextlib.suppress(OSError):  # (no such file yet: the run creates it)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise JournalError(
                f"journal={path!r} is not a regular file (a device, a pipe or a socket): "
                "a journal is an SQLite file; pass a file path, e.g. 'run.db'"
            )


def check_choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
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


def check_seconds(name: str, value: object, *, positive: bool = False, hint: str = "") -> None:
    """Refuse anything but a number of seconds >= 0 (> 0 with ``positive``) that a
    thread can wait for (``threading.TIMEOUT_MAX``: ~292 years on Linux, 49 days on
    Windows), naming ``name``.

    >>> check_seconds("grace", 1e300)
    Traceback (most recent call last):
    ...
    ValueError: grace must be a number of seconds >= 0, at most ... got 1e+300
    """
    lowest = "> 0" if positive else ">= 0"
    said = f" ({hint})" if hint else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds {lowest}{said}, got {value!r}")
    if not ((value > 0 if positive else value >= 0) and value <= TIMEOUT_MAX):
        raise ValueError(
            f"{name} must be a number of seconds {lowest}{said}, at most {TIMEOUT_MAX:.0f} "
            f"(the longest a thread can wait), got {value!r}"
        )


def check_start_timeout(value: object) -> None:
    """Refuse a ``start_timeout`` that is not a number of seconds > 0, naming it."""
    check_seconds(
        "start_timeout",
        value,
        positive=True,
        hint="how long a worker process may take to start, its initializer included",
    )
