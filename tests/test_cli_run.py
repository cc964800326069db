"""``tagengine run``, as a user runs it: real subprocesses on real .rules and .jsonl files.

Each fixture runs the CLI once (module scope) and several tests read its output, to keep the
number of subprocesses small.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass
class Run:
    events: Path
    returncode: int
    stdout: str
    stderr: str

    def objects(self) -> list[dict[str, Any]]:
        """stdout of a ``--json`` run: every line must be one JSON object."""
        lines = self.stdout.splitlines()
        parsed = [json.loads(line) for line in lines]
        assert all(isinstance(item, dict) for item in parsed), self.stdout
        return parsed


def tagengine(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # output piped to a file, as in CI: no colour, rich's default width
    hidden = ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=120,
    )


def replay(folder: Path, rules: str, lines: list[str] | bytes, *flags: str) -> Run:
    """Write a ruleset (SETTINGS + ``rules``) and an events file into ``folder``, run it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.rules").write_text(SETTINGS, encoding="utf-8")
    (folder / "r.rules").write_text(rules, encoding="utf-8")
    events = folder / "events.jsonl"
    if isinstance(lines, bytes):
        events.write_bytes(lines)
    else:
        events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = tagengine("run", "--rules", folder, events, "--dry-run", *flags)
    return Run(events, done.returncode, done.stdout, done.stderr)


# ---------------------------------------------------------------------------- statuses and sends
BUY_RULES = """\
element total = state.cart.total | default 0
rule "Buy" {
  on "buy"
  when total > 100
  unless state.user.internal
  limit 1 per session
  send event {
    type: "commerce.purchases"
    xdm: { commerce.order.priceTotal: total }
    data: { label: "order %total%" }
  }
  send sitecore { type: "VIEW", page: state.page.name }
}
"""

BUY_LINES = [
    # 1: plain push, session "default": the condition fails on the total
    '{"event": "buy", "cart": {"total": 50}}',
    # 2: envelope, session "s2": fires, one Edge and one Sitecore send
    '{"session": "s2", "push": {"event": "buy", "cart": {"total": 150},'
    ' "page": {"name": "Café & co?=1 100%"}}}',
    # 3: same session: the state still has the total (merged), the limit stops it
    '{"session": "s2", "push": {"event": "buy"}}',
    # 4: default session: the exception blocks it
    '{"event": "buy", "cart": {"total": 500}, "user": {"internal": true}}',
    # 5: an event no rule listens to
    '{"event": "other"}',
]


