"""Why not: the rules a push did not trigger, their triggers and the near miss (issue 14, item 3),
through the Python API, ``tagengine run --json`` / ``--trace`` and ``tagengine test``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.results import NotTriggered, PushResult
from engine.ruleset import Ruleset
from tests.conftest import SETTINGS, load_text

RULES = """\
rule "Page view" {
  on "page.veiw"
  send event { type: "web.webpagedetails.pageViews" }
}
rule "Commerce" {
  on "comerce.*"
  send event { type: "commerce.any" }
}
rule "Cart total" {
  on change cart.totl
  send event { type: "cart" }
}
rule "Wishlist" {
  on "wishlist.add", change wishlist
  send event { type: "wishlist" }
}
rule "Search" {
  on "search"
  send event { type: "search" }
}
"""


def _ruleset(rules: str = RULES) -> Ruleset:
    return load_text({"a_settings.rules": SETTINGS, "t.rules": rules})


def _push(item: dict[str, Any], rules: str = RULES) -> PushResult:
    with Engine(_ruleset(rules), dry_run=True) as engine:
        return engine.session("s").push(item)


def _entries(result: PushResult) -> list[tuple[str, tuple[str, ...], str | None]]:
    return [(e.rule, e.triggers, e.near_miss) for e in result.not_triggered()]


# ------------------------------------------------------------------------- Python API
def test_a_misspelled_event_name_is_a_near_miss_listed_first() -> None:
    result = _push({"event": "page.view"})
    assert result.rules == []
    assert _entries(result) == [
        ("Page view", ('on "page.veiw"',), '`on "page.veiw"`: this push was `page.view`'),
        ("Commerce", ('on "comerce.*"',), None),
        ("Cart total", ("on change cart.totl",), None),
        ("Wishlist", ('on "wishlist.add"', "on change wishlist"), None),
        ("Search", ('on "search"',), None),
    ]
    first = result.not_triggered()[0]
    assert isinstance(first, NotTriggered)
    assert (first.span.file, first.span.line) == ("t.rules", 1)


def test_a_glob_that_almost_matches_is_a_near_miss() -> None:
    result = _push({"event": "commerce.purchase"})
    assert _entries(result)[0] == (
        "Commerce",
        ('on "comerce.*"',),
        '`on "comerce.*"`: this push was `commerce.purchase`',
    )
    # a glob missing only what its wildcard needs around it
    missing = _push(
        {"event": "commerce"}, 'rule "C" {\n  on "commerce.*"\n  send event { type: "c" }\n}\n'
    )
    assert _entries(missing) == [
        ("C", ('on "commerce.*"',), '`on "commerce.*"`: this push was `commerce`')
    ]


def test_a_change_rule_not_triggered_lists_its_path_and_a_near_path() -> None:
    result = _push({"cart": {"total": 3, "items": ["a"]}})
    assert result.event is None
    assert _entries(result) == [
        (
            "Cart total",
            ("on change cart.totl",),
            "`on change cart.totl`: this push changed `cart.total`",
        ),
        ("Page view", ('on "page.veiw"',), None),
        ("Commerce", ('on "comerce.*"',), None),
        ("Wishlist", ('on "wishlist.add"', "on change wishlist"), None),
        ("Search", ('on "search"',), None),
    ]


def test_a_rule_one_trigger_matched_is_not_listed_and_case_is_named() -> None:
    result = _push({"event": "Search", "wishlist": ["x"]})
    assert result.fired == ["Wishlist"]
    assert _entries(result)[0] == (
        "Search",
        ('on "search"',),
        '`on "search"`: this push was `Search` (event names are case-sensitive)',
    )
    assert "Wishlist" not in [e.rule for e in result.not_triggered()]


def test_names_far_apart_are_no_near_miss() -> None:
    result = _push({"event": "checkout.start"})
    assert [e.near_miss for e in result.not_triggered()] == [None] * 5


def test_to_json_lists_not_triggered_rules_compactly_near_misses_first() -> None:
    line = _push({"event": "page.view"}).to_json()
    assert line["rules"] == [] and line["sends"] == []
    assert line["not_triggered"] == [
        {
            "rule": "Page view",
            "triggers": ['on "page.veiw"'],
            "near_miss": '`on "page.veiw"`: this push was `page.view`',
        },
        {"rule": "Commerce", "triggers": ['on "comerce.*"']},
        {"rule": "Cart total", "triggers": ["on change cart.totl"]},
        {"rule": "Wishlist", "triggers": ['on "wishlist.add"', "on change wishlist"]},
        {"rule": "Search", "triggers": ['on "search"']},
    ]
    # every rule triggered: no key at all, as before
    every = _push({"event": "x"}, 'rule "All" {\n  on "*"\n  send event { type: "t" }\n}\n')
    assert "not_triggered" not in every.to_json()


def test_a_push_pays_nothing_until_someone_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    original = Ruleset.not_triggered

    def counting(self: Ruleset, event: str | None, changed: Any = ()) -> list[NotTriggered]:
        calls.append(event)
        return original(self, event, changed)

    monkeypatch.setattr(Ruleset, "not_triggered", counting)
    result = _push({"event": "page.view"})
    assert calls == []  # processing the push built no reason
    first = result.not_triggered()
    assert result.not_triggered() is first  # computed once, then kept
    result.to_json()
    assert calls == ["page.view"]


def test_a_result_no_rule_ran_for_lists_nothing() -> None:
    assert PushResult("s", None, "v", {}).not_triggered() == []


# ------------------------------------------------------------------------- the CLI
def tagengine(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    hidden = ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )


def _folder(tmp_path: Path, rules: str = RULES) -> Path:
    (tmp_path / "a_settings.rules").write_text(SETTINGS, encoding="utf-8")
    (tmp_path / "t.rules").write_text(rules, encoding="utf-8")
    lines = ['{"event": "page.view"}', '{"event": "commerce.purchase"}', '{"cart": {"total": 3}}']
    (tmp_path / "e.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_run_json_lists_not_triggered_rules(tmp_path: Path) -> None:
    done = tagengine("run", "--rules", ".", "e.jsonl", "--dry-run", "--json", cwd=_folder(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    shown = [(line["event"], line["not_triggered"][0]) for line in lines]
    assert shown == [
        (
            "page.view",
            {
                "rule": "Page view",
                "triggers": ['on "page.veiw"'],
                "near_miss": '`on "page.veiw"`: this push was `page.view`',
            },
        ),
        (
            "commerce.purchase",
            {
                "rule": "Commerce",
                "triggers": ['on "comerce.*"'],
                "near_miss": '`on "comerce.*"`: this push was `commerce.purchase`',
            },
        ),
        (
            None,
            {
                "rule": "Cart total",
                "triggers": ["on change cart.totl"],
                "near_miss": "`on change cart.totl`: this push changed `cart.total`",
            },
        ),
    ]
    assert [len(line["not_triggered"]) for line in lines] == [5, 5, 5]


TRACE = """\
page.view  session default  e.jsonl:1
ruleset VERSION
state (event-time snapshot):
{}
no rule is triggered by this push
  NOT TRIGGERED Page view  on "page.veiw"  t.rules:1
      near miss: `on "page.veiw"`: this push was `page.view`
  NOT TRIGGERED Commerce  on "comerce.*"  t.rules:5
  NOT TRIGGERED Cart total  on change cart.totl  t.rules:9
  NOT TRIGGERED Wishlist  on "wishlist.add", on change wishlist  t.rules:13
  NOT TRIGGERED Search  on "search"  t.rules:17
