"""The fast paths of conditions (closures and generated code) compute what the language
defines: each is checked against a plain interpreter of the syntax tree built on
:mod:`engine.values`, over awkward values."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from engine import ast, values
from engine.codegen import generate_condition
from engine.compiler import compile_expr
from engine.scope import Scope
from tests.conftest import load_text

ISSUE_CONDITION = (
    'state.page.type == "checkout" and state.cart.total > 100 and '
    '("sale" in state.user.segments or state.user.tier == "gold") and not state.user.internal'
)

CONDITIONS = [
    ISSUE_CONDITION,
    '"sale" in state.user.segments',
    '"sale" not in state.user.segments',
    '"1" in state.list',
    "true in state.list",
    "1 in state.list",
    '"a" in ["a", "b"]',
    "100 < state.cart.total",
    "100 >= state.cart.total",
    "1.5 <= state.n and 7 > state.n",
    '"checkout" == state.page.type',
    '"true" == state.flag',
    "5 != state.n",
    '"2020-01-01T00:00:00Z" < state.when',
    'state.tags contains "sale"',
    'state.tags contains "1"',
    'state.page.type starts with "check"',
    'state.page.type ends with "out"',
    'state.when starts with "2020"',
    "state.a == state.b",
    "state.a in state.b",
    "state.a != state.b or state.a contains state.b",
    "state.a + 1 > state.b",
    "state.a - state.b",
    "-state.n < 0",
    "-state.n",
    "not state.flag",
    "state.flag",
    "state.flag or state.n",
    "state.flag and state.tags",
    "not (state.a > 1)",
    "not (state.a + state.b)",
    'state.tags == ["a", "b"]',
    '["a", "b"] != state.tags',
    'state.tags in [["a"], "b"]',
    "state.n * 2 == 4",
    'tier == "gold" or tier in state.tags or segments contains "sale"',
    # Containers read more than once are read once: only where the first read surely ran.
    '(state.flag or state.user.tier == "gold") and state.user.internal',
    '(state.user.tier == "gold" or state.flag) and not state.user.internal',
    'state.flag and state.user.tier == "gold" or state.user.internal',
    'state.user.tier == "gold" and (state.flag or state.user.segments contains "sale")',
    'not (state.user.tier == "gold") and state.user.segments contains "sale"',
    'user.tier == "gold" and user.internal or user.segments contains "sale"',
    "state.user.internal.a == 1 or state.user.internal.b or state.user.tier.c",
    "state.user.tier == state.user.internal and state.page.type != state.page",
    "-state.cart.total < state.cart.total - 1 and state.cart.total",
    'state.list[0] == "sale" and state.list[0] and state.user.segments[1] == "new"',
]

POOL: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    1.0,
    -1,
    2,
    100,
    100.5,
    150,
    2**63,
    "",
    "0",
    "1",
    "100",
    " 150 ",
    "1e3",
    "true",
    "TRUE ",
    "false",
    "no",
    "off",
    "sale",
    "Sale",
    "sales",
    "wholesale",
    "gold",
    "checkout",
    "check",
    "x",
    "2020-01-01T00:00:00Z",
    "2021-06-01",
    [],
    ["sale"],
    ["sale", "new"],
    ["sales"],
    ["Sale", "wholesale"],
    [1, "sale"],
    ["1"],
    [True],
    [1],
    [None, {}],
    ["a", "b"],
    [["a"]],
    {},
    {"sale": 1},
    {"sales": 1},
    {"type": "checkout"},
]


def _value(rng: random.Random) -> Any:
    return values.copy_json(rng.choice(POOL))


def _state(rng: random.Random) -> dict[str, Any]:
    def maybe(inner: dict[str, Any]) -> Any:
        roll = rng.random()
        return inner if roll < 0.8 else None if roll < 0.9 else _value(rng)

    state: dict[str, Any] = {
        "page": maybe({"type": rng.choice((*POOL[:8], "checkout", "checkout", "cart"))}),
        "cart": maybe({"total": rng.choice((*POOL[:12], 50, 101, 250.5))}),
        "user": maybe(
            {
                "segments": rng.choice((["sale"], ["new", "sale"], ["vip"], [], *POOL)),
                "tier": rng.choice(("gold", "silver", *POOL[:6])),
                "internal": rng.choice((True, False, False, *POOL[:16])),
            }
        ),
    }
    for key in ("a", "b", "n", "flag", "tags", "list", "when"):
        if rng.random() < 0.9:
            state[key] = _value(rng)
    return {k: v for k, v in state.items() if v is not None or rng.random() < 0.5}


def _reference(node: ast.Expr, scope: Scope) -> Any:
    """The language's meaning of ``node``, straight from engine.values."""
    if isinstance(node, ast.Literal):
        assert node.parts is None
        return node.value
    if isinstance(node, ast.Ref):
        if node.root == "element":
            assert node.name is not None
            root = scope.element(node.name)
        else:
            root = {"state": scope.state, "event": scope.event, "request": scope.request}[node.root]
        return values.lookup(root, node.path)
    if isinstance(node, ast.ListExpr):
        return [_reference(item, scope) for item in node.items]
    if isinstance(node, ast.Binary):
        function = values.COMPARISONS.get(node.op) or values.ARITHMETIC[node.op]
        return function(_reference(node.left, scope), _reference(node.right, scope))
    if isinstance(node, ast.Logical):
        truths = (values.truthy(_reference(o, scope)) for o in node.operands)
        return all(truths) if node.op == "and" else any(truths)
    if isinstance(node, ast.Unary):
        operand = _reference(node.operand, scope)
        if node.op == "not":
            return not values.truthy(operand)
        if node.op == "exists":
            return operand is not None
        return values.negate(operand)
    raise AssertionError(f"no reference for {type(node).__name__}")


