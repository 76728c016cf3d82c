"""The live progress display: on stderr when asked or on a terminal, off the hot path."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from tqdm.std import tqdm

import manyhands
from manyhands._outcome import Failure
from manyhands._progress import DROP_ORDER, MIN_BAR, Progress, progress_line

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


LIVE: dict[str, Any] = {
    "done": 1_234_567,
    "failed": 12_345,
    "retrying": 321,
    "in_flight": 1_000,
    "p50": 0.0123,
    "p95": 0.25,
    "failing_alike": None,
}
RATE = 1_234_567 / 3725  # items/s over the run, as the final line shows it
FULL = progress_line(LIVE, 2_000_000, 3725.0, RATE, None)
PIECES = FULL.split(" · ")


class Source:
    def __init__(self, live: dict[str, Any]) -> None:
        self.live = live


def drawn(width: int, live: dict[str, Any] = LIVE, total: int | None = 2_000_000) -> str:
    """The last line a real tqdm drew at a terminal ``width`` columns wide."""
    out = io.StringIO()
    readings = [0.0, 3725.0]  # an injected clock: the run started 3,725 s ago

    def clock() -> float:
        return readings.pop(0) if len(readings) > 1 else readings[0]

    def bar(total: int | None, bar_format: str) -> Any:
        return tqdm(total=total, bar_format=bar_format, file=out, ncols=width)

    progress = Progress(Source(live), total, interval=60, bar_factory=bar, clock=clock)
    progress.close()
    return final_line(out.getvalue())


def test_a_resumes_skipped_items_are_not_part_of_its_rate() -> None:
    """1,000,000 of the 1,234,567 done were skipped (final in the journal): the rate and
    the ETA are those of the 234,567 run in 3,725 s, not of items that took no time."""
    line = drawn(250, LIVE | {"skipped": 1_000_000})
    assert f"{234_567 / 3725:,.1f} items/s" in line, line
    assert f"{RATE:,.1f} items/s" not in line


@pytest.mark.parametrize("width", [20, 30, 40, 60, 80, 100, 120, 160, 250])
def test_the_line_fits_the_terminal_and_never_cuts_a_number(width: int) -> None:
    line = drawn(width)
    assert len(line) <= width
    assert "1,234,567/2,000,000" in line  # always shown
    if width >= 40:
        assert "failed 12,345" in line
    for piece in line.split(" · ")[1:]:
        assert piece in PIECES  # whole fields only, never a cut one
    if "|" in line:  # a bar only with room for it, never a stub
        assert len(line.split("|")[1]) >= MIN_BAR
    if width >= 120:
        assert "in flight 1,000" in line and "retrying 321" in line


def test_fields_are_dropped_in_a_fixed_order() -> None:
    names = {
        "p95": "p95 ",
        "slowdown": "rate 180/s",
        "desc": "manyhands:",
        "p50": "p50 ",
        "in_flight": "in flight",
        "rate": "items/s",
        "retrying": "retrying",
        "time": "<",
        "percent": "62%",
        "alike": "all failed",
        "not_run": "not run 40",
        "failed": "failed 12,345",
    }
    live = {
        **LIVE,
        "failing_alike": Failure.from_exception(1, TypeError("x")),
        "slowdown": "rate 180/s",
        "not_run": 40,
    }
    dropped_before: set[str] = set()
    for width in range(200, 18, -1):
        line = progress_line(live, 2_000_000, 3725.0, RATE, width)
        dropped = {name for name, mark in names.items() if mark not in line}
        order = [name for name in DROP_ORDER if name in dropped]
        assert order == list(DROP_ORDER[: len(order)]), (width, line)  # a prefix of the order
        assert dropped >= dropped_before  # narrower never brings a field back
        dropped_before = dropped
    assert dropped_before == set(names)


def test_a_line_without_a_total_or_a_known_width_keeps_everything() -> None:
    line = progress_line({**LIVE, "retrying": 0}, None, 5.0, None, None)
    assert line == "manyhands: 1,234,567 items · 00:05 · failed 12,345 · in flight 1,000 · " + (
        "p50 12.3ms · p95 250.0ms"
    )
    assert "{bar}" in progress_line(LIVE, 2_000_000, 5.0, None, None)  # a notebook widget


def test_items_never_called_are_shown_apart_from_the_failed_ones() -> None:
    line = progress_line({**LIVE, "retrying": 0, "not_run": 40}, None, 5.0, None, None)
    assert "· failed 12,345 · not run 40 · in flight 1,000 ·" in line
    assert "not run" not in progress_line({**LIVE, "not_run": 0}, None, 5.0, None, None)


def test_retrying_counts_the_items_in_their_retries_now(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tries: Counter[int] = Counter()
    release = threading.Event()

    def fn(x: int) -> int:
        tries[x] += 1
        if x == 0:
            if tries[x] <= 3:
                raise ConnectionError("down")
            release.wait(10)  # the 4th attempt runs until we have looked
        return x

    policy = manyhands.Retry(retries=5, backoff=0.001, max_backoff=0.001)
    err = ""
    outcomes = manyhands.map(fn, range(20), workers=2, retry=policy, progress=True)
    for seen, _ in enumerate(outcomes, 1):
        if seen == 19:
            deadline = time.monotonic() + 10
            while "19/20" not in err and time.monotonic() < deadline:
                time.sleep(0.1)  # until the line is redrawn (twice a second)
                err += capsys.readouterr().err
            release.set()
    assert "19/20" in final_line(err) and "retrying 1 " in final_line(err) + " "  # not 3
    end = final_line(capsys.readouterr().err)
    assert "20/20" in end and "retrying" not in end  # nothing is left to retry


def test_every_item_failing_alike_shows_in_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fn(x: int) -> int:
        return x.upper()  # type: ignore[attr-defined,no-any-return]

    manyhands.run(fn, range(50), progress=True)
    assert "all failed: AttributeError, a bug in fn?" in final_line(capsys.readouterr().err)
    manyhands.run(lambda x: 1 / (x % 2), range(50), progress=True)
    assert "all failed" not in final_line(capsys.readouterr().err)


def test_ctrl_c_with_progress_leaves_no_thread_and_ends_the_line() -> None:
    code = """
import _thread, threading, time, manyhands
def fn(x):
    if x == 40:  # well under way, the line drawn, however loaded the machine
        _thread.interrupt_main()
    time.sleep(0.05)
    return x
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
