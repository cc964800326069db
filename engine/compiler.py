"""Checked syntax tree → compiled rules: Python closures, built once, run on every push.

Each expression becomes one closure specialised for its shape (a path of one or two keys, a
comparison with a constant, …); sub-expressions without references are folded into constants
at load time. Nothing here walks the tree per push, and no rule text is ever executed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from engine import ast, values
from engine.diagnostics import Diagnostic, Span
from engine.fieldgen import FieldBuilder, generate_element, generate_fields, place
from engine.patterns import compile_pattern
from engine.ruleset import (
    CompiledAction,
    CompiledCondition,
    CompiledElement,
    CompiledGuard,
    CompiledRule,
    CompiledTest,
    ConsentStep,
    ExpectCountStep,
    ExpectRuleStep,
    ExpectSendStep,
    PushStep,
    SessionStep,
    TestStep,
    VisitorStep,
)
from engine.scope import Fn, Scope
from engine.settings_fields import LoadedSettings, plainly_valid
from engine.vocabulary import DESTINATIONS

__all__ = ["CompiledFile", "compile_expr", "compile_file", "compile_settings", "constant_value"]

DEFAULT_ORDER = 50


class _Const:
    """A folded constant. Lists and objects are copied on every use, so nothing downstream can
    change the compiled ruleset by mutating a value it was given."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


Compiled = _Const | Fn


def _fn(c: Compiled) -> Fn:
    if not isinstance(c, _Const):
        return c
    value = c.value
    if isinstance(value, dict | list):
        copy = values.copy_json
        return lambda s: copy(value)
    return lambda s: value


# ------------------------------------------------------------------ references
def _path_fn(get_root: Callable[[Scope], Any], path: ast.Path) -> Fn:
    lookup = values.lookup
    if not path:
        return get_root
    if len(path) == 1 and type(path[0]) is str:
        (a,) = path

        def one(s: Scope) -> Any:
            v = get_root(s)
            return v.get(a) if type(v) is dict else None

        return one
    if len(path) == 2 and type(path[0]) is str and type(path[1]) is str:
        a, b = path

        def two(s: Scope) -> Any:
            v = get_root(s)
            if type(v) is dict:
                v = v.get(a)
                if type(v) is dict:
                    return v.get(b)
            return None

        return two
    return lambda s: lookup(get_root(s), path)


def _state(s: Scope) -> Any:
    return s.state


def _event(s: Scope) -> Any:
    return s.event


def _request(s: Scope) -> Any:
    return s.request


def _ref(node: ast.Ref) -> Fn:
    if node.root == "state":
        if len(node.path) == 1 and type(node.path[0]) is str:
            key = node.path[0]
            return lambda s: s.state.get(key)
        if len(node.path) == 2 and type(node.path[0]) is str and type(node.path[1]) is str:
            a, b = cast(tuple[str, str], node.path)

            def state2(s: Scope) -> Any:
                v = s.state.get(a)
                return v.get(b) if type(v) is dict else None

            return state2
        return _path_fn(_state, node.path)
    if node.root == "event":
        return _path_fn(_event, node.path)
    if node.root == "request":
        return _path_fn(_request, node.path)
    name = cast(str, node.name)
    if not node.path:
        return lambda s: s.element(name)
    return _path_fn(lambda s: s.element(name), node.path)


def _template(parts: tuple[str | ast.TemplatePart, ...]) -> Fn:
    if len(parts) == 1 and isinstance(parts[0], ast.TemplatePart):
        return _ref(parts[0].ref)  # a string that is one token keeps the value's type
    stringify = values.stringify
    pieces: tuple[str | Fn, ...] = tuple(p if isinstance(p, str) else _ref(p.ref) for p in parts)
    return lambda s: "".join([p if type(p) is str else stringify(p(s)) for p in pieces])  # type: ignore[operator]


