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
from typing import Any, Protocol

__all__ = ["Progress", "progress_wanted"]

INTERVAL = 0.5  # seconds between redraws


class Source(Protocol):
    """What the display reads: the engine."""

    @property
    def live(self) -> dict[str, Any]:
        """done, failed, retrying, in_flight, p50, p95 (seconds)."""


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
    """Draws ``source.live`` every ``interval`` seconds until :meth:`close`."""

    def __init__(
        self,
        source: Source,
        total: int | None,
        interval: float = INTERVAL,
        bar_factory: Callable[..., Any] | None = None,
    ) -> None:
        self._source = source
        self._interval = interval
        self._bar = (bar_factory or _tqdm)(total=total)
        self._done = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="manyhands-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        live = self._source.live
        bar = self._bar
        parts = [f"failed {live['failed']:,}"]
        if live["retrying"]:
            parts.append(f"retrying {live['retrying']:,}")
        parts.append(f"in flight {live['in_flight']:,}")
        if live.get("slowdown"):
            parts.append(live["slowdown"])
        if live["p50"]:
            parts.append(f"p50 {_short(live['p50'])} p95 {_short(live['p95'])}")
        bar.set_postfix_str(" · ".join(parts), refresh=False)
        done = live["done"]
        bar.update(done - self._done)  # redraws, and feeds tqdm's rate and ETA
        self._done = done

    def close(self) -> None:
        """Stop the timer, draw the final state, release the line; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._thread.join()
        try:
            self._draw()
        finally:
            self._bar.close()


def _tqdm(total: int | None) -> Any:
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[type-arg]
        # tqdm's own monitor thread would outlive the run; the timer redraws anyway.
        monitor_interval = 0

    try:
        return Bar(total=total, unit=" items", mininterval=0, dynamic_ncols=True, desc="manyhands")
    except ImportError:  # a notebook without ipywidgets: fall back to a text line
        from tqdm.std import tqdm as text_tqdm

        class TextBar(text_tqdm):  # type: ignore[type-arg]
            monitor_interval = 0

        return TextBar(total=total, unit=" items", mininterval=0, desc="manyhands")


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
