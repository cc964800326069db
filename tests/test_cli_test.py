"""``tagengine test``, as a user runs it: real subprocesses on real .rules folders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import SETTINGS

ROOT = Path(__file__).resolve().parent.parent

RULE = """\
rule "R" {
  on "e"
  when state.a > 0
  limit 1 per session
  send event { type: "t", xdm: { a: state.a } }
  send sitecore { type: "VIEW", page: "p" }
}
rule "Other" {
  on "o"
  send event { type: "o" }
}
"""

PASSING = {
    "sends the value": """
  push { event: "e", a: 1 }
  expect send event from "R" { xdm.a: 1, xdm.eventType: "t" }
  expect send sitecore from "R" { type: "VIEW", page: "p" }
  expect 2 sends
  expect 1 send event from "R"
  expect 1 send sitecore
  expect no send from "Other"
  expect rule "R" fired
""",
    "a second firing in one session is limited": """
  push { event: "e", a: 1 }
  push { event: "e", a: 2 }
  expect rule "R" limited
  expect 1 send event
  expect send event { xdm.a: 1 }
""",
    # would be `limited` if the session of the test above leaked into this one
    "each test has a fresh session": """
  push { event: "e", a: 7 }
  expect rule "R" fired
  expect send event from "R" { xdm.a: 7 }
""",
    "zero is not enough": """
  push { event: "e", a: 0 }
  expect rule "R" condition_not_met
  expect no send
  expect 0 sends event
""",
    "named session one": """
  session "shared"
  push { event: "e", a: 1 }
  expect rule "R" fired
""",
    "named session two": """
  session "shared"
  push { event: "e", a: 2 }
  expect rule "R" fired
  expect send event { xdm.a: 2 }
""",
    "an expect sees only the pushes before it": """
  expect no send
  push { event: "e", a: 1 }
  expect 2 sends
""",
}

MIXED = {
    "right value": """
  push { event: "e", a: 1 }
  expect send event from "R" { xdm.a: 1 }
""",
    "wrong value": """
  push { event: "e", a: 1 }
  expect send event from "R" { xdm.a: 2 }
""",
    "wrong count": """
  push { event: "e", a: 1 }
  expect 3 sends
""",
    "unexpected send": """
  push { event: "e", a: 1 }
  expect no send event
""",
    "wrongly expects limited": """
  push { event: "e", a: 1 }
  expect rule "R" limited
""",
    "wrongly expects condition_not_met": """
  push { event: "e", a: 5 }
  expect rule "R" condition_not_met
""",
    "wrongly expects fired": """
  push { event: "e", a: -1 }
  expect rule "R" fired
""",
    "no send at all": """
  push { event: "o" }
  expect send event from "R" { xdm.a: 1 }
""",
    "condition_not_met right": """
  push { event: "e", a: -1 }
  expect rule "R" condition_not_met
  expect 0 sends
""",
}
MIXED_PASS = {"right value", "condition_not_met right"}


def tagengine(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
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


def write_folder(folder: Path, tests: dict[str, str]) -> Path:
    (folder / "settings.rules").write_text(SETTINGS, encoding="utf-8")
    blocks = "".join(f'\ntest "{name}" {{{body}}}\n' for name, body in tests.items())
    (folder / "r.rules").write_text(RULE + blocks, encoding="utf-8")
    return folder


def verdicts(stdout: str, names: list[str], folder: Path) -> dict[str, tuple[str, str]]:
    """For each test name: ("pass"|"fail", the lines after its own up to the next test's)."""
    lines = stdout.replace(str(folder), "FOLDER").splitlines()
    found: dict[str, int] = {}
    for index, line in enumerate(lines):
        for name in names:
            if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", line) and name not in found:
                found[name] = index
    assert set(found) == set(names), stdout
    order = sorted(found.values())
    out: dict[str, tuple[str, str]] = {}
    for name, start in found.items():
        later = [i for i in order if i > start]
        end = later[0] if later else len(lines) - 1
        head = lines[start].lower()
        assert ("fail" in head) != ("pass" in head), lines[start]
        out[name] = ("fail" if "fail" in head else "pass", "\n".join(lines[start + 1 : end]))
    return out


def test_a_folder_whose_tests_all_pass(tmp_path: Path) -> None:
    result = tagengine("test", write_folder(tmp_path, PASSING))
    assert result.returncode == 0, result.stdout + result.stderr
    seen = verdicts(result.stdout, list(PASSING), tmp_path)
    assert {name: verdict for name, (verdict, _) in seen.items()} == dict.fromkeys(PASSING, "pass")
    assert result.stdout.splitlines()[-1] == f"{len(PASSING)} passed, 0 failed"


def test_failing_expectations_show_a_diff_and_fail_the_run(tmp_path: Path) -> None:
    result = tagengine("test", write_folder(tmp_path, MIXED))
    assert result.returncode == 1, result.stdout + result.stderr
    seen = verdicts(result.stdout, list(MIXED), tmp_path)
    assert {name: verdict for name, (verdict, _) in seen.items()} == {
        name: "pass" if name in MIXED_PASS else "fail" for name in MIXED
    }
    failed = len(MIXED) - len(MIXED_PASS)
    assert result.stdout.splitlines()[-1] == f"{len(MIXED_PASS)} passed, {failed} failed"

    # the diff of the wrong value: the expected 2 and the actual 1, both at xdm.a
    wrong = seen["wrong value"][1]
    diff = [line.strip() for line in wrong.splitlines() if "xdm.a" in line]
    assert any(re.search(r"\b2$", line) for line in diff), wrong
    assert any(re.search(r"\b1$", line) for line in diff), wrong
    # every failure says what it saw
    assert re.search(r"\b2\b", seen["wrong count"][1]), seen["wrong count"][1]
    assert re.search(r"\b1\b", seen["unexpected send"][1]), seen["unexpected send"][1]
    assert "fired" in seen["wrongly expects limited"][1]
    assert "fired" in seen["wrongly expects condition_not_met"][1]
    assert "condition_not_met" in seen["wrongly expects fired"][1].replace(" ", "_").lower()
    assert "state.a" in seen["wrongly expects fired"][1]  # the failing clause
    assert seen["no send at all"][1].strip()
    # a passing test prints no failure details
    assert seen["right value"][1].strip() == ""


def test_the_repo_rules_pass(tmp_path: Path) -> None:
    count = sum(
        len(re.findall(r'^test "', path.read_text(encoding="utf-8"), re.MULTILINE))
        for path in (ROOT / "rules").glob("*.rules")
    )
    assert count > 0
    result = tagengine("test", "rules/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{count} passed, 0 failed"
    # PATH defaults to rules/
    default = tagengine("test")
    assert default.returncode == 0, default.stdout
    assert default.stdout == result.stdout
