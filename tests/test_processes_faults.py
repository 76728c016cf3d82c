"""backend="processes" at the edges: large data, unpicklable items, forks, timeouts, limits.

Each test is one promise of the processes guide (docs/guide/processes.md). Every wait is
bounded (each test's timeout, and every subprocess wait), so a regression
fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from itertools import product
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import (
    finish,
    interrupt_when_ready,
    python_subprocess_env,
    read_line,
    start_python,
)
from .test_processes import children_after, still_alive, worker_pids

# A hang here blocks the main thread in a lock or a pipe, where the "signal"
# method's exception does not end it: "thread" dumps the stacks and exits.
pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and limits"),
    pytest.mark.timeout(180, method="thread"),
]


@pytest.fixture
def no_process_left() -> Any:
    yield
    assert [p.pid for p in children_after()] == [], "a worker process outlived the run"


def normalize(doc: str) -> str:
    return doc.lower().replace("a", "b")


# -- large items and results never deadlock the pipes ---------------------


@pytest.mark.parametrize(
    ("size", "count"),
    [(2_000, 20_000), (150_000, 300), (5_000_000, 6)],
    ids=["2KB", "150KB", "5MB"],
)
def test_large_items_and_results_travel_without_deadlock(
    no_process_left: None, size: int, count: int
) -> None:
    # A batch and its results far larger than a socket buffers (~200 KB): the
    # dispatcher must read results while a batch is still on its way out.
    docs = (f"{n}:" + "A" * size for n in range(count))
    seen = 0
    for outcome in manyhands.map(normalize, docs, backend="processes", workers=2):
        assert outcome.ok and outcome.value == normalize(outcome.item)
        seen += 1
    assert seen == count


def test_a_hundred_thousand_text_documents_finish_with_every_value(no_process_left: None) -> None:
    docs = (f"Doc {n} " + "Alpha Beta " * 180 for n in range(100_000))  # ~2 KB each
    seen = set()
    for outcome in manyhands.map(normalize, docs, backend="processes", workers=2):
        assert outcome.ok and outcome.value == normalize(outcome.item)
        seen.add(int(outcome.item.split()[1]))
    assert seen == set(range(100_000))


ENDLESS_LARGE = textwrap.dedent(
    """
    import itertools, manyhands
    def normalize(doc):
        return doc.lower().replace("a", "b")
    if __name__ == "__main__":
        docs = (f"{n}:" + "A" * {size} for n in itertools.count())
        outs = manyhands.map(normalize, docs, backend="processes", workers=2, grace=30)
        for n, _ in enumerate(outs):
            if n == {ready_after}:
                print("ready", flush=True)
    """
)


@pytest.mark.parametrize(("size", "ready_after"), [(2_000, 20_000), (150_000, 300)])
def test_ctrl_c_during_a_run_of_large_items_ends_it_promptly(size: int, ready_after: int) -> None:
    proc = start_python(ENDLESS_LARGE.replace("{size}", str(size)).replace(
        "{ready_after}", str(ready_after)))  # fmt: skip
    try:
        assert read_line(proc, 90) == "ready"
        workers = worker_pids(proc.pid)
        proc.send_signal(signal.SIGINT)  # one Ctrl-C: the calls in flight are short
        _, err = finish(proc, 30)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err and proc.returncode != 0
    assert still_alive(workers) == []


# -- unpicklable items fail alone, named ------------------------------------


class Unpicklable:
    """An item that pickle refuses, with a name the failure message must show."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> Any:
        raise TypeError(f"item {self.n} refuses to be pickled")

    def __repr__(self) -> str:
        return f"<Unpicklable {self.n}>"


def times_ten(x: int) -> int:
    return x * 10


def test_the_issue_example_with_a_lock_among_the_items_finishes(no_process_left: None) -> None:
    import threading

    lock = threading.Lock()
    report = manyhands.run(lambda x: 1, [1, 2, lock, 4], backend="processes", workers=2)
    assert (report.succeeded, report.failed) == (3, 1)
    failure = report.failures[0]
    assert failure.item is lock
    assert "could not be sent to a worker process" in failure.message
    assert "lock" in failure.message


@pytest.mark.parametrize("batch_size", [None, 4], ids=["default_batching", "one_batch"])
@pytest.mark.parametrize("mask", list(product([False, True], repeat=4)), ids=str)
def test_every_mix_of_picklable_and_unpicklable_items(
    mask: tuple[bool, ...], batch_size: int | None
) -> None:
    items = [Unpicklable(n) if bad else n for n, bad in enumerate(mask)]
    options: dict[str, Any] = {"batch_size": batch_size} if batch_size else {}
    outs = list(  # (fn by value: the workers need not import this module)
        manyhands.map(lambda x: x * 10, items, backend="processes", workers=2, ordered=True,
                      **options)
    )  # fmt: skip
    assert [o.item for o in outs] == items
    for n, (outcome, bad) in enumerate(zip(outs, mask, strict=True)):
        if bad:
            assert outcome.error is not None
            assert outcome.error.error_type == "builtins.TypeError"
            assert f"item <Unpicklable {n}> could not be sent" in outcome.error.message
            assert f"item {n} refuses to be pickled" in outcome.error.message
        else:
            assert outcome.ok and outcome.value == n * 10


