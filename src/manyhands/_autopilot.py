"""backend="auto" inside a run: measure the first calls on threads, then move the run.

The decisions are :mod:`._auto`'s (``Measure``: which backend; ``Sizing``: how
many processes fit); this module is the run's side of them. A
:class:`~._run.Run` whose calls are measured (on auto, or a plain threads run
that may print a hint) makes an :class:`Autopilot`, tells it of each batch
sent and back and of the time, and drops it once it has nothing left to watch.

On auto, while it measures, the autopilot caps the calls at once (CPU-bound
calls on threads take turns on the GIL and all finish late) and shortens the
interpreter's switch interval so that its own looks come on time; once the
calls look CPU-bound it starts the run's worker processes, so that they are
ready when it chooses; it then moves the rest of the run to them (calls out
finish where they are), grows them while the calls also wait, or moves the
run back to threads if the calls mostly wait after all. A choice made as a
batch comes back is moved on at the run's next dispatch, once that batch has
reached delivery (the moves: :mod:`._autopilot_moves`). Once on processes, an
item that cannot be sent to them runs on threads (:mod:`._unsent`).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from ._autopilot_moves import AutopilotMoves
from ._backends import Backend, prepare_processes
from ._gil_turns import first_in_line, in_line
from ._run_moves import calls_running, switch_to
from ._run_slowdown import obey_slowdown
from ._unsent import Unsent

if TYPE_CHECKING:
    from ._auto import Choice, Measure
    from ._auto_sizing import Sizing
    from ._batch import Batch
    from ._run import Run

__all__ = ["MEASURING_TURNS", "Autopilot"]

MEASURING_TURNS = 1e-3  # the switch interval while auto measures (see Autopilot.cap_calls)


class Autopilot(AutopilotMoves):
    """A run's measuring, and on auto its choice and moves between backends.

    ``auto``: the run may move (else its calls are only measured, for the
    Report's hint). ``workers``: the run's ``workers=``, as threads.
    """

    def __init__(self, run: Run, *, auto: bool, workers: int) -> None:
        self.run = run
        self.auto = auto
        self.measure: Measure | None = None
        # When the window is over, choose even if no call finished (calls taking
        # turns on the GIL all finish late); and a few items, to check they pickle.
        self.choose_at: float | None = None
        self.sample: list[Any] | None = None if auto else []
        self.cap: int | None = None  # calls at once until the calls are seen to wait
        self._booting: bool | None = None  # the processes prepared, their start begun
        # Its own processes, started once the calls looked CPU-bound (or why not).
        self._early: tuple[Backend, int] | BaseException | None = None
        self._sizing: Sizing | None = None  # on the processes it moved to: how many fit
        self._chosen: Choice | None = None  # what it moved for (and then, how many)
        self._moved_for: str | None = None  # why it is on processes (None: it is not)
        # A choice of processes, made as a batch came back: the move starts processes
        # (100 ms or more), so it waits for the run's next dispatch (see look), once
        # that batch has reached delivery: a Ctrl-C in the move then loses nothing.
        self._move: Choice | None = None
        # Once on processes (it stays, for the rest of the run): items that cannot be
        # sent to them run on threads.
        self.unsent: Unsent | None = None
        self._short_turns = False  # the switch interval lowered while it measures
        self._threads_wanted = workers  # (the run's workers= on threads, to move back)
        self._cpu_seen = False  # the calls were seen to hold the GIL (see _watch_cpu)

    @property
    def idle(self) -> bool:
        """Nothing left to measure, size or clean up: the run may drop it."""
        return (
            self.measure is None
            and self._move is None
            and self.unsent is None
            and self._sizing is None
            and self._early is None
            and not self._short_turns
        )

    # -- what the run tells it -------------------------------------------

    def begin(self, started: float) -> None:
        """The run's clock started: measuring begins (on auto, with the calls capped)."""
        self.measure = measure = self._new_measure(started)
        if self.auto:
            from ._auto import WAIT_SEEN

            self.choose_at = started + WAIT_SEEN
            self.cap_calls(measure)

    def completed(self, batch: Batch) -> None:
        """A batch came back from the backend."""
        if self.measure is not None:
            self._measured(batch)
        elif self._sizing is not None and batch.via == self.run._via:
            self._size_processes(batch)

    def look(self, now: float) -> float | None:
        """Its timer: seconds until it looks again (None: no look due)."""
        if self.choose_at is None:
            return None
        if now >= self.choose_at:
            if self._move is None:
                self._choose_in_time(now)
            if self._move is not None:
                self._make_move(self._move)
        return None if self.choose_at is None else self.choose_at - now

    @property
    def rerouted(self) -> bool:
        """Some items run on threads, their batches waiting (see came_back)."""
        return self.unsent is not None and bool(self.unsent.waiting)

    def came_back(self, batch: Batch) -> Batch | None:
        """``batch`` (it has errors, or its items ran on threads) as the run settles it
        now; None while those a worker process could not be sent run on threads."""
        unsent = self.unsent
        if unsent is None:
            return batch
        settled = unsent.came_back(batch)
        if unsent.fn_not_loaded is not None and self._moved_for is not None:
            self._back_for_good(self._moved_for, unsent.fn_not_loaded)
        return settled

    def _back_for_good(self, why: str, not_loaded: str) -> None:
        """A worker process could not load fn: the rest of the run goes back to threads
        (where it worked), and the Report says why, as when the move itself failed.

        (A Pool's processes load a run's fn with its first batch, after the move.)
        """
        self._sizing = None
        run = self.run
        if run._owns_backend:  # (a replacement worker that cannot load it: rare)
            self._move_back_to_threads()  # (threads of its own again, as a move back)
        else:  # the pool's threads, which the run started on
            self._moved_for = None
            switch_to(run, run._previous[0], self._threads_wanted)
        run.statistics.backend = f"threads ({why}, but {not_loaded}; the items ran on threads)"

    def ended(self) -> None:
        """The run ended: the Report says so if it ended before a choice (or its move).

        A batch waiting for its items on threads is one that came back late (its
        other items' calls ran: kept if the run was interrupted).
        """
        run = self.run
        unsent = self.unsent
        if unsent is not None:
            run._late.extend(unsent.held())
        if unsent is not None and unsent.count:
            items = f"{unsent.count} item{'s' if unsent.count > 1 else ''}"
            _note(
                run,
                f"{items} could not be sent to a worker process (they do not pickle): "
                "they ran on threads",
            )
        measure = self.measure
        if measure is not None and measure.seen(run._clock()):  # (a run shorter than a window)
            self._watch_cpu(measure, run._clock())
        if self._move is not None:
            self.run.statistics.backend = (
                f"threads ({self._move.why}; the run ended before the move)"
            )
        elif self.auto and measure is not None and measure.decided is None:
            self.run.statistics.backend = "threads (auto: the run ended before a choice)"

    def stop(self) -> None:
        """Processes started early for a move that did not come are shut down."""
        early, self._early = self._early, None
        if early is not None and not isinstance(early, BaseException):
            early[0].shutdown(0.0)

    def end_short_turns(self) -> None:
        if self._short_turns:
            self._short_turns = False
            in_line.leave(MEASURING_TURNS)

    # -- measuring -------------------------------------------------------

    def _measured(self, batch: Batch) -> None:
        """Count a measured batch; once the window is over, choose (auto) or hint."""
        measure = self.measure
        assert measure is not None
        measure.add(len(batch.items), batch.elapsed, batch.cpu)
        now = self.run._clock()
        if self.cap is not None and measure.lifts_cap(now):
            self._lift_cap()
        self._choose(now)

    def cap_calls(self, measure: Measure) -> None:
        """Few calls at once until they are seen to wait (or the choice is made).

        CPU-bound calls started on threads finish there, all late, taking turns
        on the GIL (32 calls of 10 ms: a third of a second on one core), and
        the engine itself waits in that line for its turn to choose or to
        start the processes. Calls that wait lift the cap at their first
        answer, or when the window ends without one.
        """
        from ._auto import CALLS_PER_CORE
        from ._cpu_readings import gil_enabled

        cores = os.cpu_count() or 1
        cap = CALLS_PER_CORE * cores
        if measure.can_tell_waiting and cores > 1 and gil_enabled():
            self._booting = False  # (the processes: once the calls look CPU-bound)
            if cap < self._threads_wanted:
                self.cap = cap
                obey_slowdown(self.run)
            # The engine's own turns on the GIL kept short while it measures: with the
            # default 5 ms, its timed looks (to start the processes, to choose) came
            # 4-57 ms late behind the CPU-bound calls; with 1 ms, 0.8-2.1 ms.
            in_line.enter(MEASURING_TURNS)
            self._short_turns = True

    def _lift_cap(self) -> None:
        self.cap = None
        obey_slowdown(self.run)
        self.end_short_turns()

    def _choose_in_time(self, now: float) -> None:
        """On a timer: lift the cap, boot the processes or choose, as the calls show.

        The choice does not wait for a finished call (threads taking turns on
        the GIL all finish late); not enough calls seen yet: look again a
        little later.
        """
        measure = self.measure
        if measure is None:
            self.choose_at = None
            return
        run = self.run
        self.choose_at = now + measure.window / 5
        if self.cap is not None and measure.lifts_cap(now):
            self._lift_cap()  # (long calls that wait: no need to see one end)
        elif self._booting is False and measure.busy(now, calls_running(run)):
            self._booting = True  # started now, the processes are ready at the choice
            with first_in_line():  # (each import's system calls wait a short turn)
                prepare_processes(run._options.start_method, boot=True)
                if run._owns_backend:
                    self._start_processes_early()
            booted = run._clock()
            measure.exclude(booted - now)  # (the calls had the GIL less meanwhile)
            now = booted
        self._choose(now)

    def _choose(self, now: float) -> None:
        measure = self.measure
        if measure is None:
            return
        run = self.run
        if measure.ready(now):
            self._watch_cpu(measure, now)
        if not self.auto:  # a plain threads run: a hint if its calls were CPU-bound
            if measure.ready(now):
                hint = measure.hint(now)
                if hint is not None:
                    _note(run, hint)
                self._stop_measuring()
            return
        ready = self._early is not None and not isinstance(self._early, BaseException)
        choice = measure.choose(now, running=calls_running(run), early=ready)
        if choice is not None:
            if self.cap is not None:
                self._lift_cap()
            if choice.backend == "processes":
                self._move = choice  # (made at the run's next dispatch: see look)
            else:
                run.statistics.backend = str(choice)
                self.choose_at = now + measure.window  # (a revisit's window)
                self.stop()  # (the processes started early)
        if not measure.measuring:
            self._stop_measuring()
        if self._move is not None:
            self.choose_at = now  # (due at once)

    def _watch_cpu(self, measure: Measure, now: float) -> None:
        """Calls that hold the GIL: their latency is no server's, and no longer limits them.

        Calls that take turns on the GIL finish later the more of them are
        out, as calls in a server's queue do; the latency limit would read
        that as a slow server and cut the calls in flight (to 1-7 for a
        CPU-bound run), and the Report would advise that as ``workers=``.
        Fewer calls in flight only leave the GIL idle when a call waits.
        Refusals still slow the run down.
        """
        if not self._cpu_seen and measure.holds_cpu(now):
            self._cpu_seen = True
            self.run._slowdown.ignore_latency()
            obey_slowdown(self.run)

    def _new_measure(self, started: float) -> Measure:
        """A run's own threads are measured alone; a shared pool's, by the run's share."""
        from ._auto import Measure  # (threads and auto runs only)
        from ._cpu_readings import demand, threads_cpu

        run = self.run
        threads = getattr(run._backend, "native_ids", None)
        if not run._owns_backend or threads is None:
            return Measure(started, self._threads_wanted)
        clocks = getattr(run._backend, "cpu_clocks", None)
        return Measure(
            started,
            self._threads_wanted,
            demand=functools.partial(demand, threads),
            own_threads=True,
            cpu=functools.partial(threads_cpu, clocks) if clocks is not None else None,
        )

    def _stop_measuring(self) -> None:
        self.end_short_turns()
        self.run.task.measure = False
        self.measure = None
        self.choose_at = None
        self.sample = []


def _note(run: Run, note: str) -> None:
    """A note in the run's Report (not in those of a shared pool's other runs: its
    statistics' notes are the backend's own list, where the backend's notes go)."""
    stats = run.statistics
    if run._owns_backend:
        stats.notes.append(note)
    else:
        stats.notes = [*stats.notes, note]
