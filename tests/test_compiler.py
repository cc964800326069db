"""Rule text → compiled closures: folding, objects, interpolation, elements, conditions, the
trigger index, evaluation order and the ruleset snapshot (docs/language.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import engine
from engine import RuleError, Ruleset
from engine.loader import build_ruleset, clear_cache
from engine.ruleset import CompiledElement, CompiledRule
from engine.scope import Scope

EDGE = 'edge { datastream: "ds-1" }\n'


def load(text: str, name: str = "c.rules") -> Ruleset:
    return build_ruleset([(name, text.encode())], environ={})


def load_files(files: Mapping[str, str]) -> Ruleset:
    return build_ruleset([(n, t.encode()) for n, t in files.items()], environ={})


def scope(
    ruleset: Ruleset,
    state: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
    elements: Mapping[str, CompiledElement] | None = None,
    kept: Mapping[str, dict[str, Any]] | None = None,
) -> Scope:
    return Scope(
        state if state is not None else {},
        event if event is not None else {},
        elements if elements is not None else ruleset.elements,
        kept,
    )


def element(ruleset: Ruleset, name: str, state: dict[str, Any] | None = None) -> Any:
    return ruleset.elements[name].fn(scope(ruleset, state))


def counted(ruleset: Ruleset) -> tuple[dict[str, CompiledElement], dict[str, int]]:
    """The ruleset's elements, each wrapped to count its evaluations."""
    counts = dict.fromkeys(ruleset.elements, 0)

    def wrap(name: str, fn: Callable[[Scope], Any]) -> Callable[[Scope], Any]:
        def run(s: Scope) -> Any:
            counts[name] += 1
            return fn(s)

        return run

    wrapped = {
        name: dataclasses.replace(e, fn=wrap(name, e.fn)) for name, e in ruleset.elements.items()
    }
    return wrapped, counts


def names(rules: list[CompiledRule] | tuple[CompiledRule, ...]) -> list[str]:
    return [r.name for r in rules]


# ------------------------------------------------------------------ constant folding
def test_arithmetic_folds_to_a_constant() -> None:
    rs = load('element three = 1 + 2\nelement text = "  Mixed " | trim | lower\n')
    # A folded constant never reads the scope: calling it without one works.
    assert rs.elements["three"].fn(None) == 3  # type: ignore[arg-type]
    assert rs.elements["text"].fn(None) == "mixed"  # type: ignore[arg-type]
    assert element(rs, "three") == 3


def test_non_constant_reads_the_scope() -> None:
    rs = load("element total = state.cart.total + 1\n")
    with pytest.raises(AttributeError):
        rs.elements["total"].fn(None)  # type: ignore[arg-type]
    assert element(rs, "total", {"cart": {"total": 41}}) == 42


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("[1, [2, 3]]", [1, [2, 3]]),
        ("{ a: [1], b: { c: 2 } }", {"a": [1], "b": {"c": 2}}),
        ("{ a.b: [1] }", {"a": {"b": [1]}}),
        ("[1, 2] | first", 1),
    ],
)
def test_constant_containers_are_not_shared(expr: str, expected: Any) -> None:
    rs = load(f"element c = {expr}\n")
    fn = rs.elements["c"].fn
    first = fn(None)  # type: ignore[arg-type]
    assert first == expected
    if isinstance(first, list):
        first.append("mutated")
        if isinstance(first[1], list):
            first[1].append("mutated")
    elif isinstance(first, dict):
        first["new"] = 1
        for value in first.values():
            if isinstance(value, list):
                value.append("mutated")
            elif isinstance(value, dict):
                value["new"] = 1
    second = fn(None)  # type: ignore[arg-type]
    assert second == expected
    if isinstance(second, list | dict):
        assert second is not first


def test_constant_parts_of_a_dynamic_object_are_not_shared() -> None:
    rs = load('element o = { page: state.page, tags: ["a"], meta: { v: 1 } }\n')
    s = scope(rs, {"page": "home"})
    first = rs.elements["o"].fn(s)
    assert first == {"page": "home", "tags": ["a"], "meta": {"v": 1}}
    first["tags"].append("b")
    first["meta"]["v"] = 2
    assert rs.elements["o"].fn(scope(rs, {"page": "home"})) == {
        "page": "home",
        "tags": ["a"],
        "meta": {"v": 1},
    }


