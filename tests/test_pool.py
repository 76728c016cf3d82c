"""manyhands.Pool: workers shared by several runs, priorities, the Executor face, clean stops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._batch import Task
from manyhands._lanes import STARVATION, Lanes

from .conftest import finish, os_thread_count, start_python, wait_for_threads

# -- the lanes: which run a free worker serves next -----------------------------


def test_lanes_serve_the_highest_priority_first_and_equal_ones_by_their_share() -> None:
    lanes: Lanes[str] = Lanes(clock=lambda: 0.0)
    low, a, b = Task(abs, print, priority=-1), Task(abs, print), Task(abs, print)
    for n in range(3):
        lanes.put(f"low{n}", low)
    for n in range(4):
        lanes.put(f"a{n}", a)
        lanes.put(f"b{n}", b)
    order = [lanes.take() for _ in range(11)]
    assert order[:8] == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]  # turn about
    assert order[8:] == ["low0", "low1", "low2"]  # only once the others are empty
    assert lanes.take() is None


def test_lanes_share_time_not_items_between_runs_of_equal_priority() -> None:
    lanes: Lanes[int] = Lanes(size=lambda items: items, clock=lambda: 0.0)
    slow, fast = Task(abs, print), Task(abs, print)
    slow.cost, fast.cost = 1.0, 0.001  # seconds per item, as measured by each run
    for _ in range(50):
        lanes.put(1, slow)
        lanes.put(1000, fast)  # a batch of 1,000 items of 1 ms: a second of work too
    taken = Counter()
    for _ in range(40):
        work = lanes.take()
        taken["slow" if work == 1 else "fast"] += 1
    assert taken == {"slow": 20, "fast": 20}


def test_a_late_run_starts_level_with_its_peers_without_a_catch_up_burst() -> None:
    lanes: Lanes[str] = Lanes(clock=lambda: 0.0)
    early, late = Task(abs, print), Task(abs, print)
    for n in range(100):
        lanes.put(f"early{n}", early)
    for _ in range(50):
        lanes.take()
    for n in range(10):
        lanes.put(f"late{n}", late)
    order = [lanes.take() for _ in range(6)]
    assert sorted(order) == ["early50", "early51", "early52", "late0", "late1", "late2"]
    assert order[0::2] != order[1::2] and len({o[:4] for o in order[0::2]}) == 1  # turn about


def test_a_low_priority_lane_is_served_after_waiting_the_starvation_time() -> None:
    now = [0.0]
    lanes: Lanes[str] = Lanes(clock=lambda: now[0])
    low, high = Task(abs, print, priority=0), Task(abs, print, priority=9)
    lanes.put("low", low)
    for n in range(1000):
        lanes.put(f"high{n}", high)
    served = []
    while (work := lanes.take()) != "low":
        served.append(work)
        now[0] += 0.01  # a worker comes free every 10 ms
    assert len(served) == int(STARVATION / 0.01)  # held back for STARVATION, then served


# -- runs sharing a pool ----------------------------------------------------------


def test_runs_from_several_threads_each_get_exactly_their_own_outcomes(
    no_thread_left: None,
) -> None:
    results: dict[str, Any] = {}

    def loop(name: str, pool: manyhands.Pool) -> None:
        def fn(x: int) -> str:
            time.sleep(0.0005)
            if x % 50 == 7:
                raise ValueError(f"{name} {x}")
            return f"{name}:{x}"

        outs = list(pool.map(fn, range(500), ordered=True, retry=0))
        results[name] = (outs, outs and pool.run(fn, range(100)))

    with manyhands.Pool(workers=8) as pool:
        threads = [threading.Thread(target=loop, args=(n, pool)) for n in "abcd"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for name, (outs, report) in results.items():
        assert [o.item for o in outs] == list(range(500))
        assert all(o.value == f"{name}:{o.item}" for o in outs if o.ok)
        failed = [o for o in outs if not o.ok]
        assert [o.item for o in failed] == [x for x in range(500) if x % 50 == 7]
        assert all(o.error is not None and name in o.error.message for o in failed)
        assert (report.succeeded, report.failed) == (98, 2)


def test_one_thread_may_interleave_several_map_iterators() -> None:
    with manyhands.Pool(workers=4) as pool:
        doubles = pool.map(lambda x: 2 * x, range(300), ordered=True)
        squares = pool.map(lambda x: x * x, range(300), ordered=True)
        pairs = [(a.value, b.value) for a, b in zip(doubles, squares, strict=True)]
    assert pairs == [(2 * x, x * x) for x in range(300)]


def test_a_break_or_an_error_in_one_run_does_not_disturb_another() -> None:
    release = threading.Event()

    def slow(x: int) -> int:
        release.wait(5)
        return x

    with manyhands.Pool(workers=4) as pool:
        other: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: other.setdefault("report", pool.run(slow, range(40)))
        )
        thread.start()
        for _ in pool.map(abs, range(10_000)):
            break
        with pytest.raises(RuntimeError, match="consumer"):
            for _ in pool.map(abs, range(10_000)):
                raise RuntimeError("consumer broke")
        release.set()
        thread.join(30)
    assert other["report"].succeeded == 40


def test_the_urgent_run_gets_the_next_free_worker(no_thread_left: None) -> None:
    started: list[str] = []
    gate = threading.Semaphore(0)

    def bulk(x: int) -> None:
        started.append(f"bulk{x}")
        gate.acquire()

    def urgent(x: int) -> None:
        started.append(f"urgent{x}")

    values: list[bool] = []
    with manyhands.Pool(workers=2) as pool:
        lanes = pool._backend._lanes  # type: ignore[attr-defined]  # (to see what waits)
        background = threading.Thread(
            target=pool.run, args=(bulk, range(20)), kwargs={"batch_size": 1}, daemon=True
        )
        front = threading.Thread(
            target=lambda: values.extend(
                out.ok for out in pool.map(urgent, range(3), priority=5, batch_size=3)
            )
        )
        try:
            background.start()
            gate.release()
            gate.release()  # two bulk calls end: the bulk run then queues batches too
            deadline = time.monotonic() + 10
            while len(started) < 4 and time.monotonic() < deadline:
                time.sleep(0.001)
            front.start()
            while len(lanes) < 2 and time.monotonic() < deadline:  # both runs have work queued
                time.sleep(0.001)
            assert len(lanes) == 2, "the bulk run queued nothing: the test shows nothing"
            gate.release()  # one worker comes free: it must take urgent work, not bulk
            front.join(10)
        finally:
            for _ in range(40):
                gate.release()
            background.join(30)
    assert values == [True] * 3
    assert all(name.startswith("bulk") for name in started[:4])
    assert started[4:7] == ["urgent0", "urgent1", "urgent2"]


def test_pool_level_options_are_refused_with_where_they_go() -> None:
    with manyhands.Pool(workers=2) as pool:
        for name in ("workers", "backend", "start_method", "initializer", "initargs", "spare"):
            with pytest.raises(TypeError, match=rf"{name}=.*manyhands\.Pool\({name}="):
                pool.run(abs, [1], **{name: None})
        with pytest.raises(TypeError, match=r"Pool\(spare=\.\.\.\)$"):  # (nothing else takes it)
            pool.run(abs, [1], spare=2)
        with pytest.raises(TypeError, match="priority must be an int"):
            pool.map(abs, [1], priority="high")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="did you mean 'retry'"):
            pool.run(abs, [1], retyr=3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="coroutine functions need"):

            async def afn(x: int) -> int:
                return x

            pool.run(afn, [1])
    with pytest.raises(ValueError, match="backend='fibers'"):
        manyhands.Pool(backend="fibers")


def test_a_blocking_run_from_an_async_pools_call_says_to_use_the_pools_amap() -> None:
    # (manyhands.arun/amap would run on workers of their own, outside the pool)
    with manyhands.Pool(workers=2, backend="async") as pool:

        async def inner(x: int) -> int:
            return x

        async def outer(x: int) -> str:
            try:
                pool.run(inner, [x])
            except RuntimeError as exc:
                return str(exc)
            return "ran"

        (said,) = [out.value for out in pool.map(outer, [1])]
    assert said.startswith("pool.run() with a coroutine function was called from a running")
    assert "pool.amap(fn, items)" in said and "manyhands.arun" not in said
    with pytest.raises(ValueError, match="workers must be >= 1"):
        manyhands.Pool(workers=0)


def test_each_run_keeps_its_own_journal(tmp_path: Path) -> None:
    with manyhands.Pool(workers=4) as pool:
        a = pool.run(abs, range(100), journal=tmp_path / "a.db")
        b = pool.run(abs, range(50), journal=tmp_path / "b.db")
        again = pool.run(abs, range(100), journal=tmp_path / "a.db")
        with pytest.raises(manyhands.JournalError, match="in use"):
            outs = pool.map(abs, range(10), journal=tmp_path / "b.db")
            with pool.map(abs, range(10), journal=tmp_path / "b.db") as first:
                next(iter(first))
                next(iter(outs))
    assert (a.succeeded, b.succeeded, again.skipped) == (100, 50, 100)


def test_a_run_started_from_a_worker_of_the_same_pool_runs_inline() -> None:
    with manyhands.Pool(workers=1) as pool:

        def outer(x: int) -> int:
            inner = pool.run(lambda y: y * 10, range(x))  # one worker: it must not wait
            return inner.succeeded

        report = pool.run(outer, [3, 4, 5])
        nested = list(pool.map(lambda x: [o.value for o in pool.map(abs, [-x])], [1, 2]))
    assert report.succeeded == 3 and report.failed == 0
    assert sorted(o.value for o in nested) == [[1], [2]]


def test_a_shut_down_pool_refuses_new_work() -> None:
    pool = manyhands.Pool(workers=2)
    assert pool.run(abs, [1, -2]).succeeded == 2
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(abs, [1])
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(abs, 1)
    pool.shutdown()  # idempotent


# -- the Executor face --------------------------------------------------------------


def test_submit_returns_stdlib_futures_with_results_and_exceptions() -> None:
    with manyhands.Pool(workers=4) as pool:
        ok = pool.submit(pow, 2, 10)
        bad = pool.submit(int, "x")
        kw = pool.submit(sorted, [3, 1, 2], reverse=True)
        assert isinstance(ok, concurrent.futures.Future)
        assert ok.result(10) == 1024 and kw.result(10) == [3, 2, 1]
        assert isinstance(bad.exception(10), ValueError)
        results = list(pool.executor().map(abs, [-1, -2, -3]))
    assert results == [1, 2, 3]


def test_submit_refuses_a_function_the_pools_workers_cannot_call_as_they_call() -> None:
    async def afn(x: int) -> int:
        return x

    made: list[int] = []

    def side(x: int) -> int:
        made.append(x)
        return x

    with manyhands.Pool(workers=2, backend="async") as pool:
        # Refused before it is made: made, it would have run on (and blocked) the loop.
        for plain in (side, lambda x: afn(x)):
            with pytest.raises(TypeError, match=r"regular function, which a Pool of backend="):
                pool.submit(plain, -1)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            with pytest.raises(TypeError, match="side is a regular function"):
                await loop.run_in_executor(pool.executor(), side, 2)

        asyncio.run(main())
        assert made == []
        assert pool.submit(afn, 3).result(10) == 3
        assert pool.submit(functools.partial(afn, 4)).result(10) == 4
    with manyhands.Pool(workers=2) as pool, pytest.raises(TypeError, match="afn is a coroutine"):
        pool.submit(afn, 3)


def test_futures_cancelled_before_they_start_never_run() -> None:
    ran: list[int] = []
    release = threading.Event()

    def block(x: int) -> int:
        ran.append(x)
        release.wait(10)
        return x

    with manyhands.Pool(workers=1) as pool:
        first = pool.submit(block, 1)
        queued = [pool.submit(block, n) for n in range(2, 6)]
        time.sleep(0.05)
        assert queued[0].cancel() and queued[0].cancelled()
        release.set()
        assert first.result(10) == 1 and [f.result(10) for f in queued[1:]] == [3, 4, 5]
    assert ran == [1, 3, 4, 5]


def test_shutdown_with_cancel_futures_cancels_what_has_not_started() -> None:
    release = threading.Event()
    pool = manyhands.Pool(workers=1)
    running = pool.submit(release.wait, 10)
    waiting = [pool.submit(abs, -n) for n in range(5)]
    time.sleep(0.05)
    threading.Timer(0.2, release.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(1) is True
    assert all(f.cancelled() for f in waiting)


def test_ctrl_c_in_a_with_block_does_not_wait_for_other_threads_runs() -> None:
    before = os_thread_count()
    release = threading.Event()
    guard = threading.Timer(10, release.set)  # (the old code waited for this)
    guard.start()
    results: list[manyhands.Report] = []
    started = threading.Event()

    def held(seconds: float) -> bool:
        started.set()
        return release.wait(seconds)

    try:
        with pytest.raises(KeyboardInterrupt), manyhands.Pool(workers=2) as pool:
            other = threading.Thread(
                target=lambda: results.append(pool.run(held, [10] * 4)), daemon=True
            )
            other.start()
            assert started.wait(10)  # (the other run is under way)
            raise KeyboardInterrupt
        assert not results, "the with block waited for the other thread's run"
    finally:
        release.set()
        guard.cancel()
    other.join(10)
    assert results[0].succeeded == 4  # it went on, and the pool stopped once it was done
    guard.join()
    assert wait_for_threads(before) <= before


def test_run_in_executor_uses_the_pools_workers() -> None:
    with manyhands.Pool(workers=2) as pool:

        async def main() -> list[str]:
            loop = asyncio.get_running_loop()
            calls = [loop.run_in_executor(pool.executor(), _thread_name) for _ in range(4)]
            return await asyncio.gather(*calls)

        names = asyncio.run(main())
    assert all(name != threading.current_thread().name for name in names)


def _thread_name() -> str:
    return threading.current_thread().name


# -- asyncio pools ------------------------------------------------------------------


def test_an_async_pool_serves_runs_from_sync_and_async_code(no_thread_left: None) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0.001)
        if x == 13:
            raise ValueError(x)
        return 2 * x

    with manyhands.Pool(workers=50, backend="async") as pool:
        report = pool.run(double, range(200))

        async def consume() -> list[int]:
            async with pool.amap(double, range(20), ordered=True) as outs:
                return [out.value async for out in outs]

        values = asyncio.run(consume())
        future = pool.submit(double, 21)
        assert future.result(10) == 42
    assert (report.succeeded, report.failed) == (199, 1)
    assert values == [2 * x if x != 13 else None for x in range(20)]


def test_a_threads_pool_can_feed_an_async_consumer() -> None:
    with manyhands.Pool(workers=4) as pool:

        async def consume() -> list[int]:
            return sorted([out.value async for out in pool.amap(abs, range(-50, 0))])

        assert asyncio.run(consume()) == list(range(1, 51))


# -- nothing left behind ----------------------------------------------------------------


def test_interpreter_exit_with_an_open_pool_does_not_hang() -> None:
    code = textwrap.dedent(
        """
        import time, manyhands
        pool = manyhands.Pool(workers=8)
        print(pool.run(time.sleep, [0.001] * 50).succeeded)
        apool = manyhands.Pool(workers=8, backend="async")
        async def nap(x):
            return x
        print(apool.run(nap, range(10)).succeeded)
        pool.submit(time.sleep, 0.2)  # still running at exit
        """
    )
    proc = start_python(code)
    out, err = finish(proc, timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["50", "10"]


def test_no_worker_outlives_the_pool(no_thread_left: None) -> None:
    with manyhands.Pool(workers=16) as pool:
        pool.run(time.sleep, [0.001] * 100)
        pool.submit(time.sleep, 0.01).result()
    assert wait_for_threads(0, timeout=0) >= 0  # (the fixture checks the count)


@pytest.mark.parametrize("method", ["run", "map", "amap"])
def test_the_pools_methods_list_every_run_option_and_not_the_pools_own(method: str) -> None:
    import inspect
    from dataclasses import fields

    from manyhands._api import POOL_OPTIONS
    from manyhands._options import Options

    params = list(inspect.signature(getattr(manyhands.Pool, method)).parameters.values())
    assert [p.name for p in params[:4]] == ["self", "fn", "items", "priority"]
    expected = [
        (f.name, f.default)
        for f in fields(Options)
        if f.name not in POOL_OPTIONS and not (method == "run" and f.name == "ordered")
    ]
    assert [(p.name, p.default) for p in params[4:]] == expected
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:])


def test_spare_threads_run_urgent_work_while_every_worker_is_busy() -> None:
    release = threading.Event()
    ran_on: dict[str, set[str]] = {"bulk": set(), "urgent": set()}

    def bulk(x: int) -> int:
        ran_on["bulk"].add(threading.current_thread().name)
        release.wait(10)
        return x

    def urgent(x: int) -> int:
        ran_on["urgent"].add(threading.current_thread().name)
        return x

    with manyhands.Pool(workers=2, spare=1) as pool:
        background = threading.Thread(target=pool.run, args=(bulk, range(6)), daemon=True)
        background.start()
        deadline = time.monotonic() + 10
        while len(ran_on["bulk"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        try:
            # Both workers are held by the bulk: the urgent run still completes.
            values = sorted(o.value for o in pool.map(urgent, range(5), priority=1))
            assert values == [0, 1, 2, 3, 4]
            assert not release.is_set()
            equal = pool.submit(abs, -3)  # priority 0: never on a spare thread
            time.sleep(0.05)
            assert not equal.done()
        finally:
            release.set()
            background.join(30)
        assert equal.result(10) == 3
    assert len(ran_on["urgent"]) == 1 and not ran_on["urgent"] & ran_on["bulk"]


def test_spare_is_validated() -> None:
    with pytest.raises(ValueError, match="spare= applies to backend='threads'"):
        manyhands.Pool(backend="async", spare=1)
    with pytest.raises(ValueError, match="spare must be >= 0"):
        manyhands.Pool(spare=-1)


# -- a pool of worker processes ------------------------------------------------------


def square_where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def negate_where(x: int) -> tuple[int, int]:
    return -x, os.getpid()


def crash_on_13(x: int) -> int:
    if x == 13:
        os._exit(7)
    return x


def test_a_process_pool_serves_runs_of_different_functions_at_once_and_in_turn() -> None:
    from .test_processes import children_after

    with manyhands.Pool(2, backend="processes") as pool:
        reports: dict[str, Any] = {}
        squares = threading.Thread(
            target=lambda: reports.setdefault("squares", list(pool.map(square_where, range(300))))
        )
        squares.start()
        negated = list(pool.map(negate_where, range(300)))
        squares.join()
        later = pool.run(abs, range(-50, 0))  # a third function, after the others
        assert later.succeeded == 50
    assert sorted(o.value[0] for o in reports["squares"]) == [x * x for x in range(300)]
    assert sorted(o.value[0] for o in negated) == sorted(-x for x in range(300))
    pids = {o.value[1] for o in [*reports["squares"], *negated]}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # the same two workers for both
    assert children_after() == []  # the with block stopped them


def test_a_process_pool_loads_many_functions_in_turn_and_keeps_a_bounded_number() -> None:
    from manyhands._backends._process_dispatcher import FUNCTIONS_KEPT

    with manyhands.Pool(1, backend="processes") as pool:
        for k in range(FUNCTIONS_KEPT + 4):  # more functions than a worker keeps
            values = [out.value for out in pool.map(lambda x, k=k: x + k, range(5), ordered=True)]
            assert values == [x + k for x in range(5)], k
        again = [out.value for out in pool.map(lambda x: x * 10, range(3), ordered=True)]
        assert again == [0, 10, 20]
        workers = pool._backend._pool  # type: ignore[attr-defined]
        assert workers and all(len(w.functions) == FUNCTIONS_KEPT for w in workers)


def test_a_crash_in_one_run_of_a_process_pool_costs_only_its_item() -> None:
    with manyhands.Pool(2, backend="processes") as pool:
        crashing: dict[str, manyhands.Report] = {}
        thread = threading.Thread(
            target=lambda: crashing.setdefault("r", pool.run(crash_on_13, range(100)))
        )
        thread.start()
        calm = pool.run(square_where, range(300))
        thread.join()
        after = pool.run(square_where, range(10))  # the pool goes on with a new worker
    report = crashing["r"]
    assert report.succeeded == 99 and [f.item for f in report.failures] == [13]
    assert report.failures[0].error_type == "manyhands.WorkerCrashed"
    assert calm.succeeded == 300 and calm.failed == 0
    assert after.succeeded == 10


def nap_20ms(x: int) -> int:
    time.sleep(0.02)
    return x


def test_a_batch_submitted_while_others_wait_does_not_wake_the_dispatcher() -> None:
    """Work waiting in the inbox means every worker had some when the dispatcher
    last looked, and the next answer makes it look again: only a batch that finds
    the inbox empty wakes it (a byte on a socket pair, a context switch)."""
    from manyhands._backends._processes import ProcessBackend
    from manyhands._batch import Batch, Task

    backend = ProcessBackend(2)
    woken: list[None] = []
    backend._wake = lambda: woken.append(None)  # type: ignore[method-assign]
    task = Task(abs, lambda batch: None)
    backend.submit(Batch(0, [1], task))
    assert len(woken) == 1  # the inbox was empty: the dispatcher may be asleep
    backend._woken = False  # it looked, and left the batch waiting: every worker was full
    backend.submit(Batch(1, [2], task))
    assert len(woken) == 1  # work waits already: the next answer makes it look again
    backend._inbox.clear()  # (it looked again, and sent both)
    backend.submit(Batch(2, [3], task))
    assert len(woken) == 2


def test_a_runs_own_worker_processes_have_a_batch_waiting_beyond_those_sent_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two batches are sent ahead to each worker, and a third waits in the backend, for
    the dispatcher to send as an answer comes in (not after a round trip through the
    run's thread): up to three per worker out at once (two before)."""
    from manyhands._backends._processes import ProcessBackend

    most = [0]
    original = ProcessBackend.submit

    def submit(self: Any, batch: Any) -> None:
        original(self, batch)
        out = len(self._inbox) + sum(len(worker.sent) for worker in self._pool)
        most[0] = max(most[0], out)

    monkeypatch.setattr(ProcessBackend, "submit", submit)
    outcomes = manyhands.map(nap_20ms, range(40), workers=2, backend="processes")
    assert sorted(out.value for out in outcomes) == list(range(40))
    assert most[0] > 2 * 2  # (a batch answered meanwhile may leave it one short of 6)


