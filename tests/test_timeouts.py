"""timeout=: an over-time call fails its item and frees its worker (abandoned, replaced)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from queue import SimpleQueue

import pytest

import manyhands
from manyhands._backends._threads import ThreadBackend
from manyhands._batch import Batch, Task

from .conftest import os_thread_count, wait_for_threads


def hanging_on(hung: set[int], release: threading.Event, finished: list[int]):  # type: ignore[no-untyped-def]
    def fn(x: int) -> int:
        if x in hung:
            release.wait(30)
        else:
            finished.append(x)
        return x

    return fn


def test_over_time_items_fail_and_the_rest_go_on(backend: str) -> None:
    before = os_thread_count()
    release = threading.Event()
    finished: list[int] = []
    fn = hanging_on({3, 7}, release, finished)
    outs = list(manyhands.map(fn, range(40), backend=backend, workers=2, timeout=0.2, ordered=True))
    # Both workers were stuck at some point, yet every other item ran: the
    # stuck ones were replaced instead of waiting for the calls to return.
    assert not release.is_set()
    assert sorted(finished) == [n for n in range(40) if n not in (3, 7)]
    failed = {o.item: o.error for o in outs if o.error is not None}
    assert set(failed) == {3, 7}
    for error in failed.values():
        assert error.error_type == "manyhands.Timeout"
        assert "timeout=0.2s" in error.message and "abandoned thread" in error.message
        assert isinstance(error.exception, manyhands.Timeout)
    release.set()
    assert wait_for_threads(before) <= before  # abandoned threads exit once their call returns


def test_report_counts_abandoned_threads_and_says_so(backend: str) -> None:
    release = threading.Event()
    fn = hanging_on({0}, release, [])
    report = manyhands.run(fn, range(5), backend=backend, workers=3, timeout=0.1)
    release.set()
    assert report.abandoned == 1 and report.failed == 1
    assert report.errors_by_type == {"manyhands.Timeout": 1}
    assert "abandoned: 1 thread left to calls still running past timeout=" in str(report)


def test_when_every_worker_is_held_the_items_left_end_at_once_not_run(backend: str) -> None:
    """A run never hangs on calls that never return, and the thread count stays bounded.

    The items no worker could start are delivered at once, and counted as not run
    (their function never ran), not as failed.
    """
    release = threading.Event()
    released: list[bool] = []
    fn = hanging_on(set(range(8)), release, [])
    timer = threading.Timer(8.0, lambda: (released.append(True), release.set()))
    timer.start()
    try:
        report = manyhands.run(fn, range(8), backend=backend, workers=2, timeout=0.05)
        ended_on_its_own = not released
    finally:
        timer.cancel()
        release.set()
    # Two workers: the first two hung calls are abandoned and replaced, the next two hold
    # their workers (the cap: one abandoned thread per worker), and the four items left
    # cannot start: they end at once, without a call, instead of waiting for a hung one.
    assert ended_on_its_own, "the run waited for hung calls to return"
    assert report.failed == 4 and report.errors_by_type == {"manyhands.Timeout": 4}
    assert report.not_run == 4 and report.not_run_causes == {"workers held": 4}
    assert report.total == 8 and report.ran == 4 and report.attempts == 4 and not report.ok
    headline = str(report).splitlines()[0]
    held = "every worker was held by a call past its timeout; with journal=, a resume runs them"
    assert f": 4 not run ({held}), 4 run (" in headline
    assert headline.startswith("8 items in ") and headline.endswith("0 succeeded, 4 failed")
    ran = [f for f in report.failures if f.attempts == 1]
    unstarted = [f for f in report.failures if f.attempts == 0]
    assert len(ran) == 4 and len(unstarted) == 4
    assert sum("abandoned thread and the item failed" in f.message for f in ran) == 2
    assert sum("holds its worker" in f.message for f in ran) == 2
    for failure in unstarted:
        assert failure.message.startswith("not started: every worker is held")
        assert "workers=" in failure.message
        assert isinstance(failure.exception, manyhands.Timeout) and not failure.exception.ran
    assert report.abandoned == 4  # the two held threads were left too when the run ended
    assert any(note.startswith("4 items never started") for note in report.notes)


def test_the_note_counts_apart_the_retries_no_worker_could_start(backend: str) -> None:
    """Work no worker could start: items never called are not run; a retry's item was
    called, and fails with its last failure. The note counts each as the Report does."""
    release = threading.Event()
    fn = hanging_on(set(range(5)), release, [])
    retry = manyhands.Retry(2, backoff=0.001)
    try:  # one worker: one call abandoned, the next holds it, and nothing more can start
        report = manyhands.run(fn, range(5), backend=backend, workers=1, timeout=0.05, retry=retry)
    finally:
        release.set()
    # Two calls: items 0 and 1, or item 0 twice (its retry came first); each item called
    # has a retry left, which never started, and ends failed; the others are not run.
    assert report.attempts == 2 and report.failed in (1, 2)
    assert report.not_run == 5 - report.failed and report.total == 5
    retries = "retries" if report.failed > 1 else "retry"
    (note,) = [note for note in report.notes if "never started" in note]
    assert note.startswith(
        f"{report.not_run} items never started (not run, ended as manyhands.Timeout) and "
        f"{report.failed} {retries} never started ("
    ), note
    assert f": {report.not_run} not run (" in str(report).splitlines()[0]


def test_items_no_worker_could_start_count_toward_no_stop_rule(backend: str) -> None:
    """Only calls that failed count toward ``stop_after_failures``: the four items never
    started (as above) are no failure of fn, and the four calls timed out stay under 5."""
    release = threading.Event()
    fn = hanging_on(set(range(8)), release, [])
    try:
        report = manyhands.run(
            fn, range(8), backend=backend, workers=2, timeout=0.05, stop_after_failures=5
        )
    finally:
        release.set()
    assert report.failed == 4 and report.not_run == 4
    assert report.stopped is None


def test_a_held_worker_is_replaced_once_an_abandoned_thread_returns() -> None:
    """Past the cap a call holds its worker; capacity comes back when a thread is free."""
    first, second = threading.Event(), threading.Event()
    done: SimpleQueue[Batch] = SimpleQueue()
    task = Task(lambda call: call(), done.put, timed=True, bounded=True)
    backend = ThreadBackend(1)  # one worker: at most one abandoned thread

    def started(call: Callable[[], object]) -> Batch:
        batch = Batch(0, [call], task)
        backend.submit(batch)
        deadline = time.monotonic() + 10
        while batch.started is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert batch.started is not None
        return batch

    try:
        assert backend.expire(started(lambda: first.wait(30)))
        assert "abandoned thread" in backend.timeout_action and backend.abandoned == 1
        assert backend.expire(started(lambda: second.wait(30)))
        assert "holds its worker" in backend.timeout_action and backend.abandoned == 1
        backend.submit(Batch(1, [lambda: "never called"], task))  # every worker is held
        unstarted = done.get(timeout=10)
        assert unstarted.errors is not None and unstarted.values == [None]
        error = unstarted.errors[0]
        assert isinstance(error, manyhands.Timeout) and not error.ran
        first.set()  # the abandoned thread's call returns: the held worker is replaced
        deadline = time.monotonic() + 10
        while backend.abandoned < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert backend.abandoned == 2
        backend.submit(Batch(2, [lambda: "ran"], task))
        assert done.get(timeout=10).values == ["ran"]
    finally:
        first.set()
        second.set()
        backend.shutdown(10)


def test_a_run_ends_without_waiting_for_calls_past_their_timeout(backend: str) -> None:
    """Their items failed already: the grace period is for calls still on time."""
    release = threading.Event()
    fn = hanging_on({0, 1, 2, 3}, release, [])
    began = time.monotonic()
    try:  # two workers: the first two calls' are abandoned, the next two are kept (the cap)
        report = manyhands.run(fn, range(4), backend=backend, workers=2, timeout=0.05, grace=60)
        waited = time.monotonic() - began
    finally:
        release.set()
    assert report.failed == 4 and report.abandoned == 4  # (two held their workers to the end)
    assert waited < 30, f"the run waited {waited:.0f}s of grace=60 for calls that had failed"


def test_a_timed_out_item_is_retried(backend: str) -> None:
    release = threading.Event()
    tries: list[int] = []

    def fn(x: int) -> int:
        tries.append(x)
        if x == 2 and tries.count(2) == 1:
            release.wait(30)  # only the first attempt hangs
        return x * 10

    retry = manyhands.Retry(2, backoff=0.001)
    outs = list(manyhands.map(fn, range(4), backend=backend, timeout=0.1, retry=retry))
    release.set()
    by_item = {o.item: o for o in outs}
    assert by_item[2].ok and by_item[2].value == 20 and by_item[2].attempts == 2


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), ("1s", TypeError), (float("nan"), ValueError)],
)
def test_bad_timeout_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        manyhands.run(str, [1], timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("slowdown", [False, True])
def test_a_timeout_fires_under_a_rate_limit(backend: str, slowdown: bool) -> None:
    # With rate=, items start one by one; the engine must still wake for the
    # deadline of the one call running, including once an early "slow down"
    # has been recovered from (about 1.5 s at 0.9x, then +5% per 0.5 s).
    release = threading.Event()
    asked = threading.Event()
    count = 250 if slowdown else 10
    last = count - 1

    def fn(x: int) -> int:
        if slowdown and x == 0 and not asked.is_set():
            asked.set()
            raise manyhands.RetryAfter(0)
        if x == last:
            release.wait(30)
        return x

    retry = manyhands.Retry(1, on=manyhands.RetryAfter, backoff=0)  # not the Timeout
    timer = threading.Timer(10.0, release.set)
    timer.start()
    try:
        outs = {
            o.item: o
            for o in manyhands.map(
                fn, range(count), backend=backend, workers=1, rate="100/s", timeout=0.3,
                retry=retry,
            )
        }  # fmt: skip
    finally:
        timer.cancel()
    assert not release.is_set(), "the hung call was waited out instead of timed out"
    error = outs[last].error
    assert error is not None and error.error_type == "manyhands.Timeout"
    assert sum(o.ok for o in outs.values()) == last
    release.set()
