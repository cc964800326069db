"""Sitecore CDP / Personalize Stream API: the HTTP requests for one ``send sitecore`` and for
minting a browser id (docs/destinations.md, "Sitecore CDP / Personalize Stream API").

Direct mode (default) sends ``GET {url}/v1.2/event/create.json?client_key=…&message=…`` with
the event object as compact, URL-encoded JSON; proxy mode (the Cloud SDK's Edge proxy) sends
``POST {url}/v1/events/v1.2/events?sitecoreContextId=…&siteId=…`` with it as the JSON body.

The event object always has the seven base fields first (``channel``, ``type``, ``language``,
``currency``, ``page``, ``pos``, ``browser_id``), then the rule's other fields in the order
written, without nulls. ``ext`` is flattened by :func:`flatten_ext`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

from engine.destinations.base import Request, is_finite_scalar, largest_fields, new_request
from engine.destinations.encoding import (
    PLAIN_TYPES,
    drop_nulls,
    percent_encode,
    serialize,
    serialize_bytes,
)
from engine.errors import DispatchError, EvaluationError, PayloadTooLarge
from engine.settings import SitecoreSettings
from engine.sitecore_formats import (
    CHECKED_PATHS,
    card_type_problem,
    currency_code,
    currency_problem,
    field_problem,
    language_code,
    language_problem,
)

__all__ = [
    "EXT_LIMIT",
    "SITECORE_URL_LIMIT",
    "build_browser_request",
    "build_sitecore_request",
    "check_url_size",
    "flatten_ext",
    "with_browser_id",
]

EXT_LIMIT = 50
SITECORE_URL_LIMIT = 8192
"""A direct-mode event travels in the URL; 8 KB is the common ceiling of CDNs and proxies
(Sitecore documents none), so a longer URL is refused before the network **(ours)**."""
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_RENAMED = {"first_name": "firstname", "last_name": "lastname"}
_BASE = ("channel", "type", "language", "currency", "page", "pos", "browser_id")
_SPECIAL = frozenset(
    {*_BASE, "client_key", "ext", "session_data", "identifiers", "page_variant_id", *_RENAMED}
)
_JSON = (("Content-Type", "application/json"),)
_PLAIN = PLAIN_TYPES


def build_sitecore_request(
    fields: Mapping[str, Any],
    settings: SitecoreSettings,
    *,
    rule: str,
    browser_id: str,
    requested_at: str | None = None,
) -> Request:
    """The Stream API request for a ``send sitecore`` whose fields are ``fields``.

    Defaults: ``channel``, ``language``, ``currency`` and ``pos`` from ``settings``, ``page``
    ``""``; ``language`` and ``currency`` have no default of their own: a send with neither
    fails. ``channel`` and ``currency`` are upper-cased and ``language`` becomes its ISO 639-1
    code (``en-GB`` → ``EN``, as the Cloud SDK does). ``page_variant_id`` goes in
    ``ext.pageVariantId``, as the Cloud SDK sends it. ``first_name`` and ``last_name`` go on
    the wire as ``firstname``/``lastname`` (the wire names win when both are given). In proxy
    mode ``client_key`` (``""`` when unset) and ``requested_at`` (when given and the rule sets
    none) are added, as the Cloud SDK does. Raises :class:`~engine.errors.EvaluationError`
    for a field of the wrong shape or format (``email``, ``dob``, order ``status``,
    ``currencyCode``, ``cardType``), :class:`~engine.errors.PayloadTooLarge` for a direct-mode
    URL above 8 KB and :class:`~engine.errors.DispatchError` for missing settings.
    """
    sites = _sites
    if sites.settings is not settings:
        sites = _Sites.of(settings)
    if sites.direct and browser_id:
        request = _direct(fields, sites, rule, browser_id)
        if request is not None:
            return request
    proxy = settings.mode == "proxy"
    if not browser_id:
        raise DispatchError(f"rule {rule!r}: no Sitecore browser id yet", destination="sitecore")
    event_type = _base_text(fields, "type", None, rule)
    if not event_type:
        raise EvaluationError(f"rule {rule!r}: send sitecore needs a 'type' (e.g. \"VIEW\")")
    pos = _base_text(fields, "pos", settings.pos, rule)
    if not pos and not proxy:
        raise DispatchError(
            f"rule {rule!r}: no Sitecore point of sale: set 'pos' in the sitecore settings "
            "or in the rule",
            destination="sitecore",
        )
    event: dict[str, Any] = {
        "channel": (_base_text(fields, "channel", settings.channel, rule) or "").upper(),
        "type": event_type,
        "language": _language(fields, settings, rule),
        "currency": _currency(fields, settings, rule),
        "page": _base_text(fields, "page", "", rule) or "",
        "pos": pos or "",
        "browser_id": browser_id,
    }
    for name, value in fields.items():
        if value is None:
            continue
        if name not in _SPECIAL:  # the rule's own fields: most are text or numbers
            event[name] = value if type(value) in _PLAIN else drop_nulls(value)
        elif name in ("ext", "page_variant_id"):
            if "ext" not in event:  # where the rule wrote the first of the two
                ext = _ext(fields, settings, rule)
                if ext:
                    event["ext"] = ext
        elif name in _RENAMED:
            wire = _RENAMED[name]
            if fields.get(wire) is None:
                event[wire] = drop_nulls(value)
        elif name == "identifiers":
            identifiers = _identifiers(value, rule)
            if identifiers:
                event["identifiers"] = identifiers
        elif name == "session_data":
            session_data = _session_data(value, rule)
            if session_data:
                event["session_data"] = session_data
    if event_type == "IDENTITY" and not event.get("identifiers"):
        raise EvaluationError(
            f"rule {rule!r}: an IDENTITY event needs 'identifiers' "
            '(e.g. [{provider: "email", id: …}])'
        )
    _check_formats(event, event_type, rule)

    base = settings.url.rstrip("/")
    if not proxy:
        message = serialize(event, rule=rule)
        url = (
            f"{base}/v1.2/event/create.json?client_key="
            f"{percent_encode(_client_key(settings, rule))}&message={_encoded_message(message)}"
        )
        request = new_request("sitecore", rule, "GET", url, (), event, b"", "event")
        check_url_size(request)
        return request

    event["client_key"] = settings.client_key or ""
    if requested_at is not None and "requested_at" not in event:
        event["requested_at"] = requested_at
    params = [("sitecoreContextId", _context_id(settings, rule))]
    if settings.site_id:
        params.append(("siteId", settings.site_id))
    url = f"{base}/v1/events/v1.2/events?" + _query(params)
    body_bytes = serialize_bytes(event, rule=rule)
    return new_request("sitecore", rule, "POST", url, _JSON, event, body_bytes, "event")


class _Sites:
    """What one :class:`SitecoreSettings` decides of a direct-mode send, worked out once for
    the settings object the sends use (settings are frozen; the last one is kept): the URL up
    to the message, and the base fields a send takes from the settings. ``direct`` is false
    when the general way must decide (proxy mode, a setting that fails every send)."""

    __slots__ = ("channel", "currency", "direct", "language", "pos", "prefix", "settings")

    def __init__(self, settings: SitecoreSettings | None) -> None:
        self.settings = settings  # held: its identity is the cache's key
        self.direct = False
        self.channel = self.pos = self.prefix = ""
        self.language: str | None = None
        self.currency: str | None = None

    @classmethod
    def of(cls, settings: SitecoreSettings) -> _Sites:
        global _sites
        sites = cls(settings)
        pos, key = settings.pos, settings.client_key
        if settings.mode != "proxy" and settings.ext_names == "camel" and pos and key:
            sites.direct = True
            sites.channel = (settings.channel or "").upper()
            sites.pos = pos
            # The settings' own (None: a send must give one, or fails the general way).
            sites.language = language_code(settings.language) if settings.language else None
            sites.currency = currency_code(settings.currency) if settings.currency else None
            base = settings.url.rstrip("/")
            sites.prefix = (
                f"{base}/v1.2/event/create.json?client_key={percent_encode(key)}&message="
            )
        _sites = sites
        return sites


_sites = _Sites(None)


def _direct(fields: Mapping[str, Any], sites: _Sites, rule: str, browser_id: str) -> Request | None:
    """:func:`build_sitecore_request` in direct mode for the commonest fields (base fields
    that are text or absent, no renamed fields, identifiers, session data or page variant),
    with the same result; ``None`` for anything else, which the general way builds."""
    get = fields.get
    event_type = get("type")
    if type(event_type) is not str or not event_type or event_type == "IDENTITY":
        return None
    value = get("channel")
    if value is None:
        channel = sites.channel
    elif type(value) is str and value:
        channel = value.upper()
    else:
        return None
    value = get("language")
    if value is None or value == "":
        language = sites.language
    else:
        language = language_code(value) if type(value) is str else None
    value = get("currency")
    if value is None or value == "":
        currency = sites.currency
    else:
        currency = currency_code(value) if type(value) is str else None
    page = get("page")
    if page is None:
        page = ""
    elif type(page) is not str:
        return None
    pos = get("pos")
    if pos is None or pos == "":
        pos = sites.pos
    elif type(pos) is not str:
        return None
    if language is None or currency is None:
        return None  # missing or not a code: the general way says which
    event: dict[str, Any] = {
        "channel": channel,
        "type": event_type,
        "language": language,
        "currency": currency,
        "page": page,
        "pos": pos,
        "browser_id": browser_id,
    }
    for name, value in fields.items():
        if value is None:
            continue
        if name not in _SPECIAL:  # the rule's own fields: most are text or numbers
            event[name] = value if type(value) in _PLAIN else drop_nulls(value)
        elif name == "ext":
            if type(value) is not dict:
                return None
            ext = _flat_ext(value, rule)
            if ext:
                event["ext"] = ext
        elif name not in _BASE:
            return None  # renamed fields, identifiers, session data, a page variant
    if not _CHECKED_ROOTS.isdisjoint(event):
        _check_formats(event, event_type, rule)
    url = sites.prefix + _encoded_message(serialize(event, rule=rule))
    request = new_request("sitecore", rule, "GET", url, (), event, b"", "event")
    if len(url) > SITECORE_URL_LIMIT or not url.isascii():  # (ASCII: its length in bytes)
        check_url_size(request)
    return request


_SCALAR = {str: True, bool: True, int: True}  # what an ext attribute takes as it is
_finite = math.isfinite


def _flat_ext(ext: dict[str, Any], rule: str) -> dict[str, Any]:
    """:func:`flatten_ext` in camel mode, without its walk for the commonest ``ext`` (text,
    boolean, integer, finite float or null values, in objects nested once at most, under keys seen
    before), else by it."""
    out: dict[str, Any] = {}
    camel = _CAMEL.get
    for key, item in ext.items():
        found = camel(key)
        if found is None or not found[0]:
            return flatten_ext(ext, rule=rule)
        if item is None:
            continue
        kind = type(item)
        name = found[0]
        if (_SCALAR.get(kind) or (kind is float and _finite(item))) and name not in out:
            out[name] = item
            continue
        if kind is not dict:
            return flatten_ext(ext, rule=rule)
        for inner_key, inner in item.items():
            found = camel(inner_key)
            if found is None or not found[0]:
                return flatten_ext(ext, rule=rule)
            if inner is None:
                continue
            kind = type(inner)
            inner_name = name + found[1]
            if (_SCALAR.get(kind) or (kind is float and _finite(inner))) and inner_name not in out:
                out[inner_name] = inner
            else:
                return flatten_ext(ext, rule=rule)
    if len(out) > EXT_LIMIT:
        return flatten_ext(ext, rule=rule)  # which raises
    return out


def build_browser_request(settings: SitecoreSettings, *, rule: str = "") -> Request:
    """The request that mints a browser id, once per session: direct mode
    ``GET {url}/v1.2/browser/create.json?client_key=…&message={}``, proxy mode
    ``GET {url}/v1/events/v1.2/browser/create.json?sitecoreContextId=…&client_key=``.
    The answer's ``ref`` is the browser id. ``rule`` names the send that needed it."""
    base = settings.url.rstrip("/")
    if settings.mode == "proxy":
        params = [
            ("sitecoreContextId", _context_id(settings, rule)),
            ("client_key", settings.client_key or ""),
        ]
        url = f"{base}/v1/events/v1.2/browser/create.json?" + _query(params)
    else:
        params = [("client_key", _client_key(settings, rule)), ("message", "{}")]
        url = f"{base}/v1.2/browser/create.json?" + _query(params)
    return Request("sitecore", rule, "GET", url, (), {}, b"", "browser")


