"""``--csv`` INPUT: rows as dicts keyed by the header row, read by a csv module of their own.

The csv module's limit on a field (131,072 characters) is one setting for
the whole process: raising it with ``csv.field_size_limit`` would change it
for the user's own code too, in the same process. So the rows are read by a
private instance of the csv extension (each instance keeps its own limit,
Python 3.10 and later), whose limit is raised: a field is as long as its
line. Where the instance would share the setting, it is left as it is, and a
row with a longer field fails as its own item.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ._inputs import BadLine, KeyedRow, ShortRow, UsageProblem

__all__ = ["FIELD_LIMIT", "csv_rows"]

#: The longest field read (the largest a C long holds on every platform).
FIELD_LIMIT = 2**31 - 1


def _private_csv() -> ModuleType:
    """A csv extension module of our own, its field limit raised, or the shared one as it is."""
    import _csv

    spec = importlib.util.find_spec("_csv")
    if spec is None or spec.loader is None:  # pragma: no cover - the stdlib always has one
        return _csv
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shared = csv.field_size_limit()
    limit = module.field_size_limit(FIELD_LIMIT)
    if csv.field_size_limit() != shared:  # pragma: no cover - one setting (before 3.10)
        module.field_size_limit(limit)
        return _csv
    return module


_CSV = _private_csv()


def csv_rows(
    lines: Iterator[tuple[int, str, str | None]], key_field: str | None, keyed: KeyedRow | None
) -> Iterator[Any]:
    """CSV rows as dicts keyed by the header row; a row that cannot be one as a :class:`BadLine`.

    ``lines``: (line number, text, what is wrong with it or None). A row with a
    line that is not UTF-8, that the csv module cannot read (a carriage
    return in an unquoted cell), or with more cells than the header (a cell
    that holds an unquoted comma: the rest are shifted), is a BadLine. A row
    with fewer cells is a :class:`ShortRow`, without the missing fields: it
    fails only where one is read, as a JSONL item without that field does;
    unless the missing field is ``key_field`` (``--key``): then it is a BadLine.
    ``keyed`` (``--key module:function``): what each row read is handed on as.
    """
    bad: dict[int, tuple[str, str]] = {}  # line number -> (text, problem), for the next row
    record: list[str] = []  # the lines of the row being read

    def texts() -> Iterator[str]:
        for number, text, problem in lines:
            if problem is not None:
                bad[number] = (text.rstrip("\r\n"), problem)
            record.append(text)
            yield text

    reader = _CSV.reader(texts(), csv.excel)
    try:
        header: list[str] | None = next(reader, None)
    except _CSV.Error as exc:
        raise UsageProblem(f"the CSV header: {exc}") from None
    if header is None:
        return
    if bad:
        raise UsageProblem(f"the CSV header: {bad[min(bad)][1]}")
    if key_field is not None and key_field not in header:
        fields = ", ".join(map(repr, header))
        raise UsageProblem(
            f"--key {key_field}: the CSV header has no field {key_field!r} ({fields})"
        )
    record.clear()
    end = reader.line_num
    while True:
        try:
            cells: list[str] | str = next(reader)
        except StopIteration:
            return
        except _CSV.Error as exc:
            cells = str(exc)  # (the rest of its line is dropped; the next row reads on)
        number, end = end + 1, reader.line_num  # (a quoted cell may span lines)
        if bad:
            yield BadLine(min(bad), *bad[min(bad)])
            bad.clear()
        elif cells:  # (none: a blank line)
            text = "".join(record).rstrip("\r\n")
            row = _row(header, cells, number, text, key_field)
            yield row if keyed is None or type(row) is BadLine else keyed(number, text, row)
        record.clear()


def _row(header: list[str], cells: list[str] | str, number: int, text: str, key: str | None) -> Any:
    """The item of the row at line ``number``: its cells (or the csv module's error) as read."""
    if isinstance(cells, str):
        if cells.startswith("new-line character seen in unquoted field"):
            cells = "a carriage return (\\r) in a cell that is not quoted: quote the cell"
        return BadLine(number, text, f"line {number} could not be read as CSV: {cells}")
    if len(cells) == len(header):
        return dict(zip(header, cells, strict=True))
    if len(cells) > len(header):
        return BadLine(
            number,
            text,
            f"line {number} has {len(cells)} cells, the header {len(header)}: "
            "quote a cell that holds a comma",
        )
    missing = header[len(cells) :]
    if key in missing:
        return BadLine(
            number, text, f"line {number} has no cell for field {key!r} (--key {key}): the row "
            "ends before it",
        )  # fmt: skip
    return ShortRow(zip(header, cells, strict=False), line=number, missing=missing)
