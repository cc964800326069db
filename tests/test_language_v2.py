"""The language's second edition (issue 14, "Language"): list filters, `join` skipping nulls,
`sha256`, `redact`, the `[*]` path over every item of a list, and `if … then … else …`."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from engine import Engine, RuleError, values
from engine.scope import Scope
from tests.conftest import SETTINGS, load_text, rendered_errors


def element(expr: str, state: dict[str, Any] | None = None) -> Any:
    """The value of `element x = EXPR` against a state (through the compiler)."""
    ruleset = load_text(f"element x = {expr}\n")
    return ruleset.elements["x"].fn(Scope(state or {}, {}, ruleset.elements))


def problems(text: str) -> list[tuple[int, int, str]]:
    """(line, column, message) of each load error of a one-file ruleset."""
    with pytest.raises(RuleError) as caught:
        load_text(text)
    return [(d.span.line, d.span.column, d.message) for d in caught.value.diagnostics]


def sent_data(rule_body: str, push: dict[str, Any]) -> Any:
    """The `data` of the one Edge send a rule makes for a push (dry run)."""
    ruleset = load_text(SETTINGS + 'rule "r" {\n  on "go"\n' + rule_body + "\n}\n")
    with Engine(ruleset, dry_run=True) as engine:
        result = engine.push({"event": "go", **push})
    assert len(result.sends) == 1, result
    return result.sends[0].body["event"]["data"]


CART = {
    "cart": {
        "items": [
            {"sku": "SP-TR-001", "qty": 2, "price": 10.5},
            {"qty": "3", "price": 4},
            {"sku": "SP-SK-014", "qty": 1, "price": None},
        ]
    }
}


# ------------------------------------------------------------------ filters
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("[1, 2, 3.5] | sum", 6.5),
        ('[1, null, "2"] | sum', 3),
        ("[] | sum", 0),
        ('[1, "x"] | sum', None),
        ("[1, true] | sum", None),
        ('"12" | sum', None),
        ("null | sum", None),
        ("[0.1, 0.2] | sum", 0.30000000000000004),
        ('[3, null, "1", 2] | min', 1),
        ('[3, null, "10", 2] | max', 10),
        ("[] | min", None),
        ("[null] | max", None),
        ('["a"] | max', None),
        ("[1, null, 2] | count", 2),
        ("[] | count", 0),
        ("null | count", 0),
        ('"abc" | count', None),
        ('[1, "1", 1, null, null, {a: 1}, {a: 1}] | unique', [1, "1", None, {"a": 1}]),
        ('"x" | unique', "x"),
        ('["A", null, "", 0, false, null] | compact', ["A", "", 0, False]),
        ("null | compact", None),
        ('["A", null, "B"] | join ","', "A,B"),
        ('["A", null, "B"] | join', "A,B"),
        ('[1, true, "x"] | join "-"', "1-true-x"),
    ],
)
def test_list_filters(expr: str, expected: Any) -> None:
    assert element(expr) == expected
    assert type(element(expr)) is type(expected)


def test_sha256_trims_and_lower_cases() -> None:
    digest = hashlib.sha256(b"jane.doe@example.com").hexdigest()
    assert element('"  Jane.Doe@Example.COM \\n" | sha256') == digest
    assert element("state.email | sha256", {"email": "jane.doe@example.com"}) == digest
    assert element("33612345678 | sha256") == hashlib.sha256(b"33612345678").hexdigest()
    assert element('"" | sha256') == hashlib.sha256(b"").hexdigest()
    for value in ("null", "true", "[1]", "{a: 1}"):
        assert element(f"{value} | sha256") is None
    assert element("state.missing | sha256") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@mail.example.co.uk now", "write to [redacted] now"),
        ("call +44 (0)20 7946 0958 today", "call [redacted] today"),
        ("tel 06 12 34 56 78.", "tel [redacted]."),
        ("tel 0612345678", "tel [redacted]"),
        ("order A-12345, 2026-12-05, 12345678", "order A-12345, 2026-12-05, 12345678"),
        ("a@b and c@d.e", "a@b and [redacted]"),
        ("no personal data", "no personal data"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert values.f_redact(text) == expected
    assert element("state.t | redact", {"t": text}) == expected


def test_redact_leaves_non_strings_and_is_linear() -> None:
    assert element("[1] | redact") == [1]
    assert element("null | redact") is None
    start = time.perf_counter()
    for hostile in ("a" * 200_000 + "@", "1 " * 100_000 + "x", "a@" * 100_000, "1." * 100_000):
        values.f_redact(hostile)
    assert time.perf_counter() - start < 2


def test_filter_arity_errors_follow_the_conventions() -> None:
    assert problems("element x = [1] | sum 2\n") == [(1, 23, "filter 'sum' takes no argument")]
    assert problems("element x = [1] | round 1 | sum 2\n") == [
        (1, 33, "filter 'sum' takes no argument")
    ]
    errors = rendered_errors("element x = [1] | summ\n")
    assert len(errors) == 1 and "unknown filter 'summ'" in errors[0]
    assert "did you mean 'sum'?" in errors[0]
    for name in ("min", "max", "count", "unique", "compact", "sha256", "redact"):
        (error,) = rendered_errors(f'element x = [1] | {name} "a"\n')
        assert f"filter '{name}' takes no argument" in error


# ------------------------------------------------------------------ [*]
def test_each_reads_a_path_from_every_item() -> None:
    assert element("state.cart.items[*].sku", CART) == ["SP-TR-001", None, "SP-SK-014"]
    assert element("state.cart.items[*].sku | compact", CART) == ["SP-TR-001", "SP-SK-014"]
    assert element('state.cart.items[*].sku | join ","', CART) == "SP-TR-001,SP-SK-014"
    assert element("state.cart.items[*].qty | sum", CART) == 6
    assert element("state.cart.items[*].price | max", CART) == 10.5
    assert element("state.cart.items[*].qty | count", CART) == 3
    assert element("state.cart.items[*]", CART) == CART["cart"]["items"]
    assert element('state.cart.items[*]["sku"]', CART) == ["SP-TR-001", None, "SP-SK-014"]
    assert element("state.cart.items[*].sku | length", CART) == 3


def test_each_on_missing_or_non_lists_is_null() -> None:
    assert element("state.cart.items[*].sku", {}) is None
    assert element("state.cart.items[*].sku", {"cart": {"items": "x"}}) is None
    assert element("state.cart.items[*].qty | sum | default 0", {}) == 0
    assert element("state.cart.items[*].sku", {"cart": {"items": []}}) == []
    assert element("state.l[*][0]", {"l": [[1, 2], [], "ab", None]}) == [1, None, None, None]


def test_nested_each_flattens() -> None:
    state = {
        "orders": [
            {"items": [{"sku": "a"}, {"sku": "b"}]},
            {"items": "not a list"},
            {"items": [{"sku": "c"}, {}]},
        ]
    }
    assert element("state.orders[*].items[*].sku", state) == ["a", "b", "c", None]
    assert element("state.m[*][*]", {"m": [[1], [2, 3], 4]}) == [1, 2, 3]


def test_each_on_elements_and_computed_values() -> None:
    ruleset = load_text("element items = state.cart.items\nelement skus = items[*].sku | compact\n")
    scope = Scope(CART, {}, ruleset.elements)
    assert ruleset.elements["skus"].fn(scope) == ["SP-TR-001", "SP-SK-014"]
    assert element("[{a: 1}, {a: 2}, 3][*].a") == [1, 2, None]
    assert element('(state.cart.items | first)["sku"]', CART) == "SP-TR-001"


def test_each_in_a_send_and_a_condition() -> None:
    data = sent_data(
        "  when state.cart.items[*].qty | sum > 5\n"
        '  send event { type: "x", data: { skus: state.cart.items[*].sku | join ",", '
        "n: state.cart.items[*].qty | sum } }",
        CART,
    )
    assert data == {"skus": "SP-TR-001,SP-SK-014", "n": 6}
    ruleset = load_text(
        SETTINGS
        + 'rule "r" {\n  on "go"\n  when "SP-SK-014" in state.cart.items[*].sku\n'
        + '  send event { type: "x" }\n}\n'
    )
    with Engine(ruleset, dry_run=True) as engine:
        assert len(engine.push({"event": "go", **CART}).sends) == 1
        assert engine.push({"event": "go", "cart": {"items": [{"sku": "Z"}]}}).sends == []


def test_each_checks_its_operand() -> None:
    (error,) = rendered_errors('element x = "abc"[*].a\n')
    assert "'[*]' reads every item of a list, not of string \"abc\"" in error
    (error,) = rendered_errors("element x = nope[*].a\n")
    assert "nope" in error


# ------------------------------------------------------------------ if … then … else …
def test_conditional_values() -> None:
    expr = 'if state.n > 1 then "many" else if state.n == 1 then "one" else "none"'
    assert element(expr, {"n": 5}) == "many"
    assert element(expr, {"n": 1}) == "one"
    assert element(expr, {}) == "none"
    assert element("if true then 1 else 2") == 1
    assert element("if state.a then state.a else 0", {"a": [1]}) == [1]


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        (None, False),
        (False, False),
        (0, False),
        ("", False),
        ([], False),
        ({}, False),
        (1, True),
        ("x", True),
        ([0], True),
        (True, True),
    ],
)
def test_conditional_truthiness_is_whens(value: Any, taken: bool) -> None:
    assert element('if state.v then "yes" else "no"', {"v": value}) == ("yes" if taken else "no")
    assert values.truthy(value) is taken


def test_conditional_has_the_lowest_precedence() -> None:
    assert element("if false then 1 else 2 + 3") == 5
    assert element("if 1 == 2 or 3 > 2 then 1 + 1 else 0") == 2
    assert element('if state.a then "a" else state.b | upper', {"b": "x"}) == "X"
    assert element("(if state.a then 2 else 3) * 10", {}) == 30
    assert element("if if state.a then false else true then 1 else 2", {}) == 1
    assert element("if state.a then if state.b then 1 else 2 else 3", {"a": 1}) == 2


def test_conditional_over_lines_and_in_rules() -> None:
    data = sent_data(
        "  when if state.vip then true else state.total > 100\n"
        '  send event { type: "x", data: {\n'
        '    tier: if state.vip then "gold"\n'
        '          else if state.total > 50 then "silver"\n'
        '          else "bronze"\n'
        '    label: if state.vip\n      then "V"\n      else "-"\n'
        "  } }",
        {"total": 120},
    )
    assert data == {"tier": "silver", "label": "-"}


def test_conditional_errors_are_checked_in_every_branch() -> None:
    (error,) = rendered_errors("element x = if state.a then nope else 1\n")
    assert "nope" in error
    (error,) = rendered_errors("element x = if state.a then 1 else [1] | summ\n")
    assert "unknown filter 'summ'" in error


def test_if_then_else_stay_names_elsewhere() -> None:
    assert element("state.if.then", {"if": {"then": 3}}) == 3
    assert element("{then: 1, else: 2}") == {"then": 1, "else": 2}
    ruleset = load_text("element then = 2\nelement y = then + 1\n")
    assert ruleset.elements["y"].fn(Scope({}, {}, ruleset.elements)) == 3


# ------------------------------------------------------------------ keyed limits
VIDEO = (
    SETTINGS
    + """
