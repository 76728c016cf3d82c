"""Pool and executor-face defects: waits that could never end, faces that broke each other.

Each scenario that used to hang runs bounded (``within``, or a subprocess with a
timeout): a hang fails the test instead of stopping the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import manyhands
from manyhands import _readers

from .conftest import python_subprocess_env, within

BOUND = 20.0


def nap(x: Any) -> Any:
    time.sleep(0.1)
    return x


def slow(x: Any) -> Any:
    time.sleep(1.0)
    return x


def script(code: str, timeout: float = BOUND) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail the test if it does not exit in time."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=python_subprocess_env(),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the interpreter did not exit in {timeout} s: {exc.stdout!r} {exc.stderr!r}")


# -- 1. executor.shutdown() in a done callback --------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_faces_shutdown_in_a_done_callback_is_refused_not_a_hang(backend: str) -> None:
    # The callback runs on the pool's own thread (the worker that made the call, or
    # the thread that reads the worker processes' results): a shutdown waiting there
    # for the face's other call waited for that very thread.
    def scenario() -> tuple[list[str], Any, int]:
        told: list[str] = []
        called = threading.Event()
        with manyhands.Pool(workers=1 if backend == "threads" else 2, backend=backend) as pool:
            face = pool.executor()

            def callback(_: Any) -> None:
                try:
                    face.shutdown()
                    told.append("returned")
                except RuntimeError as exc:
                    told.append(str(exc))
                try:
                    pool.shutdown()
                    told.append("returned")
                except RuntimeError as exc:
                    told.append(str(exc))
                called.set()

            first = face.submit(nap, "a")
            second = face.submit(slow, "b")  # (not ended when the callback runs)
            first.add_done_callback(callback)
            value = second.result(BOUND)
            called.wait(BOUND)
            return told, value, pool.run(nap, range(3)).succeeded

    told, value, later = within(scenario, BOUND)
    assert value == "b" and later == 3
    if backend == "threads":  # (the call no worker began is made there, in the callback)
        assert told[0] == "returned"
    else:  # (the callback runs on the thread that delivers every result: refused)
        assert "done callback" in told[0] and "wait=False" in told[0], told[0]
    assert "done callback" in told[1] and "own calls" not in told[1], told[1]


# -- 2. an async pool's map left unread at interpreter exit ---------------------


def test_an_async_pools_map_left_unread_does_not_hang_the_interpreters_exit() -> None:
    done = script(
        """
        import asyncio, manyhands

        async def work(x):
            await asyncio.sleep(0.2)
            return x

        pool = manyhands.Pool(workers=2, backend="async")
        outcomes = pool.map(work, range(10))
        print(next(outcomes).value, flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


# -- 8. an async call that ends in CancelledError ---------------------------------


def test_an_async_call_ending_in_cancelled_error_leaves_its_future_cancelled() -> None:
    async def cancelled(x: int) -> int:
        inner = asyncio.ensure_future(asyncio.sleep(5))
        asyncio.get_running_loop().call_later(0.05, inner.cancel)
        await inner
        return x

    async def fine(x: int) -> int:
        return x

    def scenario() -> tuple[bool, bool, int, list[int]]:
        with manyhands.Pool(workers=1, backend="async") as pool:
            future = pool.submit(cancelled, 1)
            done, _ = concurrent.futures.wait([future], timeout=BOUND)
            called: list[bool] = []
            future.add_done_callback(lambda f: called.append(f.cancelled()))
            with pytest.raises(concurrent.futures.CancelledError):
                future.result(BOUND)
            later = [pool.submit(fine, i).result(BOUND) for i in range(3)]
            return future.cancelled(), called == [True], len(done), later

    is_cancelled, callback_saw_it, done, later = within(scenario, BOUND)
    assert is_cancelled and callback_saw_it and done == 1
    assert later == [0, 1, 2]


# -- 3. a map read once by a thread that ended --------------------------------


def test_a_map_whose_reading_thread_ended_is_stopped_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_readers, "ORPHANED_FOR", 0.5)  # (the time a reader has)

    def scenario() -> tuple[Any, str]:
        kept: list[Any] = []
        with manyhands.Pool(workers=2) as pool:

            def reader() -> None:
                outcomes = pool.map(nap, range(1000))
                kept.append(next(outcomes).value)
                kept.append(outcomes)  # (held on, never read again)

            thread = threading.Thread(target=reader)
            thread.start()
            thread.join()
        return kept[0], repr(pool)

    first, state = within(scenario, BOUND)
    assert first in range(1000) and "shut down" in state


