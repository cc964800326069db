"""What the outbox keeps when things go wrong: journals of SIGKILLed processes with the
``-wal`` removed, flipped bytes, cut-off files (resync and quarantine), file modes, the
backlog's figures, several delivering processes on one file, and reading in on demand
(``ingest``, ``adopt``). Dead processes are real children killed with SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.stores import journal
from engine.stores import sqlite as outbox_module
from engine.stores.sqlite import Outbox, _owner_alive
from tests.test_outbox import ROOT, make_request

pytestmark = pytest.mark.skipif(not journal.AVAILABLE, reason="the journal needs flock")

T0 = 1_700_000_000.0

# Appends COUNT sends one push at a time (claiming a few every CLAIM_EVERY, which reads the
# journal in), says "ready" and waits to be killed.
APPEND_CHILD = """
import sys, time
import engine.stores.sqlite as outbox_module
from engine.stores.sqlite import Outbox
from tests.test_outbox import make_request

path, count, claim_every, rotate_at = sys.argv[1], *map(int, sys.argv[2:5])
if rotate_at:
    outbox_module._ROTATE_AT = rotate_at
box = Outbox(path)
for n in range(count):
    box.append_many([(make_request(n), f"s{n % 7}")])
    if claim_every and (n + 1) % claim_every == 0:
        box.claim(limit=3)
print("ready", flush=True)
time.sleep(600)
"""

# Opens the outbox (adopting what dead processes left), claims up to LIMIT entries (0: none),
# prints their ids and waits to be killed.
HOLD_CHILD = """
import sys, time
from engine.stores.sqlite import Outbox

box = Outbox(sys.argv[1])
claimed = box.claim(limit=int(sys.argv[2])) if int(sys.argv[2]) else []
print("ready " + " ".join(str(entry.id) for entry in claimed), flush=True)
time.sleep(600)
"""


class Child:
    """A Python child process running one of the scripts above."""

    def __init__(self, script: str, *args: object) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def ready(self) -> list[int]:
        """Wait for its "ready" line; the ids it printed."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("ready"):
            self.process.kill()
            _, err = self.process.communicate(timeout=30)
            pytest.fail(f"the child failed: {line!r} {err.decode()}")
        return [int(word) for word in line.split()[1:]]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        _, err = self.process.communicate(timeout=30)
        assert self.process.returncode == -signal.SIGKILL, err.decode()

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
            child.process.communicate(timeout=30)


def spawn(children: list[Child], script: str, *args: object) -> Child:
    child = Child(script, *args)
    children.append(child)
    return child


def journals(path: Path) -> list[Path]:
    return journal.journal_files(str(path))


def lose_wal(path: Path) -> None:
    """What an operator (or a tidy-up script) does after a crash: remove the -wal and -shm."""
    assert Path(f"{path}-wal").exists()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def intake_in_database_file(path: Path) -> dict[str, int]:
    """The intake rows the database file itself holds (not its -wal)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    try:
        return dict(conn.execute("SELECT name, offset FROM intake").fetchall())
    finally:
        conn.close()


def numbers(entries: list[outbox_module.Entry]) -> list[int]:
    return sorted(int(str(entry.event_id)[4:]) for entry in entries)


def append_and_kill(children: list[Child], path: Path, count: int, **options: int) -> Path:
    """A child appends ``count`` sends and is SIGKILLed; its journal, left behind."""
    child = spawn(
        children,
        APPEND_CHILD,
        path,
        count,
        options.get("claim_every", 0),
        options.get("rotate_at", 0),
    )
    child.ready()
    child.kill()
    (left,) = journals(path)
    return left


def record_spans(path: Path) -> list[tuple[int, int]]:
    """(start, stop) of each record of the journal at ``path``."""
    data = path.read_bytes()
    spans, position = [], 0
    while length := journal.record_length(data[position : position + 16]):
        spans.append((position, position + length))
        position += length
    return spans


# -- 2. a journal outlives the -wal ---------------------------------------------------------


def test_a_lost_wal_loses_no_journaled_send(tmp_path: Path, children: list[Child]) -> None:
    """The issue's case: the child's intake row and everything it read in were in the -wal
    only; with the -wal gone, its journal is read from its start (400 of 400 kept)."""
    path = tmp_path / "o.db"
    Outbox(path).close()  # the file and its schema exist, checkpointed
    left = append_and_kill(children, path, 400, claim_every=50)
    lose_wal(path)
    assert left.name not in intake_in_database_file(path)  # the row was in the -wal only
    # Now a process adopts it and is killed in turn, before any close could checkpoint: the
    # journal was deleted only once the database file held its sends.
    holder = spawn(children, HOLD_CHILD, path, 0)
    holder.ready()
    assert journals(path) == []
    holder.kill()
    lose_wal(path)
    with Outbox(path) as box:
        entries = box.pending()
        assert numbers(entries) == list(range(400))  # none lost, none twice
        assert {entry.state for entry in entries} == {"pending"}
        assert box.backlog().quarantined == 0


def test_a_rotated_journal_is_deleted_only_once_the_database_file_holds_it(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    # A record is ~600 bytes: a new journal every few claims, the old ones deleted.
    append_and_kill(children, path, 300, claim_every=5, rotate_at=3000)
    rows = intake_in_database_file(path)
    assert rows and journals(path)[0].name in rows  # registered when it was started
    lose_wal(path)
    with Outbox(path) as box:
        box.recover()  # the killed child's claims
        entries = box.pending()
    assert numbers(entries) == list(range(300))
    assert journals(path) == []


def test_an_orphan_with_no_intake_row_is_read_from_its_start(tmp_path: Path) -> None:
    """A journal whose row is gone, its sends already read in: they are read in again
    (at-least-once; Edge de-duplicates on xdm._id) rather than lost."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.append_many([(make_request(n), "s") for n in range(3)])
    assert box.counts()["pending"] == 3  # read in
    assert box._journal is not None and box._conn is not None
    box._conn.execute("DELETE FROM intake")  # as a lost -wal leaves it
    box._journal.close()  # the process "dies": its journal is unlocked and left behind
    box._closed = True
    with Outbox(path) as reopened:
        assert numbers(reopened.pending()) == [0, 0, 1, 1, 2, 2]
    assert journals(path) == []


