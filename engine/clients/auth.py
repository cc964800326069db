"""OAuth client credentials for the authenticated Edge host (research/adobe-edge.md §1.5): a
token from ``token_url``, cached until shortly before it expires, refreshed on demand.

The secret and the token never appear in a message, an exception or a log line.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from engine.clients.http import request_timeout
from engine.clients.retry import AsyncRetrier, DeliveryError, Outcome, Retrier
from engine.settings import EdgeSettings

__all__ = ["AsyncTokenProvider", "TokenProvider", "auth_configured"]

_ACCEPT = {"Accept": "application/json"}


def auth_configured(settings: EdgeSettings) -> bool:
    """Whether the settings ask for the authenticated host (a client id and secret)."""
    return bool(
        settings.client_id
        and settings.client_secret is not None
        and settings.client_secret.get_secret_value()
    )


class _Tokens:
    """The cache and the token request the sync and async providers share."""

    def __init__(
        self, settings: EdgeSettings, *, clock: Callable[[], float], margin: float
    ) -> None:
        if not auth_configured(settings):
            raise ValueError("the Edge settings have no client_id and client_secret")
        self._settings = settings
        self._clock = clock
        self._margin = margin
        self._token: str | None = None
        self._expires = 0.0
        self.fetches = 0

    def _cached(self, stale: str | None) -> str | None:
        token = self._token
        if token is None or (stale is not None and token == stale):
            return None
        if self._clock() >= self._expires:
            return None
        return token

    def _form(self) -> dict[str, str]:
        settings = self._settings
        assert settings.client_id and settings.client_secret is not None
        form = {
            "grant_type": "client_credentials",
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.get_secret_value(),
        }
        scopes = settings.scopes
        if isinstance(scopes, list):
            scopes = ",".join(scopes)
        if scopes:
            form["scope"] = scopes
        return form

    def _take(self, outcome: Outcome) -> str:
        response = outcome.response
        body: Any = None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            reason = body.get("error") if isinstance(body, dict) else None
            detail = f" ({reason})" if isinstance(reason, str) and len(reason) <= 100 else ""
            raise DeliveryError(
                f"edge: the token request to {self._settings.token_url} failed with HTTP "
                f"{response.status_code}{detail}",
                destination="edge",
                status=response.status_code,
                code=reason if isinstance(reason, str) else None,
                attempts=outcome.attempts,
                last_error=f"HTTP {response.status_code}{detail}",
            )
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise DeliveryError(
                f"edge: the token response from {self._settings.token_url} has no access_token",
                destination="edge",
                status=response.status_code,
                attempts=outcome.attempts,
            )
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        self._token = token
        self._expires = self._clock() + lifetime - min(self._margin, lifetime / 2)
        self.fetches += 1
        return token


class TokenProvider(_Tokens):
    """Thread-safe: concurrent callers share one token request."""

    def __init__(
        self,
        settings: EdgeSettings,
        retrier: Retrier,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 60.0,
    ) -> None:
        super().__init__(settings, clock=clock, margin=margin)
        self._retrier = retrier
        self._lock = threading.Lock()

    def token(self, http: httpx.Client, *, stale: str | None = None) -> str:
        """The cached token, or a new one when there is none, it expired, or it is ``stale``
        (the token a destination just refused)."""
        with self._lock:
            cached = self._cached(stale)
            if cached is not None:
                return cached
            timeout = request_timeout(http.timeout)
            form = self._form()
            outcome = self._retrier.run(
                lambda: http.post(
                    self._settings.token_url, data=form, headers=_ACCEPT, timeout=timeout
                ),
                destination="edge",
            )
            return self._take(outcome)


class AsyncTokenProvider(_Tokens):
    """:class:`TokenProvider` for one asyncio event loop."""

    def __init__(
        self,
        settings: EdgeSettings,
        retrier: AsyncRetrier,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 60.0,
    ) -> None:
        super().__init__(settings, clock=clock, margin=margin)
        self._retrier = retrier
        self._lock = asyncio.Lock()

    async def token(self, http: httpx.AsyncClient, *, stale: str | None = None) -> str:
        """As :meth:`TokenProvider.token`."""
        async with self._lock:
            cached = self._cached(stale)
            if cached is not None:
                return cached
            timeout = request_timeout(http.timeout)
            form = self._form()
            outcome = await self._retrier.run(
                lambda: http.post(
                    self._settings.token_url, data=form, headers=_ACCEPT, timeout=timeout
                ),
                destination="edge",
            )
            return self._take(outcome)
