"""A call of a Pool that submits calls to the same pool and waits for them never hangs.

The classic nested-submit hang (every worker waits for a call that no worker
is free to start) is run in a child process with a bound, so that a hang
fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import pickle
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import finish, start_python, within

BOUND = 60.0  # seconds a child process may take before it counts as a hang


def outcome_of(code: str) -> Any:
    """Run ``code`` in a child python; what it printed last, as JSON. Fails on a hang."""
    proc = start_python(textwrap.dedent(code))
    try:
        out, err = finish(proc, BOUND)
    except Exception:
        pytest.fail(f"hung: the child process was still running after {BOUND} s")
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_calls_that_wait_for_calls_of_their_own_thread_pool_do_not_hang() -> None:
    # Each of the pool's calls submits to the same pool and waits, in each way
    # the stdlib offers, while every worker does the same.
    done = outcome_of(
        """
        import concurrent.futures as cf, json, manyhands

        with manyhands.Pool(workers=2) as pool:
            def leaf(x):
                return x * 2

            def by_result(x):
                return sum(pool.submit(leaf, x + i).result() for i in range(5))

            def by_wait(x):
                futures = [pool.submit(leaf, x + i) for i in range(5)]
                cf.wait(futures)
                return sum(f.result() for f in futures)

            def by_as_completed(x):
                futures = [pool.executor().submit(leaf, x + i) for i in range(5)]
                return sum(f.result() for f in cf.as_completed(futures))

            def by_exception(x):
                return pool.submit(leaf, x).exception() is None

            def deep(x):
                return 0 if x <= 0 else 1 + pool.submit(deep, x - 1).result()

            print(json.dumps([
                pool.run(by_result, range(20)).succeeded,
                pool.run(by_wait, range(20)).succeeded,
                pool.run(by_as_completed, range(20)).succeeded,
                pool.run(by_exception, range(20)).succeeded,
                [o.value for o in pool.map(deep, [5, 30], ordered=True)],
                list(pool.executor().map(deep, [3, 4])),
                pool.submit(by_wait, 1).result(),
            ]))
        """
    )
    assert done == [20, 20, 20, 20, [5, 30], [3, 4], 30]


def test_an_async_pools_calls_that_await_its_calls_do_not_hang() -> None:
    # On the pool's event loop, a blocking wait is refused at once (the loop would
    # wait for itself); awaiting works, even while every worker awaits the same way.
    done = outcome_of(
        """
        import asyncio, json, manyhands

        with manyhands.Pool(workers=2, backend="async") as pool:
            async def leaf(x):
                return x * 2

            async def blocking(x):
                return pool.submit(leaf, x).result()

            async def awaiting(x):
                return await asyncio.wrap_future(pool.submit(leaf, x))

            refused = pool.run(blocking, range(3))
            print(json.dumps([
                refused.failed,
                refused.failures[0].message,
                [o.value for o in pool.map(awaiting, range(6), ordered=True)],
            ]))
        """
    )
    failed, message, values = done
    assert failed == 3
    assert "pool's own event loop" in message and "asyncio.wrap_future" in message
    assert values == [0, 2, 4, 6, 8, 10]


def test_each_nested_call_runs_once_and_its_callbacks_fire_once() -> None:
    # Workers free to take the nested calls race with the callers that wait for
    # them (and take back those not started): each call still runs exactly once.
    calls: dict[int, int] = {}
    callbacks: dict[int, int] = {}
    lock = threading.Lock()

    def leaf(n: int) -> int:
        with lock:
            calls[n] = calls.get(n, 0) + 1
        return n

    def noted(n: int) -> Any:
        def callback(future: concurrent.futures.Future[int]) -> None:
            with lock:
                callbacks[n] = callbacks.get(n, 0) + 1

        return callback

    def scenario() -> manyhands.Report:
        with manyhands.Pool(workers=4) as pool:

            def outer(x: int) -> int:
                futures = []
                for i in range(10):
                    future = pool.submit(leaf, x * 10 + i)
                    future.add_done_callback(noted(x * 10 + i))
                    futures.append(future)
                return sum(f.result() for f in futures)

            return pool.run(outer, range(40))

    report = within(scenario, BOUND)
    assert report.succeeded == 40
    assert calls == dict.fromkeys(range(400), 1)
    assert callbacks == dict.fromkeys(range(400), 1)


def test_waits_from_outside_the_pool_keep_the_stdlib_semantics() -> None:
    release = threading.Event()
    ran: list[int] = []
    with manyhands.Pool(workers=1) as pool:
        busy = pool.submit(release.wait, 30)
        queued = pool.submit(ran.append, 1)
        with pytest.raises(concurrent.futures.TimeoutError):
            queued.result(timeout=0.05)  # (not run here: this thread is not a worker)
        assert queued.cancel()
        release.set()
        assert busy.result(timeout=30) is True
        assert queued.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result()
        assert pool.submit(len, "ab").result(timeout=30) == 2
    assert ran == []


def test_a_pool_sent_to_a_worker_process_is_refused_with_why() -> None:
    with manyhands.Pool(workers=1, backend="processes") as pool:

        def outer(x: int) -> int:
            return pool.submit(abs, x).result()

        with pytest.raises(TypeError, match=r"fn \(function\) cannot be sent.*Pool cannot be"):
            pool.submit(outer, 1)
        with pytest.raises(TypeError, match="Pool cannot be pickled"):
            pool.run(outer, range(3))
        with pytest.raises(TypeError, match="its workers belong to the process that made it"):
            pickle.dumps(pool)
        assert pool.submit(abs, -3).result(timeout=30) == 3  # (the pool goes on)


def _runs_processes_inside(x: int) -> int:
    return manyhands.run(abs, range(3), backend="processes", workers=1).succeeded


def test_a_run_of_processes_inside_a_worker_process_is_refused_with_why() -> None:
    report = manyhands.run(_runs_processes_inside, [1], backend="processes", workers=1)
    assert report.failed == 1
    failure = report.failures[0]
    assert failure.error_type == "manyhands.WorkerInitError"
    assert "daemonic process" in failure.message and "backend='threads'" in failure.message


def test_a_process_pools_callback_that_waits_for_the_pool_does_not_hang(tmp_path: Path) -> None:
    # Its Futures' callbacks run on the thread that reads the workers' results: a
    # wait there is refused at once, and a run started there is made right there.
    # (The call waits for a file made once its callback is added: a call already
    # done would run the callback here, on the main thread.)
    go = tmp_path / "go"

    def gate(path: str) -> int:
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.005)
        return 1

    def scenario() -> list[Any]:
        seen: list[Any] = []
        finished = threading.Event()
        with manyhands.Pool(workers=2, backend="processes") as pool:

            def callback(future: concurrent.futures.Future[int]) -> None:
                try:
                    pool.submit(abs, -1).result()
                except RuntimeError as exc:
                    seen.append(exc)
                seen.append(pool.run(abs, range(-3, 0)).succeeded)
                finished.set()

            pool.submit(gate, str(go)).add_done_callback(callback)
            go.touch()
            finished.wait(BOUND)
            seen.append(pool.submit(abs, -2).result())
        return seen

    error, succeeded, later = within(scenario, BOUND)
    assert isinstance(error, RuntimeError) and "in a callback of the pool" in str(error)
    assert succeeded == 3 and later == 2


@pytest.mark.skipif(sys.platform == "win32", reason="the fork start method")
def test_a_forked_copy_of_a_pool_refuses_calls_instead_of_hanging(tmp_path: Path) -> None:
    # A module's Pool, used by the parent, is copied into worker processes forked
    # from it, without its worker threads: a call there waited forever.
    (tmp_path / "shared_pool.py").write_text(
        textwrap.dedent(
            """
            import manyhands

            pool = manyhands.Pool(workers=2)

            def submits(x):
                return pool.submit(abs, x).result()

            def runs(x):
                return pool.run(abs, [x]).succeeded
            """
        )
    )
    failed = outcome_of(
        f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import manyhands, shared_pool

        if __name__ == "__main__":
            shared_pool.pool.run(abs, range(100))  # (its threads start, here)
            messages = []
            for fn in (shared_pool.submits, shared_pool.runs):
                report = manyhands.run(fn, [1], backend="processes", workers=1,
                                       start_method="fork", timeout=20)
                messages += [f.message for f in report.failures]
            shared_pool.pool.shutdown()
            print(json.dumps(messages))
        """
    )
    assert len(failed) == 2
    for message in failed:
        assert "has a copy of it" in message and "the pool's workers are not here" in message


