"""The trigger index (exact names, globs, ``on change`` paths) answers exactly what a scan of
every rule answers: the same rules, in evaluation order, each once."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from engine.diagnostics import Span
from engine.ruleset import CompiledRule, Ruleset, glob_regex, is_glob

Path = tuple[str | int, ...]

NAMES = ["page.view", "page.viewed", "cart.add", "cart.remove", "cart", "a.b.c", "x", "ab", ""]
GLOBS = ["*", "page.*", "cart.*", "cart*", "*.view", "a.?.c", "?", "a*b", "[x]", "p?ge.*", "*.*"]
STEPS: list[str | int] = ["cart", "total", "items", "user", "tier", 0, 1, "page", "a"]


def _reference(ruleset: Ruleset, event: str | None, changed: Iterable[Path]) -> list[CompiledRule]:
    """What every rule's triggers say, checked one by one (the index must agree)."""
    touched = tuple(changed)
    found = []
    for rule in ruleset.rules:
        by_event = bool(event) and any(
            (glob_regex(p).match(event) is not None) if is_glob(p) else p == event
            for p in rule.events
        )
        by_change = any(_touches(t, w) for t in touched for w in rule.changes)
        if (by_event or by_change) and rule not in found:
            found.append(rule)
    return found


def _touches(changed: Path, watched: Path) -> bool:
    n = min(len(changed), len(watched))
    return changed[:n] == watched[:n]


def _path(rng: random.Random, longest: int = 4) -> Path:
    return tuple(rng.choice(STEPS) for _ in range(rng.randint(0, longest)))


def _rule(rng: random.Random, index: int) -> CompiledRule:
    events: list[str] = []
    changes: list[Path] = []
    for _ in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.4:
            events.append(rng.choice(NAMES[:-1]))
        elif kind < 0.7:
            events.append(rng.choice(GLOBS))
        else:
            changes.append(_path(rng))
    file = f"f{rng.randint(0, 2)}.rules"
    return CompiledRule(
        name=f"R{index}",
        order=rng.choice((10, 50, 50, 90)),
        file=file,
        position=index,
        span=Span(file, index + 1, 1, index + 1, 2),
        events=tuple(events),
        changes=tuple(changes),
        conditions=(),
        sample=None,
        limits=(),
        actions=(),
    )


def _ruleset(rules: list[CompiledRule]) -> Ruleset:
    return Ruleset(rules, {}, (), files=(), version="v")


@pytest.mark.parametrize("seed", range(40))
def test_the_index_matches_a_scan_of_every_rule(seed: int) -> None:
    rng = random.Random(seed)
    ruleset = _ruleset([_rule(rng, i) for i in range(rng.randint(0, 60))])
    for _ in range(150):
        event = rng.choice([*NAMES, None, f"n{rng.randint(0, 9)}.view"])
        changed = [_path(rng, 5) for _ in range(rng.randint(0, 4))]
        expected = _reference(ruleset, event, changed)
        got = ruleset.match(event, changed)
        assert [r.name for r in got] == [r.name for r in expected], (event, changed)
        assert all(a is b for a, b in zip(got, expected, strict=True))
        assert ruleset.match(event, iter(changed)) == got  # any iterable of paths
        skipped = {entry.rule for entry in ruleset.not_triggered(event, changed)}
        assert skipped == {r.name for r in ruleset.rules} - {r.name for r in got}


def _watching(name: str, position: int, *events: str, change: Path | None = None) -> CompiledRule:
    span = Span("f.rules", position + 1, 1, position + 1, 2)
    changes = () if change is None else (change,)
    return CompiledRule(name, 50, "f.rules", position, span, events, changes, (), None, (), ())


def test_change_paths_touch_parents_and_children_only() -> None:
    watch = [("cart", "total"), ("cart",), ("cart", "items", 0, "sku"), (), ("user", "tier")]
    ruleset = _ruleset([_watching(f"R{i}", i, change=w) for i, w in enumerate(watch)])

    def names(*changed: Path) -> list[str]:
        return [r.name for r in ruleset.match(None, changed)]

    assert names() == []
    assert names(("cart",)) == ["R0", "R1", "R2", "R3"]  # a parent touches what is under it
    assert names(("cart", "total", "net")) == ["R0", "R1", "R3"]  # and a child its parents
    assert names(("cart", "items", 1)) == ["R1", "R3"]
    assert names(("carts",)) == ["R3"]  # only the whole-state watcher
    assert names((), ("user", "tier")) == ["R0", "R1", "R2", "R3", "R4"]


def test_glob_answers_are_remembered_per_name_and_bounded() -> None:
    rules = [_watching(f"G{i}", i, f"e{i}.*") for i in range(50)]
    ruleset = _ruleset([*rules, _watching("All", 99, "*", "e3.x")])
    for _ in range(3):
        assert [r.name for r in ruleset.match("e3.x")] == ["G3", "All"]
    for i in range(10_000):  # many more names than the memo keeps: still right
        assert [r.name for r in ruleset.match(f"e7.{i}")] == ["G7", "All"]
    assert [r.name for r in ruleset.match("e3.x")] == ["G3", "All"]
    assert [r.name for r in ruleset.match("other")] == ["All"]
