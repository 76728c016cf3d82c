"""The global rate limit: GCRA, one schedule shared by every worker and backend."""

from __future__ import annotations

import math
import re
from _thread import TIMEOUT_MAX

__all__ = ["RateLimit", "parse_rate"]

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
# (compiled by `re` on first use, into its cache: not at `import manyhands`)
_RATE = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*([a-z]+)\s*$"


def parse_rate(value: object) -> float | None:
    """Items per second from ``"50/s"``, ``"300/min"``, ``"1000/h"`` or a number.

    >>> parse_rate("50/s"), parse_rate("30/min"), parse_rate(2.5), parse_rate(None)
    (50.0, 0.5, 2.5, None)
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        per_second = float(value)
    elif isinstance(value, str) and (match := re.match(_RATE, value.lower())):
        count, unit = match.groups()
        if unit not in _UNITS:
            raise ValueError(f"rate={value!r}: unknown unit {unit!r}; use /s, /min or /h")
        per_second = float(count) / _UNITS[unit]
    else:
        raise ValueError(
            f"rate={value!r} is not a rate; use e.g. rate='50/s', '300/min', '1000/h' "
            "or a number of items per second"
        )
    if not (per_second > 0 and math.isfinite(per_second)):
        raise ValueError(f"rate={value!r} must be more than 0 items per second")
    if 1.0 / per_second > TIMEOUT_MAX:  # (its interval is more than a thread can wait)
        raise ValueError(
            f"rate={value!r} is too slow: at least one item per {TIMEOUT_MAX:.0f} seconds"
        )
    return per_second


class RateLimit:
    """The Generic Cell Rate Algorithm: starts are spaced ``1/rate`` apart.

    GCRA keeps one number, the theoretical arrival time (TAT) of the next
    start. A start is allowed once ``now >= TAT - burst_interval``; it moves
    TAT one interval on. With ``burst=1`` (the default) starts never bunch:
    a second's budget is not spent at once after an idle spell. The clock is
    whatever the caller passes as ``now`` (``time.monotonic`` in the engine),
    so tests drive it exactly.

    >>> limit = RateLimit(per_second=10)
    >>> limit.wait(now=0.0), limit.wait(now=0.0), limit.wait(now=0.05)
    (0.0, 0.1, 0.05)
    """

    def __init__(self, per_second: float, burst: int = 1) -> None:
        self.per_second = per_second
        self.interval = 1.0 / per_second
        self._tolerance = (burst - 1) * self.interval
        self._tat = -math.inf

    def wait(self, now: float) -> float:
        """0.0 and take a slot if a start is allowed at ``now``; else seconds to wait."""
        tat = max(self._tat, now)
        early = tat - self._tolerance - now
        if early > 1e-9:  # a nanosecond of float rounding is not early
            return early
        self._tat = tat + self.interval
        return 0.0

    def release(self) -> None:
        """Give back the slot the last successful :meth:`wait` took (nothing started)."""
        self._tat -= self.interval

    def set_rate(self, per_second: float) -> None:
        """Change the rate; the next start is due one new interval after the last one.

        >>> limit = RateLimit(per_second=1)
        >>> limit.wait(now=0.0), limit.wait(now=0.0)
        (0.0, 1.0)
        >>> limit.set_rate(10)
        >>> round(limit.wait(now=0.0), 6)
        0.1
        """
        interval = 1.0 / per_second
        if self._tat != -math.inf:
            self._tat += interval - self.interval
        self.per_second = per_second
        self.interval = interval
