"""What an idle session costs (a session is at most 1 KB plus its state), measured, and the parts
made on first use that keep it so: its kept values, identity and firing history, its visitor's
memory (shared once the visitor has a second session), its lock (held only while taken)."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from typing import Any

import pytest

from benchmarks.memory import OVERHEAD_TARGET, measure
from engine import Engine
from engine.sessions import _HELD, Session, VisitorMemory
from engine.stores.memory import MemorySessions
from tests.conftest import load_text

SESSIONS = 2_000
MEASURED = 6_000  # more than the engine's bounded caches hold (benchmarks.memory.QUICK_SESSIONS)


def _lock_of(owner: Session | VisitorMemory) -> Any:
    """The lock a session or visitor memory shares with its visitor, if one is made."""
    held = _HELD.get(owner.visitor_id)
    return None if held is None else held[0]


def _bytes_per_session(make: Any, count: int = SESSIONS) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [make(i) for i in range(count)]
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == count
    return grown / count


# ---------------------------------------------------------------------- measured
def test_an_idle_session_after_a_page_view_is_at_most_1_kb_plus_its_state() -> None:
    figures = measure(MEASURED)  # the shop journey's first page view, rules/, in memory
    assert figures.state > 500  # the page the push described: the data layer holds it
    assert figures.overhead <= OVERHEAD_TARGET, figures  # (1,571 bytes before: 1.53x)


def test_an_empty_session_holds_its_id_state_and_times_only() -> None:
    store = MemorySessions()
    per_session = _bytes_per_session(lambda i: store.get(f"web-{i:06d}"))
    # The session object, its id, an empty state, a time and the store's entry (was 1,226)
    assert per_session <= 512, per_session
    session = store.get("web-000001")
    dicts = [x for x in gc.get_referents(session) if type(x) is dict]
    assert dicts == [session.state] == [{}]  # no kept values, firings, identity made yet
    assert session._visitor is None and _lock_of(session) is None  # nor memory, nor a lock
    assert store._visitors == {}  # a session is its visitor's by default: nothing to share


def test_a_session_with_its_own_visitor_id_costs_no_memory_either() -> None:
    store = MemorySessions()
    one = _bytes_per_session(lambda i: store.get(f"s-{i:06d}", f"v-{i:06d}"))
    assert one <= 512 + 120, one  # its visitor id and one entry for the visitor, no more
    session = store.get("s-000001", "v-000001")
    assert session._visitor is None and store._visitors["v-000001"] is session


def test_a_session_object_has_no_instance_dict() -> None:
    session = Session("s")
    assert not hasattr(session, "__dict__")
    assert not hasattr(VisitorMemory("v"), "__dict__")
    with pytest.raises(AttributeError):
        session.anything = 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- made on first use
def test_reading_makes_nothing_writing_makes_what_it_writes() -> None:
    session = Session("s", now=1.0)
    assert session.limit_reached("r", 1, "session", 2.0) is False
    assert session.limit_reached("r", 1, "visitor", 2.0) is False
    assert session.limit_reached("r", 1, "hour", 2.0) is False
    assert dict(session.visitor_kept) == {}
    session.new_pageview()
    export = session.export()
    assert export["kept"] == {"pageview": {}, "session": {}, "visitor": {}}
    assert export["firings"] == {"session": {}, "visitor": {}} and export["identity"] == {}
    assert (session._pageview, session._session_kept, session._firings) == (None, None, None)
    assert session._identity is None and session._visitor is None and _lock_of(session) is None

    session.kept["session"]["campaign"] = "c1"
    assert session._session_kept == {"campaign": "c1"} and session._pageview is None
    session.record_firing("r", ["session"], 5.0)
    assert session.firings == {"r": [5.0]} and session._visitor is None
    session.record_firing("r", ["visitor"], 6.0)
    assert session.visitor.firings == {"r": [6.0]}
    assert session.limit_reached("r", 1, "visitor", 7.0) is True


def test_an_export_round_trips_whatever_was_made() -> None:
    session = Session("s", "v", now=10.0)
    session.kept["pageview"]["section"] = "news"
    session.identity["ecid"] = "123"
    data = session.export()
    restored = Session.from_export(data)
    assert restored.export() == data
    assert restored._session_kept is None and restored._visitor is None  # nothing to hold
    assert restored.kept == session.kept and restored.identity == {"ecid": "123"}


# ---------------------------------------------------------------------- visitors
def test_a_visitors_second_session_shares_its_memory() -> None:
    store = MemorySessions()
    first = store.get("v")  # the visitor's own session: no memory yet
    assert first._visitor is None
    first.visitor.kept["segment"] = "gold"  # made on first use, not shared yet
    assert store._visitors == {}
    second = store.get("s2", "v")
    assert second.visitor is first.visitor and second.kept["visitor"] == {"segment": "gold"}
    assert store._visitors["v"] is first.visitor and first.visitor.sessions == 2
    third = store.get("v3")  # another visitor
    assert third.kept["visitor"] == {}

    store.remove("v")
    assert store.get("s2", "v").kept["visitor"] == {"segment": "gold"}
    assert store._visitors["v"] is second.visitor and second.visitor.sessions == 1
    store.remove("s2")
    assert "v" not in store._visitors  # gone with the visitor's last session
    assert store.get("v").kept["visitor"] == {}  # a new visit starts afresh


def test_sessions_of_a_named_visitor_share_a_memory_made_when_the_second_comes() -> None:
    store = MemorySessions()
    one = store.get("a", "w")
    assert one._visitor is None and store._visitors["w"] is one
    two = store.get("b", "w")
    assert one._visitor is not None and two.visitor is one.visitor
    one.kept["visitor"]["seen"] = True
    assert two.kept["visitor"] == {"seen": True}
    store.remove("a")
    three = store.get("c", "w")
    assert three.visitor is two.visitor and three.visitor.sessions == 2
    store.remove("b")
    store.remove("c")
    assert store._visitors == {}


def test_a_restored_session_joins_the_visitors_only_live_session() -> None:
    store = MemorySessions()
    exported = Session("s2", "v", now=time.time())
    exported.visitor.kept.update({"segment": "silver", "tier": "b"})
    data = exported.export()
    live = store.get("v")  # the visitor's own session, no memory yet
    live.visitor.kept["segment"] = "gold"  # the live value wins over the export's
    restored = store.restore(data)
    assert restored.visitor is live.visitor
    assert live.visitor.kept == {"segment": "gold", "tier": "b"}
    assert store._visitors["v"] is live.visitor and live.visitor.sessions == 2
    # a restore replacing the visitor's only session keeps it unshared
    alone = MemorySessions()
    alone.get("x").identity["ecid"] = "1"
    again = alone.restore(Session("x", now=time.time()).export())
    assert again.identity == {} and alone._visitors == {} and alone.get("x") is again


def test_a_failed_push_puts_back_what_it_made() -> None:
    store = MemorySessions()
    session = store.get("s")
    with pytest.raises(RuntimeError), store.begin("s", None, time.time()) as transaction:
        transaction.session.identity["ecid"] = "made"
        transaction.session.kept["visitor"]["segment"] = "gold"
        transaction.session.record_firing("r", ["session", "visitor"], 1.0)
        raise RuntimeError("the outbox said no")
    assert session.export()["identity"] == {}
    assert session.export()["kept"]["visitor"] == {} and session.firings == {}
    assert session.visitor.firings == {} and _lock_of(session) is None


# ---------------------------------------------------------------------- the lock
def test_the_lock_is_reentrant_and_given_up_when_nobody_wants_it() -> None:
    session = Session("s")
    with session.lock:
        held = _lock_of(session)
        assert held is not None
        with session.lock:
            assert _lock_of(session) is held
        assert session.lock.acquire(timeout=0.01)  # again, by its holder
        session.lock.release()
        taken: list[bool] = []
        other = threading.Thread(target=lambda: taken.append(session.lock.acquire(timeout=0.05)))
        other.start()
        other.join()
        assert taken == [False]  # another thread waits, and gives up after its timeout
    assert _lock_of(session) is None and session.visitor_id not in _HELD
    with pytest.raises(RuntimeError):
        session.lock.release()


def test_a_visitors_sessions_and_memory_share_one_lock_and_others_do_not_wait() -> None:
    """A push holds its visitor's lock, which each of the visitor's sessions and its memory
    answer to: a reader of another session of the visitor waits for it, another visitor's
    does not; and a session is not packed while any thread holds its visitor."""
    store = MemorySessions()
    mine, other = store.get("a", "v"), store.get("b", "v")
    stranger = store.get("c", "w")

    def taken(lockable: Session | VisitorMemory) -> bool:
        got: list[bool] = []

        def take() -> None:
            got.append(lockable.lock.acquire(timeout=0.05))
            if got[0]:
                lockable.lock.release()

        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        return got[0]

    with store.begin("a", "v", time.time()) as transaction:
        assert transaction.session is mine
        assert not taken(other) and not taken(mine) and not taken(other.visitor)
        assert taken(stranger)
        assert other._pack() is None  # (held: packed later)
        with other.lock:  # the holder takes it again, any session of the visitor
            transaction.commit((), None, time.time())
    assert taken(other) and _lock_of(mine) is None and _lock_of(stranger) is None
    assert other._pack() is True


def test_the_lock_keeps_one_thread_at_a_time() -> None:
    session = Session("s")
    counts = {"in": 0, "most": 0, "done": 0}
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(500):
            with session.lock:
                counts["in"] += 1
                counts["most"] = max(counts["most"], counts["in"])
                done = counts["done"]
                if done % 50 == 0:
                    time.sleep(0)  # let another thread try
                counts["done"] = done + 1
                counts["in"] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == {"in": 0, "most": 1, "done": 4_000}
    assert _lock_of(session) is None and session.visitor_id not in _HELD


RULES = """
edge {
  datastream: "ds-memory"
}
rule "Tick" {
  on "tick"
  limit 100000 per session
  limit 100000 per visitor
  send event { type: "web.webinteraction.linkClicks", data.n: state.n }
}
"""


def test_concurrent_pushes_to_one_session_lose_no_update() -> None:
    with Engine(load_text(RULES), dry_run=True) as engine:
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(thread: int) -> None:
            start.wait()
            try:
                for i in range(500):
                    engine.push({"event": "tick", "n": thread * 1000 + i}, session="one")
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        session = engine.sessions.read("one")
        assert session is not None and session.pushes == 4_000
        assert len(session.firings["Tick"]) == 4_000
        assert len(session.visitor.firings["Tick"]) == 4_000
        assert _lock_of(session) is None and _lock_of(session.visitor) is None
