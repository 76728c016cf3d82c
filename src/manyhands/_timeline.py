"""A journal over time: what finished when, how long it took, what failed, and its runs.

The HTML report (``_html_report``) and the throughput line of ``manyhands status``
read a journal through :func:`read_timeline`. It opens the file read-only, with plain
SQL: nothing is unpickled, nothing is written, and a journal in use by a run can be
read meanwhile (WAL).

What the journal records sets what can be drawn. Each item's row holds when its final
outcome was recorded (``finished``, wall-clock seconds, once per settled batch) and its
call time (``elapsed``: for items that ran in one batch, the batch's mean). Items that
failed and then succeeded on a retry leave no trace of the failure, so failures over
time are final failures only.

Time is cut into bins of one width, chosen from round values so that the time the runs
were active (not the gaps between them) makes at most ``max_bins`` bins. Bins lie only
inside the runs: between two runs the series have a gap, drawn as a break in the line.
Latencies are counted in log-spaced buckets (20 per decade, about 12% wide), so a
percentile is known to within one bucket, whatever the number of items.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._exceptions import JournalError
from ._inspect import reading
from ._journal import DONE
from ._journal_text import from_db

__all__ = ["ErrorSummary", "RunSpan", "Timeline", "read_timeline", "throughput_sparkline"]

WIDTHS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800)
HOUR = 3600.0
BUCKETS_PER_DECADE = 20
SMALLEST = 1e-6  # seconds: the lowest latency bucket starts here
BUCKETS = BUCKETS_PER_DECADE * 10  # up to 10,000 s
PERCENTILES = (50, 90, 99)
OTHER = "(other types)"
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass
class RunSpan:
    """One run of the journal: when it started and ended, and what it counted."""

    id: int
    fn: str
    started: float
    ended: float
    status: str
    closed: bool  # False: no end recorded (still running, or killed); ended = its last item
    succeeded: int
    failed: int
    skipped: int


@dataclass
class ErrorSummary:
    """One error type: how many items failed with it, and the first of them."""

    error_type: str
    count: int
    key: str
    item: str | None
    message: str
    attempts: int
    traceback: str


@dataclass
class Timeline:
    """Per-bin series of a journal; ``starts[i] is None`` marks a gap between runs."""

    path: Path
    width: float
    starts: list[float | None]
    succeeded: list[int]
    failed: list[int]
    failures_by_type: dict[str, list[int]]
    latency: dict[int, list[float | None]]  # percentile -> seconds per bin
    histogram: list[tuple[float, float, int]]  # (low, high, items) per latency bucket
    runs: list[RunSpan]
    states: dict[str, int]
    errors: list[ErrorSummary] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Items with a final record."""
        return sum(self.states.values())


def read_timeline(path: str | Path, *, max_bins: int = 240, max_types: int = 8) -> Timeline:
    """Read a journal (read-only) into per-bin series; see the module docstring.

    Raises:
        JournalError: ``path`` is missing, unreadable, or not a manyhands journal.
    """
    with _reading(Path(path)) as db:
        runs = _runs(db)
        width = bin_width(sum(run.ended - run.started for run in runs), max_bins)
        counts: dict[int, list[int]] = {}
        for k, done, n in db.execute(
            "SELECT CAST(finished / ? AS INTEGER), state = ?, count(*) FROM items "
            "WHERE finished IS NOT NULL GROUP BY 1, 2",
            (width, DONE),
        ):
            counts.setdefault(k, [0, 0])[0 if done else 1] += n
        by_type = _failures_by_type(db, width, max_types)
        buckets = _latency_buckets(db, width)
        states = dict(db.execute("SELECT state, count(*) FROM items GROUP BY state"))
        errors = _top_errors(db)
    bins = _bins(runs, width, set(counts) | set(buckets))
    starts = [None if k is None else k * width for k in bins]
    empty = [0, 0]
    return Timeline(
        path=Path(path),
        width=width,
        starts=starts,
        succeeded=[counts.get(k, empty)[0] if k is not None else 0 for k in bins],
        failed=[counts.get(k, empty)[1] if k is not None else 0 for k in bins],
        failures_by_type={
            name: [per_bin.get(k, 0) if k is not None else 0 for k in bins]
            for name, per_bin in by_type.items()
        },
        latency={
            q: [percentile(buckets[k], q) if k in buckets else None for k in bins]
            for q in PERCENTILES
        },
        histogram=_histogram(buckets),
        runs=runs,
        states=states,
        errors=errors,
    )


