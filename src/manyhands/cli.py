"""The ``manyhands`` command: run a Python function over a file of items, resumable.

Exit codes (also in ``manyhands --help``): 0 every item succeeded, 1 some
items failed, 2 usage error (bad TARGET, INPUT or flag), 130 interrupted
(with ``--journal``, everything finished is saved: rerun to resume).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

from . import _api
from ._exceptions import InputError, JournalError
from ._inputs import BadLine, MalformedLine, UsageProblem, load_target, open_input, read_items
from ._keys import default_key
from ._options import BACKENDS, DEFAULT_WORKERS
from ._outcome import Outcome
from ._rate import parse_rate
from ._stream import Outcomes

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\b
Exit codes: 0 every item succeeded, 1 some items failed, 2 usage error,
130 interrupted (with --journal, what finished is saved: rerun to resume).
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run a Python function over many items, many at a time: failures as values,
    bounded memory, prompt Ctrl-C, and resumable with --journal."""


def _rate(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        parse_rate(value)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@cli.command(epilog=EPILOG)
@click.argument("target")
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
@click.option("--retries", type=click.IntRange(min=0), default=0, help="Retries per item.")
@click.option("--rate", callback=_rate, help="Most starts per second: 50/s, 300/min, 1000/h.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds a call may run, or the item fails (manyhands.Timeout).")  # fmt: skip
@click.option("--ordered", is_flag=True, help="Write outcomes in input order.")
@click.option("--journal", type=click.Path(dir_okay=False), help="Resumable SQLite journal.")
@click.option("--retry-failed", is_flag=True, help="With --journal: rerun recorded failures.")
@click.option("--key", help="With --journal: a JSON field name, or module:function.")
@click.option("--stop-after-failures", type=click.IntRange(min=1), help="Stop after N failed.")
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write one JSON line per item (- for stdout).")  # fmt: skip
@click.option("--progress/--no-progress", default=None, help="Default: on a terminal.")
def run(
    target: str,
    input_path: str,
    form: str,
    workers: int,
    backend: str | None,
    retries: int,
    rate: str | None,
    timeout: float | None,
    ordered: bool,
    journal: str | None,
    retry_failed: bool,
    key: str | None,
    stop_after_failures: int | None,
    output: str | None,
    progress: bool | None,
) -> int:
    """Call TARGET on every item of INPUT (a file, or - for stdin, the default).

    TARGET is package.module:function or path/to/file.py:function. The items
    are read lazily: lines (default), --jsonl or --csv. Results go to --output
    as they arrive; the summary goes to stdout (stderr with --output -).
    """
    if (key or retry_failed) and not journal:
        raise UsageProblem("--key and --retry-failed need --journal")
    fn = load_target(target)
    stream = open_input(input_path)
    options: dict[str, Any] = {
        "workers": workers,
        "backend": backend,
        "ordered": ordered,
        "retry": retries,
        "rate": rate,
        "timeout": timeout,
        "stop_after_failures": stop_after_failures,
        "progress": progress,
    }
    if journal:
        options |= {"journal": journal, "retry_failed": retry_failed, "key": _key(key)}
    summary = sys.stderr if output == "-" else sys.stdout
    sink = _open_output(output)
    failed = 0
    # Without --output nobody reads the values: what finishes is recorded as in run()
    # (with --output, a journal row is written once the line was).
    caller = "map" if sink is not None else "run"
    engine = _api.open_run(caller, _calling(fn), read_items(stream, form), options)
    if sink is not None:
        engine.before_record = sink.flush
    outcomes: Outcomes[Any, Any] = Outcomes(engine)
    try:
        with outcomes:
            for outcome in outcomes:
                failed += outcome.error is not None
                if sink is not None:
                    sink.write(_json_line(outcome))
    except KeyboardInterrupt:
        print(outcomes.report, file=summary)
        saved = (
            f" The journal {journal} is saved: run the same command again to resume."
            if journal
            else ""
        )
        print(f"\ninterrupted.{saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as exc:
        raise UsageProblem(f"reading INPUT failed: {exc.__cause__ or exc}") from exc
    finally:
        if sink is not None and sink is not sys.stdout:
            sink.close()
        if stream is not sys.stdin:
            stream.close()
    print(outcomes.report, file=summary)
    if failed and journal:
        print(f"\nsee the failures: manyhands failures {journal}", file=summary)
    return EXIT_FAILED if failed else EXIT_OK


def _calling(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn``, except that an unparsable line fails as its own item.

    A coroutine function stays one, so that it runs on asyncio.
    """
    call: Callable[[Any], Any]
    if _api.is_coroutine_function(fn):

        async def call(item: Any) -> Any:
            if type(item) is BadLine:
                raise MalformedLine(item.error)
            return await fn(item)

    else:

        def call(item: Any) -> Any:
            if type(item) is BadLine:
                raise MalformedLine(item.error)
            return fn(item)

    call.__qualname__ = getattr(fn, "__qualname__", "call")
    call.__module__ = getattr(fn, "__module__", __name__)
    return call


def _key(spec: str | None) -> Callable[[Any], Any]:
    """The journal key: --key as a field or a function; a bad line by its number."""
    if spec is None:
        base: Callable[[Any], Any] = default_key
    elif ":" in spec:
        base = load_target(spec, "--key")
    else:

        def base(item: Any) -> Any:
            try:
                return item[spec]
            except (KeyError, TypeError, IndexError):
                raise UsageProblem(f"--key {spec!r}: item {item!r} has no field {spec!r}") from None

    def key(item: Any) -> Any:
        if type(item) is BadLine:
            return f"<line {item.number}>"
        return base(item)

    return key


def _open_output(path: str | None) -> IO[str] | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot write --output {path!r}: {exc.strerror or exc}") from exc


def _json_line(outcome: Outcome[Any, Any]) -> str:
    item = outcome.item.text if type(outcome.item) is BadLine else outcome.item
    record: dict[str, Any] = {"item": item, "ok": outcome.ok}
    if outcome.error is None:
        record["value"] = outcome.value
    else:
        error = outcome.error
        record["error"] = {
            "type": error.error_type,
            "message": error.message,
            "attempts": error.attempts,
        }
    if outcome.skipped:
        record["skipped"] = outcome.skipped
    return json.dumps(record, ensure_ascii=False, default=repr) + "\n"


@cli.command(epilog=EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
def status(journal: str) -> int:
    """Counts by state, errors by type, and the runs recorded in JOURNAL."""
    from ._inspect import read_status

    found = read_status(journal)
    click.echo(f"{journal}: {found.total:,} items with a final record")
    for state, count in sorted(found.states.items()):
        click.echo(f"  {count:>10,}  {state}")
    if found.errors_by_type:
        click.echo("errors by type:")
        for name, count in found.errors_by_type.items():
            click.echo(f"  {count:>10,}  {name}")
    from ._timeline import throughput_sparkline

    click.echo(throughput_sparkline(journal))
    click.echo(f"runs: {len(found.runs)}")
    for run_ in found.runs[-5:]:
        began = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run_["started"] or 0))
        took = f"{run_['finished'] - run_['started']:.1f}s" if run_["finished"] else "?"
        click.echo(
            f"  #{run_['id']} {began} ({took}) {run_['fn']}: {run_['status']}, "
            f"{run_['succeeded'] or 0:,} succeeded, {run_['failed'] or 0:,} failed, "
            f"{run_['skipped'] or 0:,} skipped"
        )
    return EXIT_OK


@cli.command(epilog=EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--traceback", "with_traceback", is_flag=True, help="Show full tracebacks.")
def failures(journal: str, as_json: bool, with_traceback: bool) -> int:
    """The items that failed in JOURNAL: error type, message and attempts."""
    from ._inspect import read_failures

    found = read_failures(journal)
    for row in found:
        item = row["item"] if row["item"] is not None else row["key"]
        if as_json:
            record = {k: v for k, v in row.items() if k != "traceback" or with_traceback}
            record["item"] = item
            click.echo(json.dumps(record, ensure_ascii=False))
            continue
        click.echo(f"{item}: {row['error_type']}: {row['message']} (attempts: {row['attempts']})")
        if with_traceback and row["traceback"]:
            click.echo("    " + row["traceback"].rstrip().replace("\n", "\n    "))
    if not as_json:
        click.echo(f"{len(found):,} failed items", err=True)
    return EXIT_OK


@cli.command(epilog=EPILOG)
@click.option("--items", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--journal", type=click.Path(dir_okay=False), default="manyhands-demo.db",
              show_default=True)  # fmt: skip
@click.option("--fresh", is_flag=True, help="Delete the demo journal first.")
def demo(items: int, journal: str, fresh: bool) -> int:
    """A self-contained showcase against a flaky, throttled local API."""
    from ._demo import run_demo

    return run_demo(items, Path(journal), fresh)


@cli.command(epilog=EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="run.html",
              show_default=True, help="The HTML file to write.")  # fmt: skip
def report(journal: str, output: str) -> int:
    """Write an HTML report of JOURNAL: throughput, latency, failures and runs over time.

    One self-contained file (no network needed to view it), read from the journal alone.
    """
    from ._html_report import write_report

    try:
        write_report(journal, output)
    except OSError as exc:
        raise UsageProblem(f"cannot write --output {output!r}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {output}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``manyhands`` and ``python -m manyhands``; returns the exit code."""
    try:
        code = cli.main(args=argv, prog_name="manyhands", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `manyhands`: the help
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"manyhands: error: {exc.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except (UsageProblem, JournalError) as exc:
        click.echo(f"manyhands: error: {exc}", err=True)
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_OK
