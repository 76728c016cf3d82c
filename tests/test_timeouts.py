"""timeout=: an over-time call fails its item and frees its worker (abandoned, replaced)."""

from __future__ import annotations

import threading
import time

import pytest

import manyhands

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


def test_abandoned_threads_are_capped_then_capacity_waits(backend: str) -> None:
    release = threading.Event()
    finished: list[int] = []
    fn = hanging_on({0, 1}, release, finished)
    released_at: list[float] = []

    def let_go() -> None:
        released_at.append(time.monotonic())
        release.set()

    timer = threading.Timer(1.0, let_go)
    timer.start()
    try:
        report = manyhands.run(fn, range(6), backend=backend, workers=1, timeout=0.1)
    finally:
        timer.cancel()
    # One worker: one thread may be abandoned and replaced; the second over-time
    # call still fails at its deadline, but its worker is kept (the cap), so the
    # remaining items wait for that call to return.
    assert report.abandoned == 1
    assert report.failed == 2 and report.succeeded == 4
    assert released_at, "the run could not finish without the hung call returning"


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
    assert report.failed == 4 and report.abandoned == 2
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