# ------------------------------------------------------------------ expressions
def compile_expr(node: ast.Expr) -> Compiled:
    """A closure for ``node`` (or a :class:`_Const` when it has no references)."""
    compiler = _COMPILERS.get(type(node))
    if compiler is None:  # env() outside settings: the checker reports it first
        raise TypeError(f"cannot compile {type(node).__name__} here")
    return compiler(node)


def _literal(node: ast.Literal) -> Compiled:
    return _template(node.parts) if node.parts is not None else _Const(node.value)


def _list(node: ast.ListExpr) -> Compiled:
    items = [compile_expr(item) for item in node.items]
    if all(isinstance(i, _Const) for i in items):
        return _Const([cast(_Const, i).value for i in items])
    fns = tuple(_fn(i) for i in items)
    return lambda s: [f(s) for f in fns]


def _get_path(node: ast.GetPath) -> Compiled:
    operand = compile_expr(node.operand)
    if isinstance(operand, _Const):
        return _Const(values.lookup(operand.value, node.path))
    return _path_fn(operand, node.path)


def _each_items(value: Any, flatten: bool) -> list[Any] | None:
    if type(value) is not list:
        return None
    if not flatten:
        return value
    return [item for inner in value if type(inner) is list for item in inner]


def _each(node: ast.Each) -> Compiled:
    operand = compile_expr(node.operand)
    path, flatten, lookup = node.path, node.flatten, values.lookup

    def each(value: Any) -> Any:
        items = _each_items(value, flatten)
        if items is None:
            return None
        # A new list of the items (or of what the path reads from each), like any path read.
        return list(items) if not path else [lookup(item, path) for item in items]

    if isinstance(operand, _Const):
        return _Const(each(operand.value))
    op = operand
    return lambda s: each(op(s))


def _conditional(node: ast.Conditional) -> Compiled:
    test, yes, no = compile_expr(node.test), compile_expr(node.yes), compile_expr(node.no)
    if isinstance(test, _Const):
        return yes if values.truthy(test.value) else no
    test_fn, yes_fn, no_fn = _truth(node.test, test), _fn(yes), _fn(no)
    return lambda s: yes_fn(s) if test_fn(s) else no_fn(s)


def _object(node: ast.ObjectExpr) -> Compiled:
    # Dotted keys expand into nested objects: build the shape first, then one builder per level.
    shape: dict[str, Any] = {}
    for pair in node.pairs:
        place(shape, pair.key, pair.value)
    return _build_shape(shape)


def _build_shape(shape: dict[str, Any]) -> Compiled:
    entries = [
        (key, _build_shape(v) if isinstance(v, dict) else compile_expr(v))
        for key, v in shape.items()
    ]
    if all(isinstance(v, _Const) for _, v in entries):
        return _Const({k: cast(_Const, v).value for k, v in entries})
    items = tuple((k, _fn(v)) for k, v in entries)
    return lambda s: {k: f(s) for k, f in items}


def _filter(node: ast.Filter) -> Compiled:
    operand = compile_expr(node.operand)
    function, _ = values.FILTERS[node.name]
    arg = compile_expr(node.arg) if node.arg is not None else None
    if isinstance(operand, _Const) and (arg is None or isinstance(arg, _Const)):
        args = () if arg is None else (arg.value,)
        return _Const(function(operand.value, *args))
    op = _fn(operand)
    if node.name == "default":
        fallback = _fn(arg) if arg is not None else (lambda s: None)

        def default(s: Scope) -> Any:
            v = op(s)
            return fallback(s) if v is None else v

        return default
    if arg is None:
        return lambda s: function(op(s))
    if isinstance(arg, _Const):
        constant = arg.value
        return lambda s: function(op(s), constant)
    arg_fn = arg
    return lambda s: function(op(s), arg_fn(s))


