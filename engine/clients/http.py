"""The shared HTTP clients: one per engine, built with connect and read timeouts, a bounded
connection pool, no redirects (a redirect would resend nothing we want to resend) and no
cookie jar: one client serves every visitor, so a cookie set by the answer to one visitor's
request (Edge on a first-party domain sets the ``kndctr_*`` cookies so) must never ride on
another's. A visitor's cookies travel in the request built for them (``meta.state``) and come
back through :func:`~engine.clients.identity.set_cookie_headers`."""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from engine.destinations.base import ENGINE_VERSION

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "make_async_http_client",
    "make_http_client",
    "request_timeout",
]

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=30
)
USER_AGENT = f"tagengine/{ENGINE_VERSION}"


def make_http_client(
    *,
    connect: float = 5.0,
    read: float = 10.0,
    write: float = 10.0,
    pool: float = 5.0,
    limits: httpx.Limits = DEFAULT_LIMITS,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` for the destination clients: every timeout set, pooled
    connections, ``follow_redirects=False``, no cookies kept; ``transport`` replaces the
    network in tests."""
    return httpx.Client(transport=transport, **_options(connect, read, write, pool, limits))


def make_async_http_client(
    *,
    connect: float = 5.0,
    read: float = 10.0,
    write: float = 10.0,
    pool: float = 5.0,
    limits: httpx.Limits = DEFAULT_LIMITS,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """:func:`make_http_client` for asyncio."""
    return httpx.AsyncClient(transport=transport, **_options(connect, read, write, pool, limits))


def _options(
    connect: float, read: float, write: float, pool: float, limits: httpx.Limits
) -> dict[str, Any]:
    return {
        "timeout": httpx.Timeout(connect=connect, read=read, write=write, pool=pool),
        "limits": limits,
        "follow_redirects": False,
        "headers": {"User-Agent": USER_AGENT},
        "cookies": CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # none may set one
    }


def request_timeout(configured: httpx.Timeout) -> httpx.Timeout:
    """The client's timeouts with any unset one filled from :data:`DEFAULT_TIMEOUT`, so a
    request never waits forever to connect, read, write or get a pooled connection even on a
    client built without timeouts."""
    return httpx.Timeout(
        connect=DEFAULT_TIMEOUT.connect if configured.connect is None else configured.connect,
        read=DEFAULT_TIMEOUT.read if configured.read is None else configured.read,
        write=DEFAULT_TIMEOUT.write if configured.write is None else configured.write,
        pool=DEFAULT_TIMEOUT.pool if configured.pool is None else configured.pool,
    )
