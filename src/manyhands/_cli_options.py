"""``manyhands run``'s flags as the library's options.

What the flags need of each other (``--key`` needs ``--journal``), the journal
key of ``--key`` (:mod:`._cli_keys`) and the field INPUT's reader checks each
item for, ``--scheduler``, the retries of ``--sh`` commands by exit code, the
journal's directory, and the paths ``--output`` must not write over (INPUT, the
journal and its companion files, whether they exist yet or not).
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Any

import click

from ._cli_keys import CommandKey
from ._inputs import UsageProblem
from ._retry import Retry
from ._shell import exit_codes, exits_with

__all__ = ["check_paths", "command_retries", "key_field", "run_options", "same_file"]


def run_options(
    journal: str | None, output: str | None, key: str | None, flags: dict[str, Any]
) -> dict[str, Any]:
    """The library options of ``run``'s flags; a flag that needs --journal without it is refused."""
    needs_journal = [
        name
        for name, given in (
            ("--key", key),
            ("--retry-failed", flags["retry_failed"]),
            # "refuse" is the default: given explicitly, it asks for nothing more.
            ("--changed-items", flags["changed_items"] not in (None, "refuse")),
            ("--store-results", flags["store_results"]),
        )
        if given
    ]
    if needs_journal and journal is None:
        verb = "needs" if len(needs_journal) == 1 else "need"
        raise UsageProblem(f"{' and '.join(needs_journal)} {verb} --journal")
    if flags["changed_items"] not in (None, "refuse") and key is None:
        raise UsageProblem(
            "--changed-items needs --key: without it an item's key is the item itself, "
            "which cannot change under it"
        )
    options = {name: value for name, value in flags.items() if value is not None}
    options["retry"] = options.pop("retries")
    _dask_options(options)
    if journal is not None:  # ("": refused by the run, naming --journal)
        store = flags["store_results"]
        options |= {
            "journal": journal,
            "key": CommandKey(key),
            # Stored values complete a resumed output (its skipped items' lines).
            "store_results": bool(output) if store is None else store,
        }
    else:
        options.pop("retry_failed", None)
    return options


def _dask_options(options: dict[str, Any]) -> None:
    """--scheduler is the Dask backend's cluster; Dask's calls at once default to its threads."""
    scheduler = options.pop("scheduler", None)
    if scheduler is not None:
        if options.get("backend", "dask") != "dask":
            raise UsageProblem(f"--scheduler needs --backend dask, not {options['backend']}")
        from ._backends import SCHEDULER_PROTOCOLS

        if not scheduler.startswith(SCHEDULER_PROTOCOLS):
            raise UsageProblem(
                f"--scheduler {scheduler} is not a Dask scheduler's address: give it as "
                "tcp://host:8786"
            )
        options["backend"] = scheduler
    source = click.get_current_context().get_parameter_source("workers")
    dask = options.get("backend") == "dask" or scheduler is not None
    if dask and source is click.core.ParameterSource.DEFAULT:
        del options["workers"]


def key_field(key: str | None, form: str) -> str | None:
    """The field ``--key`` names (none for a function): INPUT's reader fails an item without it.

    Lines have no fields: ``--key FIELD`` without --jsonl or --csv is refused.
    """
    if key is None or ":" in key:
        return None
    if form == "lines":
        raise UsageProblem(
            f"--key {key} names a field of each item: add --jsonl or --csv, or give a "
            "function (module:function) that makes a line's key"
        )
    return key


def command_retries(options: dict[str, Any], on_exit: str | None, throttle: int | None) -> None:
    """``--retry-on-exit`` and ``--throttle-exit`` as the run's retry policy and ``throttle_on``.

    ``--retries N`` alone retries every failure; ``--retry-on-exit`` only those
    exit codes (3 times unless ``--retries`` says); the throttled exit is retried either way.
    """
    codes = exit_codes(on_exit, "--retry-on-exit") if on_exit else None
    if throttle is not None:
        options["throttle_on"] = exits_with({throttle})
        if codes is None and not options["retry"]:
            codes = frozenset()  # (then only the throttled exit is retried)
    if codes is not None:
        retried = codes | ({throttle} if throttle is not None else set())
        options["retry"] = Retry(retries=options["retry"] or 3, on=exits_with(retried))


def check_paths(input_path: str, output: str | None, journal: str | None) -> None:
    """Refuse a journal in no directory, and an --output that is INPUT or the journal.

    Writing over INPUT or the journal would destroy it.
    """
    if journal:
        _check_journal_folder(journal)
    if not output or output == "-":
        return
    if input_path == "-" and _is_stdin(output):
        raise UsageProblem(
            f"--output {output!r} is the file stdin (INPUT -) reads from; write to another path"
        )
    precious = [("INPUT", input_path)] if input_path != "-" else []
    if journal:  # (its companions sit next to its file, every symlink resolved)
        real = os.path.realpath(journal)
        precious += [("--journal", journal)]
        precious += [("--journal", real + suffix) for suffix in ("-wal", "-shm", ".lock")]
    for what, path in precious:
        if same_file(output, path):
            raise UsageProblem(f"--output {output!r} is the {what} file; write to another path")


def _check_journal_folder(journal: str) -> None:
    """Refuse a journal whose directory does not exist, saying how to make it (the run would)."""
    folder = os.path.dirname(journal)
    if not folder or os.path.isdir(folder):
        return
    if os.path.exists(folder):
        raise UsageProblem(
            f"--journal {journal}: {folder} is not a directory; pass a path in a directory"
        )
    raise UsageProblem(
        f"--journal {journal}: the directory {folder} does not exist; create it first "
        f"(mkdir -p {shlex.quote(folder)}), or pass a path in an existing directory"
    )


def same_file(path: str, other: str) -> bool:
    """Whether two paths name one file, or would once created.

    Both existing: the same file (a hard link, a symlink to it). Else the same
    path once every symlink is resolved (``./new.db`` and ``new.db``, neither
    created yet: the journal would be created, then written over).
    """
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(path) == os.path.realpath(other)


def _is_stdin(path: str) -> bool:
    """Whether ``path`` is the regular file redirected to stdin (``< file``)."""
    try:
        stdin, found = os.fstat(0), os.stat(path)
    except OSError:  # no stdin, or no such file yet: not the same file
        return False
    same = (stdin.st_dev, stdin.st_ino) == (found.st_dev, found.st_ino)
    return same and stat.S_ISREG(stdin.st_mode)
