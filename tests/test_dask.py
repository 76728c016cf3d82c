"""backend="dask": a run on a real Dask LocalCluster (2 worker processes, loopback only).

The cluster is started once for the module; the shared behaviour tests
(``hands``) run on it too, imported below. Any concurrent.futures.Executor
as a backend is tested here as well.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

import manyhands

from .conftest import Hands, python_subprocess_env

distributed = pytest.importorskip(
    "distributed", reason="the Dask tests need distributed: pip install 'manyhands[dask]'"
)


def two_workers(threads: int) -> Any:
    """A LocalCluster of 2 worker processes of ``threads`` threads each, on loopback, quiet."""
    return distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.CRITICAL,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Client on a LocalCluster of 2 worker processes, 1 thread each."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = two_workers(threads=1)
    dask_client = distributed.Client(cluster, set_as_default=False)
    manyhands.run(abs, range(10), backend=dask_client)  # (Dask's callback thread starts once)
    yield dask_client
    dask_client.close()
    cluster.close()


def tasks_of_manyhands(client: Any, settle: float = 5.0) -> list[str]:
    """The scheduler's tasks of manyhands, once there are none (or ``settle`` seconds passed)."""
    deadline = time.monotonic() + settle
    while True:
        # (A Dask Future is held by the traceback of an error it raised, which an
        # earlier test's Future may keep in a cycle until the garbage is collected.)
        gc.collect()
        keys = client.run_on_scheduler(
            lambda dask_scheduler: [str(key) for key in dask_scheduler.tasks]
        )
        left = [key for key in keys if key.startswith("manyhands-")]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class DaskHands(Hands):
    """The shared behaviour tests on the Dask cluster.

    ``fn`` runs in other processes, as with processes, so the tests that
    skip processes (they count calls under a lock of this process) skip here.
    """

    def __init__(self, dask_client: Any) -> None:
        super().__init__("processes")
        self.client = dask_client

    def run(self, fn: Any, items: Any, **options: Any) -> Any:
        return manyhands.run(fn, items, backend=self.client, **options)

    def map(self, fn: Any, items: Any, **options: Any) -> Any:
        return manyhands.map(fn, items, backend=self.client, **options)


@pytest.fixture
def hands(client: Any) -> Hands:
    return DaskHands(client)


from .test_failures import (  # noqa: E402 - the shared tests, run here on Dask
    test_builtin_fn_failure_has_a_traceback,
    test_every_failure_is_in_the_map_stream_beyond_keep_failures,
    test_failures_are_recorded_and_the_run_continues,
    test_raise_for_failures_groups_them,
    test_report_keeps_a_bounded_number_of_failures_and_counts_all,
    test_run_report_counts_failures,
    test_traceback_shows_the_users_code_not_the_engine,
)
from .test_input import (  # noqa: E402
    test_endless_generator_with_early_exit,
    test_items_are_read_lazily,
    test_never_sizes_the_iterable,
    test_ordered_yields_input_order_despite_uneven_latency,
    test_run_raises_input_error_with_the_report_of_what_ran,
    test_unordered_delivers_each_item_exactly_once,
)
from .test_lifecycle import (  # noqa: E402
    test_a_finished_run_leaves_no_thread,
    test_close_and_context_manager_stop_the_workers,
    test_exception_in_the_loop_body_stops_the_workers,
)
from .test_retries import (  # noqa: E402
    test_on_exception_still_retries_every_error,
    test_programming_errors_are_not_retried_by_default,
)

__all__ = [
    "test_a_finished_run_leaves_no_thread",
    "test_builtin_fn_failure_has_a_traceback",
    "test_close_and_context_manager_stop_the_workers",
    "test_endless_generator_with_early_exit",
    "test_every_failure_is_in_the_map_stream_beyond_keep_failures",
    "test_exception_in_the_loop_body_stops_the_workers",
    "test_failures_are_recorded_and_the_run_continues",
    "test_items_are_read_lazily",
    "test_never_sizes_the_iterable",
    "test_on_exception_still_retries_every_error",
    "test_ordered_yields_input_order_despite_uneven_latency",
    "test_programming_errors_are_not_retried_by_default",
    "test_raise_for_failures_groups_them",
    "test_report_keeps_a_bounded_number_of_failures_and_counts_all",
    "test_run_raises_input_error_with_the_report_of_what_ran",
    "test_run_report_counts_failures",
    "test_traceback_shows_the_users_code_not_the_engine",
    "test_unordered_delivers_each_item_exactly_once",
]


def _seven_fails(x: int) -> int:
    if x % 100 == 7:
        raise ValueError(f"bad item {x}")
    return x * 2


