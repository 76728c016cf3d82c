"""backend="auto": measured calls, a choice made once (and revisited at most once), said why."""

from __future__ import annotations

import multiprocessing
import os
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import manyhands
from manyhands import _auto
from manyhands._auto import ITEMS, WINDOW, Measure
from manyhands._auto_sizing import PROCESSES_PER_CORE, Sizing
from manyhands._autopilot import Autopilot
from manyhands._cpu_readings import gil_enabled

from .conftest import finish, run_main_script, start_python


def no_schedstat() -> None:
    return None


def worker_processes() -> list[int]:
    """This process's children that are workers (not multiprocessing's own helpers)."""
    import psutil

    helpers = ("forkserver", "resource_tracker")
    children = psutil.Process().children(recursive=True)
    return [p.pid for p in children if not any(h in " ".join(p.cmdline()) for h in helpers)]


# -- the choice, on given measurements ------------------------------------------------


def test_cpu_bound_calls_move_to_one_process_per_core() -> None:
    m = Measure(started=0.0, workers=32, cores=4, demand=no_schedstat)
    m.add(items=40, seconds=2.0, cpu=0.19)  # 40 calls of ~5 ms CPU in a 0.2 s window
    choice = m.choose(now=0.2)
    assert choice is not None and choice.backend == "processes" and choice.processes == 4
    assert "calls used 95% CPU" in str(choice) and "4 cores" in str(choice)
    assert not m.measuring  # decided for good: nothing more is measured


def test_calls_that_wait_stay_on_threads_and_short_cpu_calls_too() -> None:
    io = Measure(started=0.0, workers=100, cores=2, demand=no_schedstat)
    io.add(items=500, seconds=10.0, cpu=0.005)
    assert "they mostly wait" in str(io.choose(now=0.1))
    tiny = Measure(started=0.0, workers=8, cores=2, demand=no_schedstat)
    tiny.add(items=1_000_000, seconds=0.1, cpu=0.1)  # 0.1 us each: the engine's cost
    assert "too short" in str(tiny.choose(now=0.1))


def test_on_processes_calls_that_also_wait_get_more_processes_once() -> None:
    def grown(cpu: float, waited: float = 0.0, workers: int = 32, cores: int = 2) -> int | None:
        """8 batches of 0.1 s on 2 processes, ``cpu`` of each computing."""
        waits = iter([0.0, waited])
        sizing = Sizing(0.0, processes=2, workers=workers, cores=cores, waited=lambda: next(waits))
        for _ in range(8):
            sizing.add(seconds=0.1, cpu=cpu)
        return sizing.judge(now=WINDOW)

    assert grown(cpu=0.05) == 8  # half of the time waiting: twice the fit, 4 per core
    assert grown(cpu=0.08) == 5  # 80%: 2 x 2 / 0.8
    assert grown(cpu=0.095) is None  # CPU-bound: one process per core is right
    assert grown(cpu=0.05, waited=0.35) is None  # they waited for a core, not on I/O
    assert grown(cpu=0.004) == 0  # 4%: they mostly wait, the move was wrong: back to threads
    assert grown(cpu=0.01, workers=6) == 6  # never more than the run's workers
    assert grown(cpu=0.02, cores=3) == 3 * PROCESSES_PER_CORE  # nor 4 per core
    sizing = Sizing(0.0, processes=2, workers=32, cores=2)
    for _ in range(3):
        sizing.add(seconds=0.1, cpu=0.01)
    assert sizing.judge(now=1.0) is None and not sizing.done  # two batches per process first
    sizing.add(seconds=0.1, cpu=0.01)
    assert sizing.judge(now=1.0) == 8 and sizing.done
    assert sizing.judge(now=2.0) is None  # once


def test_whether_calls_wait_is_looked_at_every_few_ms_not_after_every_batch() -> None:
    reads = Counter[str]()

    def demand() -> tuple[float, float]:
        reads["ready time"] += 1  # a file per thread
        return 0.0, 0.0

    def cpu() -> float:
        reads["clocks"] += 1  # a clock per thread
        return 0.0

    m = Measure(started=0.0, workers=32, cores=2, demand=demand, own_threads=True, cpu=cpu,
                process_cpu=lambda: 0.0)  # fmt: skip
    reads.clear()
    # 1,000 batches of tiny calls come back within 20 ms, after WAIT_SEEN
    answers = [m.lifts_cap(_auto.WAIT_SEEN + n * 2e-5) for n in range(1000)]
    assert answers[0] is True  # little CPU, no time ready to run: they wait
    looks = 1 + int(1000 * 2e-5 / _auto.LOOK_EVERY)
    assert reads["clocks"] <= looks and reads["ready time"] <= looks, reads


def test_calls_are_not_waiting_while_the_engine_keeps_the_gil_busy() -> None:
    """Tiny calls: the workers' own CPU is low (the engine's thread takes the GIL most of
    the time), but the process is busy: no need to read every thread's ready time."""
    reads = Counter[str]()

    def demand() -> tuple[float, float]:
        reads["ready time"] += 1
        return 0.0, 0.0

    process = {"cpu": 0.0}
    m = Measure(started=0.0, workers=32, cores=2, demand=demand, own_threads=True,
                cpu=lambda: 0.005, process_cpu=lambda: process["cpu"])  # fmt: skip
    reads.clear()
    process["cpu"] = 0.025  # the whole process computed 25 ms of the first 25 ms
    assert m.lifts_cap(0.025) is False
    assert reads["ready time"] == 0


