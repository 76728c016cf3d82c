from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

import manyhands

BACKENDS = ["threads"]


def pytest_configure(config: pytest.Config) -> None:
    """Let the children the tests interrupt see Ctrl-C as a user's program would.

    A shell that starts pytest in the background (``pytest &``, ``nohup``)
    sets SIGINT to "ignore", and children inherit that: the Ctrl-C tests would
    then wait for a process that cannot hear them. A handled signal is reset
    to its default in a child, so handling it here undoes that.
    """
    del config
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every behaviour test runs once per backend."""
    return str(request.param)


class Hands:
    """``run``/``map`` on one backend; for ``async``, ``fn`` is wrapped in a coroutine.

    The wrapper awaits once before calling ``fn``, so every item really
    suspends on the event loop, then runs the same body as the thread tests.
    For ``processes``, ``fn`` travels to worker processes with cloudpickle, so a
    shared test's ``fn`` must not close over locks or count calls in this process.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def wrap(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if self.backend != "async":
            return fn

        async def call(item: Any) -> Any:
            await asyncio.sleep(0)
            return fn(item)

        return call

    def run(self, fn: Callable[[Any], Any], items: Any, **options: Any) -> Any:
        return manyhands.run(self.wrap(fn), items, backend=self.backend, **options)

    def map(self, fn: Callable[[Any], Any], items: Any, **options: Any) -> Any:
        return manyhands.map(self.wrap(fn), items, backend=self.backend, **options)


@pytest.fixture(params=["threads", "async", "processes"])
def hands(request: pytest.FixtureRequest) -> Hands:
    """The behaviour tests shared by every backend: threads, coroutines on asyncio, processes."""
    return Hands(str(request.param))


def os_thread_count() -> int:
    return psutil.Process().num_threads()


def wait_for_threads(limit: int, timeout: float = 2.0) -> int:
    """OS threads of this process once they fall to ``limit`` (or the timeout passes).

    A worker releases its lifetime lock a few microseconds before its OS thread
    is gone, so a short settle is allowed; a thread still running user code
    would be far slower than this.
    """
    deadline = time.monotonic() + timeout
    while (count := os_thread_count()) > limit and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


@pytest.fixture
def no_thread_left() -> Iterator[None]:
    """Fails the test if it leaves any OS thread behind."""
    before = os_thread_count()
    yield
    assert wait_for_threads(before) <= before, "a thread of the run outlived it"


def wait_for_lines(path: os.PathLike[str] | str, count: int, timeout: float = 30.0) -> None:
    """Wait until a file a subprocess appends to has ``count`` lines (it is well under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as file:
                if sum(1 for _ in file) >= count:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {count} lines in {timeout}s")


def python_subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_main_script(folder: Path, body: str) -> tuple[list[str], list[str]]:
    """Run ``body`` as a main script; (its output's words, each ``__name__`` it ran under).

    The script logs its ``__name__`` each time a process imports it: ``__main__``
    for the run itself, ``__mp_main__`` in each worker process (or forkserver) that
    imports it to find the functions it is sent.
    """
    script, log = folder / "job.py", folder / "imports.log"
    header = 'import sys\nwith open(sys.argv[1], "a") as file:\n    file.write(__name__ + "\\n")\n'
    script.write_text(header + textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=60,
        env=python_subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split(), log.read_text().split()


def start_python(code: str) -> subprocess.Popen[str]:
    """``python -c code`` importing what this test run imports; output captured as text."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=python_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[Any], timeout: float) -> tuple[Any, Any]:
    """``proc.communicate(timeout)``; a process that does not end in time is killed."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # (reaped, its pipes closed: no warning lands on a later test)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of a child's stdout, or AssertionError after ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no line from the child in {timeout}s")
    return proc.stdout.readline().strip()


def interrupt_when_ready(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Start ``argv`` (a Python child that prints "ready" once under way), send it SIGINT
    at that line, and return its stderr once it ended (killed if it takes over a minute)."""
    proc = subprocess.Popen(
        argv, env=env or python_subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert read_line(proc, 60) == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = finish(proc, 60)
    finally:
        proc.kill()
    return str(err)


class PeakConcurrency:
    """Wraps a function to count how many of its calls ran at once (``peak``)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def wrap(self, body: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def counted(item: Any) -> Any:
            with self._lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                return body(item)
            finally:
                with self._lock:
                    self.running -= 1

        return counted


T = TypeVar("T")


def within(scenario: Callable[[], T], seconds: float = 20.0) -> T:
    """Run ``scenario`` in a thread; its value, or its exception; fail if it hangs."""
    result: list[Any] = []

    def call() -> None:
        try:
            result.append((True, scenario()))
        except BaseException as exc:  # (handed back to the test's thread)
            result.append((False, exc))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if not result:
        pytest.fail(f"hung: still waiting after {seconds} s")
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
