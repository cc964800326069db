"""Generated conditions compute exactly what the closures compute, on awkward inputs too."""

from __future__ import annotations

from typing import Any

import pytest

from engine import ast
from engine.codegen import generate_conditions
from engine.compiler import compile_expr
from engine.parser import parse
from engine.scope import Scope
from tests.conftest import load_text

CONDITIONS = [
    'state.total > 50 and state.page == "checkout" and state.user.tier in ["gold", "silver"]',
    "state.total >= 10 or not state.flag",
    "state.total < 3.5 and state.total <= 3",
    "state.total == 5 or state.total != 7",
    'state.page != "home" and state.page not in ["a", "b"]',
    "state.items[0].sku exists",
    'event.eventInfo.id == "x" or event.event == "e"',
    'tier == "gold" and tier_name | upper == "GOLD"',
    'state.page matches "(?i)^check" and state.total + 1 > 2',
    "state.flag",
    "state.user.tier in state.tiers",
    'state.user["tier"] == "gold"',
    'state.code in ["404", "error", "true"] or state.page not in ["1.5", "b"]',
    # Paths read unchecked first (engine.codegen.generate_condition), the checked code after
    # a step into something that is not an object.
    "state.a.b.c == 1 or state.a.b.d exists or not state.a.e",
    'state.user.tier == "gold" and "sale" in state.user.segments or state.user.id == 2',
    "state.items[0].sku.code exists or state.items[1].sku == 1",
    "event.eventInfo.id.x exists",
]

STATES: list[dict[str, Any]] = [
    {},
    {"total": 60, "page": "checkout", "user": {"tier": "gold"}, "flag": True},
    {"total": "60", "page": "checkout", "user": {"tier": "silver"}},
    {"total": " 4 ", "page": "Checkout", "user": "gold", "flag": 0},
    {"total": True, "page": None, "user": {"tier": None}, "items": [{"sku": "A"}]},
    {"total": 5, "page": "b", "user": {"tier": "gold"}, "items": [], "tiers": ["gold"]},
    {"total": 3.0, "page": 7, "user": [1], "items": "x", "tiers": "gold"},
    {"total": [1], "page": {"a": 1}, "user": {"tier": ["gold"]}, "flag": "yes"},
    {"total": float("1e300"), "page": "checkout", "user": {"tier": "platinum"}},
    {"code": 404, "page": 1.5},
    {"code": "404.0", "page": "1.50"},
    {"code": True, "page": "b"},
    {"code": " 404 ", "page": [1.5]},
    {"a": {"b": {"c": 1, "d": 0}, "e": ""}, "user": {"tier": "gold", "segments": ["sale"]}},
    {"a": {"b": {"c": "1"}, "e": "x"}, "user": {"tier": "gold", "segments": "sale", "id": 2}},
    {"a": {"b": "c"}, "user": {"segments": ["sale"], "id": 2.0}},
    {"a": {"b": [{"c": 1}]}, "user": "gold", "items": [{"sku": {"code": 0}}]},
    {"a": [1], "items": [{"sku": "code"}, {"sku": 1}]},
    {"a": {"b": None, "e": None}, "items": [None, {"sku": True}]},
    {"a": 5, "user": {"tier": "gold", "segments": {"sale": 1}}, "items": {"0": 1}},
]
EVENTS = [
    {"event": "e"},
    {"event": "x", "eventInfo": {"id": "x"}},
    {"event": "e", "eventInfo": 5},
    {"event": "e", "eventInfo": {"id": {"x": None}}},
    {"event": "e", "eventInfo": {"id": {"x": 0}}},
]


@pytest.mark.parametrize("text", CONDITIONS)
def test_generated_code_matches_the_closure(text: str) -> None:
    rules = (
        "element tier = state.user.tier\nelement tier_name = state.user.tier\n"
        f'rule "R" {{\n  on "e"\n  when {text}\n  send event {{ type: "t" }}\n}}\n'
    )
    ruleset = load_text('edge { datastream: "d" }\n' + rules)
    condition = ruleset.rules[0].conditions[0]
    parsed = parse(rules).file
    assert parsed is not None
    rule = parsed.statements[-1]
    assert isinstance(rule, ast.Rule)
    expr = rule.conditions[0].expr
    closure = compile_expr(expr)
    assert callable(closure)
    generated, on_state = generate_conditions(expr, lambda e: compile_expr(e), "test")  # type: ignore[arg-type, return-value]
    # The state alone is enough unless the condition reads the event, an element or a closure.
    reads_more = "event." in text or text.startswith("tier ") or "matches" in text
    assert (on_state is None) is reads_more
    for state in STATES:
        for event in EVENTS:
            expected = bool(closure(Scope(state, event, ruleset.elements)))
            assert generated(Scope(state, event, ruleset.elements)) is expected, (state, event)
            assert condition.fn(Scope(state, event, ruleset.elements)) is expected
            if on_state is not None:
                assert on_state(state) is expected, state


def test_a_condition_is_generated_on_its_first_run_only() -> None:
    ruleset = load_text(
        'edge { datastream: "d" }\nrule "R" {\n  on "e"\n  when state.n > 1\n  send event { type: "t" }\n}\n'
    )
    condition = ruleset.rules[0].conditions[0]
    stub = condition.fn
    assert stub(Scope({"n": 2}, {}, ruleset.elements)) is True
    fast = condition.fn
    assert fast is not stub and fast.__name__ == "_condition"
    assert stub(Scope({"n": 0}, {}, ruleset.elements)) is False  # the old reference still works
    assert condition.fn is fast


def test_generated_source_holds_no_rule_text() -> None:
    hostile = '"); import os; os._exit(1); ("'
    ruleset = load_text(
        'edge { datastream: "d" }\n'
        f'rule "R" {{\n  on "e"\n  when state.page == "{hostile.replace(chr(34), chr(92) + chr(34))}"\n'
        '  send event { type: "t" }\n}\n'
    )
    condition = ruleset.rules[0].conditions[0]
    assert condition.fn(Scope({"page": hostile}, {}, ruleset.elements)) is True
    assert condition.fn(Scope({"page": "x"}, {}, ruleset.elements)) is False


def test_membership_in_text_that_spells_numbers_compares_as_equality_does() -> None:
    ruleset = load_text(
        'edge { datastream: "d" }\n'
        'rule "R" {\n  on "e"\n  when state.code in ["404", "error"]\n  send event { type: "t" }\n}\n'
    )
    fn = ruleset.rules[0].conditions[0].fn
    got = {
        repr(code): fn(Scope({"code": code}, {"event": "e"}, ruleset.elements))
        for code in (404, 404.0, "404", " 404", "404.0", "error", "Error", True, None, [404])
    }
    assert got == {
        "404": True,  # the number equals the text that spells it
        "404.0": True,
        "'404'": True,
        "' 404'": False,  # text equals only the same text
        "'404.0'": False,
        "'error'": True,
        "'Error'": False,
        "True": False,
        "None": False,
        "[404]": False,
    }
