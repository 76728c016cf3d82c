"""``run --output`` and the journal: what a resume appends, and when a line counts as written.

A resume appends to the file (:func:`has_records`), and the journal's marks say
which recorded items it holds lines for (:func:`output_marks`); a row is never
committed before its line was flushed (:func:`flushing`), and the lines of calls
that finished in the grace period are written before their items are recorded
(:func:`late_lines`). When the file or the journal cannot be written, the error
says what was kept (:func:`output_failed`, :func:`before_journal_error`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._cli_terms import quietly, say
from ._exceptions import JournalError
from ._keys import default_key
from ._outcome import Outcome
from ._output import OutputFailed, OutputFile
from ._output_marks import Marks
from ._run import Run

__all__ = [
    "before_journal_error",
    "flushing",
    "has_records",
    "late_lines",
    "output_failed",
    "output_marks",
]


def has_records(journal: str) -> bool:
    """Whether an earlier run recorded items in ``journal`` (a rerun is then a resume).

    A journal left by a run that stopped before its first item (a bad ``--key``)
    holds none: its output is written afresh.
    """
    if not Path(journal).exists():
        return False
    from ._inspect import reading

    try:
        with reading(journal) as db:
            return db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
    except (JournalError, sqlite3.Error):  # (the run itself says what is wrong with it)
        return True


def output_marks(journal: str | None, output: str | None, options: dict[str, Any]) -> Marks | None:
    """The marks of which recorded items a regular ``--output`` file holds (with a journal)."""
    if journal is None or output is None or output == "-":
        return None
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(output).st_mode):
            return None  # (a pipe or a device takes every line)
    from ._key_fn import as_key

    keyfn: Callable[[Any], Any] = options.get("key") or default_key
    return Marks(journal, output, lambda item: as_key(keyfn(item)))


def flushing(sink: OutputFile, run: Run) -> Callable[[], None]:
    """``sink.flush``, which ends the journal's run as an "output error" when it fails."""

    def flush() -> None:
        try:
            sink.flush()
        except OutputFailed as exc:
            run.exit_status = exc.run_status
            raise

    return flush


def late_lines(sink: OutputFile) -> Callable[[list[Outcome[Any, Any]]], None]:
    """Write the lines of calls that finished in the grace period of a stopped run.

    The run records their items once this returns: what a command did in
    ``--grace`` is written and kept, not run again. A failed write raises,
    and those items run again.
    """

    def write(outcomes: list[Outcome[Any, Any]]) -> None:
        for outcome in outcomes:
            sink.write(outcome)
        sink.flush()

    return write


def before_journal_error(report: Any, sink: OutputFile | None, summary: Any) -> None:
    """Say what ran before a JournalError's line, and close the output quietly.

    (If its last lines fail too, its error must not take the journal's place.)
    """
    if report.total:
        with quietly():
            say(report, summary)
    if sink is not None:
        with contextlib.suppress(OutputFailed):
            sink.close()


def output_failed(exc: OutputFailed, journal: str | None, closed_as: str | None) -> OutputFailed:
    """The error of a run whose --output could not be written: what was kept, and what next.

    ``closed_as``: how the journal recorded the run's end (None: it could not be
    written either, a full disk filling both at once).
    """
    if not journal:
        kept = "the run stopped (without --journal, a rerun starts over)"
    elif closed_as is not None:
        kept = (
            f"the journal {journal} recorded only the items whose lines were written: "
            "make room and run the same command again to resume"
        )
    else:
        kept = (
            f"nor could the journal {journal} be written: it recorded some of the items "
            "whose lines were written, not all (the others run again, and get a second "
            "line): make room and run the same command again to resume"
        )
    return OutputFailed(exc.path, exc.error, kept)
