"""Backends execute batches of calls and report completions; nothing else.

Retries, rate limits, ordering, statistics and shutdown policy live in the
run, once. A backend module is imported only when a run asks for it, so an
optional dependency never slows down ``import manyhands``.
"""

from __future__ import annotations

from typing import Any

from ._base import Backend

__all__ = ["Backend", "create_backend"]


def create_backend(
    name: str,
    workers: int,
    *,
    timeout: float | None = None,
    own_loop: bool = True,
    shared: bool = False,
    spare: int = 0,
    processes: dict[str, Any] | None = None,
) -> Backend:
    """A new, not yet started backend called ``name`` (validated by the options).

    ``timeout``: a private backend's run has a per-call limit. ``own_loop``
    (async): run on a private event loop in a thread, rather than on the
    caller's loop. ``shared``: a Pool's backend, serving many runs (their
    batches queue in lanes: priority, then fairness); ``spare``: its workers
    kept for work above priority 0 (threads). ``processes``:
    start_method, initializer and initargs for ``"processes"``.
    """
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