def test_action_build_returns_fresh_fields() -> None:
    rs = load(
        EDGE
        + """
rule "R" {
  on "x"
  send event { type: "t", xdm: { a.b: [1, 2] }, data: { k: "v" } }
}
"""
    )
    build = rs.rules[0].actions[0].build
    first = build(scope(rs))
    assert first == {"type": "t", "xdm": {"a": {"b": [1, 2]}}, "data": {"k": "v"}}
    first["xdm"]["a"]["b"].append(3)
    first["data"]["k"] = "changed"
    first["extra"] = True
    assert build(scope(rs)) == {"type": "t", "xdm": {"a": {"b": [1, 2]}}, "data": {"k": "v"}}


# ------------------------------------------------------------------ objects
def test_dotted_keys_expand_and_merge() -> None:
    rs = load(
        """
element o1 = { a.b: 1, a.c: 2 }
element o2 = { a.b: 1, a: { c: 2 } }
element o3 = { web.webPageDetails.name: state.name, web.webPageDetails.pageViews.value: 1 }
element o4 = { x.y.z: state.v, x.w: [state.v] }
"""
    )
    assert element(rs, "o1") == {"a": {"b": 1, "c": 2}}
    assert element(rs, "o2") == {"a": {"b": 1, "c": 2}}
    assert element(rs, "o3", {"name": "Home"}) == {
        "web": {"webPageDetails": {"name": "Home", "pageViews": {"value": 1}}}
    }
    assert element(rs, "o4", {"v": 5}) == {"x": {"y": {"z": 5}, "w": [5]}}


def test_dotted_keys_in_a_send() -> None:
    rs = load(
        EDGE
        + """
rule "Page view" {
  on "page.view"
  send event {
    type: "web.webpagedetails.pageViews"
    xdm: {
      web.webPageDetails.name: state.page.name
      web.webPageDetails.pageViews.value: 1
    }
  }
}
"""
    )
    built = rs.rules[0].actions[0].build(scope(rs, {"page": {"name": "Home"}}))
    assert built["xdm"] == {"web": {"webPageDetails": {"name": "Home", "pageViews": {"value": 1}}}}


@pytest.mark.parametrize(
    "obj", ["{ a: 1, a.b: 2 }", "{ a.b: 2, a: 1 }", "{ a.b: 1, a.b: 2 }", "{ a: 1, a: 2 }"]
)
def test_colliding_keys_are_a_load_error(obj: str) -> None:
    with pytest.raises(RuleError) as caught:
        load(f"element o = {obj}\n")
    assert any(d.severity == "error" for d in caught.value.diagnostics)
    assert all(d.span.line == 1 for d in caught.value.diagnostics)


# ------------------------------------------------------------------ interpolation
INTERPOLATION = """
element n = state.n
element obj = state.obj
element page = state.page
element nothing = state.missing
element lone_number = "%n%"
element lone_object = "%obj%"
element lone_state = "%state.n%"
element lone_path = "%obj.a%"
element lone_null = "%nothing%"
element text = "n=%n% obj=%obj% null=[%nothing%] f=%state.f%"
element pct = "100%% sure"
element hundred = "100% %page%"
element off = "50% off"
element event_token = "order %event.eventInfo.orderId%!"
element index_token = "first=%state.list[0]%"
"""


@pytest.fixture(scope="module")
def interpolation() -> Ruleset:
    return load(INTERPOLATION)


STATE = {"n": 5, "obj": {"a": [1, 2], "b": "x"}, "page": "home", "f": 3.0, "list": ["p", "q"]}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lone_number", 5),
        ("lone_object", {"a": [1, 2], "b": "x"}),
        ("lone_state", 5),
        ("lone_path", [1, 2]),
        ("lone_null", None),
    ],
)
def test_a_lone_token_keeps_its_type(interpolation: Ruleset, name: str, expected: Any) -> None:
    value = interpolation.elements[name].fn(scope(interpolation, STATE))
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("text", 'n=5 obj={"a":[1,2],"b":"x"} null=[] f=3'),
        ("pct", "100% sure"),
        ("hundred", "100% home"),
        ("off", "50% off"),
        ("event_token", "order A-1!"),
        ("index_token", "first=p"),
    ],
)
def test_tokens_inside_text_are_stringified(
    interpolation: Ruleset, name: str, expected: str
) -> None:
    s = scope(interpolation, STATE, {"event": "x", "eventInfo": {"orderId": "A-1"}})
    assert interpolation.elements[name].fn(s) == expected


