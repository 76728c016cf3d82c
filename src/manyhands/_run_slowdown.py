"""How a run obeys the adaptive slowdown (:mod:`._slowdown`): its limit, pause and rate.

While the slowdown watches, every batch's answers go to it (:func:`tell_slowdown`),
and the run's dispatch first follows its timed changes (:func:`follow_slowdown`):
the opening's growth, a pause's end (a Retry-After), a cap or a rate raised again.
:func:`obey_slowdown` turns what it says into the run's own figures, which
admission reads on the hot path as plain attributes of the :class:`~._run.Run`:
the most calls (or batches) in flight, whether batches may queue ahead of the
workers, the opening's small batches, and the rate limit once one is set.
Once the slowdown goes quiet, it hears only of throttled calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._slowdown import OPENING_SHARE, sooner

if TYPE_CHECKING:
    from ._batch import Batch
    from ._run_state import RunState

__all__ = ["follow_slowdown", "obey_slowdown", "tell_slowdown"]


def tell_slowdown(run: RunState, batch: Batch, timed_out: bool = False) -> None:
    """Report a batch's answers to the slowdown; what it says is obeyed before more start."""
    now = run._clock()
    throttled, asked = run._settlement.take_throttled()
    # A call cut off at timeout= (a hung one) is no sample of the server's
    # latency, and its batch's time is the timeout's: not a sample either.
    # (Taken for one, 1% of calls hanging cut 200 calls in flight to 1.)
    calls = throttled if timed_out else len(batch.items)
    stats = run.statistics
    stats.throttle_events += throttled
    run._slowdown.completed(
        now,
        started=batch.sent or now - batch.elapsed,
        calls=calls,
        throttled=throttled,
        latency=batch.elapsed / calls if calls else 0.0,
        retry_after=asked,
        in_flight=run._in_flight if run._items_are_calls else run._in_backend,
    )
    stats.slowest_rate = run._slowdown.lowest
    if not run._watching:  # (watching: the next _dispatch obeys, before it admits)
        obey_slowdown(run)


def follow_slowdown(run: RunState, now: float) -> float | None:
    """The slowdown's timed changes; seconds until the next one or the pause's end."""
    slowdown = run._slowdown
    if run._reader.exhausted:
        slowdown.ending()
    due = slowdown.due(now, _not_started(run) if slowdown.opening else 0)
    obey_slowdown(run)
    if now < slowdown.paused_until:
        return sooner(due, slowdown.paused_until - now)
    return due


def _not_started(run: RunState) -> int:
    """Batches sent whose calls a private event loop has not all started (its backlog)."""
    taken = getattr(run._backend, "taken", None)
    return 0 if taken is None or not run._owns_backend else run._batches_sent - taken


def obey_slowdown(run: RunState) -> None:
    """Set the run's limits from the slowdown's: calls in flight, queueing ahead, the rate."""
    slowdown = run._slowdown
    if slowdown.limiter is not run._limiter:  # the first limit on the rate
        run._limiter = slowdown.limiter
        run._sizer.one_by_one()  # starts paced: no queue, batches of one
    watching = slowdown.watching  # (else quiet: it hears only of throttled calls)
    if not watching:
        run._most_in_flight = run._window
    elif slowdown.unlimited and (
        run._items_are_calls
        or run._backend.name in ("processes", "dask")
        or slowdown.proven
        or run._outranking
    ):
        # asyncio, while nothing has limited the run: items queued ahead of the
        # tasks, as many as run, so a task that finishes a call starts the next
        # at once instead of waiting a round trip through this loop for its
        # batch (10-15% slower at 10,000 x 0.1 s). The first refusal ends it.
        # Processes too: a batch per worker is sent ahead and one more waits in
        # the backend (its lanes, for a Pool), so a worker that finishes one starts
        # the next at once and the dispatcher sends it another without a round
        # trip through this thread (which cost a 2-worker run of 40 x 10 ms calls
        # 5-10%); CPU-bound calls rarely meet a server.
        # Dask too: a cluster's thread that waits for its next task through the
        # driver and the scheduler idles (20,000 x 10 ms on 100 threads: 10-15 of
        # ~235 thread-seconds between batches; ~1 with a second batch queued).
        # Threads once PROVEN round trips came back without a refusal (a server
        # limit is met in the first few: 100 threads spend 200 a second in two).
        # A Pool's run that outranks work waiting for the workers, at once (_outrank).
        sizer = run._sizer
        run._most_in_flight = min(sizer.ahead * slowdown.concurrency + sizer.deeper, run._window)
    else:
        run._most_in_flight = slowdown.concurrency
    if slowdown.opening and run._items_are_calls:
        # The opening (asyncio): a batch is at most an eighth of the calls allowed,
        # so the first answers come back, and are heard, before the next doubling.
        run._opening_batch = max(1, slowdown.concurrency // OPENING_SHARE)
        run._opening_room = 8 * OPENING_SHARE
    else:
        run._opening_batch = 0
    pilot = run._pilot
    if pilot is not None and pilot.cap is not None:  # (auto, while it measures)
        run._most_in_flight = min(run._most_in_flight, pilot.cap)
    queueing = not watching or run._most_in_flight > slowdown.concurrency
    if queueing != run._queueing:
        run._queueing = queueing
        run._sizer.hold(not queueing)
    run._watching = watching
