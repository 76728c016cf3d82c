"""Batch sizing: what the sizer asks, and what it settles on."""

from __future__ import annotations

from manyhands._sizing import Sizer


def test_slow_items_go_one_per_batch_without_asking_how_many_are_left() -> None:
    # (the run's length hint is a call into the input per finished batch: items that
    # take longer than a batch's target travel alone however many are left)
    asked: list[None] = []

    def remaining() -> int:
        asked.append(None)
        return 10**6

    sizer = Sizer(2, window=16384, batch_size=None, one_by_one=False, remaining=remaining)
    for _ in range(5):
        sizer.completed(items=1, seconds=0.009)
    assert sizer.size == 1 and asked == []
    sizer.completed(items=1, seconds=1e-5)  # fast items: how many are left matters now
    assert sizer.size == 2 and len(asked) == 1
