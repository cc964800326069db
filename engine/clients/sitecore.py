"""The Sitecore CDP / Personalize Stream API client (docs/destinations.md, "Sitecore CDP /
Personalize Stream API"): mints the session's browser id once, sends the event in direct
(GET) or proxy (POST) mode, retries per the policy, and mints a new browser id once when
Sitecore answers 404 (unknown browser id).

It reads and writes these keys of the session's ``identity``:

``sitecore_browser_id``             the browser id events are sent with
``sitecore_browser_id_confirmed``   ``True`` once Sitecore issued that id (browser/create);
                                    an application that takes the id from the visitor's
                                    browser sets it itself
``sitecore_customer_ref``           the guest reference browser/create answered

Sitecore has no idempotency key: a retry after a read timeout may record the event twice.
``RetryPolicy(retry_ambiguous=False)`` retries only failures that cannot have delivered it.
One session's events must be sent one at a time, in order (ADD before CONFIRM before
CHECKOUT): the caller owns that ordering.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from engine.clients.http import request_timeout
from engine.clients.responses import SitecoreResult
from engine.clients.retry import AsyncRetrier, DeliveryError, Outcome, Retrier, RetryPolicy
from engine.destinations.base import Request
from engine.destinations.sitecore import build_browser_request, with_browser_id
from engine.settings import SitecoreSettings

__all__ = [
    "BROWSER_ID",
    "BROWSER_ID_CONFIRMED",
    "CUSTOMER_REF",
    "AsyncSitecoreClient",
    "SitecoreClient",
]

BROWSER_ID = "sitecore_browser_id"
BROWSER_ID_CONFIRMED = "sitecore_browser_id_confirmed"
CUSTOMER_REF = "sitecore_customer_ref"


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return f": {text[:200]}" if text else ""


class _SitecoreBase:
    def __init__(self, settings: SitecoreSettings, http_timeout: httpx.Timeout) -> None:
        self.settings = settings
        self._timeout = request_timeout(http_timeout)

    @staticmethod
    def _check(request: Request) -> None:
        if request.destination != "sitecore" or request.kind != "event":
            raise ValueError("a Sitecore client sends Sitecore event requests")

    @staticmethod
    def _needs_browser(identity: dict[str, Any]) -> bool:
        return not (identity.get(BROWSER_ID) and identity.get(BROWSER_ID_CONFIRMED) is True)

    @staticmethod
    def _with_session_id(request: Request, identity: dict[str, Any]) -> Request:
        browser_id = identity[BROWSER_ID]
        if request.body.get("browser_id") == browser_id:
            return request
        return with_browser_id(request, browser_id)

    @staticmethod
    def _store_browser(outcome: Outcome, identity: dict[str, Any], rule: str) -> str:
        response = outcome.response
        body = _json(response)
        ref = body.get("ref") if isinstance(body, dict) else None
        if not 200 <= response.status_code < 300 or not isinstance(ref, str) or not ref:
            why = (
                "no browser id ('ref') in the answer"
                if 200 <= response.status_code < 300
                else f"HTTP {response.status_code}"
            )
            hint = " (check the client key)" if response.status_code == 401 else ""
            raise DeliveryError(
                f"sitecore: rule {rule!r}: creating a browser id failed: {why}{hint}"
                f"{_snippet(response)}",
                destination="sitecore",
                status=response.status_code,
                attempts=outcome.attempts,
                last_error=why,
            )
        identity[BROWSER_ID] = ref
        identity[BROWSER_ID_CONFIRMED] = True
        customer = body.get("customer_ref") if isinstance(body, dict) else None
        if isinstance(customer, str) and customer:
            identity[CUSTOMER_REF] = customer
        return ref

    @staticmethod
    def _finish(request: Request, outcome: Outcome, created: bool) -> SitecoreResult:
        response = outcome.response
        if not 200 <= response.status_code < 300:
            status = response.status_code
            meaning = {
                400: " (a required field such as browser_id or type is missing)",
                401: " (check the client key)",
                404: " (unknown browser id, even after minting a new one)",
            }.get(status, "")
            raise DeliveryError(
                f"sitecore: rule {request.rule!r}: HTTP {status}{meaning}{_snippet(response)}",
                destination="sitecore",
                status=status,
                attempts=outcome.attempts,
                last_error=f"HTTP {status}",
            )
        return SitecoreResult(
            status=response.status_code,
            browser_id=str(request.body.get("browser_id", "")),
            browser_created=created,
            request_body=request.body,
            response_body=_json(response),
            attempts=outcome.attempts,
            duration=outcome.duration,
        )


class SitecoreClient(_SitecoreBase):
    """Sends Sitecore events over a shared ``httpx.Client``. ``policy``, ``clock`` (epoch
    seconds, for ``Retry-After`` dates), ``monotonic``, ``sleep`` and ``random`` as for
    :class:`~engine.clients.EdgeClient`."""

    def __init__(
        self,
        http: httpx.Client,
        settings: SitecoreSettings,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        random: Callable[[float, float], float] = _random.uniform,
    ) -> None:
        super().__init__(settings, http.timeout)
        self.http = http
        self.retrier = Retrier(policy, sleep=sleep, clock=monotonic, now=clock, random=random)

    def _get(self, request: Request) -> Callable[[], httpx.Response]:
        def attempt() -> httpx.Response:
            built = self.http.build_request(
                request.method,
                request.url,
                content=request.body_bytes or None,
                headers=list(request.headers),
                timeout=self._timeout,
            )
            return self.http.send(built)

        return attempt

    def create_browser_id(self, identity: dict[str, Any], *, rule: str = "") -> str:
        """Mint a browser id (``browser/create``) and store it in ``identity``."""
        request = build_browser_request(self.settings, rule=rule)
        outcome = self.retrier.run(self._get(request), destination="sitecore")
        return self._store_browser(outcome, identity, rule)

    def send(self, request: Request, identity: dict[str, Any]) -> SitecoreResult:
        """Deliver one event (minting the session's browser id first when it has none).
        Raises :class:`~engine.clients.DeliveryError` on 400/401, on a second 404 and when
        retries run out."""
        self._check(request)
        created = False
        if self._needs_browser(identity):
            self.create_browser_id(identity, rule=request.rule)
            created = True
        request = self._with_session_id(request, identity)
        budget = self.retrier.budget()
        outcome = self.retrier.run(self._get(request), destination="sitecore", budget=budget)
        if outcome.response.status_code == 404:
            self.create_browser_id(identity, rule=request.rule)
            created = True
            request = self._with_session_id(request, identity)
            outcome = self.retrier.run(self._get(request), destination="sitecore", budget=budget)
        return self._finish(request, outcome, created)


class AsyncSitecoreClient(_SitecoreBase):
    """:class:`SitecoreClient` over an ``httpx.AsyncClient``, for one event loop."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: SitecoreSettings,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[float, float], float] = _random.uniform,
    ) -> None:
        super().__init__(settings, http.timeout)
        self.http = http
        self.retrier = AsyncRetrier(policy, sleep=sleep, clock=monotonic, now=clock, random=random)

    def _get(self, request: Request) -> Callable[[], Awaitable[httpx.Response]]:
        async def attempt() -> httpx.Response:
            built = self.http.build_request(
                request.method,
                request.url,
                content=request.body_bytes or None,
                headers=list(request.headers),
                timeout=self._timeout,
            )
            return await self.http.send(built)

        return attempt

    async def create_browser_id(self, identity: dict[str, Any], *, rule: str = "") -> str:
        """As :meth:`SitecoreClient.create_browser_id`."""
        request = build_browser_request(self.settings, rule=rule)
        outcome = await self.retrier.run(self._get(request), destination="sitecore")
        return self._store_browser(outcome, identity, rule)

    async def send(self, request: Request, identity: dict[str, Any]) -> SitecoreResult:
        """As :meth:`SitecoreClient.send`."""
        self._check(request)
        created = False
        if self._needs_browser(identity):
            await self.create_browser_id(identity, rule=request.rule)
            created = True
        request = self._with_session_id(request, identity)
        budget = self.retrier.budget()
        outcome = await self.retrier.run(self._get(request), destination="sitecore", budget=budget)
        if outcome.response.status_code == 404:
            await self.create_browser_id(identity, rule=request.rule)
            created = True
            request = self._with_session_id(request, identity)
            outcome = await self.retrier.run(
                self._get(request), destination="sitecore", budget=budget
            )
        return self._finish(request, outcome, created)
