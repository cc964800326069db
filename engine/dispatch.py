"""Delivery: the one place that owns the engine's HTTP client and talks to destinations.

The runtime builds requests (pure); :class:`Dispatcher` sends them with the destination clients
(:mod:`engine.clients`: retries, Edge authentication, identity, Sitecore browser ids) and writes
what came back onto each :class:`~engine.results.Send`. A session's sends go out one at a time,
in order, under the session's lock (the engine holds it), so its identity — the ECID and state
entries of the first answer — is in every later request.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from engine.clients import (
    DeliveryError,
    EdgeClient,
    RetryPolicy,
    SitecoreClient,
    make_http_client,
)
from engine.errors import DispatchError, EngineError
from engine.results import Send
from engine.runtime import Targets
from engine.sessions import Session
from engine.settings import EdgeSettings, SitecoreSettings

__all__ = ["Dispatcher"]


class Dispatcher:
    """Sends built requests over one shared ``httpx.Client`` (pooled, timeouts always set).

    ``http`` may be injected (an ``httpx.Client`` with a custom transport, in tests);
    ``policy`` bounds retries (see :class:`~engine.clients.RetryPolicy`).
    """

    def __init__(
        self, *, http: httpx.Client | None = None, policy: RetryPolicy | None = None
    ) -> None:
        self._owns_http = http is None
        self.http = http if http is not None else make_http_client()
        self.policy = policy
        self._clients: dict[int, tuple[Any, EdgeClient | SitecoreClient]] = {}
        self._lock = threading.Lock()

    def _edge(self, settings: EdgeSettings) -> EdgeClient:
        client = self._client(settings)
        assert isinstance(client, EdgeClient)
        return client

    def _sitecore(self, settings: SitecoreSettings) -> SitecoreClient:
        client = self._client(settings)
        assert isinstance(client, SitecoreClient)
        return client

    def _client(self, settings: EdgeSettings | SitecoreSettings) -> EdgeClient | SitecoreClient:
        # One client per settings object (a new ruleset version brings new ones): clients hold
        # the OAuth token cache, which must not outlive the credentials it was made with.
        with self._lock:
            known = self._clients.get(id(settings))
            if known is not None and known[0] is settings:
                return known[1]
            client: EdgeClient | SitecoreClient
            if isinstance(settings, EdgeSettings):
                client = EdgeClient(self.http, settings, policy=self.policy)
            else:
                client = SitecoreClient(self.http, settings, policy=self.policy)
            self._clients[id(settings)] = (settings, client)
            return client

    def deliver(self, send: Send, session: Session, targets: Targets) -> None:
        """Send one request and record the answer on ``send``; never raises for a delivery
        problem (it is on ``send.error``, with the status and attempts)."""
        started = time.perf_counter()
        try:
            if send.destination == "edge":
                assert targets.edge is not None
                edge = self._edge(targets.edge).send(send.request, session.identity)
                send.status, send.attempts = edge.status, edge.attempts
                send.response = edge.to_json()
            else:
                assert targets.sitecore is not None
                result = self._sitecore(targets.sitecore).send(send.request, session.identity)
                send.status, send.attempts = result.status, result.attempts
                send.response = result.to_json()
        except DeliveryError as error:
            send.status, send.attempts = error.status, error.attempts
            send.error = str(error)
        except (DispatchError, EngineError) as error:
            send.error = str(error)
        send.duration = time.perf_counter() - started

    def close(self) -> None:
        if self._owns_http:
            self.http.close()