def _unary(node: ast.Unary) -> Compiled:
    operand = compile_expr(node.operand)
    if node.op == "not":
        if isinstance(operand, _Const):
            return _Const(not values.truthy(operand.value))
        op = _truth(node.operand, operand)
        return lambda s: not op(s)
    if node.op == "exists":
        if isinstance(operand, _Const):
            return _Const(operand.value is not None)
        op = operand
        return lambda s: op(s) is not None
    if isinstance(operand, _Const):
        return _Const(values.negate(operand.value))
    negate, op = values.negate, operand
    return lambda s: negate(op(s))


def _matches(node: ast.Matches) -> Compiled:
    search = compile_pattern(node.pattern)
    stringify = values.stringify

    def test(v: Any) -> bool:
        t = type(v)
        if t is str:
            return search(v) is not None
        if t is int or t is float:
            return search(stringify(v)) is not None
        return False

    operand = compile_expr(node.operand)
    if isinstance(operand, _Const):
        return _Const(test(operand.value))
    op = operand
    return lambda s: test(op(s))


_FAST_NUMERIC: dict[str, tuple[Callable[[Any, Any], bool], Callable[[Any, Any], bool]]] = {
    ">": (lambda a, b: a > b, values.greater),
    ">=": (lambda a, b: a >= b, values.greater_equal),
    "<": (lambda a, b: a < b, values.less),
    "<=": (lambda a, b: a <= b, values.less_equal),
}


def _binary(node: ast.Binary) -> Compiled:
    left, right = compile_expr(node.left), compile_expr(node.right)
    op = node.op
    function = values.COMPARISONS.get(op) or values.ARITHMETIC[op]
    if isinstance(left, _Const) and isinstance(right, _Const):
        return _Const(function(left.value, right.value))
    if isinstance(right, _Const) and not isinstance(left, _Const):
        specialised = _against_constant(op, left, right.value)
        if specialised is not None:
            return specialised
    if isinstance(left, _Const) and not isinstance(right, _Const):
        specialised = _constant_against(op, left.value, right)
        if specialised is not None:
            return specialised
    lf, rf = _fn(left), _fn(right)
    return lambda s: function(lf(s), rf(s))


# `c OP x` is `x SWAPPED[OP] c`: equality is symmetric and values.order antisymmetric.
_SWAPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _constant_against(op: str, c: Any, right: Fn) -> Fn | None:
    """Fast paths for a constant on the left: ``"sale" in state.user.segments``, ``100 < x``."""
    if op in _SWAPPED:
        return _against_constant(_SWAPPED[op], right, c)
    if op in ("in", "not in") and values.plain_text(c):
        # Plain text equals only the same text (values.equals), so Python's `in` is exact.
        if op == "in":
            return lambda s: type(v := right(s)) is list and c in v
        return lambda s: not (type(v := right(s)) is list and c in v)
    return None


def _against_constant(op: str, left: Fn, c: Any) -> Fn | None:
    """Fast paths for the commonest conditions: a value against a constant."""
    plain_number = type(c) is int or type(c) is float
    if op in ("==", "!="):
        if values.plain_text(c):
            # Text that spells no number or boolean equals only the same text.
            if op == "==":
                return lambda s: left(s) == c
            return lambda s: left(s) != c
        if plain_number:
            equals = values.equals
            if op == "==":

                def eq(s: Scope) -> bool:
                    v = left(s)
                    t = type(v)
                    return v == c if t is int or t is float else equals(v, c)

                return eq

            def ne(s: Scope) -> bool:
                v = left(s)
                t = type(v)
                return v != c if t is int or t is float else not equals(v, c)

            return ne
        return None
    if op in _FAST_NUMERIC and plain_number:
        fast, slow = _FAST_NUMERIC[op]
        if op == ">":

            def gt(s: Scope) -> bool:
                v = left(s)
                t = type(v)
                return v > c if t is int or t is float else slow(v, c)

            return gt

        def ordered(s: Scope) -> bool:
            v = left(s)
            t = type(v)
            return bool(fast(v, c)) if t is int or t is float else slow(v, c)

        return ordered
    if op in ("in", "not in") and type(c) is list and c and all(type(x) is str for x in c):
        # Text equals text only when it is the same text; any other value needs the
        # number-like equality, unless no item spells a number or a boolean.
        members = frozenset(c)
        plain = all(values.plain_text(x) for x in c)
        listed = values.member

        def member(s: Scope) -> bool:
            v = left(s)
            if type(v) is str:
                return v in members
            return False if plain else listed(v, c)

        if op == "in":
            return member
        return lambda s: not member(s)
    if op == "contains" and values.plain_text(c):
        # Substring of text, item of a list (plain text equals only itself), key of an object.
        return lambda s: type(v := left(s)) in _CONTAINERS and c in v
    if op == "starts with" and type(c) is str:
        return lambda s: type(v := left(s)) is str and v.startswith(c)
    if op == "ends with" and type(c) is str:
        return lambda s: type(v := left(s)) is str and v.endswith(c)
    return None