def with_browser_id(request: Request, browser_id: str) -> Request:
    """The same Sitecore event request sent with another ``browser_id`` (the one a browser/create
    call just issued): the direct-mode GET gets its ``message`` re-encoded, the proxy-mode POST
    its body re-serialized; the field keeps its place in the event and nothing else changes."""
    if request.destination != "sitecore" or request.kind != "event":
        raise ValueError("with_browser_id takes a Sitecore event request")
    if not browser_id:
        raise ValueError("a browser id cannot be empty")
    body = {**request.body, "browser_id": browser_id}
    if request.method == "GET":
        base, _, query = request.url.partition("?")
        params = [
            (key, serialize(body, rule=request.rule) if key == "message" else value)
            for key, value in parse_qsl(query, keep_blank_values=True)
        ]
        moved = replace(request, url=f"{base}?{_query(params)}", body=body)
        check_url_size(moved)  # the id Sitecore issued may be longer than the local one
        return moved
    body_bytes = serialize_bytes(body, rule=request.rule)
    return replace(request, body=body, body_bytes=body_bytes)


def check_url_size(request: Request, limit: int = SITECORE_URL_LIMIT) -> None:
    """Refuse a direct-mode (GET) request whose URL is above ``limit`` bytes, before any
    network call, naming the rule, the size and the largest fields (their JSON size, before
    URL encoding); a proxy-mode POST has no such limit."""
    if request.method != "GET":
        return
    size = len(request.url.encode())
    if size <= limit:
        return
    parts = ", ".join(f"{path} ({n:,} bytes)" for path, n in largest_fields(request))
    message = (
        f"rule {request.rule!r}: the Sitecore direct-mode URL is {size:,} bytes, above the "
        f"{limit:,}-byte limit"
    )
    if parts:
        message += f"; largest fields: {parts}"
    message += ' (send less, or use mode: "proxy", which POSTs the event)'
    raise PayloadTooLarge(message, destination="sitecore")


