"""Syntax tree → diagnostics: everything that can be known wrong before a push arrives.

Checking runs in two steps so that an unchanged file is never checked twice:

* :func:`check_file` looks at one file alone (names of filters and fields, regexes, literal
  types, dotted-key collisions, …) and records the names the file defines and uses;
* :func:`check_ruleset` joins those records across the folder (unknown and duplicate names,
  element cycles, tests naming rules, destinations without settings).

Every problem is collected; nothing stops at the first one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import ast, values
from engine.checker_edge import check_send_event
from engine.diagnostics import Diagnostic, Severity, Span, did_you_mean
from engine.patterns import PatternError, compile_pattern
from engine.settings_fields import SETTINGS_FIELDS
from engine.sitecore_formats import (
    CHECKED_PATHS,
    card_type_problem,
    currency_code,
    currency_problem,
    field_problem,
    language_code,
    language_problem,
)
from engine.values import FILTERS
from engine.vocabulary import (
    DESTINATIONS,
    EDGE_FIELDS,
    KEEP_SCOPES,
    KEYWORDS,
    LIMIT_UNITS,
    PERSONALIZATION_FIELDS,
    REQUEST_FIELDS,
    RESERVED_NAMES,
    SITECORE_ENGINE_FIELDS,
    SITECORE_EXT_LIMIT,
    SITECORE_FIELDS,
    SITECORE_INTERNAL_PREFIXES,
    SITECORE_STANDARD_TYPES,
    TEST_STATUSES,
)

__all__ = ["FileFacts", "check_file", "check_ruleset", "flatten_ext"]

CONSENT_VALUES = ("in", "out", "pending")
# Function names from JavaScript and spreadsheets (lower-cased) → the filter that does the job.
_FUNCTION_FILTERS = {
    "len": "length",
    "size": "length",
    "count": "length",
    "tolowercase": "lower",
    "lowercase": "lower",
    "touppercase": "upper",
    "uppercase": "upper",
    "parseint": "number",
    "parsefloat": "number",
    "tostring": "string",
    "str": "string",
    "boolean": "bool",
}


@dataclass(slots=True)
class FileFacts:
    """What :func:`check_file` learnt about one file."""

    path: str
    lines: list[str]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    settings: list[ast.Settings] = field(default_factory=list)
    elements: list[ast.Element] = field(default_factory=list)
    rules: list[ast.Rule] = field(default_factory=list)
    tests: list[ast.Test] = field(default_factory=list)
    guards: list[ast.Guard] = field(default_factory=list)
    setups: list[ast.Setup] = field(default_factory=list)
    guard_refs: list[tuple[str, Span]] = field(default_factory=list)  # `skip guard "NAME"`
    # (element name, span, referenced from a %token%?, the element whose definition uses it)
    element_refs: list[tuple[str, Span, bool, str | None]] = field(default_factory=list)
    sends: list[tuple[str, Span]] = field(default_factory=list)  # (settings block, span)
    # Each send event: where, and whether its fields give a literal primary identity
    edge_sends: list[tuple[Span, bool]] = field(default_factory=list)
    rule_refs: list[tuple[str, Span]] = field(default_factory=list)  # from tests

    def diag(self, span: Span, message: str, severity: Severity = "error") -> None:
        line = self.lines[span.line - 1] if 0 < span.line <= len(self.lines) else None
        self.diagnostics.append(Diagnostic(span, message, severity, line))

    def warn(self, span: Span, message: str) -> None:
        self.diag(span, message, "warning")


# ------------------------------------------------------------------ static kinds
# The kind of a literal, for the "always false" checks: None means unknown until run time.
def _kind(expr: ast.Expr) -> str | None:
    if isinstance(expr, ast.Literal):
        if expr.parts is not None:
            return "string" if len(expr.parts) != 1 else None
        value = expr.value
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, int | float):
            return "number"
        if isinstance(value, str):
            if values.as_number(value) is not None:
                return "number-like string"
            if values.order(value, value) is not None:
                return "date string"
            return "string"
    if isinstance(expr, ast.ListExpr):
        return "list"
    if isinstance(expr, ast.ObjectExpr):
        return "object"
    if isinstance(expr, ast.Filter) and expr.name == "length":
        return "number"
    return None


_ORDERABLE = {"number", "number-like string", "date string"}

# Characters that mean something in a regular expression and nothing in a glob.
_REGEX_CHARS = re.compile(r"[\^$+()|\\{}\[]")


def _as_glob(pattern: str) -> str | None:
    """The glob a regular-expression-looking trigger probably meant, when one is plain."""
    glob = pattern.removeprefix("^").removesuffix("$")
    glob = re.sub(r"\[(.)\]", r"\1", glob)  # `[.]`: one character, itself
    glob = re.sub(r"\.[*+]", "*", glob).replace("\\.", ".")
    return glob if glob != pattern and not _REGEX_CHARS.search(glob) else None


def _describe(expr: ast.Expr, kind: str) -> str:
    if kind == "null":
        return "null"
    if isinstance(expr, ast.Literal):
        shown = "null" if expr.value is None else repr(expr.value).replace("'", '"')
        if isinstance(expr.value, bool):
            shown = "true" if expr.value else "false"
        return f"{kind} {shown}"
    return kind


_CAMEL_PART = re.compile(r"[_\-\s]+(\w)")


def camel(key: str) -> str:
    """``page_type`` → ``pageType``: Sitecore ``ext`` names are camelCase alphanumerics."""
    return _CAMEL_PART.sub(lambda m: m.group(1).upper(), key)


def flatten_ext(pairs: Iterable[tuple[tuple[str, ...], Any]], names: str = "camel") -> list[str]:
    """The attribute names an ``ext`` object becomes once nested keys are joined: in camelCase
    (``names="camel"``), or with ``_`` and each key as written (``"sdk"``, the Cloud SDK's)."""
    out: list[str] = []
    for key, value in pairs:
        base = "_".join(key) if names == "sdk" else camel("_".join(key))
        if isinstance(value, ast.ObjectExpr):
            nested = flatten_ext(((pair.key, pair.value) for pair in value.pairs), names)
            if names == "sdk":
                out.extend(f"{base}_{n}" for n in nested)
            else:
                out.extend(base + n[:1].upper() + n[1:] for n in nested)
        else:
            out.append(base)
    return out


def _ext_pairs(pair: ast.Pair) -> list[tuple[tuple[str, ...], Any]] | None:
    """The ``(key, value)`` pairs a send's ``ext`` field is written with, or ``None`` when it
    is computed at run time."""
    if len(pair.key) > 1:
        return [(pair.key[1:], pair.value)]
    if isinstance(pair.value, ast.ObjectExpr):
        return [(p.key, p.value) for p in pair.value.pairs]
    return None


def _leaves(node: ast.ObjectExpr, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], ast.Expr]:
    """Every path an object literal sets (dotted keys and nested objects alike) → its value."""
    found: dict[tuple[str, ...], ast.Expr] = {}
    for pair in node.pairs:
        path = prefix + pair.key
        found[path] = pair.value
        if isinstance(pair.value, ast.ObjectExpr):
            found.update(_leaves(pair.value, path))
    return found