def throughput_sparkline(path: str | Path, cells: int = 40) -> str:
    """One line: items finished per second over the journal's runs, and the peak.

    A blank cell separates two runs.
    """
    timeline = read_timeline(path, max_bins=cells, max_types=0)
    if not timeline.total:
        return "throughput: no item recorded"
    totals = [s + f for s, f in zip(timeline.succeeded, timeline.failed, strict=True)]
    peak = max(totals)
    spark = "".join(
        " " if start is None else sparkline_cell(total, peak)
        for start, total in zip(timeline.starts, totals, strict=True)
    )
    rate = peak / timeline.width
    return f"throughput: {spark}  peak {rate:,.1f} items/s ({_seconds(timeline.width)} bins)"


def sparkline_cell(value: float, peak: float) -> str:
    """The block for ``value`` on a scale up to ``peak``; any non-zero value shows.

    >>> sparkline_cell(0, 10), sparkline_cell(1, 10), sparkline_cell(10, 10)
    (' ', '▁', '█')
    """
    if value <= 0 or peak <= 0:
        return " "
    return SPARKS[min(len(SPARKS) - 1, int(value / peak * len(SPARKS) - 1e-9))]


def bin_width(active: float, max_bins: int) -> float:
    """The smallest round width that cuts ``active`` seconds into at most ``max_bins``.

    >>> bin_width(2.5, 400), bin_width(600, 400), bin_width(10 * 86400, 400)
    (0.01, 2.0, 3600.0)
    """
    wanted = active / max(max_bins, 1)
    for width in WIDTHS:
        if width >= wanted:
            return float(width)
    return HOUR * math.ceil(wanted / HOUR)


