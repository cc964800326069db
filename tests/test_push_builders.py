"""The push's request builders' shortcuts give what the general code gives (issue 15): a
Sitecore direct-mode send built without the general checks, Edge plans across settings, and
a request body read back from its bytes only when asked for."""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from engine.destinations import sitecore
from engine.destinations.base import READ_BACK, Request
from engine.destinations.edge import build_edge_request, plan_edge_send
from engine.destinations.sitecore import build_sitecore_request
from engine.settings import EdgeSettings, SitecoreSettings

DIRECT = SitecoreSettings(client_key="key/1", pos="shop.example", language="EN", currency="EUR")
BARE = SitecoreSettings(client_key="key-2", pos="p", channel="app")  # no language, currency
SDK = SitecoreSettings(client_key="k", pos="p", language="EN", currency="EUR", ext_names="sdk")

SITECORE_FIELDS: list[dict[str, Any]] = [
    {"type": "VIEW", "page": "Home | Shop", "language": "en-GB"},
    {"type": "VIEW", "page": None, "language": None, "currency": "usd", "channel": "web"},
    {"type": "VIEW", "page": "", "pos": "other.example", "channel": ""},
    {"type": "VIEW", "page": 5},
    {"type": "VIEW", "page": "p", "language": "english"},
    {"type": "VIEW", "page": "p", "language": 7},
    {"type": "VIEW", "currency": "EURO"},
    {"type": "VIEW", "pos": 3},
    {"type": "", "page": "p"},
    {"type": 5},
    {"type": "ADD", "product": {"item_id": "A", "price": None, "tags": ["x", None]}, "n": 1.5},
    {"type": "ADD", "ext": {"page_type": "home", "a.b": True, "n": 2, "f": 1.25, "z": None}},
    {"type": "ADD", "ext": {"product": {"brand": "B", "unit_price": 9.5, "gone": None}}},
    {"type": "ADD", "ext": {"product": {"a": {"deeper": 1}}}},
    {"type": "ADD", "ext": {"list": [1, None, "x"], "nan": math.nan}},
    {"type": "ADD", "ext": {"inf": math.inf}},
    {"type": "ADD", "ext": {"a_b": 1, "aB": 2}},
    {"type": "ADD", "ext": {"product": {"sku": 1}, "productSku": 2}},
    {"type": "ADD", "ext": {"___": 1}},
    {"type": "ADD", "ext": {"fresh key never seen before 1": 1}},
    {"type": "ADD", "ext": {f"k{n}": n for n in range(51)}},
    {"type": "ADD", "ext": {}, "page_variant_id": "v1"},
    {"type": "ADD", "ext": "not an object"},
    {"type": "IDENTITY", "identifiers": [{"provider": "email", "id": "a@b.example"}]},
    {"type": "IDENTITY", "email": "a@b.example"},
    {"type": "IDENTITY", "first_name": "A", "session_data": {"x": 1}},
    {"type": "CHECKOUT", "status": "PURCHASED", "email": "not an email"},
    {"type": "X", "client_key": "ignored", "browser_id": "ignored", "order": {"status": "x"}},
    {"type": "VIEW", "page": "x" * 9000},
]