def test_failures_are_values_with_type_message_and_remote_traceback(client: Any) -> None:
    outcomes = {out.item: out for out in manyhands.map(_seven_fails, range(1000), backend=client)}
    assert len(outcomes) == 1000
    failed = sorted(item for item, out in outcomes.items() if not out.ok)
    assert failed == list(range(7, 1000, 100))
    failure = outcomes[7].error
    assert failure is not None
    assert failure.error_type == "builtins.ValueError"
    assert failure.message == "bad item 7"
    assert "_seven_fails" in failure.traceback
    assert all(out.value == 2 * item for item, out in outcomes.items() if out.ok)
    assert tasks_of_manyhands(client) == []


def _dies_on(x: int) -> int:
    if x == 13:
        os._exit(3)  # the worker process dies
    return x + 1


def test_a_function_that_cannot_be_loaded_on_the_workers_fails_its_items_saying_so(
    client: Any,
) -> None:
    """Before, they failed with the loading's error alone, as if fn's call had raised it."""
    from .test_processes_loading import REBUILD, OnlyHere

    report = manyhands.run(OnlyHere(), range(3), backend=client)
    assert report.failed == 3
    (message,) = {failure.message for failure in report.failures}
    assert message.startswith(f"fn could not be loaded in a Dask worker process: {REBUILD} (")
    assert message.endswith("; or use backend='threads'); this item did not run")


class _BigOnlyHere:
    """A callable of ~20 KiB pickled (sent to the cluster as a task of its own, not with
    each batch) whose pickle calls what raises in a worker process."""

    def __init__(self) -> None:
        self.data = os.urandom(20_000)

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _big_rebuilt_here, (self.data,)


def _big_rebuilt_here(data: bytes) -> _BigOnlyHere:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("a _BigOnlyHere cannot be rebuilt in a worker process")
    return _BigOnlyHere()


def test_a_large_function_that_cannot_be_loaded_on_the_workers_fails_its_items_saying_so(
    client: Any,
) -> None:
    """Before: the loading's bare error (a task the batches needed had failed)."""
    report = manyhands.run(_BigOnlyHere(), range(3), backend=client)
    assert report.failed == 3
    (message,) = {failure.message for failure in report.failures}
    assert message.startswith(
        "fn could not be loaded in a Dask worker process: builtins.RuntimeError: a "
        "_BigOnlyHere cannot be rebuilt in a worker process ("
    ), message
    assert message.endswith("; or use backend='threads'); this item did not run")
    assert manyhands.run(_seven_fails, range(10), backend=client).succeeded == 9  # (goes on)


def test_a_killed_worker_costs_only_the_item_that_killed_it(client: Any) -> None:
    outcomes = {out.item: out for out in manyhands.map(_dies_on, range(200), backend=client)}
    assert len(outcomes) == 200
    assert [item for item, out in outcomes.items() if not out.ok] == [13]
    failure = outcomes[13].error
    assert failure is not None and failure.error_type == "manyhands.WorkerCrashed"
    assert all(out.value == item + 1 for item, out in outcomes.items() if item != 13)
    assert all(out.attempts == 1 for out in outcomes.values())  # nobody else was charged
    client.wait_for_workers(2, timeout=30)


def test_an_item_that_kills_again_and_again_fails_after_its_retries(client: Any) -> None:
    report = manyhands.run(
        _dies_on, [12, 13], backend=client, retry=manyhands.Retry(2, on=Exception, backoff=0)
    )
    assert (report.succeeded, report.failed) == (1, 1)
    (failure,) = report.failures
    assert (failure.item, failure.error_type, failure.attempts) == (
        13,
        "manyhands.WorkerCrashed",
        3,
    )
    client.wait_for_workers(2, timeout=30)


def _slow(x: int) -> int:
    time.sleep(0.05)
    return x


def test_break_cancels_the_runs_tasks_on_the_cluster(client: Any) -> None:
    for seen, _out in enumerate(
        manyhands.map(_slow, range(100_000), backend=client, batch_size=1), 1
    ):
        if seen == 5:
            break
    assert tasks_of_manyhands(client) == []


def test_ctrl_c_in_the_loop_cancels_the_runs_tasks(client: Any) -> None:
    with pytest.raises(KeyboardInterrupt):
        for _out in manyhands.map(_slow, range(100_000), backend=client, batch_size=1):
            raise KeyboardInterrupt
    assert tasks_of_manyhands(client) == []


def test_a_stop_rule_cancels_the_runs_tasks(client: Any) -> None:
    report = manyhands.run(_seven_fails, range(1_000_000), backend=client, stop_after_failures=3)
    assert report.failed >= 3 and report.succeeded < 1_000_000
    assert tasks_of_manyhands(client) == []


