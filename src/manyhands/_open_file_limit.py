"""``-j`` of ``run --sh`` capped to the open-file limit (``ulimit -n``): :func:`commands_at_once`.

What fits is an estimate: a command that cannot start for want of file
descriptors all the same waits for another of the run to end (``CommandRunner``,
in ``_shell``), and fails only when none is running to free some.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["FDS_PER_COMMAND", "FDS_SPARE", "commands_at_once", "open_file_limit", "open_files"]

FDS_PER_COMMAND = 4  # its stdout and stderr pipes and its exit watch, and a spilled stdout
FDS_SPARE = 16  # the journal, the input and output files, and commands as they start


def open_file_limit() -> int | None:
    """The soft limit on open files (``ulimit -n``), or None when there is none."""
    try:
        import resource
    except ImportError:  # (not POSIX)
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def open_files() -> int:
    """How many file descriptors this process has open (3 when that cannot be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return max(len(os.listdir(folder)) - 1, 3)  # (less the listing's own)
    return 3


def commands_at_once(workers: int) -> tuple[int, str | None]:
    """How many of ``workers`` commands fit in the open-file limit, and a notice if fewer.

    Each running command holds ~:data:`FDS_PER_COMMAND` file descriptors; past
    the limit, starting one fails with EMFILE. So ``-j`` is capped to what fits.
    """
    limit = open_file_limit()
    if limit is None:
        return workers, None
    used = open_files() + FDS_SPARE
    need = used + workers * FDS_PER_COMMAND
    if need <= limit:
        return workers, None
    fit = max((limit - used) // FDS_PER_COMMAND, 1)
    notice = (
        f"-j {workers} needs ~{need} open files, the limit is {limit}: running {fit} "
        f"at once; raise it with ulimit -n"
    )
    return fit, notice
