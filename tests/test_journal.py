"""The outbox's intake journal: the record format, torn tails, orphans of dead processes
(real SIGKILLed children), rotation, fork, and the outbox reading it back in order."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path

import pytest

from engine.stores import journal
from engine.stores import sqlite as outbox
from engine.stores.sqlite import Outbox, OutboxError
from tests.test_outbox import make_request, run_child


def test_records_round_trip_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "j"
    writer = journal.JournalWriter(path, capacity=4096)
    first = journal.encode(["a", 1, None, [["k", "v"]]], b"body one \xff")
    second = journal.encode(["b", "\u00e9\u2713"], b"")
    writer.append(first + second)
    assert writer.end == len(first) + len(second)
    assert path.stat().st_size == 4096  # allocated ahead, zeros after the records
    records, end, skipped = journal.read(path, 0)  # read through the file, not the mapping
    assert records == [
        (["a", 1, None, [["k", "v"]]], b"body one \xff"),
        (["b", "\u00e9\u2713"], b""),
    ]
    assert end == writer.end and skipped == []  # the zeros after them are free space
    assert journal.read(path, len(first)) == ([(["b", "\u00e9\u2713"], b"")], end, [])
    assert journal.read(path, 0, len(first)) == ([records[0]], len(first), [])
    # A record the kill interrupted: only its start made it. Final (the file's end): it is
    # passed over, torn; not final (a slice of a live journal): left for later.
    third = journal.encode(["c"], b"x" * 100)
    cut = first + second + third[:40]
    assert journal.parse(cut) == (records, len(cut), [journal.Skipped(end, third[:40], True)])
    assert journal.parse(cut + bytes(500)) == journal.parse(cut)  # zeros after it, the same
    assert journal.parse(cut, final=False) == (records, end, [])
    assert journal.parse(b"\0" * 64) == ([], 0, [])
    assert journal.parse(b"\0" * 64, final=False) == ([], 0, [])
    assert journal.parse(b"") == ([], 0, [])
    writer.close()
    writer.close()
    assert journal.read(tmp_path / "missing", 0) == ([], 0, [])


def records_of(n: int, size: int = 40) -> list[bytes]:
    return [journal.encode(["n", k], b'{"v":"' + b"y" * size + b'"}') for k in range(n)]


def test_reading_resynchronizes_past_a_bad_record() -> None:
    parts = records_of(6)
    data = bytearray(b"".join(parts))
    starts = [sum(map(len, parts[:k])) for k in range(7)]
    data[starts[2] + 30] ^= 0x01  # a flipped byte in the third record's body: its CRC fails
    records, end, skipped = journal.parse(bytes(data))
    assert [header[1] for header, _ in records] == [0, 1, 3, 4, 5]
    assert end == len(data)
    assert skipped == [journal.Skipped(starts[2], bytes(data[starts[2] : starts[3]]), False)]
    # Damage in a head: a wrong magic, a length that runs past the end, lengths above the
    # bound (a header length's top byte 0x40: 2**30 at least).
    for where, value in ((0, 0x00), (10, 0x7F), (11, 0x40)):
        bad = bytearray(b"".join(parts))
        bad[starts[1] + where] = value
        records, end, skipped = journal.parse(bytes(bad))
        assert [header[1] for header, _ in records] == [0, 2, 3, 4, 5], where
        assert [(s.offset, len(s.data)) for s in skipped] == [(starts[1], len(parts[1]))]
    # Several damaged records in a row make one chunk; two stretches make two.
    bad = bytearray(b"".join(parts))
    for k in (1, 2, 4):
        bad[starts[k] + 20] ^= 0xFF
    records, _, skipped = journal.parse(bytes(bad))
    assert [header[1] for header, _ in records] == [0, 3, 5]
    assert [(s.offset, len(s.data)) for s in skipped] == [
        (starts[1], starts[3] - starts[1]),
        (starts[4], len(parts[4])),
    ]
    # A damaged last record, zeros after it: torn at the end.
    bad = bytearray(b"".join(parts)) + bytes(100)
    bad[starts[5] + 20] ^= 0xFF
    records, end, skipped = journal.parse(bytes(bad))
    assert len(records) == 5 and end == starts[6]
    assert skipped == [journal.Skipped(starts[5], bytes(bad[starts[5] : starts[6]]), True)]
    # Header JSON that is not a list, or not JSON, with a right CRC, is not a record either.
    odd = journal.encode({"not": "a list"}, b"")  # type: ignore[arg-type]
    broken = journal._HEAD.pack(journal._MAGIC, zlib.crc32(b"[1,"), 3, 0) + b"[1,"
    for bad_record in (odd, broken):
        records, _, skipped = journal.parse(parts[0] + bad_record + parts[1])
        assert len(records) == 2 and [s.data for s in skipped] == [bad_record]


def test_zeros_followed_by_records_are_damage_not_the_end() -> None:
    parts = records_of(5)
    starts = [sum(map(len, parts[:k])) for k in range(6)]
    data = bytearray(b"".join(parts)) + bytes(64)
    data[starts[1] : starts[3]] = bytes(starts[3] - starts[1])  # two records zeroed
    records, end, skipped = journal.parse(bytes(data))
    assert [header[1] for header, _ in records] == [0, 3, 4]
    assert end == starts[5]
    assert [(s.offset, len(s.data), s.torn) for s in skipped] == [
        (starts[1], starts[3] - starts[1], False)
    ]
    # Not final (a live slice): an all-zero head is where writing has got to.
    assert journal.parse(bytes(data), final=False) == (
        [journal.parse(parts[0]).records[0]],
        starts[1],
        [],
    )


def test_event_data_cannot_forge_a_record_inside_a_body() -> None:
    """A body holding the text of a whole record (magic, CRC, lengths and all, as JSON
    writes it) inside a record that fails its checksum: resync finds the magic in the body
    but the forged head's lengths, made of bytes >= 0x20, add up past the bound."""
    inner = journal.encode(["forged"], b"{}")
    text = inner.decode("latin-1")  # every byte as a character, control ones included
    body = json.dumps({"note": "TGJ1" + text + "TGJ1" + "\u0001" * 12 + "[]"}).encode()
    assert b"TGJ1" in body and not any(byte < 0x20 for byte in body)
    parts = [journal.encode(["n", 0], b"{}"), journal.encode(["n", 1], body)]
    parts.append(journal.encode(["n", 2], b"{}"))
    data = bytearray(b"".join(parts))
    data[len(parts[0]) + 4] ^= 0xFF  # the CRC of the record holding the text
    records, _, skipped = journal.parse(bytes(data))
    assert [header for header, _ in records] == [["n", 0], ["n", 2]]
    assert [len(s.data) for s in skipped] == [len(parts[1])]
    # The bound the argument rests on: four bytes >= 0x20 make a length of at least this.
    least = int.from_bytes(b"\x20" * 4, "little")
    assert 2 * least > journal._MAX_RECORD == 2**30 > least


