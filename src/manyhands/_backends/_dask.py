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
``_crashed``). A worker's threads share its running batches' unstarted items (a
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
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import threading
import time
import uuid
from queue import Empty, SimpleQueue
from typing import Any, ClassVar, TypeVar

from .._batch import Batch, Task
from .._exceptions import WorkerCrashed, not_called
from .._signal_waits import WAIT_SLICE
from ._dask_cluster import close_local_cluster, connect, retries_note, start_local_cluster
from ._dask_withdraw import began_on_cluster
from ._not_loaded import fn_not_loaded
from ._process_batches import fail_items, file_results, pickle_batch, pickle_items
from ._remote_calls import (
    ABANDONED_MESSAGE,
    Shipped,
    load_fn,
    nanny_progress,
    read_progress,
    run_items,
    stop_tasks,
)

__all__ = ["DaskBackend"]

T = TypeVar("T")


class _Part:
    """Items of a batch out on the cluster as one task."""

    __slots__ = ("batch", "deaths", "future", "indices", "key", "payload", "tier")

    def __init__(
        self, batch: Batch, indices: list[int], payload: bytes, deaths: int = 0, tier: int = 0
    ):
        self.batch = batch
        self.indices = indices
        self.payload = payload
        self.deaths = deaths  # workers that died with it queued, and no word of its progress
        self.tier = tier  # (a batch sent in parts: _in_parts) the smaller parts go first
        self.key = ""  # its task's key, once sent
        self.future: Any = None  # its task, once the sender submitted it


class DaskBackend:
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
        self._out: dict[str, _Part] = {}  # by task key: parts on the cluster or about to be
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
        self._to_send: SimpleQueue[_Part | None] = SimpleQueue()  # None: stop
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

    # -- batches ---------------------------------------------------------

    def submit(self, batch: Batch) -> None:
        task = batch.task
        if (
            task.stops
            and task.early
            and id(task) not in self._heard
            and len(batch.items) >= _PARTS_FROM
        ):
            self._in_parts(batch)
            return
        pickled = pickle_batch(batch)
        if pickled is None:  # no item could be pickled: each failed with why
            return
        payload, indices = pickled
        with self._lock:
            self._parts[id(batch)] = 1
        self._send(_Part(batch, indices, payload))

    def _in_parts(self, batch: Batch) -> None:
        """Send a batch of the run's first round as parts growing fourfold, the smallest first.

        With a stop rule, a run's first batches are not sent whole: the time an
        item takes is unknown yet, a run whose input fits a round goes out at
        once, and a task answers only once all its items were called, so a stop
        rule could fire only once every item had run. Each part's items go back
        as a piece of their batch (``Batch.piece``) as soon as it answers.
        """
        parts: list[_Part] = []
        for tier, indices in enumerate(_growing(len(batch.items))):
            payload, kept = pickle_items(batch, indices)
            if payload is not None:
                parts.append(_Part(batch, kept, payload, tier=tier))
        batch.nbytes = max((len(part.payload) for part in parts), default=0)
        if not parts:  # no item could be pickled: each failed with why
            batch.task.done(batch)
            return
        with self._lock:
            self._parts[id(batch)] = len(parts)
        for part in parts:
            self._send(part)

    def _send(self, part: _Part) -> None:
        """Hand ``part`` to the sender thread (see _submit): out from now on."""
        part.key = f"{self._prefixes.get(id(part.batch.task), 'manyhands-')}{next(self._count)}"
        with self._lock:
            if id(part.batch) not in self._parts or self._stopping:  # (dropped meanwhile)
                return
            self._out[part.key] = part
        self._to_send.put(part)

    def _send_all(self) -> None:
        """(the sender thread) Submit the parts handed over, all those waiting at once."""
        waiting = self._to_send
        while True:
            handed = _all_of(waiting)
            parts = [part for part in handed if part is not None]
            try:
                self._submit(parts)
            except Exception as exc:  # (a thread that died here would leave the run waiting)
                self._lost(parts, exc)
            if None in handed:
                return
            del handed, parts  # (an idle sender holds no task of a run)

    def _submit(self, parts: list[_Part]) -> None:
        """Submit ``parts`` as tasks: one message to the scheduler per run, not one per task.

        A task submitted alone costs the driver ~0.3 ms and the scheduler a
        message of its own: 200 at the start of a run kept the last of the
        first 100 waiting ~130 ms (submitted together: ~50 ms). Held under
        ``_sending``, so that a cancel never falls between the submission and
        the futures: a part dropped meanwhile is cancelled here, before
        anyone waiting on ``_sending`` goes on.
        """
        with self._sending:
            with self._lock:
                parts = [part for part in parts if part.key in self._out]
            parts.sort(key=lambda part: part.tier)  # (a batch's smaller parts first: _in_parts)
            runs: dict[int, list[_Part]] = {}
            for part in parts:
                runs.setdefault(id(part.batch.task), []).append(part)
            for mine in runs.values():
                task = mine[0].batch.task
                keys = [part.key for part in mine]
                try:
                    futures = self._client.map(
                        run_items,
                        [self._fns[id(task)]] * len(mine),
                        [part.payload for part in mine],
                        [task.timeout] * len(mine),
                        keys,
                        [self._share] * len(mine),  # threads share the batches: _remote_calls
                        [task.withdrawable] * len(mine),  # (see withdraw)
                        key=keys,
                        pure=False,
                        retries=0,
                        priority=task.priority,
                    )
                except Exception as exc:  # the cluster is gone (the client closed...)
                    self._lost(mine, exc)
                    continue
                with self._lock:
                    for part, future in zip(mine, futures, strict=True):
                        part.future = future
                    dropped = [part for part in mine if part.key not in self._out]
                self._cancel(dropped)
                for part in mine:
                    part.future.add_done_callback(self._done.put)

    def _lost(self, parts: list[_Part], exc: Exception) -> None:
        """``parts`` could not be submitted: the items of those still out fail."""
        with self._lock:
            parts = [part for part in parts if self._out.pop(part.key, None) is not None]
        for part in parts:
            fail_items(part.batch, part.indices, WorkerCrashed(f"the Dask cluster: {exc}"))
            self._part_done(part.batch)

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

    def _drop(self, parts: list[_Part]) -> list[Batch]:
        """Forget ``parts`` (under the lock); their batches, once each."""
        batches: dict[int, Batch] = {}
        for part in parts:
            del self._out[part.key]
            batches[id(part.batch)] = part.batch
            self._parts.pop(id(part.batch), None)
            self._pieces.pop(id(part.batch), None)
        return list(batches.values())

    def _cancel(self, parts: list[_Part]) -> None:
        """Cancel the tasks of ``parts`` (those not yet submitted never will be: see _submit)."""
        futures = [part.future for part in parts if part.future is not None]
        if futures:
            self._client.cancel(futures, force=True)

    # -- answers (in the collector thread) -------------------------------

    def _collect(self) -> None:
        """Fetch the answers of the tasks that finished, many at once, and file them.

        Dask's callback thread only queues a finished future; the answers are
        fetched here, those that finished together in one ``gather``, so no
        round trip to a worker waits behind another.
        """
        done = self._done
        while True:
            futures = _all_of(done)
            stop = None in futures
            futures = [future for future in futures if future is not None]
            with self._lock:
                wanted = {
                    f.key: f for f in futures if f.key in self._out and f.status == "finished"
                }
            answers = self._gather(wanted)
            for future in futures:
                self._finished(future, answers.get(future.key))
            if stop:
                return
            future = None  # (an idle collector holds no task of a run: not the last one either)
            del futures, wanted, answers

    def _gather(self, wanted: dict[str, Any]) -> dict[str, bytes]:
        """The answers of ``wanted`` (by key) that could be fetched; {} if none."""
        if not wanted:
            return {}
        try:
            answers: dict[str, bytes] = self._client.gather(wanted, errors="skip", direct=True)
        except Exception:  # (each is then lost, and sent again: _finished)
            return {}
        return answers

    def _finished(self, future: Any, answer: bytes | None) -> None:
        with self._lock:
            part = self._out.pop(future.key, None)
            stopping = self._stopping
            if not self._out:
                self._emptied.notify_all()
        if part is None:  # cancelled: its batch was dropped
            return
        batch, indices = part.batch, part.indices
        status = future.status
        if stopping:  # (shutdown) what it called goes back; nothing runs again
            self._hand_back(part, answer if status == "finished" else None)
            return
        try:
            if status == "finished" and answer is not None:
                self._heard.add(id(batch.task))
                self._file(batch, indices, answer)
            elif status == "error" and type(future.exception()).__name__ == "KilledWorker":
                self._crashed(part, future.exception())
                return
            elif status == "error":  # failed outside fn: e.g. fn cannot be loaded there
                fail_items(batch, indices, future.exception())
            else:  # lost with a worker that died before the answer was fetched: again
                self._cancel([part])  # (not Dask's own recomputation)
                self._resend(part, [_Part(batch, indices, part.payload, part.deaths)])
                return
        except BaseException as exc:  # (the answer could not be read): the items fail
            fail_items(batch, indices, WorkerCrashed(f"the Dask task's answer was lost: {exc}"))
        self._part_done(batch, indices)

    def _hand_back(self, part: _Part, answer: bytes | None) -> None:
        """(shutdown) The items ``part`` called go back to the run, as a batch of their own."""
        batch = part.batch
        with self._lock:
            if id(batch) not in self._parts:
                return  # dropped meanwhile
        called: list[int] = []
        if answer is not None:
            with contextlib.suppress(Exception):  # (an answer that cannot be read: none)
                called = self._file(batch, part.indices, answer)
        if not called:
            return
        if len(called) == len(batch.items):
            batch.task.done(batch)
        else:
            batch.task.done(batch.part(called))

    def _file(self, batch: Batch, indices: list[int], answer: bytes) -> list[int]:
        """File a task's answer for the items at ``indices``; return the items it called."""
        kind, *rest = pickle.loads(answer)
        called: list[int] | None = None
        if kind == "stopped":  # (stop_tasks: the run stopped) it called only these
            called, answer = rest
            uncalled = sorted(set(range(len(indices))) - set(called))
            fail_items(
                batch,
                [indices[at] for at in uncalled],
                not_called(
                    "its Dask task was told to stop first (the run stopped, or it was cancelled)"
                ),
            )
            indices = [indices[at] for at in called]
            kind, *rest = pickle.loads(answer)
        if kind in ("unloadable", "no_fn"):
            error = rest[0]
            if kind == "no_fn":  # (not fn's call: its loading, that a worker's imports failed)
                error = fn_not_loaded(error, batch.task.fn, "a Dask worker process")
            fail_items(batch, indices, error)
            return indices
        values, errors, elapsed = rest
        if called is not None:
            position = {at: new for new, at in enumerate(called)}
            values = [values[at] for at in called]
            errors = {position[at]: error for at, error in errors.items()}
        file_results(batch, indices, values, errors, elapsed)
        if errors and batch.task.timeout is not None:
            left = sum(error[1].endswith(ABANDONED_MESSAGE) for error in errors.values())
            self.abandoned += left
            batch.task.abandoned += left
        return indices

    def _crashed(self, part: _Part, error: BaseException) -> None:
        """The worker running ``part`` died: the items it was calling fail, the others run again.

        Which items were running is read from the task's progress file: here
        when the worker was on this host (a LocalCluster), else from the dead
        worker's nanny once it answers again (``read_progress``: several items
        when threads of its worker shared them). None running (the task was
        between items, or its thread was calling other batches' items): all
        of them run again, uncharged. No word at all (the task had not begun,
        queued on that worker; or a worker without a nanny): they run again
        too; a part that dies that way twice is split in two, and only a part
        of one item that dies that way a third time fails: an item is charged
        only when it is known to be the one running.
        """
        batch, indices = part.batch, part.indices
        worker = getattr(error, "last_worker", None)
        self._note_death(worker)
        running = self._progress(part.key, getattr(worker, "nanny", None))
        if running == []:  # (the word: none of them was running)
            self._resend(part, [_Part(batch, indices, part.payload, part.deaths)])
            return
        if running is None:
            again = self._again(part)
            if again:
                self._resend(part, again)
            else:
                self._part_done(batch)
            return
        killers = {min(max(at, 0), len(indices) - 1) for at in running}
        fail_items(batch, [indices[at] for at in sorted(killers)], WorkerCrashed(_DIED))
        rest = [index for at, index in enumerate(indices) if at not in killers]
        if not rest:
            self._part_done(batch)
            return
        payload, rest = pickle_items(batch, rest)
        assert payload is not None  # (these items pickled before)
        self._resend(part, [_Part(batch, rest, payload, 0)])

    def _again(self, part: _Part) -> list[_Part]:
        """A part that died with no word of its progress, to send again: whole, or split in two.

        Its only item fails at its third such death (then returns ``[]``).
        """
        batch, indices = part.batch, part.indices
        deaths = part.deaths + 1
        if deaths < 2 or (len(indices) == 1 and deaths < 3):
            return [_Part(batch, indices, part.payload, deaths)]
        if len(indices) == 1:
            fail_items(batch, indices, WorkerCrashed(_DIED))
            return []
        halves = []
        middle = len(indices) // 2
        for half in (indices[:middle], indices[middle:]):
            payload, kept = pickle_items(batch, half)
            assert payload is not None  # (these items pickled before)
            halves.append(_Part(batch, kept, payload, 0))
        return halves

    def _note_death(self, worker: Any) -> None:
        """Count a death: a worker process (its address and pid) once, whatever it ran."""
        who = (getattr(worker, "address", None), getattr(worker, "pid", None))
        with self._lock:
            if who[0] is not None:
                if who in self._dead:
                    return
                self._dead.add(who)
            if not self._deaths:
                self.notes.append("")
                self._note = len(self.notes) - 1
            self._deaths += 1
            times = f"{self._deaths} time{'s' if self._deaths > 1 else ''}"
            self.notes[self._note] = (
                f"a Dask worker process died under this run's tasks ({times}): the item "
                "it was calling failed (manyhands.WorkerCrashed); the others ran again, uncharged"
            )

    def _progress(self, key: str, nanny: str | None) -> list[int] | None:
        """The items the task ``key`` was running when its worker died; None: no word of it.

        A worker on this host left its file here. Otherwise the worker's nanny
        (``nanny``) is asked once it is back (it restarts its worker first, and
        the scheduler knows it again only then): up to ``_NANNY_WAIT`` seconds.
        """
        running = read_progress(key)
        if running is not None or self._cluster is not None:  # (all its workers are here)
            return running
        deadline = time.monotonic() + _NANNY_WAIT
        while True:
            try:
                answers = self._client.run(nanny_progress, key, nanny=True)
            except Exception:  # (no nanny to ask)
                return None
            found = [at for _, at in answers.values() if at is not None]
            if found:
                return list(found[0])
            heard = {address for address, _ in answers.values()}
            if nanny is None or nanny in heard or time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def _resend(self, part: _Part, again: list[_Part]) -> None:
        with self._lock:
            if id(part.batch) not in self._parts:
                return  # dropped meanwhile
            self._parts[id(part.batch)] += len(again) - 1
        for new in again:
            self._send(new)

    def _part_done(self, batch: Batch, indices: list[int] | None = None) -> None:
        """A part of ``batch`` is done (``indices``: its items, filed); the last hands it back.

        In a run delivered as completed (``task.early``), the items of a part
        that is not the last go back at once, as a piece of their batch.
        """
        with self._lock:
            left = self._parts.get(id(batch))
            if left is None:
                return  # dropped meanwhile
            if left > 1:
                self._parts[id(batch)] = left - 1
                if indices is None or not batch.task.early:
                    return
                sent, seconds = self._pieces.setdefault(id(batch), (set(), [0.0]))
                sent.update(indices)
            else:
                del self._parts[id(batch)]
                sent, seconds = self._pieces.pop(id(batch), (set(), [0.0]))
                indices = None
        if indices is not None:  # (a piece)
            piece = batch.part(indices)
            piece.piece = True
            piece.elapsed, seconds[0] = batch.elapsed - seconds[0], batch.elapsed
            batch.task.done(piece)
        elif sent:
            rest = batch.part([index for index in range(len(batch.items)) if index not in sent])
            rest.elapsed = batch.elapsed - seconds[0]
            batch.task.done(rest)
        else:
            batch.task.done(batch)


_DIED = "the Dask worker process running this item died"
_PARTS_FROM = 32  # (with a stop rule) a first batch of this many items or more goes in parts
_NANNY_WAIT = 10.0  # seconds to wait for a dead worker's nanny to answer again
_SHIPPED_BYTES = 4096  # a function pickled to this much or less travels with each task


def _growing(count: int) -> list[list[int]]:
    """``range(count)`` in parts growing fourfold from about 1/64 of it; the last takes the rest."""
    parts: list[list[int]] = []
    start, size = 0, max(1, count // 64)
    while start < count:
        take = count - start if count - start < 2 * size else size
        parts.append(list(range(start, start + take)))
        start += take
        size *= 4
    return parts


def _all_of(queue: SimpleQueue[T]) -> list[T]:
    """What ``queue`` holds, waiting for the first if it is empty."""
    taken = [queue.get()]
    with contextlib.suppress(Empty):
        while True:
            taken.append(queue.get_nowait())
    return taken