def test_a_worker_whose_batch_never_left_is_sent_the_next_at_once() -> None:
    """A batch none of whose items pickle never reaches its worker: the worker's room
    goes to the next batch waiting, in the same look. (Nothing else would send it:
    a run's next batch does not wake the dispatcher while work waits, and the
    dispatcher looks again at the next answer or after its select's timeout.)"""
    from manyhands._backends._process_spawn import Worker
    from manyhands._backends._processes import ProcessBackend
    from manyhands._batch import Batch, Task

    class Channel:
        closed = False

        def send(self, data: bytes) -> bool:
            return True

    backend = ProcessBackend(1)
    done: list[Batch] = []
    task = Task(abs, done.append)
    task.key = 1
    backend._functions[1] = b"fn"
    worker = Worker(None, Channel(), None, None, None)  # type: ignore[arg-type]
    worker.ready = True
    backend._pool.append(worker)
    unsendable, sendable = Batch(0, [Unpicklable(0)], task), Batch(1, [1], task)
    for batch in (unsendable, sendable):
        backend._inbox.put((batch, [0]), task)
    backend._feed()
    assert done == [unsendable]  # failed without a trip
    assert [batch for batch, _ in worker.sent] == [sendable]  # the same look sent the next


@pytest.mark.parametrize("when", ["starting", "answering"])
def test_a_worker_whose_parent_is_gone_ends_quietly(when: str, capfd: Any) -> None:
    """A worker can outlive its run's interest in it: a replacement that starts as the
    run ends finds the parent's end closed when it says "ready" (seen at the end of
    crash-heavy runs), and so does a worker whose last answer comes after it. It ends
    quietly, as when a read finds the parent gone, with no BrokenPipeError traceback
    on the program's stderr."""
    import multiprocessing

    import cloudpickle

    from manyhands._backends._process_worker import HEADER, STAMP_SIZE, serve

    context = multiprocessing.get_context("spawn")  # (its stderr is this test's)
    ours, theirs = context.Pipe()
    lifeline_r, lifeline_w = context.Pipe(duplex=False)  # (kept open: the parent lives)
    payload = cloudpickle.dumps((None, (), 1, time.sleep))
    stamp = context.Array("d", STAMP_SIZE, lock=False)
    progress = context.Value("i", 0, lock=False)
    worker = context.Process(target=serve, args=(theirs, payload, progress, stamp, lifeline_r))
    if when == "starting":
        ours.close()  # gone before the worker says "ready"
        worker.start()
    else:
        worker.start()
        assert ours.poll(60) and ours.recv_bytes()  # "ready"
        ours.send_bytes(HEADER.pack(1, 0, 0) + pickle.dumps([0.5]))
        time.sleep(0.05)  # (the worker is in sleep(0.5))
        ours.close()  # gone before its answer comes
    theirs.close()
    worker.join(60)
    lifeline_w.close()
    assert worker.exitcode == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def refuse_in_a_worker(parent: int) -> int:
    if os.getpid() != parent:
        raise RuntimeError("this item cannot be rebuilt in a worker")
    return parent


class OnlyHere:
    """Pickles in the parent; unpickling it anywhere else raises."""

    def __reduce__(self) -> Any:
        return (refuse_in_a_worker, (os.getpid(),))


def test_an_item_a_worker_cannot_unpickle_fails_its_batch_and_the_run_goes_on(
    no_process_left: None,
) -> None:
    items: list[Any] = [0, 1, OnlyHere(), 3, 4]
    outs = list(
        manyhands.map(times_ten, items, backend="processes", workers=1, batch_size=1, ordered=True)
    )
    assert [o.ok for o in outs] == [True, True, False, True, True]
    error = outs[2].error
    assert error is not None and error.error_type == "builtins.RuntimeError"
    assert "could not be unpickled in the worker process" in error.message
    assert "cannot be rebuilt in a worker" in error.message


# -- a child that fn forks never acts as a worker ---------------------------


def fork_then(how: str, log: str) -> Any:
    def work(x: int) -> int:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"call {x}\n".encode())
        child = os.fork() if x % 3 == 0 else None
        if child:
            os.write(fd, f"child {child}\n".encode())
        elif child == 0:  # the child: a daemon's usual ways out
            os.close(fd)
            if how == "sys.exit":
                sys.exit(0)
            if how == "sys.exit(3)":
                sys.exit(3)
            if how == "raise":
                raise ValueError("the child failed")
            return -1  # "return": the child carries on, into manyhands' loop
        os.close(fd)
        return x

    return work