@pytest.mark.parametrize("workers", [1, 2])
def test_shutdown_from_a_call_run_at_its_submit_is_refused_not_a_hang(workers: int) -> None:
    """With no worker free, a nested submit runs at once in the submitting call; a
    shutdown(wait=True) from there would wait for its caller forever: refused."""
    with manyhands.Pool(workers=workers) as pool:
        executor = pool.executor()

        def inner() -> str:
            try:
                executor.shutdown(wait=True)
            except RuntimeError as error:
                return str(error)
            return "returned"

        def outer() -> str:
            return executor.submit(inner).result()

        told = executor.submit(outer).result(timeout=30)
        assert "called from one of its own calls" in told


@pytest.mark.parametrize("backend", ["threads", "async"])
def test_runs_nested_in_calls_under_way_still_run_once_the_pool_is_shut_down(
    backend: str,
) -> None:
    # A pool shut down waits for (or, with wait=False, finishes) what is under way:
    # a run that one of those calls starts is part of it, inline in that call.
    def scenario() -> list[Any]:
        closed = threading.Event()
        pool = manyhands.Pool(workers=2, backend=backend)

        def outer(x: int) -> int:
            closed.wait(BOUND)
            return pool.run(abs, range(-3, 0)).succeeded

        async def aabs(x: int) -> int:
            return abs(x)

        async def aouter(x: int) -> int:
            while not closed.is_set():
                await asyncio.sleep(0.001)
            return len([out async for out in pool.amap(aabs, range(-3, 0)) if out.ok])

        outcomes: list[Any] = []
        reading = threading.Thread(
            target=lambda: outcomes.extend(
                pool.map(outer if backend == "threads" else aouter, range(6))
            )
        )
        reading.start()
        while not pool._active:  # (the map's run began: it is under way)
            threading.Event().wait(0.001)
        pool.shutdown(wait=False)
        closed.set()
        reading.join(BOUND)
        return [(out.value if out.ok else repr(out.error)) for out in outcomes]

    assert within(scenario, BOUND) == [3] * 6


def test_a_run_started_from_a_thread_a_call_made_with_its_context_does_not_hang() -> None:
    # asyncio.to_thread (and contextvars.copy_context().run) carry the call's context
    # to the helper thread: a run started there while every worker waits for it is
    # nested as one started in the call itself (inline), not queued for the workers.
    def scenario() -> list[Any]:
        with manyhands.Pool(workers=2) as pool:

            def nested() -> int:
                return pool.run(abs, range(-3, 0)).succeeded

            def outer(x: int) -> int:
                if x % 2:
                    return asyncio.run(asyncio.to_thread(nested))
                helper = concurrent.futures.ThreadPoolExecutor(1)
                context = contextvars.copy_context()
                try:
                    return helper.submit(context.run, nested).result()
                finally:
                    helper.shutdown()

            return [out.value for out in pool.map(outer, range(4))]

    assert within(scenario, BOUND) == [3] * 4
