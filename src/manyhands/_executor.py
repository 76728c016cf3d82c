"""A Pool as a ``concurrent.futures.Executor``: ``submit`` calls on its workers.

Imported only when a Pool is first used that way (``concurrent.futures`` is
not light). Each call is a batch of one item of an internal task whose
function unpacks ``(fn, args, kwargs)``; the call's value or exception comes
back as the item's value and settles its Future, with the stdlib's
semantics: a Future cancelled before a worker took it never runs.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from ._backends import Backend
from ._batch import Batch, Task

__all__ = ["PoolExecutor"]

R = TypeVar("R")

_keys = itertools.count()


class PoolExecutor(Executor):
    """``concurrent.futures.Executor`` over a Pool's workers at one priority."""

    def __init__(self, backend: Backend, priority: int) -> None:
        self._backend = backend
        self._processes = type(backend).__name__ == "ProcessBackend"
        self._async = is_async = type(backend).__name__ == "AsyncBackend"
        call = _call_async if is_async else (_call_pickled if self._processes else _call)
        self._task = Task(call, self._settle, priority=priority, timed=True)
        self._lock = threading.Lock()
        self._futures: dict[int, Future[Any]] = {}  # submitted and not settled, by key
        self._idle = threading.Condition(self._lock)
        self._closed = False
        backend.attach(self._task)

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        from ._checks import is_coroutine_function

        if not self._async and is_coroutine_function(fn):
            raise TypeError(
                f"{getattr(fn, '__qualname__', 'fn')} is a coroutine function, which this "
                "pool's workers would not await: use manyhands.Pool(backend='async')"
            )
        future: Future[R] = Future()
        key = next(_keys)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures[key] = future
        if self._processes:  # the Future stays here; the call travels by value
            import cloudpickle  # type: ignore[import-untyped]

            future.set_running_or_notify_cancel()  # (no hook in the worker process)
            item: Any = (key, cloudpickle.dumps((fn, args, kwargs)))
        else:
            item = (key, (future, fn, args, kwargs))
        self._backend.submit(Batch(-1, [item], self._task))
        return future

    def _settle(self, batch: Batch) -> None:
        """A call came back (or failed to run): settle its Future."""
        key = batch.items[0][0]
        with self._lock:
            future = self._futures.pop(key, None)
            if not self._futures:
                self._idle.notify_all()
        if future is None or future.done():
            return
        error = batch.errors.get(0) if batch.errors else None
        if error is not None:  # the call could not even be made (or not sent back)
            message = getattr(error, "message", None) or str(error)
            if isinstance(error, BaseException):
                future.set_exception(error)
            else:
                future.set_exception(RuntimeError(f"{error.error_type}: {message}"))
            return
        outcome = batch.values[0]
        if outcome is None:  # cancelled before it started
            return
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._futures.items())
        if cancel_futures:
            for batch in self._backend.cancel(self._task):
                key = batch.items[0][0]
                with self._lock:
                    future = self._futures.pop(key, None)
                if future is not None:
                    future.cancel()
            for _, future in pending:
                future.cancel()  # (False for a call already running)
            with self._lock:
                for key, future in pending:
                    if future.cancelled():
                        self._futures.pop(key, None)
                if not self._futures:
                    self._idle.notify_all()
        if wait:
            with self._lock:
                self._idle.wait_for(lambda: not self._futures)
            self._backend.detach(self._task)


def _call(item: tuple[int, tuple[Future[Any], Callable[..., Any], tuple[Any, ...], Any]]) -> Any:
    """In a worker thread: make the call unless its Future was cancelled."""
    future, fn, args, kwargs = item[1]
    if not future.set_running_or_notify_cancel():
        return None
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc


async def _call_async(
    item: tuple[int, tuple[Future[Any], Callable[..., Any], tuple[Any, ...], Any]],
) -> Any:
    """On the pool's event loop: await the call unless its Future was cancelled."""
    future, fn, args, kwargs = item[1]
    if not future.set_running_or_notify_cancel():
        return None
    try:
        call = fn(*args, **kwargs)
        # (Checked on the value: a lambda or a decorator may well return a coroutine.)
        if not inspect.isawaitable(call):
            raise TypeError(
                "a Pool of backend='async' awaits what it is given, and "
                f"{getattr(fn, '__qualname__', 'fn')} returned {type(call).__qualname__}: "
                "submit a coroutine function, or a regular one to a pool of threads"
            )
        return True, await call
    except asyncio.CancelledError as exc:  # the pool stops: the call is cancelled
        future.set_exception(exc)
        raise
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc


def _call_pickled(item: tuple[int, bytes]) -> Any:
    """In a worker process: unpack the call and make it."""
    import cloudpickle

    fn, args, kwargs = cloudpickle.loads(item[1])
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:  # sent back as the Future's exception (if it pickles)
        return False, exc
