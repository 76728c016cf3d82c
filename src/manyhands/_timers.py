"""A run's clocks: items waiting for a retry, and calls running against a deadline.

Both take the time as an argument, so tests drive them with a fake clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import count

from ._batch import Batch

__all__ = ["Deadlines", "RetryTimers"]


class RetryTimers:
    """Items waiting to be tried again, by due time: a waiting item holds no worker.

    >>> timers = RetryTimers()
    >>> timers.add(2.0, "second"); timers.add(1.0, "first")  # (batches, in a run)
    >>> timers.wait(now=0.5), timers.pop(), len(timers)
    (0.5, 'first', 1)
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Batch]] = []
        self._tiebreak = count()  # equal due times keep their order

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, due: float, batch: Batch) -> None:
        """Try ``batch`` again at ``due``."""
        heapq.heappush(self._heap, (due, next(self._tiebreak), batch))

    def wait(self, now: float) -> float | None:
        """Seconds until the next item is due (0.0: one is); None if none waits."""
        if not self._heap:
            return None
        return max(self._heap[0][0] - now, 0.0)

    def pop(self) -> Batch:
        """The item due first."""
        return heapq.heappop(self._heap)[2]

    def drain(self) -> Iterator[Batch]:
        """Every waiting item, soonest first, removed."""
        while self._heap:
            yield heapq.heappop(self._heap)[2]


class Deadlines:
    """Batches running under ``timeout=``: which ran past it at ``now``.

    A batch's deadline counts from when a worker began it (``batch.started``,
    set by the backend); a batch not begun yet has none.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._running: dict[int, Batch] = {}  # by id
        self.next_check = 0.0  # when a running batch may expire next

    def __bool__(self) -> bool:
        return bool(self._running)

    def sent(self, batch: Batch, now: float) -> None:
        """``batch`` went to the backend."""
        self._running[id(batch)] = batch
        if len(self._running) == 1:
            self.next_check = now + self.timeout

    def back(self, batch: Batch) -> None:
        """``batch`` came back (or was given up)."""
        self._running.pop(id(batch), None)

    def wait(self, now: float) -> float | None:
        """Seconds until a check is due; None when nothing runs."""
        return max(self.next_check - now, 0.0) if self._running else None

    def overdue(self, now: float) -> list[Batch]:
        """The batches that ran past their deadline; notes when the next may be due."""
        timeout = self.timeout
        soonest = now + timeout  # a batch not started yet expires no sooner
        late: list[Batch] = []
        for batch in self._running.values():
            started = batch.started
            if started is None:
                continue
            deadline = started + timeout
            if deadline > now:
                soonest = min(soonest, deadline)
            else:
                late.append(batch)
        self.next_check = max(soonest, now + 0.001)
        return late
