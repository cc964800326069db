"""Background delivery of Edge collect batches: a session's queued collect sends leave as one
request, settled together, against the emulator over loopback, with real files and threads."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.clients import RetryPolicy
from engine.destinations.base import Request, serialize_bytes
from engine.dispatch import Dispatcher
from engine.emulator import EmulatorServer, Fault
from engine.runtime import Targets
from engine.stores.sqlite import Entry, Outbox
from tests.conftest import SETTINGS, load_text
from tests.test_background import (
    FAST,
    RULES,
    Harness,
    HarnessFactory,
    harnesses,
    page_name,
)
from tests.test_collect_batch import EXIT_RULE

BIG = 2**64 + 1  # beyond 64 bits: json writes it exactly, orjson would read it as a float


@pytest.fixture
def harness() -> Iterator[HarnessFactory]:
    yield from harnesses()


EXITS = RULES + EXIT_RULE


def identified(h: Harness, url: str, session: str) -> None:
    """A first page view, delivered at once (not through the outbox): the session has an
    identity, so its unloading events are built as collect requests from now on."""
    (send,) = h.engine.session(session).push({"event": "page.view", "page": {"name": "home"}}).sends
    live = h.engine.sessions.peek(session)
    assert live is not None
    dispatcher = Dispatcher(policy=FAST)
    try:
        dispatcher.deliver(send, live, Targets.of(h.engine.ruleset, url, url))
    finally:
        dispatcher.close()
    assert send.status == 200 and live.identity.get("has_identity")


def exit_links(h: Harness, session: str, links: range) -> None:
    for index in links:
        result = h.engine.session(session).push({"event": "exit", "link": f"link {index}"})
        assert [send.request.kind for send in result.sends] == ["collect"]
        h.background.submit(result, session)


def collected(server: EmulatorServer) -> list[list[str]]:
    """The link names each accepted collect request carried, in arrival order."""
    return [
        [e["xdm"]["web"]["webInteraction"]["name"] for e in r.body["events"]]
        for r in server.requests("/ee/")
        if r.path.endswith("/collect") and r.status == 204 and r.fault is None
    ]


def test_queued_collect_sends_go_in_batches_in_order(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(emulator.url, Outbox(tmp_path / "out.db"), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    exit_links(h, "v", range(250))  # queued while nothing delivers
    h.background.start()
    assert h.background.flush(20)
    batches = collected(emulator)
    assert [len(b) for b in batches] == [100, 100, 50]
    assert [name for b in batches for name in b] == [f"link {i}" for i in range(250)]
    delivered = [send for _, send in h.results]
    assert len(delivered) == 250 and all(send.status == 204 for send in delivered)
    assert [send.response["event_id"] for send in delivered] == [
        send.request.event_id for send in delivered
    ]
    assert h.outbox.counts() == {"pending": 0, "inflight": 0, "dead": 0}


def test_a_batch_stops_at_a_send_of_another_kind_and_order_is_kept(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    h = harness(emulator.url, rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    exit_links(h, "v", range(3))
    h.push("v", "middle")  # an interact send between the collect sends
    exit_links(h, "v", range(3, 5))
    h.background.start()
    assert h.background.flush(10)
    arrived = [
        (r.path.rsplit("/", 1)[1], r.body)
        for r in emulator.requests("/ee/")[1:]  # after the first page view
    ]
    assert [action for action, _ in arrived] == ["collect", "interact", "collect"]
    assert collected(emulator) == [["link 0", "link 1", "link 2"], ["link 3", "link 4"]]
    assert page_name(emulator.requests("/ee/")[2]) == "middle"


def test_a_failed_batch_is_rescheduled_whole_and_arrives_once(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    h = harness(emulator.url, rules=EXITS, start=False, policy=RetryPolicy(max_attempts=1))
    identified(h, emulator.url, "v")
    emulator.set_faults(Fault(status=503, retry_after="0", count=2, path="/ee/or2/v2/collect"))
    exit_links(h, "v", range(40))
    h.background.start()
    assert h.background.flush(20)
    failed = [r for r in emulator.requests("/ee/or2/v2/collect") if r.fault is not None]
    assert len(failed) == 2 and all(len(r.body["events"]) == 40 for r in failed)
    assert collected(emulator) == [[f"link {i}" for i in range(40)]]
    assert h.outbox.counts() == {"pending": 0, "inflight": 0, "dead": 0}
    assert len(h.results) == 40 and {s.status for _, s in h.results} == {204}


@contextlib.contextmanager
def claimed_meanwhile(h: Harness, path: Path) -> Iterator[list[Entry]]:
    """What another process delivering from ``path`` manages to claim each time ``h``
    buries a send: nothing, while sends of the batch are still to be settled."""
    other = Outbox(path)
    grabbed: list[Entry] = []
    bury = h.outbox.bury

    def bury_then_someone_claims(entry_id: int, error: str, *, now: float | None = None) -> bool:
        done = bury(entry_id, error, now=now)
        grabbed.extend(other.claim(now=time.time() + 1))
        return done

    h.outbox.bury = bury_then_someone_claims  # type: ignore[method-assign]
    try:
        yield grabbed
    finally:
        other.close()


def test_a_refused_batch_is_retried_one_send_at_a_time(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    """Edge refuses the batch (400), then the first send alone: that one is buried while the
    others, still in flight, cannot be claimed by anyone else; they go through alone."""
    path = tmp_path / "out.db"
    h = harness(emulator.url, Outbox(path), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    emulator.set_faults(Fault(status=400, count=2, path="/ee/or2/v2/collect"))
    exit_links(h, "v", range(3))
    with claimed_meanwhile(h, path) as grabbed:
        h.background.start()
        assert h.background.flush(10)
    assert grabbed == []
    refused = [r for r in emulator.requests("/ee/or2/v2/collect") if r.status == 400]
    assert [len(r.body["events"]) for r in refused] == [3, 1]
    (dead,) = h.outbox.dead()
    assert dead.attempts == 1 and "HTTP 400" in (dead.last_error or "")
    assert collected(emulator) == [["link 1"], ["link 2"]]
    statuses = {send.request.event_id: send.status for _, send in h.results}
    assert len(statuses) == 3 and statuses.pop(dead.event_id) == 400
    assert set(statuses.values()) == {204}


def test_a_send_that_goes_through_alone_after_its_batch_was_refused_shows_no_error(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(emulator.url, Outbox(tmp_path / "out.db"), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    emulator.set_faults(Fault(status=400, count=1, path="/ee/or2/v2/collect"))  # the batch
    exit_links(h, "v", range(3))
    h.background.start()
    assert h.background.flush(10)
    assert h.outbox.counts() == {"pending": 0, "inflight": 0, "dead": 0}
    delivered = [send for _, send in h.results]
    assert [(s.status, s.attempts, s.error) for s in delivered] == [(204, 1, None)] * 3
    assert collected(emulator) == [["link 0"], ["link 1"], ["link 2"]]


def test_a_batch_given_up_on_keeps_its_followers_unclaimable_until_settled(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    """A retryable failure of a batch whose head has used its last round while the sends
    behind it have not: the head is buried first, and the others stay in flight (nobody can
    claim them) until each is rescheduled."""
    path = tmp_path / "out.db"
    h = harness(emulator.url, Outbox(path), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    exit_links(h, "v", range(1))
    (head,) = h.outbox.pending()
    for _ in range(29):  # all but one of QUICK_REDELIVERY's 30 rounds, due now
        h.outbox.retry_later(head.id, "503", time.time() - 1)
    exit_links(h, "v", range(1, 3))  # fresh ones behind it
    emulator.set_faults(Fault(status=503, retry_after="0", count=50, path="/ee/or2/v2/collect"))
    with claimed_meanwhile(h, path) as grabbed:
        h.background.start()
        deadline = time.monotonic() + 10
        while h.outbox.counts()["dead"] == 0:
            assert time.monotonic() < deadline, "the head was never buried"
            time.sleep(0.01)
        h.background.close(timeout=2)
    assert grabbed == []
    assert [d.id for d in h.outbox.dead()] == [head.id]


# ------------------------------------------------------------- parse_bytes: integers > 64 bits
def _collect(value: Any) -> Request:
    body = {"events": [{"xdm": {"_id": "e1", "n": value}}], "meta": {"state": {}}}
    return Request(
        destination="edge",
        rule="r",
        method="POST",
        url="http://127.0.0.1:9/ee/v2/collect?configId=ds&requestId=r1",
        headers=(("Content-Type", "application/json"),),
        body=body,
        body_bytes=serialize_bytes(body, rule="r"),
        kind="collect",
        event_id="e1",
        request_id="r1",
    )


def _get(value: Any) -> Request:
    body = {"type": "VIEW", "n": value}
    return Request(
        destination="sitecore",
        rule="v",
        method="GET",
        url="https://api.example/v1.2/event/create.json?client_key=k&message=%7B%7D",
        headers=(),
        body=body,
        body_bytes=b"",
        kind="event",
        event_id=None,
        request_id=None,
    )


def test_a_stored_integer_beyond_64_bits_reads_back_exactly(tmp_path: Path) -> None:
    """orjson does not refuse integers beyond 64 bits, it reads them as floats; so
    parse_bytes never falls back to json for them (as its docstring says it does) and
    Entry.request is no longer "the Request as it was put, field for field"."""
    post, get = _collect(BIG), _get(BIG)
    with Outbox(tmp_path / "out.db") as box:
        box.put(post, "a")
        box.put(get, "b")
        box.append_many([(post, "c"), (get, "d")])  # through the journal's header too
        read = {e.session: e.request for e in box.pending()}
    assert read["a"].body["events"][0]["xdm"]["n"] == BIG
    assert read["b"].body["n"] == BIG
    assert read["c"].body["events"][0]["xdm"]["n"] == BIG
    assert read["d"].body["n"] == BIG
    assert read == {"a": post, "b": get, "c": post, "d": get}


def test_background_delivery_sends_a_64_bit_integer_as_pushed(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    """End to end: the Edge client refreshes ``meta.state`` from the session's identity
    (with_state) and, when the entries changed since the send was built (an earlier
    response stored one), re-serializes the body read back from the outbox: the event then
    carries 1.8446744073709552e+19 instead of the integer pushed. (A push takes integers up
    to 64 bits: the largest, beyond JavaScript's 2**53.)"""
    h = harness(emulator.url, Outbox(tmp_path / "out.db"), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    largest = 2**64 - 1
    for link in (largest - 2, largest):  # two sends: one merged request
        result = h.engine.session("v").push({"event": "exit", "link": link})
        h.background.submit(result, "v")
    live = h.engine.sessions.peek("v")
    assert live is not None
    live.identity["entries"] = [
        *live.identity.get("entries", []),
        {"key": "kndctr_later_cluster", "value": "or2"},
    ]
    h.background.start()
    assert h.background.flush(10)
    sent: list[list[Any]] = collected(emulator)[-1:]
    assert sent == [[largest - 2, largest]]


# ------------------------------------------------------------- a batch packed to the limit
def test_a_batch_packed_to_64_kb_is_not_refused_after_its_state_is_refreshed(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    """batch_collect packs a session's queued collect sends up to 64 KB with the meta they
    were built with; the Edge client checks the size, then refreshes ``meta.state`` from the
    session's identity (with_state), which grows the body past 64 KB when a state entry
    arrived since the sends were built. Edge answers 413 and every send of the batch is
    buried, though each of them, sent alone (as before the change), fits easily."""
    h = harness(emulator.url, Outbox(tmp_path / "out.db"), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    for index in range(100):
        result = h.engine.session("v").push({"event": "exit", "link": f"{index:03} " + "x" * 600})
        h.background.submit(result, "v")
    live = h.engine.sessions.peek("v")
    assert live is not None
    live.identity["entries"] = [
        *live.identity.get("entries", []),
        {"key": "kndctr_later_consent", "value": "c" * 1000},
    ]
    h.background.start()
    assert h.background.flush(10)
    assert [d.last_error for d in h.outbox.dead()][:1] == []  # HTTP 413 EXEG-0112-413 here
    assert sum(len(b) for b in collected(emulator)[-3:]) == 100


# ------------------------------------------------------------- operators, concurrently
def test_purging_the_head_of_a_batch_in_flight_does_not_get_its_followers_sent_twice(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    """The followers of a batch are sent while still ``pending``: purging its head (``in
    flight or not``, as Outbox.purge allows) makes the first follower the session's head, so
    another process claims and sends it, and those behind it, a second time (and on_result
    runs twice for them)."""
    path = tmp_path / "out.db"
    h = harness(emulator.url, Outbox(path), rules=EXITS, start=False)
    identified(h, emulator.url, "v")
    exit_links(h, "v", range(3))
    other = Outbox(path)
    overlap: list[str | None] = []
    attempt = h.background._attempt

    def purge_during_send(request: Request, sends: list[Any], identity: dict[str, Any]) -> Any:
        if len(sends) > 1:
            head = next(e for e in h.outbox.pending() if e.state == "inflight")
            h.outbox.purge("pending", [head.id])  # an operator drops the stuck head
            carried = {send.request.event_id for send in sends}
            overlap.extend(e.event_id for e in other.claim() if e.event_id in carried)
        return attempt(request, sends, identity)

    h.background._attempt = purge_during_send  # type: ignore[method-assign]
    try:
        h.background.start()
        deadline = time.monotonic() + 10
        while h.outbox.counts()["pending"] + h.outbox.counts()["inflight"] > len(overlap):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert overlap == [], "a send being delivered in the batch was claimed again"
    finally:
        h.background.close(timeout=2)
        other.close()


def test_an_engine_in_background_mode_batches_a_sessions_queued_exits(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Through the public API: pushes faster than one request a push can be delivered, so
    the collect sends queue up and leave in batches, each event once, in push order."""
    engine = Engine(
        load_text({"a_settings.rules": SETTINGS, "t.rules": EXITS}),
        edge_url=emulator.url,
        background=True,
        outbox=tmp_path / "outbox.db",
    )
    with engine:
        visitor = engine.session("v")
        visitor.push({"event": "page.view", "page": {"name": "home"}})
        assert engine.flush(timeout=10)  # the visitor has an identity: exits go to collect
        for index in range(300):
            (send,) = visitor.push({"event": "exit", "link": f"link {index}"}).sends
            assert send.request.kind == "collect"
        assert engine.flush(timeout=20)
    batches = collected(emulator)
    assert [name for batch in batches for name in batch] == [f"link {i}" for i in range(300)]
    assert len(batches) < 300 and max(len(batch) for batch in batches) > 1
