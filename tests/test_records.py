"""The frozen dataclasses with hand-written ``__init__`` (see ``manyhands._records``).

Each must behave as the class ``@dataclass(frozen=True)`` makes from the same
fields: same ``__init__`` parameters and defaults, repr, equality, hash, and
no assignment.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from manyhands import Latency, Report, Retry
from manyhands._auto import Choice
from manyhands._options import Options
from manyhands._outcome import Failure

CLASSES = [Latency, Report, Retry, Options, Choice]


def _reference(cls: type) -> type:
    """What ``@dataclass(frozen=True)`` makes of ``cls``'s fields."""
    specs = []
    for f in dataclasses.fields(cls):
        kwargs: dict[str, Any] = {"repr": f.repr, "compare": f.compare, "hash": f.hash}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        specs.append((f.name, f.type, dataclasses.field(**kwargs)))
    return dataclasses.make_dataclass(cls.__name__, specs, frozen=True)


def _examples(cls: type) -> list[dict[str, Any]]:
    if cls is Report:
        failure = Failure.from_exception(3, ValueError("bad"), attempts=2)
        return [
            {"total": 1, "succeeded": 1, "failed": 0, "elapsed": 0.5},
            {"total": 2, "succeeded": 1, "failed": 1, "elapsed": 1.0, "failures": [failure]},
            {"total": 2, "succeeded": 1, "failed": 1, "elapsed": 1.0, "notes": ("a",)},
            {"total": 3, "succeeded": 1, "failed": 1, "elapsed": 1.0, "not_run": 1,
             "not_run_causes": {"run stopped": 1}},
        ]  # fmt: skip
    if cls is Choice:
        return [{"backend": "threads", "why": "x"}, {"backend": "processes", "why": "y"}]
    if cls is Retry:
        return [{}, {"retries": 5, "on": ConnectionError}, {"random": lambda: 0.5}]
    if cls is Latency:
        return [{}, {"mean": 1.0, "p99": 2.0}]
    return [{}, {"workers": 4, "rate": "5/s"}, {"retry": Retry(2), "key": str}]


def _without_annotations(signature: inspect.Signature) -> list[tuple[str, Any, str]]:
    return [
        (p.name, p.kind, repr(p.default)) for p in signature.parameters.values() if p.name != "self"
    ]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_init_takes_what_the_dataclass_would(cls: type) -> None:
    reference = _reference(cls)
    ours = inspect.signature(cls.__init__)
    theirs = inspect.signature(reference.__init__)
    assert _without_annotations(ours) == _without_annotations(theirs)
    assert {n: p.annotation for n, p in ours.parameters.items() if n != "self"} == {
        n: p.annotation for n, p in theirs.parameters.items() if n != "self"
    }
    assert cls.__match_args__ == reference.__match_args__  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_instances_behave_as_the_dataclass_would(cls: type) -> None:
    reference = _reference(cls)
    for kwargs in _examples(cls):
        ours, theirs = cls(**kwargs), reference(**kwargs)
        assert repr(dataclasses.asdict(ours)) == repr(dataclasses.asdict(theirs))
        if "__repr__" not in cls.__dict__:  # (Retry has its own)
            assert repr(ours) == repr(theirs)
        again = cls(**kwargs)
        assert ours == again
        assert (ours != again) is False
        assert ours != theirs  # another class: never equal, as with dataclasses
        try:
            expected_hash: int | type[Exception] = hash(theirs)
        except TypeError:
            expected_hash = TypeError
        if expected_hash is TypeError:
            with pytest.raises(TypeError):
                hash(ours)
        else:
            assert hash(ours) == expected_hash
        field = dataclasses.fields(cls)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ours, field, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(ours, field)
        assert dataclasses.replace(ours) == ours


def test_each_field_is_compared() -> None:
    assert Report(1, 1, 0, 0.5) != Report(1, 1, 0, 0.5, skipped_failed=1)
    assert Report(2, 1, 0, 0.5, not_run=1) != Report(2, 1, 1, 0.5)
    assert Report(2, 1, 0, 0.5, not_run_causes={"run stopped": 1}) != Report(2, 1, 0, 0.5)
    assert Options() != Options(changed_items="rerun")
    assert Retry(random=lambda: 0.1) == Retry(random=lambda: 0.9)  # (compare=False)
    assert Latency(p99=1.0) != Latency()


def test_default_factories_give_each_instance_its_own() -> None:
    one, two = Report(0, 0, 0, 0.0), Report(0, 0, 0, 0.0)
    assert one.failures == [] and one.failures is not two.failures
    assert one.examples is not two.examples and one.errors_by_type is not two.errors_by_type
    assert one.not_run_causes == {} and one.not_run_causes is not two.not_run_causes
    assert one.latency == Latency()


def test_retry_still_checks_its_values() -> None:
    with pytest.raises(ValueError, match="retries"):
        Retry(retries=-1)


def test_a_recursive_value_does_not_recurse_forever() -> None:
    examples: dict[str, Any] = {}
    report = Report(0, 0, 0, 0.0, examples=examples)
    examples["self"] = report
    assert "examples={'self': ...}" in repr(report)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_instances_survive_pickle_and_copy(cls: type) -> None:
    import copy
    import pickle

    for kwargs in _examples(cls):
        if any(callable(v) and getattr(v, "__name__", "") == "<lambda>" for v in kwargs.values()):
            continue  # (a lambda does not pickle)
        record = cls(**kwargs)
        for again in (pickle.loads(pickle.dumps(record)), copy.deepcopy(record)):
            assert type(again) is cls
            assert repr(dataclasses.asdict(again)) == repr(dataclasses.asdict(record))