def _constant_text(expr: ast.Expr | None) -> ast.Literal | None:
    """``expr`` when it is a plain literal (not a ``%token%`` template)."""
    if isinstance(expr, ast.Literal) and expr.parts is None:
        return expr
    return None


# ------------------------------------------------------------------ one file
class _FileChecker:
    def __init__(self, facts: FileFacts) -> None:
        self.facts = facts
        self.diag = facts.diag
        self.warn = facts.warn
        self.owner: str | None = None  # the element being defined, for dependency edges
        self.allow_refs = True
        self.allow_env = False
        self.where = ""  # "in settings" / "in a test" for messages about refs

    # -- statements
    def statement(self, node: ast.Statement) -> None:
        if isinstance(node, ast.Rule):
            self.facts.rules.append(node)
            self.rule(node)
        elif isinstance(node, ast.Element):
            self.facts.elements.append(node)
            self.element(node)
        elif isinstance(node, ast.Test):
            self.facts.tests.append(node)
            self.test(node)
        elif isinstance(node, ast.Guard):
            self.facts.guards.append(node)
            self.guard(node)
        elif isinstance(node, ast.Setup):
            self.facts.setups.append(node)
            self.setup(node)
        else:
            self.facts.settings.append(node)
            self.settings(node)

    def settings(self, node: ast.Settings) -> None:
        fields = SETTINGS_FIELDS.get(node.kind)
        if fields is None:
            hint = did_you_mean(node.kind, SETTINGS_FIELDS)
            self.diag(node.kind_span, f"unknown settings block '{node.kind}'{hint}")
            return
        allowed = list(fields)
        seen: dict[str, Span] = {}
        for pair in node.fields.pairs:
            name = ".".join(pair.key)
            if len(pair.key) != 1 or pair.key[0] not in allowed:
                hint = did_you_mean(name, allowed)
                self.diag(pair.key_span, f"unknown {node.kind} setting '{name}'{hint}")
            elif name in seen:
                self.diag(pair.key_span, f"{node.kind} setting '{name}' is given twice")
            seen[name] = pair.key_span
            self.constant(pair.value, "in settings", allow_env=True)

    def element(self, node: ast.Element) -> None:
        if node.name in KEYWORDS or node.name in RESERVED_NAMES:
            what = "keyword" if node.name in KEYWORDS else "reserved name"
            self.diag(node.name_span, f"'{node.name}' is a {what} and cannot name an element")
        if node.keep is not None and node.keep not in KEEP_SCOPES:
            hint = did_you_mean(node.keep, KEEP_SCOPES)
            self.diag(
                node.keep_span or node.span,
                f"unknown keep scope '{node.keep}'; expected pageview, session or visitor{hint}",
            )
        self.owner = node.name
        self.expr(node.expr)
        self.owner = None

    def guard(self, node: ast.Guard) -> None:
        if not node.conditions:
            self.diag(
                node.name_span,
                f"guard '{node.name}' has no condition: add a 'when' or 'unless' line",
            )
        for condition in node.conditions:
            self.expr(condition.expr)

    def setup(self, node: ast.Setup) -> None:
        if len(self.facts.setups) > 1:
            first = self.facts.setups[0].span
            self.diag(
                Span(
                    node.span.file,
                    node.span.line,
                    node.span.column,
                    node.span.line,
                    node.span.column + 5,
                ),
                f"this file already has a setup (line {first.line}): one setup per file",
            )
        for step in node.steps:
            if isinstance(step, ast.ExpectSend | ast.ExpectCount | ast.ExpectRule):
                self.diag(
                    step.span,
                    "a setup holds the steps every test of the file starts with, not "
                    "expectations: move this 'expect' into a test",
                )
            else:
                self.step(step)

    def rule(self, node: ast.Rule) -> None:
        self.facts.guard_refs.extend(node.skipped_guards)
        if not node.triggers:
            self.diag(
                node.name_span, f"rule '{node.name}' has no trigger: add an 'on \"event\"' line"
            )
        if not node.actions:
            self.diag(node.name_span, f"rule '{node.name}' has no action: add a 'send' or 'push'")
        for trigger in node.triggers:
            if isinstance(trigger, ast.EventTrigger) and not trigger.pattern:
                self.diag(trigger.span, 'an event trigger cannot be empty: use "*" for every event')
            if isinstance(trigger, ast.EventTrigger) and _REGEX_CHARS.search(trigger.pattern):
                glob = _as_glob(trigger.pattern)
                hint = f' (did you mean "{glob}"?)' if glob else ""
                self.warn(
                    trigger.span,
                    "event names are matched as globs, not regular expressions: '*' stands "
                    f"for any text, '?' for one character, and every other character for "
                    f"itself{hint}",
                )
            if isinstance(trigger, ast.ChangeTrigger) and not trigger.path:
                self.diag(trigger.span, "a change trigger needs a path, e.g. 'change cart.total'")
        for condition in node.conditions:
            self.expr(condition.expr)
        for extra in node.samples[1:]:
            self.diag(extra.span, "a rule takes one 'sample' line")
        for sample in node.samples:
            if not 0 <= sample.percent <= 100:
                self.diag(
                    sample.span, f"sample must be between 0% and 100%, not {sample.percent:g}%"
                )
        # One limit per unit, and one keyed limit per unit besides ("each milestone once, at
        # most 20 a session"): they are counted apart, under the rule's name and its keys.
        units: dict[tuple[str, bool], Span] = {}
        for limit in node.limits:
            for key in limit.keys:
                self.expr(key)
            if limit.count < 1:
                self.diag(limit.count_span, f"a limit must be at least 1, not {limit.count}")
            if limit.unit not in LIMIT_UNITS:
                hint = did_you_mean(limit.unit, LIMIT_UNITS)
                self.diag(
                    limit.unit_span,
                    f"unknown limit unit '{limit.unit}'; expected {', '.join(LIMIT_UNITS)}{hint}",
                )
            elif (limit.unit, bool(limit.keys)) in units:
                keyed = "keyed limit" if limit.keys else "limit"
                self.diag(limit.unit_span, f"the rule already has a {keyed} per {limit.unit}")
            units[limit.unit, bool(limit.keys)] = limit.unit_span
        for action in node.actions:
            if isinstance(action, ast.Send):
                self.send(action)
            else:
                self.object(action.value)

    def send(self, node: ast.Send) -> None:
        block = DESTINATIONS.get(node.destination)
        if block is None:
            hint = did_you_mean(node.destination, DESTINATIONS)
            self.diag(
                node.destination_span,
                f"unknown destination '{node.destination}'; expected 'event' or 'sitecore'{hint}",
            )
            self.object(node.fields)
            return
        self.facts.sends.append((block, node.destination_span))
        self.object(node.fields)
        fields = {pair.key[0]: pair for pair in node.fields.pairs}
        if node.destination == "event":
            self.facts.edge_sends.append((node.destination_span, gives_primary(node.fields)))
            self.edge_fields(node, fields)
        else:
            self.sitecore_fields(node, fields)

    def edge_fields(self, node: ast.Send, fields: dict[str, ast.Pair]) -> None:
        for pair in node.fields.pairs:
            name = pair.key[0]
            if name not in EDGE_FIELDS:
                self.diag(
                    pair.key_span,
                    f"unknown send event field '{name}'{did_you_mean(name, EDGE_FIELDS)}",
                )
            elif name == "personalization":
                self.personalization(pair)
        if "type" in fields and self.sets_event_type(node.fields):
            self.diag(
                fields["type"].key_span,
                "give the event type once: 'type' and 'xdm.eventType' are both set",
            )
        check_send_event(node, self.diag)

    def personalization(self, pair: ast.Pair) -> None:
        nested = pair.key[1:]
        if nested:
            if nested[0] not in PERSONALIZATION_FIELDS:
                hint = did_you_mean(nested[0], PERSONALIZATION_FIELDS)
                self.diag(pair.key_span, f"unknown personalization field '{nested[0]}'{hint}")
            return
        if isinstance(pair.value, ast.ObjectExpr):
            for inner in pair.value.pairs:
                if inner.key[0] not in PERSONALIZATION_FIELDS:
                    hint = did_you_mean(inner.key[0], PERSONALIZATION_FIELDS)
                    self.diag(
                        inner.key_span, f"unknown personalization field '{inner.key[0]}'{hint}"
                    )

    @staticmethod
    def sets_event_type(fields: ast.ObjectExpr) -> bool:
        for pair in fields.pairs:
            if pair.key[0] != "xdm":
                continue
            if pair.key[1:2] == ("eventType",):
                return True
            if (
                len(pair.key) == 1
                and isinstance(pair.value, ast.ObjectExpr)
                and any(inner.key[0] == "eventType" for inner in pair.value.pairs)
            ):
                return True
        return False

    def sitecore_fields(self, node: ast.Send, fields: dict[str, ast.Pair]) -> None:
        for pair in node.fields.pairs:
            name = pair.key[0]
            if name in SITECORE_ENGINE_FIELDS:
                self.diag(pair.key_span, f"'{name}' is set by the engine, not by a rule")
            elif name not in SITECORE_FIELDS:
                hint = did_you_mean(name, SITECORE_FIELDS)
                self.diag(pair.key_span, f"unknown send sitecore field '{name}'{hint}")
        kind = fields.get("type")
        event_type: str | None = None
        if kind is None:
            self.diag(node.destination_span, "send sitecore needs a 'type' (e.g. \"VIEW\")")
        elif isinstance(kind.value, ast.Literal) and kind.value.parts is None:
            self.sitecore_type(kind.value)
            event_type = kind.value.value if isinstance(kind.value.value, str) else None
        self.sitecore_values(node, event_type, fields)
        ext = fields.get("ext")
        if ext is not None:
            self.sitecore_ext(ext, "page_variant_id" in fields)

    def sitecore_values(
        self, node: ast.Send, event_type: str | None, fields: dict[str, ast.Pair]
    ) -> None:
        """Literal values whose format Sitecore fixes: refused here rather than per push."""
        leaves = _leaves(node.fields)
        for name, normal, problem in (
            ("language", language_code, language_problem),
            ("currency", currency_code, currency_problem),
        ):
            literal = _constant_text(leaves.get((name,)))
            if (
                literal is not None
                and literal.value not in (None, "")
                and not normal(literal.value)
            ):
                self.diag(literal.span, f"sitecore {problem(literal.value)}")
        for path in CHECKED_PATHS:
            literal = _constant_text(leaves.get(path))
            if literal is None or literal.value is None:
                continue
            message = field_problem(path, literal.value, event_type)
            if message:
                self.diag(literal.span, f"sitecore {message}")
        payment = _constant_text(leaves.get(("order", "paymentType")))
        order = leaves.get(("order",))
        if (
            payment is not None
            and isinstance(order, ast.ObjectExpr)  # else the order is (partly) built at run time
            and ("order", "cardType") not in leaves
        ):
            message = card_type_problem({"paymentType": payment.value})
            if message:
                self.diag(payment.span, f"sitecore {message}")
        if "page_variant_id" in fields and ("ext", "pageVariantId") in leaves:
            self.diag(
                fields["page_variant_id"].key_span,
                "give the page variant once: 'page_variant_id' and 'ext.pageVariantId' are "
                "both set (page_variant_id is sent as ext.pageVariantId)",
            )

    def sitecore_type(self, literal: ast.Literal) -> None:
        value = literal.value
        if not isinstance(value, str) or not value:
            self.diag(literal.span, 'a sitecore type is an upper-case name such as "VIEW"')
            return
        if value in SITECORE_STANDARD_TYPES:
            return
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
            fixed = re.sub(r"[^A-Z0-9_]", "_", value.upper())
            self.diag(
                literal.span,
                f"sitecore type '{value}' must be upper-case letters, digits and '_' "
                f"(did you mean '{fixed}'?)",
            )
            return
        if value.startswith(SITECORE_INTERNAL_PREFIXES):
            self.diag(
                literal.span,
                f"sitecore type '{value}' is reserved by Sitecore; choose another name",
            )

    def sitecore_ext(self, pair: ast.Pair, variant: bool) -> None:
        # The count is the same whatever the naming (sitecore `ext_names`); duplicates depend
        # on it and are checked with the settings, in check_ruleset.
        pairs = _ext_pairs(pair)
        if pairs is None:
            return  # computed at run time: checked when the send is built
        names = flatten_ext(pairs)
        count = len(names) + (variant and "pageVariantId" not in names)
        if count > SITECORE_EXT_LIMIT:
            extra = " (with pageVariantId)" if variant and count > len(names) else ""
            self.diag(
                pair.key_span,
                f"sitecore ext has {count} attributes once flattened{extra}; the limit is "
                f"{SITECORE_EXT_LIMIT}",
            )

    # -- tests
    def test(self, node: ast.Test) -> None:
        expects = 0
        for step in node.steps:
            if isinstance(step, ast.ExpectSend | ast.ExpectCount | ast.ExpectRule):
                expects += 1
                self.expectation(step)
            else:
                self.step(step)
        # "has no push" waits for the whole file: its setup may push (see check_file)
        if not expects:
            self.diag(node.name_span, f"test '{node.name}' expects nothing: add an 'expect' line")

    def step(self, step: ast.Push | ast.TestSession | ast.TestVisitor | ast.TestConsent) -> None:
        """A step of a test or a setup: a push, the session, the request, the consent."""
        if isinstance(step, ast.Push):
            self.constant(step.value, "in a test")
        elif isinstance(step, ast.TestSession):
            return
        elif isinstance(step, ast.TestVisitor):
            self.constant(step.fields, "in a test")
            for pair in step.fields.pairs:
                name = pair.key[0]
                if name not in REQUEST_FIELDS or len(pair.key) > 1:
                    hint = did_you_mean(name, REQUEST_FIELDS)
                    self.diag(
                        pair.key_span,
                        f"unknown request field '{'.'.join(pair.key)}'; expected "
                        + ", ".join(REQUEST_FIELDS)
                        + hint,
                    )
                elif name == "bot" and not (
                    isinstance(pair.value, ast.Literal) and isinstance(pair.value.value, bool)
                ):
                    self.diag(pair.value.span, "request bot is true or false")
        elif isinstance(step, ast.TestConsent) and step.value not in CONSENT_VALUES:
            hint = did_you_mean(step.value, CONSENT_VALUES)
            self.diag(
                step.value_span,
                f"unknown consent '{step.value}'; expected 'in', 'out' or 'pending'{hint}",
            )

    def expectation(self, step: ast.ExpectSend | ast.ExpectCount | ast.ExpectRule) -> None:
        if isinstance(step, ast.ExpectRule):
            self.facts.rule_refs.append((step.rule, step.rule_span))
            if step.status not in TEST_STATUSES:
                hint = did_you_mean(step.status, TEST_STATUSES)
                self.diag(step.status_span, f"unknown rule status '{step.status}'{hint}")
            return
        if step.rule is not None and step.rule_span is not None:
            self.facts.rule_refs.append((step.rule, step.rule_span))
        if step.destination is not None and step.destination not in DESTINATIONS:
            hint = did_you_mean(step.destination, DESTINATIONS)
            self.diag(
                step.destination_span or step.span,
                f"unknown destination '{step.destination}'; expected 'event' or 'sitecore'{hint}",
            )
        if isinstance(step, ast.ExpectSend):
            for expected in step.fields:
                self.constant(expected.value, "in a test")
        elif step.count < 0:
            self.diag(step.count_span, "an expected count cannot be negative")

    # -- expressions
    def constant(self, expr: ast.Expr, where: str, allow_env: bool = False) -> None:
        saved = self.allow_refs, self.allow_env, self.where
        self.allow_refs, self.allow_env, self.where = False, allow_env, where
        self.expr(expr)
        self.allow_refs, self.allow_env, self.where = saved

    def object(self, node: ast.ObjectExpr) -> None:
        self.expr(node)

    def expr(self, node: ast.Expr) -> None:
        kind = type(node)
        if self.allow_env and kind not in _ENV_CONTAINERS:
            # env() is a whole setting value (or an item of one), never an operand.
            self.allow_env = False
            try:
                _EXPR_CHECKS[kind](self, node)
            finally:
                self.allow_env = True
            return
        _EXPR_CHECKS[kind](self, node)

    def literal(self, node: ast.Literal) -> None:
        if node.parts is not None and self.allow_refs:
            for part in node.parts:
                if isinstance(part, ast.TemplatePart):
                    self.ref(part.ref, token=True)

    def list_expr(self, node: ast.ListExpr) -> None:
        for item in node.items:
            self.expr(item)

    def object_expr(self, node: ast.ObjectExpr) -> None:
        self.check_keys(node)
        for pair in node.pairs:
            self.expr(pair.value)

    def get_path(self, node: ast.GetPath) -> None:
        self.expr(node.operand)

    def each(self, node: ast.Each) -> None:
        self.expr(node.operand)
        kind = _kind(node.operand)
        if kind is not None and kind != "list":
            self.diag(
                node.span,
                f"'[*]' reads every item of a list, not of {_describe(node.operand, kind)}",
            )

    def conditional(self, node: ast.Conditional) -> None:
        self.expr(node.test)
        self.expr(node.yes)
        self.expr(node.no)

    def unary(self, node: ast.Unary) -> None:
        self.expr(node.operand)
        kind = _kind(node.operand)
        if node.op == "-" and kind is not None and kind not in ("number", "number-like string"):
            self.diag(node.span, f"cannot negate {_describe(node.operand, kind)}")

    def matches(self, node: ast.Matches) -> None:
        self.expr(node.operand)
        kind = _kind(node.operand)
        if kind in ("boolean", "null", "list", "object"):
            self.diag(
                node.span,
                f"'matches' on {_describe(node.operand, kind)} is always false "
                "(it tests strings and numbers)",
            )
        try:
            compile_pattern(node.pattern)
        except PatternError as error:
            self.diag(node.pattern_span, f"bad regular expression: {error}")

    def logical(self, node: ast.Logical) -> None:
        for operand in node.operands:
            self.expr(operand)
        fallback = next(
            (
                o
                for o in node.operands
                if isinstance(o, ast.Literal) and o.value is not None and type(o.value) is not bool
            ),
            None,
        )
        if fallback is not None:
            self.warn(
                node.span,
                f"'{node.op}' gives true or false, never one of its values: for a fallback "
                "value write 'A | default B'",
            )

    def binary(self, node: ast.Binary) -> None:
        self.expr(node.left)
        self.expr(node.right)
        left, right = _kind(node.left), _kind(node.right)
        op = node.op
        if op in ("<", "<=", ">", ">="):
            for side, kind in ((node.left, left), (node.right, right)):
                if kind is not None and kind not in _ORDERABLE:
                    self.diag(
                        node.op_span,
                        f"'{op}' compares numbers and dates; with {_describe(side, kind)} it is "
                        "always false",
                    )
                    return
            if (
                isinstance(node.left, ast.Literal)
                and isinstance(node.right, ast.Literal)
                and left in _ORDERABLE
                and right in _ORDERABLE
                and values.order(node.left.value, node.right.value) is None
            ):
                self.diag(
                    node.op_span,
                    f"{_describe(node.left, left)} and {_describe(node.right, right)} cannot "
                    f"be compared with '{op}': it is always false",
                )
            return
        if op in ("starts with", "ends with"):
            for side, kind in ((node.left, left), (node.right, right)):
                if kind is not None and kind not in ("string", "number-like string", "date string"):
                    self.diag(
                        node.op_span,
                        f"'{op}' tests strings; with {_describe(side, kind)} it is always false",
                    )
                    break
            return
        if op == "contains":
            if left in ("number", "boolean", "null"):
                self.diag(
                    node.op_span,
                    f"'contains' looks inside strings, lists and objects; on "
                    f"{_describe(node.left, left)} it is always false",
                )
            return
        if op in ("in", "not in"):
            if right is not None and right != "list":
                self.diag(
                    node.op_span,
                    f"'{op}' needs a list on its right, not {_describe(node.right, right)}",
                )
            return
        if op in ("==", "!="):
            return
        # arithmetic
        numeric = ("number", "number-like string")
        text = ("string", "date string", "number-like string")
        if op == "+" and (left in text or right in text or left is None or right is None):
            return  # joins as text when a side is text (known only at run time when unknown)
        for side, kind in ((node.left, left), (node.right, right)):
            if kind is None or kind in numeric:
                continue
            needs = "numbers or text" if op == "+" else "numbers"
            self.diag(node.op_span, f"'{op}' needs {needs}, not {_describe(side, kind)}")
            break
        return

    def filter(self, node: ast.Filter) -> None:
        self.expr(node.operand)
        spec = FILTERS.get(node.name)
        if spec is None:
            hint = did_you_mean(node.name, FILTERS)
            self.diag(node.name_span, f"unknown filter '{node.name}'{hint}")
        else:
            arity = spec[1]
            if arity == "none" and node.arg is not None:
                self.diag(node.arg.span, f"filter '{node.name}' takes no argument")
            elif arity == "required" and node.arg is None:
                self.diag(
                    node.name_span, f"filter '{node.name}' needs a value, e.g. '| {node.name} 0'"
                )
            if (
                node.name == "round"
                and node.arg is not None
                and not (
                    isinstance(node.arg, ast.Literal)
                    and isinstance(node.arg.value, int)
                    and not isinstance(node.arg.value, bool)
                    and 0 <= node.arg.value <= 15
                )
            ):
                self.diag(node.arg.span, "round takes a number of decimals from 0 to 15")
        if node.arg is not None:
            self.expr(node.arg)

    def unknown_function(self, node: ast.Call) -> str:
        """The message for a call to anything but env(): filters are not functions."""
        name = node.name
        target = name if name in FILTERS else _FUNCTION_FILTERS.get(name.lower())
        if target is None or target not in FILTERS:
            hint = " (did you mean 'env'?)" if name.lower() == "env" else ""
            return f"unknown function '{name}'{hint}"
        value = "VALUE"
        if node.args:
            first, last = node.args[0].span, node.args[-1].span
            lines = self.facts.lines
            if first.line == last.line and 0 < first.line <= len(lines):
                value = lines[first.line - 1][first.column - 1 : last.end_column - 1]
        return f"'{name}' is not a function; use the '{target}' filter: {value} | {target}"

    def call(self, node: ast.Call) -> None:
        if node.name != "env":
            self.diag(node.span, self.unknown_function(node))
        elif not self.allow_env:
            message = (
                "env() must be a setting's whole value, not part of an expression"
                if self.where == "in settings"
                else "env() reads the environment in settings blocks only"
            )
            self.diag(node.span, message)
        elif not 1 <= len(node.args) <= 2 or not all(
            isinstance(a, ast.Literal) and isinstance(a.value, str) and a.parts is None
            for a in node.args
        ):
            self.diag(
                node.span,
                'env() takes a variable name and an optional default: env("NAME", "default")',
            )
        for arg in node.args:
            if not isinstance(arg, ast.Literal):
                self.expr(arg)

    def ref(self, node: ast.Ref, token: bool = False) -> None:
        if not self.allow_refs:
            text = node.name if node.root == "element" else node.root
            self.diag(node.span, f"'{text}' cannot be used {self.where}: only constant values")
            return
        if node.root == "request":
            field = node.path[0] if node.path else None
            if field not in REQUEST_FIELDS or len(node.path) > 1:
                shown = f"'request.{field}'" if field is not None else "'request'"
                hint = did_you_mean(str(field), REQUEST_FIELDS) if field is not None else ""
                self.diag(
                    node.span,
                    f"{shown} is not something known of the visitor's request; expected "
                    + ", ".join(f"request.{f}" for f in REQUEST_FIELDS)
                    + hint,
                )
            return
        if node.root == "element" and node.name is not None:
            self.facts.element_refs.append(
                (node.name, node.name_span or node.span, token, self.owner)
            )

    def check_keys(self, node: ast.ObjectExpr) -> None:
        """Dotted keys expand into nested objects; two keys that land on the same place clash."""
        leaves: dict[tuple[str, ...], ast.Pair] = {}
        for pair in node.pairs:
            key = pair.key
            for other_key, other in leaves.items():
                shorter = min(len(key), len(other_key))
                if key[:shorter] != other_key[:shorter]:
                    continue
                if len(key) == len(other_key) and not (
                    isinstance(pair.value, ast.ObjectExpr)
                    and isinstance(other.value, ast.ObjectExpr)
                ):
                    self.diag(
                        pair.key_span,
                        f"key '{'.'.join(key)}' is given twice (line {other.key_span.line})",
                    )
                    break
                if len(key) != len(other_key):
                    short, long_ = (pair, other) if len(key) < len(other_key) else (other, pair)
                    if not isinstance(short.value, ast.ObjectExpr):
                        self.diag(
                            pair.key_span,
                            f"key '{'.'.join(pair.key)}' collides with '{'.'.join(other.key)}' "
                            f"(line {other.key_span.line}): '{'.'.join(short.key)}' cannot be both "
                            "a value and an object",
                        )
                        break
                    nested = long_.key[len(short.key) :]
                    clash = self.nested_clash(short.value, nested)
                    if clash:
                        self.diag(
                            pair.key_span,
                            f"key '{'.'.join(long_.key)}' is also set at line {clash}",
                        )
                        break
            leaves[key] = pair

    @staticmethod
    def nested_clash(node: ast.Expr, key: tuple[str, ...]) -> int | None:
        """The line where ``node`` (an object) already sets ``key`` or a prefix/extension of it
        to a non-object, if it does."""
        if not isinstance(node, ast.ObjectExpr):
            return None
        for pair in node.pairs:
            shorter = min(len(pair.key), len(key))
            if pair.key[:shorter] != key[:shorter]:
                continue
            if len(pair.key) >= len(key):
                return pair.key_span.line
            found = _FileChecker.nested_clash(pair.value, key[len(pair.key) :])
            if found or not isinstance(pair.value, ast.ObjectExpr):
                return found or pair.key_span.line
        return None


