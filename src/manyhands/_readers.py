"""Who reads each streamed run of a Pool, so that the pool never waits for what cannot end.

A ``pool.map`` is driven by the thread that reads it, a ``pool.amap`` by the
task that reads it on an event loop. A thread that waits for the pool to be
idle cannot also read: the runs it reads left unfinished (a ``break`` with
the iterator still held, an exception in the loop body) would never end. So
the pool stops them first, as a ``break`` does, and waits only for the runs
that others read. An amap of the waiting thread's event loop cannot be closed
without that loop: ``async with`` closes this task's amaps and waits in another
thread; a blocking wait on that loop is refused.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["ORPHANED_FOR", "Reader", "Readers"]

#: How long (seconds) a waiting shutdown gives a map whose reading thread ended
#: before it stops it: time for the thread it was handed to to begin reading it.
ORPHANED_FOR = 5.0


class Reader:
    """Who reads one map's (or amap's) Outcomes.

    ``thread``: the thread that reads it (its ident), set when the run
    starts and each time it waits for a batch (a thread that waits for the
    run's next batch is the one reading it); 0 before and after the run.
    ``reading``: that thread's object, to tell whether it ended.
    ``position``: how far the map was read (a thread it was handed to may
    read the rest of a batch, and the reader stays the one that began it).
    ``task``: for an
    amap, the asyncio task that reads it, likewise. ``generator``: a weak
    reference to the generator (closing it stops the run); a ``for`` loop
    drops the Outcomes once it holds the generator.
    """

    __slots__ = ("__weakref__", "generator", "on_loop", "position", "reading", "task", "thread")

    def __init__(self, on_loop: bool) -> None:
        self.thread = 0
        self.reading: threading.Thread | None = None
        self.position: Callable[[], object] = lambda: None
        self.on_loop = on_loop  # an amap: read on an event loop, closed by awaiting
        self.task: object = None
        self.generator: Callable[[], Any] = lambda: None

    def read_here(self) -> None:
        """This thread reads the map now."""
        self.thread = threading.get_ident()
        # (A thread not started by threading, e.g. by a C extension, gets a dummy
        # Thread object here, which counts as alive: such a reader is never
        # taken for ended.)
        self.reading = threading.current_thread()

    def ended(self) -> bool:
        """The map's reading thread has ended (and the map has not)."""
        reading = self.reading
        return bool(self.thread) and reading is not None and not reading.is_alive()


class Readers:
    """The Readers of a pool's runs, held weakly (a run nobody holds is closed by its finalizer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: weakref.WeakSet[Reader] = weakref.WeakSet()
        # (the maps whose reader was seen ended: since when, and where they were then)
        self._orphans: dict[Reader, tuple[float, object]] = {}

    def add(self, reader: Reader) -> None:
        with self._lock:
            self._readers.add(reader)

    def here(self) -> list[Reader]:
        """The runs this thread reads, begun and not ended."""
        me = threading.get_ident()
        with self._lock:
            return [reader for reader in list(self._readers) if reader.thread == me]

    def loop_here(self) -> bool:
        """This thread's event loop reads an amap not ended (waiting here would block it)."""
        return any(reader.on_loop for reader in self.here())

    def check_can_wait(self, call: str) -> None:
        """Refuse a wait, in this thread, that the runs it reads would make endless."""
        readers = self.here()
        if any(reader.on_loop for reader in readers):
            raise RuntimeError(
                f"{call} was called on an event loop that reads a pool.amap not ended, and "
                "would block the loop that run needs: in async code use `async with "
                "manyhands.Pool(...)`, or `await asyncio.to_thread(pool.shutdown)`"
            )
        frames = set()
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            frames.add(frame)
            frame = frame.f_back
        running = (getattr(reader.generator(), "gi_frame", None) for reader in readers)
        if any(frame is not None and frame in frames for frame in running):
            raise RuntimeError(
                f"{call} was called while a pool.map of this thread was reading its input "
                "(or delivering), and would wait for that run forever: use "
                "shutdown(wait=False) there"
            )

    def stop_orphans(self, now: float) -> None:
        """Stop the maps whose reading thread ended, and not read for ``ORPHANED_FOR`` s since.

        (As a map nobody holds is closed by its finalizer; one kept in a list
        by a thread that read it and ended would otherwise be waited for
        forever.) A map its ended reader handed to another thread goes on if
        that thread reads from it within ``ORPHANED_FOR`` seconds of the
        first look, then each time it reads; ``now`` is the time
        (``time.monotonic``) of this look, made every fraction of a second.
        """
        with self._lock:
            ended = [
                reader for reader in list(self._readers) if not reader.on_loop and reader.ended()
            ]
            orphans: dict[Reader, tuple[float, object]] = {}
            for reader in ended:  # (read since the last look: its time starts anew)
                where = (reader.thread, reader.position())
                since, seen = self._orphans.get(reader, (now, where))
                orphans[reader] = (since if seen == where else now, where)
            self._orphans = orphans
            readers = [
                reader for reader, (since, _) in orphans.items() if now - since >= ORPHANED_FOR
            ]
        for reader in readers:
            run = reader.generator()
            if run is not None and not run.gi_running:
                with contextlib.suppress(ValueError):  # (its finalizer closes it meanwhile)
                    run.close()

    def stop_here(self) -> None:
        """Stop the maps this thread reads: they could never end while it waits for them."""
        for reader in self.here():
            run = reader.generator()
            if run is not None and not reader.on_loop and not run.gi_running:
                run.close()  # (running: another thread reads it now, so it may end)

    async def astop_here(self) -> None:
        """:meth:`stop_here`, and the amaps the running task reads (those of other tasks go on)."""
        import asyncio

        task = asyncio.current_task()
        for reader in self.here():
            run = reader.generator()
            if run is None or (reader.on_loop and reader.task is not task):
                continue  # (no longer held: its finalizer closes it on the loop)
            if reader.on_loop:
                await run.aclose()
            elif not run.gi_running:
                run.close()
