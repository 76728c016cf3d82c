"""A fake-clock simulation of a run against one server model, driven by the Slowdown.

The engine is modelled as the contract the Slowdown relies on: calls start only
while fewer than ``min(workers, concurrency)`` are in flight, not before
``paused_until``, and when the rate limit gives a slot; a throttled call's item
is retried after ``max(backoff with full jitter, Retry-After)``; the Slowdown
hears of every completion (when its call started, whether it was throttled,
the Retry-After) and is asked for its timers. Everything is deterministic for
a given ``seed``, and a 2,000-item run simulates in a fraction of a second.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from manyhands._servers import Model, bound_of
from manyhands._slowdown import Slowdown

__all__ = ["Outcome", "simulate"]


@dataclass
class Outcome:
    """What a simulated run did."""

    wall: float
    bound: float
    requests: int
    rejected: int
    failed: int
    latencies: list[float] = field(repr=False)
    rate: float | None
    concurrency: int | None
    pauses: int

    @property
    def rejected_share(self) -> float:
        return self.rejected / max(self.requests, 1)

    @property
    def vs_bound(self) -> float:
        return self.wall / self.bound

    def p95(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)] if ordered else 0.0


def simulate(
    model: Model,
    items: int = 2000,
    workers: int = 100,
    *,
    seed: int = 1,
    start: float = 1000.0,
    retries: int = 8,
    backoff: float = 0.1,
    network: float = 0.0005,
    jitter: float = 0.2,
    horizon: float = 120.0,
    trace: list[tuple[float, str, float | None, int, float]] | None = None,
    slow_start: bool = False,
    ramp_loads: bool = True,
    follow_latency: bool = True,
) -> Outcome:
    """Run ``items`` calls through a Slowdown against ``model``; ``network`` is the RTT."""
    rng = random.Random(seed)
    slowdown = Slowdown(
        workers, now=start, slow_start=slow_start, ramp_loads=ramp_loads, random=rng.random
    )
    if not follow_latency:
        slowdown.ignore_latency()  # (the control: what the calls give with no limit at all)
    now = start
    fresh = iter(range(items))
    ready: deque[tuple[int, int]] = deque()  # (item, attempt) due for a retry
    timers: list[tuple[float, int, int]] = []  # (due, item, attempt)
    running: list[tuple[float, int, int, int, float, bool, float | None]] = []
    serial = 0
    in_flight = done = failed = requests = rejected = 0
    latencies: list[float] = []
    exhausted = False

    def next_item() -> tuple[int, int] | None:
        nonlocal exhausted
        if ready:
            return ready.popleft()
        if exhausted:
            return None
        item = next(fresh, None)
        if item is None:
            exhausted = True
            slowdown.ending()
            return None
        return item, 1

    while done + failed < items:
        if now - start > horizon:
            raise AssertionError(f"not finished after {horizon} simulated seconds")
        while timers and timers[0][0] <= now:
            _, item, attempt = heapq.heappop(timers)
            ready.append((item, attempt))
        wake = math.inf
        # Admission: what the engine may start now.
        while in_flight < min(workers, slowdown.concurrency) and now >= slowdown.paused_until:
            if not ready and exhausted:
                break
            limiter = slowdown.limiter
            if limiter is not None:
                wait = limiter.wait(now)
                if wait:
                    wake = min(wake, now + wait)
                    break
            taken = next_item()
            if taken is None:
                if limiter is not None:
                    limiter.release()
                break
            answer = model.request(now + network / 2)
            requests += 1
            throttled = not answer.accepted
            rejected += throttled
            # The round trip varies by ``jitter`` of it, but an answer never comes
            # back before the server is done with its call.
            spread = 1.0 + jitter * (rng.random() - 0.5)
            end = now + max((network + answer.latency) * spread, network / 2 + answer.latency)
            serial += 1
            if trace is not None:
                rate = None if slowdown.limiter is None else slowdown.limiter.per_second
                trace.append((now - start, "R" if throttled else "A", rate, in_flight, 0.0))
            heapq.heappush(running, (end, serial, *taken, now, throttled, answer.retry_after))
            in_flight += 1
        if now < slowdown.paused_until:
            wake = min(wake, slowdown.paused_until)
        due = slowdown.due(now)
        if due is not None:
            wake = min(wake, now + max(due, 1e-6))
        if running:
            wake = min(wake, running[0][0])
        if timers:
            wake = min(wake, timers[0][0])
        if wake == math.inf:
            raise AssertionError("the simulated run would wait forever")
        now = max(wake, now)
        while running and running[0][0] <= now:
            end, _, item, attempt, began, throttled, retry_after = heapq.heappop(running)
            in_flight -= 1
            slowdown.completed(
                end,
                began,
                throttled=int(throttled),
                latency=end - began,
                retry_after=retry_after,
                in_flight=in_flight,
            )
            if not throttled:
                latencies.append(end - began)
                done += 1
            elif attempt > retries:
                failed += 1
            else:
                delay = rng.random() * min(30.0, backoff * 2 ** (attempt - 1))
                if retry_after is not None:
                    delay = max(delay, retry_after)
                heapq.heappush(timers, (end + delay, item, attempt + 1))
    wall = now - start
    return Outcome(
        wall=wall,
        bound=bound_of(model, items),
        requests=requests,
        rejected=rejected,
        failed=failed,
        latencies=latencies,
        rate=slowdown.settled_rate,
        concurrency=slowdown.settled_concurrency,
        pauses=slowdown.pauses,
    )
