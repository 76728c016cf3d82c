"""A Pool as a ``concurrent.futures.Executor``: ``submit`` calls on its workers.

Imported only when a Pool is first used that way (``concurrent.futures`` is
not light). Each call is a batch of one item of an internal task whose
function unpacks ``(fn, args, kwargs)``; the call's value or exception comes
back as the item's value and settles its Future, with the stdlib's
semantics: a Future cancelled before a worker took it never runs, and
``shutdown(cancel_futures=True)`` settles every one not started as cancelled.

On processes the call travels pickled (refused at ``submit``, naming what does
not pickle), and its Future runs from when a worker process is sent it, told
by the lanes (``Task.leaving``), as with ``ProcessPoolExecutor``'s call queue;
the outcome is pickled in the worker, so one that cannot come back says so.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar, cast

from ._backends import Backend
from ._batch import Batch, Task

__all__ = ["PoolExecutor"]

R = TypeVar("R")

_keys = itertools.count()
#: The Future whose call runs in this worker thread (asyncio: any wait on the
#: pool's loop is refused, see _check_not_inside).
_calling: contextvars.ContextVar[Future[Any] | None] = contextvars.ContextVar(
    "manyhands_calling", default=None
)


class PoolExecutor(Executor):
    """``concurrent.futures.Executor`` over a Pool's workers at one priority.

    A Future is pending until its call starts (on processes: until a worker
    process is sent it, as with ``ProcessPoolExecutor``), and ``cancel()``
    works until then. Every Future ends settled: with a value, an exception,
    or cancelled.
    """

    def __init__(self, backend: Backend, priority: int) -> None:
        self._backend = backend
        # (another process runs the calls: they travel pickled, and come back so)
        self._processes = type(backend).__name__ in ("ProcessBackend", "DaskBackend")
        self._async = is_async = type(backend).__name__ == "AsyncBackend"
        call = _call_async if is_async else (_call_pickled if self._processes else _call)
        self._task = Task(call, self._settle, priority=priority, timed=True)
        if type(backend).__name__ == "ProcessBackend":  # (threads, asyncio: the call checks)
            self._task.leaving = self._leaving  # (Dask: a Future is pending until settled)
        self._lock = threading.Lock()
        self._futures: dict[int, Future[Any]] = {}  # submitted and not settled, by key
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._detached = False
        backend.attach(self._task)

    @property
    def closed(self) -> bool:
        """``shutdown`` was called: it accepts no new call."""
        return self._closed

    @property
    def finished(self) -> bool:
        """Shut down, and every call it had is settled."""
        with self._lock:
            return self._closed and not self._futures

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        from ._checks import is_coroutine_function

        if not self._async and is_coroutine_function(fn):
            raise TypeError(
                f"{getattr(fn, '__qualname__', 'fn')} is a coroutine function, which this "
                "pool's workers would not await: use manyhands.Pool(backend='async')"
            )
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        # (On processes the call travels by value: pickled first, so a call that
        # cannot travel is refused before it has a Future to settle.)
        call = _pickled_call(fn, args, kwargs) if self._processes else None
        future: Future[R] = Future()
        key = next(_keys)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures[key] = future
        item: Any = (key, call) if self._processes else (key, (future, fn, args, kwargs))
        try:
            self._backend.submit(Batch(-1, [item], self._task))
        except BaseException:
            self._forget(key)
            raise
        return future

    def _forget(self, key: int) -> Future[Any] | None:
        """The Future of ``key`` is settled (or never will be): the face stops waiting for it."""
        with self._lock:
            future = self._futures.pop(key, None)
            if not self._futures:
                self._idle.notify_all()
        return future

    def _leaving(self, work: object) -> bool:
        """(processes, under the lanes' lock) A worker process is sent a call: it runs now.

        False for a call cancelled while it waited: dropped unsent.
        """
        batch = cast("tuple[Batch, list[int]]", work)[0]
        key = batch.items[0][0]
        with self._lock:
            future = self._futures.get(key)
        if future is None:  # cancelled by shutdown(cancel_futures=True) meanwhile
            return False
        if future.running():  # sent again: the worker it went to died before it began
            return True
        if future.set_running_or_notify_cancel():
            return True
        self._forget(key)
        return False

    def _settle(self, batch: Batch) -> None:
        """A call came back (or failed to run): settle its Future."""
        future = self._forget(batch.items[0][0])
        if future is None or future.done():
            return
        error = batch.errors.get(0) if batch.errors else None
        if error is not None:  # the call could not even be made (or not sent back)
            if isinstance(error, BaseException):
                future.set_exception(error)
            else:
                text = f"{error.error_type}: {error.message}" if error.message else error.error_type
                future.set_exception(RuntimeError(text))
            return
        outcome = batch.values[0]
        if outcome is None:  # cancelled before it started
            return
        if self._processes:
            if not future.running() and not future.set_running_or_notify_cancel():
                return  # (Dask: cancelled while its task was out; what it gave is dropped)
            try:
                outcome = _unpickled_outcome(outcome)
            except Exception as exc:  # e.g. of a class this process cannot import
                future.set_exception(
                    RuntimeError(f"what the call gave could not be read back here: {exc!r}")
                )
                return
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no new call; ``cancel_futures``: cancel those not started; ``wait``: for the rest.

        Raises:
            RuntimeError: with ``wait=True``, from one of its own calls (or, on
                an async pool, from its event loop): it would wait for itself.
                Nothing is shut down then; ``wait=False`` works there.
        """
        if wait:
            self._check_not_inside()
        with self._lock:
            self._closed = True
        if cancel_futures:
            self._cancel_queued()
        if wait:
            with self._lock:
                self._idle.wait_for(lambda: not self._futures)
                detach, self._detached = not self._detached, True
            if detach:
                self._backend.detach(self._task)

    def _cancel_queued(self) -> None:
        """Cancel every call not started; those no worker will take are settled here.

        The others (on their way to a worker) are settled by the worker, or
        by ``_leaving``, which find them cancelled.
        """
        again = []
        for batch in self._backend.cancel(self._task):  # taken back: no worker will see them
            key = batch.items[0][0]
            with self._lock:
                future = self._futures.get(key)
            if future is None:
                continue
            if future.cancel():
                future.set_running_or_notify_cancel()  # (so that wait() sees it cancelled)
                self._forget(key)
            else:  # started (sent to a worker process that died before it began it)
                again.append(batch)
        for batch in again:
            self._backend.submit(batch)
        with self._lock:
            pending = list(self._futures.values())
        for future in pending:
            future.cancel()  # (False for a call already running)

    def _check_not_inside(self) -> None:
        if self._async and self._backend.inside():
            where = "on the pool's event loop, which its calls need"
        else:
            calling = _calling.get()
            with self._lock:
                own = any(future is calling for future in self._futures.values())
            if not own:
                return
            where = "from one of its own calls"
        raise RuntimeError(
            f"executor.shutdown() was called {where}, and would wait for it forever: "
            "use shutdown(wait=False) there"
        )


def _call(item: tuple[int, tuple[Future[Any], Callable[..., Any], tuple[Any, ...], Any]]) -> Any:
    """In a worker thread: make the call unless its Future was cancelled."""
    future, fn, args, kwargs = item[1]
    if not future.set_running_or_notify_cancel():
        return None
    calling = _calling.set(future)
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # the call's own error settles its Future
        return False, exc
    finally:
        _calling.reset(calling)


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


def _pickled_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> bytes:
    """``(fn, args, kwargs)`` pickled to go to a worker process; TypeError names what does not."""
    import cloudpickle  # type: ignore[import-untyped]

    try:
        return cast("bytes", cloudpickle.dumps((fn, args, kwargs)))
    except Exception as exc:
        parts = [("fn", fn)] + [(f"argument {n}", arg) for n, arg in enumerate(args, 1)]
        parts += [(f"keyword argument {name}=", arg) for name, arg in kwargs.items()]
        what = "the call"
        for name, part in parts:
            try:
                cloudpickle.dumps(part)
            except Exception:
                what = f"{name} ({type(part).__qualname__})"
                break
        raise TypeError(
            f"{what} cannot be sent to a worker process: {exc}. The pool's workers are "
            "processes: what a call takes must pickle (or use a pool of threads)"
        ) from exc


def _call_pickled(item: tuple[int, bytes]) -> Any:
    """In a worker process: unpack the call, make it, and pickle what it gave.

    The outcome is pickled here, so that one that cannot be sent back is told
    as such: a value that does not pickle fails the call with a TypeError; an
    exception that does not pickle comes back as a RuntimeError with its type
    and message. An exception comes with its traceback here, as text.
    """
    import cloudpickle

    fn, args, kwargs = cloudpickle.loads(item[1])
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # sent back as the Future's exception
        return False, _pickled_exception(exc)
    try:
        return True, cloudpickle.dumps(value)
    except Exception as exc:
        error = TypeError(
            f"the call's value (a {type(value).__qualname__}) could not be sent back from "
            f"the worker process: {exc}"
        )
        return False, (cloudpickle.dumps(error), "")


def _pickled_exception(exc: BaseException) -> tuple[bytes, str]:
    """``exc`` pickled (or a RuntimeError naming it, if it cannot travel), and its traceback."""
    import traceback

    import cloudpickle

    text = "".join(traceback.format_exception(exc))
    try:
        data: bytes = cloudpickle.dumps(exc)
        cloudpickle.loads(data)  # (e.g. an __init__ of its own: it pickles, and fails here)
    except Exception:
        kind = type(exc)
        error = RuntimeError(
            f"{kind.__module__}.{kind.__qualname__}: {_safe_str(exc)} (it could not be sent "
            "back from the worker process as it is)"
        )
        data = cloudpickle.dumps(error)
    return data, text


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<str() of the exception failed>"


def _unpickled_outcome(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    """What ``_call_pickled`` sent back; an exception's cause is its traceback in the worker."""
    import cloudpickle

    ok, data = outcome
    if ok:
        return True, cloudpickle.loads(data)
    pickled, text = data
    error = cloudpickle.loads(pickled)
    if text:
        error.__cause__ = RemoteTraceback(text)
    return False, error


class RemoteTraceback(Exception):
    """The traceback of a call's exception in its worker process (set as its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text
