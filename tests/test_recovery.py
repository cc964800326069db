"""Diagnostics, second edition: every syntax error of every file in one run, statements cut
short, the warnings and ``strict``, guards and test setups, and loader input that used to
crash or take seconds. Each message is asserted with its full rendered text."""

from __future__ import annotations

import time
from textwrap import dedent

import pytest

from engine import Engine, RuleError
from engine.loader import build_ruleset
from engine.parser import parse
from engine.testing import run_tests
from tests.conftest import SETTINGS, load_text, rendered_errors

EVENT = 'send event { type: "t" }'


def rendered_warnings(files: dict[str, str] | str) -> list[str]:
    return [w.render() for w in load_text(files).warnings]


# ------------------------------------------------------------------ error recovery
def test_every_broken_statement_of_a_file_is_reported() -> None:
    source = dedent(
        """\
        rule "A" {
          on "x"
          when state.a === 1
          send event { type: "a" }
        }
        rule "B" {
          on "x"
          when state.b && state.c
          send event { type: "b" }
        }
        rule "C" {
          on 'cart.add'
          send event { type: "c" }
        }
        """
    )
    assert rendered_errors({"s.rules": SETTINGS, "t.rules": source}) == [
        dedent(
            """\
            t.rules:3:16: error: write '==' to compare, not '==='
             3 |   when state.a === 1
               |                ^~~"""
        ),
        dedent(
            """\
            t.rules:8:16: error: write 'and', not '&&': a and b
             8 |   when state.b && state.c
               |                ^~"""
        ),
        dedent(
            """\
            t.rules:12:6: error: strings are written in double quotes: write "cart.add", not 'cart.add'
             12 |   on 'cart.add'
                |      ^~~~~~~~~~"""
        ),
    ]


def test_the_statements_around_a_broken_one_still_parse() -> None:
    source = 'element a = 1\nrule "B" {\n  on "x"\n  when ===\n}\ntest "T" {\n  push { event: "x" }\n  expect 1 send\n}\n'
    result = parse(source, "t.rules")
    assert result.file is None
    assert [type(s).__name__ for s in result.statements] == ["Element", "Test"]
    assert len(result.diagnostics) == 1


def test_an_unclosed_brace_is_reported_where_it_opens_and_the_next_rule_is_checked() -> None:
    source = dedent(
        """\
        rule "A" {
          on "x"
          send event { type: "a" }

        rule "B" {
          on "y"
          send event { type: 'b' }
        }
        """
    )
    assert rendered_errors({"s.rules": SETTINGS, "t.rules": source}) == [
        dedent(
            """\
            t.rules:1:10: error: unclosed '{' opened at line 1: the statement at line 5 starts before its closing '}'
             1 | rule "A" {
               |          ^"""
        ),
        dedent(
            """\
            t.rules:7:22: error: strings are written in double quotes: write "b", not 'b'
             7 |   send event { type: 'b' }
               |                      ^~~"""
        ),
    ]


def test_a_statement_cut_short_by_the_next_one_is_reported_at_its_end() -> None:
    source = f'element total = state.a +\nrule "R" {{\n  on "x"\n  {EVENT}\n}}\n'
    assert rendered_errors({"s.rules": SETTINGS, "t.rules": source}) == [
        dedent(
            """\
            t.rules:1:25: error: this element is unfinished: its line ends with '+', so the expression goes on, but line 2 starts the next statement
             1 | element total = state.a +
               |                         ^"""
        )
    ]


def test_a_file_ending_after_an_operator_says_so() -> None:
    source = "element total = state.a +\n# a comment after it\n\n"
    assert rendered_errors({"s.rules": SETTINGS, "t.rules": source}) == [
        dedent(
            """\
            t.rules:1:25: error: the file ends after '+': a value must follow it
             1 | element total = state.a +
               |                         ^"""
        )
    ]


