"""The exact Edge Network requests a ``send event`` becomes (docs/destinations.md, "Adobe
Experience Platform Edge Network"): URL and body, field by field, in both wire dialects."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from typing import Any, Literal
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import DispatchError, EvaluationError, PayloadTooLarge
from engine.destinations import EDGE_SIZE_LIMIT, Request, build_edge_request, check_size
from engine.destinations.base import (
    ENGINE_VERSION,
    drop_nulls,
    parse_bytes,
    serialize,
    serialize_bytes,
)
from engine.destinations.edge import _query
from engine.destinations.encoding import _drop
from engine.scope import Scope
from engine.settings import EdgeSettings
from tests.conftest import load_text

CONFIGURED = "5b3c1e7a-1111-4c1d-9e0f-2a6b8d9c0e11"
OVERRIDE = "1f0a7c9e-2b1d-4e3f-8a5b-6c7d8e9f0a1b"
EVENT_ID = "0b6f4a52-9a3c-4d2e-8f1a-7c5d3e2b1a09"
REQUEST_ID = "8f2d7a4c-3b1e-4f6a-9c2d-1e0b5a7d3f90"
TIMESTAMP = "2026-05-04T09:15:02.120Z"
NOW = 1777886102.12  # TIMESTAMP in epoch seconds
ECID = "05907638112924484241029082405297151763"
IDENTITY_KEY = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_identity"
CLUSTER_KEY = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_cluster"

SCHEMAS = [
    "https://ns.adobe.com/personalization/default-content-item",
    "https://ns.adobe.com/personalization/html-content-item",
    "https://ns.adobe.com/personalization/json-content-item",
    "https://ns.adobe.com/personalization/redirect-item",
    "https://ns.adobe.com/personalization/ruleset-item",
    "https://ns.adobe.com/personalization/message/in-app",
    "https://ns.adobe.com/personalization/message/content-card",
]
DOM_ACTION = "https://ns.adobe.com/personalization/dom-action"

# What `adobeDataLayer.getState(reference)` hands the seed's sendEvent: the page's state.
STATE_XDM: dict[str, Any] = {
    "commerce": {
        "order": {"purchaseID": "A-1", "priceTotal": 120.5, "currencyCode": "EUR"},
        "purchases": {"value": 1},
    },
    "productListItems": [
        {"SKU": "TR42BLK", "name": "Trail Runner 42 — noir", "quantity": 1, "priceTotal": 120.5}
    ],
    "web": {"webPageDetails": {"name": "checkout:confirmation", "URL": None}},
}
DATA: dict[str, Any] = {"__adobe": {"analytics": {"eVar5": "café"}}, "label": "Order A-1"}

# The seed example (000/001): every sendEvent option it shows.
SEED_FIELDS: dict[str, Any] = {
    "type": "commerce.purchases",
    "xdm": STATE_XDM,
    "data": DATA,
    "documentUnloading": True,
    "edgeConfigOverrides": {"datastreamId": OVERRIDE},
    "renderDecisions": True,
    "personalization": {"decisionScopes": ["hero-banner"]},
}

EXISTING: dict[str, Any] = {
    "ecid": ECID,
    "entries": [
        {"key": IDENTITY_KEY, "value": "CiYwNTkw", "maxAge": 34128000, "expires": NOW + 3600},
        {"key": CLUSTER_KEY, "value": "or2", "maxAge": 1800, "expires": NOW + 1800},
    ],
    "location_hint": "or2",
}


def settings(api: Literal["v1", "v2"] = "v2", **extra: Any) -> EdgeSettings:
    return EdgeSettings(datastream=CONFIGURED, domain="example.com", api=api, **extra)


def build(
    fields: dict[str, Any],
    identity: dict[str, Any] | None = None,
    api: Literal["v1", "v2"] = "v2",
    **kwargs: Any,
) -> Request:
    edge = kwargs.pop("settings", None) or settings(api)
    return build_edge_request(
        fields,
        edge,
        rule=kwargs.pop("rule", "Purchase"),
        identity={} if identity is None else identity,
        timestamp=TIMESTAMP,
        event_id=EVENT_ID,
        request_id=REQUEST_ID,
        **kwargs,
    )


def expected_xdm(identity_map: dict[str, Any] | None = None) -> dict[str, Any]:
    xdm: dict[str, Any] = {
        "eventType": "commerce.purchases",
        "timestamp": TIMESTAMP,
        "_id": EVENT_ID,
        "implementationDetails": {
            "name": "https://ns.adobe.com/experience/tagengine",
            "version": ENGINE_VERSION,
            "environment": "server",
        },
    }
    if identity_map is not None:
        xdm["identityMap"] = identity_map
    xdm["commerce"] = {
        "order": {"purchaseID": "A-1", "priceTotal": 120.5, "currencyCode": "EUR"},
        "purchases": {"value": 1},
    }
    xdm["productListItems"] = [
        {"SKU": "TR42BLK", "name": "Trail Runner 42 — noir", "quantity": 1, "priceTotal": 120.5}
    ]
    xdm["web"] = {"webPageDetails": {"name": "checkout:confirmation"}}  # URL: null dropped
    return xdm


EXPECTED_DATA = {"__adobe": {"analytics": {"eVar5": "café"}}, "label": "Order A-1"}
ECID_MAP = {"ECID": [{"id": ECID, "authenticatedState": "ambiguous", "primary": True}]}
STATE_FIRST = {"domain": "example.com", "cookiesEnabled": True}
STATE_EXISTING = {
    "domain": "example.com",
    "cookiesEnabled": True,
    "entries": [{"key": IDENTITY_KEY, "value": "CiYwNTkw"}, {"key": CLUSTER_KEY, "value": "or2"}],
}
SDK_CONFIG = {"datastream": {"original": CONFIGURED}}
PERSONALIZATION = {"schemas": SCHEMAS, "decisionScopes": ["hero-banner"], "surfaces": []}


def assert_serialized(request: Request) -> None:
    """``body_bytes`` is the body as compact UTF-8 JSON, non-ASCII kept."""
    assert request.body_bytes == json.dumps(
        request.body, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert json.loads(request.body_bytes) == request.body


# ------------------------------------------------------------------ the seed, golden
def test_seed_v2_first_request_goes_to_interact() -> None:
    request = build(SEED_FIELDS)
    assert request.url == (
        f"https://edge.adobedc.net/ee/v2/interact?datastreamId={OVERRIDE}&requestId={REQUEST_ID}"
    )
    assert (request.destination, request.rule, request.method, request.kind) == (
        "edge",
        "Purchase",
        "POST",
        "interact",
    )
    assert request.headers == (("Content-Type", "application/json"),)
    assert (request.event_id, request.request_id) == (EVENT_ID, REQUEST_ID)
    body = request.body
    assert list(body) == ["event", "query", "meta"]
    assert body["event"] == {"xdm": expected_xdm(), "data": EXPECTED_DATA}
    assert body["query"] == {"identity": {"fetch": ["ECID"]}, "personalization": PERSONALIZATION}
    assert body["meta"] == {"state": STATE_FIRST, "sdkConfig": SDK_CONFIG}
    assert request.event is body["event"]
    assert_serialized(request)


def test_seed_v2_with_identity_goes_to_collect() -> None:
    request = build(SEED_FIELDS, EXISTING)
    assert request.url == (
        f"https://edge.adobedc.net/ee/or2/v2/collect?datastreamId={OVERRIDE}"
        f"&requestId={REQUEST_ID}&silent=true"
    )
    assert request.kind == "collect"
    body = request.body
    assert list(body) == ["events", "meta"]  # no query: a collect call answers nothing
    assert body["events"] == [{"xdm": expected_xdm(ECID_MAP), "data": EXPECTED_DATA}]
    assert body["meta"] == {"state": STATE_EXISTING, "sdkConfig": SDK_CONFIG}
    assert_serialized(request)


def test_seed_v1_first_request_goes_to_interact() -> None:
    request = build(SEED_FIELDS, api="v1")
    assert request.url == (
        f"https://edge.adobedc.net/ee/v1/interact?configId={OVERRIDE}&requestId={REQUEST_ID}"
    )
    assert request.kind == "interact"
    body = request.body
    assert list(body) == ["events", "query", "meta"]
    assert body["events"] == [
        {
            "xdm": expected_xdm(),
            "data": EXPECTED_DATA,
            "query": {"personalization": PERSONALIZATION},  # event level in v1
        }
    ]
    assert body["query"] == {"identity": {"fetch": ["ECID"]}}
    assert body["meta"] == {"state": STATE_FIRST, "sdkConfig": SDK_CONFIG}
    assert_serialized(request)


def test_seed_v1_with_identity_goes_to_collect() -> None:
    request = build(SEED_FIELDS, EXISTING, api="v1")
    assert request.url == (
        f"https://edge.adobedc.net/ee/or2/v1/collect?configId={OVERRIDE}&requestId={REQUEST_ID}"
    )
    assert request.kind == "collect"
    assert request.body == {
        "events": [{"xdm": expected_xdm(ECID_MAP), "data": EXPECTED_DATA}],
        "meta": {"state": STATE_EXISTING, "sdkConfig": SDK_CONFIG},
    }
    assert_serialized(request)


def test_seed_body_bytes_exactly() -> None:
    request = build(
        {"type": "commerce.purchases", "xdm": {"x": "é"}, "data": {"k": [1, 2.5, True]}},
        settings=EdgeSettings(datastream="ds-1"),
    )
    assert (
        request.body_bytes
        == (
            '{"event":{"xdm":{"eventType":"commerce.purchases","timestamp":"2026-05-04T09:15:02.120Z",'
            '"_id":"0b6f4a52-9a3c-4d2e-8f1a-7c5d3e2b1a09","implementationDetails":{"name":'
            f'"https://ns.adobe.com/experience/tagengine","version":"{ENGINE_VERSION}",'
            '"environment":"server"},"x":"é"},"data":{"k":[1,2.5,true]}},'
            '"query":{"identity":{"fetch":["ECID"]}},'
            '"meta":{"state":{"domain":"","cookiesEnabled":true}}}'
        ).encode()
    )


def test_without_unloading_an_identified_session_still_interacts() -> None:
    fields = {**SEED_FIELDS, "documentUnloading": False}
    request = build(fields, EXISTING)
    assert request.kind == "interact"
    assert "/ee/or2/v2/interact?" in request.url
    assert request.body["meta"]["state"] == STATE_EXISTING


def test_has_identity_parameter_overrides_the_guess() -> None:
    assert build(SEED_FIELDS, {}, has_identity=True).kind == "collect"
    assert build(SEED_FIELDS, EXISTING, has_identity=False).kind == "interact"
    # an identity state entry alone counts as an identity
    only_entry = {"entries": [{"key": IDENTITY_KEY, "value": "x"}]}
    assert build(SEED_FIELDS, only_entry).kind == "collect"
    only_cluster = {"entries": [{"key": CLUSTER_KEY, "value": "or2"}]}
    assert build(SEED_FIELDS, only_cluster).kind == "interact"


def test_the_input_fields_are_not_changed_or_shared() -> None:
    fields = copy.deepcopy(SEED_FIELDS)
    request = build(fields, EXISTING)
    assert fields == SEED_FIELDS
    request.event["xdm"]["commerce"]["order"]["purchaseID"] = "changed"
    request.event["xdm"]["productListItems"].append({})
    assert fields == SEED_FIELDS
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.url = "x"  # type: ignore[misc]


# ------------------------------------------------------------------ overrides
def test_overrides_are_filtered_like_the_web_sdk() -> None:
    fields = {
        "type": "t",
        "edgeConfigOverrides": {
            "com_adobe_analytics": {"enabled": True, "reportSuites": []},
            "com_adobe_target": {"enabled": False, "propertyToken": ""},
            "com_adobe_identity": {"idSyncContainerId": "123"},
            "com_adobe_audience_manager": {"enabled": True},
            "com_adobe_experience_platform": {
                "datasets": {"event": {"datasetId": None}},
                "com_adobe_edge_ode": {"enabled": False},
                "com_adobe_edge_segmentation": {"enabled": True},
            },
            "com_adobe_launch_ssf": {"enabled": None, "ratio": 0.5},
        },
    }
    request = build(fields)
    assert request.body["meta"]["configOverrides"] == {
        "com_adobe_target": {"enabled": False},
        "com_adobe_identity": {"idSyncContainerId": 123},
        "com_adobe_experience_platform": {"com_adobe_edge_ode": {"enabled": False}},
        "com_adobe_launch_ssf": {"ratio": 0.5},
    }
    # no datastream override: the configured id in the URL and no sdkConfig
    assert f"datastreamId={CONFIGURED}&" in request.url
    assert "sdkConfig" not in request.body["meta"]


def test_empty_items_of_an_override_list_are_not_sent() -> None:
    # ["rs-eu", state.rs] with state.rs missing: a report suite "null" would be refused
    suites = {"com_adobe_analytics": {"reportSuites": ["rs-eu", None, ""]}}
    request = build({"type": "t", "edgeConfigOverrides": suites})
    assert request.body["meta"]["configOverrides"] == {
        "com_adobe_analytics": {"reportSuites": ["rs-eu"]}
    }
    nothing = {"com_adobe_analytics": {"reportSuites": [None]}}
    assert (
        "configOverrides" not in build({"type": "t", "edgeConfigOverrides": nothing}).body["meta"]
    )


def test_overrides_that_filter_to_nothing_send_no_config_overrides() -> None:
    fields = {"type": "t", "edgeConfigOverrides": {"com_adobe_analytics": {"enabled": True}}}
    assert build(fields).body["meta"] == {"state": STATE_FIRST}


def test_datastream_override_equal_to_the_configured_one_adds_no_original() -> None:
    request = build({"type": "t", "edgeConfigOverrides": {"datastreamId": CONFIGURED}})
    assert f"datastreamId={CONFIGURED}&" in request.url
    assert "sdkConfig" not in request.body["meta"]


def test_datastream_override_without_a_configured_one() -> None:
    request = build(SEED_FIELDS, settings=EdgeSettings())
    assert f"datastreamId={OVERRIDE}&" in request.url
    assert "sdkConfig" not in request.body["meta"]


def test_no_datastream_at_all_is_a_dispatch_error() -> None:
    with pytest.raises(DispatchError, match=r"rule 'Purchase': no Edge datastream id") as caught:
        build({"type": "t"}, settings=EdgeSettings())
    assert caught.value.destination == "edge"


def test_dataset_id_becomes_the_platform_override_and_wins() -> None:
    fields = {
        "type": "t",
        "datasetId": "64b6f949a8a6891ca8a28911",
        "edgeConfigOverrides": {
            "com_adobe_experience_platform": {
                "enabled": False,
                "datasets": {"event": {"datasetId": "other"}},
            },
            "com_adobe_target": {"propertyToken": "tok"},
        },
    }
    request = build(fields)
    assert request.body["meta"]["configOverrides"] == {
        "com_adobe_experience_platform": {
            "enabled": False,
            "datasets": {"event": {"datasetId": "64b6f949a8a6891ca8a28911"}},
        },
        "com_adobe_target": {"propertyToken": "tok"},
    }
    assert "datasetId" not in request.event["xdm"]


def test_merge_id_becomes_event_merge_id() -> None:
    request = build({"type": "t", "mergeId": "m-1"})
    assert request.event["xdm"]["eventMergeId"] == "m-1"
    assert b'"mergeId"' not in request.body_bytes


# ------------------------------------------------------------------ viewStart
def test_view_start_is_a_page_view_that_asks_for_the_view() -> None:
    fields = {
        "type": "viewStart",
        "data": {"key": "value"},
        "documentUnloading": True,
        "decisionScopes": ["hero-banner"],
    }
    for api in ("v1", "v2"):
        request = build(fields, EXISTING, api=api)
        assert request.kind == "interact"  # always: the view's propositions come back
        assert f"/ee/or2/{api}/interact?" in request.url
        assert request.event["xdm"]["eventType"] == "web.webpagedetails.pageViews"
        assert request.event["data"] == {"key": "value"}
        assert b"viewStart" not in request.body_bytes
        query = request.body["query"] if api == "v2" else request.event["query"]
        assert query["personalization"] == {
            "schemas": [*SCHEMAS, DOM_ACTION],
            "decisionScopes": ["hero-banner", "__view__"],
            "surfaces": [],
        }


def test_view_start_keeps_an_explicit_event_type_and_scope_order() -> None:
    fields = {
        "type": "viewStart",
        "xdm": {"eventType": "web.webinteraction.linkClicks"},
        "personalization": {"decisionScopes": ["__view__", "a"]},
    }
    request = build(fields)
    assert request.event["xdm"]["eventType"] == "web.webinteraction.linkClicks"
    assert request.body["query"]["personalization"]["decisionScopes"] == ["__view__", "a"]


# ------------------------------------------------------------------ personalization
def test_decision_scopes_merge_deprecated_first_deduplicated_with_surfaces() -> None:
    fields = {
        "type": "t",
        "decisionScopes": ["a", "b", None],
        "personalization": {
            "decisionScopes": ["b", "c", "a"],
            "surfaces": ["web://example.com/home", "web://example.com/home"],
            "sendDisplayEvent": False,
        },
        "renderDecisions": False,
    }
    request = build(fields)
    assert request.body["query"]["personalization"] == {
        "schemas": SCHEMAS,
        "decisionScopes": ["a", "b", "c"],
        "surfaces": ["web://example.com/home"],
    }
    # renderDecisions and sendDisplayEvent have no wire effect on a server
    assert b"renderDecisions" not in request.body_bytes
    assert b"sendDisplayEvent" not in request.body_bytes
    assert build({**fields, "renderDecisions": True}).body == request.body


def test_surfaces_alone_ask_for_personalization() -> None:
    request = build({"type": "t", "personalization": {"surfaces": ["web://example.com/"]}})
    assert request.body["query"]["personalization"]["decisionScopes"] == []
    assert request.body["query"]["personalization"]["surfaces"] == ["web://example.com/"]


def test_no_scope_no_surface_no_personalization_query() -> None:
    request = build({"type": "t", "personalization": {"decisionScopes": []}})
    assert request.body["query"] == {"identity": {"fetch": ["ECID"]}}
    v1 = build({"type": "t"}, api="v1")
    assert "query" not in v1.event


# ------------------------------------------------------------------ location hint
@pytest.mark.parametrize(
    ("hint", "url", "expected"),
    [
        ("or2", "https://edge.adobedc.net", "https://edge.adobedc.net/ee/or2/v2/interact?"),
        ("va6", "http://127.0.0.1:8080/", "http://127.0.0.1:8080/ee/va6/v2/interact?"),
        (None, "https://edge.adobedc.net", "https://edge.adobedc.net/ee/v2/interact?"),
        ("", "https://edge.adobedc.net", "https://edge.adobedc.net/ee/v2/interact?"),
        ("or2/../x", "https://edge.adobedc.net", "https://edge.adobedc.net/ee/v2/interact?"),
        # the authenticated host takes the hint in its name (Adobe's server-side sample)
        ("or2", "https://server.adobedc.net", "https://or2.server.adobedc.net/ee/v2/interact?"),
        ("or2_x", "https://server.adobedc.net", "https://server.adobedc.net/ee/v2/interact?"),
    ],
)
def test_location_hint_path(hint: str | None, url: str, expected: str) -> None:
    request = build(
        {"type": "t"},
        {"location_hint": hint},
        settings=EdgeSettings(datastream=CONFIGURED, url=url),
    )
    assert request.url.startswith(expected)


# ------------------------------------------------------------------ meta.state
def test_state_entries_drop_expired_and_duplicate_ones() -> None:
    identity = {
        "entries": [
            {"key": "kndctr_X_consent", "value": "general=in"},  # no expiry: kept
            {"key": "kndctr_X_cluster", "value": "va6", "expires": NOW - 1},  # expired
            {"key": "kndctr_X_identity", "value": "old", "expires": NOW + 10},
            {"key": "kndctr_X_session", "value": "s", "expires": NOW},  # expires now: dropped
            {"key": "kndctr_X_identity", "value": "new", "maxAge": 34128000},  # replaces
            {"key": "kndctr_X_optout", "value": ""},
            {"key": 3, "value": "bad key"},
            {"value": "no key"},
            "not an entry",
        ]
    }
    request = build({"type": "t"}, identity)
    assert request.body["meta"]["state"]["entries"] == [
        {"key": "kndctr_X_consent", "value": "general=in"},
        {"key": "kndctr_X_identity", "value": "new"},
        {"key": "kndctr_X_optout", "value": ""},
    ]


def test_state_entry_expiry_uses_now_when_given() -> None:
    identity = {"entries": [{"key": "k", "value": "v", "expires": NOW + 10}]}
    assert build({"type": "t"}, identity).body["meta"]["state"]["entries"] == [
        {"key": "k", "value": "v"}
    ]
    later = build({"type": "t"}, identity, now=NOW + 20)
    assert "entries" not in later.body["meta"]["state"]


def test_state_domain_defaults_to_empty() -> None:
    request = build({"type": "t"}, settings=EdgeSettings(datastream="d"))
    assert request.body["meta"]["state"] == {"domain": "", "cookiesEnabled": True}


# ------------------------------------------------------------------ identityMap
def test_identity_map_merges_session_rule_and_shortcut() -> None:
    identity = {
        "ecid": ECID,
        "identity_map": {"FPID": [{"id": "f-1", "authenticatedState": "ambiguous"}]},
    }
    fields = {
        "type": "t",
        "xdm": {"identityMap": {"CRM_ID": [{"id": "c-1", "primary": True}]}},
        "identityMap": {
            "Email_LC_SHA256": [{"id": "e-1", "authenticatedState": "authenticated"}],
            "FPID": [{"id": "f-2", "authenticatedState": "authenticated"}],  # arrays replace
        },
    }
    request = build(fields, identity)
    assert request.event["xdm"]["identityMap"] == {
        "FPID": [{"id": "f-2", "authenticatedState": "authenticated"}],
        # another namespace is primary, so the ECID is not
        "ECID": [{"id": ECID, "authenticatedState": "ambiguous", "primary": False}],
        "CRM_ID": [{"id": "c-1", "primary": True}],
        "Email_LC_SHA256": [{"id": "e-1", "authenticatedState": "authenticated"}],
    }
    assert "identityMap" not in request.event


def test_rule_ecid_replaces_the_session_one() -> None:
    fields = {"type": "t", "identityMap": {"ECID": [{"id": "mine"}]}}
    request = build(fields, {"ecid": ECID})
    assert request.event["xdm"]["identityMap"] == {"ECID": [{"id": "mine"}]}


def test_no_identity_no_identity_map() -> None:
    request = build({"type": "t", "identityMap": {"CRM_ID": None}})
    assert "identityMap" not in request.event["xdm"]


# ------------------------------------------------------------------ merge and nulls
def test_rule_xdm_wins_over_type_and_automatic_fields() -> None:
    fields = {
        "type": "commerce.purchases",
        "xdm": {
            "eventType": "commerce.productViews",
            "timestamp": "2026-05-04T09:00:00Z",
            "implementationDetails": {"name": "custom"},
        },
    }
    xdm = build(fields).event["xdm"]
    assert xdm["eventType"] == "commerce.productViews"
    assert xdm["timestamp"] == "2026-05-04T09:00:00Z"
    assert xdm["implementationDetails"] == {
        "name": "custom",
        "version": ENGINE_VERSION,
        "environment": "server",
    }  # objects merge


def test_a_null_never_erases_an_automatic_field() -> None:
    xdm = build({"type": "a.b", "xdm": {"eventType": None, "_id": None}}).event["xdm"]
    assert (xdm["eventType"], xdm["_id"]) == ("a.b", EVENT_ID)


def test_rule_id_becomes_the_event_id() -> None:
    request = build({"type": "t", "xdm": {"_id": "order-A-1"}})
    assert request.event_id == "order-A-1"
    assert request.event["xdm"]["_id"] == "order-A-1"


def test_nulls_are_dropped_from_xdm_and_data() -> None:
    fields = {
        "type": "t",
        "xdm": {
            "a": None,
            "b": {"c": None},
            "d": [1, None, {"e": None, "f": 2}],
            "g": {},
            "h": {"i": {"j": None}, "k": 0, "l": False, "m": ""},
        },
        "data": {"x": None, "y": {"z": None}},
    }
    request = build(fields)
    xdm = request.event["xdm"]
    for key in ("a", "b"):
        assert key not in xdm
    assert xdm["d"] == [1, {"f": 2}]
    assert xdm["g"] == {}  # written empty: kept
    assert xdm["h"] == {"k": 0, "l": False, "m": ""}
    assert "data" not in request.event  # empty once its nulls are gone
    assert b"null" not in request.body_bytes


def test_missing_state_values_from_a_compiled_rule() -> None:
    ruleset = load_text(
        {
            "settings.rules": 'edge { datastream: "ds-1" }\n',
            "c.rules": (
                "element order_id = event.eventInfo.orderId\n"
                'rule "Purchase" {\n'
                '  on "commerce.purchase"\n'
                "  send event {\n"
                '    type: "commerce.purchases"\n'
                "    xdm: {\n"
                "      commerce.order.purchaseID: order_id\n"
                "      commerce.order.priceTotal: state.cart.total\n"
                "      web.webPageDetails.name: state.page.name\n"
                "    }\n"
                '    data: { label: "Order %order_id%" }\n'
                "    documentUnloading: true\n"
                "  }\n"
                "}\n"
            ),
        }
    )
    rule = ruleset.rule("Purchase")
    assert rule is not None and ruleset.edge is not None
    scope = Scope({"cart": {"total": 120}}, {"eventInfo": {"orderId": "A-1"}}, ruleset.elements)
    fields = rule.actions[0].build(scope)
    request = build(fields, settings=ruleset.edge)
    assert request.kind == "interact"
    assert request.event["xdm"]["commerce"] == {"order": {"purchaseID": "A-1", "priceTotal": 120}}
    assert "web" not in request.event["xdm"]  # state.page.name is missing
    assert request.event["data"] == {"label": "Order A-1"}


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"xdm": "text"}, "send event 'xdm' must be an object, not str"),
        ({"data": [1]}, "send event 'data' must be an object, not list"),
        ({"type": 3}, "send event 'type' must be a string, not int"),
        ({"edgeConfigOverrides": "x"}, "'edgeConfigOverrides' must be an object"),
        ({"edgeConfigOverrides": {"datastreamId": 1}}, "datastreamId' must be a string"),
        ({"decisionScopes": [1]}, "'decisionScopes' must be a list of strings, not int"),
        ({"xdm": {"x": float("nan")}}, "a value JSON cannot carry"),
        ({"data": {"x": object()}}, "a value JSON cannot carry"),
    ],
)
def test_bad_field_shapes_fail_the_rule(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(EvaluationError, match=re.escape(message)) as caught:
        build(fields)
    assert str(caught.value).startswith("rule 'Purchase': ")


def test_a_lone_scope_string_counts_as_one_scope() -> None:
    request = build({"type": "t", "decisionScopes": "hero"})
    assert request.body["query"]["personalization"]["decisionScopes"] == ["hero"]


# ------------------------------------------------------------------ size
def _json_len(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def test_size_limit_error_names_rule_size_limit_and_largest_fields() -> None:
    items = [{"SKU": f"SKU-{i:05d}", "name": "Produit é" * 20, "quantity": 1} for i in range(280)]
    fields: dict[str, Any] = {
        "type": "commerce.purchases",
        "xdm": {"productListItems": items, "web": {"webPageDetails": {"name": "checkout"}}},
        "data": {"__adobe": {"analytics": {"list1": "x" * 4000}}, "small": 1},
    }
    request = build(fields)
    assert request.size == len(request.body_bytes) > EDGE_SIZE_LIMIT
    with pytest.raises(PayloadTooLarge) as caught:
        check_size(request)
    error = caught.value
    assert error.destination == "edge"
    assert error.request_id == REQUEST_ID
    sizes = {
        "xdm.productListItems": _json_len(items),
        "data.__adobe": _json_len(fields["data"]["__adobe"]),
        "query.identity": _json_len({"fetch": ["ECID"]}),
        "xdm.implementationDetails": _json_len(request.event["xdm"]["implementationDetails"]),
    }
    assert sizes["xdm.implementationDetails"] > sizes["query.identity"]
    assert str(error) == (
        f"rule 'Purchase': request is {request.size:,} bytes, above the 65,536-byte limit; "
        f"largest fields: xdm.productListItems ({sizes['xdm.productListItems']:,} bytes), "
        f"data.__adobe ({sizes['data.__adobe']:,} bytes), "
        f"xdm.implementationDetails ({sizes['xdm.implementationDetails']:,} bytes)"
    )
    assert re.fullmatch(
        r"rule 'Purchase': request is \d{2},\d{3} bytes, above the 65,536-byte limit; "
        r"largest fields: xdm\.productListItems \(\d{2},\d{3} bytes\), "
        r"data\.__adobe \(4,\d{3} bytes\), xdm\.implementationDetails \(\d+ bytes\)",
        str(error),
    )


def test_size_limit_is_inclusive() -> None:
    request = build({"type": "t"})
    check_size(request, limit=request.size)
    with pytest.raises(PayloadTooLarge, match=r"above the \d+-byte limit; largest fields: "):
        check_size(request, limit=request.size - 1)


@given(
    st.lists(
        st.tuples(st.sampled_from(["datastreamId", "configId", "requestId", "silent"]), st.text()),
        min_size=1,
        max_size=3,
    )
)
def test_query_strings_are_what_urlencode_makes(params: list[tuple[str, str]]) -> None:
    assert _query(params) == urlencode(params, quote_via=quote)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)


@given(_json_values)
def test_wire_json_reads_back_as_what_was_sent(value: Any) -> None:
    data = serialize_bytes(value, rule="R")
    assert json.loads(data) == value
    assert data.decode() == serialize(value, rule="R")
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if not re.search(rb"\d[eE]", data + text):  # the spelling of some floats aside
        assert data == text


def _typed(value: Any) -> Any:
    """``value`` with each number tagged by its type: 1 and 1.0 must not pass for equal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@given(_json_values)
