"""The push's fast paths give what the general code they stand in for gives: percent-encoding,
the ACDL merge's changed paths, lazy rule reasons, generated field builders and elements, and
planned Edge sends (issue 15)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
from typing import Any
from urllib.parse import quote

import pytest

from engine import Engine, datalayer
from engine.context import VisitorContext
from engine.destinations.base import Request, percent_encode
from engine.destinations.edge import build_edge_request, plan_edge_send
from engine.destinations.sitecore import _encoded_message
from engine.errors import OutboxError
from engine.fieldgen import FieldBuilder
from engine.loader import build_ruleset, clear_cache, load_ruleset
from engine.results import RuleOutcome, Status, explain
from engine.ruleset import CompiledCondition, Ruleset
from engine.scope import Scope
from engine.settings import EdgeSettings
from engine.stores.queued import as_queued as _as_queued
from engine.stores.queued import unframed as _unframed
from engine.stores.sqlite import Outbox, _queued_row
from tests.test_outbox import make_request

EDGE = 'edge { datastream: "ds-1" }\n'


def load(text: str) -> Ruleset:
    clear_cache()  # a ruleset of its own: its elements and actions not yet compiled
    return build_ruleset([("t.rules", text.encode())], environ={})


# ------------------------------------------------------------------ percent-encoding
CHARACTERS = [chr(code) for code in range(300)] + ["€", "😀", "ü", "\u2028", "%", '"', "%2"]


@pytest.mark.parametrize("seed", range(4))
def test_percent_encoding_is_quote_with_nothing_safe(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(3000):
        text = "".join(rng.choice(CHARACTERS) for _ in range(rng.randint(0, 40)))
        assert percent_encode(text) == quote(text, safe="")
        assert _encoded_message(text) == quote(text, safe="")


def test_a_message_is_encoded_as_quote_encodes_it() -> None:
    message = '{"page":"Spinair | Home","ext":{"q":"a&b=c 100%","name":"Zürich \\"x\\""}}'
    assert _encoded_message(message) == quote(message, safe="")
    assert _encoded_message(message) == quote(message, safe="")  # from the cache


# ------------------------------------------------------------------ the merge
def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.3:
        return {rng.choice("abcd"): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if depth < 3 and roll < 0.4:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([None, 1, 1.0, True, False, "x", "y", "", 0, 2, [], {}])


def test_the_acdl_merge_reports_the_paths_whose_value_changed() -> None:
    rng = random.Random(15)
    for _ in range(5000):
        start = _value(rng)
        state, _ = datalayer.merge_acdl({}, start if isinstance(start, dict) else {"a": start})
        data = _value(rng)
        data = data if isinstance(data, dict) else {"a": data}
        new, changed = datalayer.merge("acdl", state, data)
        expected, paths = datalayer.merge_acdl(state, data)
        assert new == expected
        # What the merge set, compared afterwards path by path (the definition).
        at, same = datalayer._at, datalayer._same
        assert changed == [p for p in paths if not same(at(state, p), at(new, p))]


# ------------------------------------------------------------------ lazy reasons
def _condition(negated: bool = False, guard: str | None = None) -> CompiledCondition:
    word = "unless" if negated else "when"
    rs = load(
        f'{EDGE}rule "R" {{\n  on "x"\n  {word} state.a > 1\n  send event {{ type: "t" }}\n}}\n'
    )
    condition = rs.rules[0].conditions[0]
    return dataclasses.replace(condition, guard=guard)


@pytest.mark.parametrize(("negated", "guard"), [(False, None), (True, None), (False, "staff")])
def test_a_reason_is_written_when_read_as_it_was_written_at_once(
    negated: bool, guard: str | None
) -> None:
    condition = _condition(negated, guard)
    seen = (("state.a", "x" * 200),)
    status: Status = "blocked" if negated else "condition_not_met"
    lazy = RuleOutcome.stopped_at("R", status, condition, seen)
    eager = RuleOutcome(
        "R", status, explain(condition, seen), condition.source, seen, condition.span
    )
    assert lazy == eager and hash(lazy) == hash(eager) and repr(lazy) == repr(eager)
    assert lazy.reason == eager.reason and lazy.reason is not None
    assert lazy.reason.endswith("…)") and lazy.clause == "state.a > 1"
    assert lazy.to_json() == {"rule": "R", "status": status, "reason": eager.reason}
    assert pickle.loads(pickle.dumps(lazy)) == eager
    with pytest.raises(dataclasses.FrozenInstanceError):
        lazy.status = "fired"
    assert RuleOutcome("R", "fired").reason is None


# ------------------------------------------------------------------ values read later
SNAPSHOT_RULES = """\
rule "State" {
  on "x"
  when state.a.b > 1 or state.list contains 9 or state.c == "z"
  send event { type: "t" }
}
rule "Event" {
  on "x"
  when event.n > 1 and state.a.b > 1
  send event { type: "t" }
}
"""
LATER = [
    {"event": "x", "a": {"b": 5}, "list": [9], "c": "q"},
    {"event": "y", "a": None, "list": [7, 8, 9, 10], "c": None},
    {"event": "y", "a": {"b": {"deep": [1]}}, "list": {"9": 9}, "c": "z"},
]


@pytest.mark.parametrize("mode", ["acdl", "gtm"])
def test_values_read_after_later_pushes_are_those_the_push_saw(mode: str) -> None:
    """A condition reading only the state is tested on the state alone, and its operands'
    values are read from the push's snapshot when first asked for: later pushes, which
    change the same paths, do not change them."""
    text = f'{EDGE}datalayer {{ merge: "{mode}" }}\n{SNAPSHOT_RULES}'
    first = {"event": "x", "a": {"b": 1}, "list": [1, 2], "c": "y", "n": 0}
    read_now = Engine(load(text), dry_run=True).session("s").push(first)
    engine = Engine(load(text), dry_run=True)
    session = engine.session("s")
    read_later = session.push(first)
    conditions = {rule.name: rule.conditions[0] for rule in engine.ruleset.rules}
    assert conditions["State"].on_state is not None  # the push took the state alone
    assert conditions["Event"].on_state is None
    for push in LATER:
        session.push(push)
    assert [o.status for o in read_later.rules] == ["condition_not_met"] * 2
    assert read_later.rules == read_now.rules
    assert [o.values for o in read_later.rules] == [
        (("state.a.b", 1), ("state.list", [1, 2]), ("state.c", "y")),
        (("event.n", 0), ("state.a.b", 1)),
    ]
    assert read_later.rules[0].reason == (
        'when state.a.b > 1 or state.list contains 9 or state.c == "z" was false '
        '(state.a.b = 1, state.list = [1, 2], state.c = "y")'
    )
    assert pickle.loads(pickle.dumps(read_later.rules[0])) == read_now.rules[0]


# ------------------------------------------------------------------ the outbox's intake
def _sends() -> list[Request]:
    post = make_request(1)
    return [
        post,
        make_request(2, rule="Kauf Ü"),  # text beyond ASCII: encoded at once
        dataclasses.replace(post, headers=(("User-Agent", "Mozilla ✓"),)),
        dataclasses.replace(post, event_id=None, request_id=None, headers=()),
        dataclasses.replace(post, body_bytes=b""),  # no body: encoded at once
        _sitecore_get({"type": "VIEW", "ext": {"ratio": 0.1, "n": -0.0, "name": "Zürich"}}),
        _sitecore_get({"a": [1, None, 2**70, 1e-05]}),
        dataclasses.replace(_sitecore_get({}), kind="browser"),  # not an event: encoded at once
    ]


def _sitecore_get(event: dict[str, Any]) -> Request:
    """A Sitecore event sent by GET, as the builder makes one: the body travels in ``message``."""
    message = quote(json.dumps(event, separators=(",", ":"), ensure_ascii=False), safe="")
    url = f"https://api.example/v1.2/event/create.json?client_key=k&message={message}"
    return Request("sitecore", "View", "GET", url, (), event, b"", "event")


def test_a_send_queued_as_it_is_is_stored_as_an_encoded_one_would_be() -> None:
    """An outbox in memory queues an ASCII POST as it is and writes its row when reading
    the records in (off the push's path): the same row as the encoded record gives."""
    as_is = []
    for request in _sends():
        for session, now in (("s-1", 1_700_000_000.25), ("s-2", 7), ("s-ü", 2.5), ("s", 2**70)):
            queued = _as_queued(request, session, now)
            as_is.append(len(queued) == 3)
            if now == 2**70:
                continue  # (beyond SQLite's integers: stored neither way)
            row = _queued_row(queued)
            assert row == _queued_row(_unframed(request, session, now))
            assert type(row["created"]) is type(now)  # (compiled: an int is not made a float)
    # As they are: the ASCII POSTs (the first, the fourth) and Sitecore GETs (the sixth,
    # the seventh), at a time SQLite takes as it is.
    assert as_is[:4] == as_is[12:16] == as_is[20:24] == as_is[24:28] == [True, True, False, False]
    assert sum(as_is) == 8
    with Outbox() as box:
        box.append_many([(request, f"s{n}") for n, request in enumerate(_sends())], now=3.0)
        claimed = box.claim(limit=100)
        assert [entry.request for entry in claimed] == _sends()
        assert [entry.created for entry in claimed] == [3.0] * len(_sends())


def test_the_shop_journeys_sends_are_queued_as_they_are_and_stored_alike() -> None:
    """The builders' sends keep the contract the as-is path reads: a Sitecore GET's body is
    the event its URL's ``message`` carries."""
    from benchmarks.floor import RULES, load_journey

    engine = Engine(load_ruleset(RULES), dry_run=True)
    requests = [
        send.request
        for session, item in load_journey()
        for send in engine.push(item, session=session).sends
    ]
    assert {(r.method, r.destination) for r in requests} == {("POST", "edge"), ("GET", "sitecore")}
    for request in requests:
        queued = _as_queued(request, "visitor-1", 1_700_000_000.5)
        assert len(queued) == 3
        assert _queued_row(queued) == _queued_row(_unframed(request, "visitor-1", 1_700_000_000.5))


def test_a_send_that_cannot_be_stored_still_fails_the_push_in_memory() -> None:
    with Outbox() as box:
        with pytest.raises(OutboxError, match="cannot be stored"):
            box.append_many([(make_request(1), "s"), (make_request(2), "bad \ud800")])
        assert box.counts() == {"pending": 0, "inflight": 0, "dead": 0}
        assert box.claim() == []


# ------------------------------------------------------------------ generated code
RULES = (
    EDGE
    + """
element name  = state.page.name | clean | default "unknown"
element kind  = state.page.type | trim | lower | default "other"
element price = state.product.price | number | round 2
element qty   = event.eventInfo.quantity | default 1 | number
element total = (price * qty) | round 2
element first = state.list[0] | upper
element deep  = state.a.b.c | default [1, 2]
element tier  = state.user.tier | lower keep session
element label = "%kind%:%name%"
element crumbs = state.crumbs | join " > "

rule "R" {
  on "x"
  send event {
    type: "t"
    xdm: {
      web.webPageDetails.name: name
      commerce.order.priceTotal: total
      list: [1, { a: qty, b: [2, 3] }, state.list]
      label: "%name% (%tier%)"
      lone: "%qty%"
    }
    data: { constant: { a: [1, 2] }, kind: kind, crumbs: crumbs, first: first, deep: deep }
    personalization: { decisionScopes: ["hero"] }
  }
}
"""
)

STATES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {}),
    (
        {
            "page": {"name": "  Home  page ", "type": " Product "},
            "product": {"price": "12.50"},
            "list": ["x", "y"],
            "a": {"b": {"c": None}},
            "user": {"tier": "Gold"},
            "crumbs": ["A", None, 2, 2.0],
        },
        {"eventInfo": {"quantity": "3"}},
    ),
    ({"page": "not an object", "product": {"price": True}, "list": [], "a": [1]}, {"eventInfo": 5}),
    ({"page": {"name": 7, "type": None}, "list": [None, "z"], "crumbs": "text"}, {}),
]


