"""A Pool's side of its runs: what each asks of it, and the wait for them to end.

Each ``pool.run``/``map``/``amap`` is a run of its own (:func:`._api.open_run`)
that asks the pool for the backend it uses (the pool's workers; inline or a
loop of its own from one of the pool's own workers), for auto's worker
processes, and tells it when it begins and ends (``RunHooks``). A Pool that
stops waits for its runs and its executors' calls to end, then stops its
workers; a wait that could never end (from one of its own threads) is
refused. These are the parts of :class:`._pool.Pool` that are not its face: a
mixin of the one object, over the state it declares here (``Pool.__init__``
sets it).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ._backends import Backend, create_backend
from ._pool_life import AtExit, Life
from ._readers import Readers
from ._signal_waits import WAIT_SLICE

if TYPE_CHECKING:
    from ._executor import PoolCalls

__all__ = ["PoolRuns"]


class PoolRuns:
    """What a Pool's runs ask of it, and how it waits for them (see ``Pool``)."""

    _name: str
    _pid: int
    _backend: Backend
    _workers: int
    _processes_options: dict[str, Any] | None
    _processes: Backend | None
    _process_count: int
    _state: threading.Condition
    _active: int
    _closed: bool
    _readers: Readers
    _life: Life
    _all_calls: list[PoolCalls]

    # -- what runs need (see open_run) ---------------------------------------

    def backend_for_run(self, on_loop: bool) -> tuple[Backend, bool]:
        """The backend a new run uses, and whether the run owns it.

        A run started from one of the pool's own workers cannot wait for the
        pool's workers (they may all be waiting the same way): on threads it
        runs inline in that worker; on asyncio, as tasks of its own on the
        pool's loop. Such a run is part of what is under way, so it runs even
        once the pool is shut down (which waits for, or finishes, what is under
        way). Any other run is refused then, and once the interpreter's exit
        began, as a call submitted then is: the workers stop with it.
        """
        nested = self._backend.inside()
        with self._state:
            self._check_open(nested)
        if not nested:
            if AtExit.exiting:
                raise RuntimeError(
                    "cannot start a run on a manyhands.Pool after interpreter shutdown "
                    "began (the main thread has ended): the pool's workers stop as it "
                    "exits. Start the run before the main thread returns, or join the "
                    "thread that starts it there"
                )
            return self._backend, False
        if self._name == "async":
            return create_backend("async", self._workers, own_loop=not on_loop), True
        from ._backends._inline import InlineBackend

        return InlineBackend(), True

    def processes_for_auto(self) -> tuple[Backend, int] | None:
        """The processes a run on auto moves to: started by the first, shared by all."""
        if self._name != "auto":
            return None
        with self._state:
            self._check_open()
            if self._processes is None:
                cores = os.cpu_count() or 1
                backend = create_backend(
                    "processes", cores, shared=True, processes=self._processes_options
                )
                backend.start()  # (raises if no worker starts: the run stays on threads)
                self._processes = self._life.processes = backend
                self._process_count = cores
            return self._processes, self._process_count

    def run_begins(self) -> None:
        with self._state:
            self._check_open(self._backend.inside())
            self._active += 1
            self._life.active = self._active

    def run_ends(self) -> None:
        with self._state:
            self._active -= 1
            self._life.active = self._active
            self._state.notify_all()

    # -- inside --------------------------------------------------------------

    def _check_open(self, nested: bool = False) -> None:
        """Refuse a new run or call on a pool shut down (or a forked copy of one).

        ``nested``: a run started from one of the pool's own workers, part of
        what is under way, is refused only in a forked copy.
        """
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this manyhands.Pool was made in process {self._pid}, and this process "
                f"({os.getpid()}) has a copy of it (it was forked, a worker process with "
                "the fork start method, say): the pool's workers are not here. Make a "
                "Pool in this process, or use the pool from the process that made it"
            )
        if self._closed and not nested:
            raise RuntimeError("this manyhands.Pool is shut down: it accepts no new run or call")

    def _check_can_wait(self, call: str) -> None:
        """Refuse to wait from where the wait could never end."""
        if self._backend.inside():
            raise RuntimeError(
                f"{call} was called {_where_inside(self._name)}, and would wait for "
                "that thread forever: use shutdown(wait=False) there (the pool stops once "
                "what is under way is done), or shut it down from the thread that made it"
            )
        self._readers.check_can_wait(call)

    def _wait_idle(self) -> None:
        """Wait until no run is under way; a map whose reading thread ended is stopped.

        (In slices, which also look for such maps: a Ctrl-C another thread took
        ends the wait, see ``_signal_waits``.)
        """
        while True:
            self._readers.stop_orphans(time.monotonic())
            with self._state:
                if self._state.wait_for(lambda: not self._active, WAIT_SLICE):
                    return

    def _stop_when_idle(self, background: bool = False) -> None:
        """Wait for the runs and calls under way, then stop the workers.

        Interrupted (Ctrl-C), the wait goes on in a thread of its own, which
        stops the workers once they are done: the pool never stays up for good.
        """
        try:
            self._wait_idle()
            with self._state:
                all_calls = list(self._all_calls)
            for calls in all_calls:
                calls.shutdown(wait=True)
        except BaseException:
            if not background:
                threading.Thread(
                    target=self._stop_when_idle,
                    args=(True,),
                    name="manyhands-pool-stop",
                    daemon=True,
                ).start()
            raise
        self._life.stop_workers()


def _where_inside(backend: str) -> str:
    """Which of the pool's own threads this is, for a refusal to wait there."""
    from ._executor_call import calling_a_call
    from ._executor_future import in_callback

    if calling_a_call():
        return "from one of the pool's own calls"
    if in_callback():
        return (
            "in a done callback of one of the pool's Futures (run by the pool's own "
            "thread that settled it)"
        )
    if backend == "async":
        return "on the pool's event loop (in one of its calls, or a callback there)"
    if backend == "processes":
        return "on the thread that reads the pool's worker processes' results (in a callback there)"
    return "from one of the pool's own calls"
