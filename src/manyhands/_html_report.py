"""``manyhands report JOURNAL -o run.html``: one self-contained HTML page of a run.

The page shows, on one time axis: items finished per second, latency percentiles,
failures by type, and the runs of the journal (each resume is a run); then the latency
histogram, the runs, and the most frequent errors with the first item that failed with
each. The data comes from :func:`manyhands._timeline.read_timeline` (the journal, read
only); the charts are drawn in the browser by uPlot (MIT, ``_report_assets/``), inlined
in the page with the data, so the file opens anywhere with no network at all (a
Content-Security-Policy forbids any request). Every text that comes from the journal is
escaped: HTML-escaped in the tables, and inside the inline JSON, ``<``, ``>`` and ``&``
are written as ``\\u`` escapes, so no journal text can end the script element.
"""

from __future__ import annotations

import html
import json
import time
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from ._timeline import OTHER, PERCENTILES, Timeline, read_timeline

__all__ = ["render_html", "write_report"]

_ASSETS = "_report_assets"
_TEXT_LIMIT = 2000  # characters of a message or an item shown in the page


def write_report(journal: str | Path, output: str | Path) -> Timeline:
    """Write the HTML report of ``journal`` to ``output``; return what it shows.

    Raises:
        JournalError: the journal is missing, unreadable or not a manyhands journal.
        OSError: ``output`` cannot be written.
    """
    timeline = read_timeline(journal)
    page = render_html(timeline)
    Path(output).write_text(page, encoding="utf-8")
    return timeline


def render_html(timeline: Timeline) -> str:
    """The page, as one string: markup, style, uPlot, the data and the drawing script."""
    template = Template(_asset("report.html"))
    return template.substitute(
        title=_escape(f"manyhands report: {timeline.path.name}"),
        summary=_summary(timeline),
        runs=_runs_table(timeline),
        errors=_errors_table(timeline),
        uplot_css=_asset("uPlot.min.css"),
        uplot_js=_asset("uPlot.iife.min.js"),
        data=script_json(chart_data(timeline)),
        script=_asset("report.js"),
    )


def chart_data(timeline: Timeline) -> dict[str, Any]:
    """What the page's script draws: per-bin series (rates per second), runs, histogram."""
    width = timeline.width
    starts = timeline.starts
    return {
        "width": width,
        "x": [
            start if start is not None else _gap_x(starts, i, width)
            for i, start in enumerate(starts)
        ],
        "gaps": [start is None for start in starts],
        "succeeded": _rates(timeline.succeeded, starts, width),
        "failed": _rates(timeline.failed, starts, width),
        "failuresByType": {
            name: _rates(counts, starts, width)
            for name, counts in timeline.failures_by_type.items()
        },
        "latency": {
            f"p{q}": [None if s is None else _ms(v) for s, v in zip(starts, series, strict=True)]
            for q, series in timeline.latency.items()
        },
        "histogram": [[_ms(low), _ms(high), n] for low, high, n in timeline.histogram],
        "runs": [
            {
                "id": run.id,
                "start": run.started,
                "end": run.ended,
                "status": run.status,
                "closed": run.closed,
            }
            for run in timeline.runs
        ],
        "percentiles": list(PERCENTILES),
        "other": OTHER,
    }


def script_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element, whatever its strings hold.

    >>> script_json({"e": "</script><b>&"})
    '{"e": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e\\\\u0026"}'
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# -- the parts of the page ------------------------------------------------------


def _summary(timeline: Timeline) -> str:
    runs = timeline.runs
    active = sum(run.ended - run.started for run in runs)
    span = f"{_when(runs[0].started)} to {_when(runs[-1].ended)}" if runs else "no run recorded"
    states = ", ".join(f"{n:,} {state}" for state, n in sorted(timeline.states.items()))
    facts = [
        ("journal", str(timeline.path)),
        ("items with a final record", f"{timeline.total:,}" + (f" ({states})" if states else "")),
        ("runs", f"{len(runs)}: {span}"),
        ("active time", f"{active:,.1f} s, in bins of {timeline.width:g} s"),
    ]
    return "\n".join(f"<dt>{_escape(k)}</dt><dd>{_escape(v)}</dd>" for k, v in facts)


def _runs_table(timeline: Timeline) -> str:
    rows = []
    for run in timeline.runs:
        ended = "" if run.closed else " (no end recorded: still running, or killed)"
        rows.append(
            "<tr>"
            f"<td>#{run.id}</td><td>{_escape(_when(run.started))}</td>"
            f"<td>{run.ended - run.started:,.1f} s{_escape(ended)}</td>"
            f"<td>{_escape(run.fn)}</td><td>{_escape(run.status)}</td>"
            f"<td class=n>{run.succeeded:,}</td><td class=n>{run.failed:,}</td>"
            f"<td class=n>{run.skipped:,}</td>"
            "</tr>"
        )
    return "\n".join(rows) or "<tr><td colspan=8>no run recorded</td></tr>"


def _errors_table(timeline: Timeline) -> str:
    failed = sum(error.count for error in timeline.errors) or 1
    rows = []
    for error in timeline.errors:
        example = error.item if error.item is not None else f"key {error.key}"
        trace = (
            f"<details><summary>traceback</summary><pre>{_escape(error.traceback)}</pre></details>"
            if error.traceback
            else ""
        )
        rows.append(
            "<tr>"
            f"<td><code>{_escape(error.error_type)}</code></td>"
            f"<td class=n>{error.count:,}</td><td class=n>{error.count / failed:.0%}</td>"
            f"<td><code>{_escape(example)}</code></td>"
            f"<td>{_escape(error.message)}{trace}</td><td class=n>{error.attempts}</td>"
            "</tr>"
        )
    return "\n".join(rows) or "<tr><td colspan=6>no failed item</td></tr>"


# -- helpers -------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(_ASSETS).joinpath(name).read_text(encoding="utf-8")


def _escape(text: str) -> str:
    if len(text) > _TEXT_LIMIT:
        text = text[:_TEXT_LIMIT] + f"... ({len(text) - _TEXT_LIMIT:,} more characters)"
    return html.escape(text, quote=True)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _rates(counts: list[int], starts: list[float | None], width: float) -> list[float | None]:
    return [None if s is None else n / width for s, n in zip(starts, counts, strict=True)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _gap_x(starts: list[float | None], index: int, width: float) -> float:
    """Where a gap sits on the x axis: just after the bin before it."""
    before = starts[index - 1] if index else None
    return (before if before is not None else 0.0) + width
