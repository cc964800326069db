"""The durable outbox: storage round trip, per-session order, retries, dead letters, crash
recovery (real SIGKILLed processes), threads, fork, and the ``tagengine outbox`` commands."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli_outbox import outbox as outbox_cli
from engine.destinations.base import Request
from engine.errors import EngineError
from engine.stores.sqlite import SCHEMA_VERSION, Entry, Outbox, OutboxError

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0


def make_request(n: int, *, rule: str = "Purchase") -> Request:
    body = {
        "event": {
            "xdm": {"_id": f"evt-{n}", "eventType": "commerce.purchases", "amount": n * 1.5},
            "data": {"name": "Ünïcødé ✓", "list": [1, None, True, {"k": "v"}], "big": 2**62},
        },
        "meta": {"state": {"entries": []}},
    }
    return Request(
        destination="edge",
        rule=rule,
        method="POST",
        url=f"http://127.0.0.1:9/ee/v2/interact?configId=ds&requestId=req-{n}",
        headers=(("Content-Type", "application/json"), ("X-Trace", f"t-{n}")),
        body=body,
        body_bytes=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        kind="interact",
        event_id=f"evt-{n}",
        request_id=f"req-{n}",
    )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as opened:
        yield opened


@pytest.fixture
def fast_box(tmp_path: Path) -> Iterator[Outbox]:
    """For the concurrency tests: no fsync per commit (durability is tested elsewhere)."""
    with Outbox(tmp_path / "outbox.db", synchronous="NORMAL") as opened:
        yield opened


def sessions_of(entries: list[Entry]) -> list[tuple[str, int]]:
    return [(e.session, e.seq) for e in entries]


# -- storage ------------------------------------------------------------------------------------


def test_request_round_trips_through_the_file(tmp_path: Path) -> None:
    post = make_request(1)
    get = Request(
        destination="sitecore",
        rule="View",
        method="GET",
        url="https://api.example/v1.2/event/create.json?client_key=k&message=%7B%7D",
        headers=(),
        body={"type": "VIEW", "channel": "WEB", "ext": {"ratio": 0.1, "n": -0.0}},
        body_bytes=b"",
        kind="event",
    )
    with Outbox(tmp_path / "o.db") as box:
        ids = [box.put(post, "s1", now=T0), box.put(get, "s2", now=T0 + 1)]
    with Outbox(tmp_path / "o.db") as box:
        entries = box.pending()
        assert [e.id for e in entries] == ids
        assert entries[0].request == post
        assert entries[1].request == get
        assert entries[1].event_id is None and entries[1].body_bytes == b""
        assert (entries[0].created, entries[0].next_attempt_at, entries[0].attempts) == (T0, T0, 0)
        assert entries[0].state == "pending" and entries[0].last_error is None
        got = box.get(ids[0])
        assert got is not None and got.request == post
        assert box.get(999) is None


def test_in_memory_outbox_has_the_same_api() -> None:
    with Outbox() as box:
        entry_id = box.put(make_request(1), "s")
        (claimed,) = box.claim()
        assert claimed.id == entry_id and claimed.request == make_request(1)
        assert box.ack(entry_id)
        assert box.counts() == {"pending": 0, "inflight": 0, "dead": 0}


def test_file_uses_wal_and_normal_sync_unless_full_is_asked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        conn = box._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with Outbox(tmp_path / "n.db", synchronous="FULL") as box:
        assert box._conn is not None
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", synchronous="OFF")  # type: ignore[arg-type]


def test_a_send_json_cannot_carry_is_refused_and_put_many_is_all_or_nothing(box: Outbox) -> None:
    good = make_request(1)
    bad = Request("edge", "R", "POST", "http://x", (), {"v": float("nan")}, b"", "interact")
    with pytest.raises(OutboxError, match="rule 'R'"):
        box.put(bad, "s")
    with pytest.raises(OutboxError):
        box.put_many([(good, "s"), (bad, "s"), (good, "t")])
    assert box.counts() == {"pending": 0, "inflight": 0, "dead": 0}
    ids = box.put_many([(make_request(n), f"s{n % 2}") for n in range(5)], now=T0)
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert sessions_of(box.pending()) == [("s0", 1), ("s1", 1), ("s0", 2), ("s1", 2), ("s0", 3)]


def test_bad_files_raise_outbox_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(garbage)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(OutboxError, match="not a tagengine outbox"):
        Outbox(foreign)
    newer = tmp_path / "newer.db"
    Outbox(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(newer)
    with pytest.raises(OutboxError):
        Outbox(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(OutboxError):
        Outbox(tmp_path / "no" / "such" / "dir.db")
    assert issubclass(OutboxError, EngineError)


def test_closed_outbox_refuses_work(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.put(make_request(1), "s")
    with pytest.raises(OutboxError, match="closed"):
        box.counts()


# -- ordering, retries --------------------------------------------------------------------------


def test_claim_keeps_per_session_order(box: Outbox) -> None:
    a1 = box.put(make_request(1), "a", now=T0)
    b1 = box.put(make_request(2), "b", now=T0)
    a2 = box.put(make_request(3), "a", now=T0)
    b2 = box.put(make_request(4), "b", now=T0)
    a3 = box.put(make_request(5), "a", now=T0)
    assert sessions_of(box.pending()) == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]

    first = box.claim(T0, limit=10)
    assert [e.id for e in first] == [a1, b1]
    assert all(e.state == "inflight" for e in first)
    assert box.claim(T0, limit=10) == []  # a2, b2 wait behind entries in flight
    assert box.counts() == {"pending": 3, "inflight": 2, "dead": 0}

    assert box.ack(a1)
    assert not box.ack(a1)
    assert [e.id for e in box.claim(T0)] == [a2]  # b2 still waits for b1
    assert box.ack(b1)
    assert [e.id for e in box.claim(T0)] == [b2]
    assert box.ack(a2) and box.ack(b2)
    assert [e.id for e in box.claim(T0)] == [a3]


def test_claim_respects_limit_due_time_and_oldest_first(box: Outbox) -> None:
    ids = [box.put(make_request(n), f"s{n}", now=T0 + n) for n in range(6)]
    assert box.claim(T0 - 1) == []
    assert [e.id for e in box.claim(T0 + 2, limit=2)] == ids[:2]
    assert [e.id for e in box.claim(T0 + 2, limit=10)] == ids[2:3]
    assert [e.id for e in box.claim(T0 + 100, limit=10)] == ids[3:]
    with pytest.raises(ValueError):
        box.claim(T0, limit=0)


def test_claim_behind_takes_the_due_sends_right_behind_in_order(box: Outbox) -> None:
    ids = [box.put(make_request(n), "a", now=T0) for n in range(6)]
    other = box.put(make_request(9), "b", now=T0)
    box.retry_later(ids[4], "503", T0 + 50)  # not due: the run stops before it
    (head, b_head) = box.claim(T0)
    assert (head.id, b_head.id) == (ids[0], other)
    assert box.claim_behind(head, limit=0, now=T0) == []
    two = box.claim_behind(head, limit=2, now=T0)
    assert [e.id for e in two] == ids[1:3] and {e.state for e in two} == {"inflight"}
    assert [e.request for e in two] == [make_request(1), make_request(2)]
    assert box.claim_behind(head, limit=10, now=T0) == []  # the next one is in flight now
    # From the last taken, the run goes on and stops at the one not due.
    assert [e.id for e in box.claim_behind(two[-1], limit=10, now=T0)] == [ids[3]]
    assert box.counts() == {"pending": 2, "inflight": 5, "dead": 0}
    # Nothing of the session is claimable until all of them are settled.
    box.bury(ids[0], "refused")
    box.retry_later(ids[1], "503", T0)
    assert box.claim(T0 + 50) == []
    box.ack_many(ids[2:4])
    assert [e.id for e in box.claim(T0 + 50)] == [ids[1]]
    chosen: list[list[int]] = []

    def first_one(behind: list[Entry]) -> int:
        chosen.append([e.id for e in behind])
        return 1

    taken = box.claim_behind(box.get(ids[1]) or head, limit=10, select=first_one, now=T0 + 50)
    assert [e.id for e in taken] == [ids[4]] and chosen == [[ids[4], ids[5]]]


def test_claim_behind_and_ack_many_take_more_ids_than_one_statement_binds(box: Outbox) -> None:
    ids = box.put_many([(make_request(n), "a") for n in range(1200)], now=T0)
    (head,) = box.claim(T0)
    behind = box.claim_behind(head, limit=1199, now=T0)
    assert [e.id for e in behind] == ids[1:]
    assert box.counts() == {"pending": 0, "inflight": 1200, "dead": 0}
    assert box.ack_many(ids) == 1200 and box.counts()["inflight"] == 0


def test_claimed_behind_sends_go_back_to_pending_on_recover(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as first:
        ids = [first.put(make_request(n), "a", now=T0) for n in range(3)]
        (head,) = first.claim(T0)
        first.claim_behind(head, limit=5, now=T0)
    with Outbox(tmp_path / "o.db") as second:
        assert second.recover(now=T0 + 1) == 3
        assert [e.id for e in second.claim(T0 + 1)] == [ids[0]]


def test_retry_later_waits_and_keeps_its_place(box: Outbox) -> None:
    a1 = box.put(make_request(1), "a", now=T0)
    a2 = box.put(make_request(2), "a", now=T0)
    b1 = box.put(make_request(3), "b", now=T0)
    assert [e.id for e in box.claim(T0)] == [a1, b1]
    assert box.retry_later(a1, "503 Service Unavailable", T0 + 30)
    assert not box.retry_later(12345, "x", T0)
    assert box.next_due() == T0 + 30
    box.ack(b1)
    assert box.claim(T0 + 29) == []  # a2 never overtakes a1, even while a1 waits
    (again,) = box.claim(T0 + 30)
    assert (again.id, again.attempts, again.last_error) == (a1, 1, "503 Service Unavailable")
    assert again.next_attempt_at == T0 + 30
    box.retry_later(a1, "429", T0 + 40)
    (third,) = box.claim(T0 + 40)
    assert third.attempts == 2 and third.last_error == "429"
    box.ack(a1)
    assert [e.id for e in box.claim(T0 + 40)] == [a2]


def test_bury_revive_and_purge(box: Outbox) -> None:
    a1 = box.put(make_request(1), "a", now=T0)
    a2 = box.put(make_request(2), "a", now=T0)
    a3 = box.put(make_request(3), "a", now=T0)
    b1 = box.put(make_request(4), "b", now=T0)
    box.claim(T0)
    box.retry_later(a1, "503", T0)
    box.claim(T0)
    assert box.bury(a1, "400 Bad Request: EXEG-0003", now=T0 + 5)
    assert not box.bury(a1, "again")
    (dead,) = box.dead()
    assert (dead.id, dead.state, dead.attempts, dead.failed_at) == (a1, "dead", 2, T0 + 5)
    assert dead.last_error == "400 Bad Request: EXEG-0003"
    assert dead.request == make_request(1)
    assert box.counts() == {"pending": 2, "inflight": 1, "dead": 1}

    # The dead head no longer blocks its session.
    assert [e.id for e in box.claim(T0)] == [a2]
    box.ack(a2)
    # A new send of the session is numbered after the dead letter.
    a4 = box.put(make_request(5), "a", now=T0)
    assert box.get(a4).seq == 4  # type: ignore[union-attr]

    # Revived: same id and seq, attempts reset, and ahead of the session's later sends.
    assert box.revive([a1], now=T0 + 10) == 1
    revived = box.get(a1)
    assert revived is not None
    assert (revived.state, revived.attempts, revived.seq) == ("pending", 0, 1)
    assert revived.next_attempt_at == T0 + 10
    assert [e.id for e in box.claim(T0 + 10)] == [a1]
    assert box.revive() == 0

    box.bury(a1, "gone", now=T0)
    box.ack(b1)
    box.claim(T0 + 10)  # a3
    box.bury(a3, "gone", now=T0)
    assert box.purge("dead", [a1, 999]) == 1
    assert [e.id for e in box.dead()] == [a3]
    assert box.purge("pending", [a3]) == 0
    assert box.purge("pending") == 1  # a4
    assert box.counts() == {"pending": 0, "inflight": 0, "dead": 1}
    box.put(make_request(6), "c")
    assert box.purge("all") == 2
    assert box.counts() == {"pending": 0, "inflight": 0, "dead": 0}
    with pytest.raises(ValueError):
        box.purge("everything")  # type: ignore[arg-type]


def test_revived_letter_waits_for_the_send_in_flight(box: Outbox) -> None:
    a1 = box.put(make_request(1), "a", now=T0)
    a2 = box.put(make_request(2), "a", now=T0)
    box.claim(T0)
    box.bury(a1, "boom")
    assert [e.id for e in box.claim(T0)] == [a2]
    box.revive(now=T0)
    assert box.claim(T0 + 1) == []  # a1 is the head again, but a2 is in flight
    box.ack(a2)
    assert [e.id for e in box.claim(T0 + 1)] == [a1]


def test_purging_a_head_unblocks_the_next(box: Outbox) -> None:
    a1 = box.put(make_request(1), "a", now=T0)
    a2 = box.put(make_request(2), "a", now=T0)
    assert box.purge("pending", [a1]) == 1
    assert [e.id for e in box.claim(T0)] == [a2]


def test_ack_many(box: Outbox) -> None:
    ids = box.put_many([(make_request(n), f"s{n % 3}") for n in range(9)], now=T0)
    claimed = box.claim(T0)
    assert len(claimed) == 3
    assert box.ack_many([e.id for e in claimed] + [424242]) == 3
    assert [e.id for e in box.claim(T0)] == ids[3:6]


# -- recovery -----------------------------------------------------------------------------------


def test_recover_puts_sends_in_flight_back(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    first = Outbox(path)
    ids = first.put_many([(make_request(n), f"s{n % 2}") for n in range(4)], now=T0)
    assert [e.id for e in first.claim(T0)] == ids[:2]
    with Outbox(path) as second:
        assert second.counts() == {"pending": 2, "inflight": 2, "dead": 0}
        assert second.recover(older_than=60, now=T0 + 30) == 0  # claimed too recently
        assert second.recover(now=T0 + 30) == 0  # `first` is open: it may still settle them
        first.close()  # it stops without acking (another process: test_outbox_recovery)
        assert second.recover(now=T0 + 30) == 2
        assert second.counts() == {"pending": 4, "inflight": 0, "dead": 0}
        entry = second.get(ids[0])
        assert entry is not None and entry.attempts == 1
        assert entry.last_error is not None and "interrupted" in entry.last_error
        assert [e.id for e in second.claim(T0 + 30)] == ids[:2]
        # Its own entries in flight are not "left by a crash".
        assert second.recover(now=T0 + 30) == 0
        assert second.counts()["inflight"] == 2


CRASH_CHILD = """
import os, signal, sys
from engine.stores.sqlite import Outbox
from tests.test_outbox import make_request