# ------------------------------------------------------------------ ext
def camel(key: str) -> str:
    """An ``ext`` name part: runs of characters other than ``[A-Za-z0-9]`` are dropped and
    the letter after each is upper-cased (``page_type`` → ``pageType``, ``a.b`` → ``aB``);
    the same result as :func:`engine.checker.camel` for the keys a rule can write."""
    return _camel_parts(key)[0]


# An ext key's name part, and the same with its first letter upper-cased (how it follows a
# prefix), kept once made: a rule's keys are few and the same on every send. Bounded, for
# keys that come from data.
_CAMEL: dict[str, tuple[str, str]] = {}
_CAMEL_KEPT = 4096


def _camel_parts(key: str) -> tuple[str, str]:
    found = _CAMEL.get(key)
    if found is None:
        parts = _NOT_ALNUM.split(key)
        part = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
        found = (part, part[:1].upper() + part[1:])
        if len(_CAMEL) < _CAMEL_KEPT:
            _CAMEL[key] = found
    return found


def flatten_ext(ext: Mapping[str, Any], *, rule: str, names: str = "camel") -> dict[str, Any]:
    """``ext`` as Sitecore takes it: at most 50 flat attributes with string/boolean/
    integer/float values.

    ``names="camel"`` (the Stream API docs): names are camelCase alphanumerics, nested
    objects are joined in camelCase (``{product: {sku: 1}}`` → ``productSku``) and a list
    becomes its compact JSON text (a string, so the attribute keeps one type across events).
    ``names="sdk"`` (the Cloud SDK's ``flattenObject``): each key is kept as written, nested
    keys are joined with ``_`` (``product_sku``) and a list stays a JSON array. Either way
    ``null`` values are dropped, as the checker counts names at load time. A name that comes
    out empty or twice, a value JSON cannot carry, or more than 50 attributes raise
    :class:`~engine.errors.EvaluationError`.
    """
    out: dict[str, Any] = {}
    sdk = names == "sdk"

    def walk(prefix: str, value: Mapping[str, Any]) -> None:
        for key, item in value.items():
            if sdk:
                part = str(key)
                name = f"{prefix}_{part}" if prefix else part
            else:
                part, title = _camel_parts(key if type(key) is str else str(key))
                name = prefix + title if prefix else part
            if not part:
                what = "is empty" if sdk else "has no letters or digits"
                raise EvaluationError(f"rule {rule!r}: sitecore ext key {key!r} {what}")
            if item is None:
                continue
            kind = type(item)
            if kind is dict or (kind not in _PLAIN and isinstance(item, Mapping)):
                walk(name, item)
                continue
            if kind is str or kind is bool or kind is int:
                pass  # most values: nothing to check
            elif isinstance(item, list | tuple):
                if sdk:
                    serialize(item, rule=rule)  # refuses what JSON cannot carry
                    item = drop_nulls(list(item))
                else:
                    item = serialize(item, rule=rule)
            elif not is_finite_scalar(item):
                raise EvaluationError(
                    f"rule {rule!r}: sitecore ext attribute '{name}' has a value Sitecore "
                    f"cannot take: {item!r}"
                )
            if name in out:
                raise EvaluationError(
                    f"rule {rule!r}: sitecore ext attribute '{name}' is given twice once flattened"
                )
            out[name] = item

    walk("", ext)
    if len(out) > EXT_LIMIT:
        raise EvaluationError(
            f"rule {rule!r}: sitecore ext has {len(out)} attributes once flattened; the limit "
            f"is {EXT_LIMIT}"
        )
    return out


