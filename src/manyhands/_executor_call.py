"""A call of a Pool's Executor face made here: what a worker (or a waiter) runs.

On threads the worker that takes a call's batch makes it (``call_in_thread``),
unless its Future was cancelled or another thread took it first: a worker
waiting for it (``PoolCalls.before_wait``), or a nested submit with no worker
free, makes it inline (``make_call``). On asyncio the pool's loop awaits it
(``call_on_loop``). ``calls_made_here`` are the calls this thread is in, by
which a wait (or a shutdown) that could never end is told.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import TYPE_CHECKING, Any

from ._executor_future import cancel_running

if TYPE_CHECKING:
    from ._executor_future import PoolFuture

__all__ = [
    "TAKEN",
    "call_in_thread",
    "call_on_loop",
    "calling_a_call",
    "calls_made_here",
    "make_call",
]

TAKEN = object()  # what a worker gives back for a call another worker took first

#: The Futures whose calls run in this worker thread, outermost first: a call
#: made inline (at a nested submit, or taken back by a wait) runs on top of the
#: call that waits for it (asyncio: any wait on the pool's loop is refused, see
#: check_not_inside).
_calling: contextvars.ContextVar[tuple[PoolFuture[Any], ...]] = contextvars.ContextVar(
    "manyhands_calling", default=()
)


def calling_a_call() -> bool:
    """This thread is in a call submitted to a pool (``pool.submit``, an executor's)."""
    return bool(_calling.get())


def calls_made_here() -> tuple[PoolFuture[Any], ...]:
    """The Futures whose calls this thread is in, outermost first."""
    return _calling.get()


def call_in_thread(item: tuple[int, PoolFuture[Any]]) -> Any:
    """In a worker thread: make the call unless its Future was cancelled (or taken)."""
    future = item[1]
    claimed = future.calls._claim(future)
    if claimed is None:
        return TAKEN
    return make_call(future) if claimed else None


def make_call(future: PoolFuture[Any]) -> tuple[bool, Any]:
    """Make ``future``'s call here: ``(True, value)`` or ``(False, exception)``."""
    call, future.call = future.call, None
    assert call is not None
    fn, args, kwargs = call
    calling = _calling.set((*_calling.get(), future))
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc
    finally:
        _calling.reset(calling)


async def call_on_loop(item: tuple[int, PoolFuture[Any]]) -> Any:
    """On the pool's event loop: await the call unless its Future was cancelled."""
    future = item[1]
    if not future.calls._claim(future):
        return None
    call, future.call = future.call, None
    assert call is not None
    fn, args, kwargs = call
    try:
        call = fn(*args, **kwargs)  # (a coroutine function: see submit_for)
        if not inspect.isawaitable(call):  # (its __call__ said async, and it was not)
            raise TypeError(
                "a Pool of backend='async' awaits what it is given, and "
                f"{getattr(fn, '__qualname__', 'fn')} returned {type(call).__qualname__}: "
                "submit a coroutine function, or a regular one to a pool of threads"
            )
        return True, await call
    except asyncio.CancelledError:  # the pool stops, or the call was: its Future is
        cancel_running(future)  # cancelled, as asyncio.run_coroutine_threadsafe's is
        raise
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc
