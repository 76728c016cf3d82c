"""backend="processes": any function, crash isolation, timeouts that kill, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import manyhands

from .conftest import finish, python_subprocess_env, run_main_script, start_python

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")


def workers_of(parent: psutil.Process) -> list[psutil.Process]:
    """Live descendants, except multiprocessing's own helpers: the forkserver and the
    resource tracker are direct children that live as long as the parent, by design
    (workers forked by the forkserver are its children, so they still count)."""
    found = []
    for process in parent.children(recursive=True):
        try:
            if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            helper = process.ppid() == parent.pid and any(
                name in " ".join(process.cmdline()) for name in ("forkserver", "resource_tracker")
            )
        except psutil.Error:
            continue
        if not helper:
            found.append(process)
    return found


def children_after(timeout: float = 5.0) -> list[psutil.Process]:
    """This process's worker processes once they are gone (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = workers_of(psutil.Process())
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def no_process_left() -> Any:
    yield
    assert [p.pid for p in children_after()] == [], "a worker process outlived the run"


def test_lambdas_closures_and_failures_as_values(no_process_left: None) -> None:
    offset = 7

    def add(x: int) -> int:  # a closure over a local: cloudpickle ships it
        if x == 3:
            raise ValueError(f"no {x}")
        return x + offset

    outs = list(manyhands.map(add, range(10), backend="processes", ordered=True))
    assert [o.value for o in outs if o.ok] == [x + 7 for x in range(10) if x != 3]
    error = outs[3].error
    assert error is not None and error.error_type == "builtins.ValueError"
    assert error.message == "no 3" and error.exception is None  # it came from elsewhere
    assert "ValueError: no 3" in error.traceback and ", in add" in error.traceback
    assert "_process_worker" not in error.traceback  # only the user's frames
    report = manyhands.run(lambda x: x * x, range(1000), backend="processes", workers=2)
    assert report.succeeded == 1000


def test_functions_from_main_and_classes_defined_late_work() -> None:
    code = textwrap.dedent(
        """
        import manyhands
        def square(x):
            return Late(x).value
        class Late:  # defined after the function that uses it
            def __init__(self, x):
                self.value = x * x
        if __name__ == "__main__":
            outs = list(manyhands.map(square, range(5), backend="processes", ordered=True))
            print([o.value for o in outs])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=python_subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16]"


def test_unpicklable_items_and_results_fail_only_their_item() -> None:
    lock = threading.Lock()
    outs = list(
        manyhands.map(lambda x: x, [1, lock, 3], backend="processes", ordered=True, batch_size=3)
    )
    assert [o.ok for o in outs] == [True, False, True]
    assert outs[1].error is not None and "could not be sent to a worker process" in (
        outs[1].error.message
    )
    assert "lock" in outs[1].error.message

    def make(x: int) -> Any:
        return threading.Lock() if x == 2 else x

    outs = list(manyhands.map(make, range(4), backend="processes", ordered=True, batch_size=4))
    assert [o.ok for o in outs] == [True, True, False, True]
    assert outs[2].error is not None and "could not be sent back" in outs[2].error.message


class NoPickle(Exception):
    def __init__(self, a: Any, b: Any) -> None:  # unpicklable: pickling calls cls(*args)
        super().__init__(a)
        self.b = b

    def __reduce__(self) -> Any:
        raise TypeError("not today")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def refuse_to_load() -> None:
    raise RuntimeError("this value cannot be rebuilt here")


class Unloadable:
    """Pickles fine in the worker; unpickling it (in the parent) raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_load, ())


def unloadable_for_7(x: int) -> Any:
    return Unloadable() if x == 7 else x


def test_a_result_the_parent_cannot_unpickle_fails_its_batch_not_the_run(
    no_process_left: None,
) -> None:
    outs = {
        o.item: o
        for o in manyhands.map(unloadable_for_7, range(40), backend="processes", batch_size=4)
    }
    assert sorted(outs) == list(range(40))
    broken = {n for n, o in outs.items() if not o.ok}
    assert broken == {4, 5, 6, 7}  # item 7's batch: its values travel as one pickle
    error = outs[7].error
    assert error is not None and error.error_type == "builtins.RuntimeError"
    assert "could not be unpickled in the parent process" in error.message
    assert "this value cannot be rebuilt here" in error.message
    assert all(outs[n].value == n for n in outs if n not in broken)


def raise_odd(kind: str) -> None:
    if kind == "nopickle":
        raise NoPickle(1, threading.Lock())
    raise BadStr()


