"""The exact Sitecore Stream API requests a ``send sitecore`` becomes (docs/destinations.md,
"Sitecore CDP / Personalize Stream API"): direct GET, Edge-proxy POST, browser id."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from engine import DispatchError, EvaluationError
from engine.destinations import (
    Request,
    build_browser_request,
    build_sitecore_request,
    check_size,
    flatten_ext,
)
from engine.scope import Scope
from engine.settings import SitecoreSettings
from tests.conftest import load_text

BROWSER_ID = "3f9c2d14-8a6e-4c1b-9d0f-5e7a11b2c3d4"
DIRECT = SitecoreSettings(
    client_key="pqsDATA3lw12v5a9rrHPW1c4hET73GxQ", pos="northwind-eu", language="EN", currency="EUR"
)
PROXY = SitecoreSettings(
    url="https://edge-platform.sitecorecloud.io",
    mode="proxy",
    context_id="ctx-123",
    site_id="northwind",
    language="EN",
    currency="EUR",
)


def build(fields: dict[str, Any], settings: SitecoreSettings = DIRECT, **kwargs: Any) -> Request:
    return build_sitecore_request(
        fields, settings, rule=kwargs.pop("rule", "View"), browser_id=BROWSER_ID, **kwargs
    )


def decoded(request: Request) -> tuple[str, dict[str, str]]:
    """The URL without its query, and the query decoded (each parameter once)."""
    parts = urlsplit(request.url)
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    assert len({k for k, _ in pairs}) == len(pairs)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", dict(pairs)


def message(request: Request) -> dict[str, Any]:
    text = decoded(request)[1]["message"]
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    result: dict[str, Any] = json.loads(text)
    return result


# ------------------------------------------------------------------ direct mode
def test_direct_view_is_a_get_whose_message_decodes_to_the_event() -> None:
    fields = {
        "type": "VIEW",
        "page": "product/trail-runner-42",
        "language": "en",
        "currency": "eur",
        "session_data": {"is_logged_in": False, "deep_link": None},
        "ext": {"page_category": "footwear", "stockLevel": 12},
    }
    request = build(fields)
    assert (request.destination, request.rule, request.method, request.kind) == (
        "sitecore",
        "View",
        "GET",
        "event",
    )
    assert request.headers == ()
    assert request.body_bytes == b""
    base, query = decoded(request)
    assert base == "https://api-engage-eu.sitecorecloud.io/v1.2/event/create.json"
    assert list(query) == ["client_key", "message"]
    assert query["client_key"] == "pqsDATA3lw12v5a9rrHPW1c4hET73GxQ"
    expected = {
        "channel": "WEB",
        "type": "VIEW",
        "language": "EN",
        "currency": "EUR",
        "page": "product/trail-runner-42",
        "pos": "northwind-eu",
        "browser_id": BROWSER_ID,
        "session_data": {"is_logged_in": False},
        "ext": {"pageCategory": "footwear", "stockLevel": 12},
    }
    assert message(request) == expected
    assert list(message(request))[:7] == [
        "channel",
        "type",
        "language",
        "currency",
        "page",
        "pos",
        "browser_id",
    ]
    assert request.body == expected
    assert request.event is request.body


def test_message_is_fully_url_encoded_utf8() -> None:
    request = build({"type": "VIEW", "page": "café & co/?x=1 #top"})
    raw = urlsplit(request.url).query
    assert re.fullmatch(r"client_key=[A-Za-z0-9]+&message=[A-Za-z0-9%._~-]+", raw)
    assert "%C3%A9" in raw  # é as UTF-8
    assert message(request)["page"] == "café & co/?x=1 #top"


def test_all_seven_fields_are_sent_with_the_settings_values() -> None:
    event = message(build({"type": "ADD_TO_WISHLIST"}))
    assert event == {
        "channel": "WEB",
        "type": "ADD_TO_WISHLIST",
        "language": "EN",
        "currency": "EUR",
        "page": "",
        "pos": "northwind-eu",
        "browser_id": BROWSER_ID,
    }


def test_rule_values_win_over_settings_and_are_upper_cased() -> None:
    settings = SitecoreSettings(
        client_key="k", pos="p", channel="MOBILE_APP", language="de", currency="chf"
    )
    event = message(build({"type": "VIEW"}, settings))
    assert (event["channel"], event["language"], event["currency"], event["pos"]) == (
        "MOBILE_APP",
        "DE",
        "CHF",
        "p",
    )
    event = message(
        build(
            {
                "type": "VIEW",
                "channel": "web",
                "language": "fr",
                "currency": "usd",
                "pos": "other-pos",
                "page": None,
            },
            settings,
        )
    )
    assert (event["channel"], event["language"], event["currency"], event["pos"]) == (
        "WEB",
        "FR",
        "USD",
        "other-pos",
    )
    assert event["page"] == ""


def test_engine_fields_cannot_be_set_by_the_rule() -> None:
    event = message(build({"type": "VIEW", "browser_id": "forged", "client_key": "forged"}))
    assert event["browser_id"] == BROWSER_ID
    assert "client_key" not in event


def test_a_number_page_is_sent_as_text() -> None:
    assert message(build({"type": "VIEW", "page": 404}))["page"] == "404"


# ------------------------------------------------------------------ IDENTITY
def test_identity_event_maps_names_and_identifiers() -> None:
    fields = {
        "type": "IDENTITY",
        "page": "account/login",
        "identifiers": [
            {"provider": "email", "id": "ana.ribeiro@example.org"},
            {"provider": "NW_CRM", "id": 4211, "expiryDate": "2027-06-30T00:00", "x": None},
        ],
        "email": "ana.ribeiro@example.org",
        "first_name": "Ana",
        "last_name": "Ribeiro",
        "country": "PT",
        "street": ["Rua Augusta 1", None],
        "phone": None,
    }
    event = message(build(fields))
    assert event == {
        "channel": "WEB",
        "type": "IDENTITY",
        "language": "EN",
        "currency": "EUR",
        "page": "account/login",
        "pos": "northwind-eu",
        "browser_id": BROWSER_ID,
        "identifiers": [
            {"provider": "email", "id": "ana.ribeiro@example.org"},
            {"provider": "NW_CRM", "id": "4211", "expiry_date": "2027-06-30T00:00"},
        ],
        "email": "ana.ribeiro@example.org",
        "firstname": "Ana",
        "lastname": "Ribeiro",
        "country": "PT",
        "street": ["Rua Augusta 1"],
    }


def test_wire_names_win_over_first_name_and_last_name() -> None:
    event = message(build({"type": "VIEW", "first_name": "A", "firstname": "B", "last_name": "C"}))
    assert (event["firstname"], event["lastname"]) == ("B", "C")
    assert "first_name" not in event and "last_name" not in event
    event = message(build({"type": "VIEW", "lastname": "D", "last_name": "C"}))
    assert event["lastname"] == "D"


def test_a_single_identifier_object_counts_as_a_list() -> None:
    event = message(build({"type": "IDENTITY", "identifiers": {"provider": "email", "id": "a@b"}}))
    assert event["identifiers"] == [{"provider": "email", "id": "a@b"}]


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"type": "IDENTITY"}, "an IDENTITY event needs 'identifiers'"),
        ({"type": "IDENTITY", "identifiers": []}, "an IDENTITY event needs 'identifiers'"),
        ({"type": "IDENTITY", "identifiers": [{"id": "x"}]}, "needs a 'provider' and an 'id'"),
        ({"type": "VIEW", "identifiers": [{"provider": "p", "id": ""}]}, "needs a 'provider'"),
        ({"type": "VIEW", "identifiers": "a@b"}, "'identifiers' must be a list of {provider, id}"),
        ({}, "send sitecore needs a 'type'"),
        ({"type": ""}, "send sitecore needs a 'type'"),
        ({"type": "VIEW", "page": {"a": 1}}, "send sitecore 'page' must be a string, not dict"),
        ({"type": "VIEW", "session_data": {"a": [1]}}, "session_data 'a' must be a string"),
        ({"type": "VIEW", "session_data": "x"}, "'session_data' must be an object"),
        ({"type": "VIEW", "ext": "x"}, "send sitecore 'ext' must be an object, not str"),
    ],
)
def test_bad_fields_fail_the_rule(fields: dict[str, Any], text: str) -> None:
    with pytest.raises(EvaluationError, match=re.escape(text)) as caught:
        build(fields)
    assert str(caught.value).startswith("rule 'View': ")


# ------------------------------------------------------------------ ext
def test_ext_is_flattened_in_camel_case() -> None:
    ext = {
        "page_type": "checkout",
        "product": {"sku": "TR42BLK", "price_total": 120.5, "in_stock": True, "x": None},
        "order": {"lines": {"first-item": 1}},
        "tags": ["a", "b"],
        "empty": {},
        "gone": None,
        "already_camelCase": 0,
    }
    assert flatten_ext(ext, rule="r") == {
        "pageType": "checkout",
        "productSku": "TR42BLK",
        "productPriceTotal": 120.5,
        "productInStock": True,
        "orderLinesFirstItem": 1,
        "tags": '["a","b"]',
        "alreadyCamelCase": 0,
    }
    event = message(build({"type": "VIEW", "ext": ext}))
    assert event["ext"] == flatten_ext(ext, rule="r")


def test_ext_with_only_nulls_is_left_out() -> None:
    assert "ext" not in message(build({"type": "VIEW", "ext": {"a": None, "b": {"c": None}}}))


def test_ext_names_match_the_checker_for_rule_written_keys() -> None:
    from engine.checker import camel as checker_camel
    from engine.destinations.sitecore import camel

    for key in ("page_type", "pageType", "a__b", "_private", "x-y z", "v2_item"):
        assert camel(key) == checker_camel(key), key


def test_ext_fifty_attributes_pass_fifty_one_fail() -> None:
    fifty = {f"attr{i}": i for i in range(50)}
    assert len(message(build({"type": "VIEW", "ext": fifty}))["ext"]) == 50
    nested = {"group": {f"a{i}": i for i in range(26)}, **{f"b{i}": i for i in range(25)}}
    with pytest.raises(
        EvaluationError,
        match=r"^rule 'View': sitecore ext has 51 attributes once flattened; the limit is 50$",
    ):
        build({"type": "VIEW", "ext": nested})


@pytest.mark.parametrize(
    ("ext", "text"),
    [
        ({"productSku": 1, "product": {"sku": 2}}, "'productSku' is given twice once flattened"),
        ({"__": 1}, "ext key '__' has no letters or digits"),
        ({"a": float("inf")}, "ext attribute 'a' has a value Sitecore cannot take"),
        ({"a": [float("nan")]}, "a value JSON cannot carry"),
    ],
)
def test_bad_ext_fails_the_rule(ext: dict[str, Any], text: str) -> None:
    with pytest.raises(EvaluationError, match=re.escape(text)):
        build({"type": "VIEW", "ext": ext})


def test_ext_from_a_compiled_rule() -> None:
    ruleset = load_text(
        {
            "settings.rules": (
                'sitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }\n'
            ),
            "v.rules": (
                "element page_type = state.page.type | lower\n"
                'rule "View" {\n'
                '  on "page.view"\n'
                '  send sitecore { type: "VIEW", page: state.page.name, '
                "ext: { page_type: page_type, product.sku: state.sku, cart: { size: 2 } } }\n"
                "}\n"
            ),
        }
    )
    rule = ruleset.rule("View")
    assert rule is not None and ruleset.sitecore is not None
    scope = Scope({"page": {"type": "Checkout", "name": "Checkout"}}, {}, ruleset.elements)
    event = message(build(rule.actions[0].build(scope), ruleset.sitecore))
    assert event["page"] == "Checkout"
    assert event["pos"] == "shop"
    assert event["ext"] == {"pageType": "checkout", "cartSize": 2}  # state.sku is missing


# ------------------------------------------------------------------ proxy mode
def test_proxy_mode_posts_json() -> None:
    fields = {"type": "WISHLIST_ADD", "page": "product/trail-runner-42", "ext": {"is_gift": False}}
    request = build(fields, PROXY, requested_at="2026-05-04T09:15:02.120Z")
    assert request.method == "POST"
    assert request.url == (
        "https://edge-platform.sitecorecloud.io/v1/events/v1.2/events"
        "?sitecoreContextId=ctx-123&siteId=northwind"
    )
    assert request.headers == (("Content-Type", "application/json"),)
    assert request.body == {
        "channel": "WEB",
        "type": "WISHLIST_ADD",
        "language": "EN",
        "currency": "EUR",
        "page": "product/trail-runner-42",
        "pos": "",  # the proxy fills it from the context id
        "browser_id": BROWSER_ID,
        "ext": {"isGift": False},
        "client_key": "",
        "requested_at": "2026-05-04T09:15:02.120Z",
    }
    assert (
        request.body_bytes
        == json.dumps(request.body, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert request.size == len(request.body_bytes)


def test_proxy_mode_keeps_the_rule_requested_at_and_omits_a_missing_site() -> None:
    settings = SitecoreSettings(
        mode="proxy", context_id="c", client_key="k", pos="p", language="EN", currency="EUR"
    )
    fields = {"type": "VIEW", "requested_at": "2026-01-01T00:00:00Z"}
    request = build(fields, settings, requested_at="2026-05-04T09:15:02.120Z")
    assert request.url == (
        "https://api-engage-eu.sitecorecloud.io/v1/events/v1.2/events?sitecoreContextId=c"
    )
    assert (request.body["requested_at"], request.body["client_key"], request.body["pos"]) == (
        "2026-01-01T00:00:00Z",
        "k",
        "p",
    )


def test_direct_mode_never_adds_requested_at() -> None:
    assert "requested_at" not in message(build({"type": "VIEW"}, requested_at="2026-05-04"))


# ------------------------------------------------------------------ settings errors
@pytest.mark.parametrize(
    ("settings", "text"),
    [
        (SitecoreSettings(pos="p", language="EN", currency="EUR"), "no Sitecore client key"),
        (
            SitecoreSettings(client_key="k", language="EN", currency="EUR"),
            "no Sitecore point of sale",
        ),
        (
            SitecoreSettings(mode="proxy", language="EN", currency="EUR"),
            "proxy mode needs 'context_id'",
        ),
    ],
)
def test_missing_settings_are_dispatch_errors(settings: SitecoreSettings, text: str) -> None:
    with pytest.raises(DispatchError, match=re.escape(text)) as caught:
        build({"type": "VIEW"}, settings)
    assert caught.value.destination == "sitecore"


def test_an_empty_browser_id_is_refused() -> None:
    with pytest.raises(DispatchError, match="no Sitecore browser id"):
        build_sitecore_request({"type": "VIEW"}, DIRECT, rule="View", browser_id="")


# ------------------------------------------------------------------ browser id
def test_browser_create_url_direct() -> None:
    request = build_browser_request(DIRECT)
    assert (request.method, request.kind, request.destination) == ("GET", "browser", "sitecore")
    assert request.url == (
        "https://api-engage-eu.sitecorecloud.io/v1.2/browser/create.json"
        "?client_key=pqsDATA3lw12v5a9rrHPW1c4hET73GxQ&message=%7B%7D"
    )
    assert decoded(request)[1] == {
        "client_key": "pqsDATA3lw12v5a9rrHPW1c4hET73GxQ",
        "message": "{}",
    }
    assert request.body == {} and request.body_bytes == b""


def test_browser_create_url_trailing_slash_and_proxy() -> None:
    settings = SitecoreSettings(
        url="http://127.0.0.1:9000/", client_key="k", pos="p", language="EN", currency="EUR"
    )
    assert build_browser_request(settings).url.startswith(
        "http://127.0.0.1:9000/v1.2/browser/create.json?"
    )
    assert build_browser_request(PROXY).url == (
        "https://edge-platform.sitecorecloud.io/v1/events/v1.2/browser/create.json"
        "?sitecoreContextId=ctx-123&client_key="
    )
    with pytest.raises(DispatchError, match="no Sitecore client key"):
        build_browser_request(SitecoreSettings())


def test_get_size_is_the_url_length() -> None:
    request = build({"type": "VIEW", "ext": {"note": "x" * 500}})
    assert request.size == len(request.url)
    with pytest.raises(DispatchError, match=r"largest fields: ext\.note \(502 bytes\)"):
        check_size(request, limit=100)
