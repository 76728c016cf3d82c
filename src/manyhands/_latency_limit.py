"""The limit on calls in flight: a slow start, then what the latency says.

A server that slows down instead of refusing (a queue in front of a few
workers) only tells its clients through latency. This limit keeps the calls
in flight near what the server turns around without a queue:

- *Opening* (``slow_start=True``: asyncio's thousands of tasks, and threads): the run
  starts with ``OPENING`` calls in flight. Until the first answer, time
  doubles the limit every ``DOUBLING`` seconds, so a run that no server
  limits is held back by its own CPU, not by the opening; but only at a look
  that comes on time: a look later than ``LATE`` means the client is busy
  (its event loop holds the interpreter), so the calls sent may not have
  left yet, and their refusals cannot have come back. From the first
  answer on, the answers pace it: each accepted call lets ``GROWTH`` more
  start (1.5 times as many per round trip). A first answer that came late
  (more than ``LATE_ANSWER`` times its latency after its calls were let
  start: they waited to run, the client lagged, and the blind doublings
  outran the answers) cuts the limit back to twice the calls answered.
  Lateness is the answered calls' own: when latency varies by itself, the
  first answer is the fastest of many, often of a call let start after the
  first ones, which are still out (judged from the opening's start, such
  an answer was "late" and cut the run to a few dozen calls). One that
  came on time after ``SLOW_CALL`` or more leaves time doubling on
  (answers a round trip apart would take seconds to ramp up).
  ``QUIET`` without an answer doubles it too (the calls out may all wait
  for something: the opening never stalls a run). The opening ends at the
  first refusal (the rate takes it from there), when the latency rises
  (HyStart), at a first answer under ``LOCAL`` (not a server's), or at
  ``workers``.
- *Samples* (for a server that never refused a call): twice per unloaded
  round trip (threads; once per round trip on an event loop, and not during
  its opening), the mean latency of the calls that came back (``SAMPLE_CALLS``
  at least) is compared with the unloaded latency (the lowest mean over
  ``UNLOADED`` seconds). ``SUSTAINED`` samples in a row above ``QUEUE`` times
  it: a queue is building, it seems, and the limit becomes the calls the
  server delivered per second over the last samples times the unloaded
  latency (the bandwidth-delay product of TCP BBR), times ``HEADROOM``.
- *A cut on trial*: calls whose latency varies by itself look the same to
  those samples (the lowest of many noisy means is far below the rest). A
  queue's server answers at its own rate whatever the calls in flight, so
  once the cut binds, the answers are counted for ``TRIAL`` round trips: at
  less than ``BORNE_OUT`` of the rate before it, there was no queue, and the
  limit goes back (and the latency measured then is the least "unloaded"
  one from then on). Below
  ``GROW_BELOW`` times it, a limit that binds grows by a quarter, then waits
  two round trips for the answers of the calls that lets start (a path that
  got faster, or a cut the latency did not bear out).
  A limit that no answer eased for ``QUIET`` doubles: the calls out may all
  wait for something only more calls bring. Once the input ended, no cut:
  only the calls out and retries are left, and the last calls out are the
  slowest (the fast ones came back), which reads as a queue. A cut still on
  trial is not one the run settled on (``settled``).

Every method takes the time, so tests drive it exactly.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["OPENING", "LatencyLimit"]

OPENING = 16  # calls in flight before any call came back
DOUBLING = 0.005  # seconds per doubling of the opening, before any call came back
LATE = 0.001  # seconds: a look this late means a busy client (no doubling at it)
RECHECK = 0.001  # seconds: after a late look, look again this soon
GROWTH = 0.5  # more calls per accepted call, once the answers pace the opening
LATE_ANSWER = 1.5  # a first answer later than this many times its latency came late
SLOW_CALL = 0.05  # seconds: answered on time, calls this slow leave time doubling on
QUIET = 0.1  # seconds without an answer (and 4 latencies) before time doubles it again
QUIET_LATENCIES = 4
LOCAL = 1e-3  # seconds: calls faster than this are not a server's
QUEUE = 2.0  # latency above this many times the unloaded one: a queue is building
HEADROOM = 1.2  # calls in flight per call the server turns around unloaded
GROW_BELOW = 1.15  # latency below this many times the unloaded one: room to grow
UNLOADED = 10.0  # seconds over which the lowest latency counts as the unloaded one
MIN_SAMPLE = 0.02  # seconds, the shortest sampling interval
SUSTAINED = 3  # round trips in a row above QUEUE before the limit is cut
SAMPLE_CALLS = 8  # answers a sample holds at least (one fast call is no "unloaded" latency)
BORNE_OUT = 0.8  # a cut holds if the calls came back at this share of the rate before it
TRIAL = 2.0  # round trips (as they were before the cut) over which that rate is measured


class LatencyLimit:
    """How many calls may be in flight (``limit``), from the opening and the latency.

    >>> limit = LatencyLimit(workers=1000, now=0.0)
    >>> limit.limit, limit.tick(0.005), limit.limit  # time doubles it...
    (16, 0.005, 32)
    >>> limit.tick(0.0115), limit.limit  # ...at a look on time only
    (0.001, 32)
    >>> limit.accepted(0.012, calls=2, latency=0.01, in_flight=30)
    >>> limit.limit  # then each accepted call lets half a call more start
    33
    """

    def __init__(
        self, workers: int, now: float, *, slow_start: bool = True, ramp_loads: bool = True
    ) -> None:
        self.workers = workers
        self._ramp_loads = ramp_loads  # (see _end_opening)
        # Threads open with an eighth of a pool of hundreds: 1,000 threads reach
        # all in 3 doublings, not 6 (30 ms of ramp cost a 1 s run ~3%).
        first = OPENING if ramp_loads else max(OPENING, workers // 8)
        self.limit = min(workers, first) if slow_start else workers
        self.opening = self.limit < workers
        self._begun = now
        self._latency = 0.0  # smoothed latency of accepted calls
        self._sampled = math.nan  # when the current sample began
        self._next_sample = -math.inf
        self._sum, self._count = 0.0, 0
        self._lows: deque[tuple[float, float]] = deque()  # (when, mean) rising: a sliding min
        # (began, calls, their summed latency) of the last samples
        self._delivery: deque[tuple[float, int, float]] = deque(maxlen=2 * SUSTAINED)
        # A cut waiting to be borne out: (the rate of answers and the latency before
        # it, the limit before it, whether it cut the opening short); when the limit
        # it set first bound, and the answers since (count and summed latency).
        self._trial: tuple[float, float, int, bool] | None = None
        self._bound_at: float | None = None
        self._after_sum, self._after_count = 0.0, 0
        self._floor = 0.0  # the latency a cut that did not hold found: "unloaded" is no lower
        self._hold_until = -math.inf
        self._refusing = False
        self.follows = True  # latency may cut the limit (not for CPU work: see Slowdown)
        self._queued = 0  # samples in a row above QUEUE
        self._wake = now + DOUBLING  # the opening's next doubling
        self.input_ended = False  # only the calls out and retries are left: nothing to cut
        self._answered = False  # a call came back: the answers pace the opening
        self._doubling = True  # time doubles it (until the first answer, see _pace)
        self._last_answer = now
        self._opened = -math.inf  # when the opening ended (see _end_opening)
        self._clock = now
        self._credit = 0.0  # (GROWTH's fractions of a call)

    @property
    def rising(self) -> bool:
        """The last round trip's latency was above ``QUEUE`` times the unloaded one."""
        return self._queued > 0

    @property
    def settled(self) -> int:
        """The limit, except a cut still on trial: not borne out, it is not one to keep."""
        return self.limit if self._trial is None else max(self.limit, self._trial[2])

    @property
    def latency(self) -> float:
        """The smoothed latency of accepted calls (0.0 before the first)."""
        return self._latency

    def tick(self, now: float, waiting: int = 0) -> float | None:
        """Grow the opening with time; seconds until it grows again (None: it no longer does).

        ``waiting``: batches sent whose calls the workers have not all started
        (a busy event loop): no doubling until they have.
        """
        self._clock = now
        if not self.opening:
            return self._unstall(now)
        if not self._doubling:
            # Paced by the answers; none for a while (the calls out may all
            # wait for something): time doubles it again, the run never stalls here.
            quiet = max(QUIET_LATENCIES * self._latency, QUIET)
            if now - self._last_answer < quiet:
                return quiet - (now - self._last_answer)
            self._wake = max(self._wake, now)  # (a quiet client: this look is on time)
        if now < self._wake:
            return self._wake - now
        if waiting:
            return RECHECK
        if now > self._wake + LATE:  # a busy client: the calls sent may not have left
            self._wake = now + RECHECK
            return RECHECK
        self.limit = min(2 * self.limit, self.workers)
        self._wake = now + DOUBLING
        if self.limit >= self.workers:
            self._end_opening()
            return None
        return DOUBLING

    def _unstall(self, now: float) -> float | None:
        """A limit below ``workers`` that no answer eased for ``QUIET``: it doubles.

        The calls in flight may all wait for something only more calls bring
        (a call that waits for the others' results): a limit must never hold
        a run still.
        """
        if self.limit >= self.workers:
            return None
        quiet = max(QUIET_LATENCIES * self._latency, QUIET)
        idle = now - self._last_answer
        if idle < quiet:
            return quiet - idle
        self.limit = min(2 * self.limit, self.workers)
        self._last_answer = now
        return quiet

    def let_go(self) -> None:
        """Latency no longer limits the calls in flight (calls that hold the CPU)."""
        self.follows = False
        self._queued = 0
        self._trial = self._bound_at = None
        self.limit = self.workers
        self.opening = False

    def refused(self) -> None:
        """The server refused a call: it says its limit, and the rate takes it from here.

        Latency then no longer limits the calls in flight: a server that
        refuses above its limit has no queue to keep short, and latency that
        varies for other reasons (the client's own load) must not cut a run
        that the rate already paces.
        """
        self._refusing = True
        self._trial = self._bound_at = None  # (a cut on trial: the rate judges from here)
        self.limit = self.workers
        self.opening = False

    def accepted(
        self, now: float, calls: int, latency: float, in_flight: int, started: float | None = None
    ) -> None:
        """``calls`` calls came back accepted, taking ``latency`` seconds each.

        ``started``: when they were let start (None: ``latency`` before ``now``).
        """
        self._clock = now
        if self._trial is not None:
            self._try_cut(now, calls, latency, in_flight)
        if self._latency:
            self._latency = 0.8 * self._latency + 0.2 * latency
        else:
            self._latency = latency
        self._sum += latency * calls
        self._count += calls
        self._last_answer = now
        if (
            now >= self._next_sample
            and self._count >= SAMPLE_CALLS
            and not (self.opening and self._ramp_loads)
            and not self._refusing
            and self.follows
            and now - latency >= self._opened  # (see _end_opening)
        ):
            self._sample(now, in_flight)
        if self.opening:
            self._pace(now, calls, latency, now - latency if started is None else started)

    def _pace(self, now: float, calls: int, latency: float, started: float) -> None:
        """The opening, once calls come back: the answers pace it (see the module)."""
        if not self._answered:
            self._answered = True
            if latency < LOCAL:
                self._end_opening()  # (and the limit: workers)
                self.limit = self.workers
                return
            # Late: these calls waited to run after they were let start (the
            # client lagged). Not: calls let start later than the first ones,
            # which answer first when latency varies (the fastest of many).
            late = now - started > LATE_ANSWER * latency
            if late:
                self.limit = min(self.limit, max(OPENING, 2 * calls))
            # Slow calls answered on time: the server kept up with the blind
            # doublings, and answers a round trip apart would take seconds to
            # ramp up: time goes on doubling (a refusal still ends it).
            self._doubling = not late and latency >= SLOW_CALL
        self._credit += calls * GROWTH
        grow = int(self._credit)
        self._credit -= grow
        self.limit += grow
        if self.limit >= self.workers:
            self._end_opening()

    def hold(self, until: float) -> None:
        """Do not grow before ``until`` (the rate was just cut)."""
        self._hold_until = max(self._hold_until, until)

    def _end_opening(self) -> None:
        """The opening is over; latency counts from the calls started after it.

        The calls started during a ramp met a lighter client than those after
        it (10,000 tasks on one event loop: 0.1 s calls answered in 0.1 s
        early, 0.2 s once all run): their latency is no measure of "unloaded".
        Threads (``ramp_loads=False``) wait in the OS, not on one event loop:
        a call's latency does not grow with the calls started, and the first
        answers, from calls started in the opening, are the unloaded latency
        (against a queue, the only answers that did not wait in it).
        """
        self.opening = False
        self.limit = min(self.limit, self.workers)
        if self._ramp_loads:
            self._opened = self._clock

    def _try_cut(self, now: float, calls: int, latency: float, in_flight: int) -> None:
        """A cut is on trial: do as many answers come back with fewer calls in flight?

        Against a queue they do: the server answers at its own rate, and the
        calls it no longer queues only come back sooner. Calls whose latency
        varies by itself (an API whose p95 is twice its median) show a queue
        that is not there (the slowest samples stand far above the fastest),
        and a cut then only takes answers away: cut after cut, such a run
        ended at 1 call in flight, 90 times slower. So from when the new limit
        binds, the answers are counted for ``TRIAL`` round trips; a cut that
        lost more than a fifth of the rate is undone, and the mean latency of
        those answers (every call that ended in that time, a fair sample)
        becomes the least "unloaded" latency from then on.
        """
        assert self._trial is not None
        if self._bound_at is None:
            if in_flight <= self.limit:
                self._bound_at = now  # (the answers count from the next one)
            return
        self._after_sum += latency * calls
        self._after_count += calls
        rate, before, limit, opening = self._trial
        lasted = now - self._bound_at
        if lasted < TRIAL * before:
            return
        self._trial = self._bound_at = None
        if self._after_count / lasted >= BORNE_OUT * rate:
            return  # a queue: the cut holds
        self.limit = max(self.limit, limit)
        self.opening = opening and self.limit < self.workers  # (it goes on where it was cut)
        self._floor = max(self._floor, self._after_sum / self._after_count)
        self._lows.clear()
        self._queued = 0
        self._hold_until = now

    def _sample(self, now: float, in_flight: int) -> None:
        """Once per round trip: does the latency rise with the calls in flight?"""
        began, self._sampled = self._sampled, now
        mean = self._sum / self._count
        delivered = self._count
        self._sum, self._count = 0.0, 0
        lows = self._lows
        while lows and lows[-1][1] >= mean:
            lows.pop()
        lows.append((now, mean))
        while lows[0][0] < now - UNLOADED:
            lows.popleft()
        unloaded = max(lows[0][1], self._floor)
        # Twice per unloaded round trip: a queue that builds shows within a few
        # of them, not of the (longer and longer) loaded ones. Not on one event
        # loop (``ramp_loads``): there a busy loop's own latency rises and falls
        # with its load, and a sample per loaded round trip rides that out.
        every = mean if self._ramp_loads else unloaded / 2
        self._next_sample = now + max(every, MIN_SAMPLE)
        ratio = mean / unloaded if unloaded > 0 else 1.0
        self._queued = self._queued + 1 if ratio > QUEUE else 0
        if now > began:
            self._delivery.append((began, delivered, mean * delivered))
        if self._trial is not None:
            pass  # (a cut on trial: the limit stays as it is until it is judged)
        elif self._queued >= SUSTAINED and self._delivery and not self.input_ended:
            # The server's rate: the calls delivered over the last few samples.
            # One sample's answers come in bunches (a short one may hold few
            # or two bunches), and the cut, repeated at every sample while the
            # queue drains, would ratchet down to the fewest.
            since = self._delivery[0][0]
            delivered = sum(calls for _, calls, _ in self._delivery)
            rate = delivered / (now - since)
            fit = max(1, math.ceil(rate * unloaded * HEADROOM))
            if fit < self.limit:
                before = sum(total for _, _, total in self._delivery) / delivered
                self._trial = (rate, before, self.limit, self.opening)
                self._after_sum, self._after_count = 0.0, 0
            self.limit = min(self.limit, fit)
            if self.opening:
                self._end_opening()
            self._hold_until = now + mean
        elif (
            not self.opening
            and ratio < GROW_BELOW
            and self.limit < self.workers
            and now >= self._hold_until
            and in_flight >= 0.9 * self.limit
        ):
            self.limit = min(self.workers, self.limit + max(1, self.limit // 4))
            # Its effect shows in the answers of the calls it lets start: a
            # round trip on, sampled a round trip later. (Growing at every
            # sample, once per unloaded round trip, outran them: 21 -> 40 in
            # three samples, back to twice the unloaded latency.)
            self._hold_until = now + 2 * mean