commerce.purchase  session default  e.jsonl:2
ruleset VERSION
state (event-time snapshot):
{}
no rule is triggered by this push
  NOT TRIGGERED Commerce  on "comerce.*"  t.rules:5
      near miss: `on "comerce.*"`: this push was `commerce.purchase`
  NOT TRIGGERED Page view  on "page.veiw"  t.rules:1
  NOT TRIGGERED Cart total  on change cart.totl  t.rules:9
  NOT TRIGGERED Wishlist  on "wishlist.add", on change wishlist  t.rules:13
  NOT TRIGGERED Search  on "search"  t.rules:17
(data push)  session default  e.jsonl:3
ruleset VERSION
state (event-time snapshot):
{
  "cart": {
    "total": 3
  }
}
no rule is triggered by this push
  NOT TRIGGERED Cart total  on change cart.totl  t.rules:9
      near miss: `on change cart.totl`: this push changed `cart.total`
  NOT TRIGGERED Page view  on "page.veiw"  t.rules:1
  NOT TRIGGERED Commerce  on "comerce.*"  t.rules:5
  NOT TRIGGERED Wishlist  on "wishlist.add", on change wishlist  t.rules:13
  NOT TRIGGERED Search  on "search"  t.rules:17
3 pushes, 0 rules fired, 0 sends (dry run: nothing delivered)
"""


def test_run_trace_lists_near_misses_first_then_every_rule_not_triggered(tmp_path: Path) -> None:
    done = tagengine(
        "run", "--rules", ".", "e.jsonl", "--dry-run", "--trace", cwd=_folder(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert re.sub(r"ruleset [0-9a-f]{12}", "ruleset VERSION", done.stdout) == TRACE


def test_run_trace_of_a_push_that_triggers_a_rule_lists_the_others_after_it(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path)
    (folder / "e.jsonl").write_text('{"event": "search"}\n', encoding="utf-8")
    done = tagengine("run", "--rules", ".", "e.jsonl", "--dry-run", "--trace", cwd=folder)
    assert done.returncode == 0, done.stderr
    rules = [
        line for line in done.stdout.splitlines() if line.startswith("  ") and "t.rules" in line
    ]
    assert rules == [
        "  FIRED Search  t.rules:17",
        '  NOT TRIGGERED Page view  on "page.veiw"  t.rules:1',
        '  NOT TRIGGERED Commerce  on "comerce.*"  t.rules:5',
        "  NOT TRIGGERED Cart total  on change cart.totl  t.rules:9",
        '  NOT TRIGGERED Wishlist  on "wishlist.add", on change wishlist  t.rules:13',
    ]
    assert "no rule is triggered" not in done.stdout


TESTS = """
test "page view is sent" {
  push { event: "page.view" }
  expect rule "Page view" fired
  expect send event from "Page view" { xdm.eventType: "web.webpagedetails.pageViews" }
  expect 1 send from "Page view"
  expect send event { xdm.eventType: "web.webpagedetails.pageViews" }
}
test "cart total" {
  push { cart: { total: 3 } }
  expect rule "Cart total" fired
}
test "search is triggered but not by this" {
  push { event: "checkout" }
  expect rule "Search" fired
}
"""

TEST_OUTPUT = """\
FAIL page view is sent  t.rules:22
  expect rule "Page view" fired (line 24): the rule was not triggered by any push
        its triggers: on "page.veiw"
        near miss, push of line 23: `on "page.veiw"`: this push was `page.view`
  expect send event from "Page view" (line 25): no such send (0 sends in all)
        "Page view" was not triggered by any push; its triggers: on "page.veiw"
        near miss, push of line 23: `on "page.veiw"`: this push was `page.view`
  expect 1 send from "Page view" (line 26): got 0
        "Page view" was not triggered by any push; its triggers: on "page.veiw"
        near miss, push of line 23: `on "page.veiw"`: this push was `page.view`
  expect send event (line 27): no such send (0 sends in all)
        near miss of rule "Page view", push of line 23: `on "page.veiw"`: this push was `page.view`
FAIL cart total  t.rules:29
  expect rule "Cart total" fired (line 31): the rule was not triggered by any push
        its triggers: on change cart.totl
        near miss, push of line 30: `on change cart.totl`: this push changed `cart.total`
FAIL search is triggered but not by this  t.rules:33
  expect rule "Search" fired (line 35): the rule was not triggered by any push
        its triggers: on "search"
0 passed, 3 failed
"""


def test_failing_expects_name_the_triggers_and_the_near_miss(tmp_path: Path) -> None:
    folder = _folder(tmp_path, RULES + TESTS)
    done = tagengine("test", ".", cwd=folder)
    assert done.returncode == 1, done.stderr
    assert done.stdout == TEST_OUTPUT
