"""Sessions and the session store (docs/semantics.md, "Sessions"; language.md `keep`, `sample`,
`limit`; research checklist items 11, 33, 49): export and restore, expiry and eviction,
visitor memory, frequency limits, sample buckets and concurrent access."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
import pytest

from engine import sessions as sessions_module
from engine.datalayer import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_ITEMS,
    merge,
    merge_acdl,
    split,
    validate,
)
from engine.errors import PushError
from engine.scope import Scope
from engine.sessions import Session, VisitorMemory
from engine.stores.memory import MemorySessions
from tests.conftest import load_text


class Clock:
    """A settable clock for the store."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def busy_session(store: MemorySessions | None = None) -> Session:
    """A session with something in every part of it."""
    session = store.get("s1", "v1") if store else Session("s1", "v1", now=100.0)
    session.state, _ = merge_acdl(session.state, {"page": {"title": "Home", "tags": [1, 2.5]}})
    session.kept["pageview"]["section"] = "news"
    session.kept["session"]["campaign"] = {"id": "c1"}
    session.kept["visitor"]["segment"] = "gold"
    session.record_firing("once", ["session"], 120.0)
    session.record_firing("capped", ["visitor", "hour"], 130.0)
    session.identity = {"ecid": "123", "state": [{"key": "kndctr", "value": "x", "maxAge": 10}]}
    session.pushes = 3
    session.last_seen = 150.0
    return session


# ------------------------------------------------------------------ the session itself
def test_a_new_session_is_empty_and_its_visitor_defaults_to_its_id() -> None:
    session = Session("abc", now=5.0)
    assert session.visitor_id == "abc"
    assert session.state == {} and session.identity == {} and session.firings == {}
    assert set(session.kept) == {"pageview", "session", "visitor"}
    assert (session.created, session.last_seen, session.pushes) == (5.0, 5.0, 0)


@pytest.mark.parametrize(("sid", "vid"), [("", None), ("s", ""), (3, None)])
def test_ids_must_be_non_empty_strings(sid: Any, vid: Any) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        Session(sid, vid)


def test_get_state_is_a_copy() -> None:  # checklist 11
    session = busy_session()
    copied = session.get_state()
    copied["page"]["tags"].append(3)
    copied["page"]["title"] = "changed"
    assert session.state == {"page": {"title": "Home", "tags": [1, 2.5]}}


def test_new_pageview_clears_only_pageview_values() -> None:
    session = busy_session()
    pageview = session.kept["pageview"]
    session.new_pageview()
    assert session.kept["pageview"] == {} and session.kept["pageview"] is pageview
    assert session.kept["session"] == {"campaign": {"id": "c1"}}
    assert session.kept["visitor"] == {"segment": "gold"}


# ------------------------------------------------------------------ export and restore
def test_export_survives_json_and_restores_equal() -> None:
    session = busy_session()
    exported = session.export()
    assert exported["format"] == 1
    text = json.dumps(exported, allow_nan=False)
    restored = Session.from_export(json.loads(text))
    assert restored.export() == exported
    assert restored.state == session.state
    assert restored.kept == session.kept
    assert restored.firings == {"once": [120.0]}
    assert restored.identity == session.identity
    assert (restored.created, restored.last_seen, restored.pushes) == (100.0, 150.0, 3)
    assert restored.limit_reached("capped", 1, "visitor", 200.0)
    assert restored.limit_reached("once", 1, "session", 200.0)


def test_export_is_a_copy() -> None:
    session = busy_session()
    exported = session.export()
    exported["kept"]["visitor"]["segment"] = "changed"
    exported["state"]["page"]["title"] = "changed"
    exported["firings"]["session"]["once"].append(1.0)
    assert session.kept["visitor"] == {"segment": "gold"}
    assert session.state["page"]["title"] == "Home"
    assert session.firings == {"once": [120.0]}


