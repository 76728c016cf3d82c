"""Rates, backoff, Retry-After and timeouts, exactly: a real run on a fake clock.

These replace wall-clock assertions that could fail on a loaded machine ("gaps of at
least 7 ms"): the run's own dispatch code runs, but time only passes when the
simulation moves it (see tests/simulated.py).
"""

from __future__ import annotations

import itertools

import pytest

import manyhands

from .simulated import Simulation


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


def test_a_rate_limit_spaces_every_start_exactly() -> None:
    sim = Simulation(workers=10)
    report = sim.run(lambda x: x, range(40), rate="100/s")
    times = [t for t, _ in sim.starts]
    assert report.succeeded == 40
    assert gaps(times) == [0.01] * 39  # 10 ms apart, never a burst, with 10 workers free
    # The run learns that the input ended when the next slot comes, at 0.40 s, and
    # ready starts were held back by the limit the whole time.
    assert report.elapsed == pytest.approx(0.40)
    assert report.rate_limited == pytest.approx(0.40)
    assert "starts held back by the rate limit for 400.0ms" in str(report)


def test_a_rate_limit_spaces_retries_too() -> None:
    tries: dict[int, int] = {}

    def flaky(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if tries[x] == 1 and x % 2:
            raise ConnectionError(x)
        return x

    sim = Simulation(workers=4)
    policy = manyhands.Retry(3, backoff=0.0)
    report = sim.run(flaky, range(20), rate="50/s", retry=policy)
    times = sorted(t for t, _ in sim.starts)
    assert report.succeeded == 20 and report.attempts == 30
    assert min(gaps(times)) == pytest.approx(0.02)  # the retries took slots of the limit


def test_backoff_waits_exactly_what_the_policy_says() -> None:
    def always_fails(x: int) -> int:
        raise ConnectionError(x)

    sim = Simulation(workers=2)
    policy = manyhands.Retry(3, backoff=1.0, multiplier=2.0, random=lambda: 1.0)
    report = sim.run(always_fails, [7], retry=policy, duration=lambda x: 0.5)
    times = [t for t, _ in sim.starts]
    # Each call takes 0.5 s; then the item waits 1, 2, 4 s (full jitter at its ceiling).
    assert times == [0.0, 1.5, 4.0, 8.5]
    assert report.failed == 1 and report.failures[0].attempts == 4


def test_retry_after_is_waited_at_least() -> None:
    tries = []

    def throttled(x: int) -> int:
        tries.append(x)
        if len(tries) == 1:
            raise manyhands.RetryAfter(3.0)
        return x

    sim = Simulation(workers=1)
    report = sim.run(throttled, [1], retry=manyhands.Retry(2, backoff=0.1))
    assert [t for t, _ in sim.starts] == [0.0, 3.0]
    assert report.succeeded == 1 and report.throttle_events == 1


def test_a_call_past_its_timeout_fails_at_its_deadline_and_the_rest_go_on() -> None:
    sim = Simulation(workers=2)
    durations = {3: 10.0, 5: 0.95}
    outs_report = sim.run(
        lambda x: x, range(8), timeout=1.0, duration=lambda x: durations.get(x, 0.1)
    )
    assert outs_report.errors_by_type == {"manyhands.Timeout": 1}
    failure = outs_report.failures[0]
    assert failure.item == 3 and "timeout=1s" in failure.message
    # Item 3 started at 0.1 and was given up at 1.1, when a new worker took its place;
    # item 5 (0.95 s, under the limit) was not timed out.
    assert outs_report.succeeded == 7
    starts = dict((item, t) for t, item in sim.starts)
    assert starts[3] == pytest.approx(0.1) and starts[6] == pytest.approx(1.1)
    assert outs_report.elapsed == pytest.approx(1.3)
    assert outs_report.abandoned == 1


def test_a_stop_rule_leaves_waiting_retries_not_run() -> None:
    def fails(x: int) -> int:
        if x == 9:
            raise ValueError(x)  # not retried: final at once
        raise ConnectionError(x)  # retried after a minute

    sim = Simulation(workers=1)
    policy = manyhands.Retry(5, on=ConnectionError, backoff=60.0, random=lambda: 1.0)
    report = sim.run(fails, range(10), retry=policy, stop_after_failures=1)
    assert report.stopped is not None and "stop_after_failures=1" in report.stopped
    assert report.failed == 1 and report.attempts == 10
    assert report.not_run_causes == {"retry stopped": 9}
    assert report.elapsed < 1  # nobody waited for the minute-long backoffs
    assert {f.error_type for f in report.failures} == {
        "builtins.ValueError",
        "manyhands.WorkerCrashed",
    }
    assert all("ConnectionError" in f.message for f in report.failures if f.item != 9)


def test_calls_on_worker_processes_have_a_batch_per_worker_queued_ahead_from_the_start() -> None:
    # So a worker process that finishes a call is sent the next by the backend at
    # once, not after a round trip through the run's thread. On threads a run of
    # calls of 1 ms or more queues nothing ahead in its first round trips (a server
    # that refuses the first calls must not meet a queued burst: see
    # test_slowdown_engine); CPU-bound calls on processes do not wait for that.
    threads = Simulation(workers=2)
    processes = Simulation(workers=2, name="processes")
    for sim in (threads, processes):
        report = sim.run(lambda x: x, range(16), duration=lambda item: 0.01)
        assert report.succeeded == 16
    assert threads.clock.now < 1.0  # (the whole run is in its first second)
    assert threads.most_out == 2  # one batch per worker: none waits ahead
    assert processes.most_out == 4  # and one more each, queued