element video_id = event.video.id
element milestone = event.milestone
rule "Video milestone" {
  on "video.milestone"
  limit 1 per session by video_id, milestone
  send event { type: "media", data: { video: video_id, milestone: milestone } }
}
"""
)


def milestone(video: str, mark: int) -> dict[str, Any]:
    return {"event": "video.milestone", "video": {"id": video}, "milestone": mark}


def test_keyed_limit_counts_each_distinct_key() -> None:
    with Engine(load_text(VIDEO), dry_run=True) as engine:
        fired = [
            len(engine.push(milestone(video, mark)).sends)
            for video, mark in [("a", 25), ("a", 25), ("a", 50), ("b", 25), ("a", 50), ("b", 25)]
        ]
        assert fired == [1, 0, 1, 1, 0, 0]
        again = engine.push(milestone("a", 25))
        (outcome,) = again.rules
        assert outcome.status == "limited"
        assert outcome.reason == 'limited: already fired 1 time per session for key ["a",25]'
        # Another session counts afresh.
        assert len(engine.push(milestone("a", 25), session="s2").sends) == 1


def test_keyed_limit_with_expressions_and_an_unkeyed_limit() -> None:
    ruleset = load_text(
        SETTINGS
        + """
rule "Once per product a visitor, at most 3 a session" {
  on "product.view"
  limit 1 per visitor by event.sku | upper
  limit 3 per session
  send event { type: "x", data: { sku: event.sku } }
}
"""
    )
    with Engine(ruleset, dry_run=True) as engine:
        skus = ["a", "A", "b", "c", "d", "b"]
        fired = [len(engine.push({"event": "product.view", "sku": sku}).sends) for sku in skus]
        assert fired == [1, 0, 1, 1, 0, 0]
        (outcome,) = engine.push({"event": "product.view", "sku": "e"}).rules
        assert outcome.reason == "limited: already fired 3 times per session"


def test_keyed_limit_null_key_and_checks() -> None:
    with Engine(load_text(VIDEO), dry_run=True) as engine:
        assert len(engine.push({"event": "video.milestone"}).sends) == 1
        assert len(engine.push({"event": "video.milestone"}).sends) == 0
    assert problems(VIDEO.replace("by video_id", "by video_idd")) == [
        (8, 26, "unknown element 'video_idd' (did you mean 'video_id'?)")
    ]
    (problem,) = problems(VIDEO.replace("milestone\n  send", "milestone | nope\n  send"))
    assert "unknown filter 'nope'" in problem[2]


def test_keyed_limit_in_a_rules_test() -> None:
    from engine.testing import run_tests

    ruleset = load_text(
        VIDEO
        + """