@pytest.mark.parametrize("how", ["sys.exit", "sys.exit(3)", "raise", "return"])
def test_a_child_forked_by_fn_leaves_at_once_and_runs_nothing(
    tmp_path: Path, no_process_left: None, how: str
) -> None:
    log = tmp_path / "calls.log"
    outs = list(manyhands.map(fork_then(how, str(log)), range(60), backend="processes", workers=2))
    assert sorted(o.value for o in outs if o.ok) == list(range(60))  # the parents' values
    lines = log.read_text().split("\n")
    calls = [line for line in lines if line.startswith("call")]
    assert sorted(calls) == sorted(f"call {n}" for n in range(60))  # each exactly once
    children = [int(line.split()[1]) for line in lines if line.startswith("child")]
    assert len(children) == 20
    assert still_alive(children) == []


# -- timeouts: only a call that ran past its limit fails, only its worker dies --


def sleep_logged(log: str) -> Any:
    def work(item: tuple[int, float]) -> int:
        n, seconds = item
        began = time.monotonic()
        time.sleep(seconds)
        took = time.monotonic() - began
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{n} {took!r}\n".encode())
        os.close(fd)
        return n

    return work


def test_calls_straddling_the_timeout_fail_only_when_over_it(
    tmp_path: Path, no_process_left: None
) -> None:
    log = tmp_path / "ran.log"
    items = [(n, 0.05 + 0.0025 * (n % 41)) for n in range(120)]  # 0.05 .. 0.15 s
    timeout = 0.1
    outs = list(
        manyhands.map(
            sleep_logged(str(log)), items, backend="processes", workers=2, timeout=timeout
        )
    )
    assert sorted(o.item for o in outs) == items
    kinds = {o.error.error_type for o in outs if o.error is not None}
    assert kinds <= {"manyhands.Timeout"}  # never a WorkerCrashed: no innocent item killed
    # A call that returned (it logged its own duration) well inside the limit was
    # never called over time. (Half the limit leaves room for scheduling: the
    # worker's clock, which decides, brackets the call's own.)
    took = {}
    for line in log.read_text().split("\n"):
        if line:
            n, seconds = line.split()
            took[int(n)] = float(seconds)
    for outcome in outs:
        n = outcome.item[0]
        if outcome.error is not None and n in took:
            assert took[n] > timeout / 2, (outcome.item, took[n])


def test_a_result_that_arrives_as_its_timeout_fires_kills_no_other_item(
    monkeypatch: pytest.MonkeyPatch, no_process_left: None
) -> None:
    from manyhands._backends import _processes

    kill = _processes.kill
    delayed: list[int] = []

    def late_kill(worker: Any) -> None:
        # The vulnerable moment: the timeout is decided, the kill not yet sent.
        # Item 0's call returns meanwhile, and item 1 must not reach its worker.
        if not delayed:
            delayed.append(1)
            time.sleep(1.5)
        kill(worker)

    monkeypatch.setattr(_processes, "kill", late_kill)
    # After the first result, a second batch waits in the backend's queue: item 2.0
    # (well inside the limit) is what the worker would run when the kill lands.
    outs = {
        o.item: o
        for o in manyhands.map(
            lambda x: time.sleep(x) or x, [0.01, 3.5, 2.0, 0.02], backend="processes",
            workers=1, timeout=3.0,
        )
    }  # fmt: skip
    error = outs[3.5].error
    assert error is not None and error.error_type == "manyhands.Timeout"
    assert outs[0.01].ok and outs[2.0].ok and outs[0.02].ok


def test_results_the_parent_reads_late_are_not_timeouts(
    monkeypatch: pytest.MonkeyPatch, no_process_left: None
) -> None:
    # The parent was stalled (a SIGSTOP, a swapped-out machine) while the calls
    # returned: the deadline counts from when each call began in its worker.
    from manyhands._backends import _processes

    serve = _processes.ProcessBackend._serve
    stalled: list[int] = []

    def stall_once(self: Any, *args: Any) -> Any:
        if not stalled:
            stalled.append(1)
            time.sleep(2.5)
        return serve(self, *args)

    monkeypatch.setattr(_processes.ProcessBackend, "_serve", stall_once)
    report = manyhands.run(time.sleep, [0.1] * 6, backend="processes", workers=2, timeout=1.0)
    assert report.errors_by_type == {} and report.succeeded == 6


