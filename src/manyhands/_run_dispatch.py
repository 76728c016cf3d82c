"""A run's admission and dispatch: what may start now, read and sent to the workers.

Each turn of a driver's loop asks :meth:`RunDispatch._dispatch` what may
start: the retries that are due, then the items read while the window has
room (:meth:`~RunDispatch._admit`; with a rate limit, one at a time as it
allows: :meth:`~RunDispatch._admit_limited`), each batch sent to the backend
(a run on auto may send one back to the backend it moved from). With nothing
that depends on time (no retry, rate limit, timeout, watching slowdown,
outranking or measuring autopilot) it reads no clock. The items the journal
skips go to delivery without running. A mixin of :class:`~._run.Run`, over
the state :class:`~._run_state.RunState` builds: nothing in between on the
path of each batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._batch import Batch
from ._run_outrank import outrank
from ._run_slowdown import follow_slowdown
from ._run_state import RunState
from ._run_timeouts import expire_overdue
from ._slowdown import sooner

if TYPE_CHECKING:
    from ._journal import Journal
    from ._rate import RateLimit

__all__ = ["RunDispatch"]


class RunDispatch(RunState):
    """Admission and dispatch: retries due, items read, batches sent (see ``Run``)."""

    def _dispatch(self) -> float | None:
        """Submit what may start now; return seconds until more may (None: on a completion).

        With a timeout, also the time until the next running batch may expire,
        counted after admission: what was just sent may be the only one running.
        """
        deadlines = self._deadlines
        if not (
            self._retries
            or self._limiter
            or deadlines is not None
            or self._watching
            or self._claiming
            or (self._pilot is not None and self._pilot.choose_at is not None)
        ):
            self._admit()  # the common case: no clock read
            return None
        if self._claiming:
            outrank(self)
        now = self._clock()
        due = self._pilot.look(now) if self._pilot is not None else None
        if deadlines and now >= deadlines.next_check:
            expire_overdue(self, deadlines, now)
        if self._watching:
            due = sooner(due, follow_slowdown(self, now))
            if now < self._slowdown.paused_until:  # everyone waits out a Retry-After
                return sooner(due, deadlines.wait(now)) if deadlines else due
        timers = self._timers
        while (
            timers
            and self._in_backend < self._sizer.max_batches
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
        ):
            wait = timers.wait(now)
            if wait:
                due = sooner(due, wait)
                break
            if self._limiter is not None and (slot := self._slot(self._limiter, now)):
                return sooner(due, slot)
            self._send(timers.pop())
        if self._limiter is None:
            self._admit()
        else:
            due = sooner(due, self._admit_limited(self._limiter))
        if deadlines:
            due = sooner(due, deadlines.wait(self._clock()))
        return due

    def _admit(self) -> None:
        """Read and submit batches while the window has room.

        Stops early to deliver whatever already finished, so a slow iterable
        never holds back finished outcomes. While batches are out, waits for
        room for a whole batch rather than sending the window's last few items
        as a batch of their own.
        """
        completions = self._completions
        sizer = self._sizer
        reader = self._reader
        while (
            not reader.exhausted
            and self._in_backend < sizer.max_batches + self._opening_room
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
        ):
            room = self._window - self._pending_items  # (a whole batch may pass the limit)
            size = sizer.size
            if self._opening_batch and size > self._opening_batch:
                size = self._opening_batch
            if room <= 0 or (self._in_backend and (room < size or not completions.empty())):
                return
            size = min(size, room)
            timed = sizer.timed_reads  # else the input's pace cannot matter
            began = self._clock() if timed else 0.0
            chunk = self._read(size)
            if len(chunk) < size and not reader.exhausted:
                return  # an async input has nothing more for now
            if timed and len(chunk) == size:
                sizer.read(size, self._clock() - began)

    def _admit_limited(self, limiter: RateLimit) -> float | None:
        """Admission one item at a time, each when the rate limit allows it to start."""
        reader = self._reader
        while (
            not reader.exhausted
            and self._in_backend < self._sizer.max_batches
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
            and self._pending_items < self._window
        ):
            if self._in_backend and not self._completions.empty():
                return None
            wait = self._slot(limiter, self._clock())
            if wait:
                return wait
            if not self._read(1):
                # the slot was taken but nothing started: give it back
                limiter.release()
                if not reader.exhausted:
                    return None  # an async input has nothing more for now
        return None

    def _read(self, size: int) -> list[Any]:
        """Read up to ``size`` items and submit them as one batch."""
        if self._journal is not None:
            return self._read_journaled(self._journal, size)
        chunk = self._reader.read(size)
        if chunk:
            batch = Batch(self._next_seq, chunk, self.task)
            self._next_seq += 1
            self._pending_items += len(chunk)
            self._send(batch)
        if self._reader.exhausted and not self._retries:
            self._wind_down()
        return chunk

    def _read_journaled(self, journal: Journal, size: int) -> list[Any]:
        """Submit the next items to run; items the journal skips go to delivery."""
        stats = self.statistics
        reader = self._reader
        while not reader.exhausted and self._pending_items < self._window:
            room = self._window - self._pending_items
            segment = reader.segment(journal, min(size, room), room)
            if segment is None:
                break
            if not segment.items:  # an async input has nothing more for now
                return []
            batch = Batch(self._next_seq, segment.items, self.task)
            batch.keys = segment.keys
            self._next_seq += 1
            self._pending_items += len(segment.items)
            if segment.reasons is None:
                self._send(batch)
                return segment.items
            batch.skipped = segment.reasons
            batch.values = segment.values or []
            batch.failures = segment.failures
            stats.add_skipped(segment.reasons)
            if segment.waiting:
                self._parked.park(batch, segment.waiting)
            else:
                self._ready.append(batch)
        if reader.exhausted and not self._retries:
            self._wind_down()
        return []

    def _wind_down(self) -> None:
        self.task.expecting = False  # (its input is read: what is left is queued or out)
        if self._owns_backend:  # (a shared pool's workers wait for other runs)
            self._backend.wind_down()

    def _slot(self, limiter: RateLimit, now: float) -> float:
        """Take a start slot (0.0) or say how long until one; time spent held back."""
        wait = limiter.wait(now)
        if wait:
            if self._held_since is None:
                self._held_since = now
        elif self._held_since is not None:
            self.statistics.rate_limited += now - self._held_since
            self._held_since = None
        return wait

    def _send(self, batch: Batch) -> None:
        if self._deadlines is not None:
            self._deadlines.sent(batch, self._clock())
        if not self._owns_backend:
            self._sent[id(batch)] = batch
        if self._watching:
            batch.sent = self._clock()
        batch.via = self._via
        pilot = self._pilot
        if pilot is not None and pilot.sample is None:  # (auto: items that must pickle)
            pilot.sample = batch.items[:8]
        self._in_backend += 1
        self._batches_sent += 1
        self._in_flight += len(batch.items)
        self._backend.submit(batch)

    def _send_back_to(self, via: int, batch: Batch) -> None:
        """Send ``batch`` to a backend the run moved from (``via``: which; its threads
        run the items a worker process could not be sent)."""
        batch.via = via
        if self._deadlines is not None:
            self._deadlines.sent(batch, self._clock())
        if not self._owns_backend:
            self._sent[id(batch)] = batch
        self._in_previous += 1
        self._in_flight += len(batch.items)
        self._previous[via].submit(batch)