test "each milestone once per video" {
  push { event: "video.milestone", video: { id: "v1" }, milestone: 25 }
  push { event: "video.milestone", video: { id: "v1" }, milestone: 25 }
  push { event: "video.milestone", video: { id: "v2" }, milestone: 25 }
  expect 2 sends from "Video milestone"
}
"""
    )
    (report,) = run_tests(ruleset)
    assert report.passed, report.failures


def test_if_cannot_name_an_element() -> None:
    assert problems("element if = 1\n") == [(1, 9, "'if' is a keyword and cannot name an element")]


def test_on_change_fires_only_when_the_value_changed() -> None:
    text = """
edge {
  datastream: "ds"
}
rule "Route" {
  on change route.path
  send event { type: "web.webpagedetails.pageViews", data.path: state.route.path }
}
"""
    from engine import Engine
    from tests.conftest import load_text as load

    with Engine(load(text), dry_run=True) as engine:
        session = engine.session("s")
        fired = [
            session.push(push).fired
            for push in (
                {"route": {"path": "/a"}},
                {"route": {"path": "/a"}},  # the same again: no change
                {"route": {"path": "/a", "title": "A"}},  # a sibling changed, not the path
                {"route": {"path": "/b"}},
                {"route": None},  # deleted: a change
            )
        ]
    assert fired == [["Route"], [], [], ["Route"], ["Route"]]