class _Claims(bytes):
    """Bytes that say they are a gigabyte long, without taking one."""

    def __len__(self) -> int:
        return journal._MAX_RECORD


def test_a_record_longer_than_a_reader_accepts_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        journal.encode(["n"], _Claims(b"{}"))


def test_counting_stops_at_the_end_of_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "_COUNT_BLOCK", 100)  # records straddle the blocks
    path = tmp_path / "j"
    writer = journal.JournalWriter(path, capacity=8192)
    parts = records_of(12)
    for part in parts:
        writer.append(part)
    assert journal.count(path, 0) == 12
    assert journal.count(path, len(parts[0]) + len(parts[1])) == 10
    assert journal.count(path, writer.end) == 0
    assert journal.count(tmp_path / "missing", 0) == 0
    writer.close()


def test_the_quarantine_file_is_self_describing(tmp_path: Path) -> None:
    path = tmp_path / "q"
    assert journal.quarantined(path) == []
    chunks = [journal.Skipped(10, b"\x00bad\nbytes", False), journal.Skipped(99, b"tail", True)]
    journal.quarantine(path, "o.db-intake-1-a-1", chunks, now=1234.5)
    journal.quarantine(path, "o.db-intake-2-b-1", [journal.Skipped(0, b"", False)], now=1300.0)
    assert path.stat().st_mode & 0o777 == 0o600
    found = journal.quarantined(path)
    assert [(q.journal, q.offset, q.length, q.time, q.reason) for q in found] == [
        ("o.db-intake-1-a-1", 10, 10, 1234.5, "unreadable"),
        ("o.db-intake-1-a-1", 99, 4, 1234.5, "torn"),
        ("o.db-intake-2-b-1", 0, 0, 1300.0, "unreadable"),
    ]
    data = path.read_bytes()
    assert data[found[0].position : found[0].position + 10] == b"\x00bad\nbytes"
    first_line = data.split(b"\n", 1)[0]
    assert first_line.startswith(b"TGQ1 ") and json.loads(first_line[5:])["length"] == 10
    with open(path, "ab") as file:  # a chunk a process died writing ends the list
        file.write(b'TGQ1 {"journal": "x", "offset": 0, "length": 50, "time": 1}\nabc')
    assert len(journal.quarantined(path)) == 3


