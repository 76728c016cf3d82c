"""What the parts of an open journal share: its state, and the segments it hands out.

:class:`~._journal.Journal` is made of parts that read and write the same
state: reading the input (:mod:`._journal_read`), deciding what is skipped
(:mod:`._journal_skip`), recording outcomes (:mod:`._journal_record`) and
the run's start (:mod:`._journal_begin`). They are mixins of one object,
not objects that call each other, so that the path every item takes costs
no more than one class's methods would; :class:`JournalState` declares
what they share (``Journal.__init__`` sets it, with what each holds).
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._journal_rows import Unrecordable
from ._journal_values import StoredValues
from ._journal_writer import Writer
from ._key_check import KeyCheck
from ._outcome import Failure

__all__ = ["DONE", "JournalState", "Memo", "Segment"]

Memo = str | bytes  # a key as the sets in memory hold it (see memory_key)

DONE = "done"


@dataclass
class Segment:
    """Consecutive input items, all to run or all to skip.

    For a skip segment, ``reasons`` says why each is skipped and ``values``
    and ``failures`` hold what the journal has (values only with
    ``store_results``).
    """

    items: list[Any]
    keys: list[str]
    reasons: list[str] | None = None
    values: list[Any] | None = None
    failures: dict[int, Failure] | None = None
    waiting: list[int] | None = None  # duplicates whose first copy still runs: by index


class JournalState:
    """The state the parts of a :class:`~._journal.Journal` share (set by its ``__init__``)."""

    path: Path
    run_id: int
    pulled: int
    error: BaseException | None
    _key: Callable[[Any], Any] | None
    _retry_failed: bool
    _store_results: bool
    _values: StoredValues
    _changed_items: str
    _detailed: bool
    _limit: int
    _unrecordable: Unrecordable
    _key_check: KeyCheck | None
    _fresh: bool
    _writer: Writer
    _source: Iterator[Any] | None
    _buffer: deque[tuple[Any, str, str | None]]
    _new_items: list[Any]
    _new_keys: list[str]
    _new_prints: list[str | None]
    _new_at: int
    _block: int
    _looked_up: dict[str, tuple[Any, ...]]
    _running: set[Memo]
    _rerunning: set[Memo]
    reran_failed: int
    _unsaved: set[Memo]
    _unsaved_failed: dict[Memo, Failure]
    _failed_kept: set[Memo]
    _firsts: dict[Memo, int]
    _prints: dict[Memo, str | None]
    _ended: bool

    def _opened(self) -> sqlite3.Connection:
        """The reader, once the journal is open (see ``Journal._opened``)."""
        raise NotImplementedError
