"""What a batch's errors become: Failures, retries on their timers, and throttling.

A :class:`~._run.Run` hands every batch that came back with errors to its
:class:`Settlement`, which decides item by item::

    error ──▶ Failure ──▶ retryable, attempts left? ──yes──▶ a retry Batch on RetryTimers
                 │                                   no ───▶ final (the batch's failures)
                 └──▶ asked to slow down (Retry-After, throttle_on)? ──▶ noted for the slowdown

Once a stop rule fired, no retry is made: an item that would have been
retried (its failure now, or its retry waiting on the timers) is delivered
as not run (:func:`retry_stopped`), so that the journal leaves it for a
resume, as it does after Ctrl-C.

It owns no thread and reads time only through ``clock``; the run asks it for
the throttling it noted (:meth:`Settlement.take_throttled`) when it tells the
slowdown about the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import FrameType

from ._batch import EXECUTE_CODE, Batch, Task
from ._exceptions import Timeout, WorkerCrashed, not_called
from ._options import Options
from ._outcome import SUSPENDABLE, Failure, qualified_name, safe_repr
from ._retry import MAX_RETRY_AFTER, Retry, matches, matches_described, retry_after_of
from ._stats import RunStatistics
from ._timers import RetryTimers

__all__ = ["Settlement", "retry_stopped", "timed_out"]


class Settlement:
    """Settles the errors of one run's batches (see the module docstring).

    Args:
        options: the run's options (its retry policy and ``throttle_on``).
        statistics: the run's counts (retried items; a stop reason ends retrying).
        timers: where retries wait for their time.
        task: the run's task (a retry is a batch of it).
        clock: the run's clock.
    """

    def __init__(
        self,
        options: Options,
        statistics: RunStatistics,
        timers: RetryTimers,
        task: Task,
        clock: Callable[[], float],
    ) -> None:
        self._retry = options.retry_policy
        self._throttle_on = options.throttle_on
        self._longest = self._retry.max_retry_after if self._retry is not None else MAX_RETRY_AFTER
        self._statistics = statistics
        self._timers = timers
        self._task = task
        self._clock = clock
        #: Calls of the batch being settled that asked to slow down.
        self.throttled = 0
        self._asked: float | None = None  # the longest Retry-After among them

    def settle(self, batch: Batch) -> tuple[set[int], list[Failure], int]:
        """Turn ``batch``'s errors into Failures; schedule the retryable ones.

        Returns (the indexes retried, the final failures, how many of the errors
        made no call). Sets ``batch.failures`` and clears ``batch.errors``.
        """
        return self._settle(batch, late=False)

    def judge_late(self, batch: Batch) -> set[int]:
        """Settle a batch that came back after the run stopped (the grace period).

        Nothing is scheduled, throttled or counted: returns the indexes whose
        outcome is not final (a failure that would have been retried, an error
        that made no call: their items run again on a resume). Sets
        ``batch.failures`` to the final ones and clears ``batch.errors``.
        """
        return self._settle(batch, late=True)[0]

    def _settle(self, batch: Batch, *, late: bool) -> tuple[set[int], list[Failure], int]:
        assert batch.errors is not None
        stats = self._statistics
        retry = self._retry
        retried: set[int] = set()
        final: dict[int, Failure] = {}
        uncalled = 0
        released = None
        frames = batch.frames or {}  # (each call's own traceback, as a worker thread caught it)
        for index, error in batch.errors.items():
            if isinstance(error, Failure):  # (asyncio's, or described in another process)
                failure = error
            else:
                trace = frames.get(index, True)
                failure = Failure.from_exception(batch.items[index], error, batch.attempt, trace)
            loop = failure.leave_out_caller(EXECUTE_CODE)  # the user sees only their code
            if loop is not None and loop is not released:
                _release(loop)
                released = loop
            failure.history = batch.history
            exception = failure.exception
            asked, throttled, retryable = self._judged(failure, retry)
            never_called = isinstance(exception, (WorkerCrashed, Timeout)) and not exception.ran
            if never_called:  # (unsent)
                uncalled += 1
                retryable = False
                failure = self._not_called(batch, failure, late)
            if asked is not None and asked > self._longest:  # not obeyed: the item fails now
                if not late:
                    stats.asked_too_long(asked, self._longest)
                # (nor does the run slow down for it: its rate would be no server's)
                asked, retryable, throttled = None, False, False
            if late:
                if never_called or (
                    retryable and retry is not None and batch.attempt <= retry.retries
                ):
                    retried.add(index)
                else:
                    final[index] = failure
                continue
            if throttled:
                self._throttle(asked)
            if retryable and retry is not None and batch.attempt <= retry.retries:
                if stats.stop_reason is None:
                    delay = retry.delay(batch.attempt, exception, failure.retry_after)
                    self._schedule_retry(batch, index, failure, delay)
                    retried.add(index)
                    continue
                failure = retry_stopped(failure)  # (a stop rule fired: a resume runs it)
            final[index] = failure
        batch.errors = batch.frames = None
        batch.failures = final or None
        return retried, list(final.values()), uncalled

    def _judged(self, failure: Failure, retry: Retry | None) -> tuple[float | None, bool, bool]:
        """What ``failure``'s error asks: (the Retry-After, to slow down, to be retried)."""
        exception = failure.exception
        if exception is None:  # from another process: described, not an object
            asked = failure.retry_after
            throttled = asked is not None or (
                self._throttle_on is not None and matches_described(self._throttle_on, failure)
            )
            self._unapplied(retry, failure)
            return asked, throttled, retry is not None and retry.retries_failure(failure)
        asked = retry_after_of(exception)
        throttle_on = self._throttle_on
        throttled = asked is not None or (
            throttle_on is not None
            and matches(throttle_on, exception, self._broken("throttle_on", throttle_on, failure))
        )
        retryable = retry is not None and retry.retries_error(
            exception, self._broken("retry", retry.on, failure)
        )
        return asked, throttled, retryable

    def _broken(
        self, option: str, on: object, failure: Failure
    ) -> Callable[[Exception], None] | None:
        """What hears that ``option``'s predicate raised on ``failure``'s error (a note);
        None when ``on`` is no predicate (exception types cannot raise)."""
        if not _is_predicate(on):
            return None

        def broken(raised: Exception) -> None:
            self._statistics.predicate_raised(option, on, failure, raised)

        return broken

    def _unapplied(self, retry: Retry | None, failure: Failure) -> None:
        """A predicate cannot judge an error described in another process: a note says so."""
        stats = self._statistics
        if (
            retry is not None
            and _is_predicate(retry.on)
            and "builtins.Exception" in (failure.lineage)
        ):
            stats.predicate_unapplied("retry", retry.on, failure)
        if _is_predicate(self._throttle_on) and failure.retry_after is None:
            stats.predicate_unapplied("throttle_on", self._throttle_on, failure)

    def take_throttled(self) -> tuple[int, float | None]:
        """The calls that asked to slow down since the last call, and the longest Retry-After."""
        throttled, self.throttled = self.throttled, 0
        asked, self._asked = self._asked, None
        return throttled, asked

    def give_up(self) -> Iterator[Batch]:
        """A stop rule fired: the items waiting to be retried are not run
        (:func:`retry_stopped`): a resume runs them.

        Yields each as a settled batch of one, counted, for delivery.
        """
        stats = self._statistics
        for batch in self._timers.drain():
            assert batch.last_failure is not None
            final = retry_stopped(batch.last_failure)
            batch.failures = {0: final}
            batch.attempt -= 1  # the planned attempt never ran
            batch.values = [None]
            stats.add_batch(1, 0, 0.0, [final])
            stats.retrying -= 1
            if batch.attempt == 1:  # (never tried more than once after all)
                stats.retried -= 1
            yield batch

    def _not_called(self, batch: Batch, failure: Failure, late: bool) -> Failure:
        """The Failure of an item whose call was not made (that attempt made no call)."""
        if batch.last_failure is None or late:
            failure.attempts -= 1
            return failure
        last = self._retry_not_made(batch)
        if getattr(failure.exception, "stopped", False):  # (a stop rule halted it)
            return retry_stopped(last)
        return last

    def _retry_not_made(self, batch: Batch) -> Failure:
        """A retry no worker began: its item was called, and ends with its last failure
        (every worker held past ``timeout=``, the process backend stopped), or not run
        when a stop rule halted it (:meth:`_not_called` makes that :func:`retry_stopped`)."""
        assert batch.last_failure is not None
        batch.attempt -= 1
        if batch.attempt == 1:  # (never tried more than once after all)
            self._statistics.retried -= 1
        return batch.last_failure

    def _throttle(self, asked: float | None) -> None:
        """A call asked to slow down (Retry-After ``asked``, if it said): noted for the slowdown."""
        self.throttled += 1
        if asked is not None and (self._asked is None or asked > self._asked):
            self._asked = asked

    def _schedule_retry(self, batch: Batch, index: int, failure: Failure, delay: float) -> None:
        again = Batch(-1, [batch.items[index]], self._task, batch.attempt + 1)
        again.parent = batch.parent or (batch, index)
        again.history = (*batch.history, failure.error_type)
        again.last_failure = failure
        if batch.keys is not None:
            again.keys = [batch.keys[index]]
        if batch.attempt == 1:  # the item starts waiting for retries (once)
            self._statistics.retried += 1
            self._statistics.retrying += 1
        self._timers.add(self._clock() + delay, again)


