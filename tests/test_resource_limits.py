"""When the system refuses threads: the run goes on with fewer, or ends with a clear error."""

from __future__ import annotations

import _thread
import sqlite3
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._backends._threads import ThreadBackend

from .conftest import finish, start_python


def refusing_after(monkeypatch: pytest.MonkeyPatch, allowed: int) -> None:
    """Threads start until ``allowed`` of them did; then "can't start new thread"."""
    started = 0

    def start(function: Callable[..., Any], args: tuple[Any, ...]) -> int:
        nonlocal started
        if started >= allowed:
            raise RuntimeError("can't start new thread")
        started += 1
        return _thread.start_new_thread(function, args)

    monkeypatch.setattr(ThreadBackend, "_start_thread", staticmethod(start))


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_thread_limit_runs_on_fewer_workers_and_the_report_says_so(
    monkeypatch: pytest.MonkeyPatch, timeout: float | None
) -> None:
    refusing_after(monkeypatch, 3)
    report = manyhands.run(lambda x: time.sleep(0.001), range(200), workers=50, timeout=timeout)
    assert (report.succeeded, report.failed) == (200, 0)
    assert any("3 worker threads, not 50" in note for note in report.notes), report.notes
    assert "note: ran on 3 worker threads" in str(report)


def test_no_thread_at_all_fails_with_the_limit_the_fix_and_a_saved_journal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    refusing_after(monkeypatch, 0)
    journal = tmp_path / "j.db"
    with pytest.raises(manyhands.WorkerInitError, match="can't start new thread") as caught:
        manyhands.run(abs, range(100), journal=journal)
    assert "workers=" in str(caught.value) and "ulimit" in str(caught.value)
    assert caught.value.report is not None and caught.value.report.succeeded == 0
    with sqlite3.connect(journal) as db:
        [(status,)] = db.execute("SELECT status FROM runs").fetchall()
    assert status.startswith("failed to start: no worker thread could be started")
    monkeypatch.undo()  # threads again: the journal is not left locked
    assert manyhands.run(abs, range(100), journal=journal).succeeded == 100


def test_a_real_memory_limit_on_thread_stacks_runs_on_fewer_workers() -> None:
    code = textwrap.dedent(
        """
        import resource, time
        import manyhands
        # Each thread's stack reserves 8 MiB of address space: 300 MiB allow a few dozen.
        resource.setrlimit(resource.RLIMIT_AS, (300 << 20, resource.RLIM_INFINITY))
        report = manyhands.run(lambda x: time.sleep(0.01), range(300), workers=200)
        print(report.succeeded, report.failed)
        print(*report.notes)
        """
    )
    proc = start_python(code)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    counts, note = out.splitlines()
    assert counts == "300 0"
    assert "not 200: no more could be started" in note