def test_a_syntax_error_in_one_file_hides_no_error_of_another() -> None:
    broken = (
        f'rule "A" {{\n  on "x"\n  when state.a === 1\n  {EVENT}\n}}\nelement defined_here = 1\n'
    )
    other = (
        'rule "B" {\n  on "y"\n  when nope > 1 and defined_here > 0\n  send evnt { type: "t" }\n}\n'
    )
    assert rendered_errors({"a.rules": broken, "b.rules": other, "s.rules": SETTINGS}) == [
        dedent(
            """\
            a.rules:3:16: error: write '==' to compare, not '==='
             3 |   when state.a === 1
               |                ^~~"""
        ),
        # `nope` is defined nowhere; `defined_here` may be (in the file that did not parse).
        dedent(
            """\
            b.rules:3:8: error: unknown element 'nope'
             3 |   when nope > 1 and defined_here > 0
               |        ^~~~"""
        ),
        dedent(
            """\
            b.rules:4:8: error: unknown destination 'evnt'; expected 'event' or 'sitecore' (did you mean 'event'?)
             4 |   send evnt { type: "t" }
               |        ^~~~"""
        ),
    ]


def test_recovery_stops_after_fifty_errors() -> None:
    source = "".join(f'rule "R{i}" {{\n  when ===\n}}\n' for i in range(80))
    *errors, stop = parse(source, "t.rules").diagnostics
    assert len(errors) == 50
    assert stop.render() == (
        "t.rules:151:1: error: stopped after 50 syntax errors: the file is not checked from "
        'line 151 on\n 151 | rule "R50" {\n     | ^'
    )


# ------------------------------------------------------------------ loader input that crashed or was slow
def test_a_huge_list_index_in_a_token_is_a_diagnostic() -> None:
    digits = "1" * 4301
    source = f'rule "R" {{\n  on "x"\n  send event {{ type: "%x[{digits}]%" }}\n}}\nelement x = 1\n'
    (error,) = rendered_errors({"s.rules": SETTINGS, "t.rules": source})
    shown = f"x[{digits[:38]}"
    assert error.startswith(f"t.rules:3:23: error: list index in %{shown}…% is out of range\n"), (
        error[:200]
    )


def _load_seconds(terms: int) -> float:
    chain = " and ".join(f"state.v{i} == {i}" for i in range(terms))
    source = f'rule "R" {{\n  on "x"\n  when {chain}\n  {EVENT}\n}}\n'
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        build_ruleset([("s.rules", SETTINGS.encode()), ("t.rules", source.encode())])
        best = min(best, time.perf_counter() - started)
    return best


def test_a_long_and_chain_loads_in_linear_time() -> None:
    # 8x the terms: about 8x the time when linear, 64x when quadratic (as it was: 15.7 s
    # for 40,000 terms). The bound leaves room for a noisy machine.
    small, large = _load_seconds(2_500), _load_seconds(20_000)
    assert large / small < 20, (small, large)
    ruleset = load_text({"s.rules": SETTINGS, "t.rules": _chain(40_000)})
    (rule,) = ruleset.rules
    assert len(rule.conditions) == 1


def _chain(terms: int) -> str:
    chain = " or ".join(f'state.page == "p{i}"' for i in range(terms))
    return f'rule "R" {{\n  on "x"\n  when {chain}\n  {EVENT}\n}}\ntest "T" {{\n  push {{ event: "x", page: "p39999" }}\n  expect 1 send\n}}\n'


def test_a_40000_term_or_chain_works() -> None:
    ruleset = load_text({"s.rules": SETTINGS, "t.rules": _chain(40_000)})
    (report,) = run_tests(ruleset)
    assert report.failures == []


def test_an_expression_nested_too_deeply_is_located() -> None:
    deep = " + ".join(["1"] * 20_000)
    source = f'rule "R" {{\n  on "x"\n  when {deep} > 0\n  {EVENT}\n}}\n'
    (error,) = rendered_errors({"s.rules": SETTINGS, "t.rules": source})
    head = error.splitlines()[0]
    assert head == (
        "t.rules:3:3: error: this expression is nested 20002 levels deep, too deep to compile: "
        "split it into elements"
    )


