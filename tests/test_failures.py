"""An item's failure is a value: the run goes on and says exactly what failed and why."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest

import manyhands

from .conftest import Hands


def explode(item: int) -> int:
    if item % 3 == 0:
        raise ValueError(f"bad item {item}")
    return item * 10


def test_failures_are_recorded_and_the_run_continues(hands: Hands) -> None:
    outcomes = {out.item: out for out in hands.map(explode, range(30))}
    assert sorted(outcomes) == list(range(30))
    for item, out in outcomes.items():
        if item % 3 == 0:
            assert not out.ok and out.value is None
            assert out.error is not None
            assert out.error.item == item
            assert out.error.error_type == "builtins.ValueError"
            assert out.error.message == f"bad item {item}"
            assert out.error.attempts == 1 and out.attempts == 1
            if hands.backend == "processes":  # described in the worker; the object stays there
                assert out.error.exception is None
            else:
                assert isinstance(out.error.exception, ValueError)
        else:
            assert out.ok and out.error is None and out.value == item * 10


def test_run_report_counts_failures(hands: Hands) -> None:
    report = hands.run(explode, range(30))
    assert (report.total, report.succeeded, report.failed) == (30, 20, 10)
    assert report.errors_by_type == {"builtins.ValueError": 10}
    assert sorted(f.item for f in report.failures) == list(range(0, 30, 3))
    assert report.examples["builtins.ValueError"] % 3 == 0
    assert not report.ok


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_base(kind: str) -> None:
    if kind == "ok":
        return
    error: BaseException = {
        "system_exit": SystemExit(3),
        "keyboard_interrupt": KeyboardInterrupt(),
        "generator_exit": GeneratorExit(),
        "unprintable": UnprintableError(),
        "unpicklable": UnpicklableError(),
    }[kind]
    raise error


@pytest.mark.parametrize(
    ("kind", "error_type", "message"),
    [
        ("system_exit", "builtins.SystemExit", "3"),
        ("keyboard_interrupt", "builtins.KeyboardInterrupt", ""),
        ("generator_exit", "builtins.GeneratorExit", ""),
        ("unprintable", f"{__name__}.UnprintableError", "<unprintable UnprintableError message>"),
        ("unpicklable", f"{__name__}.UnpicklableError", "holds a lock"),
    ],
)
def test_any_exception_raised_by_fn_fails_only_its_item(
    hands: Hands, kind: str, error_type: str, message: str
) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(UnpicklableError())  # the premise of the unpicklable case
    items = ["ok", kind, "ok", kind, "ok"]
    outcomes = list(hands.map(raise_base, items, ordered=True))
    assert [out.ok for out in outcomes] == [True, False, True, False, True]
    for out in outcomes[1::2]:
        assert out.error is not None
        assert out.error.error_type == error_type
        assert out.error.message == message
        assert error_type.rsplit(".", 1)[1] in out.error.traceback
        assert "raise_base" in out.error.traceback
        repr(out)  # never raises, even for an unprintable exception
    str(hands.run(raise_base, items))


def test_traceback_shows_the_users_code_not_the_engine(hands: Hands) -> None:
    (out,) = hands.map(explode, [3])
    assert out.error is not None
    text = out.error.traceback
    assert text.startswith("Traceback (most recent call last):")
    assert "in explode" in text and "ValueError: bad item 3" in text
    assert "_batch.py" not in text


def test_builtin_fn_failure_has_a_traceback(hands: Hands) -> None:
    outcomes = list(hands.map(int, ["1", "x", "3"], ordered=True))
    assert [o.value for o in outcomes] == [1, None, 3]
    error = outcomes[1].error
    assert error is not None and error.error_type == "builtins.ValueError"
    assert "invalid literal" in error.traceback


def test_raise_for_failures_groups_them(hands: Hands) -> None:
    report = hands.run(explode, range(9))
    with pytest.raises(manyhands.ItemsFailed) as caught:
        report.raise_for_failures()
    assert isinstance(caught.value, manyhands.ManyhandsError)
    assert sorted(f.item for f in caught.value.failures) == [0, 3, 6]
    assert caught.value.report is report
    assert "3 of 9 items failed: builtins.ValueError x3" in str(caught.value)
    hands.run(abs, range(5)).raise_for_failures()  # no failure: no raise


def test_report_keeps_a_bounded_number_of_failures_and_counts_all(hands: Hands) -> None:
    report = hands.run(explode, range(3000), keep_failures=50)
    assert report.failed == 1000
    assert report.errors_by_type == {"builtins.ValueError": 1000}
    assert len(report.failures) == 50
    report = hands.run(explode, range(30), keep_failures=0)
    assert report.failed == 10 and report.failures == []


def test_every_failure_is_in_the_map_stream_beyond_keep_failures(hands: Hands) -> None:
    stream = hands.map(explode, range(3000), keep_failures=5)
    failed = [out.item for out in stream if not out.ok]
    assert len(failed) == 1000
    assert len(stream.report.failures) == 5 and stream.report.failed == 1000


def test_every_failure_pickles_and_copies_with_its_traceback(hands: Hands) -> None:
    """A Failure the Report does not keep still holds its call's frames (the traceback is
    formatted when read); pickled or copied, it carries the text instead."""
    for outcome in hands.map(explode, range(6), keep_failures=0):
        if outcome.error is None:
            continue
        clone = pickle.loads(pickle.dumps(outcome))  # (before the text was read)
        text = outcome.error.traceback
        assert "in explode" in text and "ValueError: bad item" in text
        assert clone.error is not None and clone.error.traceback == text
        assert (clone.error.item, clone.error.message) == (outcome.item, outcome.error.message)
        assert copy.copy(outcome.error).traceback == text


@pytest.mark.parametrize("where", ["format_exception", "str"])
def test_a_ctrl_c_that_lands_while_a_failure_is_described_stops_the_run(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Describing a failure (its message, its traceback) takes a while; a Ctrl-C that
    # lands in the consuming thread then must stop the run, never be taken for a
    # broken __str__ and dropped.
    from manyhands import _outcome

    main = threading.main_thread()
    landed = threading.Event()

    def interrupted(*args: object, **kwargs: object) -> list[str]:
        if threading.current_thread() is main and not landed.is_set():
            landed.set()
            raise KeyboardInterrupt
        return ["Traceback: (formatted)\n"]

    class Odd(Exception):
        def __str__(self) -> str:
            return str(interrupted())

    def fail(item: int) -> int:
        raise (Odd() if where == "str" else ValueError(item))

    if where == "format_exception":
        monkeypatch.setattr(_outcome._tb, "format_exception", interrupted)
    ran = 0
    with pytest.raises(KeyboardInterrupt):
        for outcome in manyhands.map(fail, range(10_000), workers=4):
            ran += 1
            _ = outcome.error and outcome.error.traceback
    assert landed.is_set() and ran < 10_000