path, log = sys.argv[1], sys.argv[2]
box = Outbox(path)
ids = box.put_many([(make_request(n), f"s{n % 20}") for n in range(500)])
ids += [box.put(make_request(n), f"s{n % 20}") for n in range(500, 1000)]
assert len(ids) == 1000
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
acked = 0
while True:
    batch = box.claim(limit=10)
    for i, entry in enumerate(batch):
        if acked >= 437 and i == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-batch: 6 claimed, not acked
        if i == 0:
            box.retry_later(entry.id, "503", 0.0)
            continue
        box.ack(entry.id)
        os.write(fd, f"{entry.id}\\n".encode())
        acked += 1
"""


def run_child(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )


def test_sigkill_while_claiming_and_acking_loses_nothing(tmp_path: Path) -> None:
    path, log = tmp_path / "o.db", tmp_path / "acked.log"
    child = run_child(CRASH_CHILD, str(path), str(log))
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err.decode()

    acked = [int(line) for line in log.read_text().split()]
    assert len(acked) == len(set(acked)) >= 437
    with Outbox(path) as box:
        assert box.counts()["inflight"] > 0  # the crash left sends in flight
        recovered = box.recover()
        assert recovered > 0
        entries = box.pending()
        assert box.counts() == {"pending": 1000 - len(acked), "inflight": 0, "dead": 0}
        assert box._conn is not None
        assert box._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    remaining = {e.id for e in entries}
    assert len(remaining) == len(entries)  # no duplicated rows
    assert remaining.isdisjoint(acked)
    assert remaining | set(acked) == set(range(1, 1001))  # none lost
    event_ids = [e.event_id for e in entries]
    assert len(set(event_ids)) == len(event_ids)
    assert all(e.request == make_request(int(e.event_id[4:])) for e in entries)  # type: ignore[index]
    by_session: dict[str, list[int]] = defaultdict(list)
    for entry in entries:
        by_session[entry.session].append(entry.seq)
    assert all(seqs == sorted(seqs) for seqs in by_session.values())
    assert sum(1 for e in entries if e.attempts > 0) >= recovered


PUT_CHILD = """
import os, sys
from engine.stores.sqlite import Outbox
from tests.test_outbox import make_request

