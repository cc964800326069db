"""What every destination builder returns: one immutable :class:`Request`, plus the size check
and the small pure helpers the builders share (JSON serialization, null dropping, deep merge).

Nothing here does I/O or reads a clock: ids and times are parameters of the builders.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from engine.errors import EvaluationError, PayloadTooLarge

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


# The standard library's encoder, kept for what orjson does not do as json does: it decides
# for every output that holds a null (orjson writes NaN and Infinity as null, where json
# refuses them; bodies drop their nulls, so a null there is rare), integers beyond 64 bits,
# non-string keys and extreme depth. One encoder for all: json.dumps with options builds a
# new one at each call. Bodies are built from validated (acyclic) data, so the cycle check is
# left to the recursion limit.
_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
).encode


def serialize_bytes(value: Any, *, rule: str) -> bytes:
    """Compact JSON (UTF-8, non-ASCII kept) as sent on the wire; a value JSON cannot carry
    fails the rule. orjson writes it (a tenth of the time of :mod:`json`, for every send);
    both write the same text, but for the spelling of some floats (``0.00001`` for
    ``1e-05``), which parse to the same numbers."""
    data = _orjson(value)
    if data is not None:
        return data
    try:
        return _encode(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise EvaluationError(
            f"rule {rule!r}: the send holds a value JSON cannot carry: {exc}"
        ) from exc


def plain_json(value: Any) -> bytes | None:
    """``value``'s compact JSON when it holds only plain JSON values and no null (what
    :func:`serialize_bytes` writes, and what :func:`drop_nulls` would leave as it is), else
    ``None``. ``orjson.loads`` of it is then a copy of ``value`` sharing nothing with it."""
    return _orjson(value, _PLAIN_JSON)


def _orjson(value: Any, option: int = 0) -> bytes | None:
    """``value`` as orjson writes it, or ``None`` where :mod:`json` must decide instead:
    orjson refused it (an integer beyond 64 bits, a non-string key, extreme depth) or the
    output holds a null, which may be a NaN or Infinity orjson wrote as one."""
    try:
        data = orjson.dumps(value, option=option)
    except TypeError:
        return None
    return None if b"null" in data else data


def serialize(value: Any, *, rule: str) -> str:
    """:func:`serialize_bytes` as text (a Sitecore message travels in a URL)."""
    return serialize_bytes(value, rule=rule).decode()


# Printable ASCII that a URL query value escapes ('%' first: the escapes hold one), and the
# escape of each. urllib's quote() looks every byte up in Python; here each character that
# occurs is replaced in one C pass, and one that does not costs one C scan.
_UNRESERVED_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_UNRESERVED_TEXT = re.compile(r"[A-Za-z0-9_.~-]*")
_ESCAPED_ASCII = (
    ("%", "%25"),
    *(
        (char, f"%{ord(char):02X}")
        for char in map(chr, range(32, 127))
        if char not in _UNRESERVED_CHARS and char != "%"
    ),
)


def percent_encode(text: str) -> str:
    """``urllib.parse.quote(text, safe="")``: every character but ``A-Z a-z 0-9 _ . - ~``
    as ``%XX`` escapes of its UTF-8 bytes (a Sitecore message is a whole JSON event: this
    runs on every character of every direct-mode send)."""
    if _UNRESERVED_TEXT.fullmatch(text):  # ids, keys: nothing to escape
        return text
    for char, escape in _ESCAPED_ASCII:
        if char in text:
            text = text.replace(char, escape)
    if not (text.isascii() and text.isprintable()):
        # Control characters, DEL and non-ASCII: each distinct one once, as quote() has it.
        for char in {char for char in text if not " " <= char <= "~"}:
            text = text.replace(char, quote(char, safe=""))
    return text


def parse_bytes(data: bytes | str) -> Any:
    """JSON read back (stored bodies and headers), exactly as :mod:`json` reads it: orjson (a
    third of the time) unless the text may hold a number of 19 digits or more, which orjson
    would read as a float beyond 64 bits, or orjson refuses it (``NaN``, lone surrogates).
    Raises ``ValueError`` for what is not JSON."""
    if not _long_number(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


# Digits to "0", every other byte to a space: runs of digits found with bytes.find, in C.
_DIGIT_MASK = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_RUN = b"0" * 19


def _long_number(raw: bytes) -> bool:
    """Whether ``raw`` has a run of 19 digits or more that starts a number: after ``:``,
    ``,``, ``[``, a minus sign, blanks or nothing. (Runs inside strings, an ECID say, come
    after a quote or a letter.)"""
    masked = raw.translate(_DIGIT_MASK)
    start = masked.find(_RUN)
    while start >= 0:
        index = start - 1
        while index >= 0 and raw[index] in b" \t\r\n-":
            index -= 1
        if index < 0 or raw[index] in b":,[":
            return True
        end = masked.find(b" ", start)
        if end < 0:
            return False
        start = masked.find(_RUN, end)
    return False


def drop_nulls(value: Any) -> Any:
    """A deep copy of a JSON-like value without ``null``: keys whose value is ``None`` and
    ``None`` list items are removed, and an object left empty by that removal is removed too
    (an object that was written empty stays). Containers are always fresh copies."""
    kind = type(value)
    if kind is dict or kind is list:
        # Most bodies hold no null: then an orjson round trip is the copy, in C (a fifth of
        # the time). What orjson would change or refuse (a subclass, a datetime) takes the
        # walk below; a UUID or an enum member becomes the JSON value it would be on the wire
        # anyway.
        data = _orjson(value, _PLAIN_JSON)
        if data is not None:
            return orjson.loads(data)
    return _drop(value)


_PLAIN_JSON = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _drop(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return _drop_in_dict(value)
    if kind is list or kind is tuple:
        return _drop_in_list(value)
    if isinstance(value, Mapping):
        return _drop_in_dict(value)
    return value


# Exact types first: bodies are plain dicts and lists, and an isinstance check against an ABC
# costs more than the copy itself.
_PLAIN = PLAIN_TYPES = frozenset((str, int, float, bool))
"""The exact types of JSON scalars (a value of one has nothing to drop or copy)."""


def _drop_in_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if type(item) in _PLAIN:
            out[key] = item
            continue
        cleaned = _drop(item)
        if item and not cleaned and (type(item) is dict or isinstance(item, Mapping)):
            continue
        out[key] = cleaned
    return out


def _drop_in_list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [item if type(item) in _PLAIN else _drop(item) for item in value if item is not None]


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