SIGSTOP_RUN = textwrap.dedent(
    """
    import time, manyhands
    if __name__ == "__main__":
        outs = manyhands.map(time.sleep, [0.3] * 12, backend="processes", workers=2, timeout=2)
        errors = []
        for n, outcome in enumerate(outs):
            if n == 0:
                print("ready", flush=True)
            if outcome.error is not None:
                errors.append(outcome.error.error_type)
        print("errors", errors, flush=True)
    """
)


def test_a_stopped_and_continued_parent_times_out_nothing() -> None:
    proc = start_python(SIGSTOP_RUN)
    try:
        assert read_line(proc, 60) == "ready"
        proc.send_signal(signal.SIGSTOP)
        time.sleep(3)  # past the 2 s limit, while calls of 0.3 s finish
        proc.send_signal(signal.SIGCONT)
        out, err = finish(proc, 60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "errors []"


# -- resource limits: fewer workers, or a clear error; nothing left behind ---

LIMITED = textwrap.dedent(
    """
    import os, resource, sys, manyhands
    import manyhands._api as api
    started = []
    def create_backend(*args, **kwargs):
        started.append(create(*args, **kwargs))
        return started[-1]
    create, api.create_backend = api.create_backend, create_backend
    def open_fds():
        return len(os.listdir("/proc/self/fd"))
    if __name__ == "__main__":
        manyhands.run(abs, range(10), backend="processes", workers=2)  # helpers up: forkserver
        before = open_fds()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, hard))
        try:
            report = manyhands.run(abs, range(-500, 500), backend="processes", workers=50)
            print("ran", report.succeeded, report.failed)
        except manyhands.ManyhandsError as exc:
            print("error", type(exc).__name__, exc)
        backend = started[-1]
        print("started", backend.workers_started, " ".join(backend.notes) or None)
        print("fds", before, open_fds())
    """
)


def run_limited(limit: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", LIMITED.replace("{limit}", limit)], capture_output=True,
        text=True, timeout=120, env=python_subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_a_low_open_file_limit_runs_with_the_workers_that_could_start() -> None:
    ran, started, fds = run_limited("64")
    assert ran == "ran 1000 0"
    count, note = started.split(maxsplit=2)[1:]
    assert 1 <= int(count) < 50
    assert f"ran with {count} of 50 worker processes" in note
    assert "Too many open files" in note and "ulimit -n" in note and "64" in note
    before, after = fds.split()[1:]
    assert after == before  # every fd of the run closed again


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_when_no_worker_can_start_for_the_limit_the_error_names_it() -> None:
    error, started, fds = run_limited("before + 3")
    assert error.startswith("error WorkerInitError no worker process could be started")
    assert "Too many open files" in error and "ulimit -n" in error and "lower workers" in error
    assert started.startswith("started 0")
    before, after = fds.split()[1:]
    assert after == before


# -- a script without the __main__ guard is told what the guard is ----------


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_script_without_the_main_guard_is_told_to_add_it(
    tmp_path: Path, start_method: str
) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import manyhands
            report = manyhands.run(abs, range(10), backend="processes", workers=2,
                                   start_method={start_method!r})
            print("ran", report.succeeded)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env=python_subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("manyhands.WorkerInitError: a worker process could not start")
    assert 'if __name__ == "__main__":' in last
    assert "imports the main script" in last
    assert "ran" not in done.stdout


def test_a_script_without_the_main_guard_starting_a_run_from_a_thread_ends(
    tmp_path: Path,
) -> None:
    """The forkserver imports the script; its thread's run must not wait on that import."""
    script = tmp_path / "unguarded_thread.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading, manyhands
            def go():
                report = manyhands.run(abs, range(10), backend="processes", workers=2)
                print("ran", report.succeeded, flush=True)
            thread = threading.Thread(target=go)
            thread.start()
            thread.join()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env=python_subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "ran 10"


# -- a stop drops half-run batches instead of journaling them as done -------

STOP_DURING_CRASH = textwrap.dedent(
    """
    import os, sys, time, manyhands
    def work(x):
        if x == 0:
            print("ready", flush=True)
            time.sleep(2)
            os._exit(1)  # dies during the grace period, its batch half run
        return x
    if __name__ == "__main__":
        outs = manyhands.map(work, range(8), backend="processes", workers=1, batch_size=4,
                             journal=sys.argv[1], grace=30)
        for _ in outs:
            pass
    """
)


def test_a_crash_during_the_grace_period_journals_no_item_that_did_not_run(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    err = interrupt_when_ready([sys.executable, "-c", STOP_DURING_CRASH, str(journal)])
    assert "KeyboardInterrupt" in err
    with sqlite3.connect(journal) as db:
        done = [key for (key,) in db.execute("SELECT key FROM items WHERE state = 'done'")]
    db.close()
    assert done == []  # items 1-3 never ran; 4-7 were never sent