_ENV_CONTAINERS = (ast.ObjectExpr, ast.ListExpr, ast.Call, ast.Literal)
_EXPR_CHECKS: dict[type, Callable[[_FileChecker, Any], None]] = {
    ast.Literal: _FileChecker.literal,
    ast.Ref: _FileChecker.ref,
    ast.ListExpr: _FileChecker.list_expr,
    ast.ObjectExpr: _FileChecker.object_expr,
    ast.Call: _FileChecker.call,
    ast.GetPath: _FileChecker.get_path,
    ast.Each: _FileChecker.each,
    ast.Conditional: _FileChecker.conditional,
    ast.Filter: _FileChecker.filter,
    ast.Unary: _FileChecker.unary,
    ast.Matches: _FileChecker.matches,
    ast.Binary: _FileChecker.binary,
    ast.Logical: _FileChecker.logical,
}


def check_file(file: ast.File, lines: list[str]) -> FileFacts:
    """Check one parsed file on its own and record what it defines and uses."""
    facts = FileFacts(file.path, lines)
    checker = _FileChecker(facts)
    for statement in file.statements:
        checker.statement(statement)
    setup_pushes = any(isinstance(s, ast.Push) for setup in facts.setups for s in setup.steps)
    for test in facts.tests:
        if not setup_pushes and not any(isinstance(s, ast.Push) for s in test.steps):
            facts.diag(test.name_span, f"test '{test.name}' has no push")
    facts.diagnostics.sort(key=lambda d: (d.span.line, d.span.column))
    return facts


