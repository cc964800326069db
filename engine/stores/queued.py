"""What an outbox keeps of a send before its row is written: the stored-send header, and what
an outbox in memory queues at a push (compiled with the push's hot path: it runs for every
send a background push stores).

A send the engine built is queued as it is, ``(request, session, time)``: its row
(:func:`engine.stores.sqlite._queued_row`) is written when the delivery thread reads the queue
in, off the push's path. That is safe only when nothing in the row can fail then, so a send
qualifies when its text is ASCII (no lone surrogate SQLite cannot take), its time is one SQLite
stores as given, its headers are pairs of text, and its body is immutable: a POST's body is
bytes; a Sitecore event sent by GET is stored with the body its URL carries (its ``message``,
which the :class:`~engine.destinations.base.Request` says the body is), not the dict its caller
may still reach. Any other send is encoded at once (:func:`unframed`), so that one that cannot
be stored fails its push.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.destinations.base import Request
from engine.errors import OutboxError
from engine.stores import journal

__all__ = ["Queued", "as_queued", "queued_sends", "send_header", "stored_body", "unframed"]

# An encoded record (header, body), or a send stored as it is (request, session, time).
Queued = tuple[bytes, bytes] | tuple[Request, str, Any]

_INT64 = 1 << 63

# (Times are typed Any here: compiled code would make an int given for a float a float, and the
# clock's int is stored as it is.)


def stored_body(request: Request) -> Any:
    """The body to store beside the bytes: None when it is what the bytes say (a POST's
    JSON); else the dict (a GET's event travels in the URL)."""
    if request.method == "POST" and request.body_bytes:
        return None
    return request.body


def send_header(request: Request, session: str, now: Any) -> list[Any]:
    """A stored send's header, as a journal record and a Redis stream entry hold it (what
    :func:`engine.stores.sqlite._row` reads back)."""
    return [
        session,
        request.destination,
        request.rule,
        request.method,
        request.url,
        request.headers,
        stored_body(request),
        request.kind,
        request.event_id,
        request.request_id,
        now,
    ]


def unframed(request: Request, session: Any, now: Any) -> tuple[bytes, bytes]:
    """A journal record's two parts, unframed: the header and the body. (``session`` is any
    object: one that is not text is refused by the encoder, with the rule's name.)"""
    body = request.body_bytes
    try:
        return journal.encode_header(send_header(request, session, now), len(body)), body
    except (TypeError, ValueError) as exc:
        raise OutboxError(f"rule {request.rule!r}: the send cannot be stored: {exc}") from exc


def as_queued(request: Request, session: object, now: Any) -> Queued:
    """What an outbox in memory queues for one send (see the module's docstring)."""
    if type(session) is str and _storable_as_is(request, session, now):
        return (request, session, now)
    return unframed(request, session, now)


def queued_sends(items: Iterable[tuple[Request, str]], now: Any) -> list[Queued]:
    """What an outbox in memory queues for each ``(request, session)``."""
    return [as_queued(request, session, now) for request, session in items]


def _storable_as_is(request: Request, session: str, now: Any) -> bool:
    method = request.method
    if method == "POST":
        if not request.body_bytes:
            return False
    elif not (
        method == "GET"
        and request.destination == "sitecore"
        and request.kind == "event"
        and "message=" in request.url
    ):
        return False
    if not (type(now) is float or (type(now) is int and -_INT64 <= now < _INT64)):
        return False
    # One concatenation and one look: ASCII is a flag of the string, and text that is ASCII
    # holds no lone surrogate.
    if not (
        f"{session}{request.rule}{request.url}{request.event_id}{request.request_id}"
        f"{request.destination}{request.kind}"
    ).isascii():
        return False
    headers: Any = request.headers
    if type(headers) is not tuple:
        return False
    for pair in headers:
        if type(pair) is not tuple or len(pair) != 2:
            return False
        name, value = pair
        if not (type(name) is str and type(value) is str and name.isascii() and value.isascii()):
            return False
    return True
