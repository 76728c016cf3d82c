"""manyhands: run one slow operation over a huge stream of items, many at a time.

>>> import manyhands
>>> report = manyhands.run(lambda x: x * 2, range(1000), workers=8)
>>> report.succeeded
1000

See :func:`run`, :func:`map` (and :func:`arun`, :func:`amap` in async code), and the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from ._pool import Pool
    from ._report import Latency, Report
    from ._retry import Retry, RetryAfter
    from ._run_options import RunOptions
    from ._stream import AsyncOutcomes, Outcomes

# Each public name is imported from its module on first use (PEP 562), so that
# ``import manyhands`` costs ~2 ms rather than ~30: paid by every worker
# process's forkserver, which imports manyhands before it can start a worker.
_HOMES = {
    "amap": "_api",
    "arun": "_api",
    "map": "_api",
    "run": "_api",
    "InputError": "_exceptions",
    "ItemsFailed": "_exceptions",
    "JournalError": "_exceptions",
    "JournalWarning": "_exceptions",
    "ManyhandsError": "_exceptions",
    "Timeout": "_exceptions",
    "WorkerCrashed": "_exceptions",
    "WorkerInitError": "_exceptions",
    "DEFAULT_WORKERS": "_options",
    "RunOptions": "_run_options",
    "Failure": "_outcome",
    "Outcome": "_outcome",
    "Pool": "_pool",
    "Latency": "_report",
    "Report": "_report",
    "Retry": "_retry",
    "RetryAfter": "_retry",
    "AsyncOutcomes": "_stream",
    "Outcomes": "_stream",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # (the next use is a plain attribute)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


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