_CONTAINERS = frozenset({str, list, dict})


def _is_boolean(node: ast.Expr) -> bool:
    """Whether ``node`` always gives ``true`` or ``false`` (then no truthiness test is needed)."""
    if isinstance(node, ast.Logical | ast.Matches):
        return True
    if isinstance(node, ast.Unary):
        return node.op in ("not", "exists")
    if isinstance(node, ast.Binary):
        return node.op in values.COMPARISONS
    return isinstance(node, ast.Literal) and type(node.value) is bool


def _truth(node: ast.Expr, compiled: Compiled) -> Fn:
    """``compiled`` as a condition: its truthiness (see values.truthy) as a bool."""
    fn = _fn(compiled)
    if _is_boolean(node):
        return fn
    truthy = values.truthy
    return lambda s: truthy(fn(s))


def _logical(node: ast.Logical) -> Compiled:
    is_and = node.op == "and"
    operands: list[Fn] = []
    for operand in node.operands:
        c = compile_expr(operand)
        if isinstance(c, _Const):
            if values.truthy(c.value) != is_and:  # false in `and` / true in `or` decides it
                return _Const(not is_and)
            continue  # true in `and` / false in `or` changes nothing
        operands.append(_truth(operand, c))
    if not operands:
        return _Const(is_and)
    if len(operands) == 1:
        return operands[0]
    if len(operands) == 2:
        a, b = operands
        if is_and:
            return lambda s: a(s) and b(s)
        return lambda s: a(s) or b(s)
    fns = tuple(operands)
    if is_and:
        return lambda s: all(f(s) for f in fns)
    return lambda s: any(f(s) for f in fns)


# One compiler per node type: a dict lookup rather than a chain of isinstance tests.
_COMPILERS: dict[type, Callable[[Any], Compiled]] = {
    ast.Literal: _literal,
    ast.Ref: _ref,
    ast.ListExpr: _list,
    ast.ObjectExpr: lambda node: _object(node),
    ast.GetPath: _get_path,
    ast.Each: lambda node: _each(node),
    ast.Conditional: lambda node: _conditional(node),
    ast.Filter: lambda node: _filter(node),
    ast.Unary: lambda node: _unary(node),
    ast.Matches: lambda node: _matches(node),
    ast.Binary: lambda node: _binary(node),
    ast.Logical: lambda node: _logical(node),
}


# ------------------------------------------------------------------ statements
class CompiledFile:
    """The compiled rules, elements and tests of one file."""

    __slots__ = ("elements", "guards", "path", "rules", "tests", "warnings")

    def __init__(
        self,
        path: str,
        rules: list[CompiledRule],
        elements: list[CompiledElement],
        tests: list[CompiledTest],
        guards: list[CompiledGuard] | None = None,
        warnings: list[Diagnostic] | None = None,
    ) -> None:
        self.path = path
        self.rules = rules
        self.elements = elements
        self.tests = tests
        self.guards = guards or []
        self.warnings = warnings or []  # found while compiling (a condition that is constant)


