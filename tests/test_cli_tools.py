"""The CLI's safety and convenience contracts, as a user runs them (real subprocesses): `run`
never reaches the hosts of the settings unless `--live`, fails on a failed send, keeps stdout
pure JSON under `--json`, reads `-`, filters `--trace` by `--session`/`--rule`; `test -k` and
`test FILE`; lazy imports; a folder without rules is an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.emulator import EmulatorServer
from engine.emulator.faults import Fault
from tests.conftest import SETTINGS

ROOT = Path(__file__).resolve().parent.parent

RULES = """\
rule "View" {
  on "page.view"
  send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page } }
  send sitecore { type: "VIEW", page: state.page }
}
rule "Buy" {
  on "buy"
  send event { type: "commerce.purchases" }
}
"""

LINES = [
    '{"session": "a", "push": {"event": "page.view", "page": "Home"}}',
    '{"session": "b", "push": {"event": "buy"}}',
    '{"session": "a", "push": {"event": "buy"}}',
]


def tagengine(
    *args: str | Path, cwd: Path = ROOT, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    hidden = ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )


def ruleset(folder: Path, rules: str = RULES, settings: str = SETTINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.rules").write_text(settings, encoding="utf-8")
    (folder / "r.rules").write_text(rules, encoding="utf-8")
    events = folder / "events.jsonl"
    events.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return events


def objects(stdout: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(item, dict) for item in parsed), stdout
    return parsed


# ---------------------------------------------------------------------------- run: where sends go
def production(url: str) -> str:
    """Settings whose hosts are ``url``: the "real" services of these tests."""
    return (
        f'edge {{ datastream: "ds-1", url: "{url}" }}\n'
        f'sitecore {{ url: "{url}", client_key: "k", pos: "shop", language: "EN", '
        'currency: "EUR" }\n'
    )


def test_run_without_a_target_sends_to_a_local_emulator_never_the_settings_hosts(
    tmp_path: Path, fresh_emulator: EmulatorServer
) -> None:
    events = ruleset(tmp_path, settings=production(fresh_emulator.url))
    done = tagengine("run", "--rules", tmp_path, "--json", events)
    assert done.returncode == 0, done.stderr
    assert fresh_emulator.requests() == []  # the hosts of the settings: untouched
    out = objects(done.stdout)  # stdout stays pure JSON; the note is on stderr
    sends = [send for line in out for send in line["sends"]]
    assert len(sends) == 4
    assert all(send["url"].startswith("http://127.0.0.1:") for send in sends)
    assert all(not send["url"].startswith(fresh_emulator.url) for send in sends)
    assert {send["status"] for send in sends} <= {200, 201}
    assert "note: edge and sitecore sends go to a local emulator on http://127.0.0.1:" in (
        done.stderr
    )
    assert "--live" in done.stderr


def test_run_live_sends_to_the_hosts_of_the_settings(
    tmp_path: Path, fresh_emulator: EmulatorServer
) -> None:
    events = ruleset(tmp_path, settings=production(fresh_emulator.url))
    done = tagengine("run", "--rules", tmp_path, "--live", events)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(fresh_emulator.requests("/ee/")) == 3
    assert len(fresh_emulator.requests("/v1.2/event/")) == 1
    assert done.stderr == ""
    assert done.stdout.splitlines()[-1] == "3 pushes, 3 rules fired, 4 sends"


def test_run_with_only_edge_sends_sitecore_to_the_emulator(
    tmp_path: Path, fresh_emulator: EmulatorServer, emulator: EmulatorServer
) -> None:
    events = ruleset(tmp_path, settings=production(fresh_emulator.url))
    done = tagengine("run", "--rules", tmp_path, "--edge", emulator.url, "--json", events)
    assert done.returncode == 0, done.stderr
    assert fresh_emulator.requests() == []
    assert len(emulator.requests("/ee/")) == 3
    assert "note: sitecore sends go to a local emulator" in done.stderr


@pytest.mark.parametrize("other", ["--dry-run", "--emulator"])
def test_live_contradicts_dry_run_and_emulator(tmp_path: Path, other: str) -> None:
    events = ruleset(tmp_path)
    done = tagengine("run", "--rules", tmp_path, "--live", other, events)
    assert done.returncode == 2
    assert "--live sends to the hosts of the settings: drop --dry-run/--emulator" in done.stderr


# ---------------------------------------------------------------------------- run: failures
def test_a_failed_send_fails_the_run_and_the_summary_says_so(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.set_faults(Fault(status=400, path="/ee/"))
    events = ruleset(tmp_path)
    args = ("run", "--rules", tmp_path, "--edge", emulator.url, "--sitecore", emulator.url)
    readable = tagengine(*args, events)
    assert readable.returncode == 1, readable.stdout + readable.stderr
    assert readable.stdout.splitlines()[-1] == "3 pushes, 3 rules fired, 4 sends; 3 sends failed"
    as_json = tagengine(*args, "--json", events)
    assert as_json.returncode == 1
    statuses = [send["status"] for line in objects(as_json.stdout) for send in line["sends"]]
    assert sorted(statuses) == [201, 400, 400, 400]
    assert as_json.stderr.strip() == "error: 3 sends failed"


def test_all_sends_succeeding_exits_zero(tmp_path: Path, emulator: EmulatorServer) -> None:
    events = ruleset(tmp_path)
    done = tagengine("run", "--rules", tmp_path, "--emulator", events)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "3 pushes, 3 rules fired, 4 sends"


# The warnings `check` gives RULES: neither rule has a test. (line, rule, event)
WARNED = [(1, "View", "page.view"), (6, "Buy", "buy")]
BROKEN = 'rule "R" {\n  on "e"\n  when nope > 1\n  send event { type: "t" }\n}\n'


def test_json_load_errors_are_one_json_object_on_stdout_and_text_on_stderr(
    tmp_path: Path,
) -> None:
    events = ruleset(tmp_path, rules=BROKEN)
    done = tagengine("run", "--rules", tmp_path, "--dry-run", "--json", events)
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    report = json.loads(line)
    assert report["error"] == "1 error in 1 file"
    (diagnostic,) = report["diagnostics"]
    assert diagnostic == {
        "file": str(tmp_path / "r.rules"),
        "line": 3,
        "column": 8,
        "end_line": 3,
        "end_column": 12,
        "message": diagnostic["message"],
        "severity": "error",
    }
    assert "unknown element 'nope'" in diagnostic["message"]
    assert f"{tmp_path / 'r.rules'}:3:8: error: unknown element 'nope'" in done.stderr
    assert "1 error in 1 file" in done.stderr


def test_check_json(tmp_path: Path) -> None:
    ruleset(tmp_path)
    good = tagengine("check", "--json", tmp_path)
    assert good.returncode == 0
    assert json.loads(good.stdout) | {"version": "-"} == {
        "rules": 2,
        "elements": 0,
        "tests": 0,
        "files": 2,
        "version": "-",
        "diagnostics": [
            {
                "file": str(tmp_path / "r.rules"),
                "line": line,
                "column": 6,
                "end_line": line,
                "end_column": 6 + len(name) + 2,
                "message": f"rule '{name}' has no test: no test pushes what it listens to "
                f'(on "{event}") or names it',
                "severity": "warning",
            }
            for line, name, event in WARNED
        ],
    }
    (tmp_path / "r.rules").write_text(BROKEN)
    bad = tagengine("check", "--json", tmp_path)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["diagnostics"][0]["line"] == 3


# ---------------------------------------------------------------------------- run: input, filters
def test_run_dash_reads_pushes_from_stdin(tmp_path: Path) -> None:
    ruleset(tmp_path)
    done = tagengine(
        "run", "--rules", tmp_path, "--dry-run", "--json", "-", stdin="\n".join(LINES) + "\n{\n"
    )
    assert done.returncode == 1  # the last line is bad
    out = objects(done.stdout)
    assert [(o.get("session"), o.get("event")) for o in out[:3]] == [
        ("a", "page.view"),
        ("b", "buy"),
        ("a", "buy"),
    ]
    assert out[3]["file"] == "<stdin>" and out[3]["line"] == 4
    assert "<stdin>:4: error:" in done.stderr


def test_trace_session_filter_shows_only_that_sessions_pushes(tmp_path: Path) -> None:
    events = ruleset(tmp_path)
    done = tagengine("run", "--rules", tmp_path, "--dry-run", "--trace", "--session", "a", events)
    assert done.returncode == 0, done.stderr
    heads = [line for line in done.stdout.splitlines() if "  session " in line]
    assert heads == [
        f"page.view  session a  {events}:1",
        f"buy  session a  {events}:3",
    ]
    # every push still ran: the summary counts all of them
    assert done.stdout.splitlines()[-1].startswith("3 pushes, 3 rules fired, 4 sends")


def test_trace_rule_filter_shows_only_that_rules_outcome(tmp_path: Path) -> None:
    events = ruleset(tmp_path)
    done = tagengine("run", "--rules", tmp_path, "--dry-run", "--trace", "--rule", "Buy", events)
    assert done.returncode == 0, done.stderr
    heads = [line for line in done.stdout.splitlines() if "  session " in line]
    assert heads == [f"buy  session b  {events}:2", f"buy  session a  {events}:3"]
    assert "View" not in done.stdout
    both = tagengine(
        "run", "--rules", tmp_path, "--dry-run", "--json", "--rule", "View", "--session", "a",
        events,
    )  # fmt: skip
    (line,) = objects(both.stdout)
    assert [r["rule"] for r in line["rules"]] == ["View"]
    assert [s["rule"] for s in line["sends"]] == ["View", "View"]


def test_an_unknown_rule_filter_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    events = ruleset(tmp_path)
    done = tagengine("run", "--rules", tmp_path, "--dry-run", "--rule", "Buyy", events)
    assert done.returncode == 2
    assert "no rule named 'Buyy' (did you mean 'Buy'?)" in done.stderr


# ---------------------------------------------------------------------------- test -k, test FILE
TESTED = """\
test "buy sends" {
  push { event: "buy" }
  expect 1 send
}
test "view sends twice" {
  push { event: "page.view", page: "p" }
  expect 2 sends
}
"""

OTHER = """\
test "other file view" {
  push { event: "page.view", page: "p" }
  expect 1 send
}
"""


@pytest.fixture
def tested(tmp_path: Path) -> Path:
    ruleset(tmp_path, RULES + TESTED)
    (tmp_path / "other.rules").write_text(OTHER)  # fails: 2 sends
    return tmp_path


def passes(stdout: str) -> list[str]:
    return [line.split("  ")[0] for line in stdout.splitlines() if line[:5] in ("PASS ", "FAIL ")]


def test_test_k_selects_by_substring_case_insensitively(tested: Path) -> None:
    done = tagengine("test", tested, "-k", "VIEW sends")
    assert done.returncode == 0, done.stdout
    assert passes(done.stdout) == ["PASS view sends twice"]
    assert done.stdout.splitlines()[-1] == "1 passed, 0 failed (2 deselected)"


def test_test_k_takes_a_glob(tested: Path) -> None:
    done = tagengine("test", tested, "-k", "*view*")
    assert done.returncode == 1
    assert passes(done.stdout) == ["FAIL other file view", "PASS view sends twice"]


def test_test_k_matching_nothing_fails(tested: Path) -> None:
    done = tagengine("test", tested, "-k", "nothing like it")
    assert done.returncode == 1
    assert done.stdout.strip() == "no test matching -k 'nothing like it'"


def test_test_file_runs_that_files_tests_within_its_ruleset(tested: Path) -> None:
    done = tagengine("test", tested / "r.rules")
    assert done.returncode == 0, done.stdout
    assert passes(done.stdout) == ["PASS buy sends", "PASS view sends twice"]
    assert done.stdout.splitlines()[-1] == "2 passed, 0 failed (1 deselected)"
    other = tagengine("test", tested / "other.rules")  # its rules come from r.rules
    assert other.returncode == 1
    assert passes(other.stdout) == ["FAIL other file view"]
    relative = tagengine("test", "r.rules", "-k", "buy", cwd=tested)
    assert passes(relative.stdout) == ["PASS buy sends"], relative.stdout
    empty = tagengine("test", tested / "settings.rules")
    assert empty.returncode == 1
    assert empty.stdout.strip() == f"no test in {tested / 'settings.rules'}"


# ---------------------------------------------------------------------------- startup, empty folder
HEAVY = (
    "httpx",
    "redis",
    "uvicorn",
    "starlette",
    "pydantic_settings",
    "engine.emulator",
    "engine.engine",
    "engine.dispatch",
    "engine.background",
    "engine.clients",
    "engine.stores",
    "engine.cli_deliver",
    "engine.cli_outbox",
    "engine.devserver",
)


def test_importing_the_cli_and_checking_loads_no_delivery_stack(tmp_path: Path) -> None:
    ruleset(tmp_path)
    script = (
        "import sys, json\n"
        "import engine.cli\n"
        "after_import = sorted(m for m in sys.modules if m.split('.')[0] in {'httpx', 'redis',"
        " 'uvicorn', 'starlette', 'lark', 'pydantic'} or m.startswith('engine.'))\n"
        "try:\n"
        "    engine.cli.cli(['check', sys.argv[1]], prog_name='tagengine')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps([after_import, sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    after_import, after_check = json.loads(done.stdout.splitlines()[-1])

    def loaded(modules: list[str], name: str) -> bool:
        return any(m == name or m.startswith(name + ".") for m in modules)

    # `--version` needs nothing but the CLI module: not even the parser or the settings models
    for name in (*HEAVY, "lark", "pydantic", "engine.loader"):
        assert not loaded(after_import, name), f"import engine.cli loads {name}"
    # `check` loads the rules, never the delivery stack
    assert loaded(after_check, "engine.loader")
    for name in HEAVY:
        assert not loaded(after_check, name), f"check loads {name}"


def test_version_and_help_work_and_list_the_lazy_commands() -> None:
    version = tagengine("--version")
    assert version.returncode == 0 and version.stdout.startswith("tagengine, version ")
    helped = tagengine("--help")
    assert helped.returncode == 0
    for command in ("check", "run", "test", "dev", "emulator", "outbox", "deliver"):
        assert f"  {command} " in helped.stdout, helped.stdout


def test_a_folder_without_rules_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "r.rule").write_text('rule "R" { on "e" }\n')
    done = tagengine("check", tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith(f"{tmp_path}:1:1: error: no .rules file in {tmp_path}\n")
