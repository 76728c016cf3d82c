"""The engine obeys the slowdown: end to end against the loopback API, and the Report."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time

import manyhands
from manyhands._demo_api import fetch, serve
from manyhands._latency_limit import OPENING
from manyhands._servers import SlidingWindow, TokenBucket
from manyhands._slowdown import PROVEN

from .simulated import Simulation


def test_a_window_that_counts_refusals_is_spent_once_not_hammered() -> None:
    """100 requests in any second, refusals counted: a client that keeps asking gets nothing."""
    with serve(SlidingWindow(100, count_rejected=True)) as (base, counters):
        urls = [f"{base}/items/{n}" for n in range(300)]
        report = manyhands.run(
            fetch, urls, workers=20, retry=manyhands.Retry(8, backoff=0.05), progress=False
        )
    assert report.succeeded == 300, report
    assert report.attempts == counters.requests
    # The opening's 20 calls in flight spend the window; then everyone waits
    # it out and the rest is paced under it. Hammering would refuse most calls.
    assert counters.throttled < 0.25 * counters.requests, counters
    assert report.throttle_events == counters.throttled
    assert report.settled_rate is not None and 1 <= report.settled_rate <= 100
    assert "settled on rate=" in str(report)


def test_a_run_nobody_throttles_settles_on_nothing() -> None:
    report = manyhands.run(lambda x: x, range(1000), workers=8, progress=False)
    assert report.settled_rate is None and report.settled_workers is None
    assert report.throttle_events == 0 and "settled" not in str(report)


def test_retry_after_slows_every_worker_down_and_the_report_says_where_it_settled() -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if len(calls) <= 3:
            raise manyhands.RetryAfter(0.05)
        return x

    report = manyhands.run(
        fn, range(200), workers=4, retry=manyhands.Retry(3, backoff=0), progress=False
    )
    assert report.succeeded == 200 and report.throttle_events == 3
    assert report.settled_rate is not None  # a rate limit was set, and reported


def test_while_the_slowdown_watches_every_worker_runs_a_call() -> None:
    # The limit on calls in flight counts calls, not items: on threads a batch's items
    # run one after another, so 50 items in batches of 9 are 6 calls at once. A run of
    # short calls (batched to spare the GIL) must still keep every worker busy while the
    # slowdown watches its first second.
    lock = threading.Lock()
    running = [0]
    seen: list[int] = []

    def call(_: int) -> None:
        with lock:
            running[0] += 1
            seen.append(running[0])
        time.sleep(0.001)
        with lock:
            running[0] -= 1

    report = manyhands.run(call, range(5000), workers=50)
    assert report.succeeded == 5000
    assert sum(seen) / len(seen) > 25  # about 45 here; 6 to 9 when items were counted


def test_asyncio_opens_slowly_so_a_server_is_not_sent_a_first_wave_of_thousands() -> None:
    # A server that takes 50 calls at a time and refuses the rest at once. On
    # asyncio every task is a call at once: 1,000 tasks used to send 1,000 calls
    # before the first answer, and 950 were refused. The opening starts with a
    # few and doubles them while no refusal came back.
    busy = [0]
    answered = {"ok": 0, "refused": 0}

    async def call(x: int) -> int:
        if busy[0] >= 50:
            answered["refused"] += 1
            raise manyhands.RetryAfter(0.02)
        busy[0] += 1
        try:
            await asyncio.sleep(0.02)
        finally:
            busy[0] -= 1
        answered["ok"] += 1
        return x

    report = manyhands.run(
        call, range(1000), workers=1000, retry=manyhands.Retry(20, backoff=0.01), progress=False
    )
    assert report.succeeded == 1000, report
    assert answered["refused"] < 0.25 * (answered["ok"] + answered["refused"]), answered


def test_threads_queue_a_batch_ahead_once_the_first_round_trips_met_no_limit() -> None:
    # Fake clock, 2 workers, 10 ms calls. A server's limit shows in the first round
    # trips of a run that exceeds it; after PROVEN of them without a refusal a batch
    # per worker waits ahead, so a worker that finishes a call starts the next
    # without waiting for the run's thread (50 threads on 1 ms calls: 10-25% of the
    # wall). Before, nothing waited ahead for the whole first second.
    calls = 4 * PROVEN  # 2 workers: 2 * PROVEN round trips, well inside a second
    quiet = Simulation(workers=2)
    report = quiet.run(lambda x: x, range(calls), duration=lambda item: 0.01)
    assert report.succeeded == calls and quiet.clock.now < 1.0
    assert quiet.most_out == 4  # a batch per worker running, one more each waiting

    # A refusal in the first round trips: nothing ever waits ahead.
    refused: list[int] = []

    def first_refused(x: int) -> int:
        if not refused:
            refused.append(x)
            raise manyhands.RetryAfter(0.01)
        return x

    limited = Simulation(workers=2)
    report = limited.run(
        first_refused, range(calls), duration=lambda item: 0.01, retry=manyhands.Retry(2)
    )
    assert report.succeeded == calls and report.throttle_events == 1
    assert limited.most_out == 2


def test_threads_open_with_a_few_calls_so_a_burst_limit_refuses_few() -> None:
    # Fake clock, 100 threads, 5 ms calls against a token bucket of 200/s with
    # bursts of 10. The first wave of 100 calls before any answer was refused
    # 90 times; the opening sends 16 and doubles them every 5 ms until a
    # refusal comes back, and the rate takes it from there.
    sim = Simulation(workers=100, name="threads")
    bucket = TokenBucket(200, burst=10)

    def call(x: int) -> int:
        answer = bucket.request(sim.clock.now)
        if not answer.accepted:
            raise manyhands.RetryAfter(answer.retry_after or 1.0)
        return x

    report = sim.run(
        call, range(400), duration=lambda item: 0.005, retry=manyhands.Retry(8), progress=False
    )
    assert report.succeeded == 400
    first_wave = [item for began, item in sim.starts if began == 0.0]
    assert len(first_wave) == OPENING, len(first_wave)  # (100 without the opening)
    assert report.throttle_events <= 40, report.throttle_events  # (90 or more without it)


def test_calls_cut_off_at_their_timeout_are_no_sample_of_the_latency() -> None:
    # Every 25th call hangs (it times out at each of its attempts), the rest are
    # quick; nothing refuses and nothing slows with load. A timed-out call's time
    # is the timeout's: taken for a latency, it cut 100 calls in flight to 1.
    async def call(n: int) -> int:
        await asyncio.sleep(5 if n % 25 == 0 else 0.002)
        return n

    report = manyhands.run(call, range(500), workers=100, timeout=0.2, retry=2, progress=False)
    assert (report.succeeded, report.failed) == (480, 20)
    # (None here; a very busy machine might slow the quick calls a little)
    assert report.settled_workers is None or report.settled_workers >= 25, report


def _checksum(page: int) -> int:
    return sum(i * i for i in range(50_000 + page)) % 1_000_003  # ~3-4 ms, all CPU


def test_cpu_bound_calls_on_threads_are_not_advised_as_a_slow_server() -> None:
    """Calls taking turns on the GIL slow down as the calls in flight grow, as at a
    server's queue; but no server was met, and fewer calls would not go faster."""
    report = manyhands.run(_checksum, range(200), progress=False)
    assert report.succeeded == 200 and report.throttle_events == 0
    text = str(report)
    cpu_note = any("CPU" in note for note in report.notes)
    assert not (cpu_note and "settled on" in text), text  # the two would contradict
    assert report.settled_workers is None and report.settled_rate is None, text


def test_calls_whose_latency_varies_by_itself_keep_every_worker() -> None:
    """An API's latency varies (here its p95 is 2.3 times its median); nothing queues.

    The slowest samples of the latency stood far above the fastest, as at a
    queue: the run cut its calls in flight, cut after cut, to one (a run of
    2,000 such calls on 100 threads took 207 s instead of 2.3 s). A cut now
    holds only if the answers keep coming at their rate with fewer calls out.
    Fake clock: the real engine, each call taking its own simulated latency.
    """
    rng = random.Random(5)
    latency = [0.1 * math.exp(0.5 * rng.gauss(0.0, 1.0)) for _ in range(3000)]
    sim = Simulation(workers=100, name="threads")
    report = sim.run(lambda x: x, range(3000), duration=lambda item: latency[item], progress=False)
    assert report.succeeded == 3000
    # A greedy schedule of these calls on 100 workers ends within this (Graham's bound).
    assert sim.clock.now <= 1.1 * (sum(latency) / 100 + max(latency))
    assert report.settled_workers is None, report