def _source(lines: Sequence[str], span: Span) -> str:
    if span.line == span.end_line:
        return lines[span.line - 1][span.column - 1 : span.end_column - 1]
    parts = [lines[span.line - 1][span.column - 1 :]]
    parts += lines[span.line : span.end_line - 1]
    parts.append(lines[span.end_line - 1][: span.end_column - 1])
    return " ".join(p.strip() for p in parts)


def _has_refs(expr: ast.Expr) -> bool:
    """Whether ``expr`` reads anything (else it is a constant, not worth showing)."""
    if isinstance(expr, ast.Ref):
        return True
    if isinstance(expr, ast.Literal):
        return expr.parts is not None
    if isinstance(expr, ast.ListExpr):
        return any(_has_refs(i) for i in expr.items)
    if isinstance(expr, ast.ObjectExpr):
        return any(_has_refs(p.value) for p in expr.pairs)
    if isinstance(expr, ast.Filter):
        return _has_refs(expr.operand) or (expr.arg is not None and _has_refs(expr.arg))
    if isinstance(expr, ast.Binary):
        return _has_refs(expr.left) or _has_refs(expr.right)
    if isinstance(expr, ast.Logical):
        return any(_has_refs(o) for o in expr.operands)
    if isinstance(expr, ast.Unary | ast.Matches | ast.GetPath | ast.Each):
        return _has_refs(expr.operand)
    if isinstance(expr, ast.Conditional):
        return _has_refs(expr.test) or _has_refs(expr.yes) or _has_refs(expr.no)
    return False


def _lazy(expr: ast.Expr) -> Fn:
    """A trace operand, compiled the first time a trace needs it (most never are)."""
    compiled: list[Fn] = []

    def evaluate(s: Scope) -> Any:
        if not compiled:
            compiled.append(_fn(compile_expr(expr)))
        return compiled[0](s)

    return evaluate


def _shown(expr: ast.Expr) -> list[ast.Expr]:
    """The values a trace shows for a clause: what its comparisons compared."""
    if isinstance(expr, ast.Logical):
        return [leaf for operand in expr.operands for leaf in _shown(operand)]
    if isinstance(expr, ast.Binary):
        return [expr.left, expr.right]
    if isinstance(expr, ast.Unary):
        return _shown(expr.operand) if expr.op == "not" else [expr.operand]
    if isinstance(expr, ast.Matches):
        return [expr.operand]
    return [expr]


def _condition(
    node: ast.Condition,
    lines: Sequence[str],
    guard: str | None = None,
    warnings: list[Diagnostic] | None = None,
) -> CompiledCondition:
    compiled = compile_expr(node.expr)
    if isinstance(compiled, _Const) and warnings is not None:
        verdict = "true" if values.truthy(compiled.value) else "false"
        line = lines[node.span.line - 1] if 0 < node.span.line <= len(lines) else None
        effect = (
            "has no effect"
            if (verdict == "true") != node.negated
            else "stops the rule from ever firing"
        )
        warnings.append(
            Diagnostic(
                node.expr.span,
                f"this condition is always {verdict}: the '{'unless' if node.negated else 'when'}' line {effect}",
                "warning",
                line,
            )
        )
    test = _truth(node.expr, compiled)
    # The operands a trace shows when the clause decides: the values it compared, not constants.
    sources: dict[str, Fn] = {}
    for part in _shown(node.expr):
        if _has_refs(part):
            sources.setdefault(_source(lines, part.span), _lazy(part))
    operands = tuple(sources.items())
    condition = CompiledCondition(test, node.negated, node.source, node.span, operands, guard)
    _upgrade_on_first_call(condition, node.expr)
    return condition


def _closure(expr: ast.Expr) -> Fn:
    return _fn(compile_expr(expr))


def _upgrade_on_first_call(condition: CompiledCondition, expr: ast.Expr) -> None:
    """Swap the condition's closure for generated code the first time it runs (see
    :mod:`engine.codegen`); a condition that never runs never pays for ``compile()``."""
    if isinstance(expr, ast.Literal):
        return  # a constant: nothing to gain
    upgrade = _Upgrade(condition, "fn", _generated_condition, expr, condition.fn)
    object.__setattr__(condition, "fn", upgrade)


