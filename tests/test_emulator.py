"""The local emulator (docs/destinations.md, "The local emulator"), over real loopback sockets:
Edge interact/collect with identity, state and propositions, its documented errors, the
IMS-like token endpoint, the Sitecore Stream API, injected faults, recording, and shutdown."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.destinations import build_browser_request, build_edge_request, build_sitecore_request
from engine.emulator import EmulatorConfig, EmulatorServer, Fault, FaultError, load_scopes, serve
from engine.emulator.identity import decode_identity, encode_identity, mint_ecid
from engine.settings import EdgeSettings, SitecoreSettings

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"
# Adobe's documented identity entry (research/adobe-edge.md §3.4) and the ECID inside it.
DOC_IDENTITY = (
    "CiYwNTkwNzYzODExMjkyNDQ4NDI0MTAyOTA4MjQwNTI5NzE1MTc2M1IOCL-pwpv9LxgBKgNPUjLwAb-pwpv9Lw=="
)
DOC_ECID = "05907638112924484241029082405297151763"
V2 = "/ee/v2/interact?datastreamId=ds-1"
PROBLEM = "application/problem+json"
# Plain HTTP on loopback: no TLS, so skip loading the CA bundle (~100 ms per client here).
NO_TLS = False


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=5, verify=NO_TLS) as c:
        yield c


def event_body(
    *,
    entries: list[dict[str, str]] | None = None,
    scopes: list[str] | None = None,
    identity_map: dict[str, Any] | None = None,
) -> dict[str, Any]:
    xdm: dict[str, Any] = {"eventType": "web.webpagedetails.pageViews"}
    if identity_map:
        xdm["identityMap"] = identity_map
    body: dict[str, Any] = {
        "event": {"xdm": xdm},
        "query": {"identity": {"fetch": ["ECID"]}},
        "meta": {"state": {"domain": "", "cookiesEnabled": True}},
    }
    if scopes:
        body["query"]["personalization"] = {"decisionScopes": scopes}
    if entries:
        body["meta"]["state"]["entries"] = entries
    return body


# Authenticated (server-to-server) requests need a primary identity (EXEG-0306-400): an FPID.
FPID = "2b5e7d1c-4a0f-4d6b-9c3e-8f1a2b3c4d5e"


def server_body() -> dict[str, Any]:
    """An event as a server sends it to the authenticated host: with its FPID."""
    return event_body(identity_map={"FPID": [{"id": FPID, "primary": True}]})


def handles(response: httpx.Response, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [h for h in response.json()["handle"] if h["type"] == kind]
    return found


def payload(response: httpx.Response, kind: str) -> list[dict[str, Any]]:
    return [item for h in handles(response, kind) for item in h["payload"]]


def ecid_of(response: httpx.Response) -> str:
    (identity,) = payload(response, "identity:result")
    assert identity["namespace"] == {"code": "ECID"}
    ecid: str = identity["id"]
    return ecid


def entries_of(response: httpx.Response) -> list[dict[str, str]]:
    return [{"key": e["key"], "value": e["value"]} for e in payload(response, "state:store")]


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"https://ns.adobe.com/aep/errors/{code}"
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    return problem


# ====================================================================== Edge: interact
def test_interact_answers_identity_state_store_and_cluster(client: httpx.Client) -> None:
    sent = str(uuid.uuid4())
    response = client.post(f"{V2}&requestId={sent}", json=event_body())
    assert response.status_code == 200
    body = response.json()
    assert re.fullmatch(re.escape(sent) + r"-[0-9a-f]{16}", body["requestId"])
    assert response.headers["x-request-id"] == body["requestId"]
    ecid = ecid_of(response)
    assert re.fullmatch(r"\d{38}", ecid)
    store = {e["key"]: e for e in payload(response, "state:store")}
    identity = store["kndctr_TAGENGINEEMULATOR0000000_AdobeOrg_identity"]
    assert identity["maxAge"] == 34128000 and identity["attrs"] == {"SameSite": "None"}
    assert decode_identity(identity["value"]) == ecid  # opaque, but maps back to the ECID
    cluster = store["kndctr_TAGENGINEEMULATOR0000000_AdobeOrg_cluster"]
    assert cluster["value"] == "or2" and cluster["maxAge"] == 1800
    assert cluster["attrs"] == {"SameSite": "None"}
    hints = payload(response, "locationHint:result")
    assert {"scope": "EdgeNetwork", "hint": "or2", "ttlSeconds": 1800} in hints
    (destination,) = payload(response, "activation:pull")
    assert destination["segments"] == [{"id": "emulator-all-visitors"}]
    assert "errors" not in body and "warnings" not in body


def test_a_visitor_keeps_its_ecid_and_a_new_visitor_gets_another(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    first = client.post(V2, json=event_body())
    again = client.post(V2, json=event_body(entries=entries_of(first)))
    stranger = client.post(V2, json=event_body())
    assert ecid_of(again) == ecid_of(first)
    assert entries_of(again) == entries_of(first)  # the identity entry is not rewritten
    assert ecid_of(stranger) != ecid_of(first)
    visitors = emulator.visitors()
    assert visitors[ecid_of(first)]["interacts"] == 2
    assert visitors[ecid_of(stranger)]["interacts"] == 1


def test_a_visitor_is_recognised_by_an_ecid_or_fpid_in_the_identity_map(
    client: httpx.Client,
) -> None:
    ecid = mint_ecid()
    by_ecid = client.post(V2, json=event_body(identity_map={"ECID": [{"id": ecid}]}))
    assert ecid_of(by_ecid) == ecid
    fpid = {"FPID": [{"id": str(uuid.uuid4()), "primary": True}]}
    one = client.post(V2, json=event_body(identity_map=fpid))
    two = client.post(V2, json=event_body(identity_map=fpid))
    other = client.post(V2, json=event_body(identity_map={"FPID": [{"id": "another"}]}))
    assert ecid_of(one) == ecid_of(two) != ecid_of(other)


def test_an_edge_identity_entry_and_its_org_are_recognised(client: httpx.Client) -> None:
    entries = [
        {"key": "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_identity", "value": DOC_IDENTITY},
        {"key": "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_cluster", "value": "irl1"},
    ]
    response = client.post(V2, json=event_body(entries=entries))
    assert ecid_of(response) == DOC_ECID
    store = {e["key"]: e["value"] for e in payload(response, "state:store")}
    assert store == {entries[0]["key"]: DOC_IDENTITY, entries[1]["key"]: "irl1"}
    assert response.headers["x-adobe-edge"] == "IRL1;9"


def test_the_org_header_names_the_state_entries(client: httpx.Client) -> None:
    response = client.post(V2, json=event_body(), headers={"x-gw-ims-org-id": ORG})
    keys = {e["key"] for e in payload(response, "state:store")}
    assert keys == {
        "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_identity",
        "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_cluster",
    }


def test_a_location_hint_in_the_path_becomes_the_cluster(client: httpx.Client) -> None:
    hinted = client.post("/ee/va6/v2/interact?datastreamId=ds-1", json=event_body())
    assert hinted.status_code == 200
    store = {e["key"].rsplit("_", 1)[1]: e["value"] for e in payload(hinted, "state:store")}
    assert store["cluster"] == "va6"
    assert {"scope": "EdgeNetwork", "hint": "va6", "ttlSeconds": 1800} in payload(
        hinted, "locationHint:result"
    )
    # No hint in the path: the cluster entry sent keeps the visitor on its cluster.
    follow = client.post(V2, json=event_body(entries=entries_of(hinted)))
    assert follow.headers["x-adobe-edge"] == "VA6;9"
    assert client.post("/ee/bad.hint/v2/interact?datastreamId=d", json={}).status_code == 404


def test_v1_interact_takes_config_id_and_events(client: httpx.Client) -> None:
    body = {
        "events": [
            {
                "xdm": {"eventType": "web.webpagedetails.pageViews"},
                "query": {"personalization": {"decisionScopes": ["hero-banner"]}},
            }
        ],
        "query": {"identity": {"fetch": ["ECID"]}},
        "meta": {"state": {"domain": "", "cookiesEnabled": True}},
    }
    response = client.post("/ee/or2/v1/interact?configId=ds-1&requestId=r1", json=body)
    assert response.status_code == 200
    (decisions,) = handles(response, "personalization:decisions")
    assert decisions["eventIndex"] == 0
    assert [p["scope"] for p in decisions["payload"]] == ["hero-banner"]
    assert ecid_of(response)


def test_collect_answers_without_handles(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    events = {"events": [{"xdm": {"eventType": "x"}}, {"xdm": {"eventType": "y"}}]}
    silent = client.post("/ee/v2/collect?datastreamId=ds&requestId=c1&silent=true", json=events)
    assert silent.status_code == 204 and silent.content == b""
    loud = client.post("/ee/v2/collect?datastreamId=ds&requestId=c2", json=events)
    assert loud.status_code == 202
    assert re.fullmatch(r"c2-[0-9a-f]{16}", loud.json()["requestId"])
    v1 = client.post("/ee/or2/v1/collect?configId=ds", json=events)
    assert v1.status_code == 204 and v1.content == b""
    assert emulator.visitors() == {}  # collect never mints an identity


def test_the_engine_builders_requests_are_accepted(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    """The contract with engine/destinations: what the builders produce, the emulator takes."""
    fields = {"type": "commerce.purchases", "xdm": {"commerce": {"purchases": {"value": 1}}}}
    common: dict[str, Any] = {
        "rule": "Purchase",
        "timestamp": "2026-05-04T09:15:02.120Z",
        "event_id": str(uuid.uuid4()),
    }
    for api in ("v2", "v1"):
        settings = EdgeSettings(url=emulator.url, datastream="ds-1", api=api)
        request = build_edge_request(
            {**fields, "decisionScopes": ["hero-banner"]},
            settings,
            identity={},
            request_id=str(uuid.uuid4()),
            **common,
        )
        response = client.post(request.url, content=request.body_bytes, headers=request.headers)
        assert response.status_code == 200, response.text
        assert payload(response, "personalization:decisions")[0]["scope"] == "hero-banner"
        identity = {"ecid": ecid_of(response), "entries": payload(response, "state:store")}
        unloading = build_edge_request(
            {**fields, "documentUnloading": True},
            settings,
            identity=identity,
            request_id=str(uuid.uuid4()),
            now=time.time(),
            **common,
        )
        assert unloading.kind == "collect"
        sent = client.post(unloading.url, content=unloading.body_bytes, headers=unloading.headers)
        assert sent.status_code == 204, sent.text


# ====================================================================== Edge: errors
def test_a_body_above_64_kb_is_refused_with_exeg_0112_413(client: httpx.Client) -> None:
    def sized(total: int) -> bytes:
        shell = json.dumps({"event": {"xdm": {}, "data": {"pad": ""}}}).encode()
        body = json.dumps({"event": {"xdm": {}, "data": {"pad": "x" * (total - len(shell))}}})
        assert len(body.encode()) == total
        return body.encode()

    headers = {"content-type": "application/json"}
    assert client.post(V2, content=sized(65536), headers=headers).status_code == 200
    response = client.post(f"{V2}&requestId=big", content=sized(65537), headers=headers)
    problem = assert_problem(response, 413, "EXEG-0112-413")
    assert "65536" in problem["detail"]
    assert problem["report"]["requestId"].startswith("big-")


def test_a_missing_datastream_id_is_refused_with_an_rfc_7807_body(client: httpx.Client) -> None:
    problem = assert_problem(
        client.post("/ee/v2/interact?requestId=r", json=event_body()), 400, "EXEG-0002-400"
    )
    assert "datastreamId" in problem["detail"]
    assert problem["report"]["requestId"].startswith("r-")
    # v1 names it configId; the v2 name there is a mistake the detail points out.
    v1 = client.post("/ee/v1/interact?datastreamId=ds", json={"events": [{"xdm": {}}]})
    assert "configId" in assert_problem(v1, 400, "EXEG-0002-400")["detail"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (V2, {"events": [{"xdm": {}}]}, 400, "EXEG-0102-400"),  # v2 interact is not batched
        (V2, {"query": {}}, 400, "EXEG-0103-400"),
        (V2, {"event": {"data": {}}}, 400, "EXEG-0103-400"),
        (V2, {"event": {"xdm": {"identityMap": {"ECID": "x"}}}}, 400, "EXEG-0102-400"),
        (V2, {"event": {"xdm": {}}, "meta": {"state": {"entries": [1]}}}, 400, "EXEG-0102-400"),
        ("/ee/v2/collect?datastreamId=d", {"event": {"xdm": {}}}, 400, "EXEG-0103-400"),
        # a batch is checked event by event
        ("/ee/v2/collect?datastreamId=d", {"events": [{"xdm": {}}, {}]}, 400, "EXEG-0103-400"),
        ("/ee/v1/interact?configId=d", {"events": []}, 400, "EXEG-0103-400"),
        (V2, b"{not json", 400, "EXEG-0101-400"),
        (V2, b"", 408, "EXEG-0109-408"),
        (V2, b'{"event": {"xdm": {"n": NaN}}}', 400, "EXEG-0101-400"),
        (
            "/ee/v1/interact?configId=d",
            {"events": [{"xdm": {}}], "xdm": {"identityMap": {"ECID": [{"id": 1}]}}},
            400,
            "EXEG-0102-400",
        ),
    ],
)
def test_malformed_edge_bodies_get_documented_codes(
    client: httpx.Client, path: str, body: Any, status: int, code: str
) -> None:
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert_problem(response, status, code)


def test_content_type_and_datastream_allow_list(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    xml = client.post(V2, content=b"<x/>", headers={"content-type": "application/xml"})
    assert_problem(xml, 415, "EXEG-0111-415")
    text = client.post(V2, content=json.dumps(event_body()), headers={"content-type": "text/plain"})
    assert text.status_code == 200  # the Web SDK posts text/plain
    emulator.configure(datastreams=frozenset({"ds-1"}))
    assert client.post(V2, json=event_body()).status_code == 200
    other = client.post("/ee/v2/interact?datastreamId=nope", json=event_body())
    assert_problem(other, 400, "EXEG-0003-400")


# ====================================================================== personalization
def test_propositions_for_configured_scopes(client: httpx.Client) -> None:
    response = client.post(V2, json=event_body(scopes=["hero-banner", "__view__"]))
    assert response.status_code == 200
    (decisions,) = handles(response, "personalization:decisions")
    assert decisions["eventIndex"] == 0
    hero, view = decisions["payload"]
    assert hero["scope"] == "hero-banner" and view["scope"] == "__view__"
    assert hero["id"].startswith("AT:")
    assert hero["scopeDetails"]["decisionProvider"] == "TGT"
    (item,) = hero["items"]
    assert item["schema"] == "https://ns.adobe.com/personalization/json-content-item"
    assert item["data"]["content"]["headline"] == "Spring sale"
    assert view["items"][0]["schema"] == "https://ns.adobe.com/personalization/dom-action"


def test_an_unknown_scope_is_a_non_fatal_error(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    # Not the default: Edge answers a plain 200 for a scope without content (P13).
    emulator.configure(unknown_scope="error")
    response = client.post(V2, json=event_body(scopes=["hero-banner", "nowhere"]))
    assert response.status_code == 207
    (error,) = response.json()["errors"]
    assert error["type"].endswith("EXEG-0204-200") and "nowhere" in error["detail"]
    assert error["report"]["eventIndex"] == 0
    assert ecid_of(response)  # the handles still come
    assert [p["scope"] for p in payload(response, "personalization:decisions")] == ["hero-banner"]
    emulator.configure(unknown_scope="warning")
    warned = client.post(V2, json=event_body(scopes=["nowhere"]))
    assert warned.status_code == 200 and len(warned.json()["warnings"]) == 1
    assert "errors" not in warned.json()


def test_a_scopes_file_replaces_the_built_in_scopes(tmp_path: Path) -> None:
    path = tmp_path / "scopes.json"
    path.write_text(
        json.dumps(
            {
                "checkout-offer": [{"id": "free-shipping", "content": {"text": "Free shipping"}}],
                "web://shop.example/cart": [{"schema": "html-content-item", "data": {"x": 1}}],
            }
        )
    )
    with (
        EmulatorServer(scopes=path, config=EmulatorConfig(unknown_scope="error")) as server,
        httpx.Client(base_url=server.url, verify=NO_TLS) as c,
    ):
        body = event_body(scopes=["checkout-offer", "hero-banner"])
        body["query"]["personalization"]["surfaces"] = ["web://shop.example/cart"]
        server.reset()  # the file is part of the initial configuration
        response = c.post(V2, json=body)
    assert response.status_code == 207  # hero-banner is no longer configured
    offer, surface = payload(response, "personalization:decisions")
    assert offer["items"][0]["data"]["content"] == {"text": "Free shipping"}
    assert surface["scope"] == "web://shop.example/cart"
    assert surface["items"][0]["schema"].endswith("/html-content-item")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "expected a JSON object"),
        ('{"a": []}', "non-empty list"),
        ('{"a": [{"content": 1, "data": {}}]}', "exactly one of"),
        ('{"a": [{"contents": 1}]}', "unknown key"),
        ("{", "not valid JSON"),
    ],
)
def test_a_bad_scopes_file_is_reported(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "scopes.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_scopes(path)
    with pytest.raises(ValueError, match=message):
        serve(port=0, scopes=path)  # refused before anything binds


# ====================================================================== tokens and auth
def token(client: httpx.Client, client_id: str = "cid", secret: str = "s3cret") -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "scope": "openid,AdobeID",
    }
    return client.post("/ims/token/v3", data=form)


def test_the_token_endpoint_issues_bearer_tokens_for_good_credentials(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    emulator.configure(credentials={"cid": "s3cret"}, token_ttl=3600)
    good = token(client)
    assert good.status_code == 200
    body = good.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert isinstance(body["access_token"], str) and len(body["access_token"]) > 20
    assert token(client, secret="wrong").status_code == 401
    assert token(client, client_id="other").json()["error"] == "invalid_client"
    bad_grant = client.post("/ims/token/v3", data={"grant_type": "password", "client_id": "cid"})
    assert bad_grant.status_code == 400


def test_bearer_tokens_are_validated_and_expire(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    access = token(client).json()["access_token"]
    auth = {"Authorization": f"Bearer {access}", "x-api-key": "cid", "x-gw-ims-org-id": ORG}
    assert client.post(V2, json=server_body(), headers=auth).status_code == 200

    missing = client.post(V2, json=server_body(), headers={**auth, "x-api-key": ""})
    assert "x-api-key" in assert_problem(missing, 401, "EXEG-0500-401")["detail"]
    wrong_key = client.post(V2, json=server_body(), headers={**auth, "x-api-key": "other"})
    assert_problem(wrong_key, 401, "EXEG-0500-401")
    unknown = client.post(V2, json=server_body(), headers={**auth, "Authorization": "Bearer nope"})
    assert_problem(unknown, 401, "EXEG-0503-401")

    expired = client.post("/emulator/tokens/expire")
    assert expired.json() == {"expired": 1}
    assert_problem(client.post(V2, json=server_body(), headers=auth), 401, "EXEG-0503-401")
    fresh = token(client).json()["access_token"]  # what a client does on EXEG-0503-401
    retry = {**auth, "Authorization": f"Bearer {fresh}"}
    assert client.post(V2, json=server_body(), headers=retry).status_code == 200
    assert emulator.expire_tokens(fresh) == 1


def test_an_authenticated_only_datastream_needs_a_token(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    emulator.configure(require_auth=True)
    assert_problem(client.post(V2, json=event_body()), 401, "EXEG-0500-401")
    basic = client.post(V2, json=event_body(), headers={"Authorization": "Basic abc"})
    assert_problem(basic, 401, "EXEG-0500-401")


def test_short_lived_tokens_expire_by_themselves(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    emulator.configure(token_ttl=0.2)
    access = token(client).json()["access_token"]
    auth = {"Authorization": f"Bearer {access}", "x-api-key": "cid", "x-gw-ims-org-id": ORG}
    assert client.post(V2, json=server_body(), headers=auth).status_code == 200
    time.sleep(0.25)
    assert_problem(client.post(V2, json=server_body(), headers=auth), 401, "EXEG-0503-401")


# ====================================================================== Sitecore
KEY = "pqsDATA3lw12v5a9rrHPW1c4hET73GxQ"


def sitecore_event(browser: str, **changes: Any) -> dict[str, Any]:
    event = {
        "channel": "WEB",
        "type": "VIEW",
        "language": "EN",
        "currency": "EUR",
        "page": "home",
        "pos": "northwind-eu",
        "browser_id": browser,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def new_browser(client: httpx.Client) -> str:
    response = client.get("/v1.2/browser/create.json", params={"client_key": KEY, "message": "{}"})
    assert response.status_code == 200
    ref: str = response.json()["ref"]
    return ref


def send_event(client: httpx.Client, event: Any, key: str = KEY) -> httpx.Response:
    message = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return client.get("/v1.2/event/create.json", params={"client_key": key, "message": message})


def test_sitecore_browser_and_event_create(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    created = client.get("/v1.2/browser/create.json", params={"client_key": KEY, "message": "{}"})
    body = created.json()
    assert body["status"] == "OK" and body["version"] == "1.2" and body["client_key"] == KEY
    assert uuid.UUID(body["ref"]) and uuid.UUID(body["customer_ref"])
    sent = send_event(client, sitecore_event(body["ref"], ext={"pageCategory": "shoes", "n": 3}))
    assert sent.status_code == 201
    assert sent.json()["status"] == "OK" and sent.json()["version"] == "1.2"
    send_event(client, sitecore_event(body["ref"], type="ADD_TO_WISHLIST"))
    assert emulator.browsers()[body["ref"]]["events"] == ["VIEW", "ADD_TO_WISHLIST"]


def test_the_engine_sitecore_builders_requests_are_accepted(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    for settings in (
        SitecoreSettings(
            url=emulator.url, client_key=KEY, pos="shop", language="EN", currency="EUR"
        ),
        SitecoreSettings(
            url=emulator.url,
            mode="proxy",
            context_id="ctx",
            site_id="site",
            language="EN",
            currency="EUR",
        ),
    ):
        browser = build_browser_request(settings)
        created = client.get(browser.url)
        assert created.status_code == 200, created.text
        request = build_sitecore_request(
            {"type": "IDENTITY", "identifiers": [{"provider": "email", "id": "a@b.c"}],
             "ext": {"cart": {"size": 2}}},
            settings,
            rule="Login",
            browser_id=created.json()["ref"],
        )  # fmt: skip
        response = client.request(
            request.method, request.url, content=request.body_bytes, headers=request.headers
        )
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"type": None}, "type"),
        ({"browser_id": None}, "browser_id"),
        ({"pos": None, "page": None}, "page, pos"),
        ({"type": "view"}, "upper-case"),
        ({"type": "SC_INTERNAL"}, "reserved"),
        ({"channel": "FAX"}, "channel"),
        ({"language": "english"}, "language"),
        ({"ext": {f"a{i}": i for i in range(51)}}, "at most 50"),
        ({"ext": {"nested": {"a": 1}}}, "string, boolean, number or an array"),
        ({"ext": {"kebab-case": 1}}, "letters, digits and '_'"),
        ({"session_data": {"a": [1]}}, "session_data"),
        ({"type": "IDENTITY"}, "identifiers"),
    ],
)
def test_sitecore_refuses_invalid_events_with_400(
    client: httpx.Client, changes: dict[str, Any], fragment: str
) -> None:
    response = send_event(client, sitecore_event(new_browser(client), **changes))
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_sitecore_refuses_bad_keys_unknown_browsers_and_bad_json(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    browser = new_browser(client)
    assert send_event(client, sitecore_event(browser), key="").status_code == 401
    assert client.get("/v1.2/browser/create.json", params={"message": "{}"}).status_code == 401
    unknown = send_event(client, sitecore_event(str(uuid.uuid4())))
    assert unknown.status_code == 404 and "browser_id" in unknown.json()["message"]
    assert send_event(client, "{not json").status_code == 400
    emulator.configure(client_keys=frozenset({"only-this"}))
    assert send_event(client, sitecore_event(browser)).status_code == 401
    assert send_event(client, sitecore_event(browser), key="only-this").status_code == 201


def test_sitecore_proxy_post(client: httpx.Client) -> None:
    browser = new_browser(client)
    event = sitecore_event(browser, pos="", client_key="", requested_at="2026-05-04T09:15:02Z")
    path = "/v1/events/v1.2/events"
    ok = client.post(path, params={"sitecoreContextId": "ctx", "siteId": "s"}, json=event)
    assert ok.status_code == 201 and ok.json()["status"] == "OK"
    assert uuid.UUID(ok.json()["customer_ref"])
    assert client.post(path, params={"siteId": "s"}, json=event).status_code == 401
    missing = client.post(path, params={"sitecoreContextId": "c"}, json={"browser_id": browser})
    assert missing.status_code == 400


# ====================================================================== faults
def test_a_fault_header_answers_a_status_with_retry_after(client: httpx.Client) -> None:
    fault = {"X-Emulator-Fault": "status=503; retry-after=2"}
    response = client.post(f"{V2}&requestId=f1", json=event_body(), headers=fault)
    problem = assert_problem(response, 503, "EXEG-0201-503")
    assert response.headers["retry-after"] == "2"
    assert problem["report"]["requestId"].startswith("f1-")
    coded = {"X-Emulator-Fault": "status=401; code=EXEG-0503-401"}
    assert_problem(client.post(V2, json=event_body(), headers=coded), 401, "EXEG-0503-401")
    sitecore = send_event(client, {}, key=KEY)  # without the header: a normal 400
    assert sitecore.status_code == 400
    faulted = client.get(
        "/v1.2/browser/create.json",
        params={"client_key": KEY},
        headers={"X-Emulator-Fault": "status=429; retry-after=Wed, 21 Oct 2026 07:28:00 GMT"},
    )
    assert faulted.status_code == 429
    assert faulted.headers["retry-after"] == "Wed, 21 Oct 2026 07:28:00 GMT"


def test_a_fault_header_delays_the_answer(client: httpx.Client) -> None:
    start = time.monotonic()
    response = client.post(V2, json=event_body(), headers={"X-Emulator-Fault": "delay=0.3"})
    assert response.status_code == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        client.post(V2, json=event_body(), headers={"X-Emulator-Fault": "delay=1"}, timeout=0.2)


def test_a_dropped_connection_raises_in_httpx(
    client: httpx.Client,
    emulator: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(httpx.RemoteProtocolError):
        client.post(V2, json=event_body(), headers={"X-Emulator-Fault": "drop"})
    assert client.post(V2, json=event_body()).status_code == 200  # the next one is fine
    dropped, ok = emulator.requests()
    assert dropped.status is None and dropped.fault == "drop"
    assert ok.status == 200
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]  # silent drop


@pytest.mark.parametrize("header", ["status=99", "bogus=1", "status=abc", "retry-after=2", ""])
def test_a_bad_fault_header_is_reported(client: httpx.Client, header: str) -> None:
    response = client.post(V2, json=event_body(), headers={"X-Emulator-Fault": header})
    assert response.status_code == 400
    assert "X-Emulator-Fault" in response.json()["error"]


def test_admin_faults_with_count_and_path(client: httpx.Client) -> None:
    rule = {"status": 429, "retry_after": 1, "count": 2, "path": "/ee/"}
    listed = client.post("/emulator/faults", json=rule)
    assert listed.json() == {"faults": [rule]}
    browser = new_browser(client)  # outside the path: unaffected, and not counted
    assert send_event(client, sitecore_event(browser)).status_code == 201
    statuses = [client.post(V2, json=event_body()).status_code for _ in range(3)]
    assert statuses == [429, 429, 200]
    assert client.get("/emulator/faults").json() == {"faults": []}  # used up

    client.post("/emulator/faults", json=[{"drop": True, "path": "/ee/"}])
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(V2, json=event_body())
    assert client.delete("/emulator/faults").status_code == 204
    assert client.post(V2, json=event_body()).status_code == 200
    assert client.post("/emulator/faults", json={"rate": 2, "status": 500}).status_code == 400
    assert client.post("/emulator/faults", json={"status": 503, "colour": 1}).status_code == 400


def test_a_fault_rate_is_random_and_reproducible_with_a_seed(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    def run() -> list[int]:
        emulator.set_faults({"status": 503, "retry_after": 1, "rate": 0.5}, seed=42)
        return [client.post(V2, json=event_body()).status_code for _ in range(30)]

    first = run()
    assert 5 <= first.count(503) <= 25 and first.count(200) + first.count(503) == 30
    assert run() == first


def test_an_admin_delay_holds_a_request_past_the_read_timeout(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    emulator.set_faults(Fault(delay=0.6, count=1))
    with pytest.raises(httpx.ReadTimeout):
        client.post(V2, json=event_body(), timeout=httpx.Timeout(5, read=0.2))
    assert client.post(V2, json=event_body()).status_code == 200
    assert emulator.requests()[0].fault == "delay=0.6"


def test_fault_objects_validate() -> None:
    assert Fault.from_header("status=503; retry-after=2; delay=1.5; drop") == Fault(
        status=503, retry_after="2", delay=1.5, drop=True
    )
    for bad in ({"status": 503, "count": 0}, {"delay": -1}, {"status": 503, "code": "E-1"}):
        with pytest.raises(FaultError):
            Fault.from_mapping(bad)


# ====================================================================== recording
def test_every_request_is_recorded_without_secrets(
    client: httpx.Client,
    emulator: EmulatorServer,
) -> None:
    access = token(client).json()["access_token"]
    auth = {"Authorization": f"Bearer {access}", "x-api-key": "cid", "x-gw-ims-org-id": ORG}
    client.post(f"{V2}&requestId=rec", json=server_body(), headers=auth)
    browser = new_browser(client)
    send_event(client, sitecore_event(browser))
    client.get("/nowhere")
    client.get("/emulator/health")  # administration is not recorded

    recorded = emulator.requests()
    assert [(r.method, r.path, r.status) for r in recorded] == [
        ("POST", "/ims/token/v3", 200),
        ("POST", "/ee/v2/interact", 200),
        ("GET", "/v1.2/browser/create.json", 200),
        ("GET", "/v1.2/event/create.json", 201),
        ("GET", "/nowhere", 404),
    ]
    form, edge, _, sitecore, _ = recorded
    assert form.body["client_secret"] == "<redacted>" and form.body["client_id"] == "cid"
    assert edge.query == {"datastreamId": "ds-1", "requestId": "rec"}
    assert edge.headers["authorization"] == "Bearer <redacted>"
    assert edge.headers["x-api-key"] == "cid"
    assert edge.body == server_body()
    assert edge.size == len(json.dumps(server_body(), separators=(",", ":")))
    assert sitecore.body == sitecore_event(browser)  # the parsed message parameter
    assert access not in json.dumps([r.to_json() for r in recorded])
    assert [r.path for r in emulator.requests("/v1.2/")] == [
        "/v1.2/browser/create.json",
        "/v1.2/event/create.json",
    ]

    listed = client.get("/emulator/requests").json()
    assert listed == [r.to_json() for r in recorded]
    assert len(client.get("/emulator/requests", params={"path": "/ee"}).json()) == 1
    assert client.delete("/emulator/requests").status_code == 204
    assert emulator.requests() == [] and client.get("/emulator/requests").json() == []


def test_recording_is_thread_safe(emulator: EmulatorServer) -> None:
    def worker(n: int) -> None:
        with httpx.Client(base_url=emulator.url, timeout=5, verify=NO_TLS) as c:
            for i in range(15):
                c.post(f"{V2}&requestId=t{n}-{i}", json=event_body())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = emulator.requests()
    assert len(recorded) == 90 and all(r.status == 200 for r in recorded)
    assert len({r.id for r in recorded}) == 90
    assert len({r.query["requestId"] for r in recorded}) == 90
    emulator.clear()
    assert emulator.requests() == []


# The fixture contract: the shared emulator starts every test reset and running, at the same
# URL. These two tests run in this order.
_left_behind: list[str] = []


def test_fixture_leaves_state_behind(emulator: EmulatorServer) -> None:
    emulator.set_faults({"status": 500})
    emulator.configure(unknown_scope="error")
    with httpx.Client(base_url=emulator.url, verify=NO_TLS) as c:
        assert c.post(V2, json=event_body()).status_code == 500
    _left_behind.append(emulator.url)
    emulator.stop()


def test_fixture_starts_each_test_clean(emulator: EmulatorServer) -> None:
    assert emulator.running and [emulator.url] == _left_behind
    assert emulator.requests() == [] and emulator.state.faults() == []
    assert emulator.state.config == EmulatorConfig()
    with httpx.Client(base_url=emulator.url, verify=NO_TLS) as c:
        assert c.post(V2, json=event_body()).status_code == 200


# ====================================================================== lifecycle
def test_stop_is_clean_and_fast_even_with_open_and_held_connections() -> None:
    server = EmulatorServer().start()
    outcome: list[BaseException | int] = []

    def held() -> None:
        try:
            with httpx.Client(timeout=30, verify=NO_TLS) as c:
                outcome.append(
                    c.post(
                        server.url + V2, json=event_body(), headers={"X-Emulator-Fault": "delay=30"}
                    ).status_code
                )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    idle = httpx.Client(base_url=server.url, verify=NO_TLS)
    try:
        assert idle.post(V2, json=event_body()).status_code == 200  # keep-alive connection
        thread = threading.Thread(target=held)
        thread.start()
        deadline = time.monotonic() + 2
        while not server.requests(V2.split("?")[0])[1:] and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 2
        thread.join(2)
        assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)
        with pytest.raises(httpx.ConnectError):
            httpx.post(server.url + V2, json=event_body(), verify=NO_TLS)
        # Restarted, it is back at the same URL with what it remembered.
        with server:
            fresh = httpx.post(server.url + V2, json=event_body(), verify=NO_TLS)
            assert fresh.status_code == 200
            assert len(server.requests()) == 3
    finally:
        idle.close()
        server.stop()


def test_the_server_binds_loopback_and_free_ports(fresh_emulator: EmulatorServer) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fresh_emulator.url)
    assert fresh_emulator.port != 0
    with EmulatorServer() as other:
        assert other.port != fresh_emulator.port
        with pytest.raises(OSError):
            EmulatorServer(port=other.port).start()  # the port is taken
    with socket.create_connection(("127.0.0.1", fresh_emulator.port), timeout=1):
        pass


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    assert client.get(V2).status_code == 405
    wrong = client.post("/ee/v3/interact?datastreamId=d", json={})
    assert wrong.status_code == 404 and wrong.headers["content-type"] == PROBLEM
    assert client.get("/emulator/health").json() == {"status": "ok"}


def test_identity_values_round_trip() -> None:
    ecid = mint_ecid()
    assert decode_identity(encode_identity(ecid, 1_700_000_000)) == ecid
    assert decode_identity(DOC_IDENTITY) == DOC_ECID
    for junk in ("", "%%%", "AAAA", encode_identity("123", 1)):
        assert decode_identity(junk) is None


def test_answers_are_not_held_back_by_nagle(client: httpx.Client) -> None:
    # Without TCP_NODELAY on accepted sockets each body trails its headers by ~40 ms.
    client.get("/emulator/health")
    times = []
    for _ in range(15):
        start = time.perf_counter()
        assert client.post(V2, json=event_body()).status_code == 200
        times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 0.03


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(process: subprocess.Popen[str], port: int) -> None:
    """Until ``process`` accepts connections on ``port`` (it must not exit first)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not start listening"
            time.sleep(0.05)


