"""Rule source → syntax tree (:mod:`engine.ast`).

The grammar lives in ``grammar.lark``. lark's LALR parser runs with this module's
:class:`Builder` as its inline transformer, so the parse produces AST nodes directly, with no
intermediate parse tree. Syntax errors become :class:`~engine.diagnostics.Diagnostic` objects;
nothing lark raises escapes :func:`parse`.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

import lark
from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from engine import ast
from engine.diagnostics import Diagnostic, Span
from engine.hints import Hint, syntax_hint
from engine.values import INT_MAX

__all__ = [
    "ELEMENT_DEFINITION",
    "GRAMMAR",
    "RULE_DEFINITION",
    "ParseResult",
    "parse",
    "parse_template",
]

GRAMMAR = Path(__file__).with_name("grammar.lark").read_text(encoding="utf-8")

# Where a file defines an element or a rule, read from its text without parsing it (a file
# being typed, or one with syntax errors): group 1 is the name.
ELEMENT_DEFINITION = re.compile(r"^[ \t]*element[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]*=", re.M)
RULE_DEFINITION = re.compile(r'^[ \t]*rule[ \t]+"((?:[^"\\\n]|\\.)*)"', re.M)

# Tokens after which a newline cannot end a clause: the expression or list goes on.
_CONTINUES_AFTER = frozenset(
    {
        "COMMA",
        "LBRACE",
        "LSQB",
        "LPAR",
        "COLON",
        "EQUAL",
        "VBAR",
        "COMPARE",
        "CONTAINS",
        "WITH",
        "IN",
        "NOT",
        "AND",
        "OR",
        "PLUS",
        "MINUS",
        "STAR",
        "SLASH",
        "MODULO",
        "MATCHES",
        "DOT",
        "IF",
        "THEN",
        "ELSE",
    }
)
# A line starting with one of these continues the previous one.
_CONTINUATION = re.compile(r"(?:and|or)\b|[|}\])]")
# ... and, inside an unfinished `if … then … else …`, a line starting with `then` or `else`.
_CONDITIONAL_CONTINUATION = re.compile(r"(?:then|else)\b")
_OPENERS = {"LPAR": "(", "LSQB": "[", "LBRACE": "{"}
_CLOSERS = frozenset({"RPAR", "RSQB", "RBRACE"})
_CLOSING = {"(": ")", "[": "]", "{": "}"}
_new_tuple = tuple.__new__


class Newlines:
    """lark post-lexer: drops the newlines that cannot separate anything (see grammar.lark)."""

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.text = ""
        self.open: list[Token] = []  # unclosed brackets, for "is a '}' missing?"

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        text = self.text
        previous: str | None = None
        brackets: list[str] = []
        self.open = opened = []
        ifs = 0  # `if`s still waiting for their `else`
        for token in stream:
            kind = token.type
            if kind == "_NL":
                if (
                    previous is None
                    or previous in _CONTINUES_AFTER
                    or (brackets and brackets[-1] == "(")
                    or _CONTINUATION.match(text, token.end_pos)  # type: ignore[arg-type]
                    or (
                        ifs and _CONDITIONAL_CONTINUATION.match(text, token.end_pos)  # type: ignore[arg-type]
                    )
                ):
                    continue
            elif kind == "IF":
                ifs += 1
            elif kind == "ELSE" and ifs:
                ifs -= 1
            elif kind in _OPENERS:
                brackets.append(_OPENERS[kind])
                opened.append(token)
            elif kind in _CLOSERS and brackets:
                brackets.pop()
                opened.pop()
            previous = kind
            yield token


# ------------------------------------------------------------------ strings
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)")
_TOKEN = re.compile(r"%%|%([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+|\[-?\d+\])*)%")
_MAX_INDEX_DIGITS = 18
_PATH_STEP = re.compile(r"\.([A-Za-z0-9_]+)|\[(-?\d+)\]")


def _unescape(raw: str, span: Span, errors: list[Diagnostic], lines: list[str]) -> str:
    """Decode the escapes of a string literal's inside (quotes already removed)."""
    if "\\" not in raw:
        return raw

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in _ESCAPES:
            return _ESCAPES[code]
        if len(code) == 5:
            return chr(int(code[1:], 16))  # surrogates are paired (or refused) below
        column = span.column + 1 + match.start()
        where = Span(span.file, span.line, column, span.line, column + 2)
        errors.append(_diag(where, f"unknown escape '\\{code}' in string", lines))
        return code

    decoded = _ESCAPE.sub(replace, raw)
    if _SURROGATE.search(decoded):
        try:  # a \uD83D\uDE00 pair is one character, as in JSON
            decoded = decoded.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            errors.append(_diag(span, "string has an unpaired \\u surrogate escape", lines))
            decoded = _SURROGATE.sub("\ufffd", decoded)
    return decoded


