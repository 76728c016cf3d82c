"""Backends execute batches of calls and report completions; nothing else.

Retries, rate limits, ordering, statistics and shutdown policy live in the
engine, once. A backend module is imported only when a run asks for it, so an
optional dependency never slows down ``import manyhands``.
"""

from __future__ import annotations

from ._base import Backend

__all__ = ["Backend", "create_backend"]


def create_backend(name: str, workers: int, timed: bool = False) -> Backend:
    """A new, not yet started backend called ``name`` (validated by the options).

    ``timed``: the run has a ``timeout``, so batches must be expirable.
    """
    if name == "threads":
        from ._threads import ThreadBackend

        return ThreadBackend(workers, timed=timed)
    raise ValueError(f"unknown backend {name!r}")  # pragma: no cover - options validate it
