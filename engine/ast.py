"""The syntax tree of a rule file: frozen, slotted dataclasses, each carrying its source span.

Produced by :mod:`engine.parser`, read by :mod:`engine.checker` and :mod:`engine.compiler`.
Paths are tuples of steps: a ``str`` key or an ``int`` list index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal as TypingLiteral

from engine.diagnostics import Span

JSON = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]
Step = str | int
Path = tuple[Step, ...]


# ------------------------------------------------------------------ expressions
@dataclass(frozen=True, slots=True)
class TemplatePart:
    """A ``%token%`` inside a string: a reference plus the span of the token text."""

    ref: Ref
    span: Span


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant. Strings that contain ``%tokens%`` keep them in ``parts`` (text or token)."""

    span: Span
    value: JSON
    parts: tuple[str | TemplatePart, ...] | None = None


@dataclass(frozen=True, slots=True)
class Ref:
    """``state.PATH``, ``event.PATH``, ``request.FIELD`` or an element ``NAME.PATH``."""

    span: Span
    root: TypingLiteral["state", "event", "request", "element"]
    path: Path
    name: str | None = None  # the element name when root == "element"
    name_span: Span | None = None


@dataclass(frozen=True, slots=True)
class ListExpr:
    span: Span
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Pair:
    """``key.path: value`` in an object; a dotted key expands into nested objects."""

    span: Span
    key: tuple[str, ...]
    key_span: Span
    value: Expr


@dataclass(frozen=True, slots=True)
class ObjectExpr:
    span: Span
    pairs: tuple[Pair, ...]


@dataclass(frozen=True, slots=True)
class Call:
    """A function call; only ``env(...)`` exists, in settings."""

    span: Span
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class GetPath:
    """A path step applied to a computed value: ``(x | first).sku``."""

    span: Span
    operand: Expr
    path: Path


@dataclass(frozen=True, slots=True)
class Each:
    """``LIST[*].PATH``: ``path`` read from every item of the list ``operand`` gives (a missing
    step is ``null``). ``flatten``: ``operand`` gives a list of lists (a second ``[*]``), read
    item by item across them; a non-list among them contributes nothing."""

    span: Span
    operand: Expr
    path: Path
    flatten: bool = False


@dataclass(frozen=True, slots=True)
class Conditional:
    """``if TEST then YES else NO``: ``TEST`` is true as ``when`` has it."""

    span: Span
    test: Expr
    yes: Expr
    no: Expr


@dataclass(frozen=True, slots=True)
class Filter:
    span: Span
    operand: Expr
    name: str
    name_span: Span
    arg: Expr | None


@dataclass(frozen=True, slots=True)
class Unary:
    span: Span
    op: TypingLiteral["-", "not", "exists"]
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    """Arithmetic (``+ - * / %``) and comparisons (``== != < <= > >= contains starts ends in
    not in``); ``op_span`` locates the operator for diagnostics."""

    span: Span
    op: str
    left: Expr
    right: Expr
    op_span: Span


@dataclass(frozen=True, slots=True)
class Matches:
    span: Span
    operand: Expr
    pattern: str
    pattern_span: Span


@dataclass(frozen=True, slots=True)
class Logical:
    """``and`` / ``or`` over two or more operands, evaluated left to right with short-circuit."""

    span: Span
    op: TypingLiteral["and", "or"]
    operands: tuple[Expr, ...]


Expr = (
    Literal
    | Ref
    | ListExpr
    | ObjectExpr
    | Call
    | GetPath
    | Each
    | Conditional
    | Filter
    | Unary
    | Binary
    | Matches
    | Logical
)


# ------------------------------------------------------------------ rules
@dataclass(frozen=True, slots=True)
class EventTrigger:
    span: Span
    pattern: str


@dataclass(frozen=True, slots=True)
class ChangeTrigger:
    span: Span
    path: Path


Trigger = EventTrigger | ChangeTrigger


