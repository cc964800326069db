"""Whatever text it is given, loading gives a Ruleset or a RuleError whose diagnostics render as
``file:line:col: error: …`` — never another exception (engine/errors.py: "none of them escapes
the public API"; engine/parser.py: "Never raises for bad input")."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import RuleError, Ruleset
from engine.loader import build_ruleset, clear_cache

NAME = "fuzz.rules"
PREFIX = re.compile(r"fuzz\.rules:(\d+):(\d+): error: \S")

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A realistic file: every kind of statement, most expression forms.
VALID = r"""# settings
edge {
  datastream: "0dada9f4-fa94-4c9c-8aaf-fdbac6c56287"
  org: "53A16ACB5CC1D3760A495C99@AdobeOrg"
  url: env("EDGE_URL", "https://edge.adobedc.net")
}
sitecore {
  url: env("SITECORE_URL", "https://api-engage-eu.sitecorecloud.io")
  client_key: env("SITECORE_CLIENT_KEY", "key")
  pos: "spinair.com"
  language: "EN"
  currency: "EUR"
}
datalayer { merge: "acdl" }

element page_type  = state.page.type | lower | default "unknown"
element cart_total = state.cart.total | default 0
element order_id   = event.eventInfo.orderId | trim | upper
element tier       = state.user.tier keep visitor
element items      = state.cart.items | default []
element label      = "Order %order_id% (%tier%) 100%% done, 50% off"
element first_sku  = items[0].SKU
element ratio      = (cart_total * 2 - 1) / 3 | round 2

rule "Page view" {
  on "page.view", "viewStart"
  when page_type != "error" and not (state.page.name matches "(?i)^test")
  send event {
    type: "web.webpagedetails.pageViews"
    xdm: {
      web.webPageDetails.name: state.page.name
      web.webPageDetails.pageViews.value: 1
    }
    renderDecisions: true
    personalization: { decisionScopes: ["hero-banner"] }
  }
  send sitecore {
    type: "VIEW"
    page: state.page.name
    ext: { page_type: page_type }
  }
}

rule "Purchase" order 10 {
  on "commerce.purchase"
  when cart_total > 0 and page_type == "checkout"
  when order_id exists; unless state.user.internal
  unless state.user.email ends with "@example.com" or tier in ["staff", "qa"]
  sample 50%
  limit 1 per session
  send event {
    type: "commerce.purchases"
    xdm: {
      commerce.purchases.value: 1
      commerce.order.priceTotal: cart_total
      commerce.order.purchaseID: order_id
      productListItems: items
    }
    data: { label: "Order %order_id% (%tier%)", ratio: ratio, raw: "%cart_total%" }
    documentUnloading: true
  }
}

rule "Cart change" order -1 {
  on change cart.total, "commerce.*", "a?c"
  when state.cart.items | length != 0 and items contains "x" or first_sku starts with "SP-"
  push { cart_seen: true, at: state.cart.updatedAt }
}