def test_unknown_token_is_a_load_error() -> None:
    with pytest.raises(RuleError) as caught:
        load('element label = "Order %order_idd%"\n')
    (diagnostic,) = caught.value.diagnostics
    assert "order_idd" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (1, 24)


def test_percent_without_identifier_is_text() -> None:
    rs = load('element a = "50% off, 20 %"\nelement b = "%1%"\nelement c = "% x %"\n')
    assert element(rs, "a") == "50% off, 20 %"
    assert element(rs, "b") == "%1%"
    assert element(rs, "c") == "% x %"


# ------------------------------------------------------------------ elements
def test_element_is_evaluated_once_per_scope() -> None:
    rs = load(
        """
element base = state.cart.total
element twice = base + base
element thrice = twice + base
"""
    )
    wrapped, counts = counted(rs)
    s = scope(rs, {"cart": {"total": 10}}, elements=wrapped)
    assert s.element("thrice") == 30
    assert s.element("base") == 10
    assert s.element("thrice") == 30
    assert counts == {"base": 1, "twice": 1, "thrice": 1}
    assert s.memo == {"base": 10, "twice": 20, "thrice": 30}
    # A new push is a new scope: evaluated again, against the new state.
    s2 = scope(rs, {"cart": {"total": 1}}, elements=wrapped)
    assert s2.element("thrice") == 3
    assert counts == {"base": 2, "twice": 2, "thrice": 2}


def test_element_referenced_from_conditions_and_actions_is_evaluated_once() -> None:
    rs = load(
        EDGE
        + """
element total = state.cart.total | default 0
rule "R" {
  on "x"
  when total > 0
  when total < 1000
  send event { type: "t", data: { a: total, b: "%total%", c: "t=%total%" } }
}
"""
    )
    wrapped, counts = counted(rs)
    s = scope(rs, {"cart": {"total": 12}}, elements=wrapped)
    rule = rs.rules[0]
    assert [c.fn(s) for c in rule.conditions] == [True, True]
    data = rule.actions[0].build(s)["data"]
    assert data["a"] == 12
    assert data["c"] == "t=12"
    assert counts["total"] == 1


def test_element_null_is_memoised_too() -> None:
    rs = load("element e = state.missing\nelement f = [e, e, e]\n")
    wrapped, counts = counted(rs)
    s = scope(rs, elements=wrapped)
    assert s.element("f") == [None, None, None]
    assert counts["e"] == 1


def test_element_path_reads_into_the_value() -> None:
    rs = load(
        'element user = state.user\nelement tier = user.profile.tier\nelement x = user["a.b"]\n'
    )
    state = {"user": {"profile": {"tier": "gold"}, "a.b": 1}}
    assert element(rs, "tier", state) == "gold"
    assert element(rs, "x", state) == 1
    assert element(rs, "tier", {"user": "not an object"}) is None


def test_keep_stores_non_null_and_falls_back_on_null() -> None:
    rs = load("element tier = state.user.tier keep visitor\nelement plain = state.user.tier\n")
    kept: dict[str, dict[str, Any]] = {"visitor": {}}

    def value(state: dict[str, Any], name: str = "tier") -> Any:
        return scope(rs, state, kept=kept).element(name)

    assert value({}) is None
    assert kept["visitor"] == {}
    assert value({"user": {"tier": "gold"}}) == "gold"
    assert kept["visitor"] == {"tier": "gold"}
    assert value({}) == "gold"  # null: the stored value is used
    assert value({}, "plain") is None  # elements without keep store nothing
    assert value({"user": {"tier": "silver"}}) == "silver"  # a fallback, not a cache
    assert kept["visitor"] == {"tier": "silver"}
    # Only null falls back: "", 0 and false are values, stored and returned.
    assert value({"user": {"tier": ""}}) == ""
    assert kept["visitor"] == {"tier": ""}
    assert value({"user": {"tier": 0}}) == 0
    assert value({"user": {"tier": None}}) == 0


