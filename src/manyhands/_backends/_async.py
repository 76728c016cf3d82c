"""The asyncio backend: worker tasks on an event loop, fed from one queue.

Up to ``workers`` tasks each take a batch, await ``fn(item)`` for its items
in turn, and report it. The loop is the caller's (``amap``), or a private
one in a thread the run owns (``run``/``map`` with a coroutine function),
closed when the run ends.

Stopping early cancels the running calls at once: unlike a thread, a
coroutine can be cancelled, so there is no grace period to wait out.
A ``CancelledError`` raised by the user's own code fails its item; only
the run's own cancellation propagates.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .._batch import Batch
from .._exceptions import Timeout
from .._outcome import Failure

__all__ = ["AsyncBackend"]


class AsyncBackend:
    """Runs batches as tasks on ``loop`` (or on a private loop in its own thread)."""

    handles_timeouts = True  # the engine leaves timeout= to the worker tasks

    def __init__(self, workers: int, timeout: float | None = None, own_loop: bool = True) -> None:
        self._workers = workers
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop = own_loop
        self._thread: threading.Thread | None = None
        self._pending: deque[Batch | None] = deque()  # batches no worker took yet
        self._idle: deque[asyncio.Future[Batch | None]] = deque()  # workers waiting for one
        self._tasks: set[asyncio.Task[None]] = set()
        self._retiring = 0
        self._stopping = False  # our own cancellation, not the user's CancelledError
        self._fn: Callable[[Any], Any] | None = None
        self._done: Callable[[Batch], None] | None = None
        self.abandoned = 0  # always 0: a timed-out coroutine is cancelled, not abandoned

    # -- lifecycle -------------------------------------------------------

    def start(self, fn: Callable[[Any], Any], done: Callable[[Batch], None]) -> None:
        self._fn = fn
        self._done = done
        if self._own_loop:
            loop = self._loop = asyncio.new_event_loop()
            ready = threading.Event()
            self._thread = threading.Thread(
                target=_serve, args=(loop, ready), name="manyhands-asyncio", daemon=True
            )
            self._thread.start()
            ready.wait()
        else:
            self._loop = asyncio.get_running_loop()

    def submit(self, batch: Batch) -> None:
        if self._own_loop:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._accept, batch)
        else:
            self._accept(batch)

    def _accept(self, batch: Batch | None) -> None:
        """Hand a batch (or a stop sentinel) to an idle worker, else queue it."""
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():  # (a cancelled worker leaves a cancelled waiter)
                waiter.set_result(batch)
                return
        self._pending.append(batch)
        if batch is not None and len(self._tasks) - self._retiring < self._workers:
            assert self._loop is not None
            task = self._loop.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def wind_down(self) -> None:
        if self._own_loop:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._retire)
        else:
            self._retire()

    def _retire(self) -> None:
        for _ in range(len(self._tasks) - self._retiring):
            self._accept(None)
        self._retiring = len(self._tasks)

    def expire(self, batch: Batch) -> bool:  # pragma: no cover - the engine never asks
        return False  # timeouts are applied per call, inside the worker tasks

    def shutdown(self, grace: float) -> int:
        """Stop from another thread (a private loop): cancel, wait, close the loop."""
        loop = self._loop
        assert loop is not None and self._own_loop
        try:
            future = asyncio.run_coroutine_threadsafe(self.ashutdown(grace), loop)
            return future.result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def ashutdown(self, grace: float) -> int:
        """Cancel every running call and wait until the tasks are gone (on the loop)."""
        del grace  # coroutines are cancelled at once: nothing to wait out
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        return 0

    # -- the worker task ---------------------------------------------------

    async def _work(self) -> None:
        # A plain deque and one future per idle wait: asyncio.Queue costs several
        # microseconds per batch, which 10,000 calls in flight cannot afford.
        pending, idle, done, loop = self._pending, self._idle, self._done, self._loop
        assert done is not None and loop is not None
        while True:
            if pending:
                batch = pending.popleft()
            else:
                waiter: asyncio.Future[Batch | None] = loop.create_future()
                idle.append(waiter)
                batch = await waiter
            if batch is None:
                return
            await self._execute(batch)
            done(batch)

    async def _execute(self, batch: Batch) -> None:
        fn = self._fn
        assert fn is not None
        timeout = self._timeout
        values: list[Any] = []
        append = values.append
        errors: dict[int, BaseException | Failure] | None = None
        start = perf_counter()
        for item in batch.items:
            try:
                if timeout is None:
                    append(await fn(item))
                else:
                    append(await self._within(fn(item), timeout))
            except asyncio.CancelledError as exc:
                if self._stopping:
                    raise  # the run is stopping: this is our cancellation
                errors = errors or {}
                errors[len(values)] = exc
                append(None)
            except BaseException as exc:
                errors = errors or {}
                errors[len(values)] = exc
                append(None)
        batch.elapsed = perf_counter() - start
        batch.values = values
        batch.errors = errors

    @staticmethod
    async def _within(call: Any, timeout: float) -> Any:
        """Await ``call``, cancelling it past ``timeout`` seconds (then: Timeout)."""
        if _in_task_timeout is not None:  # Python 3.11+: no extra task per call
            scope = _in_task_timeout(timeout)
            try:
                async with scope:
                    return await call
            except TimeoutError:
                if scope.expired():
                    raise Timeout(
                        f"the call ran past timeout={timeout:g}s and was cancelled"
                    ) from None
                raise  # the call's own TimeoutError
        task = asyncio.ensure_future(call)  # pragma: no cover - Python 3.10
        try:  # pragma: no cover
            finished, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:  # pragma: no cover - the run stops: the call too
            task.cancel()
            await asyncio.wait((task,))
            raise
        if finished:  # pragma: no cover
            return task.result()
        task.cancel()  # pragma: no cover
        await asyncio.wait((task,))  # pragma: no cover
        raise Timeout(  # pragma: no cover
            f"the call ran past timeout={timeout:g}s and was cancelled"
        )


_in_task_timeout: Any = getattr(asyncio, "timeout", None)


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()
