"""Reading the input through the journal: blocks of items, their keys, one lookup each.

:meth:`JournalReading.take` reads blocks of items, computes their keys,
looks them all up in one query, and hands the engine consecutive segments
of items to run or to skip, in input order. A journal that held no record
when the run began needs no lookup: the keys the run records stay in memory
instead (up to ``FRESH_KEYS``). A block whose keys are all new is taken in
slices, with nothing more to check: the path of most items. Why an item is
skipped is decided in :mod:`._journal_skip`.
"""

from __future__ import annotations

import contextlib
import operator
import time
import warnings
from collections.abc import Iterator, Sequence
from itertools import islice, repeat
from typing import Any

from ._exceptions import user_stacklevel
from ._journal_skip import PRINT_MASK, SHIFTED, JournalSkip, first_copy
from ._journal_state import Memo, Segment
from ._key_fn import as_key, key_error
from ._keys import MAX_KEY_TEXT, default_key, default_keys, fingerprint, memory_key
from ._outcome import DUPLICATE, Failure
from ._reader import input_broke

__all__ = ["BLOCK", "FRESH_KEYS", "READ_SECONDS", "JournalReading"]

BLOCK = 512  # items read and looked up at once, at most
#: While the journal held no record when the run began, the keys this run
#: records stay in memory, up to this many (a few tens of MB), and reading
#: needs no lookup: nothing else can be in the file. Past it, blocks are
#: looked up again and no more keys are kept (those kept stay).
FRESH_KEYS = 250_000
#: A block that took longer than this to read is followed by a smaller one: a
#: slow input (lines from a pipe, a queue) is not held back to fill a block.
READ_SECONDS = 0.01


