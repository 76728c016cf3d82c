"""Rows the command cannot read, or key: each fails as its own item, and the run goes on."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from manyhands._inputs import BadLine, read_items

from .test_cli import TARGET, manyhands


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "keyed.py").write_text("def name(row):\n    return str(row)\n")
    return tmp_path


def output_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


KEYLESS = {
    # form: (INPUT, the rows' items in the output, the failed row's line and message)
    "jsonl": (
        '{"id": 1}\n{"ID": 2}\n{"id": null}\n[3]\n{"id": 5}\n',
        [{"id": 1}, '{"ID": 2}', '{"id": null}', "[3]", {"id": 5}],
        {
            2: "line 2 has no field 'id' (--key id)",
            3: "line 3 has null in field 'id', which is no --key",
            4: "line 4 has no field 'id' (--key id)",
        },
    ),
    "csv": (
        "name,id\na,1\nb\nc,3\n",
        [{"name": "a", "id": "1"}, "b", {"name": "c", "id": "3"}],
        {3: "line 3 has no cell for field 'id' (--key id): the row ends before it"},
    ),
}


@pytest.mark.parametrize("form", ["jsonl", "csv"])
def test_a_row_without_the_key_field_fails_as_its_own_item_and_reruns_go_on(
    workdir: Path, form: str
) -> None:
    text, items, errors = KEYLESS[form]
    (workdir / f"rows.{form}").write_text(text)
    command = ["run", "keyed.py:name", f"rows.{form}", f"--{form}", "--key", "id",
               "--journal", "j.db", "--ordered"]  # fmt: skip
    done = manyhands(*command, "--output", "out.jsonl", cwd=workdir)
    assert done.returncode == 1, done.stderr  # (not 2: the run went on past the row)
    out = output_of(workdir / "out.jsonl")
    assert [line["item"] for line in out] == items  # the rows after it ran
    failed = {line["item"]: line["error"] for line in out if not line["ok"]}
    assert sorted(
        (error["type"], error["message"]) for error in failed.values() if isinstance(error, dict)
    ) == sorted(("manyhands.cli.MalformedLine", message) for message in errors.values())
    status = manyhands("status", "j.db", cwd=workdir)
    assert f"{len(errors)}  manyhands.cli.MalformedLine" in status.stdout, status.stdout
    failures = manyhands("failures", "j.db", cwd=workdir).stdout
    for line, message in errors.items():
        assert f"<line {line}: " in failures and f"MalformedLine: {message} (" in failures
    again = manyhands(*command, cwd=workdir)  # a rerun skips them, as recorded failures
    assert again.returncode == 1, again.stderr
    assert f"{len(errors)} skipped (failed in the journal" in again.stdout, again.stdout
    retried = manyhands(*command, "--retry-failed", cwd=workdir)  # and runs them: they fail
    assert retried.returncode == 1, retried.stderr
    assert f"{len(items) - len(errors)} skipped (done" in retried.stdout, retried.stdout


KEY_FUNCTION = """\
def key(row):
    with open("calls.log", "a") as log:
        log.write("call\\n")
    if row["id"] == "none":
        return None
    return int(row["id"])