ELEMENTS = (
    "element tier = state.user.tier\nelement segments = state.user.segments\n"
    'element user = state.user\nelement unused = "x"\n'
)


def _condition(text: str) -> tuple[Any, ast.Expr, Any]:
    """(the ruleset, the condition's syntax tree, the CompiledCondition)."""
    rules = ELEMENTS + f'rule "R" {{\n  on "e"\n  when {text}\n  send event {{ type: "t" }}\n}}\n'
    ruleset = load_text('edge { datastream: "d" }\n' + rules)
    rule = ruleset.rules[0]
    expr = _parsed(rules)
    return ruleset, expr, rule.conditions[0]


def _parsed(rules: str) -> ast.Expr:
    from engine.parser import parse

    parsed = parse(rules).file
    assert parsed is not None
    rule = parsed.statements[-1]
    assert isinstance(rule, ast.Rule)
    return rule.conditions[0].expr


@pytest.mark.parametrize("text", CONDITIONS)
def test_fast_paths_compute_what_the_language_defines(text: str) -> None:
    ruleset, expr, condition = _condition(text)
    closure = compile_expr(expr)
    generated = generate_condition(expr, lambda e: compile_expr(e), "test")  # type: ignore[arg-type, return-value]
    rng = random.Random(text)
    for _ in range(400):
        state = _state(rng)
        expected = values.truthy(_reference(expr, Scope(state, {}, ruleset.elements)))
        if callable(closure):
            got = values.truthy(closure(Scope(state, {}, ruleset.elements)))
        else:
            got = values.truthy(closure.value)
        assert got is expected, (text, state)
        assert generated(Scope(state, {}, ruleset.elements)) is expected, (text, state)
        assert condition.fn(Scope(state, {}, ruleset.elements)) is expected, (text, state)


def test_the_issue_condition_is_generated_without_closures() -> None:
    _, expr, _ = _condition(ISSUE_CONDITION)
    fallbacks: list[ast.Expr] = []

    def closure_of(node: ast.Expr) -> Any:
        fallbacks.append(node)
        return compile_expr(node)

    generated = generate_condition(expr, closure_of, "test")
    assert fallbacks == []
    # Helpers only for what is not a plain number, text, list or bool: `>` on text, truthy text.
    helpers = {name for name in generated.__code__.co_names if name.startswith(("_f", "_g"))}
    assert len(helpers) == 1


def test_list_membership_of_plain_text_is_python_membership() -> None:
    """`type(v) is list and c in v` is values.member(c, v) for a constant that spells no number
    and no boolean: such text equals only the same text."""
    texts = [v for v in POOL if type(v) is str] + ["sale ", " sale", "yes", "nan", "inf", "1_0"]
    plain = [t for t in texts if values.plain_text(t)]
    assert "sale" in plain and "1" not in plain and "true" not in plain and "" in plain
    rng = random.Random(5)
    lists = [rng.sample(POOL + texts, rng.randint(0, 6)) for _ in range(2_000)]
    for c, v in itertools.product(plain, [*POOL, *texts, *lists]):
        fast = type(v) is list and c in v
        assert fast is values.member(c, v), (c, v)
        assert (not fast) is values.not_member(c, v), (c, v)