class Sent:
    """The tasks a run submits through ``client``, counted per call to ``client.map``."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        submit_many = client.map

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(len(kwargs["key"]))
            return submit_many(*args, **kwargs)

        monkeypatch.setattr(client, "map", counted)


def test_a_submission_the_cluster_refuses_fails_its_items_and_the_run_ends(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the scheduler went away")

    monkeypatch.setattr(client, "map", refused)
    report = manyhands.run(abs, range(10), backend=client)
    assert (report.succeeded, report.failed) == (0, 10)
    assert {failure.error_type for failure in report.failures} == {"manyhands.WorkerCrashed"}
    assert "the scheduler went away" in report.failures[0].message


def _naps(x: int) -> int:
    time.sleep(0.002)
    return x


def test_a_known_length_that_fits_a_round_goes_out_at_once_as_two_batches_per_thread(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two on workers of one thread, so that a thread whose first batch was quick takes
    # over a waiting one (one per thread ran items sorted by cost at half the speed).
    sent = Sent(client, monkeypatch)
    report = manyhands.run(_naps, range(40), backend=client)
    assert report.succeeded == 40
    assert sum(sent.calls) == 4  # the cluster's 2 threads, 2 each


def test_workers_of_several_threads_get_one_batch_per_thread() -> None:
    # Their threads share their batches (_remote_calls): no thread waits for a second
    # task to start, and a quick one calls the others' items.
    from manyhands._backends._dask import DaskBackend

    class Threads:
        def __init__(self, *threads: int) -> None:
            self.threads = threads

        def nthreads(self) -> dict[str, int]:
            return {f"tcp://127.0.0.1:{port}": n for port, n in enumerate(self.threads)}

    assert DaskBackend(Threads(50, 50)).sizing["spread"] == 1
    assert DaskBackend(Threads(1, 1)).sizing["spread"] == 2
    assert DaskBackend(Threads(50, 1)).sizing["spread"] == 2  # (a thread alone shares not)
    assert DaskBackend().sizing["spread"] == 2  # (the LocalCluster it starts: a thread each)


def test_a_part_none_of_whose_items_was_running_is_never_charged_for_a_death(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The word "none running" (the task between items, or its thread calling other
    # batches' items) sends the part again uncharged, however often its worker dies;
    # a part with no word at all is split in two at its second death, and an item
    # fails only as the one item of a part that died a third time with no word.
    from manyhands._backends import _dask
    from manyhands._backends._dask_parts import Part
    from manyhands._batch import Batch, Task

    backend = _dask.DaskBackend()
    resent: list[Any] = []
    monkeypatch.setattr(backend, "_note_death", lambda worker: None)
    monkeypatch.setattr(backend, "_resend", lambda part, again: resent.extend(again))
    monkeypatch.setattr(backend, "_part_done", lambda batch: None)
    batch = Batch(0, [10, 11, 12], Task(abs, lambda batch: None))
    for word, indices, expected in (
        ([], [0, 1, 2], [[0, 1, 2]]),
        (None, [0, 1, 2], [[0], [1, 2]]),
        (None, [1], []),
    ):
        resent.clear()
        batch.errors = {}
        monkeypatch.setattr(backend, "_progress", lambda key, nanny, word=word: word)
        backend._crashed(Part(batch, indices, b"", deaths=2), RuntimeError())
        assert sorted(batch.errors or {}) == ([] if expected or word == [] else indices)
        assert [part.indices for part in resent] == expected


def _dies_on_7_and_50(item: tuple[int, str]) -> int:
    x, calls = item
    with open(calls, "a") as file:
        file.write(f"{x}\n")
    if x in (7, 50):
        os._exit(1)  # the worker process dies
    time.sleep(0.01)
    return x


def test_only_the_items_that_killed_a_worker_fail_and_each_ran_once(
    client: Any, tmp_path: Path
) -> None:
    # Two workers dying close together: the scheduler knows a dead worker's nanny
    # again only once it restarted its worker. Each killer was known as the item
    # running (not a part sent again whole, killer included, until its first item
    # was blamed), and the note counts worker deaths, not the tasks they took.
    calls = tmp_path / "calls"
    report = manyhands.run(_dies_on_7_and_50, [(x, str(calls)) for x in range(80)], backend=client)
    assert sorted(failure.item[0] for failure in report.failures) == [7, 50]
    called = calls.read_text().split()
    assert (called.count("7"), called.count("50")) == (1, 1)
    assert any("(2 times)" in note for note in report.notes)
    client.wait_for_workers(2, timeout=30)


def test_a_dead_workers_nanny_is_asked_again_until_it_is_back() -> None:
    from manyhands._backends import _dask

    class Restarting:
        """Its nanny answers only at the third time of asking."""

        def __init__(self) -> None:
            self.asked = 0

        def nthreads(self) -> dict[str, int]:
            return {"tcp://10.0.0.2:1": 1}

        def run(self, fn: Any, key: str, nanny: bool) -> dict[str, Any]:
            self.asked += 1
            if self.asked < 3:
                return {}  # (restarting its worker: unknown to the scheduler)
            return {"tcp://10.0.0.2:2": ("tcp://10.0.0.2:9", [4])}

    cluster = Restarting()
    backend = _dask.DaskBackend(cluster)
    assert backend._progress("manyhands-not-here", "tcp://10.0.0.2:9") == [4]
    assert cluster.asked == 3


def test_pool_submit_runs_the_call_on_the_cluster(client: Any) -> None:
    with manyhands.Pool(backend=client) as pool:
        assert pool.submit(_seven_fails, 3).result(timeout=30) == 6
        with pytest.raises(ValueError, match="bad item 7"):
            pool.submit(_seven_fails, 7).result(timeout=30)


def test_a_second_batch_per_thread_waits_on_the_cluster_from_the_start(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,000 items on 2 threads: batches of 250 (two per thread; the window of 1,024
    # allows 256), ~0.5 s each. All four go out before the first comes back: no
    # thread waits for its next batch through the driver and the scheduler.
    sent = Sent(client, monkeypatch)
    with manyhands.map(_naps, range(1000), backend=client, window=1024) as outcomes:
        first = next(outcomes)
        out_before_the_first_came_back = sum(sent.calls)
        assert sum(out.ok for out in outcomes) == 999
    assert first.ok
    assert out_before_the_first_came_back == 4


def _dask_sizer(workers: int = 100) -> Any:
    """The batch sizes of a run on a Dask cluster of ``workers`` threads, on a generator."""
    from manyhands._backends._dask import DaskBackend
    from manyhands._sizing import Sizer

    window = DaskBackend.window_per_worker * workers
    return Sizer(workers, window, batch_size=None, one_by_one=False, **DaskBackend.default_sizing)


def test_a_generators_batches_reach_their_size_after_one_round_trip() -> None:
    # A generator starts at one item per batch; doubling per round trip took
    # ~0.8 s of a cluster's 100 threads to reach batches of 0.35 s.
    sizer = _dask_sizer()
    assert sizer.size == 1
    sizer.completed(items=1, seconds=0.01)
    assert sizer.size >= 16


def test_a_generator_that_delivers_a_batch_in_milliseconds_is_not_held_to_small_batches() -> None:
    # (reading 16 items in 5 ms, a busy driver: a cluster's batch of 0.35 s holds them)
    sizer = _dask_sizer()
    sizer.completed(items=1, seconds=0.01)
    sizer.read(size=16, seconds=0.005)
    assert sizer.size >= 16


def test_a_generator_input_runs_through_with_a_bounded_window(client: Any) -> None:
    def numbers() -> Iterator[int]:
        yield from range(20_000)

    total = sum(
        out.value for out in manyhands.map(_seven_fails, numbers(), backend=client) if out.ok
    )
    assert total == sum(2 * x for x in range(20_000) if x % 100 != 7)


def _sleeps_on_three(x: int) -> int:
    if x == 3:
        time.sleep(3)
    return x


def test_timeout_fails_the_item_and_the_worker_goes_on(client: Any) -> None:
    report = manyhands.run(_sleeps_on_three, range(8), backend=client, timeout=0.5)
    assert (report.succeeded, report.failed) == (7, 1)
    (failure,) = report.failures
    assert (failure.item, failure.error_type) == (3, "manyhands.Timeout")
    assert "abandoned thread" in failure.message


_this_thread = threading.local()


def _calls_in_this_thread(x: int) -> int:
    _this_thread.calls = getattr(_this_thread, "calls", 0) + 1
    if x == 3:
        time.sleep(3)
    return int(_this_thread.calls)


def test_timed_calls_share_a_thread_until_one_overruns(client: Any) -> None:
    # (a thread per call cost ~150 us a call on a busy worker)
    with manyhands.map(
        _calls_in_this_thread, range(40), backend=client, timeout=0.5, ordered=True
    ) as outcomes:
        calls = [out.value for out in outcomes]
    assert calls[3] is None  # it overran: abandoned with its thread
    assert max(calls[:3]) == 3  # items 0-2 in one thread (a batch of 10: 2 per thread)
    assert calls[4] == 1  # the next call in a new thread


def test_the_journal_resumes_a_dask_run(client: Any, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    with manyhands.map(_seven_fails, range(300), backend=client, journal=journal) as outcomes:
        for seen, _out in enumerate(outcomes, 1):
            if seen == 100:
                break
    report = manyhands.run(_seven_fails, range(300), backend=client, journal=journal)
    assert report.skipped == 100
    assert report.succeeded + report.failed == 200


def _logs_its_call(item: tuple[int, str]) -> int:
    x, calls = item
    time.sleep(0.02)
    with open(calls, "a") as file:
        file.write(f"{x}\n")
    return x


def test_ctrl_c_keeps_the_calls_that_finished_and_resume_runs_only_the_rest(
    client: Any, tmp_path: Path
) -> None:
    # The run's tasks stop after their running calls (grace=) and answer with the
    # items they called: the journal keeps those (it kept none: the tasks were
    # cancelled, and a task answers only once all its items were called).
    calls, journal = tmp_path / "calls", tmp_path / "run.db"
    items = [(x, str(calls)) for x in range(200)]
    finished_before: list[int] = []

    def interrupt_after_20_calls() -> None:
        while not calls.exists() or len(calls.read_text().split()) < 20:
            time.sleep(0.01)
        finished_before.append(len(calls.read_text().split()))
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_20_calls, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(_logs_its_call, items, backend=client, journal=journal, grace=30)
    first = len(calls.read_text().split())
    report = manyhands.run(_logs_its_call, items, backend=client, journal=journal)
    assert report.skipped >= finished_before[0]
    assert report.skipped == first  # every call made was kept, and none is made again
    assert report.succeeded == 200 - first
    assert tasks_of_manyhands(client) == []


def _logs_and_fails(item: tuple[int, str]) -> int:
    _logs_its_call(item)
    raise ConnectionError("the API is down")


def test_a_stop_rule_stops_a_list_that_went_out_at_once_and_a_resume_runs_the_rest(
    client: Any, tmp_path: Path
) -> None:
    # 400 items fit one round: they went out at once, and a task answers only once
    # all its items were called, so the rule fired once every item had run. Now a
    # run with a stop rule sends its first batches in parts, the smallest first, and
    # the items its tasks had not called when the rule fired fail as never called:
    # not retried, not in the journal.
    calls, journal = tmp_path / "calls", tmp_path / "run.db"
    items = [(x, str(calls)) for x in range(400)]
    report = manyhands.run(
        _logs_and_fails, items, backend=client, journal=journal, stop_after_failures=5
    )
    assert report.stopped is not None
    called = len(calls.read_text().split())
    assert called < 200
    uncalled = [f for f in report.failures if f.message.startswith("not called")]
    assert {f.attempts for f in uncalled} == {0}
    assert tasks_of_manyhands(client) == []
    again = manyhands.run(_logs_and_fails, items, backend=client, journal=journal)
    assert again.skipped + again.failed == 400
    assert again.skipped <= called  # (a call made more than once is recorded once)


def test_an_address_uses_the_cluster_and_leaves_it_running(client: Any) -> None:
    address = client.scheduler.address
    report = manyhands.run(_seven_fails, range(100), backend=address)
    assert (report.succeeded, report.failed) == (99, 1)
    assert report.backend == "dask"
    assert len(client.nthreads()) == 2  # still there


def test_a_pool_shares_one_cluster_between_runs(client: Any) -> None:
    with manyhands.Pool(backend=client) as pool:
        first = pool.run(_seven_fails, range(100))
        second = pool.map(str.upper, ["a", "b"], ordered=True)
        assert [out.value for out in second] == ["A", "B"]
    assert (first.succeeded, first.failed) == (99, 1)
    assert tasks_of_manyhands(client) == []


def _children() -> set[int]:
    """This process's children, but multiprocessing's resource tracker (one per interpreter)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # (it is exiting)
            pids.add(child.pid)
    return pids


