"""Idle sessions packed (``MemorySessions(hot=N)``, README "Garbage collection"): a session not
among the ``hot`` used last holds its state, kept values, firings and identity as one bytes
object, out of the garbage collector's way, and reads, pushes and exports exactly as before."""

from __future__ import annotations

import gc
import itertools
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.emulator import EmulatorServer
from engine.runtime import Ids
from engine.sessions import Session
from engine.stores.memory import _BUSY, MemorySessions
from tests.test_sessions import Clock, busy_session

ROOT = Path(__file__).resolve().parents[1]


def busy(store: MemorySessions) -> Session:
    """The store's session "s1" with something in every part of it."""
    store.get("s1", "v1")  # (an empty store is falsy: busy_session would make its own)
    return busy_session(store)


def packed(session: Session) -> bool:
    return session._packed is not None


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is float:
        return math.copysign(1, a) == math.copysign(1, b) and a == b
    return bool(a == b)


def test_a_session_not_among_the_hot_is_packed_and_reads_as_it_was() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = busy(store)
    before = session.export()
    assert not packed(session)
    store.get("s2")  # one more than `hot`: the least recently used is packed
    assert packed(session)
    # What it holds now is one bytes object (and its ids and times): nothing for a full
    # collection to walk through.
    shared = (Session, session._visitor)  # its class, the visitor's memory: not its own
    assert not [o for o in gc.get_referents(session) if gc.is_tracked(o) and o not in shared]
    assert session.state["page"]["title"] == "Home"  # any read unpacks it
    assert not packed(session)
    assert session.export() == before


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.export(),
        lambda s: s.identity,
        lambda s: s.kept["pageview"],
        lambda s: s.kept.get("session"),
        lambda s: s.get_state(),
        lambda s: s.limit_reached("once", 1, "session", 200.0),
        lambda s: s.firings,
    ],
    ids=["export", "identity", "kept", "kept.get", "get_state", "limit_reached", "firings"],
)
def test_every_way_in_finds_the_packed_parts(read: Any) -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = busy(store)
    before = session.export()
    store.get("s2")
    assert packed(session)
    read(session)
    assert session.export() == before
    assert session.limit_reached("once", 1, "session", 200.0)


def test_setting_a_part_of_a_packed_session_keeps_the_rest() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = busy(store)
    store.get("s2")
    assert packed(session)
    session.identity = {"ecid": "456"}
    assert session.identity == {"ecid": "456"}
    assert session.kept["session"] == {"campaign": {"id": "c1"}}
    store.get("s3")
    store.get("s2")
    session.firings = {}
    assert session.firings == {} and session.state["page"]["tags"] == [1, 2.5]


def test_the_store_packs_the_least_recently_used_and_unpacks_on_use() -> None:
    clock = Clock()
    store = MemorySessions(hot=3, clock=clock)
    for n in range(6):
        clock.now += 1
        store.get(f"s{n}").state = {"n": n}
    assert [sid for sid in store._sessions if packed(store._sessions[sid])] == ["s0", "s1", "s2"]
    clock.now += 1
    assert store.get("s0").state == {"n": 0}  # used: unpacked, and s3 packed in its place
    assert [sid for sid in store._sessions if packed(store._sessions[sid])] == ["s1", "s2", "s3"]
    peeked = store.peek("s1")
    assert peeked is not None and packed(peeked)  # a look is not a use
    assert peeked.state == {"n": 1} and not packed(peeked)  # a read unpacks it
    store.get("s0")  # the next use counts it among the hot ones again, and packs another
    assert packed(store._sessions["s4"]) and not packed(peeked)
    assert store.remove("s5") is not None and "s5" not in (store._hot or {})
    assert len(store._hot or {}) <= 3


def test_until_the_store_holds_more_than_hot_nothing_is_tracked() -> None:
    store = MemorySessions(hot=5, clock=Clock())
    for n in range(5):
        store.get(f"s{n}")
    assert store._hot is None  # no entry per session while nothing needs packing
    store.get("s5")
    assert store._hot is not None and len(store._hot) == 5


def test_a_session_a_thread_holds_is_not_packed() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = busy(store)
    with session.lock:
        store.get("s2")
        store.get("s3")
        assert not packed(session)
    with store.begin("s1", "v1", 200.0) as hold:  # a push in flight
        store.get("s4")
        store.get("s5")
        assert not packed(hold.session)
        hold.session.state = {"changed": True}
        hold.commit([], None, 200.0)
    store.get("s6")
    store.get("s7")
    assert packed(session)
    assert session.state == {"changed": True}


