"""Loading folders: file order, caches keyed by content, the on-disk cache, versions."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine import RuleError, load_ruleset, loader
from tests.conftest import SETTINGS


def write_folder(folder: Path, rules: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "00_settings.rules").write_text(SETTINGS)
    for index in range(rules):
        (folder / f"r{index}.rules").write_text(
            f'rule "R{index}" {{\n  on "e{index}"\n  send event {{ type: "t{index}" }}\n}}\n'
        )


def test_a_folder_loads_its_rules_files_in_name_order(tmp_path: Path) -> None:
    write_folder(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("not rules")
    ruleset = load_ruleset(tmp_path)
    assert [Path(f).name for f in ruleset.files] == [
        "00_settings.rules",
        "r0.rules",
        "r1.rules",
        "r2.rules",
    ]
    assert [r.name for r in ruleset.rules] == ["R0", "R1", "R2"]
    assert ruleset.edge is not None and ruleset.edge.datastream == "ds-1"


def test_a_missing_folder_is_a_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as caught:
        load_ruleset(tmp_path / "nope")
    assert "no such file or folder" in caught.value.diagnostics[0].message


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bad.rules").write_bytes(b'element a = 1\nelement b = "\xff"\n')
    with pytest.raises(RuleError) as caught:
        load_ruleset(tmp_path)
    assert (
        caught.value.diagnostics[0]
        .render()
        .startswith(f"{tmp_path / 'bad.rules'}:2:1: error: file is not UTF-8 text")
    )


def test_reload_parses_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path, 5)
    loader.clear_cache()
    first = load_ruleset(tmp_path)
    parsed: list[str] = []
    real_parse = loader.parse

    def counting_parse(text: str, filename: str = "<rules>") -> engine.parser.ParseResult:
        parsed.append(Path(filename).name)
        return real_parse(text, filename)

    monkeypatch.setattr(loader, "parse", counting_parse)
    same = load_ruleset(tmp_path)
    assert parsed == []
    assert same.version == first.version
    (tmp_path / "r3.rules").write_text(
        'rule "R3" {\n  on "changed"\n  send event { type: "x" }\n}\n'
    )
    changed = load_ruleset(tmp_path)
    assert parsed == ["r3.rules"]
    assert changed.version != first.version
    assert changed.match("changed")[0].name == "R3"
    assert first.match("e3")[0].name == "R3"  # the old snapshot is untouched


def test_disk_cache_skips_parsing_in_a_new_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, cache = tmp_path / "rules", tmp_path / "cache"
    write_folder(rules, 3)
    loader.clear_cache()
    warm = load_ruleset(rules, cache_dir=cache)
    assert len(list(cache.glob("*.ast"))) == 4
    loader.clear_cache()  # as if the process restarted

    def no_parse(text: str, filename: str = "<rules>") -> engine.parser.ParseResult:
        raise AssertionError(f"parsed {filename} despite the disk cache")

    monkeypatch.setattr(loader, "parse", no_parse)
    again = load_ruleset(rules, cache_dir=cache)
    assert again.version == warm.version
    assert [r.name for r in again.rules] == [r.name for r in warm.rules]


def test_a_corrupt_disk_cache_entry_is_parsed_again(tmp_path: Path) -> None:
    rules, cache = tmp_path / "rules", tmp_path / "cache"
    write_folder(rules, 1)
    loader.clear_cache()
    load_ruleset(rules, cache_dir=cache)
    for entry in cache.glob("*.ast"):
        entry.write_bytes(b"garbage")
    loader.clear_cache()
    assert [r.name for r in load_ruleset(rules, cache_dir=cache).rules] == ["R0"]


def test_broken_file_does_not_hide_others_problems_or_invent_unknowns(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text("element a = state.x |\n")  # syntax error
    (tmp_path / "b.rules").write_text("element b = a | lowr\n")
    with pytest.raises(RuleError) as caught:
        load_ruleset(tmp_path)
    messages = [d.message for d in caught.value.diagnostics]
    assert len(messages) == 2
    assert messages[0] == "the file ends after '|': a filter must follow it"
    assert messages[1] == "unknown filter 'lowr' (did you mean 'lower'?)"


def test_env_is_read_on_every_load_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s.rules").write_text('edge { datastream: env("TE_TEST_DS", "x") }\n')
    monkeypatch.setenv("TE_TEST_DS", "one")
    assert load_ruleset(tmp_path).edge.datastream == "one"  # type: ignore[union-attr]
    monkeypatch.setenv("TE_TEST_DS", "two")
    assert load_ruleset(tmp_path).edge.datastream == "two"  # type: ignore[union-attr]


def test_repo_rules_folder_loads() -> None:
    root = Path(__file__).resolve().parent.parent
    ruleset = load_ruleset(root / "rules")
    assert len(ruleset.rules) >= 8
    assert len(ruleset.tests) >= len(ruleset.rules)