def test_export_has_the_visitor_values_and_counters() -> None:
    exported = busy_session().export()
    assert exported["kept"]["visitor"] == {"segment": "gold"}
    assert exported["firings"] == {"session": {"once": [120.0]}, "visitor": {"capped": [130.0]}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [1], "session export: expected an object, got list"),
        (lambda d: {**d, "format": 2}, "unsupported format 2"),
        (lambda d: {**d, "format": True}, "unsupported format True"),
        (lambda d: {k: v for k, v in d.items() if k != "state"}, "missing state"),
        (lambda d: {**d, "id": ""}, "id must be a non-empty string"),
        (lambda d: {**d, "visitor_id": 7}, "visitor_id must be a non-empty string"),
        (lambda d: {**d, "state": []}, "session export: state: expected an object, got list"),
        (lambda d: {**d, "state": {"x": float("nan")}}, "state.x: not a finite number"),
        (lambda d: {**d, "kept": {"forever": {}}}, "kept.forever: unknown keep scope"),
        (lambda d: {**d, "kept": {"session": 1}}, "kept.session: expected an object"),
        (
            lambda d: {**d, "firings": {"session": {"r": ["x"]}}},
            "firings.session.r: not a timestamp",
        ),
        (lambda d: {**d, "firings": {"visitor": {"r": 1}}}, "firings.visitor: expected rule names"),
        (lambda d: {**d, "identity": {"k": (1,)}}, "identity.k: unsupported type tuple"),
        (lambda d: {**d, "pushes": -1}, "pushes must be a non-negative integer"),
        (lambda d: {**d, "created": "now"}, "created must be a finite number"),
    ],
)
def test_a_bad_export_is_refused_clearly(change: Any, message: str) -> None:
    data = change(busy_session().export())
    with pytest.raises(PushError, match=r"^session export") as caught:
        Session.from_export(data)
    assert message in str(caught.value)
    store = MemorySessions(clock=Clock())
    with pytest.raises(PushError):
        store.restore(data)
    assert len(store) == 0


def test_store_restore_shares_visitor_memory_and_marks_the_session_used() -> None:
    clock = Clock(10_000.0)
    store = MemorySessions(clock=clock)
    exported = busy_session().export()
    live = store.get("s2", "v1")
    live.kept["visitor"]["segment"] = "platinum"  # the live value wins over the export's
    live.record_firing("capped", ["visitor"], 9_000.0)

    restored = store.restore(exported)
    assert store.peek("s1") is restored
    assert restored.kept["visitor"] is live.kept["visitor"]
    assert restored.kept["visitor"] == {"segment": "platinum"}
    assert restored.visitor.firings["capped"] == [130.0, 9_000.0]
    assert restored.last_seen == 10_000.0
    assert restored.state == {"page": {"title": "Home", "tags": [1, 2.5]}}


def test_store_restore_replaces_a_live_session_of_the_same_id() -> None:
    store = MemorySessions(clock=Clock())
    first = busy_session(store)
    exported = first.export()
    restored = store.restore(exported)
    assert restored is not first and store.get("s1") is restored and len(store) == 1
    # the visitor memory survived the swap and is still registered for new sessions
    assert store.get("s9", "v1").kept["visitor"] is restored.kept["visitor"]


# ------------------------------------------------------------------ restore limits
def _deep(levels: int) -> Any:
    """A value with ``levels`` levels of containers."""
    value: Any = 1
    for index in range(levels):
        value = {"n": value} if index % 2 else [value]
    return value


def _pushed(mode: str, *items: Any) -> Session:
    """A session whose state is what ``items`` build, as pushes (validate, split, merge)."""
    session = Session("s1", "v1", now=100.0)
    for item in items:
        session.state, _ = merge(mode, session.state, split(validate(item))[1])
    return session


def _round_trip(session: Session) -> Session:
    """Through JSON text (both encoders write it) and back: the same export."""
    exported = session.export()
    text = json.dumps(exported, allow_nan=False)
    assert orjson.loads(orjson.dumps(exported)) == json.loads(text)
    restored = Session.from_export(json.loads(text))
    assert json.dumps(restored.export(), sort_keys=True) == json.dumps(exported, sort_keys=True)
    return restored