def test_a_function_that_cannot_travel_is_refused_naming_fn(no_process_left: None) -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"fn cannot be sent to a worker process: .*lock"):
        manyhands.run(lambda x: lock, [1, 2], backend="processes", workers=2)


def test_exceptions_that_cannot_travel_still_come_back_described() -> None:
    outs = {o.item: o for o in manyhands.map(raise_odd, ["nopickle", "badstr"],
                                              backend="processes")}  # fmt: skip
    nopickle, badstr = outs["nopickle"].error, outs["badstr"].error
    assert nopickle is not None and nopickle.error_type.endswith("NoPickle")
    assert "raise NoPickle" in nopickle.traceback
    assert badstr is not None and badstr.error_type.endswith("BadStr")
    assert badstr.message == "<unprintable BadStr message>"


def crash_every_100th(x: int) -> int:
    if x % 100 == 99:
        os._exit(1)
    return x


def test_crash_storm_costs_only_the_crashing_items(no_process_left: None) -> None:
    report = manyhands.run(crash_every_100th, range(2000), backend="processes", workers=2)
    assert report.failed == 20 and report.succeeded == 1980
    assert report.errors_by_type == {"manyhands.WorkerCrashed": 20}
    assert all("exit code 1" in f.message for f in report.failures)
    assert sorted(f.item for f in report.failures) == list(range(99, 2000, 100))


def test_sigkill_is_reported_with_its_signal() -> None:
    def die(x: int) -> int:
        if x == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    outs = {o.item: o for o in manyhands.map(die, range(4), backend="processes")}
    error = outs[1].error
    assert error is not None and error.error_type == "manyhands.WorkerCrashed"
    assert "killed by signal SIGKILL" in error.message
    assert all(outs[n].ok for n in (0, 2, 3))


def test_a_crashing_item_is_retried_only_as_the_policy_says(tmp_path: Path) -> None:
    tries = tmp_path / "tries"

    def crash(x: int) -> int:
        with open(tries, "a") as file:
            file.write(f"{x}\n")
        if x == 0:
            os._exit(9)
        return x

    report = manyhands.run(crash, range(3), backend="processes", retry=2)
    assert report.failed == 1 and report.failures[0].attempts == 3
    assert tries.read_text().split().count("0") == 3  # not forever


def test_retries_match_remote_errors_by_class(tmp_path: Path) -> None:
    marks = tmp_path / "marks"

    def flaky(x: int) -> int:
        with open(marks, "a") as file:
            file.write(f"{x}\n")
        if marks.read_text().split().count(str(x)) < 2:
            raise ConnectionResetError("try again")
        return x

    policy = manyhands.Retry(2, on=ConnectionError, backoff=0.001)
    outs = list(manyhands.map(flaky, range(3), backend="processes", retry=policy))
    assert all(o.ok and o.attempts == 2 for o in outs)
    not_matching = manyhands.Retry(2, on=KeyError, backoff=0.001)
    marks.unlink()
    outs = list(manyhands.map(flaky, range(2), backend="processes", retry=not_matching))
    assert all(not o.ok and o.attempts == 1 for o in outs)


def test_timeout_kills_the_worker_and_its_children(no_process_left: None) -> None:
    def hang(x: int) -> int:
        if x == 1:
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            time.sleep(60)
        return x

    started = time.monotonic()
    outs = {o.item: o for o in manyhands.map(hang, range(6), backend="processes", timeout=1.0)}
    assert time.monotonic() - started < 30
    error = outs[1].error
    assert error is not None and error.error_type == "manyhands.Timeout"
    assert "worker process was killed" in error.message
    assert all(outs[n].ok for n in (0, 2, 3, 4, 5))


def test_initializer_sets_up_each_worker_and_a_failing_one_stops_the_run(
    tmp_path: Path,
) -> None:
    def setup(value: int) -> None:
        os.environ["MANYHANDS_TEST_STATE"] = str(value)

    report = manyhands.run(
        lambda x: int(os.environ["MANYHANDS_TEST_STATE"]) + x,
        range(5),
        backend="processes",
        initializer=setup,
        initargs=(100,),
    )
    assert report.succeeded == 5

    ran = tmp_path / "ran"

    def broken() -> None:
        raise RuntimeError("no database")

    def work(x: int) -> int:
        ran.write_text("ran")
        return x

    with pytest.raises(manyhands.WorkerInitError, match="RuntimeError: no database") as info:
        manyhands.run(work, range(5), backend="processes", initializer=broken)
    assert "RuntimeError: no database" in info.value.traceback
    assert ", in broken" in info.value.traceback
    assert not ran.exists()