"""

UNKEYED = {
    # form: (INPUT, the rows' items in the output)
    "jsonl": (
        '{"id": 1}\n{"id": "x"}\n{"id": "none"}\n{"id": 4}\n',
        [{"id": 1}, '{"id": "x"}', '{"id": "none"}', {"id": 4}],
    ),
    "csv": ("id\n1\nx\nnone\n4\n", [{"id": "1"}, "x", "none", {"id": "4"}]),
}


@pytest.mark.parametrize(
    ("form", "source"), [("jsonl", "file"), ("jsonl", "stdin"), ("csv", "file")]
)
def test_a_row_the_key_function_raises_for_fails_as_its_own_item_and_reruns_go_on(
    workdir: Path, form: str, source: str
) -> None:
    """Before, the first such row stopped the run (exit 2), and so did every resume: the rows
    after it never ran."""
    (workdir / "keys.py").write_text(KEY_FUNCTION)
    text, items = UNKEYED[form]
    (workdir / f"rows.{form}").write_text(text)
    path = f"rows.{form}" if source == "file" else "-"
    command = ["run", "keyed.py:name", path, f"--{form}", "--key", "keys:key",
               "--journal", "j.db", "--ordered"]  # fmt: skip
    piped = text if source == "stdin" else None
    done = manyhands(*command, "--output", "out.jsonl", cwd=workdir, stdin=piped)
    assert done.returncode == 1, done.stderr  # (not 2: the run went on past the rows)
    out = output_of(workdir / "out.jsonl")
    assert [line["item"] for line in out] == items  # the rows after them ran
    line = 3 if form == "jsonl" else 4
    errors = [line["error"] for line in out if not line["ok"]]
    assert errors == [
        {
            "type": "manyhands.cli.KeyFunctionError",
            "message": f"line {line - 1}: --key keys:key raised ValueError: invalid literal for "
            f"int() with base 10: 'x' (at {workdir / 'keys.py'}:6)",
            "attempts": 1,
        },
        {
            "type": "manyhands.cli.KeyFunctionError",
            "message": f"line {line}: --key keys:key returned None, which is no key",
            "attempts": 1,
        },
    ]
    calls = workdir / "calls.log"
    assert calls.read_text().count("call") == 4  # once a row: the journal takes its keys
    status = manyhands("status", "j.db", cwd=workdir)
    assert "2  manyhands.cli.KeyFunctionError" in status.stdout, status.stdout
    failures = manyhands("failures", "j.db", cwd=workdir).stdout
    assert f"<line {line - 1}: " in failures and f"<line {line}: " in failures, failures
    again = manyhands(*command, cwd=workdir, stdin=piped)  # a rerun skips them, as recorded
    assert again.returncode == 1, again.stderr
    assert "2 skipped (done in the journal), 2 skipped (failed" in again.stdout, again.stdout
    retried = manyhands(*command, "--retry-failed", cwd=workdir, stdin=piped)  # and runs them
    assert retried.returncode == 1, retried.stderr
    assert "2 skipped (done in the journal), 2 run" in retried.stdout, retried.stdout
    assert ": 0 succeeded, 2 failed" in retried.stdout, retried.stdout


@pytest.mark.parametrize(
    ("form", "text", "message"),
    [
        ("csv", "name,ID\na,1\n", "--key id: the CSV header has no field 'id' ('name', 'ID')"),
        ("lines", "a\n", "--key id names a field of each item: add --jsonl or --csv"),
    ],
)
def test_a_key_field_no_row_can_have_is_a_usage_error(
    workdir: Path, form: str, text: str, message: str
) -> None:
    (workdir / "rows.in").write_text(text)
    done = manyhands("run", "keyed.py:name", "rows.in", f"--{form}", "--key", "id",
                     "--journal", "j.db", cwd=workdir)  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr, done.stderr


def test_rows_the_csv_module_cannot_read_fail_as_their_own_items(workdir: Path) -> None:
    """A field past the csv module's 131,072 characters is read; a stray \\r fails its row."""
    long = "x" * 200_000
    (workdir / "rows.csv").write_text(f"id,text\n1,a\n2,{long}\n3,c\rd\n4,e\n", newline="")
    done = manyhands("run", "json:dumps", "rows.csv", "--csv", "--ordered",
                     "--output", "out.jsonl", cwd=workdir)  # fmt: skip
    assert done.returncode == 1, done.stderr
    out = output_of(workdir / "out.jsonl")
    assert [line["ok"] for line in out] == [True, True, False, True]
    assert out[1]["item"] == {"id": "2", "text": long}
    assert out[2]["item"] == "3,c\rd"
    assert out[2]["error"] == {
        "type": "manyhands.cli.MalformedLine",
        "message": "line 4 could not be read as CSV: a carriage return (\\r) in a cell that is "
        "not quoted: quote the cell",
        "attempts": 1,
    }