# ------------------------------------------------------------------ other fields
def _shape(rule: str, name: str, expected: str, value: Any) -> EvaluationError:
    return EvaluationError(
        f"rule {rule!r}: send sitecore '{name}' must be {expected}, not {type(value).__name__}"
    )


def _ext(fields: Mapping[str, Any], settings: SitecoreSettings, rule: str) -> dict[str, Any]:
    """The event's ``ext``: the rule's flattened, with ``page_variant_id`` first as
    ``pageVariantId`` (where the Cloud SDK puts it; it wins over an ``ext.pageVariantId``,
    as there)."""
    value = fields.get("ext")
    ext: dict[str, Any] = {}
    if value is not None:
        if not isinstance(value, Mapping):
            raise _shape(rule, "ext", "an object", value)
        ext = flatten_ext(value, rule=rule, names=settings.ext_names)
    variant = fields.get("page_variant_id")
    if variant is None or variant == "":
        return ext
    if isinstance(variant, bool) or not isinstance(variant, str | int):
        raise _shape(rule, "page_variant_id", "a string", variant)
    ext.pop("pageVariantId", None)
    ext = {"pageVariantId": str(variant), **ext}
    if len(ext) > EXT_LIMIT:
        raise EvaluationError(
            f"rule {rule!r}: sitecore ext has {len(ext)} attributes once flattened (with "
            f"pageVariantId); the limit is {EXT_LIMIT}"
        )
    return ext