_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_template(
    raw: str, span: Span, errors: list[Diagnostic], lines: list[str]
) -> tuple[str, tuple[str | ast.TemplatePart, ...] | None]:
    """Decode a string literal's inside and split out its ``%tokens%``.

    Returns the decoded text and, when it holds at least one token, its parts: text and
    :class:`ast.TemplatePart` in order, ``%%`` already turned into ``%``.
    """
    if "%" not in raw:
        return _unescape(raw, span, errors, lines), None
    parts: list[str | ast.TemplatePart] = []
    text: list[str] = []
    last = 0
    has_token = False
    for match in _TOKEN.finditer(raw):
        text.append(_unescape(raw[last : match.start()], span, errors, lines))
        last = match.end()
        if match.group(1) is None:
            text.append("%")
            continue
        has_token = True
        before = "".join(text)
        if before:
            parts.append(before)
        text = []
        column = span.column + 1 + match.start()
        where = Span(span.file, span.line, column, span.line, column + len(match.group(0)))
        parts.append(ast.TemplatePart(_token_ref(match.group(1), where, errors, lines), where))
    text.append(_unescape(raw[last:], span, errors, lines))
    joined = "".join(text)
    if joined:
        parts.append(joined)
    value = "".join(p if isinstance(p, str) else "%" + _token_text(p.ref) + "%" for p in parts)
    return value, (tuple(parts) if has_token else None)


def _token_ref(text: str, span: Span, errors: list[Diagnostic], lines: list[str]) -> ast.Ref:
    head = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text)
    assert head is not None
    steps: list[ast.Step] = []
    for match in _PATH_STEP.finditer(text, head.end()):
        if match.group(1) is not None:
            steps.append(match.group(1))
        elif len(match.group(2).lstrip("-")) > _MAX_INDEX_DIGITS:
            # int() refuses 4,300+ digits, and no list is that long anyway.
            shown = text if len(text) <= 40 else text[:40] + "…"
            errors.append(_diag(span, f"list index in %{shown}% is out of range", lines))
            steps.append(0)
        else:
            steps.append(int(match.group(2)))
    return _make_ref(head.group(0), span, tuple(steps), span)


def _token_text(ref: ast.Ref) -> str:
    head = ref.name if ref.root == "element" else ref.root
    return str(head) + "".join(f".{s}" if isinstance(s, str) else f"[{s}]" for s in ref.path)


def _make_ref(name: str, span: Span, path: ast.Path, name_span: Span) -> ast.Ref:
    if name == "state":
        return ast.Ref(span, "state", path)
    if name == "event":
        return ast.Ref(span, "event", path)
    if name == "request":
        return ast.Ref(span, "request", path)
    return ast.Ref(span, "element", path, name, name_span)


