"""What keeps the local servers (the emulator, ``tagengine dev``) local: ``Host`` and ``Origin``
checks against DNS rebinding and cross-site posts, JSON-only bodies, and bodies bounded while
they are read.

A web page the developer opens can post to ``http://127.0.0.1:<port>`` (a "simple" form or
``text/plain`` request needs no CORS preflight), and a page on a rebinding domain can even read
the answers, since the browser then thinks it talks to that domain. So:

* a request whose ``Origin`` is present and not a loopback origin is refused (a browser sends
  ``Origin`` on cross-origin posts; the engine, curl and httpx do not send one);
* a request that arrived on a loopback address but names another ``Host`` is refused (the
  rebinding page's host name is what its requests carry);
* bodies must be ``application/json``, which a page cannot send cross-site without a preflight
  the servers never grant, and are read chunk by chunk up to a limit, never whole first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from starlette.types import Message, Receive, Scope

__all__ = [
    "BodyTooLarge",
    "declares_body",
    "is_json",
    "is_loopback_address",
    "is_loopback_host",
    "is_loopback_origin",
    "read_bounded",
    "refusal",
    "replaying",
]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


class BodyTooLarge(Exception):
    """A request body is larger than the limit; reading stopped at ``read`` bytes."""

    def __init__(self, limit: int, read: int) -> None:
        super().__init__(f"the request body is larger than {limit:,} bytes")
        self.limit = limit
        self.read = read


def is_loopback_address(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 without brackets) is loopback:
    ``localhost``, ``127.0.0.0/8``, ``::1`` or an IPv4-mapped loopback address."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _split_host(value: str) -> str | None:
    """The host part of a ``Host`` header value (``name[:port]``, ``[v6][:port]``); ``None``
    when it is malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return host
    host, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    return host


def is_loopback_host(value: str, extra: Collection[str] = ()) -> bool:
    """Whether a ``Host`` header value names a loopback host (any port), or one of ``extra``."""
    host = _split_host(value)
    if host is None or not host:
        return False
    return is_loopback_address(host) or host.lower() in extra


def is_loopback_origin(value: str) -> bool:
    """Whether an ``Origin`` header value is ``http(s)://<loopback host>[:port]``."""
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and is_loopback_address(host)


def refusal(
    scope: Scope, headers: Mapping[str, str], extra_hosts: Collection[str] = ()
) -> str | None:
    """Why a request must be refused with ``403`` (see the module docstring), or ``None``.
    ``headers`` are lower-cased; the local address is the ASGI ``server`` (the socket the
    connection arrived on; unknown counts as loopback, the strict case)."""
    origin = headers.get("origin")
    if origin is not None and not is_loopback_origin(origin):
        return f"cross-site request refused: Origin {origin!r} is not a loopback origin"
    server = scope.get("server")
    local = server[0] if server else None
    host = headers.get("host")
    on_loopback = local is None or is_loopback_address(str(local))
    if (
        host is not None
        and on_loopback
        and not is_loopback_host(host, {h.lower() for h in extra_hosts})
    ):
        return (
            f"request refused: Host {host!r} is not a loopback name or address "
            "(127.0.0.1, ::1 or localhost); a page on another domain may be rebinding to it"
        )
    return None


def is_json(headers: Mapping[str, str]) -> bool:
    """Whether the ``Content-Type`` is ``application/json`` (parameters such as ``charset``
    allowed)."""
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    return media == "application/json"


def declares_body(headers: Mapping[str, str]) -> bool:
    """Whether the request says it has a body (a non-zero ``Content-Length``, or chunked)."""
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "").strip()
    return bool(length) and length != "0"


async def read_bounded(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes | None:
    """The request body, read one ASGI message at a time; :class:`BodyTooLarge` as soon as it
    (or its declared ``Content-Length``) exceeds ``limit`` bytes, so memory stays bounded
    whatever is sent; ``None`` when the client disconnects first. The server discards the
    rest of a body left unread."""
    declared = headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, 0)
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise BodyTooLarge(limit, len(chunks))
        if not message.get("more_body", False):
            return bytes(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body`` (read already, bounded) once, then passes
    through (a later ``receive()`` only ever waits for the client to disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
