"""One run at a time on a journal: an OS lock on ``<journal>.lock``, held for the run.

The OS releases the lock when the process dies, however it dies, so a lock
left by a killed run is never in the way. The file names its holder (pid,
host, since when) for the error a second run gets; a holder in this very
process (a ``map``/``amap`` loop left without closing its iterator, or
another thread's run) is named as such, with how to end it.

Taking the lock either succeeds or leaves nothing behind: a failure (a full
disk as the holder's line is written) releases it, removes the lock file if
this call created it, and says why in a :class:`JournalError`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from ._exceptions import JournalError

__all__ = ["NOTHING_RUN", "Lock", "acquire_lock", "lock_path", "release_lock"]

MODE = 0o600
HOLDER_WAITS = 50  # tries, 10 ms apart, to read the line of a holder that just locked
#: How an error opening the journal ends when it stops the run before it starts.
NOTHING_RUN = "; nothing was run"

#: The lock files this process holds, by identity (device, inode: whatever
#: name reached them), and its pid when it took them (a forked child inherits
#: the table, not the holding).
_held: dict[tuple[int, int], int] = {}


class Lock:
    """This process's hold on a journal's lock file.

    Attributes:
        path: the lock file.
        file: the open lock file; closing it releases the OS lock.
        created: whether taking the lock created the file.
    """

    def __init__(self, path: Path, file: IO[str], created: bool) -> None:
        self.path = path
        self.file = file
        self.created = created

    def fileno(self) -> int:
        """The lock file's descriptor."""
        return self.file.fileno()


def lock_path(path: Path) -> Path:
    """The lock file next to a journal."""
    return path.with_name(path.name + ".lock")


def acquire_lock(path: Path) -> Lock:
    """Lock the journal for this run with an OS lock; name the holder in the error.

    Raises:
        JournalError: the journal is in use (naming the holder), or the lock
            file cannot be created or written (naming it and the OS error).
    """
    name = lock_path(path)
    try:
        fd, created = _open(name)
    except OSError as exc:
        raise JournalError(
            f"cannot create the journal's lock file {name}: {exc}{NOTHING_RUN} "
            "(is the directory writable?)"
        ) from exc
    # (backslashreplace: a host name or an old lock's text is never a reason to fail)
    handle = open(fd, "r+", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    lock = Lock(name, handle, created)
    if not _try_lock(handle):
        holder = _holder(handle)
        ours = _held.get(_identity(fd)) == os.getpid()
        handle.close()
        raise JournalError(_in_use(path, holder, ours))
    try:
        # Written past the buffer: a failed write leaves nothing to flush at close.
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n"
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        data = line.encode("utf-8", "backslashreplace")
        while data:  # (a short write, as the disk fills: the next one says why)
            data = data[os.write(fd, data) :]
    except OSError as exc:
        release_lock(lock, unused=True)
        raise JournalError(
            f"cannot write the journal's lock file {name}: {exc}{NOTHING_RUN} "
            "(is there free space?)"
        ) from exc
    _held[_identity(fd)] = os.getpid()
    return lock


def release_lock(lock: Lock, *, unused: bool = False) -> None:
    """Empty the lock file and close it, which releases the OS lock.

    With ``unused`` (the run wrote nothing: its journal was refused, or
    could not be opened), a lock file this run created is removed, still
    held, so that a refused path leaves nothing behind.
    """
    with contextlib.suppress(OSError):
        if _held.get(_identity(lock.fileno())) == os.getpid():
            del _held[_identity(lock.fileno())]
    with contextlib.suppress(OSError):
        if unused and lock.created:
            os.remove(lock.path)
        os.ftruncate(lock.fileno(), 0)
    lock.file.close()


def _open(name: Path) -> tuple[int, bool]:
    """The lock file's descriptor, and whether this call created the file."""
    try:
        return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, MODE), True
    except FileExistsError:
        return os.open(name, os.O_RDWR | os.O_CREAT, MODE), False


def _identity(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _in_use(path: Path, holder: str, ours: bool) -> str:
    if not ours:
        return (
            f"the journal {path} is in use by {holder}; wait for that run to end (or stop "
            "it), or pass another journal= path"
        )
    return (
        f"the journal {path} is in use by {holder}: this very process, whose earlier run on "
        "it has not ended (another thread's, or a map or amap loop left with break, whose "
        "run ends only once its iterator is closed). End it first: `await outcomes.aclose()`, "
        "or loop in `async with manyhands.amap(...) as outcomes:` (or contextlib.aclosing); "
        "for map, `outcomes.close()` or `with manyhands.map(...) as outcomes:`. Or pass "
        "another journal= path"
    )


def _holder(handle: IO[str]) -> str:
    """Who holds the lock, as its line says; the holder writes it just after locking."""
    for _ in range(HOLDER_WAITS):
        handle.seek(0)
        holder = handle.read(500).strip()
        if holder:
            return holder
        time.sleep(0.01)
    return "another process"


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