def test_restore_limits_follow_from_the_push_limits() -> None:
    # a state is at most MAX_DEPTH deep; a kept copy of it sits two levels below `kept`
    assert sessions_module._RESTORE_DEPTH >= MAX_DEPTH + 2
    # states grow past any one push: restore takes any size
    assert sessions_module._RESTORE_ITEMS >= 2**62


@pytest.mark.parametrize("mode", ["acdl", "gtm"])
def test_the_deepest_state_pushes_can_build_restores_and_so_do_kept_copies(mode: str) -> None:
    items = [{"a": _deep(MAX_DEPTH - 1)}, {"b": {"c": _deep(MAX_DEPTH - 2)}}]
    if mode == "gtm":  # a dotted key's parts count as levels
        items.append({".".join(["d"] * (MAX_DEPTH - 3)): [[1]]})
    session = _pushed(mode, *items)
    with pytest.raises(PushError):
        _pushed(mode, {"a": _deep(MAX_DEPTH)})
    session.kept["session"]["whole"] = session.state  # `element whole = state keep session`
    session.kept["visitor"]["event"] = {"a": _deep(MAX_DEPTH - 1)}  # the pushed item itself
    restored = _round_trip(session)
    assert restored.state == session.state
    assert restored.kept["session"]["whole"] == session.state


@pytest.mark.parametrize("mode", ["acdl", "gtm"])
def test_a_state_larger_than_any_push_restores(mode: str) -> None:
    chunk = MAX_ITEMS - 10
    items = [{f"k{index}": list(range(chunk))} for index in range(6)]
    session = _pushed(mode, *items)
    assert sum(len(value) for value in session.state.values()) == 6 * chunk
    assert _round_trip(session).state == session.state


@pytest.mark.parametrize("number", [INT_MAX, INT_MIN, 2**63, -(2**53) - 1])
def test_64_bit_integers_restore_exactly(number: int) -> None:
    session = _pushed("acdl", {"id": number, "ids": [number]})
    restored = _round_trip(session)
    assert restored.state == {"id": number, "ids": [number]}
    assert type(restored.state["id"]) is int


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("state", "session export: state.n: 18446744073709551616 is beyond the 64-bit range"),
        ("kept", "session export: kept.session.n: 18446744073709551616 is beyond"),
    ],
)
def test_an_export_with_an_integer_beyond_64_bits_is_refused(where: str, message: str) -> None:
    data = busy_session().export()
    if where == "state":
        data["state"]["n"] = 2**64
    else:
        data["kept"]["session"]["n"] = 2**64
    with pytest.raises(PushError) as caught:
        Session.from_export(data)
    assert str(caught.value).startswith(message)


def test_an_export_deeper_than_the_restore_limit_is_refused_not_a_crash() -> None:
    data = busy_session().export()
    data["state"] = {"a": _deep(sessions_module._RESTORE_DEPTH)}
    with pytest.raises(PushError, match=r"^session export: state\.a.*nested deeper than"):
        Session.from_export(data)
    data["state"] = {"a": _deep(100_000)}
    with pytest.raises(PushError, match=r"^session export: state"):
        Session.from_export(data)


def test_from_export_refuses_another_visitors_memory() -> None:
    with pytest.raises(PushError, match="memory of 'v2'"):
        Session.from_export(busy_session().export(), visitor=VisitorMemory("v2"))


# ------------------------------------------------------------------ the store
def test_get_creates_once_and_returns_the_same_session() -> None:
    store = MemorySessions(clock=Clock())
    session = store.get("a")
    assert store.get("a") is session
    assert store.peek("a") is session
    assert store.peek("b") is None
    assert len(store) == 1


def test_idle_sessions_expire_and_are_replaced() -> None:
    clock = Clock(0.0)
    store = MemorySessions(idle_timeout=60, clock=clock)
    session = store.get("a")
    session.kept["session"]["x"] = 1
    clock.now = 59.0
    assert store.get("a") is session  # used at 59: idle time starts again
    clock.now = 118.0
    assert store.peek("a") is session
    clock.now = 119.0
    assert store.peek("a") is None
    fresh = store.get("a")
    assert fresh is not session and fresh.kept["session"] == {} and fresh.created == 119.0
    assert len(store) == 1


