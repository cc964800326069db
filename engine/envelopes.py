"""Pushes as they arrive in files and requests: JSON text, a push object or an envelope.

An envelope wraps a push with what a web app would know of it::

    {"session": "s1", "push": {...},
     "context": {"headers": {"User-Agent": "…", "Referer": "…"}, "client": "203.0.113.7"},
     "cookies": {"FPID": "…", "kndctr_…_identity": "…"}}

``context`` is a :class:`~engine.context.VisitorContext`: its fields (``user_agent``,
``accept_language``, ``client_hints``, ``ip``, ``referer``), or a request's ``headers`` and
``client`` address (with ``trusted_proxies``). ``cookies`` are taken into the session before
the push (``EngineSession.take_cookies``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.context import VisitorContext

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.results import PushResult

__all__ = ["Envelope", "decode", "parse_envelope", "read_envelope"]

_KEYS = {"session", "push", "context", "cookies"}
_REQUEST_KEYS = {"headers", "client", "trusted_proxies"}
_FIELDS = {"user_agent", "accept_language", "client_hints", "ip", "referer", "bot"}


def decode(data: str | bytes) -> object:
    """JSON text → a value; :class:`ValueError` naming what is wrong (never another error)."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error.msg} at column {error.colno}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {error.start + 1})") from None
    except RecursionError:
        raise ValueError("not a valid push: nested too deeply") from None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A push with its session, visitor context and cookies (each ``None`` when not given)."""

    session: str | None
    push: object
    context: VisitorContext | None = None
    cookies: Mapping[str, str] | None = None

    def run(self, engine: Engine, default_session: str = "default") -> PushResult:
        """Take the cookies into the session, then push with the context."""
        session = engine.session(self.session or default_session)
        if self.cookies:
            session.take_cookies(self.cookies)
        return session.push(self.push, context=self.context)


def read_envelope(value: object) -> Envelope:
    """A decoded push, or an envelope (module docstring). :class:`ValueError` naming what is
    wrong with an envelope's session, context or cookies."""
    if not (isinstance(value, dict) and "push" in value and set(value) <= _KEYS):
        return Envelope(None, value)
    session = value.get("session")
    if session is not None and (not isinstance(session, str) or not session):
        raise ValueError("an envelope's session must be a non-empty string")
    cookies = value.get("cookies")
    if cookies is not None and not (
        isinstance(cookies, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in cookies.items())
    ):
        raise ValueError("an envelope's cookies must be an object of strings")
    return Envelope(session, value["push"], _context(value.get("context")), cookies)


def _context(value: Any) -> VisitorContext | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("an envelope's context must be an object")
    keys = set(value)
    if keys <= _REQUEST_KEYS:
        headers, client = value.get("headers") or {}, value.get("client")
        proxies = value.get("trusted_proxies") or []
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("an envelope's context.headers must be an object of strings")
        if client is not None and not isinstance(client, str):
            raise ValueError("an envelope's context.client must be an IP address")
        if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
            raise ValueError("an envelope's context.trusted_proxies must be a list of addresses")
        try:
            return VisitorContext.from_headers(headers, client, trusted_proxies=proxies)
        except ValueError as error:  # a proxy that is no address or network
            raise ValueError(f"an envelope's context.trusted_proxies: {error}") from None
    if keys <= _FIELDS:
        return VisitorContext(**value)  # a bad value: PushError naming it
    unknown = sorted(keys - _FIELDS - _REQUEST_KEYS)
    raise ValueError(
        "an envelope's context takes headers/client/trusted_proxies (a request) or "
        "user_agent/accept_language/client_hints/ip/referer, not both"
        + (f"; unknown: {', '.join(unknown)}" if unknown else "")
    )


def parse_envelope(value: object) -> tuple[str | None, object]:
    """A decoded push, or an envelope: ``(session, push)``, with ``session`` ``None`` when
    not given. :class:`ValueError` for a bad envelope."""
    envelope = read_envelope(value)
    return envelope.session, envelope.push
