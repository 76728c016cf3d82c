"""The adaptive slowdown on a fake clock: its rules, and a simulated run against each server model.

The simulations (``slowdown_sim``) drive the real controller against the
models of ``manyhands._servers`` on a simulated clock, so they are exact,
fast and never flaky: they guard the refused share and the wall time against
the capacity bound that ``benchmarks/bench_throttled.py`` measures for real.
"""

from __future__ import annotations

import itertools
import math

import pytest

from manyhands._latency_limit import DOUBLING, LOCAL, OPENING, QUIET, RECHECK, LatencyLimit
from manyhands._servers import MODELS, Overload, SlidingWindow, TokenBucket, Unlimited, Varying
from manyhands._slowdown import Slowdown
from manyhands._slowdown_rate import MARGIN, MIN_RATE, PROBES

from .slowdown_sim import simulate

WINDOW_MODELS = [name for name in MODELS if "window" in name]


def accept(slow: Slowdown, count: int, start: float, spacing: float, latency: float) -> float:
    """``count`` accepted calls started ``spacing`` apart from ``start``; the last answer's time."""
    now = start
    for n in range(count):
        began = start + n * spacing
        now = began + latency
        slow.completed(now, started=began, latency=latency, in_flight=1)
    return now


# -- the rules ---------------------------------------------------------------


def test_no_limit_until_a_refusal() -> None:
    slow = Slowdown(workers=50, now=0.0)
    accept(slow, 500, start=0.0, spacing=0.002, latency=0.01)
    assert slow.limiter is None and slow.concurrency == 50 and slow.paused_until == -math.inf
    assert slow.settled_rate is None and slow.settled_concurrency is None


def test_the_first_refusal_paces_just_under_the_accepted_starts_of_the_window() -> None:
    slow = Slowdown(workers=100, now=0.0)
    # 300 calls accepted in the first 1.5 s: 200 per second...
    accept(slow, 300, start=0.0, spacing=0.005, latency=0.01)
    slow.completed(1.5012, started=1.5, throttled=1, retry_after=1.0)
    slow.due(1.6)  # ...counted by start, once the calls started before the refusal answered
    assert slow.limiter is not None
    assert slow.limiter.per_second == pytest.approx(MARGIN * 200, rel=0.02)
    assert slow.summary() == f"rate {slow.limiter.per_second:.4g}/s"  # for the progress line


def test_answers_to_calls_started_before_a_cut_do_not_cut_again() -> None:
    slow = Slowdown(workers=100, now=0.0)
    accept(slow, 300, start=0.0, spacing=0.005, latency=0.01)
    slow.completed(1.5012, started=1.5, throttled=1, retry_after=1.0)
    slow.due(1.6)
    assert slow.limiter is not None
    rate = slow.limiter.per_second
    for n in range(20):  # a burst of refusals, all of calls started before the cut
        slow.completed(1.61 + n * 1e-3, started=1.499, throttled=1, retry_after=1.0)
    assert slow.limiter.per_second == rate and slow.paused_until == -math.inf
    assert slow.throttled == 21


def test_refusals_that_go_on_after_the_cut_pause_everyone() -> None:
    slow = Slowdown(workers=100, now=0.0)
    accept(slow, 200, start=0.0, spacing=1e-4, latency=0.01)  # a window spent at once
    slow.completed(0.0301, started=0.03, throttled=1, retry_after=1.0)
    slow.due(0.06)
    # Calls paced after the cut are refused too: the window is spent.
    now = 0.06
    for n in range(8):
        now = 0.06 + n * 0.006
        slow.completed(now + 1e-3, started=now, throttled=1, retry_after=1.0)
    assert slow.pauses == 1
    assert slow.paused_until > now and slow.concurrency == 1  # one probe call at a time
    assert slow.limiter is not None
    assert slow.limiter.per_second == pytest.approx(
        PROBES / (slow.paused_until - now) / PROBES, rel=1
    )
    # A probe call accepted: the limit lifted, the pause ends early.
    probe = slow.paused_until + 0.01
    slow.due(probe)
    slow.completed(probe + 0.01, started=probe, latency=0.01)
    assert slow.paused_until == -math.inf and slow.concurrency == 100
    assert slow.settled_rate == pytest.approx(MARGIN * 200, rel=0.02)


