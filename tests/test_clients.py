"""The destination clients end to end (docs/destinations.md): Edge and Sitecore sends against the
local emulator over real loopback sockets, and, with ``httpx.MockTransport``, the few answers
a server cannot be made to give (odd bodies, mismatched ids, redirects, timeouts unset).

No test sleeps for a retry: the clients get a recording ``sleep``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from engine.clients import (
    AsyncEdgeClient,
    AsyncIdentityGate,
    AsyncSitecoreClient,
    DeliveryError,
    EdgeClient,
    EdgeResponse,
    IdentityGate,
    RetryPolicy,
    SitecoreClient,
    apply_edge_response,
    has_identity,
    identity_from_cookies,
    make_async_http_client,
    make_http_client,
    prune_identity,
    set_cookie_headers,
    take_cookies,
    with_state,
)
from engine.clients.edge import state_entries
from engine.destinations import Request, build_edge_request, build_sitecore_request
from engine.destinations.sitecore import with_browser_id
from engine.emulator import EmulatorServer
from engine.errors import DispatchError, PayloadTooLarge
from engine.settings import EdgeSettings, SitecoreSettings

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"
PREFIX = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_"
EMU_ORG = "TAGENGINEEMULATOR0000000@AdobeOrg"
EMU_PREFIX = "kndctr_TAGENGINEEMULATOR0000000_AdobeOrg_"
NOW = 1_780_000_000.0
STAMP = "2026-05-28T20:26:40Z"
PAGE_VIEW = {
    "type": "web.webpagedetails.pageViews",
    "xdm": {"web": {"webPageDetails": {"name": "home"}}},
}
# The authenticated host refuses an event without a primary identity (EXEG-0306-400).
SERVER_PAGE_VIEW = {
    "type": "web.webpagedetails.pageViews",
    "xdm": {
        "web": {"webPageDetails": {"name": "home"}},
        "identityMap": {"FPID": [{"id": "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f", "primary": True}]},
    },
}


class Waits:
    """A sleep that records and never waits (plus optional hooks run on a given call)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.hooks: dict[int, Callable[[], object]] = {}

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        hook = self.hooks.get(len(self.sleeps))
        if hook is not None:
            hook()

    async def asleep(self, seconds: float) -> None:
        self(seconds)


def edge_request(
    settings: EdgeSettings, identity: dict[str, Any], fields: dict[str, Any] | None = None
) -> Request:
    return build_edge_request(
        PAGE_VIEW if fields is None else fields,
        settings,
        rule="Page view",
        identity=identity,
        timestamp=STAMP,
        event_id=str(uuid.uuid4()),
        request_id=str(uuid.uuid4()),
        now=time.time(),
    )


def sitecore_request(
    settings: SitecoreSettings, fields: dict[str, Any] | None = None, browser_id: str = "pending"
) -> Request:
    return build_sitecore_request(
        {"type": "VIEW", "page": "home"} if fields is None else fields,
        settings,
        rule="View",
        browser_id=browser_id,
    )


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with make_http_client(connect=2.0, read=5.0) as client:
        yield client


# ====================================================================== Edge on the emulator
def edge_client(
    http: httpx.Client, settings: EdgeSettings, waits: Waits | None = None, **kwargs: Any
) -> EdgeClient:
    return EdgeClient(http, settings, sleep=waits if waits is not None else Waits(), **kwargs)


