"""backend="auto"'s moves: a run to worker processes, grown there, or back to threads.

The autopilot (:mod:`._autopilot`) measures the first calls and chooses;
this is how the choice is carried out. A move to processes takes the
processes started early (once the calls looked CPU-bound) or starts the
run's own, with ``fn`` sent (a Pool's run takes the pool's processes);
items that do not pickle, or a function that cannot travel, keep the run on
threads, and the Report's backend line says why. Once on its own processes,
the run is sized (:class:`~._auto_sizing.Sizing`): more processes if the calls also
wait, or back to threads (``workers=`` of them) if they mostly wait. Calls
running when the run moves finish where they are.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import TYPE_CHECKING, Any, cast

from ._backends import Backend
from ._exceptions import ManyhandsError, WorkerInitError
from ._gil_turns import first_in_line
from ._run_moves import resize, switch_to
from ._run_slowdown import obey_slowdown
from ._unsent import Unsent

if TYPE_CHECKING:
    from ._auto import Choice
    from ._auto_sizing import Sizing
    from ._backends._processes import ProcessBackend
    from ._batch import Batch
    from ._run import Run

__all__ = ["AutopilotMoves"]


class AutopilotMoves:
    """The moves of an :class:`~._autopilot.Autopilot` (which sets this state)."""

    run: Run
    sample: list[Any] | None
    choose_at: float | None
    unsent: Unsent | None
    _early: tuple[Backend, int] | BaseException | None
    _sizing: Sizing | None
    _chosen: Choice | None
    _moved_for: str | None
    _move: Choice | None
    _threads_wanted: int

    def stop(self) -> None:
        """(``Autopilot``) shut down the processes started early, unless a move took them."""
        raise NotImplementedError

    def _make_move(self, choice: Choice) -> None:
        """The move chosen: made from the run's dispatch, with no batch in hand."""
        self.choose_at = None
        with first_in_line():
            self._move_to_processes(choice, self.sample or [])
        self._move = None  # (not before: a Ctrl-C in the move leaves the run on threads)
        self.stop()  # (the processes started early, unless the move took them)

    def _move_to_processes(self, choice: Choice, sample: list[Any]) -> None:
        """Send the rest of the run to worker processes; running calls finish on threads."""
        run = self.run
        run.statistics.backend = str(choice)  # (unless it stays on threads: why, below)
        try:
            pickle.dumps(sample, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # (a lock, a connection...): stay where they work
            run.statistics.backend = f"threads ({choice.why}, but the items do not pickle: {exc})"
            return
        workers = choice.processes
        try:
            if run._owns_backend:
                backend, workers = self._take_early_processes() or self._own_processes(workers)
            else:  # a Pool(backend="auto"): its processes, shared with its other runs
                hooks = run._hooks
                shared = hooks.processes_for_auto() if hooks is not None else None
                if shared is None:
                    return
                backend, workers = shared
                backend.attach(run.task)
        except (TypeError, ManyhandsError) as exc:  # fn cannot travel, or no worker starts
            run.statistics.backend = f"threads ({choice.why}, but {_not_moved(exc)})"
            return
        if run._owns_backend:
            run._backend.wind_down()
        run._slowdown.ignore_latency()
        switch_to(run, backend, workers)
        self._moved_for = choice.why
        self.unsent = Unsent(functools.partial(run._send_back_to, 0))  # (0: its threads)
        if run._owns_backend:
            from ._auto_sizing import Sizing
            from ._cpu_readings import waited_for_cpu

            self._chosen = choice
            pids = cast("list[int]", getattr(backend, "pids", []))
            self._sizing = Sizing(
                run._clock(), workers, self._threads_wanted, waited=lambda: waited_for_cpu(pids)
            )

    def _own_processes(self, workers: int) -> tuple[Backend, int]:
        """The run's own worker processes, started, with fn sent (TypeError if it cannot go)."""
        from ._backends import create_backend

        run = self.run
        options = run._options
        backend = create_backend(
            "processes",
            workers,
            timeout=options.timeout,
            processes={
                "start_method": options.start_method,
                "initializer": options.initializer,
                "initargs": options.initargs,
                "start_timeout": options.start_timeout,
            },
        )
        backend.start()
        try:
            backend.attach(run.task)
        except BaseException:
            backend.shutdown(0.0)
            raise
        return backend, workers

    def _start_processes_early(self) -> None:
        """The calls look CPU-bound; the run's own processes start now, so that the
        choice finds them ready (starting them at the move kept the run on one core
        0.1-0.2 s longer). Kept for the move, or shut down (see stop)."""
        try:
            self._early = self._own_processes(min(os.cpu_count() or 1, self._threads_wanted))
        except (TypeError, ManyhandsError) as exc:
            self._early = exc  # (the move says why it stayed on threads)

    def _take_early_processes(self) -> tuple[Backend, int] | None:
        early, self._early = self._early, None
        if isinstance(early, BaseException):
            raise early
        return early

    def _size_processes(self, batch: Batch) -> None:
        """On its own processes: more of them if the calls also wait, or back to
        threads if they mostly wait (see _auto)."""
        sizing = self._sizing
        assert sizing is not None
        run = self.run
        sizing.add(batch.elapsed, batch.cpu)
        count = sizing.judge(run._clock())
        if sizing.done:
            self._sizing = None
        if count is None:
            return
        from ._auto import Choice

        assert self._chosen is not None
        went = "threads" if count == 0 else "processes"
        self._chosen = Choice(went, f"{self._chosen.why}; {sizing.why}", count)
        run.statistics.backend = str(self._chosen)
        if count == 0:
            with first_in_line():
                self._move_back_to_threads()
            return
        cast("ProcessBackend", run._backend).grow(count - run._workers)
        resize(run, count)
        obey_slowdown(run)

    def _move_back_to_threads(self) -> None:
        """The calls on the processes mostly waited; the rest of the run goes back
        to threads (``workers=`` of them). Calls running on processes finish there."""
        from ._backends import create_backend

        run = self.run
        self._moved_for = None
        wanted = self._threads_wanted
        backend = create_backend("threads", wanted, timeout=run._options.timeout)
        backend.start()
        backend.attach(run.task)
        run._backend.wind_down()
        switch_to(run, backend, wanted)


def _not_moved(exc: BaseException) -> str:
    """Why the run stayed on threads, for the Report."""
    if not isinstance(exc, WorkerInitError):
        return str(exc)  # (fn or the initializer does not pickle)
    # Its "no item was run" is a processes run's: this one goes on, on its threads
    # (where the initializer ran without error).
    text = str(exc).removesuffix("; no item was run")
    text = text.replace(
        "the worker initializer raised", "in a worker process the initializer raised"
    )
    return f"{text}; the items ran on threads"
