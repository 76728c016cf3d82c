"""``backend="auto"``: measure whether the calls are waiting or computing, and choose.

A run on ``auto`` starts on threads, and the workers measure the CPU time of
each batch (``time.thread_time`` around it, once per batch) beside its wall
time. The choice is made once, early: after ``WINDOW`` seconds of the run or
``ITEMS`` items, whichever comes later.

The rest of the run moves to worker processes when all of these hold:

- the calls are CPU-bound: they keep the GIL busy at least ``GIL_BOUND`` of
  the window (on threads it lets one call compute at a time, so this is when
  it is the limit). That is their CPU time over the window; on Linux, the
  time the process's threads were ready to run (``/proc/self/task/*/schedstat``:
  on a CPU or waiting for one) counts too, so a machine busy with other work,
  which gives the process less than a core, does not hide it;
- each call does enough work that a process pays for itself (``MIN_CPU``
  seconds of CPU per item: below that, the engine's own cost per item, not
  the call's, is what the time goes to);
- the machine has more than one core, and Python threads hold the GIL (a
  free-threaded build runs CPU-bound threads in parallel already);
- the function pickles, and so do the items sampled.

How many processes: one per core (at most the run's ``workers``), as for
``backend="processes"``. (A call's wall time on threads includes its wait for
the GIL, so the share of it spent computing cannot be told from waiting on I/O.)
Calls already running on threads finish there.

A run whose first calls were not like the rest (the first items were cached,
say) may decide once more: if, after staying on threads, the calls of a later
window are CPU-bound where those of the first were not.

Everything takes the time as an argument, so tests drive it exactly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._records import Record

__all__ = ["GIL_BOUND", "ITEMS", "MIN_CPU", "WINDOW", "Choice", "Measure", "demand", "gil_enabled"]

WINDOW = 0.1  # seconds of the run before the choice
ITEMS = 24  # items at least before the choice
GIL_BOUND = 0.7  # calls' CPU time per second of the run: the GIL is the limit
MIN_CPU = 50e-6  # seconds of CPU per item for processes to pay

_set = object.__setattr__


def demand(threads: Iterable[int] | None = None) -> tuple[float, float] | None:
    """(CPU time, time ready to run) of this process's threads so far, in seconds.

    Linux only (None elsewhere): each thread's ``schedstat`` holds its time on
    a CPU and its time waiting for one. A thread waiting on I/O or on the GIL
    is asleep, in neither. ``threads``: only those (native ids), else all.
    """
    ran = waited = 0
    try:
        tasks = os.listdir("/proc/self/task") if threads is None else list(threads)
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as stats:
                fields = stats.read().split()
        except OSError:
            continue  # (a thread that just ended)
        ran += int(fields[0])
        waited += int(fields[1])
    return ran / 1e9, (ran + waited) / 1e9


def gil_enabled() -> bool:
    """Whether threads of this Python run one at a time (False: a free-threaded build)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


@dataclass(frozen=True, init=False, repr=False, eq=False)  # (see _records)
class Choice(Record):
    """What auto chose, and why, in words for the Report.

    >>> print(Choice("processes", "calls used 97% CPU, 2 cores", 2))
    processes (auto: calls used 97% CPU, 2 cores)
    """

    backend: str  # "threads" or "processes"
    why: str
    processes: int = 0

    def __init__(
        self,
        backend: str,
        why: str,
        processes: int = 0,
    ) -> None:
        _set(self, "backend", backend)
        _set(self, "why", why)
        _set(self, "processes", processes)

    def __str__(self) -> str:
        return f"{self.backend} (auto: {self.why})"


