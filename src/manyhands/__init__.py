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
from ._options import DEFAULT_WORKERS
from ._outcome import Failure, Outcome
from ._report import Latency, Report
from ._retry import Retry, RetryAfter
from ._stream import AsyncOutcomes, Outcomes

if TYPE_CHECKING:
    from ._pool import Pool
    from ._run_options import RunOptions

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


#: What only some programs use, imported when first asked for (PEP 562): a Pool,
#: and RunOptions, which only type checkers read (see _run_options).
_LAZY = {"Pool": "._pool", "RunOptions": "._run_options"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
