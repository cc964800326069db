"""Hints for the syntax habits analysts bring from JavaScript, GTM and Adobe Tags, and the
unclosed-bracket and not-a-function messages: each with its full rendered text."""

from __future__ import annotations

from textwrap import dedent

import pytest

from tests.conftest import SETTINGS, rendered_errors

HINTS = {
    "strict equality ===": (
        'rule "R" {\n  on "x"\n  when state.a === 1\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:16: error: write '==' to compare, not '==='
         3 |   when state.a === 1
           |                ^~~""",
    ),
    "strict inequality !==": (
        'rule "R" {\n  on "x"\n  when state.a !== 1\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:16: error: write '!=' to compare, not '!=='
         3 |   when state.a !== 1
           |                ^~~""",
    ),
    "&& for and": (
        'rule "R" {\n  on "x"\n  when state.a && state.b\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:16: error: write 'and', not '&&': a and b
         3 |   when state.a && state.b
           |                ^~""",
    ),
    "|| for or": (
        'rule "R" {\n  on "x"\n  when state.a || state.b\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:16: error: write 'or', not '||': a or b
         3 |   when state.a || state.b
           |                ^~""",
    ),
    "! for not": (
        'rule "R" {\n  on "x"\n  when !state.a\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:8: error: write 'not', not '!': not x
         3 |   when !state.a
           |        ^""",
    ),
    "= in a condition": (
        'rule "R" {\n  on "x"\n  when state.a = 1\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:16: error: to compare, write '==', not '=' ('=' only defines an element)
         3 |   when state.a = 1
           |                ^""",
    ),
    "single quotes": (
        'rule "R" {\n  on "x"\n  when state.a == \'x\'\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:19: error: strings are written in double quotes: write "x", not 'x'
         3 |   when state.a == 'x'
           |                   ^~~""",
    ),
    "smart double quotes": (
        'rule "R" {\n  on "x"\n  when state.a == “x”\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:19: error: '“' is a typographic quote (as word processors type it); strings are written in straight double quotes: "x"
         3 |   when state.a == “x”
           |                   ^~~""",
    ),
    "smart single quotes": (
        'rule "R" {\n  on "x"\n  when state.a == ‘x’\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:19: error: '‘' is a typographic quote (as word processors type it); strings are written in straight double quotes: "x"
         3 |   when state.a == ‘x’
           |                   ^~~""",
    ),
    "// comment line": (
        'rule "R" {\n  on "x"\n  // comment\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:3: error: comments start with '#', not '//'
         3 |   // comment
           |   ^~""",
    ),
    "// comment after a clause": (
        'rule "R" {\n  on "x"\n  when state.a == 1 // c\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:21: error: comments start with '#', not '//'
         3 |   when state.a == 1 // c
           |                     ^~""",
    ),
    "unquoted event name": (
        'rule "R" {\n  on page.view\n  send event { type: "t" }\n}\n',
        """\
        t.rules:2:6: error: event names are quoted: write on "page.view" (or 'on change page.view' to watch a data layer value)
         2 |   on page.view
           |      ^~~~~~~~~""",
    ),
    "single-quoted event name": (
        'rule "R" {\n  on \'page.view\'\n  send event { type: "t" }\n}\n',
        """\
        t.rules:2:6: error: strings are written in double quotes: write "page.view", not 'page.view'
         2 |   on 'page.view'
           |      ^~~~~~~~~~~""",
    ),
    "brace on the next line": (
        'rule "R"\n{\n  on "x"\n  send event { type: "t" }\n}\n',
        """\
        t.rules:1:9: error: put the '{' on the same line: write rule "R" {
         1 | rule "R"
           |         ^""",
    ),
    "test brace on the next line": (
        'test "T"\n{\n  push { event: "x" }\n}\n',
        """\
        t.rules:1:9: error: put the '{' on the same line: write test "T" {
         1 | test "T"
           |         ^""",
    ),
    "leading plus": (
        'rule "R" {\n  on "x"\n  when state.a > +1\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:18: error: a number has no leading '+': write 1, not +1
         3 |   when state.a > +1
           |                  ^""",
    ),
    "unclosed brace": (
        'rule "R" {\n  on "x"\n  send event { type: "t" }\n',
        """\
        t.rules:1:10: error: unclosed '{' opened at line 1: the file ends before its closing '}'
         1 | rule "R" {
           |          ^""",
    ),
    "misspelt statement keyword": (
        'rul "x" {\n  on "x"\n}\n',
        """\
        t.rules:1:1: error: unknown keyword 'rul' (did you mean 'rule'?)
         1 | rul "x" {
           | ^~~""",
    ),
    "len is not a function": (
        'rule "R" {\n  on "x"\n  when len(state.items) > 1\n  send event { type: "t" }\n}\n',
        """\
        t.rules:3:8: error: 'len' is not a function; use the 'length' filter: state.items | length
         3 |   when len(state.items) > 1
           |        ^~~~~~~~~~~~~~~~""",
    ),
    "JavaScript method name": (
        "element n = toLowerCase(state.a)\n",
        """\
        t.rules:1:13: error: 'toLowerCase' is not a function; use the 'lower' filter: state.a | lower
         1 | element n = toLowerCase(state.a)
           |             ^~~~~~~~~~~~~~~~~~~~""",
    ),
}


@pytest.mark.parametrize("name", list(HINTS))
def test_hint_renders_in_full(name: str) -> None:
    source, expected = HINTS[name]
    errors = rendered_errors({"a_settings.rules": SETTINGS, "t.rules": source})
    assert errors == [dedent(expected)]


def test_unquoted_event_name_does_not_suggest_change() -> None:
    source, _ = HINTS["unquoted event name"]
    (error,) = rendered_errors({"a_settings.rules": SETTINGS, "t.rules": source})
    assert "did you mean 'change'" not in error


def test_other_unknown_functions_suggest_nothing_wrong() -> None:
    (error,) = rendered_errors(
        {"a_settings.rules": SETTINGS, "t.rules": "element n = foo(state.a)\n"}
    )
    assert error.splitlines()[0] == "t.rules:1:13: error: unknown function 'foo'"
