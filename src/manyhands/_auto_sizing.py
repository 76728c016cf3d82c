"""``backend="auto"`` once on processes: how many processes the calls' share of CPU fits.

Judged once, from the batches' CPU and wall time on the processes (their waits
for a core left out): more processes for calls that also wait, or back to
threads for calls that mostly wait (see :mod:`._auto`, which tells the whole
choice, and :mod:`._autopilot_moves`, which makes the moves).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from ._auto import WINDOW

__all__ = ["GROW_BELOW", "PROCESSES_PER_CORE", "RETURN_BELOW", "Sizing"]

GROW_BELOW = 0.85  # on processes, calls computing less of their time than this: more processes
PROCESSES_PER_CORE = 4  # the most processes auto grows to, per core
RETURN_BELOW = 0.05  # on processes, calls computing less of their time: back to threads


class Sizing:
    """auto, once on processes: how many processes the calls' share of CPU fits.

    Calls that compute half their time and wait the other half keep a core
    busy with two processes on it; it gets four, as the waits of two do not
    line up. Processes report each batch's wall and CPU time (:meth:`add`);
    the time they waited for a core is left out of the wall, so a machine
    busy with other work does not pass for calls that wait.

    >>> sizing = Sizing(started=0.0, processes=2, workers=32, cores=2, waited=lambda: 0.0)
    >>> for _ in range(4):
    ...     sizing.add(seconds=0.1, cpu=0.05)  # ten 10 ms calls, half of each computing
    >>> sizing.judge(now=0.05) is None  # not yet: the window is 0.1 s
    True
    >>> sizing.judge(now=0.2), sizing.why
    (8, 'then 8 processes: calls computed 50% of their time')
    >>> sizing.judge(now=0.3) is None  # once
    True
    >>> io = Sizing(started=0.0, processes=2, workers=100, cores=2, waited=lambda: 0.0)
    >>> for _ in range(4):
    ...     io.add(seconds=0.2, cpu=0.001)  # ten 20 ms calls that wait on I/O
    >>> io.judge(now=0.2), io.why
    (0, 'but on processes the calls computed 0% of their time: back to threads')
    """

    def __init__(
        self,
        started: float,
        processes: int,
        workers: int,
        cores: int | None = None,
        waited: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._started = started
        self._processes = processes
        self._workers = workers
        self._cores = cores if cores is not None else (os.cpu_count() or 1)
        self._waited = waited  # the processes' time waiting for a core so far
        self._waited_start = waited()
        self._batches = 0
        self._seconds = 0.0
        self._cpu = 0.0
        self.done = False
        self.why = ""

    def add(self, seconds: float, cpu: float) -> None:
        """A batch took ``seconds`` on its process, ``cpu`` of them computing."""
        self._batches += 1
        self._seconds += seconds
        self._cpu += cpu

    def judge(self, now: float) -> int | None:
        """How many processes from now on, once the window is over: None for as many
        as now, 0 for none (back to threads). :attr:`why` says why, for the Report.

        Judged once: after ``WINDOW`` seconds and two batches per process.
        """
        if self.done or now - self._started < WINDOW or self._batches < 2 * self._processes:
            return None
        self.done = True
        seconds = self._seconds
        start, end = self._waited_start, self._waited()
        if start is not None and end is not None:  # (waiting for a core is not the calls')
            seconds -= end - start
        share = self._cpu / max(seconds, self._cpu, 1e-9)
        if share < RETURN_BELOW:
            self.why = f"but on processes the calls computed {share:.0%} of their time: " + (
                "back to threads"
            )
            return 0
        if share >= GROW_BELOW:
            return None
        # Twice the count that would just fit: the calls' waits do not line up, and
        # with just enough processes a core often idles (50% CPU: 4 processes on 2
        # cores took 1.64 s where 8 took 1.47-1.51 s and the fixed 2 took 2.2 s).
        fit = self._processes / max(share, 1e-3)
        count = min(self._workers, PROCESSES_PER_CORE * self._cores, math.ceil(2 * fit))
        if count <= self._processes:
            return None
        self.why = f"then {count} processes: calls computed {share:.0%} of their time"
        return count
