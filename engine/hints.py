"""Plain-language hints for the syntax habits analysts bring from JavaScript, GTM and Adobe Tags.

:func:`syntax_hint` looks at the source around a syntax error lark reports and, when it
recognises a habit (``===``, ``&&``, ``'single quotes'``, ``// comments``, an unquoted event
name, …), returns the place to point at and a message that says what to write instead. The
parser (:mod:`engine.parser`) uses it in place of lark's list of expected tokens.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NamedTuple

from engine.diagnostics import suggest

__all__ = ["STATEMENT_KEYWORDS", "Hint", "syntax_hint"]

# Words that start a statement (settings blocks start with their own name).
STATEMENT_KEYWORDS = ("rule", "element", "test", "guard", "setup")

_SMART_QUOTES = "“”„‘’‚«»"
_EVENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_WORD_BEFORE = re.compile(r"^[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]+$")


class Hint(NamedTuple):
    """Where to point (0-based offsets into the text, end exclusive) and what to say."""

    start: int
    end: int
    message: str


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _quoted(text: str, pos: int, closers: str) -> tuple[int, str] | None:
    """The end (exclusive) and contents of a string opened at ``pos`` and closed on its line
    by one of ``closers``."""
    stop = _line_end(text, pos)
    for i in range(pos + 1, stop):
        if text[i] in closers:
            return i + 1, text[pos + 1 : i]
    return None


def _char_hint(text: str, pos: int) -> Hint | None:
    char = text[pos] if pos < len(text) else ""
    after = text[pos + 1] if pos + 1 < len(text) else ""
    if char == "'":
        found = _quoted(text, pos, "'")
        if found is None:
            return Hint(
                pos, pos + 1, 'strings are written in double quotes ("…"), not single quotes'
            )
        end, inner = found
        return Hint(
            pos, end, f"strings are written in double quotes: write \"{inner}\", not '{inner}'"
        )
    if char and char in _SMART_QUOTES:
        found = _quoted(text, pos, _SMART_QUOTES)
        shown = f'"{found[1]}"' if found else '"…"'
        end = found[0] if found else pos + 1
        return Hint(
            pos,
            end,
            f"'{char}' is a typographic quote (as word processors type it); "
            f"strings are written in straight double quotes: {shown}",
        )
    if char == "&":
        width = 2 if after == "&" else 1
        return Hint(pos, pos + width, f"write 'and', not '{'&' * width}': a and b")
    if char == "!" and after != "=":
        return Hint(pos, pos + 1, "write 'not', not '!': not x")
    return None


def _token_hint(
    text: str, pos: int, kind: str, value: str, expected: Collection[str], keywords: dict[str, str]
) -> Hint | None:
    before = text[pos - 1] if pos > 0 else ""
    after = text[pos + len(value)] if pos + len(value) < len(text) else ""
    if value == "=":
        three = text[max(pos - 2, 0) : pos + 1]
        if three in ("===", "!=="):
            return Hint(pos - 2, pos + 1, f"write '{three[:2]}' to compare, not '{three}'")
        if before not in "=!<>" and "COMPARE" in expected:
            return Hint(
                pos, pos + 1, "to compare, write '==', not '=' ('=' only defines an element)"
            )
    if value == "|" and before == "|":
        return Hint(pos - 1, pos + 1, "write 'or', not '||': a or b")
    if value == "/" and (after == "/" or before == "/"):
        start = pos - 1 if before == "/" else pos
        return Hint(start, start + 2, "comments start with '#', not '//'")
    if value == "+" and "NUMBER" in expected:
        number = _NUMBER.match(text, pos + 1)
        if number:
            return Hint(
                pos,
                pos + 1,
                f"a number has no leading '+': write {number.group()}, not +{number.group()}",
            )
    if kind == "NAME" and "STRING" in expected and "NAME" not in expected:
        name = _EVENT_NAME.match(text, pos)
        word = name.group() if name else value
        if "CHANGE" in expected:
            return Hint(
                pos,
                pos + len(word),
                f'event names are quoted: write on "{word}" '
                f"(or 'on change {word}' to watch a data layer value)",
            )
        return Hint(pos, pos + len(word), f'names here are quoted: write "{word}"')
    if kind == "_NL" and "LBRACE" in expected:
        rest = text[pos:].lstrip(" \t\r\n;")
        if rest.startswith("{"):
            start = text.rfind("\n", 0, pos) + 1
            head = text[start:pos].strip()
            return Hint(
                pos,
                pos + 1,
                f"put the '{{' on the same line: write {head} {{",
            )
    if kind == "STRING" and set(expected) <= {"LBRACE", "_NL"}:
        # `rul "x" {`: a misspelt keyword read as the name of a settings block.
        start = text.rfind("\n", 0, pos) + 1
        lead = _WORD_BEFORE.match(text[start:pos])
        if lead and lead.group(1) not in keywords.values():
            best = suggest(lead.group(1), STATEMENT_KEYWORDS)
            if best:
                begin = start + lead.start(1)
                return Hint(
                    begin,
                    begin + len(lead.group(1)),
                    f"unknown keyword '{lead.group(1)}' (did you mean '{best}'?)",
                )
    return None


def syntax_hint(
    text: str,
    pos: int,
    *,
    char: bool = False,
    kind: str = "",
    value: str = "",
    expected: Collection[str] = (),
    keywords: dict[str, str] | None = None,
) -> Hint | None:
    """A hint for the syntax error at offset ``pos``: an unexpected character (``char``) or an
    unexpected token of type ``kind`` and text ``value`` where lark ``expected`` these
    terminals. None when the error is not a habit this module knows."""
    if char:
        return _char_hint(text, pos)
    return _token_hint(text, pos, kind, value, expected, keywords or {})