def test_never_above_the_users_rate_nor_below_the_floor() -> None:
    slow = Slowdown(workers=10, ceiling=50.0, now=0.0)
    assert slow.limiter is not None and slow.limiter.per_second == 50.0
    accept(slow, 100, start=0.0, spacing=0.02, latency=0.01)
    now = 2.0
    for _ in range(300):  # refused over and over: cut after cut, never to zero
        slow.completed(now + 1e-3, started=now, throttled=1)
        slow.due(now + 0.5)
        now += 0.5
    assert slow.limiter.per_second >= MIN_RATE
    quiet = Slowdown(workers=10, ceiling=50.0, now=0.0)
    quiet.completed(0.01, started=0.0, throttled=1)
    for step in range(200):  # quiet for long: it probes back up, to the ceiling at most
        quiet.due(step * 0.25)
        accept(quiet, 10, start=step * 0.25, spacing=0.02, latency=0.01)
    assert quiet.limiter is not None and quiet.limiter.per_second <= 50.0


def test_no_probing_once_the_input_is_exhausted() -> None:
    slow = Slowdown(workers=100, now=0.0)
    accept(slow, 300, start=0.0, spacing=0.005, latency=0.01)
    slow.completed(1.5012, started=1.5, throttled=1)
    slow.due(1.6)
    assert slow.limiter is not None
    rate = slow.limiter.per_second
    slow.ending()
    for step in range(40):
        slow.due(1.6 + step * 0.25)
    assert slow.limiter.per_second == rate


def test_latency_limit_opening_doubles_by_time_at_looks_on_time_only() -> None:
    limit = LatencyLimit(workers=1000, now=0.0)
    assert limit.limit == OPENING and limit.opening
    assert limit.tick(DOUBLING - 0.001) == pytest.approx(0.001)  # not yet
    limit.tick(DOUBLING)
    assert limit.limit == 2 * OPENING
    # Calls sent that the event loop has not started yet: they have not left.
    assert limit.tick(2 * DOUBLING, waiting=1) == RECHECK and limit.limit == 2 * OPENING
    # A look long after it was due: the client was busy (its event loop held the
    # interpreter), the calls it was given may not have left. No doubling...
    assert limit.tick(1.0) == RECHECK and limit.limit == 2 * OPENING
    limit.tick(1.0 + RECHECK)  # ...until a look comes on time, every call started
    assert limit.limit == 4 * OPENING
    limit.refused()  # the server names its limit: the rate takes it from here
    assert not limit.opening and limit.limit == 1000 and limit.tick(2.0) is None


def test_latency_limit_opening_is_paced_by_the_answers_once_they_come() -> None:
    limit = LatencyLimit(workers=1000, now=0.0)
    for n in range(1, 3):
        limit.tick(n * DOUBLING)
    assert limit.limit == 4 * OPENING
    # The first answers, on time (10 ms calls back after 12 ms): no cut, and
    # from now on each accepted call lets half a call more start; time no longer doubles.
    limit.accepted(0.012, calls=4, latency=0.01, in_flight=60)
    assert limit.limit == 4 * OPENING + 2
    limit.tick(0.02)
    assert limit.limit == 4 * OPENING + 2
    limit.accepted(0.021, calls=3, latency=0.01, in_flight=60)
    assert limit.limit == 4 * OPENING + 3  # (half calls add up)
    # No answer for QUIET (the calls out may all wait for something): time
    # doubles it again, so the opening never stalls a run.
    limit.tick(0.021 + QUIET / 2)
    assert limit.limit == 4 * OPENING + 3
    limit.tick(0.021 + QUIET)
    assert limit.limit == 2 * (4 * OPENING + 3)


def test_latency_limit_opening_a_fast_answer_of_a_call_let_start_late_is_not_late() -> None:
    # Latency that varies by itself: the first answer is the fastest of many
    # calls, here one let start at 20 ms (7 ms) while the first calls (0 ms)
    # are still out. It came on time: no cut to twice the calls answered (2:
    # judged from the opening's start it was late, and such runs took up to
    # 1.3x the time of the same run unlimited); the answers pace it from here.
    limit = LatencyLimit(workers=2000, now=0.0)
    began = double_until(limit, 256)
    limit.accepted(began + 0.007, calls=1, latency=0.007, in_flight=255, started=began)
    assert limit.limit == 256 and limit.opening
    limit.accepted(began + 0.009, calls=2, latency=0.008, in_flight=255, started=began)
    assert limit.limit == 256 + 1


