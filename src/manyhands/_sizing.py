"""How big a run's batches are, and how many may be out at once.

Batch size adapts to the measured time per item. Two costs pull it up:

- per-batch overhead against the work: a batch should take about
  ``TARGET_BATCH_SECONDS`` in a worker, so a 100 ns task travels in batches of
  thousands (at most ``MAX_BATCH``, and a share of the window per worker)
  while a 20 ms call travels alone;
- the engine's own share of the GIL: every batch costs ~``DISPATCH_SECONDS`` of
  serialized bookkeeping, and with many workers finishing short calls that
  adds up (50 workers on 1 ms calls: 18% of the GIL at batch size 1), so the
  size keeps that share near ``LOAD_SHARE``.

Three limits hold it down: it grows at most twofold per finished batch (slow
items after fast ones cost little; a backend may allow more); it never
outgrows what the input delivers in ``TARGET_BATCH_SECONDS`` (a trickling
stream is not held back to fill a batch; a backend's longer batches may wait
that much longer); and it shrinks near the end so that the last batches do
not straggle, judged from the input's ``__length_hint__`` when it offers one
(lists, ranges) and otherwise by keeping a batch's duration a small part of
the run so far.

How many batches may be out: none queued in front of the workers until the
first round of calls is back (if the first answers say "slow down", no queued
burst follows them), then a batch per worker more; a Pool's run queues them
at once when lower-priority work waits for the workers (``queue_ahead``: else
a worker would take that work whenever its lane ran dry). A rate limit or a timeout
makes every batch one item and keeps no queue (an item must start when it is
admitted, and has its own deadline).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "ASYNC_BATCH",
    "ASYNC_BATCH_SHARE",
    "BATCH_BYTES",
    "CONCURRENT_SHARE",
    "DISPATCH_SECONDS",
    "FIRST_WAVE_BATCHES",
    "MAX_BATCH",
    "TARGET_BATCH_SECONDS",
    "Sizer",
]

TARGET_BATCH_SECONDS = 0.002
DISPATCH_SECONDS = 4e-6  # GIL time to dispatch and settle one batch, measured on CPython 3.11
LOAD_SHARE = 0.02
STRAGGLE_SHARE = 0.02  # of the run so far, when the input's length is unknown
MAX_BATCH = 4096  # (a worker process with 2 batches of 1,024 ahead starved between GIL switches)
BATCH_BYTES = 1 << 20  # a batch's items or results, pickled (processes): memory per batch sent
# (asyncio) a batch carries at least 1/CONCURRENT_SHARE of the calls in flight,
# whatever they take: at 10,000 in flight the loop's work per batch (~10 us:
# hand-over, settling, delivery) is then small beside its own work per call
# (batches of 20 left manyhands 15% behind a plain asyncio.Queue at 10,000 x 0.1 s)
CONCURRENT_SHARE = 64
# (asyncio) and, once calls came back, at least ASYNC_BATCH calls, or 1/ASYNC_BATCH_SHARE
# of those in flight if fewer: the engine's work per batch on the loop (~20 us) beside
# the loop's own ~8 us per call. At 1,000 calls in flight batches of 16 cost manyhands
# ~1 us of the loop per call more than a plain asyncio.Queue; batches of 125, 0.1-0.4 us.
ASYNC_BATCH = 128
ASYNC_BATCH_SHARE = 8
FIRST_WAVE_BATCHES = CONCURRENT_SHARE  # (asyncio) batches the first `workers` calls are split into


class Sizer:
    """Batch size (``size``) and batches out at once (``max_batches``) for one run.

    ``concurrent_items``: the backend runs a batch's items at the same time
    (asyncio), so a batch per worker is not needed and batches cannot straggle.
    ``one_by_one``: a rate limit or a timeout: batches of one, no queue.

    ``remaining``: how many items the input still holds, if it says (-1: it
    does not); ``elapsed``: seconds since the run started. Both are asked
    only when a batch's size depends on them. ``batch_seconds`` and
    ``dispatch_seconds``: a backend whose batches cost more than a thread's
    (a task on a cluster) asks for longer batches; ``spread``: if the input's
    length is known, the first batches split it into that many per worker;
    ``tail``: batches per worker left of what remains, near the end (fewer:
    fewer small batches at the end); ``floor_seconds``: no batch shrinks, near
    the end (or early in an input of unknown length), below that much work;
    ``queue_at_once``: a batch per worker is queued from the start, not once
    the first round came back (a cluster: its workers must not wait for a
    round trip between batches); ``growth``: a batch grows at most that many
    times over the one that just finished (a cluster, whose every task costs
    a thread a round trip: faster); ``ahead``: batches per worker out at once,
    once the first round came back (the process backend: one more than it
    sends ahead to each worker, so that its next one waits at hand).

    >>> sizer = Sizer(8, window=16384, batch_size=None, one_by_one=False, remaining=lambda: 10**5)
    >>> sizer.size, sizer.max_batches
    (1, 8)
    >>> sizer.completed(items=1, seconds=1e-7)
    >>> sizer.completed(items=2, seconds=2e-7)
    >>> sizer.size  # tiny items: the batch doubles after each finished batch
    4
    """

    def __init__(
        self,
        workers: int,
        window: int,
        batch_size: int | None,
        one_by_one: bool,
        concurrent_items: bool = False,
        remaining: Callable[[], int] = lambda: -1,
        elapsed: Callable[[], float] = lambda: 0.0,
        batch_seconds: float = TARGET_BATCH_SECONDS,
        dispatch_seconds: float = DISPATCH_SECONDS,
        spread: int = 0,
        tail: int = 4,
        floor_seconds: float = 0.0,
        queue_at_once: bool = False,
        growth: float = 2.0,
        ahead: int = 2,
    ) -> None:
        self._growth = growth
        self.ahead = ahead  # (read by the run: the most batches out while it watches)
        self._tail = tail
        self._floor_seconds = floor_seconds
        self._workers = workers
        self._batch_seconds = batch_seconds
        self._dispatch_seconds = dispatch_seconds
        self._remaining = remaining
        self._elapsed = elapsed
        self._concurrent_items = concurrent_items
        per_batch = 4 if concurrent_items else 2 * workers
        self.cap = max(1, min(MAX_BATCH, window // per_batch))
        self.max_batches = ahead * workers if queue_at_once else workers
        self._warm_up = 0 if queue_at_once else workers  # completions before queueing
        self._held = False  # no queue for now (see hold())
        self.deeper = 0  # batches queued ahead beyond a batch per worker (see deepen())
        self._one_by_one = one_by_one
        if one_by_one:
            self.cap = 1
        self.adaptive = batch_size is None and not one_by_one
        self.size = 1 if self.cap == 1 else (batch_size or 1)
        self._work_fit = 1  # batch size the measured time per item calls for
        self._input_fit = self.cap  # batch size the input delivers in time
        #: Whether reading a batch should be timed (the input's pace can matter).
        self.timed_reads = False
        if self.adaptive and concurrent_items:
            # Nothing is measured yet, but the first wave is `workers` calls
            # however they are grouped: keep it to FIRST_WAVE_BATCHES batches
            # (10,000 calls in flight: batches of 157, not 10,000 batches of one).
            # The warm-up then counts in those batches: still no queue.
            first = min(self.cap, -(-workers // FIRST_WAVE_BATCHES))
            self.size = self._work_fit = first
            self.max_batches = self._warm_up = -(-workers // first)
            self.timed_reads = first > 1
        elif self.adaptive and spread and (total := remaining()) > 0:
            # Costly batches (a cluster's tasks), and the input's length is known:
            # start at `spread` batches per worker, not one item doubling per wave.
            self.size = self._work_fit = max(1, min(self.cap, total // (spread * workers)))
            self.timed_reads = self.size > 1

    def read(self, size: int, seconds: float) -> None:
        """A full batch of ``size`` items took the input ``seconds`` to deliver."""
        if seconds > self._batch_seconds:  # (a batch's work: it may take as long to read)
            self._input_fit = max(1, int(size * self._batch_seconds / seconds))
        elif size >= self._input_fit:
            self._input_fit = min(2 * self._input_fit, self.cap)
        self.size = min(self._work_fit, self._input_fit)
        self._cover_workers()

    def completed(self, items: int, seconds: float, nbytes: int = 0) -> None:
        """A batch of ``items`` came back after ``seconds`` of work.

        ``nbytes``: the larger of its items and results, pickled (processes; 0
        when they did not travel): batches are bounded by bytes too.
        """
        if self._warm_up:
            self._warm_up -= 1
            if not self._warm_up and not self._one_by_one and not self._held:
                self.max_batches = self.ahead * self._workers + self.deeper
        if self.adaptive and items:
            fit = min(self._fit(seconds / items), int(self._growth * items), self.cap)
            if nbytes:  # large items or results: a batch holds about BATCH_BYTES of them
                fit = min(fit, BATCH_BYTES * items // nbytes)
            self._work_fit = max(1, fit)
            self.size = min(self._work_fit, self._input_fit)
            self.timed_reads = self._work_fit > 1
            self._cover_workers()

    def _cover_workers(self) -> None:
        """(asyncio) In the first round, enough batches of the current size for every task.

        The first round's limit is counted in batches of the first size: batches
        that shrink since would leave tasks idle for a whole call.
        """
        if self._warm_up and self._concurrent_items and not self._one_by_one:
            self.max_batches = max(self.max_batches, -(-self._workers // self.size))

    @property
    def warming(self) -> bool:
        """The first round is not back yet: no batch queued ahead of the workers for now."""
        return self._warm_up > 0

    def queue_ahead(self) -> None:
        """A batch per worker may wait ahead of the workers from now, first round back or not.

        (A Pool's run that outranks work waiting for the workers: kept to a
        batch per worker, its lane would run dry between its batches, and a
        worker that came free then would take the lower-priority work.)
        """
        self._warm_up = 0
        if not self._held and not self._one_by_one:
            self.max_batches = self.ahead * self._workers + self.deeper

    def deepen(self, batches: int) -> None:
        """``batches`` more may wait ahead of the workers (a Pool's run whose lane ran dry
        while it outranked the work a worker took instead)."""
        self.deeper += batches
        if not self._held and not self._one_by_one and not self._warm_up:
            self.max_batches = self.ahead * self._workers + self.deeper

    def hold(self, held: bool) -> None:
        """No queue in front of the workers while ``held`` (the slowdown watches answers)."""
        self._held = held
        if held:
            self.max_batches = min(self.max_batches, self._workers)
        elif not self._warm_up and not self._one_by_one:
            self.max_batches = self.ahead * self._workers + self.deeper

    def one_by_one(self) -> None:
        """From now on: batches of one item, and no queue (a rate limit began)."""
        self._one_by_one = True
        self.max_batches = self._workers
        self.cap = self.size = self._input_fit = 1
        self.adaptive = self.timed_reads = False

    def _fit(self, per_item: float) -> int:
        """The batch size that items taking ``per_item`` seconds call for."""
        if per_item <= 0:
            return self.cap
        wanted = max(
            self._batch_seconds / per_item,
            self._workers * self._dispatch_seconds / (LOAD_SHARE * per_item),
        )
        if self._concurrent_items:  # (and a batch no smaller than a share of the calls)
            workers = self._workers
            floor = max(
                -(-workers // CONCURRENT_SHARE), min(ASYNC_BATCH, workers // ASYNC_BATCH_SHARE)
            )
            return max(int(wanted), floor)
        if wanted < 2:  # slow items: one per batch, whatever is left (no need to ask)
            return 1
        remaining = self._remaining()
        if remaining >= 0:  # leave every worker several batches of what is left
            fit = min(wanted, remaining / (self._tail * self._workers))
        else:  # keep a batch a small part of the run so far
            fit = min(wanted, STRAGGLE_SHARE * self._elapsed() / per_item)
        return int(max(fit, min(wanted, self._floor_seconds / per_item)))
