"""``tagengine fmt`` (engine/fmt.py): the canonical layout, its invariants (idempotent, meaning,
comments and strings kept), and the command as a user runs it (a few real subprocesses; the
rest in-process through :func:`engine.fmt.main`)."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine import fmt
from engine.fmt import FormatError, InternalFormatError, format_source
from engine.loader import load_ruleset
from engine.parser import GRAMMAR, parse
from engine.ruleset import Ruleset
from engine.testing import run_tests

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "rules").glob("*.rules"))

# A string literal or a comment, as the grammar lexes them (a `#` inside a string is text).
_STRING_OR_COMMENT = re.compile(r'("(?:[^"\\\n]|\\.)*")|(#[^\n]*)')


def strings(text: str) -> list[str]:
    return [m.group(1) for m in _STRING_OR_COMMENT.finditer(text) if m.group(1)]


def comments(text: str) -> list[str]:
    return [m.group(2).rstrip() for m in _STRING_OR_COMMENT.finditer(text) if m.group(2)]


def run_fmt(
    *args: str | Path, cwd: Path = ROOT, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "engine", "fmt", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )


def main(*args: str | Path, check: bool = False, diff: bool = False) -> tuple[int, str, str]:
    """``fmt.main`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = fmt.main(list(args), check=check, diff=diff, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------- expected layouts
MESSY_RULE = """\
rule "Purchase"   order 10{
on "commerce.purchase" ,"checkout.done";when order_id exists and cart_total>0
       unless state.user.internal      # staff orders
  limit 1 per session;sample 50%



  send event {type:"commerce.purchases"
    xdm: { commerce.order.priceTotal: cart_total,commerce.order.purchaseID : order_id }
    data: { label: "Order  %order_id%" }}
}
"""

MESSY_RULE_FORMATTED = """\
rule "Purchase" order 10 {
  on "commerce.purchase", "checkout.done"
  when order_id exists and cart_total > 0
  unless state.user.internal  # staff orders
  limit 1 per session
  sample 50%

  send event {
    type: "commerce.purchases"
    xdm: { commerce.order.priceTotal: cart_total, commerce.order.purchaseID: order_id }
    data: { label: "Order  %order_id%" }
  }
}
"""

MESSY_ELEMENTS = """\


# elements

element page_name    = state.page.name|clean|default "unknown"     # cleaned\x20\x20\x20
element total        = ( price*qty )|round 2 ; element delta = -total + -1
element tier = state.user.tier | lower keep visitor
element is_big = total > 100 and
    tier in ["gold","platinum"] or
  state.user.vip
rule "Big" {
on "x"
    # only the big ones
when is_big
send event { type: "big" }
}
element late = if total>1 then "yes"
else "no"
"""

MESSY_ELEMENTS_FORMATTED = """\
# elements

element page_name = state.page.name | clean | default "unknown"  # cleaned
element total     = (price * qty) | round 2
element delta     = -total + -1
element tier      = state.user.tier | lower keep visitor

element is_big = total > 100 and
  tier in ["gold", "platinum"] or
  state.user.vip

rule "Big" {
  on "x"
  # only the big ones
  when is_big
  send event { type: "big" }
}

element late = if total > 1 then "yes"
  else "no"
"""

MESSY_TEST = """\
test "a purchase is sent" {
session "s-1"
  push {
  event: "commerce.purchase"
      cart: { items: [{SKU: "A", qty: 1},{SKU: "B", qty: 2}], lineRefs: [
      { item_id: "A" }
      { item_id: "B" }
      ] }
  }
  expect send event from "Purchase" { xdm.commerce.order.priceTotal: 120; xdm.productListItems[0].SKU: "A" }
  expect 1 send event from "Purchase"; expect rule "Purchase" fired
}"""

MESSY_TEST_FORMATTED = """\
test "a purchase is sent" {
  session "s-1"
  push {
    event: "commerce.purchase"
    cart: {
      items: [{ SKU: "A", qty: 1 }, { SKU: "B", qty: 2 }], lineRefs: [
        { item_id: "A" }
        { item_id: "B" }
      ]
    }
  }
  expect send event from "Purchase" { xdm.commerce.order.priceTotal: 120, xdm.productListItems[0].SKU: "A" }
  expect 1 send event from "Purchase"
  expect rule "Purchase" fired
}
"""

MESSY_BLOCKS = """\
edge{datastream:"ds-1";url:env("EDGE_URL","https://edge.adobedc.net")}
guard "no bots" { unless request.bot }
setup { push { page: { type: "Home" } } ; consent "in" }
rule "View" { skip guard "no bots"
  on "page.view"
  send sitecore { type: "VIEW", page: state.page.type | default "other" }
}
"""

MESSY_BLOCKS_FORMATTED = """\
edge { datastream: "ds-1", url: env("EDGE_URL", "https://edge.adobedc.net") }

guard "no bots" {
  unless request.bot
}

setup {
  push { page: { type: "Home" } }
  consent "in"
}

rule "View" {
  skip guard "no bots"
  on "page.view"
  send sitecore { type: "VIEW", page: state.page.type | default "other" }
}
"""

# guard and setup statements are new: this case runs once the grammar has them.
needs_guards = pytest.mark.skipif(
    "GUARD:" not in GRAMMAR or "SETUP:" not in GRAMMAR, reason="no guard/setup statements"
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(MESSY_RULE, MESSY_RULE_FORMATTED, id="rule"),
        pytest.param(MESSY_ELEMENTS, MESSY_ELEMENTS_FORMATTED, id="elements"),
        pytest.param(MESSY_TEST, MESSY_TEST_FORMATTED, id="test"),
        pytest.param(MESSY_BLOCKS, MESSY_BLOCKS_FORMATTED, id="blocks", marks=needs_guards),
    ],
)
def test_canonical_form(source: str, expected: str) -> None:
    assert format_source(source) == expected
    assert format_source(expected) == expected


# ---------------------------------------------------------------------------- invariants
MESSY = {
    "bad indentation": 'rule "r" {\n        on "a"\n when x\n            send event { type: "t" }\n    }\n',
    "semicolons": 'element a = 1; element b = 2\nrule "r" { on "a"; when a; send event { type: "t"; xdm: { x: 1; y: [1; 2] } } }\n',
    "blank lines": '\n\n\nelement a = 1\n\n\n\nelement b = 2\n\n\nrule "r" {\n\n\n  on "a"\n\n\n\n  send event { type: "t" }\n\n}\n\n\n',
    "trailing comments": 'element a = 1   # one\nrule "r" {   # the rule\n  on "a" ,  # first\n    "b"\n  send event { type: "t" }  # send\n}   # end\n# last',
    "comments between clauses": 'rule "r" {\n# why\n  on "a"\n      # when\n\n  when x\n  # before the close\n}\n',
    "continued expressions": 'element a = x and\ny or\n      z\nelement b = x\n  | lower\n    | default "n"\nrule "r" {\n  on "a"\n  when a and (b or\n    c) and not d\n    or e\n  send event { type: "t", xdm: { v: a +\n b } }\n}\n',
    "nested send": 'rule "r" {\n on "a"\n send event {\n type: "t"\n xdm: { a: { b: [{ c: 1 }, { d: [1, 2, { e: "f" }] }] }, g: [\n 1,\n 2\n ] }\n data: {\n  h: state.x[*].y | join ","\n }\n }\n}\n',
    "test blocks": 'test "t" {\n push { event: "a", x: { y: [1, 2] } }\n  expect send event from "r" {\n xdm.a.b: 1\n    xdm.c[0]["d e"]: "f"\n  }\n expect 2 sends event; expect no send from "x"\n}\n',
    "crlf": 'element a = 1\r\nrule "r" {\r\n  on "a"\r\n  send event { type: "t" }  # crlf\r\n}\r\n',
    "operators": 'element a = -b * (c - -1) / 2 % 3 + - 1\nelement d = x | default -1 - 2\nelement e = [1, 2][0] + f.g["h"]\nelement i = x contains "y" and x starts with "z" and x not in [1] and x matches "^a"\n',
    "data on new lines": 'rule "r" {\n on "a"\n send event {\n  type:\n   "t"\n  xdm:\n   { a: 1 }\n }\n}\n',
    "empty brackets": 'rule "r" {\n on "a"\n send event { type: "t", xdm: {\n}, data: { l: [\n] } }\n}\n',
}


@pytest.mark.parametrize("source", list(MESSY.values()), ids=list(MESSY))
def test_messy_inputs(source: str) -> None:
    formatted = format_source(source)
    assert format_source(formatted) == formatted  # idempotent
    assert comments(formatted) == comments(source)  # every comment kept, in order
    assert strings(formatted) == strings(source)  # string literals byte for byte
    assert formatted.endswith("\n") and not formatted.endswith("\n\n")
    assert "\r" not in formatted and "\n\n\n" not in formatted
    assert all(line == line.rstrip() for line in formatted.split("\n"))
    assert all((len(line) - len(line.lstrip(" "))) % 2 == 0 for line in formatted.split("\n"))
    assert "\t" not in formatted


@pytest.mark.parametrize("path", RULES, ids=[p.name for p in RULES])
def test_rules_files(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    formatted = format_source(source, str(path))
    assert format_source(formatted, str(path)) == formatted
    assert comments(formatted) == comments(source)
    assert strings(formatted) == strings(source)


def test_semicolons_become_line_breaks_in_blocks_and_commas_in_one_line_objects() -> None:
    assert format_source(MESSY["semicolons"]) == (
        "element a = 1\n"
        "element b = 2\n"
        "\n"
        'rule "r" {\n'
        '  on "a"\n'
        "  when a\n"
        '  send event { type: "t", xdm: { x: 1, y: [1, 2] } }\n'
        "}\n"
    )


def test_comments_stay_in_place() -> None:
    assert format_source(MESSY["trailing comments"]) == (
        "element a = 1  # one\n"
        "\n"
        'rule "r" {  # the rule\n'
        '  on "a",  # first\n'
        '    "b"\n'
        '  send event { type: "t" }  # send\n'
        "}  # end\n"
        "# last\n"
    )
    assert format_source(MESSY["comments between clauses"]) == (
        'rule "r" {\n  # why\n  on "a"\n  # when\n\n  when x\n  # before the close\n}\n'
    )


def test_trailing_comments_of_a_run_are_aligned() -> None:
    # A run: consecutive lines of code at the same indentation. A blank line, a comment line
    # or another indentation ends it; a line without a comment neither ends nor widens it.
    source = (
        "element a = 1 # one\n"
        "element bbb = 22   # two\n"
        "\n"
        "element c = 3 # alone\n"
        'rule "r" {\n'
        '  on "a"   # trigger\n'
        "  when x and y\n"
        "  unless state.user.internal # staff\n"
        "  # a comment line ends a run\n"
        "  limit 1 per session # once\n"
        "  sample 50%   # half\n"
        "  send event {  # the event\n"
        '    type: "t"   # its type\n'
        "    xdm: { a: 1 }\n"
        "  }  # sent\n"
        "}\n"
    )
    expected = (
        "element a   = 1   # one\n"
        "element bbb = 22  # two\n"
        "\n"
        "element c = 3  # alone\n"
        "\n"
        'rule "r" {\n'
        '  on "a"                      # trigger\n'
        "  when x and y\n"
        "  unless state.user.internal  # staff\n"
        "  # a comment line ends a run\n"
        "  limit 1 per session  # once\n"
        "  sample 50%           # half\n"
        "  send event {         # the event\n"
        '    type: "t"  # its type\n'
        "    xdm: { a: 1 }\n"
        "  }  # sent\n"
        "}\n"
    )
    assert format_source(source) == expected
    assert format_source(expected) == expected


def test_lines_without_a_comment_do_not_widen_a_run() -> None:
    source = (
        'rule "r" {\n'
        '  on "a"  # first\n'
        "  when a_much_longer_condition_than_the_others and another_one\n"
        "  unless b  # second\n"
        "}\n"
    )
    expected = (
        'rule "r" {\n'
        '  on "a"    # first\n'
        "  when a_much_longer_condition_than_the_others and another_one\n"
        "  unless b  # second\n"
        "}\n"
    )
    assert format_source(source) == expected
    assert format_source(expected) == expected


def test_aligning_pushes_no_comment_past_column_100() -> None:
    wide = '  send event { type: "a long type name that makes this line very long", xdm: {} }'
    assert len(wide) == 81  # its comment at column 83 (0-based)

    def rule(first: str, pad: int) -> str:
        return (
            'rule "r" {\n'
            f'  on "a"{" " * pad}{first}\n'
            f"  when x{' ' * pad}# short\n"
            f"{wide}  # wide\n"
            f"  unless y{' ' * max(pad - 2, 1)}# short too\n"
            "}\n"
        )

    # Aligned at column 83, the first line ends at column 100 exactly: all four are aligned.
    fits = "# " + "x" * 15
    assert format_source(rule(fits, 1)) == rule(fits, 75)
    assert max(map(len, rule(fits, 75).splitlines())) == 100
    # One character more would push it past column 100: the widest line keeps two spaces and
    # leaves the alignment, the others are aligned without it.
    too_long = "# " + "x" * 16
    assert format_source(rule(too_long, 1)) == rule(too_long, 4)
    for pad in (75, 4):
        assert format_source(rule(fits, pad)) == rule(fits, 75)
        assert format_source(rule(too_long, pad)) == rule(too_long, 4)
    # Of two lines, neither is aligned then (a lone comment has two spaces anyway).
    two = f'element a = 1  # {"x" * 70}\nelement b = "{"x" * 40}"  # b\n'
    assert format_source(two) == two
    # A line past column 100 on its own keeps two spaces before its comment.
    alone = f'element a = "{"x" * 90}"    # far\n'
    assert format_source(alone) == f'element a = "{"x" * 90}"  # far\n'


def test_the_equal_signs_of_consecutive_one_line_elements_are_aligned() -> None:
    # A blank line, a comment line, a multi-line element or another statement ends a run.
    source = (
        "element a = 1\n"
        "element bbb = 2 # b\n"
        "element cc = [1,\n"
        "  2]\n"
        "element dddd = 4\n"
        "element e = 5\n"
        "# comment line\n"
        "element ffffff = 6\n"
        "element g = 7\n"
        "\n"
        "element hh = 8\n"
        "element i = 9  # i\n"
        'edge { datastream: "d" }\n'
        "element jjjj = 10\n"
        "element k=11\n"
    )
    expected = (
        "element a   = 1\n"
        "element bbb = 2  # b\n"
        "\n"
        "element cc = [1,\n"
        "  2]\n"
        "\n"
        "element dddd = 4\n"
        "element e    = 5\n"
        "# comment line\n"
        "element ffffff = 6\n"
        "element g      = 7\n"
        "\n"
        "element hh = 8\n"
        "element i  = 9  # i\n"
        'edge { datastream: "d" }\n'
        "element jjjj = 10\n"
        "element k    = 11\n"
    )
    assert format_source(source) == expected
    assert format_source(expected) == expected


def test_continuation_lines_are_indented_one_level() -> None:
    assert format_source(MESSY["continued expressions"]) == (
        "element a = x and\n"
        "  y or\n"
        "  z\n"
        "\n"
        "element b = x\n"
        "  | lower\n"
        '  | default "n"\n'
        "\n"
        'rule "r" {\n'
        '  on "a"\n'
        "  when a and (b or\n"
        "    c) and not d\n"
        "    or e\n"
        "  send event {\n"  # an object that spans lines: its braces end and start lines
        '    type: "t", xdm: {\n'
        "      v: a +\n"
        "        b\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


def test_minus_signs_keep_their_meaning() -> None:
    # `default -1` is a filter argument, `default - 1` a subtraction; `- 1` negates 1.
    assert format_source("element a = x | default -1\n") == "element a = x | default -1\n"
    assert format_source("element a = x | default - 1\n") == "element a = x | default - 1\n"
    assert format_source("element a = x|default-1\n") == "element a = x | default -1\n"
    assert format_source("element a = b-1\n") == "element a = b - 1\n"
    assert format_source("element a = - 1 + -b\n") == "element a = - 1 + -b\n"


def test_empty_and_comment_only_files() -> None:
    assert format_source("") == ""
    assert format_source("\n\n  \n") == ""
    assert (
        format_source("  # only a comment   \n\n\n# another") == "# only a comment\n\n# another\n"
    )


def test_syntax_errors_are_refused() -> None:
    with pytest.raises(FormatError) as caught:
        format_source('rule "r" {\n  on\n}\n', "broken.rules")
    assert caught.value.diagnostics
    assert all(d.severity == "error" for d in caught.value.diagnostics)
    assert "broken.rules:3:1: error:" in str(caught.value)


def test_a_result_with_another_meaning_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmt, "_render", lambda lines: "element a = 2\n")
    with pytest.raises(InternalFormatError):
        format_source("element a = 1\n")


def _summary(ruleset: Ruleset) -> object:
    rules = [
        (
            r.name,
            r.order,
            Path(r.file).name,
            r.position,
            r.events,
            r.changes,
            [(c.negated, re.sub(r"\s+", "", c.source)) for c in r.conditions],
            r.sample,
            r.limits,
            len(r.actions),
        )
        for r in ruleset.rules
    ]
    elements = sorted((name, e.keep) for name, e in ruleset.elements.items())
    return rules, elements, [t.name for t in ruleset.tests]


def test_formatted_rules_load_to_the_same_ruleset(tmp_path: Path) -> None:
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    status, _, err = main(copy)
    assert status == 0, err
    for path in RULES:  # the same syntax trees, file by file
        before = parse(path.read_text(encoding="utf-8"), path.name).file
        after = parse((copy / path.name).read_text(encoding="utf-8"), path.name).file
        assert after is not None and fmt._shape(after) == fmt._shape(before)
    original, formatted = load_ruleset(ROOT / "rules"), load_ruleset(copy)
    assert _summary(formatted) == _summary(original)
    assert all(report.passed for report in run_tests(formatted))
    assert main(copy, check=True)[0] == 0  # formatted once: nothing left to do


def test_the_repository_rules_are_canonical() -> None:
    result = run_fmt("--check", "rules")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULES)} files already formatted" in result.stderr


# ---------------------------------------------------------------------------- the command
def test_fmt_rewrites_in_place_keeping_the_mode(tmp_path: Path) -> None:
    messy = tmp_path / "messy.rules"
    messy.write_text(MESSY_RULE, encoding="utf-8")
    messy.chmod(0o640)
    tidy = tmp_path / "tidy.rules"
    tidy.write_text(MESSY_RULE_FORMATTED, encoding="utf-8")
    result = run_fmt(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"reformatted {messy}" in result.stderr
    assert str(tidy) not in result.stderr
    assert "1 file reformatted, 1 file left unchanged" in result.stderr
    assert messy.read_text(encoding="utf-8") == MESSY_RULE_FORMATTED
    assert stat.S_IMODE(messy.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy.rules", "tidy.rules"]


def test_fmt_defaults_to_rules_folder(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a.rules").write_text("element a=1\n", encoding="utf-8")
    (folder / "notes.txt").write_text("element a=1\n", encoding="utf-8")
    status = run_fmt(cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert (folder / "a.rules").read_text(encoding="utf-8") == "element a = 1\n"
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "element a=1\n"


def test_check_changes_nothing_and_fails_when_a_file_would_change(tmp_path: Path) -> None:
    messy = tmp_path / "messy.rules"
    messy.write_text(MESSY_RULE, encoding="utf-8")
    tidy = tmp_path / "tidy.rules"
    tidy.write_text(MESSY_RULE_FORMATTED, encoding="utf-8")
    result = run_fmt("--check", tmp_path)
    assert result.returncode == 1
    assert f"would reformat {messy}" in result.stderr
    assert f"would reformat {tidy}" not in result.stderr
    assert result.stdout == ""
    assert messy.read_text(encoding="utf-8") == MESSY_RULE
    status, _, err = main(tidy, check=True)
    assert status == 0, err
    assert "1 file already formatted" in err


def test_diff_prints_a_unified_diff_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.rules"
    path.write_text('element a=1\nelement b = "x"\n', encoding="utf-8")
    status, out, err = main(path, diff=True)
    assert status == 0, err
    assert out == (
        f"--- {path}\n"
        f"+++ {path} (formatted)\n"
        "@@ -1,2 +1,2 @@\n"
        "-element a=1\n"
        "+element a = 1\n"
        ' element b = "x"\n'
    )
    assert path.read_text(encoding="utf-8") == 'element a=1\nelement b = "x"\n'
    assert main(path, diff=True, check=True)[0] == 1


def test_stdin_to_stdout() -> None:
    result = run_fmt("-", stdin="element a=1;element b=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "element a = 1\nelement b = 2\n"
    broken = run_fmt("-", stdin="element a =\n")
    assert broken.returncode == 1
    assert broken.stdout == ""
    assert "<stdin>:" in broken.stderr and "error:" in broken.stderr
    assert run_fmt("-", "rules").returncode == 2  # standard input only alone


def test_a_file_with_syntax_errors_is_left_untouched(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rules"
    broken.write_text('rule "r" {\n  on\n}\n', encoding="utf-8")
    messy = tmp_path / "messy.rules"
    messy.write_text("element a=1\n", encoding="utf-8")
    status, out, err = main(tmp_path)
    assert status == 1
    assert out == ""
    assert f"{broken}:3:1: error: unexpected '}}'" in err
    assert " 3 | }" in err  # the rendered diagnostic, with its source line
    assert broken.read_text(encoding="utf-8") == 'rule "r" {\n  on\n}\n'
    assert messy.read_text(encoding="utf-8") == "element a = 1\n"  # the others are formatted
    assert "1 file reformatted, 0 files left unchanged, 1 file with errors" in err


def test_an_unsafe_result_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.rules"
    path.write_text("element a=1\n", encoding="utf-8")
    monkeypatch.setattr(fmt, "_render", lambda lines: "element a = 2\n")
    status, _, err = main(path)
    assert status == 1
    assert "internal formatter error" in err
    assert path.read_text(encoding="utf-8") == "element a=1\n"


def test_paths_that_name_no_rules(tmp_path: Path) -> None:
    status, _, err = main(tmp_path / "missing")
    assert status == 1 and "no such file or folder" in err
    status, _, err = main(tmp_path)
    assert status == 1 and "no .rules file" in err


def test_a_symbolic_link_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "real.rules"
    target.write_text("element a=1\n", encoding="utf-8")
    link = tmp_path / "link.rules"
    link.symlink_to(target)
    status, _, err = main(link)
    assert status == 0, err
    assert link.is_symlink()
    assert target.read_text(encoding="utf-8") == "element a = 1\n"
