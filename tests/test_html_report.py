"""``manyhands report``: one self-contained HTML page of a journal, checked in a browser.

Run as a script (``python -m tests.test_html_report docs/images/report.png``) it makes the
screenshot the docs show.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._html_report import chart_data, render_html
from manyhands._timeline import read_timeline, throughput_sparkline
from manyhands.cli import main

from .browser import chromium, open_page

ITEMS = 10_000
HOSTILE = "</script><script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"


class HostileError(Exception):
    """An error whose message is HTML that must show as text."""


def work(n: int) -> int:
    time.sleep(0.0005)
    if n % 31 == 0:
        raise ValueError(f"bad item {n}")
    if n % 53 == 0:
        raise KeyError(n)
    if n % 997 == 0:
        raise HostileError(HOSTILE)
    return n


def make_journal(path: Path) -> None:
    """10,000 items, three error types; left early, resumed, then failures retried."""
    with manyhands.map(work, range(ITEMS), workers=8, journal=path) as outcomes:
        for seen, _ in enumerate(outcomes):
            if seen == 4000:
                break  # the first run ends early
    manyhands.run(work, range(ITEMS), workers=8, journal=path)
    manyhands.run(work, range(ITEMS), workers=8, journal=path, retry_failed=True)


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "run.db"
    make_journal(path)
    return path


def records(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT state, count(*) FROM items GROUP BY state"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(
    chromium() is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it",
)
def test_the_report_loads_in_chromium_with_every_chart_drawn(journal: Path, tmp_path: Path) -> None:
    page = tmp_path / "run.html"
    before = digest(journal)
    assert main(["report", str(journal), "-o", str(page)]) == 0
    assert digest(journal) == before  # read only
    expected = chart_data(read_timeline(journal))
    done = records(journal)["done"]

    with open_page(page, height=2200) as load:
        assert load.evaluate("document.body.dataset.rendered") == "yes"
        assert load.errors == []
        assert load.requests == [page.resolve().as_uri()]  # nothing from the network
        points = load.evaluate(
            "Object.fromEntries([...document.querySelectorAll('[data-chart]')]"
            ".map(e => [e.id, Number(e.dataset.points)]))"
        )
        drawn = load.evaluate(
            "Object.fromEntries(Object.entries(manyhandsReport.charts)"
            ".map(([k, u]) => [k, u.data.slice(1).map(s => s.filter(v => v != null).length)]))"
        )
        succeeded = load.evaluate(
            "manyhandsReport.charts.throughput.data[1].reduce((a, v) => a + (v || 0), 0)"
            " * manyhandsReport.data.width"
        )
        runs = load.evaluate("document.getElementById('runs').dataset.runs")
        errors_text = load.evaluate("document.getElementById('errors-table').textContent")
        error_rows = load.evaluate("document.querySelectorAll('#errors-table tbody tr').length")
        pwned = load.evaluate("window.pwned === undefined")
        if len(sys.argv) > 1 and sys.argv[1].endswith(".png"):  # run as a script
            load.screenshot(Path(sys.argv[1]))

    bins = sum(start is not None for start in expected["x"] if start is not None)
    assert bins > 20
    assert set(points) == {"throughput", "latency", "failures", "runs", "histogram"}
    assert all(count > 0 for count in points.values()), points
    assert set(drawn) == set(points)  # every chart was drawn, none left empty
    assert drawn["throughput"] == [sum(v is not None for v in expected["succeeded"])] * 2
    assert sum(drawn["latency"]) == sum(
        v is not None for series in expected["latency"].values() for v in series
    )
    assert len(drawn["failures"]) == len(expected["failuresByType"]) == 3
    assert drawn["histogram"] == [len(expected["histogram"])]
    assert round(succeeded) == done  # every item that succeeded is in the chart
    assert runs == "3"
    assert error_rows == 3
    assert "window.pwned = 1</script>" in errors_text  # shown as text...
    assert pwned  # ...never run


def test_the_page_is_self_contained_and_escapes_the_journal(journal: Path) -> None:
    page = render_html(read_timeline(journal))
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert HOSTILE not in page
    assert "&lt;/script&gt;&lt;script&gt;window.pwned = 1" in page
    assert "<script src" not in page and "<link" not in page
    assert page.count("<script") == 3  # the data, uPlot, the drawing script


def test_timeline_counts_every_item_and_each_run(journal: Path) -> None:
    timeline = read_timeline(journal)
    states = records(journal)
    assert timeline.states == states and timeline.total == ITEMS
    assert sum(timeline.succeeded) == states["done"]
    assert sum(timeline.failed) == states["failed"]
    assert sum(n for _, _, n in timeline.histogram) == ITEMS
    assert [run.status for run in timeline.runs] == ["left early", "finished", "finished"]
    by_type = {error.error_type: error.count for error in timeline.errors}
    assert by_type == {
        "builtins.ValueError": sum(1 for n in range(ITEMS) if n % 31 == 0),
        "builtins.KeyError": sum(1 for n in range(ITEMS) if n % 31 and n % 53 == 0),
        "tests.test_html_report.HostileError": sum(
            1 for n in range(ITEMS) if n % 31 and n % 53 and n % 997 == 0
        ),
    }
    for error in timeline.errors:
        assert error.item is not None and error.message and error.traceback


class Booby:
    """A stored result that does something when it is unpickled."""

    def __reduce__(self) -> Any:
        return (Path("unpickled.flag").write_text, ("unpickled",))


def test_the_report_never_unpickles_stored_results(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "values.db"
    manyhands.run(lambda n: Booby(), range(5), journal=journal, store_results="pickle")
    with contextlib.closing(sqlite3.connect(journal)) as db:
        forms = {row[0] for row in db.execute("SELECT result_format FROM items")}
        assert forms == {"pickle"}
        blob = db.execute("SELECT result FROM items LIMIT 1").fetchone()[0]
    pickle.loads(blob)
    assert Path("unpickled.flag").exists()  # unpickling it would leave this file
    Path("unpickled.flag").unlink()
    assert main(["report", str(journal), "-o", "run.html"]) == 0
    assert main(["status", str(journal)]) == 0
    assert not Path("unpickled.flag").exists()


def synthetic_journal(path: Path) -> None:
    """Two runs of 10 s, 1,000 s apart: 100 items/s each (80 done, 20 failed), by SQL."""
    manyhands.run(str, [], journal=path)  # the schema
    rows = []
    for run, start in ((1, 1000.0), (2, 2000.0)):
        for n in range(1000):
            state = "failed" if n % 5 == 0 else "done"
            rows.append(
                (
                    f"{run}-{n}",
                    state,
                    1,
                    "builtins.OSError" if state == "failed" else None,
                    0.01,
                    start + n / 100,
                    run,
                )
            )
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DELETE FROM runs")
        db.executemany(
            "INSERT INTO runs (id, fn, started, finished, status) VALUES (?, 'f', ?, ?, ?)",
            [(1, 1000.0, 1010.0, "interrupted"), (2, 2000.0, 2010.0, "finished")],
        )
        db.executemany(
            "INSERT INTO items (key, state, attempts, error_type, elapsed, finished, run) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def test_the_timeline_of_two_runs_far_apart(tmp_path: Path) -> None:
    journal = tmp_path / "two.db"
    synthetic_journal(journal)
    timeline = read_timeline(journal, max_bins=20)
    assert timeline.width == 1.0  # 20 s of runs in at most 20 bins
    gap = timeline.starts.index(None)
    assert timeline.starts[gap - 1] == 1009.0 and timeline.starts[gap + 1] == 2000.0
    assert timeline.succeeded == [80] * 10 + [0] + [80] * 10
    assert timeline.failed == [20] * 10 + [0] + [20] * 10
    assert timeline.latency[50][1] == pytest.approx(0.01, rel=0.13)  # one 12% bucket
    assert timeline.latency[50][gap] is None
    assert timeline.failures_by_type == {
        "builtins.OSError": [20 if s is not None and s % 1000 < 10 else 0 for s in timeline.starts]
    }


def test_status_shows_a_throughput_sparkline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "two.db"
    synthetic_journal(journal)
    assert main(["status", str(journal)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("throughput:"))
    assert line == "throughput: " + "█" * 20 + " " + "█" * 20 + "  peak 100.0 items/s (500 ms bins)"

    empty = tmp_path / "empty.db"
    manyhands.run(str, [], journal=empty)
    assert throughput_sparkline(empty) == "throughput: no item recorded"


def test_report_of_a_missing_or_foreign_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nothere.db")]) == 2
    assert "no journal at" in capsys.readouterr().err
    foreign = tmp_path / "foreign.db"
    with contextlib.closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    assert main(["report", str(foreign), "-o", str(tmp_path / "x.html")]) == 2
    assert "is not a manyhands journal" in capsys.readouterr().err  # (not "no such table")
    assert not (tmp_path / "x.html").exists()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        made = Path(folder) / "run.db"
        make_journal(made)
        test_the_report_loads_in_chromium_with_every_chart_drawn(made, Path(folder))
    print(f"wrote {sys.argv[1]}")
