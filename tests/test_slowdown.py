"""The adaptive slowdown's rules, on a simulated clock."""

from __future__ import annotations

import pytest

from manyhands._rate import RateLimit
from manyhands._slowdown import (
    DECREASE,
    INCREASE,
    MIN_RATE,
    PERIOD,
    PROBE,
    RESTART,
    Slowdown,
)

STEP = 0.02  # a median call: slow start's round trip


def throttled(rate_so_far: float = 0.0, *, ceiling: float | None = None) -> Slowdown:
    """A Slowdown that has just had its first signal, at t=0."""
    slow = Slowdown(ceiling, round_trip=lambda: STEP)
    assert slow.signal(0, now=0.0, succeeded=int(rate_so_far * 10), elapsed=10.0)
    return slow


def test_no_limit_until_the_first_signal() -> None:
    slow = Slowdown(None)
    assert slow.limiter is None
    assert slow.recover(now=5.0) is None


def test_first_signal_limits_to_the_success_rate_so_far() -> None:
    slow = throttled(rate_so_far=40.0)
    assert slow.limiter is not None
    assert slow.limiter.per_second == 40.0
    assert slow.slow_start
    # The throttled call took the current slot: the next start waits an interval.
    assert slow.limiter.wait(0.0) == pytest.approx(1 / 40)


def test_early_signal_starts_low_and_slow_start_doubles_every_round_trip() -> None:
    slow = Slowdown(None, round_trip=lambda: STEP)
    # 10 calls got through in the first 30 ms: not a rate, so count them over PERIOD.
    slow.signal(0, now=0.03, succeeded=10, elapsed=0.03)
    assert slow.limiter is not None
    assert slow.limiter.per_second == 10 / PERIOD
    assert slow.recover(now=0.04) == pytest.approx(0.01)  # not yet: wait the rest
    rates, now = [], 0.03
    for _ in range(5):
        now += STEP * 1.001
        slow.recover(now)
        rates.append(slow.limiter.per_second)
    assert rates == [40.0, 80.0, 160.0, 320.0, 640.0]


def test_signal_in_slow_start_halves_then_aimd_cuts_and_recovers() -> None:
    slow = throttled(rate_so_far=100.0)
    assert slow.limiter is not None
    slow.recover(now=STEP)  # 200/s
    slow.signal(slow.epoch, now=0.03, succeeded=0, elapsed=1.0)
    assert not slow.slow_start
    assert slow.limiter.per_second == 100.0  # the last level that drew no signal
    slow.signal(slow.epoch, now=0.04, succeeded=0, elapsed=1.0)
    assert slow.limiter.per_second == pytest.approx(100.0 * DECREASE)
    assert slow.lowest == pytest.approx(100.0 * DECREASE) and slow.cuts == 2
    # Quiet: one INCREASE per PERIOD, not sooner.
    assert slow.recover(now=0.04 + PERIOD / 2) == pytest.approx(PERIOD / 2)
    assert slow.limiter.per_second == pytest.approx(100.0 * DECREASE)
    slow.recover(now=0.04 + PERIOD)
    assert slow.limiter.per_second == pytest.approx(100.0 * DECREASE * INCREASE)
    # Back fast to the rate of the last signal (100/s), then past it with care.
    rates, now = [], 0.04 + PERIOD
    for _ in range(4):
        now += PERIOD
        slow.recover(now)
        rates.append(slow.limiter.per_second)
    assert rates == pytest.approx(
        [100.0 * DECREASE * INCREASE**2, 100.0, 100.0 * PROBE, 100.0 * PROBE**2]
    )


def test_only_calls_started_at_the_current_rate_count() -> None:
    slow = throttled(rate_so_far=100.0)
    old_epoch = 0  # calls started before the limit: answers about the old rate
    assert slow.epoch != old_epoch
    for now in (0.001, 0.002, 0.003):
        slow.signal(old_epoch, now=now, succeeded=0, elapsed=1.0)
    assert slow.limiter is not None
    assert slow.limiter.per_second == 100.0 and slow.slow_start
    assert slow.signals == 4 and slow.cuts == 0
    # A burst of 429s from calls started at one rate is one cut, not many.
    epoch = slow.epoch
    slow.signal(epoch, now=0.01, succeeded=0, elapsed=1.0)
    slow.signal(epoch, now=0.011, succeeded=0, elapsed=1.0)
    assert slow.limiter.per_second == 50.0 and slow.cuts == 1


def test_never_above_the_users_rate_nor_below_the_floor() -> None:
    limiter = RateLimit(50.0)
    slow = Slowdown(50.0, limiter, round_trip=lambda: STEP)
    assert not slow.signal(0, now=0.0, succeeded=0, elapsed=1.0)  # a user rate: cut at once
    assert limiter.per_second == pytest.approx(50.0 * DECREASE)
    now = 0.0
    for _ in range(10):
        now += PERIOD
        slow.recover(now)
    assert limiter.per_second == 50.0
    assert slow.recover(now + PERIOD) is None  # at the ceiling: nothing to wait for
    for _ in range(200):
        slow.signal(slow.epoch, now=now, succeeded=0, elapsed=1.0)
    assert limiter.per_second == MIN_RATE


def test_rate_limit_set_rate_moves_the_next_slot() -> None:
    limiter = RateLimit(1.0)
    assert limiter.wait(0.0) == 0.0
    assert limiter.wait(0.0) == pytest.approx(1.0)
    limiter.set_rate(100.0)  # the next start is one new interval after the last
    assert limiter.wait(0.0) == pytest.approx(0.01)
    assert limiter.wait(0.01) == 0.0


def test_a_long_quiet_spell_resumes_slow_start() -> None:
    slow = throttled(rate_so_far=100.0)
    slow.signal(slow.epoch, now=0.001, succeeded=0, elapsed=1.0)  # halved to 50/s
    assert slow.limiter is not None and not slow.slow_start
    now = 0.001
    while now + PERIOD < RESTART:  # careful growth while the signal is recent
        now += PERIOD * 1.001
        slow.recover(now)
    assert not slow.slow_start
    assert slow.limiter.per_second <= 50.0 * INCREASE**8
    before = slow.limiter.per_second
    slow.recover(0.001 + RESTART)  # quiet for RESTART seconds: find the level fast again
    assert slow.slow_start
    assert slow.limiter.per_second == pytest.approx(2 * before)
