"""Which of a journal's records an ``--output`` file holds lines for, across resumes.

A resume appends to its ``--output`` file and writes no line for the items the
journal skips, because the file holds theirs already. That holds while every run
that recorded items wrote them to this file. It does not when a run wrote to
another file (or none), or when a resume into a new file, which writes every
item (the skipped ones from the journal), was stopped before it reached the end
of its input: the next resume into that file would leave the rest out for good.

So the command keeps a mark per output file in the journal's ``meta`` table,
under ``output <real path>``:

- ``through N``: the file holds a line for every item recorded by run ``N`` and
  the runs before it (written as a run that wrote to it ends, unless the mark
  below must stay);
- ``catching up``: a run began writing every item into it and has not reached
  the end of its input yet.

A resume into a file that is not empty then writes a line for each skipped item
the file does not hold (:func:`keys_held`, read from its lines) when the mark
says ``catching up``, or when an item was recorded after run ``N``; with no
mark (a journal from before marks, a file never marked) the file is taken as
whole, as before. The marks are written from the command's own connection:
small transactions beside the run's writer, which SQLite serializes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._exceptions import JournalError

__all__ = ["Held", "Marks", "keys_held", "needs_catch_up", "set_mark", "through"]

CATCHING_UP = "catching up"
_THROUGH = "through "
_BUSY_SECONDS = 30.0  # how long a mark waits for the run's writer to commit


def _name(output: str) -> str:
    return f"output {os.path.realpath(output)}"


def needs_catch_up(journal: str, output: str) -> bool:
    """Whether ``output`` (a file with lines) lacks lines of items the journal recorded."""
    from ._inspect import reading

    try:
        with reading(journal) as db:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (_name(output),)).fetchone()
            if row is None:
                return False  # (unmarked: taken as whole, as before marks)
            mark = str(row[0])
            if mark == CATCHING_UP:
                return True
            if not mark.startswith(_THROUGH):
                return False
            run = int(mark[len(_THROUGH) :])
            # Runs since: this one (its row is there, it recorded nothing yet) and
            # any other, whose items, if it recorded some, went elsewhere. Only
            # then are the items read (a scan of the table): not on a plain resume.
            (since,) = db.execute("SELECT count(*) FROM runs WHERE id > ?", (run,)).fetchone()
            if since <= 1:
                return False
            later = db.execute("SELECT 1 FROM items WHERE run > ? LIMIT 1", (run,)).fetchone()
            return later is not None
    except (JournalError, sqlite3.Error, ValueError, OSError):
        return False  # (the run itself says what is wrong with the journal)


def set_mark(journal: str, output: str, mark: str) -> None:
    """Record ``mark`` (:data:`CATCHING_UP` or ``"through N"``) for ``output``; never raises.

    A mark that cannot be written leaves the last one, which is never more
    than the file holds, or none (then a later resume into the file may miss
    lines, as before marks).
    """
    # (by the name the run uses: SQLite names the -wal and -shm after it; mode=rw: a
    # journal removed during the run is not made again, as an empty file, here)
    uri = f"{Path(os.path.realpath(journal)).as_uri()}?mode=rw"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=_BUSY_SECONDS)) as db, db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_name(output), mark))
    except (sqlite3.Error, OSError):
        pass


def through(run_id: int) -> str:
    """The mark of a file that holds every item recorded up to run ``run_id``."""
    return f"{_THROUGH}{run_id}"


#: A held line's mark: an item's key, or ("row", text) for a row the run could not
#: read or key (its item is the row's text; its record's key is ``<line N>``).
Held = str | tuple[str, str]
_BAD_ROWS = ("manyhands.cli.MalformedLine", "manyhands.cli.KeyFunctionError")


def keys_held(output: str, key: Callable[[Any], str]) -> set[Held]:
    """The marks of the items ``output``'s lines are for (see :data:`Held`).

    A line that does not parse, or whose item the key function raises for,
    is for no item: whatever the key function raises.
    """
    held: set[Held] = set()
    with open(output, "rb") as file:
        for line in file:
            try:
                record = json.loads(line)
                item, error = record["item"], record.get("error")
                if isinstance(error, dict) and error.get("type") in _BAD_ROWS:
                    held.add(("row", item))
                else:
                    held.add(key(item))
            except Exception:  # (the user's key function may raise anything)
                continue
    return held


class Marks:
    """The marks of one ``--output`` file in one journal, for :class:`OutputFile`.

    Args:
        journal: the journal's path.
        output: the output file's path (a regular file).
        key: the run's key of an item (``--key``, or the default key).
    """

    def __init__(self, journal: str, output: str, key: Callable[[Any], str]) -> None:
        self._journal = journal
        self._output = output
        self.key = key
        self._catching_up = False

    def started(self, size: int) -> set[Held] | None:
        """The file, ``size`` bytes, is about to take lines of a resume (the lock held).

        Returns None if it holds a line for every recorded item, or else the
        keys of the items it holds lines for (none if it is empty), and then
        marks it as catching up.
        """
        if size == 0:
            held: set[Held] = set()
        elif needs_catch_up(self._journal, self._output):
            held = keys_held(self._output, self.key)
        else:
            return None
        self._catching_up = True
        set_mark(self._journal, self._output, CATCHING_UP)
        return held

    def ended(self, run_id: int, *, whole_input: bool) -> None:
        """The run ``run_id`` that wrote the file ended (``whole_input``: it read all of it).

        The file then holds every item recorded through this run, unless it
        was catching up and did not reach the end of its input.
        """
        if run_id and (whole_input or not self._catching_up):
            set_mark(self._journal, self._output, through(run_id))