def _generated_condition(expr: ast.Expr, condition: CompiledCondition | None) -> Fn:
    # Imported here: loading a ruleset (and `tagengine check`) never runs a condition.
    from engine.codegen import generate_conditions

    label = "" if condition is None else str(condition.span)
    function, on_state = generate_conditions(expr, _closure, label)
    if condition is not None and on_state is not None:
        object.__setattr__(condition, "on_state", on_state)
    return function


class _Upgrade:
    """What a compiled part holds (a condition's or an element's ``fn``, an action's
    ``build``) until its first call, which puts ``make(source, owner)`` in its place: the
    same function as generated code, compiled only for the parts that run. A part too big
    to generate keeps ``closure``, the one it had.

    It holds its owner weakly: a strong reference would be a cycle (the owner holds it), and
    a ruleset with cycles is never freed once frozen (``gc.freeze``, README "Garbage
    collection"); without one, a reload frees the old ruleset by reference counting."""

    __slots__ = ("attribute", "closure", "make", "owner", "source")

    def __init__(
        self,
        owner: Any,
        attribute: str,
        make: Callable[[Any, Any], Any],
        source: Any,
        closure: Any = None,
    ) -> None:
        self.owner = weakref.ref(owner)
        self.attribute = attribute
        self.make = make
        self.source = source
        self.closure = closure

    def __call__(self, s: Scope) -> Any:
        owner = self.owner()
        current = self if owner is None else getattr(owner, self.attribute)
        if current is self:
            try:
                current = self.make(self.source, owner)
            except (RecursionError, SyntaxError, MemoryError):  # too deep: keep the closures
                if self.closure is None:
                    raise
                current = self.closure
            if owner is not None:
                # The snapshot stays immutable in meaning: the same function, only faster.
                object.__setattr__(owner, self.attribute, current)
        return current(s)


def _action(node: ast.Action) -> CompiledAction:
    fields = node.fields if isinstance(node, ast.Send) else node.value
    if isinstance(node, ast.Send):
        destination = cast(Any, DESTINATIONS[node.destination])
        spans = {pair.key[0]: pair.key_span for pair in node.fields.pairs}
        action = CompiledAction("send", destination, _unbuilt, node.span, spans)
    else:
        action = CompiledAction("push", None, _unbuilt, node.span)
    _build_on_first_call(action, fields)
    return action


def _unbuilt(s: Scope) -> Any:  # pragma: no cover - replaced before any call
    raise AssertionError("action builder not installed")


def _build_on_first_call(action: CompiledAction, fields: ast.ObjectExpr) -> None:
    """Compile the action's field builder when its rule first fires: most rules of a large
    property fire rarely, and a load (or a hot reload) should not pay for all of them."""
    object.__setattr__(action, "build", _Upgrade(action, "build", _field_builder, fields))


def _upgrade_element_on_first_call(element: CompiledElement, expr: ast.Expr) -> None:
    """Swap the element's closures for generated code (:mod:`engine.fieldgen`) the first
    time it is evaluated, as conditions are (an element never read never pays for it)."""
    if isinstance(expr, ast.Literal) and expr.parts is None:
        return  # a constant: nothing to gain
    upgrade = _Upgrade(element, "fn", _generated_element, expr, element.fn)
    object.__setattr__(element, "fn", upgrade)


def _generated_element(expr: ast.Expr, element: CompiledElement | None) -> Fn:
    label = "" if element is None else f"{element.name} {element.span}"
    return generate_element(expr, _leaf, label)


def _leaf(node: ast.Expr) -> tuple[bool, Any]:
    compiled = compile_expr(node)
    return (True, compiled.value) if isinstance(compiled, _Const) else (False, compiled)