def _closures(rs: Ruleset) -> dict[str, Any]:
    """Each element's closure, as compiled before its first evaluation generated code."""
    return {name: element.fn.closure for name, element in rs.elements.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("state", "event"), STATES)
def test_generated_elements_and_fields_give_what_the_closures_give(
    state: dict[str, Any], event: dict[str, Any]
) -> None:
    rs = load(RULES)
    closures = _closures(rs)
    generated = Scope(state, event, rs.elements, {"session": {}})
    for name, closure in closures.items():
        by_closure = closure(Scope(state, event, rs.elements, {"session": {}}))
        assert generated.element(name) == by_closure, name
        assert type(generated.element(name)) is type(by_closure), name
    action = rs.rules[0].actions[0]
    action.build(Scope(state, event, rs.elements, {"session": {}}))  # compiles it
    builder = action.build
    assert isinstance(builder, FieldBuilder)
    fresh = builder(Scope(state, event, rs.elements, {"session": {}}))
    sent = builder.sent(Scope(state, event, rs.elements, {"session": {}}))
    assert fresh == sent
    assert builder.pushed == {"xdm", "data"}
    assert builder.constants == {"type": "t", "personalization": {"decisionScopes": ["hero"]}}


def test_fresh_fields_share_nothing_and_sent_fields_share_constants() -> None:
    rs = load(RULES)
    action = rs.rules[0].actions[0]
    action.build(Scope({}, {}, rs.elements, {"session": {}}))
    builder = action.build
    assert isinstance(builder, FieldBuilder)
    first = builder(Scope({}, {}, rs.elements, {"session": {}}))
    first["data"]["constant"]["a"].append(3)
    first["personalization"]["decisionScopes"].append("other")
    again = builder(Scope({}, {}, rs.elements, {"session": {}}))
    assert again["data"]["constant"] == {"a": [1, 2]}
    assert again["personalization"] == {"decisionScopes": ["hero"]}
    one = builder.sent(Scope({}, {}, rs.elements, {"session": {}}))
    two = builder.sent(Scope({}, {}, rs.elements, {"session": {}}))
    assert one["personalization"] is two["personalization"]
    assert one["data"] is not two["data"]


