"""How a run stops and ends, whichever driver ran it (``Run.batches``, ``Run.abatches``).

::

    mark_finished ──▶ stop_backend / astop_backend ──────────────▶ end_run
    (the figures as   (a private pool shut down; a shared pool's    (the journal closed with
     of now; what the  queued batches dropped, the running ones     what finished in the grace
     consumer will     waited for through the grace period, then    period: "late" batches, kept
     not get let go)   given up: their workers freed)               if their outcomes can be)

A run left early (Ctrl-C, ``break``, an exception) still has calls out.
What finishes within the grace period comes back as *late* batches: caught
off the completions as the run was stopped, back while it waited, or still in
the queue. No consumer saw their outcomes: the journal keeps them if their
values are kept (``run``; ``store_results``) or once ``on_late`` wrote them
(the command's lines), and the Report counts what it kept; the rest run again
next time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

from ._exceptions import JournalError, ended_by, ended_early
from ._outcome import Failure, Outcome
from ._run_undelivered import take_back_undelivered
from ._signal_waits import WAIT_SLICE

try:  # (what `queue` re-exports; importing `queue` itself costs 0.3 ms of `import manyhands`)
    from _queue import Empty
except ImportError:  # pragma: no cover (Pythons without the C module)
    from queue import Empty

if TYPE_CHECKING:
    from ._aio import LoopQueue
    from ._batch import Batch
    from ._journal import Journal
    from ._progress import Progress
    from ._run import Completions, Run

__all__ = ["astop_backend", "end_run", "mark_finished", "stop_backend"]

ENDED_CALLS_WAIT = 5.0  # seconds the calls ended by Run.end_calls may take to return


def mark_finished(run: Run, completed: bool) -> None:
    """The run's end: its figures as of now (``completed``: every outcome was delivered)."""
    run.task.expecting = False
    if not completed:
        take_back_undelivered(run, run.statistics)
        run.statistics.retrying = 0
        run._let_go()
    run._finished = run._clock()
    if run._pilot is not None:
        run._pilot.ended()
    run.statistics.settled_rate = run._slowdown.settled_rate
    run.statistics.settled_concurrency = run._slowdown.settled_concurrency
    if run._held_since is not None:
        run.statistics.rate_limited += run._finished - run._held_since
    run._reader.stop()


def stop_backend(run: Run) -> None:
    """Stop this run's calls: queued ones dropped, running ones get the grace period."""
    backend = run._backend
    if run._owns_backend:  # a private pool: it goes with the run
        try:
            counted = run.task.abandoned
            busy = backend.shutdown(run._options.grace)
            if backend.name == "threads":  # (still in a call after the grace: left to it)
                if busy and run.end_calls is not None:
                    busy = _end_calls(run, run.end_calls)
                run.task.abandoned += max(busy - (run.task.abandoned - counted), 0)
        finally:
            for previous in run._previous:  # (auto: what it moved from)
                previous.shutdown(run._options.grace)
            if run._pilot is not None:
                run._pilot.stop()
        return
    _drop_queued(run)
    deadline = run._clock() + (0.0 if backend.concurrent_items else run._options.grace)
    completions = cast("Completions", run._completions)  # (the sync driver's)
    try:
        while (run._in_backend or run._in_previous) and (wait := deadline - run._clock()) > 0:
            with contextlib.suppress(Empty):
                batch = completions.get(timeout=min(wait, WAIT_SLICE))
                if batch is not None:
                    _came_back(run, batch)
    finally:  # (a second Ctrl-C ends the wait at once)
        _give_up_calls(run)


def _end_calls(run: Run, end_calls: Callable[[], None]) -> int:
    """End the calls still running after the grace period; how many threads are still in one.

    What comes back is kept as late, but for a batch with a call that the
    ending stopped (its error says ``stopped_by_run``): its items run again
    next time. (A call that ended well in the grace period may come back only
    now: a command's output still draining.)
    """
    completions = run._completions
    end_calls()
    busy = run._backend.shutdown(ENDED_CALLS_WAIT)
    while not completions.empty():
        finished = completions.get_nowait()
        if finished is not None and not _stopped_by_run(finished):
            run._late.append(finished)
    return busy


def _stopped_by_run(batch: Batch) -> bool:
    """Whether a call of ``batch`` failed because the run ended it (``Run.end_calls``)."""
    errors = batch.errors or {}
    return any(getattr(error, "stopped_by_run", False) for error in errors.values())


async def astop_backend(run: Run, queue: LoopQueue[Batch]) -> None:
    """:func:`stop_backend` on the running event loop (``amap``)."""
    backend = run._backend
    if run._owns_backend:
        if getattr(backend, "runs_on_caller_loop", False):
            await backend.ashutdown(run._options.grace)  # type: ignore[attr-defined]
        else:
            backend.shutdown(run._options.grace)
        return
    _drop_queued(run)
    deadline = run._clock() + (0.0 if backend.concurrent_items else run._options.grace)
    try:
        while (run._in_backend or run._in_previous) and (wait := deadline - run._clock()) > 0:
            batch = await queue.get(wait)
            if batch is not None:
                _came_back(run, batch)
    finally:
        _give_up_calls(run)


def _drop_queued(run: Run) -> None:
    """The batches no worker began are dropped (a shared pool's lanes).

    Those sent ahead to a worker are not begun either, where the backend can
    tell its workers so (``cancel_sent``): they come back as never called.
    """
    for backend in (run._backend, *run._previous):
        for batch in backend.cancel(run.task):
            run._sent.pop(id(batch), None)
            _count_back(run, batch)
        cancel_sent = getattr(backend, "cancel_sent", None)  # (processes)
        if cancel_sent is not None:
            cancel_sent(run.task)


