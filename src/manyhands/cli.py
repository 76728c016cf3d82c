"""The ``manyhands`` command: run a Python function over a file of items, resumable.

Here are the commands, their flags and help, and how an error ends the command.
Exit codes (also in each subcommand's ``--help``): see ``EXIT_*`` in
:mod:`._cli_terms` and docs/guide/command-line.md.

What a command does is imported when it runs: ``run`` in :mod:`._cli_run` (its
flags as the library's options in :mod:`._cli_options`, its ``--output`` and
the journal in :mod:`._cli_output`); ``status``, ``failures`` and ``report`` in
:mod:`._cli_journal`; ``demo`` in :mod:`._demo`.
"""

from __future__ import annotations

import contextlib
import warnings
from _thread import TIMEOUT_MAX
from pathlib import Path
from typing import Any

import click

from . import __version__
from ._cli_terms import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT_CLOSED,
    EXIT_OUTPUT_FAILED,
    EXIT_USAGE,
    in_cli_terms,
    quietly,
    silence_stdout,
)
from ._demo import DEFAULT_ITEMS, DEFAULT_JOURNAL
from ._escape import escape_controls
from ._exceptions import JournalError, WorkerInitError
from ._inputs import KeyFunctionError, MalformedLine, UsageProblem
from ._options import BACKENDS, DEFAULT_WORKERS
from ._output import OutputFailed
from ._rate import parse_rate
from ._shell import DEFAULT_CAPTURE, CommandFailed
from ._signals import StopSignals, Terminated, release_stop_signals

__all__ = ["CommandFailed", "KeyFunctionError", "MalformedLine", "Terminated", "main"]

RUN_EPILOG = """\b
Exit codes: 0 every item succeeded, 1 some items failed or were not
run, 2 usage error (bad TARGET, INPUT or flag), 74 --output or the
journal could not be written (disk full), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM; 129 for SIGHUP), 141 stdout was closed early
(e.g. | head).
When stopped, what finished is written and, with --journal, saved:
run the same command again to resume.
"""
READ_EPILOG = """\b
Exit codes: 0 the journal was read (whether or not items failed),
2 no journal at JOURNAL, or not a readable manyhands journal,
141 stdout was closed early (e.g. | head).
"""
REPORT_EPILOG = """\b
Exit codes: 0 the report was written, 2 no journal at JOURNAL, not a
readable one, or --output cannot be written.
"""
DEMO_EPILOG = """\b
Exit codes: 0 the demo ran (a few items fail on purpose), 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): run it again to resume.
"""
GROUP_EPILOG = """\b
Exit codes: 0 success, 1 some items failed (run), 2 usage error,
130 interrupted, 143 terminated; each command's --help lists its own.
"""


