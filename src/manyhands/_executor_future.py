"""A Future of a Pool's Executor face, and how it is settled.

``PoolFuture`` is the stdlib's Future, but for a wait from one of the pool's
own threads, which its calls (``PoolCalls.before_wait``) keep from hanging.
``settle`` gives a Future its value or exception, and ``cancel_running``
settles a running one as cancelled; the done callbacks they run are told
apart by ``in_callback`` (a wait there may need the very thread that runs it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from concurrent.futures._base import CANCELLED_AND_NOTIFIED
from typing import TYPE_CHECKING, Any, TypeVar

from ._signal_waits import wait_sliced

if TYPE_CHECKING:
    from ._executor import PoolCalls, PoolExecutor

__all__ = ["Call", "PoolFuture", "cancel_running", "in_callback", "settle"]

R = TypeVar("R")
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

#: This thread runs the done callbacks of a Future of the pool's (it settles it).
_settling = threading.local()


def settle(future: Future[Any], ok: bool, value: Any) -> None:
    """Settle ``future``; its done callbacks run here, told apart by ``in_callback``."""
    _settling.depth = getattr(_settling, "depth", 0) + 1
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    finally:
        _settling.depth -= 1


def cancel_running(future: Future[Any]) -> None:
    """Settle a running ``future`` as cancelled (``cancel()`` refuses once it runs).

    As ``set_running_or_notify_cancel`` does for a cancelled one: waiters
    (``concurrent.futures.wait``) see it cancelled, its callbacks run.

    No public API settles a running Future as cancelled (``cancel()`` refuses,
    and ``set_exception(CancelledError())`` leaves ``cancelled()`` False), yet
    asyncio's ``run_coroutine_threadsafe`` does it for a coroutine that ends
    in CancelledError. So this reads the stdlib's Future internals, as
    ``Future.cancel`` itself does: its ``_condition`` (the lock), ``_state``,
    ``_waiters`` (those of ``wait``/``as_completed``) and
    ``_invoke_callbacks``; ``tests/test_pool_faults.py`` checks that they
    still behave so.
    """
    with future._condition:
        if future.done():
            return
        future._state = CANCELLED_AND_NOTIFIED
        for waiter in future._waiters:
            waiter.add_cancelled(future)
        future._condition.notify_all()
    _settling.depth = getattr(_settling, "depth", 0) + 1
    try:
        future._invoke_callbacks()  # type: ignore[attr-defined]
    finally:
        _settling.depth -= 1


def in_callback() -> bool:
    """This thread runs the done callbacks of one of a pool's Futures."""
    return getattr(_settling, "depth", 0) > 0


class PoolFuture(Future[R]):
    """A Future of the pool's: a wait from one of the pool's own workers cannot hang.

    ``result()``/``exception()`` without a timeout, called in one of the
    pool's worker threads on a call no worker has started, run the call
    there (work stealing); on an async pool's event loop they raise
    RuntimeError. Anywhere else, the stdlib's Future.
    """

    __slots__ = ("call", "calls", "claimed", "key", "owner")

    def __init__(self, calls: PoolCalls, owner: PoolExecutor, key: int, call: Call | None) -> None:
        super().__init__()
        self.calls = calls  # the PoolCalls that runs it
        self.owner = owner  # the executor it was submitted to (its shutdown waits for it)
        self.key = key
        self.call = call  # (threads, asyncio) what to call; None once it is made
        self.claimed = False  # a worker (or a waiter) took it: it is run, or found cancelled

    def result(self, timeout: float | None = None) -> R:
        self.calls.before_wait(self, timeout)
        return super().result(self._wait_sliced(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self.calls.before_wait(self, timeout)
        return super().exception(self._wait_sliced(timeout))

    def _wait_sliced(self, timeout: float | None) -> float | None:
        """The main thread waits in slices (Ctrl-C that a worker thread took: see
        _signal_waits); the timeout left for the stdlib's wait: 0 once waited."""
        if self.done() or threading.current_thread() is not threading.main_thread():
            return timeout
        wait_sliced(self._done_within, timeout)
        return 0.0

    def _done_within(self, seconds: float) -> bool:
        return bool(futures_wait((self,), seconds).done)

    def cancel(self) -> bool:
        """Cancel the call unless a worker began it; True if it is cancelled (never made).

        On Dask, the cluster's workers are asked first (a round trip): a call
        a worker began is running from then on, and this returns False.
        """
        if self.calls.withdraws:
            self.calls.withdraw([self])
            return self.cancelled()
        return super().cancel()
