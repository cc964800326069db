"""``tagengine outbox list``: the backlog's figures and the quarantine, as text and JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli_outbox import list_outbox
from engine.stores import journal
from engine.stores.sqlite import Outbox
from tests.test_outbox import invoke, make_request
from tests.test_outbox_recovery import Child, append_and_kill, children, record_spans

__all__ = ["children"]  # the fixture, used here

pytestmark = pytest.mark.skipif(not journal.AVAILABLE, reason="the journal needs flock")


@pytest.fixture
def damaged(tmp_path: Path, children: list[Child]) -> Iterator[tuple[Path, str, int, int]]:
    """An outbox whose dead process's journal had its record 5 of 10 damaged: the outbox
    file, the journal's name, the record's offset and length."""
    path = tmp_path / "o.db"
    left = append_and_kill(children, path, 10)
    start, stop = record_spans(left)[5]
    data = bytearray(left.read_bytes())
    data[start + 40] ^= 0x01
    left.write_bytes(bytes(data))
    yield path, left.name, start, stop - start


def test_list_shows_the_backlog_and_the_quarantine(damaged: tuple[Path, str, int, int]) -> None:
    path, name, offset, length = damaged
    code, out, _ = invoke("list", "--outbox", str(path))  # opening adopts the journal
    assert code == 0
    assert "9 pending (0 in flight), 0 dead; the oldest stored" in out
    assert "0 journaled, 1 quarantined" in out
    assert f"1 unreadable journal chunk ({length} bytes) kept aside, not delivered, in " in out
    assert f"{path}-quarantine" in out.replace("\n", "")
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert row.split()[1:4] == [str(offset), str(length), "unreadable"]
    assert time.strftime("%Y-%m-%d") in row


def test_list_json_stays_an_array_and_gives_the_backlog_on_request(
    damaged: tuple[Path, str, int, int],
) -> None:
    path, name, offset, length = damaged
    code, out, _ = invoke("list", "--outbox", str(path), "--json")
    rows = json.loads(out)
    assert code == 0 and isinstance(rows, list) and len(rows) == 9
    assert rows[0]["event_id"] == "evt-0" and rows[0]["state"] == "pending"
    code, out, _ = invoke("list", "--outbox", str(path), "--json", "--with-backlog", "--limit", "2")
    document = json.loads(out)
    assert code == 0 and [r["event_id"] for r in document["entries"]] == ["evt-0", "evt-1"]
    backlog = document["backlog"]
    assert {k: v for k, v in backlog.items() if k != "oldest_age"} == {
        "pending": 9,
        "inflight": 0,
        "dead": 0,
        "journaled": 0,
        "quarantined": 1,
        "consent_dropped": 0,
        "held": 0,
    }
    assert backlog["oldest_age"] >= 0
    quarantine = document["quarantine"]
    assert quarantine["path"] == f"{path}-quarantine"
    (chunk,) = quarantine["chunks"]
    assert (chunk["journal"], chunk["offset"], chunk["bytes"]) == (name, offset, length)
    assert chunk["reason"] == "unreadable" and chunk["time"] <= time.time()


def test_list_of_a_clean_outbox_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.put(make_request(1), "s", now=time.time() - 120)
    code, out, _ = invoke("list", "--outbox", str(path))
    assert code == 0
    assert "1 pending (0 in flight), 0 dead; the oldest stored 2m ago" in out
    assert "0 journaled, 0 quarantined" in out and "kept aside" not in out
    # The listing takes any outbox that has the figures: one in memory here.
    with Outbox() as memory:
        memory.append_many([(make_request(2), "m")])
        list_outbox(memory, as_json=True, with_backlog=True)
    document = json.loads(capsys.readouterr().out)
    assert document["backlog"]["pending"] == 1 and document["quarantine"] is None