def test_backend_dask_starts_a_local_cluster_and_leaves_no_process() -> None:
    before = _children()
    report = manyhands.run(_seven_fails, range(100), backend="dask")
    assert (report.succeeded, report.failed) == (99, 1)
    deadline = time.monotonic() + 10
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "a process of the LocalCluster outlived the run"


def test_ctrl_c_while_the_local_cluster_starts_leaves_no_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Ctrl-C in LocalCluster() left its worker processes and its event loop thread
    # running, unreachable (and an AssertionError at exit). Now the start ends, the
    # cluster closes, and the Ctrl-C is raised.
    from manyhands._backends import _dask_cluster

    new_cluster = _dask_cluster._new_cluster

    def interrupted_while_starting(workers: int) -> Any:
        started = new_cluster(workers)
        os.kill(os.getpid(), signal.SIGINT)  # (the main thread waits for the start)
        time.sleep(0.2)
        return started

    monkeypatch.setattr(_dask_cluster, "_new_cluster", interrupted_while_starting)
    before = _children()
    threads = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(_seven_fails, range(10), backend="dask", workers=2)
    deadline = time.monotonic() + 10
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "a process of the LocalCluster outlived the Ctrl-C"
    assert not [t.name for t in set(threading.enumerate()) - threads if t.name == "IO loop"]


