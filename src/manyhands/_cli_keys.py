"""``run --key``: the journal key of each row, from a field or a function, or its line.

A row with no key fails as its own item, recorded under ``<line N>``, and the
run goes on: a row without ``--key FIELD``'s field (INPUT's reader makes it a
:class:`~._inputs.BadLine`), and a row ``--key module:function`` raises for or
gives no key (None, or a value that is no key). The function is called as
INPUT is read, where each row's line is known (:meth:`CommandKey.row`); the
keys it made are handed to the journal in the order it reads the rows, so it
is called once a row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ._inputs import BadLine, KeyFunctionError, UsageProblem, load_target, raised_at
from ._key_fn import BadKeyType, NoKey, as_key
from ._keys import code_hash, default_key
from ._outcome import safe_repr

__all__ = ["CommandKey"]


class CommandKey:
    """The journal's ``key=`` for ``--key`` (none: default keys); a bad row by its line.

    ``journal_identity`` and ``journal_label`` are what the journal records of
    it: ``--key`` as given, and its function's code, to warn when it changes.
    """

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        #: ``--key module:function``: what INPUT's reader hands each row on as.
        self.keyed: Callable[[int, str, Any], Any] | None = None
        base: Callable[[Any], Any]
        if spec is None:
            base = default_key
        elif ":" in spec:
            base = load_target(spec, "--key")
            self.keyed = self.row
        else:
            base = self._field
        self._base = base
        self._made: deque[tuple[Any, str]] = deque()  # (row, key), as read, for the journal
        self.journal_identity = (spec or "", "" if spec is None else code_hash(base) or "")
        self.journal_label = f"--key {spec}" if spec is not None else ""

    def __call__(self, item: Any) -> Any:
        """The key of ``item`` as the journal reads it: the one made as it was read."""
        if type(item) is BadLine:
            return f"<line {item.number}>"
        made = self._made
        while made:  # (the journal reads the rows in the order they were read)
            row, key = made.popleft()
            if row is item:
                return key
        return self._base(item)

    def row(self, number: int, text: str, item: Any) -> Any:
        """The row at line ``number`` with its key made; a BadLine if the function gave none."""
        try:
            key = as_key(self._base(item))
        except Exception as exc:  # (the user's function: any error fails this row only)
            return BadLine(number, text, self._no_key(number, exc), KeyFunctionError)
        self._made.append((item, key))
        return item

    def _no_key(self, number: int, exc: Exception) -> str:
        """Why the row at line ``number`` has no key, in --key's terms."""
        flag = f"--key {self.spec}"
        if isinstance(exc, NoKey):
            return f"line {number}: {flag} returned None, which is no key"
        if isinstance(exc, BadKeyType):
            return (
                f"line {number}: {flag} returned {safe_repr(exc.value, 60)} (type "
                f"{type(exc.value).__qualname__}), which is no key: return a str or an int, "
                "e.g. str() of it"
            )
        return f"line {number}: {flag} raised {type(exc).__qualname__}: {exc}{raised_at(exc)}"

    def _field(self, item: Any) -> Any:
        try:
            return item[self.spec]
        except (KeyError, TypeError, IndexError):
            raise UsageProblem(
                f"--key {self.spec!r}: item {item!r} has no field {self.spec!r}"
            ) from None