def _attempt(build: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return build(*args, **kwargs)
    except Exception as error:
        return (type(error).__name__, str(error))


@pytest.mark.parametrize("fields", SITECORE_FIELDS)
@pytest.mark.parametrize("settings", [DIRECT, BARE, SDK], ids=["direct", "bare", "sdk"])
def test_a_direct_sitecore_send_is_built_as_the_general_way_builds_it(
    fields: dict[str, Any], settings: SitecoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build() -> Request:
        return build_sitecore_request(fields, settings, rule="R", browser_id="b-1")

    fast = _attempt(build)
    again = _attempt(build)  # the settings' part now kept
    monkeypatch.setattr(sitecore, "_direct", lambda *args: None)
    general = _attempt(build)
    assert fast == again == general
    if isinstance(fast, Request):
        assert fast.url == general.url and list(fast.body) == list(general.body)


def test_the_sitecore_settings_kept_follow_the_settings_given() -> None:
    fields = {"type": "VIEW", "page": "p"}
    for settings in (DIRECT, BARE, DIRECT):
        got = _attempt(build_sitecore_request, fields, settings, rule="R", browser_id="b")
        if settings is DIRECT:
            assert isinstance(got, Request) and "client_key=key%2F1&" in got.url
        else:
            assert got[0] == "EvaluationError" and "'language'" in got[1]


def test_an_edge_plan_follows_the_settings_given() -> None:
    fields = {"type": "t", "xdm": {"a": 1}, "data": {"b": 2}}
    plan = plan_edge_send({"type": "t"}, {"xdm", "data"})
    assert plan is not None
    first = EdgeSettings(datastream="ds-1", domain="shop.example")
    second = EdgeSettings(datastream="ds 2", api="v1", url="https://edge.example/")
    options: dict[str, Any] = {
        "rule": "R",
        "timestamp": "2025-06-02T10:00:00.123Z",
        "event_id": "e-1",
        "request_id": "r 1",
        "now": 1.0,
    }
    for settings in (first, second, first, EdgeSettings(datastream="")):
        for identity in ({}, {"location_hint": "or2"}, {"location_hint": "bad hint"}):
            planned = _attempt(plan.build, fields, settings, identity=identity, **options)
            general = _attempt(build_edge_request, fields, settings, identity=identity, **options)
            assert planned == general


def test_a_body_read_back_is_its_bytes_parsed_when_first_read() -> None:
    written = orjson.dumps({"event": {"xdm": {"a": [1, 2.5, "x"]}}})
    request = Request("edge", "R", "POST", "https://x/", (), READ_BACK, written, "interact")
    eager = Request(
        "edge", "R", "POST", "https://x/", (), orjson.loads(written), written, "interact"
    )
    assert request == eager and repr(request) == repr(eager) and hash(request.headers) == hash(())
    assert request.body is request.body  # parsed once
    assert request.event == {"xdm": {"a": [1, 2.5, "x"]}}
    lazy = Request("edge", "R", "POST", "https://x/", (), READ_BACK, written, "interact")
    assert pickle.loads(pickle.dumps(lazy)) == eager
    assert dataclasses.replace(lazy, url="https://y/").body == eager.body
    with pytest.raises(AttributeError, match="no attribute 'other'"):
        lazy.other  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        lazy.body = {}  # type: ignore[misc]


PLAN_FIELDS: list[dict[str, Any]] = [
    {"type": "t", "xdm": {"commerce": {"cart": {"cartID": None}, "checkouts": {"value": 1}}}},
    {"type": "t", "xdm": {"eventType": None, "_id": "mine"}, "data": {"a": None, "b": [None]}},
    {"type": "t", "xdm": {"identityMap": {"CRMID": [{"id": "c", "primary": False}]}}},
    {"type": "t", "xdm": {"identityMap": {"CRMID": [{"id": None, "primary": True}]}}},
    {"type": "t", "xdm": {"identityMap": {}}, "data": {"n": None}},
    {"type": "t", "xdm": {"identityMap": {"CRMID": "not a list"}}},
]


@pytest.mark.parametrize("fields", PLAN_FIELDS)
@pytest.mark.parametrize("identity", [{}, {"fpid": "F1"}, {"ecid": "E1", "identity_map": {}}])
def test_a_plan_builds_sends_holding_nulls_or_an_identity_map_itself(
    fields: dict[str, Any], identity: dict[str, Any]
) -> None:
    plan = plan_edge_send({"type": "t"}, {"xdm", "data"})
    assert plan is not None
    settings = EdgeSettings(datastream="ds-1")
    options: dict[str, Any] = {
        "rule": "R",
        "identity": identity,
        "timestamp": "2025-06-02T10:00:00.123Z",
        "event_id": "e-1",
        "request_id": "r-1",
        "now": 1.0,
    }
    general = _attempt(build_edge_request, fields, settings, **options)
    args = ("R", identity, options["timestamp"], "e-1", "r-1", 1.0, None)
    planned = _attempt(plan._build, fields, settings, *args)
    assert planned == general
    assert planned is not None  # not handed back to the general way


@pytest.mark.parametrize("seed", range(3))
def test_a_message_cut_at_its_separators_is_encoded_as_a_whole(seed: int) -> None:
    rng = random.Random(seed)
    tokens = ['","', '"', ",", '":"', "a", " ", "%", "ü", '\\"', "{", "}", "😀"]
    for _ in range(2000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 30)))
        assert sitecore._encoded_message(text) == quote(text, safe="")