def _count_back(run: Run, batch: Batch) -> None:
    """A batch is no longer out (``Run._complete`` does the same inline)."""
    if batch.piece:  # (its batch's other items still run: the batch is still out)
        return
    if batch.via == run._via:
        run._in_backend -= 1
    else:  # (it went out before the run moved to another backend)
        run._in_previous -= 1


def _came_back(run: Run, batch: Batch) -> None:
    """A batch came back while the run was stopping (kept for the journal)."""
    _count_back(run, batch)
    run._sent.pop(id(batch), None)
    run._late.append(batch)


def _give_up_calls(run: Run) -> None:
    """The calls still running after the grace period: the pool frees their workers."""
    for batch in list(run._sent.values()):
        run._backend_of(batch).expire(batch)
    run._sent.clear()
    for backend in (run._backend, *run._previous):
        backend.detach(run.task)
    run.statistics.abandoned = run.task.abandoned


def end_run(run: Run, completed: bool, progress: Progress | None) -> None:
    """Close the journal (keeping what finished in the grace period), the progress line."""
    # The run ends once its calls stopped: a Report after Ctrl-C or `break`
    # includes the grace period the caller waited through.
    run._finished = run._clock()
    run.statistics.abandoned = run.task.abandoned  # (asyncio counts them as it stops)
    if run._pilot is not None:
        run._pilot.end_short_turns()
    try:
        if run._journal is not None:
            _close_journal(run, run._journal, completed)
        elif not completed and run.on_late is not None:
            for _ in _handed_late(run):  # (no journal: the lines are all that is kept)
                pass
    finally:
        if not completed:  # (what came back after the run stopped delivering: not kept)
            run._late = []
            run._caught.clear()
            for _ in _late_batches(run):
                pass
        try:
            if progress is not None:
                progress.close()
        finally:
            if run._hooks is not None:
                run._hooks.run_ends()


def _close_journal(run: Run, journal: Journal, completed: bool) -> None:
    stats = run.statistics
    if completed:
        ended = f"stopped: {stats.stop_reason}" if stats.stop_reason else "finished"
        if run._reader.error is not None:
            ended = ended_by("input error", run._reader.error)
        elif stats.not_run:  # (not recorded: the counts of the run's row leave them out)
            left = f"{stats.not_run:,} read and not run (a resume runs them)"
            ended = f"{ended}; {left}" if stats.stop_reason else f"{ended}: {left}"
        journal.close(ended, stats.counts())
        return
    # Interrupted: keep what finished during the grace period, then close
    # without masking the exception on its way out. A consumer never saw
    # those outcomes: they are kept if their values are (store_results), or
    # once a consumer that writes what it gets (before_record) wrote them
    # (on_late); otherwise an outcome it never got has no line, so its item
    # must run again.
    # (A `break`, or an exception in a bare `for` loop's body, reaches the run as
    # GeneratorExit: "left early". Only a `with` block sees the body's exception.)
    status = run.exit_status or ended_early(sys.exc_info()[1])
    try:
        # What cannot be written runs again next time.
        with contextlib.suppress(JournalError):
            handed = not (
                not run._consumer or (run._options.store_results and run.before_record is None)
            )
            late = _handed_late(run) if handed else _settled_late(run)
            for finished, not_final in late:
                # (counted: the Report and the journal's run row say the same)
                succeeded, failures = journal.record_late(finished, not_final, handed=handed)
                _count_late(run, succeeded, failures)
            stats.reran_failed = journal.reran_failed
            journal.close(status, stats.counts())
    finally:
        journal.abandon()  # no-op once closed: the lock is released whatever happened


def _count_late(run: Run, succeeded: int, failures: list[Failure]) -> None:
    """Count final outcomes of the grace period (the Report keeps the failures too)."""
    run.statistics.add_batch(succeeded + len(failures), 0, 0.0, failures or None)
    if failures:
        run.statistics.delivered(failures)


def _settled_late(run: Run) -> Iterator[tuple[Batch, set[int]]]:
    """The late batches, their errors settled: each with its items whose outcome
    is not final (a failure that would have been retried, a call never made)."""
    for finished in _late_batches(run):
        not_final = run._settlement.judge_late(finished) if finished.errors else set()
        if not finished.values:  # (no value came back: nothing is known of its items)
            failures = finished.failures or {}
            not_final.update(i for i in range(len(finished.items)) if i not in failures)
        yield finished, not_final


def _handed_late(run: Run) -> Iterator[tuple[Batch, set[int]]]:
    """The late batches whose final outcomes ``on_late`` took (none without it).

    Without a journal they are counted here; with one, once recorded.
    """
    if run.on_late is None:
        return
    for finished, not_final in _settled_late(run):
        failures = finished.failures or {}
        attempts = finished.attempts or {}
        outcomes = [
            Outcome(
                item,
                None if index in failures else finished.values[index],
                failures.get(index),
                attempts.get(index, finished.attempt),
            )
            for index, item in enumerate(finished.items)
            if index not in not_final
        ]
        if not outcomes:
            continue
        try:
            run.on_late(outcomes)
        except Exception:  # (a full disk: these run again; the run's error is on its way)
            return
        if run._journal is None:
            final = [outcome.error for outcome in outcomes if outcome.error is not None]
            _count_late(run, len(outcomes) - len(final), final)
        yield finished, not_final


def _late_batches(run: Run) -> Iterator[Batch]:
    """Batches that came back after the run stopped delivering."""
    caught = run._caught
    while caught:  # (taken off the completions just as the run was stopped)
        finished = caught.popleft()
        if finished is not None:
            yield finished
    yield from run._late
    completions = run._completions
    while not completions.empty():
        finished = completions.get_nowait()
        if finished is not None:
            yield finished
