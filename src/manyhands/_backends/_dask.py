"""The Dask backend: a run's batches as tasks on a Dask distributed cluster.

The run stays in the driver (window, retries, rate, stop rules, journal,
progress, Report); the cluster only executes batches::

    engine thread                     Dask scheduler and workers         collector thread
    attach: fn, pickled ──────────▶   loaded once per worker process
    submit: a batch, pickled; the ──▶ runs the batch                  ─▶ _collect: the answers
      sender thread sends it as one   (_remote_calls.run_items)          of tasks that finished
      task (key manyhands-...)                                           together, one gather;
    cancel/shutdown: cancel the run's                                    task.done(batch)
      tasks on the scheduler

``fn`` is loaded once per worker process: a small one (most functions
pickle to their name) travels with each task; a larger one once per run (a
task whose result is the function, which every batch task depends on). A
batch task is plain bytes in and out; the batches are handed to a sender
thread, which submits those waiting together (one message to the scheduler,
not one per task). At most the run's window is on the cluster: the engine
submits a batch only when one came back, so a generator of any length keeps
the driver and the scheduler flat.

A worker that dies running a batch fails its task with ``KilledWorker``
(a LocalCluster started here runs with ``allowed-failures`` 0, so Dask never
runs the task again behind the engine's back). The task marked the items
being called in a file (see ``_remote_calls``), read here when the worker
was on this host, else by the worker's nanny once it is back: those items
fail as ``manyhands.WorkerCrashed`` (the run's retry policy then applies as
to any failure), and the others run again, uncharged. A task that was only
queued on the dead worker (or between two calls) runs again whole; one with
no word of its progress is split in two at its second death (see
``_dask_crashes``). A worker's threads share its running batches' unstarted items (a
thread whose batch is done calls the others'); each call is marked in its
batch's file, whichever thread makes it. On a worker with several threads,
an item running beside the killer in another thread is charged too: the
nanny cannot tell which call killed it.

A running Dask task cannot be stopped. ``timeout=`` is applied on the
worker (see ``_remote_calls``): the call is left running in a thread and its
item fails, so the worker goes on. Stopping a run (``break``, Ctrl-C, a stop
rule) tells the workers that its tasks call no further item; a running task
answers with the items it called, waited for up to ``grace`` (see
``shutdown``); then every task of the run still out is cancelled on the
scheduler: a call still running finishes on its worker, its result dropped.
A Pool's call cancelled alone is taken back only if no worker began it
(``withdraw``): never both cancelled and made.

This module holds the backend's interface and lifecycle: the cluster
(``_dask_cluster``), the function shipped, stopping, cancelling, closing.
The rest are mixins of the one object (``_dask_parts``, which keeps the
books of the parts out): sending the batches (``_dask_send``), filing their
answers (``_dask_answers``) and the workers' deaths (``_dask_crashes``);
taking back a Pool's cancelled call is ``_dask_withdraw``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import uuid
from queue import SimpleQueue
from typing import Any, ClassVar

from .._batch import Batch, Task
from .._signal_waits import WAIT_SLICE
from ._dask_answers import DaskAnswers
from ._dask_cluster import close_local_cluster, connect, retries_note, start_local_cluster
from ._dask_parts import Part
from ._dask_send import DaskSending
from ._dask_withdraw import began_on_cluster
from ._remote_calls import ABANDONED_MESSAGE, Shipped, load_fn, stop_tasks

__all__ = ["DaskBackend"]


class DaskBackend(DaskSending, DaskAnswers):
    """Runs batches as tasks on a Dask cluster; see the module docstring.

    ``cluster``: ``None`` (a LocalCluster of one process per CPU, started by
    :meth:`start` and closed by :meth:`shutdown`), a scheduler address
    (connected to, and left running), or a ``distributed.Client`` (used, and
    left open). ``workers``: calls at once; default the cluster's threads.
    """

    name = "dask"
    handles_timeouts = True  # applied on the worker: see _remote_calls
    timeout_action = ABANDONED_MESSAGE
    concurrent_items = False
    # A task costs the scheduler about a millisecond and the driver a few hundred
    # microseconds (submit, gather, file): batches are sized (_sizing.Sizer) so that
    # a task holds far more work than that, and so that few tasks make the end of a run.
    # An input of known length that fits in a round (at most `cap` items per thread)
    # goes out at once as one batch per thread where the workers have several threads
    # (`_spread`): no thread waits 20-40 ms for a second task to start where many
    # tasks end together. A thread whose batch was quick calls the unstarted items of
    # the other batches on its worker (_remote_calls: _Shared), so an uneven input does
    # not leave it idle (without that, items sorted by cost ran at 0.48 of the ideal
    # speed against 0.88 with two batches per thread). A worker of one thread has no
    # other to share with: two batches per thread there, so that a thread whose first
    # batch was quick takes over a waiting one. A larger input is balanced at its end
    # (`tail`).
    # An input of unknown length starts at one item per batch: batches that doubled
    # per round trip took ~0.8 s to reach their size, and batches of 0.2 s (the old
    # floor) made 1,800 tasks of 20,000 x 10 ms: 0.54-0.57 of the ideal speed;
    # 0.68-0.70 growing 16-fold, floored at 0.35 s (~1,000 tasks; paired, load 5.5).
    default_sizing: ClassVar[dict[str, float]] = {
        "batch_seconds": 0.5,  # a batch's work, once the time per item is known
        "dispatch_seconds": 2e-5,  # the driver's GIL per task (no worker shares it)
        "spread": 2,  # an input of known length: its first batches, per worker (see above)
        "tail": 1,  # near the end: a batch per worker of what is left...
        "floor_seconds": 0.35,  # ...but no batch of less work than this
        "queue_at_once": True,  # a second batch per thread waits on the cluster from the start
        "growth": 16,  # from the first batches of one item (a generator) to full ones at once
    }
    window_per_worker = 512  # items held per thread of the cluster (the default window)
    _share = True  # a worker's threads call each other's unstarted items (_remote_calls._Shared)

    def __init__(self, cluster: Any = None, workers: int | None = None) -> None:
        self._client: Any = None if isinstance(cluster, str) or cluster is None else cluster
        self._address = cluster if isinstance(cluster, str) else None
        self._cluster: Any = None  # the LocalCluster started here, if any
        self._owns_client = self._client is None
        if self._address is not None:
            self._client = connect(self._address)
        threads = self._client.nthreads() if self._client is not None else {}  # by worker
        if workers is None:
            workers = (
                max(1, int(sum(threads.values())))
                if self._client is not None
                else os.cpu_count() or 1
            )
        self.workers = workers
        # (read by _sizing.Sizer; a LocalCluster started here has a thread a worker: 2)
        self.sizing = {**self.default_sizing, "spread": self._spread(list(threads.values()))}
        self._lock = threading.Lock()  # guards _out, _parts and _stopping
        self._emptied = threading.Condition(self._lock)  # _out has no part left
        self._sending = threading.Lock()  # held while the sender submits (see _submit)
        self._out: dict[str, Part] = {}  # by task key: parts on the cluster or about to be
        self._parts: dict[int, int] = {}  # id(batch) -> its parts out; absent: dropped
        # id(batch) -> the items handed back in pieces (task.early), and their seconds
        self._pieces: dict[int, tuple[set[int], list[float]]] = {}
        self._heard: set[int] = set()  # id(task): a task of the run answered
        self._fns: dict[int, Any] = {}  # id(task) -> its fn: Shipped, or the future of it
        self._prefixes: dict[int, str] = {}  # id(task) -> how its tasks' keys begin
        self._token = uuid.uuid4().hex[:12]
        self._count = itertools.count()
        self.abandoned = 0
        self.notes: list[str] = []
        self._done: SimpleQueue[Any] = SimpleQueue()  # finished futures; None: stop
        self._collector: threading.Thread | None = None
        self._to_send: SimpleQueue[Part | None] = SimpleQueue()  # None: stop
        self._sender: threading.Thread | None = None
        self._stopping = False  # shutdown: answers are handed back as they are, nothing is sent
        self._deaths = 0  # worker processes that died under the run's tasks
        self._dead: set[tuple[Any, Any]] = set()  # those: (address, pid)
        self._note = 0  # which note counts them

    # -- lifecycle -------------------------------------------------------

    def _spread(self, threads: list[int]) -> int:
        """The first batches per thread: 1 where every worker has threads to share them."""
        return 1 if self._share and threads and min(threads) > 1 else 2

    def start(self) -> None:
        if self._client is not None:
            note = retries_note(self._client)
            if note:
                self.notes.append(note)
        else:
            self._cluster, self._client = start_local_cluster(self.workers)
        self._collector = threading.Thread(target=self._collect, name="manyhands-dask", daemon=True)
        self._collector.start()
        self._sender = threading.Thread(
            target=self._send_all, name="manyhands-dask-send", daemon=True
        )
        self._sender.start()

    def inside(self) -> bool:
        return False  # (a task on the cluster has no handle on this backend)

    def attach(self, task: Task) -> None:
        """Ship ``task.fn`` to the cluster once, or with each task if it is small.

        A function of a few KiB pickled (most: a module's function pickles to its
        name) travels in every task and is loaded once per worker process: the
        run's first tasks go out at once. A larger one is a task whose result is
        the function, copied to every worker before the first batch (two round
        trips to the scheduler: 8-36 ms of a run's start on a busy machine).
        """
        import cloudpickle  # type: ignore[import-untyped]

        try:
            payload = cloudpickle.dumps(task.fn)
        except Exception as exc:
            raise TypeError(f"fn cannot be sent to the Dask cluster: {exc}") from exc
        key = f"manyhands-fn-{self._token}-{next(self._count)}"
        self._prefixes[id(task)] = f"manyhands-{self._token}-{next(self._count)}-"
        if len(payload) <= _SHIPPED_BYTES:
            self._fns[id(task)] = Shipped(key, payload)
            return
        fn = self._client.submit(load_fn, payload, key=key, pure=False)  # (or why not)
        # On every worker now: the scheduler places a task where its inputs are, and
        # would otherwise crowd the first batches onto the one worker that loaded fn.
        self._client.replicate([fn])
        self._fns[id(task)] = fn

    def detach(self, task: Task) -> None:
        """Forget the run's function on the cluster (none of its tasks is out)."""
        self._heard.discard(id(task))
        self._prefixes.pop(id(task), None)
        fn = self._fns.pop(id(task), None)
        if fn is not None and not isinstance(fn, Shipped):
            self._client.cancel([fn], force=True)

    def wind_down(self) -> None:
        pass  # the cluster's workers wait for other runs; shutdown closes what was opened

    def halt(self, task: Task) -> None:
        """(a stop rule fired) The run's tasks call no further item once their running calls end.

        The items a task did not call come back failed, as never called
        (``WorkerCrashed`` with ``ran`` False: not retried, no attempt counted).
        """
        prefix = self._prefixes.get(id(task))
        if prefix is not None:
            self._tell_stop(prefix)

    def _tell_stop(self, prefix: str) -> threading.Thread:
        """Tell every worker that the tasks ``prefix...`` call no further item (a thread's job).

        A worker answers from its event loop; one that does not (its loop held by
        a call that keeps the GIL) holds this thread, never the run.
        """

        def tell() -> None:
            with contextlib.suppress(Exception):  # (the cluster is gone: its tasks fail anyway)
                self._client.run(stop_tasks, prefix, on_error="ignore")

        thread = threading.Thread(target=tell, name="manyhands-dask-stop", daemon=True)
        thread.start()
        return thread

    def shutdown(self, grace: float) -> int:
        """Stop the run's tasks after their running calls; keep what they called; close.

        The workers are told that the run's tasks call no further item
        (``stop_tasks``): each running task answers once its running call
        returned, with the items it called, and a task yet to start calls none.
        Those answers are waited for up to ``grace`` seconds, and the items
        called are handed back (the journal keeps them); then every task
        still out is cancelled (a call still running finishes on its worker,
        its result dropped), and what was opened here is closed.
        """
        with self._sending, self._lock:
            self._stopping = True
            waiting = bool(self._out)
        try:
            if waiting and grace > 0:
                self._stop_running(grace)
        finally:
            self._close()
        return 0

    def _stop_running(self, grace: float) -> None:
        """Tell the workers to stop the run's tasks; wait up to ``grace`` for their answers."""
        deadline = time.monotonic() + grace
        self._tell_stop(f"manyhands-{self._token}-")
        with self._lock:
            while self._out and (left := deadline - time.monotonic()) > 0:
                self._emptied.wait(min(left, WAIT_SLICE))  # (see _signal_waits)

    def _close(self) -> None:
        """Cancel every task still out, release the functions, close what was opened here."""
        with self._sending, self._lock:
            parts = list(self._out.values())
            self._out.clear()
            self._parts.clear()
            self._pieces.clear()
        try:
            self._cancel(parts)
            loaded = [fn for fn in self._fns.values() if not isinstance(fn, Shipped)]
            if loaded:
                self._client.cancel(loaded, force=True)
            self._fns.clear()
        finally:
            if self._sender is not None:  # (what it still holds was dropped above)
                self._to_send.put(None)
                self._sender.join()
                self._sender = None
            if self._collector is not None:
                self._done.put(None)
                self._collector.join()
                self._collector = None
            if self._owns_client and self._client is not None:
                self._client.close()
            if self._cluster is not None:
                cluster, self._cluster = self._cluster, None
                close_local_cluster(cluster, busy=bool(parts))

    # -- taking batches back -------------------------------------------

    def cancel(self, task: Task) -> list[Batch]:
        """Cancel the tasks of ``task`` on the cluster; their batches are dropped."""
        with self._sending, self._lock:
            parts = [part for part in self._out.values() if part.batch.task is task]
            batches = self._drop(parts)
        self._cancel(parts)
        return batches

    def expire(self, batch: Batch) -> bool:
        """Cancel a batch's tasks (a shared run ended); False if it had none out."""
        with self._sending, self._lock:
            parts = [part for part in self._out.values() if part.batch is batch]
            self._drop(parts)
        self._cancel(parts)
        if parts:
            self.abandoned += 1
            batch.task.abandoned += 1
        return bool(parts)

    def withdraw(self, batches: list[Batch]) -> list[Batch]:
        """Take back those of ``batches`` (of a ``withdrawable`` task) no worker began.

        Those are never called: every worker is asked at once, and marks the
        tasks it did not begin never to begin (``_dask_withdraw``); a batch
        whose tasks none began, and which is still out, is dropped and its
        tasks cancelled on the scheduler. The others go on: begun, answered
        meanwhile, or on a worker that did not answer.
        """
        wanted = {id(batch) for batch in batches}
        with self._lock:
            parts = [part for part in self._out.values() if id(part.batch) in wanted]
        if not parts:
            return []
        began = began_on_cluster(self._client, [part.key for part in parts])
        if began is None:
            return []
        with self._sending, self._lock:
            taken = [
                part
                for part in parts
                if self._parts.get(id(part.batch)) == 1  # (not split in parts, not resent)
                and part.key in self._out
                and part.key not in began
            ]
            batches = self._drop(taken)
        with contextlib.suppress(Exception):  # (every worker bars them already)
            self._cancel(taken)
        return batches


_SHIPPED_BYTES = 4096  # a function pickled to this much or less travels with each task
