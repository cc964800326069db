"""Garbage collection (README, "Garbage collection"): an engine moves its ruleset out of the
cyclic collector's way (``gc.freeze()``) when it takes one, at construction and on a reload,
and a ruleset holds no reference cycle, so that the old one is freed all the same."""

from __future__ import annotations

import gc
import random
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from benchmarks.stalls import make_pushes, ruleset_sources
from engine import Engine, Ruleset, collector
from engine.collector import freeze_survivors, stop_freezing_survivors
from engine.loader import build_ruleset, clear_cache, load_ruleset
from engine.stores.memory import MemorySessions

RULES = 60  # the ten rules the pushes fire, and fifty more (globs and change paths among them)


@pytest.fixture(autouse=True)
def fresh_loader_cache() -> Iterator[None]:
    # A file compiled by an earlier test would come from the loader's cache, already frozen.
    clear_cache()
    yield
    clear_cache()


def sources(variant: int = 0) -> list[tuple[str, bytes]]:
    """The benchmark's ruleset; ``variant`` changes every rule file (a reload compiles them
    all again), the rules keeping their names (the sessions' firing history of them too)."""
    files = ruleset_sources(RULES, n_files=5)
    mark = f"\n# variant {variant}\n".encode()
    return (
        [(n, t + mark) if n.startswith("rules-") else (n, t) for n, t in files]
        if variant
        else files
    )


def write(folder: Path, files: Iterable[tuple[str, bytes]]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)
    return folder


def parts(ruleset: Ruleset) -> list[object]:
    """The ruleset's own objects that the collector tracks: rules, conditions, actions and
    their functions, elements."""
    found: list[object] = [ruleset, *ruleset.elements.values()]
    for rule in ruleset.rules:
        found += [rule, *rule.conditions, *rule.actions]
        found += [c.fn for c in rule.conditions] + [a.build for a in rule.actions]
    return [o for o in found if gc.is_tracked(o)]


def in_generations(objects: Iterable[object]) -> list[object]:
    """Those of ``objects`` a collection would scan (not frozen)."""
    tracked = {id(o) for o in gc.get_objects()}
    return [o for o in objects if id(o) in tracked]


def push_all(engine: Engine, sessions: int = 8) -> int:
    """Every push of the benchmark's mix, over a few sessions; how many rules fired."""
    fired = 0
    for n, item in enumerate(make_pushes(RULES, random.Random(15), distinct=64)):
        fired += len(engine.session(f"s{n % sessions}").push(item).fired)
    return fired


def objects_alive() -> int:
    """Every object the collector knows of: in its generations or frozen."""
    return len(gc.get_objects()) + gc.get_freeze_count()


# ------------------------------------------------------------------ freezing
def test_an_engine_freezes_the_ruleset_it_is_given() -> None:
    ruleset = build_ruleset(sources(), environ={})
    mine = parts(ruleset)
    assert len(mine) > RULES * 3
    assert len(in_generations(mine)) == len(mine)  # a load alone freezes nothing
    before = gc.get_freeze_count()
    with Engine(ruleset, dry_run=True):
        assert in_generations(mine) == []
        assert gc.get_freeze_count() >= before + len(mine)


def test_from_path_freezes_the_load_before_the_collector_runs(tmp_path: Path) -> None:
    folder = write(tmp_path / "rules", sources())
    with Engine.from_path(folder, dry_run=True) as engine:
        assert engine.freeze_gc
        assert in_generations(parts(engine.ruleset)) == []
    # The loader on its own freezes only when asked.
    clear_cache()
    assert in_generations(parts(load_ruleset(folder, environ={}, freeze=True))) == []
    clear_cache()
    loaded = parts(load_ruleset(folder, environ={}))
    assert len(in_generations(loaded)) == len(loaded)


def test_freeze_gc_false_leaves_the_collector_alone(tmp_path: Path) -> None:
    folder = write(tmp_path / "rules", sources())
    gc.collect()
    before = gc.get_freeze_count()  # frozen objects may only be freed meanwhile
    with Engine.from_path(folder, dry_run=True, freeze_gc=False) as engine:
        assert not engine.freeze_gc
        mine = parts(engine.ruleset)
        assert len(in_generations(mine)) == len(mine)
        swapped = build_ruleset(sources(1), environ={})
        engine.ruleset = swapped  # a swap: no freeze either
        mine = parts(swapped)
        assert len(in_generations(mine)) == len(mine)
        watcher = engine.watch(debounce=0.05)
        mark = watcher.rebuilds
        write(folder, sources(2))
        assert watcher.wait_for_rebuild(10.0, after=mark)
        assert engine.ruleset.version != swapped.version
        mine = parts(engine.ruleset)
        assert len(in_generations(mine)) == len(mine)
        assert push_all(engine) > 0
        assert gc.get_freeze_count() <= before


def test_a_swapped_in_ruleset_is_frozen() -> None:
    with Engine(build_ruleset(sources(), environ={}), dry_run=True) as engine:
        built = build_ruleset(sources(1), environ={})
        fresh = in_generations(parts(built))  # the files that changed (the rest: cached)
        assert len(fresh) > RULES * 3
        engine.ruleset = built
        assert in_generations(fresh) == []


def test_a_hot_reload_freezes_the_new_ruleset(tmp_path: Path) -> None:
    folder = write(tmp_path / "rules", sources())
    with Engine.from_path(folder, dry_run=True) as engine:
        first = engine.ruleset.version
        watcher = engine.watch(debounce=0.05)
        mark = watcher.rebuilds
        write(folder, sources(1))
        assert watcher.wait_for_rebuild(10.0, after=mark)
        assert engine.ruleset.version != first
        assert in_generations(parts(engine.ruleset)) == []


