"""Property: whatever the items, failures, batching and order, nothing is lost or duplicated."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import manyhands


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.integers(-1000, 1000), max_size=300),
    failing=st.frozensets(st.integers(-1000, 1000)),
    workers=st.integers(1, 12),
    batch_size=st.one_of(st.none(), st.integers(1, 50)),
    window=st.one_of(st.none(), st.integers(1, 100)),
    ordered=st.booleans(),
)
def test_each_item_gets_exactly_one_outcome(
    items: list[int],
    failing: frozenset[int],
    workers: int,
    batch_size: int | None,
    window: int | None,
    ordered: bool,
) -> None:
    def fn(x: int) -> int:
        if x in failing:
            raise KeyError(x)
        return -x

    outcomes = list(
        manyhands.map(
            fn, iter(items), workers=workers, batch_size=batch_size, window=window, ordered=ordered
        )
    )
    got = [o.item for o in outcomes]
    assert sorted(got) == sorted(items)
    if ordered:
        assert got == items
    for out in outcomes:
        if out.item in failing:
            assert out.error is not None and out.error.error_type == "builtins.KeyError"
        else:
            assert out.ok and out.value == -out.item