def test_calls_too_short_for_processes_lift_the_cap_on_calls_at_once() -> None:
    def lifted(items: int, cpu: float) -> bool:
        clock["cpu"] = 0.0
        m = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat, own_threads=True,
                    cpu=lambda: clock["cpu"], process_cpu=lambda: clock["cpu"])  # fmt: skip
        m.add(items=items, seconds=cpu, cpu=cpu)
        clock["cpu"] = cpu
        return m.lifts_cap(0.006)  # (a few ms in: a 50 ms run of them is not held long)

    clock = {"cpu": 0.0}
    assert lifted(items=5_000, cpu=0.006)  # 1.2 us each: they stay on threads anyway
    assert not lifted(items=50, cpu=0.006)  # 50 cached, then CPU-bound calls running


def test_one_core_a_free_threaded_python_or_one_worker_stay_on_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cpu_bound(cores: int, workers: int = 32) -> str:
        m = Measure(started=0.0, workers=workers, cores=cores, demand=no_schedstat)
        m.add(items=50, seconds=1.0, cpu=0.5)
        return str(m.choose(now=0.5))

    assert "1 core" in cpu_bound(cores=1)
    assert "workers=1" in cpu_bound(cores=8, workers=1)
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert "free-threaded" in cpu_bound(cores=8)


def test_no_choice_before_the_window_and_a_few_dozen_items() -> None:
    m = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat)
    m.add(items=ITEMS - 1, seconds=1.0, cpu=1.0)
    assert m.choose(now=10.0) is None  # too few items
    m.add(items=1, seconds=0.01, cpu=0.01)
    assert m.choose(now=WINDOW / 2) is None  # too soon
    assert m.choose(now=WINDOW) is not None


def test_a_run_whose_calls_change_completely_may_decide_once_more() -> None:
    m = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat)
    m.add(items=50, seconds=0.01, cpu=0.0001)  # the first items were cached
    first = m.choose(now=0.1)
    assert first is not None and first.backend == "threads" and m.measuring
    m.add(items=30, seconds=3.0, cpu=0.3)  # then each computes 10 ms
    second = m.choose(now=0.5)
    assert second is not None and second.backend == "processes"
    assert not m.measuring
    m.add(items=30, seconds=3.0, cpu=0.001)
    assert m.choose(now=2.0) is None  # at most once more


def test_load_from_other_processes_does_not_hide_cpu_bound_calls() -> None:
    # The machine gives this process 40% of a core, but its threads were ready to
    # run the whole window, and the calls are what ran.
    readings = iter([(0.0, 0.0), (0.08, 0.2), (0.08, 0.2)])
    m = Measure(started=0.0, workers=32, cores=2, demand=lambda: next(readings))
    m.add(items=30, seconds=3.0, cpu=0.076)
    choice = m.choose(now=0.2)
    assert choice is not None and choice.backend == "processes"


def test_a_runs_own_threads_count_the_calls_still_running() -> None:
    # 32 threads take turns on the GIL: in the window only 30 short calls finished
    # (0.03 s of CPU), but the run's own workers were ready to run all of it.
    readings = iter([(0.0, 0.0), (0.2, 0.2), (0.2, 0.2)])
    shared = Measure(started=0.0, workers=32, cores=2, demand=lambda: next(readings))
    shared.add(items=30, seconds=3.0, cpu=0.03)
    assert str(shared.choose(now=0.2)).startswith("threads")  # (another run's calls?)
    readings = iter([(0.0, 0.0), (0.2, 0.2), (0.2, 0.2)])
    own = Measure(started=0.0, workers=32, cores=2, demand=lambda: next(readings), own_threads=True)
    own.add(items=30, seconds=3.0, cpu=0.03)
    choice = own.choose(now=0.2)
    assert choice is not None and choice.backend == "processes"


def test_calls_still_running_count_toward_the_items_and_their_cpu() -> None:
    # The first 50 items were cached (no CPU); then 32 threads took turns on the GIL
    # with calls of 10 ms that had not finished when the window ended.
    readings = iter([(0.0, 0.0), (0.1, 0.1), (0.1, 0.1)])
    m = Measure(started=0.0, workers=32, cores=2, demand=lambda: next(readings), own_threads=True)
    m.add(items=50, seconds=0.005, cpu=0.0001)
    choice = m.choose(now=0.1, running=32)
    assert choice is not None and choice.backend == "processes"
    assert "1.2ms each" in choice.why  # 0.1 s of CPU over 50 finished + 32 running calls
    none_finished = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat)
    assert none_finished.choose(now=0.1, running=ITEMS) is not None  # enough calls seen


# -- real runs -------------------------------------------------------------------------


def spin(x: int) -> int:
    total = 0
    for i in range(40_000):
        total += i * i % 7
    return total + x