def _calls_then_sleeps(item: tuple[int, str]) -> int:
    _logs_its_call((item[0], item[1]))
    time.sleep(60)
    return item[0]


def test_calls_running_past_the_grace_period_do_not_hold_the_close_of_the_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Dask gives a worker 4 s to end its running calls before it kills it, on top of
    # the run's grace=; the run's own workers are killed once the grace is over.
    timeouts: list[float] = []
    kill = distributed.Nanny.kill

    async def spied(self: Any, timeout: float = 5, **kwargs: Any) -> None:
        timeouts.append(timeout)
        await kill(self, timeout=timeout, **kwargs)

    monkeypatch.setattr(distributed.Nanny, "kill", spied)
    calls = tmp_path / "calls"

    def interrupt_once_called() -> None:
        while not calls.exists() or len(calls.read_text().split()) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_called, daemon=True).start()
    before = _children()
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(
            _calls_then_sleeps, [(x, str(calls)) for x in range(4)], backend="dask", workers=2,
            grace=0,
        )  # fmt: skip
    assert timeouts and timeouts[0] < 1  # (not Dask's 5 s, 4 of them for the calls)
    deadline = time.monotonic() + 10
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left


def test_a_scheduler_that_reruns_dead_workers_tasks_is_noted_in_the_report() -> None:
    with distributed.LocalCluster(  # allowed-failures: Dask's default, 3
        n_workers=1, processes=False, dashboard_address=":0", silence_logs=logging.CRITICAL
    ) as cluster:
        report = manyhands.run(abs, range(10), backend=cluster.scheduler_address)
    assert report.succeeded == 10
    assert any("allowed-failures 3" in note for note in report.notes)


