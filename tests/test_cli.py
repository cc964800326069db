"""``tagengine check``, as a user runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_check_passes_on_a_good_folder_with_a_summary(tmp_path: Path) -> None:
    (tmp_path / "s.rules").write_text(SETTINGS)
    (tmp_path / "r.rules").write_text(
        'element a = state.x\nrule "R" { on "e"; send event { type: "t", data: { a: a } } }\n'
        'test "T" {\n  push { event: "e" }\n  expect 1 send\n}\n'
    )
    result = run("check", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "1 rule, 1 element, 1 test in 2 files"


def test_check_prints_warnings_and_strict_fails_on_them(tmp_path: Path) -> None:
    (tmp_path / "s.rules").write_text(SETTINGS)
    (tmp_path / "r.rules").write_text(
        'element a = state.x\nrule "R" { on "e"; send event { type: "t" } }\n'
        'test "T" {\n  push { event: "e" }\n  expect 1 send\n}\n'
    )
    name = tmp_path / "r.rules"
    result = run("check", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        f"{name}:1:9: warning: element 'a' is never used: no rule, element or string token "
        "reads it\n"
        " 1 | element a = state.x\n"
        "   |         ^\n"
        "1 rule, 1 element, 1 test in 2 files; 1 warning\n"
    )
    strict = run("check", "--strict", str(tmp_path))
    assert strict.returncode == 1
    assert strict.stdout == (
        f"{name}:1:9: error: element 'a' is never used: no rule, element or string token "
        "reads it\n"
        " 1 | element a = state.x\n"
        "   |         ^\n"
        "1 error in 1 file\n"
    )
    assert run("test", "--strict", str(tmp_path)).returncode == 1
    assert run("test", str(tmp_path)).returncode == 0


def test_check_prints_every_diagnostic_and_fails(tmp_path: Path) -> None:
    (tmp_path / "s.rules").write_text(SETTINGS)
    (tmp_path / "r.rules").write_text(
        'element cart_total = 1\nrule "R" {\n  on "e"\n  when cart_totl > 0\n'
        '  send evnt { type: "t" }\n}\n'
    )
    result = run("check", str(tmp_path))
    assert result.returncode == 1
    name = tmp_path / "r.rules"
    assert result.stdout == (
        f"{name}:4:8: error: unknown element 'cart_totl' (did you mean 'cart_total'?)\n"
        " 4 |   when cart_totl > 0\n"
        "   |        ^~~~~~~~~\n"
        f"{name}:5:8: error: unknown destination 'evnt'; expected 'event' or 'sitecore' "
        "(did you mean 'event'?)\n"
        ' 5 |   send evnt { type: "t" }\n'
        "   |        ^~~~\n"
        "2 errors in 1 file\n"
    )


def test_check_defaults_to_rules_folder(tmp_path: Path) -> None:
    result = run("check", cwd=ROOT)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("files")
    empty = run("check", cwd=tmp_path)
    assert empty.returncode == 1
    assert "no such file or folder: rules" in empty.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "tagengine"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "check" in result.stdout