def test_interact_stores_ecid_state_and_hint_then_sends_them_back(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    client = edge_client(http, settings)
    identity: dict[str, Any] = {}

    first = client.send(edge_request(settings, identity), identity)
    assert first.status == 200 and first.kind == "interact" and first.attempts == 1
    ecid = identity["ecid"]
    assert first.ecid == ecid and len(ecid) == 38
    assert identity["has_identity"] is True and identity["location_hint"] == "or2"
    keys = {e["key"]: e for e in identity["entries"]}
    assert set(keys) == {EMU_PREFIX + "identity", EMU_PREFIX + "cluster"}
    cluster = keys[EMU_PREFIX + "cluster"]
    assert cluster["value"] == "or2" and cluster["maxAge"] == 1800
    assert cluster["expires"] == pytest.approx(time.time() + 1800, abs=5)
    assert cluster["attrs"] == {"SameSite": "None"}
    sent = emulator.requests()[0]
    assert first.request_id is not None
    assert first.request_id.startswith(sent.query["requestId"] + "-")
    assert first.response_body["requestId"] == first.request_id
    assert first.request_body == emulator.requests()[0].body

    second_request = edge_request(settings, identity)
    second = client.send(second_request, identity)
    assert second.ecid == ecid
    recorded = emulator.requests()
    assert [r.path for r in recorded] == ["/ee/v2/interact", "/ee/or2/v2/interact"]
    sent_entries = recorded[1].body["meta"]["state"]["entries"]
    assert {e["key"]: e["value"] for e in sent_entries} == {k: e["value"] for k, e in keys.items()}
    assert list(emulator.visitors()) == [ecid]


def test_response_request_id_is_ours_plus_entropy(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    request = edge_request(settings, {})
    result = edge_client(http, settings).send(request, {})
    assert request.request_id is not None and result.request_id is not None
    prefix, _, entropy = result.request_id.rpartition("-")
    assert prefix == request.request_id and len(entropy) == 16
    assert int(entropy, 16) >= 0 and result.warnings == []


def test_propositions_destinations_and_non_fatal_errors(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(unknown_scope="error")  # Edge's own default is a plain 200
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    fields = {**PAGE_VIEW, "decisionScopes": ["hero-banner", "no-such-scope"]}
    result = edge_client(http, settings).send(edge_request(settings, {}, fields), {})
    assert result.status == 207
    assert [p["scope"] for p in result.propositions] == ["hero-banner"]
    assert all(p["renderAttempted"] is False for p in result.propositions)
    assert [p["scope"] for p in result.decisions] == ["hero-banner"]
    assert "renderAttempted" not in result.decisions[0]
    assert result.propositions[0]["items"][0]["data"]["content"]["headline"] == "Spring sale"
    assert result.destinations == [
        {"id": "emulator-destination", "segments": [{"id": "emulator-all-visitors"}]}
    ]
    assert [e["type"].rsplit("/", 1)[-1] for e in result.errors] == ["EXEG-0204-200"]
    assert result.errors[0]["report"]["scope"] == "no-such-scope"
    assert result.handles == []  # every handle the emulator sends is consumed
    assert json.loads(json.dumps(result.to_json()))["status"] == 207


def test_collect_when_unloading_with_an_identity(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    client = edge_client(http, settings)
    identity: dict[str, Any] = {}
    unloading = {**PAGE_VIEW, "documentUnloading": True}
    # no identity yet: the unloading event goes to interact, so the visitor gets one
    first = client.send(edge_request(settings, identity, unloading), identity)
    assert first.kind == "interact" and identity["has_identity"]
    result = client.send(edge_request(settings, identity, unloading), identity)
    assert (result.kind, result.status, result.response_body) == ("collect", 204, None)
    assert result.propositions == [] and result.handles == []
    last = emulator.requests()[-1]
    assert last.path == "/ee/or2/v2/collect" and last.query["silent"] == "true"
    assert last.body["meta"]["state"]["entries"]  # the identity travels with the beacon


def test_v1_dialect_interact_and_collect(emulator: EmulatorServer, http: httpx.Client) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url, api="v1")
    client = edge_client(http, settings)
    identity: dict[str, Any] = {}
    first = client.send(edge_request(settings, identity), identity)
    assert first.status == 200 and identity["ecid"]
    second = client.send(
        edge_request(settings, identity, {**PAGE_VIEW, "documentUnloading": True}), identity
    )
    assert (second.kind, second.status) == ("collect", 204)
    paths = [(r.path, r.query.get("configId")) for r in emulator.requests()]
    assert paths == [("/ee/v1/interact", "ds-1"), ("/ee/or2/v1/collect", "ds-1")]


def test_rfc7807_413_for_a_body_above_64kb(emulator: EmulatorServer, http: httpx.Client) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    fields = {**PAGE_VIEW, "data": {"blob": "x" * 70_000}}
    request = edge_request(settings, {}, fields)
    client = edge_client(http, settings)
    with pytest.raises(PayloadTooLarge):
        client.send(request, {})
    assert emulator.requests() == []  # refused before any network call

    with pytest.raises(DeliveryError) as caught:
        client.send(request, {}, size_check=False)
    failure = caught.value
    assert (failure.status, failure.code, failure.attempts) == (413, "EXEG-0112-413", 1)
    assert not failure.retryable and failure.destination == "edge"
    assert failure.title and failure.request_id is not None
    assert failure.request_id.startswith(str(request.request_id) + "-")
    assert "EXEG-0112-413" in str(failure)
    assert len(emulator.requests()) == 1


def test_rfc7807_400_is_final(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(datastreams=frozenset({"ds-1"}))
    settings = EdgeSettings(datastream="ds-unknown", url=emulator.url)
    waits = Waits()
    with pytest.raises(DeliveryError) as caught:
        edge_client(http, settings, waits).send(edge_request(settings, {}), {})
    assert (caught.value.status, caught.value.code) == (400, "EXEG-0003-400")
    assert caught.value.title == "Invalid datastream ID" and waits.sleeps == []


def _ids_by_status(server: EmulatorServer) -> list[tuple[str, int | None]]:
    return [(r.body["event"]["xdm"]["_id"], r.status) for r in server.requests("/ee")]


def test_503_with_retry_after_then_success_reaches_edge_once(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.set_faults({"status": 503, "retry_after": 2, "count": 2, "path": "/ee"})
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    waits = Waits()
    request = edge_request(settings, {})
    result = edge_client(http, settings, waits).send(request, {})
    assert (result.status, result.attempts) == (200, 3)
    assert waits.sleeps == [2.0, 2.0]
    recorded = emulator.requests()
    assert [r.status for r in recorded] == [503, 503, 200]
    # the same body, requestId and xdm._id on every attempt; processed exactly once
    assert all(r.body == request.body and r.size == len(request.body_bytes) for r in recorded)
    assert {r.query["requestId"] for r in recorded} == {request.request_id}
    assert len(emulator.visitors()) == 1


def test_half_the_requests_fail_with_503_and_every_event_arrives_once(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.set_faults({"status": 503, "retry_after": 1, "rate": 0.5, "path": "/ee"}, seed=11)
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    client = edge_client(http, settings, policy=RetryPolicy(max_attempts=12))
    sent: list[str] = []
    for _ in range(30):
        identity: dict[str, Any] = {}
        request = edge_request(settings, identity)
        client.send(request, identity)
        assert request.event_id is not None
        sent.append(request.event_id)
    delivered = [i for i, status in _ids_by_status(emulator) if status == 200]
    assert sorted(delivered) == sorted(sent)  # each exactly once
    assert any(status == 503 for _, status in _ids_by_status(emulator))


def test_429_burst_is_ridden_out(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.set_faults({"status": 429, "retry_after": 0, "count": 3, "path": "/ee"})
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    waits = Waits()
    result = edge_client(http, settings, waits).send(edge_request(settings, {}), {})
    assert result.attempts == 4 and waits.sleeps == [0.0, 0.0, 0.0]


def test_429_that_never_ends_gives_a_retryable_error(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.set_faults({"status": 429, "path": "/ee"})
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    waits = Waits()
    client = edge_client(http, settings, waits, policy=RetryPolicy(max_attempts=3))
    with pytest.raises(DeliveryError) as caught:
        client.send(edge_request(settings, {}), {})
    failure = caught.value
    assert (failure.status, failure.attempts, failure.retryable) == (429, 3, True)
    assert len(waits.sleeps) == 2 and len(emulator.requests()) == 3


def test_dropped_connection_is_retried(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.set_faults({"drop": True, "count": 1, "path": "/ee"})
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    request = edge_request(settings, {})
    result = edge_client(http, settings).send(request, {})
    assert result.attempts == 2
    assert [r.status for r in emulator.requests()] == [None, 200]
    assert [r.body["event"]["xdm"]["_id"] for r in emulator.requests()] == [request.event_id] * 2


def test_stalled_response_past_the_read_timeout_is_retried_with_the_same_id(
    emulator: EmulatorServer,
) -> None:
    emulator.set_faults({"delay": 0.6, "count": 1, "path": "/ee"})
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    request = edge_request(settings, {})
    with make_http_client(connect=2.0, read=0.2) as http:
        result = edge_client(http, settings).send(request, {})
    assert result.attempts == 2 and result.status == 200
    # Edge de-duplicates on xdm._id: both attempts carry the same one
    ids = {r.body["event"]["xdm"]["_id"] for r in emulator.requests()}
    assert ids == {request.event_id}


def test_connection_refused_then_back(emulator: EmulatorServer, http: httpx.Client) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    emulator.stop()
    waits = Waits()
    waits.hooks[2] = emulator.start  # the endpoint comes back after the second wait
    result = edge_client(http, settings, waits).send(edge_request(settings, {}), {})
    assert result.status == 200 and result.attempts == 3
    assert [r.status for r in emulator.requests()] == [200]


def test_unreachable_endpoint_exhausts_into_a_retryable_error(http: httpx.Client) -> None:
    with EmulatorServer() as server:
        url = server.url
    settings = EdgeSettings(datastream="ds-1", url=url)  # nothing listens there now
    waits = Waits()
    client = edge_client(http, settings, waits, policy=RetryPolicy(max_attempts=3))
    with pytest.raises(DeliveryError) as caught:
        client.send(edge_request(settings, {}), {})
    failure = caught.value
    assert failure.attempts == 3 and failure.retryable and failure.status is None
    assert failure.last_error is not None and failure.last_error.startswith("ConnectError")
    assert isinstance(failure.__cause__, httpx.ConnectError)


# ---------------------------------------------------------------------- authenticated host
def auth_settings(server: EmulatorServer, secret: str = "s3cr3t-value") -> EdgeSettings:
    return EdgeSettings(
        datastream="ds-1",
        url=server.url,
        org=ORG,
        client_id="client-1",
        client_secret=SecretStr(secret),
        token_url=f"{server.url}/ims/token/v3",
        scopes=["openid", "AdobeID", "additional_info.projectedProductContext"],
    )


def test_token_is_fetched_once_and_refreshed_once_on_expiry(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(require_auth=True, credentials={"client-1": "s3cr3t-value"})
    settings = auth_settings(emulator)
    client = edge_client(http, settings)
    identity: dict[str, Any] = {}
    for _ in range(3):
        client.send(edge_request(settings, identity, SERVER_PAGE_VIEW), identity)
    tokens = emulator.requests("/ims")
    assert len(tokens) == 1
    form = tokens[0].body
    assert form["grant_type"] == "client_credentials" and form["client_id"] == "client-1"
    assert form["scope"] == "openid,AdobeID,additional_info.projectedProductContext"
    edge_calls = emulator.requests("/ee")
    assert all(r.headers["x-api-key"] == "client-1" for r in edge_calls)
    assert all(r.headers["x-gw-ims-org-id"] == ORG for r in edge_calls)
    assert all(r.headers["authorization"].lower().startswith("bearer") for r in edge_calls)

    emulator.expire_tokens()
    result = client.send(edge_request(settings, identity), identity)
    assert result.status == 200 and result.attempts == 2
    assert len(emulator.requests("/ims")) == 2
    assert [r.status for r in emulator.requests("/ee")][-2:] == [401, 200]


def test_token_is_refreshed_only_once_per_send(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(require_auth=True)
    emulator.set_faults({"status": 401, "code": "EXEG-0503-401", "path": "/ee"})
    settings = auth_settings(emulator)
    with pytest.raises(DeliveryError) as caught:
        edge_client(http, settings).send(edge_request(settings, {}), {})
    assert (caught.value.status, caught.value.code, caught.value.attempts) == (
        401,
        "EXEG-0503-401",
        2,
    )
    assert len(emulator.requests("/ims")) == 2 and len(emulator.requests("/ee")) == 2


def test_other_401_codes_do_not_refresh(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(require_auth=True)
    emulator.set_faults({"status": 401, "code": "EXEG-0505-401", "path": "/ee"})
    settings = auth_settings(emulator)
    with pytest.raises(DeliveryError) as caught:
        edge_client(http, settings).send(edge_request(settings, {}), {})
    assert caught.value.code == "EXEG-0505-401" and caught.value.attempts == 1
    assert len(emulator.requests("/ims")) == 1


def test_bad_credentials_never_show_the_secret(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(require_auth=True, credentials={"client-1": "the-right-one"})
    settings = auth_settings(emulator, secret="wrong-secret-123")
    with pytest.raises(DeliveryError) as caught:
        edge_client(http, settings).send(edge_request(settings, {}), {})
    failure = caught.value
    assert failure.status == 401 and failure.code == "invalid_client"
    text = f"{failure} {failure.last_error} {failure!r}"
    assert "wrong-secret-123" not in text and "the-right-one" not in text
    assert emulator.requests("/ee") == []
    assert "wrong-secret-123" not in repr(settings)


def test_authenticated_host_needs_an_org(http: httpx.Client) -> None:
    settings = EdgeSettings(
        datastream="ds-1",
        url="http://127.0.0.1:9",
        client_id="c",
        client_secret=SecretStr("s"),
    )
    with pytest.raises(DispatchError, match="'org'"):
        edge_client(http, settings).send(edge_request(settings, {}), {})


# ---------------------------------------------------------------------- identity gate
def test_identity_gate_gives_concurrent_first_requests_one_ecid(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    client = edge_client(http, settings)
    gate = IdentityGate()
    identity: dict[str, Any] = {}
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with gate.hold("session-1", identity):
                client.send(edge_request(settings, identity), identity)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert len(emulator.visitors()) == 1
    assert len(emulator.requests("/ee")) == 8 and len(gate) == 0
    # only the first went without state entries
    without = [r for r in emulator.requests("/ee") if not r.body["meta"]["state"].get("entries")]
    assert len(without) == 1


def test_async_clients_and_gate(emulator: EmulatorServer) -> None:
    edge_settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    sitecore_settings = SitecoreSettings(
        url=emulator.url, client_key="key-1", pos="shop", language="EN", currency="EUR"
    )
    waits = Waits()

    async def main() -> None:
        async with make_async_http_client(connect=2.0, read=5.0) as http:
            edge = AsyncEdgeClient(http, edge_settings, sleep=waits.asleep)
            gate = AsyncIdentityGate()
            identity: dict[str, Any] = {}

            async def one() -> int:
                async with gate.hold("s", identity):
                    result = await edge.send(edge_request(edge_settings, identity), identity)
                return result.status

            emulator.set_faults({"status": 503, "retry_after": 0, "count": 1, "path": "/ee"})
            statuses = await asyncio.gather(*(one() for _ in range(6)))
            assert statuses == [200] * 6 and len(gate) == 0

            sitecore = AsyncSitecoreClient(http, sitecore_settings, sleep=waits.asleep)
            visitor: dict[str, Any] = {}
            first = await sitecore.send(sitecore_request(sitecore_settings), visitor)
            second = await sitecore.send(sitecore_request(sitecore_settings), visitor)
            assert first.browser_created and not second.browser_created
            assert first.browser_id == second.browser_id == visitor["sitecore_browser_id"]

    asyncio.run(main())
    assert len(emulator.visitors()) == 1 and waits.sleeps == [0.0]
    assert len(emulator.browsers()) == 1


def test_identity_gate_without_an_answer_lets_the_next_one_go_alone() -> None:
    gate = IdentityGate()
    identity: dict[str, Any] = {}
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with gate.hold("s", identity):
            order.append("first in")
            inside.set()
            release.wait(5)
        order.append("first out")  # no identity came back

    def second() -> None:
        with gate.hold("s", identity):
            order.append("second in")

    a = threading.Thread(target=first)
    a.start()
    inside.wait(5)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.05)
    assert order == ["first in"]  # the second waits
    release.set()
    a.join(5)
    b.join(5)
    assert order[0] == "first in" and "second in" in order and len(gate) == 0

    # with an identity nobody waits
    identity["has_identity"] = True
    with gate.hold("s", identity), gate.hold("s", identity):
        assert len(gate) == 0


def test_identity_gate_wait_can_time_out() -> None:
    gate = IdentityGate()
    identity: dict[str, Any] = {}
    with gate.hold("s", identity):
        waiting = gate.hold("s", identity, timeout=0.01)
        with pytest.raises(DispatchError, match="still waiting"):
            waiting.__enter__()
    assert len(gate) == 0

    async def main() -> None:
        agate = AsyncIdentityGate()
        async with agate.hold("s", identity):
            with pytest.raises(DispatchError):
                async with agate.hold("s", identity, timeout=0.01):
                    pass  # pragma: no cover
        assert len(agate) == 0

    asyncio.run(main())


# ---------------------------------------------------------------------- cookies
def test_cookies_out_and_back_in_keep_one_visitor(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = EdgeSettings(datastream="ds-1", url=emulator.url)
    client = edge_client(http, settings)
    server_side: dict[str, Any] = {}
    client.send(edge_request(settings, server_side), server_side)
    headers = set_cookie_headers(server_side, EMU_ORG, "example.com", now=time.time())
    assert len(headers) == 2
    identity_cookie = next(h for h in headers if h.startswith(EMU_PREFIX + "identity="))
    parts = identity_cookie.split("; ")
    assert parts[1].startswith("Max-Age=") and 34127990 <= int(parts[1][8:]) <= 34128000
    assert parts[2:] == ["Domain=example.com", "Path=/", "SameSite=None", "Secure"]

    # the browser sends them back on its next page: a new server-side session, same visitor
    jar = dict(h.split("; ", 1)[0].split("=", 1) for h in headers)
    jar["unrelated"] = "x"
    visitor = identity_from_cookies(jar, EMU_ORG)
    assert visitor["has_identity"] is True and visitor["location_hint"] == "or2"
    assert {e["key"] for e in visitor["entries"]} == {
        EMU_PREFIX + "identity",
        EMU_PREFIX + "cluster",
    }
    result = client.send(edge_request(settings, visitor), visitor)
    assert result.ecid == server_side["ecid"] and len(emulator.visitors()) == 1


def test_set_cookie_headers_details() -> None:
    identity = {
        "entries": [
            {
                "key": PREFIX + "identity",
                "value": "CiYw==",
                "maxAge": 100,
                "expires": NOW + 40,
                "attrs": {"SameSite": "none"},
            },
            {"key": PREFIX + "consent", "value": "general=in", "maxAge": 15552000},
            {"key": PREFIX + "session", "value": "abc"},
            {"key": PREFIX + "old", "value": "v", "maxAge": 10, "expires": NOW - 1},
            {"key": PREFIX + "bad", "value": "a;b\r\nSet-Cookie: x=y"},
            {"key": "kndctr_OTHER_AdobeOrg_identity", "value": "z"},
            "junk",
        ]
    }
    assert set_cookie_headers(identity, ORG, "example.com", now=NOW) == [
        f"{PREFIX}identity=CiYw==; Max-Age=40; Domain=example.com; Path=/; SameSite=None; Secure",
        f"{PREFIX}consent=general=in; Max-Age=15552000; Domain=example.com; Path=/; Secure",
        f"{PREFIX}session=abc; Domain=example.com; Path=/; Secure",
    ]
    lax = {
        "entries": [
            {
                "key": PREFIX + "cluster",
                "value": "or2",
                "maxAge": 1800,
                "attrs": {"SameSite": "Lax"},
            }
        ]
    }
    assert set_cookie_headers(lax, ORG, None, secure=False) == [
        f"{PREFIX}cluster=or2; Max-Age=1800; Path=/; SameSite=Lax"
    ]
    with pytest.raises(ValueError):
        set_cookie_headers(lax, "", None)


def test_take_cookies_merges_the_browsers_entries_without_losing_their_lifetime() -> None:
    identity: dict[str, Any] = {
        "entries": [
            {"key": PREFIX + "identity", "value": "CiY-same", "maxAge": 100, "expires": NOW + 90,
             "attrs": {"SameSite": "None"}},
            {"key": PREFIX + "cluster", "value": "or2", "maxAge": 1800, "expires": NOW + 1800},
            {"key": PREFIX + "consent", "value": "general=in", "maxAge": 50},
        ],
        "location_hint": "or2",
        "location_hint_expires": NOW + 1800,
    }  # fmt: skip
    before = set_cookie_headers(identity, ORG, "shop.example", now=NOW)
    cookies = {
        PREFIX + "identity": "CiY-same",  # what the server gave it: nothing changes
        PREFIX + "cluster": "va6",  # the browser's Web SDK moved: the browser's wins
        PREFIX + "consent": "",  # empty: ignored, the stored entry stays
        "kndctr_OTHER_AdobeOrg_identity": "x",
    }
    take_cookies(identity, cookies, ORG)
    by_key = {e["key"]: e for e in identity["entries"]}
    assert by_key[PREFIX + "identity"]["maxAge"] == 100
    assert by_key[PREFIX + "consent"] == {
        "key": PREFIX + "consent",
        "value": "general=in",
        "maxAge": 50,
    }
    assert by_key[PREFIX + "cluster"] == {
        "key": PREFIX + "cluster",
        "value": "va6",
        "from_cookie": True,
    }
    assert identity["location_hint"] == "va6" and "location_hint_expires" not in identity
    # The browser keeps the lifetime of what it sent: no Set-Cookie makes it a session cookie.
    after = set_cookie_headers(identity, ORG, "shop.example", now=NOW)
    assert after == [h for h in before if not h.startswith(PREFIX + "cluster=")]
    assert all("Max-Age=" in h for h in after)

    fresh: dict[str, Any] = {}
    take_cookies(fresh, {PREFIX + "identity": "CiY-new", PREFIX + "cluster": ""}, ORG)
    assert fresh == {
        "entries": [{"key": PREFIX + "identity", "value": "CiY-new", "from_cookie": True}],
        "has_identity": True,
    }
    assert set_cookie_headers(fresh, ORG, None) == []
    take_cookies(fresh, {}, ORG)
    assert len(fresh["entries"]) == 1


def test_take_cookies_renews_an_expired_entry_and_drops_a_stale_ecid() -> None:
    identity: dict[str, Any] = {
        "entries": [
            {"key": PREFIX + "cluster", "value": "or2", "maxAge": 1800, "expires": NOW - 1},
            {"key": PREFIX + "identity", "value": "CiY-old", "maxAge": 100, "expires": NOW + 50},
        ],
        "ecid": "111",
        "has_identity": True,
    }
    # The browser still holds the cluster the session let expire: taken, not ignored.
    take_cookies(
        identity, {PREFIX + "cluster": "or2", PREFIX + "identity": "CiY-old"}, ORG, now=NOW
    )
    assert state_entries(identity, NOW) == [
        {"key": PREFIX + "identity", "value": "CiY-old"},
        {"key": PREFIX + "cluster", "value": "or2"},
    ]
    assert identity["ecid"] == "111"  # the same identity: the same ECID
    take_cookies(identity, {PREFIX + "identity": "CiY-browser"}, ORG, now=NOW)
    assert "ecid" not in identity and identity["has_identity"] is True


def test_identity_from_cookies_ignores_other_orgs() -> None:
    cookies = {
        PREFIX + "identity": "CiYw",
        PREFIX + "cluster": "va6",
        "kndctr_OTHER_AdobeOrg_identity": "nope",
        "AMCV_x": "y",
    }
    assert identity_from_cookies(cookies, ORG) == {
        "entries": [
            {"key": PREFIX + "identity", "value": "CiYw"},
            {"key": PREFIX + "cluster", "value": "va6"},
        ],
        "location_hint": "va6",
        "has_identity": True,
    }
    assert identity_from_cookies({}, ORG) == {"entries": []}


# ====================================================================== Sitecore on the emulator
def sitecore_client(
    http: httpx.Client, settings: SitecoreSettings, waits: Waits | None = None, **kwargs: Any
) -> SitecoreClient:
    return SitecoreClient(http, settings, sleep=waits if waits is not None else Waits(), **kwargs)


def test_browser_id_is_created_once_per_session(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = SitecoreSettings(
        url=emulator.url, client_key="key-1", pos="shop", language="EN", currency="EUR"
    )
    client = sitecore_client(http, settings)
    identity: dict[str, Any] = {}
    first = client.send(sitecore_request(settings), identity)
    assert first.status == 201 and first.browser_created
    browser_id = identity["sitecore_browser_id"]
    assert identity["sitecore_browser_id_confirmed"] is True and identity["sitecore_customer_ref"]
    assert first.browser_id == browser_id == first.request_body["browser_id"]
    second = client.send(sitecore_request(settings, {"type": "ADD_TO_WISHLIST"}), identity)
    assert not second.browser_created and second.response_body["status"] == "OK"
    paths = [r.path for r in emulator.requests()]
    assert paths == [
        "/v1.2/browser/create.json",
        "/v1.2/event/create.json",
        "/v1.2/event/create.json",
    ]
    assert [r.body["browser_id"] for r in emulator.requests("/v1.2/event")] == [browser_id] * 2
    assert emulator.browsers()[browser_id]["events"] == ["VIEW", "ADD_TO_WISHLIST"]
    other: dict[str, Any] = {}  # another session gets its own
    client.send(sitecore_request(settings), other)
    assert other["sitecore_browser_id"] != browser_id


def test_unknown_browser_id_gets_a_new_one_once(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = SitecoreSettings(
        url=emulator.url, client_key="key-1", pos="shop", language="EN", currency="EUR"
    )
    client = sitecore_client(http, settings)
    identity = {"sitecore_browser_id": "forgotten-id", "sitecore_browser_id_confirmed": True}
    result = client.send(sitecore_request(settings, browser_id="forgotten-id"), identity)
    assert result.status == 201 and result.browser_created
    assert identity["sitecore_browser_id"] != "forgotten-id"
    assert [(r.path, r.status) for r in emulator.requests()] == [
        ("/v1.2/event/create.json", 404),
        ("/v1.2/browser/create.json", 200),
        ("/v1.2/event/create.json", 201),
    ]

    emulator.clear()
    emulator.set_faults({"status": 404, "path": "/v1.2/event"})
    with pytest.raises(DeliveryError) as caught:
        client.send(sitecore_request(settings), identity)
    assert caught.value.status == 404 and caught.value.attempts == 2
    assert [r.path for r in emulator.requests()] == [
        "/v1.2/event/create.json",
        "/v1.2/browser/create.json",
        "/v1.2/event/create.json",
    ]


@pytest.mark.parametrize("status", [400, 401])
def test_sitecore_400_and_401_are_final(
    emulator: EmulatorServer, http: httpx.Client, status: int
) -> None:
    settings = SitecoreSettings(
        url=emulator.url, client_key="key-1", pos="shop", language="EN", currency="EUR"
    )
    identity = {"sitecore_browser_id": "b", "sitecore_browser_id_confirmed": True}
    emulator.set_faults({"status": status, "path": "/v1.2/event"})
    waits = Waits()
    with pytest.raises(DeliveryError) as caught:
        sitecore_client(http, settings, waits).send(sitecore_request(settings), identity)
    assert (caught.value.status, caught.value.attempts, caught.value.destination) == (
        status,
        1,
        "sitecore",
    )
    assert waits.sleeps == [] and len(emulator.requests()) == 1


def test_bad_client_key_fails_browser_creation(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(client_keys=frozenset({"good-key"}))
    settings = SitecoreSettings(
        url=emulator.url, client_key="bad-key", pos="shop", language="EN", currency="EUR"
    )
    identity: dict[str, Any] = {}
    with pytest.raises(DeliveryError, match="client key") as caught:
        sitecore_client(http, settings).send(sitecore_request(settings), identity)
    assert caught.value.status == 401 and "sitecore_browser_id" not in identity


def test_sitecore_retries_503_with_retry_after(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    settings = SitecoreSettings(
        url=emulator.url, client_key="key-1", pos="shop", language="EN", currency="EUR"
    )
    emulator.set_faults({"status": 503, "retry_after": 3, "count": 1, "path": "/v1.2/event"})
    waits = Waits()
    result = sitecore_client(http, settings, waits).send(sitecore_request(settings), {})
    assert result.attempts == 2 and waits.sleeps == [3.0]


def test_sitecore_can_refuse_ambiguous_retries(emulator: EmulatorServer) -> None:
    settings = SitecoreSettings(
        url=emulator.url, client_key="key-1", pos="shop", language="EN", currency="EUR"
    )
    identity: dict[str, Any] = {}
    with make_http_client(connect=2.0, read=0.2) as http:
        client = sitecore_client(http, settings, policy=RetryPolicy(retry_ambiguous=False))
        client.send(sitecore_request(settings), identity)  # mints the browser id
        emulator.set_faults({"delay": 0.6, "count": 1, "path": "/v1.2/event"})
        with pytest.raises(DeliveryError) as caught:
            client.send(sitecore_request(settings), identity)
    assert caught.value.attempts == 1 and not caught.value.retryable
    assert "ReadTimeout" in str(caught.value)


def test_sitecore_proxy_mode(emulator: EmulatorServer, http: httpx.Client) -> None:
    settings = SitecoreSettings(
        url=emulator.url,
        mode="proxy",
        context_id="ctx-1",
        site_id="shop",
        language="EN",
        currency="EUR",
    )
    identity: dict[str, Any] = {}
    result = sitecore_client(http, settings).send(sitecore_request(settings), identity)
    assert result.status == 201 and result.browser_created
    create, event = emulator.requests()
    assert create.path == "/v1/events/v1.2/browser/create.json"
    assert event.method == "POST" and event.path == "/v1/events/v1.2/events"
    assert event.body["browser_id"] == identity["sitecore_browser_id"]
    assert event.headers["content-type"] == "application/json"


# ====================================================================== builder helper
def test_with_browser_id_reencodes_the_direct_message() -> None:
    settings = SitecoreSettings(client_key="key 1/+", pos="shop", language="EN", currency="EUR")
    request = sitecore_request(settings, {"type": "VIEW", "page": "a b&c", "ext": {"x": "é"}})
    changed = with_browser_id(request, "new-id")
    assert changed.body["browser_id"] == "new-id" and list(changed.body) == list(request.body)
    params = query_of(changed.url)
    assert json.loads(params["message"]) == changed.body
    assert params["client_key"] == "key 1/+"
    assert changed.url.split("?")[0] == request.url.split("?")[0]
    # the untouched request encodes the same way the builder does
    assert with_browser_id(request, "pending").url == request.url


def test_with_browser_id_reserializes_the_proxy_body() -> None:
    settings = SitecoreSettings(
        url="https://edge.example", mode="proxy", context_id="c", language="EN", currency="EUR"
    )
    request = sitecore_request(settings)
    changed = with_browser_id(request, "new-id")
    assert json.loads(changed.body_bytes) == changed.body and changed.body["browser_id"] == "new-id"
    assert changed.url == request.url and changed.headers == request.headers
    with pytest.raises(ValueError):
        with_browser_id(request, "")


# ====================================================================== answers a server will not give
Handler = Callable[[httpx.Request], httpx.Response]


def mock_edge(handler: Handler, settings: EdgeSettings | None = None, **kwargs: Any) -> EdgeClient:
    settings = settings or EdgeSettings(datastream="ds-1", org=ORG, url="https://edge.example")
    http = httpx.Client(transport=httpx.MockTransport(handler), timeout=5.0)
    return EdgeClient(http, settings, clock=lambda: NOW, sleep=Waits(), **kwargs)


FULL_HANDLES: list[Any] = [
    {
        "type": "identity:result",
        "payload": [
            {"id": "05907638112924484241029082405297151763", "namespace": {"code": "ECID"}},
            {"id": "core-1", "namespace": {"code": "CORE"}},
        ],
    },
    {
        "type": "personalization:decisions",
        "eventIndex": 0,
        "payload": [
            {
                "id": "AT:1",
                "scope": "hero-banner",
                "scopeDetails": {"decisionProvider": "TGT"},
                "items": [
                    {
                        "id": "282484",
                        "schema": "https://ns.adobe.com/personalization/json-content-item",
                        "data": {"content": {"headline": "Spring sale"}},
                    }
                ],
            },
            {"no": "id"},
        ],
    },
    {
        "type": "activation:pull",
        "eventIndex": 0,
        "payload": [{"id": "dest-1", "segments": [{"id": "seg-AAA"}]}],
    },
    {
        "type": "activation:push",
        "payload": [{"type": "url", "id": 7, "spec": {"url": "https://pixel.example/p"}}],
    },
    {
        "type": "identity:exchange",
        "payload": [{"type": "url", "id": 411, "spec": {"url": "https://sync.example/s"}}],
    },
    {
        "type": "rtml:inferences",
        "payload": [{"ruleId": "r1", "inferences": [{"key": "k", "value": 0.4}]}],
    },
    {"type": "brand-new:thing", "payload": {"not": "a list"}},
    {
        "type": "locationHint:result",
        "payload": [
            {"scope": "Target", "hint": "35", "ttlSeconds": 1800},
            {"scope": "EdgeNetwork", "hint": "va6", "ttlSeconds": 1800},
        ],
    },
    {
        "type": "state:store",
        "payload": [
            {
                "key": PREFIX + "identity",
                "value": "CiYwNTkw",
                "maxAge": 34128000,
                "attrs": {"SameSite": "None"},
            },
            {"key": PREFIX + "cluster", "value": "or2", "maxAge": 1800},
            {"key": PREFIX + "consent", "value": "general=in"},
        ],
    },
    "not a handle",
    {"payload": []},
]


def answer(body: Any, status: int = 200) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        request_id = dict(request.url.params)["requestId"]
        content = body(request_id) if callable(body) else body
        if isinstance(content, bytes | str):
            return httpx.Response(status, content=content)
        return httpx.Response(status, json=content)

    return handler


def test_every_documented_handle_lands_in_the_result_and_identity() -> None:
    body = lambda rid: {  # noqa: E731
        "requestId": f"{rid}-254b6b357f27442f",
        "handle": FULL_HANDLES,
        "errors": [
            {
                "type": "https://ns.adobe.com/aep/errors/EXEG-0200-504",
                "status": 504,
                "title": "The service call has timed out.",
                "report": {"eventIndex": 0},
            }
        ],
        "warnings": [
            {"type": "https://ns.adobe.com/aep/errors/EXEG-0204-200", "status": 200, "title": "w"}
        ],
    }
    identity: dict[str, Any] = {"entries": [{"key": PREFIX + "consent", "value": "general=out"}]}
    settings = EdgeSettings(datastream="ds-1", org=ORG, url="https://edge.example")
    request = edge_request(settings, identity)
    result = mock_edge(answer(body, 207)).send(request, identity)

    assert result.status == 207 and result.request_id == f"{request.request_id}-254b6b357f27442f"
    assert [p["id"] for p in result.propositions] == ["AT:1"]
    assert result.propositions[0]["renderAttempted"] is False
    assert result.decisions == [
        {k: v for k, v in result.propositions[0].items() if k != "renderAttempted"}
    ]
    assert result.destinations == [{"id": "dest-1", "segments": [{"id": "seg-AAA"}]}]
    assert result.inferences == [{"ruleId": "r1", "inferences": [{"key": "k", "value": 0.4}]}]
    assert [h["type"] for h in result.handles] == [
        "activation:push",
        "identity:exchange",
        "brand-new:thing",
    ]
    assert result.handles[2]["payload"] == {"not": "a list"}
    assert [e["status"] for e in result.errors] == [504] and [
        w["title"] for w in result.warnings
    ] == ["w"]
    assert result.request_body == json.loads(request.body_bytes)
    assert result.response_body["handle"] == FULL_HANDLES

    assert identity["ecid"] == "05907638112924484241029082405297151763" == result.ecid
    assert identity["has_identity"] is True
    # the cluster entry names the hint, after the locationHint handle
    assert identity["location_hint"] == "or2" == result.location_hint
    assert identity["location_hint_expires"] == NOW + 1800
    assert identity["entries"] == [
        {
            "key": PREFIX + "identity",
            "value": "CiYwNTkw",
            "maxAge": 34128000,
            "expires": NOW + 34128000,
            "attrs": {"SameSite": "None"},
        },
        {"key": PREFIX + "cluster", "value": "or2", "maxAge": 1800, "expires": NOW + 1800},
        {"key": PREFIX + "consent", "value": "general=in"},  # replaced, a session entry
    ]


def test_state_store_replaces_removes_and_expires() -> None:
    identity: dict[str, Any] = {
        "entries": [
            {"key": PREFIX + "a", "value": "1", "maxAge": 10, "expires": NOW + 10},
            {"key": PREFIX + "cluster", "value": "va6", "maxAge": 10, "expires": NOW + 10},
        ],
        "location_hint": "va6",
    }
    update = EdgeResponse.model_validate(
        {
            "handle": [
                {
                    "type": "state:store",
                    "payload": [
                        {"key": PREFIX + "a", "value": "2", "maxAge": 60},
                        {"key": PREFIX + "cluster", "value": "", "maxAge": 0},
                        {"key": PREFIX + "b", "value": "x", "maxAge": 5},
                        {"bad": "entry"},
                    ],
                }
            ]
        }
    )
    apply_edge_response(identity, update, now=NOW, org=ORG)
    assert identity["entries"] == [
        {"key": PREFIX + "a", "value": "2", "maxAge": 60, "expires": NOW + 60},
        {"key": PREFIX + "b", "value": "x", "maxAge": 5, "expires": NOW + 5},
    ]
    assert "location_hint" not in identity and not has_identity(identity)
    prune_identity(identity, NOW + 5)
    assert [e["key"] for e in identity["entries"]] == [PREFIX + "a"]
    hinted = {"location_hint": "or2", "location_hint_expires": NOW}
    prune_identity(hinted, NOW)
    assert hinted == {}


def test_odd_bodies_are_warnings_not_failures() -> None:
    result = mock_edge(answer(b"<html>ok</html>")).send(
        edge_request(EdgeSettings(datastream="d"), {}), {}
    )
    assert result.status == 200 and result.response_body is None
    assert result.warnings[0]["title"] == "The Edge response body is not JSON"

    shape = mock_edge(answer({"handle": "nope"})).send(
        edge_request(EdgeSettings(datastream="d"), {}), {}
    )
    assert shape.warnings[0]["type"] == "tagengine:unexpected-response" and shape.handles == []

    empty = mock_edge(answer(b"", 204)).send(edge_request(EdgeSettings(datastream="d"), {}), {})
    assert (empty.status, empty.response_body, empty.warnings) == (204, None, [])


def test_a_request_id_that_is_not_ours_is_flagged() -> None:
    result = mock_edge(answer({"requestId": "someone-else-0123456789abcdef", "handle": []})).send(
        edge_request(EdgeSettings(datastream="d"), {}), {}
    )
    assert result.warnings[0]["type"] == "tagengine:request-id-mismatch"


def test_error_without_a_problem_body_and_redirects() -> None:
    with pytest.raises(DeliveryError) as caught:
        mock_edge(answer(b"Internal error", 500)).send(
            edge_request(EdgeSettings(datastream="d"), {}), {}
        )
    assert (caught.value.status, caught.value.code, caught.value.attempts) == (500, None, 1)

    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": "https://elsewhere.example/"})

    seen: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return redirect(request)

    settings = EdgeSettings(datastream="d")
    client = EdgeClient(make_http_client(transport=httpx.MockTransport(recording)), settings)
    with pytest.raises(DeliveryError) as caught:
        client.send(edge_request(settings, {}), {})
    assert caught.value.status == 307 and len(seen) == 1  # never followed


def test_timeouts_are_set_even_on_a_client_built_without_them() -> None:
    timeouts: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        if "browser" in request.url.path:
            return httpx.Response(200, json={"ref": "b-1"})
        return httpx.Response(201, json={"status": "OK"})

    bare = httpx.Client(transport=httpx.MockTransport(handler), timeout=None)
    EdgeClient(bare, EdgeSettings(datastream="d")).send(
        edge_request(EdgeSettings(datastream="d"), {}), {}
    )
    sitecore = SitecoreSettings(client_key="k", pos="p", language="EN", currency="EUR")
    SitecoreClient(bare, sitecore).send(sitecore_request(sitecore), {})
    assert len(timeouts) == 3
    assert all(None not in t.values() for t in timeouts)

    built = make_http_client(connect=1.5, read=7.0)
    assert (built.timeout.connect, built.timeout.read) == (1.5, 7.0)
    assert built.follow_redirects is False
    built.close()


def test_with_state_updates_a_request_built_before_the_identity_arrived() -> None:
    settings = EdgeSettings(datastream="d")
    early = edge_request(settings, {})
    assert "entries" not in early.body["meta"]["state"]
    identity = {
        "entries": [
            {"key": PREFIX + "identity", "value": "v", "expires": NOW + 5},
            {"key": PREFIX + "old", "value": "o", "expires": NOW - 5},
        ]
    }
    late = with_state(early, identity, NOW)
    assert late.body["meta"]["state"]["entries"] == [{"key": PREFIX + "identity", "value": "v"}]
    assert json.loads(late.body_bytes) == late.body and late.body["event"] == early.body["event"]
    assert with_state(late, identity, NOW) is late
    assert with_state(early, {}, NOW) is early


def test_state_entries_made_once_serve_several_requests() -> None:
    """Background batches compute the entries once for all their sends: the same answer as
    computing them per request, the last value of a key winning and expired ones left out."""
    identity = {
        "entries": [
            {"key": PREFIX + "cluster", "value": "or2", "expires": NOW + 5},
            {"key": PREFIX + "identity", "value": "old", "expires": NOW + 5},
            {"key": PREFIX + "gone", "value": "x", "expires": NOW},
            {"key": PREFIX + "identity", "value": "new"},
            "not an entry",
        ]
    }
    entries = state_entries(identity, NOW)
    assert entries == [
        {"key": PREFIX + "cluster", "value": "or2"},
        {"key": PREFIX + "identity", "value": "new"},
    ]
    settings = EdgeSettings(datastream="d")
    for early in (edge_request(settings, {}), edge_request(settings, identity)):
        assert with_state(early, identity, NOW, entries=entries) == with_state(early, identity, NOW)
    assert state_entries({"entries": "no"}, NOW) == []


def test_token_is_cached_until_shortly_before_expiry() -> None:
    clock = [0.0]
    fetched: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ims/token/v3":
            fetched.append(dict(parse_qsl(request.content.decode())))
            return httpx.Response(
                200, json={"access_token": f"tok-{len(fetched)}", "expires_in": 600}
            )
        assert request.headers["Authorization"] == f"Bearer tok-{len(fetched)}"
        return httpx.Response(200, json={"handle": []})

    settings = EdgeSettings(
        datastream="d",
        org=ORG,
        url="https://server.example",
        client_id="c",
        client_secret=SecretStr("sh"),
        token_url="https://ims.example/ims/token/v3",
        scopes="openid",
    )
    client = mock_edge(handler, settings, monotonic=lambda: clock[0], token_margin=60)
    client.send(edge_request(settings, {}), {})
    clock[0] = 539.0
    client.send(edge_request(settings, {}), {})
    assert len(fetched) == 1
    clock[0] = 540.0  # 600 s minus the 60 s margin
    client.send(edge_request(settings, {}), {})
    assert len(fetched) == 2 and fetched[0] == {
        "grant_type": "client_credentials",
        "client_id": "c",
        "client_secret": "sh",
        "scope": "openid",
    }


def test_token_answer_without_a_token_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token_type": "bearer"})

    settings = EdgeSettings(datastream="d", org=ORG, client_id="c", client_secret=SecretStr("sh"))
    with pytest.raises(DeliveryError, match="no access_token"):
        mock_edge(handler, settings).send(edge_request(settings, {}), {})


def test_clients_refuse_the_other_destination() -> None:
    sitecore = SitecoreSettings(client_key="k", pos="p", language="EN", currency="EUR")
    with pytest.raises(ValueError):
        mock_edge(answer({})).send(sitecore_request(sitecore), {})
    bare = httpx.Client(transport=httpx.MockTransport(answer({})))
    with pytest.raises(ValueError):
        SitecoreClient(bare, sitecore).send(edge_request(EdgeSettings(datastream="d"), {}), {})


def test_browser_create_answer_without_ref_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "OK"})

    settings = SitecoreSettings(client_key="k", pos="p", language="EN", currency="EUR")
    client = SitecoreClient(httpx.Client(transport=httpx.MockTransport(handler)), settings)
    with pytest.raises(DeliveryError, match="no browser id"):
        client.send(sitecore_request(settings), {})


# ---------------------------------------------------------------------- no shared cookie jar
class _CookieSetter:
    """A loopback server that answers every request with a ``Set-Cookie`` (as Edge does on a
    first-party domain) and records the ``Cookie`` header each request came with."""

    def __init__(self) -> None:
        seen: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append(self.headers.get("Cookie"))
                body = b'{"handle":[]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", f"kndctr_ORG_identity=visitor-{len(seen)}; Path=/")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.seen = seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ee/v2/interact"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def cookie_setter() -> Iterator[_CookieSetter]:
    server = _CookieSetter()
    yield server
    server.close()


def test_a_cookie_one_answer_sets_never_rides_on_the_next_request(
    cookie_setter: _CookieSetter,
) -> None:
    with httpx.Client() as plain:  # what a default client would do: keep it, send it on
        plain.post(cookie_setter.url, content=b"{}")
        plain.post(cookie_setter.url, content=b"{}")
    assert cookie_setter.seen == [None, "kndctr_ORG_identity=visitor-1"]
    del cookie_setter.seen[:]
    with make_http_client() as shared:
        for _ in range(3):
            shared.post(cookie_setter.url, content=b"{}").raise_for_status()
        assert not shared.cookies
    assert cookie_setter.seen == [None, None, None]

    async def twice() -> None:
        async with make_async_http_client() as shared:
            for _ in range(2):
                (await shared.post(cookie_setter.url, content=b"{}")).raise_for_status()
            assert not shared.cookies

    del cookie_setter.seen[:]
    asyncio.run(twice())
    assert cookie_setter.seen == [None, None]