def test_import_manyhands_does_not_import_distributed() -> None:
    code = (
        "import sys, manyhands; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('distributed', 'dask')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=python_subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", [ThreadPoolExecutor, ProcessPoolExecutor])
def test_any_executor_is_a_backend_and_stays_the_callers(kind: Any) -> None:
    with kind(max_workers=2) as executor:
        report = manyhands.run(_seven_fails, range(500), backend=executor, workers=2)
        assert (report.succeeded, report.failed) == (495, 5)
        assert report.failures[0].error_type == "builtins.ValueError"
        assert executor.submit(abs, -1).result() == 1  # not shut down by the run


def test_a_broken_executor_fails_its_batches_and_the_run_ends() -> None:
    with ProcessPoolExecutor(max_workers=2) as executor:
        report = manyhands.run(_dies_on, range(40), backend=executor, workers=2)
    assert report.succeeded + report.failed == 40
    assert report.failed >= 1
    assert "concurrent.futures.process.BrokenProcessPool" in report.errors_by_type


def test_cli_runs_on_a_scheduler(client: Any, tmp_path: Path) -> None:
    items = tmp_path / "items.txt"
    items.write_text("a\nb\nc\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "manyhands",
            "run",
            "string:capwords",
            str(items),
            "--backend",
            "dask",
            "--scheduler",
            client.scheduler.address,
            "--ordered",
            "--output",
            "-",
        ],
        env=python_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["value"] for row in rows] == ["A", "B", "C"]


def test_a_workers_threads_call_each_others_unstarted_items() -> None:
    # (in this process, as on a Dask worker's threads) Batch A's first call waits for
    # its second, which only another thread can call: the thread of batch B, once
    # its own item is done. A's answer has every item, in order.
    import pickle

    from manyhands._backends._remote_calls import run_items

    first_called, second_called = threading.Event(), threading.Event()

    def call(item: str) -> str:
        if item == "a0":
            first_called.set()
            second_called.wait(10)  # (without sharing: a1 waits behind it)
        if item == "a1":
            second_called.set()
        return f"{item} in {threading.current_thread().name}"

    answers: dict[str, Any] = {}

    def task(name: str, items: list[str]) -> None:
        answers[name] = pickle.loads(run_items(call, pickle.dumps(items), shared=True))

    threads = [threading.Thread(target=task, args=("a", ["a0", "a1", "a2"]), name="A")]
    threads[0].start()
    assert first_called.wait(10)
    threads.append(threading.Thread(target=task, args=("b", ["b0"]), name="B"))
    threads[1].start()
    for thread in threads:
        thread.join(20)
    kind, values, errors, _elapsed = answers["a"]
    assert (kind, errors) == ("done", {})
    assert [value.split()[0] for value in values] == ["a0", "a1", "a2"]
    assert values[1] == "a1 in B"
    assert answers["b"][1] == ["b0 in B"]


def test_a_thread_leaves_the_others_items_while_a_task_waits_on_its_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A task waiting for a thread goes first: its items are work nobody else can take.
    import pickle

    from manyhands._backends import _remote_calls

    monkeypatch.setattr(_remote_calls, "_tasks_waiting", lambda: lambda: True)
    first_called, release = threading.Event(), threading.Event()

    def call(item: str) -> str:
        if item == "a0":
            first_called.set()
            release.wait(10)
        return threading.current_thread().name

    answers: dict[str, Any] = {}

    def task(name: str, items: list[str]) -> None:
        answers[name] = pickle.loads(
            _remote_calls.run_items(call, pickle.dumps(items), shared=True)
        )

    threads = [threading.Thread(target=task, args=("a", ["a0", "a1"]), name="A")]
    threads[0].start()
    try:
        assert first_called.wait(10)
        threads.append(threading.Thread(target=task, args=("b", ["b0"]), name="B"))
        threads[1].start()
        threads[1].join(10)
        assert answers["b"][1] == ["B"]  # B answered at once, a1 untouched
    finally:
        release.set()
        for thread in threads:
            thread.join(20)
    assert answers["a"][1] == ["A", "A"]