def test_default_start_method_is_safe_and_can_be_chosen() -> None:
    from manyhands._backends._processes import default_start_method

    assert default_start_method() in ("forkserver", "spawn")
    report = manyhands.run(abs, range(-5, 5), backend="processes", start_method="spawn")
    assert report.succeeded == 10
    with pytest.raises(ValueError, match="start_method='teleport' is not accepted"):
        manyhands.run(abs, [1], backend="processes", start_method="teleport")
    with pytest.raises(ValueError, match="applies to worker processes only"):
        manyhands.run(abs, [1], backend="threads", initializer=print)


def test_the_main_script_is_imported_once_not_by_every_worker(tmp_path: Path) -> None:
    # Workers need the parent's main script (its functions unpickle by name);
    # the forkserver imports it once, so new workers, replacements after a crash
    # included, start without running it again.
    out, imports = run_main_script(
        tmp_path,
        """
        import os, manyhands
        def crash(x):
            if x == 3:
                os._exit(1)
            return x
        if __name__ == "__main__":
            report = manyhands.run(crash, range(40), backend="processes", workers=2)
            print(report.succeeded, report.failed)
        """,
    )
    assert out == ["39", "1"]  # three workers ran: two, then a replacement
    assert imports == ["__main__", "__mp_main__"]


@pytest.mark.parametrize("crashing", [{0}, {0, 1}])
def test_when_no_worker_can_be_started_the_run_goes_on_or_ends_never_hangs(
    monkeypatch: pytest.MonkeyPatch, no_process_left: None, crashing: set[int]
) -> None:
    from manyhands._backends import _processes

    spawn = _processes.ProcessBackend._spawn
    started: list[object] = []

    def spawn_twice(self: Any) -> Any:  # the two first workers start; no replacement does
        if len(started) == 2:
            raise OSError(24, "Too many open files")
        started.append(self)
        return spawn(self)

    def crash(x: int) -> int:
        if x in crashing:
            os._exit(1)
        time.sleep(0.01)
        return x

    monkeypatch.setattr(_processes.ProcessBackend, "_spawn", spawn_twice)
    outs = manyhands.map(crash, range(40), backend="processes", workers=2, batch_size=1)
    by_item = {o.item: o for o in outs}
    assert sorted(by_item) == list(range(40))  # every item has its outcome
    for n in crashing:
        error = by_item[n].error
        assert error is not None and "died (exit code 1)" in error.message
    others = [o for o in by_item.values() if o.item not in crashing]
    if len(crashing) == 1:  # one worker is left: it runs the rest
        assert all(o.ok for o in others)
        return
    stopped = [o.error for o in others if o.error is not None]  # none left: the rest fail
    assert stopped and all(e.error_type == "manyhands.WorkerCrashed" for e in stopped)
    assert all("no worker process could be started" in e.message for e in stopped)
    assert all("Too many open files" in e.message for e in stopped)


def test_when_no_replacement_can_initialize_the_rest_fail(tmp_path: Path) -> None:
    flag = tmp_path / "started-once"

    def setup() -> None:
        if flag.exists():
            raise RuntimeError("the license server is gone")
        flag.write_text("")

    def crash(x: int) -> int:
        if x == 0:
            os._exit(1)
        return x

    outs = {
        o.item: o
        for o in manyhands.map(crash, range(5), backend="processes", workers=1, initializer=setup)
    }
    assert sorted(outs) == list(range(5))
    assert outs[0].error is not None and "died (exit code 1)" in outs[0].error.message
    for n in range(1, 5):
        error = outs[n].error
        assert error is not None and error.error_type == "manyhands.WorkerCrashed"
        assert "no worker process is left" in error.message
        assert "RuntimeError: the license server is gone" in error.message


