"""What every destination builder returns: one immutable :class:`Request`, plus the size check
and the small pure helpers the builders share (deep merge here; JSON serialization, null
dropping and percent-encoding in :mod:`engine.destinations.encoding`, re-exported).

Nothing here does I/O or reads a clock: ids and times are parameters of the builders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import orjson

from engine.destinations.encoding import (
    PLAIN_TYPES,
    drop_nulls,
    parse_bytes,
    percent_encode,
    plain_json,
    serialize,
    serialize_bytes,
)
from engine.errors import PayloadTooLarge

__all__ = [
    "EDGE_SIZE_LIMIT",
    "ENGINE_VERSION",
    "PLAIN_TYPES",
    "READ_BACK",
    "Request",
    "check_size",
    "deep_merge",
    "drop_nulls",
    "largest_fields",
    "new_request",
    "parse_bytes",
    "percent_encode",
    "plain_json",
    "serialize",
    "serialize_bytes",
]

EDGE_SIZE_LIMIT = 65536
"""Edge's guardrail: 64 KB of JSON per request (``EXEG-0112-413`` above it)."""

try:
    ENGINE_VERSION: str = metadata.version("tagengine")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    ENGINE_VERSION = "0.0.0"

Destination = Literal["edge", "sitecore"]
Kind = Literal["interact", "collect", "event", "browser", "consent"]


_put = object.__setattr__

READ_BACK: dict[str, Any] = {}
"""A :class:`Request`'s ``body`` given as this: the body is ``body_bytes`` read back (a copy
sharing nothing), parsed when first read."""