def _field_builder(fields: ast.ObjectExpr, action: CompiledAction | None) -> FieldBuilder:
    """The action's fields as generated code (:mod:`engine.fieldgen`), or as closures for a
    structure too deep to compile."""
    try:
        return generate_fields(fields, _leaf, "" if action is None else str(action.span))
    except (RecursionError, SyntaxError, MemoryError):
        closure = _fn(compile_expr(fields))
        return FieldBuilder(closure, closure)


def _rule(
    node: ast.Rule, position: int, lines: Sequence[str], warnings: list[Diagnostic] | None = None
) -> CompiledRule:
    whens = [_condition(c, lines, None, warnings) for c in node.conditions if not c.negated]
    unlesses = [_condition(c, lines, None, warnings) for c in node.conditions if c.negated]
    return CompiledRule(
        name=node.name,
        order=node.order if node.order is not None else DEFAULT_ORDER,
        file=node.span.file,
        position=position,
        span=node.span,
        events=tuple(t.pattern for t in node.triggers if isinstance(t, ast.EventTrigger)),
        changes=tuple(t.path for t in node.triggers if isinstance(t, ast.ChangeTrigger)),
        conditions=(*whens, *unlesses),
        sample=node.samples[0].percent if node.samples else None,
        limits=tuple((limit.count, limit.unit) for limit in node.limits),
        actions=tuple(_action(a) for a in node.actions),
        skipped_guards=frozenset(name for name, _ in node.skipped_guards),
        limit_keys=(
            tuple(tuple(_closure(key) for key in limit.keys) for limit in node.limits)
            if any(limit.keys for limit in node.limits)
            else ()
        ),
    )


def _constant(node: ast.Expr) -> Any:
    c = compile_expr(node)
    return c.value if isinstance(c, _Const) else None


def _test(node: ast.Test, setup: ast.Setup | None = None) -> CompiledTest:
    session: str | None = None
    steps: list[TestStep] = []
    for step in (*(setup.steps if setup is not None else ()), *node.steps):
        if isinstance(step, ast.TestSession):
            if any(not isinstance(done, VisitorStep) for done in steps):
                steps.append(SessionStep(step.session, step.span))  # switches from here on
            else:
                session = step.session
        elif isinstance(step, ast.TestVisitor):
            steps.append(VisitorStep(_constant(step.fields), step.span))
        elif isinstance(step, ast.TestConsent):
            steps.append(ConsentStep(cast(Any, step.value), step.span))
        elif isinstance(step, ast.Push):
            steps.append(PushStep(_constant(step.value), step.span))
        elif isinstance(step, ast.ExpectSend):
            fields = tuple((f.path, _constant(f.value), f.span) for f in step.fields)
            steps.append(
                ExpectSendStep(
                    cast(Any, DESTINATIONS[step.destination]), step.rule, fields, step.span
                )
            )
        elif isinstance(step, ast.ExpectCount):
            dest = cast(Any, DESTINATIONS[step.destination]) if step.destination else None
            steps.append(ExpectCountStep(step.count, dest, step.rule, step.span))
        else:
            steps.append(ExpectRuleStep(step.rule, step.status, step.span))
    return CompiledTest(node.name, node.span, session, tuple(steps))


def compile_file(file: ast.File, lines: Sequence[str]) -> CompiledFile:
    """Compile one checked file. Call only on files whose check found no error."""
    rules: list[CompiledRule] = []
    elements: list[CompiledElement] = []
    tests: list[CompiledTest] = []
    guards: list[CompiledGuard] = []
    warnings: list[Diagnostic] = []
    setup = next((s for s in file.statements if isinstance(s, ast.Setup)), None)
    for statement in file.statements:
        if isinstance(statement, ast.Rule):
            rules.append(_rule(statement, len(rules), lines, warnings))
        elif isinstance(statement, ast.Element):
            fn = _fn(compile_expr(statement.expr))
            element = CompiledElement(statement.name, fn, statement.keep, statement.span)
            _upgrade_element_on_first_call(element, statement.expr)
            elements.append(element)
        elif isinstance(statement, ast.Test):
            tests.append(_test(statement, setup))
        elif isinstance(statement, ast.Guard):
            conditions = (
                *(
                    _condition(c, lines, statement.name, warnings)
                    for c in statement.conditions
                    if not c.negated
                ),
                *(
                    _condition(c, lines, statement.name, warnings)
                    for c in statement.conditions
                    if c.negated
                ),
            )
            guards.append(CompiledGuard(statement.name, conditions, statement.span))
    return CompiledFile(file.path, rules, elements, tests, guards, warnings)


