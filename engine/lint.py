"""Ruleset-wide warnings: what loads and runs, but is probably not what the analyst meant.

The checker warns about single clauses (a glob written as a regular expression, ``or`` used
for a fallback value) and the compiler about conditions that are constant; this module adds
what only the whole ruleset shows: an element nothing uses, a rule no test exercises, a
ruleset without rules, and files next to the rules that the loader ignores. ``tagengine check``
prints warnings; ``--strict`` (``load_ruleset(strict=True)``) makes them errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine import ast
from engine.checker import FileFacts
from engine.diagnostics import Diagnostic, Span
from engine.ruleset import glob_regex, is_glob, trigger_text

__all__ = ["ignored_files", "ruleset_warnings"]


def _warning(facts: FileFacts | None, span: Span, message: str) -> Diagnostic:
    lines = facts.lines if facts is not None else []
    line = lines[span.line - 1] if 0 < span.line <= len(lines) else None
    return Diagnostic(span, message, "warning", line)


def ruleset_warnings(files: Sequence[FileFacts]) -> list[Diagnostic]:
    """The warnings about the ruleset as a whole (``files`` all parsed and checked)."""
    out: list[Diagnostic] = []
    used = {name for f in files for name, _, _, owner in f.element_refs if owner != name}
    for facts in files:
        for element in facts.elements:
            if element.name not in used:
                out.append(
                    _warning(
                        facts,
                        element.name_span,
                        f"element '{element.name}' is never used: no rule, element or "
                        "string token reads it",
                    )
                )
    rules = [(f, r) for f in files for r in f.rules]
    if files and not rules:
        first = files[0]
        out.append(
            _warning(
                first,
                Span(first.path, 1, 1, 1, 2),
                "this ruleset has no rules: no push will ever send anything",
            )
        )
    named = {name for f in files for name, _ in f.rule_refs}
    blocks: list[ast.Test | ast.Setup] = [t for f in files for t in f.tests]
    blocks += [s for f in files for s in f.setups]
    pushes = [step.value for b in blocks for step in b.steps if isinstance(step, ast.Push)]
    events = {name for value in pushes if (name := _event_of(value)) is not None}
    keys = {pair.key[0] for value in pushes for pair in value.pairs}
    for facts, rule in rules:
        if rule.name in named or _exercised(rule, events, keys):
            continue
        listens = (
            ", ".join(
                trigger_text(t.pattern if isinstance(t, ast.EventTrigger) else t.path)
                for t in rule.triggers
            )
            or "nothing"
        )
        out.append(
            _warning(
                facts,
                rule.name_span,
                f"rule '{rule.name}' has no test: no test pushes what it listens to "
                f"({listens}) or names it",
            )
        )
    return out


def _event_of(value: ast.ObjectExpr) -> str | None:
    for pair in value.pairs:
        if pair.key == ("event",) and isinstance(pair.value, ast.Literal):
            event = pair.value.value
            return event if isinstance(event, str) else None
    return None


def _exercised(rule: ast.Rule, events: set[str], keys: set[str]) -> bool:
    for trigger in rule.triggers:
        if isinstance(trigger, ast.EventTrigger):
            pattern = trigger.pattern
            if is_glob(pattern):
                match = glob_regex(pattern).match
                if any(match(event) for event in events):
                    return True
            elif pattern in events:
                return True
        elif trigger.path and str(trigger.path[0]) in keys:
            return True
    return False


# Names a rule file is given by mistake: the loader reads only `*.rules`.
_NEAR_SUFFIXES = (".rule", ".rls", ".rulez", ".txt", ".tagrules")


def ignored_files(folder: str | os.PathLike[str]) -> list[Diagnostic]:
    """Files in (or under) a ruleset folder that look like rules but are not loaded: a
    ``.rule`` or ``.RULES`` name, ``x.rules.txt``, or ``.rules`` files in a sub-folder."""
    root = Path(folder)
    if not root.is_dir():
        return []
    out: list[Diagnostic] = []
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if entry.is_dir() and not name.startswith("."):
            nested = sorted(_nested_rules(entry))
            for path in nested[:_MAX_NESTED]:
                out.append(
                    _at(
                        path,
                        f"ignored: {path} is in a sub-folder; only the .rules files "
                        f"directly in {root} are loaded (move it up, or load its folder)",
                    )
                )
            if len(nested) > _MAX_NESTED:  # counted, not listed
                more = len(nested) - _MAX_NESTED
                out.append(_at(entry, f"ignored: {more} more .rules files under {entry}"))
            continue
        if not entry.is_file() or name.endswith(".rules"):
            continue
        lowered = name.lower()
        if lowered.endswith(".rules") or ".rules." in lowered or lowered.endswith(_NEAR_SUFFIXES):
            if lowered.endswith(".txt") and ".rule" not in lowered:
                continue  # a plain text file, not a misnamed rule file
            stem = name[: lowered.find(".rule")] if ".rule" in lowered else entry.stem
            out.append(
                _at(
                    entry,
                    f"ignored: only files named *.rules are loaded (rename it to {stem}.rules)",
                )
            )
    return out


_MAX_NESTED = 20  # listed one by one in a sub-folder; the rest are counted


def _nested_rules(folder: Path) -> Iterable[Path]:
    # Two levels at most: a ruleset folder is shallow, and a wrong path (a project root
    # with node_modules) must not be walked.
    try:
        found = [*folder.glob("*.rules"), *folder.glob("*/*.rules")]
        return [p for p in found if p.is_file()]
    except OSError:
        return []


def _at(path: Path, message: str) -> Diagnostic:
    return Diagnostic(Span(str(path), 1, 1, 1, 2), message, "warning")
