"""What must stop with a Pool, apart from it: its workers and its executors' calls.

A Pool holds a ``Life`` that holds none of the Pool, so that the Pool's
finalizer (a Pool dropped unclosed) and the interpreter's exit hook can stop
what it started: at exit, the calls submitted to the pools still open are
made first, as the standard library's executors do (``AtExit``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import TYPE_CHECKING

from ._backends import Backend

if TYPE_CHECKING:
    from ._executor import PoolCalls

__all__ = ["AtExit", "Life", "watch_exit"]


class Life:
    """The workers of a Pool, and its executors' calls: what must stop with it.

    A Pool dropped without ``shutdown`` stops them once its submitted calls are
    settled (its finalizer). At interpreter exit, the calls submitted to the
    pools still open are made before the program ends, as the standard
    library's executors do; then the workers of the pools with no run under
    way stop (an async pool's loop, worker processes).
    """

    __slots__ = (
        "__weakref__",
        "_lock",
        "_stopped",
        "active",
        "backend",
        "calls",
        "pid",
        "processes",
    )

    def __init__(self, backend: Backend, pid: int) -> None:
        self.backend = backend
        self.processes: Backend | None = None  # (auto) the processes runs moved to
        self.calls: list[PoolCalls] = []
        self.pid = pid
        self.active = 0  # runs under way (a copy of the pool's count)
        self._lock = threading.Lock()
        self._stopped = False

    def stop_workers(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.backend.shutdown(0.0)
        finally:
            if self.processes is not None:
                self.processes.shutdown(0.0)

    def finish_calls(self) -> None:
        """Make every submitted call, then accept no new one (the interpreter exits)."""
        if self.pid != os.getpid() or self._stopped:
            return
        for calls in list(self.calls):
            calls.finish_at_exit()

    def dropped(self) -> None:
        """(The Pool's finalizer) it was collected, or the interpreter exits, unclosed."""
        if self.pid != os.getpid():  # a forked copy: its workers are the parent's
            quiet = getattr(self.backend, "forget_copied_tasks", None)
            if quiet is not None:
                quiet()
            return
        if self._stopped:
            return
        if AtExit.exiting:  # (threading's exit hook made the submitted calls already)
            # (A run left unread ends as the interpreter exits: its workers stay for
            # it, but an event loop's, which it no longer waits for.)
            if not self.active or self.backend.name == "async":
                self.stop_workers()
            return
        for calls in list(self.calls):
            calls.shutdown(wait=False)
        # (Not here: the collection may run in any thread, one of the pool's own too.)
        threading.Thread(target=self._stop_later, name="manyhands-pool-stop", daemon=True).start()

    def _stop_later(self) -> None:
        for calls in list(self.calls):
            calls.shutdown(wait=True)
        self.stop_workers()


class AtExit:
    """The interpreter's exit, as the pools see it."""

    hooked = False  # the hook is registered (once, by the first Pool)
    exiting = False  # it ran: the submitted calls were made


_lives: weakref.WeakSet[Life] = weakref.WeakSet()  # the pools of this process, not collected


def watch_exit(life: Life) -> None:
    """Register ``life`` for the interpreter's exit (the hook, once)."""
    _lives.add(life)
    if not AtExit.hooked:
        AtExit.hooked = True
        # (before the threads are joined, where the stdlib's executors finish; not at
        # all once the interpreter is exiting already). threading._register_atexit is
        # private, yet the only hook that runs there: atexit runs after the non-daemon
        # threads are joined, too late for a thread that waits for a call; the
        # stdlib's own executors use it. Its test: the calls made at exit
        # (tests/test_pool_faults.py).
        with contextlib.suppress(AttributeError, RuntimeError):
            threading._register_atexit(_at_exit)  # type: ignore[attr-defined]


def _at_exit() -> None:
    """The interpreter exits: the calls submitted to open pools are made first."""
    for life in list(_lives):
        life.finish_calls()
    AtExit.exiting = True