class JournalReading(JournalSkip):
    """Taking segments of the input: to run, or to skip (see the module docstring)."""

    def take(self, source: Iterator[Any], size: int, room: int) -> Segment | None:
        """The next segment: at most ``size`` items to run or ``room`` to skip.

        None once the input is done. (A run segment may hold the last few
        items of a block of new keys more, within ``room``.)

        A run segment holds items with no final record (or failed ones, with
        ``retry_failed``); a skip segment holds items with a final record, or
        repeating a key run by this input.
        """
        self._source = source
        if self._new_at < len(self._new_keys):
            return self._take_new_block(size, room)
        buffer = self._buffer
        while True:
            if not buffer and not self._refill(size):
                return None if self._ended else Segment([], [])
            if not buffer:  # (a block of new keys)
                return self._take_new_block(size, room)
            first = self._skip_reason(*buffer[0])
            if buffer:  # (a refused item empties it)
                break
        items: list[Any] = []
        keys: list[str] = []
        if first is None and not self._looked_up:
            self._take_new(items, keys, size)
            if items:
                return Segment(items, keys)
        if first is None:
            running, unsaved, looked_up = self._running, self._unsaved, self._looked_up
            while True:
                position = self.pulled - len(buffer)
                item, key, print_ = buffer.popleft()
                running.add(held := memory_key(key))
                if key in looked_up:  # (its failed row: run again, retry_failed)
                    self._rerunning.add(held)
                if print_ is not None:
                    self._firsts[held] = first_copy(position, print_)
                    self._prints[held] = print_
                items.append(item)
                keys.append(key)
                if len(items) >= size or not buffer:  # (the next block is read next time)
                    break
                upcoming = buffer[0][1]
                held = memory_key(upcoming)  # (the next item's)
                if (
                    (held in running or held in unsaved or upcoming in looked_up)
                    and self._skip_reason(*buffer[0]) is not None
                ) or not buffer:
                    break
            return Segment(items, keys)
        return self._take_skipped(first, room)

    @property
    def read_ahead(self) -> int:
        """Items read from the input and not taken yet (those of the current block)."""
        return len(self._new_keys) - self._new_at + len(self._buffer)

    def _take_skipped(self, first: str, room: int) -> Segment:
        """A skip segment: at most ``room`` items, the first one skipped as ``first``."""
        buffer = self._buffer
        items: list[Any] = []
        keys: list[str] = []
        reasons: list[str] = []
        values: list[Any] = []
        failures: dict[int, Failure] = {}
        waiting: list[int] = []
        reason: str | None = first
        firsts = self._firsts
        while True:
            item, key, print_ = buffer.popleft()
            assert reason is not None
            value: Any = None
            if reason != DUPLICATE:
                value, failure = self._stored(item, self._looked_up.get(key))
                if print_ is not None and len(firsts) < FRESH_KEYS:
                    position = self.pulled - len(buffer) - 1
                    firsts.setdefault(memory_key(key), first_copy(position, print_))
            elif memory_key(key) in self._running:  # its outcome is the first copy's, not known
                waiting.append(len(items))
                failure = None
            else:
                failure = self._first_copys_failure(item, key)
            if failure is not None:
                failures[len(items)] = failure
            items.append(item)
            keys.append(key)
            reasons.append(reason)
            values.append(value)
            if len(items) >= room or not buffer:
                break
            reason = self._skip_reason(*buffer[0])
            if reason is None or not buffer:
                break
        return Segment(items, keys, reasons, values, failures or None, waiting or None)

    def _take_new_block(self, size: int, room: int) -> Segment:
        """The next ``size`` items (or fewer, at its end) of a block of new keys.

        The block's last few items (fewer than half a batch) go with the
        slice before them, within ``room``: a batch of their own would be
        small, and the batches after a small one are small too (a batch
        grows at most twofold over the last that finished).
        """
        start = self._new_at
        end = start + size
        left = len(self._new_keys) - end
        if 0 < left < size // 2 and size + left <= room:
            end += left
        self._new_at = end
        keys = self._new_keys[start:end]
        items = self._new_items[start:end]
        held = self._held(keys)
        if self._new_prints:  # (key=)
            at = self.pulled - len(self._new_keys) + start
            self._note_firsts(at, held, self._new_prints[start:end])
        if end >= len(self._new_keys):
            self._new_items, self._new_keys, self._new_prints = [], [], []
            self._new_at = 0
        self._running.update(held)
        return Segment(items, keys)

    def _note_firsts(self, at: int, held: Sequence[Memo], prints: list[str | None]) -> None:
        """Note where and what the first copies of keys are (from position ``at`` on).

        Their fingerprints are kept too, to be recorded with them.
        """
        self._prints.update(zip(held, prints, strict=True))
        # _first of each, in map and zip: no Python code per item, on the path of
        # every item with key= (a None print, unknown, is hash(None): see _copy).
        positions = map(SHIFTED, range(at, at + len(held)))
        hashes = map(PRINT_MASK.__and__, map(hash, prints))
        self._firsts.update(zip(held, map(operator.or_, positions, hashes), strict=True))

    def _take_new(self, items: list[Any], keys: list[str], size: int) -> None:
        """The common case in bulk: the next items all run (their keys are new).

        New: no record was found for any key of the block (nothing looked
        up), and none is running, recorded by this run or repeated among
        them. Takes nothing if that does not hold for the next items. Stops
        at the end of the buffer: the next block may be taken whole.
        """
        buffer, running, unsaved = self._buffer, self._running, self._unsaved
        while buffer and not self._looked_up and len(items) < size:
            at = self.pulled - len(buffer)
            count = min(size - len(items), len(buffer))
            entries = list(islice(buffer, count))
            new = [entry[1] for entry in entries]
            held = self._held(new)
            if not (
                running.isdisjoint(held) and unsaved.isdisjoint(held) and len(set(new)) == count
            ):
                return
            if count == len(buffer):
                buffer.clear()
            else:
                popleft = buffer.popleft
                for _ in range(count):
                    popleft()
            running.update(held)
            if self._key is not None:
                self._note_firsts(at, held, [entry[2] for entry in entries])
            items += [entry[0] for entry in entries]
            keys += new

    def _refill(self, size: int) -> bool:
        """Read and look up the next block; False when nothing more comes.

        The block holds ``size`` items or more: as many as the input gave
        in ``READ_SECONDS`` last time, up to ``BLOCK``. A block whose keys
        are all new goes to the slices of :meth:`_take_new_block`, any other
        to the buffer. Called only when both are empty: a segment never
        waits for the input with items already taken.
        """
        if self._ended or self._source is None:
            return False
        self._looked_up.clear()  # the buffer is empty: every looked-up row was used
        self._forget_committed()
        block: list[Any] = []
        wanted = min(max(self._block, size), BLOCK)
        began = time.monotonic()
        try:
            block.extend(islice(self._source, wanted))
        except BaseException as exc:  # the user's iterable broke: the engine raises InputError
            if not input_broke(exc):
                raise
            self.error = exc
            self._ended = True
        if len(block) < wanted and not getattr(self._source, "waiting", False):
            self._ended = True  # (an async input that is only waiting has not ended)
        elif len(block) == wanted:
            seconds = time.monotonic() - began
            if seconds > READ_SECONDS:
                self._block = max(1, int(wanted * READ_SECONDS / seconds))
            else:
                self._block = min(2 * wanted, BLOCK)
        keys: list[str] = []
        prints: list[str | None] = []  # (with key=: the items' fingerprints)
        keyfn = self._key
        if keyfn is None:
            with contextlib.suppress(Exception):  # (the loop below names the item)
                keys = default_keys(block)
        if len(keys) < len(block):
            keys = []
            for item in block:
                try:
                    if keyfn is None:
                        key = default_key(item)
                    else:
                        key = as_key(keyfn(item))
                        prints.append(fingerprint(item))
                except Exception as exc:
                    self.error = key_error(item, self.pulled + len(keys), exc, keyfn)
                    self._ended = True
                    del block[len(keys) :]
                    break
                keys.append(key)
        self.pulled += len(keys)
        if self._key_check is not None:
            self._check_keys(block, keys, prints)
        self._lookup(keys)
        if (
            keys
            and not self._looked_up
            and len(set(keys)) == len(keys)
            and self._running.isdisjoint(held := self._held(keys))
            and self._unsaved.isdisjoint(held)
        ):
            self._new_items, self._new_keys, self._new_prints = block, keys, prints
            return True
        fingerprints = prints if keyfn is not None else repeat(None)
        self._buffer.extend(zip(block, keys, fingerprints, strict=False))  # (repeat: endless)
        return bool(self._buffer)

    def _check_keys(self, items: list[Any], keys: list[str], prints: list[str | None]) -> None:
        """Note the keys of the first items read; once there are enough, or the input
        ended, warn if they show that the changed key= changed the keys."""
        assert self._key_check is not None
        self._key_check.add(items, keys, prints)
        if self._key_check.full or self._ended:
            self._settle_key_check()

    def _settle_key_check(self) -> None:
        check, self._key_check = self._key_check, None
        if check is not None and check.changed(self._opened(), self.run_id):
            warnings.warn(check.warning, stacklevel=user_stacklevel())

    def _held(self, keys: list[str]) -> Sequence[Memo]:
        """The keys as the sets in memory hold them (default keys are short: as they are)."""
        if self._key is None or max(map(len, keys), default=0) <= MAX_KEY_TEXT:
            return keys  # (memory_key keeps these as they are)
        return list(map(memory_key, keys))

    def _forget_committed(self) -> None:
        """Keep in memory only the recorded keys (and failures) the next lookup may not find.

        Keys recorded while the journal was fresh stay (at most FRESH_KEYS and
        a block): nothing looks them up. Their failures, once committed, are
        read from the file when needed.
        """
        if self._fresh and len(self._unsaved) > FRESH_KEYS:
            self._fresh = False  # (memory: no more keys are kept)
        committed = self._writer.committed
        while committed:  # committed before this lookup: it finds them (run == this run)
            keys = committed.popleft()
            if not self._fresh:
                self._unsaved.difference_update(keys)
                if self._firsts:  # (a later copy compares with the row it looks up)
                    for key in keys:
                        self._firsts.pop(key, None)
            failed = self._unsaved_failed
            if failed:
                for key in keys:
                    if failed.pop(key, None) is not None and key in self._unsaved:
                        self._failed_kept.add(key)
