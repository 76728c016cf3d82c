"""What the parts of the process backend share: its state, and the calls between them.

:class:`~._processes.ProcessBackend` (what the runs call) is made of parts
that read and write the same state: the dispatcher thread, which sends the
batches and reads the answers (:mod:`._process_dispatcher`), the workers'
start (:mod:`._process_starts`), and a worker lost or failed to start, with
the one started in its place (:mod:`._process_losses`). They are mixins of
one object, not objects that call each other, so that the dispatcher's path
for each batch costs no more than one class's methods would;
:class:`ProcessState` declares what they share (``ProcessBackend.__init__``
sets it, with what each holds), and the calls the dispatcher makes on the
parts after it.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

from .._batch import Batch
from .._exceptions import WorkerCrashed
from .._lanes import Lanes
from ._process_spawn import Worker

__all__ = ["NEVER", "ProcessState"]

NEVER = float("inf")  # (no start due: ``_start_due``)


class ProcessState:
    """The state the parts of a ``ProcessBackend`` share (set by its ``__init__``)."""

    notes: list[str]
    workers_started: int
    _start_timeout: float | None
    _workers: int
    _shared: bool
    _depth: int
    _context: BaseContext
    _initializer: Callable[..., Any] | None
    _initargs: tuple[Any, ...]
    _payload: bytes
    _first_key: int
    _modules: dict[str, str | None]
    _lock: threading.Lock
    _inbox: Lanes[tuple[Batch, list[int]]]
    _keys: itertools.count[int]
    _functions: dict[int, bytes]
    _halted: set[int]
    _started: bool
    _woken: bool
    _look: bool
    _wake_r: socket.socket | None
    _wake_w: socket.socket | None
    _selector: selectors.BaseSelector | None
    _pool: list[Worker]
    _stopping: bool
    _closing: bool
    _idle: threading.Event
    _broken: WorkerCrashed | None
    _more: int
    _start_due: float
    _dispatcher: threading.Thread | None

    # -- what the dispatcher asks of the workers' starts and losses -------

    def _add_workers(self, count: int) -> None:
        """Start ``count`` more workers (``grow``; see ``_process_starts``)."""
        raise NotImplementedError

    def _start_error(self, worker: Worker, reply: Any) -> None:
        """A starting worker said why it could not start (see ``_process_losses``)."""
        raise NotImplementedError

    def _expire_starts(self) -> None:
        """Kill the workers overdue to be ready (see ``_process_losses``)."""
        raise NotImplementedError

    def _lost(self, worker: Worker) -> None:
        """A worker's process ended (see ``_process_losses``)."""
        raise NotImplementedError
