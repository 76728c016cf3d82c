"""An item's command line (``run --sh TEMPLATE``): :class:`Template`, and the templates refused.

The template is split once with :mod:`shlex` and each item substituted into
its arguments, so an item is never shell code; with ``--shell`` it runs by
``/bin/sh -c`` with each value quoted. A template that would make an item
shell code again (``sh -c '... {} ...'``, a quoted ``{}`` under ``--shell``,
``{}`` in ``$(( ))``) is refused before any item runs, as a usage error.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

from ._inputs import UsageProblem

__all__ = ["Template"]

# {} or {field}: a field name is a word (letters, digits, _ or -), so the
# braces of `awk '{print $1}'` or `${HOME}` stay as they are.
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][\w-]*)?\}")


class Template:
    """A command with ``{}`` (the item) and ``{field}`` (a field of a JSONL/CSV item).

    Without ``shell``, the template is split once, like a shell would split
    it, and each item is substituted into the arguments: an item is never
    shell code, whatever it holds. With ``shell``, the template is run by
    ``/bin/sh -c`` with each value quoted by :func:`shlex.quote`.

    >>> Template("echo {} x{}x").argv("; rm -rf ~")
    ['echo', '; rm -rf ~', 'x; rm -rf ~x']
    >>> Template("cp {src} {dst}").argv({"src": "a b", "dst": 7})
    ['cp', 'a b', '7']
    >>> Template("grep {} | wc -l", shell=True).argv("a b; c")
    ['/bin/sh', '-c', "grep 'a b; c' | wc -l"]
    >>> Template("awk '{print $1}' {}").argv("f")
    ['awk', '{print $1}', 'f']
    """

    def __init__(self, text: str, *, shell: bool = False) -> None:
        self.text = text
        self.shell = shell
        if not text.strip():
            raise UsageProblem("--sh needs a command, e.g. --sh 'curl -fsS https://host/{}'")
        try:
            self._words = [] if shell else shlex.split(text)
        except ValueError as exc:  # an unclosed quote
            raise UsageProblem(f"--sh {text!r} cannot be split into words: {exc}") from None
        self.fields = {m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)}
        self.has_placeholder = _PLACEHOLDER.search(text) is not None
        _refuse_item_in_a_script(self._words)
        if shell:
            _refuse_quoted_placeholder(text)

    def program(self) -> str | None:
        """The program every item runs, when the template names it (no shell, no ``{}`` in it).

        >>> Template("curl -fsS {}").program(), Template("{} --help").program()
        ('curl', None)
        """
        if self.shell or not self._words or _PLACEHOLDER.search(self._words[0]):
            return None
        return self._words[0]

    def argv(self, item: Any) -> list[str]:
        """The command line of ``item``."""
        if self.shell:
            return ["/bin/sh", "-c", self._fill(self.text, item, shlex.quote)]
        words = [self._fill(word, item, str) for word in self._words]
        return words if self.has_placeholder else [*words, _text(item)]

    @staticmethod
    def _fill(text: str, item: Any, quote: Callable[[str], str]) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return quote(_text(item))
            try:
                return quote(_text(item[name]))
            except (KeyError, TypeError, IndexError) as exc:
                short = name in getattr(item, "missing", ())  # (a CSV row with too few cells)
                where = f" (line {item.line}: the row ends before it)" if short else ""
                raise KeyError(f"the item has no field {name!r} for {{{name}}}{where}") from exc

        return _PLACEHOLDER.sub(value, text)


_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash"})
_SCRIPT_FLAG = re.compile(r"-[a-z]*c")  # -c, -ec, -lc...


def _refuse_item_in_a_script(words: list[str]) -> None:
    """Refuse ``sh -c '... {} ...'``: the item would be shell code again (an injection).

    >>> _refuse_item_in_a_script(["sh", "-c", 'echo "$1"', "sh", "{}"])
    >>> _refuse_item_in_a_script(["bash", "-ec", "echo {}"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    manyhands._inputs.UsageProblem: --sh: {} in the script of `bash -c` would run the item as...
    """
    for index, word in enumerate(words[:-1]):
        if word.rsplit("/", 1)[-1] not in _SHELLS:
            continue
        for flag, script in zip(words[index + 1 :], words[index + 2 :], strict=False):
            if not _SCRIPT_FLAG.fullmatch(flag):
                continue
            if _PLACEHOLDER.search(script):
                shell = word.rsplit("/", 1)[-1]
                raise UsageProblem(
                    f"--sh: {{}} in the script of `{shell} -c` would run the item as shell "
                    f"code; pass it as an argument instead ({shell} -c '... \"$1\" ...' "
                    f"{shell} {{}}), or use --shell, which quotes it"
                )
            break


def _refuse_quoted_placeholder(text: str) -> None:
    """Refuse ``--shell`` with ``"{}"`` or ``'{}'``: the quotes added to each value would
    sit inside the template's, and an item holding a quote would end them (an injection);
    and ``$(( {} ))``: arithmetic expands ``$(...)`` even inside the quotes added.

    >>> _refuse_quoted_placeholder("grep {} | wc -l && echo 'done: {' $(cat {})")
    >>> _refuse_quoted_placeholder('echo "got {name}"')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    manyhands._inputs.UsageProblem: --shell: {name} is inside quotes ("...") in the command...
    >>> _refuse_quoted_placeholder("echo $(( {} + 1 ))")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    manyhands._inputs.UsageProblem: --shell: {} is inside $(( ... )), where the shell...
    """
    quote: str | None = None  # the quote the scan is inside, if any
    # Each $( or $(( it is inside: [its kind, the quote around it, its open parentheses].
    frames: list[list[Any]] = []
    escaped = False
    inside: dict[int, str] = {}
    for at, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif char == "(" and quote is None and frames and text[at - 1 : at] != "$":
            frames[-1][2] += 1  # (a parenthesis within it)
        elif char == "(" and quote != "'" and text[at - 1 : at] == "$":
            kind = "$((" if text[at + 1 : at + 2] == "(" else "$("
            frames.append([kind, quote, 1])  # (a substitution quotes afresh)
            quote = None
        elif char == ")" and quote is None and frames:
            frames[-1][2] -= 1
            if frames[-1][2] <= 0:
                quote = frames.pop()[1]
        elif quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
        arithmetic = quote is None and frames and frames[-1][0] == "$(("
        inside[at] = quote or ("$((" if arithmetic else "")
    for match in _PLACEHOLDER.finditer(text):
        where = inside.get(match.start(), "")
        if where == "$((":
            raise UsageProblem(
                f"--shell: {match.group(0)} is inside $(( ... )), where the shell expands "
                "$(...) in an item even within the quotes manyhands adds: an item would run "
                f"as shell code. Pass it to a command instead (e.g. expr {match.group(0)} + 1)"
            )
        if where:
            raise UsageProblem(
                f"--shell: {match.group(0)} is inside quotes ({where}...{where}) in the command: "
                f"manyhands quotes each value itself, and an item holding a {where} would end "
                f"your quotes and run as shell code. Write {match.group(0)} without quotes "
                f"(e.g. echo {match.group(0)}), or leave --shell out"
            )


def _text(value: Any) -> str:
    """A value as a command argument: a str as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