@pytest.fixture(scope="module")
def buy_json(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return replay(tmp_path_factory.mktemp("buy_json"), BUY_RULES, BUY_LINES, "--json")


@pytest.fixture(scope="module")
def buy_summary(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return replay(tmp_path_factory.mktemp("buy_summary"), BUY_RULES, BUY_LINES)


@pytest.fixture(scope="module")
def buy_trace(tmp_path_factory: pytest.TempPathFactory) -> Run:
    # a long folder name, as real project paths often are
    folder = tmp_path_factory.mktemp("buy_trace_" + "x" * 60)
    return replay(folder, BUY_RULES, BUY_LINES, "--trace")


def test_json_prints_one_object_per_line_with_sessions_and_statuses(buy_json: Run) -> None:
    assert buy_json.returncode == 0, buy_json.stderr
    assert buy_json.stderr == ""
    out = buy_json.objects()
    assert len(out) == len(BUY_LINES)
    for item in out:
        assert {"session", "event", "rules", "sends"} <= set(item)
        for outcome in item["rules"]:
            assert set(outcome) == {"rule", "status", "reason"}
        for send in item["sends"]:
            assert set(send) == {"rule", "destination", "method", "url", "body"}
    assert [o["session"] for o in out] == ["default", "s2", "s2", "default", "default"]
    assert [o["event"] for o in out] == ["buy", "buy", "buy", "buy", "other"]
    assert [[(r["rule"], r["status"]) for r in o["rules"]] for o in out] == [
        [("Buy", "condition_not_met")],
        [("Buy", "fired")],
        [("Buy", "limited")],
        [("Buy", "blocked")],
        [],
    ]
    assert [len(o["sends"]) for o in out] == [0, 2, 0, 0, 0]


def test_json_reasons_name_the_clause_and_the_values_seen(buy_json: Run) -> None:
    out = buy_json.objects()
    not_met = out[0]["rules"][0]["reason"]
    assert "total > 100" in not_met
    assert re.search(r"\b50\b", not_met), not_met
    assert out[1]["rules"][0]["reason"] is None
    assert "limit" in out[2]["rules"][0]["reason"]
    blocked = out[3]["rules"][0]["reason"]
    assert "state.user.internal" in blocked
    assert "true" in blocked


def test_json_edge_send_has_the_interact_url_and_the_exact_body(buy_json: Run) -> None:
    sends = buy_json.objects()[1]["sends"]
    edge = next(s for s in sends if s["destination"] == "edge")
    assert edge["rule"] == "Buy"
    assert edge["method"] == "POST"
    assert "/ee/v2/interact?datastreamId=" in edge["url"]
    assert "requestId=" in edge["url"]
    url = urlsplit(edge["url"])
    assert url.path.endswith("/ee/v2/interact")
    query = parse_qs(url.query)
    assert query["datastreamId"] == ["ds-1"]
    assert UUID.match(query["requestId"][0]), edge["url"]

    body = edge["body"]
    xdm = body["event"]["xdm"]
    assert UUID.match(xdm.pop("_id"))
    assert ISO.match(xdm.pop("timestamp"))
    assert body == {
        "event": {
            "xdm": {
                "eventType": "commerce.purchases",
                "implementationDetails": {
                    "name": "https://ns.adobe.com/experience/tagengine",
                    "version": xdm["implementationDetails"]["version"],
                    "environment": "server",
                },
                "commerce": {"order": {"priceTotal": 150}},
            },
            "data": {"label": "order 150"},
        },
        "query": {"identity": {"fetch": ["ECID"]}},
        "meta": {"state": {"domain": "", "cookiesEnabled": True}},
    }


def test_json_sitecore_get_url_carries_the_body(buy_json: Run) -> None:
    sends = buy_json.objects()[1]["sends"]
    assert [s["destination"] for s in sends] == ["edge", "sitecore"]
    sitecore = sends[1]
    assert sitecore["rule"] == "Buy"
    assert sitecore["method"] == "GET"
    body = sitecore["body"]
    assert UUID.match(body["browser_id"])
    assert body == {
        "channel": "WEB",
        "type": "VIEW",
        "language": "EN",
        "currency": "EUR",
        "page": "Café & co?=1 100%",
        "pos": "shop",
        "browser_id": body["browser_id"],
    }
    url = urlsplit(sitecore["url"])
    assert url.path.endswith("/v1.2/event/create.json")
    query = parse_qs(url.query, strict_parsing=True)
    assert query["client_key"] == ["k"]
    (message,) = query["message"]
    assert json.loads(message) == body
    assert message == json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------- readable output
def test_summary_names_fired_rules_and_sends_and_counts(buy_summary: Run) -> None:
    assert buy_summary.returncode == 0, buy_summary.stderr
    lines = buy_summary.stdout.strip().splitlines()
    fired = [line for line in lines if "Buy" in line and "fired" in line.lower()]
    assert fired, buy_summary.stdout
    sends = [line for line in lines if re.search(r"\bsend\b", line) and "Buy" in line]
    assert any("edge" in line and "/ee/v2/interact" in line for line in sends), sends
    assert any("sitecore" in line and "/v1.2/event/create.json" in line for line in sends)
    assert len(sends) == 2
    assert re.match(r"5 pushes, 1 rule fired, 2 sends\b", lines[-1]), lines[-1]


TRACE_HEAD = re.compile(r"^(\S+)  session (\S+)  .*$", re.MULTILINE)


def _trace_blocks(run: Run) -> list[str]:
    """The trace split per push: each block starts at its heading (event, session, FILE:LINE)."""
    starts = [m.start() for m in TRACE_HEAD.finditer(run.stdout)]
    return [run.stdout[a:b] for a, b in zip(starts, [*starts[1:], len(run.stdout)], strict=True)]


def _status(block: str, words: str) -> bool:
    return re.search(words.replace("_", "[ _]") + r"\W+Buy\b", block, re.IGNORECASE) is not None


def test_trace_shows_every_rule_with_status_clause_values_elements_and_bodies(
    buy_trace: Run,
) -> None:
    assert buy_trace.returncode == 0, buy_trace.stderr
    heads = [m.group(1, 2) for m in TRACE_HEAD.finditer(buy_trace.stdout)]
    assert heads == [
        ("buy", "default"),
        ("buy", "s2"),
        ("buy", "s2"),
        ("buy", "default"),
        ("other", "default"),
    ]
    not_met, fired, limited, blocked, other = _trace_blocks(buy_trace)

    assert _status(not_met, "condition_not_met")
    assert "total > 100" in not_met
    assert re.search(r"\btotal\b\s*[=:]\s*50\b", not_met), not_met

    assert _status(fired, "fired")
    assert re.search(r"\btotal\b\s*[=:]\s*150\b", fired), fired  # the element's value
    assert "commerce.purchases" in fired  # the Edge body...
    assert re.search(r'"priceTotal":\s*150', fired)
    assert re.search(r'"label":\s*"order 150"', fired)
    assert re.search(r'"page":\s*"Café & co\?=1 100%"', fired)  # ...and the Sitecore body
    assert "/ee/v2/interact?datastreamId=ds-1&requestId=" in fired

    assert _status(limited, "limited")
    assert _status(blocked, "blocked")
    assert "state.user.internal" in blocked
    assert "true" in blocked
    # the rule is only listed as not triggered by the other event, with its trigger
    assert re.findall(r"^.*\bBuy\b.*$", other, re.MULTILINE) == [
        f'  NOT TRIGGERED Buy  on "buy"  {buy_trace.events.parent / "r.rules"}:2'
    ], other
    assert re.match(r"5 pushes, 1 rule fired, 2 sends\b", buy_trace.stdout.splitlines()[-1])


def test_trace_headings_keep_the_input_location(buy_trace: Run) -> None:
    heads = TRACE_HEAD.findall(buy_trace.stdout)
    assert len(heads) == len(BUY_LINES)
    for number, match in enumerate(TRACE_HEAD.finditer(buy_trace.stdout), 1):
        assert f"{buy_trace.events}:{number}" in match.group(0)


# ---------------------------------------------------------------------------- malformed lines
PLAIN_RULES = """\
element total = state.cart.total | default 0
rule "Buy" {
  on "buy"
  when total > 100
  send event { type: "t", xdm: { total: total } }
}
"""

DEEP = '{"event": "buy", "x": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}"
BAD_LINES = [
    '{"event": "buy", "cart": {"total": 150}}',  # 1 ok: fires
    "not json at all",  # 2
    "[1, 2]",  # 3: JSON, but not an object
    '{"event": "buy", "cart": {"total": NaN}}',  # 4: not a finite number
    DEEP,  # 5: nested too deep
    '{"session": 7, "push": {"event": "buy"}}',  # 6: envelope, non-string session
    "",  # 7: blank lines are skipped silently
    '{"session": "s9", "push": {"event": "buy", "cart": {"total": 200}}}',  # 8 ok: fires
    '{"event": "buy", "cart": {"total": Infinity}}',  # 9: not finite
    '{"event": "buy"}',  # 10 ok: the rejected pushes left the state intact: fires with 150
]
BAD = [2, 3, 4, 5, 6, 9]


@pytest.fixture(scope="module")
def bad_json(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return replay(tmp_path_factory.mktemp("bad_json"), PLAIN_RULES, BAD_LINES, "--json")


@pytest.fixture(scope="module")
def bad_summary(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return replay(tmp_path_factory.mktemp("bad_summary"), PLAIN_RULES, BAD_LINES)


def _reported(run: Run) -> list[int]:
    """The line numbers reported on stderr as ``FILE:LINE:``."""
    pattern = re.compile(re.escape(str(run.events)) + r":(\d+):")
    return [int(m.group(1)) for m in pattern.finditer(run.stderr)]


def test_malformed_lines_are_reported_skipped_and_fail_the_run_json(bad_json: Run) -> None:
    assert bad_json.returncode != 0
    assert _reported(bad_json) == BAD, bad_json.stderr
    assert "Traceback" not in bad_json.stderr
    out = bad_json.objects()
    # one object per non-blank line, in order; the bad ones carry "error" and "line"
    assert len(out) == 9
    errors = [o for o in out if "error" in o]
    assert [o["line"] for o in errors] == BAD
    assert all(isinstance(o["error"], str) and o["error"] for o in errors)
    good = [o for o in out if "error" not in o]
    assert [(o["session"], o["event"]) for o in good] == [
        ("default", "buy"),
        ("s9", "buy"),
        ("default", "buy"),
    ]
    assert [[r["status"] for r in o["rules"]] for o in good] == [["fired"]] * 3
    totals = [o["sends"][0]["body"]["event"]["xdm"]["total"] for o in good]
    assert totals == [150, 200, 150]  # line 10: NaN/Infinity pushes did not touch the state
    assert "nan" in errors[2]["error"].lower()  # line 4 says what is wrong
    assert "deep" in errors[3]["error"].lower() or "nest" in errors[3]["error"].lower()
    assert "session" in errors[4]["error"]


def test_malformed_lines_are_reported_in_the_readable_run_too(bad_summary: Run) -> None:
    assert bad_summary.returncode != 0
    assert _reported(bad_summary) == BAD, bad_summary.stderr
    assert "Traceback" not in bad_summary.stderr
    last = bad_summary.stdout.strip().splitlines()[-1]
    assert re.match(r"3 pushes, 3 rules fired, 3 sends\b", last), last
    assert "6 bad lines" in last


def test_a_very_deeply_nested_line_is_reported_not_a_crash(tmp_path: Path) -> None:
    deep = '{"event": "buy", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    run = replay(
        tmp_path, PLAIN_RULES, [deep, '{"event": "buy", "cart": {"total": 150}}'], "--json"
    )
    assert "Traceback" not in run.stderr, run.stderr[-600:]
    assert _reported(run) == [1]
    out = run.objects()
    assert out[0]["line"] == 1 and "error" in out[0]
    assert out[1]["rules"][0]["status"] == "fired"
    assert run.returncode != 0


def test_a_line_that_is_not_utf8_is_reported_not_a_crash(tmp_path: Path) -> None:
    data = (
        b'{"event": "buy", "cart": {"total": 150}}\n'
        b'{"event": "buy", "page": "\xff\xfe"}\n'
        b'{"event": "buy", "cart": {"total": 300}}\n'
    )
    run = replay(tmp_path, PLAIN_RULES, data, "--json")
    assert "Traceback" not in run.stderr, run.stderr[-600:]
    assert _reported(run) == [2]
    out = run.objects()
    assert len(out) == 3
    assert out[1]["line"] == 2 and "error" in out[1]
    assert [o["sends"][0]["body"]["event"]["xdm"]["total"] for o in (out[0], out[2])] == [150, 300]
    assert run.returncode != 0


def test_a_lone_surrogate_escape_does_not_crash_the_run(tmp_path: Path) -> None:
    # "\ud800" is valid JSON syntax but no Unicode text: rejecting the line is fine (the spec
    # says a bad push is rejected with a clear error), crashing the whole run is not.
    lines = [
        '{"event": "buy\\ud800", "cart": {"total": 150}}',
        '{"event": "buy", "cart": {"total": 150}, "note": "\\udc00"}',
        '{"event": "buy", "cart": {"total": 300}}',
    ]
    run = replay(tmp_path, PLAIN_RULES, lines, "--json")
    assert "Traceback" not in run.stderr, run.stderr[-600:]
    out = run.objects()
    assert len(out) == 3
    assert out[2]["rules"][0]["status"] == "fired"


# ---------------------------------------------------------------------------- state across lines
STATE_RULES = """\
rule "Push x" order 1 {
  on "snap"
  push { x: 99 }
}
rule "Echo" {
  on "show", "snap"
  send event { type: "t", data: { page: state.page, tags: state.tags, x: state.x } }
}
"""

STATE_LINES = [
    '{"page": {"name": "Home", "type": "home"}, "tags": ["a", "b"]}',  # 1 default
    '{"session": "s2", "push": {"page": {"name": "Other"}}}',  # 2 s2
    '{"event": "show", "page": {"name": "Cart"}, "tags": ["c"]}',  # 3 default
    '{"session": "s2", "push": {"event": "show"}}',  # 4 s2
    '{"event": "show", "page": {"type": null}}',  # 5 default
    '{"event": "snap", "x": 1}',  # 6 default; "Push x" queues {x: 99}
    '{"event": "show"}',  # 7 default
]


@pytest.fixture(scope="module")
def state_json(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return replay(tmp_path_factory.mktemp("state"), STATE_RULES, STATE_LINES, "--json")


def _echoes(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(session, data) of every Echo send, in order (ignores any extra lines, see below)."""
    return [
        (o["session"], s["body"]["event"].get("data", {}))
        for o in run.objects()
        if o.get("event") in ("show", "snap")
        for s in o["sends"]
        if s["rule"] == "Echo"
    ]


def test_state_merges_across_lines_of_a_session_and_sessions_are_independent(
    state_json: Run,
) -> None:
    assert state_json.returncode == 0, state_json.stderr
    echoes = _echoes(state_json)
    assert [session for session, _ in echoes] == ["default", "s2", "default", "default", "default"]
    data = [d for _, d in echoes]
    # ACDL: objects merge, arrays replace
    assert data[0]["page"] == {"name": "Cart", "type": "home"}
    assert data[0]["tags"] == ["c"]
    # s2 sees only its own pushes
    assert data[1]["page"] == {"name": "Other"}
    assert data[1].get("tags") is None
    # null deletes
    assert data[2]["page"] == {"name": "Cart"}


def test_rules_read_the_event_time_snapshot(state_json: Run) -> None:
    data = [d for _, d in _echoes(state_json)]
    # "Push x" ran first on line 6 and queued {x: 99}; Echo still sees line 6's x
    assert data[3]["x"] == 1
    # the queued push did land, after line 6 finished
    assert data[4]["x"] == 99


def test_json_is_one_object_per_input_line_even_with_push_actions(state_json: Run) -> None:
    out = state_json.objects()
    assert len(out) == len(STATE_LINES)
    assert [o["event"] for o in out] == [None, None, "show", "show", "show", "snap", "show"]
