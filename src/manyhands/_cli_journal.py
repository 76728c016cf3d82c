"""The commands that read a journal back: ``status``, ``failures`` and ``report``.

A journal holds text from whatever code wrote it: every line printed from it
is escaped. Reading it is :mod:`._inspect`'s and :mod:`._timeline`'s; the HTML
report is :mod:`._html_report`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import click

from ._cli_terms import EXIT_OK, silence_stdout
from ._escape import escape_controls, escape_json
from ._inputs import UsageProblem

__all__ = ["print_failures", "print_status", "write_html_report"]


def print_status(journal: str) -> int:
    """Print the counts by state, the errors by type, and the runs recorded in ``journal``."""
    from ._inspect import read_status

    found = read_status(journal)
    lines = [
        f"{journal}: {found.total:,} item{'' if found.total == 1 else 's'} with a final record"
    ]
    lines += [f"  {count:>10,}  {state}" for state, count in sorted(found.states.items())]
    if found.errors_by_type:
        lines.append("errors by type:")
        lines += [f"  {count:>10,}  {name}" for name, count in found.errors_by_type.items()]
    from ._timeline import throughput_sparkline

    lines.append(throughput_sparkline(journal))
    shown = " (the last 5)" if len(found.runs) > 5 else ""  # (not read as all of them)
    lines.append(f"runs: {len(found.runs)}{shown}")
    lines += [line for run_ in found.runs[-5:] for line in _run_lines(run_)]
    for line in lines:  # the journal's text, from whatever code wrote it: escaped
        click.echo(escape_controls(line))
    return EXIT_OK


def _run_lines(run_: dict[str, Any]) -> list[str]:
    """A run of ``status``: when, how long, how it ended, and its counts.

    A run that ended without closing, or is running, has no counts in its
    row yet: those of the items it recorded are shown, and how long it ran
    until its last record. A run that ended on an error ("failed to start:
    ...", "input error: ...") has the error on a line of its own.
    """
    began = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run_["started"] or 0))
    counts = f"{run_['succeeded'] or 0:,} succeeded, {run_['failed'] or 0:,} failed"
    if run_["finished"]:
        took = f"{run_['finished'] - run_['started']:.1f}s"
    elif run_.get("last_record") and run_["started"]:
        took = f"{run_['last_record'] - run_['started']:.1f}s+"  # (until its last record)
    else:
        took = "?"
    if "last_record" in run_:  # (ended without closing, or running: what it recorded)
        so_far = " so far" if run_["status"] == "running" else ""
        return [
            f"  #{run_['id']} {began} ({took}) {run_['fn']}: {run_['status']}; "
            f"recorded {counts}{so_far}"
        ]
    how, _, why = str(run_["status"]).partition(": ")
    line = f"  #{run_['id']} {began} ({took}) {run_['fn']}: {how}, {counts}, "
    return [f"{line}{run_['skipped'] or 0:,} skipped", *([f"      {why}"] if why else [])]


def print_failures(journal: str, as_json: bool, with_traceback: bool) -> int:
    """Print the items that failed in ``journal``: error type, message and attempts."""
    from ._inspect import read_failures

    found = read_failures(journal)
    for row in found:
        item = row["item"] if row["item"] is not None else row["key"]
        if as_json:
            record = _failure_record(row, item, with_traceback)
            click.echo(escape_json(json.dumps(record, ensure_ascii=False)))
            continue
        click.echo(
            escape_controls(f"{item}: {row['error_type']}: {row['message']}")
            + f" (attempts: {row['attempts']})"
        )
        if with_traceback and row["traceback"]:
            text = escape_controls(row["traceback"].rstrip(), keep_newlines=True)
            click.echo("    " + text.replace("\n", "\n    "))
    if not as_json:
        click.echo(f"{len(found):,} failed items", err=True)
    return EXIT_OK


def _failure_record(row: dict[str, Any], shown: str, with_traceback: bool) -> dict[str, Any]:
    """A failed item as ``failures --json`` prints it: ``item`` as JSON where the journal
    keeps it so (the command's lines and rows; a library run's items that are JSON), and
    ``item_repr``, its repr, always."""
    record: dict[str, Any] = {"key": row["key"]}
    if row["item_json"] is not None:
        with contextlib.suppress(ValueError, RecursionError):  # (a file edited by hand)
            record["item"] = json.loads(row["item_json"])
    record["item_repr"] = shown
    names = ("state", "error_type", "message", "attempts", *("traceback",) * with_traceback)
    return record | {name: row[name] for name in names}


def write_html_report(journal: str, output: str) -> int:
    """Write the HTML report of ``journal`` to ``output`` (- for stdout)."""
    from ._html_report import render_html, write_report

    if output != "-":
        _check_report_path(journal, output)
    try:
        if output == "-":
            from ._timeline import read_timeline

            sys.stdout.buffer.write(render_html(read_timeline(journal)).encode())
            sys.stdout.buffer.flush()
            return EXIT_OK
        write_report(journal, output)
    except BrokenPipeError:
        raise  # (stdout closed early: exit 141, as for `run`)
    except OSError as exc:
        if output == "-":
            silence_stdout()  # (flushing the rest at exit would fail again)
        raise UsageProblem(f"cannot write --output {output!r}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {output}")
    return EXIT_OK


def _check_report_path(journal: str, output: str) -> None:
    """Refuse a report written over the journal it reads (or its companion files)."""
    from ._cli_options import same_file

    real = os.path.realpath(journal)
    for path in (journal, *(real + suffix for suffix in ("-wal", "-shm", ".lock"))):
        if same_file(output, path):
            raise UsageProblem(f"--output {output!r} is the journal's file; write to another path")
