"""Live progress: one line on stderr (or a widget in a notebook), redrawn on a timer.

The engine does nothing per item for it: a daemon thread wakes every
``interval`` seconds, reads the engine's counters (plain ints, read without a
lock: a redraw may be one batch behind, never wrong at the end) and redraws.
The final state is drawn once more when the run ends, however it ends.
tqdm draws the bar (rate, ETA, terminal width, notebooks); it is imported
only when a bar is shown.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol

from ._retry import is_programming_error

__all__ = ["DROP_ORDER", "MIN_BAR", "Progress", "progress_line", "progress_wanted"]

INTERVAL = 0.5  # seconds between redraws
MEASURED = 0.1  # seconds a rate is measured over, at least


class Source(Protocol):
    """What the display reads: the engine."""

    @property
    def live(self) -> dict[str, Any]:
        """done, failed, not_run, retrying, in_flight, p50, p95 (seconds), and failing_alike
        (the first Failure while every item failed with its error type, else None)."""


def progress_wanted(progress: bool | None) -> bool:
    """``progress=None`` means: when stderr is a terminal, or in a notebook."""
    if progress is not None:
        return progress
    stream = sys.stderr
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False
    return _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class Progress:
    """Draws ``source.live`` every ``interval`` seconds until :meth:`close`.

    The line is laid out here (:func:`progress_line`), fitted to the
    terminal's width; tqdm only draws it (a widget in a notebook).
    """

    def __init__(
        self,
        source: Source,
        total: int | None,
        interval: float = INTERVAL,
        bar_factory: Callable[..., Any] | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._source = source
        self._total = total
        self._interval = interval
        self._clock = clock
        self._started = self._last_time = clock()
        self._last_done = 0
        self._rate: float | None = None  # items/s, smoothed over the recent redraws
        first = progress_line(source.live, total, 0.0, None, None)
        self._bar = (bar_factory or _tqdm)(total=total, bar_format=first)
        self._draw()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="manyhands-progress", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError:  # no thread to spare (a system limit): drawn at the end only
            self._thread = None

    def _run(self) -> None:
        while not self._closing.wait(self._interval):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        live = self._source.live
        now = self._clock()
        done = live["done"]
        ran = done - live.get("skipped", 0)  # (a resume's skipped items take no time)
        elapsed = now - self._started
        rate = self._measure(now, ran)
        if final and elapsed > 0:
            rate = ran / elapsed  # the summary: the whole run's rate
        bar = self._bar
        bar.bar_format = progress_line(live, self._total, elapsed, rate, _width(bar))
        bar.n = done
        bar.refresh()

    def _measure(self, now: float, ran: int) -> float | None:
        """The rate since the last redraw, smoothed as tqdm does (weight 0.3)."""
        seconds = now - self._last_time
        if seconds >= MEASURED:
            recent = (ran - self._last_done) / seconds
            self._rate = recent if self._rate is None else 0.3 * recent + 0.7 * self._rate
            self._last_time, self._last_done = now, ran
        return self._rate

    def close(self) -> None:
        """Stop the timer, draw the final state, release the line; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._draw(final=True)
        finally:
            self._bar.close()


#: Fields of the line in the order they are dropped when it does not fit:
#: the first goes first; the count of items done is always shown. The bar
#: gets what is left over, if that is at least MIN_BAR characters.
DROP_ORDER = (
    "p95",
    "slowdown",
    "desc",
    "p50",
    "in_flight",
    "rate",
    "retrying",
    "time",
    "percent",
    "alike",
    "not_run",
    "failed",
)
MIN_BAR = 10
_BAR = "\x00"  # where the bar goes, until the text is escaped for tqdm's format
_TAIL = (
    "time", "rate", "failed", "not_run", "retrying", "in_flight", "slowdown", "alike", "p50", "p95"
)  # fmt: skip