@dataclass(frozen=True, slots=True, init=False)
class Request:
    """The exact HTTP request a destination receives for one send.

    ``body`` is the JSON-like dict sent; for a Sitecore direct-mode GET it is the event object
    that travels URL-encoded in the ``message`` parameter. ``body_bytes`` is the exact POST
    body (compact JSON, UTF-8, non-ASCII kept); it is empty for a GET. ``headers`` never hold
    credentials: authentication headers are added at dispatch time. For Edge, ``event_id`` is
    the event's ``xdm._id`` and ``request_id`` the ``requestId`` query parameter.
    """

    destination: Destination
    rule: str
    method: Literal["POST", "GET"]
    url: str
    headers: tuple[tuple[str, str], ...]
    body: dict[str, Any]
    body_bytes: bytes
    kind: Kind
    event_id: str | None = None
    request_id: str | None = None

    def __init__(
        self,
        destination: Destination,
        rule: str,
        method: Literal["POST", "GET"],
        url: str,
        headers: tuple[tuple[str, str], ...],
        body: dict[str, Any],
        body_bytes: bytes,
        kind: Kind,
        event_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        # The frozen dataclass's own __init__, with its setter bound once: one is built for
        # every send.
        put = _put
        put(self, "destination", destination)
        put(self, "rule", rule)
        put(self, "method", method)
        put(self, "url", url)
        put(self, "headers", headers)
        if body is not READ_BACK:  # else read from body_bytes when first asked for
            put(self, "body", body)
        put(self, "body_bytes", body_bytes)
        put(self, "kind", kind)
        put(self, "event_id", event_id)
        put(self, "request_id", request_id)

    if not TYPE_CHECKING:  # (hidden from mypy: any other name stays an error there)

        def __getattr__(self, name: str) -> Any:
            # Only for an unset slot: ``body`` of a request built with READ_BACK. Most
            # bodies are never read (the wire takes body_bytes): parsing them on every send
            # was a tenth of an Edge send's cost. Parsed once, then an ordinary slot.
            if name == "body":
                body = orjson.loads(self.body_bytes)
                _put(self, "body", body)
                return body
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def event(self) -> dict[str, Any]:
        """The event as the destination sees it: Edge's ``event``/``events[0]`` object (where
        ``xdm`` and ``data`` live), or the Sitecore event object itself."""
        if self.destination == "edge":
            if "event" in self.body:
                event: dict[str, Any] = self.body["event"]
                return event
            first: dict[str, Any] = self.body["events"][0]
            return first
        return self.body

    @property
    def size(self) -> int:
        """Bytes that count against a size limit: the body of a POST, the URL of a GET."""
        return len(self.body_bytes) if self.method == "POST" else len(self.url.encode())


class _Building:
    """A :class:`Request` while :data:`new_request` builds it: the same slots, assignable,
    then made a Request by ``__class__`` assignment (CPython allows it between classes whose
    instances have the same layout), which the frozen class's own ``__init__`` cannot do."""

    __slots__ = Request.__slots__

    def __init__(
        self,
        destination: Destination,
        rule: str,
        method: Literal["POST", "GET"],
        url: str,
        headers: tuple[tuple[str, str], ...],
        body: dict[str, Any],
        body_bytes: bytes,
        kind: Kind,
        event_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.destination = destination
        self.rule = rule
        self.method = method
        self.url = url
        self.headers = headers
        if body is not READ_BACK:  # else read from body_bytes when first asked for
            self.body = body
        self.body_bytes = body_bytes
        self.kind = kind
        self.event_id = event_id
        self.request_id = request_id
        self.__class__ = Request  # type: ignore[assignment]


new_request = cast("type[Request]", _Building)
"""``Request(...)`` for the builders, once per send, in a third of its time: the slots set as
an ordinary class sets them, not by ten ``object.__setattr__`` calls past the frozen guard."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``base`` as the Web SDK does: objects merge recursively, arrays and
    scalars from ``over`` replace. Neither input is changed."""
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = deep_merge(current, value)
        else:
            out[key] = value
    return out


def _json_size(value: Any) -> int:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):  # pragma: no cover - serialize() already refused it
        return 0
    return len(text.encode())


def _candidates(fields: Mapping[str, Any]) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for key, value in fields.items():
        if isinstance(value, Mapping) and value:
            found.extend((f"{key}.{inner}", _json_size(v)) for inner, v in value.items())
        else:
            found.append((key, _json_size(value)))
    return found


def largest_fields(request: Request, count: int = 3) -> list[tuple[str, int]]:
    """The ``count`` biggest parts of a request, as ``(path, bytes)``, biggest first.

    A part is a second-level path under an object-valued top-level field of the event
    (``xdm.productListItems``, ``data.__adobe``, Sitecore ``ext.productSku``) or a top-level
    field whose value is not a non-empty object (``page``, ``identifiers``). For Edge, the
    request-level ``query`` and ``meta`` fields are candidates too (``meta.state``,
    ``query.personalization``). A part's size is that of its compact JSON value, in UTF-8
    bytes; ties are broken by path so the message is stable.
    """
    found = _candidates(request.event)
    if request.destination == "edge":
        found.extend(
            _candidates({k: v for k, v in request.body.items() if k not in ("event", "events")})
        )
    found.sort(key=lambda item: (-item[1], item[0]))
    return found[:count]


def check_size(request: Request, limit: int = EDGE_SIZE_LIMIT) -> None:
    """Refuse a request above ``limit`` bytes (:attr:`Request.size`) before any network call.

    The :class:`~engine.errors.PayloadTooLarge` message names the rule, the size, the limit
    and the three largest fields (see :func:`largest_fields`), e.g. ``rule 'Purchase':
    request is 70,213 bytes, above the 65,536-byte limit; largest fields:
    xdm.productListItems (61,002 bytes), data.__adobe (4,100 bytes), xdm.web (300 bytes)``.
    """
    size = request.size
    if size <= limit:
        return
    parts = ", ".join(f"{path} ({n:,} bytes)" for path, n in largest_fields(request))
    message = f"rule {request.rule!r}: request is {size:,} bytes, above the {limit:,}-byte limit"
    if parts:
        message += f"; largest fields: {parts}"
    raise PayloadTooLarge(message, destination=request.destination, request_id=request.request_id)


def is_finite_scalar(value: Any) -> bool:
    """A string, boolean, integer or finite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | bool | int)


def with_origin(request: Request, base: str) -> Request:
    """``request`` sent to the scheme and host of ``base`` instead, path and query kept (a
    send stored for one Edge or Sitecore, delivered to another: the emulator, a proxy)."""
    target, url = urlsplit(base), urlsplit(request.url)
    moved = urlunsplit((target.scheme, target.netloc, url.path, url.query, url.fragment))
    return request if moved == request.url else replace(request, url=moved)
