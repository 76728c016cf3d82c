"""Adaptive slowdown: find the start rate a throttling service accepts.

TCP's answer to congestion, applied to the rate at which calls start. Until
the first signal (a call raised ``RetryAfter`` or an exception with a
``retry_after`` attribute) there is no limit beyond the user's ``rate=``.

- The first signal sets a limit at the success rate seen so far (over at
  least one ``PERIOD``: the few calls of a run's first milliseconds say
  nothing about a rate), and *slow start* doubles it every quiet round trip
  (one median call) to find the level fast.
- A signal in slow start halves the rate (the last level that drew no signal)
  and moves to *AIMD*: each later signal multiplies the rate by ``DECREASE``,
  each quiet ``PERIOD`` by ``INCREASE`` up to the rate of the last signal,
  and by ``PROBE`` beyond it (as TCP CUBIC does, it returns fast to the level
  it knows and probes past it with care: fewer signals, each of which costs
  the throttled call a Retry-After).
- After ``RESTART`` seconds without a signal, slow start resumes from the
  current rate: one early or spurious signal does not leave a long run
  crawling at a rate far below what the service takes.
- Only calls started at the current rate count (their ``epoch``): answers to
  calls started before a change say nothing about the new rate, and a burst
  of 429s is one signal, not fifty.
- The rate never exceeds the user's ``rate=`` (the ceiling), and never falls
  below ``MIN_RATE``.

Every method takes the time as an argument, so tests drive it exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from ._rate import RateLimit

__all__ = ["Slowdown"]

DECREASE = 0.9  # each signal after slow start
INCREASE = 1.05  # each quiet PERIOD, up to the rate of the last signal
PROBE = 1.01  # each quiet PERIOD, above it
RESTART = 4.0  # seconds without a signal before slow start resumes
PERIOD = 0.5  # seconds
MIN_STEP = 0.01  # shortest slow-start step, seconds
MIN_RATE = 0.1  # calls per second


class Slowdown:
    """The adaptive start rate; ``limiter`` is the RateLimit the engine obeys.

    >>> slow = Slowdown(ceiling=None, round_trip=lambda: 0.02)
    >>> slow.signal(epoch=0, now=0.0, succeeded=50, elapsed=1.0)
    True
    >>> slow.limiter.per_second, slow.slow_start
    (50.0, True)
    >>> slow.recover(now=0.02)  # a quiet round trip: doubled
    0.02
    >>> slow.limiter.per_second
    100.0
    >>> slow.signal(epoch=slow.epoch, now=0.03, succeeded=60, elapsed=1.03)
    False
    >>> slow.limiter.per_second, slow.slow_start  # too far: back to the last quiet level
    (50.0, False)
    """

    def __init__(
        self,
        ceiling: float | None,
        limiter: RateLimit | None = None,
        round_trip: Callable[[], float] = lambda: PERIOD,
    ) -> None:
        self.ceiling = ceiling  # the user's rate, if any
        self._round_trip = round_trip  # slow start's step: a median call's latency
        self.limiter = limiter
        self.epoch = 0  # bumped at every change of the rate
        self.slow_start = False
        self.signals = 0  # every signal, counted or not
        self.cuts = 0  # signals that lowered the rate
        self.lowest: float | None = None  # lowest rate after a cut
        self._signalled = 0.0  # the rate of the last cut, before it
        self._last_signal = 0.0  # when the last counted signal came
        self._step = PERIOD
        self._changed = 0.0

    def signal(self, epoch: int, now: float, succeeded: int, elapsed: float) -> bool:
        """A call started at ``epoch`` asked to slow down; True if the limit is new.

        ``succeeded`` calls succeeded in the ``elapsed`` seconds of the run so far.
        """
        self.signals += 1
        limiter = self.limiter
        if limiter is None:
            limiter = self.limiter = RateLimit(max(MIN_RATE, 1.0, succeeded / max(elapsed, PERIOD)))
            limiter.wait(now)  # the throttled call counts as the last start
            self.slow_start = True
            self._step = self._measure_step()
            created = True
        elif epoch != self.epoch:
            return False
        else:
            # Leaving slow start, the last rate that drew no signal was half this one.
            cut = 0.5 if self.slow_start else DECREASE
            self.slow_start = False
            self._signalled = limiter.per_second
            limiter.set_rate(max(MIN_RATE, limiter.per_second * cut))
            self.cuts += 1
            self.lowest = min(self.lowest or limiter.per_second, limiter.per_second)
            created = False
        self._changed = self._last_signal = now
        self.epoch += 1
        return created

    def recover(self, now: float) -> float | None:
        """Raise the rate if a quiet step passed; return seconds to the next step.

        None when there is nothing to recover (no limit, or at the ceiling).
        """
        limiter = self.limiter
        if limiter is None or limiter.per_second == self.ceiling:
            return None
        if not self.slow_start and now - self._last_signal >= RESTART:
            self.slow_start = True
            self._step = self._measure_step()
        wait = self._step if self.slow_start else PERIOD
        if now - self._changed < wait - 1e-9:  # (a nanosecond of float rounding is not early)
            return self._changed + wait - now
        rate = limiter.per_second
        if self.slow_start:
            rate *= 2.0
        elif rate < self._signalled:
            rate = min(rate * INCREASE, self._signalled)
        else:
            rate *= PROBE
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        limiter.set_rate(rate)
        self._changed = now
        self.epoch += 1
        if self.slow_start:
            self._step = self._measure_step()
            return self._step
        return PERIOD

    def _measure_step(self) -> float:
        return min(max(self._round_trip(), MIN_STEP), PERIOD)
