"""The runtime through the public API: pushes in, statuses and request bodies out."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import Engine, PushError
from engine.runtime import Ids, _timestamp, new_id
from engine.transports import RecordingTransport
from tests.conftest import SETTINGS, load_text
from tests.test_edge_bodies import SCHEMAS


def make_engine(rules: str, *, settings: str = SETTINGS, **options: object) -> Engine:
    ruleset = load_text({"a_settings.rules": settings, "t.rules": dedent(rules)})
    options.setdefault("dry_run", True)
    return Engine(ruleset, **options)  # type: ignore[arg-type]


def statuses(result: object) -> dict[str, str]:
    return {o.rule: o.status for o in result.rules}  # type: ignore[attr-defined]


def test_the_readme_example(tmp_path: Path) -> None:
    (tmp_path / "s.rules").write_text(SETTINGS)
    (tmp_path / "r.rules").write_text(
        dedent(
            """\
            element cart_total = state.cart.total | default 0
            rule "Purchase" {
              on "commerce.purchase"
              when cart_total > 0
              send event { type: "commerce.purchases", xdm: { commerce.order.priceTotal: cart_total } }
            }
            rule "Other" { on "other"; send event { type: "x" } }
            """
        )
    )
    with Engine.from_path(tmp_path, dry_run=True) as engine:
        result = engine.session("visitor-1").push(
            {"event": "commerce.purchase", "cart": {"total": 120}}
        )
    assert result.fired == ["Purchase"]
    assert [(o.rule, o.status, o.reason) for o in result.rules] == [("Purchase", "fired", None)]
    body = result.sends[0].body
    assert body["event"]["xdm"]["commerce"]["order"]["priceTotal"] == 120
    assert body["event"]["xdm"]["eventType"] == "commerce.purchases"
    assert result.sends[0].destination == "edge"
    assert result.sends[0].status is None  # dry run: built, not delivered


def test_async_api_has_the_same_semantics() -> None:
    rules = 'rule "R" {\n  on "e"\n  when state.n > 1\n  send event { type: "t" }\n}\n'

    async def main() -> list[str]:
        async with make_engine(rules) as engine:
            session = engine.session("s")
            first = await session.apush({"event": "e", "n": 1})
            second = await session.apush({"event": "e", "n": 2})
            return [first.rules[0].status, second.rules[0].status]

    assert asyncio.run(main()) == ["condition_not_met", "fired"]


def test_event_time_snapshot_is_what_rules_and_results_see() -> None:
    engine = make_engine(
        'rule "R" {\n  on "e"\n  send event { type: "t", data: { n: state.n } }\n}\n'
    )
    session = engine.session("s")
    first = session.push({"event": "e", "n": 1})
    second = session.push({"event": "e", "n": 2})
    assert first.sends[0].body["event"]["data"] == {"n": 1}
    assert second.sends[0].body["event"]["data"] == {"n": 2}
    assert first.snapshot == {"n": 1}  # not changed by the later push
    copy = second.state()
    copy["n"] = 99
    assert session.state == {"n": 2}


def test_acdl_merge_and_gtm_merge() -> None:
    rules = (
        'rule "R" {\n  on "e"\n  send event { type: "t", data: { a: state.a, p: state.page } }\n}\n'
    )
    acdl = make_engine(rules).session("s")
    acdl.push({"a": [1, 2, 3], "page": {"title": "A", "lang": "en"}})
    result = acdl.push({"event": "e", "a": [4], "page": {"title": "B", "lang": None}})
    assert result.sends[0].body["event"]["data"] == {"a": [4], "p": {"title": "B"}}
    gtm = make_engine(rules, settings=SETTINGS + 'datalayer { merge: "gtm" }\n').session("s")
    gtm.push({"a": [1, 2, 3], "page": {"title": "A", "lang": "en"}})
    result = gtm.push({"event": "e", "a": [4], "page": {"title": "B"}})
    assert result.snapshot == {"a": [4, 2, 3], "page": {"title": "B", "lang": "en"}}


def test_event_and_event_info_never_enter_the_state() -> None:
    engine = make_engine(
        'rule "R" {\n  on "click"\n  send event { type: "t", data: { ref: event.eventInfo.ref, name: event.event } }\n}\n'
    )
    result = engine.session("s").push(
        {"event": "click", "eventInfo": {"ref": "c1"}, "cart": {"n": 3}}
    )
    assert result.snapshot == {"cart": {"n": 3}}
    assert result.sends[0].body["event"]["data"] == {"ref": "c1", "name": "click"}


def test_order_then_file_then_position() -> None:
    ruleset = load_text(
        {
            "a_settings.rules": SETTINGS,
            "b.rules": 'rule "B1" { on "e"; send event { type: "t" } }\n'
            'rule "B0" order 5 { on "e"; send event { type: "t" } }\n',
            "a.rules": 'rule "A1" { on "e"; send event { type: "t" } }\n'
            'rule "A2" { on "e"; send event { type: "t" } }\n',
        }
    )
    result = Engine(ruleset, dry_run=True).session("s").push({"event": "e"})
    assert [o.rule for o in result.rules] == ["B0", "A1", "A2", "B1"]
    assert [s.rule for s in result.sends] == ["B0", "A1", "A2", "B1"]


def test_when_short_circuits_and_the_reason_names_the_clause() -> None:
    engine = make_engine(
        """\
        element a = state.a
        element b = state.b
        rule "R" {
          on "e"
          when a > 5
          when b > 5
          send event { type: "t" }
        }
        """
    )
    result = engine.session("s").push({"event": "e", "a": 1, "b": 9})
    outcome = result.rules[0]
    assert outcome.status == "condition_not_met"
    assert outcome.reason == "when a > 5 was false (a = 1)"
    assert outcome.clause == "a > 5"
    assert outcome.values == (("a", 1),)
    assert "b" not in result.elements  # the second clause never ran
    assert result.elements == {"a": 1}


def test_unless_blocks_with_its_reason() -> None:
    engine = make_engine(
        'rule "R" {\n  on "e"\n  unless state.user.internal\n  send event { type: "t" }\n}\n'
    )
    result = engine.session("s").push({"event": "e", "user": {"internal": True}})
    assert statuses(result) == {"R": "blocked"}
    assert (
        result.rules[0].reason == "unless state.user.internal was true (state.user.internal = true)"
    )
    assert result.sends == []


def test_default_only_replaces_null() -> None:
    engine = make_engine(
        'rule "R" {\n  on "e"\n  send event { type: "t", data: {\n'
        '    a: state.a | default "d", b: state.b | default "d", c: state.c | default "d",\n'
        '    d: state.d | default "d", e: state.e | default "d" } }\n}\n'
    )
    result = engine.session("s").push({"event": "e", "a": "", "b": 0, "c": False, "d": None})
    assert result.sends[0].body["event"]["data"] == {
        "a": "",
        "b": 0,
        "c": False,
        "d": "d",
        "e": "d",
    }


def test_keep_falls_back_to_the_stored_value_per_scope() -> None:
    engine = make_engine(
        """\
        element campaign = state.campaign keep session
        element list = event.eventInfo.list keep pageview
        rule "R" {
          on "e", "page.view"
          send event { type: "t", data: { campaign: campaign, list: list } }
        }
        """
    )
    session = engine.session("s")
    session.push({"event": "e", "campaign": "summer", "eventInfo": {"list": "grid"}})
    result = session.push({"event": "e", "campaign": None})
    assert result.sends[0].body["event"]["data"] == {"campaign": "summer", "list": "grid"}
    result = session.push({"event": "page.view"})  # a new page view forgets pageview values
    assert result.sends[0].body["event"]["data"] == {"campaign": "summer"}
    other = engine.session("other").push({"event": "e"})
    assert "data" not in other.sends[0].body["event"]  # nothing leaks between sessions


def test_tokens_in_bodies() -> None:
    engine = make_engine(
        """\
        element order_id = event.eventInfo.orderId
        element total = state.cart.total
        rule "R" {
          on "e"
          send event { type: "t", data: {
            label: "Order %order_id% (%state.user.tier%) 100% sure, %%"
            value: "%total%"
            missing: "[%state.nothing%]"
          } }
        }
        """
    )
    result = engine.session("s").push(
        {
            "event": "e",
            "eventInfo": {"orderId": "A-1"},
            "cart": {"total": 12.5},
            "user": {"tier": "gold"},
        }
    )
    assert result.sends[0].body["event"]["data"] == {
        "label": "Order A-1 (gold) 100% sure, %",
        "value": 12.5,
        "missing": "[]",
    }


def test_sampling_is_deterministic_per_session_and_rule() -> None:
    engine = make_engine('rule "R" {\n  on "e"\n  sample 50%\n  send event { type: "t" }\n}\n')
    first = [engine.session(f"v{i}").push({"event": "e"}).rules[0].status for i in range(400)]
    again = [engine.session(f"v{i}").push({"event": "e"}).rules[0].status for i in range(400)]
    assert first == again
    kept = first.count("fired")
    assert 160 <= kept <= 240
    assert set(first) == {"fired", "sampled_out"}
    none = make_engine('rule "R" {\n  on "e"\n  sample 0%\n  send event { type: "t" }\n}\n')
    assert none.session("x").push({"event": "e"}).rules[0].status == "sampled_out"


def test_limits_count_firings_only() -> None:
    engine = make_engine(
        'rule "R" {\n  on "e"\n  when state.ok\n  limit 1 per session\n  send event { type: "t" }\n}\n'
    )
    session = engine.session("s")
    assert session.push({"event": "e", "ok": False}).rules[0].status == "condition_not_met"
    assert session.push({"event": "e", "ok": True}).rules[0].status == "fired"
    limited = session.push({"event": "e"})
    assert limited.rules[0].status == "limited"
    assert limited.rules[0].reason == "limited: already fired 1 time per session"
    assert engine.session("t").push({"event": "e", "ok": True}).rules[0].status == "fired"


def test_time_window_limits_follow_the_clock() -> None:
    now = [1_000_000.0]
    engine = make_engine(
        'rule "R" {\n  on "e"\n  limit 2 per minute\n  send event { type: "t" }\n}\n',
        clock=lambda: now[0],
    )
    session = engine.session("s")
    assert [session.push({"event": "e"}).rules[0].status for _ in range(3)] == [
        "fired",
        "fired",
        "limited",
    ]
    now[0] += 61
    assert session.push({"event": "e"}).rules[0].status == "fired"


def test_a_failing_rule_never_stops_another() -> None:
    engine = make_engine(
        """\
        rule "Too big" {
          on "e"
          send event { type: "t", data: { blob: state.blob } }
        }
        rule "Fine" {
          on "e"
          send event { type: "ok" }
        }
        """
    )
    result = engine.session("s").push({"event": "e", "blob": "x" * 70_000})
    assert statuses(result) == {"Too big": "failed", "Fine": "fired"}
    reason = result.rules[0].reason or ""
    assert "rule 'Too big'" in reason and "65,536" in reason and "data.blob" in reason
    assert reason.startswith("t.rules:3:3:")
    assert [s.rule for s in result.sends] == ["Fine"]


def test_failed_action_stops_the_rest_of_that_rule() -> None:
    engine = make_engine(
        """\
        rule "R" {
          on "e"
          send event { type: "first" }
          send sitecore { type: "VIEW", ext: state.ext }
          send event { type: "never" }
        }
        """
    )
    result = engine.session("s").push({"event": "e", "ext": {f"k{i}": i for i in range(60)}})
    assert result.rules[0].status == "failed"
    assert "50" in (result.rules[0].reason or "")
    assert [s.request.body["event"]["xdm"]["eventType"] for s in result.sends] == ["first"]


def test_bad_pushes_are_rejected_and_state_is_intact() -> None:
    engine = make_engine('rule "R" { on "e"; send event { type: "t" } }\n')
    session = engine.session("s")
    session.push({"cart": {"total": 1}})
    for bad in (
        ["not", "an", "object"],
        "text",
        None,
        {"x": float("nan")},
        {1: "key"},
        {"x": {1, 2}},
    ):
        with pytest.raises(PushError):
            session.push(bad)
    assert session.state == {"cart": {"total": 1}}
    assert session.push({"event": "e"}).fired == ["R"]


def test_change_triggers_and_data_pushes() -> None:
    engine = make_engine(
        'rule "Cart changed" {\n  on change cart.items\n  send event { type: "t" }\n}\n'
        'rule "Any event" {\n  on "*"\n  send event { type: "t" }\n}\n'
    )
    session = engine.session("s")
    assert session.push({"cart": {"items": [1]}}).fired == ["Cart changed"]
    assert session.push({"cart": {"total": 3}}).fired == []
    assert session.push({"cart": None}).fired == ["Cart changed"]
    assert session.push({"event": "x"}).fired == ["Any event"]
    assert session.push({"event": ""}).event is None  # an empty event name is a data push


def test_push_actions_run_after_the_push_in_order() -> None:
    engine = make_engine(
        """\
        rule "Outer" {
          on "outer"
          push { event: "inner", step: 1 }
          send event { type: "outer" }
        }
        rule "Inner" {
          on "inner"
          send event { type: "inner", data: { step: state.step } }
        }
        """
    )
    result = engine.session("s").push({"event": "outer"})
    assert result.fired == ["Outer"]
    assert [f.fired for f in result.followups] == [["Inner"]]
    assert result.followups[0].sends[0].body["event"]["data"] == {"step": 1}


def test_export_and_restore_round_trip_through_json() -> None:
    rules = """\
        element tier = state.tier keep visitor
        rule "R" {
          on "e"
          limit 1 per session
          send event { type: "t", data: { tier: tier } }
        }
        """
    engine = make_engine(rules)
    session = engine.session("s1")
    session.push({"event": "e", "tier": "gold", "cart": {"n": 1}})
    data = json.loads(json.dumps(session.export()))
    fresh = make_engine(rules)
    restored = fresh.restore(data)
    assert restored.state == {"tier": "gold", "cart": {"n": 1}}
    again = restored.push({"event": "e", "tier": None})
    assert again.rules[0].status == "limited"  # the counter came back too
    assert again.elements == {} or again.elements.get("tier") in (None, "gold")
    with pytest.raises(PushError):
        fresh.restore({"format": 1, "id": 5})


def test_delivery_through_a_transport() -> None:
    transport = RecordingTransport()
    engine = make_engine(
        'rule "R" {\n  on "e"\n  send event { type: "t" }\n  send sitecore { type: "VIEW" }\n}\n',
        dry_run=False,
        transport=transport,
    )
    result = engine.session("s").push({"event": "e"})
    assert [(s.destination, s.status, s.attempts) for s in result.sends] == [
        ("edge", 200, 1),
        ("sitecore", 201, 1),
    ]
    assert [r.destination for r in transport.requests] == ["edge", "sitecore"]


SEED_STATE = {
    "xdm": {
        "commerce": {"order": {"priceTotal": 120, "purchaseID": "A-1"}},
        "productListItems": [{"SKU": "SP-1", "quantity": 1, "priceTotal": 120}],
    },
    "cart": {"total": 120},
}


def seed_engine(api: str) -> Engine:
    """The seed's sendEvent example (seeds/000), with `xdm` taken from the data-layer state."""
    counter = count(1)
    ids = Ids(
        event_id=lambda: f"00000000-0000-4000-8000-{next(counter):012d}",
        request_id=lambda: f"11111111-1111-4111-8111-{next(counter):012d}",
    )
    settings = (
        f'edge {{ datastream: "ds-configured", org: "ORG@AdobeOrg", api: "{api}" }}\n'
        'sitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }\n'
    )
    rules = """\
        rule "Purchase" {
          on "commerce.purchase"
          send event {
            type: "commerce.purchases"
            xdm: state.xdm
            data: { cartTotal: state.cart.total }
            documentUnloading: true
            edgeConfigOverrides: { datastreamId: "0dada9f4-fa94-4c9c-8aaf-fdbac6c56287" }
            renderDecisions: true
            personalization: { decisionScopes: ["hero-banner"] }
          }
        }
        """
    return make_engine(rules, settings=settings, clock=lambda: 1_700_000_000.25, ids=ids)