# -- 4. Ctrl-C while the block's end waits for another thread's run --------------


def test_ctrl_c_during_the_wait_for_another_threads_run_still_stops_the_workers() -> None:
    done = script(
        """
        import asyncio, os, signal, threading, time, manyhands

        async def work(x):
            await asyncio.sleep(0.01)
            return x

        reports = []
        try:
            with manyhands.Pool(workers=2, backend="async") as pool:
                other = threading.Thread(
                    target=lambda: reports.append(pool.run(work, range(100), progress=False))
                )
                other.start()
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        other.join()
        for _ in range(100):  # (the pool stops in the background once that run ends)
            names = [t.name for t in threading.enumerate() if t.name.startswith("manyhands")]
            if not names:
                break
            time.sleep(0.05)
        print(reports[0].succeeded, names, flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["interrupted", "100 []"], done.stdout


# -- 5. each pool.executor() is an executor of its own --------------------------


def test_each_executor_shuts_down_alone() -> None:
    def part(x: int) -> int:
        return x

    def scenario() -> tuple[Any, ...]:
        release = threading.Event()
        with manyhands.Pool(workers=4) as pool:

            def item(x: int) -> int:
                with pool.executor() as face:  # (as a library given an Executor would)
                    return sum(face.map(part, range(5)))

            report = pool.run(item, range(40))
            other = pool.submit(release.wait, BOUND)  # (a user who is not done)
            queued = [pool.submit(nap, x) for x in range(8)]
            with pool.executor() as mine:  # must not wait for the other user's calls
                mine_value = mine.submit(part, 7).result(BOUND)
            still_running = not other.done()
            cancelling = pool.executor()
            cancelling.submit(nap, 0)
            cancelling.shutdown(cancel_futures=True)
            cancelled = sum(future.cancelled() for future in queued)
            release.set()
            values = [future.result(BOUND) for future in queued]
        return report.succeeded, report.failed, mine_value, still_running, cancelled, values

    succeeded, failed, mine_value, still_running, cancelled, values = within(scenario, BOUND)
    assert (succeeded, failed) == (40, 0)
    assert mine_value == 7 and still_running
    assert cancelled == 0 and values == list(range(8))


# -- 6. calls submitted to a pool still open when the script ends ----------------


@pytest.mark.parametrize("backend", ["threads", "async"])
def test_calls_submitted_to_an_open_pool_are_made_before_the_interpreter_exits(
    backend: str, tmp_path: Any
) -> None:
    out = tmp_path / "out.txt"
    done = script(
        f"""
        import asyncio, time, manyhands

        def write(i):
            time.sleep(0.1)
            with open({str(out)!r}, "a") as file:
                file.write(f"{{i}}\\n")

        async def awrite(i):
            await asyncio.sleep(0.1)
            write(i)

        pool = manyhands.Pool(workers=2, backend={backend!r})
        for i in range(6):
            pool.submit(awrite if {backend!r} == "async" else write, i)
        """
    )
    assert done.returncode == 0, done.stderr
    assert sorted(out.read_text().split()) == [str(i) for i in range(6)]
    assert "destroyed but it is pending" not in done.stderr  # (9: an async pool's exit)


# -- 7. a pool dropped without being closed ---------------------------------------


def double(x: int) -> int:
    return 2 * x


async def double_async(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("backend", ["processes", "async"])
def test_a_pool_dropped_without_closing_stops_its_workers(backend: str) -> None:
    def names() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("manyhands"))

    def scenario() -> tuple[bool, list[str]]:
        import gc

        before = names()
        pool = manyhands.Pool(workers=2, backend=backend)
        assert pool.run(double_async if backend == "async" else double, range(4)).succeeded == 4
        future = pool.submit(double_async if backend == "async" else double, 5)
        del pool
        gc.collect()
        assert future.result(BOUND) == 10  # (its submitted call is made first)
        for _ in range(200):
            if names() == before:
                break
            time.sleep(0.05)
        return names() == before, names()

    stopped, left = within(scenario, BOUND)
    assert stopped, left


# -- 9. the options a pool's run accepts -------------------------------------------


def test_an_unknown_option_of_a_pools_run_lists_priority_among_those_accepted() -> None:
    with manyhands.Pool(workers=1) as pool, pytest.raises(TypeError) as told:
        pool.run(abs, [1], bogus=1)
    assert "'priority'" in str(told.value)


def test_an_executor_closed_in_a_call_of_the_pool_waits_for_its_calls() -> None:
    # (threads) Its shutdown makes there the calls no worker began, and waits for
    # those that run: never for a worker that may be the very thread waiting.
    def scenario() -> tuple[int, list[int]]:
        made: list[int] = []

        def note(x: int) -> None:
            time.sleep(0.01)
            made.append(x)

        with manyhands.Pool(workers=2) as pool:

            def item(x: int) -> int:
                with pool.executor() as face:
                    for i in range(3):
                        face.submit(note, x * 10 + i)  # (not waited for here)
                return x

            report = pool.run(item, range(6))
        return report.succeeded, sorted(made)

    succeeded, made = within(scenario, BOUND)
    assert succeeded == 6
    assert made == sorted(x * 10 + i for x in range(6) for i in range(3))


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork")
def test_a_forked_copy_of_an_async_pool_exits_without_destroyed_task_messages() -> None:
    done = script(
        """
        import os, sys, manyhands

        async def double(x):
            return 2 * x

        pool = manyhands.Pool(workers=2, backend="async")
        print(pool.run(double, range(4)).succeeded, flush=True)
        pid = os.fork()
        if pid == 0:
            pool.close()  # (a copy: nothing to close here)
            sys.exit(0)
        os.waitpid(pid, 0)
        pool.close()
        """
    )
    assert done.returncode == 0, done.stderr
    assert "destroyed but it is pending" not in done.stderr, done.stderr


# -- 11. a review of the executors per executor() ---------------------------------


def test_an_executor_shut_down_from_a_call_nested_in_its_own_call_is_refused() -> None:
    # The executor's call waits for a nested call run inline in the same worker,
    # which shuts the executor down: its call is further up this thread's stack.
    def scenario() -> str:
        with manyhands.Pool(workers=1) as pool:
            executor = pool.executor()

            def inner() -> str:
                executor.shutdown(wait=True)
                return "returned"

            def outer() -> str:
                return pool.submit(inner).result()

            try:
                return executor.submit(outer).result(timeout=BOUND)
            except RuntimeError as exc:
                return str(exc)

    said = within(scenario, BOUND)
    assert "from one of its own calls" in said


def test_a_map_handed_to_another_thread_by_a_thread_that_ended_is_read_to_its_end() -> None:
    def scenario() -> list[Any]:
        handed: list[Any] = []
        got: list[Any] = []
        ready = threading.Event()
        with manyhands.Pool(workers=2) as pool:

            def starter() -> None:
                outcomes = iter(pool.map(lambda x: x, range(200)))
                got.append(next(outcomes).value)
                handed.append(outcomes)  # (then this thread ends)
                ready.set()

            def consumer() -> None:
                ready.wait()
                time.sleep(1.0)  # (the pool's shutdown waits meanwhile)
                got.extend(outcome.value for outcome in handed[0])

            reading = threading.Thread(target=consumer)
            reading.start()
            first = threading.Thread(target=starter)
            first.start()
            first.join()
        reading.join()
        return got

    assert within(scenario, BOUND) == list(range(200))


def test_a_map_read_by_a_thread_threading_does_not_list_is_waited_for() -> None:
    import _thread

    def scenario() -> list[Any]:
        got: list[Any] = []
        done = threading.Event()
        pool = manyhands.Pool(workers=2)

        def reader() -> None:
            try:
                for outcome in pool.map(lambda x: x, range(100)):
                    got.append(outcome.value)
                    time.sleep(0.01)
            finally:
                done.set()

        _thread.start_new_thread(reader, ())
        while not got:
            time.sleep(0.01)
        pool.shutdown()
        done.wait(BOUND)
        return got

    assert within(scenario, BOUND) == list(range(100))


def test_an_executor_works_on_once_its_pool_object_is_dropped() -> None:
    import gc

    executor = manyhands.Pool(workers=2).executor()  # (as loop.set_default_executor(...))
    gc.collect()
    assert executor.submit(lambda: 42).result(timeout=BOUND) == 42
    executor.shutdown()
    del executor
    gc.collect()  # (now the pool goes, and its finalizer stops its workers)


def test_a_call_submitted_after_the_exit_hook_is_refused_or_made() -> None:
    done = script(
        """
        import threading, time, manyhands

        pool = manyhands.Pool(workers=2)

        def call(i):
            time.sleep(0.1)
            print("made", i, flush=True)

        def late():
            time.sleep(0.5)  # (the main thread has ended: the pool's exit hook ran)
            for i in range(4):
                try:
                    pool.submit(call, i)
                except RuntimeError as exc:
                    print("refused", i, exc, flush=True)

        threading.Thread(target=late).start()
        """
    )
    assert done.returncode == 0, done.stderr
    told = sorted(line.split()[:2] for line in done.stdout.splitlines())
    assert [i for _, i in told] == ["0", "1", "2", "3"], done.stdout
    assert all(word in ("made", "refused") for word, _ in told)
    if any(word == "refused" for word, _ in told):
        assert "after interpreter shutdown" in done.stdout


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_run_started_after_the_exit_hook_is_refused(backend: str) -> None:
    # (The script's own hook is registered before the pool's, so it runs after it:
    # the hooks run last registered first. The late thread starts its runs then.)
    done = script(
        f"""
        import threading, manyhands

        exited = threading.Event()
        threading._register_atexit(exited.set)
        pool = manyhands.Pool(workers=2, backend={backend!r})

        def late():
            exited.wait()
            for start in (lambda: pool.run(abs, [-1]), lambda: list(pool.map(abs, [-1]))):
                try:
                    print("ran", start(), flush=True)
                except RuntimeError as exc:
                    print("refused:", exc, flush=True)

        threading.Thread(target=late).start()
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused:") for line in lines), lines
    assert "after interpreter shutdown" in lines[0]


def test_a_dask_executors_cancelled_calls_are_not_made_and_the_pool_goes_on() -> None:
    """On Dask, shutdown(cancel_futures=True) cancels the executor's calls no worker began,
    and they are never made (the cluster holds them, and Dask cancels a task
    asynchronously: the workers are asked); the call running goes on, and so do the
    pool's other calls."""
    pytest.importorskip("distributed", reason="the Dask extra (manyhands[dask])")
    done = script(
        """
        import os, tempfile, time, manyhands
        from distributed import Client, LocalCluster

        def call(folder, i):
            open(os.path.join(folder, f"made-{i}"), "w").close()
            for _ in range(1000):  # (until the test says go)
                if os.path.exists(os.path.join(folder, "go")):
                    break
                time.sleep(0.01)

        def idle(client):  # no worker runs a task, nor has one to begin
            states = client.run(
                lambda dask_worker: {task.state for task in dask_worker.state.tasks.values()}
            )
            return all(held <= {"memory"} for held in states.values())

        if __name__ == "__main__":
            folder = tempfile.mkdtemp()
            cluster = LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
            )
            client = Client(cluster)
            pool = manyhands.Pool(backend=client)
            executor = pool.executor()
            futures = [executor.submit(call, folder, i) for i in range(6)]
            while not os.listdir(folder):
                time.sleep(0.01)
            executor.shutdown(wait=False, cancel_futures=True)
            print("cancelled", sum(future.cancelled() for future in futures))
            print("running", [i for i, future in enumerate(futures) if future.running()])
            open(os.path.join(folder, "go"), "w").close()
            executor.shutdown(wait=True)
            pool.submit(call, folder, "last").result()
            while not idle(client):
                time.sleep(0.01)
            print("made", sorted(name for name in os.listdir(folder) if name.startswith("made")))
            pool.shutdown()
            client.close()
            cluster.close()
        """,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "cancelled 5" in done.stdout
    assert "running [0]" in done.stdout
    assert "made ['made-0', 'made-last']" in done.stdout, done.stdout


def test_a_call_to_a_loop_closed_just_after_the_check_raises_loop_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from manyhands._backends._async_loop import LoopGone, LoopThread

    async def nothing() -> None:
        pass

    thread = LoopThread()
    thread.start()
    thread.stop()  # (its loop is closed now)
    # Another thread closed the loop between the check that it answers and the call:
    monkeypatch.setattr(thread, "answers", lambda: True)
    with pytest.raises(LoopGone, match="it was stopped"):
        thread.call(nothing())


def test_the_stdlib_internals_a_cancelled_running_call_relies_on_still_behave() -> None:
    # (cancel_running settles a running Future as cancelled through the stdlib's
    # Future internals, and the exit hook is threading._register_atexit: if either
    # changes, this says so before users do.)
    from manyhands._executor_future import cancel_running

    assert callable(getattr(threading, "_register_atexit", None))
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    told: list[bool] = []
    future.add_done_callback(lambda done: told.append(done.cancelled()))
    assert future.set_running_or_notify_cancel()
    waiting = threading.Thread(target=concurrent.futures.wait, args=([future],))
    waiting.start()
    cancel_running(future)
    waiting.join(BOUND)
    assert not waiting.is_alive()  # (wait() saw it done)
    assert future.cancelled() and future.done() and told == [True]
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=0)
