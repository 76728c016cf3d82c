"""Text as the journal stores it: losslessly, measured in bytes, cut to fit SQLite's limit.

- Text is stored losslessly: a str that UTF-8 cannot encode (a lone
  surrogate, from a file name that is not UTF-8) is stored as a BLOB of its
  ``surrogatepass`` bytes (:func:`to_db`), and read back as the same str
  (:func:`from_db`).
- A row never exceeds SQLite's length limit (:func:`length_limit`): a commit
  that held one would fail whole, and every resume would fail there again.
  A value that does not fit is not stored (its item is done, without its
  value), a failure's texts are cut (:func:`cut_text`), and a row whose key
  alone does not fit is not written (see :mod:`._journal_rows`).
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

__all__ = [
    "LENGTH_LIMIT",
    "MAX_TEXT",
    "ROW_MARGIN",
    "cut_text",
    "db_size",
    "from_db",
    "length_limit",
    "to_db",
]

#: SQLite's limit on the length of a string, a BLOB and a whole row, in bytes
#: (SQLITE_MAX_LENGTH, unless the build set another). Python 3.11+ reads the
#: connection's own limit, which can only be lower (:func:`length_limit`).
LENGTH_LIMIT = 1_000_000_000
#: Bytes of a row kept for its record header and its numbers (state, attempts,
#: times, run, fingerprint, value format), beside its key, value and texts.
ROW_MARGIN = 1024
#: A failure's message and traceback (and error type, and the item's repr) are
#: stored cut to this many characters (the middle is left out, and says so).
MAX_TEXT = 1_000_000


def to_db(text: str) -> str | bytes:
    """``text`` as SQLite can store it: itself, or its bytes when UTF-8 cannot encode it.

    >>> to_db("café"), to_db("caf\\udce9")
    ('café', b'caf\\xed\\xb3\\xa9')
    """
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def from_db(value: Any) -> Any:
    """What :func:`to_db` stored, as the str it was; other values as they are.

    >>> from_db(to_db("caf\\udce9")) == "caf\\udce9", from_db(None)
    (True, None)
    """
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # not written by to_db: show it, never fail on it
        return value.decode("utf-8", "backslashreplace")


def length_limit(db: sqlite3.Connection) -> int:
    """The most bytes a string, a BLOB or a row may hold in ``db`` (see ``LENGTH_LIMIT``)."""
    if sys.version_info < (3, 11):  # (no getlimit)
        return LENGTH_LIMIT
    return min(LENGTH_LIMIT, db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))


def db_size(data: str | bytes) -> int:
    """The bytes SQLite stores for ``data`` (a str as :func:`to_db` binds it).

    >>> db_size("abc"), db_size("café"), db_size(b"\\x00")
    (3, 5, 1)
    """
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def cut_text(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters; else its start and end, and a note.

    The end of a traceback says what was raised, so both ends are kept.

    >>> cut_text("abc", 10)
    'abc'
    >>> cut_text("a" * 100 + "z" * 100, 120)
    'aaaaaaaaaaaaaaaaaaaa\\n[... 160 of 200 characters not stored ...]\\nzzzzzzzzzzzzzzzzzzzz'
    """
    if len(text) <= limit:
        return text
    keep = max(limit - 80, 0) // 2  # (the note takes fewer than 80)
    note = f"\n[... {len(text) - 2 * keep:,} of {len(text):,} characters not stored ...]\n"
    return text[:keep] + note + text[len(text) - keep :]
