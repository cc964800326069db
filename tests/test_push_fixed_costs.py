"""What the push path's cheaper fixed costs must not change (issue 15): a failed push leaves the
session as it was, firing lists rolled back, consent read without a consent block, fired
outcomes shared but equal."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import pytest

from engine import Engine, PushError
from engine.results import RuleOutcome
from engine.sessions import _HELD, Session
from engine.stores.memory import MemorySessions
from tests.conftest import load_text

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"

RULES = """
edge {
  datastream: "ds"
  org: "53A16ACB5CC1D3760A495C99@AdobeOrg"
}
rule "Page" {
  on "page.view"
  limit 3 per session
  limit 5 per visitor
  send event { type: "web.webpagedetails.pageViews", xdm.web.webPageDetails.name: state.page }
}
"""


def test_a_bad_push_through_engine_push_leaves_the_session_untouched() -> None:
    now = [1_000.0]
    with Engine(load_text(RULES), dry_run=True, clock=lambda: now[0]) as engine:
        engine.push({"event": "page.view", "page": "home"}, session="s")
        session = engine.sessions.read("s")
        assert session is not None
        before = session.export()
        now[0] = 1_010.0
        with pytest.raises(PushError):
            engine.push({"event": "page.view", "page": object()}, session="s")
        assert engine.sessions.read("s") is session
        assert session.export() == before  # last_seen included


def test_engine_push_refuses_a_bad_session_id() -> None:
    with Engine(load_text(RULES), dry_run=True) as engine:
        for bad in ("", None, 3):
            with pytest.raises(Exception, match="non-empty string"):
                engine.push({"event": "page.view"}, session=bad)  # type: ignore[arg-type]


def test_a_rolled_back_push_leaves_firing_lists_as_they_were() -> None:
    store = MemorySessions()
    session = store.get("s")
    session.record_firing("R", ["session", "hour"], 10.0)
    own, shared = session.firings["R"], session.visitor.firings["R"]
    with pytest.raises(RuntimeError), store.begin("s", None, 20.0) as transaction:
        transaction.session.record_firing("R", ["session", "hour"], 20.0)
        transaction.session.record_firing("Q", ["visitor"], 20.0)
        raise RuntimeError("the outbox failed")
    assert session.firings == {"R": [10.0]} and session.firings["R"] is own
    assert session.visitor.firings == {"R": [10.0]} and session.visitor.firings["R"] is shared
    assert own == [10.0] and shared == [10.0]  # replaced by the push, never changed


def test_a_hold_is_released_when_the_push_fails_and_pushes_of_a_visitor_wait() -> None:
    store = MemorySessions()
    with pytest.raises(ValueError), store.begin("a", "v", 1.0):
        raise ValueError
    assert "v" not in _HELD  # the visitor's lock, given up
    order: list[str] = []

    def other() -> None:
        with store.begin("b", "v", 2.0) as transaction:
            order.append("b")
            transaction.commit((), None, 2.0)

    with store.begin("a", "v", 1.0) as transaction:
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.1)  # b had time to arrive: it waits for a
        order.append("a")
        transaction.commit((), None, 1.0)
    thread.join(5)
    assert order == ["a", "b"] and "v" not in _HELD


def _consent_rules(default: str) -> str:
    return RULES.replace("rule", f'consent {{\n  default: "{default}"\n}}\nrule', 1)


def test_without_a_consent_block_every_send_goes_and_nothing_is_held() -> None:
    with Engine(load_text(RULES), dry_run=True) as engine:
        result = engine.push({"event": "page.view", "page": "home"}, session="s")
        assert result.consent == "in" and [s.consent for s in result.sends] == [None]
        session = engine.sessions.read("s")
        assert isinstance(session, Session) and "held" not in session.identity


@pytest.mark.parametrize(("cookie", "held"), [("general=out", False), ("general=in", True)])
def test_edge_consent_entries_still_decide_without_a_consent_path(cookie: str, held: bool) -> None:
    # default "in" with Edge's consent entry "out": dropped; default "pending" with "in": sent
    default = "in" if not held else "pending"
    with Engine(load_text(_consent_rules(default)), dry_run=True) as engine:
        entry: dict[str, Any] = {"key": f"kndctr_{ORG}_consent", "value": cookie}
        engine.sessions.update_identity("s", None, lambda i: i.update(entries=[entry]))
        result = engine.push({"event": "page.view", "page": "home"}, session="s")
    if held:
        assert result.consent == "in" and [s.consent for s in result.sends] == [None]
    else:
        assert result.consent == "out" and result.dropped == 1


def test_a_pending_default_without_a_path_holds() -> None:
    with Engine(load_text(_consent_rules("pending")), dry_run=True) as engine:
        result = engine.push({"event": "page.view", "page": "home"}, session="s")
        assert result.consent == "pending" and [s.consent for s in result.sends] == ["held"]
        released = engine.session("s").set_consent("in")
    assert len(released.released) == 1


def test_fired_outcomes_are_shared_and_equal_to_fresh_ones() -> None:
    first = RuleOutcome("Shared rule", "fired")
    assert RuleOutcome("Shared rule", "fired") is first
    assert pickle.loads(pickle.dumps(first)) == first
    other = RuleOutcome("Shared rule", "condition_not_met", "no")
    assert other is not RuleOutcome("Shared rule", "condition_not_met", "no")
    assert RuleOutcome("Shared rule", "fired", clause="x") is not first
