"""The command's signal handling, in this process: where a stop may land, and where it waits."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from manyhands._signals import StopSignals, hold_stop_signals, release_stop_signals
from manyhands.cli import Terminated

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def record_step(log: list[str]) -> None:
    """Stands for the run recording what it delivered: a stop must not land halfway."""
    log.append("started")
    signal.raise_signal(signal.SIGTERM)  # (its handler runs before the next line)
    log.append("finished")


def test_a_signal_in_a_protected_step_lands_right_after_it() -> None:
    log: list[str] = []
    with pytest.raises(Terminated) as stopped, StopSignals(protect=[record_step]):
        record_step(log)
        log.append("after")
        time.sleep(60)  # the run waiting for its next outcome: the stop lands here
    assert log == ["started", "finished", "after"]
    assert stopped.value.run_status == "terminated" and stopped.value.exit_code == 143


def test_a_signal_while_an_outcome_is_held_lands_once_it_is_written() -> None:
    written: list[int] = []
    with pytest.raises(KeyboardInterrupt), StopSignals() as signals:
        for outcome in signals.guard(range(10)):
            if outcome == 3:
                signal.raise_signal(signal.SIGINT)
            written.append(outcome)
            signals.done()
    assert written == [0, 1, 2, 3]


def test_a_second_signal_stops_at_once() -> None:
    written: list[int] = []
    with pytest.raises(KeyboardInterrupt), StopSignals() as signals:
        for outcome in signals.guard(range(10)):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            written.append(outcome)  # (not reached: the second one did not wait)
    assert written == []


def test_the_handlers_are_restored_and_an_ignored_signal_stays_ignored() -> None:
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        interrupt = signal.getsignal(signal.SIGINT)
        with StopSignals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not interrupt
        assert signal.getsignal(signal.SIGINT) is interrupt
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_held_stop_signals_do_nothing_then_come_back_for_an_in_process_caller() -> None:
    before = signal.getsignal(signal.SIGINT)
    hold_stop_signals()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # (nothing happens: no KeyboardInterrupt)
        time.sleep(0.01)
    finally:
        release_stop_signals(exiting=False)
    assert signal.getsignal(signal.SIGINT) is before