def test_cpu_bound_calls_on_auto_finish_on_processes_and_say_why() -> None:
    if (__import__("os").cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    code = textwrap.dedent(
        """
        import manyhands
        from tests.test_auto import spin

        if __name__ == "__main__":
            {CPU_BOUND_ALWAYS}
            outs = list(manyhands.map(spin, range(300), backend="auto", ordered=True))
            report = outs and manyhands.run(spin, range(300), backend="auto")
            print([o.value for o in outs] == [spin(x) for x in range(300)])
            print(report.succeeded, report.backend)
        """
    ).replace("{CPU_BOUND_ALWAYS}", CPU_BOUND_ALWAYS)
    proc = start_python(code)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    same, summary = out.splitlines()
    assert same == "True"
    assert summary.startswith("300 processes (auto: calls used")


def test_calls_that_wait_stay_on_threads_on_auto() -> None:
    report = manyhands.run(time.sleep, [0.01] * 400, backend="auto", workers=50)
    assert report.succeeded == 400
    assert report.backend.startswith("threads (auto:")
    assert "backend: threads (auto:" in str(report)


# The end-to-end tests below are about what a choice does (the move, the fallback, a
# pool's shared processes), not about measuring: on a machine busy with other work the
# calls' measured share of CPU varies, so they take every call of 50us CPU or more as
# CPU-bound (GIL_BOUND = 0). The measurement itself is tested above, on given figures.
CPU_BOUND_ALWAYS = "import manyhands._auto; manyhands._auto.GIL_BOUND = 0.0"


def test_a_function_that_cannot_travel_stays_on_threads_and_the_report_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if (__import__("os").cpu_count() or 1) < 2:
        pytest.skip("one core")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)
    lock = threading.Lock()

    def spin_locked(x: int) -> int:
        with lock:  # a lock does not pickle: this function cannot go to a process
            pass
        return spin(x)

    report = manyhands.run(spin_locked, range(300), backend="auto")
    assert report.succeeded == 300
    assert report.backend.startswith("threads (calls used")
    assert "cannot be sent to a worker process" in report.backend


def test_a_threads_run_of_cpu_bound_calls_ends_with_a_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if (__import__("os").cpu_count() or 1) < 2:
        pytest.skip("one core: no hint")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)  # (see CPU_BOUND_ALWAYS below)
    report = manyhands.run(spin, range(300), workers=8)
    assert report.backend == "threads"
    assert any("backend='processes' or 'auto' would use all" in n for n in report.notes)
    quiet = manyhands.run(time.sleep, [0.005] * 200, workers=50)
    assert not quiet.notes


def test_auto_takes_processes_options_and_the_command_takes_auto(tmp_path: Path) -> None:
    assert manyhands.run(abs, range(10), backend="auto", start_method="spawn").succeeded == 10
    with pytest.raises(ValueError, match="backend='fibers' is not a known backend"):
        manyhands.run(abs, [1], backend="fibers")
    from manyhands.cli import main

    numbers = tmp_path / "n.txt"
    numbers.write_text("1\n2\n3\n")
    assert main(["run", "builtins:len", str(numbers), "--backend", "auto"]) == 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(switch_after=st.integers(min_value=1, max_value=60), ordered=st.booleans())
def test_moving_at_any_point_loses_and_repeats_nothing(switch_after: int, ordered: bool) -> None:
    """The run moves to processes after ``switch_after`` measured batches (forced)."""
    seen = []

    def choose_after(
        self: Measure, now: float, running: int = 0, early: bool = False
    ) -> _auto.Choice | None:
        seen.append(now)
        if len(seen) == switch_after:
            self.decided = _auto.Choice("processes", "forced by the test", 2)
            return self.decided
        return None

    original = Measure.choose
    Measure.choose = choose_after  # type: ignore[method-assign]
    try:
        outs = list(
            manyhands.map(
                _fail_some, range(120), backend="auto", ordered=ordered, batch_size=2, retry=1
            )
        )
    finally:
        Measure.choose = original  # type: ignore[method-assign]
    assert Counter(o.item for o in outs) == Counter(range(120))  # each exactly once
    assert sorted(o.item for o in outs if not o.ok) == [x for x in range(120) if x % 17 == 5]
    assert all(o.value == 2 * o.item for o in outs if o.ok)
    if ordered:
        assert [o.item for o in outs] == list(range(120))


def _fail_some(x: int) -> int:
    if x % 17 == 5:
        raise ValueError(x)
    return 2 * x


def pid_of(x: int) -> tuple[int, int]:
    spin(x)
    return x, __import__("os").getpid()


def nap_then_spin(x: int) -> tuple[int, int]:
    """Waits 20 ms, then computes a little (spin's share of the call is small)."""
    time.sleep(0.02)
    spin(x)
    return x, os.getpid()


def test_calls_that_also_wait_move_to_more_processes_than_cores() -> None:
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    code = textwrap.dedent(
        """
        import os
        import manyhands
        from tests.test_auto import nap_then_spin, worker_processes

        if __name__ == "__main__":
            {CPU_BOUND_ALWAYS}
            run = manyhands.map(nap_then_spin, range(400), backend="auto", ordered=True)
            outs = list(run)
            print([o.value[0] for o in outs] == list(range(400)))
            print(len({o.value[1] for o in outs} - {os.getpid()}))
            print(run.report.backend)
            print(worker_processes())
        """
    ).replace("{CPU_BOUND_ALWAYS}", CPU_BOUND_ALWAYS)
    proc = start_python(code)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    same, processes, backend, left = out.splitlines()
    assert same == "True"  # every item once, in order
    assert "; then " in backend and "processes: calls computed" in backend, backend
    grown_to = int(backend.split("; then ")[1].split(" ")[0])
    assert cores < grown_to <= PROCESSES_PER_CORE * cores
    assert cores < int(processes) <= grown_to  # the added processes ran calls
    assert left == "[]"  # and stopped with the run


def nap_where(x: int) -> tuple[int, int]:
    time.sleep(0.02)
    return x, os.getpid()