def test_get_accepts_an_explicit_now() -> None:
    store = MemorySessions(idle_timeout=60, clock=Clock(0.0))
    session = store.get("a", now=1000.0)
    assert session.created == 1000.0
    assert store.get("a", now=1059.0) is session
    assert store.get("a", now=1119.0) is not session


def test_sweep_drops_expired_sessions_only() -> None:
    clock = Clock(0.0)
    store = MemorySessions(idle_timeout=60, clock=clock)
    store.get("old")
    clock.now = 50.0
    store.get("recent")
    assert store.sweep(now=70.0) == 1
    assert store.peek("old") is None and store.peek("recent") is not None
    clock.now = 200.0
    assert store.sweep() == 1 and len(store) == 0


def test_the_least_recently_used_session_is_evicted_when_full() -> None:
    clock = Clock(0.0)
    store = MemorySessions(max_sessions=3, clock=clock)
    a, _, c = store.get("a"), store.get("b"), store.get("c")
    store.get("a")  # b is now the least recently used
    store.get("d")
    assert len(store) == 3
    assert store.peek("b") is None
    assert store.peek("a") is a and store.peek("c") is c and store.peek("d") is not None


def test_remove_forgets_a_session() -> None:
    store = MemorySessions(clock=Clock())
    session = store.get("a")
    assert store.remove("a") is session
    assert store.remove("a") is None
    assert len(store) == 0 and store.get("a") is not session


@pytest.mark.parametrize("kwargs", [{"idle_timeout": 0}, {"max_sessions": 0}])
def test_store_limits_must_be_positive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MemorySessions(**kwargs)


# ------------------------------------------------------------------ visitor memory
def test_visitor_memory_is_shared_by_sessions_of_one_visitor_only() -> None:  # checklist 33
    store = MemorySessions(clock=Clock())
    one, two = store.get("s1", "v"), store.get("s2", "v")
    other = store.get("s3", "w")
    one.kept["visitor"]["segment"] = "gold"
    one.kept["session"]["campaign"] = "c1"
    assert two.kept["visitor"] == {"segment": "gold"}
    assert two.kept["session"] == {}
    assert other.kept["visitor"] == {}


def test_keep_visitor_elements_fall_back_across_the_visitors_sessions() -> None:  # checklist 33
    ruleset = load_text(
        "element seg = state.segment keep visitor\nelement camp = state.c keep session\n"
    )
    store = MemorySessions(clock=Clock())
    one, two = store.get("s1", "v"), store.get("s2", "v")

    def read(session: Session, state: dict[str, Any], name: str) -> Any:
        return Scope(state, {}, ruleset.elements, session.kept).element(name)

    assert read(one, {"segment": "A", "c": "x"}, "seg") == "A"
    assert read(one, {"segment": "A", "c": "x"}, "camp") == "x"
    assert read(two, {}, "seg") == "A"  # stale by design: a fallback, not a cache
    assert read(two, {}, "camp") is None  # session values stay in their session
    assert read(two, {"segment": "B"}, "seg") == "B"
    assert one.kept["visitor"] == {"seg": "B"}


def test_a_kept_element_found_missing_makes_nothing_to_find_it() -> None:
    ruleset = load_text(
        "element seg = state.segment keep visitor\nelement camp = state.c keep session\n"
        "element page = state.p keep pageview\n"
    )
    session = MemorySessions(clock=Clock()).get("s1")
    scope = Scope({}, {}, ruleset.elements, session.kept)
    assert [scope.element(name) for name in ("seg", "camp", "page")] == [None, None, None]
    assert session._visitor is None and session._session_kept is None
    assert session._pageview is None  # what only a value kept needs, not made
    scope = Scope({"segment": "A"}, {}, ruleset.elements, session.kept)
    assert scope.element("seg") == "A" and session.visitor_kept == {"seg": "A"}


def test_a_session_keeps_the_visitor_it_was_created_with() -> None:
    store = MemorySessions(clock=Clock())
    session = store.get("s1", "v")
    assert store.get("s1", "w") is session and session.visitor_id == "v"


