"""What the command line needs around the library: loading TARGETs, reading INPUT lazily.

Everything here raises :class:`UsageProblem` with a one-line message that
names what is wrong and how to fix it; the CLI prints it and exits with 2.
"""

from __future__ import annotations

import codecs
import importlib
import importlib.util
import json
import os
import stat
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "BadLine",
    "KeyFunctionError",
    "MalformedLine",
    "ShortRow",
    "UsageProblem",
    "load_target",
    "open_input",
    "read_items",
]


class UsageProblem(Exception):
    """A mistake in how the command was called; the message says how to fix it."""


class MalformedLine(ValueError):
    """An input line that could not be read (not UTF-8, or not JSON); it fails as its own item.

    Recorded as ``"manyhands.cli.MalformedLine"``, with the line number in
    the message.
    """


class KeyFunctionError(ValueError):
    """A row ``--key module:function`` raised for, or gave no key: it fails as its own item.

    Recorded as ``"manyhands.cli.KeyFunctionError"`` under ``<line N>``, the
    message naming the line and what the function raised (or returned).
    """


MalformedLine.__module__ = "manyhands.cli"  # their public names, importable from there
KeyFunctionError.__module__ = "manyhands.cli"


class BadLine:
    """Stands in for a line that is no item: the run records it as a failed item.

    ``kind``: the error it fails with (a line that could not be read, or one
    without a key).
    """

    __slots__ = ("error", "kind", "number", "text")

    def __init__(
        self, number: int, text: str, error: str, kind: type[ValueError] = MalformedLine
    ) -> None:
        self.number = number
        self.text = text
        self.error = error
        self.kind = kind

    def __repr__(self) -> str:
        return f"<line {self.number}: {self.text[:60]!r}>"


def load_target(target: str, what: str = "TARGET") -> Callable[..., Any]:
    """Import ``package.module:function`` or ``path/to/file.py:function``.

    >>> load_target("json:dumps")([1])
    '[1]'
    >>> load_target("json")
    Traceback (most recent call last):
    manyhands._inputs.UsageProblem: TARGET 'json' must be module:function or file.py:function
    """
    module_name, sep, attribute = target.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageProblem(f"{what} {target!r} must be module:function or file.py:function")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        module = _load_file(Path(module_name), what, target)
    else:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # like `python -m`: modules in the current directory
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not _names_target(exc.name, module_name):  # a module it imports is missing
                raise _import_failed(what, target, module_name, exc) from exc
            raise UsageProblem(
                f"{what} {target!r}: no module named {exc.name!r} (is it installed, or run "
                "from the directory that holds it?)"
            ) from exc
        except Exception as exc:  # raised or did not compile while importing: the user's code
            raise _import_failed(what, target, module_name, exc) from exc
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageProblem(
                f"{what} {target!r}: {module_name} has no attribute {attribute!r}"
            ) from None
    if not callable(value):
        raise UsageProblem(f"{what} {target!r} is a {type(value).__qualname__}, not a function")
    return value  # type: ignore[no-any-return]


