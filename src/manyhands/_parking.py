"""Later copies of a journal key, held until their first copy's outcome is final.

With a journal, two items with one key are one piece of work: the first copy
runs, and every later copy is given its outcome (ok, or the first copy's
Failure as a :func:`~._outcome.duplicate_failure`). A batch the journal's
reader made of such copies waits here, counting in ``Batch.pending`` the first
copies it still waits for; once the last of them reached the consumer, it is
ready for delivery.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._batch import Batch
from ._outcome import duplicate_failure

__all__ = ["Parking"]


class Parking:
    """Batches of later copies, by the keys whose first copies they wait for.

    >>> from ._batch import Batch
    >>> first, later = Batch(0, ["a"], None), Batch(1, ["a again"], None)
    >>> first.keys = later.keys = ["k"]
    >>> parking = Parking()
    >>> parking.park(later, [0])
    >>> [batch.items for batch in parking.release(first)]
    [['a again']]
    >>> bool(parking)
    False
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[tuple[Batch, int]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def park(self, batch: Batch, waiting: list[int]) -> None:
        """Hold ``batch`` until the first copies of the keys at ``waiting`` are final."""
        keys = batch.keys
        assert keys is not None
        parked = self._waiting
        for index in waiting:
            parked.setdefault(keys[index], []).append((batch, index))
        batch.pending = len(waiting)

    def release(self, batch: Batch) -> Iterator[Batch]:
        """The outcomes of ``batch`` reached the consumer: yield the batches now ready."""
        parked = self._waiting
        failures = batch.failures or {}
        for index, key in enumerate(batch.keys or ()):
            waiting = parked.pop(key, None)
            if waiting is None:
                continue
            failure = failures.get(index)
            for duplicate, at in waiting:
                if failure is not None:
                    if duplicate.failures is None:
                        duplicate.failures = {}
                    duplicate.failures[at] = duplicate_failure(duplicate.items[at], failure)
                duplicate.pending -= 1
                if not duplicate.pending:
                    yield duplicate

    def batches(self) -> list[Batch]:
        """Every batch held, once each."""
        held = {id(batch): batch for waiting in self._waiting.values() for batch, _ in waiting}
        return list(held.values())