def test_a_full_journal_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "j"
    writer = journal.JournalWriter(path, capacity=1024)
    records = [journal.encode(["n", n], b"y" * 300) for n in range(20)]
    for record in records:
        writer.append(record)
    assert path.stat().st_size >= writer.end == sum(map(len, records)) > 1024
    assert [header for header, _ in journal.read(path, 0)[0]] == [["n", n] for n in range(20)]
    writer.close()


def test_a_journal_that_cannot_be_allocated_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)  # a full disk cannot be made on demand
    with pytest.raises(OSError, match="No space"):
        journal.JournalWriter(tmp_path / "j")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("refusal", [None, 95])  # no posix_fallocate (macOS); EOPNOTSUPP
def test_without_posix_fallocate_the_zeros_are_written_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int | None
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(refusal, "Operation not supported")

    if refusal is None:
        monkeypatch.delattr(os, "posix_fallocate")
    else:
        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = tmp_path / "j"
    writer = journal.JournalWriter(path, capacity=3000)
    assert path.stat().st_size == 3000
    assert path.stat().st_blocks * 512 >= 3000  # on disk, not a hole the map would fault on
    records = [journal.encode(["n", n], b"z" * 500) for n in range(10)]
    for record in records:
        writer.append(record)  # grows past 3000 the same way
    assert path.stat().st_size >= writer.end > 3000
    assert path.read_bytes()[writer.end :] == bytes(path.stat().st_size - writer.end)
    assert [header for header, _ in journal.read(path, 0)[0]] == [["n", n] for n in range(10)]
    writer.close()


def test_without_a_journal_appends_are_committed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no flock (Windows), a push's sends go to SQLite in the push: another
    process sees them at once, and no journal file is made."""
    monkeypatch.setattr(journal, "AVAILABLE", False)
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.append_many([(make_request(n), f"s{n % 2}") for n in range(3)], now=7.0)
        assert journals(path) == []
        with sqlite3.connect(path) as other:  # not through this process's outbox
            rows = other.execute("SELECT session, seq, created FROM entries ORDER BY id").fetchall()
        assert rows == [("s0", 1, 7.0), ("s1", 1, 7.0), ("s0", 2, 7.0)]
        assert [e.request for e in box.pending()] == [make_request(n) for n in range(3)]
    path_j = tmp_path / "j"
    path_j.write_bytes(b"")
    with journal.claim_orphan(path_j) as orphan:
        assert not orphan  # no lock to tell a live journal from a dead one's: none is read


def test_a_journal_is_locked_while_its_writer_lives(tmp_path: Path) -> None:
    path = tmp_path / "j"
    writer = journal.JournalWriter(path)
    with journal.claim_orphan(path) as orphan:
        assert not orphan
    with pytest.raises(OSError):
        journal.JournalWriter(path)  # a second writer would interleave records
    writer.close()
    with journal.claim_orphan(path) as orphan:
        assert orphan
    with journal.claim_orphan(tmp_path / "gone") as orphan:
        assert not orphan


def journals(path: Path) -> list[Path]:
    return journal.journal_files(str(path))


def test_appended_sends_are_read_in_order_behind_put_ones(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, synchronous="NORMAL") as box:
        box.put(make_request(0), "s1")
        box.append_many([(make_request(1), "s1"), (make_request(2), "s2")], now=5.0)
        box.put(make_request(3), "s1")  # after the appended ones of its session
        box.append_many([(make_request(4), "s1")])
        assert len(journals(path)) == 1
        pending = box.pending()
        assert [(e.session, e.seq, e.event_id) for e in pending] == [
            ("s1", 1, "evt-0"),
            ("s1", 2, "evt-1"),
            ("s2", 1, "evt-2"),
            ("s1", 3, "evt-3"),
            ("s1", 4, "evt-4"),
        ]
        assert all(e.request == make_request(int(e.event_id[4:])) for e in pending)  # type: ignore[index]
        assert pending[1].created == 5.0
        box.append_many([])  # nothing: no write
    assert journals(path) == []  # read to the end and removed at close
    with Outbox(path) as box:
        assert box.counts()["pending"] == 5


def test_an_in_memory_outbox_takes_appends_too() -> None:
    with Outbox() as box:
        box.append_many([(make_request(n), f"s{n % 2}") for n in range(4)])
        claimed = box.claim(limit=10)
        assert [(e.session, e.seq) for e in claimed] == [("s0", 1), ("s1", 1)]
        assert box.counts() == {"pending": 2, "inflight": 2, "dead": 0}


def test_a_closed_outbox_refuses_appends(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.append_many([(make_request(1), "s")])


APPEND_CHILD = """
import os, sys
from engine.stores.sqlite import Outbox
from tests.test_outbox import make_request

