"""The live progress display: on stderr when asked or on a terminal, off the hot path."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import manyhands
from manyhands._progress import Progress

from .conftest import python_subprocess_env


def final_line(text: str) -> str:
    """The last state tqdm drew (it redraws in place with carriage returns)."""
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_progress_shows_counts_rate_and_eta_of_a_sized_input(
    capsys: pytest.CaptureFixture[str], no_thread_left: None
) -> None:
    def fn(x: int) -> int:
        if x % 10 == 0:
            raise ValueError(x)
        return x

    report = manyhands.run(fn, list(range(200)), workers=4, progress=True)
    err = capsys.readouterr().err
    line = final_line(err)
    assert report.failed == 20
    assert "200/200" in line  # total from len(): an ETA is possible
    assert "failed 20" in line
    assert "in flight 0" in line
    assert "items/s" in line
    assert "p50" in line
    assert capsys.readouterr().out == ""  # stdout is left to the user


def test_progress_of_an_iterator_is_not_counted_in_advance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pulled: list[int] = []

    def items() -> Iterator[int]:
        for n in range(50):
            pulled.append(n)
            yield n

    generator = items()
    outcomes = manyhands.map(str, generator, progress=True)
    assert pulled == []  # nothing consumed to count it
    assert len(list(outcomes)) == 50
    line = final_line(capsys.readouterr().err)
    assert "50 items" in line and "/" not in line.split("items")[0]  # no total, no ETA


def test_total_option_gives_an_eta_for_a_generator(capsys: pytest.CaptureFixture[str]) -> None:
    manyhands.run(str, (n for n in range(30)), progress=True, total=30)
    assert "30/30" in final_line(capsys.readouterr().err)


def test_progress_is_off_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    manyhands.run(str, range(100))  # capsys: stderr is not a TTY
    assert capsys.readouterr().err == ""
    manyhands.run(str, range(100), progress=False)
    assert capsys.readouterr().err == ""


def test_progress_redraws_on_a_timer_while_calls_run(capsys: pytest.CaptureFixture[str]) -> None:
    release = threading.Event()

    def fn(x: int) -> int:
        if x == 0:
            release.wait(5)
        return x

    outcomes = manyhands.map(fn, range(20), workers=2, progress=True)
    seen = []
    for outcome in outcomes:
        seen.append(outcome.item)
        if len(seen) == 19:
            time.sleep(1.2)  # two ticks while item 0 still runs
            mid = capsys.readouterr().err
            release.set()
    assert "19/20" in final_line(mid) and "in flight 1" in final_line(mid)
    assert "20/20" in final_line(capsys.readouterr().err)


def test_progress_shows_retrying_items(capsys: pytest.CaptureFixture[str]) -> None:
    class Bar:
        def __init__(self, total: int | None) -> None:
            self.postfixes: list[str] = []
            self.n = 0

        def set_postfix_str(self, text: str, refresh: bool) -> None:
            self.postfixes.append(text)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            pass

    class Source:
        live: ClassVar[dict[str, Any]] = {
            "done": 7,
            "failed": 1,
            "retrying": 3,
            "in_flight": 5,
            "p50": 0.012,
            "p95": 0.25,
        }

    bars: list[Bar] = []

    def factory(total: int | None) -> Bar:
        bars.append(Bar(total))
        return bars[-1]

    progress = Progress(Source(), total=10, interval=60, bar_factory=factory)
    progress.close()
    progress.close()  # idempotent
    assert bars[0].n == 7
    assert bars[0].postfixes == ["failed 1 · retrying 3 · in flight 5 · p50 12.0ms p95 250.0ms"]


def test_ctrl_c_with_progress_leaves_no_thread_and_ends_the_line() -> None:
    code = """
import threading, time, manyhands
def fn(x):
    time.sleep(0.05)
    return x
threading.Timer(0.5, lambda: __import__('_thread').interrupt_main()).start()
try:
    manyhands.run(fn, range(10_000), workers=4, progress=True)
except KeyboardInterrupt:
    time.sleep(0.1)
    print('interrupted', threading.active_count())
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_subprocess_env(),
    )
    assert out.stdout.strip() == "interrupted 1", out
    assert "manyhands" in out.stderr and out.stderr.endswith("\n")


def test_a_broken_len_costs_only_the_eta(capsys: pytest.CaptureFixture[str]) -> None:
    class Odd:
        def __iter__(self) -> Iterator[int]:
            return iter(range(5))

        def __len__(self) -> int:
            raise RuntimeError("no length today")

    report = manyhands.run(str, Odd(), progress=True)
    assert report.succeeded == 5
    assert "5 items" in final_line(capsys.readouterr().err)


def test_import_does_not_load_tqdm() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, manyhands; print('tqdm' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
