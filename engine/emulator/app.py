"""The emulator's ASGI application: Adobe Edge Network, an IMS-like token endpoint and the
Sitecore Stream API on one loopback server (docs/destinations.md, "The local emulator").

Why Starlette (served by uvicorn): routing, request parsing and JSON responses are what the
emulator needs and nothing more; it is a thin, typed ASGI toolkit, so the fault layer below can
work at the ASGI level (delays, dropping a connection before any response byte) where a WSGI
server or ``http.server`` cannot, and the same app runs in-process on a background thread for
tests and in the foreground for ``tagengine emulator``.

Routes (``POST`` unless noted):

* ``/ee[/{hint}]/v1|v2/interact|collect``: Edge. v2 takes ``datastreamId`` and, on interact,
  one ``event``; v1 takes ``configId`` and ``events[]``; collect takes ``events[]``. Unknown
  datastreams get ``EXEG-0003-400``, ``meta.configOverrides`` the datastream does not allow
  ``EXEG-0113-400``; authenticated events without a primary identity
  ``EXEG-0306-400``; an opted-out visitor's requests are answered and ignored
  (``EXEG-0301-200``).
* ``/ee[/{hint}]/v1/privacy/set-consent``: the Web SDK's ``setConsent`` (records consent).
* ``/ims/token/v3``: OAuth client-credentials (form body) → bearer token.
* ``GET /v1.2/browser/create.json``, ``GET /v1.2/event/create.json``: Sitecore direct mode;
  ``GET /v1/events/v1.2/browser/create.json``, ``/v1/events/v1.2/events``: the Edge proxy.
* ``/emulator/…``: administration (never recorded, never faulted): ``GET|DELETE requests``,
  ``GET|POST|DELETE faults``, ``POST tokens/expire``, ``GET visitors``, ``GET browsers``,
  ``GET consents``, ``POST reset``, ``GET health``. Bodies are JSON only (415) and at most
  ``admin_max_body`` bytes (413).

Every route refuses (403, unrecorded) a non-loopback ``Origin``, and a non-loopback ``Host``
on a connection that arrived on a loopback address (:mod:`engine.emulator.guard`).

Every other request is recorded (:class:`~engine.emulator.state.RecordedRequest`) and may get
an injected fault (:mod:`engine.emulator.faults`) before it is processed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from engine.emulator import guard
from engine.emulator.consent import (
    CONSENT_CHECK_MAX_AGE,
    CONSENT_MAX_AGE,
    ConsentError,
    general_from_entry,
    parse_preferences,
)
from engine.emulator.faults import FAULT_HEADER, Fault, FaultError
from engine.emulator.identity import (
    decode_identity,
    encode_identity,
    fpid_ecid,
    is_ecid,
    mint_ecid,
    org_from_key,
    state_key,
)
from engine.emulator.overrides import override_problem
from engine.emulator.scopes import load_scopes, proposition
from engine.emulator.state import EmulatorConfig, EmulatorState, RecordedRequest

__all__ = ["EmulatorApp", "create_app"]

PROBLEM_BASE = "https://ns.adobe.com/aep/errors/"
# Content types Edge accepts (research/adobe-edge.md §1.4); others get EXEG-0111-415.
EDGE_CONTENT_TYPES = frozenset(
    {"application/json", "application/x-jackson-smile", "text/plain", "text/javascript"}
)
IDENTITY_MAX_AGE = 34128000  # 395 days, as Edge sets the identity entry
OPT_OUT_CODE = "EXEG-0301-200"  # "user consent missing, request ignored"
CLUSTER_MAX_AGE = 1800
# Codes for faults injected with only a status, so a client's code parsing is exercised.
FAULT_CODES = {
    401: "EXEG-0503-401",
    413: "EXEG-0112-413",
    502: "EXEG-0202-502",
    503: "EXEG-0201-503",
    504: "EXEG-0200-504",
}
SITECORE_CHANNELS = frozenset(
    {
        "AIRPORT_KIOSK", "BRANCH", "CALL_CENTER", "EMAIL", "GDS", "KIOSK", "MOBILE_APP",
        "MOBILE_WEB", "SMS", "OFFLINE", "OTA", "OTHER", "WEB",
    }
)  # fmt: skip
SITECORE_REQUIRED = ("channel", "type", "language", "currency", "page", "pos", "browser_id")
SITECORE_EXT_LIMIT = 50
_HINT = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Letters, digits and '_': the Stream API docs ask for camelCase alphanumerics, and Sitecore's
# own Cloud SDK joins nested keys with '_' (``product_sku``); the server takes both.
_EXT_NAME = re.compile(r"[A-Za-z0-9_]+")
_TYPE = re.compile(r"[A-Z0-9_]+")
_LANGUAGE = re.compile(r"[A-Z]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_READ_LIMIT = 16 * 1024 * 1024  # bodies above this are refused, read no further
_PAUSE_SLICE = 0.05  # how often a delayed request checks whether the server is stopping


def create_app(
    config: EmulatorConfig | None = None,
    *,
    state: EmulatorState | None = None,
    scopes: Path | None = None,
) -> EmulatorApp:
    """The emulator as an ASGI app. ``scopes`` replaces the configured decision scopes with
    those in a JSON file (:func:`~engine.emulator.scopes.load_scopes`; :class:`ValueError`
    when it is invalid). ``state`` is shared with the caller when given; it carries its own
    configuration, so it goes without ``config`` and ``scopes``."""
    if state is not None:
        if config is not None or scopes is not None:
            raise ValueError("a state carries its own configuration: no config or scopes with it")
        return EmulatorApp(state)
    if scopes is not None:
        config = dataclasses.replace(config or EmulatorConfig(), scopes=load_scopes(scopes))
    return EmulatorApp(EmulatorState(config))


class EmulatorApp:
    """ASGI app: records each request, applies faults, then routes it (Starlette)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._stopping = threading.Event()
        router = Starlette(routes=_ROUTES)
        router.state.emulator = state
        self._router = router

    def interrupt(self) -> None:
        """The server is stopping: requests waiting on an injected delay drop their
        connection now instead of holding the shutdown up. Thread-safe."""
        self._stopping.set()

    def resume(self) -> None:
        """Undo :meth:`interrupt` (the server is starting again)."""
        self._stopping.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http":
            await self._router(scope, receive, send)
            return
        headers = _headers(scope)
        config = self.state.config
        # Before anything is read or recorded: a cross-site or rebinding request is not one
        # the emulator serves (engine.emulator.guard).
        refused = guard.refusal(scope, headers, config.allowed_hosts)
        if refused is not None:
            await JSONResponse({"error": refused}, 403)(scope, receive, send)
            return
        if path == "/emulator" or path.startswith("/emulator/"):
            await self._admin(scope, receive, send, headers, config.admin_max_body)
            return

        too_large: guard.BodyTooLarge | None = None
        try:
            read = await guard.read_bounded(receive, headers, _READ_LIMIT)
        except guard.BodyTooLarge as exc:
            read, too_large = b"", exc
        if read is None:  # the client went away before sending its whole body
            return
        body = read
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), True))
        parsed, text = _record_body(path, headers, query, body)
        entry = self.state.record(
            method=scope["method"],
            path=path,
            query=query,
            headers=_redacted(headers),
            body=parsed,
            text=text,
            size=too_large.read if too_large is not None else len(body),
        )
        scope["emulator.record"] = entry  # so a route can mark it ignored (opt-out)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.state.finish(entry, status=message["status"])
            await send(message)

        if too_large is not None:
            response: Response = JSONResponse(
                {"error": f"request body too large: at most {_READ_LIMIT:,} bytes are read"}, 413
            )
            await response(scope, receive, recording_send)
            return

        fault: Fault | None
        header = headers.get(FAULT_HEADER)
        if header is not None:
            try:
                fault = Fault.from_header(header)
            except FaultError as exc:
                response = JSONResponse({"error": f"bad X-Emulator-Fault header: {exc}"}, 400)
                await response(scope, receive, recording_send)
                return
            if not self.state.fires(fault.rate):
                fault = None
        else:
            fault = self.state.take_fault(path)

        if fault is not None:
            self.state.finish(entry, fault=fault.describe())
            if fault.delay and await self._pause(fault.delay):
                await _drop(send)
                return
            if fault.drop:
                await _drop(send)
                return
            if fault.status is not None:
                response = _fault_response(path, fault, query, headers)
                await response(scope, receive, recording_send)
                return

        await self._router(scope, guard.replaying(body, receive), recording_send)

    async def _admin(
        self, scope: Scope, receive: Receive, send: Send, headers: Mapping[str, str], limit: int
    ) -> None:
        """An administration request: a body, when there is one, must be JSON and at most
        ``limit`` bytes (read chunk by chunk, so a huge one costs no memory)."""
        body = b""
        if guard.declares_body(headers):
            if not guard.is_json(headers):
                got = headers.get("content-type", "none")
                message = f"administration requests take JSON only (Content-Type: {got})"
                await JSONResponse({"error": message}, 415)(scope, receive, send)
                return
            try:
                read = await guard.read_bounded(receive, headers, limit)
            except guard.BodyTooLarge as exc:
                await JSONResponse({"error": str(exc)}, 413)(scope, receive, send)
                return
            if read is None:
                return
            body = read
        await self._router(scope, guard.replaying(body, receive), send)

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; ``True`` when the server started stopping meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, _PAUSE_SLICE))
        return True