def retry_stopped(last: Failure) -> Failure:
    """The outcome of an item a stop rule left without the retry it had left.

    Not final: not run (the run stopped before retrying it), so that the
    journal does not record it and a resume runs it again, as after Ctrl-C.
    Its traceback is its last failure's, followed by why it went no further;
    ``history`` names the errors of its attempts (so ``not_run_cause`` tells
    it apart from an item never called).

    >>> last = Failure(7, "builtins.ConnectionError", "reset", attempts=2)
    >>> stopped = retry_stopped(last)
    >>> stopped.error_type, stopped.attempts, stopped.exception.ran
    ('manyhands.WorkerCrashed', 2, False)
    >>> print(stopped.message)
    not called: the run stopped before retrying it (it failed 2 times, the last with \
builtins.ConnectionError: 'reset')
    """
    times = "once, with" if last.attempts == 1 else f"{last.attempts} times, the last with"
    error = not_called(
        f"the run stopped before retrying it (it failed {times} "
        f"{last.error_type}: {safe_repr(last.message, 200)})"
    )
    error_type, message = qualified_name(WorkerCrashed), str(error)
    trace = (
        f"{last.traceback.rstrip()}\n\nA stop rule ended the run before its retry:\n\n"
        f"{error_type}: {message}\n"
    )
    failure = Failure(last.item, error_type, message, trace, last.attempts, error)
    failure.history = (*last.history, last.error_type)
    return failure


def _is_predicate(on: object) -> bool:
    return on is not None and not isinstance(on, (type, tuple))


def timed_out(errors: dict[int, BaseException | Failure]) -> bool:
    """Whether a call of the batch was cut off at ``timeout=`` (here or in a worker process)."""
    return any(
        isinstance(error, Timeout)
        or (isinstance(error, Failure) and error.error_type == "manyhands.Timeout")
        for error in errors.values()
    )


def _release(frame: FrameType | None) -> None:
    """Clear the frame of a worker's loop that returned, and the finished frames that called it.

    The user's frames in a Failure's traceback link back to the loop's frame
    (``f_back``), and it to its callers, whose variables hold the batch (the
    measured loop's, an inline backend's, the run's own calls): cleared, a
    Failure kept or delivered does not keep its batch alive. ``frame.clear()``
    leaves ``f_back``, so each caller is cleared in turn, until one that still
    runs (it refuses: a worker's own loop, or the run's) or a generator's or a
    coroutine's (clearing one that is suspended would close it).
    """
    while frame is not None and not frame.f_code.co_flags & SUSPENDABLE:
        try:
            frame.clear()
        except RuntimeError:  # still executing: left as it is
            return
        frame = frame.f_back