def test_a_push_that_fails_on_a_packed_session_puts_it_back() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = busy(store)
    before = session.export()
    store.get("s2")
    assert packed(session)
    with pytest.raises(RuntimeError), store.begin("s1", "v1", 200.0) as hold:
        hold.session.state = {"half": "done"}
        hold.session.record_firing("once", ["session"], 200.0)
        raise RuntimeError("the outbox refused")
    exported = session.export()
    assert exported == {**before, "last_seen": exported["last_seen"]}


def test_a_session_holding_what_cannot_be_packed_stays_as_it_is() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    odd = object()
    session = store.get("s1")
    session.identity = {"client": odd}  # an app's own object: not plain data
    store.get("s2")
    store.get("s3")
    assert not packed(session) and session.identity["client"] is odd
    assert packed(store._sessions["s2"])


def test_threads_pushing_and_reading_lose_nothing_while_sessions_pack() -> None:
    store = MemorySessions(hot=2, clock=Clock())
    ids = [f"s{n}" for n in range(12)]
    rounds = 150
    errors: list[BaseException] = []

    def push(offset: int) -> None:
        try:
            for n in range(rounds):
                sid = ids[(n + offset) % len(ids)]
                with store.begin(sid, None, 100.0) as hold:
                    session = hold.session
                    counts = dict(session.state)
                    counts[str(offset)] = counts.get(str(offset), 0) + 1
                    session.state = counts
                    session.identity["pushes"] = session.identity.get("pushes", 0) + 1
                    hold.commit([], None, 100.0)
        except BaseException as error:
            errors.append(error)

    def read() -> None:
        try:
            for n in range(rounds * 4):
                found = store.peek(ids[n % len(ids)])
                if found is not None:
                    json.dumps(found.export())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=push, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(map(packed, store._sessions.values())) >= len(ids) - 2
    total = 0
    for sid in ids:
        session = store._sessions[sid]
        counts = session.state
        assert session.identity["pushes"] == sum(counts.values())
        total += sum(counts.values())
    assert total == 4 * rounds


def _journeys(copies: int) -> list[tuple[str, dict[str, Any]]]:
    """The shop's journeys, ``copies`` visitors each, their pushes interleaved."""
    lines = [
        json.loads(line)
        for line in (ROOT / "examples" / "shop.jsonl").read_text().splitlines()
        if line.strip()
    ]
    per: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        per.setdefault(line["session"], []).append(line["push"])
    queues = [
        [(f"{sid}-{k}", push) for push in pushes]
        for sid, pushes in per.items()
        for k in range(copies)
    ]
    return [step for batch in itertools.zip_longest(*queues) for step in batch if step]


def _engine(sessions: MemorySessions) -> Engine:
    count = itertools.count()
    ids = Ids(*(lambda: f"id-{next(count)}" for _ in range(3)))
    clock = itertools.count(1_800_000_000, 7)
    return Engine.from_path(
        ROOT / "rules", dry_run=True, sessions=sessions, ids=ids, clock=lambda: float(next(clock))
    )


def test_a_journey_runs_the_same_with_every_idle_session_packed() -> None:
    steps = _journeys(copies=4)
    seen: list[list[Any]] = []
    exports: list[dict[str, Any]] = []
    for store in (MemorySessions(), MemorySessions(hot=1)):
        results: list[Any] = []
        with _engine(store) as engine:
            for sid, push in steps:
                result = engine.session(sid).push(push)
                results.append(
                    [
                        [(o.rule, o.status) for o in result.rules],
                        [s.body for s in result.sends],
                        result.snapshot,
                    ]
                )
            sessions = {sid for sid, _ in steps}
            if store.hot == 1:
                assert sum(packed(store._sessions[sid]) for sid in sessions) == len(sessions) - 1
            exports.append({sid: engine.sessions.read(sid).export() for sid in sorted(sessions)})  # type: ignore[union-attr]
        seen.append(results)
    assert seen[0] == seen[1]
    assert exports[0] == exports[1]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    state=st.dictionaries(st.text(max_size=5), _json, max_size=5),
    identity=st.none() | st.dictionaries(st.text(max_size=5), _json, max_size=3),
    kept=st.none() | st.dictionaries(st.text(max_size=5), _json, max_size=3),
    firings=st.none()
    | st.dictionaries(st.text(max_size=5), st.lists(st.floats(0, 2e9), max_size=3), max_size=3),
)
def test_packing_round_trips_every_part_exactly(
    state: dict[str, Any],
    identity: dict[str, Any] | None,
    kept: dict[str, Any] | None,
    firings: dict[str, list[float]] | None,
) -> None:
    session = Session("s1", now=100.0)
    session.state, session._identity, session._session_kept = state, identity, kept
    session._pageview, session._firings = kept, firings  # one object in two parts, too
    assert session._pack()
    assert same(session.state, state)
    assert same(session._identity, identity)
    assert same(session._session_kept, kept) and same(session._pageview, kept)
    assert same(session._firings, firings)