class Measure:
    """The calls' CPU and wall time over a window; :meth:`choose` says what to run on.

    >>> m = Measure(started=0.0, workers=32, cores=2, demand=lambda: None)
    >>> m.add(items=10, seconds=0.5, cpu=0.49)  # ten 50 ms calls, all CPU
    >>> m.choose(now=0.05) is None  # not yet: the window is 0.1 s
    True
    >>> m.add(items=10, seconds=0.5, cpu=0.49)
    >>> m.add(items=10, seconds=0.5, cpu=0.49)
    >>> print(m.choose(now=1.5))
    processes (auto: calls used 98% CPU, 49.0ms each, 2 cores)
    >>> io = Measure(started=0.0, workers=32, cores=2, demand=lambda: None)
    >>> io.add(items=100, seconds=2.0, cpu=0.01)  # 20 ms calls that wait
    >>> print(io.choose(now=0.2))
    threads (auto: calls used 5% CPU: they mostly wait)
    """

    def __init__(
        self,
        started: float,
        workers: int,
        cores: int | None = None,
        demand: Callable[[], tuple[float, float] | None] = demand,
        own_threads: bool = False,
    ) -> None:
        self._window_start = started
        self._workers = workers
        self._cores = cores if cores is not None else (os.cpu_count() or 1)
        self._demand = demand
        self._own_threads = own_threads  # demand() reads only the run's own workers
        self._demand_start = demand()
        self._items = 0
        self._seconds = 0.0  # the calls' wall time
        self._cpu = 0.0  # their CPU time
        self.decided: Choice | None = None
        self._revisited = False

    def add(self, items: int, seconds: float, cpu: float) -> None:
        """A batch of ``items`` calls took ``seconds``, ``cpu`` of them computing."""
        self._items += items
        self._seconds += seconds
        self._cpu += cpu

    @property
    def measuring(self) -> bool:
        """Whether the workers should still measure (a choice, or a second one, is due)."""
        return self.decided is None or (self.decided.backend == "threads" and not self._revisited)

    def ready(self, now: float) -> bool:
        """Whether the window is over: enough time and items to judge the calls."""
        return now - self._window_start >= WINDOW and self._items >= ITEMS

    def choose(self, now: float) -> Choice | None:
        """The choice once the window is over (None before, or if it does not change)."""
        if not self.ready(now):
            return None
        choice = self._judge(now - self._window_start)
        if self.decided is None:
            self.decided = choice
        elif not self._revisited:  # the calls changed completely: once more
            self._revisited = True
            if choice.backend == self.decided.backend:
                return None
            self.decided = choice
        else:
            return None
        self._items, self._seconds, self._cpu = 0, 0.0, 0.0  # a fresh window for a revisit
        self._window_start = now
        self._demand_start = self._demand()
        return choice

    def _busy(self, window: float) -> float:
        """How busy the calls kept the GIL over the window (1.0: all of it)."""
        busy = self._cpu / window  # their CPU time
        start, end = self._demand_start, self._demand()
        if start is not None and end is not None:
            ran, ready = end[0] - start[0], end[1] - start[1]
            if self._own_threads:  # the run's own workers: their demand is its calls'
                # (calls still running count too: with many threads taking turns on
                # the GIL, few calls finish within a window, and their CPU lags)
                busy = max(busy, min(ready / window, 1.0))
            elif ran > 0:  # ready to run (a core's worth at most: one GIL), the calls' share
                busy = max(busy, min(ready / window, 1.0) * min(self._cpu / ran, 1.0))
        return busy

    def _judge(self, window: float) -> Choice:
        busy = self._busy(window)
        per_item = self._cpu / self._items
        said = f"calls used {min(busy, 1.0):.0%} CPU"
        if busy < GIL_BOUND:
            return Choice("threads", f"{said}: they mostly wait")
        if per_item < MIN_CPU:
            return Choice("threads", f"{said}, but {per_item * 1e6:.1f}us each: too short")
        if self._cores < 2:
            return Choice("threads", f"{said}, 1 core")
        if not gil_enabled():
            return Choice("threads", f"{said}, free-threaded Python: threads run in parallel")
        count = min(self._cores, self._workers)
        if count < 2:
            return Choice("threads", f"{said}, workers={self._workers}")
        return Choice(
            "processes", f"{said}, {per_item * 1e3:.1f}ms each, {self._cores} cores", count
        )

    def hint(self, now: float) -> str | None:
        """For a run on threads that was not ``auto``: a one-line hint, if its calls were
        clearly CPU-bound (None otherwise, or before a window was seen)."""
        if not self.ready(now):
            return None
        window = now - self._window_start
        choice = self._judge(window)
        if choice.backend != "processes":
            return None
        return (
            f"calls used {min(self._busy(window), 1.0):.0%} CPU: backend='processes' or "
            f"'auto' would use all {self._cores} cores"
        )
