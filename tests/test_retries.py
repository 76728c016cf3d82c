"""Retries, rate limit and stop rules in real runs (short real delays, loopback only)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

import manyhands
from manyhands._demo_api import fetch, flaky_api

from .conftest import Hands

FAST = manyhands.Retry(retries=3, backoff=0.001, max_backoff=0.005)


class Flaky:
    """Fails each item ``times`` times with ``error``, then succeeds; counts every call."""

    def __init__(self, times: int, error: type[Exception] = ConnectionError) -> None:
        self.times = times
        self.error = error
        self.calls: Counter[int] = Counter()
        self.lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.calls[item] += 1
            call = self.calls[item]
        if call <= self.times:
            raise self.error(f"attempt {call} of item {item}")
        return item * 2


def test_retries_until_success(backend: str) -> None:
    fn = Flaky(times=2)
    outcomes = list(manyhands.map(fn, range(200), backend=backend, retry=FAST))
    assert sorted(o.item for o in outcomes) == list(range(200))
    assert all(o.ok and o.value == o.item * 2 and o.attempts == 3 for o in outcomes)
    report = manyhands.run(Flaky(times=2), range(200), backend=backend, retry=FAST)
    assert (report.succeeded, report.failed, report.attempts, report.retried) == (200, 0, 600, 200)
    assert "600 attempts in all, 200 items retried" in str(report)


def test_retries_never_exceed_the_policy(backend: str) -> None:
    fn = Flaky(times=99)
    report = manyhands.run(fn, range(50), backend=backend, retry=FAST)
    assert report.failed == 50 and report.attempts == 50 * 4
    assert set(fn.calls.values()) == {4}
    for failure in report.failures:
        assert failure.attempts == 4
        assert failure.message == f"attempt 4 of item {failure.item}"
        assert failure.history == ("builtins.ConnectionError",) * 3


def test_non_retryable_errors_are_not_retried(backend: str) -> None:
    fn = Flaky(times=1, error=ValueError)
    policy = manyhands.Retry(retries=5, on=ConnectionError, backoff=0.001)
    report = manyhands.run(fn, range(30), backend=backend, retry=policy)
    assert report.failed == 30 and report.attempts == 30
    assert set(fn.calls.values()) == {1}


def test_retry_shorthand_and_ordered_delivery(backend: str) -> None:
    fn = Flaky(times=1)
    outcomes = list(
        manyhands.map(fn, range(300), backend=backend, retry=FAST, ordered=True, workers=8)
    )
    assert [o.item for o in outcomes] == list(range(300))
    assert all(o.ok and o.attempts == 2 for o in outcomes)
    assert manyhands.run(Flaky(times=1), range(5), retry=2).succeeded == 5  # retry=N shorthand


def test_a_backing_off_item_does_not_hold_a_worker(backend: str) -> None:
    events: list[tuple[str, int]] = []
    tried = set()

    def fn(item: int) -> int:
        events.append(("start", item))
        if item == 0 and item not in tried:
            tried.add(item)
            raise ConnectionError("later")
        time.sleep(0.01)
        return item

    policy = manyhands.Retry(retries=1, backoff=0.3, random=lambda: 1.0)
    report = manyhands.run(fn, range(10), backend=backend, workers=1, retry=policy)
    assert report.succeeded == 10
    starts = [item for kind, item in events if kind == "start"]
    assert starts[0] == 0 and starts[-1] == 0  # with one worker, all others ran meanwhile
    assert starts[1:-1] == list(range(1, 10))


def test_retry_after_delays_the_item_and_slows_everyone(backend: str) -> None:
    starts: list[tuple[float, int]] = []
    asked = threading.Event()

    def fn(item: int) -> int:
        starts.append((time.monotonic(), item))
        if item == 5 and not asked.is_set():
            asked.set()
            raise manyhands.RetryAfter(0.3)
        time.sleep(0.005)
        return item

    report = manyhands.run(fn, range(300), backend=backend, workers=4, retry=FAST)
    assert report.succeeded == 300 and report.throttle_events == 1
    tries = [t for t, item in starts if item == 5]
    assert tries[1] - tries[0] >= 0.3  # the server's word wins over the 1 ms backoff
    # Everyone is now under a rate limit at the success rate seen so far (over at
    # least half a second: a few calls/s here), which slow start then doubles
    # every 10 ms. Without it, four workers on 5 ms calls would start ~24 calls
    # in the next 30 ms; with it, only the (at most 4) calls already queued for a
    # worker when the signal came, and a couple let through by the rising rate.
    after = [t for t, item in starts if item != 5 and tries[0] < t < tries[0] + 0.030]
    assert len(after) <= 4 + 3, after
    # The lowest rate is that first one (the success rate seen so far), which the
    # Report names: slow start only raised it from there.
    assert report.slowest_rate is not None and report.slowest_rate < 100
    assert "asked to slow down 1 times" in str(report)


@pytest.mark.parametrize("throttle_on", [PermissionError, lambda exc: "429" in str(exc)])
def test_throttle_on_makes_other_errors_slow_everyone_down(backend: str, throttle_on: Any) -> None:
    def fn(item: int) -> int:
        if item == 57:
            raise PermissionError(f"HTTP 429 for {item}")  # no retry_after attribute
        if item == 58:
            raise ValueError(item)  # not a throttling signal
        return item

    report = manyhands.run(
        fn, range(60), backend=backend, workers=4, retry=FAST, throttle_on=throttle_on
    )
    assert report.throttle_events == FAST.retries + 1  # each attempt of item 57
    assert report.failed == 2
    plain = manyhands.run(fn, range(60), backend=backend, workers=4, retry=FAST)
    assert plain.throttle_events == 0 and plain.rate_limited == 0.0


def test_rate_limit_holds_starts_back_on_real_workers(backend: str) -> None:
    # The exact spacing is tested on simulated time (test_simulated_time.py); here, on
    # real threads, only what no amount of load on the machine can change.
    report = manyhands.run(abs, range(40), backend=backend, workers=10, rate="100/s")
    assert report.succeeded == 40
    assert report.elapsed >= 0.39  # 40 starts 10 ms apart cannot take less
    assert report.rate_limited > 0
    assert "starts held back by the rate limit for" in str(report)


def test_stop_after_failures_accounts_for_every_started_item(backend: str) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def fn(item: int) -> int:
        with lock:
            seen.append(item)
        time.sleep(0.001)
        if item >= 100:
            raise RuntimeError("backend down")
        return item

    outcomes = list(
        manyhands.map(fn, range(100_000), backend=backend, workers=8, stop_after_failures=20)
    )
    assert sorted(o.item for o in outcomes) == sorted(seen)  # nothing started is lost
    assert len(outcomes) < 2000
    stream = manyhands.map(fn, range(100_000), backend=backend, workers=8, stop_after_failures=20)
    for _ in stream:
        pass
    report = stream.report
    assert report.failed >= 20 and report.stopped is not None
    assert "stop_after_failures=20" in report.stopped
    assert "stopped early: stop_after_failures=20" in str(report)


def test_stop_after_failure_rate(backend: str) -> None:
    def fn(item: int) -> int:
        if item >= 500 and item % 4:
            raise RuntimeError("mostly failing now")
        return item

    report = manyhands.run(
        fn, range(100_000), backend=backend, batch_size=1, workers=4, stop_after_failure_rate=0.5
    )
    assert report.stopped is not None and "of the last 100 items failed" in report.stopped
    assert 500 < report.total < 2000
    report = manyhands.run(fn, range(2000), backend=backend, stop_after_failure_rate=(0.9, 50))
    assert report.stopped is None and report.total == 2000


def test_stop_leaves_waiting_retries_not_run(backend: str) -> None:
    def fn(item: int) -> int:
        if item == 20:
            raise ValueError("not retried: fails for good")
        raise ConnectionError(f"down {item}")

    slow_retry = manyhands.Retry(retries=5, on=ConnectionError, backoff=30, random=lambda: 1.0)
    started = time.monotonic()
    report = manyhands.run(
        fn, range(50), backend=backend, workers=2, retry=slow_retry, stop_after_failures=1
    )
    assert time.monotonic() - started < 5  # nobody waited out the 30 s backoff
    assert report.stopped is not None
    # Item 20 failed for good; the others had retries left: not run, for a resume.
    assert report.failed == 1 and report.errors_by_type == {"builtins.ValueError": 1}
    assert report.not_run == report.total - 1 and report.total >= 21
    assert report.not_run_causes == {"retry stopped": report.not_run}
    assert all(f.attempts == 1 for f in report.failures)
    # None was tried more than once: a retry given up before it ran is not one.
    assert report.retried == 0 and report.attempts == report.total
    assert "stop_after_failures=1: 1 item had failed" in str(report)
    assert "not run (the run stopped before retrying them; with journal=" in str(report)


def test_flaky_throttled_http_api_end_to_end(backend: str) -> None:
    """2,000 requests at 180/s to an API allowing 200/s, 5% of answers 503."""
    with flaky_api(capacity=200, failure_rate=0.05) as (base, counters):
        urls = (f"{base}/items/{n}" for n in range(2000))
        report = manyhands.run(fetch, urls, backend=backend, workers=20, rate="180/s", retry=5)
    assert report.succeeded == 2000, report
    assert counters.unavailable > 50  # the 5% of 503s really happened, and were retried
    assert counters.throttled < 0.02 * counters.requests, vars(counters)
    assert report.attempts == counters.requests


class NotAList(AttributeError):
    """A subclass of a programming error, defined by the user."""


def buggy(x: int) -> int:
    if x % 3 == 0:
        raise NotAList(f"item {x}: 'int' object has no attribute 'append'")
    if x % 3 == 1:
        raise TypeError(f"item {x}: unsupported operand")
    raise ConnectionError(f"item {x}: down")


def test_programming_errors_are_not_retried_by_default(hands: Hands) -> None:
    fast = manyhands.Retry(retries=2, backoff=0.001, max_backoff=0.001)
    report = hands.run(buggy, range(30), retry=fast)
    attempts = {f.item: f.attempts for f in report.failures}
    assert report.failed == 30 and len(attempts) == 30
    assert {attempts[x] for x in range(30) if x % 3 != 2} == {1}  # bugs: tried once
    assert {attempts[x] for x in range(30) if x % 3 == 2} == {3}  # the network: retried
    assert report.attempts == 20 + 10 * 3
    shorthand = hands.run(buggy, range(30), retry=2)  # the default policy, from a number
    assert shorthand.attempts == 20 + 10 * 3


def test_on_exception_still_retries_every_error(hands: Hands) -> None:
    everything = manyhands.Retry(retries=2, on=Exception, backoff=0.001, max_backoff=0.001)
    report = hands.run(buggy, range(30), retry=everything)
    assert report.failed == 30 and report.attempts == 30 * 3


class _QuotaSpent(Exception):
    """A daily quota used up: the server asks to come back tomorrow."""

    retry_after = 86_400.0


def _odd_items_hit_a_spent_quota(item: int) -> int:
    if item % 2:
        raise _QuotaSpent(f"HTTP 429 for {item}, Retry-After: 86400")
    return item


@pytest.mark.timeout(120)  # the old engine obeyed: every item waited a day
@pytest.mark.parametrize("backend", ["threads", "processes"])  # (the wait asked travels back)
def test_a_wait_longer_than_max_retry_after_fails_the_item_at_once(backend: str) -> None:
    report = manyhands.run(
        _odd_items_hit_a_spent_quota, range(10), backend=backend, workers=4, retry=FAST
    )
    assert report.succeeded == 5 and report.failed == 5
    assert sorted(failure.item for failure in report.failures) == [1, 3, 5, 7, 9]
    assert {failure.attempts for failure in report.failures} == {1}  # never retried
    assert report.failures[0].message.startswith("HTTP 429 for")  # the server's own words
    (note,) = (note for note in report.notes if "max_retry_after" in note)
    assert note.startswith("5 calls asked to wait longer than max_retry_after=300s")
    assert "up to 86,400s" in note and "retry_failed=True" in note
    # Not obeyed, so no slowdown either: no rate to advise for the next run.
    assert report.throttle_events == 0 and report.settled_rate is None
    assert "settled on" not in str(report)


def test_max_retry_after_is_the_longest_wait_obeyed() -> None:
    calls: Counter[int] = Counter()

    def fn(item: int) -> int:
        calls[item] += 1
        raise manyhands.RetryAfter(0.05)

    short = manyhands.Retry(retries=2, backoff=0.001, max_retry_after=0.01)
    report = manyhands.run(fn, range(2), workers=1, retry=short)
    assert report.failed == 2 and dict(calls) == {0: 1, 1: 1}  # asked 0.05 s: not obeyed
    assert "max_retry_after=0.01s (up to 0.05s)" in report.notes[0]
    assert "max_retry_after=0.01" in repr(short) and "max_retry_after" not in repr(FAST)


@pytest.mark.parametrize("bad", [-1, float("nan"), "60", True])
def test_max_retry_after_must_be_seconds(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_retry_after must be a number of seconds >= 0"):
        manyhands.Retry(max_retry_after=bad)


def _reset(item: int) -> int:
    raise ConnectionError(f"reset {item}")


@pytest.mark.parametrize("backend", ["threads", "async"])
def test_a_predicate_that_raises_says_no_and_the_report_says_so(backend: str) -> None:
    def server_error(error: BaseException) -> bool:
        return bool(error.response.status_code >= 500)  # type: ignore[attr-defined]

    fn: Any = _reset
    if backend == "async":

        async def fn(item: int) -> int:
            return _reset(item)

    policy = manyhands.Retry(3, on=server_error, backoff=0.001)
    report = manyhands.run(
        fn, range(5), backend=backend, retry=policy, throttle_on=lambda e: e.response.status == 429
    )
    assert report.failed == 5 and {failure.attempts for failure in report.failures} == {1}
    assert report.throttle_events == 0  # "no", as before: the run goes on
    retry_note, throttle_note = (
        next(note for note in report.notes if note.startswith(start))
        for start in ("Retry(on=", "throttle_on=")
    )
    assert len(report.notes) == 2  # once per predicate, however many errors it broke on
    assert retry_note.startswith("Retry(on=test_a_predicate_that_raises_says_no")
    assert "server_error) raised AttributeError: 'ConnectionError' object has no attribute " in (
        retry_note
    )
    assert "'response', on the ConnectionError of item " in retry_note
    assert "and on 4 more errors" in retry_note and "(not retried)" in retry_note
    assert throttle_note.startswith("throttle_on=<lambda> (test_retries.py:")
    assert "(no slowdown)" in throttle_note
    assert retry_note in str(report).replace("note: ", "")


def _refused_or_reset(item: int) -> int:
    if item == 7:
        raise PermissionError(f"HTTP 429 for {item}")  # no retry_after attribute
    if item == 8:
        raise ConnectionError(f"reset {item}")
    return item


def _is_reset(error: BaseException) -> bool:
    return isinstance(error, ConnectionError)


def test_errors_from_worker_processes_meet_throttle_on_classes_and_predicates_say_so() -> None:
    """A worker process's error comes back described: classes match it by name, and a
    predicate, which cannot judge a description, says no and the Report says why."""
    report = manyhands.run(
        _refused_or_reset, range(20), backend="processes", workers=2, retry=FAST,
        throttle_on=PermissionError,
    )  # fmt: skip
    assert report.throttle_events == FAST.retries + 1  # each attempt of item 7
    policy = manyhands.Retry(3, on=_is_reset, backoff=0.001)
    report = manyhands.run(
        _refused_or_reset, range(20), backend="processes", workers=2, retry=policy,
        throttle_on=_is_reset,
    )  # fmt: skip
    assert {failure.item: failure.attempts for failure in report.failures} == {7: 1, 8: 1}
    assert report.throttle_events == 0
    retry_note, throttle_note = (
        next(note for note in report.notes if note.startswith(start))
        for start in ("Retry(on=_is_reset) could not be applied to the ", "throttle_on=_is_reset")
    )
    assert "an error from a worker process comes back described" in retry_note
    assert "(not retried); pass exception classes instead" in retry_note
    assert "could not be applied" in throttle_note and "(no slowdown)" in throttle_note