# ------------------------------------------------------------------ settings
class _Missing(Exception):
    def __init__(self, name: str, span: Span) -> None:
        self.name = name
        self.span = span


def constant_value(node: ast.Expr, environ: Mapping[str, str]) -> Any:
    """The value of a settings expression; ``env()`` reads ``environ``."""
    if isinstance(node, ast.Call):
        args = [cast(ast.Literal, a).value for a in node.args]
        name = cast(str, args[0])
        if name in environ:
            return environ[name]
        if len(args) > 1:
            return args[1]
        raise _Missing(name, node.span)
    if isinstance(node, ast.ObjectExpr):
        out: dict[str, Any] = {}
        for pair in node.pairs:
            target = out
            for part in pair.key[:-1]:
                target = target.setdefault(part, {})
            target[pair.key[-1]] = constant_value(pair.value, environ)
        return out
    if isinstance(node, ast.ListExpr):
        return [constant_value(item, environ) for item in node.items]
    return _constant(node)


def compile_settings(
    blocks: Sequence[ast.Settings],
    lines_of: Callable[[Span], str | None],
    environ: Mapping[str, str] | None = None,
) -> tuple[LoadedSettings, list[Diagnostic]]:
    """Validate the settings blocks (reading the environment now) into settings models.

    When pydantic would accept every block as it is (:func:`plainly_valid`), there is nothing
    to report and it is not imported: the models are built when first read."""
    env = os.environ if environ is None else environ
    read: list[tuple[ast.Settings, dict[str, Any], list[Diagnostic]]] = []
    for block in blocks:
        data: dict[str, Any] = {}
        missed: list[Diagnostic] = []
        for pair in block.fields.pairs:
            try:
                data[pair.key[0]] = constant_value(pair.value, env)
            except _Missing as missing:
                message = (
                    f"environment variable '{missing.name}' is not set and has no default "
                    f'(set it, or write env("{missing.name}", "default"))'
                )
                missed.append(Diagnostic(missing.span, message, source_line=lines_of(missing.span)))
        read.append((block, data, missed))
    if all(plainly_valid(block.kind, data) for block, data, _ in read):
        problems = [problem for _, _, missed in read for problem in missed]
        return LoadedSettings.plain({block.kind: data for block, data, _ in read}), problems
    from pydantic import ValidationError

    from engine.settings import SETTINGS_MODELS

    found: dict[str, Any] = {}
    problems = []
    for block, data, missed in read:
        problems.extend(missed)
        spans = {pair.key[0]: pair for pair in block.fields.pairs}
        try:
            found[block.kind] = SETTINGS_MODELS[block.kind].model_validate(data)
        except ValidationError as error:
            for item in error.errors(include_input=False, include_url=False):
                key = str(item["loc"][0]) if item["loc"] else ""
                where = spans.get(key)
                span = where.value.span if where is not None else block.kind_span
                # A validator's own message is written for the analyst: keep it as it is.
                error_text = (
                    item.get("ctx", {}).get("error") if item["type"] == "value_error" else None
                )
                detail = str(error_text) if error_text is not None else item["msg"].lower()
                message = f"{block.kind} setting '{key}': {detail}"
                problems.append(Diagnostic(span, message, source_line=lines_of(span)))
    settings = LoadedSettings.built(
        found.get("edge"), found.get("sitecore"), found.get("datalayer"), found.get("consent")
    )
    return settings, problems
