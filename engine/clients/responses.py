"""What the destinations answer, parsed with pydantic, and the results the clients return
(docs/destinations.md, "Response → result"; research/adobe-edge.md §3).

Edge may add objects and fields without notice, so every model accepts extra fields, a handle
of an unknown type is kept raw, and a payload item that does not have the documented shape is
skipped (it is still in ``response_body``) instead of failing a send Edge accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from engine.clients.retry import error_code

__all__ = [
    "DestinationItem",
    "EdgeResponse",
    "EdgeResult",
    "Handle",
    "IdentityItem",
    "LocationHintItem",
    "Problem",
    "Proposition",
    "SitecoreResult",
    "StateEntry",
    "parse_edge_body",
    "payload_items",
    "raw_items",
]


M = TypeVar("M", bound=BaseModel)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(_Open):
    """An RFC 7807 problem: a fatal error body, or one item of ``errors``/``warnings``."""

    type: str | None = None
    status: int | None = None
    title: str | None = None
    detail: str | None = None
    report: dict[str, Any] | None = None

    @property
    def code(self) -> str | None:
        """The ``EXEG-NNNN-SSS`` code that ends ``type``."""
        return error_code(self.type)


class Handle(_Open):
    """One ``handle[]`` entry: ``type``, ``payload`` items, ``eventIndex`` on event-scoped ones."""

    type: str
    payload: Any = None
    eventIndex: Any = None


class EdgeResponse(_Open):
    """A 2xx Edge body: ``{requestId, handle[], errors[]?, warnings[]?}``."""

    requestId: str | None = None
    handle: list[Handle] = []
    errors: list[Problem] = []
    warnings: list[Problem] = []

    @field_validator("handle", "errors", "warnings", mode="before")
    @classmethod
    def _objects_only(cls, value: Any, info: ValidationInfo) -> Any:
        """Keep only the list's objects (handles: those with a text ``type``), so one odd
        entry does not hide the others."""
        if not isinstance(value, list):
            return value
        typed = info.field_name == "handle"
        return [
            item
            for item in value
            if isinstance(item, dict) and (not typed or isinstance(item.get("type"), str))
        ]


class Namespace(_Open):
    code: str


class IdentityItem(_Open):
    """``identity:result``: ``{id, namespace: {code}}``."""

    id: str
    namespace: Namespace


class StateEntry(_Open):
    """``state:store``: ``{key, value, maxAge?, attrs?: {SameSite}}``."""

    key: str
    value: str
    maxAge: int | None = None
    attrs: dict[str, Any] | None = None


class LocationHintItem(_Open):
    """``locationHint:result``: ``{scope, hint, ttlSeconds}``."""

    scope: str
    hint: str
    ttlSeconds: int | None = None


class Proposition(_Open):
    """``personalization:decisions``: ``{id, scope, scopeDetails, items[]}``."""

    id: str
    scope: str | None = None
    scopeDetails: dict[str, Any] | None = None
    items: list[dict[str, Any]] = []


class Segment(_Open):
    id: str


class DestinationItem(_Open):
    """``activation:pull``: ``{id, segments: [{id}]}``."""

    id: str
    segments: list[Segment] = []


def payload_items(handles: Sequence[Handle], kind: str, model: type[M]) -> list[M]:
    """The payload items of every handle of type ``kind`` that have ``model``'s shape."""
    out: list[M] = []
    for handle in handles:
        if handle.type != kind:
            continue
        for item in handle.payload if isinstance(handle.payload, list) else ():
            try:
                out.append(model.model_validate(item))
            except ValidationError:
                continue
    return out


def parse_edge_body(body: Any) -> tuple[EdgeResponse, list[dict[str, Any]]]:
    """A 2xx body as :class:`EdgeResponse`, plus local warnings about its shape. A body that
    is not the documented object gives an empty response and one warning."""
    try:
        return EdgeResponse.model_validate(body), []
    except ValidationError as error:
        problem = {
            "type": "tagengine:unexpected-response",
            "title": "The Edge response does not have the documented shape",
            "detail": f"{error.error_count()} validation error(s); see response_body",
        }
        return EdgeResponse(), [problem]


@dataclass(slots=True)
class EdgeResult:
    """One Edge send's answer.

    ``propositions`` carry ``renderAttempted: false`` (a server renders nothing); ``decisions``
    is the same list without it (the legacy shape). ``destinations`` are ``activation:pull``
    ``{id, segments}``, ``inferences`` the ``rtml:inferences`` payloads. ``handles`` holds the
    raw handles the result does not consume: ``activation:push`` and ``identity:exchange``
    (URLs to call and cookies to set in the browser) and unknown types. ``errors`` and
    ``warnings`` are the body's non-fatal problems (a 207 has errors). ``request_body`` and
    ``response_body`` are the exact JSON sent and received (``None`` for a 202/204 without a
    body). ``request_id`` is Edge's (``<ours>-<16 hex>``); ``attempts`` counts HTTP attempts,
    ``duration`` is seconds from the first attempt to the answer.
    """

    status: int
    request_id: str | None
    kind: str
    event_id: str | None
    propositions: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    destinations: list[dict[str, Any]] = field(default_factory=list)
    inferences: list[Any] = field(default_factory=list)
    handles: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    ecid: str | None = None
    location_hint: str | None = None
    request_body: dict[str, Any] | None = None
    response_body: Any = None
    attempts: int = 1
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-like data (fields by name; the lists and bodies are shared)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class SitecoreResult:
    """One Sitecore send's answer: the status (201 on success), the browser id the event was
    sent with, whether this send minted it, the exact event sent and the body received."""

    status: int
    browser_id: str
    browser_created: bool
    request_body: dict[str, Any]
    response_body: Any = None
    attempts: int = 1
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-like data (fields by name)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def raw_items(
    raw_handles: Sequence[Any], kind: str, model: type[BaseModel]
) -> list[dict[str, Any]]:
    """Copies of the raw payload items of every handle of type ``kind`` that have ``model``'s
    shape, as received (no defaults added)."""
    out: list[dict[str, Any]] = []
    for handle in raw_handles:
        if not isinstance(handle, dict) or handle.get("type") != kind:
            continue
        payload = handle.get("payload")
        for item in payload if isinstance(payload, list) else ():
            if not isinstance(item, dict):
                continue
            try:
                model.model_validate(item)
            except ValidationError:
                continue
            out.append(dict(item))
    return out
