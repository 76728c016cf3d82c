"""``backend="auto"``: measure whether the calls are waiting or computing, and choose.

A run on ``auto`` starts on threads, and the workers measure the CPU time of
each batch (``time.thread_time`` around it, once per batch) beside its wall
time. The choice is made once, early: after ``WINDOW`` seconds of the run or
``ITEMS`` calls, whichever comes later; or sooner, once calls that look
CPU-bound (:meth:`Measure.busy`) have had the run's worker processes started
(the engine starts them then), from ``EARLY_CALLS`` calls on (calls of a
second each would otherwise keep the run on one core for ``ITEMS`` seconds
or more: their CPU time so far is the evidence). Calls still
running count, and with the run's own threads measured alone so does their
CPU so far: threads taking turns on the GIL all finish late, and the run does
not wait for one of them (it chooses when the window ends, not when a call
finishes after it).

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
- the function pickles, and so do the items sampled (a later item that does
  not runs on threads: see :mod:`._unsent`).

How many processes: one per core (at most the run's ``workers``), as for
``backend="processes"``, to begin with. (A call's wall time on threads
includes its wait for the GIL, so the share of it spent computing cannot be
told from waiting on I/O there.) Calls already running on threads finish
there. On the processes the share can be told: each worker times its batches'
CPU beside their wall time, and the time it waited for a core
(``/proc/<pid>/schedstat``, Linux) is left out. Once ``WINDOW`` seconds and
two batches per process have come back, if the calls computed less than
``GROW_BELOW`` of their time (they also wait: a fetch, then a parse), more
processes start, once: twice as many as would just keep the cores busy
(processes divided by that share), at most ``PROCESSES_PER_CORE`` per core and
the run's ``workers`` (see :class:`~._auto_sizing.Sizing`). If they computed
less than ``RETURN_BELOW`` of their time, the move was a mistake (on a machine
busy with other work, the time many threads that wait on I/O spend waiting for
a core can look like a GIL kept busy): the rest of the run goes back to
threads, for good.

A run whose first calls were not like the rest (the first items were cached,
say) may decide once more: if, after staying on threads, the calls of a later
window are CPU-bound where those of the first were not.

Here: the choice on threads (:class:`Measure`) and the words of it
(:class:`Choice`); the sizing on processes and its constants in
:mod:`._auto_sizing`; what the machine tells of the calls' CPU in
:mod:`._cpu_readings`. Everything takes the time as an argument, so tests
drive it exactly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._cpu_readings import demand, gil_enabled
from ._exceptions import WorkerInitError
from ._records import Record

__all__ = [
    "CALLS_PER_CORE",
    "EARLY_CALLS",
    "GIL_BOUND",
    "ITEMS",
    "MIN_CPU",
    "WAIT_SEEN",
    "WINDOW",
    "Choice",
    "Measure",
    "initialize_here",
]

WINDOW = 0.1  # seconds of the run before the choice
ITEMS = 16  # calls at least (finished or running) before the choice
EARLY_CALLS = 2  # the same, once the processes are started for calls that look CPU-bound
GIL_BOUND = 0.7  # calls' CPU time per second of the run: the GIL is the limit
# Calls computing less than this share of the run's time mostly wait (I/O, sleeps):
# their threads' waits for a core are many threads woken at once (100 threads
# whose answers came back together: ten times their CPU time, read as a GIL held
# 92% of the time), not a GIL held by a thread that waits for a core on a busy
# machine. Only from this share on do the waits count toward the GIL's use.
WAITS_COUNT = GIL_BOUND / 2
MIN_CPU = 50e-6  # seconds of CPU per item for processes to pay
WAIT_SEEN = 0.02  # seconds of the run before its threads can be seen to wait
# Calls at once until they are seen to wait (or the choice is made): more GIL-bound
# threads than cores only add to the line the engine's own thread waits in (importing
# what the processes need took 135-165 ms behind 8 of them, 28-37 ms behind 2).
CALLS_PER_CORE = 1
LOOK_EVERY = 0.005  # seconds between looks at whether the calls wait (see Measure.lifts_cap)

_set = object.__setattr__


def initialize_here(initializer: Callable[..., Any], initargs: tuple[Any, ...]) -> None:
    """``backend="auto"``: calls run on this process's threads until a move to worker
    processes (or for good), so the initializer runs here once too, as in each worker.

    Raises:
        WorkerInitError: it raised; no item was run.
    """
    try:
        initializer(*initargs)
    except Exception as exc:
        import traceback

        raise WorkerInitError(
            f"the initializer raised {type(exc).__qualname__}: {exc} (backend='auto' runs "
            "it in this process too, for the calls on its threads); no item was run",
            "".join(traceback.format_exception(exc)),
        ) from exc


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
        cpu: Callable[[], float] | None = None,
        process_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._window_start = started
        self._workers = workers
        self._cores = cores if cores is not None else (os.cpu_count() or 1)
        self._demand = demand
        self._own_threads = own_threads  # demand() reads only the run's own workers
        self._demand_start = demand()
        self._threads_cpu = cpu  # (own threads: their CPU so far, read keeping the GIL)
        self._cpu_start = cpu() if cpu is not None else 0.0
        self._process_cpu = process_cpu  # (the engine's threads too)
        self._process_start = process_cpu()
        self._items = 0
        self._seconds = 0.0  # the calls' wall time
        self._cpu = 0.0  # their CPU time
        self.decided: Choice | None = None
        self._revisited = False
        self._next_look = -math.inf  # (see lifts_cap)

    def add(self, items: int, seconds: float, cpu: float) -> None:
        """A batch of ``items`` calls took ``seconds``, ``cpu`` of them computing."""
        self._items += items
        self._seconds += seconds
        self._cpu += cpu

    def exclude(self, seconds: float) -> None:
        """Leave out of the window time the engine held the GIL itself (starting processes):
        the calls could not use it, and would look less CPU-bound than they are."""
        self._window_start += seconds

    @property
    def window(self) -> float:
        """Seconds a window lasts at least (``WINDOW``)."""
        return WINDOW

    @property
    def can_tell_waiting(self) -> bool:
        """Whether :meth:`lifts_cap` can tell calls that wait (the threads' clocks are read)."""
        return self._threads_cpu is not None

    def lifts_cap(self, now: float) -> bool:
        """Whether the cap on calls at once (``CALLS_PER_CORE``) can go: the run's threads
        have mostly waited so far in this window (calls on I/O), or their calls are too
        short for processes to pay (``MIN_CPU``: tiny calls, the engine's cost).

        Too early to tell (short calls: under ``LOOK_EVERY`` seconds, calls that
        wait: under ``WAIT_SEEN``) or without their clocks: False.
        Threads that had little CPU were either asleep (I/O) or waiting for a
        core (a busy machine): their time ready to run tells which, if known.
        """
        if self._threads_cpu is None or now < self._next_look:
            return False
        seconds = now - self._window_start
        if seconds < LOOK_EVERY:
            return False
        # Looked at most every LOOK_EVERY: asked after each batch of tiny calls, reading
        # every thread's clock (and their ready time) took a sixth of the run's CPU.
        self._next_look = now + LOOK_EVERY
        ran = self._threads_cpu() - self._cpu_start
        if self._items >= ITEMS and ran < MIN_CPU * self._items:
            return True  # too short: they stay on threads whatever they do
        if seconds < WAIT_SEEN or ran >= GIL_BOUND * seconds:
            return False
        if self._process_cpu() - self._process_start >= GIL_BOUND * seconds:
            return False  # the engine's own threads kept the GIL busy (tiny calls)
        # Little CPU: waiting on I/O, or for a CPU (a busy machine): ready time tells.
        start, end = self._demand_start, self._demand()
        return start is None or end is None or end[1] - start[1] < GIL_BOUND * seconds

    def seen(self, now: float) -> bool:
        """Whether enough of the run was seen to tell calls that hold the GIL."""
        return now - self._window_start >= WAIT_SEEN

    def holds_cpu(self, now: float) -> bool:
        """Whether the calls so far in this window kept the GIL busy (``GIL_BOUND``)."""
        window = now - self._window_start
        return window > 0 and self._busy(window)[0] >= GIL_BOUND

    def busy(self, now: float, running: int = 0) -> bool:
        """Whether the calls so far in this window look CPU-bound enough for processes:
        the run's threads kept the GIL busy, ``MIN_CPU`` or more per call."""
        if self._threads_cpu is None:
            return False
        seconds = now - self._window_start
        ran = self._threads_cpu() - self._cpu_start
        return (
            seconds >= WAIT_SEEN
            and ran >= GIL_BOUND * seconds
            and ran >= MIN_CPU * (self._items + running)
        )

    @property
    def measuring(self) -> bool:
        """Whether the workers should still measure (a choice, or a second one, is due)."""
        return self.decided is None or (self.decided.backend == "threads" and not self._revisited)

    def ready(self, now: float, running: int = 0) -> bool:
        """Whether the window is over: enough time and calls (``running`` too) to judge."""
        return now - self._window_start >= WINDOW and self._items + running >= ITEMS

    def choose(self, now: float, running: int = 0, early: bool = False) -> Choice | None:
        """The choice once the window is over (None before, or if it does not change).

        ``running``: calls started and not finished; with the run's own
        threads measured alone, their CPU so far counts for them. ``early``:
        the processes are started already; calls that look CPU-bound
        (:meth:`busy`) move at once, from ``EARLY_CALLS`` calls on, rather than
        at the window's end.
        """
        if not self.ready(now, running) and not (
            early
            and self.decided is None
            and self._items + running >= EARLY_CALLS
            and self.busy(now, running)
        ):
            return None
        choice = self._judge(now - self._window_start, running)
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
        self._process_start = self._process_cpu()
        self._demand_start = self._demand()
        if self._threads_cpu is not None:
            self._cpu_start = self._threads_cpu()
        return choice

    def _busy(self, window: float) -> tuple[float, float]:
        """How busy the calls kept the GIL over the window (1.0: all of it), and
        their CPU time, the calls still running included where it is known."""
        busy = self._cpu / window  # their CPU time
        cpu = self._cpu
        if self._threads_cpu is not None:  # plainly GIL-bound: no need to read /proc
            ran = self._threads_cpu() - self._cpu_start
            if ran >= GIL_BOUND * window:
                return min(ran / window, 1.0), max(cpu, ran)
        start, end = self._demand_start, self._demand()
        if start is not None and end is not None:
            ran, ready = end[0] - start[0], end[1] - start[1]
            if self._own_threads:  # the run's own workers: their demand is its calls'
                # (calls still running count too: with many threads taking turns on
                # the GIL, few calls finish within a window, and their CPU lags)
                cpu = max(cpu, ran)
                if ran >= WAITS_COUNT * window:
                    busy = max(busy, min(ready / window, 1.0))
            elif ran > 0 and self._cpu >= WAITS_COUNT * window:
                # ready to run (a core's worth at most: one GIL), the calls' share
                busy = max(busy, min(ready / window, 1.0) * min(self._cpu / ran, 1.0))
        return busy, cpu

    def _judge(self, window: float, running: int = 0) -> Choice:
        busy, cpu = self._busy(window)
        if cpu == self._cpu:  # (the finished calls' alone: so are the items)
            running = 0
        per_item = cpu / max(self._items + running, 1)
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
            f"calls used {min(self._busy(window)[0], 1.0):.0%} CPU: backend='processes' or "
            f"'auto' would use all {self._cores} cores"
        )
