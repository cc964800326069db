"""The Adobe Edge Network client: sends a built :class:`~engine.destinations.Request`, retries
it, authenticates it when the settings ask for the authenticated host, parses the answer into
an :class:`~engine.clients.responses.EdgeResult` and keeps the session's identity up to date
(docs/destinations.md, "Adobe Experience Platform Edge Network").

::

    http = make_http_client()
    client = EdgeClient(http, settings)
    result = client.send(request, session.identity)   # EdgeResult, or DispatchError

Every attempt resends ``request.body_bytes`` unchanged, so Edge sees the same ``requestId``
and ``xdm._id`` each time. Ordering and queueing belong to the caller; :class:`IdentityGate`
is there for the one rule Edge imposes (one request until the visitor has an identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx

from engine.clients.auth import AsyncTokenProvider, TokenProvider, auth_configured
from engine.clients.http import request_timeout
from engine.clients.identity import apply_edge_response, prune_identity
from engine.clients.responses import (
    DestinationItem,
    EdgeResult,
    Problem,
    Proposition,
    parse_edge_body,
    raw_items,
)
from engine.clients.retry import (
    AsyncRetrier,
    Budget,
    DeliveryError,
    Outcome,
    Retrier,
    RetryPolicy,
    problem_of,
)
from engine.destinations.base import Request, check_size, serialize_bytes
from engine.errors import DispatchError
from engine.settings import EdgeSettings

__all__ = ["TOKEN_EXPIRED", "AsyncEdgeClient", "EdgeClient", "state_entries", "with_state"]

TOKEN_EXPIRED = "EXEG-0503-401"
"""The code after which the token is refreshed once and the request resent."""

_CONSUMED = frozenset(
    {
        "personalization:decisions",
        "activation:pull",
        "rtml:inferences",
        "identity:result",
        "state:store",
        "locationHint:result",
    }
)


def with_state(
    request: Request,
    identity: Mapping[str, Any],
    now: float,
    *,
    entries: list[dict[str, str]] | None = None,
) -> Request:
    """``request`` with ``meta.state.entries`` brought up to date with the session's stored
    entries (those not expired at ``now``; or ``entries``, :func:`state_entries` made once for
    several requests). A request built while an earlier one was still fetching the visitor's
    identity would otherwise ask Edge for a second ECID. Unchanged when the identity has no
    entries or they are already the ones in the body."""
    meta = request.body.get("meta")
    state = meta.get("state") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(state, dict):
        return request
    if entries is None:
        entries = state_entries(identity, now)
    if not entries or state.get("entries") == entries:
        return request
    body = {**request.body, "meta": {**meta, "state": {**state, "entries": entries}}}
    return replace(request, body=body, body_bytes=serialize_bytes(body, rule=request.rule))


def state_entries(identity: Mapping[str, Any], now: float) -> list[dict[str, str]]:
    """The ``meta.state.entries`` of a request sent with ``identity`` at ``now``: its stored
    ``state:store`` entries not expired, the last of each key."""
    stored = identity.get("entries")
    if not isinstance(stored, list):
        return []
    wanted: dict[str, str] = {}
    for entry in stored:
        if not isinstance(entry, Mapping):
            continue
        key, value, expires = entry.get("key"), entry.get("value"), entry.get("expires")
        if not isinstance(key, str) or not key or not isinstance(value, str):
            continue
        if isinstance(expires, int | float) and not isinstance(expires, bool) and expires <= now:
            continue
        wanted.pop(key, None)
        wanted[key] = value
    return [{"key": k, "value": v} for k, v in wanted.items()]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _problems(value: Any) -> list[dict[str, Any]]:
    return [dict(p) for p in _listed(value) if isinstance(p, dict)]


class _EdgeBase:
    """What the sync and async clients share: preparing, headers, reading the answer."""

    def __init__(
        self,
        settings: EdgeSettings,
        http_timeout: httpx.Timeout,
        *,
        clock: Callable[[], float],
        refresh_state: bool,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._refresh_state = refresh_state
        self._timeout = request_timeout(http_timeout)
        self._auth = auth_configured(settings)

    def _prepare(self, request: Request, identity: dict[str, Any], size_check: bool) -> Request:
        if request.destination != "edge":
            raise ValueError(f"an Edge client cannot send a {request.destination} request")
        if self._auth and not self.settings.org:
            raise DispatchError(
                f"rule {request.rule!r}: the authenticated Edge host needs 'org' (the "
                "x-gw-ims-org-id header) in the edge settings",
                destination="edge",
                request_id=request.request_id,
            )
        now = self._clock()
        prune_identity(identity, now)
        if self._refresh_state:
            request = with_state(request, identity, now)
        if size_check:
            check_size(request)  # as sent: the state refresh can make it grow
        return request

    def _headers(self, request: Request, token: str | None) -> list[tuple[str, str]]:
        headers = list(request.headers)
        if token is not None:
            assert self.settings.client_id and self.settings.org
            headers += [
                ("Authorization", f"Bearer {token}"),
                ("x-api-key", self.settings.client_id),
                ("x-gw-ims-org-id", self.settings.org),
            ]
        return headers

    @staticmethod
    def _token_refused(response: httpx.Response) -> bool:
        return response.status_code == 401 and problem_of(response)[0] == TOKEN_EXPIRED

    def _finish(self, request: Request, outcome: Outcome, identity: dict[str, Any]) -> EdgeResult:
        response = outcome.response
        ours = request.request_id
        if not 200 <= response.status_code < 300:
            raise self._error(request, outcome)
        local: list[dict[str, Any]] = []
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except (ValueError, UnicodeDecodeError):
                local.append(
                    {
                        "type": "tagengine:unexpected-response",
                        "title": "The Edge response body is not JSON",
                        "detail": f"HTTP {response.status_code}, {len(response.content)} bytes",
                    }
                )
        parsed, shape = parse_edge_body(body if body is not None else {})
        local += shape
        theirs = parsed.requestId
        if theirs and ours and theirs != ours and not theirs.startswith(ours + "-"):
            local.append(
                {
                    "type": "tagengine:request-id-mismatch",
                    "title": "The response's requestId does not start with the one sent",
                    "detail": f"sent {ours}, answered {theirs}",
                }
            )
        apply_edge_response(identity, parsed, now=self._clock(), org=self.settings.org)
        raw: dict[str, Any] = body if isinstance(body, dict) and not shape else {}
        handles = _listed(raw.get("handle"))
        propositions = raw_items(handles, "personalization:decisions", Proposition)
        inferences = [
            item
            for h in handles
            if isinstance(h, dict) and h.get("type") == "rtml:inferences"
            for item in _listed(h.get("payload"))
        ]
        ecid = identity.get("ecid")
        hint = identity.get("location_hint")
        return EdgeResult(
            status=response.status_code,
            request_id=theirs or ours,
            kind=request.kind,
            event_id=request.event_id,
            propositions=[{**p, "renderAttempted": False} for p in propositions],
            decisions=[dict(p) for p in propositions],
            destinations=raw_items(handles, "activation:pull", DestinationItem),
            inferences=inferences,
            handles=[
                dict(h)
                for h in handles
                if isinstance(h, dict)
                and isinstance(h.get("type"), str)
                and h["type"] not in _CONSUMED
            ],
            errors=_problems(raw.get("errors")),
            warnings=[*_problems(raw.get("warnings")), *local],
            ecid=ecid if isinstance(ecid, str) else None,
            location_hint=hint if isinstance(hint, str) else None,
            request_body=request.body,
            response_body=body,
            attempts=outcome.attempts,
            duration=outcome.duration,
        )

    @staticmethod
    def _error(request: Request, outcome: Outcome) -> DeliveryError:
        response = outcome.response
        problem = Problem()
        with contextlib.suppress(ValueError):  # not JSON, or not an object
            problem = Problem.model_validate(response.json())
        report_id = (problem.report or {}).get("requestId")
        request_id = report_id if isinstance(report_id, str) else request.request_id
        text = f"HTTP {response.status_code}"
        if problem.code:
            text += f" {problem.code}"
        if problem.title:
            text += f": {problem.title}"
        message = f"edge: rule {request.rule!r}: {text}"
        if problem.detail:
            message += f" ({problem.detail[:300]})"
        return DeliveryError(
            message,
            destination="edge",
            status=response.status_code,
            code=problem.code,
            title=problem.title,
            request_id=request_id,
            attempts=outcome.attempts,
            last_error=text,
            retryable=False,
        )


class EdgeClient(_EdgeBase):
    """Sends Edge requests over a shared ``httpx.Client`` (build it with
    :func:`~engine.clients.http.make_http_client`). Thread-safe; one session's identity must
    not be sent for from two threads at once (see :class:`~engine.clients.IdentityGate`).

    ``policy`` bounds the retries; ``clock`` (epoch seconds) dates state entries and reads
    ``Retry-After`` dates; ``monotonic``, ``sleep`` and ``random`` drive the waits (tests
    inject them). ``refresh_state`` updates ``meta.state`` from the identity before the first
    attempt (:func:`with_state`). ``token_margin`` seconds before expiry a token is renewed.
    """

    def __init__(
        self,
        http: httpx.Client,
        settings: EdgeSettings,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        random: Callable[[float, float], float] = _random.uniform,
        refresh_state: bool = True,
        token_margin: float = 60.0,
    ) -> None:
        super().__init__(settings, http.timeout, clock=clock, refresh_state=refresh_state)
        self.http = http
        self.retrier = Retrier(policy, sleep=sleep, clock=monotonic, now=clock, random=random)
        self.tokens = (
            TokenProvider(settings, self.retrier, clock=monotonic, margin=token_margin)
            if self._auth
            else None
        )

    def send(
        self, request: Request, identity: dict[str, Any], *, size_check: bool = True
    ) -> EdgeResult:
        """Deliver ``request`` and take the answer's identity into ``identity``.

        Raises :class:`~engine.errors.PayloadTooLarge` above 64 KB (unless ``size_check`` is
        false) and :class:`~engine.clients.DeliveryError` for an error answer (RFC 7807 code
        and title) or when retries run out.
        """
        request = self._prepare(request, identity, size_check)
        budget = self.retrier.budget()
        token = self.tokens.token(self.http) if self.tokens is not None else None

        def attempt() -> httpx.Response:
            built = self.http.build_request(
                request.method,
                request.url,
                content=request.body_bytes,
                headers=self._headers(request, token),
                timeout=self._timeout,
            )
            return self.http.send(built)

        outcome = self._run(attempt, request, budget)
        if self.tokens is not None and self._token_refused(outcome.response):
            token = self.tokens.token(self.http, stale=token)
            outcome = self._run(attempt, request, budget)
        return self._finish(request, outcome, identity)

    def _run(
        self, attempt: Callable[[], httpx.Response], request: Request, budget: Budget
    ) -> Outcome:
        return self.retrier.run(
            attempt, destination="edge", request_id=request.request_id, budget=budget
        )


class AsyncEdgeClient(_EdgeBase):
    """:class:`EdgeClient` over an ``httpx.AsyncClient``, for one event loop."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: EdgeSettings,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[float, float], float] = _random.uniform,
        refresh_state: bool = True,
        token_margin: float = 60.0,
    ) -> None:
        super().__init__(settings, http.timeout, clock=clock, refresh_state=refresh_state)
        self.http = http
        self.retrier = AsyncRetrier(policy, sleep=sleep, clock=monotonic, now=clock, random=random)
        self.tokens = (
            AsyncTokenProvider(settings, self.retrier, clock=monotonic, margin=token_margin)
            if self._auth
            else None
        )

    async def send(
        self, request: Request, identity: dict[str, Any], *, size_check: bool = True
    ) -> EdgeResult:
        """As :meth:`EdgeClient.send`."""
        request = self._prepare(request, identity, size_check)
        budget = self.retrier.budget()
        token = await self.tokens.token(self.http) if self.tokens is not None else None

        async def attempt() -> httpx.Response:
            built = self.http.build_request(
                request.method,
                request.url,
                content=request.body_bytes,
                headers=self._headers(request, token),
                timeout=self._timeout,
            )
            return await self.http.send(built)

        outcome = await self.retrier.run(
            attempt, destination="edge", request_id=request.request_id, budget=budget
        )
        if self.tokens is not None and self._token_refused(outcome.response):
            token = await self.tokens.token(self.http, stale=token)
            outcome = await self.retrier.run(
                attempt, destination="edge", request_id=request.request_id, budget=budget
            )
        return self._finish(request, outcome, identity)