class _OutputClosed(Exception):
    """Stdout was closed by its reader (``| head``): stop quietly, as ``cat`` does."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:  # (before click turns it into a silent exit 1)
            raise _OutputClosed from exc


@click.group(
    cls=_Group, epilog=GROUP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "-V", "--version", prog_name="manyhands",
                      message="%(prog)s %(version)s")  # fmt: skip
def cli() -> None:
    """Run a Python function over many items, many at a time: failures as values,
    bounded memory, prompt Ctrl-C, and resumable with --journal."""


def _rate(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | float | None:
    """``--rate``: ``50/s``, ``300/min``, ``1000/h``, or a number of starts per second."""
    with contextlib.suppress(TypeError, ValueError):
        return float(value)  # type: ignore[arg-type]
    try:
        parse_rate(value)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(in_cli_terms(str(exc))) from None
    return value


def _failure_rate(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> float | tuple[float, int] | None:
    """``SHARE`` or ``SHARE,LAST_N``: 0.5, or 0.5,1000."""
    if value is None:
        return None
    share, _, last = value.partition(",")
    try:
        parsed = (float(share), int(last)) if last else float(share)
        if not 0 <= float(share) < 1 or (last and int(last) < 1):
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not SHARE or SHARE,LAST_N: a share of failed items in [0, 1) "
            "over the last 100 (or LAST_N) items, e.g. 0.5 or 0.5,1000"
        ) from None
    return parsed


@cli.command(epilog=RUN_EPILOG)
@click.argument("target", required=False, metavar="TARGET")
@click.argument("input_path", metavar="[INPUT]", default="-")
@click.option("--lines", "form", flag_value="lines", default=True, help="Each line is an item.")
@click.option("--jsonl", "form", flag_value="jsonl", help="Each line is a JSON value.")
@click.option("--csv", "form", flag_value="csv", help="Each row is a dict (header row).")
@click.option("-j", "--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS,
              show_default=True, help="Calls at once.")  # fmt: skip
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    help="Default: async for a coroutine function, else threads.",
)
@click.option("--scheduler", metavar="ADDRESS",
              help="The Dask scheduler to run on (tcp://host:8786); implies --backend dask, "
              "whose default is a LocalCluster started for the run.")  # fmt: skip
@click.option("--retries", type=click.IntRange(min=0), default=0, help="Retries per item.")
@click.option("--rate", callback=_rate, help="Most starts per second: 50/s, 300/min, 1000/h.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=TIMEOUT_MAX),
              help="Seconds a call may run, or the item fails (manyhands.Timeout).")  # fmt: skip
@click.option("--ordered", "--keep-order", "ordered", is_flag=True,
              help="Write outcomes in input order.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Items sent to a worker at once. Default: adapted.")  # fmt: skip
@click.option("--total", type=click.IntRange(min=0),
              help="How many items INPUT has, for the progress ETA.")  # fmt: skip
@click.option("--grace", type=click.FloatRange(min=0, max=TIMEOUT_MAX), default=2.0,
              show_default=True,
              help="Seconds running calls get to finish when the run stops early.")  # fmt: skip
@click.option("--stop-after-failures", type=click.IntRange(min=1), help="Stop after N failed.")
@click.option("--stop-after-failure-rate", metavar="SHARE[,LAST_N]", callback=_failure_rate,
              help="Stop once over SHARE of the last 100 (or LAST_N) items failed.")  # fmt: skip
@click.option("--journal", type=click.Path(dir_okay=False), help="Resumable SQLite journal.")
@click.option("--retry-failed", is_flag=True, help="With --journal: rerun recorded failures.")
@click.option("--key", help="With --journal: a field of each item (--jsonl/--csv), or "
              "module:function; an item without a key fails as its own item.")  # fmt: skip
@click.option("--changed-items", type=click.Choice(["refuse", "rerun", "skip"]),
              help="With --key: what to do with an item that changed under its key "
                   "(default: refuse).")  # fmt: skip
@click.option("--store-results/--no-store-results", default=None,
              help="With --journal: store each value, so that a resumed --output has the "
                   "values of skipped items. Default: on with --output.")  # fmt: skip
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write one JSON line per item (- for stdout); a resume appends.")  # fmt: skip
@click.option("--progress/--no-progress", default=None, help="Default: on a terminal.")
@click.option("--sh", metavar="COMMAND",
              help="Run COMMAND per item instead of TARGET: {} is the item, {field} a field "
                   "(--jsonl/--csv); no shell: the item is an argument.")  # fmt: skip
@click.option("--shell", is_flag=True, help="With --sh: run COMMAND by /bin/sh -c (pipes), "
              "each {} quoted.")  # fmt: skip
@click.option("--retry-on-exit", metavar="CODES",
              help="With --sh: retry (3 times unless --retries) commands that exit with "
                   "one of CODES, e.g. 75,111.")  # fmt: skip
@click.option("--throttle-exit", type=click.IntRange(1, 255), metavar="CODE",
              help="With --sh: a command exiting with CODE means 'slow down': the run "
                   "slows down and retries it.")  # fmt: skip
@click.option("--max-output", type=click.IntRange(min=0), metavar="BYTES",
              help=f"With --sh: bytes of stdout and of stderr kept per command in --output "
                   f"(default {DEFAULT_CAPTURE}); without --output, a command whose stdout "
                   f"is longer fails (default: no limit).")  # fmt: skip
def run(
    target: str | None,
    input_path: str,
    form: str,
    journal: str | None,
    output: str | None,
    key: str | None,
    **flags: Any,
) -> int:
    """Call TARGET on every item of INPUT (a file, or - for stdin, the default).

    TARGET is package.module:function or path/to/file.py:function. The items
    are read lazily: lines (default), --jsonl or --csv. Results go to --output
    as they arrive; the summary goes to stdout (stderr with --output -).

    With --sh COMMAND (and no TARGET) each item runs as a command: its stdout
    and stderr are passed on (or go to --output), the summary to stderr.
    """
    from ._cli_run import run_command  # (what a run needs: imported when one starts)

    return run_command(target, input_path, form, journal, output, key, flags)


@cli.command(epilog=READ_EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
def status(journal: str) -> int:
    """Counts by state, errors by type, and the runs recorded in JOURNAL."""
    from ._cli_journal import print_status

    return print_status(journal)


@cli.command(epilog=READ_EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: the item as JSON (item) where it is JSON, and "
                   "its repr (item_repr).")  # fmt: skip
@click.option("--traceback", "with_traceback", is_flag=True, help="Show full tracebacks.")
def failures(journal: str, as_json: bool, with_traceback: bool) -> int:
    """The items that failed in JOURNAL: error type, message and attempts."""
    from ._cli_journal import print_failures

    return print_failures(journal, as_json, with_traceback)


@cli.command(epilog=DEMO_EPILOG)
@click.option("--items", type=click.IntRange(min=1), default=DEFAULT_ITEMS, show_default=True)
@click.option("--journal", type=click.Path(dir_okay=False), default=DEFAULT_JOURNAL,
              show_default=True)  # fmt: skip
@click.option("--fresh", is_flag=True,
              help="Delete the demo journal first (a manyhands journal only).")  # fmt: skip
def demo(items: int, journal: str, fresh: bool) -> int:
    """A self-contained showcase against a flaky, throttled local API."""
    from ._demo import run_demo

    with StopSignals():  # SIGTERM stops it as Ctrl-C does: the journal is closed
        return run_demo(items, Path(journal), fresh)


@cli.command(epilog=REPORT_EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              default="run.html", show_default=True,
              help="The HTML file to write (- for stdout).")  # fmt: skip
def report(journal: str, output: str) -> int:
    """Write an HTML report of JOURNAL: throughput, latency, failures and runs over time.

    One self-contained file (no network needed to view it), read from the journal alone.
    """
    from ._cli_journal import write_html_report

    return write_html_report(journal, output)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``manyhands`` and ``python -m manyhands``; returns the exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return _main(argv)
        finally:
            release_stop_signals(exiting=argv is None)  # (if a stop signal held them)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning as one line, escaped: a JournalWarning quotes what the journal holds."""
    with quietly():
        click.echo(f"manyhands: warning: {escape_controls(in_cli_terms(str(message)))}", err=True)