def test_a_state_set_while_packed_is_not_undone_by_the_unpacking() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = busy(store)
    store.get("s2")
    assert packed(session)
    session.state = {"v": "new"}  # (a plain slot: no setter unpacks first)
    assert session.identity["ecid"] == "123"  # unpacks the rest
    assert session.state == {"v": "new"} and session.export()["state"] == {"v": "new"}


def test_what_marshal_would_change_is_not_packed() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    session = store.get("s1")
    session.identity = {"raw": bytearray(b"x"), "ok": [1, 2.5, None]}
    store.get("s2")
    store.get("s3")
    assert not packed(session) and type(session.identity["raw"]) is bytearray


def test_sessions_that_cannot_be_packed_do_not_grow_the_hot_ones() -> None:
    import datetime

    store = MemorySessions(hot=3, clock=Clock(200.0))
    for n in range(50):
        store.get(f"s{n}").identity = {"at": datetime.date(2026, 1, 1)}  # not plain data
    assert store._hot is not None and len(store._hot) <= 3
    assert not any(map(packed, store._sessions.values()))


def test_reads_racing_packing_never_fail_and_read_sessions_are_counted_again() -> None:
    store = MemorySessions(hot=1, clock=Clock(200.0))
    ids = [f"s{n}" for n in range(40)]
    for n, sid in enumerate(ids):
        store.get(sid).identity["n"] = n
    sessions = [store._sessions[sid] for sid in ids]
    errors: list[str] = []
    stop = threading.Event()

    def use(offset: int) -> None:
        n = offset
        while not stop.is_set():
            store.get(ids[n % len(ids)])  # packs another each time
            n += 7

    def read(offset: int) -> None:
        n = offset
        while not stop.is_set():
            session = sessions[n % len(sessions)]
            n += 1
            try:
                assert session.get_state() == {}
                assert session.identity["n"] == int(session.id[1:])
                if n % 64 == 0:  # what delivery reads, through the store
                    assert store.identity(session.id) == {"n": int(session.id[1:])}
            except (AttributeError, AssertionError) as error:
                errors.append(repr(error))
                return

    threads = [threading.Thread(target=use, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=read, args=(k,)) for k in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: in the middle of a pack or a read
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    store.get(ids[0])  # a use: those the readers unpacked count as hot again, then packed
    unpacked = [s.id for s in sessions if not packed(s)]
    assert len(unpacked) <= 1 + _BUSY, unpacked


def test_background_delivery_keeps_one_identity_per_session_while_sessions_pack(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Delivery threads read and merge identities while pushes pack the sessions they
    belong to: each session still ends with the one ECID and Sitecore browser id Edge and
    Sitecore issued, and every send made is delivered."""
    steps = _journeys(copies=3)
    sessions = sorted({sid for sid, _ in steps})
    with Engine.from_path(
        ROOT / "rules",
        edge_url=emulator.url,
        sitecore_url=emulator.url,
        background=True,
        outbox=tmp_path / "o.db",
        sessions=MemorySessions(hot=1),
    ) as engine:
        made = sum(len(engine.session(sid).push(push).sends) for sid, push in steps)
        assert engine.flush(30)
        identities = {sid: engine.sessions.read(sid).identity for sid in sessions}  # type: ignore[union-attr]
    delivered = [r for r in emulator.requests() if r.path.startswith(("/ee/", "/v1.2/event"))]
    assert len(delivered) == made and all(
        r.status is not None and r.status < 300 for r in delivered
    )
    ecids = {identity.get("ecid") for identity in identities.values()}
    browsers = {identity.get("sitecore_browser_id") for identity in identities.values()}
    assert None not in ecids and len(ecids) == len(sessions)
    assert None not in browsers and len(browsers) == len(sessions)
    # Each Sitecore event went out with its session's browser id, the one it kept.
    sent_with = {r.body["browser_id"] for r in delivered if r.path.startswith("/v1.2/event")}
    assert sent_with <= browsers
