"""Early exit, Ctrl-C and large worker counts: no hang, no thread left behind."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import (
    Hands,
    PeakConcurrency,
    finish,
    read_line,
    start_python,
    wait_for_threads,
)


def test_break_stops_the_workers(hands: Hands) -> None:
    if hands.backend == "processes":
        pytest.skip("counts calls under a lock of this process (processes: test_processes.py)")
    # (an earlier test's workers may still be ending as OS threads: not this run's)
    before = wait_for_threads(threading.active_count())
    calls = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.002)
        return x

    for out in hands.map(work, range(100_000), workers=64):
        if out.item >= 0 and calls > 300:
            break
    assert wait_for_threads(before) <= before  # (an earlier test's may end meanwhile)
    settled = calls
    time.sleep(0.1)
    assert calls == settled, "calls kept starting after the loop was left"
    assert calls < 2000


def test_exception_in_the_loop_body_stops_the_workers(hands: Hands) -> None:
    before = wait_for_threads(threading.active_count())  # (see test_break_stops_the_workers)
    with pytest.raises(RuntimeError, match="consumer broke"):
        for _out in hands.map(lambda x: time.sleep(0.001), range(10_000)):
            raise RuntimeError("consumer broke")
    assert wait_for_threads(before) <= before  # (an earlier test's may end meanwhile)


def test_close_and_context_manager_stop_the_workers(hands: Hands) -> None:
    before = wait_for_threads(threading.active_count())  # (see test_break_stops_the_workers)
    stream = hands.map(lambda x: time.sleep(0.001), range(10_000))
    next(stream)
    stream.close()
    stream.close()  # idempotent
    assert wait_for_threads(before) <= before  # (an earlier test's may end meanwhile)
    with hands.map(abs, range(10_000)) as outcomes:
        next(outcomes)
    assert wait_for_threads(before) <= before  # (an earlier test's may end meanwhile)


def test_a_finished_run_leaves_no_thread(hands: Hands, no_thread_left: None) -> None:
    hands.run(lambda x: time.sleep(0.001), range(2000), workers=200)
    list(hands.map(abs, range(50_000)))


@pytest.mark.parametrize("pooled", [False, True])
def test_a_retry_after_the_input_ended_starts_while_another_call_runs(
    pooled: bool, no_thread_left: None
) -> None:
    """At the input's end the idle workers leave; a retry still gets one at once.

    "b" runs until "a"'s retry has run: if the retry waited for "b"'s worker
    (behind the exit of the workers), "b" would give up after 10 s and say so.
    """
    exhausted, retried = threading.Event(), threading.Event()
    tries: list[str] = []

    def items() -> Iterator[str]:
        yield "a"
        yield "b"
        exhausted.set()  # (the run winds its workers down now)

    def fn(x: str) -> bool:
        tries.append(x)
        if x == "b":
            return retried.wait(10)
        if tries.count("a") == 1:
            exhausted.wait(10)
            time.sleep(0.05)
            raise ConnectionError("flaky")
        retried.set()
        return True

    options: dict[str, Any] = {"retry": manyhands.Retry(2, backoff=0.01), "progress": False}
    if pooled:
        with manyhands.Pool(workers=3) as pool:
            outs = list(pool.map(fn, items(), **options))
    else:
        outs = list(manyhands.map(fn, items(), workers=3, **options))
    by_item = {o.item: o for o in outs}
    assert by_item["a"].ok and by_item["a"].attempts == 2
    assert by_item["b"].value is True, "the retry waited for the long call's worker"


def test_hung_call_is_abandoned_after_the_grace_period(backend: str) -> None:
    release = threading.Event()
    try:
        stream = manyhands.map(
            lambda x: release.wait(30) if x == 0 else x, range(100), backend=backend, grace=0.2
        )
        for out in stream:
            if out.item == 99:
                break
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 2.0
    finally:
        release.set()


def test_the_report_after_break_includes_the_grace_period(backend: str) -> None:
    """A run stopped by `break` lasts until its calls stopped: its Report says so."""
    release = threading.Event()
    try:
        began = time.monotonic()
        stream = manyhands.map(
            lambda x: release.wait(30) if x == 0 else x, range(100), backend=backend, grace=0.5
        )
        for out in stream:
            if out.item == 99:
                break
        stream.close()  # waits out the grace period for the call still running
        waited = time.monotonic() - began
        report = stream.report
    finally:
        release.set()
    assert waited >= 0.5
    assert report.elapsed >= 0.5, f"the Report says {report.elapsed:.3f}s of {waited:.3f}s"
    assert report.elapsed <= waited
    assert report.abandoned == 1  # (the thread left to the call still running)
    assert "abandoned: 1 thread left to calls still running past timeout= or the grace" in str(
        report
    )


def test_more_than_a_thousand_workers(backend: str, no_thread_left: None) -> None:
    probe = PeakConcurrency()
    work = probe.wrap(lambda x: time.sleep(0.2) or x)
    report = manyhands.run(work, range(3000), backend=backend, workers=1500)
    assert report.succeeded == 3000
    assert probe.peak > 1000, f"only {probe.peak} calls ran at once"


def test_workers_bound_concurrency(backend: str) -> None:
    probe = PeakConcurrency()
    manyhands.run(probe.wrap(lambda x: time.sleep(0.005)), range(300), backend=backend, workers=7)
    assert probe.peak == 7


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, time, manyhands
    calls = 0
    def work(x):
        global calls
        calls += 1
        if calls == 1:
            print("started", flush=True)
        time.sleep({sleep})
        return x
    try:
        manyhands.run(work, range(10_000), backend={backend!r}, workers=8, grace={grace})
    except KeyboardInterrupt:
        print("interrupted after", calls, "calls", flush=True)
        raise
    """
)