def test_keep_uses_the_declared_scope_only() -> None:
    rs = load("element list_name = event.eventInfo.list keep pageview\n")
    kept: dict[str, dict[str, Any]] = {"pageview": {}, "session": {}, "visitor": {}}
    s = scope(rs, event={"eventInfo": {"list": "Search"}}, kept=kept)
    assert s.element("list_name") == "Search"
    assert kept == {"pageview": {"list_name": "Search"}, "session": {}, "visitor": {}}
    assert scope(rs, kept=kept).element("list_name") == "Search"
    assert scope(rs, kept={"pageview": {}}).element("list_name") is None


# ------------------------------------------------------------------ matches
def test_matches() -> None:
    rs = load(
        """
element ci = state.x matches "(?i)abc"
element cs = state.x matches "abc"
element anchored = state.x matches "^abc$"
element digits = state.x matches "^4[0-9]$"
"""
    )

    def run(name: str, x: Any) -> Any:
        return element(rs, name, {"x": x})

    assert run("ci", "xxABCxx") is True  # case-insensitive and unanchored
    assert run("ci", "xxAbxx") is False
    assert run("cs", "xxABCxx") is False
    assert run("cs", "xxabcxx") is True
    assert run("anchored", "xabc") is False
    assert run("anchored", "abc") is True
    assert run("digits", 42) is True  # numbers are matched as text
    assert run("digits", "42") is True
    assert run("digits", 420) is False
    for other in (None, ["abc"], {"abc": 1}, True):
        assert run("ci", other) is False


@pytest.mark.parametrize("pattern", ["(", "[a-", "(a)\\\\1", "(?=x)"])
def test_bad_pattern_is_a_load_error(pattern: str) -> None:
    with pytest.raises(RuleError) as caught:
        load(f'element m = state.x matches "{pattern}"\n')
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.span.line == 1
    assert diagnostic.span.column == len("element m = state.x matches ") + 1


@pytest.mark.parametrize(
    ("expr", "items", "expected"),
    [
        ("state.items | length >= 1", [1], True),
        ("state.items | length >= 1", [], False),
        ("state.items | length > 0", None, False),
        ("1 < state.items | length", [1, 2], True),
        ("state.items | length <= state.other | length", [1], False),
    ],
)
def test_length_in_an_ordering_comparison(expr: str, items: Any, expected: bool) -> None:
    # `when cart.items | length > 0` is the everyday way to test a list is not empty.
    rs = load(f"element x = {expr}\n")
    assert element(rs, "x", {"items": items, "other": []}) is expected


# ------------------------------------------------------------------ conditions
CONDITIONS = (
    EDGE
    + """
element flag = state.flag
element spy = state.spy
rule "R" {
  on "x"
  when state.total > 0 and state.type == "checkout"
  when flag
  unless state.internal
  unless state.email ends with "@example.com"
  send event { type: "t" }
}
"""
)


def test_when_and_unless_conditions() -> None:
    rs = load(CONDITIONS)
    (rule,) = rs.rules
    assert [c.negated for c in rule.conditions] == [False, False, True, True]
    assert [c.source for c in rule.conditions] == [
        'state.total > 0 and state.type == "checkout"',
        "flag",
        "state.internal",
        'state.email ends with "@example.com"',
    ]

    def results(state: dict[str, Any]) -> list[Any]:
        s = scope(rs, state)
        return [c.fn(s) for c in rule.conditions]

    assert results({"total": 5, "type": "checkout", "flag": "yes"}) == [True, True, False, False]
    assert results({"total": "5", "type": "cart", "flag": 0}) == [False, False, False, False]
    assert results({"internal": True, "email": "a@example.com", "flag": []}) == [
        False,
        False,
        True,
        True,
    ]
    # Bare values use truthiness and the condition functions return real booleans.
    # Text that is blank or says no is false (see values.truthy).
    cases = [(None, False), ("", False), ({}, False), ("0", False), ([0], True)]
    cases += [("false", False), (" FALSE ", False), ("no", False), ("off", False)]
    cases += [("true", True), ("yes", True), ("0.5", True), (" ", False), ("denied", False)]
    for flag, expected in cases:
        value = rule.conditions[1].fn(scope(rs, {"flag": flag}))
        assert value is expected


