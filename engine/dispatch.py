"""Delivery: the one place that owns the engine's HTTP client and talks to destinations.

The runtime builds requests (pure); :class:`Dispatcher` sends them with the destination clients
(:mod:`engine.clients`: retries, Edge authentication, identity, Sitecore browser ids) and writes
what came back onto each :class:`~engine.results.Send`. A session's sends go out one at a time,
in order, under the session's lock (the engine holds it), so its identity — the ECID and state
entries of the first answer — is in every later request. :meth:`Dispatcher.deliver_many`
sends a run of consecutive Edge collect sends as one request
(:func:`~engine.destinations.edge.batch_collect`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from engine.clients import (
    DeliveryError,
    EdgeClient,
    EdgeResult,
    RetryPolicy,
    SitecoreClient,
    SitecoreResult,
    make_http_client,
)
from engine.destinations.base import Request
from engine.destinations.edge import MAX_BATCH_EVENTS, batch_collect
from engine.errors import DispatchError, EngineError, PayloadTooLarge
from engine.results import Send
from engine.runtime import Targets, new_id
from engine.sessions import Session
from engine.settings import EdgeSettings, SitecoreSettings

__all__ = ["Dispatcher", "record_answer", "refused"]


class Dispatcher:
    """Sends built requests over one shared ``httpx.Client`` (pooled, timeouts always set).

    ``http`` may be injected (an ``httpx.Client`` with a custom transport, in tests; it
    serves every visitor, so give it no cookie jar of its own, as
    :func:`~engine.clients.make_http_client` does);
    ``policy`` bounds retries (see :class:`~engine.clients.RetryPolicy`); ``request_id``
    makes the ``requestId`` of each merged collect request (a UUID v4 by default).
    ``sleep`` is how the clients wait between retries; set it before the first delivery
    (background delivery makes the waits interruptible at shutdown).
    """

    def __init__(
        self,
        *,
        http: httpx.Client | None = None,
        policy: RetryPolicy | None = None,
        request_id: Callable[[], str] | None = None,
    ) -> None:
        self._owns_http = http is None
        self.http = http if http is not None else make_http_client()
        self.policy = policy
        self._request_id = request_id if request_id is not None else new_id
        self.sleep: Callable[[float], object] = time.sleep
        self._clients: dict[int, tuple[Any, EdgeClient | SitecoreClient]] = {}
        self._lock = threading.Lock()

    def edge_client(self, settings: EdgeSettings) -> EdgeClient:
        """The Edge client for ``settings`` (made once per settings object)."""
        client = self._client(settings)
        assert isinstance(client, EdgeClient)
        return client

    def sitecore_client(self, settings: SitecoreSettings) -> SitecoreClient:
        """The Sitecore client for ``settings`` (made once per settings object)."""
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
                client = EdgeClient(self.http, settings, policy=self.policy, sleep=self.sleep)
            else:
                client = SitecoreClient(self.http, settings, policy=self.policy, sleep=self.sleep)
            self._clients[id(settings)] = (settings, client)
            return client

    def deliver(self, send: Send, session: Session, targets: Targets) -> None:
        """Send one request and record the answer on ``send``; never raises for a delivery
        problem (it is on ``send.error``, with the status and attempts)."""
        self.send(send.request, (send,), session.identity, targets)

    def deliver_many(
        self,
        sends: Sequence[Send],
        session: Session,
        targets: Targets,
        *,
        max_events: int = MAX_BATCH_EVENTS,
    ) -> None:
        """Deliver one session's ``sends`` in order, as :meth:`deliver` would one by one,
        except that each run of consecutive Edge collect sends that can share a request goes
        as one (at most ``max_events`` events and 64 KB: see
        :func:`~engine.destinations.edge.batch_collect`), through the same Edge client path
        (size check, state refresh, retries, authentication, identity).

        Every send of a batch gets the batch's ``status``, ``attempts`` and ``duration``, and
        either its ``error`` or its ``response``: the batch's answer, with the send's own
        ``event_id``; ``request_id`` and ``request_body`` are the batch's. ``send.request``
        stays the request built for the send. Never raises for a delivery problem.
        """
        batches = batch_collect(
            [send.request for send in sends], request_id=self._request_id, max_events=max_events
        )
        for batch in batches:
            members = [sends[index] for index in batch.members]
            if len(members) == 1:
                self.deliver(members[0], session, targets)
            elif refused(self.send(batch.request, members, session.identity, targets)):
                for send in members:  # one bad event must not sink the others: each alone
                    self.deliver(send, session, targets)

    def send(
        self,
        request: Request,
        sends: Sequence[Send],
        identity: dict[str, Any],
        targets: Targets,
    ) -> EngineError | ValueError | None:
        """Send ``request`` (which carries the events of ``sends``: one, or an Edge collect
        batch) with the session's ``identity``, through the client of its destination, and
        record the answer on each send (:func:`record_answer`); the failure, if any. Raises
        only for what is no delivery problem (an interrupted retry wait, say)."""
        started = time.perf_counter()
        status: int | None = None
        attempts: int | None = None
        response: dict[str, Any] | None = None
        error: str | None = None
        failure: EngineError | ValueError | None = None
        try:
            result: EdgeResult | SitecoreResult
            if request.destination == "edge":
                if targets.edge is None:
                    raise DispatchError(
                        "edge: the ruleset has no edge settings", destination="edge"
                    )
                result = self.edge_client(targets.edge).send(request, identity)
            else:
                if targets.sitecore is None:
                    raise DispatchError(
                        "sitecore: the ruleset has no sitecore settings", destination="sitecore"
                    )
                result = self.sitecore_client(targets.sitecore).send(request, identity)
            status, attempts, response = result.status, result.attempts, result.to_json()
        except DeliveryError as problem:
            status, attempts, error, failure = (
                problem.status,
                problem.attempts,
                str(problem),
                problem,
            )
        except (EngineError, ValueError) as problem:
            error, failure = str(problem), problem
        record_answer(sends, status, attempts, response, error, time.perf_counter() - started)
        return failure

    def close(self) -> None:
        if self._owns_http:
            self.http.close()


# Edge's refusals that hold for every send of a request alike, whatever it carries.
_NOT_FOR_CONTENT = frozenset({"EXEG-0003-400", "EXEG-0106-400", "EXEG-0113-400"})


def refused(failure: BaseException | None) -> bool:
    """Whether Edge refused a request for what it carries (a 400 or 413 about the body, or a
    body too large to send), so that each send of a refused batch may go through alone; not
    for an unknown datastream or override, nor a refusal by the token server."""
    if isinstance(failure, PayloadTooLarge):
        return True
    return (
        isinstance(failure, DeliveryError)
        and failure.status in (400, 413)
        and failure.request_id is not None  # Edge's answer to the request, not the token's
        and failure.code not in _NOT_FOR_CONTENT
    )


def record_answer(
    sends: Sequence[Send],
    status: int | None,
    attempts: int | None,
    response: dict[str, Any] | None,
    error: str | None,
    duration: float,
) -> None:
    """Write what came back for one request onto the ``sends`` it carried, in place of what
    they held (a send may go again alone after its batch was refused): the ``status``,
    ``attempts`` (``None``: none was made) and ``duration``, and the ``response`` (with each
    send's own ``event_id`` when they are several) or else the ``error``."""
    for send in sends:
        send.status, send.attempts, send.duration = status, attempts or 0, duration
        if response is not None:
            send.response = (
                response if len(sends) == 1 else {**response, "event_id": send.request.event_id}
            )
            send.error = None
        else:
            send.response, send.error = None, error