def test_a_journal_is_kept_while_the_checkpoint_cannot_complete(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        box = Outbox(path, busy_timeout=0.2)
        box.append_many([(make_request(n), "s") for n in range(2)])
        assert box.counts()["pending"] == 2
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM entries").fetchall()  # holds a snapshot
        box.append_many([(make_request(2), "s")])
        box.close()  # reads the rest in, but cannot checkpoint past the reader
        assert len(journals(path)) == 1  # kept
        reader.execute("COMMIT")
        with Outbox(path) as reopened:  # adopts it at its end: nothing twice
            assert numbers(reopened.pending()) == [0, 1, 2]
        assert journals(path) == []
    finally:
        reader.close()


# -- 1. resync and quarantine -----------------------------------------------------------------


def test_a_flipped_byte_costs_one_record_not_the_rest(
    tmp_path: Path, children: list[Child], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    left = append_and_kill(children, path, 400)
    spans = record_spans(left)
    assert len(spans) == 400
    start, stop = spans[200]
    data = bytearray(left.read_bytes())
    data[(start + stop) // 2] ^= 0x20
    left.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="engine.outbox"), Outbox(path) as box:
        remaining = numbers(box.pending())
        backlog = box.backlog()
        chunks = box.quarantined()
        quarantine = box.quarantine_path
    assert remaining == [n for n in range(400) if n != 200]
    assert backlog.quarantined == 1 and backlog.pending == 399
    assert [(c.journal, c.offset, c.length, c.reason) for c in chunks] == [
        (left.name, start, stop - start, "unreadable")
    ]
    assert quarantine == f"{path}-quarantine"
    kept = Path(quarantine).read_bytes()
    assert kept[chunks[0].position : chunks[0].position + chunks[0].length] == data[start:stop]
    (warning,) = [r for r in caplog.records if r.name == "engine.outbox"]
    assert warning.levelno == logging.WARNING
    assert str(left) in warning.getMessage() and "1 unreadable chunk(s)" in warning.getMessage()
    assert f"{stop - start} byte(s)" in warning.getMessage()
    assert journals(path) == []


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_a_journal_cut_in_a_record_keeps_every_record_before_the_cut(
    tmp_path: Path, children: list[Child], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    path = tmp_path / "o.db"
    left = append_and_kill(children, path, 400)
    start, _ = record_spans(left)[300]
    cut = start + 25
    if how == "truncated":  # the file ends in the record
        os.truncate(left, cut)
    else:  # the record's rest and everything after is zeros: a kill in the middle of a copy
        size = left.stat().st_size
        with open(left, "r+b") as file:
            file.seek(cut)
            file.write(bytes(size - cut))
    with caplog.at_level(logging.WARNING, logger="engine.outbox"), Outbox(path) as box:
        assert numbers(box.pending()) == list(range(300))
        chunks = box.quarantined()
    assert [(c.offset, c.length, c.reason) for c in chunks] == [(start, 25, "torn")]
    (warning,) = [r for r in caplog.records if r.name == "engine.outbox"]
    assert str(left) in warning.getMessage() and "cut short at the end" in warning.getMessage()


def test_a_process_reading_its_own_journal_passes_over_foreign_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its journal holds whole records only; bytes that are not one (written by something
    else) are quarantined and the records after them still delivered, whatever slice of a
    backlog they fall in."""
    monkeypatch.setattr(outbox_module, "_INGEST_CHUNK", 1500)
    with caplog.at_level(logging.WARNING, logger="engine.outbox"), Outbox(tmp_path / "o.db") as box:
        box.append_many([(make_request(n), "s") for n in range(8)])
        assert box._journal is not None
        spans = record_spans(Path(box._journal.path))
        for n in (2, 3):  # two records damaged in a row
            start, _ = spans[n]
            box._journal._map[start + 20] ^= 0xFF
        assert numbers(box.pending()) == [0, 1, 4, 5, 6, 7]
        (chunk,) = box.quarantined()
        assert (chunk.offset, chunk.length) == (spans[2][0], spans[4][0] - spans[2][0])
    assert any("unreadable chunk" in r.getMessage() for r in caplog.records)


# -- 3. private files ---------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Files made with whatever mode their creator asks: the outbox's own choice shows."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path | str) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.usefixtures("open_umask")
def test_every_file_the_outbox_makes_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "_ROTATE_AT", 2000)
    path = tmp_path / "o.db"
    seen: set[str] = set()
    with Outbox(path) as box:
        for n in range(20):
            box.append_many([(make_request(n), "s")])
            for entry in box.claim():
                box.ack(entry.id)
            for made in journals(path):
                seen.add(made.name)
                assert mode(made) == 0o600
        assert len(seen) >= 3  # it rotated
        for name in (path, f"{path}-wal", f"{path}-shm"):
            assert mode(name) == 0o600, name
        # An orphan with a damaged record: the quarantine file is made too.
        orphan = journal.JournalWriter(f"{path}-intake-1-dead-1")
        orphan.append(journal.encode(["x"], b"{}")[:-1] + b"]")
        orphan.close()
        assert box.adopt() == 0
        assert box.quarantine_path is not None and mode(box.quarantine_path) == 0o600


def test_an_existing_readable_file_is_made_private_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as first:
        first.put(make_request(1), "s")
        names = [str(path), f"{path}-wal", f"{path}-shm"]
        for name in names:
            os.chmod(name, 0o644)
        with caplog.at_level(logging.WARNING, logger="engine.outbox"):
            with Outbox(path) as second:
                assert second.counts()["pending"] == 1
            with Outbox(path):
                pass
        assert [mode(name) for name in names] == [0o600] * 3
    (warning,) = [r for r in caplog.records if r.name == "engine.outbox"]
    assert all(name in warning.getMessage() for name in names)
    assert "mode 0600" in warning.getMessage()


# -- 4. backlog ---------------------------------------------------------------------------------


def test_backlog_figures(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        assert box.backlog() == outbox_module.Backlog(0, 0, None, 0, 0, 0)
        ids = box.put_many([(make_request(n), f"s{n % 2}") for n in range(4)], now=T0)
        box.put(make_request(9), "s9", now=T0 - 50)  # older, and later in id order
        claimed = box.claim(T0, limit=2)
        assert [e.session for e in claimed] == ["s9", "s0"]  # due first, then by id
        assert box.bury(ids[0], "400 bad", now=T0)
        figures = box.backlog(now=T0 + 10)
        assert figures == outbox_module.Backlog(
            pending=4, inflight=1, oldest_age=60.0, dead=1, journaled=0, quarantined=0
        )
        with Outbox(path) as other:  # a running process's journal: not read in yet
            other.append_many([(make_request(n), "o") for n in range(10, 13)])
            assert box.backlog(now=T0 + 10).journaled == 3
            assert other.backlog(now=T0 + 10).pending == 7  # its own come in first
        assert box.backlog().oldest_age is not None
        assert box._conn is not None
        plan = box._conn.execute("EXPLAIN QUERY PLAN SELECT MIN(created) FROM entries")
        assert "entries_created" in " ".join(str(row) for row in plan.fetchall())
    with Outbox() as memory:
        memory.append_many([(make_request(1), "m")])
        assert memory.backlog(now=T0).pending == 1


def test_a_file_of_an_earlier_release_gains_the_created_index(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX entries_created")  # as an earlier release made the file
    conn.commit()
    conn.close()
    with Outbox(path) as box:
        assert box._conn is not None
        names = {row[0] for row in box._conn.execute("SELECT name FROM sqlite_master")}
        assert "entries_created" in names
        assert box._conn.execute("PRAGMA user_version").fetchone()[0] == 1  # no new version


# -- 5. several delivering processes --------------------------------------------------------------


def test_recover_leaves_a_live_deliverers_sends_alone(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        ids = box.put_many([(make_request(n), f"s{n % 4}") for n in range(8)])
        first = spawn(children, HOLD_CHILD, path, 2)
        held = first.ready()
        assert held == ids[:2]  # s0 and s1's heads, in flight in a running deliverer
        # A second deliverer starts: what the first holds stays its own.
        assert box.recover() == 0
        assert box.counts() == {"pending": 6, "inflight": 2, "dead": 0}
        mine = box.claim(limit=10)
        assert [e.id for e in mine] == ids[2:4]  # s0 and s1 wait for the first deliverer
        # older_than is as it was: claimed that long ago, whoever holds them (not this one).
        assert box.recover(older_than=60, now=time.time() + 120) == 2
        assert box.counts()["inflight"] == 2
        box.ack_many(e.id for e in mine)
        # A deliverer that is killed: what it held goes back at the next recover.
        second = spawn(children, HOLD_CHILD, path, 10)
        taken = second.ready()
        assert len(taken) == 4
        assert box.recover() == 0
        before = {e.id: e.attempts for e in box.pending()}
        second.kill()
        assert box.recover() == 4
        after = {e.id: e for e in box.pending()}
        assert all(after[i].state == "pending" for i in taken)
        assert all(after[i].attempts == before[i] + 1 for i in taken)


def test_who_counts_as_alive() -> None:
    assert _owner_alive("1:abc")  # init: alive (signalling it may be refused: still alive)
    assert not _owner_alive("999999999:abc")  # beyond any pid
    assert not _owner_alive("not-a-pid:abc") and not _owner_alive("") and not _owner_alive("0:x")
    with Outbox() as box:
        assert _owner_alive(box._owner)
        assert not _owner_alive(f"{os.getpid()}:closed-one")  # no open outbox of this process
    assert not _owner_alive(box._owner)  # closed


# -- 6. ingest and adopt ------------------------------------------------------------------------


def statements_of(box: Outbox) -> list[str]:
    """Every SQL statement ``box`` runs from now on."""
    seen: list[str] = []
    assert box._conn is not None
    box._conn.set_trace_callback(seen.append)
    return seen


def test_ingest_moves_this_processs_appends_where_others_see_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "_INGEST_CHUNK", 1500)  # several slices: still one call
    monkeypatch.setattr(outbox_module, "_ROTATE_AT", 3000)
    path = tmp_path / "o.db"
    with Outbox(path) as pusher, Outbox(path) as deliverer:
        pusher.append_many([(make_request(n), f"s{n % 3}") for n in range(10)])
        assert deliverer.counts()["pending"] == 0 and deliverer.journaled() == 10
        first = journals(path)
        statements = statements_of(pusher)
        assert pusher.ingest() == 10
        # One transaction moved them all (then the journal rotated, in transactions of its own).
        moved = statements[: statements.index("COMMIT") + 1]
        assert moved[0] == "BEGIN IMMEDIATE" and moved.count("BEGIN IMMEDIATE") == 1
        assert sum(s.startswith("INSERT INTO entries") for s in moved) == 10
        assert numbers(deliverer.pending()) == list(range(10))
        assert journals(path) != first  # read to its end past _ROTATE_AT: rotated
        assert len(journals(path)) == 1
        statements.clear()
        assert pusher.ingest() == 0
        assert statements == []  # nothing to move: no transaction
    with Outbox() as memory:
        memory.append_many([(make_request(n), "m") for n in range(3)])
        assert memory.ingest() == 3 and memory.ingest() == 0
    with pytest.raises(outbox_module.OutboxError, match="closed"):
        memory.ingest()


def test_adopt_reads_in_a_dead_processs_journal_and_costs_nothing_otherwise(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    child = spawn(children, APPEND_CHILD, path, 50, 0, 0)
    child.ready()
    with Outbox(path) as box:
        statements = statements_of(box)
        assert box.adopt() == 0  # its process runs
        assert statements == []
        child.kill()
        assert box.adopt() == 50
        assert journals(path) == []
        assert numbers(box.pending()) == list(range(50))
        statements.clear()
        assert box.adopt() == 0
        assert statements == []
