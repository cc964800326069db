"""Destination clients: deliver the requests :mod:`engine.destinations` builds, over one shared
httpx client per engine (sync or async), with retries, Edge authentication, response parsing
and per-session identity (docs/destinations.md).

::

    from engine.clients import EdgeClient, IdentityGate, make_http_client

    http = make_http_client(connect=5, read=10)
    edge = EdgeClient(http, ruleset.settings.edge)
    gate = IdentityGate()
    with session.lock, gate.hold(session.id, session.identity):
        request = build_edge_request(fields, settings, identity=session.identity, ...)
        result = edge.send(request, session.identity)

No queue and no dispatcher live here: the caller owns ordering, durability and threads. A
session's identity dict is its own while its lock is held: an in-memory store packs an idle
session's parts away (README, "Garbage collection"), and a dict kept from before is then a
copy no longer read.
"""

from engine.clients.auth import AsyncTokenProvider, TokenProvider
from engine.clients.edge import TOKEN_EXPIRED, AsyncEdgeClient, EdgeClient, with_state
from engine.clients.http import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    make_async_http_client,
    make_http_client,
)
from engine.clients.identity import (
    AsyncIdentityGate,
    IdentityGate,
    apply_edge_response,
    cookie_prefix,
    has_identity,
    identity_from_cookies,
    prune_identity,
    set_cookie_headers,
    take_cookies,
)
from engine.clients.responses import EdgeResponse, EdgeResult, Problem, SitecoreResult
from engine.clients.retry import (
    RETRYABLE_STATUSES,
    AsyncRetrier,
    Budget,
    DeliveryError,
    Outcome,
    Retrier,
    RetryPolicy,
    parse_retry_after,
)
from engine.clients.sitecore import (
    BROWSER_ID,
    BROWSER_ID_CONFIRMED,
    CUSTOMER_REF,
    AsyncSitecoreClient,
    SitecoreClient,
)

__all__ = [
    "BROWSER_ID",
    "BROWSER_ID_CONFIRMED",
    "CUSTOMER_REF",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "RETRYABLE_STATUSES",
    "TOKEN_EXPIRED",
    "AsyncEdgeClient",
    "AsyncIdentityGate",
    "AsyncRetrier",
    "AsyncSitecoreClient",
    "AsyncTokenProvider",
    "Budget",
    "DeliveryError",
    "EdgeClient",
    "EdgeResponse",
    "EdgeResult",
    "IdentityGate",
    "Outcome",
    "Problem",
    "Retrier",
    "RetryPolicy",
    "SitecoreClient",
    "SitecoreResult",
    "TokenProvider",
    "apply_edge_response",
    "cookie_prefix",
    "has_identity",
    "identity_from_cookies",
    "make_async_http_client",
    "make_http_client",
    "parse_retry_after",
    "prune_identity",
    "set_cookie_headers",
    "take_cookies",
    "with_state",
]