def source_lines(text: str) -> list[str]:
    """The file's lines as lark numbers them: split at ``\n`` only (``str.splitlines`` also
    splits at form feeds and other separators, which would misquote later lines)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _last_line(lines: list[str]) -> int:
    """The number of the last line with text: where an unexpected end of file is shown."""
    last = len(lines)
    while last > 1 and not lines[last - 1].strip():
        last -= 1
    return last


def _diag(span: Span, message: str, lines: list[str]) -> Diagnostic:
    line = lines[span.line - 1] if 0 < span.line <= len(lines) else None
    return Diagnostic(span, message, source_line=line)


# ------------------------------------------------------------------ the transformer
class _On:
    __slots__ = ("span", "triggers")

    def __init__(self, span: Span, triggers: tuple[ast.Trigger, ...]) -> None:
        self.span = span
        self.triggers = triggers


_S = TypeVar("_S", bound=ast.Statement)


class _SkipGuard:
    __slots__ = ("guards", "span")

    def __init__(self, span: Span, guards: tuple[tuple[str, Span], ...]) -> None:
        self.span = span
        self.guards = guards


class _Named:
    """A small result: a name (or number) with its span, e.g. ``order 10`` or ``keep visitor``."""

    __slots__ = ("span", "value")

    def __init__(self, span: Span, value: Any) -> None:
        self.span = span
        self.value = value


class Builder(lark.Transformer[Token, Any]):
    """Builds AST nodes while lark parses. One instance per parse (it holds the file's text)."""

    def __init__(self, file: str, text: str) -> None:
        super().__init__(visit_tokens=False)
        self.file = file
        self.lines = source_lines(text)
        self.errors: list[Diagnostic] = []
        self.statements: list[ast.Statement] = []  # top-level statements, as they complete

    # -- helpers
    def span(self, token: Token) -> Span:
        # tuple.__new__ directly: one Span per token, the hottest allocation of a load.
        return _new_tuple(
            Span, (self.file, token.line, token.column, token.end_line, token.end_column)
        )

    def between(self, first: Token, last: Token) -> Span:
        """From the start of ``first`` to the end of ``last``, in one allocation."""
        return _new_tuple(
            Span, (self.file, first.line, first.column, last.end_line, last.end_column)
        )

    def upto(self, first: Token, end: Span) -> Span:
        return _new_tuple(Span, (self.file, first.line, first.column, end[3], end[4]))

    def reach(self, start: Span, last: Token) -> Span:
        return _new_tuple(Span, (start[0], start[1], start[2], last.end_line, last.end_column))

    def string(self, token: Token) -> str:
        value, _ = parse_template(token.value[1:-1], self.span(token), self.errors, self.lines)
        return value

    def source(self, span: Span) -> str:
        if span.line == span.end_line:
            return self.lines[span.line - 1][span.column - 1 : span.end_column - 1]
        first = self.lines[span.line - 1][span.column - 1 :]
        middle = self.lines[span.line : span.end_line - 1]
        last = self.lines[span.end_line - 1][: span.end_column - 1]
        return " ".join(part.strip() for part in [first, *middle, last])

    def number(self, token: Token) -> int | float:
        text = token.value
        if any(c in text for c in ".eE"):
            value = float(text)
            if not math.isfinite(value):
                self.errors.append(
                    _diag(self.span(token), f"number {text} is out of range", self.lines)
                )
                return 0
            return value
        try:
            number = int(text)
        except ValueError:  # more digits than Python converts
            number = INT_MAX + 1
        if number > INT_MAX:  # a value pushes could not carry: exports would not restore
            self.errors.append(
                _diag(self.span(token), "number is too large (64 bits at most)", self.lines)
            )
            return 0
        return number

    def integer(self, token: Token, what: str) -> int:
        value = self.number(token)
        if isinstance(value, float):
            if value.is_integer() and "e" not in token.value.lower():
                return int(value)
            self.errors.append(
                _diag(
                    self.span(token),
                    f"{what} must be a whole number, not {token.value}",
                    self.lines,
                )
            )
            return int(value)
        return value

    # -- top level
    def start(self, children: list[Any]) -> tuple[ast.Statement, ...]:
        # The statements were collected as they completed (see `statements`): a parse that
        # recovers from a syntax error keeps the ones before it.
        return tuple(self.statements)

    def _completed(self, statement: _S) -> _S:
        self.statements.append(statement)
        return statement

    def settings(self, c: list[Any]) -> ast.Settings:
        kind, fields = c
        kind_span = self.span(kind)
        return self._completed(
            ast.Settings(kind_span.to(fields.span), str(kind), kind_span, fields)
        )

    def element(self, c: list[Any]) -> ast.Element:
        keyword, name, expr, keep = c
        end = keep.span if keep is not None else expr.span
        return self._completed(
            ast.Element(
                self.upto(keyword, end),
                str(name),
                self.span(name),
                expr,
                keep.value if keep is not None else None,
                keep.span if keep is not None else None,
            )
        )

    def guard(self, c: list[Any]) -> ast.Guard:
        keyword, name, *clauses, close = c
        conditions = tuple(clause for clause in clauses if clause is not None)
        return self._completed(
            ast.Guard(self.between(keyword, close), self.string(name), self.span(name), conditions)
        )

    def setup(self, c: list[Any]) -> ast.Setup:
        keyword, *steps, close = c
        steps = [s for s in steps if s is not None]
        return self._completed(ast.Setup(self.between(keyword, close), tuple(steps)))

    def skip_guard(self, c: list[Any]) -> _SkipGuard:
        keyword, *names = c
        return _SkipGuard(
            self.between(keyword, names[-1]),
            tuple((self.string(n), self.span(n)) for n in names),
        )

    def keep(self, c: list[Any]) -> _Named:
        return _Named(self.span(c[1]), str(c[1]))

    def order(self, c: list[Any]) -> _Named:
        return _Named(self.span(c[1]), self.integer(c[1], "a rule's order"))

    def rule(self, c: list[Any]) -> ast.Rule:
        keyword, name, order, *clauses, close = c
        triggers: list[ast.Trigger] = []
        conditions: list[ast.Condition] = []
        samples: list[ast.Sample] = []
        limits: list[ast.Limit] = []
        actions: list[ast.Action] = []
        skipped: list[tuple[str, Span]] = []
        for clause in clauses:
            if clause is None:
                continue
            if isinstance(clause, _SkipGuard):
                skipped.extend(clause.guards)
            elif isinstance(clause, _On):
                triggers.extend(clause.triggers)
            elif isinstance(clause, ast.Condition):
                conditions.append(clause)
            elif isinstance(clause, ast.Sample):
                samples.append(clause)
            elif isinstance(clause, ast.Limit):
                limits.append(clause)
            else:
                actions.append(clause)
        return self._completed(
            ast.Rule(
                self.between(keyword, close),
                self.string(name),
                self.span(name),
                order.value if order is not None else None,
                order.span if order is not None else None,
                tuple(triggers),
                tuple(conditions),
                tuple(samples),
                tuple(limits),
                tuple(actions),
                tuple(skipped),
            )
        )

    def on(self, c: list[Any]) -> _On:
        keyword, *triggers = c
        return _On(self.upto(keyword, triggers[-1].span), tuple(triggers))

    def event_trigger(self, c: list[Any]) -> ast.EventTrigger:
        return ast.EventTrigger(self.span(c[0]), self.string(c[0]))

    def change_trigger(self, c: list[Any]) -> ast.ChangeTrigger:
        path, span = c[1]
        if len(path) == 1 and isinstance(path[0], str) and self.source(span).startswith('"'):
            # `on change "cart.total"` reads as `on change cart.total`, as `on "…"` is quoted
            # (a key with a dot in it is watched with brackets: `on change cart["a.b"]`)
            path = tuple(path[0].split("."))
        if path and path[0] == "state":  # `change state.cart` reads as `change cart`
            path = path[1:]
        return ast.ChangeTrigger(self.upto(c[0], span), path)

    def _condition(self, c: list[Any], negated: bool) -> ast.Condition:
        keyword, expr = c
        return ast.Condition(self.upto(keyword, expr.span), expr, negated, self.source(expr.span))

    def when(self, c: list[Any]) -> ast.Condition:
        return self._condition(c, False)

    def unless(self, c: list[Any]) -> ast.Condition:
        return self._condition(c, True)

    def sample(self, c: list[Any]) -> ast.Sample:
        keyword, percent = c
        return ast.Sample(self.between(keyword, percent), float(percent.value[:-1]))

    def limit(self, c: list[Any]) -> ast.Limit:
        keyword, count, unit, keys = c
        return ast.Limit(
            self.upto(keyword, keys[-1].span) if keys else self.between(keyword, unit),
            self.integer(count, "a limit"),
            self.span(count),
            str(unit),
            self.span(unit),
            tuple(keys or ()),
        )

    def limit_by(self, c: list[Any]) -> list[ast.Expr]:
        return c

    def send(self, c: list[Any]) -> ast.Send:
        keyword, destination, fields = c
        return ast.Send(
            self.upto(keyword, fields.span), str(destination), self.span(destination), fields
        )

    def push(self, c: list[Any]) -> ast.Push:
        keyword, value = c
        return ast.Push(self.upto(keyword, value.span), value)

    # -- tests
    def test(self, c: list[Any]) -> ast.Test:
        keyword, name, *steps, close = c
        steps = [s for s in steps if s is not None]
        span = self.between(keyword, close)
        return self._completed(ast.Test(span, self.string(name), self.span(name), tuple(steps)))

    def test_session(self, c: list[Any]) -> ast.TestSession:
        return ast.TestSession(self.between(c[0], c[1]), self.string(c[1]))

    def test_visitor(self, c: list[Any]) -> ast.TestVisitor:
        keyword, value = c
        return ast.TestVisitor(self.upto(keyword, value.span), value)

    def test_consent(self, c: list[Any]) -> ast.TestConsent:
        return ast.TestConsent(self.between(c[0], c[1]), self.string(c[1]), self.span(c[1]))

    def from_rule(self, c: list[Any]) -> _Named:
        return _Named(self.span(c[0]), self.string(c[0]))

    def expect_send(self, c: list[Any]) -> ast.ExpectSend:
        keyword, destination, source, fields = c
        fields_span, items = fields
        return ast.ExpectSend(
            self.upto(keyword, fields_span),
            str(destination),
            self.span(destination),
            source.value if source else None,
            source.span if source else None,
            items,
        )

    def _count(
        self, keyword: Token, count: int, count_span: Span, rest: list[Any]
    ) -> ast.ExpectCount:
        destination = next((t for t in rest if isinstance(t, Token) and t.type == "NAME"), None)
        source = next((t for t in rest if isinstance(t, _Named)), None)
        end = source.span if source else self.span(destination) if destination else count_span
        return ast.ExpectCount(
            self.upto(keyword, end),
            count,
            count_span,
            str(destination) if destination is not None else None,
            self.span(destination) if destination is not None else None,
            source.value if source else None,
            source.span if source else None,
        )

    def expect_count(self, c: list[Any]) -> ast.ExpectCount:
        keyword, count, *rest = c
        return self._count(
            keyword, self.integer(count, "an expected count"), self.span(count), rest
        )

    def expect_none(self, c: list[Any]) -> ast.ExpectCount:
        keyword, no, *rest = c
        return self._count(keyword, 0, self.span(no), rest)

    def expect_rule(self, c: list[Any]) -> ast.ExpectRule:
        keyword, name, status = c
        return ast.ExpectRule(
            self.between(keyword, status),
            self.string(name),
            self.span(name),
            str(status),
            self.span(status),
        )

    def expect_fields(self, c: list[Any]) -> tuple[Span, tuple[ast.ExpectField, ...]]:
        fields = tuple(f for f in c if isinstance(f, ast.ExpectField))
        tokens = [t for t in c if isinstance(t, Token)]
        span = self.between(tokens[0], tokens[-1])
        return span, fields

    def expect_field(self, c: list[Any]) -> ast.ExpectField:
        (path, path_span), value = c
        return ast.ExpectField(path_span.to(value.span), path, path_span, value)

    def data_path(self, c: list[Token]) -> tuple[ast.Path, Span]:
        steps: list[ast.Step] = []
        for token in c:
            if token.type == "NAME":
                steps.append(str(token))
            elif token.type == "STRING":
                steps.append(self.string(token))
            else:
                steps.append(self.integer(token, "a list index"))
        return tuple(steps), self.between(c[0], c[-1])

    # -- expressions
    def _logical(self, op: Any, c: list[Any]) -> ast.Logical:
        operands: list[ast.Expr] = []
        for operand in c:  # `(a and b) and c` is one chain of three
            if isinstance(operand, ast.Logical) and operand.op == op:
                operands.extend(operand.operands)
            else:
                operands.append(operand)
        return ast.Logical(c[0].span.to(c[-1].span), op, tuple(operands))

    def or_(self, c: list[Any]) -> ast.Logical:
        return self._logical("or", c)

    def and_(self, c: list[Any]) -> ast.Logical:
        return self._logical("and", c)

    def not_(self, c: list[Any]) -> ast.Unary:
        keyword, operand = c
        return ast.Unary(self.upto(keyword, operand.span), "not", operand)

    _OPS: ClassVar[dict[str, str]] = {
        "CONTAINS": "contains",
        "STARTS": "starts with",
        "ENDS": "ends with",
        "IN": "in",
    }

    def compare(self, c: list[Any]) -> ast.Binary:
        left, op, *rest = c
        right = rest[-1]
        name = op.value if op.type == "COMPARE" else self._OPS[op.type]
        op_span = self.span(op)
        if len(rest) == 2:  # `starts with` / `ends with`
            op_span = self.reach(op_span, rest[0])
        return ast.Binary(left.span.to(right.span), name, left, right, op_span)

    def not_in(self, c: list[Any]) -> ast.Binary:
        left, not_, in_, right = c
        return ast.Binary(left.span.to(right.span), "not in", left, right, self.between(not_, in_))

    def matches(self, c: list[Any]) -> ast.Matches:
        left, pattern = c
        span = self.span(pattern)
        return ast.Matches(left.span.to(span), left, self.string(pattern), span)

    def exists(self, c: list[Any]) -> ast.Unary:
        operand, keyword = c
        return ast.Unary(self.reach(operand.span, keyword), "exists", operand)

    def arith(self, c: list[Any]) -> ast.Binary:
        left, op, right = c
        return ast.Binary(left.span.to(right.span), op.value, left, right, self.span(op))

    def neg(self, c: list[Any]) -> ast.Unary:
        op, operand = c
        return ast.Unary(self.upto(op, operand.span), "-", operand)

    def filter(self, c: list[Any]) -> ast.Filter:
        operand, name, arg = c
        name_span = self.span(name)
        end = arg.span if arg is not None else name_span
        return ast.Filter(operand.span.to(end), operand, str(name), name_span, arg)

    def _extend(self, operand: Any, steps: ast.Path, end: Span) -> ast.Expr:
        span = operand.span.to(end)
        if isinstance(operand, ast.Ref):
            return ast.Ref(
                span, operand.root, operand.path + steps, operand.name, operand.name_span
            )
        return ast.GetPath(span, operand, steps)

    def path(self, c: list[Any]) -> ast.Expr:
        operand, *steps = c
        path: list[ast.Step] = []
        wildcards = 0
        for token in steps:
            kind = token.type
            if kind == "NAME":
                path.append(token.value)
            elif kind == "STRING":
                path.append(self.string(token))
            elif kind == "NUMBER":
                path.append(self.integer(token, "a list index"))
            elif kind == "STAR":  # `[*]`: the steps so far give a list; the rest maps over it
                operand = self._each(operand, tuple(path), self.span(token), wildcards)
                path = []
                wildcards += 1
        if wildcards:
            return self._each(operand, tuple(path), self.span(steps[-1]), wildcards)
        return self._extend(operand, tuple(path), self.span(steps[-1]))

    def _each(self, operand: Any, steps: ast.Path, end: Span, wildcards: int) -> ast.Expr:
        """``steps`` read from ``operand``: directly before the first ``[*]`` (``wildcards`` 0),
        else from each item of the list(s) the ``[*]`` before them stands for."""
        if not wildcards:  # the steps before the first `[*]`
            return self._extend(operand, steps, end) if steps else operand
        return ast.Each(operand.span.to(end), operand, steps, wildcards > 1)

    def conditional(self, c: list[Any]) -> ast.Conditional:
        keyword, test, _then, yes, _else, no = c
        return ast.Conditional(self.upto(keyword, no.span), test, yes, no)

    def string_(self, c: list[Token]) -> ast.Literal:
        token = c[0]
        span = self.span(token)
        value, parts = parse_template(token.value[1:-1], span, self.errors, self.lines)
        return ast.Literal(span, value, parts)

    def number_(self, c: list[Token]) -> ast.Literal:
        return ast.Literal(self.span(c[0]), self.number(c[0]))

    def true(self, c: list[Token]) -> ast.Literal:
        return ast.Literal(self.span(c[0]), True)

    def false(self, c: list[Token]) -> ast.Literal:
        return ast.Literal(self.span(c[0]), False)

    def null(self, c: list[Token]) -> ast.Literal:
        return ast.Literal(self.span(c[0]), None)

    def name(self, c: list[Token]) -> ast.Ref:
        span = self.span(c[0])
        return _make_ref(str(c[0]), span, (), span)

    def call(self, c: list[Any]) -> ast.Call:
        name, *args, close = c
        args = [a for a in args if a is not None]
        return ast.Call(self.between(name, close), str(name), tuple(args))

    def list_value(self, c: list[Any]) -> ast.ListExpr:
        items = tuple(i for i in c if not isinstance(i, Token) and i is not None)
        return ast.ListExpr(self.between(c[0], c[-1]), items)

    def object_value(self, c: list[Any]) -> ast.ObjectExpr:
        pairs = tuple(p for p in c if isinstance(p, ast.Pair))
        return ast.ObjectExpr(self.between(c[0], c[-1]), pairs)

    def pair(self, c: list[Any]) -> ast.Pair:
        (key, key_span), value = c
        return ast.Pair(key_span.to(value.span), key, key_span, value)

    def key(self, c: list[Token]) -> tuple[tuple[str, ...], Span]:
        if len(c) == 1 and c[0].type == "NAME":  # the common case: one plain name
            return (c[0].value,), self.span(c[0])
        parts = tuple(self.string(t) if t.type == "STRING" else t.value for t in c)
        return parts, self.between(c[0], c[-1])


# ------------------------------------------------------------------ parsing
class ParseResult:
    """The syntax tree of one file (``None`` when it does not parse) and the problems found;
    ``statements`` are those that parsed, also when others did not (for an editor)."""

    __slots__ = ("diagnostics", "file", "statements")

    def __init__(
        self,
        file: ast.File | None,
        diagnostics: list[Diagnostic],
        statements: tuple[ast.Statement, ...] | None = None,
    ) -> None:
        self.file = file
        self.diagnostics = diagnostics
        self.statements = (
            statements if statements is not None else (file.statements if file else ())
        )


_MAX_SYNTAX_ERRORS = 50
# A line that starts a statement: a statement keyword, or a settings block's name and `{`.
_STATEMENT_START = re.compile(
    r"(?:rule|element|test|guard)\b|setup[ \t]*\{|(?:edge|sitecore|datalayer|consent)[ \t]*\{"
)
_BLANK = re.compile(r"[^\n]")
_WORD = re.compile(r"[A-Za-z_]+")
# A string, a comment, or any other run of text: what a line holds, strings kept whole.
_PIECES = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[^"#\n]+')


def _last_code(text: str) -> int | None:
    """The offset of the last character that is neither blank nor in a comment."""
    last = None
    for match in _PIECES.finditer(text):
        piece = match.group(0)
        if piece.startswith("#"):
            continue
        stripped = piece.rstrip()
        if stripped:
            last = match.start() + len(stripped) - 1
    return last


_CONTINUES_AFTER_CHARS = frozenset("+-*/%|,:=([{<>!")
_CODE = re.compile(r"\S")


def _error_position(error: UnexpectedInput, text: str) -> int:
    if isinstance(error, UnexpectedToken):
        return len(text) if error.token.type == "$END" else error.token.start_pos or 0
    if isinstance(error, UnexpectedCharacters):
        return error.pos_in_stream or 0
    return len(text)


def _end_of(statements: list[ast.Statement], text: str) -> int:
    """The offset just after the last complete statement (0 when there is none)."""
    if not statements:
        return 0
    span = statements[-1].span
    return _offset(text, span.end_line, span.end_column)


def _code_start(text: str, position: int) -> int:
    """The first offset at or after ``position`` that is neither blank nor a comment."""
    while True:
        match = _CODE.search(text, position)
        if match is None:
            return len(text)
        if text[match.start()] != "#":
            return match.start()
        position = text.find("\n", match.start())
        if position < 0:
            return len(text)


def _next_statement(text: str, start: int, stop: int | None = None) -> int | None:
    """The first line start in ``start..stop`` (inclusive) that opens a statement."""
    for match in _STATEMENT_START.finditer(text, start):
        at = match.start()
        if stop is not None and at > stop:
            return None
        if at == 0 or text[at - 1] == "\n":
            return at
    return None


def _offset(text: str, line: int, column: int) -> int:
    """The 0-based offset of a 1-based line and column."""
    start = 0
    for _ in range(line - 1):
        start = text.index("\n", start) + 1
    return start + column - 1


_READABLE = {
    "_NL": "end of line",
    "$END": "end of file",
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "PERCENT": "a percentage",
    "COMPARE": "a comparison",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "DOT": "'.'",
    "VBAR": "'|'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "MODULO": "'%'",
}


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a 0-based offset into ``text``."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _readable(kind: str) -> str:
    return _READABLE.get(kind, f"'{kind.lower()}'")


def _expected(names: set[str] | frozenset[str]) -> str:
    shown = sorted({_readable(n) for n in names if not n.startswith("__")})
    if len(shown) > 8:
        shown = [*shown[:8], "…"]
    return ", ".join(shown)


def _grammar_cache() -> str | bool:
    """Where lark keeps its analysis of the grammar between processes (about 0.2 s of every
    start otherwise): a file in the user's cache folder, checked by lark against the grammar's
    digest, so a changed grammar is analysed again. ``False`` when no such folder can be made."""
    import os
    import sys

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "tagengine"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    version = f"{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"
    return str(folder / f"grammar-{version}.lark")


class _Parser:
    """The compiled grammar plus its transformer. lark's inline transformer is bound at
    construction, so parses take turns through a lock (they hold the GIL anyway)."""

    def __init__(self) -> None:
        self.builder = Builder("<rules>", "")
        self.newlines = Newlines()
        self.lark = lark.Lark(
            GRAMMAR,
            parser="lalr",
            lexer="contextual",
            postlex=self.newlines,
            transformer=self.builder,
            maybe_placeholders=True,
            cache=_grammar_cache(),
        )
        self.keywords = {
            t.name: t.pattern.value for t in self.lark.terminals if t.pattern.type == "str"
        }
        self.lock = threading.Lock()

    def parse(self, text: str, filename: str) -> ParseResult:
        """Parse ``text``; after a syntax error, go on from the next statement, so one pass
        reports every broken statement of the file (at most ``_MAX_SYNTAX_ERRORS``)."""
        with self.lock:
            builder = self.builder
            builder.file = filename
            builder.lines = source_lines(text)
            builder.errors = []
            statements: list[ast.Statement] = []
            syntax: list[Diagnostic] = []
            source = text
            try:
                while True:
                    builder.statements = []
                    self.newlines.text = source
                    try:
                        self.lark.parse(source)
                    except UnexpectedInput as error:
                        statements.extend(builder.statements)
                        position = _error_position(error, source)
                        begin = _code_start(source, _end_of(builder.statements, source))
                        inner = _next_statement(source, begin + 1, position)
                        syntax.append(self.syntax_error(error, filename, text, begin, inner))
                        resume = (
                            inner if inner is not None else _next_statement(source, position + 1)
                        )
                        if resume is not None and len(syntax) >= _MAX_SYNTAX_ERRORS:
                            # Said, not silently dropped: where checking stopped.
                            line, _ = _position(text, resume)
                            syntax.append(
                                Diagnostic(
                                    Span(filename, line, 1, line, 2),
                                    f"stopped after {_MAX_SYNTAX_ERRORS} syntax errors: "
                                    f"the file is not checked from line {line} on",
                                    source_line=builder.lines[line - 1],
                                )
                            )
                            break
                        if resume is None:
                            break
                        # Everything before `resume` has been parsed or reported: blank it
                        # (keeping line ends, so positions stay true) and parse the rest.
                        source = _BLANK.sub(" ", source[:resume]) + source[resume:]
                        continue
                    statements.extend(builder.statements)
                    break
            finally:
                self.newlines.text = ""
                builder.statements = []
            if syntax:
                problems = sorted([*builder.errors, *syntax], key=lambda d: d.span[1:3])
                return ParseResult(None, problems, tuple(statements))
            return ParseResult(ast.File(filename, tuple(statements)), builder.errors)

    def syntax_error(
        self,
        error: UnexpectedInput,
        filename: str,
        text: str,
        begin: int = 0,
        interrupted: int | None = None,
    ) -> Diagnostic:
        """The diagnostic for ``error``. ``interrupted`` is where a new statement starts inside
        the broken one (which began at ``begin``): the problem is before it, not at the token
        lark stopped at."""
        lines = source_lines(text)
        if interrupted is not None:
            return self.unfinished(filename, text, lines, begin, interrupted)
        line = max(1, min(getattr(error, "line", 1) or 1, len(lines)))
        column = max(1, getattr(error, "column", 1) or 1)
        end = column + 1
        if isinstance(error, UnexpectedCharacters):
            position = error.pos_in_stream or 0
            char = text[position] if position < len(text) else ""
            if char == '"':
                message = "unterminated string (a string ends with '\"' on the same line)"
                end = len(lines[line - 1]) + 1
            else:
                message = f"unexpected character {char!r}"
                if error.allowed:
                    message += f"; expected {_expected(error.allowed)}"
        elif isinstance(error, UnexpectedToken):
            token = error.token
            if token.type == "$END":
                line = _last_line(lines)
                column = len(lines[line - 1]) + 1
                end = column + 1
                message = f"unexpected end of file; expected {_expected(error.expected)}"
                message += self.unclosed()
                last = _last_code(text)
                if (
                    not self.newlines.open
                    and last is not None
                    and text[last] in _CONTINUES_AFTER_CHARS
                ):
                    line, column = _position(text, last)
                    end = column + 1
                    follows = "a filter" if text[last] == "|" else "a value"
                    message = f"the file ends after '{text[last]}': {follows} must follow it"
            else:
                end = (
                    (token.end_column or column + 1) if token.end_line == token.line else column + 1
                )
                shown = "end of line" if token.type == "_NL" else repr(str(token))
                message = f"unexpected {shown}; expected {_expected(error.expected)}"
                if token.type == "NAME":
                    keywords = [self.keywords[n] for n in error.expected if n in self.keywords]
                    from engine.diagnostics import did_you_mean

                    suggestion = did_you_mean(str(token), keywords)
                    if suggestion:  # the likely fix says more than the list of tokens
                        message = f"unexpected {shown}{suggestion}"
        elif isinstance(error, UnexpectedEOF):
            line = _last_line(lines)
            column = len(lines[line - 1]) + 1
            end = column + 1
            message = f"unexpected end of file; expected {_expected(set(error.expected))}"
            message += self.unclosed()
        else:  # pragma: no cover - lark has no other kind
            message = str(error)
        found = self.hint(error, text)
        if found is not None:
            line, column = _position(text, found.start)
            end = column + max(found.end - found.start, 1)
            message = found.message
        span = Span(filename, line, column, line, max(end, column + 1))
        return Diagnostic(span, message, source_line=lines[line - 1])

    def unfinished(
        self, filename: str, text: str, lines: list[str], begin: int, interrupted: int
    ) -> Diagnostic:
        """A statement that a new statement's line cuts short: an unclosed bracket, or an
        expression that goes on (a line ending with an operator)."""
        next_line, _ = _position(text, interrupted)
        opened = [t for t in self.newlines.open if (t.start_pos or 0) < interrupted]
        if opened:
            token = opened[-1]
            start = token.start_pos or 0
            message = (
                f"unclosed '{token}' opened at line {token.line}: the statement at line "
                f"{next_line} starts before its closing '{_CLOSING[str(token)]}'"
            )
            end = start + 1
        else:
            end = len(text[:interrupted].rstrip())
            start = end - 1
            what = _WORD.match(text, begin)
            kind = what.group(0) if what is not None else "statement"
            kind = kind if kind in ("rule", "element", "test", "guard", "setup") else "block"
            last = text[start]
            message = (
                f"this {kind} is unfinished: its line ends with '{last}', so the expression "
                f"goes on, but line {next_line} starts the next statement"
                if last in _CONTINUES_AFTER_CHARS
                else f"this {kind} is unfinished when line {next_line} starts the next statement"
            )
        line, column = _position(text, start)
        span = Span(filename, line, column, line, column + max(end - start, 1))
        return Diagnostic(span, message, source_line=lines[line - 1])

    def hint(self, error: UnexpectedInput, text: str) -> Hint | None:
        """What to write instead, for the habits :mod:`engine.hints` knows; the unclosed
        bracket when the file ends inside one."""
        if isinstance(error, UnexpectedCharacters):
            return syntax_hint(text, error.pos_in_stream or 0, char=True)
        if isinstance(error, UnexpectedEOF) or (
            isinstance(error, UnexpectedToken) and error.token.type == "$END"
        ):
            if not self.newlines.open:
                return None
            token = self.newlines.open[-1]
            start = token.start_pos or 0
            return Hint(
                start,
                start + 1,
                f"unclosed '{token}' opened at line {token.line}: the file ends before its closing '{_CLOSING[str(token)]}'",
            )
        if isinstance(error, UnexpectedToken):
            token = error.token
            return syntax_hint(
                text,
                token.start_pos or 0,
                kind=token.type,
                value=str(token),
                expected=error.expected,
                keywords=self.keywords,
            )
        return None  # pragma: no cover - lark has no other kind

    def unclosed(self) -> str:
        if not self.newlines.open:
            return ""
        token = self.newlines.open[-1]
        closer = {"{": "}", "[": "]", "(": ")"}[str(token)]
        return f" (the '{token}' at line {token.line}, column {token.column} is never closed by '{closer}')"


_parser: _Parser | None = None
_parser_lock = threading.Lock()


def _get_parser() -> _Parser:
    global _parser
    if _parser is None:
        with _parser_lock:
            if _parser is None:
                _parser = _Parser()
    return _parser


def parse(text: str, filename: str = "<rules>") -> ParseResult:
    """Parse one rule file's text. Never raises for bad input: problems are diagnostics."""
    return _get_parser().parse(text, filename)


def _never(message: str) -> NoReturn:  # pragma: no cover
    raise AssertionError(message)