def _missing(rule: str, name: str, example: str) -> EvaluationError:
    return EvaluationError(
        f"rule {rule!r}: send sitecore has no '{name}': set it in the rule or add "
        f'{name}: "{example}" to the sitecore {{ }} settings'
    )


def _coded(
    fields: Mapping[str, Any],
    name: str,
    default: str | None,
    rule: str,
    example: str,
    code_of: Callable[[str], str | None],
    problem: Callable[[str], str],
) -> str:
    """The send's (or the settings') language or currency, as the code the API takes."""
    value = _base_text(fields, name, default, rule)
    if not value:
        raise _missing(rule, name, example)
    code = code_of(value)
    if code is None:
        raise EvaluationError(f"rule {rule!r}: sitecore {problem(value)}")
    return code


def _language(fields: Mapping[str, Any], settings: SitecoreSettings, rule: str) -> str:
    return _coded(
        fields, "language", settings.language, rule, "EN", language_code, language_problem
    )


def _currency(fields: Mapping[str, Any], settings: SitecoreSettings, rule: str) -> str:
    return _coded(
        fields, "currency", settings.currency, rule, "EUR", currency_code, currency_problem
    )


_CHECKED_ROOTS = frozenset(path[0] for path in CHECKED_PATHS)


def _check_formats(event: Mapping[str, Any], event_type: str, rule: str) -> None:
    """The documented formats (``email``, ``dob``, CHECKOUT ``status``, ``order.status``,
    ``order.currencyCode``, ``order.cardType`` when paying by card), checked on the values
    as sent: a data-layer value fails the rule here, naming the field."""
    if _CHECKED_ROOTS.isdisjoint(event):  # most events have none of them: this runs per send
        return
    for path in CHECKED_PATHS:
        value: Any = event
        for step in path:
            value = value.get(step) if isinstance(value, Mapping) else None
        if value is None:
            continue
        problem = field_problem(path, value, event_type)
        if problem:
            raise EvaluationError(f"rule {rule!r}: sitecore {problem}")
    order = event.get("order")
    if isinstance(order, Mapping):
        problem = card_type_problem(order)
        if problem:
            raise EvaluationError(f"rule {rule!r}: sitecore {problem}")


