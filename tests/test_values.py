"""The value semantics of the language (docs/language.md, "Comparison semantics", filters,
interpolation text): checked on :mod:`engine.values` directly and, for the operators, through
compiled rule text too, since the compiler has its own fast paths for common shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import RuleError, values
from engine.loader import build_ruleset
from engine.scope import Scope

# ------------------------------------------------------------------ helpers


def compare(op: str, a: Any, b: Any) -> bool:
    return values.COMPARISONS[op](a, b)


def literal(value: Any) -> str:
    """Rule-language literal text for a JSON-like value (no '%' in strings)."""
    assert "%" not in json.dumps(value)
    return json.dumps(value)


def evaluate_element(expr: str, state: dict[str, Any] | None = None) -> Any:
    ruleset = build_ruleset([("values.rules", f"element x = {expr}\n".encode())], environ={})
    return ruleset.elements["x"].fn(Scope(state or {}, {}, ruleset.elements))


def compiled_results(op: str, a: Any, b: Any) -> list[tuple[str, Any]]:
    """``a OP b`` evaluated by compiled rules, in every shape the compiler may specialise:
    reference against reference, reference against a literal, literal against a reference,
    and both literals (folded at load time). A shape the checker rejects at load time must be
    one whose documented result is false ("always false" diagnostics)."""
    shapes = {
        "ref-ref": ("state.a", "state.b"),
        "ref-lit": ("state.a", literal(b)),
        "lit-ref": (literal(a), "state.b"),
        "lit-lit": (literal(a), literal(b)),
    }
    results: list[tuple[str, Any]] = []
    for shape, (left, right) in shapes.items():
        try:
            value = evaluate_element(f"{left} {op} {right}", {"a": a, "b": b})
        except RuleError as error:
            results.append((shape, ("rejected", error.render())))
            continue
        results.append((shape, value))
    return results


def assert_operator(op: str, a: Any, b: Any, expected: bool) -> None:
    assert compare(op, a, b) is expected, (op, a, b)
    for shape, result in compiled_results(op, a, b):
        if isinstance(result, tuple):
            # The checker may refuse an always-false comparison, never a possibly-true one.
            assert expected is False, (shape, op, a, b, result[1])
            assert shape != "ref-ref", result[1]
        else:
            assert result is expected, (shape, op, a, b, result)


# ------------------------------------------------------------------ == and !=
EQUAL = [
    (1, 1),
    (1, 1.0),
    (1, "1"),
    ("1", 1),
    (" 1 ", 1),
    ("2.50", 2.5),
    ("abc", "abc"),
    ("", ""),
    (None, None),
    (True, True),
    (False, False),
    ([1, "a", None], [1, "a", None]),
    ({"a": {"b": [1, 2]}, "c": None}, {"c": None, "a": {"b": [1, 2]}}),
    ([], []),
    ({}, {}),
    (True, "true"),
    ("false", False),
    (" TRUE ", True),
]

NOT_EQUAL = [
    (1, 2),
    ("", 0),
    (0, ""),
    ("   ", 0),
    ("abc", "ABC"),
    ("abc", "abc "),
    (None, 0),
    (0, None),
    (None, ""),
    (None, False),
    (False, None),
    (None, []),
    (None, {}),
    (None, "null"),
    ([1, 2], [2, 1]),
    ([1, 2], [1, 2, 3]),
    ({"a": 1}, {"a": 1, "b": 2}),
    ({"a": {"b": 1}}, {"a": {"b": 2}}),
    ([1], 1),
    ("1x", 1),
    ("yes", True),
    ("1", True),
    (0, False),
    ("false", True),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equal_values(a: Any, b: Any) -> None:
    assert_operator("==", a, b, True)
    assert_operator("!=", a, b, False)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_unequal_values(a: Any, b: Any) -> None:
    assert_operator("==", a, b, False)
    assert_operator("!=", a, b, True)


def test_missing_equals_null_only() -> None:
    # A missing path reads as null: it equals null and nothing else.
    assert evaluate_element("state.nope.deeper == null") is True
    assert evaluate_element("state.nope == 0") is False
    assert evaluate_element('state.nope == ""') is False
    assert evaluate_element("state.nope == false") is False
    assert evaluate_element("state.nope != null") is False


def test_equality_is_deep_with_numbers_inside() -> None:
    assert values.equals({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2}]})
    assert not values.equals({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]})


# ------------------------------------------------------------------ < <= > >=
ORDERED = [
    # (a, b): a < b, both comparable
    (1, 2),
    (-5, 0.5),
    ("9", "10"),  # numeric, not lexicographic
    (" 9 ", 10),
    ("1e2", 1000),
    (2, "2.5"),
    ("2024-01-31", "2024-02-01"),
    ("2023-12-31T23:59:59Z", "2024-01-01T00:00:00Z"),
    ("2024-01-01T10:00:00+02:00", "2024-01-01T09:00:00Z"),  # 08:00Z < 09:00Z
    ("2024-03-01T09:00:00.000Z", "2024-03-01T09:00:00.500Z"),
]


@pytest.mark.parametrize(("a", "b"), ORDERED)
def test_ordering(a: Any, b: Any) -> None:
    assert_operator("<", a, b, True)
    assert_operator("<=", a, b, True)
    assert_operator(">", a, b, False)
    assert_operator(">=", a, b, False)
    assert_operator("<", b, a, False)
    assert_operator(">", b, a, True)
    assert_operator(">=", b, a, True)


@pytest.mark.parametrize(
    ("a", "b"),
    [(3, 3), (3, "3"), (" 3.0", 3), ("2024-05-01T00:00:00Z", "2024-05-01T00:00:00+00:00")],
)
def test_equal_ordering(a: Any, b: Any) -> None:
    assert_operator("<=", a, b, True)
    assert_operator(">=", a, b, True)
    assert_operator("<", a, b, False)
    assert_operator(">", a, b, False)


INCOMPARABLE = [
    (None, 5),
    (5, None),
    (None, None),
    (True, 0),
    (False, 1),
    (1, True),
    ("12px", 1),
    (1, "12px"),
    ("abc", "abd"),
    ("", 0),
    ("  ", 1),
    ("nan", 1),
    ("inf", 1),
    ("-inf", 1),
    ([1], [2]),
    ({"a": 1}, 2),
    ("2024-01-01", 5),
    ("2024-13-45", "2024-01-01"),
]


@pytest.mark.parametrize(("a", "b"), INCOMPARABLE)
def test_anything_else_orders_false(a: Any, b: Any) -> None:
    for op in ("<", "<=", ">", ">="):
        assert_operator(op, a, b, False)


# ------------------------------------------------------------------ contains, starts/ends with
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("hello world", "lo w", True),
        ("hello", "", True),
        ("hello", "Hello", False),
        ("hello", "xyz", False),
        (["a", "b"], "b", True),
        (["a", "b"], "c", False),
        ([{"x": 1}, [1, 2]], {"x": 1}, True),
        ([{"x": 1}, [1, 2]], [1, 2], True),
        ([], "a", False),
        ({"k": 1, "other": None}, "k", True),
        ({"k": 1, "other": None}, "other", True),
        ({"k": 1}, "v", False),
        ({"k": 1}, 1, False),
        (None, "a", False),
        (None, None, False),
        (12, "1", False),
        (True, "t", False),
    ],
)
def test_contains(a: Any, b: Any, expected: bool) -> None:
    assert_operator("contains", a, b, expected)


@pytest.mark.parametrize(
    ("op", "a", "b", "expected"),
    [
        ("starts with", "checkout/step1", "checkout", True),
        ("starts with", "checkout", "Checkout", False),
        ("starts with", "abc", "", True),
        ("starts with", "abc", "abcd", False),
        ("starts with", 123, "1", False),
        ("starts with", ["a", "b"], "a", False),
        ("starts with", None, "", False),
        ("starts with", "123", 1, False),
        ("ends with", "report.pdf", ".pdf", True),
        ("ends with", "report.pdf", ".PDF", False),
        ("ends with", 10.5, "5", False),
        ("ends with", ["a", "b"], "b", False),
        ("ends with", None, "", False),
        ("ends with", {"a": 1}, "a", False),
    ],
)
def test_starts_and_ends_with(op: str, a: Any, b: Any, expected: bool) -> None:
    assert_operator(op, a, b, expected)


# ------------------------------------------------------------------ in / not in
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a", ["a", "b"], True),
        ("c", ["a", "b"], False),
        ("A", ["a", "b"], False),
        (2, [1, 2, 3], True),
        ("2", [1, 2, 3], True),
        (None, [None], True),
        (None, ["a"], False),
        ([1], [[1], [2]], True),
        ("a", [], False),
    ],
)
def test_in_and_not_in(a: Any, b: Any, expected: bool) -> None:
    assert_operator("in", a, b, expected)
    assert_operator("not in", a, b, not expected)


@pytest.mark.parametrize("container", ["abc", {"a": 1}, None, 5])
def test_in_needs_a_list(container: Any) -> None:
    assert values.member("a", container) is False
    assert evaluate_element("state.a in state.b", {"a": "a", "b": container}) is False


def test_in_against_list_literal_with_reference() -> None:
    expr = 'state.t in ["checkout", "cart", "1"]'
    assert evaluate_element(expr, {"t": "cart"}) is True
    assert evaluate_element(expr, {"t": "Cart"}) is False
    assert evaluate_element(expr, {"t": 1}) is True
    assert evaluate_element(expr, {}) is False
    assert evaluate_element('state.t not in ["checkout", "cart"]', {"t": "home"}) is True
    assert evaluate_element('state.t not in ["checkout", "cart"]', {"t": "cart"}) is False


# ------------------------------------------------------------------ exists, truthiness
@pytest.mark.parametrize(
    ("state", "expected"),
    [({"a": None}, False), ({}, False), ({"a": 0}, True), ({"a": ""}, True), ({"a": False}, True)],
)
def test_exists(state: dict[str, Any], expected: bool) -> None:
    assert evaluate_element("state.a exists", state) is expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        False,
        0,
        0.0,
        "",
        [],
        {},
        "0",
        "0.0",
        "false",
        " False ",
        "no",
        "OFF",
        " ",
        "denied",
        "null",
        "Undefined",
    ],
)
def test_falsy_values(value: Any) -> None:
    assert values.truthy(value) is False


@pytest.mark.parametrize(
    "value", [True, 1, -1, 0.5, "1", "true", "yes", "0.5", "falsey", [0], [None], {"a": None}]
)
def test_truthy_values(value: Any) -> None:
    assert values.truthy(value) is True


# ------------------------------------------------------------------ arithmetic
@pytest.mark.parametrize(
    ("op", "a", "b", "expected"),
    [
        ("+", 1, 2, 3),
        ("+", 0.5, 0.25, 0.75),
        ("+", "1", 2, 3),
        ("+", "a", "b", "ab"),
        ("+", "", "b", "b"),
        ("+", "a", 1, "a1"),
        ("+", ",", 123, ",123"),
        ("+", 1.5, "x", "1.5x"),
        ("+", "a", True, "atrue"),
        ("+", "a", None, None),
        ("+", True, 1, None),
        ("+", None, 1, None),
        ("+", [1], [2], None),
        ("-", 5, 7, -2),
        ("-", "10", " 4 ", 6),
        ("-", "a", 1, None),
        ("*", 3, 4, 12),
        ("*", "2.5", 2, 5),
        ("*", None, 2, None),
        ("/", 7, 2, 3.5),
        ("/", 6, 3, 2),
        ("/", 1, 0, None),
        ("/", 1, 0.0, None),
        ("/", 0, 0, None),
        ("/", 1, "0", None),
        ("/", "x", 2, None),
        ("%", 7, 3, 1),
        ("%", 7, 0, None),
        ("%", 7.5, 2, 1.5),
    ],
)
def test_arithmetic(op: str, a: Any, b: Any, expected: Any) -> None:
    assert values.ARITHMETIC[op](a, b) == expected
    assert evaluate_element(f"state.a {op} state.b", {"a": a, "b": b}) == expected


def test_arithmetic_on_booleans_is_null() -> None:
    assert values.ARITHMETIC["+"](True, 1) is None
    assert values.ARITHMETIC["*"](False, 3) is None


def test_arithmetic_in_rule_text() -> None:
    assert evaluate_element("state.a / state.b", {"a": 10, "b": 0}) is None
    assert (
        evaluate_element('state.first + " " + state.last', {"first": "Ada", "last": "L"}) == "Ada L"
    )
    assert evaluate_element("state.a * 2 + 1", {"a": 4}) == 9
    assert evaluate_element("-state.a", {"a": "3"}) == -3
    assert evaluate_element("-state.a", {"a": "x"}) is None


# ------------------------------------------------------------------ filters
def apply(name: str, value: Any, *args: Any) -> Any:
    function, _ = values.FILTERS[name]
    return function(value, *args)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lower", "MiXeD Ünïcode", "mixed ünïcode"),
        ("lower", 5, 5),
        ("lower", None, None),
        ("upper", "sp-tr-001", "SP-TR-001"),
        ("upper", ["a"], ["a"]),
        ("trim", "  a b  ", "a b"),
        ("trim", "\t\nx\n", "x"),
        ("trim", 3.5, 3.5),
        ("clean", "  Trail   Runner \t X  ", "Trail Runner X"),
        ("clean", "a\n\nb", "a b"),
        ("clean", None, None),
        ("number", "12", 12),
        ("number", " 3.5 ", 3.5),
        ("number", 7, 7),
        ("number", "12px", None),
        ("number", "", None),
        ("number", None, None),
        ("string", 3, "3"),
        ("string", 3.0, "3"),
        ("string", 2.5, "2.5"),
        ("string", True, "true"),
        ("string", {"a": [1, 2]}, '{"a":[1,2]}'),
        ("string", "x", "x"),
        ("bool", 1, True),
        ("bool", 0, False),
        ("bool", "yes", True),
        ("bool", "", False),
        ("bool", [], False),
        ("length", None, 0),
        ("length", "abc", 3),
        ("length", "", 0),
        ("length", [1, 2, 3], 3),
        ("length", {"a": 1, "b": 2}, 2),
        ("first", [1, 2, 3], 1),
        ("first", [], None),
        ("last", [1, 2, 3], 3),
        ("last", [], None),
        ("round", 2.5, 3),
        ("round", 3.5, 4),
        ("round", 2.4, 2),
        ("round", "2.5", 3),
        ("round", 7, 7),
        ("round", None, None),
    ],
)
def test_filter_without_argument(name: str, value: Any, expected: Any) -> None:
    assert apply(name, value) == expected
    assert type(apply(name, value)) is type(expected)


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0.125, 2, 0.13),
        (1.005, 2, 1.01),  # half-up on the decimal text, not the binary float
        (2.675, 2, 2.68),
        (129.9, 0, 130),
        (1.23456, 3, 1.235),
        ("10.005", 2, 10.01),
    ],
)
def test_round_half_up(value: Any, digits: int, expected: Any) -> None:
    assert apply("round", value, digits) == expected


@pytest.mark.parametrize("value", ["", 0, False, [], {}, "null"])
def test_default_keeps_everything_but_null(value: Any) -> None:
    assert apply("default", value, "fallback") == value
    assert type(apply("default", value, "fallback")) is type(value)


def test_default_replaces_null_and_missing() -> None:
    assert apply("default", None, "fallback") == "fallback"
    assert evaluate_element('state.missing.path | default "unknown"') == "unknown"
    assert evaluate_element('state.a | default "unknown"', {"a": ""}) == ""
    assert evaluate_element("state.a | default 5", {"a": 0}) == 0
    assert evaluate_element("state.a | default true", {"a": False}) is False
    assert evaluate_element("state.a | default (state.b)", {"b": [1]}) == [1]


def test_join() -> None:
    assert apply("join", ["a", "b", "c"], "-") == "a-b-c"
    assert apply("join", [1, 2.0, None, True, "x"], "|") == "1|2|true|x"  # null skipped
    assert apply("join", [], ",") == ""
    assert apply("join", [{"a": 1}], ";") == '{"a":1}'
    assert evaluate_element('state.tags | join ", "', {"tags": ["run", "trail"]}) == "run, trail"


def test_filters_in_rule_text() -> None:
    state = {"page": {"type": "  CheckOut  ", "items": [3, 4]}, "count": "41"}
    assert evaluate_element("state.page.type | trim | lower", state) == "checkout"
    assert evaluate_element("state.page.items | length", state) == 2
    assert evaluate_element("state.nothing | length", state) == 0
    assert evaluate_element("state.page.items | last", state) == 4
    assert evaluate_element("state.count | number + 1", state) == 42
    assert evaluate_element("state.ratio | round 2", {"ratio": 0.125}) == 0.13


# ------------------------------------------------------------------ lookup
DOC = {"a": {"b": [10, {"c": "deep"}], "n": None}, "s": "text", "num": 5}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ((), DOC),
        (("a", "b", 0), 10),
        (("a", "b", 1, "c"), "deep"),
        (("a", "n"), None),
        (("a", "n", "x"), None),
        (("missing",), None),
        (("missing", "x", 0), None),
        (("s", "x"), None),
        (("s", 0), None),
        (("num", "x"), None),
        (("num", 0), None),
        (("a", "b", 2), None),
        (("a", "b", 99, "c"), None),
        (("a", "b", "c"), None),
        (("a", 0), None),
    ],
)
def test_lookup_never_raises(path: tuple[str | int, ...], expected: Any) -> None:
    assert values.lookup(DOC, path) == expected


@pytest.mark.parametrize("root", [None, 1, "x", True, [], {}])
def test_lookup_into_anything(root: Any) -> None:
    assert values.lookup(root, ("a", 0, "b")) is None


@pytest.mark.parametrize(
    "expr",
    [
        "state.s.x",
        "state.s[0]",
        "state.num.x.y",
        "state.a.b[5]",
        "state.a.b[1].c.d",
        'state.a["b"][9]',
        "state.a.n.x",
        "event.eventInfo.orderId",
    ],
)
def test_paths_in_rule_text_never_raise(expr: str) -> None:
    assert evaluate_element(expr, DOC) is None


def test_quoted_path_steps() -> None:
    state = {"a": {"key with.dots": {"b": 1}}}
    assert evaluate_element('state.a["key with.dots"].b', state) == 1
    assert evaluate_element('state.a["key with.dots"]["b"]', state) == 1


# ------------------------------------------------------------------ stringify
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("x", "x"),
        (3, "3"),
        (3.0, "3"),
        (-2.0, "-2"),
        (3.25, "3.25"),
        (True, "true"),
        (False, "false"),
        ([1, "a", None], '[1,"a",null]'),
        ({"a": 1, "b": {"c": [True]}}, '{"a":1,"b":{"c":[true]}}'),
        ({}, "{}"),
        ([], "[]"),
    ],
)
def test_stringify(value: Any, expected: str) -> None:
    assert values.stringify(value) == expected


def test_copy_json_is_deep() -> None:
    original = {"a": [1, {"b": 2}]}
    copy = values.copy_json(original)
    assert copy == original
    copy["a"][1]["b"] = 3
    copy["a"].append(4)
    assert original == {"a": [1, {"b": 2}]}


# ------------------------------------------------------------------ totality on extreme numbers
# engine/values.py: "Every function here is total: on values of the wrong kind it returns
# None/False ..., never raises."
@pytest.mark.parametrize(
    ("value", "digits"),
    [(1e300, 0), (1e27, 2), ("1e30", 0), (10**40, 2)],
    ids=["1e300", "1e27-2-places", "string-1e30", "10**40-2-places"],
)
def test_round_is_total_on_large_numbers(value: Any, digits: int) -> None:
    assert apply("round", value, digits) == pytest.approx(float(value))


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "%"])
@pytest.mark.parametrize(
    ("a", "b"),
    [(10**400, 0.5), (0.5, 10**400), (str(10**400), 0.5)],
    ids=["big-int-and-float", "float-and-big-int", "big-string-and-float"],
)
def test_arithmetic_is_total_on_large_numbers(op: str, a: Any, b: Any) -> None:
    result = values.ARITHMETIC[op](a, b)
    # Text too large to be a number is text: `+` joins it.
    joined = op == "+" and isinstance(a, str) and isinstance(result, str)
    assert result is None or isinstance(result, int | float) or joined


@pytest.mark.parametrize(
    ("value", "digits", "expected"), [(100, 2, 100), ("0", 2, 0), (2.5, 2, 2.5), (1.005, 2, 1.01)]
)
def test_round_writes_a_whole_result_as_a_whole_number(
    value: Any, digits: int, expected: Any
) -> None:
    result = values.f_round(value, digits)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0.5, 30, 0.5),  # more places than a float has: the number as it is
        (1e14 + 0.25, 16, 1e14 + 0.25),
        (1.25e-7, 40, 1.25e-7),
        (1.25e-7, 7, 1e-7),  # rounded at the 7th decimal, half up
        (5e-324, 400, 5e-324),
        (123.456, 10**9, 123.456),  # places past any float's are as many as it has
        (7.5, -(10**9), 0),
    ],
)
def test_round_to_many_places_never_fails(value: Any, digits: int, expected: Any) -> None:
    result = values.f_round(value, digits)
    assert result == expected and type(result) is type(expected)