# ------------------------------------------------------------------ the whole ruleset
def _line(facts_by_file: dict[str, FileFacts], span: Span) -> str | None:
    facts = facts_by_file.get(span.file)
    if facts and 0 < span.line <= len(facts.lines):
        return facts.lines[span.line - 1]
    return None


def check_ruleset(
    files: Sequence[FileFacts], maybe_defined: Callable[[str, str], bool] | None = None
) -> list[Diagnostic]:
    """Cross-file checks over the facts of every file, in load order. ``maybe_defined(kind,
    name)`` says whether a file that did not parse may define an ``element``, ``rule``,
    ``guard`` or ``settings`` block of that name: its uses are then not reported unknown."""
    elsewhere = maybe_defined or (lambda kind, name: False)
    by_file = {f.path: f for f in files}
    out: list[Diagnostic] = []

    def diag(span: Span, message: str) -> None:
        out.append(Diagnostic(span, message, source_line=_line(by_file, span)))

    def unique(kind: str, items: Iterable[tuple[str, Span]]) -> dict[str, Span]:
        first: dict[str, Span] = {}
        for name, span in items:
            if name in first:
                diag(span, f"duplicate {kind} '{name}' (first defined at {first[name]})")
            else:
                first[name] = span
        return first

    elements = unique("element", ((e.name, e.name_span) for f in files for e in f.elements))
    rules = unique("rule name", ((r.name, r.name_span) for f in files for r in f.rules))
    unique("test name", ((t.name, t.name_span) for f in files for t in f.tests))
    blocks = unique("settings block", ((s.kind, s.kind_span) for f in files for s in f.settings))
    guards = unique("guard", ((g.name, g.name_span) for f in files for g in f.guards))
    for facts in files:
        for name, span in facts.guard_refs:
            if name not in guards and not elsewhere("guard", name):
                diag(span, f"unknown guard '{name}'{did_you_mean(name, guards)}")

    deps: dict[str, list[tuple[str, Span]]] = {name: [] for name in elements}
    for facts in files:
        for name, span, token, owner in facts.element_refs:
            if name not in elements and not elsewhere("element", name):
                hint = did_you_mean(name, elements)
                what = (
                    f"unknown token '%{name}%': no element '{name}'"
                    if token
                    else f"unknown element '{name}'"
                )
                diag(span, what + hint)
            elif owner is not None and owner in deps:
                deps[owner].append((name, span))
        for block, span in facts.sends:
            if block not in blocks and not elsewhere("settings", block):
                dest = "event" if block == "edge" else "sitecore"
                diag(
                    span,
                    f"send {dest} needs a '{block} {{ … }}' settings block; this ruleset has none",
                )
        for name, span in facts.rule_refs:
            if name not in rules and not elsewhere("rule", name):
                diag(span, f"unknown rule '{name}'{did_you_mean(name, rules)}")
    for chain, span in _cycles(deps):
        diag(span, "element cycle: " + " → ".join(chain))
    _sitecore_sends(files, diag)
    return out


