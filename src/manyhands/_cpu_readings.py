"""What the machine tells of the calls' CPU: their threads' CPU and waits for a core.

``backend="auto"`` (:mod:`._auto`) reads them to tell calls that compute
from calls that wait: the CPU time and time ready to run of this process's
threads (Linux's ``/proc/self/task/*/schedstat``), the time worker processes
waited for a core (``/proc/<pid>/schedstat``), the CPU clocks of the run's
own threads, and whether threads take turns on a GIL at all.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

__all__ = ["demand", "gil_enabled", "threads_cpu", "waited_for_cpu"]


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


def waited_for_cpu(pids: Iterable[int]) -> float | None:
    """Seconds the main threads of processes ``pids`` have waited for a core so far.

    Linux only (None elsewhere): ``/proc/<pid>/schedstat``'s second field.
    A process that has ended counts nothing.
    """
    if not os.path.isdir("/proc/self"):
        return None
    waited = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as stats:
                waited += int(stats.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def threads_cpu(clocks: dict[int, int]) -> float:
    """CPU time so far of the threads whose CPU clocks (``clock_gettime`` ids) are given.

    Unlike reading ``/proc``, which gives up the GIL at each file, this keeps
    it: with dozens of threads taking turns on the GIL, every release costs
    the reader a wait in line.
    """
    total = 0.0
    for clock in list(clocks.values()):
        try:
            total += time.clock_gettime(clock)
        except OSError:  # (a thread that just ended)
            continue
    return total


def gil_enabled() -> bool:
    """Whether threads of this Python run one at a time (False: a free-threaded build)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())