@dataclass(frozen=True, slots=True)
class Condition:
    """A ``when`` (``negated=False``) or ``unless`` (``negated=True``) clause."""

    span: Span
    expr: Expr
    negated: bool
    source: str


@dataclass(frozen=True, slots=True)
class Sample:
    span: Span
    percent: float


@dataclass(frozen=True, slots=True)
class Limit:
    span: Span
    count: int
    count_span: Span
    unit: str
    unit_span: Span
    keys: tuple[Expr, ...] = ()  # `by KEY, …`: counted apart for each distinct key value


@dataclass(frozen=True, slots=True)
class Send:
    span: Span
    destination: str
    destination_span: Span
    fields: ObjectExpr


@dataclass(frozen=True, slots=True)
class Push:
    span: Span
    value: ObjectExpr


Action = Send | Push


@dataclass(frozen=True, slots=True)
class Rule:
    span: Span
    name: str
    name_span: Span
    order: int | None
    order_span: Span | None
    triggers: tuple[Trigger, ...]
    conditions: tuple[Condition, ...]
    samples: tuple[Sample, ...]
    limits: tuple[Limit, ...]
    actions: tuple[Action, ...]
    skipped_guards: tuple[tuple[str, Span], ...] = ()  # `skip guard "NAME", …`


@dataclass(frozen=True, slots=True)
class Element:
    span: Span
    name: str
    name_span: Span
    expr: Expr
    keep: str | None
    keep_span: Span | None


@dataclass(frozen=True, slots=True)
class Settings:
    """``edge { … }``, ``sitecore { … }`` or ``datalayer { … }``."""

    span: Span
    kind: str
    kind_span: Span
    fields: ObjectExpr


# ------------------------------------------------------------------ tests
@dataclass(frozen=True, slots=True)
class TestSession:
    span: Span
    session: str


@dataclass(frozen=True, slots=True)
class TestVisitor:
    """``request { bot: true, user_agent: "…" }`` in a test: who pushes from here on."""

    span: Span
    fields: ObjectExpr


@dataclass(frozen=True, slots=True)
class TestConsent:
    """``consent "in"`` in a test: the visitor's consent from here on."""

    span: Span
    value: str
    value_span: Span


@dataclass(frozen=True, slots=True)
class ExpectField:
    span: Span
    path: Path
    path_span: Span
    value: Expr


@dataclass(frozen=True, slots=True)
class ExpectSend:
    """``expect send DEST [from "RULE"] { path: value, … }``."""

    span: Span
    destination: str
    destination_span: Span
    rule: str | None
    rule_span: Span | None
    fields: tuple[ExpectField, ...]


@dataclass(frozen=True, slots=True)
class ExpectCount:
    """``expect N send[s] [DEST] [from "RULE"]`` and ``expect no send …`` (count 0)."""

    span: Span
    count: int
    count_span: Span
    destination: str | None
    destination_span: Span | None
    rule: str | None
    rule_span: Span | None


@dataclass(frozen=True, slots=True)
class ExpectRule:
    span: Span
    rule: str
    rule_span: Span
    status: str
    status_span: Span


TestStep = TestSession | TestConsent | TestVisitor | Push | ExpectSend | ExpectCount | ExpectRule


@dataclass(frozen=True, slots=True)
class Test:
    span: Span
    name: str
    name_span: Span
    steps: tuple[TestStep, ...]


@dataclass(frozen=True, slots=True)
class Guard:
    """``guard "NAME" { when …; unless … }``: conditions every rule of the ruleset meets
    before its own, unless the rule skips the guard."""

    span: Span
    name: str
    name_span: Span
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Setup:
    """``setup { … }``: steps run before each test of the file, in order."""

    span: Span
    steps: tuple[TestStep, ...]


Statement = Settings | Element | Rule | Test | Guard | Setup


@dataclass(frozen=True, slots=True)
class File:
    """One parsed ``.rules`` file."""

    path: str
    statements: tuple[Statement, ...]
