"""Retry and rate policies as values, checked exactly with injected randomness and clocks."""

from __future__ import annotations

import heapq
import inspect
import itertools
import random

import pytest

import manyhands
from manyhands._backends._process_worker import describe_remote
from manyhands._outcome import Failure
from manyhands._rate import RateLimit, parse_rate


def test_backoff_follows_the_policy_and_the_cap_holds() -> None:
    top = manyhands.Retry(backoff=0.5, multiplier=2, max_backoff=5, random=lambda: 1.0)
    assert [top.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    bottom = manyhands.Retry(random=lambda: 0.0)
    assert bottom.delay(3) == 0.0
    assert manyhands.Retry(max_backoff=7).ceiling(10_000) == 7.0  # no overflow


def test_full_jitter_stays_within_bounds() -> None:
    rng = random.Random(42)
    policy = manyhands.Retry(backoff=1, multiplier=3, max_backoff=20, random=rng.random)
    for attempt in range(1, 8):
        delays = [policy.delay(attempt) for _ in range(2000)]
        ceiling = min(20, 3 ** (attempt - 1))
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > 0.95 * ceiling and min(delays) < 0.05 * ceiling  # spread, not fixed


def test_retry_after_wins_over_a_shorter_backoff() -> None:
    policy = manyhands.Retry(backoff=0.1, random=lambda: 1.0)
    assert policy.delay(1, manyhands.RetryAfter(3)) == 3.0
    assert policy.delay(5, manyhands.RetryAfter(0.2)) == 1.6  # backoff is longer: backoff

    class Throttled(Exception):
        retry_after = 2

    assert policy.delay(1, Throttled()) == 2.0


def test_which_errors_are_retried() -> None:
    default = manyhands.Retry()
    assert default.retries_error(ValueError())
    assert not default.retries_error(KeyboardInterrupt())
    assert not default.retries_error(SystemExit())
    typed = manyhands.Retry(on=(ConnectionError, TimeoutError))
    assert typed.retries_error(ConnectionRefusedError()) and not typed.retries_error(KeyError())
    predicate = manyhands.Retry(on=lambda exc: "again" in str(exc))
    assert predicate.retries_error(RuntimeError("try again")) and not predicate.retries_error(
        RuntimeError("no")
    )
    broken = manyhands.Retry(on=lambda exc: 1 / 0)  # type: ignore[arg-type,return-value]
    assert not broken.retries_error(RuntimeError())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"backoff": -1}, "backoff must be a number of seconds >= 0"),
        ({"max_backoff": 1e300}, "max_backoff must be a number of seconds >= 0 and at most"),
        # Never retried: refused rather than silently never matching.
        ({"on": KeyboardInterrupt}, "on=KeyboardInterrupt: an exception that is not an Exc"),
        ({"multiplier": 0.5}, "multiplier must be a number >= 1"),
        ({"on": 3}, "on must be an exception class"),
        ({"on": (ValueError, int)}, "on must name exception classes"),
    ],
)
def test_bad_policy_is_refused_when_created(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        manyhands.Retry(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("50/s", 50), ("300/min", 5), ("7200/h", 2), (" 2.5 / sec ", 2.5), (12, 12), (0.5, 0.5)],
)
def test_rate_forms(text: object, per_second: float) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("bad", ["fast", "10/day", "0/s", -1, "50"])
def test_bad_rate_names_the_option(bad: object) -> None:
    with pytest.raises(ValueError, match="rate="):
        parse_rate(bad)


def test_rate_limit_holds_across_100_workers_over_a_simulated_minute() -> None:
    """100 workers, calls of random length, a shared 50/s limit, a fake clock."""
    rng = random.Random(3)
    limit = RateLimit(per_second=50)
    ready = [(0.0, worker) for worker in range(100)]  # (time the worker wants to start, id)
    heapq.heapify(ready)
    starts = []
    while ready:
        now, worker = heapq.heappop(ready)
        if now >= 60.0:
            continue
        wait = limit.wait(now)
        if wait:
            heapq.heappush(ready, (now + wait, worker))
            continue
        starts.append(now)
        heapq.heappush(ready, (now + rng.uniform(0.0, 2.0), worker))
    assert abs(len(starts) - 3000) <= 30  # within 1% of 50/s x 60 s
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.02 - 1e-9  # smooth: never two starts closer than 1/rate
    per_second = [sum(1 for t in starts if s <= t < s + 1) for s in range(60)]
    assert max(per_second) <= 51  # no burst of a second's budget at once


def test_retry_shows_what_a_user_passes() -> None:
    default = manyhands.Retry()
    assert repr(default) == "Retry(retries=3, backoff=0.5, multiplier=2.0, max_backoff=60.0)"
    signature = str(inspect.signature(manyhands.Retry))
    assert "built-in" not in signature and " at 0x" not in signature and "<class" not in signature
    assert "random: 'Callable[[], float] | None' = None" in signature
    policy = manyhands.Retry(retries=5, on=(ConnectionError, TimeoutError), backoff=1)
    text = repr(policy)
    assert text == (
        "Retry(retries=5, on=(ConnectionError, TimeoutError), backoff=1, multiplier=2.0, "
        "max_backoff=60.0)"
    )
    assert eval(text, {"Retry": manyhands.Retry}) == policy  # what you see is what you type
    assert " on=manyhands.RetryAfter," in repr(manyhands.Retry(on=manyhands.RetryAfter))
    assert "random=Random.random" in repr(manyhands.Retry(random=random.Random(1).random))


def test_the_default_policy_leaves_out_programming_errors_also_from_other_processes() -> None:
    default = manyhands.Retry()
    for error in (TypeError(), AttributeError(), NameError(), ImportError(), SyntaxError()):
        assert not default.retries_error(error)
    for error in (ValueError(), KeyError(), AssertionError(), ConnectionError(), OSError()):
        assert default.retries_error(error)

    def remote(exc: BaseException) -> Failure:
        error_type, message, trace, lineage, _ = describe_remote(exc)
        failure = Failure(1, error_type, message, trace)
        failure.lineage = lineage
        return failure

    assert not default.retries_failure(remote(ModuleNotFoundError("no module")))
    assert not default.retries_failure(remote(UnboundLocalError("x")))  # a NameError
    assert default.retries_failure(remote(ConnectionResetError()))
    assert manyhands.Retry(on=Exception).retries_failure(remote(TypeError()))
    listed = manyhands.Retry.PROGRAMMING_ERRORS
    assert set(listed) == {
        TypeError,
        AttributeError,
        NameError,
        SyntaxError,
        ImportError,
        NotImplementedError,
    }


def test_a_broken_jitter_source_is_clamped_not_a_crash_mid_run() -> None:
    """A `random=` returning NaN or out of range: the retries still run, within backoff."""
    calls: list[int] = []

    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError("again")
        return x

    for drawn in (float("nan"), -5.0, 7.0):
        calls.clear()
        policy = manyhands.Retry(retries=3, backoff=0.01, random=lambda d=drawn: d)
        assert 0.0 <= policy.delay(1) <= 0.01
        report = manyhands.run(flaky, [1], retry=policy)
        assert report.succeeded == 1 and len(calls) == 3