# ------------------------------------------------------------------ planned Edge sends
SETTINGS = EdgeSettings(datastream="ds-1")
CONTEXT = VisitorContext(user_agent="UA", referer="https://shop.example/p")
IDENTITIES: list[dict[str, Any]] = [
    {},
    {"ecid": "E1", "location_hint": "or2", "entries": [{"key": "k_identity", "value": "v"}]},
    {"fpid": "F1", "identity_map": {"CRM": [{"id": "c", "primary": True}]}},
]
FIELDS: list[dict[str, Any]] = [
    {"type": "page.view", "xdm": {"web": {"webPageDetails": {"name": "Home"}}}},
    {"type": "viewStart", "xdm": {"a": 1}, "data": {"b": [1, None]}},
    {"type": "t", "xdm": {"eventType": None, "_id": "mine"}, "data": {}},
    {"type": "t", "xdm": {"identityMap": {"CRM": [{"id": "x"}]}}},
    {
        "type": "commerce.purchases",
        "xdm": {"web": {"webPageDetails": {"URL": "https://x"}}},
        "data": {"v": 1.5},
        "documentUnloading": True,
        "edgeConfigOverrides": {"datastreamId": "ds-2", "com_adobe_analytics": {"enabled": True}},
        "datasetId": "set-1",
        "mergeId": "m-1",
        "renderDecisions": True,
        "decisionScopes": ["a", "a", "b"],
        "personalization": {"decisionScopes": ["b", "c"], "includeRenderedPropositions": False},
    },
    {"type": "t", "xdm": {"n": float("inf")}},
    {"type": "t", "xdm": "not an object"},
]


