"""Noticing that the journal or its lock file was removed or replaced under the run.

SQLite would go on writing into a file that no path leads to any more, and
the run would "succeed" with its journal gone; a removed lock file lets
another run lock a new one and run the same items. :class:`Watch` notices
it before a write (at most every 50 ms: ``WATCH_INTERVAL`` in
:mod:`._journal_writer`) and as the journal closes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ._journal_lock import Lock, lock_path

__all__ = ["Watch"]


class Watch:
    """The identity of the journal's files, checked around writes (see ``WATCH_INTERVAL``).

    SQLite holds the journal open: once its path is removed or leads to
    another file, every commit "succeeds" into a file nobody will find. A
    removed lock file lets another run lock a new one and run the same items.

    Made once the journal file exists; :meth:`note_sidecars` once the run's
    first write created the ``-wal`` and ``-shm`` files.
    """

    def __init__(self, path: Path, lock: Lock) -> None:
        self.path = path
        self.lock_path = lock_path(path)
        self._journal = _identity(os.stat(path))
        self._lock = _identity(os.fstat(lock.fileno()))
        self._sidecars: dict[Path, tuple[int, int]] = {}
        self.note_sidecars()

    def note_sidecars(self) -> None:
        """Note the identity of the journal's ``-wal`` and ``-shm`` files, once they exist."""
        self._sidecars = {
            Path(f"{self.path}{suffix}"): _identity(os.stat(f"{self.path}{suffix}"))
            for suffix in ("-wal", "-shm")
            if os.path.exists(f"{self.path}{suffix}")
        }

    def journal_problem(self) -> str | None:
        """What happened to the journal, if it is gone or is another file; else None."""
        what = _changed(self.path, self._journal)
        if what == "removed":
            return (
                f"the journal {self.path} was removed during the run (or its directory was); "
                "what was recorded in it went with it"
            )
        if what == "replaced":
            return (
                f"the journal {self.path} was replaced by another file during the run; that "
                "file was left untouched, and this run's records are not in it"
            )
        return None

    def lock_problem(self) -> str | None:
        """What happened to the lock file, if it is gone or is another file; else None."""
        what = _changed(self.lock_path, self._lock)
        if what is None:
            return None
        return (
            f"the journal's lock file {self.lock_path} was {what} during the run, so "
            "another run could have started on the same journal"
        )

    def tidy_after_close(self) -> None:
        """Once the database is closed: if the journal moved, remove our -wal and -shm.

        SQLite keeps the WAL of a database that moved rather than checkpoint
        it. Left next to whatever the path now leads to, the next reader
        would apply this run's pages to that file.
        """
        if _changed(self.path, self._journal) is None:
            return
        for sidecar, identity in self._sidecars.items():
            if _changed(sidecar, identity) is None:  # ours still: not another file's
                with contextlib.suppress(OSError):
                    os.remove(sidecar)


def _identity(found: os.stat_result) -> tuple[int, int]:
    return found.st_dev, found.st_ino


def _changed(path: Path, identity: tuple[int, int]) -> str | None:
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "removed"
    except OSError:
        return None  # cannot tell (e.g. permissions): the write itself will say
    return None if _identity(found) == identity else "replaced"