def double_until(limit: LatencyLimit, calls: int) -> float:
    """Time (looks on time, no answer) doubles the opening to ``calls``; returns the time."""
    now = 0.0
    while limit.limit < calls:
        now += DOUBLING
        limit.tick(now)
    return now


def test_latency_limit_opening_cut_back_when_the_first_answer_came_late() -> None:
    # 10 ms calls whose first answers came back after 60 ms: the client or the
    # server lagged, and the blind doublings outran them (512 calls sent). The
    # limit falls back to twice the calls answered.
    limit = LatencyLimit(workers=2000, now=0.0)
    double_until(limit, 512)
    limit.accepted(0.06, calls=16, latency=0.01, in_flight=500, started=0.0)
    assert limit.limit == 2 * 16 + 8 and limit.opening
    # From then on the answers pace it; none for QUIET (the calls out may all
    # wait for something): time doubles it again, the opening never stalls a run.
    limit.tick(0.06 + QUIET / 2)
    assert limit.limit == 2 * 16 + 8
    limit.tick(0.06 + QUIET)
    assert limit.limit == 2 * (2 * 16 + 8)


def test_latency_limit_opening_keeps_the_ramp_of_slow_calls_answered_on_time() -> None:
    # 10,000 x 0.1 s: a busy client reached 8,192 when the first answers came,
    # 0.1 s after their start: on time, so no cut.
    limit = LatencyLimit(workers=10_000, now=0.0)
    double_until(limit, 8192)
    limit.accepted(0.104, calls=157, latency=0.1, in_flight=8192)
    assert limit.limit == 8192 + 78 and limit.opening
    # Answers 0.1 s apart would take seconds to ramp up: time goes on doubling.
    limit.tick(0.104)  # (this look is the first since 0.05: late, so not this one)
    limit.tick(0.104 + RECHECK)
    assert not limit.opening and limit.limit == 10_000


def test_latency_limit_opening_ends_at_calls_no_server_answers_so_fast() -> None:
    limit = LatencyLimit(workers=1000, now=0.0)
    limit.accepted(0.001, calls=16, latency=LOCAL / 10, in_flight=0)
    assert not limit.opening and limit.limit == 1000


def test_latency_limit_cuts_to_what_the_server_turns_around_unloaded() -> None:
    limit = LatencyLimit(workers=100, now=0.0, slow_start=False)
    now = 0.0
    for _ in range(5):  # unloaded: 0.1 s per call
        now += 0.1
        limit.accepted(now, calls=20, latency=0.1, in_flight=20)
    for _ in range(4):  # a queue: 0.5 s per call, 200 calls per second delivered
        now += 0.5
        limit.accepted(now, calls=100, latency=0.5, in_flight=100)
    assert limit.limit == math.ceil(200 * 0.1 * 1.2)
    # The calls out may all wait for something only more calls bring: a limit that
    # no answer eased for a while doubles, so it never holds a run still.
    quiet = max(4 * limit.latency, QUIET)
    assert limit.tick(now + quiet / 2) == pytest.approx(quiet / 2)
    assert limit.limit == math.ceil(200 * 0.1 * 1.2)
    limit.tick(now + quiet)
    assert limit.limit == 2 * math.ceil(200 * 0.1 * 1.2)


def test_a_refusing_server_is_paced_by_the_rate_not_the_latency() -> None:
    limit = LatencyLimit(workers=100, now=0.0, slow_start=False)
    limit.refused()
    now = 0.0
    for latency in [0.1] * 5 + [1.0] * 5:
        now += latency
        limit.accepted(now, calls=20, latency=latency, in_flight=100)
    assert limit.limit == 100


def test_calls_on_worker_processes_are_never_cut_by_their_latency() -> None:
    # A CPU-bound call slows down when the cores are busy (another run of the pool,
    # other programs): fewer calls in flight would only leave cores idle.
    slow = Slowdown(workers=24, now=0.0)
    slow.ignore_latency()
    slow.start(0.0)
    assert slow.concurrency == 24  # no slow start either
    now = 0.0
    for latency in [0.01] * 5 + [0.2] * 10:  # latency twenty times the unloaded one
        now += latency
        slow.completed(now, started=now - latency, calls=24, latency=latency, in_flight=24)
    assert slow.concurrency == 24 and slow.settled_concurrency is None