def test_reading_a_long_csv_field_leaves_the_csv_modules_limit_as_it_was() -> None:
    before = csv.field_size_limit()
    rows = list(read_items(io.BytesIO(b"a\n" + b"x" * 200_000 + b"\n"), "csv"))
    assert rows == [{"a": "x" * 200_000}]
    assert csv.field_size_limit() == before  # (the user's own csv reading is unchanged)


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_jsonl_line_nested_too_deeply_fails_as_its_own_item(workdir: Path, source: str) -> None:
    text = '{"id": 1}\n' + "[" * 100_000 + '\n{"id": 3}\n'
    (workdir / "rows.jsonl").write_text(text)
    path = "rows.jsonl" if source == "file" else "-"
    done = manyhands("run", "json:dumps", path, "--jsonl", "--ordered", "--output", "-",
                     cwd=workdir, stdin=text if source == "stdin" else None)  # fmt: skip
    assert done.returncode == 1, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["ok"] for line in out] == [True, False, True]
    error = out[1]["error"]
    assert isinstance(error, dict) and error["type"] == "manyhands.cli.MalformedLine"
    assert str(error["message"]).startswith("line 2 is JSON nested too deeply to read")


def test_any_error_json_raises_on_a_line_makes_it_a_bad_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def loads(text: str) -> object:
        if text == "boom":
            raise OverflowError("too big")
        return json.JSONDecoder().decode(text)

    monkeypatch.setattr(json, "loads", loads)
    items = list(read_items(io.BytesIO(b"1\nboom\n3\n"), "jsonl"))
    assert items[0] == 1 and items[2] == 3
    assert isinstance(items[1], BadLine)
    assert items[1].error == "line 2 could not be read as JSON: OverflowError: too big"


def test_failures_json_gives_each_row_as_json_beside_its_repr(workdir: Path) -> None:
    """Before, ``item`` was the row's Python repr, a string: ``jq '.item.id'`` failed on it."""
    (workdir / "fails.py").write_text("def fail(row):\n    raise ValueError(row)\n")
    (workdir / "rows.jsonl").write_text('{"id": 1, "tags": ["a"]}\nnot json\n{"id": 3}\n')
    done = manyhands("run", "fails:fail", "rows.jsonl", "--jsonl", "--journal", "j.db",
                     cwd=workdir)  # fmt: skip
    assert done.returncode == 1, done.stderr
    listed = manyhands("failures", "j.db", "--json", cwd=workdir)
    records = {r["key"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert {key: (r["item"], r["item_repr"]) for key, r in records.items()} == {
        '{"id":1,"tags":["a"]}': ({"id": 1, "tags": ["a"]}, "{'id': 1, 'tags': ['a']}"),
        "<line 2>": ("not json", "<line 2: 'not json'>"),  # (as its --output line has it)
        '{"id":3}': ({"id": 3}, "{'id': 3}"),
    }
    assert records['{"id":3}']["item"]["id"] == 3 and records['{"id":3}']["attempts"] == 1


def test_a_catch_up_of_the_output_writes_a_bad_rows_line_once(workdir: Path) -> None:
    """A resume into a file that lacks some lines adds those only: a row without its key
    field has its line already (its item the row's text, its record ``<line N>``)."""
    (workdir / "first.jsonl").write_text('{"id": 0}\n{"x": 1}\n{"id": 2}\n')
    (workdir / "more.jsonl").write_text('{"id": 0}\n{"x": 1}\n{"id": 2}\n{"id": 3}\n')
    flags = ["--jsonl", "--key", "id", "--journal", "j.db"]
    manyhands("run", "keyed.py:name", "first.jsonl", *flags, "--output", "a.jsonl", cwd=workdir)
    manyhands("run", "keyed.py:name", "more.jsonl", *flags, cwd=workdir)  # (no --output)
    manyhands("run", "keyed.py:name", "more.jsonl", *flags, "--output", "a.jsonl", cwd=workdir)
    items = [json.dumps(line["item"]) for line in output_of(workdir / "a.jsonl")]
    assert sorted(items) == sorted(['{"id": 0}', '"{\\"x\\": 1}"', '{"id": 2}', '{"id": 3}'])