# ------------------------------------------------------------------ warnings
def test_each_warning_with_its_full_text() -> None:
    source = dedent(
        """\
        element unused = state.x
        element name = state.page.name or "home"
        rule "Regex" {
          on "^cart[.].*$"
          when 1 == 1
          unless "x"
          send event { xdm: { web: { webPageDetails: { name: name } } } }
        }
        """
    )
    assert rendered_warnings({"s.rules": SETTINGS, "t.rules": source}) == [
        dedent(
            """\
            t.rules:1:9: warning: element 'unused' is never used: no rule, element or string token reads it
             1 | element unused = state.x
               |         ^~~~~~"""
        ),
        dedent(
            """\
            t.rules:2:16: warning: 'or' gives true or false, never one of its values: for a fallback value write 'A | default B'
             2 | element name = state.page.name or "home"
               |                ^~~~~~~~~~~~~~~~~~~~~~~~~"""
        ),
        dedent(
            """\
            t.rules:3:6: warning: rule 'Regex' has no test: no test pushes what it listens to (on "^cart[.].*$") or names it
             3 | rule "Regex" {
               |      ^~~~~~~"""
        ),
        dedent(
            """\
            t.rules:4:6: warning: event names are matched as globs, not regular expressions: '*' stands for any text, '?' for one character, and every other character for itself (did you mean "cart.*"?)
             4 |   on "^cart[.].*$"
               |      ^~~~~~~~~~~~~"""
        ),
        dedent(
            """\
            t.rules:5:8: warning: this condition is always true: the 'when' line has no effect
             5 |   when 1 == 1
               |        ^~~~~~"""
        ),
        dedent(
            """\
            t.rules:6:10: warning: this condition is always true: the 'unless' line stops the rule from ever firing
             6 |   unless "x"
               |          ^~~"""
        ),
    ]


def test_a_ruleset_without_rules_warns() -> None:
    assert rendered_warnings({"s.rules": SETTINGS}) == [
        "s.rules:1:1: warning: this ruleset has no rules: no push will ever send anything\n"
        ' 1 | edge { datastream: "ds-1" }\n'
        "   | ^"
    ]


def test_a_rule_counts_as_tested_by_its_event_a_glob_a_change_or_its_name() -> None:
    rules = dedent(
        f"""\
        rule "Exact" {{ on "a"; {EVENT} }}
        rule "Glob" {{ on "cart.*"; {EVENT} }}
        rule "Change" {{ on change route.path; {EVENT} }}
        rule "Named" {{ on "never.pushed"; {EVENT} }}
        rule "Untested" {{ on "z"; {EVENT} }}
        setup {{
          push {{ event: "a" }}
        }}
        test "T" {{
          push {{ event: "cart.add" }}
          push {{ route: {{ path: "/x" }} }}
          expect rule "Named" fired
        }}
        """
    )
    warnings = load_text({"s.rules": SETTINGS, "t.rules": rules}).warnings
    assert [w.message for w in warnings] == [
        "rule 'Untested' has no test: no test pushes what it listens to (on \"z\") or names it"
    ]