def test_calls_that_wait_moved_to_processes_by_mistake_go_back_to_threads() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    # A machine busy with other work can make threads that wait on I/O look CPU-bound
    # (their time waiting for a core); here every call is taken as CPU-bound.
    code = textwrap.dedent(
        """
        import os
        import manyhands, manyhands._auto
        from tests.test_auto import nap_where, worker_processes

        if __name__ == "__main__":
            manyhands._auto.GIL_BOUND = manyhands._auto.MIN_CPU = 0.0
            run = manyhands.map(nap_where, range(400), backend="auto", workers=50)
            outs = sorted(o.value for o in run)
            print([x for x, _ in outs] == list(range(400)))
            print(sum(pid == os.getpid() for _, pid in outs))
            print(run.report.backend)
            print(worker_processes())
        """
    )
    proc = start_python(code)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    same, on_threads, backend, left = out.splitlines()
    assert same == "True"  # every item once
    assert backend.startswith("threads (auto: calls used"), backend
    assert "on processes the calls computed" in backend and "back to threads" in backend
    assert int(on_threads) >= 300  # the processes ran a few calls, the threads the rest
    assert left == "[]"


def test_a_pool_on_auto_moves_cpu_bound_runs_to_processes_it_shares_and_stops() -> None:
    if (__import__("os").cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    code = textwrap.dedent(
        """
        import os, time
        import manyhands
        from tests.test_auto import pid_of, worker_processes

        if __name__ == "__main__":
            {CPU_BOUND_ALWAYS}
            with manyhands.Pool(backend="auto") as pool:
                io = pool.run(time.sleep, [0.002] * 200)
                runs = [pool.map(pid_of, range(300), ordered=True) for _ in range(2)]
                first, second = [list(outs) for outs in runs]
            me = os.getpid()
            print(io.succeeded, io.backend.split(" ")[0])
            for outs, run in zip((first, second), runs):
                print([o.value[0] for o in outs] == list(range(300)), run.report.backend)
            workers = lambda outs: {o.value[1] for o in outs} - {me}
            print(bool(workers(second))
                  and len(workers(first) | workers(second)) <= (os.cpu_count() or 1))
            print(worker_processes())
        """
    ).replace("{CPU_BOUND_ALWAYS}", CPU_BOUND_ALWAYS)
    proc = start_python(code)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    io, first, second, shared, left = out.splitlines()
    assert io == "200 threads"  # calls that wait stay on the pool's threads
    for line in (first, second):  # every item once, in order, and the run moved
        assert line.startswith("True processes (auto: calls used"), line
    assert shared == "True"  # one set of processes (one per core) served both runs
    assert left == "[]"  # the with block stopped them


def cached_then_spin(x: int) -> tuple[int, float]:
    """The first 30 items are cached; the rest compute ~400 times as long as spin (a
    second or more on threads: longer than the processes take to start, even on a
    busy machine, where 150 times was not)."""
    if x >= 30:
        for _ in range(400):
            spin(x)
    return os.getpid(), time.monotonic()


def test_auto_chooses_when_its_window_ends_even_if_no_call_has_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Threads taking turns on the GIL all finish late: auto does not wait for one.

    Before, the choice came with the first call finished after the window, so
    after the cached items the run stayed on threads until a whole round of
    CPU-bound calls had finished there (all of them at about the same time).
    """
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)  # (see CPU_BOUND_ALWAYS)
    moved: list[float] = []
    move = Autopilot._move_to_processes

    def timed_move(self: Autopilot, choice: _auto.Choice, sample: list[Any]) -> None:
        moved.append(time.monotonic())
        move(self, choice, sample)

    monkeypatch.setattr(Autopilot, "_move_to_processes", timed_move)
    outs = manyhands.map(cached_then_spin, range(36), backend="auto", workers=4)
    ends = [outcome.value for outcome in outs if outcome.item >= 30]
    assert outs.report.succeeded == 36 and outs.report.backend.startswith("processes")
    on_threads = [end for pid, end in ends if pid == os.getpid()]
    assert on_threads and len(moved) == 1
    assert moved[0] < min(on_threads)  # chosen before any CPU-bound call ended here


def test_the_processes_start_once_calls_look_cpu_bound_and_the_move_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)  # (see CPU_BOUND_ALWAYS)
    events: list[str] = []
    own, move = Autopilot._own_processes, Autopilot._move_to_processes

    def started(self: Autopilot, workers: int) -> Any:
        events.append("processes started")
        return own(self, workers)

    def moved(self: Autopilot, choice: _auto.Choice, sample: list[Any]) -> None:
        events.append("moved")
        move(self, choice, sample)

    monkeypatch.setattr(Autopilot, "_own_processes", started)
    monkeypatch.setattr(Autopilot, "_move_to_processes", moved)
    outs = manyhands.map(pid_of, range(200), backend="auto", workers=8)
    assert sorted(o.value[0] for o in outs) == list(range(200))
    assert outs.report.backend.startswith("processes (auto:")
    assert events == ["processes started", "moved"]  # started before the choice, once


def test_processes_started_for_a_move_that_does_not_come_are_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)  # the calls look CPU-bound: processes start
    started: list[Autopilot] = []
    own = Autopilot._own_processes

    def counted(self: Autopilot, workers: int) -> Any:
        started.append(self)
        return own(self, workers)

    monkeypatch.setattr(Autopilot, "_own_processes", counted)
    stay = _auto.Choice("threads", "kept by the test")
    monkeypatch.setattr(Measure, "_judge", lambda self, window, running=0: stay)
    report = manyhands.run(spin, range(200), backend="auto", workers=8)
    assert report.succeeded == 200 and report.backend.startswith("threads (auto: kept")
    assert len(started) == 1
    deadline = time.monotonic() + 10
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.05)  # (a process killed a moment ago may still be reaped)
    assert worker_processes() == []


def test_with_its_processes_started_auto_chooses_before_the_window_ends() -> None:
    clock = {"cpu": 0.0}
    m = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat, own_threads=True,
                cpu=lambda: clock["cpu"])  # fmt: skip
    clock["cpu"] = 0.04  # 8 calls running for 40 ms on one GIL: CPU-bound
    assert m.choose(now=0.04, running=8) is None  # the window is not over
    choice = m.choose(now=0.04, running=8, early=True)  # but the processes are ready
    assert choice is not None and choice.backend == "processes"
    # Calls of seconds: two running, none finished, after the window's time. Without the
    # processes started, the choice waits for ITEMS calls (seconds each, on one core).
    slow = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat, own_threads=True,
                   cpu=lambda: clock["cpu"])  # fmt: skip
    clock["cpu"] += 0.3
    assert slow.choose(now=0.3, running=2) is None
    choice = slow.choose(now=0.3, running=2, early=True)
    assert choice is not None and choice.backend == "processes"


class AtOnce:
    """Counts the calls running at once (``with at_once:`` around each), and the most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


_spinning = AtOnce()  # (module-level: spin_counted must pickle by reference)


def spin_counted(x: int) -> int:
    """spin, counting the calls at once in this process (the main one: on threads)."""
    with _spinning:
        return spin(x)


def test_auto_runs_few_calls_at_once_on_threads_until_they_are_seen_to_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPU-bound calls started on threads all finish there, late: auto starts few.

    Before, all 32 workers started a call at once, and the engine waited in
    line for the GIL behind them to make its choice.
    """
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)  # (see CPU_BOUND_ALWAYS)
    _spinning.most = 0
    report = manyhands.run(spin_counted, range(200), backend="auto", workers=32)
    assert report.succeeded == 200 and report.backend.startswith("processes")
    assert 1 <= _spinning.most <= _auto.CALLS_PER_CORE * (os.cpu_count() or 1)


def test_calls_that_wait_on_auto_soon_run_as_many_at_once_as_workers() -> None:
    at_once = AtOnce()

    def wait(x: int) -> int:
        with at_once:
            time.sleep(0.05)
        return x

    report = manyhands.run(wait, range(300), backend="auto", workers=50)
    assert report.succeeded == 300 and report.backend.startswith("threads (auto:")
    assert at_once.most == 50  # the few calls at first were lifted to all workers


def test_a_run_on_auto_whose_calls_wait_starts_no_process() -> None:
    """A forkserver imports the main script: a run that stays on threads must not start one
    (an unguarded script's top level would run again there)."""
    code = textwrap.dedent(
        """
        import time, psutil, manyhands

        report = manyhands.run(time.sleep, [0.02] * 200, backend="auto", workers=20)
        print(report.backend.split(" ")[0], len(psutil.Process().children(recursive=True)))
        """
    )
    proc = start_python(code)
    out, err = finish(proc, timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["threads", "0"]


def test_the_switch_interval_is_restored_after_moves_that_overlap() -> None:
    from manyhands._gil_turns import first_in_line

    before = sys.getswitchinterval()
    first, second = first_in_line(), first_in_line()
    first.__enter__()
    second.__enter__()
    assert sys.getswitchinterval() < before
    first.__exit__(None, None, None)  # (the first run's move ends before the second's)
    assert sys.getswitchinterval() < before
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == before


def test_while_auto_measures_the_engine_waits_short_turns_for_the_gil() -> None:
    """Behind CPU-bound calls taking 5 ms turns, the engine was 4-57 ms late to look."""
    from manyhands._autopilot import MEASURING_TURNS
    from manyhands._gil_turns import first_in_line

    if (os.cpu_count() or 1) < 2 or not gil_enabled():
        pytest.skip("auto does not cap the calls here: nothing to measure")
    before = sys.getswitchinterval()
    seen: list[float] = []

    def spin_seen(x: int) -> int:
        seen.append(sys.getswitchinterval())
        return spin(x)

    report = manyhands.run(spin_seen, range(50), backend="auto", workers=32)
    assert report.succeeded == 50
    assert seen[0] <= MEASURING_TURNS < before  # the first calls run while it measures
    assert sys.getswitchinterval() == before  # and it is restored after
    with first_in_line(1e-4):  # a move inside the window: the shortest asked holds
        inner = first_in_line(MEASURING_TURNS)
        inner.__enter__()
        assert sys.getswitchinterval() == pytest.approx(1e-4)
    assert sys.getswitchinterval() == pytest.approx(MEASURING_TURNS)
    inner.__exit__(None, None, None)
    assert sys.getswitchinterval() == before


SETUP: dict[str, Any] = {}


def remember(value: int) -> None:
    SETUP["value"] = value


def set_up_value(x: int) -> tuple[Any, int]:
    spin(x)
    return SETUP.get("value"), os.getpid()


def test_on_auto_the_initializer_also_runs_here_for_the_calls_on_threads() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: auto stays on threads (tested above)")
    code = textwrap.dedent(
        """
        import os
        import manyhands
        from tests.test_auto import remember, set_up_value

        if __name__ == "__main__":
            {CPU_BOUND_ALWAYS}
            outs = list(manyhands.map(set_up_value, range(300), backend="auto",
                                      initializer=remember, initargs=(42,)))
            print(sorted({o.value[0] for o in outs}))
            print(any(o.value[1] == os.getpid() for o in outs),
                  any(o.value[1] != os.getpid() for o in outs))
        """
    ).replace("{CPU_BOUND_ALWAYS}", CPU_BOUND_ALWAYS)
    proc = start_python(code)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    values, where = out.splitlines()
    assert values == "[42]"  # every call saw it, on threads and on processes
    assert where == "True True"  # (calls ran in both places)


def test_on_auto_an_initializer_that_raises_runs_no_item(no_thread_left: None) -> None:
    def broken() -> None:
        raise OSError("no database")

    ran: list[int] = []
    with pytest.raises(manyhands.WorkerInitError, match="OSError: no database"):
        manyhands.run(ran.append, range(10), backend="auto", initializer=broken)
    assert ran == []
    with pytest.raises(manyhands.WorkerInitError, match="OSError: no database"):
        manyhands.Pool(backend="auto", initializer=broken)


def test_a_pool_on_auto_runs_its_initializer_here_for_its_threads() -> None:
    SETUP.clear()
    with manyhands.Pool(backend="auto", initializer=remember, initargs=(7,)) as pool:
        report = pool.run(lambda x: SETUP["value"], range(20))
    assert report.succeeded == 20


def test_the_processes_auto_starts_early_import_the_main_script_once(tmp_path: Path) -> None:
    """auto starts the forkserver once the calls look CPU-bound, before any process
    backend exists: it must preload what the workers need, the main script included,
    as a process backend's start does (it did not: each worker imported the script)."""
    if (os.cpu_count() or 1) < 2 or not gil_enabled():
        pytest.skip("auto stays on threads here")
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver here: each spawned worker imports the script")
    out, imports = run_main_script(
        tmp_path,
        """
        import os, time, manyhands
        def spin(x):
            end = time.process_time() + 0.01
            while time.process_time() < end:
                pass
            return os.getpid()
        if __name__ == "__main__":
            from manyhands import _auto
            _auto.GIL_BOUND = 0.0  # (the calls look CPU-bound at once)
            report = manyhands.run(spin, range(200), backend="auto", workers=8)
            print(report.backend.split()[0], report.succeeded)
        """,
    )
    assert out == ["processes", "200"]
    assert imports == ["__main__", "__mp_main__"]  # once, in the forkserver


# -- faults around the move -------------------------------------------------------------


def chosen_at_a_completion(monkeypatch: pytest.MonkeyPatch, after: int = 3) -> None:
    """auto chooses processes as its ``after``-th measured batch comes back (forced)."""
    measured = Autopilot._measured
    batches: list[int] = []

    def counted(self: Autopilot, batch: Any) -> None:
        batches.append(len(batch.items))
        measured(self, batch)

    def choose(
        self: Measure, now: float, running: int = 0, early: bool = False
    ) -> _auto.Choice | None:
        if len(batches) < after:
            return None
        self.decided = _auto.Choice("processes", "forced by the test", 2)
        return self.decided

    monkeypatch.setattr(Autopilot, "_measured", counted)
    monkeypatch.setattr(Measure, "choose", choose)


def recorded_keys(journal: Path) -> set[str]:
    import sqlite3

    db = sqlite3.connect(journal)
    try:
        return {row[0] for row in db.execute("SELECT key FROM items")}
    finally:
        db.close()


@pytest.mark.parametrize("where", ["in the move", "while measuring"])
def test_a_ctrl_c_during_the_move_to_processes_loses_no_finished_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Starting the processes takes 100 ms or more; a Ctrl-C then landed in the move.

    Before, the move was made while the batch that chose it was being settled, before it
    reached delivery: that batch was lost (its calls had run, the journal did not have
    them, and a resume ran them again). Measuring a batch takes milliseconds too behind
    CPU-bound calls (each file or clock read waits for the GIL): the same held there.
    """

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # (as if Ctrl-C came just then)

    if where == "in the move":
        chosen_at_a_completion(monkeypatch)
        monkeypatch.setattr(Autopilot, "_start_processes_early", lambda self: None)
        monkeypatch.setattr(Autopilot, "_own_processes", interrupted)
    else:
        measured = Autopilot._measured
        batches: list[Any] = []

        def measuring(self: Autopilot, batch: Any) -> None:
            batches.append(batch)
            if len(batches) == 3:
                interrupted()
            measured(self, batch)

        monkeypatch.setattr(Autopilot, "_measured", measuring)
    finished: list[int] = []

    def call(x: int) -> int:
        finished.append(x)  # (the call is over: only the engine is left to do)
        return x

    journal = tmp_path / "j.db"
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(call, range(200), backend="auto", batch_size=1, journal=journal)
    assert len(finished) >= 3
    assert recorded_keys(journal) == {str(x) for x in finished}  # every finished call
    monkeypatch.undo()
    report = manyhands.run(call, range(200), backend="threads", journal=journal)
    assert report.succeeded + report.skipped == 200
    assert sorted(finished) == list(range(200))  # the resume ran the rest, none twice


def in_a_worker_process() -> None:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("no database in a worker")


def test_an_initializer_that_fails_only_in_worker_processes_keeps_the_run_on_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Report said "...the worker initializer raised ...; no item was run" while
    every item had run, on threads."""
    chosen_at_a_completion(monkeypatch, after=1)
    report = manyhands.run(spin, range(100), backend="auto", initializer=in_a_worker_process)
    assert report.succeeded == 100
    assert report.backend.startswith("threads (forced by the test, but"), report.backend
    assert "initializer raised builtins.RuntimeError: no database in a worker" in report.backend
    assert "no item was run" not in report.backend
    assert report.backend.endswith("the items ran on threads)"), report.backend


def spin_rebuilt_here() -> SpinHere:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("a SpinHere cannot be rebuilt in a worker process")
    return SpinHere()


class SpinHere:
    """spin, as a callable whose pickle calls what raises in a worker process."""

    def __call__(self, x: int) -> int:
        return spin(x)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return spin_rebuilt_here, ()


def test_a_function_that_cannot_be_loaded_in_worker_processes_keeps_the_run_on_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Report said "...in a worker process the initializer raised ..." though no
    initializer was given: it names fn, and why it could not be loaded."""
    chosen_at_a_completion(monkeypatch, after=1)
    report = manyhands.run(SpinHere(), range(100), backend="auto")
    assert report.succeeded == 100
    assert report.backend.startswith(
        "threads (forced by the test, but fn could not be loaded in a worker process: "
        "builtins.RuntimeError: a SpinHere cannot be rebuilt in a worker process ("
    ), report.backend
    assert "initializer" not in report.backend and "no item was run" not in report.backend
    assert report.backend.endswith("the items ran on threads)"), report.backend


@pytest.mark.parametrize("ordered", [False, True])
def test_a_pools_run_whose_function_cannot_be_loaded_in_its_processes_goes_back_to_threads(
    monkeypatch: pytest.MonkeyPatch, ordered: bool
) -> None:
    """A Pool's processes load a run's fn with its first batch, after the move: the
    items failed "fn could not be loaded in a worker process" (84 of 100 here),
    though on threads they ran. Now they run on threads, as does the rest of the run."""
    chosen_at_a_completion(monkeypatch, after=1)
    with manyhands.Pool(backend="auto") as pool:
        outcomes = list(pool.map(SpinHere(), range(100), ordered=ordered))
        report = pool.run(SpinHere(), range(100, 150))  # (the pool goes on)
    assert [out.error for out in outcomes if not out.ok] == []
    assert sorted(out.value for out in outcomes) == [spin(x) for x in range(100)]
    if ordered:
        assert [out.item for out in outcomes] == list(range(100))
    assert report.succeeded == 50 and report.failed == 0
    assert report.backend.startswith(
        "threads (forced by the test, but fn could not be loaded in a worker process: "
        "builtins.RuntimeError: a SpinHere cannot be rebuilt in a worker process ("
    ), report.backend
    assert report.backend.endswith("the items ran on threads)"), report.backend
    assert "could not be sent" not in " ".join(report.notes)  # (they pickle)


def says_not_loaded(item: tuple[str, int]) -> int:
    """Writes down each call; every 10th raises an error of its own that reads like a
    function that could not be loaded (a nested run's WorkerInitError, say)."""
    path, n = item
    with open(path, "a") as calls:
        calls.write(f"{n}\n")
    if n % 10 == 7:
        raise RuntimeError("fn could not be loaded in a worker process: my own words")
    return n


def test_a_pools_call_whose_own_error_reads_like_fn_not_loaded_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run went back to threads and called such an item again: it was read from the
    error's words, not marked by the backend."""
    chosen_at_a_completion(monkeypatch, after=1)
    path = str(tmp_path / "calls.txt")
    with manyhands.Pool(backend="auto") as pool:
        report = pool.run(says_not_loaded, [(path, n) for n in range(200)])
    calls = Path(path).read_text().split()
    assert sorted(map(int, calls)) == list(range(200))  # each called once
    assert (report.succeeded, report.failed) == (180, 20)
    assert report.backend.startswith("processes (auto: forced by the test"), report.backend


class Locked:
    """An item that cannot go to another process (it holds a lock)."""

    def __init__(self, n: int, path: str = "") -> None:
        self.n = n
        self.path = path  # (where logged writes its calls down)
        self.lock = threading.Lock()


def number_and_pid(x: int | Locked) -> tuple[int, int]:
    return (x.n if isinstance(x, Locked) else x), os.getpid()


@pytest.mark.parametrize("how", ["as completed", "ordered", "in a pool"])
def test_an_item_that_cannot_go_to_a_process_after_the_move_runs_on_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Before, it failed: "could not be sent to a worker process" (only the first items
    were checked at the move), though it would have run on threads."""
    chosen_at_a_completion(monkeypatch, after=1)
    locked = {60, 61, 150}
    items = [Locked(i) if i in locked else i for i in range(200)]
    journal = tmp_path / "j.db"
    ordered = how == "ordered"
    options: dict[str, Any] = dict(window=8, ordered=ordered, journal=journal,
                                   key=lambda x: str(number_and_pid(x)[0]))  # fmt: skip
    if how == "in a pool":
        with manyhands.Pool(backend="auto") as pool:
            outs = pool.map(number_and_pid, items, **options)
            got = list(outs)
    else:
        outs = manyhands.map(number_and_pid, items, backend="auto", **options)
        got = list(outs)
    assert all(o.ok for o in got), [o.error for o in got if not o.ok]
    numbers = [o.value[0] for o in got]
    assert sorted(numbers) == list(range(200))
    if ordered:
        assert numbers == list(range(200))
    here = {o.value[0] for o in got if o.value[1] == os.getpid()}
    assert locked <= here and len(here) < 100  # they ran on threads, the rest mostly not
    report = outs.report
    assert report.backend.startswith("processes (auto: forced by the test")
    assert any("3 items could not be sent to a worker process" in n for n in report.notes)
    assert recorded_keys(journal) == {str(i) for i in range(200)}


def fail_if_locked(x: int | Locked) -> int:
    if isinstance(x, Locked):
        raise_from_a_frame_of_its_own(x.n)
    return x  # type: ignore[return-value]


def raise_from_a_frame_of_its_own(n: int) -> None:
    raise ValueError(f"bad {n}")


def test_an_item_run_on_threads_after_the_move_that_fails_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its call's traceback came back apart from the error and was dropped: the Failure
    said only "ValueError: bad 60"."""
    chosen_at_a_completion(monkeypatch, after=1)
    items = [Locked(i) if i in (60, 150) else i for i in range(200)]
    report = manyhands.run(fail_if_locked, items, backend="auto", window=8)
    assert report.backend.startswith("processes (auto: forced by the test")
    assert report.failed == 2
    for failure in report.failures:
        assert "in raise_from_a_frame_of_its_own" in failure.traceback, failure.traceback


def logged(item: tuple[str, int] | Locked) -> int:
    """Writes down each call (in whichever process it runs)."""
    path, n = (item.path, item.n) if isinstance(item, Locked) else item
    with open(path, "a") as calls:
        calls.write(f"{n}\n")
    return n


def test_a_ctrl_c_while_an_item_runs_on_threads_after_the_move_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its batch waits for it: a Ctrl-C then keeps the batch's other finished calls."""
    from manyhands._run import Run

    chosen_at_a_completion(monkeypatch, after=1)
    send = Run._send_back_to

    def interrupted(self: Run, via: int, batch: Any) -> None:
        send(self, via, batch)
        raise KeyboardInterrupt  # (as if Ctrl-C came just after)

    monkeypatch.setattr(Run, "_send_back_to", interrupted)
    log = tmp_path / "calls"
    items: list[Any] = [(str(log), i) for i in range(100)]
    items[40] = Locked(40, str(log))
    journal = tmp_path / "j.db"

    def key(item: Any) -> str:
        return str(item.n if isinstance(item, Locked) else item[1])

    with pytest.raises(KeyboardInterrupt):
        manyhands.run(logged, items, backend="auto", window=8, journal=journal, key=key)
    ran = log.read_text().split()
    assert "40" in ran and len(ran) < 100
    assert recorded_keys(journal) == set(ran)  # every finished call, its batch's too
    monkeypatch.undo()
    report = manyhands.run(logged, items, backend="threads", journal=journal, key=key)
    assert report.succeeded + report.skipped == 100
    assert sorted(map(int, log.read_text().split())) == list(range(100))  # none twice


def test_a_note_in_a_pool_runs_report_is_not_in_the_next_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run's statistics hold the pool's backend notes (the same list): a run's own
    note went into it, and every later run of the pool showed it too."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no hint")
    monkeypatch.setattr(_auto, "GIL_BOUND", 0.0)  # (see CPU_BOUND_ALWAYS)
    with manyhands.Pool(workers=8) as pool:
        first = pool.run(spin, range(300))
        second = pool.run(time.sleep, [0.001] * 20)
    assert any("backend='processes' or 'auto' would use all" in n for n in first.notes)
    assert second.notes == ()


def test_many_threads_woken_at_once_do_not_pass_for_a_gil_held() -> None:
    """100 threads whose answers came back together wait for a core in turn: their
    waits summed to 92% of the first 0.12 s while their CPU was 17% of it (HTTP calls
    to a server with a queue). Read as a GIL held, it released the latency limit, so
    the run never slowed down for the server, and advised processes for I/O."""
    schedstat = {"ran": 0.0, "ready": 0.0}
    m = Measure(started=0.0, workers=100, cores=2, own_threads=True,
                demand=lambda: (schedstat["ran"], schedstat["ready"]),
                cpu=lambda: schedstat["ran"], process_cpu=lambda: schedstat["ran"])  # fmt: skip
    for _ in range(16):
        m.add(1, 0.1, 0.001)  # the first answers: 1 ms of CPU each
    schedstat.update(ran=0.02, ready=0.11)
    assert not m.holds_cpu(0.119)
    assert m.hint(0.119) is None
    # A GIL held by a thread that waits for a core (other programs' load): 40% of
    # the time on a core, and as long again waiting for one, still counts.
    schedstat.update(ran=0.048, ready=0.11)
    assert m.holds_cpu(0.119)


def test_calls_that_kept_the_gil_busy_hold_the_cpu() -> None:
    clock = {"cpu": 0.0}
    m = Measure(started=0.0, workers=32, cores=2, demand=no_schedstat, own_threads=True,
                cpu=lambda: clock["cpu"], process_cpu=lambda: clock["cpu"])  # fmt: skip
    clock["cpu"] = 0.09  # the workers computed 90 ms of the first 100
    assert m.seen(0.1) and m.holds_cpu(0.1)
    clock["cpu"] = 0.02  # 20 ms of 100: they mostly wait
    assert not m.holds_cpu(0.1)
    assert not m.seen(_auto.WAIT_SEEN / 2)