def test_a_crash_names_every_item_its_threads_were_calling() -> None:
    # Two threads call batch A's items (its own, and B's once B's item is done):
    # both are marked in A's progress file, which the nanny reads once the worker died.
    import pickle

    from manyhands._backends._remote_calls import read_progress, run_items

    running = {item: threading.Event() for item in ("a0", "a2")}
    release = threading.Event()

    def call(item: str) -> str:
        if item in running:
            running[item].set()
            release.wait(10)
        return item

    def task(items: list[str], name: str | None) -> None:
        run_items(call, pickle.dumps(items), name=name, shared=True)

    name = f"manyhands-test-{os.getpid()}-{time.monotonic_ns()}"
    threads = [threading.Thread(target=task, args=(["a0", "a1", "a2"], name))]
    threads[0].start()
    try:
        assert running["a0"].wait(10)
        threads.append(threading.Thread(target=task, args=(["b0"], None)))
        threads[1].start()
        assert running["a2"].wait(10)
        assert read_progress(name) == [0, 2]  # (a1 was called and returned)
    finally:
        release.set()
        for thread in threads:
            thread.join(20)


def _dies_on_2_while_0_runs(x: int) -> int:
    time.sleep(1 if x == 0 else 0.01)
    if x == 2:
        os._exit(3)  # the worker process dies
    return x + 1


def test_a_crash_on_a_shared_batch_costs_only_the_calls_running_then() -> None:
    # 2 workers x 2 threads, batches of 5: the thread beside batch 0-4's, done with
    # its own batch, calls 1, 2... while the first is in 0; 2 kills the worker. Charged:
    # 2, and 0 which was running beside it (a nanny cannot tell which call killed); the
    # others run again uncharged.
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        two_workers(threads=2) as cluster,
        distributed.Client(cluster, set_as_default=False) as two_threads,
    ):
        outcomes = list(
            manyhands.map(_dies_on_2_while_0_runs, range(20), backend=two_threads, batch_size=5)
        )
    failed = {out.item: out.error for out in outcomes if not out.ok}
    assert 2 in failed and set(failed) <= {0, 2}
    assert {error.error_type for error in failed.values() if error} == {"manyhands.WorkerCrashed"}
    assert sorted(out.value for out in outcomes if out.ok) == [
        x + 1 for x in range(20) if x not in failed
    ]
    assert all(out.attempts == 1 for out in outcomes)  # nobody else was charged