def test_ignored_files_next_to_the_rules_warn(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from engine.loader import load_ruleset

    folder = Path(str(tmp_path))
    (folder / "s.rules").write_text(SETTINGS)
    (folder / "r.rules").write_text(
        f'rule "R" {{ on "a"; {EVENT} }}\ntest "T" {{ push {{ event: "a" }}; expect 1 send }}\n'
    )
    (folder / "old.rule").write_text("")
    (folder / "notes.txt").write_text("")  # a plain text file is not a rule file
    (folder / "more").mkdir()
    (folder / "more" / "x.rules").write_text("")
    messages = [w.render() for w in load_ruleset(folder).warnings]
    assert messages == [
        f"{folder / 'more' / 'x.rules'}:1:1: warning: ignored: {folder / 'more' / 'x.rules'} "
        f"is in a sub-folder; only the .rules files directly in {folder} are loaded (move it "
        "up, or load its folder)",
        f"{folder / 'old.rule'}:1:1: warning: ignored: only files named *.rules are loaded "
        "(rename it to old.rules)",
    ]
    with pytest.raises(RuleError) as caught:
        load_ruleset(folder, strict=True)
    assert [d.severity for d in caught.value.diagnostics] == ["error", "error"]


def test_strict_turns_warnings_into_errors_and_errors_hide_warnings() -> None:
    source = f'element unused = 1\nrule "R" {{ on "a"; {EVENT} }}\ntest "T" {{ push {{ event: "a" }}; expect 1 send }}\n'
    sources = [("s.rules", SETTINGS.encode()), ("t.rules", source.encode())]
    assert [w.message for w in build_ruleset(sources).warnings] == [
        "element 'unused' is never used: no rule, element or string token reads it"
    ]
    with pytest.raises(RuleError) as caught:
        build_ruleset(sources, strict=True)
    assert str(caught.value).splitlines()[0] == "1 error in ruleset"
    broken = source.replace('on "a"', 'on "a"\n  when nope')
    with pytest.raises(RuleError) as caught:
        build_ruleset([("s.rules", SETTINGS.encode()), ("t.rules", broken.encode())])
    assert [d.message for d in caught.value.diagnostics] == ["unknown element 'nope'"]


# ------------------------------------------------------------------ guards and setups
GUARDS = dedent(
    """\
    guard "consent" {
      when state.consent.analytics
    }
    guard "bots" {
      unless request.bot
    }
    """
)
PAGES = dedent(
    """\
    rule "Page view" {
      on "page.view"
      send event { type: "web.webpagedetails.pageViews" }
    }
    rule "CMP" {
      on "consent.update"
      skip guard "consent"
      send event { type: "consent.update" }
    }
    """
)


def test_guards_hold_every_rule_unless_it_skips_them() -> None:
    ruleset = load_text({"g.rules": GUARDS, "p.rules": PAGES, "s.rules": SETTINGS})
    engine = Engine(ruleset, dry_run=True)
    session = engine.session("s1")
    blocked = session.push({"event": "page.view"})
    assert blocked.sends == []
    (outcome,) = blocked.rules
    assert outcome.status == "condition_not_met"
    assert outcome.reason == (
        "guard 'consent': when state.consent.analytics was false (state.consent.analytics = null)"
    )
    cmp = session.push({"event": "consent.update", "consent": {"analytics": "false"}})
    assert [s.rule for s in cmp.sends] == ["CMP"]
    assert session.push({"event": "page.view"}).sends == []  # "false" is false
    session.push({"consent": {"analytics": True}})
    assert [s.rule for s in session.push({"event": "page.view"}).sends] == ["Page view"]


def test_guard_and_setup_mistakes() -> None:
    source = dedent(
        f"""\
        guard "consent" {{
        }}
        guard "consent" {{
          when true
        }}
        rule "R" {{
          on "a"
          skip guard "consnet"
          {EVENT}
        }}
        setup {{
          expect 1 send
        }}
        setup {{
          push {{ event: "a" }}
        }}
        """
    )
    assert rendered_errors({"s.rules": SETTINGS, "t.rules": source}) == [
        dedent(
            """\
            t.rules:1:7: error: guard 'consent' has no condition: add a 'when' or 'unless' line
             1 | guard "consent" {
               |       ^~~~~~~~~"""
        ),
        dedent(
            """\
            t.rules:3:7: error: duplicate guard 'consent' (first defined at t.rules:1:7)
             3 | guard "consent" {
               |       ^~~~~~~~~"""
        ),
        dedent(
            """\
            t.rules:8:14: error: unknown guard 'consnet' (did you mean 'consent'?)
             8 |   skip guard "consnet"
               |              ^~~~~~~~~"""
        ),
        dedent(
            """\
            t.rules:12:3: error: a setup holds the steps every test of the file starts with, not expectations: move this 'expect' into a test
             12 |   expect 1 send
                |   ^~~~~~~~"""
        ),
        dedent(
            """\
            t.rules:14:1: error: this file already has a setup (line 11): one setup per file
             14 | setup {
                | ^~~~~"""
        ),
    ]


def test_a_setup_runs_before_each_test_of_its_file_only() -> None:
    with_setup = dedent(
        """\
        setup {
          push { consent: { analytics: true } }
        }
        test "sent with the setup's consent" {
          push { event: "page.view" }
          expect 1 send event from "Page view"
        }
        test "a test may push nothing itself" {
          expect no send
        }
        """
    )
    without = dedent(
        """\
        test "not sent without it" {
          push { event: "page.view" }
          expect no send
        }
        """
    )
    ruleset = load_text(
        {
            "g.rules": GUARDS,
            "p.rules": PAGES,
            "s.rules": SETTINGS,
            "t1.rules": with_setup,
            "t2.rules": without,
        }
    )
    reports = run_tests(ruleset)
    assert [(r.name, r.failures) for r in reports] == [
        ("sent with the setup's consent", []),
        ("a test may push nothing itself", []),
        ("not sent without it", []),
    ]


def test_a_session_line_after_pushes_starts_a_new_session_of_the_same_visitor() -> None:
    rules = dedent(
        """\
        rule "Per session" {
          on "m"
          limit 1 per session by event.video
          send event { type: "a" }
        }
        rule "Per visitor" {
          on "m"
          limit 1 per visitor
          send event { type: "b" }
        }
        test "two visits" {
          session "first"
          push { event: "m", video: "v" }
          push { event: "m", video: "v" }
          session "second"
          push { event: "m", video: "v" }
          expect 2 sends from "Per session"
          expect 1 send from "Per visitor"
        }
        """
    )
    (report,) = run_tests(load_text({"s.rules": SETTINGS, "t.rules": rules}))
    assert report.failures == []


def test_an_expect_tells_text_from_booleans_and_numbers() -> None:
    rules = dedent(
        """\
        rule "R" {
          on "a"
          send event { type: "t", data: { flag: state.flag, count: state.count } }
        }
        test "typed" {
          push { event: "a", flag: "true", count: "1" }
          expect send event { data.flag: true, data.count: 1 }
        }
        test "same" {
          push { event: "a", flag: true, count: 1.0 }
          expect send event { data.flag: true, data.count: 1 }
        }
        """
    )
    typed, same = run_tests(load_text({"s.rules": SETTINGS, "t.rules": rules}))
    assert typed.failures == [
        "expect send event (line 7): no send matches; the closest differs in:\n"
        "    - data.flag: true\n"
        '    + data.flag: "true"\n'
        "    - data.count: 1\n"
        '    + data.count: "1"'
    ]
    assert same.failures == []


def test_a_keyed_and_an_unkeyed_limit_may_share_a_unit() -> None:
    rules = dedent(
        """\
        rule "Milestone" {
          on "m"
          limit 1 per session by event.video, event.milestone
          limit 3 per session
          send event { type: "media.milestone" }
        }
        test "each once, at most three" {
          push { event: "m", video: "a", milestone: 25 }
          push { event: "m", video: "a", milestone: 25 }
          push { event: "m", video: "a", milestone: 50 }
          push { event: "m", video: "b", milestone: 25 }
          push { event: "m", video: "b", milestone: 50 }
          expect 3 sends from "Milestone"
        }
        """
    )
    (report,) = run_tests(load_text({"s.rules": SETTINGS, "t.rules": rules}))
    assert report.failures == []
    twice = rules.replace("limit 3 per session", "limit 3 per session by event.video")
    assert rendered_errors({"s.rules": SETTINGS, "t.rules": twice}) == [
        dedent(
            """\
            t.rules:4:15: error: the rule already has a keyed limit per session
             4 |   limit 3 per session by event.video
               |               ^~~~~~~"""
        )
    ]


def test_many_ignored_files_in_a_sub_folder_are_counted(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from engine.loader import load_ruleset

    folder = Path(str(tmp_path))
    (folder / "s.rules").write_text(SETTINGS)
    rules = f'rule "R" {{ on "a"; {EVENT} }}\ntest "T" {{ push {{ event: "a" }}; expect 1 send }}\n'
    (folder / "r.rules").write_text(rules)
    (folder / "old").mkdir()
    for index in range(23):
        (folder / "old" / f"x{index:02d}.rules").write_text("")
    messages = [w.message for w in load_ruleset(folder).warnings]
    assert len(messages) == 21
    assert messages[0] == f"ignored: 3 more .rules files under {folder / 'old'}"  # sorted first
