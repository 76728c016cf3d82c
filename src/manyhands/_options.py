"""The keyword options of ``run`` and ``map``: defaults, and validation at the call.

Every check names the parameter, says what it got and what is accepted, so a
mistake is fixed from the message alone.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any, TypedDict

__all__ = ["BACKENDS", "DEFAULT_WORKERS", "Options", "RunOptions"]

#: Threads by default: most long item lists are network calls, which wait far
#: more than they compute. 32 matches the stdlib's upper bound for IO work.
DEFAULT_WORKERS = 32

#: Names accepted by ``backend=``.
BACKENDS = ("threads",)


class RunOptions(TypedDict, total=False):
    """The keyword options shared by :func:`manyhands.run` and :func:`manyhands.map`.

    workers: how many calls run at once (default 32; threads accept thousands).
    backend: where calls run: ``"threads"`` (default).
    ordered: yield outcomes in input order (default False: as completed).
    batch_size: items sent to a worker at once; ``None`` (default) adapts it to
        the measured time per item, so tiny tasks are batched and slow ones are not.
    window: most items admitted but not yet delivered; bounds memory
        (default: ``max(16384, 2 * workers)``).
    keep_failures: how many Failures the Report keeps in full (default 1000);
        all are counted.
    grace: seconds that running calls get to finish when a run stops early
        (break, error, Ctrl-C) before their threads are abandoned (default 2.0).
    """

    workers: int
    backend: str
    ordered: bool
    batch_size: int | None
    window: int | None
    keep_failures: int
    grace: float


@dataclass(frozen=True)
class Options:
    """Validated options; see :class:`RunOptions` for their meaning."""

    workers: int = DEFAULT_WORKERS
    backend: str = "threads"
    ordered: bool = False
    batch_size: int | None = None
    window: int | None = None
    keep_failures: int = 1000
    grace: float = 2.0

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
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {sorted(known)}"
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
        options = cls(**kwargs)
        options._validate()
        return options

    def _validate(self) -> None:
        _positive_int("workers", self.workers, "the number of calls to run at once, e.g. 16")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend={self.backend!r} is not a known backend; accepted: "
                + ", ".join(repr(name) for name in BACKENDS)
            )
        if not isinstance(self.ordered, bool):
            raise TypeError(f"ordered must be True or False, got {self.ordered!r}")
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size, "or None to adapt it automatically")
        if self.window is not None:
            _positive_int("window", self.window, "or None for the default")
        _positive_int("keep_failures", self.keep_failures, "0 keeps only counts", zero=True)
        _non_negative_float("grace", self.grace)

    @property
    def item_window(self) -> int:
        """Most items admitted and not yet delivered."""
        return self.window if self.window is not None else max(16384, 2 * self.workers)


def _positive_int(name: str, value: object, hint: str, *, zero: bool = False) -> None:
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