box = Outbox(sys.argv[1], synchronous="NORMAL")
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for n in range(100_000):
    box.append_many([(make_request(n), f"s{n % 7}")])
    os.write(fd, f"{n}\\n".encode())
"""


def test_sigkill_while_appending_keeps_every_append_that_returned(tmp_path: Path) -> None:
    path, log = tmp_path / "o.db", tmp_path / "appended.log"
    with Outbox(path) as watcher:  # a live outbox in another process: not an orphan-taker
        child = run_child(APPEND_CHILD, str(path), str(log))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count("\n") >= 2000:
                break
            time.sleep(0.01)
        assert watcher.counts()["pending"] == 0  # the child's journal is its own while it lives
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err.decode()
        assert len(journals(path)) == 1
        logged = [int(line) for line in log.read_text().split()]
        recovered_before = watcher.recover()
        assert recovered_before == 0  # nothing was in flight; the journal was adopted though
        entries = watcher.pending()
    assert journals(path) == []
    numbers = [int(e.event_id[4:]) for e in entries]  # type: ignore[index]
    assert set(logged) <= set(numbers)  # every append that returned survived
    assert len(numbers) - len(logged) <= 1  # at most the one written as the kill came
    assert len(set(numbers)) == len(numbers)
    by_session: dict[str, list[int]] = defaultdict(list)
    for entry in entries:
        by_session[entry.session].append(int(entry.event_id[4:]))  # type: ignore[index]
        assert entry.request == make_request(int(entry.event_id[4:]))  # type: ignore[index]
    assert all(ns == sorted(ns) for ns in by_session.values())


def test_opening_adopts_an_orphan_once_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, synchronous="NORMAL")
    box.append_many([(make_request(n), "s") for n in range(3)])
    assert box.counts()["pending"] == 3  # read in: the offset moved past them
    box.append_many([(make_request(n), "s") for n in range(3, 5)])
    # The process "dies": its journal is unlocked and left behind, two records unread.
    assert box._journal is not None
    box._journal.close()
    box._closed = True
    assert len(journals(path)) == 1
    with Outbox(path) as first, Outbox(path) as second:
        assert [e.event_id for e in first.pending()] == [f"evt-{n}" for n in range(5)]
        assert second.counts()["pending"] == 5  # not adopted twice
    assert journals(path) == []


def test_journals_rotate_without_losing_or_reordering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "_ROTATE_AT", 2000)  # a record is ~500 bytes
    path = tmp_path / "o.db"
    seen: set[str] = set()
    delivered: list[int] = []
    with Outbox(path, synchronous="NORMAL") as box:
        for n in range(40):
            box.append_many([(make_request(n), "s")])
            for entry in box.claim(limit=5):
                delivered.append(int(entry.event_id[4:]))  # type: ignore[index]
                box.ack(entry.id)
            seen.update(p.name for p in journals(path))
            assert len(journals(path)) == 1
        while entries := box.claim(limit=5):
            for entry in entries:
                delivered.append(int(entry.event_id[4:]))  # type: ignore[index]
                box.ack(entry.id)
        assert box._conn is not None
        rows = box._conn.execute("SELECT name FROM intake").fetchall()
        assert rows == [(journals(path)[0].name,)]
    assert delivered == list(range(40))
    assert len(seen) >= 5  # it did rotate


def test_appends_from_threads_while_a_worker_claims(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, synchronous="NORMAL") as box:
        delivered: dict[str, list[int]] = defaultdict(list)
        done = threading.Event()

        def worker() -> None:
            while True:
                entries = box.claim(limit=8)
                for entry in entries:
                    delivered[entry.session].append(int(entry.event_id[4:]))  # type: ignore[index]
                    box.ack(entry.id)
                if not entries and done.is_set() and not box.pending(limit=1):
                    return

        def appender(k: int) -> None:
            for n in range(k * 1000, k * 1000 + 300):
                box.append_many([(make_request(n), f"t{k}")])

        claimer = threading.Thread(target=worker)
        claimer.start()
        threads = [threading.Thread(target=appender, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        claimer.join(60)
        assert not claimer.is_alive()
    assert {s: len(ns) for s, ns in delivered.items()} == {f"t{k}": 300 for k in range(4)}
    assert all(ns == sorted(ns) for ns in delivered.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_appends_to_a_journal_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, synchronous="NORMAL")
    box.append_many([(make_request(1), "parent")])
    assert box._journal is not None
    parent_journal = box._journal.path
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            box.append_many([(make_request(2), "child")])
            assert box._journal is not None and box._journal.path != parent_journal
            box.close()  # reads its own journal in and removes it
            code = 0
        finally:
            os.write(write, b"%d" % code)
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == b"0"
    assert os.waitstatus_to_exitcode(status) == 0
    assert Path(parent_journal).exists()
    # Ids (and so the order across sessions) are given when a journal is read in.
    assert sorted(e.session for e in box.pending()) == ["child", "parent"]
    box.close()
    assert journals(path) == []


def test_a_file_of_the_previous_release_gains_the_intake_table(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.put(make_request(1), "s")
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE intake")  # as the previous release made it
    conn.commit()
    conn.close()
    with Outbox(path) as box:
        box.append_many([(make_request(2), "s")])
        assert [e.event_id for e in box.pending()] == ["evt-1", "evt-2"]
    conn = sqlite3.connect(path)
    # Same schema version: a process of the previous release still opens the file.
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_a_backlog_is_read_in_slices_and_a_large_record_still_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "_INGEST_CHUNK", 1500)  # about three records a transaction
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.append_many([(make_request(n), f"s{n % 3}") for n in range(20)])
        large = dataclasses.replace(make_request(20), body_bytes=b"{}" + b" " * 5000)
        box.append_many([(large, "s2")])  # one record longer than a slice
        first = box.claim(limit=100)  # one slice read in: a few sessions' heads
        assert 1 <= len(first) <= 3
        assert box._ingested < box._journal.end  # type: ignore[union-attr]
        pending = box.pending()  # a read reads everything in first
        assert [e.event_id for e in pending] == [f"evt-{n}" for n in range(21)]
        assert box._ingested == box._journal.end  # type: ignore[union-attr]


def test_closing_while_threads_append_loses_no_returned_append(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    returned: list[int] = []
    refused: list[BaseException] = []
    started = threading.Barrier(5)

    def appender(k: int) -> None:
        started.wait()
        for n in range(k * 10_000, k * 10_000 + 5_000):
            try:
                box.append_many([(make_request(n), f"t{k}")])
            except OutboxError as error:
                refused.append(error)
                return
            returned.append(n)

    threads = [threading.Thread(target=appender, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.05)
    box.close()
    for thread in threads:
        thread.join(30)
    assert refused and all("closed" in str(error) for error in refused)
    assert journals(path) == []
    with Outbox(path) as reopened:
        stored = [int(e.event_id[4:]) for e in reopened.pending()]  # type: ignore[index]
    assert sorted(stored) == sorted(returned)  # every append that returned, and no other


def test_a_transaction_that_fails_after_reading_in_reads_them_again(tmp_path: Path) -> None:
    for path in (tmp_path / "o.db", None):  # a file's journal, and memory's queue
        with Outbox(path) as box:
            box.append_many([(make_request(1), "s")])
            # A statement failing in a transaction that read the journal in (a full disk,
            # an I/O error): the inserts roll back, and the records must not count as read.
            with pytest.raises(OutboxError), box._write() as conn:
                conn.execute("INSERT INTO no_such_table VALUES (1)")
            assert [e.event_id for e in box.pending()] == ["evt-1"]


def test_a_put_goes_behind_every_send_appended_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "_INGEST_CHUNK", 1500)  # a backlog several slices long
    with Outbox(tmp_path / "o.db") as box:
        box.append_many([(make_request(n), "s") for n in range(10)])
        box.put(make_request(10), "s")
        assert [(e.seq, e.event_id) for e in box.pending()] == [
            (n + 1, f"evt-{n}") for n in range(11)
        ]


def test_a_journal_being_made_is_not_taken_for_an_orphan(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.append_many([(make_request(1), "s")])
        assert box._journal is not None
        # Another process opening the outbox now sees a locked journal, never an unlocked
        # one: the file only gets its name once it is locked.
        with Outbox(path) as other:
            assert other.counts()["pending"] == 0
        box.append_many([(make_request(2), "s")])
        assert [e.event_id for e in box.pending()] == ["evt-1", "evt-2"]
    stray = tmp_path / ".o.db-intake-1-x-1.making"  # a process died while making one
    stray.write_bytes(b"")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    with Outbox(path):
        pass
    assert not stray.exists()