# -- simulated runs against the zoo (the CI guard of bench_throttled) ----------
# 2,000 items, 100 workers, capacity 200/s or 20 in progress, Retry(8, backoff=0.1).
# The bounds below are what the controller achieves on the simulated clock,
# with a little room; the targets are 5% refused and 1.15x the bound.


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("seed", [1, 2])
def test_simulated_run_against_each_model(model: str, seed: int) -> None:
    outcome = simulate(MODELS[model](), workers=100, seed=seed, start=1000.0 + 0.37 * seed)
    assert outcome.failed == 0
    # The first wave of 100 calls goes out before any answer: a token bucket's
    # burst of 10 or a cap of 20 refuses most of it (4.5%); after that, few.
    assert outcome.rejected_share <= 0.065, outcome
    assert outcome.vs_bound <= (1.15 if model in WINDOW_MODELS else 1.25), outcome


@pytest.mark.parametrize("model", WINDOW_MODELS)
def test_simulated_windows_are_spent_once_not_locked_out(model: str) -> None:
    outcome = simulate(MODELS[model](), workers=100, start=1000.37)
    assert outcome.pauses <= 4, outcome  # the opening's, and a few probes' at most
    assert outcome.rate is not None and outcome.rate <= 200


def test_simulated_overload_settles_near_the_servers_concurrency() -> None:
    # (as on threads: the opening, counted toward the unloaded latency)
    outcome = simulate(
        Overload(20, 0.1), workers=100, start=1000.37, slow_start=True, ramp_loads=False
    )
    assert outcome.vs_bound <= 1.05
    assert outcome.concurrency is not None and 20 <= outcome.concurrency <= 30
    # The first waves queue (100 calls for 20 servers: 0.5 s) until three
    # samples in a row confirm the queue; from then on calls wait less than one
    # service time. (The target, p95 within 2x, is not met: p90 is.)
    latencies = sorted(outcome.latencies)
    assert latencies[len(latencies) // 2] <= 1.25 * 0.1
    assert latencies[int(0.9 * len(latencies))] <= 2 * 0.1


@pytest.mark.parametrize("sigma", [0.5, 1.0])
@pytest.mark.parametrize("backend", ["threads", "asyncio"])
def test_simulated_latency_that_varies_by_itself_is_no_queue(sigma: float, backend: str) -> None:
    # An API whose p95 is 2.3 (sigma 0.5) or 5.2 times its median, and no limit.
    # The slow samples stood far above the fastest, read as a queue: cut after
    # cut, the run ended at 1 call in flight, 90 times slower than no limit.
    # A cut now holds only if the answers keep coming at the rate they did.
    threads = backend == "threads"
    workers, items = (100, 5000) if threads else (1000, 20_000)
    runs = {
        follow: simulate(
            Varying(0.1, sigma, seed=3),
            items=items,
            workers=workers,
            seed=3,
            slow_start=True,
            ramp_loads=not threads,
            follow_latency=follow,
            horizon=3000.0,
        )
        for follow in (True, False)
    }
    assert runs[True].wall <= 1.15 * runs[False].wall, runs
    assert runs[True].concurrency is None  # nothing to pass as workers= next time


def test_a_cut_the_answers_do_not_bear_out_is_undone() -> None:
    """Fewer calls in flight, and as slow as before: no queue; the limit goes back."""

    def cut(limit: LatencyLimit) -> float:
        now = 0.0
        for _ in range(4):  # answers of 0.1 s, then samples at 3x: a queue, it seems
            now += 0.05
            limit.accepted(now, calls=20, latency=0.1, in_flight=100)
        while limit.limit == 100 and now < 1.0:
            now += 0.05
            limit.accepted(now, calls=20, latency=0.3, in_flight=100)
        assert limit.limit < 100
        return now

    # Against a queue, the server's rate holds with fewer calls out: the cut stays.
    queue = LatencyLimit(workers=100, now=0.0, slow_start=False, ramp_loads=False)
    now = cut(queue)
    kept = queue.limit
    queue.accepted(now + 0.01, calls=1, latency=0.3, in_flight=kept)  # (it binds)
    for k in range(1, 20):
        queue.accepted(now + 0.01 + 0.05 * k, calls=20, latency=0.12, in_flight=kept)
    assert queue.limit <= kept and queue._trial is None  # (judged, and it held)
    # Calls as slow with fewer out: the answers came at a fraction of the rate.
    varying = LatencyLimit(workers=100, now=0.0, slow_start=False, ramp_loads=False)
    now = cut(varying)
    fewer = varying.limit
    varying.accepted(now + 0.01, calls=1, latency=0.3, in_flight=fewer)
    for k in range(1, 20):
        varying.accepted(now + 0.01 + 0.05 * k, calls=5, latency=0.3, in_flight=fewer)
    assert varying.limit == 100


def test_a_cut_not_judged_yet_is_not_settled_on_and_none_comes_once_the_input_ended() -> None:
    # Latency that varies by itself, at a run's end: the last calls out are the
    # slowest (the fast ones came back), which reads as a queue. A cut then was
    # never judged (the run ended first), and the Report said "settled on
    # workers=274" for a server with no limit.
    def rising(slow: Slowdown) -> float:
        now = 0.0
        for latency in [0.1] * 4 + [0.3] * 20:
            now += 0.05
            slow.completed(now, started=now - latency, calls=20, latency=latency, in_flight=100)
        return now

    running = Slowdown(workers=100, now=0.0, slow_start=False, ramp_loads=False)
    rising(running)
    assert running.concurrency < 100  # a cut, on trial
    assert running.settled_concurrency is None  # not borne out: nothing to pass as workers=
    ended = Slowdown(workers=100, now=0.0, slow_start=False, ramp_loads=False)
    ended.ending()  # (only the calls out, and retries, are left: a cut would slow no call)
    rising(ended)
    assert ended.concurrency == 100 and ended.settled_concurrency is None


@pytest.mark.parametrize("model", ["token-bucket", "sliding-window", "concurrency 20, 429"])
def test_simulated_slow_start_spares_the_server_a_first_wave_of_thousands(model: str) -> None:
    plain = simulate(MODELS[model](), workers=2000, start=1000.37)
    slow = simulate(MODELS[model](), workers=2000, start=1000.37, slow_start=True)
    assert plain.rejected_share > 0.4  # 2,000 calls before the first answer
    assert slow.rejected_share <= 0.05, slow
    assert slow.vs_bound <= 1.3, slow  # (the cap of 20: 1.26x; the windows 1.05-1.1x)


def test_simulated_run_without_limits_costs_nothing() -> None:
    outcome = simulate(Unlimited(0.05), items=20_000, workers=1000, network=0.0, jitter=0.0)
    assert outcome.requests == 20_000 and outcome.rate is None and outcome.concurrency is None
    assert outcome.wall == pytest.approx(1.0, rel=0.01)


def test_simulation_is_deterministic() -> None:
    first = simulate(SlidingWindow(200, count_rejected=True), workers=100, seed=3)
    again = simulate(SlidingWindow(200, count_rejected=True), workers=100, seed=3)
    assert (first.wall, first.requests, first.rejected) == (
        again.wall,
        again.requests,
        again.rejected,
    )
    assert simulate(TokenBucket(200), seed=3).requests != 0


def test_latency_counts_from_the_calls_started_after_the_opening() -> None:
    # 10,000 tasks on one event loop: the calls started early in the ramp met a
    # light client (0.1 s calls back in 0.1 s), those started once all run wait
    # for the loop too (0.25 s). That is the client's load, not a server's queue:
    # the early ones are no measure of "unloaded", and nothing is cut.
    limit = LatencyLimit(workers=10_000, now=0.0)
    now = 0.0
    while limit.opening:
        now += DOUBLING
        limit.tick(now)
    for k in range(5):
        limit.accepted(0.1 + k * 0.005, calls=100, latency=0.1, in_flight=10_000)
    for k in range(10):
        limit.accepted(0.4 + k * 0.3, calls=1000, latency=0.25, in_flight=10_000)
    assert limit.limit == 10_000 and not limit.rising


# -- issue 17 (5): threads' first wave, the settle, the slow climb, the queue --


def test_the_first_cut_settles_a_round_trip_and_a_half_after_the_refused_call() -> None:
    # 100 ms calls: the refusal comes back at once, the accepted calls started
    # with it only 0.1 s later. The window estimate is known once they are in
    # (1.5 round trips after the refused call's start), not twice as long after
    # the first accepted answer (0.3 s), which cost a concurrency-capped run 0.15 s.
    slow = Slowdown(workers=100, now=0.0)
    slow.completed(0.002, started=0.001, throttled=1, retry_after=1.0)
    slow.due(0.002)
    assert slow.limiter is not None and slow.limiter.per_second < 1.0  # (provisional)
    for n in range(20):
        slow.completed(0.1 + n * 1e-4, started=0.0, latency=0.1, in_flight=80 - n)
    slow.due(0.17)
    assert slow.limiter.per_second == pytest.approx(MARGIN * 20)


def test_the_climb_after_a_young_cut_doubles_every_round_trip_of_slow_calls() -> None:
    # 100 ms calls and a young window: the rate climbs from 19/s. The answers of
    # a step were started a round trip before it, at half the rate: counted
    # against the rate in force, the climb doubled only every other round trip
    # (80/s after 0.6 s instead of 320/s: a second of ramp before a server of
    # 200/s was used).
    slow = Slowdown(workers=100, now=0.0)
    slow.completed(0.002, started=0.001, throttled=1, retry_after=1.0)
    for n in range(20):
        slow.completed(0.1 + n * 1e-4, started=0.0, latency=0.1, in_flight=80 - n)
    now = 0.17
    slow.due(now)
    assert slow.limiter is not None
    out: list[float] = []  # start times of the calls in flight
    credit = 0.0
    while now < 0.77:
        now += 0.01
        credit += slow.limiter.per_second * 0.01  # calls start at the rate in force...
        while credit >= 1:
            credit -= 1
            out.append(now)
        back = [began for began in out if began + 0.1 <= now]  # ...and answer 0.1 s later
        out = out[len(back) :]
        for began in back:
            slow.completed(now, started=began, latency=0.1, in_flight=len(out))
        slow.due(now)
    assert slow.limiter.per_second >= 300


def test_latency_limit_on_threads_samples_by_the_unloaded_round_trip() -> None:
    # A queue in front of the server: each answer waits longer. Sampled once
    # per *loaded* round trip (0.3, 0.4, 0.5 s...), three samples above twice
    # the unloaded latency took a second; by the unloaded one (0.1 s), 0.3 s.
    limit = LatencyLimit(workers=100, now=0.0, slow_start=False, ramp_loads=False)
    now = 0.1
    limit.accepted(now, calls=20, latency=0.1, in_flight=80)
    latency = 0.1
    while limit.limit == 100 and now < 2.0:
        now += 0.1
        latency += 0.1
        limit.accepted(now, calls=20, latency=latency, in_flight=100)
    assert limit.limit < 100 and now <= 0.5 + 1e-9, now


def test_simulated_threads_open_small_against_a_first_wave_of_refusals() -> None:
    # 100 threads against a token bucket of 200/s with bursts of 10: a first
    # wave of 100 calls is refused 90 times (4.5% of the 2,000 items by
    # itself); the opening sends 16 and doubles them while nothing refuses.
    plain = simulate(MODELS["token-bucket"](), workers=100, start=1000.37)
    opening = simulate(
        MODELS["token-bucket"](), workers=100, start=1000.37, slow_start=True, ramp_loads=False
    )
    assert plain.rejected >= 90
    assert opening.rejected <= 50 and opening.rejected_share <= 0.03, opening
    assert opening.vs_bound <= 1.1, opening


def test_simulated_overload_threads_keep_the_opening_as_the_unloaded_latency() -> None:
    # Threads' opening ends when time doubled it to 100 workers, before any
    # answer. Its calls' latency is the unloaded one (the first 20 did not
    # queue): counting only later calls (as asyncio must, its ramp loads its
    # own event loop) took a queued 0.3 s for "unloaded" and cut nothing.
    threads = simulate(
        Overload(20, 0.1), workers=100, start=1000.37, slow_start=True, ramp_loads=False
    )
    assert threads.concurrency is not None and threads.concurrency <= 40, threads
    latencies = sorted(threads.latencies)
    assert latencies[int(0.85 * len(latencies))] <= 2 * 0.1


def test_a_cap_on_calls_in_flight_learned_from_refusals_that_come_only_at_it() -> None:
    # A server that takes 20 calls at a time: the first wave's refusals come
    # back while 99, 98, ... 20 calls are still out. The calls it holds are
    # out at the client too, so 20 out at most can never be refused.
    slow = Slowdown(workers=100, now=0.0)
    for n in range(80):
        slow.completed(0.001 + n * 1e-5, started=0.0, throttled=1, in_flight=99 - n)
    for n in range(20):
        slow.completed(0.1 + n * 1e-4, started=0.0, latency=0.1, in_flight=19 - n)
    slow.due(0.2)
    slow.completed(0.25, started=0.15, latency=0.1, in_flight=19)  # (it binds)
    assert slow.concurrency == 20 and slow.settled_concurrency == 20
    assert slow.limiter is not None
    rate = slow.limiter.per_second
    # A refusal while the cap binds (19 others out) is the cap's: one off it,
    # and the rate is not cut.
    slow.completed(1.0, started=0.999, throttled=1, in_flight=19)
    slow.due(1.01)
    assert slow.concurrency == 19 and slow.limiter.per_second >= rate
    # HOLD later, still binding, it grows back by one.
    slow.completed(2.1, started=2.0, latency=0.1, in_flight=18)
    slow.due(2.1)
    assert slow.concurrency == 20
    # A refusal with 3 calls out is a rate's: the cap goes, the rate is cut.
    slow.completed(2.6, started=2.599, throttled=1, in_flight=3)
    assert slow.concurrency == 100 and slow.settled_concurrency is None


def test_a_cap_the_calls_in_flight_never_reach_is_not_reported_as_settled() -> None:
    # A window of 200 a second: the first wave's refusals come back while
    # 99 ... 77 calls are out, which leaves a cap of 77; then the rate paces
    # the run at ~190/s with 10 ms calls, 2-3 calls out. The Report must not
    # tell the user to pass workers=77: nothing held the run to it.
    slow = Slowdown(workers=100, now=0.0)
    for n in range(200):
        slow.completed(0.01 + n * 1e-4, started=n * 1e-4, latency=0.01, in_flight=99)
    for n in range(23):
        slow.completed(0.031 + n * 1e-5, started=0.02, throttled=1, in_flight=99 - n)
    for n in range(76):
        slow.completed(0.04 + n * 1e-4, started=0.03, latency=0.01, in_flight=76 - n)
    slow.due(0.2)
    assert slow.concurrency == 77 and slow.settled_rate is not None
    for n in range(50):
        slow.due(0.3 + n * 0.005)
        slow.completed(0.31 + n * 0.005, started=0.3 + n * 0.005, latency=0.01, in_flight=2)
    assert slow.settled_concurrency is None
    # Once the calls in flight reach it, it is what the run settled on.
    slow.completed(0.6, started=0.59, latency=0.01, in_flight=76)
    assert slow.settled_concurrency == 77


def test_a_rate_limit_whose_first_wave_refusals_come_back_to_no_call_out_learns_no_cap() -> None:
    # A token bucket's burst of 10 in a first wave of 100 calls that leaves
    # over 30 ms: the refusals come back as the calls leave, the accepted ones
    # 10 ms after theirs, and the last refusals find no call out.
    slow = Slowdown(workers=100, now=0.0)
    answers = [(0.01 + n * 1e-4, False) for n in range(10)]
    answers += [(0.0003 * (n + 10), True) for n in range(90)]
    out = 100
    for when, refused in sorted(answers):
        out -= 1
        slow.completed(when, started=when - 0.0003, throttled=int(refused), in_flight=out)
    slow.due(0.2)
    assert slow.concurrency == 100 and slow.settled_concurrency is None


def test_simulated_concurrency_cap_is_held_by_a_cap_not_a_rate() -> None:
    # 20 calls in progress at most, 100 ms each: paced by a rate, the calls in
    # flight wander above 20 (refused) and below (idle): 1.15-1.2x the bound.
    for model in ["concurrency 20, 429", "concurrency 20, 503 no Retry-After"]:
        outcome = simulate(
            MODELS[model](), workers=100, start=1000.37, slow_start=True, ramp_loads=False
        )
        assert outcome.concurrency == 20, outcome
        assert outcome.rejected_share <= 0.02 and outcome.vs_bound <= 1.15, outcome


def threads_limit_after_unloaded_samples(in_flight: int) -> tuple[LatencyLimit, float]:
    """A threads run's latency limit (100 workers) after three samples of 20 calls
    answered in the unloaded 0.1 s, ``in_flight`` out; and the time then."""
    limit = LatencyLimit(workers=100, now=0.0, slow_start=False, ramp_loads=False)
    now = 0.0
    for _ in range(3):
        now += 0.1
        limit.accepted(now, calls=20, latency=0.1, in_flight=in_flight)
    return limit, now


def test_latency_limit_grows_once_per_two_round_trips() -> None:
    # After a cut, the latency is back to unloaded: the limit grows by a
    # quarter, then waits for the answers of the calls that lets start before
    # judging again (growing at every sample took it from 21 to 40 in three,
    # and the queue back to twice the unloaded latency).
    limit, now = threads_limit_after_unloaded_samples(in_flight=20)
    for latency in (0.3, 0.4, 0.5):
        now += 0.1
        limit.accepted(now, calls=20, latency=latency, in_flight=100)
    cut = limit.limit
    assert cut < 30
    limits = []
    while now < 3.0:
        now += 0.1
        limit.accepted(now, calls=20, latency=0.1, in_flight=limit.limit)
        limits.append(limit.limit)
    grew = [b > a for a, b in itertools.pairwise([cut, *limits])]
    assert any(grew) and not any(a and b for a, b in itertools.pairwise(grew)), limits


def test_latency_limit_cut_counts_the_server_rate_over_several_samples() -> None:
    # The answers of a queue come in bunches: samples of 0.1 s hold 4, then
    # 36 (200 per second). Cut at every sample while the queue drains, one
    # sample's rate ratcheted the limit down to the fewest (5 calls for 20
    # servers: 2.4x the capacity bound on the benchmark's overload).
    # (A sample holds SAMPLE_CALLS answers at least: here a bunch of 4 joins the
    # next one, and samples span 0.2 s; the last six span only the queue's answers.)
    # Once cut, the calls in flight come down to the limit, and the server's
    # answers go on at its rate: the cut holds (it is on trial until then), and
    # the later samples count only the queue's answers.
    limit, now = threads_limit_after_unloaded_samples(in_flight=100)
    for n in range(30):
        now += 0.1
        out = 100 if limit.limit == 100 else limit.limit
        limit.accepted(now, calls=4 if n % 2 else 36, latency=0.5, in_flight=out)
    assert limit.limit == math.ceil(200 * 0.1 * 1.2)


def test_threads_open_with_an_eighth_of_a_pool_of_hundreds() -> None:
    # 1,000 threads at 16 calls would take 6 doublings (30 ms) to all run: ~3%
    # of a one-second run that no server limits. An event loop's opening stays
    # at 16 (its thousands of tasks are one first wave).
    assert LatencyLimit(workers=1000, now=0.0, ramp_loads=False).limit == 125
    assert LatencyLimit(workers=100, now=0.0, ramp_loads=False).limit == OPENING
    assert LatencyLimit(workers=1000, now=0.0).limit == OPENING


def test_the_lowest_rate_counts_the_first_one_set() -> None:
    # The first cut creates the rate limit: it is a rate the run went down to, and
    # the Report's "slowed to X calls/s at the lowest" must not skip it.
    slow = Slowdown(workers=100, now=0.0)
    for n in range(200):  # 200 calls accepted in the first 20 ms
        slow.completed(0.02 + n * 1e-4, started=n * 1e-4, latency=0.01, in_flight=50)
    slow.completed(0.0401, started=0.04, throttled=1, retry_after=1.0)
    slow.due(0.2)
    assert slow.limiter is not None
    assert slow.lowest == slow.limiter.per_second == 190.0


def test_calls_seen_to_hold_the_gil_are_no_longer_cut_by_their_latency() -> None:
    # CPU-bound calls on threads take turns on the GIL: the more are out, the later
    # each finishes, as at a server's queue. Once the calls are seen to hold the CPU
    # (the run measures it), the limit that latency set goes, and none comes back.
    slow = Slowdown(workers=32, now=0.0, slow_start=True, ramp_loads=False)
    now = 0.0
    for latency in [0.004] * 10 + [0.1] * 10:  # the GIL's line: 25 times the first calls'
        now += latency
        slow.completed(now, started=now - latency, calls=8, latency=latency, in_flight=32)
    assert slow.concurrency < 32  # read as a queue (a cut on trial: not settled on yet)
    slow.ignore_latency()  # (the run saw its calls keep the GIL busy)
    assert slow.concurrency == 32 and slow.settled_concurrency is None
    for _ in range(20):
        now += 0.1
        slow.completed(now, started=now - 0.1, calls=32, latency=0.1, in_flight=32)
        slow.due(now)
    assert slow.concurrency == 32 and slow.settled_concurrency is None
    assert not slow.watching  # (nothing left to watch each answer for)