@pytest.mark.parametrize(
    ("expr", "state", "expected", "spy_evaluations"),
    [
        ("state.a and spy", {"a": False, "spy": True}, False, 0),
        ("state.a and spy", {"a": True, "spy": True}, True, 1),
        ("state.a or spy", {"a": True, "spy": False}, True, 0),
        ("state.a or spy", {"a": 0, "spy": "x"}, True, 1),
        ("state.a and state.b and spy", {"a": 1, "b": ""}, False, 0),
        ("state.a or state.b or spy", {"a": 0, "b": [1]}, True, 0),
        ("state.a or state.b or spy", {"a": 0, "b": []}, False, 1),
        ("not state.a and spy", {"a": True}, False, 0),
        ("(state.a or spy) and spy", {"a": 1, "spy": 1}, True, 1),
    ],
)
def test_and_or_short_circuit(
    expr: str, state: dict[str, Any], expected: bool, spy_evaluations: int
) -> None:
    rs = load(
        EDGE
        + f"""
element spy = state.spy
rule "R" {{
  on "x"
  when {expr}
  send event {{ type: "t" }}
}}
"""
    )
    wrapped, counts = counted(rs)
    s = scope(rs, state, elements=wrapped)
    assert bool(rs.rules[0].conditions[0].fn(s)) is expected
    assert counts["spy"] == spy_evaluations


def test_logical_constants_fold() -> None:
    rs = load("element t = true or state.x\nelement f = false and state.x\n")
    assert rs.elements["t"].fn(None) is True  # type: ignore[arg-type]
    assert rs.elements["f"].fn(None) is False  # type: ignore[arg-type]


# ------------------------------------------------------------------ trigger index
TRIGGERS = (
    EDGE
    + """
rule "exact" { on "page.view"; send event { type: "t" } }
rule "glob" { on "commerce.*"; send event { type: "t" } }
rule "one char" { on "a?c"; send event { type: "t" } }
rule "every" { on "*"; send event { type: "t" } }
rule "cart" { on change cart; send event { type: "t" } }
rule "cart total" { on change cart.total; send event { type: "t" } }
rule "state path" { on change state.user.tier; send event { type: "t" } }
rule "many" {
  on "page.view", "page.*"
  on change page
  send event { type: "t" }
}
"""
)


@pytest.fixture(scope="module")
def triggers() -> Ruleset:
    return load(TRIGGERS)


@pytest.mark.parametrize(
    ("event", "changed", "expected"),
    [
        ("page.view", [], ["exact", "every", "many"]),
        ("Page.View", [], ["every"]),
        ("page.viewed", [], ["every", "many"]),
        ("commerce.purchase", [], ["glob", "every"]),
        ("commerce.cart.add", [], ["glob", "every"]),
        ("commerce.", [], ["glob", "every"]),
        ("commerce", [], ["every"]),
        ("xcommerce.purchase", [], ["every"]),
        ("abc", [], ["one char", "every"]),
        ("a.c", [], ["one char", "every"]),
        ("ac", [], ["every"]),
        ("abbc", [], ["every"]),
        (None, [], []),
        ("", [], []),
        (None, [("cart", "total")], ["cart", "cart total"]),
        (None, [("cart",)], ["cart", "cart total"]),
        (None, [("cart", "id")], ["cart"]),
        (None, [("cart", "total", "net")], ["cart", "cart total"]),
        (None, [("page",)], ["many"]),
        (None, [("pages",)], []),
        (None, [("carts",)], []),
        (None, [("user", "tier")], ["state path"]),
        (None, [("user",)], ["state path"]),
        (None, [("state", "user", "tier")], []),
        ("page.view", [("page", "name")], ["exact", "every", "many"]),
        ("other", [("cart", "items", 0)], ["every", "cart"]),
    ],
)
def test_match(
    triggers: Ruleset, event: str | None, changed: list[tuple[str | int, ...]], expected: list[str]
) -> None:
    matched = triggers.match(event, changed)
    assert sorted(names(matched)) == sorted(expected)
    assert len(matched) == len({id(r) for r in matched})  # each rule once
    # ... and in evaluation order
    ranks = [triggers.rules.index(r) for r in matched]
    assert ranks == sorted(ranks)


def test_match_with_a_generator_of_changes(triggers: Ruleset) -> None:
    changes = (p for p in [("x",), ("cart", "total")])
    assert sorted(names(triggers.match(None, changes))) == ["cart", "cart total"]


def test_rule_with_many_matching_triggers_is_returned_once(triggers: Ruleset) -> None:
    matched = triggers.match("page.view", [("page",), ("page", "name")])
    assert names(matched).count("many") == 1


