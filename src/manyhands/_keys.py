"""Stable identities for the journal: item keys, item fingerprints, code hashes.

All of them are the same in every process and on every machine (never the
salted built-in ``hash()``), so a journal written by one run is understood by
the next.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from types import CodeType
from typing import Any

from ._outcome import qualified_name

__all__ = ["KeyTypeError", "code_hash", "default_key", "fingerprint", "function_name"]

#: Keys longer than this are stored as a hash of their text.
MAX_KEY_TEXT = 200


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
    ``MAX_KEY_TEXT`` characters.

    >>> default_key("https://example.com/1"), default_key(42), default_key((1, "a"))
    ('"https://example.com/1"', '42', '[1,"a"]')
    >>> default_key({"b": 1, "a": [True, None]})
    '{"a":[true,null],"b":1}'
    >>> default_key(b"\\x00\\xff")
    '{"$bytes":"00ff"}'
    >>> default_key(object())
    Traceback (most recent call last):
    manyhands._keys.KeyTypeError: object
    """
    kind = type(item)
    if kind is str:
        text = _string(item)  # the common cases, without the encoder's Python layers
    elif kind is int:
        text = int.__repr__(item)
    else:
        text = _encode(item)
    if len(text) > MAX_KEY_TEXT:
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


def fingerprint(item: Any) -> str | None:
    """A short stable digest of the whole item; None when it is not JSON-like.

    >>> fingerprint({"id": 1, "name": "a"}) == fingerprint({"name": "a", "id": 1})
    True
    >>> fingerprint({"id": 1, "name": "a"}) == fingerprint({"id": 1, "name": "b"})
    False
    """
    try:
        text = _encode(item)
    except (KeyTypeError, ValueError):
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def function_name(fn: Callable[..., Any]) -> str:
    """The qualified name of what ``fn`` calls, for the journal's metadata.

    >>> function_name(len)
    'builtins.len'
    """
    target = _unwrap(fn)
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None)
    if name is None:
        return qualified_name(type(target))
    return f"{module}.{name}"


def code_hash(fn: Callable[..., Any]) -> str | None:
    """A digest of ``fn``'s bytecode and constants, nested functions included.

    None for callables without Python code (builtins, C extensions): their
    changes cannot be seen.

    >>> def f(x): return x + 1
    >>> def g(x): return x + 1
    >>> def h(x): return x + 2
    >>> code_hash(f) == code_hash(g), code_hash(f) == code_hash(h), code_hash(len)
    (True, False, None)
    """
    target = _unwrap(fn)
    code = getattr(target, "__code__", None)
    if code is None:
        call = type(target).__dict__.get("__call__")  # a callable object's method
        code = getattr(call, "__code__", None)
    if not isinstance(code, CodeType):
        return None
    digest = hashlib.blake2b(digest_size=12)
    _feed_code(digest, code)
    if isinstance(fn, functools.partial):
        digest.update(repr((fn.args, sorted(fn.keywords.items()))).encode())
    return digest.hexdigest()


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
