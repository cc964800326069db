"""Source spans and compiler-style diagnostics.

A :class:`Diagnostic` renders like a compiler message::

    rules/commerce.rules:12:18: error: unknown element 'cart_totl' (did you mean 'cart_total'?)
       12 |   when cart_totl > 0
          |        ^~~~~~~~~
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

Severity = Literal["error", "warning"]


class Span(NamedTuple):
    """A region of a source file: 1-based line and column, end exclusive.

    A named tuple rather than a frozen dataclass: the parser makes one per token, and a tuple
    is built several times faster.
    """

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of ``other``."""
        # tuple.__new__ directly: this runs for most syntax-tree nodes.
        return _new_tuple(Span, (self[0], self[1], self[2], other[3], other[4]))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One load-time problem, anchored in the source."""

    span: Span
    message: str
    severity: Severity = "error"
    source_line: str | None = None

    def render(self) -> str:
        head = f"{self.span}: {self.severity}: {self.message}"
        if self.source_line is None:
            return head
        line = self.source_line.rstrip("\r\n").expandtabs(1)
        number = str(self.span.line)
        gutter = " " * len(number)
        start = max(self.span.column - 1, 0)
        if self.span.end_line == self.span.line and self.span.end_column > self.span.column:
            width = self.span.end_column - self.span.column
        else:
            width = max(len(line) - start, 1)
        width = max(1, min(width, max(len(line) - start, 1)))
        caret = " " * start + "^" + "~" * (width - 1)
        return f"{head}\n {number} | {line}\n {gutter} | {caret}"

    def __str__(self) -> str:
        return self.render()


_new_tuple = tuple.__new__


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``word``, if one is close enough to be a likely typo."""
    pool = list(dict.fromkeys(candidates))
    if not pool:
        return None
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return lowered[word.lower()]
    import difflib  # here: only a problem needs a suggestion, and `check` starts without it

    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close candidate exists, else an empty string."""
    best = suggest(word, candidates)
    return f" (did you mean '{best}'?)" if best else ""


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n".join(d.render() for d in diagnostics)