# ------------------------------------------------------------------ evaluation order
ORDER_A = (
    EDGE
    + """
rule "A1" { on "*"; send event { type: "t" } }
rule "A2" order 5 { on "*"; send event { type: "t" } }
rule "A3" { on "e"; send event { type: "t" } }
rule "A4" order 99 { on "*"; send event { type: "t" } }
"""
)
ORDER_B = """
rule "B1" order 10 { on "*"; send event { type: "t" } }
rule "B2" { on "e"; send event { type: "t" } }
rule "B3" order 50 { on "*"; send event { type: "t" } }
rule "B4" order -1 { on "e", "*"; send event { type: "t" } }
"""
EXPECTED_ORDER = ["B4", "A2", "B1", "A1", "A3", "B2", "B3", "A4"]


def test_evaluation_order_across_files(tmp_path: Path) -> None:
    # Written in reverse name order: the loader sorts by file name.
    (tmp_path / "b.rules").write_text(ORDER_B, encoding="utf-8")
    (tmp_path / "a.rules").write_text(ORDER_A, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a rules file {", encoding="utf-8")
    rs = engine.load_ruleset(tmp_path)
    assert names(rs.rules) == EXPECTED_ORDER
    assert names(rs.match("e")) == EXPECTED_ORDER
    assert names(rs.match("other")) == ["B4", "A2", "B1", "A1", "B3", "A4"]


def test_evaluation_order_does_not_depend_on_source_order() -> None:
    rs = load_files({"b.rules": ORDER_B, "a.rules": ORDER_A})
    assert names(rs.rules) == EXPECTED_ORDER
    assert names(rs.match("e")) == EXPECTED_ORDER


def test_load_ruleset_of_one_file(tmp_path: Path) -> None:
    path = tmp_path / "only.rules"
    path.write_text(ORDER_A, encoding="utf-8")
    rs = engine.load_ruleset(path)
    assert names(rs.rules) == ["A2", "A1", "A3", "A4"]


# ------------------------------------------------------------------ version and immutability
def test_version_follows_content(tmp_path: Path) -> None:
    path = tmp_path / "v.rules"
    path.write_text("element a = 1\n", encoding="utf-8")
    first = engine.load_ruleset(tmp_path).version
    assert engine.load_ruleset(tmp_path).version == first
    clear_cache()
    assert engine.load_ruleset(tmp_path).version == first
    path.write_text("element a = 2\n", encoding="utf-8")
    second = engine.load_ruleset(tmp_path)
    assert second.version != first
    assert second.elements["a"].fn(None) == 2  # type: ignore[arg-type]
    path.write_text("element a = 1\n", encoding="utf-8")
    assert engine.load_ruleset(tmp_path).version == first
    (tmp_path / "w.rules").write_text("element b = 1\n", encoding="utf-8")
    assert engine.load_ruleset(tmp_path).version not in (first, second.version)


def test_version_of_in_memory_sources() -> None:
    a = load_files({"x.rules": "element a = 1\n", "y.rules": "element b = 2\n"})
    b = load_files({"x.rules": "element a = 1\n", "y.rules": "element b = 2\n"})
    c = load_files({"x.rules": "element a = 1\n", "y.rules": "element b = 3\n"})
    assert a.version == b.version
    assert a.version != c.version
    assert isinstance(a.version, str) and a.version


def test_ruleset_is_immutable() -> None:
    rs = load(CONDITIONS)
    assert isinstance(rs.rules, tuple)
    assert isinstance(rs.elements, MappingProxyType)
    with pytest.raises(TypeError):
        rs.elements["flag"] = rs.elements["spy"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del rs.elements["flag"]  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rs.rules[0].name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rs.elements["flag"].fn = lambda s: 1  # type: ignore[misc]
    assert isinstance(rs.rules[0].conditions, tuple)
    assert isinstance(rs.rules[0].actions, tuple)
    assert isinstance(rs.tests, tuple)


def test_ruleset_elements_are_a_snapshot() -> None:
    # Two loads share nothing mutable: a reload builds a new ruleset.
    first = load("element a = [1]\n")
    second = load("element a = [2]\n")
    assert first.elements["a"].fn(None) == [1]  # type: ignore[arg-type]
    assert second.elements["a"].fn(None) == [2]  # type: ignore[arg-type]
    assert first.version != second.version