def bucket_of(seconds: float | None) -> int:
    """The latency bucket of a call time: 20 per decade from 1 us.

    >>> bucket_of(1e-6), bucket_of(0.001), bucket_of(1.0), bucket_of(0.0)
    (0, 60, 120, 0)
    """
    if seconds is None or seconds <= SMALLEST:
        return 0
    index = math.floor(BUCKETS_PER_DECADE * math.log10(seconds / SMALLEST) + 1e-9)
    return min(index, BUCKETS - 1)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The seconds a latency bucket covers."""
    return (
        SMALLEST * 10 ** (index / BUCKETS_PER_DECADE),
        SMALLEST * 10 ** ((index + 1) / BUCKETS_PER_DECADE),
    )


def percentile(counts: dict[int, int], q: float) -> float | None:
    """The ``q``-th percentile of bucketed latencies: the middle of its bucket (log scale).

    >>> round(percentile({60: 99, 120: 1}, 50), 4), round(percentile({60: 99, 120: 1}, 100), 2)
    (0.0011, 1.06)
    """
    total = sum(counts.values())
    if not total:
        return None
    rank = q / 100 * total
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            low, high = bucket_bounds(index)
            return math.sqrt(low * high)
    return None  # pragma: no cover - the loop always reaches the last bucket


# -- reading -----------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    with reading(path) as db:
        try:
            db.create_function("bucket", 1, bucket_of, deterministic=True)
            yield db
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{str(path)!r} is not a readable journal ({exc})") from exc


def _runs(db: sqlite3.Connection) -> list[RunSpan]:
    last_items = dict(db.execute("SELECT run, max(finished) FROM items GROUP BY run"))
    runs = []
    for row in db.execute(
        "SELECT id, fn, started, finished, status, succeeded, failed, skipped FROM runs ORDER BY id"
    ):
        run_id, fn, started, finished, status, succeeded, failed, skipped = row
        started = float(started or 0.0)
        ended = finished if finished is not None else last_items.get(run_id)
        runs.append(
            RunSpan(
                id=run_id,
                fn=str(from_db(fn) or "?"),
                started=started,
                ended=max(float(ended or started), started),
                status=str(status or "?"),
                closed=finished is not None,
                succeeded=succeeded or 0,
                failed=failed or 0,
                skipped=skipped or 0,
            )
        )
    return runs


def _failures_by_type(
    db: sqlite3.Connection, width: float, max_types: int
) -> dict[str, dict[int, int]]:
    """Final failures per bin, for the ``max_types`` most frequent types (the rest: OTHER)."""
    if max_types <= 0:
        return {}
    rows = db.execute(
        "SELECT CAST(finished / ? AS INTEGER), coalesce(error_type, state), count(*) "
        "FROM items WHERE state != ? AND finished IS NOT NULL GROUP BY 1, 2",
        (width, DONE),
    ).fetchall()
    rows = [(k, str(from_db(name)), n) for k, name, n in rows]
    totals: dict[str, int] = {}
    for _, name, n in rows:
        totals[name] = totals.get(name, 0) + n
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    kept = set(ranked[:max_types] if len(ranked) <= max_types else ranked[: max_types - 1])
    series: dict[str, dict[int, int]] = {name: {} for name in ranked if name in kept}
    for k, name, n in rows:
        per_bin = series.setdefault(name if name in kept else OTHER, {})
        per_bin[k] = per_bin.get(k, 0) + n
    return series


def _latency_buckets(db: sqlite3.Connection, width: float) -> dict[int, dict[int, int]]:
    """bin -> latency bucket -> items, counted by SQLite (one Python call per row)."""
    found: dict[int, dict[int, int]] = {}
    for k, bucket, n in db.execute(
        "SELECT CAST(finished / ? AS INTEGER), bucket(elapsed), count(*) FROM items "
        "WHERE finished IS NOT NULL AND elapsed IS NOT NULL GROUP BY 1, 2",
        (width,),
    ):
        found.setdefault(k, {})[bucket] = n
    return found


def _histogram(buckets: dict[int, dict[int, int]]) -> list[tuple[float, float, int]]:
    totals: dict[int, int] = {}
    for per_bin in buckets.values():
        for index, n in per_bin.items():
            totals[index] = totals.get(index, 0) + n
    if not totals:
        return []
    return [
        (*bucket_bounds(index), totals.get(index, 0))
        for index in range(min(totals), max(totals) + 1)
    ]


def _top_errors(db: sqlite3.Connection, limit: int = 10) -> list[ErrorSummary]:
    # SQLite takes the bare columns of an aggregate query from the row that min() picked:
    # the first item that failed with each type.
    rows = db.execute(
        "SELECT coalesce(error_type, state), count(*) AS n, min(finished), key, item, "
        "message, attempts, traceback FROM items WHERE state != ? "
        "GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?",
        (DONE, limit),
    )
    return [
        ErrorSummary(
            str(from_db(name)),
            n,
            str(from_db(key)),
            from_db(item),
            str(from_db(message) or ""),
            attempts or 0,
            str(from_db(trace) or ""),
        )
        for name, n, _, key, item, message, attempts, trace in rows
    ]


def _bins(runs: list[RunSpan], width: float, used: set[int]) -> list[int | None]:
    """The bins inside the runs (and any holding items), with None between runs."""
    wanted = set(used)
    for run in runs:
        first = math.floor(run.started / width)
        wanted.update(range(first, max(math.ceil(run.ended / width), first + 1)))
    bins: list[int | None] = []
    for k in sorted(wanted):
        if bins and bins[-1] is not None and k != bins[-1] + 1:
            bins.append(None)
        bins.append(k)
    return bins


def _seconds(width: float) -> str:
    """
    >>> _seconds(0.05), _seconds(2), _seconds(120), _seconds(7200.0)
    ('50 ms', '2 s', '2 min', '2 h')
    """
    if width < 1:
        return f"{width * 1000:g} ms"
    if width < 60:
        return f"{width:g} s"
    if width < HOUR:
        return f"{width / 60:g} min"
    return f"{width / HOUR:g} h"