def _load_file(path: Path, what: str, target: str) -> Any:
    if not path.is_file():
        raise UsageProblem(f"{what}: no such file {str(path)!r}")
    name = f"manyhands_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has one
        raise UsageProblem(f"{what}: cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that pickling and tracebacks find it
    sys.path.insert(0, str(path.resolve().parent))  # its own imports of siblings
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # raised or did not compile while importing: the user's code
        del sys.modules[name]
        raise _import_failed(what, target, str(path), exc) from exc
    # Worker processes cannot import it under that name: its functions travel by value.
    import cloudpickle  # type: ignore[import-untyped]

    cloudpickle.register_pickle_by_value(module)
    return module


def _names_target(missing: str | None, module_name: str) -> bool:
    """Whether the missing module is the TARGET's module or one of its packages."""
    return missing is not None and (module_name + ".").startswith(missing + ".")


def _import_failed(what: str, target: str, module: str, exc: Exception) -> UsageProblem:
    """One line for a TARGET whose module failed to import: the error and where it was raised.

    >>> try:
    ...     compile("def f(x) return x", "syn.py", "exec")
    ... except SyntaxError as exc:
    ...     print(_import_failed("TARGET", "syn.py:f", "syn.py", exc))
    TARGET 'syn.py:f': importing syn.py failed: SyntaxError: expected ':' (at syn.py:1)
    """
    message, at = str(exc), raised_at(exc)
    if isinstance(exc, SyntaxError):  # (where it is, is not a frame of the traceback)
        message, at = exc.msg, f" (at {exc.filename}:{exc.lineno})"
    return UsageProblem(
        f"{what} {target!r}: importing {module} failed: {type(exc).__qualname__}: {message}{at}"
    )


def raised_at(exc: BaseException) -> str:
    """`` (at file:line)``, where ``exc`` was raised (its innermost frame), or "" if unknown."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if not frame.filename.startswith("<frozen ")] or frames
    return f" (at {ours[-1].filename}:{ours[-1].lineno})" if ours else ""


def open_input(path: str) -> IO[bytes]:
    """The INPUT stream, as bytes: a file, or standard input for ``-``.

    Bytes, so that a line that is not UTF-8 fails as its own item with its
    line number (see :func:`read_items`) instead of stopping the run.
    """
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageProblem(f"cannot read INPUT {path!r}: {exc.strerror or exc}") from exc


#: The command's ``--key`` function, called on each row read: the row handed on (itself, or a
#: BadLine when the function gives it no key), given its line number, text and item.
KeyedRow = Callable[[int, str, Any], Any]


def input_items(
    stream: IO[bytes], form: str, key_field: str | None = None, keyed: KeyedRow | None = None
) -> Iterator[Any]:
    """:func:`read_items`, read in a thread of its own when ``stream`` may block.

    A pipe or a terminal (``producer | manyhands run ...``) gives lines when
    it has them: read in the consuming thread, waiting for the next line
    would hold back the outcomes that finished meanwhile. A file is read as
    it is.
    """
    try:
        fd = stream.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, ValueError):  # (no file descriptor: an in-memory stream)
        return read_items(stream, form, key_field, keyed)
    if regular:
        return read_items(stream, form, key_field, keyed)
    from ._thread_feed import ThreadFeed

    # The thread reads a reader of its own, on a copy of the descriptor: blocked in a
    # read, it holds that reader's lock, and the interpreter's exit (stdin) or the
    # command's close of INPUT must never wait for that lock.
    own = open(os.dup(fd), "rb")  # noqa: SIM115 - the thread's, for the process's life
    return ThreadFeed(read_items(own, form, key_field, keyed))


def read_items(
    stream: IO[bytes], form: str, key_field: str | None = None, keyed: KeyedRow | None = None
) -> Iterator[Any]:
    """Items from ``stream``, one at a time: ``lines``, ``jsonl`` or ``csv``.

    The input is UTF-8; a byte order mark at its start is dropped. Lines
    end with ``\\n`` or ``\\r\\n`` and lose it; blank lines are skipped. A
    line that is not UTF-8, a JSONL line that is not JSON (or nested too
    deeply to read), a CSV row the csv module cannot read: each becomes a
    :class:`BadLine`, which the run records as a failed item, with its line
    number, and goes on. CSV rows are dicts keyed by the header row.

    With ``key_field`` (``--key FIELD``), an item without that field (or
    with ``null`` in it) is a BadLine too: it has no key to be recorded under.
    With ``keyed`` (``--key module:function``), each item read is handed on
    as it returns it: the item, or a BadLine when the function gives it no key.

    >>> import io
    >>> list(read_items(io.BytesIO(b"\\xef\\xbb\\xbfa\\n\\nb\\r\\n"), "lines"))
    ['a', 'b']
    >>> list(read_items(io.BytesIO(b'{"id": 1}\\nnot json\\n'), "jsonl"))
    [{'id': 1}, <line 2: 'not json'>]
    >>> list(read_items(io.BytesIO(b"id,name\\n1,a\\n2,caf\\xe9\\n"), "csv"))
    [{'id': '1', 'name': 'a'}, <line 3: '2,caf\\\\xe9'>]
    >>> [item.error for item in read_items(io.BytesIO(b'{"ID": 2}\\n'), "jsonl", "id")]
    ["line 1 has no field 'id' (--key id)"]
    """
    lines = _decoded(stream)
    if form == "csv":
        from ._input_csv import csv_rows

        yield from csv_rows(lines, key_field, keyed)
        return
    for number, line, problem in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if problem is not None:
            yield BadLine(number, text, problem)
        else:
            item = text if form == "lines" else _json_item(number, text, key_field)
            yield item if keyed is None or type(item) is BadLine else keyed(number, text, item)


def _json_item(number: int, text: str, key_field: str | None) -> Any:
    """The JSON value of line ``number``, or a :class:`BadLine` saying why it is none."""
    try:
        item = json.loads(text)
    except ValueError as exc:
        return BadLine(number, text, f"line {number} is not valid JSON: {exc}")
    except RecursionError as exc:  # ([[[[... nested past the interpreter's stack)
        return BadLine(number, text, f"line {number} is JSON nested too deeply to read: {exc}")
    except Exception as exc:  # (whatever else json raises on one line fails that line only)
        problem = f"{type(exc).__qualname__}: {exc}"
        return BadLine(number, text, f"line {number} could not be read as JSON: {problem}")
    if key_field is None:
        return item
    if not isinstance(item, dict) or key_field not in item:
        return BadLine(
            number, text, f"line {number} has no field {key_field!r} (--key {key_field})"
        )
    if item[key_field] is None:
        return BadLine(
            number, text, f"line {number} has null in field {key_field!r}, which is no --key"
        )
    return item


def _decoded(stream: IO[bytes]) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, what is wrong with it or None) for each line of ``stream``.

    A line that is not UTF-8 comes with its bytes shown as ``\\xff`` escapes.
    """
    for number, line in enumerate(stream, 1):
        raw = (
            line[len(codecs.BOM_UTF8) :]
            if number == 1 and line.startswith(codecs.BOM_UTF8)
            else line
        )
        try:
            yield number, raw.decode(), None
        except UnicodeDecodeError as exc:
            yield (
                number,
                raw.decode(errors="backslashreplace"),
                f"line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                f"{exc.start + 1} of the line); convert INPUT to UTF-8, e.g. with "
                "iconv -f latin1 -t utf-8",
            )


class ShortRow(dict[str, str]):
    """A CSV row with fewer cells than the header: its missing fields are absent, never None.

    Reading one raises KeyError naming the field and the line:

    >>> row = ShortRow({"bucket": "b2"}, line=3, missing=["key"])
    >>> row["bucket"], row.get("key")
    ('b2', None)
    >>> row["key"]
    Traceback (most recent call last):
    KeyError: "line 3 has no cell for field 'key' (the row ends before it)"
    """

    def __init__(self, cells: Any, *, line: int, missing: list[str]) -> None:
        super().__init__(cells)
        self.line = line
        self.missing = missing

    def __missing__(self, name: str) -> str:
        if name in self.missing:
            raise KeyError(
                f"line {self.line} has no cell for field {name!r} (the row ends before it)"
            )
        raise KeyError(name)

    def __reduce__(self) -> Any:  # (a dict subclass with keyword arguments: pickled by hand)
        return (_short_row, (dict(self), self.line, self.missing))


def _short_row(cells: dict[str, str], line: int, missing: list[str]) -> ShortRow:
    return ShortRow(cells, line=line, missing=missing)