STOP_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, manyhands
    def slow(x):
        time.sleep(100)
        return x
    if __name__ == "__main__":
        outs = manyhands.map(slow, range(100), backend="processes", workers=2, grace={grace},
                             start_method={start_method!r})
        import threading
        threading.Timer(1.5, lambda: print("ready", flush=True)).start()
        for _ in outs:
            pass
    """
)


def worker_pids(parent: int) -> list[int]:
    try:
        return [p.pid for p in workers_of(psutil.Process(parent))]
    except psutil.NoSuchProcess:
        return []


def start_slow_run(
    grace: float, start_method: str = "forkserver"
) -> tuple[subprocess.Popen[str], list[int]]:
    """A subprocess whose two workers are busy in 100 s calls; and their pids."""
    script = STOP_SCRIPT.format(grace=grace, start_method=start_method)
    proc = start_python(script)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    workers = worker_pids(proc.pid)
    assert workers
    return proc, workers


def still_alive(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Which of ``pids`` are still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_stops_and_leaves_no_worker(signals: int) -> None:
    proc, workers = start_slow_run(grace=0.5 if signals == 1 else 30)
    for _ in range(signals):  # the second one during the 30 s grace: stop at once
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    _, err = finish(proc, 30)
    assert "KeyboardInterrupt" in err
    assert still_alive(workers) == []


# With fork, each worker inherits the parent's ends of the other workers' pipes (and
# of its own), and must close them, or it never sees the parent go.
@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_workers_exit_when_the_parent_is_killed(start_method: str) -> None:
    proc, workers = start_slow_run(grace=1, start_method=start_method)
    proc.kill()
    proc.communicate(timeout=30)
    assert still_alive(workers) == []


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, time

    def count_starts_after_exit():  # runs after multiprocessing's exit handler
        time.sleep(0.5)  # (a dispatcher still running has seen its workers end by now)
        print("started at exit:", len(starts) - started, flush=True)

    atexit.register(count_starts_after_exit)  # (first: it runs last)

    import manyhands
    from manyhands._backends import _processes

    starts = []
    spawn = _processes.ProcessBackend._spawn

    def counted(self):
        starts.append(1)
        return spawn(self)

    _processes.ProcessBackend._spawn = counted

    if __name__ == "__main__":
        pool = manyhands.Pool(workers=2, backend="processes")
        print(pool.run(abs, range(10)).succeeded, flush=True)
        started = len(starts)
        # the pool is never shut down: the interpreter's exit ends its workers
    """
)


def test_a_pool_left_open_at_exit_starts_no_worker_as_the_interpreter_goes() -> None:
    """multiprocessing's exit handler terminates the workers of a pool never shut
    down; the dispatcher took each for a crash and started a replacement as the
    interpreter went (the forkserver's half-started child then printed an EOFError
    traceback, now and then). It is stopped first now."""
    proc = start_python(EXIT_SCRIPT)
    out, err = finish(proc, timeout=60)
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["10", "started at exit: 0"], (out, err)
    assert "Traceback" not in err, err


class _WakeUpsWithShutdownInBetween:
    """The dispatcher's wake-up socket; the first read lets shutdown begin first (its
    state change and its wake-up), as another thread may at any moment."""

    def __init__(self, sock: Any, backend: Any) -> None:
        self.sock, self.backend, self.first = sock, backend, True

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def recv(self, size: int) -> bytes:
        if self.first:
            self.first = False
            with self.backend._lock:
                self.backend._stopping = True
            self.backend._wake()
        return bytes(self.sock.recv(size))


def test_the_dispatcher_never_misses_the_wake_up_of_a_shutdown(monkeypatch: Any) -> None:
    # A wake-up read after the dispatcher looked at the state was lost: shutdown then
    # waited for the dispatcher's idle timeout (1 s, at the end of ~1 run in 10). Here
    # that timeout is an hour, so a lost wake-up cannot go unseen.
    import selectors
    import socket

    from manyhands._backends import _process_dispatcher, _processes

    monkeypatch.setattr(_process_dispatcher, "IDLE_SECONDS", 3600.0)
    backend = _processes.ProcessBackend(1)
    wake_r, wake_w = socket.socketpair()
    for sock in (wake_r, wake_w):
        sock.setblocking(False)
    backend._selector = selectors.DefaultSelector()
    backend._wake_r = _WakeUpsWithShutdownInBetween(wake_r, backend)  # type: ignore[assignment]
    backend._wake_w = wake_w
    dispatcher = threading.Thread(target=backend._dispatch_forever, daemon=True)
    dispatcher.start()
    try:
        assert backend._idle.wait(10), "the shutdown's wake-up was lost"
    finally:
        with backend._lock:
            backend._closing = True
        backend._wake()
        dispatcher.join(30)
        backend._selector.close()
        wake_r.close()
        wake_w.close()
    assert not dispatcher.is_alive()


