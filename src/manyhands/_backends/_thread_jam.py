"""What the thread backend says of calls past their timeout: the call abandoned, the
worker held by it, and the work no worker could start while every one was held."""

from __future__ import annotations

__all__ = ["ABANDONED", "held_message", "unstarted_note", "unstarted_why"]

ABANDONED = "it was left running in an abandoned thread and the item failed"


def held_message(cap: int) -> str:
    """The end of a Timeout's message when the call keeps its worker (``cap`` reached)."""
    return (
        "the item failed, and the call holds its worker until it returns (or an abandoned "
        f"thread's call does): {cap} abandoned thread{'s are' if cap > 1 else ' is'} "
        "still in their calls, the most allowed (one per worker)"
    )


def unstarted_why(hung: int, cap: int) -> str:
    """The message of the Timeout (``ran`` False) of work no worker could start."""
    return (
        f"not started: every worker is held by a call that ran past its timeout and has "
        f"not returned ({hung} such calls; the cap of {cap} abandoned "
        "threads, one per worker, is reached). Raise workers= or fix the calls that hang"
    )


def unstarted_note(items: int, retries: int) -> str:
    """The Report's note on the work no worker could start: the items never called (the
    Report's ``not_run``) apart from the retries (their items were called, and count as
    failed with their last failure).

    >>> print(unstarted_note(42, 6))
    42 items never started (not run, ended as manyhands.Timeout) and 6 retries never \
started (those items failed, with their last failure): every worker was held by a call \
past its timeout, and no more threads could be abandoned (one per worker). Raise workers= \
or fix the calls that hang
    >>> print(unstarted_note(0, 1).split(":")[0])
    1 retry never started (that item failed, with its last failure)
    """
    said = []
    if items:
        said.append(
            f"{items:,} item{'s' if items > 1 else ''} never started "
            "(not run, ended as manyhands.Timeout)"
        )
    if retries:
        those = "those items failed, with their" if retries > 1 else "that item failed, with its"
        said.append(
            f"{retries:,} retr{'ies' if retries > 1 else 'y'} never started ({those} last failure)"
        )
    return (
        f"{' and '.join(said)}: every worker was held by a call past its timeout, and no "
        "more threads could be abandoned (one per worker). Raise workers= or fix the calls "
        "that hang"
    )
