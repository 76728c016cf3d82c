"""A private event loop in a daemon thread of its own.

Used by ``run``/``map`` of a coroutine function, and by an async Pool.

The loop runs until it is stopped: at once, or (:meth:`LoopThread.stop_once_ended`)
once the tasks still running end, such as calls that did not end when cancelled.
Meanwhile the thread, a daemon, does not keep the program alive, as an
abandoned worker thread does not. The thread closes its loop once it stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any, TypeVar

from .._batch import unwatch_this_thread, watch_forks_in_this_thread
from .._exceptions import WorkerInitError
from .._signal_waits import WAIT_SLICE

__all__ = ["LoopGone", "LoopThread", "new_private_loop"]

T = TypeVar("T")


class LoopGone(RuntimeError):
    """The loop's thread no longer runs (stopped, or the interpreter is exiting)."""


def _gone() -> LoopGone:
    """The error of a call to a loop whose thread no longer runs, saying why if known."""
    why = "the interpreter is exiting" if sys.is_finalizing() else "it was stopped"
    return LoopGone(f"the pool's event loop thread is gone ({why})")


class LoopThread:
    """An event loop served by a thread, driven from other threads."""

    def __init__(self) -> None:
        self.loop = new_private_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=_serve, args=(self.loop, self._ready), name="manyhands-asyncio", daemon=True
        )
        self._running = 0  # (stop_once_ended) tasks still running

    def start(self) -> None:
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread": a limit of the system
            self.loop.close()
            raise WorkerInitError(
                f"the event loop's thread could not be started ({exc}): the system's "
                "limit on threads or memory is reached (ulimit -u, ulimit -v, a "
                "container's pids limit)"
            ) from exc
        self._ready.wait()

    def inside(self) -> bool:
        """True when called from the loop's thread."""
        return threading.current_thread() is self._thread

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop, from another thread; its result.

        Past ``timeout`` seconds (or on an exception in the wait: Ctrl-C) it is
        cancelled, and the error raised (``concurrent.futures.TimeoutError``).
        """
        if not self.answers():
            coroutine.close()
            raise _gone()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # (another thread closed the loop since: "Event loop is closed")
            if not self.loop.is_closed():
                raise
            coroutine.close()
            raise _gone() from None
        try:
            # In slices (a signal another thread took: see _signal_waits), each
            # looking that the loop's thread still runs: it is a daemon, which stops
            # at interpreter exit, where a run left unread is closed by its
            # finalizer and asks it here.
            deadline = None if timeout is None else monotonic() + timeout
            while True:
                left = WAIT_SLICE if deadline is None else deadline - monotonic()
                try:
                    return future.result(min(max(left, 0.0), WAIT_SLICE))
                except concurrent.futures.TimeoutError:
                    if future.done() or (deadline is not None and left <= WAIT_SLICE):
                        raise  # (the coroutine's own TimeoutError, or the time is up)
                    if not self.answers():
                        raise _gone() from None
        except BaseException:
            future.cancel()  # (the loop drops it when it gets to it)
            raise

    def answers(self) -> bool:
        """The loop's thread runs, and can (not once the interpreter is finalizing)."""
        return self._thread.is_alive() and not sys.is_finalizing() and not self.loop.is_closed()

    def stop(self) -> None:
        """Stop the loop now, and wait for its thread to close it."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    def stop_once_ended(self, running: Callable[[], list[asyncio.Task[None]]]) -> None:
        """Stop the loop once the tasks ``running()`` returns (on the loop) have ended.

        Returns at once: the thread closes the loop then.
        """
        self.loop.call_soon_threadsafe(self._stop_once_ended, running)

    def stop_when_ended(self, running: Callable[[], list[asyncio.Task[None]]]) -> None:
        """(On the loop) :meth:`stop_once_ended`, called there."""
        self._stop_once_ended(running)

    def _stop_once_ended(self, running: Callable[[], list[asyncio.Task[None]]]) -> None:
        tasks = running()
        self._running = len(tasks)
        for task in tasks:
            task.add_done_callback(self._one_ended)
        if not tasks:
            self.loop.stop()

    def _one_ended(self, task: asyncio.Task[None]) -> None:
        self._running -= 1
        if not self._running:
            self.loop.stop()


def new_private_loop() -> asyncio.AbstractEventLoop:
    """A loop for a run's own thread: uvloop's when it is installed, else asyncio's.

    uvloop (``pip install manyhands[fast]``) turns each call's timer and
    wake-up around in C: a fifth to a quarter less CPU per call at 10,000
    calls in flight (benchmarks/README.md). It is imported here, when a private loop starts,
    never by ``import manyhands``. ``amap`` runs on the caller's own loop,
    whichever it is.
    """
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    watch_forks_in_this_thread()  # a call that forks: see _batch
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        unwatch_this_thread()
