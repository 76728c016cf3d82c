"""Text from outside (a journal, an error message, an input line) made safe to print.

A journal holds messages and tracebacks that any code wrote, and an input
file anything at all. Printed raw, an ESC or C1 control character starts a
terminal escape sequence: an OSC sequence can retitle the window, rewrite
the clipboard or forge a hyperlink; a carriage return or a bidi override
makes a line show something else than it holds. Everything the command
prints from such sources goes through :func:`escape_controls`; the JSON it
writes goes through :func:`escape_json`, which keeps the same value.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls", "escape_json"]

# C0 controls but tab and newline, DEL and the C1 controls, the line and
# paragraph separators, the bidi overrides and isolates, and lone surrogates
# (which a UTF-8 terminal cannot even be sent).
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_IN_TEXT = re.compile(f"[\n{_UNSAFE}]")
_IN_BLOCK = re.compile(f"[{_UNSAFE}]")
# Inside JSON text these can only occur in strings, where a \\u escape means the
# same character: json.dumps(ensure_ascii=False) already escapes C0 controls.
_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with its control characters written as ``\\x1b``, ``\\u202e``...

    Tabs stay, and newlines too with ``keep_newlines`` (for a traceback);
    otherwise a newline is written ``\\n``, so that one record stays one line.

    >>> escape_controls("bad \\x1b]0;owned\\x07 title \\x9b31m")
    'bad \\\\x1b]0;owned\\\\x07 title \\\\x9b31m'
    >>> escape_controls("two\\nlines\\r"), escape_controls("a\\nb", keep_newlines=True)
    ('two\\\\nlines\\\\r', 'a\\nb')
    """
    pattern = _IN_BLOCK if keep_newlines else _IN_TEXT
    if pattern.search(text) is None:  # the common case: nothing to copy
        return text
    return pattern.sub(_escaped, text)


def escape_json(line: str) -> str:
    """A line of ``json.dumps(..., ensure_ascii=False)`` without raw control characters.

    The value it holds is the same: only characters inside strings are
    written as ``\\u`` escapes, including lone surrogates, so that the line
    can be encoded as UTF-8 at all.

    >>> import json
    >>> line = escape_json(json.dumps({"m": "\\x9b2J\\u2028\\udcff é"}, ensure_ascii=False))
    >>> line
    '{"m": "\\\\u009b2J\\\\u2028\\\\udcff é"}'
    >>> json.loads(line) == {"m": "\\x9b2J\\u2028\\udcff é"}
    True
    """
    if _IN_JSON.search(line) is None:
        return line
    return _IN_JSON.sub(_json_escaped, line)