def test_a_small_fn_travels_with_its_tasks_and_a_large_one_once(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task for the function, copied to every worker, costs a run's start two round
    # trips to the scheduler; most functions pickle to their name.
    submitted: list[str] = []
    submit = client.submit

    def counted(*args: Any, **kwargs: Any) -> Any:
        submitted.append(kwargs["key"])
        return submit(*args, **kwargs)

    monkeypatch.setattr(client, "submit", counted)
    assert manyhands.run(_naps, range(40), backend=client).succeeded == 40
    assert submitted == []
    ballast = os.urandom(8192)
    assert manyhands.run(lambda x: x + len(ballast), range(40), backend=client).succeeded == 40
    assert len(submitted) == 1 and submitted[0].startswith("manyhands-fn-")


def test_a_shipped_fn_is_loaded_once_per_process() -> None:
    # (the same object for every task of a run: a worker's threads share the batches
    # of one function)
    import pickle

    import cloudpickle

    from manyhands._backends._remote_calls import Shipped

    payload = cloudpickle.dumps(lambda x: x * 3)  # (by value: each load, a new function)
    first = pickle.loads(pickle.dumps(Shipped("manyhands-fn-test-0", payload))).load()
    assert Shipped("manyhands-fn-test-0", payload).load() is first
    assert first(2) == 6


def test_a_shared_batchs_timeout_applies_in_the_thread_that_calls_it() -> None:
    # B's thread calls A's a1 (A's own is in a0 until then), which overruns: a1 fails
    # with Timeout in A's answer, and the rest of A is called.
    import pickle

    from manyhands._backends._remote_calls import ABANDONED_MESSAGE, run_items

    first_called, second_called = threading.Event(), threading.Event()

    def call(item: str) -> str:
        if item == "a0":
            first_called.set()
            second_called.wait(10)
        if item == "a1":
            second_called.set()
            time.sleep(1.5)  # (past the timeout: left to its thread)
        return item

    answers: dict[str, Any] = {}

    def task(name: str, items: list[str], timeout: float | None) -> None:
        answers[name] = pickle.loads(run_items(call, pickle.dumps(items), timeout, shared=True))

    threads = [threading.Thread(target=task, args=("a", ["a0", "a1", "a2"], 1.0))]
    threads[0].start()
    assert first_called.wait(10)
    threads.append(threading.Thread(target=task, args=("b", ["b0"], None)))
    threads[1].start()
    for thread in threads:
        thread.join(20)
    _kind, values, errors, _elapsed = answers["a"]
    assert values == ["a0", None, "a2"]
    assert list(errors) == [1] and errors[1][1].endswith(ABANDONED_MESSAGE)
    assert answers["b"][1] == ["b0"]


@pytest.mark.parametrize("address", ["foo", "tcp://127.0.0.1:1"])
def test_cli_a_wrong_scheduler_is_a_one_line_error(
    address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "--scheduler foo" said "--backend foo is not a known backend", and a scheduler
    # that did not answer printed a 40-line traceback.
    from manyhands.cli import _main

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(f"Timed out trying to connect to {args[0]} after 10 s")

    monkeypatch.setattr(distributed, "Client", refused)  # (not 10 s of trying)
    items = tmp_path / "items.txt"
    items.write_text("a\n")
    code = _main(["run", "string:capwords", str(items), "--scheduler", address])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("manyhands: error: ")
    assert f"--scheduler {address}" in error or f"no Dask scheduler answered at {address}" in error


_LOGS_ITS_CALL = """
import sys, time

def f(x):
    with open(sys.argv[-1] + ".calls", "a") as file:
        file.write(x + "\\n")
    time.sleep(0.1)
    return x
"""


def test_a_terminals_ctrl_c_is_the_commands_not_its_workers(tmp_path: Path) -> None:
    # A Ctrl-C reaches every process of the terminal's group: the LocalCluster's
    # worker processes died of it, each printing a KeyboardInterrupt traceback, and
    # their running calls could not finish in the grace period.
    (tmp_path / "calls_mod.py").write_text(_LOGS_ITS_CALL)
    items = tmp_path / "items.txt"
    items.write_text("".join(f"{x}\n" for x in range(1000)))
    calls = tmp_path / "items.txt.calls"
    command = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "--backend", "dask", "--workers", "2",
         f"{tmp_path / 'calls_mod.py'}:f", str(items)],
        env=python_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # (a group of its own, as a terminal gives a command)
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (not calls.exists() or len(calls.read_text().split()) < 4) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        os.killpg(command.pid, signal.SIGINT)
        _, stderr = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr


def test_a_tasks_stop_check_looks_at_the_stopped_runs_only_when_they_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After runs stopped on a worker, a later task's items pay no scan of their names
    each (it grew to 20 us per item after 256 stopped runs)."""
    from manyhands._backends import _remote_calls

    class Counted(dict[str, None]):
        scans = 0

        def __iter__(self) -> Iterator[str]:
            Counted.scans += 1
            return super().__iter__()

    monkeypatch.setattr(_remote_calls, "_stopping", Counted())
    for run in range(256):
        _remote_calls.stop_tasks(f"manyhands-run{run}-")
    stopped = _remote_calls._stopped_check("manyhands-run999-0")
    assert stopped is not None
    before = Counted.scans
    assert not any(stopped() for _ in range(10_000))
    assert Counted.scans - before <= 1
    _remote_calls.stop_tasks("manyhands-run999-")
    assert stopped() and stopped()


def test_a_script_without_a_main_guard_gets_the_fix_not_pages_of_dask_tracebacks(
    tmp_path: Path,
) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import manyhands\n"
        "print('top level')\n"
        "report = manyhands.run(lambda x: x * 2, range(10), backend='dask', workers=2)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        env={**python_subprocess_env(), "TMPDIR": str(tmp_path)}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("manyhands.WorkerInitError: a Dask worker process could not start: ")
    assert 'if __name__ == "__main__":' in last
    # The workers end quietly: no traceback of theirs (Dask's Nanny, multiprocessing's refusal).
    assert "Nanny" not in done.stderr and "_check_not_importing_main" not in done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr
    assert not list(tmp_path.glob("manyhands-unguarded-*"))  # (the workers' mark: removed)


def test_two_local_clusters_started_at_once_each_keep_their_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The mark that a worker's import of an unguarded script started a run is in
    # os.environ while a LocalCluster starts: one start's cleanup took it away from
    # another starting meanwhile in another thread (its workers lost it).
    from manyhands._backends import _dask_cluster

    inside, second_started = threading.Event(), threading.Event()
    seen: dict[int, Any] = {}

    class FakeCluster:
        def __init__(self, n_workers: int, **_: Any) -> None:
            if n_workers == 1:  # the first start: the second starts meanwhile
                inside.set()
                second_started.wait(2)  # (never, while a start cannot overlap another)
            else:
                second_started.set()
            seen[n_workers] = os.environ.get(_dask_cluster.UNGUARDED_MARK)

        def close(self) -> None:
            pass

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", lambda cluster, **_: cluster)
    first = threading.Thread(target=_dask_cluster._new_cluster, args=(1,))
    first.start()
    assert inside.wait(10)
    _dask_cluster._new_cluster(2)
    first.join(10)
    assert seen[1] and seen[2] and seen[1] != seen[2]  # each its own, while it started
    assert _dask_cluster.UNGUARDED_MARK not in os.environ