def test_visitor_memory_is_dropped_with_the_visitors_last_session() -> None:
    clock = Clock(0.0)
    store = MemorySessions(idle_timeout=60, clock=clock)
    store.get("s1", "v").kept["visitor"]["segment"] = "gold"
    store.get("s2", "v")
    store.remove("s1")
    assert store.get("s3", "v").kept["visitor"] == {"segment": "gold"}
    store.remove("s2")
    store.remove("s3")
    assert store.get("s4", "v").kept["visitor"] == {}
    clock.now = 100.0  # s4 expired: the visitor has no live session left
    assert store.get("s4", "v").kept["visitor"] == {}


def test_eviction_keeps_visitor_memory_that_a_live_session_still_uses() -> None:
    store = MemorySessions(max_sessions=2, clock=Clock())
    store.get("s1", "v").kept["visitor"]["segment"] = "gold"
    store.get("s2", "w")
    s3 = store.get("s3", "v")  # evicts s1, whose visitor gets s3
    assert store.peek("s1") is None
    assert s3.kept["visitor"] == {"segment": "gold"}


# ------------------------------------------------------------------ limits
def test_limit_per_session_counts_this_sessions_firings() -> None:
    store = MemorySessions(clock=Clock())
    one, two = store.get("s1", "v"), store.get("s2", "v")
    assert not one.limit_reached("r", 2, "session", 0.0)
    one.record_firing("r", ["session"], 0.0)
    assert not one.limit_reached("r", 2, "session", 1.0)
    one.record_firing("r", ["session"], 1.0)
    assert one.limit_reached("r", 2, "session", 1e9)  # forever
    assert not two.limit_reached("r", 2, "session", 2.0)
    assert not one.limit_reached("other", 1, "session", 2.0)


def test_limit_per_visitor_counts_across_the_visitors_sessions() -> None:
    store = MemorySessions(clock=Clock())
    one, two, other = store.get("s1", "v"), store.get("s2", "v"), store.get("s3", "w")
    one.record_firing("r", ["visitor"], 0.0)
    assert not two.limit_reached("r", 2, "visitor", 1.0)
    two.record_firing("r", ["visitor"], 1.0)
    assert one.limit_reached("r", 2, "visitor", 1e9)
    assert two.limit_reached("r", 2, "visitor", 1e9)
    assert not other.limit_reached("r", 1, "visitor", 2.0)
    # a visitor limit never touches the session count
    assert not one.limit_reached("r", 1, "session", 2.0)


@pytest.mark.parametrize(("unit", "window"), [("minute", 60), ("hour", 3600), ("day", 86400)])
def test_rolling_windows(unit: str, window: int) -> None:
    store = MemorySessions(clock=Clock())
    one, two = store.get("s1", "v"), store.get("s2", "v")
    one.record_firing("r", [unit], 0.0)
    two.record_firing("r", [unit], window / 2)
    assert one.limit_reached("r", 2, unit, window / 2)
    assert one.limit_reached("r", 2, unit, window - 0.001)
    # the first firing left the window at exactly `window` seconds
    assert not one.limit_reached("r", 2, unit, float(window))
    assert one.limit_reached("r", 1, unit, float(window))
    assert not one.limit_reached("r", 1, unit, window * 1.5)


def test_windowed_history_is_pruned_but_visitor_history_is_not() -> None:
    session = Session("s")
    for second in range(0, 10_000, 10):
        session.record_firing("windowed", ["minute", "hour"], float(second))
        session.record_firing("forever", ["visitor", "minute"], float(second))
    assert len(session.visitor.firings["windowed"]) <= 3600 // 10 + 1
    assert len(session.visitor.firings["forever"]) == 1000
    assert session.limit_reached("forever", 1000, "visitor", 1e9)
    assert not session.limit_reached("forever", 1001, "visitor", 1e9)
    assert session.firings == {}  # no session unit, nothing kept for the session