def _base_text(fields: Mapping[str, Any], name: str, default: str | None, rule: str) -> str | None:
    value = fields.get(name)
    if type(value) is str:  # the commonest: no other test
        return value or default
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _shape(rule, name, "a string", value)
    return str(value)


def _identifiers(value: Any, rule: str) -> list[dict[str, Any]]:
    """``[{provider, id, expiry_date?}]``; a lone object counts as one, ``expiryDate`` is
    renamed, a number ``id`` becomes text; ``provider`` and ``id`` are required."""
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list | tuple):
        raise _shape(rule, "identifiers", "a list of {provider, id}", value)
    out: list[dict[str, Any]] = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, Mapping):
            raise _shape(rule, "identifiers", "a list of {provider, id}", item)
        entry: dict[str, Any] = {}
        for key, inner in item.items():
            if inner is not None:
                entry["expiry_date" if key == "expiryDate" else key] = drop_nulls(inner)
        ident = entry.get("id")
        if isinstance(ident, int | float) and not isinstance(ident, bool):
            entry["id"] = ident = str(ident)
        provider = entry.get("provider")
        if not (isinstance(provider, str) and provider and isinstance(ident, str) and ident):
            raise EvaluationError(
                f"rule {rule!r}: each sitecore identifier needs a 'provider' and an 'id' "
                f"(got {dict(item)!r})"
            )
        out.append(entry)
    return out


def _session_data(value: Any, rule: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _shape(rule, "session_data", "an object", value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if not is_finite_scalar(item):
            raise EvaluationError(
                f"rule {rule!r}: sitecore session_data '{key}' must be a string, boolean or "
                f"number, not {type(item).__name__}"
            )
        out[str(key)] = item
    return out


class _Pieces(dict[str, str]):
    """The percent-encoding of the pieces of messages between their ``","`` separators: a
    name with its value (``type":"VIEW``, ``language":"EN``), most the same in most sends.
    Cleared when full, so that pieces seen once (a page name) cannot crowd out the others
    for good."""

    def __missing__(self, piece: str) -> str:
        encoded = percent_encode(piece)
        if len(self) >= _PIECES_KEPT:
            self.clear()
        self[piece] = encoded
        return encoded


_PIECES_KEPT = 4096
_piece = _Pieces().__getitem__


def _encoded_message(message: str) -> str:
    """``percent_encode(message)``, a piece between two ``","`` at a time (it encodes each
    character on its own: where the text is cut changes nothing), most from the cache.
    (Cut at each quote, a message made four times as many pieces, the join's main cost.)"""
    return "%22%2C%22".join(map(_piece, message.split('","')))


def _query(params: list[tuple[str, str]]) -> str:
    """``urlencode(params, quote_via=quote)``."""
    return "&".join(f"{percent_encode(key)}={percent_encode(value)}" for key, value in params)


def _client_key(settings: SitecoreSettings, rule: str) -> str:
    if not settings.client_key:
        raise DispatchError(
            f"rule {rule!r}: no Sitecore client key: set 'client_key' in the sitecore settings",
            destination="sitecore",
        )
    return settings.client_key


def _context_id(settings: SitecoreSettings, rule: str) -> str:
    if not settings.context_id:
        raise DispatchError(
            f"rule {rule!r}: sitecore proxy mode needs 'context_id' in the sitecore settings",
            destination="sitecore",
        )
    return settings.context_id
