"""A Pool's own arguments, checked where they are passed, with the fix in the message.

The backend (a name, a Dask scheduler's address or a ``distributed.Client``),
``workers``, ``spare``, the worker processes' start (processes and auto
only), and a run's or an executor's ``priority``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ._backends import backend_kind
from ._option_checks import check_positive_int, check_start_timeout
from ._options import DEFAULT_WORKERS

__all__ = ["POOL_BACKENDS", "check_int", "pool_options"]

POOL_BACKENDS = ("threads", "processes", "async", "auto", "dask")


def pool_options(
    given: str | Any,
    workers: int | None,
    *,
    spare: int,
    start_method: str | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    start_timeout: float | None,
) -> tuple[str, int | None, dict[str, Any] | None]:
    """A new Pool's backend, its workers, and the options of its processes (or None), checked."""
    backend = backend_kind(given) or ""
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
    processes: dict[str, Any] | None = None
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
        start_method is not None or initializer is not None or initargs or start_timeout is not None
    ):
        raise ValueError(
            "start_method, initializer, initargs and start_timeout apply to "
            "backend='processes' (or 'auto') only"
        )
    return backend, workers, processes


def check_int(name: str, value: object) -> None:
    """A priority (named ``name``) is an int, not a bool: TypeError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (higher runs first), got {value!r}")