def _attempt(build: Any) -> Any:
    try:
        return build()
    except Exception as error:
        return (type(error).__name__, str(error))


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("context", [None, CONTEXT])
def test_a_planned_edge_send_is_built_as_any_other(
    fields: dict[str, Any], identity: dict[str, Any], context: VisitorContext | None
) -> None:
    constants = {k: v for k, v in fields.items() if k not in ("xdm", "data")}
    plan = plan_edge_send(constants, {"xdm", "data"})
    assert plan is not None
    options: dict[str, Any] = {
        "rule": "R",
        "identity": identity,
        "timestamp": "2025-06-02T10:00:00.123Z",
        "event_id": "e-1",
        "request_id": "r-1",
        "now": 1.0,
        "context": context,
    }
    planned = _attempt(lambda: plan.build(fields, SETTINGS, **options))
    assert planned == _attempt(lambda: build_edge_request(fields, SETTINGS, **options))


@pytest.mark.parametrize(
    ("constants", "pushed"),
    [
        ({"type": "t"}, {"xdm", "personalization"}),  # a pushed option
        ({"type": "t", "propositions": []}, {"xdm"}),
        ({"type": "t", "identityMap": {"A": [{"id": "x"}]}}, {"xdm"}),
        ({"type": "t", "personalization": {"surfaces": ["web://x"]}}, {"xdm"}),
        ({"type": "t", "unknown": 1}, {"xdm"}),
        ({"type": 5}, {"xdm"}),  # refused: every send says so, as without a plan
    ],
)
def test_what_a_push_decides_is_not_planned(constants: dict[str, Any], pushed: set[str]) -> None:
    assert plan_edge_send(constants, pushed) is None
