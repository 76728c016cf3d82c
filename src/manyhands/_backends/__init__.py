"""Backends execute batches of calls and report completions; nothing else.

Retries, rate limits, ordering, statistics and shutdown policy live in the
run, once. A backend module is imported only when a run asks for it, so an
optional dependency never slows down ``import manyhands``.
"""

from __future__ import annotations

import sys
from typing import Any

from ._base import Backend

__all__ = ["Backend", "backend_kind", "create_backend", "is_dask_client", "prepare_processes"]

#: How a Dask scheduler's address begins (``backend="tcp://host:8786"``).
SCHEDULER_PROTOCOLS = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")


def is_dask_client(value: object) -> bool:
    """True for a ``distributed.Client`` (told without importing distributed)."""
    return any(
        cls.__name__ == "Client" and cls.__module__.startswith("distributed")
        for cls in type(value).__mro__
    )


def backend_kind(value: object) -> str | None:
    """The backend ``backend=value`` names, or None if it names none.

    ``"dask"``, a scheduler address or a ``distributed.Client`` are
    ``"dask"``; a ``concurrent.futures.Executor`` is ``"executor"``; other
    strings are themselves. Neither distributed nor concurrent.futures is
    imported to tell.

    >>> backend_kind("threads"), backend_kind("tcp://10.0.0.5:8786"), backend_kind(3)
    ('threads', 'dask', None)
    """
    if isinstance(value, str):
        return "dask" if value.startswith(SCHEDULER_PROTOCOLS) else value
    if is_dask_client(value):
        return "dask"
    futures = sys.modules.get("concurrent.futures")  # (not imported: no Executor exists)
    if futures is not None and isinstance(value, futures.Executor):
        return "executor"
    return None


def prepare_processes(start_method: str | None, *, boot: bool = False) -> None:
    """Make a later start of worker processes quick (``backend="auto"``).

    Imports what they need now, while the GIL is free: once many threads take
    turns on it, each file an import looks at waits in line (a quarter of a
    second here). ``boot``: also start the forkserver, which imports the
    main script; only once the calls look CPU-bound, since a run that stays
    on threads must not run the script's top level in another process.
    """
    import contextlib
    import multiprocessing.forkserver
    import multiprocessing.popen_forkserver
    import multiprocessing.sharedctypes  # noqa: F401  (each worker's progress value: ctypes)

    import cloudpickle  # type: ignore[import-untyped]  # noqa: F401

    from . import _forkserver_main, _processes  # noqa: F401

    if boot:
        from ._process_spawn import default_start_method, ensure_forkserver

        if (start_method or default_start_method()) == "forkserver":
            with contextlib.suppress(OSError, EOFError):  # (the move says what went wrong)
                ensure_forkserver()


def create_backend(
    name: str,
    workers: int | None,
    *,
    timeout: float | None = None,
    own_loop: bool = True,
    shared: bool = False,
    spare: int = 0,
    processes: dict[str, Any] | None = None,
    given: object = None,
) -> Backend:
    """A new, not yet started backend called ``name`` (validated by the options).

    ``timeout``: a private backend's run has a per-call limit. ``own_loop``
    (async): run on a private event loop in a thread, rather than on the
    caller's loop. ``shared``: a Pool's backend, serving many runs (their
    batches queue in lanes: priority, then fairness); ``spare``: its workers
    kept for work above priority 0 (threads). ``processes``:
    start_method, initializer and initargs for ``"processes"``. ``given``: what
    ``backend=`` was, for ``"dask"`` (``"dask"``, an address or a Client) and
    ``"executor"`` (the Executor).
    """
    if name == "dask":
        from ._dask import DaskBackend

        return DaskBackend(None if given == "dask" else given, workers)  # None: the cluster's
    if name == "executor":
        from ._executor_backend import ExecutorBackend

        return ExecutorBackend(given)  # type: ignore[arg-type]
    assert workers is not None  # (only Dask counts its workers itself)
    if name == "processes":
        from ._processes import ProcessBackend

        return ProcessBackend(
            workers, timed=timeout is not None or shared, shared=shared, **(processes or {})
        )
    if name == "threads":
        from ._threads import ThreadBackend

        return ThreadBackend(workers, shared=shared, spare=spare)
    if name == "async":
        from ._async import AsyncBackend

        return AsyncBackend(workers, own_loop=own_loop, shared=shared)
    raise ValueError(f"unknown backend {name!r}")  # pragma: no cover - options validate it
