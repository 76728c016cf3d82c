"""How many calls the server accepted and refused, by when they started."""

from __future__ import annotations

__all__ = ["SLOT", "StartLog"]

SLOT = 0.01  # seconds: the resolution of the log


class StartLog:
    """Accepted and refused calls counted in ``SLOT``-wide bins of their start time.

    Answers arrive out of the order the calls started in (a refusal comes back
    at once, a served call later), so calls are binned by start, not by answer.

    >>> log = StartLog()
    >>> log.add(0.001, accepted=3, refused=0)
    >>> log.add(0.5, accepted=1, refused=2)
    >>> log.counts(0.0, 0.5), log.counts(0.1, 0.5)
    ((4, 2), (1, 2))
    """

    __slots__ = ("_bins",)

    def __init__(self) -> None:
        self._bins: dict[int, list[int]] = {}

    def add(self, started: float, accepted: int, refused: int) -> None:
        """Count calls started at ``started``."""
        counts = self._bins.setdefault(int(started / SLOT), [0, 0])
        counts[0] += accepted
        counts[1] += refused

    def counts(self, low: float, high: float) -> tuple[int, int]:
        """(accepted, refused) among the calls started from ``low`` to ``high``."""
        if not high >= low:
            return 0, 0
        first, last = int(max(low, -1e12) / SLOT), int(min(high, 1e12) / SLOT)
        accepted = refused = 0
        for index, (yes, no) in self._bins.items():
            if first <= index <= last:
                accepted += yes
                refused += no
        return accepted, refused

    def forget(self, before: float) -> None:
        """Drop the calls started before ``before`` (the log stays small)."""
        first = int(before / SLOT)
        self._bins = {index: n for index, n in self._bins.items() if index >= first}