def test_stored_json_reads_back_as_json_reads_it(value: Any) -> None:
    for text in (
        serialize_bytes(value, rule="R"),
        json.dumps(value, indent=1).encode(),
        json.dumps(value).encode(),
    ):
        assert _typed(parse_bytes(text)) == _typed(json.loads(text))
    assert _typed(parse_bytes(json.dumps(value))) == _typed(value)


@pytest.mark.parametrize(
    "text",
    [
        b'{"id":"05907638112924484241029082405297151763","n":18446744073709551616}',
        b"[-9223372036854775809, 1]",
        b"123456789012345678901234",
        b'["123456789012345678901234", 12345678901234567890123]',
        b'{"id": "05907638112924484241029082405297151763", "n":\n -12345678901234567890}',
        b'{"a":NaN,"b":-Infinity}',
        b'["\\ud800"]',
        '{"k": "\udc80"}',
    ],
)
def test_stored_json_reads_numbers_and_oddities_as_json_does(text: bytes | str) -> None:
    assert _typed(parse_bytes(text)) == _typed(json.loads(text))


_values_with_nulls = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)


@given(_values_with_nulls)
def test_dropping_nulls_takes_the_same_values_with_or_without_the_quick_copy(value: Any) -> None:
    quick, walked = drop_nulls(value), _drop(value)
    assert _typed(quick) == _typed(walked)
    if isinstance(value, dict | list):
        assert quick is not value  # always a fresh copy


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [1, {"y": math.nan}]}])
def test_wire_json_refuses_what_json_cannot_carry(bad: Any) -> None:
    with pytest.raises(EvaluationError, match="rule 'R': the send holds a value JSON cannot"):
        serialize_bytes(bad, rule="R")


def test_wire_json_takes_what_orjson_does_not() -> None:
    assert (
        serialize_bytes({"big": 2**70, "n": None}, rule="R")
        == b'{"big":1180591620717411303424,"n":null}'
    )
    assert serialize_bytes({"text": "null"}, rule="R") == b'{"text":"null"}'
