"""Frozen dataclasses that cost little to create when ``manyhands`` is imported.

``@dataclass`` writes the source of ``__init__``, ``__repr__``, ``__eq__`` and
``__hash__`` for each class and compiles it with ``exec`` at import: about 1 ms
for a class of 20 fields (``Options``, ``Report``), and 5 ms of an import of
12. The classes of this package that are created on every import are written
as ``@dataclass(frozen=True, init=False, repr=False, eq=False)`` with a
hand-written ``__init__`` (compiled into the ``.pyc`` like any other code) and
:class:`Record` as a base, whose ``__repr__``, ``__eq__`` and ``__hash__`` do
what the generated ones do, from the fields. They stay dataclasses
(``fields``, ``replace``, ``asdict``, ``is_dataclass`` and type checkers see
them as before); ``tests/test_records.py`` checks each against the class
``@dataclass(frozen=True)`` would make from the same fields.
"""

from __future__ import annotations

import reprlib
from dataclasses import fields
from typing import Any

__all__ = ["FACTORY", "Record"]


class _Factory:
    """The default shown for a field with a ``default_factory``, as dataclasses show it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


FACTORY: Any = _Factory()
"""The default of an ``__init__`` parameter whose field has a ``default_factory``."""


class Record:
    """``__repr__``, ``__eq__`` and ``__hash__`` of a frozen dataclass, read from its fields."""

    __slots__ = ()

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)  # type: ignore[arg-type]
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return _compared(self) == _compared(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(
            tuple(
                getattr(self, f.name)
                for f in fields(self)  # type: ignore[arg-type]
                if (f.compare if f.hash is None else f.hash)
            )
        )


def _compared(record: Any) -> tuple[Any, ...]:
    return tuple(getattr(record, f.name) for f in fields(record) if f.compare)