def sleep_long_on_3(x: int) -> int:
    time.sleep(30 if x == 3 else 0.01)
    return x


def test_a_timeout_in_one_run_of_a_process_pool_kills_only_its_call() -> None:
    with manyhands.Pool(2, backend="processes") as pool:
        other: dict[str, manyhands.Report] = {}
        thread = threading.Thread(
            target=lambda: other.setdefault("r", pool.run(square_where, range(2000)))
        )
        thread.start()
        timed = pool.run(sleep_long_on_3, range(20), timeout=0.5)
        thread.join()
    assert [(f.item, f.error_type) for f in timed.failures] == [(3, "manyhands.Timeout")]
    assert timed.succeeded == 19
    assert other["r"].succeeded == 2000 and other["r"].failed == 0


def test_a_spare_worker_past_the_timeout_is_replaced_by_a_spare(no_thread_left: None) -> None:
    """An urgent run on the spare worker (the others busy): its hung call is abandoned."""
    release, bulk_began = threading.Event(), threading.Event()

    def bulk() -> bool:
        bulk_began.set()
        return release.wait(30)

    try:
        with manyhands.Pool(workers=1, spare=1) as pool:
            held = pool.submit(bulk)
            assert bulk_began.wait(10)
            fn = lambda x: release.wait(30) if x == 0 else x  # noqa: E731
            report = pool.run(fn, range(3), priority=1, timeout=0.2, progress=False)
            release.set()
            assert held.result(timeout=10) is True
    finally:
        release.set()
    assert report.failed == 1 and report.succeeded == 2 and report.abandoned == 1
    assert report.failures[0].item == 0 and "abandoned thread" in report.failures[0].message


def test_a_pool_with_every_worker_held_fails_timed_runs_and_others_wait() -> None:
    """Hung calls hold the pool's one worker: a run with timeout= ends, one without waits."""
    release = threading.Event()
    hang = lambda x: release.wait(30)  # noqa: E731
    try:
        with manyhands.Pool(workers=1) as pool:
            timed = pool.run(hang, range(4), timeout=0.05, progress=False)
            assert not release.is_set(), "the timed run waited for a hung call"
            threading.Timer(0.3, release.set).start()  # (the held worker's call returns)
            patient = pool.run(abs, range(-4, 0), progress=False)
    finally:
        release.set()
    # One worker: the first hung call is abandoned and replaced, the second holds the
    # worker, and the two items left cannot start: they end at once, without a call.
    assert timed.failed == 2 and timed.not_run == 2 and timed.abandoned == 1
    assert sorted(f.attempts for f in timed.failures) == [0, 0, 1, 1]
    assert all(f.message.startswith("not started") for f in timed.failures if not f.attempts)
    assert patient.succeeded == 4 and patient.failed == 0