class _CountedWakeUps:
    """The dispatcher's wake-up socket, counting its reads."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.reads = sock, 0

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return bytes(self.sock.recv(size))

    def close(self) -> None:
        self.sock.close()


def nap_5ms(x: int) -> int:
    time.sleep(0.005)
    return x


def test_the_dispatcher_reads_its_wake_up_socket_only_after_a_wake_up(monkeypatch: Any) -> None:
    # Reading it at every turn of its loop cost a system call per answer (a read that
    # finds nothing), on the thread that stands between a worker and its next batch.
    from manyhands._backends import _processes

    wake_ups: list[int] = []
    sockets: list[_CountedWakeUps] = []
    dispatch, wake = _processes.ProcessBackend._dispatch_forever, _processes.ProcessBackend._wake

    def counted_dispatch(self: Any) -> None:
        self._wake_r = _CountedWakeUps(self._wake_r)
        sockets.append(self._wake_r)
        dispatch(self)

    def counted_wake(self: Any) -> None:
        wake_ups.append(1)
        wake(self)

    monkeypatch.setattr(_processes.ProcessBackend, "_dispatch_forever", counted_dispatch)
    monkeypatch.setattr(_processes.ProcessBackend, "_wake", counted_wake)
    outcomes = manyhands.map(nap_5ms, range(40), workers=2, backend="processes", batch_size=1)
    assert sorted(out.value for out in outcomes) == list(range(40))
    (socket,) = sockets
    # Once at the start, then at most twice per wake-up (it reads until a read finds
    # nothing: the bytes of several wake-ups may come in one read). Before, at least
    # once per answer (40 here), while the run's batches found work waiting in the
    # backend and woke it a few times only.
    assert socket.reads <= 1 + 2 * len(wake_ups)


_SENT_BEFORE_READ: list[int] = []


class _Probe:
    """A value whose unpickling notes how many batches its worker's channel had sent."""

    channel: Any = None

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_probe_loaded, ())


def _probe_loaded() -> str:
    _SENT_BEFORE_READ.append(len(_Probe.channel.frames))
    return "probed"


def test_an_answer_sends_its_worker_the_next_batch_before_it_is_read() -> None:
    # The worker waits for its next batch; the answer's unpickling, its filing and its
    # hand-over to the run (whose thread then wants the GIL) come after.
    import pickle

    from manyhands._backends._process_spawn import Worker
    from manyhands._backends._processes import ProcessBackend
    from manyhands._batch import Batch, Task

    class Channel:
        closed = False

        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def send(self, data: bytes) -> bool:
            self.frames.append(data)
            return True

    backend = ProcessBackend(1, timed=True)  # (one batch at a time per worker: a Pool's)
    done: list[Batch] = []
    task = Task(abs, done.append)
    task.key = 1
    backend._functions[1] = b"fn"
    _Probe.channel = channel = Channel()
    worker = Worker(None, channel, None, None, None)  # type: ignore[arg-type]
    worker.ready = True
    worker.functions[1] = None
    backend._pool.append(worker)
    first, second = Batch(0, [-1], task), Batch(1, [-2], task)
    worker.sent.append((first, [0]))
    backend._inbox.put((second, [0]), task)
    answer = pickle.dumps(("done", [_Probe()], {}, 0.01, 0.01))
    _SENT_BEFORE_READ.clear()
    backend._handle(worker, bytearray(answer), refill=True)
    assert _SENT_BEFORE_READ == [1]  # the next batch had gone when the answer was read
    assert [batch for batch, _ in worker.sent] == [second]
    assert done == [first] and first.values == ["probed"]


def crash_on_2(x: int) -> int:
    if x == 2:
        os._exit(1)
    return x


def test_a_replacement_worker_is_sent_work_once_ready_without_an_answer_to_prompt_it(
    monkeypatch: Any,
) -> None:
    # The only worker dies: no answer will come to make the dispatcher look again, and
    # the run's next batches find work waiting, so they do not wake it. Its
    # replacement saying "ready" must be enough (the select's idle timeout, the last
    # resort, is an hour here).
    from manyhands._backends import _process_dispatcher

    monkeypatch.setattr(_process_dispatcher, "IDLE_SECONDS", 3600.0)
    reports: list[manyhands.Report] = []
    thread = threading.Thread(
        target=lambda: reports.append(
            manyhands.run(crash_on_2, range(8), backend="processes", workers=1, batch_size=1)
        ),
        daemon=True,
    )
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the replacement worker was never sent the rest"
    (report,) = reports
    assert report.succeeded == 7
    assert report.errors_by_type == {"manyhands.WorkerCrashed": 1}