def expected_xdm() -> dict[str, object]:
    from engine.destinations.base import ENGINE_VERSION

    return {
        "eventType": "commerce.purchases",
        "timestamp": "2023-11-14T22:13:20.250Z",
        "_id": "00000000-0000-4000-8000-000000000001",
        "implementationDetails": {
            "name": "https://ns.adobe.com/experience/tagengine",
            "version": ENGINE_VERSION,
            "environment": "server",
        },
        "commerce": {"order": {"priceTotal": 120, "purchaseID": "A-1"}},
        "productListItems": [{"SKU": "SP-1", "quantity": 1, "priceTotal": 120}],
    }


def test_golden_seed_example_v2() -> None:
    send = (
        seed_engine("v2").session("s").push({"event": "commerce.purchase", **SEED_STATE}).sends[0]
    )
    # No identity yet: an unloading event still goes to interact so the visitor gets one.
    assert send.url == (
        "https://edge.adobedc.net/ee/v2/interact?datastreamId=0dada9f4-fa94-4c9c-8aaf-fdbac6c56287"
        "&requestId=11111111-1111-4111-8111-000000000002"
    )
    assert send.method == "POST"
    assert send.body == {
        "event": {"xdm": expected_xdm(), "data": {"cartTotal": 120}},
        "query": {
            "identity": {"fetch": ["ECID"]},
            "personalization": {
                "decisionScopes": ["hero-banner"],
                "schemas": SCHEMAS,
                "surfaces": [],
            },
        },
        "meta": {
            "state": {"domain": "", "cookiesEnabled": True},
            "sdkConfig": {"datastream": {"original": "ds-configured"}},
        },
    }
    assert json.loads(send.request.body_bytes) == send.body


