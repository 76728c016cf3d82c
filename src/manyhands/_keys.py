"""Stable identities for the journal: item keys, item fingerprints, code hashes.

All of them are the same in every process and on every machine (never the
salted built-in ``hash()``), so a journal written by one run is understood by
the next.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import re
from collections.abc import Callable
from types import CodeType
from typing import Any

from ._outcome import qualified_name

__all__ = [
    "MAX_KEY_TEXT",
    "TAGS",
    "KeyTypeError",
    "code_hash",
    "default_key",
    "default_keys",
    "fingerprint",
    "function_name",
    "memory_key",
    "state_text",
    "tagged",
]

#: Keys longer than this are stored as a hash of their text.
MAX_KEY_TEXT = 200

#: A dict whose only key is one of these is how a key spells what JSON cannot
#: tell apart; an item's own dict of that shape is spelled out like the rest.
TAGS = ("$bytes", "$dict")

_PLAIN = frozenset({str, int, float, bool, type(None), bytes})  # need no tag
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def memory_key(key: str) -> str | bytes:
    """What a run keeps in memory for ``key``: the key, or a 16-byte digest of a long one.

    A run keeps up to ``FRESH_KEYS`` keys in memory (see ``_journal_read``); a
    ``key=`` may return a whole row as its key, kilobytes each. The journal
    still stores and looks up the key itself: only the sets in memory hold
    the digest. A default key is never longer than ``MAX_KEY_TEXT`` (a
    longer one is already a SHA-256 text), so it is kept as it is.

    Two keys are told apart in memory exactly as in the file, but for two
    long keys sharing a BLAKE2b-128 digest: a digest is bytes and a key is
    a str, so a short key never equals a digest; among ``n`` long keys the
    chance that any two share one is below ``n**2 / 2**129`` (1e-20 for a
    billion keys), far below the chance of a memory error.

    >>> memory_key("id-1"), len(memory_key("x" * 201))
    ('id-1', 16)
    """
    if len(key) <= MAX_KEY_TEXT:
        return key
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class KeyTypeError(TypeError):
    """An item has no default key; the message says what to pass instead."""


def _other(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    raise KeyTypeError(type(value).__qualname__)


_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_other
).encode
_string: Callable[[str], str] = json.encoder.encode_basestring


def default_key(item: Any) -> str:
    """The journal key of a str, bytes, number, bool, None or JSON-like container of those.

    The canonical JSON text of the item (sorted dict keys; a tuple is the
    same as a list), or a SHA-256 of it when it is longer than
    ``MAX_KEY_TEXT`` characters. Two items get the same key exactly when
    they are the same value of the same kind: 1, 1.0 and True are three
    keys, and so are ``{1: "a"}`` and ``{"1": "a"}`` (see :func:`tagged`).
    The key is always valid UTF-8: a lone surrogate (from a file name that
    is not UTF-8) is written as its JSON escape.

    >>> default_key("https://example.com/1"), default_key(42), default_key((1, "a"))
    ('"https://example.com/1"', '42', '[1,"a"]')
    >>> default_key({"b": 1, "a": [True, None]})
    '{"a":[true,null],"b":1}'
    >>> default_key(b"\\x00\\xff"), default_key({1: "a"})
    ('{"$bytes":"00ff"}', '{"$dict":[[1,"a"]]}')
    >>> default_key("caf\\udce9")
    '"caf\\\\udce9"'
    >>> default_key(object())
    Traceback (most recent call last):
    manyhands._keys.KeyTypeError: object
    """
    kind = type(item)
    if kind is str:
        text = _string(item)  # the common cases, without the encoder's Python layers
    elif kind is int:
        text = int.__repr__(item)
        if len(text) <= MAX_KEY_TEXT:
            return text  # (digits: no more to check)
    else:
        text = _encode(tagged(item))
    if len(text) > MAX_KEY_TEXT:
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:  # only inside strings: JSON's own syntax is ASCII
        return _LONE_SURROGATE.sub(_escape, text)
    return text


def default_keys(items: list[Any]) -> list[str]:
    """:func:`default_key` of each item; a block of ints in one pass.

    Raises what :func:`default_key` raises for the first item without one.

    >>> default_keys([1, 22]), default_keys([1, "a"])
    (['1', '22'], ['1', '"a"'])
    """
    if set(map(type, items)) == {int}:  # (a range: the common input)
        keys = list(map(int.__repr__, items))
        if max(map(len, keys)) <= MAX_KEY_TEXT:
            return keys
    return list(map(default_key, items))


def _escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def tagged(value: Any) -> Any:
    """``value`` with the dicts that JSON would blur spelled out; ``value`` itself if none.

    JSON makes every dict key a string, so ``{1: "a"}``, ``{True: "a"}`` and
    ``{None: "a"}`` would read as ``{"1": "a"}``, ``{"true": "a"}`` and
    ``{"null": "a"}``. A dict with a key that is not a str, and a dict that
    looks like a tag (its only key is in ``TAGS``), become
    ``{"$dict": [[key, value], ...]}``, the pairs in the order of their keys'
    text. Everything else, the common case, is returned as it is, uncopied.

    >>> tagged({1: "a", "b": (2, {None: 3})})
    {'$dict': [['b', [2, {'$dict': [[None, 3]]}]], [1, 'a']]}
    >>> tagged({"$bytes": "00"}), tagged({"$bytes": "00", "n": 1})
    ({'$dict': [['$bytes', '00']]}, {'$bytes': '00', 'n': 1})
    """
    if type(value) in _PLAIN:
        return value
    if isinstance(value, dict):
        return _tagged_dict(value)
    if isinstance(value, (list, tuple)):
        copy: list[Any] | None = None
        for index, element in enumerate(value):
            if type(element) not in _PLAIN and (spelled := tagged(element)) is not element:
                if copy is None:
                    copy = list(value)
                copy[index] = spelled
        return value if copy is None else copy
    return value  # bytes-like values get their tag from the encoder; others are refused there


def _tagged_dict(mapping: dict[Any, Any]) -> Any:
    if len(mapping) == 1 and next(iter(mapping)) in TAGS:
        return _spelled_out(mapping)
    copy: dict[Any, Any] | None = None
    for key, value in mapping.items():
        if type(key) is not str and not isinstance(key, str):
            return _spelled_out(mapping)
        if type(value) not in _PLAIN and (spelled := tagged(value)) is not value:
            if copy is None:
                copy = dict(mapping)
            copy[key] = spelled
    return mapping if copy is None else copy


def _spelled_out(mapping: dict[Any, Any]) -> dict[str, Any]:
    pairs = [[tagged(key), tagged(value)] for key, value in mapping.items()]
    pairs.sort(key=lambda pair: _encode(pair[0]))  # distinct keys have distinct texts
    return {"$dict": pairs}


def fingerprint(item: Any) -> str | None:
    """A short stable digest of the whole item; None when none can be had.

    It tells whether the item recorded under a ``key=`` changed, so it keeps
    the plain JSON of journals written before :func:`tagged` existed. An item
    that is not JSON-like gets one when all it holds is JSON-like or of the
    kinds :func:`_spelled` knows (dataclasses, dates and times, ``Decimal``,
    ``UUID``, sets, enums, paths...): their value, the same in every process
    and on every machine. Anything else (an object of any other class, whose
    state manyhands cannot know to be stable) has none: None.

    >>> fingerprint({"id": 1, "name": "a"}) == fingerprint({"name": "a", "id": 1})
    True
    >>> fingerprint({"id": 1, "name": "a"}) == fingerprint({"id": 1, "name": "b"})
    False
    >>> import datetime
    >>> day = datetime.date(2020, 1, 1)
    >>> fingerprint({"t": day}) == fingerprint({"t": day + datetime.timedelta(1)})
    False
    >>> fingerprint({"t": day}) == fingerprint({"t": datetime.date(2020, 1, 1)})
    True
    >>> fingerprint(object()) is None
    True
    """
    try:
        try:
            text = _encode(item)
        except KeyTypeError:
            text = _encode_spelled(tagged(item))  # (not JSON-like: a second try, for those)
        except TypeError:  # dict keys of mixed types, which only the tagged form sorts
            text = _encode(tagged(item))
    except (TypeError, ValueError, RecursionError):  # no fingerprint, a cycle, a huge int
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


#: The tag of a value spelled out by :func:`_spelled` (a NUL first: not a key
#: an item's own dict is likely to have).
_KIND = "\x00kind"


def _spelled(value: object) -> object:
    """A value of a kind with a stable identity, as JSON-like data (for fingerprints).

    Its kind's name and what tells two of them apart: the fields of a
    dataclass (declared order), the ISO text of a date or time, the text of a
    ``Decimal``, ``UUID`` or ``Fraction``, the sorted fingerprint texts of a
    set's elements, an enum member's name. Anything else raises KeyTypeError:
    no fingerprint.
    """
    kind = type(value)
    name = kind.__qualname__
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if hasattr(kind, "__dataclass_fields__") and not isinstance(value, type):
        fields = {f.name: tagged(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
        return {_KIND: name, "fields": fields}
    if isinstance(value, (set, frozenset)):
        return {_KIND: name, "elements": sorted(map(_encode_spelled, value))}
    module = kind.__module__.partition(".")[0]  # (pathlib._local on 3.13)
    if module == "datetime" or (module == "uuid" and name == "UUID"):
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        return {_KIND: name, "text": text}
    if module in ("decimal", "fractions", "pathlib") or kind is complex:
        return {_KIND: name, "text": str(value)}
    if issubclass(kind, enum.Enum):
        return {_KIND: name, "member": value.name}  # type: ignore[attr-defined]
    raise KeyTypeError(name)


_encode_spelled = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_spelled
).encode


def function_name(fn: Callable[..., Any]) -> str:
    """The qualified name of what ``fn`` calls, for the journal's metadata.

    >>> function_name(len), function_name([].append)
    ('builtins.len', 'builtins.list.append')
    """
    target = _unwrap(fn)
    module = getattr(target, "__module__", None)
    owner = getattr(target, "__self__", None)
    if module is None and owner is not None:  # a builtin object's method: its type's module
        module = type(owner).__module__
    module = module or "?"
    name = getattr(target, "__qualname__", None)
    if name is None:
        return qualified_name(type(target))
    return f"{module}.{name}"


def code_hash(fn: Callable[..., Any], *, state: bool = False) -> str | None:
    """A digest of ``fn``'s bytecode and constants, nested functions included.

    None for callables without Python code (builtins, C extensions): their
    changes cannot be seen. A ``functools.partial``'s arguments count by their
    stable text (:func:`state_text`), or by their type where they have none
    (an object whose repr holds its address would change the digest on every
    run). With ``state=True`` (for ``key=``), what the code reads besides its
    arguments counts too, where it has a stable text: a closure's captured
    values, a callable object's or bound method's object's attributes.

    >>> def f(x): return x + 1
    >>> def g(x): return x + 1
    >>> def h(x): return x + 2
    >>> code_hash(f) == code_hash(g), code_hash(f) == code_hash(h), code_hash(len)
    (True, False, None)
    >>> def by(field): return lambda row: row[field]
    >>> code_hash(by("id"), state=True) == code_hash(by("name"), state=True)
    False
    >>> code_hash(by("id"), state=True) == code_hash(by("id"), state=True)
    True
    """
    target = _unwrap(fn)
    code = getattr(target, "__code__", None)
    owner: object = getattr(fn, "__self__", None)  # a bound method's object
    if code is None:
        call = type(target).__dict__.get("__call__")  # a callable object's method
        code = getattr(call, "__code__", None)
        owner = target
    if not isinstance(code, CodeType):
        return None
    digest = hashlib.blake2b(digest_size=12)
    _feed_code(digest, code)
    if isinstance(fn, functools.partial):
        digest.update(_partial_text(fn).encode("utf-8", "surrogatepass"))
    if state:
        cells = getattr(target, "__closure__", None) or ()
        texts = [_cell_text(cell) for cell in cells]
        if owner is not None and not isinstance(owner, type):
            texts.append(_attributes_text(owner))
        if any(text is not None for text in texts):  # (none: the digest of before)
            digest.update(repr(texts).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def state_text(value: object, depth: int = 0) -> str | None:
    """A text of ``value`` that is the same in every run while the value is, or None.

    JSON-like values and the kinds :func:`fingerprint` knows: their fingerprint;
    a function: its :func:`code_hash` (with its own state); anything else:
    None (its repr may hold its address: nothing stable to compare).

    >>> state_text(object()) is None, state_text("id") == state_text("id")
    (True, True)
    """
    if callable(value) and not isinstance(value, type):
        if depth > 3:  # (a function that captures itself, or a long chain)
            return None
        digest = _code_hash_at(value, depth + 1)
        return None if digest is None else f"code:{digest}"
    return fingerprint(value)


def _code_hash_at(fn: Callable[..., Any], depth: int) -> str | None:
    target = _unwrap(fn)
    code = getattr(target, "__code__", None)
    if not isinstance(code, CodeType):
        return None if type(fn).__module__ != "operator" else repr(fn)  # (itemgetter: its fields)
    digest = hashlib.blake2b(digest_size=12)
    _feed_code(digest, code)
    cells = getattr(target, "__closure__", None) or ()
    digest.update(repr([_cell_text(cell, depth) for cell in cells]).encode())
    return digest.hexdigest()


def _cell_text(cell: Any, depth: int = 0) -> str | None:
    try:
        value = cell.cell_contents
    except ValueError:  # (an empty cell: a name not yet bound)
        return None
    return state_text(value, depth)


def _attributes_text(owner: object) -> str | None:
    attributes = getattr(owner, "__dict__", None)
    return fingerprint(dict(attributes)) if isinstance(attributes, dict) else None


def _partial_text(fn: functools.partial[Any]) -> str:
    """A partial's arguments: each one's stable text, or its type where it has none."""

    def text(value: object) -> str:
        stable = state_text(value)
        if stable is None and hasattr(value, "__dict__") and not callable(value):
            stable = _attributes_text(value)
        return stable if stable is not None else f"<{qualified_name(type(value))}>"

    keywords = sorted((name, text(value)) for name, value in fn.keywords.items())
    return repr(([text(value) for value in fn.args], keywords))


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__func__", fn)  # a bound method: its function


def _feed_code(digest: Any, code: CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _feed_code(digest, const)
        else:
            digest.update(repr(const).encode("utf-8", "surrogatepass"))
