"""A group of rows the journal's writer commits in one transaction, and how its done batches go in.

SQLite releases the GIL while it steps, so the work runs beside the
engine. The common rows (done, default keys, nothing stored) go in one
statement per group, which reads them from JSON: ``executemany`` releases
and retakes the GIL for each row, and with busy Python threads around,
each retake can wait for a switch interval.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Group", "insert_batches", "supports_json"]

# A group's done batches as two JSON documents: their fields, [[attempts, elapsed
# ns, finished us], ...], and their keys, [[key, ...], ...], matched by position.
# Whole numbers: encoding a float takes twice as long, under the GIL. Keys apart:
# each is parsed twice, not four times (taken out of one document, a batch's keys
# are written out and read again), which made a group of tiny items ~5% faster.
# MATERIALIZED: each batch's fields are read once, not per key.
_DONE_BATCHES = """
WITH fields AS MATERIALIZED (
    SELECT key AS batch, json_extract(value, '$[0]') AS attempts,
           json_extract(value, '$[1]') / 1e9 AS elapsed,
           json_extract(value, '$[2]') / 1e6 AS finished
    FROM json_each(?)
), keys AS MATERIALIZED (SELECT key AS batch, value AS keys FROM json_each(?))
INSERT OR REPLACE INTO items (key, state, attempts, elapsed, finished, run)
SELECT key.value, 'done', attempts, elapsed, finished, ?
FROM keys JOIN fields USING (batch), json_each(keys.keys) AS key
"""
# Without JSON support in SQLite: one row at a time.
_DONE = (
    "INSERT OR REPLACE INTO items (key, state, attempts, elapsed, finished, run) "
    "VALUES (?, 'done', ?, ?, ?, ?)"
)


@dataclass
class Group:
    """Rows handed over together; the writer commits a group in one transaction."""

    #: done batches of default keys: (attempts, elapsed in ns, finished in us since the epoch, keys)
    batches: list[tuple[int, int, int, list[str]]] = field(default_factory=list)
    done: list[tuple[Any, ...]] = field(default_factory=list)  # other done rows
    failed: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[Sequence[str | bytes]] = field(default_factory=list)  # as the consumer holds them
    rows: int = 0


def insert_batches(
    db: sqlite3.Connection,
    batches: list[tuple[int, int, int, list[str]]],
    run: int,
    as_json: bool,
) -> None:
    """Insert a group's done batches (:attr:`Group.batches`) as rows of the run ``run``.

    ``as_json``: in one statement that reads them from JSON (:func:`supports_json`),
    else a row at a time.
    """
    if not batches:
        return
    if as_json:
        fields = json.dumps([batch[:3] for batch in batches])
        keys = json.dumps([batch[3] for batch in batches], ensure_ascii=False)
        db.execute(_DONE_BATCHES, (fields, keys, run))
        return
    db.executemany(
        _DONE,
        [
            (key, tries, each / 1e9, now / 1e6, run)
            for tries, each, now, keys in batches
            for key in keys
        ],
    )


def supports_json(db: sqlite3.Connection, run_id: int) -> bool:
    """Whether this SQLite has the JSON functions and MATERIALIZED (3.35, 2021)."""
    try:
        db.execute(_DONE_BATCHES, ("[]", "[]", run_id))
    except sqlite3.OperationalError:
        return False
    return True