@pytest.mark.parametrize(
    ("sleep", "grace", "limit"),
    [(0.05, 2.0, 3.0), (1000, 0.5, 2.5)],
    ids=["short-calls-finish", "hung-calls-abandoned"],
)
def test_ctrl_c_reraises_promptly(backend: str, sleep: float, grace: float, limit: float) -> None:
    code = CTRL_C_SCRIPT.format(sleep=sleep, grace=grace, backend=backend)
    proc = start_python(code)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, limit + 5)
    took = time.monotonic() - sent
    assert "KeyboardInterrupt" in err
    assert proc.returncode != 0
    assert took < limit, f"took {took:.2f}s to stop after Ctrl-C"
    calls = int(out.split("interrupted after ")[1].split()[0])
    assert calls < 10_000  # admission stopped


def test_second_ctrl_c_during_grace_stops_at_once(backend: str) -> None:
    code = CTRL_C_SCRIPT.format(sleep=1000, grace=30, backend=backend)
    proc = start_python(code)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "the grace period should still be running"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    finish(proc, 10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode != 0


# The kernel hands a signal sent to the process to any thread that does not block
# it; when a thread other than the main one takes it, Python only notes it, and the
# main thread sees it when it next runs Python code: a wait on a lock never ends for
# it. Here a thread of the child takes Ctrl-C as it would (pthread_kill to itself).
TAKEN_SCRIPT = textwrap.dedent(
    """
    import asyncio, signal, sys, threading, time, manyhands
    def ctrl_c(first_to_main):
        time.sleep(0.5)
        if first_to_main:  # (the first Ctrl-C reaches the main thread; the grace begins)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.5)
        print("sent", flush=True)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    threading.Thread(target=ctrl_c, args=({first_to_main},), daemon=True).start()
    try:
        sleep = asyncio.sleep if {backend!r} == "async" else time.sleep
        manyhands.run(sleep, [1000] * 100, backend={backend!r}, workers=8, grace={grace})
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX threads' signals")
@pytest.mark.parametrize("on", ["threads", "processes", "async"])
@pytest.mark.parametrize(
    ("first_to_main", "grace"), [(False, 0.2), (True, 60)], ids=["ctrl-c", "second-ctrl-c"]
)
def test_a_ctrl_c_another_thread_took_stops_the_run(
    on: str, first_to_main: bool, grace: float
) -> None:
    if on == "async" and first_to_main:
        pytest.skip("the first Ctrl-C cancels coroutines at once: no grace to cut short")
    # Before: the run waited for a call to end (1,000 s here), or for the whole grace.
    proc = start_python(TAKEN_SCRIPT.format(first_to_main=first_to_main, backend=on, grace=grace))
    assert read_line(proc, 30) == "sent"
    sent = time.monotonic()
    out, err = finish(proc, 30)
    assert "interrupted" in out and "KeyboardInterrupt" in err, err
    assert time.monotonic() - sent < 10  # (a hang is 60 s or more)


# The same for a Pool's shutdown(wait=True), which waits for the calls submitted to it.
POOL_TAKEN_SCRIPT = textwrap.dedent(
    """
    import os, signal, threading, time, manyhands
    def ctrl_c():
        time.sleep(0.5)
        print("sent", flush=True)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    pool = manyhands.Pool(workers=2)
    executor = pool.executor() if {how!r} == "executor" else pool
    executor.submit(time.sleep, 30)
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        executor.shutdown(wait=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        os._exit(0)  # (not the exit's wait for the call, as the stdlib's executors make it)
    """
)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX threads' signals")
@pytest.mark.parametrize("how", ["pool", "executor"])
def test_a_ctrl_c_another_thread_took_ends_a_pools_wait_for_its_calls(how: str) -> None:
    # Before: shutdown waited for the call to end (30 s) before the Ctrl-C was seen.
    proc = start_python(POOL_TAKEN_SCRIPT.format(how=how))
    try:
        assert read_line(proc, 30) == "sent"
        assert read_line(proc, 10) == "interrupted"
    finally:
        finish(proc, 10)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX threads' signals")
def test_a_ctrl_c_handled_as_the_run_wakes_for_a_batch_keeps_that_batch(tmp_path: Path) -> None:
    # The signal reaches a worker thread (the kernel picks any thread), so Python
    # handles it in the main thread only when it next runs: as it wakes for the
    # batch that worker just finished. That batch's call ran: it must be recorded,
    # not lost with the interrupt (a rerun would call it again).
    journal = str(tmp_path / "run.db")
    calls: list[int] = []

    def fn(item: int) -> int:
        calls.append(item)
        if item == 3 and len(calls) == 4:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        return item

    for _ in range(3):  # (a few tries: the main thread must be waiting for that batch)
        with pytest.raises(KeyboardInterrupt):
            manyhands.run(fn, range(10), workers=1, batch_size=1, journal=journal)
        report = manyhands.run(fn, range(10), workers=1, journal=journal)
        assert report.succeeded + report.skipped == 10
        assert sorted(calls) == list(range(10))  # each called once: none lost, none twice
        calls.clear()
        for leftover in tmp_path.iterdir():
            leftover.unlink()
