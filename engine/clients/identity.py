"""A session's Edge identity: what a response changes in it, the gate that keeps a session to one
request in flight until it has an identity, and the bridge to the visitor's ``kndctr_*``
cookies (docs/destinations.md, "Identity per session"; research/adobe-edge.md §5).

The session owns ``Session.identity``, an opaque JSON-like dict. The keys this module writes:

``ecid``                    the ECID from ``identity:result``
``entries``                 ``state:store`` entries ``{key, value, maxAge?, attrs?, expires?}``;
                            ``expires`` is epoch seconds (``now + maxAge``), absent for an entry
                            without ``maxAge`` (a session cookie); ``{key, value, from_cookie}``
                            for one taken from the visitor's cookies (:func:`take_cookies`)
``location_hint``           the Edge cluster (``or2``…) from the ``kndctr_<org>_cluster`` entry
                            or ``locationHint:result`` (scope ``EdgeNetwork``)
``location_hint_expires``   epoch seconds after which the hint is dropped
``has_identity``            ``True`` once Edge answered with an ECID or an ``…_identity`` entry
``fpid``                    the visitor's first-party device id (a UUID), minted by the engine
                            (``fpid: true`` in the edge settings) or taken from its cookie
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeGuard
from urllib.parse import quote, unquote

from engine.clients.responses import (
    EdgeResponse,
    IdentityItem,
    LocationHintItem,
    StateEntry,
    payload_items,
)
from engine.errors import DispatchError, PushError

__all__ = [
    "AsyncIdentityGate",
    "IdentityGate",
    "apply_edge_response",
    "checked_consent_cookie",
    "checked_fpid",
    "cookie_prefix",
    "fpid_cookie_header",
    "has_identity",
    "identity_from_cookies",
    "legacy_ecid",
    "merge_identity",
    "prune_identity",
    "set_cookie_headers",
    "take_cookies",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*")
_SAME_SITE = {"none": "None", "lax": "Lax", "strict": "Strict"}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
FPID_MAX_AGE = 395 * 86400  # 13 months, as Adobe's FPID guidance sets the cookie


def cookie_prefix(org: str) -> str:
    """``kndctr_<org with "@" replaced by "_">_``, the prefix of every Edge state key."""
    if not org:
        raise ValueError("an Adobe org id is needed to name the kndctr_* cookies")
    return f"kndctr_{org.replace('@', '_')}_"


def has_identity(identity: Mapping[str, Any]) -> bool:
    """Whether Edge already knows this session's visitor: ``has_identity``, an ``ecid`` or a
    ``…_identity`` state entry."""
    if identity.get("has_identity") is True or identity.get("ecid"):
        return True
    entries = identity.get("entries")
    if not isinstance(entries, list):
        return False
    return any(
        isinstance(e, Mapping) and str(e.get("key", "")).endswith("_identity") for e in entries
    )


def _is_cluster(key: str, org: str | None) -> bool:
    if org:
        return key == cookie_prefix(org) + "cluster"
    return key.startswith("kndctr_") and key.endswith("_cluster")


def prune_identity(identity: dict[str, Any], now: float) -> None:
    """Drop state entries whose ``expires`` has passed and an expired location hint."""
    entries = identity.get("entries")
    if isinstance(entries, list):
        kept = [e for e in entries if not _expired(e, now)]
        if len(kept) != len(entries):
            identity["entries"] = kept
    expires = identity.get("location_hint_expires")
    if _number(expires) and expires <= now:
        identity.pop("location_hint", None)
        identity.pop("location_hint_expires", None)


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _expired(entry: Any, now: float) -> bool:
    if not isinstance(entry, Mapping):
        return True
    expires = entry.get("expires")
    return _number(expires) and expires <= now


def apply_edge_response(
    identity: dict[str, Any], response: EdgeResponse, *, now: float, org: str | None
) -> None:
    """Take what an Edge answer says about the visitor into ``identity`` (keys above).

    A ``state:store`` entry replaces the entry with the same key; ``maxAge: 0`` (or less)
    removes it. ``org`` names the cluster entry; without it any ``kndctr_*_cluster`` counts.
    """
    handles = response.handle
    ecids = [
        i.id
        for i in payload_items(handles, "identity:result", IdentityItem)
        if i.namespace.code == "ECID" and i.id
    ]
    if ecids:
        identity["ecid"] = ecids[-1]
        identity["has_identity"] = True

    for hint in payload_items(handles, "locationHint:result", LocationHintItem):
        if hint.scope == "EdgeNetwork" and hint.hint:
            _set_hint(identity, hint.hint, hint.ttlSeconds, now)

    updates = payload_items(handles, "state:store", StateEntry)
    if not updates:
        return
    current = identity.get("entries")
    entries: list[dict[str, Any]] = [
        dict(e) for e in (current if isinstance(current, list) else []) if isinstance(e, Mapping)
    ]
    for update in updates:
        entries = [e for e in entries if e.get("key") != update.key]
        if update.maxAge is not None and update.maxAge <= 0:
            if _is_cluster(update.key, org):
                identity.pop("location_hint", None)
                identity.pop("location_hint_expires", None)
            continue
        entry: dict[str, Any] = {"key": update.key, "value": update.value}
        if update.maxAge is not None:
            entry["maxAge"] = update.maxAge
            entry["expires"] = now + update.maxAge
        if update.attrs:
            entry["attrs"] = dict(update.attrs)
        entries.append(entry)
        if update.key.endswith("_identity"):
            identity["has_identity"] = True
        if _is_cluster(update.key, org) and update.value:
            _set_hint(identity, update.value, update.maxAge, now)
    identity["entries"] = entries


def _set_hint(identity: dict[str, Any], hint: str, ttl: int | None, now: float) -> None:
    identity["location_hint"] = hint
    if ttl is not None and ttl > 0:
        identity["location_hint_expires"] = now + ttl
    else:
        identity.pop("location_hint_expires", None)


def merge_identity(target: dict[str, Any], base: dict[str, Any], result: dict[str, Any]) -> None:
    """Apply to a session's identity (``target``) what a delivery, working on a copy, changed
    from ``base`` to ``result``, keeping what was written to ``target`` meanwhile (a local
    Sitecore browser id, say). State entries
    merge one by one, and one the session changed meanwhile (from the visitor's cookies:
    the browser's identity or cluster) stays the session's, with the ECID or location hint
    that goes with it."""
    skip = {"entries"}
    if result.get("entries") != base.get("entries"):
        target["entries"], kept = _merge_entries(
            target.get("entries"), base.get("entries"), result.get("entries")
        )
        if any(key.endswith("_identity") for key in kept):
            skip.add("ecid")
        if any(key.endswith("_cluster") for key in kept):
            skip |= {"location_hint", "location_hint_expires"}
    for key, value in result.items():
        if key not in skip and (key not in base or base[key] != value):
            target[key] = value
    for key in base:
        if key not in result and key not in skip:
            target.pop(key, None)


def _merge_entries(target: Any, base: Any, result: Any) -> tuple[list[Any], set[str]]:
    """The session's state entries with what a delivery changed (see :func:`merge_identity`), and
    the keys whose change the session's own entry overrode."""

    def by_key(entries: Any) -> dict[str, Any]:
        listed = entries if isinstance(entries, list) else []
        return {
            e["key"]: e for e in listed if isinstance(e, dict) and isinstance(e.get("key"), str)
        }

    mine, before, after = by_key(target), by_key(base), by_key(result)
    merged, kept = dict(mine), set()
    for key, entry in after.items():
        if before.get(key) == entry:
            continue
        own = mine.get(key)
        if own == before.get(key) or (own is not None and own.get("value") == entry.get("value")):
            merged[key] = entry  # unchanged meanwhile, or Edge renewed what the session holds
        else:
            kept.add(key)
    for key, entry in before.items():
        if key not in after:
            if mine.get(key) == entry:
                merged.pop(key, None)
            elif key in mine:
                kept.add(key)
    return list(merged.values()), kept


# ------------------------------------------------------------------ cookies
def identity_from_cookies(cookies: Mapping[str, str], org: str) -> dict[str, Any]:
    """The identity a visitor's ``kndctr_<org>_*`` cookies carry (merge it into a session's
    with :func:`take_cookies`): ``entries`` (``{key, value}``, no expiry: the browser keeps
    the clock), ``location_hint`` from the ``cluster`` cookie and ``has_identity`` when the
    ``identity`` cookie is present. Other cookies are ignored."""
    prefix = cookie_prefix(org)
    entries = [
        {"key": name, "value": value}
        for name, value in cookies.items()
        if name.startswith(prefix) and len(name) > len(prefix) and isinstance(value, str)
    ]
    out: dict[str, Any] = {"entries": entries}
    for entry in entries:
        if entry["key"] == prefix + "cluster" and entry["value"]:
            out["location_hint"] = entry["value"]
        if entry["key"] == prefix + "identity" and entry["value"]:
            out["has_identity"] = True
    return out


def take_cookies(
    identity: dict[str, Any], cookies: Mapping[str, str], org: str, *, now: float | None = None
) -> None:
    """Merge what a visitor's ``kndctr_<org>_*`` cookies carry (:func:`identity_from_cookies`)
    into a session's ``identity``. A cookie whose value the session already holds (not
    expired at ``now``) changes nothing; one with another value replaces the entry (the
    browser's is the newer: its Web SDK may have talked to Edge since), marked
    ``from_cookie`` so that :func:`set_cookie_headers` does not send the browser back what it
    has, without the lifetime it does not tell. A new ``identity`` cookie drops the ECID the
    session knew (Edge answers the browser's). Empty cookies and other entries are left
    alone."""
    if now is not None:
        prune_identity(identity, now)
    taken = identity_from_cookies(cookies, org)
    current = identity.get("entries")
    stored = {
        e.get("key"): e
        for e in (current if isinstance(current, list) else [])
        if isinstance(e, Mapping)
    }
    fresh = {
        entry["key"]: {**entry, "from_cookie": True}
        for entry in taken["entries"]
        if entry["value"]
        and (entry["key"] not in stored or stored[entry["key"]].get("value") != entry["value"])
    }
    if not fresh:
        return
    kept = [e for key, e in stored.items() if key not in fresh]
    identity["entries"] = [*kept, *fresh.values()]
    cluster = fresh.get(cookie_prefix(org) + "cluster")
    if cluster is not None:
        identity["location_hint"] = cluster["value"]
        identity.pop("location_hint_expires", None)  # the browser keeps the cookie's clock
    if cookie_prefix(org) + "identity" in fresh:
        identity["has_identity"] = True
        identity.pop("ecid", None)  # another visitor's, for all we know: Edge will say


def legacy_ecid(cookies: Mapping[str, str], org: str) -> str | None:
    """The ECID of a visitor of Visitor.js / AppMeasurement, as the Web SDK's ID migration
    reads it (``createLegacyIdentity``): the ``s_ecid`` cookie first, then ``AMCV_<org>``,
    each URL-encoded ``key|value|…`` with the ECID after ``MCMID``. ``None`` when neither
    holds one (an opted-out visitor's AMCV has none: nothing is migrated, as in alloy)."""
    for name in ("s_ecid", f"AMCV_{org}", f"AMCV_{quote(org, safe='')}"):
        value = cookies.get(name)
        if not isinstance(value, str):
            continue
        parts = unquote(value).split("|")
        for index, key in enumerate(parts[:-1]):
            ecid = parts[index + 1]
            if key == "MCMID" and ecid.isascii() and ecid.isdigit():
                return ecid
    return None


def checked_fpid(value: object, where: str) -> str:
    """A first-party device id as Edge takes it (a UUID, kept as written: Edge derives the
    ECID from the text), or a :class:`~engine.errors.PushError` naming ``where``."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise PushError(f"{where}: {str(value)[:60]!r} is not a first-party id (a UUID)")
    return value


def checked_consent_cookie(cookies: Mapping[str, str], org: str) -> None:
    """A ``kndctr_<org>_consent`` cookie must say ``general=in`` or ``general=out`` (what
    Edge stores): another value is a :class:`~engine.errors.PushError` naming it, rather
    than an opt-out silently read as nothing."""
    name = cookie_prefix(org) + "consent"
    value = cookies.get(name)
    if value is None:
        return
    parts = [part.strip() for part in unquote(str(value)).split(";")]
    if not any(part in ("general=in", "general=out") for part in parts):
        raise PushError(f"the {name} cookie: {str(value)[:60]!r} is not Edge's consent")


def fpid_cookie_header(
    identity: Mapping[str, Any], name: str, domain: str | None, *, secure: bool = True
) -> str | None:
    """The ``Set-Cookie`` value keeping the visitor's first-party id in their browser for 13
    months from now (renewed on every response), or ``None`` when the session has none.
    ``HttpOnly``: only the server reads it."""
    fpid = identity.get("fpid")
    if not isinstance(fpid, str) or not _UUID.fullmatch(fpid):
        return None
    parts = [f"{name}={fpid}", f"Max-Age={FPID_MAX_AGE}"]
    if domain:
        parts.append(f"Domain={domain}")
    parts += ["Path=/", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    parts.append("HttpOnly")
    return "; ".join(parts)


def set_cookie_headers(
    identity: Mapping[str, Any],
    org: str,
    domain: str | None,
    *,
    now: float | None = None,
    secure: bool = True,
) -> list[str]:
    """``Set-Cookie`` values giving the browser the session's ``kndctr_<org>_*`` entries, so
    the Web SDK there and this engine share one identity.

    ``Max-Age`` is what is left of the entry's ``maxAge`` (the whole ``maxAge`` when ``now``
    is not given; none for a session entry); ``SameSite`` comes from ``attrs.SameSite``;
    ``Secure`` is set when ``secure`` or when SameSite is None; ``Path=/``; ``Domain`` when
    given (the site's apex domain). Not ``HttpOnly``: the Web SDK reads these cookies. Expired
    entries, entries taken from the browser's cookies (:func:`take_cookies`) that Edge has not
    renewed since, and entries whose name or value a cookie cannot carry, are left out.
    """
    prefix = cookie_prefix(org)
    entries = identity.get("entries")
    headers: list[str] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, Mapping) or entry.get("from_cookie") is True:
            continue
        key, value = entry.get("key"), entry.get("value")
        if not isinstance(key, str) or not key.startswith(prefix) or not isinstance(value, str):
            continue
        if not _TOKEN.fullmatch(key) or not _COOKIE_VALUE.fullmatch(value):
            continue
        parts = [f"{key}={value}"]
        expires, max_age = entry.get("expires"), entry.get("maxAge")
        if now is not None and _number(expires):
            left = math.ceil(expires - now)
            if left <= 0:
                continue
            parts.append(f"Max-Age={left}")
        elif _number(max_age):
            if max_age <= 0:
                continue
            parts.append(f"Max-Age={int(max_age)}")
        if domain:
            parts.append(f"Domain={domain}")
        parts.append("Path=/")
        attrs = entry.get("attrs")
        same_site = attrs.get("SameSite") if isinstance(attrs, Mapping) else None
        site = _SAME_SITE.get(same_site.lower()) if isinstance(same_site, str) else None
        if site:
            parts.append(f"SameSite={site}")
        if secure or site == "None":
            parts.append("Secure")
        headers.append("; ".join(parts))
    return headers


# ------------------------------------------------------------------ the gate
class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


def _still_waiting(session_id: str, timeout: float | None) -> DispatchError:
    return DispatchError(
        f"session {session_id!r}: still waiting for its first Edge identity after {timeout}s",
        destination="edge",
    )


class IdentityGate:
    """One Edge request in flight per session until the session has an identity.

    ::

        with gate.hold(session.id, session.identity):
            request = build_edge_request(..., identity=session.identity, ...)
            result = client.send(request, session.identity)

    A session that has an identity passes at once. Otherwise the first caller goes and the
    others wait for its answer; when it brought an identity they all go, concurrently, and
    when it did not the next one goes alone (the Web SDK's rule, which stops Edge minting
    several ECIDs for one visitor). Build the request inside the gate so it carries the
    identity the first answer stored. A slot exists only while a session has callers inside
    or waiting, so memory is bounded by the concurrency. ``timeout`` bounds the wait
    (:class:`~engine.errors.DispatchError` after it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        """Sessions with a caller inside or waiting."""
        return len(self._slots)

    @contextmanager
    def hold(
        self, session_id: str, identity: Mapping[str, Any], *, timeout: float | None = None
    ) -> Iterator[None]:
        if has_identity(identity):
            yield
            return
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None:
                slot = self._slots[session_id] = _Slot()
            slot.users += 1
        try:
            if not slot.lock.acquire(timeout=-1 if timeout is None else timeout):
                raise _still_waiting(session_id, timeout)
            held = True
            try:
                if has_identity(identity):
                    slot.lock.release()
                    held = False
                yield
            finally:
                if held:
                    slot.lock.release()
        finally:
            with self._lock:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[session_id]


class _AsyncSlot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class AsyncIdentityGate:
    """:class:`IdentityGate` for one asyncio event loop: ``async with gate.hold(...)``."""

    def __init__(self) -> None:
        self._slots: dict[str, _AsyncSlot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    @asynccontextmanager
    async def hold(
        self, session_id: str, identity: Mapping[str, Any], *, timeout: float | None = None
    ) -> AsyncIterator[None]:
        if has_identity(identity):
            yield
            return
        slot = self._slots.get(session_id)
        if slot is None:
            slot = self._slots[session_id] = _AsyncSlot()
        slot.users += 1
        try:
            try:
                async with asyncio.timeout(timeout):
                    await slot.lock.acquire()
            except TimeoutError:
                raise _still_waiting(session_id, timeout) from None
            held = True
            try:
                if has_identity(identity):
                    slot.lock.release()
                    held = False
                yield
            finally:
                if held:
                    slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[session_id]
