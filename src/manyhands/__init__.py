"""manyhands: run one slow operation over a huge stream of items, many at a time.

>>> import manyhands
>>> report = manyhands.run(lambda x: x * 2, range(1000), workers=8)
>>> report.succeeded
1000

See :func:`run`, :func:`map` (and :func:`arun`, :func:`amap` in async code), and the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._api import amap, arun, map, run
from ._exceptions import (
    InputError,
    ItemsFailed,
    JournalError,
    JournalWarning,
    ManyhandsError,
    Timeout,
    WorkerCrashed,
    WorkerInitError,
)
from ._options import DEFAULT_WORKERS, RunOptions
from ._outcome import Failure, Outcome
from ._report import Latency, Report
from ._retry import Retry, RetryAfter
from ._stream import AsyncOutcomes, Outcomes

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = [
    "DEFAULT_WORKERS",
    "AsyncOutcomes",
    "Failure",
    "InputError",
    "ItemsFailed",
    "JournalError",
    "JournalWarning",
    "Latency",
    "ManyhandsError",
    "Outcome",
    "Outcomes",
    "Pool",
    "Report",
    "Retry",
    "RetryAfter",
    "RunOptions",
    "Timeout",
    "WorkerCrashed",
    "WorkerInitError",
    "amap",
    "arun",
    "map",
    "run",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import what only some programs use when it is first asked for (PEP 562)."""
    if name == "Pool":  # (a run on its own does not need it)
        from ._pool import Pool

        globals()["Pool"] = Pool
        return Pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