def test_golden_seed_example_v1() -> None:
    send = (
        seed_engine("v1").session("s").push({"event": "commerce.purchase", **SEED_STATE}).sends[0]
    )
    assert send.url == (
        "https://edge.adobedc.net/ee/v1/interact?configId=0dada9f4-fa94-4c9c-8aaf-fdbac6c56287"
        "&requestId=11111111-1111-4111-8111-000000000002"
    )
    assert send.body == {
        "events": [
            {
                "xdm": expected_xdm(),
                "data": {"cartTotal": 120},
                "query": {
                    "personalization": {
                        "decisionScopes": ["hero-banner"],
                        "schemas": SCHEMAS,
                        "surfaces": [],
                    }
                },
            }
        ],
        "query": {"identity": {"fetch": ["ECID"]}},
        "meta": {
            "state": {"domain": "", "cookiesEnabled": True},
            "sdkConfig": {"datastream": {"original": "ds-configured"}},
        },
    }


def test_golden_seed_example_collect_once_identified() -> None:
    engine = seed_engine("v2")
    session = engine.session("s")
    engine.sessions.get("s").identity.update(
        {"ecid": "12345678901234567890123456789012345678", "entries": []}
    )
    send = session.push({"event": "commerce.purchase", **SEED_STATE}).sends[0]
    assert "/ee/v2/collect?datastreamId=0dada9f4-fa94-4c9c-8aaf-fdbac6c56287" in send.url
    assert send.url.endswith("&silent=true")
    event = send.body["events"][0]
    assert event["xdm"]["identityMap"]["ECID"][0]["id"] == "12345678901234567890123456789012345678"
    assert "query" not in send.body


def test_new_ids_are_version_4_uuids_and_distinct() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:500]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    assert uuid.UUID(child).version == 4
    assert child != new_id()


@given(st.floats(min_value=-2e9, max_value=4e9) | st.floats(1.7e9, 1.7e9 + 5))
def test_timestamps_are_formatted_as_datetime_rounds_them(now: float) -> None:
    moment = datetime.fromtimestamp(now, tz=UTC)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert _timestamp(now) == expected


def test_seeding_the_random_module_does_not_repeat_event_ids() -> None:
    import random

    state = random.getstate()
    try:
        random.seed(42)
        first = new_id()
        random.seed(42)
        assert new_id() != first
    finally:
        random.setstate(state)