def _sitecore_sends(files: Sequence[FileFacts], diag: Callable[[Span, str], None]) -> None:
    """What a ``send sitecore`` needs from the ``sitecore { }`` settings: a ``language`` and a
    ``currency`` (there or in the send: none is assumed), and the ``ext_names`` its ``ext``
    names are made with (two keys giving one name)."""
    blocks = [s for f in files for s in f.settings if s.kind == "sitecore"]
    if not blocks:
        return  # "send sitecore needs a 'sitecore { … }' settings block" says it already
    given = {pair.key[0]: pair.value for pair in blocks[0].fields.pairs if len(pair.key) == 1}
    mode = _constant_text(given.get("ext_names"))
    names = mode.value if mode is not None and mode.value in ("camel", "sdk") else "camel"
    examples = {"currency": "EUR", "language": "EN"}
    for facts in files:
        for rule in facts.rules:
            for action in rule.actions:
                if not isinstance(action, ast.Send) or action.destination != "sitecore":
                    continue
                fields = {pair.key[0]: pair for pair in action.fields.pairs}
                missing = [
                    n for n in ("currency", "language") if n not in fields and n not in given
                ]
                if missing:
                    what = " or ".join(f"'{n}'" for n in missing)
                    add = " and ".join(f'{n}: "{examples[n]}"' for n in missing)
                    diag(
                        action.destination_span,
                        f"send sitecore has no {what}: add {add} to the sitecore {{ }} settings "
                        "(or to this send); Sitecore needs them and none is assumed",
                    )
                ext = fields.get("ext")
                pairs = _ext_pairs(ext) if ext is not None else None
                seen: set[str] = set()
                for name in flatten_ext(pairs or (), names):
                    if name in seen and ext is not None:
                        diag(
                            ext.key_span,
                            f"sitecore ext attribute '{name}' is given twice once flattened",
                        )
                    seen.add(name)