box = Outbox(sys.argv[1])
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for n in range(100_000):
    entry_id = box.put(make_request(n), f"s{n % 7}")
    os.write(fd, f"{entry_id} {n}\\n".encode())
"""


def test_sigkill_while_putting_keeps_every_put_that_returned(tmp_path: Path) -> None:
    path, log = tmp_path / "o.db", tmp_path / "put.log"
    child = run_child(PUT_CHILD, str(path), str(log))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("\n") >= 300:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()

    logged: dict[int, int] = {}
    for line in log.read_text().splitlines():
        entry_id, n = map(int, line.split())
        logged[entry_id] = n
    assert len(logged) >= 300
    with Outbox(path) as box:
        entries = box.pending()
        assert box._conn is not None
        assert box._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {e.id: e for e in entries}
    assert len(stored) == len(entries)
    assert set(logged) <= set(stored)  # every put that returned survived
    assert len(stored) - len(logged) <= 1  # at most the one committed as the kill came
    for entry_id, n in logged.items():
        assert stored[entry_id].request == make_request(n)


# -- threads ------------------------------------------------------------------------------------


def test_eight_threads_putting(fast_box: Outbox) -> None:
    box = fast_box
    ids: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for n in range(500):
            ids[t].append(box.put(make_request(t * 1000 + n), f"s{n % 4}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [i for chunk in ids for i in chunk]
    assert len(everything) == len(set(everything)) == 4000
    assert all(chunk == sorted(chunk) for chunk in ids)
    entries = box.pending()
    assert len(entries) == 4000 and {e.id for e in entries} == set(everything)
    by_session: dict[str, list[int]] = defaultdict(list)
    for entry in entries:  # by id
        by_session[entry.session].append(entry.seq)
    assert sorted(by_session) == ["s0", "s1", "s2", "s3"]
    for seqs in by_session.values():
        assert seqs == list(range(1, 1001))


def test_concurrent_workers_deliver_each_session_in_order(fast_box: Outbox) -> None:
    box = fast_box
    delivered: dict[str, list[int]] = defaultdict(list)
    seen: list[int] = []
    guard = threading.Lock()
    producing = threading.Event()
    producing.set()

    def produce(t: int) -> None:
        for n in range(250):
            box.put(make_request(t * 1000 + n), f"s{(t + n) % 10}")

    deadline = time.monotonic() + 20  # a stuck session fails the test instead of hanging it

    def consume() -> None:
        while time.monotonic() < deadline:
            batch = box.claim(limit=5)
            if not batch and not producing.is_set() and box.counts()["pending"] == 0:
                return
            for entry in batch:
                with guard:
                    delivered[entry.session].append(entry.id)
                    seen.append(entry.id)
                box.ack(entry.id)

    producers = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    consumers = [threading.Thread(target=consume, daemon=True) for _ in range(4)]
    for thread in producers + consumers:
        thread.start()
    for thread in producers:
        thread.join()
    producing.clear()
    for thread in consumers:
        thread.join()
    assert len(seen) == len(set(seen)) == 1000  # each delivered once
    for ids in delivered.values():
        assert ids == sorted(ids)  # in the order they were put


# -- fork ---------------------------------------------------------------------------------------


def fork() -> int:
    with warnings.catch_warnings():  # 3.12+ warns about forking with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def wait_child(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forked_child_gets_its_own_connection(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    memory = Outbox()
    memory.put(make_request(0), "parent")
    box.put(make_request(0), "parent")
    stop = threading.Event()
    busy: list[int] = []

    def hammer() -> None:  # the parent keeps writing while it forks
        n = 1
        while not stop.is_set():
            busy.append(box.put(make_request(n), "parent"))
            n += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    children = []
    try:
        for k in range(3):
            parent_conn = box._conn
            pid = fork()
            if pid == 0:  # the child: report by exit code only
                code = 1
                try:
                    entry_id = box.put(make_request(10_000 + k), f"child-{os.getpid()}")
                    ok = box.get(entry_id) is not None and box._conn is not parent_conn
                    ok = ok and memory.counts()["pending"] == 0  # not the parent's copy
                    memory.put(make_request(1), "child")
                    code = 0 if ok else 2
                finally:
                    os._exit(code)
            children.append(pid)
            assert wait_child(pid) == 0
    finally:
        stop.set()
        thread.join()
    assert len(busy) > 0
    sessions = {e.session for e in box.pending()}
    assert {f"child-{pid}" for pid in children} <= sessions
    assert memory.counts()["pending"] == 1
    assert box.counts()["pending"] == 1 + len(busy) + 3
    box.close()
    memory.close()


# -- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "cli.db"
    with Outbox(path) as box:
        ids = box.put_many([(make_request(n, rule=f"Rule{n}"), f"visitor-{n}") for n in range(4)])
        box.claim()
        box.retry_later(ids[0], "503 Service Unavailable\nRetry-After: 5", time.time() + 60)
        box.bury(ids[1], "400 EXEG-0003-400: the body is not valid")
        box.bury(ids[2], "401 bad client key")
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(outbox_cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_list_tables_and_json(filled: Path) -> None:
    code, out, _ = invoke("list", "--outbox", str(filled))
    assert code == 0
    assert "visitor-0" in out and "visitor-3" in out and "visitor-1" not in out
    assert "503 Service Unavailable" in out and "Retry-After" not in out  # first line only
    assert "2 pending (1 in flight), 2 dead" in out

    code, out, _ = invoke("list", "--outbox", str(filled), "--dead")
    assert code == 0
    assert "visitor-1" in out and "EXEG-0003-400" in out and "401 bad client key" in out
    assert "Rule2" in out

    code, out, _ = invoke("list", "--outbox", str(filled), "--dead", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [2, 3]
    assert rows[0]["state"] == "dead" and rows[0]["attempts"] == 1
    assert rows[0]["body"] == make_request(1).body
    assert rows[0]["event_id"] == "evt-1" and rows[0]["failed_at"] is not None

    code, out, _ = invoke("list", "--outbox", str(filled), "--json", "--limit", "1")
    assert [r["id"] for r in json.loads(out)] == [1]


def test_cli_list_counts_what_a_running_process_has_not_read_in_yet(filled: Path) -> None:
    with Outbox(filled) as running:  # a live app: its sends sit in its journal until a claim
        running.append_many([(make_request(n), f"later-{n}") for n in range(3)])
        code, out, _ = invoke("list", "--outbox", str(filled))
        assert code == 0 and "later-0" not in out
        assert "2 pending (1 in flight), 2 dead" in out
        assert "3 journaled (more in the journals of running processes" in out
        assert len(running.pending()) == 5  # read in now
        code, out, _ = invoke("list", "--outbox", str(filled))
        assert "later-0" in out and "5 pending (1 in flight), 2 dead" in out
        assert "0 journaled, 0 quarantined" in out and "journals" not in out
        running.append_many([(make_request(9), "later-9")])
        with Outbox(filled) as other:
            assert other.journaled() == 1
            assert running.journaled() == 0  # its own are read in first
            assert other.journaled() == 0


def test_cli_retry(filled: Path) -> None:
    code, out, _ = invoke("retry", "--outbox", str(filled), "2")
    assert code == 0 and "1 dead letter back to pending" in out
    with Outbox(filled) as box:
        assert [e.id for e in box.dead()] == [3]
        entry = box.get(2)
        assert entry is not None and entry.state == "pending" and entry.attempts == 0

    code, _, err = invoke("retry", "--outbox", str(filled), "3", "77")
    assert code == 1 and "77" in err
    with Outbox(filled) as box:
        assert box.dead() == []

    code, _, err = invoke("retry", "--outbox", str(filled))
    assert code == 2 and "--all" in err
    code, out, _ = invoke("retry", "--outbox", str(filled), "--all")
    assert code == 0 and "0 dead letters back to pending" in out


def test_cli_purge(filled: Path) -> None:
    code, out, _ = invoke("purge", "--outbox", str(filled), "2")
    assert code == 0 and "1 entry purged" in out
    code, out, _ = invoke("purge", "--outbox", str(filled), "--pending", "4")
    assert code == 0 and "1 entry purged" in out
    code, _, err = invoke("purge", "--outbox", str(filled), "--pending", "4")
    assert code == 1 and "not found" in err
    with Outbox(filled) as box:
        assert [e.id for e in box.pending()] == [1] and [e.id for e in box.dead()] == [3]
    code, out, _ = invoke("purge", "--outbox", str(filled), "--all")
    assert code == 0 and "2 entries purged" in out
    with Outbox(filled) as box:
        assert box.counts() == {"pending": 0, "inflight": 0, "dead": 0}


def test_cli_missing_or_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    for command in ("list", "retry", "purge"):
        args = [command, "--outbox", str(missing)] + (["--all"] if command == "retry" else [])
        code, out, err = invoke(*args)
        assert code == 1 and f"no outbox at {missing}" in err and out == ""
    assert not missing.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not sqlite at all\n" * 200)
    code, _, err = invoke("list", "--outbox", str(garbage))
    assert code == 1 and "cannot open outbox" in err
    code, _, err = invoke("list", "--outbox", str(tmp_path))
    assert code == 1 and "directory" in err