def test_pushes_give_the_same_results_frozen_or_not() -> None:
    def outcomes(freeze: bool) -> list[tuple[list[str], list[tuple[str, str]]]]:
        clear_cache()
        engine = Engine(build_ruleset(sources(), environ={}), dry_run=True, freeze_gc=freeze)
        with engine:
            results = []
            for n, item in enumerate(make_pushes(RULES, random.Random(15), distinct=64)):
                result = engine.session(f"s{n % 8}").push(item)
                sends = [(send.rule, send.destination) for send in result.sends]
                results.append((list(result.fired), sends))
            return results

    frozen = outcomes(True)
    assert sum(bool(fired) for fired, _ in frozen) > 20
    assert frozen == outcomes(False)


# ------------------------------------------------------------------ nothing is kept for good
def test_a_ruleset_holds_no_reference_cycle() -> None:
    """A frozen object is freed only by reference counting: a cycle in a ruleset would keep
    every ruleset a reload replaces for the life of the process. Conditions and builders are
    checked after they ran (each is rewritten on its first call)."""
    engine = Engine(build_ruleset(sources(), environ={}), dry_run=True)
    assert push_all(engine) > 0
    ruleset = engine.ruleset
    upgraded = [c for r in ruleset.rules for c in r.conditions if type(c.fn).__name__ != "_Upgrade"]
    assert upgraded  # the pushes did run conditions
    refs = [weakref.ref(o) for rule in ruleset.rules for o in (*rule.conditions, *rule.actions)]
    engine.close()
    collecting = gc.isenabled()
    gc.disable()
    try:
        del engine, ruleset, upgraded
        clear_cache()
        assert [ref() for ref in refs if ref() is not None] == []
    finally:
        if collecting:
            gc.enable()


def test_twenty_reloads_do_not_pile_up() -> None:
    """Every rule file replaced on each reload, pushes firing rules in between: what the
    collector knows of (its generations and the frozen objects) stays the size of one
    ruleset, with nothing collected but by reference counting."""
    engine = Engine(build_ruleset(sources(), environ={}), dry_run=True)
    one_ruleset = len(parts(engine.ruleset))
    sizes: list[int] = []
    frozen: list[int] = []
    versions: list[str] = []
    with engine:
        for variant in range(1, 21):
            push_all(engine)
            # As the watcher does: built frozen, then swapped in.
            engine.ruleset = build_ruleset(sources(variant), environ={}, freeze=True)
            versions.append(engine.ruleset.version)
            gc.collect()  # only what is not frozen: young garbage of the pushes
            sizes.append(objects_alive())
            frozen.append(gc.get_freeze_count())
    assert len(set(versions)) == 20
    # One replaced ruleset kept would add a ruleset's worth of objects per reload.
    assert sizes[-1] - sizes[4] < one_ruleset // 2, sizes
    assert frozen[-1] - frozen[4] < one_ruleset // 2, frozen


def test_sessions_frozen_at_a_reload_are_freed_when_they_go() -> None:
    """Sessions alive at a freeze are frozen with the ruleset: they must go by reference
    counting when the store drops them (here: evicted, the store holding 100)."""
    ruleset = build_ruleset(sources(), environ={})
    engine = Engine(ruleset, dry_run=True, sessions=MemorySessions(max_sessions=100))
    sizes: list[int] = []
    with engine:
        for round_ in range(6):
            for n in range(300):
                engine.session(f"r{round_}-{n}").push({"event": "page.view", "page": {"n": n}})
            engine.ruleset = ruleset  # as a reload does: everything alive now is frozen
            gc.collect()
            sizes.append(objects_alive())
    assert len(engine.sessions) == 100
    # Each round makes 300 sessions (several objects each): kept, they would add 900+.
    assert sizes[-1] - sizes[1] < 300, sizes


# ------------------------------------------------------------------ the opt-in for the rest
@pytest.fixture
def survivors() -> Iterator[None]:
    yield
    stop_freezing_survivors()


@pytest.mark.usefixtures("survivors")
def test_freeze_survivors_freezes_after_a_slow_full_collection_only() -> None:
    gc.collect()
    freeze_survivors(3600.0)  # no collection is that slow: nothing is frozen
    fresh = [[n] for n in range(1000)]
    gc.collect()
    assert len(in_generations(fresh)) == len(fresh)
    freeze_survivors(1e-9)  # every full collection is slower: what survives it is frozen
    gc.collect(1)  # a young collection never freezes
    assert len(in_generations(fresh)) == len(fresh)
    gc.collect()
    assert in_generations(fresh) == []
    assert gc.callbacks.count(collector._watch) == 1  # set twice, hooked once
    stop_freezing_survivors()
    assert collector._watch not in gc.callbacks
    later = [[n] for n in range(1000)]
    gc.collect()
    assert len(in_generations(later)) == len(later)
    with pytest.raises(ValueError):
        freeze_survivors(0)


@pytest.mark.usefixtures("survivors")
def test_freeze_survivors_freezes_no_garbage_but_keeps_later_cycles() -> None:
    freeze_survivors(1e-9)

    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    gc.collect()
    node = Node()
    ref = weakref.ref(node)
    gc.collect()  # alive: frozen
    assert in_generations([node]) == []
    del node
    assert ref() is not None  # dead in a cycle, frozen: kept for good (what the docs say)
    cycle = Node()
    ref = weakref.ref(cycle)
    del cycle
    gc.collect()  # garbage at the collection: freed, not frozen
    assert ref() is None
