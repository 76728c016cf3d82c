"""How the engine sizes batches for asyncio, whose tasks take a batch's items one at a time."""

from __future__ import annotations

from manyhands._sizing import ASYNC_BATCH, ASYNC_BATCH_SHARE, CONCURRENT_SHARE, Sizer


def asyncio_sizer(workers: int) -> Sizer:
    return Sizer(
        workers,
        window=max(16384, 2 * workers),
        batch_size=None,
        one_by_one=False,
        concurrent_items=True,
    )


def test_a_batch_carries_a_share_of_the_calls_in_flight_whatever_they_take() -> None:
    sizer = asyncio_sizer(10_000)
    share = -(-10_000 // CONCURRENT_SHARE)
    assert sizer.size == share
    for _ in range(5):  # slow calls (0.1 s) would call for batches of one on threads
        sizer.completed(items=sizer.size, seconds=sizer.size * 0.1)
    assert sizer.size == share


def test_the_first_round_has_a_batch_for_every_task_when_batches_shrink() -> None:
    sizer = asyncio_sizer(1000)
    sizer.read(sizer.size, seconds=1.0)  # a slow input: smaller batches from now on
    assert sizer.size < -(-1000 // CONCURRENT_SHARE)
    assert sizer.max_batches * sizer.size >= 1000  # no task left without an item


def test_once_calls_come_back_a_batch_carries_enough_calls_to_pay_for_itself() -> None:
    # 1,000 x 50 ms: the first round goes in batches of 16, then they grow (twofold
    # per batch back) to 125, 1/8 of the calls in flight, where the loop's work per
    # batch is small beside its work per call
    sizer = asyncio_sizer(1000)
    assert sizer.size == -(-1000 // CONCURRENT_SHARE)
    for _ in range(6):
        sizer.completed(items=sizer.size, seconds=sizer.size * 0.05)
    assert sizer.size == min(ASYNC_BATCH, 1000 // ASYNC_BATCH_SHARE) == 125


def test_few_calls_in_flight_keep_batches_a_small_share_of_them() -> None:
    for workers, expected in [(8, 1), (100, 12), (4000, ASYNC_BATCH)]:
        sizer = asyncio_sizer(workers)
        for _ in range(12):
            sizer.completed(items=sizer.size, seconds=sizer.size * 0.05)
        assert sizer.size == expected, workers