def test_several_units_on_one_rule() -> None:
    session = Session("s")
    for t in (0.0, 10.0, 20.0):
        session.record_firing("r", ["session", "minute"], t)
    assert session.limit_reached("r", 3, "session", 1000.0)
    assert session.limit_reached("r", 3, "minute", 30.0)
    assert not session.limit_reached("r", 3, "minute", 70.0)


def test_firings_out_of_clock_order_are_counted_right() -> None:
    session = Session("s")
    session.record_firing("r", ["minute"], 100.0)
    session.record_firing("r", ["minute"], 50.0)  # the clock stepped back
    assert session.limit_reached("r", 2, "minute", 105.0)
    assert not session.limit_reached("r", 2, "minute", 115.0)
    assert session.limit_reached("r", 1, "minute", 115.0)


def test_unknown_units_are_programming_errors() -> None:
    session = Session("s")
    with pytest.raises(ValueError, match="unknown limit unit 'week'"):
        session.limit_reached("r", 1, "week", 0.0)
    with pytest.raises(ValueError, match="unknown limit unit 'week'"):
        session.record_firing("r", ["session", "week"], 0.0)
    assert session.firings == {}


# ------------------------------------------------------------------ sampling
def test_sample_bucket_is_deterministic_and_in_range() -> None:
    a = Session("s1").sample_bucket("rule")
    assert a == Session("s1", "someone").sample_bucket("rule")
    assert 0 <= a < 100
    assert Session("s1").sample_bucket("other rule") != a
    assert Session("s2").sample_bucket("rule") != a


def test_sample_bucket_is_stable_across_processes() -> None:
    # blake2b, not hash(): another interpreter with another hash seed gets the same value
    code = "from engine.sessions import Session; print(repr(Session('s-1').sample_bucket('Buy')))"
    values = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert values == {repr(Session("s-1").sample_bucket("Buy"))}


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_sample_buckets_are_roughly_uniform(percent: int) -> None:
    kept = sum(Session(f"id-{i}").sample_bucket("rule") < percent for i in range(10_000))
    assert abs(kept - percent * 100) < 500


def test_sample_zero_keeps_none_and_hundred_keeps_all() -> None:  # checklist 49
    buckets = [Session(f"id-{i}").sample_bucket("r") for i in range(1000)]
    assert not any(b < 0 for b in buckets)
    assert all(b < 100 for b in buckets)
    assert len(set(buckets)) == len(buckets)


# ------------------------------------------------------------------ concurrency
def test_concurrent_gets_never_create_two_sessions_for_one_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create = Session.__init__

    def slow_create(self: Session, *args: Any, **kwargs: Any) -> None:
        time.sleep(0)  # give up the GIL mid-creation, where a race would strike
        create(self, *args, **kwargs)

    monkeypatch.setattr(Session, "__init__", slow_create)
    store = MemorySessions(clock=Clock())
    seen: dict[str, set[int]] = {}
    seen_lock = threading.Lock()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            barrier.wait()
            local: dict[str, set[int]] = {}
            for i in range(1000):
                # every thread walks the same fresh ids: each creation is raced by all eight
                sid = f"s{i // 2}"
                session = store.get(sid, visitor_id=f"v{i % 7}")
                local.setdefault(sid, set()).add(id(session))
            with seen_lock:
                for sid, ids in local.items():
                    seen.setdefault(sid, set()).update(ids)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to expose races
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert len(store) == 500
    assert all(len(ids) == 1 for ids in seen.values())
    assert all(
        store.peek(sid) is not None and id(store.peek(sid)) in ids for sid, ids in seen.items()
    )


def test_concurrent_firings_on_shared_visitor_memory_are_all_counted() -> None:
    store = MemorySessions(clock=Clock())
    sessions = [store.get(f"s{n}", "v") for n in range(8)]

    def work(session: Session) -> None:
        for i in range(500):
            session.record_firing("r", ["visitor", "session"], float(i))

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sessions[0].limit_reached("r", 4000, "visitor", 0.0)
    assert not sessions[0].limit_reached("r", 4001, "visitor", 0.0)
    assert all(s.limit_reached("r", 500, "session", 0.0) for s in sessions)
