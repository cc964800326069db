"""Hot reload (engine.watch): real files in a temporary folder, an engine serving pushes, and
waits on the watcher's rebuild counter with timeouts."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine, RuleError, Ruleset
from engine.watch import RulesWatcher, is_rules_file, watch_engine
from tests.conftest import SETTINGS

FAST = 0.05  # debounce for tests that do not test the debounce itself
WAIT = 10.0  # timeout for a rebuild that must come


def rule(name: str, event: str = "hit") -> str:
    return (
        f'rule "{name}" {{\n  on "{event}"\n'
        f'  send event {{ type: "t", data: {{ rule: "{name}" }} }}\n}}\n'
    )


def rules(*names: str) -> str:
    return "".join(rule(name) for name in names)


BROKEN = 'rule "broken" {\n  on "hit"\n  bogus\n}\n'  # error at line 3, column 3


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "rules"
    root.mkdir()
    (root / "00-settings.rules").write_text(SETTINGS)
    (root / "a.rules").write_text(rule("one"))
    return root


class Recorder:
    """on_change / on_error callbacks that remember what they were given."""

    def __init__(self) -> None:
        self.changes: list[Ruleset] = []
        self.errors: list[RuleError] = []

    def on_change(self, ruleset: Ruleset) -> None:
        self.changes.append(ruleset)

    def on_error(self, error: RuleError) -> None:
        self.errors.append(error)


@pytest.fixture
def served(folder: Path) -> Iterator[tuple[Engine, RulesWatcher, Recorder]]:
    recorder = Recorder()
    with Engine.from_path(folder, dry_run=True, environ={}) as engine:
        watcher = watch_engine(
            engine,
            folder,
            debounce=FAST,
            environ={},
            on_change=recorder.on_change,
            on_error=recorder.on_error,
        )
        with watcher:
            yield engine, watcher, recorder


def fired(engine: Engine, session: str = "s") -> list[str]:
    return engine.session(session).push({"event": "hit"}).fired


def save(watcher: RulesWatcher, path: Path, text: str) -> None:
    """Write ``path`` and wait until the watcher has reported the rebuild it causes."""
    before = watcher.rebuilds
    path.write_text(text)
    assert watcher.wait_for_rebuild(WAIT, after=before), f"no rebuild after writing {path.name}"


def test_a_saved_change_is_live_on_the_next_push(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    engine, watcher, recorder = served
    first = engine.session("s").push({"event": "hit"})
    assert first.fired == ["one"]
    assert watcher.version == first.version
    save(watcher, folder / "a.rules", rules("one", "two"))
    result = engine.session("s").push({"event": "hit"})
    assert result.fired == ["one", "two"]
    assert result.version != first.version
    assert result.version == watcher.version == engine.ruleset.version
    assert [r.version for r in recorder.changes] == [result.version]
    assert watcher.last_error is None and not recorder.errors


def test_a_broken_save_keeps_the_old_rules_and_reports_then_a_fix_swaps_in(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    engine, watcher, recorder = served
    old = engine.ruleset.version
    save(watcher, folder / "a.rules", BROKEN)
    assert fired(engine) == ["one"]
    assert engine.ruleset.version == watcher.version == old
    error = watcher.last_error
    assert error is not None and recorder.errors == [error]
    rendered = error.render()
    assert f"{folder / 'a.rules'}:3:3: error: " in rendered
    assert "bogus" in rendered and "^" in rendered  # the source line and a caret
    assert not recorder.changes

    save(watcher, folder / "a.rules", rule("fixed"))
    assert fired(engine) == ["fixed"]
    assert watcher.last_error is None
    assert [r.version for r in recorder.changes] == [engine.ruleset.version]


def test_fixing_back_to_the_serving_version_is_reported_as_a_change(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    engine, watcher, recorder = served
    old = engine.ruleset.version
    save(watcher, folder / "a.rules", BROKEN)
    save(watcher, folder / "a.rules", rule("one"))
    assert watcher.last_error is None
    assert [r.version for r in recorder.changes] == [old]


@pytest.mark.parametrize("how", ["rename", "delete"])
def test_renaming_or_deleting_a_file_takes_its_rules_away(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder], how: str
) -> None:
    engine, watcher, _ = served
    save(watcher, folder / "b.rules", rule("two"))
    assert fired(engine) == ["one", "two"]
    before = watcher.rebuilds
    if how == "rename":
        (folder / "b.rules").rename(folder / "b.txt")
    else:
        (folder / "b.rules").unlink()
    assert watcher.wait_for_rebuild(WAIT, after=before)
    assert fired(engine) == ["one"]
    assert engine.ruleset.files == (str(folder / "00-settings.rules"), str(folder / "a.rules"))


def test_an_atomic_save_is_picked_up(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    engine, watcher, _ = served
    before = watcher.rebuilds
    temporary = folder / ".a.rules.tmp-1234"
    temporary.write_text(rule("atomic"))
    os.replace(temporary, folder / "a.rules")
    assert watcher.wait_for_rebuild(WAIT, after=before)
    assert fired(engine) == ["atomic"]


def test_a_backup_and_rewrite_save_is_picked_up(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    # vim with backupcopy=no: rename the file to a backup, write a new one, delete the backup.
    engine, watcher, _ = served
    before = watcher.rebuilds
    (folder / "a.rules").rename(folder / "a.rules~")
    (folder / "a.rules").write_text(rule("rewritten"))
    (folder / "a.rules~").unlink()
    assert watcher.wait_for_rebuild(WAIT, after=before)
    assert fired(engine) == ["rewritten"]
    assert watcher.last_error is None


def test_swap_and_backup_files_are_ignored(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    engine, watcher, _ = served
    before = watcher.rebuilds
    for name in (".a.rules.swp", "a.rules~", "4913", "#a.rules#", "notes.txt", "a.rules.bak"):
        (folder / name).write_text(BROKEN)
    (folder / ".a.rules.swp").unlink()
    # Nothing relevant happened, so no rebuild may come (a bounded negative wait).
    assert not watcher.wait_for_rebuild(0.5, after=before)
    assert fired(engine) == ["one"]


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("a.rules", True),
        (".hidden.rules", True),
        ("a.rules~", False),
        (".a.rules.swp", False),
        (".#a.rules", False),
        ("4913", False),
        ("a.rules.tmp", False),
        (".rules", False),
    ],
)
def test_which_files_count(name: str, counts: bool) -> None:
    assert is_rules_file(name) is counts


def test_a_burst_of_saves_causes_few_rebuilds_and_never_a_half_written_ruleset(
    folder: Path,
) -> None:
    recorder = Recorder()
    per_version = 10
    with (
        Engine.from_path(folder, dry_run=True, environ={}) as engine,
        watch_engine(
            engine,
            folder,
            environ={},
            on_change=recorder.on_change,
            on_error=recorder.on_error,
        ) as watcher,
    ):
        assert watcher.debounce == 0.2  # the default, as editors get it
        before = watcher.rebuilds
        for version in range(50):
            # Written in pieces, flushed one by one, as a slow editor would: every state in
            # between is a half-written file.
            names = [f"v{version}-{k}" for k in range(per_version)]
            with (folder / "a.rules").open("w") as handle:
                for name in names:
                    handle.write(rule(name))
                    handle.flush()
            time.sleep(0.002)  # pacing: 50 saves in about 100 ms
        assert watcher.wait_for_rebuild(WAIT, after=before)
        # Then no more rebuilds come (a bounded negative wait, longer than the debounce).
        settled = watcher.rebuilds
        assert not watcher.wait_for_rebuild(4 * watcher.debounce, after=settled)
        assert 1 <= settled - before <= 3
        assert not recorder.errors
        for ruleset in recorder.changes:
            names = sorted(r.name for r in ruleset.rules)
            tag = names[0].split("-")[0]
            assert names == sorted(f"{tag}-{k}" for k in range(per_version))
        assert fired(engine) == [f"v49-{k}" for k in range(per_version)]


def test_a_writer_pausing_mid_file_is_never_read_as_final(folder: Path) -> None:
    recorder = Recorder()
    with (
        Engine.from_path(folder, dry_run=True, environ={}) as engine,
        watch_engine(
            engine, folder, environ={}, on_change=recorder.on_change, on_error=recorder.on_error
        ) as watcher,
    ):
        before = watcher.rebuilds
        with (folder / "a.rules").open("w") as handle:
            handle.write(rules("first", "second"))
            handle.write('rule "third" {\n  on "hit"\n')  # a rule cut in half
            handle.flush()
            # Pacing: longer than the pause before a build starts, shorter than the debounce.
            time.sleep(watcher.debounce / 2)
            handle.write('  send event { type: "t" }\n}\n')
        assert watcher.wait_for_rebuild(WAIT, after=before)
        assert not recorder.errors
        assert [[r.name for r in c.rules] for c in recorder.changes] == [
            ["first", "second", "third"]
        ]
        assert fired(engine) == ["first", "second", "third"]


def test_sessions_kept_values_and_counters_survive_a_swap(
    folder: Path, served: tuple[Engine, RulesWatcher, Recorder]
) -> None:
    engine, watcher, _ = served
    assert engine.sessions.peek("visitor") is None
    once = (
        "element campaign = event.campaign keep session\n"
        'rule "once" {\n  on "hit"\n  limit 1 per session\n'
        '  send event { type: "t", data: { campaign: campaign } }\n}\n'
    )
    save(watcher, folder / "a.rules", once)
    first = engine.session("visitor").push({"event": "hit", "campaign": "summer"})
    assert first.fired == ["once"]
    save(
        watcher,
        folder / "a.rules",
        once + 'rule "extra" {\n  on "hit"\n  send event { data: { c: campaign } }\n}\n',
    )
    assert engine.ruleset.version != first.version
    after = engine.session("visitor").push({"event": "hit"})  # no campaign in this push
    once_outcome = after.outcome("once")
    assert once_outcome is not None and once_outcome.status == "limited"  # the counter
    assert after.fired == ["extra"]
    assert after.sends[0].body["event"]["data"] == {"c": "summer"}  # the kept value
    assert after.state()["campaign"] == "summer"  # the session's data layer, from before
    assert len(engine.sessions) == 1


def test_a_watcher_without_a_ruleset_loads_on_start_and_reports_a_broken_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / "00-settings.rules").write_text(SETTINGS)
    (tmp_path / "a.rules").write_text(BROKEN)
    recorder = Recorder()
    with RulesWatcher(
        tmp_path, on_change=recorder.on_change, on_error=recorder.on_error, debounce=FAST
    ) as watcher:
        assert watcher.ruleset is None and watcher.version is None
        assert watcher.last_error is not None and len(recorder.errors) == 1
        before = watcher.rebuilds
        (tmp_path / "a.rules").write_text(rule("good"))
        assert watcher.wait_for_rebuild(WAIT, after=before)
        assert watcher.ruleset is not None and [r.name for r in watcher.ruleset.rules] == ["good"]
        assert recorder.changes == [watcher.ruleset]
    assert not watcher.running


def test_watching_one_file(tmp_path: Path) -> None:
    single = tmp_path / "only.rules"
    single.write_text(SETTINGS + rule("one"))
    recorder = Recorder()
    with RulesWatcher(
        single, on_change=recorder.on_change, on_error=recorder.on_error, debounce=FAST
    ) as watcher:
        before = watcher.rebuilds
        (tmp_path / "other.rules").write_text(rule("other"))
        assert not watcher.wait_for_rebuild(0.5, after=before)  # another file: not watched
        single.write_text(SETTINGS + rule("two"))
        assert watcher.wait_for_rebuild(WAIT, after=before)
        assert watcher.ruleset is not None and [r.name for r in watcher.ruleset.rules] == ["two"]


def test_stop_is_bounded_and_nothing_is_reported_after_it(folder: Path) -> None:
    recorder = Recorder()
    watcher = RulesWatcher(
        folder, on_change=recorder.on_change, on_error=recorder.on_error, debounce=FAST
    ).start()
    reported = len(recorder.changes)
    started = time.monotonic()
    watcher.stop(timeout=2.0)
    assert time.monotonic() - started < 2.5
    assert not watcher.running
    (folder / "a.rules").write_text(rule("late"))
    assert not watcher.wait_for_rebuild(0.3)
    assert len(recorder.changes) == reported


def test_a_callback_that_raises_does_not_stop_the_watcher(folder: Path) -> None:
    seen: list[str] = []

    def explode(ruleset: Ruleset) -> None:
        seen.append(ruleset.version)
        raise RuntimeError("boom")

    with RulesWatcher(
        folder, on_change=explode, on_error=lambda error: None, debounce=FAST
    ) as watcher:
        for name in ("two", "three"):
            save(watcher, folder / "a.rules", rule(name))
        assert len(seen) == 3  # the first load, then both saves
        assert watcher.ruleset is not None and watcher.ruleset.rules[0].name == "three"


def test_load_many_pushes_while_the_rules_are_rewritten(folder: Path) -> None:
    """A thread pushes continuously while the rules are rewritten 100 times, some broken: no
    push is lost or raises, and each runs entirely on one version the watcher reported (every
    rule of a version is named after it, so a mix would show)."""
    (folder / "b.rules").write_text(rule("base"))
    names: dict[str, frozenset[str]] = {}
    errors: list[RuleError] = []

    def remember(ruleset: Ruleset) -> None:
        names[ruleset.version] = frozenset(r.name for r in ruleset.rules)

    def content(k: int) -> str:
        return BROKEN if k % 9 == 4 else rules(*(f"k{k}-{i}" for i in range(3)))

    with Engine.from_path(folder, dry_run=True, environ={}) as engine:
        remember(engine.ruleset)
        with watch_engine(
            engine, folder, debounce=FAST, environ={}, on_change=remember, on_error=errors.append
        ) as watcher:
            done = threading.Event()
            seen: list[tuple[str, frozenset[str]]] = []
            failures: list[BaseException] = []
            attempts = 0

            def pusher() -> None:
                nonlocal attempts
                while not done.is_set():
                    attempts += 1
                    try:
                        result = engine.session(f"s{attempts % 4}").push({"event": "hit"})
                    except BaseException as error:  # reported by the assertions below
                        failures.append(error)
                        return
                    seen.append((result.version, frozenset(result.fired)))

            thread = threading.Thread(target=pusher, name="test-pusher")
            started = time.monotonic()
            thread.start()
            try:
                for k in range(1, 101):
                    before = watcher.rebuilds
                    target = folder / "a.rules"
                    if k % 2:  # half atomic saves, half in-place writes
                        (folder / ".a.tmp").write_text(content(k))
                        os.replace(folder / ".a.tmp", target)
                    else:
                        target.write_text(content(k))
                    if k % 5 == 0:  # every fifth save is waited for; the others coalesce
                        assert watcher.wait_for_rebuild(WAIT, after=before)
                    else:
                        time.sleep(0.005)  # pacing only
            finally:
                done.set()
                thread.join(WAIT)
            elapsed = time.monotonic() - started
    assert not thread.is_alive()
    assert not failures, failures[0]
    assert len(seen) == attempts  # no push lost
    assert attempts / elapsed >= 1_000, f"{attempts / elapsed:.0f} pushes/s"
    assert elapsed < 30
    for version, fired_rules in seen:
        assert version in names, f"a push ran on version {version}, never reported"
        assert fired_rules == names[version]  # the whole push ran on that one version
    assert len({version for version, _ in seen}) >= 10  # swaps happened under load
    assert errors  # the broken saves were reported
    assert engine.ruleset.version in names
    assert names[engine.ruleset.version] == {"base", "k100-0", "k100-1", "k100-2"}


# ---------------------------------------------------------------------------- resolved paths
@pytest.mark.parametrize("how", ["dotdot", "symlink", "symlink-file"])
def test_a_path_with_dotdot_or_a_symlink_watches_the_real_folder(
    folder: Path, tmp_path: Path, how: str
) -> None:
    if how == "dotdot":
        (tmp_path / "elsewhere").mkdir()
        given = tmp_path / "elsewhere" / ".." / "rules"
        target = folder / "a.rules"
    elif how == "symlink":
        given = tmp_path / "link"
        given.symlink_to(folder, target_is_directory=True)
        target = folder / "a.rules"
    else:
        given = tmp_path / "link.rules"
        target = folder / "a.rules"
        target.write_text(SETTINGS + rule("one"))
        given.symlink_to(target)
    recorder = Recorder()
    with RulesWatcher(
        given, on_change=recorder.on_change, on_error=recorder.on_error, debounce=FAST
    ) as watcher:
        assert watcher.watching == (target if how == "symlink-file" else folder.resolve())
        assert watcher.ruleset is not None
        before = watcher.rebuilds
        target.write_text((SETTINGS if how == "symlink-file" else "") + rules("one", "two"))
        assert watcher.wait_for_rebuild(WAIT, after=before), "a save in the real folder is missed"
        assert [r.name for r in watcher.ruleset.rules] == ["one", "two"]
        assert not recorder.errors


def test_a_folder_without_rules_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no rules here")
    recorder = Recorder()
    with RulesWatcher(
        tmp_path, on_change=recorder.on_change, on_error=recorder.on_error, debounce=FAST
    ) as watcher:
        assert watcher.ruleset is None
        assert watcher.last_error is not None
        assert watcher.last_error.diagnostics[0].message == f"no .rules file in {tmp_path}"
        before = watcher.rebuilds
        (tmp_path / "a.rules").write_text(SETTINGS + rule("first"))
        assert watcher.wait_for_rebuild(WAIT, after=before)
        assert [r.name for r in watcher.ruleset.rules] == ["first"]


# ---------------------------------------------------------------------------- in-place saves
def test_in_place_saves_are_never_published_empty_or_partial(folder: Path) -> None:
    """How VS Code and `cp` save: truncate the file, then write it. A writer that pauses after
    the truncation and between the pieces (longer than the debounce, as a loaded machine does)
    must never get an empty or partial ruleset published, nor an error reported."""
    per_version = 4
    target = folder / "a.rules"
    target.write_text(rules(*[f"v0-{k}" for k in range(per_version)]))
    recorder = Recorder()
    stop = threading.Event()
    saves: list[int] = []

    def writer() -> None:
        version = 0
        while not stop.is_set() and version < 12:
            version += 1
            text = rules(*[f"v{version}-{k}" for k in range(per_version)])
            with target.open("r+") as handle:
                handle.truncate(0)
                handle.flush()
                time.sleep(0.08)  # the empty file stands longer than the debounce
                half = len(text) // 2
                handle.write(text[:half])
                handle.flush()
                time.sleep(0.08)  # a partial file, too
                handle.write(text[half:])
            saves.append(version)
            time.sleep(0.03 * (version % 3))

    with RulesWatcher(
        folder, on_change=recorder.on_change, on_error=recorder.on_error, debounce=FAST
    ) as watcher:
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(30)
        stop.set()
        assert saves and saves[-1] == 12
        before = watcher.rebuilds
        # the last save is published (it may be already)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and (
            watcher.ruleset is None
            or sorted(r.name for r in watcher.ruleset.rules)
            != sorted(f"v12-{k}" for k in range(per_version))
        ):
            watcher.wait_for_rebuild(0.2, after=before)
            before = watcher.rebuilds
    assert not recorder.errors, [e.render() for e in recorder.errors]
    assert recorder.changes
    for ruleset in recorder.changes:
        names = sorted(r.name for r in ruleset.rules)
        assert names, "an empty ruleset was published"
        tag = names[0].split("-")[0]
        assert names == sorted(f"{tag}-{k}" for k in range(per_version)), names
    assert sorted(r.name for r in recorder.changes[-1].rules) == [
        f"v12-{k}" for k in range(per_version)
    ]
