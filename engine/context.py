"""What an app knows of the visitor behind a push: :class:`VisitorContext`.

A server-side send comes from the server, so Edge would geolocate and device-detect the server
unless the visitor's own request headers travel with it. Adobe's Server SDK forwards exactly
these, and never the visitor's ``Cookie``, ``Authorization`` or ``Referer`` (Experience League,
"Context and forwarded headers": ``collection/server-js/server-js-concepts/context-and-headers``):

- ``User-Agent`` and ``Accept-Language``;
- the user-agent client hints ``Sec-CH-UA``, ``-Mobile``, ``-Platform``, ``-Platform-Version``,
  ``-Arch``, ``-Bitness``, ``-Full-Version-List``, ``-Model``, ``-WoW64``;
- the visitor's IP, which tagengine sends as ``X-Forwarded-For`` (one address: the one this
  context resolved, full, truncated or not at all as the engine's ``forward_ip`` says);

and it fills ``xdm.web.webPageDetails.URL`` from ``Referer`` when the event does not set it
(``…/server-js-sendevent/xdm``, "Data the SDK adds"). The context is part of the send: it is
stored with it in the outbox, so a delivery minutes later still describes the right visitor.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from engine.errors import PushError

__all__ = ["CLIENT_HINTS", "ForwardIp", "VisitorContext"]

CLIENT_HINTS = (
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "sec-ch-ua-platform-version",
    "sec-ch-ua-arch",
    "sec-ch-ua-bitness",
    "sec-ch-ua-full-version-list",
    "sec-ch-ua-model",
    "sec-ch-ua-wow64",
)
"""The client hints forwarded, lower case, in the order they are sent."""

_HINT_NAMES = {name: "Sec-CH-UA" + name[len("sec-ch-ua") :].title() for name in CLIENT_HINTS}
_HINT_NAMES["sec-ch-ua-wow64"] = "Sec-CH-UA-WoW64"

ForwardIp = Literal["full", "truncated", "none"]
FORWARD_IP: tuple[ForwardIp, ...] = ("full", "truncated", "none")

MAX_VALUE = 2048  # characters of one header value: a browser's are far shorter
_NOT_HEADER = re.compile(r"[^\t\x20-\x7e\x80-\xff]")  # one pass: linear in the value

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _header_value(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PushError(f"visitor context: {name} must be a string, not {type(value).__name__}")
    # A header value cannot carry control characters (CR/LF would split the request) or
    # anything beyond Latin-1; browsers send ASCII.
    if _NOT_HEADER.search(value):
        raise PushError(f"visitor context: {name} holds characters a header cannot carry")
    if len(value) > MAX_VALUE:
        raise PushError(
            f"visitor context: {name} is {len(value):,} characters (at most {MAX_VALUE:,})"
        )
    return value.strip() or None


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port (Forwarded, some proxies)
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket's ::ffff:a.b.c.d is the IPv4 visitor a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


@dataclass(frozen=True, slots=True)
class VisitorContext:
    """What the app knows of the visitor of a push, forwarded with the push's Edge sends.

    Build it with :meth:`from_headers` from the visitor's request, or field by field. Values
    are checked when it is made: a malformed one raises :class:`~engine.errors.PushError`
    naming it (made inside ``push``, nothing of the session changes).
    """

    user_agent: str | None = None
    accept_language: str | None = None
    client_hints: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None
    referer: str | None = None
    bot: bool = False  # a crawler, by its user agent (the collect endpoint's verdict)

    def __post_init__(self) -> None:
        if not isinstance(self.bot, bool):
            raise PushError(f"visitor context: bot must be true or false, not {self.bot!r}")
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "user_agent", _header_value("user_agent", self.user_agent))
        set_(self, "accept_language", _header_value("accept_language", self.accept_language))
        set_(self, "referer", _header_value("referer", self.referer))
        if not isinstance(self.client_hints, Mapping):
            raise PushError("visitor context: client_hints must be a mapping of header to value")
        hints: dict[str, str] = {}
        for name, value in self.client_hints.items():
            key = name.lower() if isinstance(name, str) else name
            if key not in _HINT_NAMES:
                raise PushError(
                    f"visitor context: {name!r} is not a user-agent client hint "
                    f"(one of {', '.join(_HINT_NAMES.values())})"
                )
            checked = _header_value(_HINT_NAMES[key], value)
            if checked is not None:
                hints[key] = checked
        set_(self, "client_hints", {k: hints[k] for k in CLIENT_HINTS if k in hints})
        if self.ip is not None:
            if not isinstance(self.ip, str) or _address(self.ip) is None:
                raise PushError(f"visitor context: ip {self.ip!r} is not an IP address")
            set_(self, "ip", str(_address(self.ip)))

    @classmethod
    def from_headers(
        cls,
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]],
        client: str | None = None,
        *,
        trusted_proxies: Iterable[str | Network] = (),
    ) -> VisitorContext:
        """The context of a visitor's request: its headers (any case; a mapping or pairs, as
        ASGI and WSGI give them) and the address it came from (``client``).

        The IP is ``client``'s, unless ``client`` is one of ``trusted_proxies`` (addresses or
        networks such as ``"10.0.0.0/8"``): then ``X-Forwarded-For`` is read from the right,
        skipping trusted proxies, and the first address that is not one is the visitor's (an
        untrusted client can write anything at the left of the list). Headers a browser
        could not have sent, or that a header cannot carry, are left out rather than
        refused: the visitor, not the app, wrote them. Header pairs may be bytes (ASGI's
        ``scope["headers"]``). What the app passes that is not headers, an address or
        networks raises :class:`~engine.errors.PushError` naming it."""
        networks = []
        for proxy in [trusted_proxies] if isinstance(trusted_proxies, str) else trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(proxy, strict=False))
            except (TypeError, ValueError):
                raise PushError(
                    f"visitor context: trusted proxy {proxy!r} is not an address or network"
                ) from None
        if client is not None and not isinstance(client, str):
            raise PushError(f"visitor context: client must be an address, not {client!r}")
        if isinstance(headers, Mapping):
            pairs: Iterable[Any] = headers.items()
        elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
            pairs = headers
        else:
            raise PushError("visitor context: headers must be a mapping or (name, value) pairs")
        found: dict[str, str] = {}
        forwarded: list[str] = []
        for pair in pairs:
            try:
                name, value = (
                    part.decode("latin-1") if isinstance(part, bytes) else part for part in pair
                )
            except (TypeError, ValueError):
                raise PushError("visitor context: a header is not a (name, value) pair") from None
            if not isinstance(name, str) or not isinstance(value, str):
                continue  # not text: not a header a browser sent
            key = name.lower()
            if key == "x-forwarded-for":
                forwarded.extend(part for part in value.split(",") if part.strip())
            elif key not in found:
                found[key] = value

        def clean(key: str) -> str | None:
            try:
                return _header_value(key, found.get(key))
            except PushError:
                return None

        hints = {key: value for key in CLIENT_HINTS if (value := clean(key)) is not None}
        return cls(
            user_agent=clean("user-agent"),
            accept_language=clean("accept-language"),
            client_hints=hints,
            ip=_visitor_ip(client, forwarded, networks),
            referer=clean("referer"),
        )

    def forwarding(self, policy: ForwardIp) -> VisitorContext:
        """This context with its IP as ``policy`` says: ``full``, ``truncated`` (IPv4 to
        its /24, IPv6 to its /48, as analytics tools anonymise) or ``none``."""
        if policy not in FORWARD_IP:
            raise ValueError(f"forward_ip must be one of {', '.join(FORWARD_IP)}, not {policy!r}")
        if self.ip is None or policy == "full":
            return self
        if policy == "none":
            return replace(self, ip=None)
        address = ipaddress.ip_address(self.ip)
        prefix = 24 if address.version == 4 else 48
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        return replace(self, ip=str(network.network_address))

    def for_rules(self) -> dict[str, Any]:
        """What rules read as ``request.*`` (not the IP: rules have no use for it)."""
        return {
            "bot": self.bot,
            "user_agent": self.user_agent,
            "accept_language": self.accept_language,
            "referer": self.referer,
        }

    def headers(self) -> tuple[tuple[str, str], ...]:
        """The headers an Edge request carries for this visitor."""
        out: list[tuple[str, str]] = []
        if self.user_agent:
            out.append(("User-Agent", self.user_agent))
        if self.accept_language:
            out.append(("Accept-Language", self.accept_language))
        out.extend((_HINT_NAMES[key], value) for key, value in self.client_hints.items())
        if self.ip:
            out.append(("X-Forwarded-For", self.ip))
        return tuple(out)


def _visitor_ip(client: str | None, forwarded: list[str], trusted: list[Network]) -> str | None:
    peer = _address(client) if client else None

    def is_trusted(address: Address) -> bool:
        return any(address in network for network in trusted)

    if peer is None or not is_trusted(peer):
        return None if peer is None else str(peer)
    for part in reversed(forwarded):
        address = _address(part)
        if address is None:
            return None  # a garbled hop: nothing left of it can be trusted, nor the proxy
        if not is_trusted(address):
            return str(address)
    return None  # only proxies: the visitor is not known (a proxy's address is not theirs)