test "a purchase on checkout is sent once" {
  session "s-1"
  push { page: { type: "Checkout", name: "Checkout" } }
  push { event: "commerce.purchase", eventInfo: { orderId: "A-1" }, cart: { total: 120 } }
  expect send event from "Purchase" { xdm.commerce.order.priceTotal: 120, xdm.commerce.order.purchaseID: "A-1" }
  expect 1 send from "Purchase"
  expect no send sitecore from "Purchase"
  expect rule "Purchase" fired
}
"""

# Pieces of the language (and of things that are not), for insertions and random text.
SNIPPETS = [
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    '"',
    "'",
    "%",
    "%%",
    "%x%",
    "%state.a%",
    "%order_id%",
    "\\",
    "\\u12",
    "\\q",
    "\n",
    "\r\n",
    "\r",
    ";",
    ",",
    ":",
    ".",
    "|",
    "=",
    "==",
    "!=",
    "<",
    ">=",
    "-",
    "+",
    "*",
    "/",
    "#",
    "# comment\n",
    " ",
    "\t",
    "and",
    "or",
    "not",
    "in",
    "not in",
    "contains",
    "matches",
    "starts with",
    "ends with",
    "exists",
    "rule",
    "element",
    "on",
    "when",
    "unless",
    "send",
    "event",
    "sitecore",
    "edge",
    "push",
    "expect",
    "test",
    "limit",
    "per",
    "session",
    "sample",
    "50%",
    "150%",
    "keep",
    "visitor",
    "order",
    "change",
    "from",
    "state",
    "env",
    'env("X")',
    'env("X", "y")',
    "null",
    "true",
    "false",
    "0",
    "-12",
    "3.5",
    "1e3",
    "1e999",
    "99999999999999999999",
    "round",
    "round 2",
    "default",
    "| default 0",
    "| lower",
    "| join",
    "length",
    "first",
    "x",
    "_",
    "page_type",
    "cart_total",
    '"(?i)["',
    '"(a)\\\\1"',
    '"a.b"',
    "[0]",
    '["k"]',
    "a.b.c",
    "é",
    "ß",
    "\u2028",
    "\x00",
    "\x0c",
    "\ufeff",
    "\U0001f600",
    'rule "R" { on "x"\n push { a: 1 } }\n',
    "element y = 1\n",
    "xdm: { a.b: 1, a: 2 }",
]
SNIPPET = st.sampled_from(SNIPPETS)
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\s+|.', re.DOTALL)


def check_outcome(text: str) -> Ruleset | RuleError:
    """Load ``text``; assert the outcome is a Ruleset or a well-formed RuleError."""
    try:
        ruleset = build_ruleset([(NAME, text.encode("utf-8"))], environ={})
    except RuleError as error:
        assert error.diagnostics, "a RuleError carries at least one diagnostic"
        for diagnostic in error.diagnostics:
            rendered = diagnostic.render()
            assert isinstance(rendered, str)
            match = PREFIX.match(rendered)
            assert match, rendered
            line, column = int(match.group(1)), int(match.group(2))
            assert line >= 1 and column >= 1, rendered
        assert isinstance(str(error), str)
        return error
    assert isinstance(ruleset, Ruleset)
    return ruleset


def outcome_summary(result: Ruleset | RuleError) -> Any:
    if isinstance(result, RuleError):
        return [d.render() for d in result.diagnostics]
    return (result.version, [r.name for r in result.rules], sorted(result.elements))


# ------------------------------------------------------------------ the base file
def test_the_base_file_is_valid() -> None:
    result = check_outcome(VALID)
    assert isinstance(result, Ruleset), result
    assert [r.name for r in result.rules] == ["Cart change", "Purchase", "Page view"]


# ------------------------------------------------------------------ random text
RANDOM_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from('{}[]()"%\\\n\r;,:.|=<>!#-+*/ \tabcerx_0123456789é')),
    st.lists(st.one_of(SNIPPET, st.text(max_size=4)), max_size=40).map("".join),
)


@FUZZ
@given(RANDOM_TEXT)
@example("")
@example("\n\n\n")
@example('"')
@example('element x = "')
@example("element x = (")
@example("rule")
@example('rule "a" {')
@example("}}}}")
@example("element x = %")
@example('element x = "%"')
@example('element x = "%y%"')
@example("\ufeffelement x = 1")
def test_random_text(text: str) -> None:
    check_outcome(text)


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xff")
@example(b"element x = 1\n\xc3(")
def test_random_bytes(data: bytes) -> None:
    try:
        result = build_ruleset([(NAME, data)], environ={})
    except RuleError as error:
        for diagnostic in error.diagnostics:
            assert PREFIX.match(diagnostic.render()), diagnostic.render()
        return
    assert isinstance(result, Ruleset)


# ------------------------------------------------------------------ mutations of a valid file
MUTATION = st.tuples(
    st.sampled_from(
        [
            "delete-chars",
            "insert",
            "replace-char",
            "duplicate-chars",
            "delete-token",
            "duplicate-token",
            "replace-token",
            "insert-token",
            "swap-tokens",
            "truncate",
        ]
    ),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.one_of(SNIPPET, st.text(min_size=1, max_size=3)),
)


def mutate(text: str, kind: str, a: int, b: int, piece: str) -> str:
    if kind in ("delete-chars", "insert", "replace-char", "duplicate-chars", "truncate"):
        if not text:
            return piece
        i = a % (len(text) + 1)
        j = min(len(text), i + 1 + b % 40)
        if kind == "delete-chars":
            return text[:i] + text[j:]
        if kind == "insert":
            return text[:i] + piece + text[i:]
        if kind == "replace-char":
            return text[:i] + piece + text[i + 1 :]
        if kind == "duplicate-chars":
            return text[:j] + text[i:j] + text[j:]
        return text[:i]
    tokens = TOKEN.findall(text)
    if not tokens:
        return piece
    i = a % len(tokens)
    if kind == "delete-token":
        del tokens[i]
    elif kind == "duplicate-token":
        tokens.insert(i, tokens[i])
    elif kind == "replace-token":
        tokens[i] = piece
    elif kind == "insert-token":
        tokens.insert(i, piece)
    else:
        j = b % len(tokens)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(tokens)


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
@example([("truncate", 1500, 0, "")])
@example([("insert", 0, 0, "}")])
@example([("replace-token", 60, 0, '"%nope%"')])
def test_mutations_of_a_valid_file(mutations: list[tuple[str, int, int, str]]) -> None:
    text = VALID
    for mutation in mutations:
        text = mutate(text, *mutation)
    check_outcome(text)


@FUZZ
@given(st.integers(min_value=0, max_value=len(VALID)))
def test_every_truncation(position: int) -> None:
    check_outcome(VALID[:position])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_outcome_is_the_same_on_reload(mutations: list[tuple[str, int, int, str]]) -> None:
    # A second load of the same text (served from the in-process cache) and a load after
    # clearing the cache report exactly the same thing.
    text = VALID
    for mutation in mutations:
        text = mutate(text, *mutation)
    first = outcome_summary(check_outcome(text))
    assert outcome_summary(check_outcome(text)) == first
    clear_cache()
    assert outcome_summary(check_outcome(text)) == first


# ------------------------------------------------------------------ the quoted source line
def assert_quotes_its_line(text: str) -> None:
    """docs/semantics.md: a diagnostic is "file:line:col: error: …, then the source line and a
    caret" — the line quoted is the one the position names. Lines end at "\n" (a form feed is
    blank space in the grammar; U+2028 and friends are not line ends either)."""
    try:
        build_ruleset([(NAME, text.encode("utf-8"))], environ={})
    except RuleError as error:
        lines = text.removeprefix("\ufeff").split("\n")
        for diagnostic in error.diagnostics:
            line = diagnostic.span.line
            if diagnostic.source_line is None or line > len(lines):
                continue
            assert diagnostic.source_line.rstrip("\r\n") == lines[line - 1].rstrip("\r"), (
                diagnostic.render()
            )


@pytest.mark.parametrize(
    "first",
    [
        pytest.param("element a = 1 \x0c\x0c", id="form-feed-between-tokens"),
        pytest.param('element a = "x\u2028y"', id="line-separator-in-string"),
        pytest.param('element a = "x\x85y"', id="next-line-in-string"),
        pytest.param("element a = 1  # note\x1cmore\u2029end", id="separators-in-comment"),
    ],
)
def test_diagnostics_quote_the_right_line(first: str) -> None:
    assert_quotes_its_line(first + "\nelement b = 2\nelement c = nope\n")


def test_diagnostics_quote_the_right_line_plain() -> None:
    # The same file without exotic characters: the check itself accepts a correct quote.
    assert_quotes_its_line("element a = 1\nelement b = 2\nelement c = nope\n")
    with pytest.raises(RuleError) as caught:
        build_ruleset([(NAME, b"element a = 1\nelement b = 2\nelement c = nope\n")], environ={})
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.source_line == "element c = nope"


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_mutations_quote_the_right_line(mutations: list[tuple[str, int, int, str]]) -> None:
    text = VALID
    for mutation in mutations:
        text = mutate(text, *mutation)
    assert_quotes_its_line(text.replace("\r\n", "\n").replace("\r", ""))


# ------------------------------------------------------------------ deep nesting and big numbers
DEEP = 5000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("element x = " + "(" * DEEP + "1" + ")" * DEEP, id="parens"),
        pytest.param("element x = " + "(" * DEEP + "state.a" + ")" * DEEP, id="parens-ref"),
        pytest.param("element x = " + "(" * DEEP, id="unclosed-parens"),
        pytest.param("element x = " + "[" * DEEP + "1" + "]" * DEEP, id="lists"),
        pytest.param("element x = " + "{a: " * DEEP + "1" + "}" * DEEP, id="objects"),
        pytest.param("element x = " + "not " * DEEP + "state.a", id="not"),
        pytest.param("element x = " + "-" * DEEP + "state.a", id="negation"),
        pytest.param("element x = state.a" + " | lower" * DEEP, id="filters"),
        pytest.param("element x = state.a" + ".b" * DEEP, id="path"),
        pytest.param("element x = state.a" + " + state.a" * DEEP, id="sum"),
        pytest.param("element x = state.a" + " and state.a" * DEEP, id="and"),
        pytest.param("element x = {" + "a." * DEEP + "b: 1}", id="dotted-key"),
        pytest.param(
            'test "t" { push ' + "{a: " * DEEP + "1" + "}" * DEEP + "; expect no send }",
            id="test-push",
        ),
        pytest.param('edge { datastream: "d", org: ' + "[" * DEEP + "]" * DEEP + "}", id="edge"),
        pytest.param(
            "\n".join(f"element e{i} = e{i + 1}" for i in range(DEEP)) + f"\nelement e{DEEP} = 1",
            id="element-chain",
        ),
        pytest.param(
            "\n".join(f"element e{i} = e{i + 1}" for i in range(DEEP)) + f"\nelement e{DEEP} = e0",
            id="element-cycle",
        ),
    ],
)
def test_deep_nesting(text: str) -> None:
    check_outcome(text)


BIG = "1" + "0" * 400
HUGE = "1" + "0" * 5000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("element x = 1e300 | round", id="round-1e300"),
        pytest.param("element x = 1e27 | round 2", id="round-1e27"),
        pytest.param('element x = "1e30" | round', id="round-string"),
        pytest.param(f"element x = {BIG} + 0.5", id="big-int-plus-float"),
        pytest.param(f'element x = "{BIG}" + 0.5', id="big-string-plus-float"),
        pytest.param(f"element x = {BIG} - 0.5", id="big-int-minus-float"),
        pytest.param(f"element x = {BIG} / 7", id="big-int-divided"),
        pytest.param(f"element x = {BIG} | string", id="big-int-string"),
        pytest.param(f"element x = {HUGE}", id="huge-int-literal"),
        pytest.param(f'rule "r" order {HUGE} {{ on "x"; push {{ a: 1 }} }}', id="huge-order"),
        pytest.param(
            f'rule "r" {{ on "x"; limit {HUGE} per session; push {{ a: 1 }} }}', id="huge-limit"
        ),
        pytest.param(f'test "t" {{ push {{ a: 1 }}; expect {HUGE} sends }}', id="huge-count"),
        pytest.param("element x = 1e999", id="infinite-float"),
        pytest.param("element x = 1e308 * 10", id="overflowing-product"),
        pytest.param("element x = state.a[99999999999999999999999]", id="huge-index"),
    ],
)
def test_extreme_numbers(text: str) -> None:
    check_outcome(text)