def test_serve_runs_in_the_foreground_until_ctrl_c() -> None:
    port = free_port()
    code = f"from engine.emulator import serve; serve(port={port}); print('stopped cleanly')"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        wait_listening(process, port)
        with httpx.Client(verify=NO_TLS) as c:
            answer = c.post(f"http://127.0.0.1:{port}{V2}", json=event_body())
        assert answer.status_code == 200
        busy = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
        assert busy.returncode != 0 and "OSError" in busy.stderr  # the port is taken
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "stopped cleanly" in out
    assert f"http://127.0.0.1:{port}" in err  # uvicorn's startup line


def test_the_emulator_command_takes_the_org_and_a_scopes_file(tmp_path: Path) -> None:
    scopes = tmp_path / "scopes.json"
    scopes.write_text(json.dumps({"checkout-offer": [{"content": {"text": "Free shipping"}}]}))
    command = [sys.executable, "-m", "engine", "emulator", "--scopes", str(scopes)]
    bad = tmp_path / "bad.json"
    bad.write_text('{"promo-top": 5}')
    refused = subprocess.run([*command[:-1], str(bad)], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert "Error: " in refused.stderr and "non-empty list" in refused.stderr
    assert "Traceback" not in refused.stderr
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port), "--org", "ACME0123@AdobeOrg"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(process, port)
        with httpx.Client(verify=NO_TLS) as c:
            answer = c.post(
                f"http://127.0.0.1:{port}{V2}", json=event_body(scopes=["checkout-offer"])
            )
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    assert answer.status_code == 200
    keys = {item["key"] for item in payload(answer, "state:store")}
    assert keys == {"kndctr_ACME0123_AdobeOrg_identity", "kndctr_ACME0123_AdobeOrg_cluster"}
    (offer,) = payload(answer, "personalization:decisions")
    assert offer["items"][0]["data"]["content"] == {"text": "Free shipping"}