def _main(argv: list[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="manyhands", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `manyhands`: the help
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"manyhands: error: {escape_controls(exc.format_message())}{hint}", err=True)
        return EXIT_USAGE
    except (UsageProblem, JournalError) as exc:
        click.echo(f"manyhands: error: {escape_controls(in_cli_terms(str(exc)))}", err=True)
        return EXIT_OUTPUT_FAILED if getattr(exc, "writing", False) else EXIT_USAGE
    except WorkerInitError as exc:
        if not getattr(exc, "usage", False):  # (an initializer's failure: its traceback)
            raise
        click.echo(f"manyhands: error: {escape_controls(str(exc))}", err=True)  # (--scheduler)
        return EXIT_USAGE
    except click.exceptions.Abort as exc:
        stop = exc.__cause__
        with quietly():
            click.echo("terminated" if isinstance(stop, Terminated) else "interrupted", err=True)
        return stop.exit_code if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    except _OutputClosed:
        silence_stdout()
        return EXIT_OUTPUT_CLOSED
    except OutputFailed as exc:
        with quietly():
            click.echo(f"manyhands: error: {escape_controls(str(exc))}", err=True)
        if exc.path == "-":
            silence_stdout()  # (flushing what is left of it at exit would fail again)
        return EXIT_OUTPUT_FAILED
    return code if isinstance(code, int) else EXIT_OK