def gives_primary(fields: ast.ObjectExpr, inside: bool = False) -> bool:
    """Whether send event ``fields`` put an identity marked ``primary: true`` (a literal) in
    the event's identityMap (``identityMap``, ``xdm.identityMap``, dotted or nested)."""
    for pair in fields.pairs:
        path = pair.key
        here = inside or "identityMap" in path
        value = pair.value
        if (
            here
            and path[-1] == "primary"
            and isinstance(value, ast.Literal)
            and value.value is True
        ):
            return True
        values = pair.value.items if isinstance(pair.value, ast.ListExpr) else (pair.value,)
        for value in values:
            if isinstance(value, ast.ObjectExpr) and gives_primary(value, here):
                return True
    return False


def _cycles(deps: dict[str, list[tuple[str, Span]]]) -> list[tuple[list[str], Span]]:
    """Each cycle in the element graph once, as its chain and the span of the reference that
    closes it."""
    found: list[tuple[list[str], Span]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in deps:
        if root in state:
            continue
        # Iterative depth-first search: element chains can be longer than Python's stack.
        path: list[str] = [root]
        position: dict[str, int] = {root: 0}
        edges = [iter(deps.get(root, ()))]
        state[root] = 1
        while edges:
            step = next(edges[-1], None)
            if step is None:
                edges.pop()
                done = path.pop()
                del position[done]
                state[done] = 2
                continue
            target, span = step
            if state.get(target) == 1:
                found.append(([*path[position[target] :], target], span))
            elif target not in state and target in deps:
                state[target] = 1
                position[target] = len(path)
                path.append(target)
                edges.append(iter(deps.get(target, ())))
    return found
