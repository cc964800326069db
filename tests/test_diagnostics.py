"""Each load-time diagnostic, with its full rendered text: file:line:col, message, line, caret."""

from __future__ import annotations

from textwrap import dedent

import pytest

from engine import RuleError
from tests.conftest import SETTINGS, load_text, rendered_errors


def one_error(text: str, environ: dict[str, str] | None = None) -> str:
    errors = rendered_errors({"a_settings.rules": SETTINGS, "t.rules": dedent(text)}, environ)
    assert len(errors) == 1, "\n".join(errors)
    return errors[0]


RULE = 'rule "R" {{\n  on "x"\n  {clause}\n  send event {{ type: "t" }}\n}}\n'


def in_rule(clause: str) -> str:
    return RULE.format(clause=clause)


CASES = {
    "unknown element": (
        "element cart_total = state.cart.total\n" + in_rule("when cart_totl > 0"),
        """\
        t.rules:4:8: error: unknown element 'cart_totl' (did you mean 'cart_total'?)
         4 |   when cart_totl > 0
           |        ^~~~~~~~~""",
    ),
    "unknown filter": (
        in_rule('when state.page.type | lowr == "x"'),
        """\
        t.rules:3:26: error: unknown filter 'lowr' (did you mean 'lower'?)
         3 |   when state.page.type | lowr == "x"
           |                          ^~~~""",
    ),
    "filter needs a value": (
        in_rule("when state.a | default"),
        """\
        t.rules:3:18: error: filter 'default' needs a value, e.g. '| default 0'
         3 |   when state.a | default
           |                  ^~~~~~~""",
    ),
    "filter takes no argument": (
        in_rule('when state.a | lower "x"'),
        """\
        t.rules:3:24: error: filter 'lower' takes no argument
         3 |   when state.a | lower "x"
           |                        ^~~""",
    ),
    "unknown send event field": (
        'rule "R" {\n  on "x"\n  send event { type: "t", persnalization: { decisionScopes: ["a"] } }\n}\n',
        """\
        t.rules:3:27: error: unknown send event field 'persnalization' (did you mean 'personalization'?)
         3 |   send event { type: "t", persnalization: { decisionScopes: ["a"] } }
           |                           ^~~~~~~~~~~~~~""",
    ),
    "unknown sitecore field": (
        'rule "R" {\n  on "x"\n  send sitecore { type: "VIEW", pgae: "home" }\n}\n',
        """\
        t.rules:3:33: error: unknown send sitecore field 'pgae' (did you mean 'page'?)
         3 |   send sitecore { type: "VIEW", pgae: "home" }
           |                                 ^~~~""",
    ),
    "unknown destination": (
        'rule "R" {\n  on "x"\n  send evnt { type: "t" }\n}\n',
        """\
        t.rules:3:8: error: unknown destination 'evnt'; expected 'event' or 'sitecore' (did you mean 'event'?)
         3 |   send evnt { type: "t" }
           |        ^~~~""",
    ),
    "duplicate rule": (
        'rule "R" { on "x"; send event { type: "t" } }\nrule "R" { on "y"; send event { type: "t" } }\n',
        """\
        t.rules:2:6: error: duplicate rule name 'R' (first defined at t.rules:1:6)
         2 | rule "R" { on "y"; send event { type: "t" } }
           |      ^~~""",
    ),
    "duplicate element": (
        "element a = 1\nelement a = 2\n",
        """\
        t.rules:2:9: error: duplicate element 'a' (first defined at t.rules:1:9)
         2 | element a = 2
           |         ^""",
    ),
    "element cycle": (
        "element a = b\nelement b = c + 1\nelement c = a\n",
        """\
        t.rules:3:13: error: element cycle: a → b → c → a
         3 | element c = a
           |             ^""",
    ),
    "keyword as element name": (
        "element and = 1\n",
        """\
        t.rules:1:9: error: 'and' is a keyword and cannot name an element
         1 | element and = 1
           |         ^~~""",
    ),
    "dotted key collision": (
        'rule "R" {\n  on "x"\n  send event { type: "t", xdm: { a: 1, a.b: 2 } }\n}\n',
        """\
        t.rules:3:40: error: key 'a.b' collides with 'a' (line 3): 'a' cannot be both a value and an object
         3 |   send event { type: "t", xdm: { a: 1, a.b: 2 } }
           |                                        ^~~""",
    ),
    "bad regex": (
        in_rule('when state.page matches "(unclosed"'),
        """\
        t.rules:3:27: error: bad regular expression: missing ): (unclosed
         3 |   when state.page matches "(unclosed"
           |                           ^~~~~~~~~~~""",
    ),
    "regex needing backtracking": (
        in_rule('when state.page matches "(a)\\\\1"'),
        """\
        t.rules:3:27: error: bad regular expression: invalid escape sequence: \\1 (patterns run in linear time: no backreferences or lookaround)
         3 |   when state.page matches "(a)\\\\1"
           |                           ^~~~~~~~""",
    ),
    "type and xdm.eventType": (
        'rule "R" {\n  on "x"\n  send event {\n    type: "a"\n    xdm.eventType: "b"\n  }\n}\n',
        """\
        t.rules:4:5: error: give the event type once: 'type' and 'xdm.eventType' are both set
         4 |     type: "a"
           |     ^~~~""",
    ),
    "unknown token": (
        "element order_id = event.eventInfo.orderId\n"
        'rule "R" {\n  on "x"\n  send event { type: "t", data: { label: "Order %order_idd%" } }\n}\n',
        """\
        t.rules:4:49: error: unknown token '%order_idd%': no element 'order_idd' (did you mean 'order_id'?)
         4 |   send event { type: "t", data: { label: "Order %order_idd%" } }
           |                                                 ^~~~~~~~~~~""",
    ),
    "literal type mismatch": (
        in_rule('when "abc" > 5'),
        """\
        t.rules:3:14: error: '>' compares numbers and dates; with string "abc" it is always false
         3 |   when "abc" > 5
           |              ^""",
    ),
    "in needs a list": (
        in_rule('when state.x in "abc"'),
        """\
        t.rules:3:16: error: 'in' needs a list on its right, not string "abc"
         3 |   when state.x in "abc"
           |                ^~""",
    ),
    "arithmetic on a string": (
        in_rule('when state.x * "abc" > 1'),
        """\
        t.rules:3:16: error: '*' needs numbers, not string "abc"
         3 |   when state.x * "abc" > 1
           |                ^""",
    ),
    "sitecore reserved type": (
        'rule "R" {\n  on "x"\n  send sitecore { type: "SC_CUSTOM" }\n}\n',
        """\
        t.rules:3:25: error: sitecore type 'SC_CUSTOM' is reserved by Sitecore; choose another name
         3 |   send sitecore { type: "SC_CUSTOM" }
           |                         ^~~~~~~~~~~""",
    ),
    "sitecore lower-case type": (
        'rule "R" {\n  on "x"\n  send sitecore { type: "add to cart" }\n}\n',
        """\
        t.rules:3:25: error: sitecore type 'add to cart' must be upper-case letters, digits and '_' (did you mean 'ADD_TO_CART'?)
         3 |   send sitecore { type: "add to cart" }
           |                         ^~~~~~~~~~~~~""",
    ),
    "sitecore type missing": (
        'rule "R" {\n  on "x"\n  send sitecore { page: "home" }\n}\n',
        """\
        t.rules:3:8: error: send sitecore needs a 'type' (e.g. "VIEW")
         3 |   send sitecore { page: "home" }
           |        ^~~~~~~~""",
    ),
    "sitecore ext above 50": (
        'rule "R" {\n  on "x"\n  send sitecore { type: "VIEW", ext: { '
        + ", ".join(f"a{i}: {i}" for i in range(45))
        + ", nested: { b1: 1, b2: 2, b3: 3, b4: 4, b5: 5, b6: 6 } } }\n}\n",
        None,  # checked below: the line is long
    ),
    "browser_id set by a rule": (
        'rule "R" {\n  on "x"\n  send sitecore { type: "VIEW", browser_id: "b" }\n}\n',
        """\
        t.rules:3:33: error: 'browser_id' is set by the engine, not by a rule
         3 |   send sitecore { type: "VIEW", browser_id: "b" }
           |                                 ^~~~~~~~~~""",
    ),
    "limit unit": (
        in_rule("limit 1 per fortnight"),
        """\
        t.rules:3:15: error: unknown limit unit 'fortnight'; expected session, visitor, minute, hour, day
         3 |   limit 1 per fortnight
           |               ^~~~~~~~~""",
    ),
    "sample range": (
        in_rule("sample 150%"),
        """\
        t.rules:3:3: error: sample must be between 0% and 100%, not 150%
         3 |   sample 150%
           |   ^~~~~~~~~~~""",
    ),
    "keep scope": (
        "element tier = state.user.tier keep forevr\n",
        """\
        t.rules:1:37: error: unknown keep scope 'forevr'; expected pageview, session or visitor
         1 | element tier = state.user.tier keep forevr
           |                                     ^~~~~~""",
    ),
    "rule without trigger": (
        'rule "R" {\n  send event { type: "t" }\n}\n',
        """\
        t.rules:1:6: error: rule 'R' has no trigger: add an 'on "event"' line
         1 | rule "R" {
           |      ^~~""",
    ),
    "unknown rule in a test": (
        'rule "Purchase" { on "x"; send event { type: "t" } }\n'
        'test "T" {\n  push { event: "x" }\n  expect rule "Purchse" fired\n}\n',
        """\
        t.rules:4:15: error: unknown rule 'Purchse' (did you mean 'Purchase'?)
         4 |   expect rule "Purchse" fired
           |               ^~~~~~~~~""",
    ),
    "unknown status in a test": (
        'rule "Purchase" { on "x"; send event { type: "t" } }\n'
        'test "T" {\n  push { event: "x" }\n  expect rule "Purchase" fird\n}\n',
        """\
        t.rules:4:26: error: unknown rule status 'fird' (did you mean 'fired'?)
         4 |   expect rule "Purchase" fird
           |                          ^~~~""",
    ),
    "reference in a test push": (
        'rule "P" { on "x"; send event { type: "t" } }\n'
        'test "T" {\n  push { event: state.x }\n  expect 1 send\n}\n',
        """\
        t.rules:3:17: error: 'state' cannot be used in a test: only constant values
         3 |   push { event: state.x }
           |                 ^~~~~~~""",
    ),
    "env outside settings": (
        'element key = env("KEY")\n',
        """\
        t.rules:1:15: error: env() reads the environment in settings blocks only
         1 | element key = env("KEY")
           |               ^~~~~~~~~~""",
    ),
    "unknown function": (
        "element n = count(state.items)\n",
        """\
        t.rules:1:13: error: 'count' is not a function; use the 'count' filter: state.items | count
         1 | element n = count(state.items)
           |             ^~~~~~~~~~~~~~~~~~""",
    ),
    "bad escape": (
        'element s = "a\\qb"\n',
        """\
        t.rules:1:15: error: unknown escape '\\q' in string
         1 | element s = "a\\qb"
           |               ^~""",
    ),
    "syntax: missing brace": (
        'rule "R" {\n  on "x"\n  send event { type: "t" }\n',
        """\
        t.rules:1:10: error: unclosed '{' opened at line 1: the file ends before its closing '}'
         1 | rule "R" {
           |          ^""",
    ),
    "syntax: misspelt keyword": (
        'rule "R" {\n  on "x"\n  wehn state.a\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:3: error: unexpected 'wehn' (did you mean 'when'?)
         3 |   wehn state.a
           |   ^~~~""",
    ),
    "syntax: unterminated string": (
        'element s = "abc\n',
        """\
        t.rules:1:13: error: unterminated string (a string ends with '"' on the same line)
         1 | element s = "abc
           |             ^~~~""",
    ),
}


@pytest.mark.parametrize("name", [n for n, (_, expected) in CASES.items() if expected])
def test_diagnostic_renders_in_full(name: str) -> None:
    source, expected = CASES[name]
    assert expected is not None
    assert one_error(source) == dedent(expected)


def test_sitecore_ext_limit_counts_flattened_attributes() -> None:
    source, _ = CASES["sitecore ext above 50"]
    rendered = one_error(source)
    head, line, caret = rendered.split("\n")
    assert head == (
        "t.rules:3:33: error: sitecore ext has 51 attributes once flattened; the limit is 50"
    )
    assert line.startswith(" 3 |   send sitecore {")
    assert caret == "   | " + " " * 32 + "^~~"


def test_missing_environment_variable() -> None:
    text = 'edge { datastream: "ds", client_secret: env("TE_SECRET") }\n'
    errors = rendered_errors({"s.rules": text})
    assert errors == [
        dedent(
            """\
            s.rules:1:41: error: environment variable 'TE_SECRET' is not set and has no default (set it, or write env("TE_SECRET", "default"))
             1 | edge { datastream: "ds", client_secret: env("TE_SECRET") }
               |                                         ^~~~~~~~~~~~~~~~"""
        )
    ]
    ruleset = load_text({"s.rules": text}, environ={"TE_SECRET": "hunter2"})
    assert ruleset.edge is not None and ruleset.edge.client_secret is not None
    assert ruleset.edge.client_secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(ruleset.edge)


def test_env_default_is_used() -> None:
    ruleset = load_text('edge { datastream: env("TE_DS", "fallback") }\n')
    assert ruleset.edge is not None and ruleset.edge.datastream == "fallback"
    ruleset = load_text('edge { datastream: env("TE_DS", "fallback") }\n', {"TE_DS": "real"})
    assert ruleset.edge is not None and ruleset.edge.datastream == "real"


def test_send_without_settings_block() -> None:
    errors = rendered_errors('rule "R" {\n  on "x"\n  send event { type: "t" }\n}\n')
    assert errors == [
        dedent(
            """\
            t.rules:3:8: error: send event needs a 'edge { … }' settings block; this ruleset has none
             3 |   send event { type: "t" }
               |        ^~~~~"""
        )
    ]


def test_settings_values_are_validated() -> None:
    errors = rendered_errors('edge { datastream: "d", api: "v3", dtastream: "x" }\n')
    assert errors == [
        dedent(
            """\
            t.rules:1:36: error: unknown edge setting 'dtastream' (did you mean 'datastream'?)
             1 | edge { datastream: "d", api: "v3", dtastream: "x" }
               |                                    ^~~~~~~~~"""
        )
    ]
    errors = rendered_errors('edge { datastream: "d", api: "v3" }\n')
    assert errors == [
        dedent(
            """\
            t.rules:1:30: error: edge setting 'api': input should be 'v1' or 'v2'
             1 | edge { datastream: "d", api: "v3" }
               |                              ^~~~"""
        )
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = dedent(
        """\
        element a = state.x | lowr
        rule "R" {
          on "x"
          when b > 0
          send evnt { type: "t" }
        }
        """
    )
    with pytest.raises(RuleError) as caught:
        load_text({"a_settings.rules": SETTINGS, "t.rules": text})
    messages = [d.message for d in caught.value.diagnostics]
    assert messages == [
        "unknown filter 'lowr' (did you mean 'lower'?)",
        "unknown element 'b'",
        "unknown destination 'evnt'; expected 'event' or 'sitecore' (did you mean 'event'?)",
    ]
    assert str(caught.value).startswith("3 errors in ruleset\nt.rules:1:23: error:")


def test_diagnostics_across_files_are_sorted_and_keep_their_file() -> None:
    errors = rendered_errors(
        {"a.rules": "element x = 1\n", "b.rules": "element x = 2\nelement y = zz\n"}
    )
    assert [e.split(":")[0] for e in errors] == ["b.rules", "b.rules"]
    assert errors[0].startswith(
        "b.rules:1:9: error: duplicate element 'x' (first defined at a.rules:1:9)"
    )