# ====================================================================== ASGI helpers
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` without the NaN/Infinity extension: JSON as the services parse it (and
    what the recorded requests can be served back as)."""
    return json.loads(text, parse_constant=_reject_constant)


async def _drop(send: Send) -> None:
    """Close the connection without sending a byte of response.

    ASGI has no message for this, so reach the transport behind uvicorn's ``send`` (a bound
    method of its per-request cycle). Without one (another server), raising makes the server
    abort the exchange, which is the closest ASGI allows.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionAbortedError("emulator fault: connection dropped")
    transport.close()
    # Let the loop deliver connection_lost, so uvicorn sees a disconnect rather than an app
    # that returned without responding (which it would log and try to answer with a 500).
    for _ in range(20):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
    out = dict(headers)
    if "authorization" in out:
        scheme = out["authorization"].partition(" ")[0]
        out["authorization"] = f"{scheme} <redacted>"
    return out


def _record_body(
    path: str, headers: Mapping[str, str], query: Mapping[str, str], body: bytes
) -> tuple[Any, str | None]:
    """What a recorded request shows as its body (see RecordedRequest)."""
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if "client_secret" in form:
            form["client_secret"] = "<redacted>"
        return form, None
    if body:
        try:
            return strict_json(body), None
        except ValueError:
            return None, body.decode("utf-8", "replace")
    if path.endswith(".json") and "message" in query:
        try:
            return strict_json(query["message"]), None
        except ValueError:
            return None, None
    return None, None


def _fault_response(
    path: str, fault: Fault, query: Mapping[str, str], headers: Mapping[str, str]
) -> Response:
    status = fault.status or 500
    extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    title = f"Emulated fault: HTTP {status}"
    if path.startswith("/ee/"):
        request_id = _response_id(query, headers)
        return _problem(
            status,
            fault.code or FAULT_CODES.get(status),
            title,
            f"The emulator was asked to answer {fault.describe()}.",
            request_id=request_id,
            org=headers.get("x-gw-ims-org-id") or None,
            headers=extra,
        )
    if path.startswith(("/v1.2/", "/v1/events/")):
        return _sitecore_error(status, title, headers=extra)
    if path.startswith("/ims/"):
        body = {"error": "server_error", "error_description": title}
        return JSONResponse(body, status, headers=extra)
    return JSONResponse({"error": title}, status, headers=extra)


# ====================================================================== Edge
def _response_id(query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """Edge's answer id: the client's ``requestId`` plus 16 hex characters of entropy."""
    sent = query.get("requestId") or headers.get("x-request-id") or str(uuid.uuid4())
    return f"{sent}-{secrets.token_hex(8)}"


def _problem(
    status: int,
    code: str | None,
    title: str,
    detail: str,
    *,
    request_id: str,
    org: str | None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An RFC 7807 body as Edge sends it; ``type`` ends in the EXEG code."""
    report: dict[str, Any] = {"requestId": request_id}
    if org:
        report["orgId"] = org
    body = {
        "type": PROBLEM_BASE + code if code else "about:blank",
        "status": status,
        "title": title,
        "detail": detail,
        "report": report,
    }
    return JSONResponse(
        body,
        status,
        headers={"x-request-id": request_id, **(headers or {})},
        media_type="application/problem+json",
    )


def _rejected(reject: _Reject, request_id: str, org: str | None) -> Response:
    """The problem answer for a refused Edge request."""
    return _problem(
        reject.status, reject.code, reject.title, reject.detail, request_id=request_id, org=org
    )


class _Reject(Exception):
    """An Edge request that fails validation; becomes a problem response."""

    def __init__(self, status: int, code: str | None, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail


def _emulator(request: Request) -> EmulatorState:
    state = request.app.state.emulator
    assert isinstance(state, EmulatorState)
    return state


async def edge(request: Request) -> Response:
    """``POST /ee[/{hint}]/{version}/{action}``."""
    state = _emulator(request)
    config = state.config
    version = request.path_params["version"]
    action = request.path_params["action"]
    hint: str | None = request.path_params.get("hint")
    headers = request.headers
    query = request.query_params
    request_id = _response_id(query, headers)
    header_org = headers.get("x-gw-ims-org-id", "").strip() or None
    if version not in ("v1", "v2") or action not in ("interact", "collect"):
        return _problem(
            404,
            None,
            "Not Found",
            f"No Edge endpoint {request.url.path}",
            request_id=request_id,
            org=header_org,
        )
    try:
        if hint is not None and not _HINT.fullmatch(hint):
            raise _Reject(404, None, "Not Found", f"{hint!r} is not a location hint.")
        _check_auth(state, config, headers)
        datastream = _datastream_param(version, query)
        payload = await _edge_payload(request, config)
        _check_datastream(config, datastream, payload)
        events = _edge_events(payload, version, action)
        request_xdm = _object(payload.get("xdm"), "xdm")  # v1: request-level identities
        _check_identity_map(request_xdm.get("identityMap"), "xdm.identityMap")
        meta = _object(payload.get("meta"), "meta")
        _check_overrides(config, meta)
        meta_state = _object(meta.get("state"), "meta.state")
        entries = _entries(meta_state.get("entries"))
        org = header_org or _org_from_entries(entries) or config.org
        fpid_cookie = _fpid_cookie(headers)
        if config.primary_identity == "always" or (
            config.primary_identity == "authenticated" and "authorization" in headers
        ):
            _check_primary_identity(org, events, version, action, request_xdm, entries, fpid_cookie)
    except _Reject as reject:
        return _rejected(reject, request_id, header_org or config.org)

    response_headers = {"x-request-id": request_id}
    opted_out = [
        _opted_out(state, org, entries, event, request_xdm, fpid_cookie) for event in events
    ]
    record = request.scope.get("emulator.record")
    if action == "collect":
        ignored = [i for i, why in enumerate(opted_out) if why is not None]
        if ignored and isinstance(record, RecordedRequest):
            first = opted_out[ignored[0]]
            which = "all events" if len(ignored) == len(events) else f"events {ignored}"
            state.ignore(record, f"{OPT_OUT_CODE}: {which} ignored: {first}")
        if version == "v2" and query.get("silent", "").lower() != "true":
            return JSONResponse({"requestId": request_id}, 202, headers=response_headers)
        return Response(status_code=204, headers=response_headers)

    reason = next((why for why in opted_out if why is not None), None)
    if reason is not None:
        # Edge ignores an opted-out visitor's request: no identity, no decisions, no
        # segments, nothing counted; the answer only restates the consent.
        if isinstance(record, RecordedRequest):
            state.ignore(record, f"{OPT_OUT_CODE}: request ignored: {reason}")
        warning = {
            "type": PROBLEM_BASE + OPT_OUT_CODE,
            "status": 200,
            "title": "User consent missing, request ignored",
            "detail": f"The visitor has not consented to data collection: {reason}.",
            "report": {"cause": {"message": "general=out", "code": "general"}},
        }
        consent_store = {"type": "state:store", "payload": [_consent_entry(org, "out")]}
        return JSONResponse(
            {"requestId": request_id, "handle": [consent_store], "warnings": [warning]},
            200,
            headers=response_headers,
        )

    ecid, identity_value = _identify(org, entries, events, payload, fpid_cookie)
    state.visit(ecid)
    cluster = hint or entries.get(state_key(org, "cluster")) or config.location_hint
    if not _HINT.fullmatch(cluster):
        cluster = config.location_hint
    handles: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []

    if "ECID" in _fetch(payload):
        handles.append(
            {"type": "identity:result", "payload": [{"id": ecid, "namespace": {"code": "ECID"}}]}
        )
    for index, event in enumerate(events):
        propositions = []
        for scope in _requested_scopes(payload, event, version):
            items = config.scopes.get(scope)
            if items:
                propositions.append(proposition(scope, items, ecid))
            elif config.unknown_scope != "ignore":
                problem = _unknown_scope(scope, index, sorted(config.scopes))
                (errors if config.unknown_scope == "error" else warnings).append(problem)
        if propositions:
            handles.append(
                {"type": "personalization:decisions", "eventIndex": index, "payload": propositions}
            )
        if config.destinations:
            handles.append(
                {
                    "type": "activation:pull",
                    "eventIndex": index,
                    "payload": [dict(d) for d in config.destinations],
                }
            )
    handles.append(
        {
            "type": "locationHint:result",
            "payload": [
                {"scope": "EdgeNetwork", "hint": cluster, "ttlSeconds": CLUSTER_MAX_AGE},
                {"scope": "Target", "hint": "35", "ttlSeconds": CLUSTER_MAX_AGE},
            ],
        }
    )
    handles.append(
        {
            "type": "state:store",
            "payload": [
                {
                    "key": state_key(org, "identity"),
                    "value": identity_value,
                    "maxAge": IDENTITY_MAX_AGE,
                    "attrs": {"SameSite": "None"},
                },
                {
                    "key": state_key(org, "cluster"),
                    "value": cluster,
                    "maxAge": CLUSTER_MAX_AGE,
                    "attrs": {"SameSite": "None"},
                },
            ],
        }
    )
    body: dict[str, Any] = {"requestId": request_id, "handle": handles}
    if errors:
        body["errors"] = errors
    if warnings:
        body["warnings"] = warnings
    response_headers["x-adobe-edge"] = f"{cluster.upper()};9"
    return JSONResponse(body, 207 if errors else 200, headers=response_headers)


def _check_auth(state: EmulatorState, config: EmulatorConfig, headers: Mapping[str, str]) -> None:
    """A bearer token, when sent (or required), must be live and come with ``x-api-key``
    (its client id) and ``x-gw-ims-org-id`` (research/adobe-edge.md §1.5)."""
    authorization = headers.get("authorization")
    if authorization is None and not config.require_auth:
        return
    title = "Authentication failed"
    if not authorization:
        raise _Reject(
            401,
            "EXEG-0500-401",
            title,
            "This datastream requires authentication: Authorization: Bearer <token>, "
            "x-api-key and x-gw-ims-org-id.",
        )
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _Reject(
            401, "EXEG-0500-401", title, "The Authorization header is not 'Bearer <token>'."
        )
    missing = [h for h in ("x-api-key", "x-gw-ims-org-id") if not headers.get(h, "").strip()]
    if missing:
        raise _Reject(
            401,
            "EXEG-0500-401",
            title,
            f"A bearer token needs the {' and '.join(missing)} header{'s' * (len(missing) > 1)} too.",
        )
    token = state.token(value.strip())
    if token is None:
        raise _Reject(
            401, "EXEG-0503-401", "The access token has expired", "The token is expired or unknown."
        )
    if headers["x-api-key"].strip() != token.client_id:
        raise _Reject(
            401, "EXEG-0500-401", title, "x-api-key is not the client id the token was issued to."
        )


def _datastream_param(version: str, query: Mapping[str, str]) -> str:
    """The datastream id of the query (``datastreamId`` on v2, ``configId`` on v1);
    ``EXEG-0002-400`` when it is missing."""
    name, other = ("datastreamId", "configId") if version == "v2" else ("configId", "datastreamId")
    datastream = query.get(name, "")
    if not datastream:
        note = (
            f" ({other} is the {'v1' if version == 'v2' else 'v2'} name)"
            if query.get(other)
            else ""
        )
        raise _Reject(
            400,
            "EXEG-0002-400",
            "Missing datastream ID",
            f"The {name} query parameter is required on /{version}{note}.",
        )
    return datastream


def _check_datastream(config: EmulatorConfig, datastream: str, payload: Mapping[str, Any]) -> None:
    """``EXEG-0003-400`` for a datastream the emulator does not know. An override
    (``edgeConfigOverrides.datastreamId``) is known when the datastream it replaces, which the
    client names in ``meta.sdkConfig.datastream.original``, is: the override allow-list lives
    in that datastream's settings, which the emulator cannot see."""
    known = config.datastreams
    if known is None or datastream in known:
        return
    original = _path(payload, "meta", "sdkConfig", "datastream", "original")
    if isinstance(original, str) and original in known:
        return
    listed = ", ".join(sorted(known)) or "none"
    raise _Reject(
        400,
        "EXEG-0003-400",
        "Invalid datastream ID",
        f"Unknown datastream {datastream!r} (the emulator knows: {listed}).",
    )


def _check_overrides(config: EmulatorConfig, meta: Mapping[str, Any]) -> None:
    """``EXEG-0113-400`` for ``meta.configOverrides`` the datastream does not allow: an
    unknown key, a value of the wrong type, or a value not in ``config.overrides``
    (:mod:`engine.emulator.overrides`)."""
    if "configOverrides" not in meta:
        return
    problem = override_problem(meta["configOverrides"], config.overrides)
    if problem is not None:
        # "Invalid request" is the title Edge answers (the Edge Mobile SDK's integration tests).
        raise _Reject(400, "EXEG-0113-400", "Invalid request", problem + ".")


def _path(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


async def _edge_payload(request: Request, config: EmulatorConfig) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type and content_type not in EDGE_CONTENT_TYPES:
        raise _Reject(
            415, "EXEG-0111-415", "Unsupported content type", f"Content-Type {content_type!r}."
        )
    raw = await request.body()
    if len(raw) > config.max_body:
        raise _Reject(
            413,
            "EXEG-0112-413",
            "Payload too large",
            f"The maximum accepted size for request payloads is {config.max_body} bytes; "
            f"this request has {len(raw)} bytes.",
        )
    if not raw.strip():
        raise _Reject(408, "EXEG-0109-408", "Empty request body", "The request body is empty.")
    try:
        payload = strict_json(raw)
    except ValueError as exc:
        raise _Reject(400, "EXEG-0101-400", "Invalid JSON", f"The body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise _Reject(400, "EXEG-0102-400", "Invalid field", "The body must be a JSON object.")
    return payload


def _edge_events(payload: Mapping[str, Any], version: str, action: str) -> list[dict[str, Any]]:
    """The request's events, after checking the body shape of the endpoint."""
    if version == "v2" and action == "interact":
        if "events" in payload:
            raise _Reject(
                400,
                "EXEG-0102-400",
                "Invalid field",
                "/v2/interact takes one 'event' object, not 'events' (batches go to /v2/collect).",
            )
        event = payload.get("event")
        if not isinstance(event, dict):
            raise _Reject(400, "EXEG-0103-400", "Missing value", "The 'event' object is required.")
        events, where = [event], ["event"]
    else:
        found = payload.get("events")
        if not isinstance(found, list) or not found:
            hint = " (only /v2/interact takes a single 'event')" if "event" in payload else ""
            raise _Reject(
                400,
                "EXEG-0103-400",
                "Missing value",
                f"A non-empty 'events' array is required{hint}.",
            )
        events, where = found, [f"events[{i}]" for i in range(len(found))]
    for event, name in zip(events, where, strict=True):
        if not isinstance(event, dict):
            raise _Reject(400, "EXEG-0102-400", "Invalid field", f"{name} must be an object.")
        if not isinstance(event.get("xdm"), dict):
            raise _Reject(400, "EXEG-0103-400", "Missing value", f"{name}.xdm must be an object.")
        _check_identity_map(event["xdm"].get("identityMap"), f"{name}.xdm.identityMap")
    return events


def _check_identity_map(value: Any, where: str) -> None:
    if value is None:
        return
    ok = isinstance(value, dict) and all(
        isinstance(ids, list)
        and all(isinstance(i, dict) and isinstance(i.get("id"), str) and i["id"] for i in ids)
        for ids in value.values()
    )
    if not ok:
        raise _Reject(
            400,
            "EXEG-0102-400",
            "Invalid field",
            f"{where} must map each namespace to a list of {{id, authenticatedState?, primary?}}.",
        )


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Reject(400, "EXEG-0102-400", "Invalid field", f"{where} must be an object.")
    return value


def _entries(value: Any) -> dict[str, str]:
    """``meta.state.entries`` as key → value (a later entry wins)."""
    if value is None:
        return {}
    if not isinstance(value, list) or not all(
        isinstance(e, dict) and isinstance(e.get("key"), str) and isinstance(e.get("value"), str)
        for e in value
    ):
        raise _Reject(
            400, "EXEG-0102-400", "Invalid field", "meta.state.entries must be [{key, value}]."
        )
    return {e["key"]: e["value"] for e in value}


def _org_from_entries(entries: Mapping[str, str]) -> str | None:
    """The org of the state entries sent, preferring the one with an identity entry."""
    found = [parsed for key in entries if (parsed := org_from_key(key)) is not None]
    for org, name in found:
        if name == "identity":
            return org
    return found[0][0] if found else None


def _identify(
    org: str,
    entries: Mapping[str, str],
    events: list[dict[str, Any]],
    payload: Mapping[str, Any],
    fpid_cookie: str | None = None,
) -> tuple[str, str]:
    """``(ECID, identity entry value)``: from the identity entry, else an ECID in an
    ``identityMap``, else one derived from an FPID (``identityMap.FPID``, then the ``FPID``
    cookie), else a new one."""
    found = _known_ecid(org, entries, events, payload, fpid_cookie)
    if found is not None:
        ecid, value = found
        if value is not None:
            return ecid, value  # unchanged: Edge rewrites the entry at most daily
        return ecid, encode_identity(ecid, int(time.time()))
    ecid = mint_ecid()
    return ecid, encode_identity(ecid, int(time.time()))


def _known_ecid(
    org: str,
    entries: Mapping[str, str],
    events: list[dict[str, Any]],
    payload: Mapping[str, Any],
    fpid_cookie: str | None,
) -> tuple[str, str | None] | None:
    """The ECID the request carries or derives, without minting one: ``(ECID, identity
    entry value when it came from one)``."""
    value = entries.get(state_key(org, "identity"))
    if value is not None:
        ecid = decode_identity(value)
        if ecid is not None:
            return ecid, value
    maps = [e["xdm"].get("identityMap") or {} for e in events]
    request_xdm = payload.get("xdm")
    if isinstance(request_xdm, dict) and isinstance(request_xdm.get("identityMap"), dict):
        maps.append(request_xdm["identityMap"])  # v1: request-level ids (migrated ECID)
    found = _first_id(maps, "ECID", is_ecid) or _fpid(org, maps)
    if found is None and fpid_cookie:
        found = fpid_ecid(org, fpid_cookie)
    return (found, None) if found is not None else None


def _first_id(maps: list[Any], namespace: str, valid: Any) -> str | None:
    for identity_map in maps:
        for item in identity_map.get(namespace) or []:
            if valid(item.get("id")):
                found: str = item["id"]
                return found
    return None


def _fpid(org: str, maps: list[Any]) -> str | None:
    fpid = _first_id(maps, "FPID", lambda v: isinstance(v, str) and bool(v))
    return fpid_ecid(org, fpid) if fpid else None


def _fpid_cookie(headers: Mapping[str, str]) -> str | None:
    """The ``FPID`` cookie of the request (the Edge API's ``fpid`` cookie parameter)."""
    for pair in headers.get("cookie", "").split(";"):
        name, eq, value = pair.partition("=")
        if eq and name.strip() == "FPID" and value.strip():
            return value.strip()
    return None


def _has_primary(identity_map: Any) -> bool:
    """Whether an ``identityMap`` holds a primary identity: an id marked ``primary: true``,
    or an ECID or FPID (Edge's default primary, and the id it derives an ECID from)."""
    if not isinstance(identity_map, dict):
        return False
    for namespace, ids in identity_map.items():
        for item in ids if isinstance(ids, list) else []:
            if not isinstance(item, dict) or not item.get("id"):
                continue
            if item.get("primary") is True or namespace in ("ECID", "FPID"):
                return True
    return False


def _check_primary_identity(
    org: str,
    events: list[dict[str, Any]],
    version: str,
    action: str,
    request_xdm: Mapping[str, Any],
    entries: Mapping[str, str],
    fpid_cookie: str | None,
) -> None:
    """``EXEG-0306-400`` for an event without a primary identity, as on the authenticated
    host (research/adobe-edge.md §5): the request as a whole may supply one with the visitor's
    identity entry (an ECID), an ``FPID`` cookie or (v1) a request-level ``identityMap``."""
    identity_entry = entries.get(state_key(org, "identity"))
    if (
        (identity_entry is not None and decode_identity(identity_entry) is not None)
        or fpid_cookie
        or _has_primary(request_xdm.get("identityMap"))
    ):
        return
    for index, event in enumerate(events):
        if not _has_primary(event["xdm"].get("identityMap")):
            where = "event" if version == "v2" and action == "interact" else f"events[{index}]"
            raise _Reject(
                400,
                "EXEG-0306-400",
                "Missing primary identity",
                f"{where} has no primary identity: an authenticated (server-to-server) request "
                f"needs one in {where}.xdm.identityMap (an FPID, or an id with primary: true), "
                f"or the visitor's {state_key(org, 'identity')} state entry.",
            )


def _identities(
    org: str,
    entries: Mapping[str, str],
    event: dict[str, Any],
    request_xdm: Mapping[str, Any],
    fpid_cookie: str | None,
) -> set[str]:
    """The keys consent is recorded under for one visitor: ``ECID:<id>`` for the ECID the
    request carries or derives, and ``<namespace>:<id>`` for every id of its identity maps."""
    out: set[str] = set()
    found = _known_ecid(org, entries, [event], {"xdm": dict(request_xdm)}, fpid_cookie)
    if found is not None:
        out.add(f"ECID:{found[0]}")
    for identity_map in (event["xdm"].get("identityMap"), request_xdm.get("identityMap")):
        for namespace, ids in (identity_map or {}).items():
            out.update(f"{namespace}:{item['id']}" for item in ids)
    if fpid_cookie:
        out.add(f"FPID:{fpid_cookie}")
    return out


def _opted_out(
    state: EmulatorState,
    org: str,
    entries: Mapping[str, str],
    event: dict[str, Any],
    request_xdm: Mapping[str, Any],
    fpid_cookie: str | None,
) -> str | None:
    """Why an event's visitor counts as opted out, or ``None``. A consent state entry sent
    with the request decides (it is what the visitor's cookie says now); without one, the
    consent last recorded by the set-consent endpoint for any of the visitor's ids does."""
    keys = [state_key(org, "consent")] + [
        key for key in entries if (parsed := org_from_key(key)) and parsed[1] == "consent"
    ]
    for key in keys:
        if key in entries:
            general = general_from_entry(entries[key])
            return f"{key} is {entries[key]!r}" if general == "out" else None
    identities = _identities(org, entries, event, request_xdm, fpid_cookie)
    if state.consent(identities) == "out":
        return f"consent was set to out for {', '.join(sorted(identities))}"
    return None


def _consent_entry(org: str, general: str) -> dict[str, Any]:
    return {
        "key": state_key(org, "consent"),
        "value": f"general={general}",
        "maxAge": CONSENT_MAX_AGE,
        "attrs": {"SameSite": "None"},
    }


async def set_consent(request: Request) -> Response:
    """``POST /ee[/{hint}]/v1/privacy/set-consent?configId=…``: the Web SDK's ``setConsent``
    body ``{identityMap?, consent: [...], meta?}``. Records the visitor's general consent under
    its ECID and every id sent, and answers with the ECID and ``state:store`` entries for the
    identity, ``kndctr_<org>_consent`` and ``kndctr_<org>_consent_check``, as Edge does. Only
    v1 exists: the Edge API documents no v2 consent endpoint."""
    state = _emulator(request)
    config = state.config
    version = request.path_params["version"]
    hint: str | None = request.path_params.get("hint")
    headers = request.headers
    request_id = _response_id(request.query_params, headers)
    header_org = headers.get("x-gw-ims-org-id", "").strip() or None
    try:
        if version != "v1" or (hint is not None and not _HINT.fullmatch(hint)):
            raise _Reject(404, None, "Not Found", f"No Edge endpoint {request.url.path}")
        _check_auth(state, config, headers)
        datastream = _datastream_param(version, request.query_params)
        payload = await _edge_payload(request, config)
        _check_datastream(config, datastream, payload)
        identity_map = payload.get("identityMap")
        _check_identity_map(identity_map, "identityMap")
        try:
            general = parse_preferences(payload.get("consent"))
        except ConsentError as exc:
            raise _Reject(exc.status, exc.code, "Invalid consent", exc.detail) from None
        meta = _object(payload.get("meta"), "meta")
        _check_overrides(config, meta)
        entries = _entries(_object(meta.get("state"), "meta.state").get("entries"))
    except _Reject as reject:
        return _rejected(reject, request_id, header_org or config.org)
    org = header_org or _org_from_entries(entries) or config.org
    fpid_cookie = _fpid_cookie(headers)
    event = {"xdm": {"identityMap": identity_map or {}}}
    ecid, identity_value = _identify(org, entries, [event], {}, fpid_cookie)
    identities = _identities(org, entries, event, {}, fpid_cookie) | {f"ECID:{ecid}"}
    state.set_consent(identities, general)
    handles = [
        {"type": "identity:result", "payload": [{"id": ecid, "namespace": {"code": "ECID"}}]},
        {
            "type": "state:store",
            "payload": [
                {
                    "key": state_key(org, "identity"),
                    "value": identity_value,
                    "maxAge": IDENTITY_MAX_AGE,
                    "attrs": {"SameSite": "None"},
                },
                _consent_entry(org, general),
                {
                    "key": state_key(org, "consent_check"),
                    "value": "1",
                    "maxAge": CONSENT_CHECK_MAX_AGE,
                    "attrs": {"SameSite": "None"},
                },
            ],
        },
    ]
    return JSONResponse(
        {"requestId": request_id, "handle": handles}, 200, headers={"x-request-id": request_id}
    )


def _fetch(payload: Mapping[str, Any]) -> list[Any]:
    query = payload.get("query")
    identity = query.get("identity") if isinstance(query, dict) else None
    fetch = identity.get("fetch") if isinstance(identity, dict) else None
    return fetch if isinstance(fetch, list) else []


def _requested_scopes(
    payload: Mapping[str, Any], event: Mapping[str, Any], version: str
) -> list[str]:
    """Decision scopes and surfaces asked for: v2 in the request's ``query.personalization``,
    v1 in the event's (the other place is read too, in case a client mixes them)."""
    places = [payload.get("query"), event.get("query")]
    if version == "v1":
        places.reverse()
    out: list[str] = []
    for query in places:
        personalization = query.get("personalization") if isinstance(query, dict) else None
        if not isinstance(personalization, dict):
            continue
        for key in ("decisionScopes", "surfaces"):
            values = personalization.get(key)
            for value in values if isinstance(values, list) else []:
                if isinstance(value, str) and value and value not in out:
                    out.append(value)
    return out


def _unknown_scope(scope: str, index: int, known: list[str]) -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE + "EXEG-0204-200",
        "status": 200,
        "title": "A warning occurred while calling the personalization service",
        "detail": f"Decision scope {scope!r} has no content in the emulator "
        f"(configured: {', '.join(known) or 'none'}).",
        "report": {"eventIndex": index, "scope": scope},
    }


# ====================================================================== IMS-like tokens
async def ims_token(request: Request) -> Response:
    """``POST /ims/token/v3``: OAuth client credentials, form-encoded."""
    state = _emulator(request)
    config = state.config
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), True))
    if form.get("grant_type") != "client_credentials":
        return JSONResponse(
            {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            },
            400,
        )
    client_id = form.get("client_id", "")
    secret = form.get("client_secret", "")
    if config.credentials is not None:
        valid = bool(client_id) and config.credentials.get(client_id) == secret
    else:
        valid = bool(client_id and secret)
    if not valid:
        return JSONResponse(
            {"error": "invalid_client", "error_description": "invalid client_id or client_secret"},
            401,
        )
    token = state.issue_token(client_id, form.get("scope", ""))
    return JSONResponse(
        {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": max(0, math.floor(config.token_ttl)),
        }
    )


# ====================================================================== Sitecore
def _sitecore_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    # The Stream API's error body is undocumented (research notes §1.9); this shape is ours.
    body = {"status": "ERROR", "version": "1.2", "code": status, "message": message}
    return JSONResponse(body, status, headers=dict(headers or {}))


def _client_key_error(config: EmulatorConfig, key: str | None) -> Response | None:
    if not key or (config.client_keys is not None and key not in config.client_keys):
        return _sitecore_error(401, "Unknown or missing client_key")
    return None


def _context_error(config: EmulatorConfig, context: str | None) -> Response | None:
    if not context or (config.context_ids is not None and context not in config.context_ids):
        return _sitecore_error(401, "Unknown or missing sitecoreContextId")
    return None


async def browser_create(request: Request) -> Response:
    """``GET /v1.2/browser/create.json`` (direct) and
    ``GET /v1/events/v1.2/browser/create.json`` (proxy): a new browser id as ``ref``."""
    state = _emulator(request)
    config = state.config
    query = request.query_params
    proxy = request.url.path.startswith("/v1/events/")
    error = (
        _context_error(config, query.get("sitecoreContextId"))
        if proxy
        else _client_key_error(config, query.get("client_key"))
    )
    if error is not None:
        return error
    message = query.get("message")
    if message is not None:
        try:
            parsed = strict_json(message)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return _sitecore_error(400, "message must be a JSON object, e.g. {}")
    ref, customer_ref = str(uuid.uuid4()), str(uuid.uuid4())
    state.add_browser(ref, customer_ref)
    return JSONResponse(
        {
            "status": "OK",
            "version": "1.2",
            "client_key": query.get("client_key", ""),
            "ref": ref,
            "customer_ref": customer_ref,
        }
    )


async def event_create(request: Request) -> Response:
    """``GET /v1.2/event/create.json?client_key=…&message=<event JSON>`` → ``201``."""
    state = _emulator(request)
    query = request.query_params
    error = _client_key_error(state.config, query.get("client_key"))
    if error is not None:
        return error
    message = query.get("message")
    if message is None:
        return _sitecore_error(400, "The message parameter (the event as JSON) is required")
    try:
        event = strict_json(message)
    except ValueError:
        return _sitecore_error(400, "message is not valid JSON")
    return _accept_event(state, event, query.get("client_key", ""), proxy=False)


async def proxy_event(request: Request) -> Response:
    """``POST /v1/events/v1.2/events?sitecoreContextId=…&siteId=…`` with the event as JSON."""
    state = _emulator(request)
    error = _context_error(state.config, request.query_params.get("sitecoreContextId"))
    if error is not None:
        return error
    try:
        event = strict_json(await request.body())
    except ValueError:
        return _sitecore_error(400, "The body is not valid JSON")
    key = event.get("client_key", "") if isinstance(event, dict) else ""
    return _accept_event(state, event, key if isinstance(key, str) else "", proxy=True)


def _accept_event(state: EmulatorState, event: Any, client_key: str, *, proxy: bool) -> Response:
    browser = event.get("browser_id") if isinstance(event, dict) else None
    earlier = state.browser_events(browser) if isinstance(browser, str) else None
    # The Cloud SDK's server-side body (proxy) leaves pos and client_key empty and language
    # out; a direct-mode browser's later events need only type and browser_id (data model
    # 2.1). Both are accepted; a direct first event still needs all seven base fields.
    required = ("type", "browser_id") if proxy or earlier else SITECORE_REQUIRED
    problem = _sitecore_problem(event, required)
    if problem is not None:
        return _sitecore_error(400, problem)
    customer_ref = state.browser_event(event["browser_id"], event["type"])
    if customer_ref is None:
        return _sitecore_error(404, f"Unknown browser_id {event['browser_id']!r}")
    body = {"status": "OK", "version": "1.2", "ref": str(uuid.uuid4()), "client_key": client_key}
    if proxy:
        body["customer_ref"] = customer_ref
    return JSONResponse(body, 201)


def _sitecore_problem(event: Any, required: tuple[str, ...] = SITECORE_REQUIRED) -> str | None:
    """Why the Stream API refuses ``event`` (documented rules, research notes §1.5–1.7), or
    ``None``. ``required`` base fields must be present; the others are checked when sent."""
    if not isinstance(event, dict):
        return "The event must be a JSON object"
    missing = [name for name in required if event.get(name) is None]
    if missing:
        return f"Missing required attribute(s): {', '.join(missing)}"
    present = [name for name in SITECORE_REQUIRED if event.get(name) is not None]
    wrong = [name for name in present if not isinstance(event[name], str)]
    if wrong:
        return f"Attribute(s) must be strings: {', '.join(wrong)}"
    for name in ("browser_id", "type", "channel"):
        if name in present and not event[name]:
            return f"{name} must not be empty"
    event_type: str = event["type"]
    if not _TYPE.fullmatch(event_type):
        return f"type must be upper-case letters, digits and '_', not {event_type!r}"
    if event_type.startswith("SC_"):
        return f"type {event_type!r} is reserved (names starting SC_)"
    if "channel" in present and event["channel"] not in SITECORE_CHANNELS:
        return f"Unknown channel {event['channel']!r}"
    language, currency = event.get("language"), event.get("currency")
    if language and not _LANGUAGE.fullmatch(language):
        return f"language must be an upper-case ISO 639-1 code, not {language!r}"
    if currency and not _CURRENCY.fullmatch(currency):
        return f"currency must be an upper-case ISO 4217 code, not {currency!r}"
    ext = event.get("ext")
    if ext is not None:
        if not isinstance(ext, dict):
            return "ext must be an object"
        if len(ext) > SITECORE_EXT_LIMIT:
            return f"ext has {len(ext)} attributes; at most {SITECORE_EXT_LIMIT} are allowed"
        for name, value in ext.items():
            if not _EXT_NAME.fullmatch(name):
                return (
                    f"ext attribute name {name!r} must be letters, digits and '_' "
                    "(camelCase, or the Cloud SDK's '_'-joined names)"
                )
            # The Cloud SDK flattens nested objects and keeps arrays as they are, so an
            # array of scalars is what the official client sends; an object never is.
            if isinstance(value, list):
                if not all(_scalar(item) for item in value):
                    return (
                        f"ext attribute {name!r} must be an array of strings, booleans and "
                        "numbers (nested objects are flattened into '_'-joined names)"
                    )
            elif not _scalar(value):
                return (
                    f"ext attribute {name!r} must be a string, boolean, number or an array of "
                    "them (nested objects are flattened into '_'-joined names)"
                )
    session_data = event.get("session_data")
    if session_data is not None and not (
        isinstance(session_data, dict) and all(_scalar(v) for v in session_data.values())
    ):
        return "session_data must be a flat object of strings, booleans and numbers"
    if event_type == "IDENTITY":
        identifiers = event.get("identifiers")
        if not (
            isinstance(identifiers, list)
            and identifiers
            and all(
                isinstance(i, dict)
                and isinstance(i.get("provider"), str)
                and i["provider"]
                and isinstance(i.get("id"), str)
                and i["id"]
                for i in identifiers
            )
        ):
            return "An IDENTITY event needs identifiers: [{provider, id}]"
    return None


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | bool | int)


# ====================================================================== administration
async def admin_requests(request: Request) -> Response:
    """``GET /emulator/requests[?path=prefix]`` lists; ``DELETE`` clears."""
    state = _emulator(request)
    if request.method == "DELETE":
        state.clear_requests()
        return Response(status_code=204)
    prefix = request.query_params.get("path")
    return JSONResponse([r.to_json() for r in state.requests(prefix)])


async def admin_faults(request: Request) -> Response:
    """``POST /emulator/faults`` replaces the rules with the one object or list of objects
    sent (``[]`` removes them); ``GET`` lists them; ``DELETE`` removes them."""
    state = _emulator(request)
    if request.method == "DELETE":
        state.set_faults([])
        return Response(status_code=204)
    if request.method == "POST":
        try:
            data = strict_json(await request.body())
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, 400)
        items = data if isinstance(data, list) else [data]
        faults, seed = [], None
        try:
            for item in items:
                if not isinstance(item, dict):
                    raise FaultError("each fault must be a JSON object")
                item = dict(item)
                if "seed" in item:
                    seed = item.pop("seed")
                    if not isinstance(seed, int) or isinstance(seed, bool):
                        raise FaultError(f"fault seed must be an integer, not {seed!r}")
                faults.append(Fault.from_mapping(item))
        except FaultError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        state.set_faults(faults, seed=seed)
    return JSONResponse({"faults": state.faults()})


async def admin_expire_tokens(request: Request) -> Response:
    """``POST /emulator/tokens/expire`` (optional JSON ``{"token": "…"}``): expire tokens."""
    state = _emulator(request)
    raw = await request.body()
    token = None
    if raw.strip():
        try:
            data = strict_json(raw)
        except ValueError:
            data = None
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str):
            return JSONResponse({"error": 'expected {"token": "<access token>"}'}, 400)
    return JSONResponse({"expired": state.expire_tokens(token)})


async def admin_visitors(request: Request) -> Response:
    return JSONResponse(_emulator(request).visitors())


async def admin_browsers(request: Request) -> Response:
    return JSONResponse(_emulator(request).browsers())


async def admin_consents(request: Request) -> Response:
    """``GET /emulator/consents``: identity → ``in``/``out``, as set by set-consent."""
    return JSONResponse(_emulator(request).consents())


async def admin_reset(request: Request) -> Response:
    _emulator(request).reset()
    return Response(status_code=204)


async def admin_health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


_ROUTES = [
    Route("/ee/{version}/privacy/set-consent", set_consent, methods=["POST"]),
    Route("/ee/{hint}/{version}/privacy/set-consent", set_consent, methods=["POST"]),
    Route("/ee/{version}/{action}", edge, methods=["POST"]),
    Route("/ee/{hint}/{version}/{action}", edge, methods=["POST"]),
    Route("/ims/token/v3", ims_token, methods=["POST"]),
    Route("/v1.2/browser/create.json", browser_create, methods=["GET"]),
    Route("/v1/events/v1.2/browser/create.json", browser_create, methods=["GET"]),
    Route("/v1.2/event/create.json", event_create, methods=["GET"]),
    Route("/v1/events/v1.2/events", proxy_event, methods=["POST"]),
    Route("/emulator/requests", admin_requests, methods=["GET", "DELETE"]),
    Route("/emulator/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
    Route("/emulator/tokens/expire", admin_expire_tokens, methods=["POST"]),
    Route("/emulator/visitors", admin_visitors, methods=["GET"]),
    Route("/emulator/browsers", admin_browsers, methods=["GET"]),
    Route("/emulator/consents", admin_consents, methods=["GET"]),
    Route("/emulator/reset", admin_reset, methods=["POST"]),
    Route("/emulator/health", admin_health, methods=["GET"]),
]