def progress_line(
    live: dict[str, Any],
    total: int | None,
    elapsed: float,
    rate: float | None,
    width: int | None,
) -> str:
    """The progress line as a tqdm ``bar_format``: ``{bar}`` where the bar goes.

    Fields are dropped whole, in :data:`DROP_ORDER`, until the line fits in
    ``width`` columns (``None``: unknown, nothing is dropped). A number is
    never cut (unless the count alone is wider than the terminal).

    >>> live = {"done": 900, "failed": 3, "retrying": 2, "in_flight": 50,
    ...         "p50": 0.012, "p95": 0.25, "failing_alike": None}
    >>> progress_line(live, 2000, 3.0, 250.0, None)
    'manyhands: 45%|{bar}| 900/2,000 · 00:03<00:04 · 250.0 items/s · failed 3 · retrying 2 \
· in flight 50 · p50 12.0ms · p95 250.0ms'
    >>> progress_line(live, 2000, 3.0, 250.0, 60)
    '45% 900/2,000 · 00:03<00:04 · failed 3 · retrying 2'
    """
    shown = _fields(live, total, elapsed, rate)
    for name in DROP_ORDER:
        if width is None or len(_joined(shown, bar=False)) <= width:
            break
        shown.pop(name, None)
    line = _joined(shown, bar=False)
    with_bar = total is not None and (width is None or width - len(line) - 2 >= MIN_BAR)
    text = _joined(shown, bar=with_bar)
    return text.replace("{", "{{").replace("}", "}}").replace(_BAR, "{bar}")


def _fields(
    live: dict[str, Any], total: int | None, elapsed: float, rate: float | None
) -> dict[str, str]:
    done = live["done"]
    fields = {"desc": "manyhands:"}
    if total:
        fields["percent"] = f"{100 * done / total:.0f}%"
        fields["count"] = f"{done:,}/{total:,}"
        eta = _clock((total - done) / rate) if rate else "?"
        fields["time"] = f"{_clock(elapsed)}<{eta}"
    else:
        fields["count"] = f"{done:,} items"
        fields["time"] = _clock(elapsed)
    if rate is not None:
        fields["rate"] = f"{rate:,.1f} items/s"
    fields["failed"] = f"failed {live['failed']:,}"
    if live.get("not_run"):  # (items never called: not failures of fn)
        fields["not_run"] = f"not run {live['not_run']:,}"
    if live["retrying"]:
        fields["retrying"] = f"retrying {live['retrying']:,}"
    fields["in_flight"] = f"in flight {live['in_flight']:,}"
    alike = live.get("failing_alike")
    if alike is not None:
        kind = alike.error_type.rpartition(".")[2]
        fields["alike"] = f"all failed: {kind}" + (
            ", a bug in fn?" if is_programming_error(alike) else ""
        )
    if live.get("slowdown"):  # what the adaptive slowdown holds the run to
        fields["slowdown"] = live["slowdown"]
    if live["p50"]:
        fields["p50"] = f"p50 {_short(live['p50'])}"
        fields["p95"] = f"p95 {_short(live['p95'])}"
    return fields


def _joined(fields: dict[str, str], bar: bool) -> str:
    head = [fields[name] for name in ("desc",) if name in fields]
    gauge = fields.get("percent", "") + (f"|{_BAR}|" if bar else "")
    if gauge:
        head.append(gauge)
    head.append(fields["count"])
    tail = [fields[name] for name in _TAIL if name in fields]
    return " · ".join([" ".join(head), *tail])


def _clock(seconds: float) -> str:
    """
    >>> _clock(3), _clock(75.5), _clock(3725)
    ('00:03', '01:15', '1:02:05')
    """
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _width(bar: Any) -> int | None:
    """The terminal's width for a text line; None in a notebook (its widget fits
    itself) or when unknown (a file, a pipe)."""
    if getattr(bar, "container", None) is not None:  # tqdm.notebook's widget
        return None
    ncols = getattr(bar, "format_dict", {}).get("ncols")
    return ncols if isinstance(ncols, int) and ncols > 0 else None


def _tqdm(total: int | None, bar_format: str) -> Any:
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[type-arg]
        # tqdm's own monitor thread would outlive the run; the timer redraws anyway.
        monitor_interval = 0

    try:
        return Bar(total=total, bar_format=bar_format, dynamic_ncols=True)
    except ImportError:  # a notebook without ipywidgets: fall back to a text line
        from tqdm.std import tqdm as text_tqdm

        class TextBar(text_tqdm):  # type: ignore[type-arg]
            monitor_interval = 0

        return TextBar(total=total, bar_format=bar_format, dynamic_ncols=True)


def _short(seconds: float) -> str:
    """
    >>> _short(0.0123), _short(2.5), _short(0.0000042)
    ('12.3ms', '2.50s', '4.2us')
    """
    if seconds >= 1:
        return f"{seconds:.2f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds * 1e6:.1f}us"
