"""Floor benchmark: a whole push of the shop journey, against the same work written by hand.

The floor is plain Python written for ``rules/`` alone: it merges each push of
``examples/shop.jsonl`` into the visitor's state as the ACDL merge does (objects merge, arrays
replace without their nulls, ``null`` deletes), computes the elements the rules read (with
their ``keep`` memory), evaluates the rules' triggers, conditions and limits in the engine's
order, and builds every Edge and Sitecore request those rules send. Its requests must be
byte-identical to the engine's (method, URL, headers, body bytes), with the same ids and
clock: that is checked over the whole journey before anything is timed
(:func:`check_equivalence`, also run by ``tests/test_floor.py``). It is written as a developer
would write it, tightly but idiomatically: orjson for JSON (as the engine), the standard
library's ``urlencode`` for the Sitecore message, no validation of the push (the engine
refuses what is not JSON-like, the floor trusts the journey).

Then the journey is replayed in interleaved rounds (each round: the floor, the engine in a
dry run and the engine in background mode, in a rotating order, each on fresh sessions) and
the medians of the rounds are printed, with the ratio engine / floor against its target, the
median of the rounds' ratios:

- **dry run**: ``Engine(ruleset, dry_run=True)``; a push builds its requests.
- **background**: ``Engine(..., background=True)`` with an in-memory outbox and its delivery
  thread sending to an in-process no-op HTTP transport (``httpx.MockTransport``). A push
  returns once its sends are in the outbox; the delivery thread runs meanwhile, as it would.

Ratios are of the pushing thread's CPU time: on a shared machine wall time also counts the
moments the process waits for a CPU, and in background mode those the push waits for the
delivery thread's hold of the GIL (the delivery's own work is not the push's). Wall-time
ratios are printed beside them.

The exit status is 0 whatever the verdicts. Run it from the project root::

    .venv/bin/python -m benchmarks.floor            # about a minute
    .venv/bin/python -m benchmarks.floor --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from benchmarks import hot_path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
JOURNEY = ROOT / "examples" / "shop.jsonl"

DRY_TARGET = 1.5  # engine (dry run) / floor
BACKGROUND_TARGET = 1.7  # engine (background mode) / floor

State = dict[str, Any]
HandRequest = tuple[str, str, str, tuple[tuple[str, str], ...], bytes]
"""``(destination, method, url, headers, body_bytes)``: what goes on the wire."""


def _version() -> str:
    try:
        return metadata.version("tagengine")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def new_id() -> str:
    """A version 4 UUID as text, from a seeded generator (ids must be unique, not secret)."""
    text = f"{_bits(128) & ~_CLEAR | _PUT:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_bits = random.Random().getrandbits
_CLEAR, _PUT = (0xF000 << 64) | (0xC000 << 48), (0x4000 << 64) | (0x8000 << 48)


# ------------------------------------------------------------------ the floor: settings
@dataclass(frozen=True)
class Sites:
    """The destinations, as rules/settings.rules configures them."""

    edge_url: str = "https://edge.adobedc.net"
    datastream: str = "0dada9f4-fa94-4c9c-8aaf-fdbac6c56287"
    domain: str = ""
    sitecore_url: str = "https://api-engage-eu.sitecorecloud.io"
    client_key: str = "demo-client-key"
    pos: str = "spinair.com"
    channel: str = "WEB"
    currency: str = "EUR"

    @classmethod
    def of(cls, ruleset: Any) -> Sites:
        """The settings of a loaded ruleset (its URLs may come from the environment)."""
        edge, sitecore = ruleset.edge, ruleset.sitecore
        return cls(
            edge_url=edge.url.rstrip("/"),
            datastream=edge.datastream,
            domain=edge.domain or "",
            sitecore_url=sitecore.url.rstrip("/"),
            client_key=sitecore.client_key,
            pos=sitecore.pos,
            channel=sitecore.channel.upper(),
            currency=sitecore.currency,
        )


# ------------------------------------------------------------------ the floor: values
def _get(state: State, a: str, b: str) -> Any:
    v = state.get(a)
    return v.get(b) if type(v) is dict else None


def _text(v: Any) -> str:
    """A value inside a text: null is "", numbers without a useless ".0"."""
    kind = type(v)
    if kind is str:
        return v  # type: ignore[no-any-return]
    if v is None:
        return ""
    if kind is bool:
        return "true" if v else "false"
    if kind is float:
        return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)
    if kind is int:
        return str(v)
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*", re.ASCII)


def _number(v: Any) -> int | float | None:
    kind = type(v)
    if kind is int or kind is float:
        return v  # type: ignore[no-any-return]
    if kind is bool:
        return int(v)
    if kind is str:
        match = _NUMBER.fullmatch(v)
        if match is None:
            return None
        text = match.group(1)
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return None


def _round2(v: int | float | None) -> int | float | None:
    # round() agrees with the engine's round-half-up on every amount of the journey; a whole
    # result is written as a whole number, as the engine (and JSON.stringify) writes it
    if v is None:
        return None
    result = round(float(v), 2)
    return int(result) if result.is_integer() else result


_NO = frozenset({"", "false", "no", "off"})


def _truthy(v: Any) -> bool:
    if type(v) is str:
        return v.strip().lower() not in _NO and _number(v) != 0
    return bool(v)


def _lower(v: Any) -> Any:
    return v.lower() if type(v) is str else v


def _trim(v: Any) -> Any:
    return v.strip() if type(v) is str else v


def _kept(store: dict[str, Any], name: str, value: Any) -> Any:
    """A ``keep`` element: a value is remembered, a missing one read back."""
    if value is None:
        return store.get(name)
    store[name] = value
    return value


_LANGUAGES: dict[str, str] = {}


def _language(tag: Any) -> str:
    """Sitecore's language: the ISO 639-1 code of a tag (``en-GB`` → ``EN``)."""
    code = _LANGUAGES.get(tag) if type(tag) is str else None
    if code is None:
        primary = str(tag).strip().replace("_", "-").split("-", 1)[0]
        if not (len(primary) == 2 and primary.isascii() and primary.isalpha()):
            raise ValueError(f"not a language tag: {tag!r}")
        code = _LANGUAGES[tag] = primary.upper()
    return code


# ------------------------------------------------------------------ the floor: the merge
def _without_nulls(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_without_nulls(item) for item in value if item is not None]
    if kind is dict:
        return {k: _without_nulls(item) for k, item in value.items() if item is not None}
    return value


def _merge(old: State, data: State) -> State:
    """ACDL: objects merge, arrays replace (copied, without nulls), null deletes. A new dict
    per level touched; the push's containers are copied, never kept."""
    out = dict(old)
    for key, value in data.items():
        kind = type(value)
        if value is None:
            out.pop(key, None)
        elif kind is dict:
            current = out.get(key)
            out[key] = _merge(current if type(current) is dict else {}, value)
        elif kind is list:
            out[key] = _without_nulls(value)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------ the floor: requests
_SCHEMAS = [
    "https://ns.adobe.com/personalization/" + name
    for name in (
        "default-content-item",
        "html-content-item",
        "json-content-item",
        "redirect-item",
        "ruleset-item",
        "message/in-app",
        "message/content-card",
    )
]
_JSON_HEADERS = (("Content-Type", "application/json"),)
_ANALYTICS = "__adobe"


class _Session:
    __slots__ = ("browser_id", "fired", "kept", "pageview", "state", "visitor")

    def __init__(self, visitor: dict[str, Any]) -> None:
        self.state: State = {}
        self.kept: dict[str, Any] = {}  # keep session
        self.pageview: dict[str, Any] = {}  # keep pageview
        self.visitor = visitor  # keep visitor
        self.fired: set[str] = set()  # rules limited to 1 per session that fired
        self.browser_id: str | None = None


class Floor:
    """The rules of ``rules/`` written by hand for the shop journey's pushes."""

    def __init__(
        self,
        sites: Sites | None = None,
        *,
        event_id: Callable[[], str] = new_id,
        request_id: Callable[[], str] = new_id,
        browser_id: Callable[[], str] = new_id,
    ) -> None:
        self.sites = sites = sites or Sites()
        self.event_id, self.request_id, self.browser_id = event_id, request_id, browser_id
        self.sessions: dict[str, _Session] = {}
        self.visitors: dict[str, dict[str, Any]] = {}
        self.implementation = {
            "name": "https://ns.adobe.com/experience/tagengine",
            "version": _version(),
            "environment": "server",
        }
        self.edge_base = f"{sites.edge_url}/ee/v2/interact?datastreamId="
        self.sitecore_base = f"{sites.sitecore_url}/v1.2/event/create.json?"
        self._second: tuple[float, str] = (-1.0, "")

    # -------------------------------------------------------------- one push
    def push(self, session_id: str, item: State, now: float) -> list[HandRequest]:
        s = self.sessions.get(session_id)
        if s is None:
            visitor = self.visitors.setdefault(session_id, {})
            s = self.sessions[session_id] = _Session(visitor)
        name = item.get("event")
        if type(name) is not str or not name:
            name = None
        info = item.get("eventInfo")
        if type(info) is not dict:
            info = {}
        old = s.state
        data = {k: v for k, v in item.items() if k != "event" and k != "eventInfo"}
        state = s.state = _merge(old, data)
        wishlist = "wishlist" in data and self._wishlist_changed(old, state)
        out: list[HandRequest] = []
        if name is None:
            if wishlist:
                self.wishlist_update(s, state, now, out)
            return out
        if name == "page.view" or name == "viewStart":
            s.pageview.clear()
            self.page_view(s, state, info, now, out)
            if wishlist:
                self.wishlist_update(s, state, now, out)
            self.error_page(s, state, out)
        elif name.startswith("commerce."):
            if name == "commerce.purchase":
                self.purchase(s, state, info, now, out)
            elif name == "commerce.productView":
                self.product_view(s, state, info, now, out)
            elif name == "commerce.cartAdd":
                self.cart_add(s, state, info, now, out)
            elif name == "commerce.checkout":
                self.checkout(s, state, now, out)
            self.high_value_cart(s, state, name, out)
            if wishlist:
                self.wishlist_update(s, state, now, out)
        elif name == "user.login":
            if wishlist:
                self.wishlist_update(s, state, now, out)
            self.login(s, state, now, out)
        elif name == "search.results":
            if wishlist:
                self.wishlist_update(s, state, now, out)
            self.site_search(s, state, now, out)
        elif wishlist:
            self.wishlist_update(s, state, now, out)
        return out

    @staticmethod
    def _wishlist_changed(old: State, new: State) -> bool:
        before, after = old.get("wishlist"), new.get("wishlist")
        if before is after:
            return False
        before = before.get("items") if type(before) is dict else None
        after = after.get("items") if type(after) is dict else None
        return bool(before != after)

    # -------------------------------------------------------------- shared elements
    @staticmethod
    def _page_name(state: State) -> str:
        v = _get(state, "page", "name")
        if type(v) is str:
            v = " ".join(v.split())
        return "unknown" if v is None else v

    @staticmethod
    def _page_lang(state: State) -> Any:
        v = _get(state, "page", "language")
        return "EN" if v is None else v

    @staticmethod
    def _page_type(state: State) -> Any:
        v = _get(state, "page", "type")
        if type(v) is str:
            v = v.strip().lower()
        return "other" if v is None else v

    @staticmethod
    def _cart_total(state: State) -> float | None:
        v = _get(state, "cart", "total")
        return _round2(_number(0 if v is None else v))

    @staticmethod
    def _cart_items(state: State) -> Any:
        v = _get(state, "cart", "items")
        return [] if v is None else v

    @staticmethod
    def _product_sku(state: State) -> Any:
        v = _get(state, "product", "sku")
        return v.strip().upper() if type(v) is str else v

    @staticmethod
    def _product_name(state: State) -> Any:
        v = _get(state, "product", "name")
        return " ".join(v.split()) if type(v) is str else v

    @staticmethod
    def _product_category(state: State) -> Any:
        v = _get(state, "product", "categories")
        if type(v) is list:
            v = v[0] if v else None
        return "uncategorised" if v is None else v

    @staticmethod
    def _product_price(state: State) -> float | None:
        return _round2(_number(_get(state, "product", "price")))

    @staticmethod
    def _cart_id(state: State) -> str | None:
        v = _get(state, "cart", "id")
        return None if v is None else _text(v)

    @staticmethod
    def _list_name(s: _Session, info: State) -> Any:
        return _kept(s.pageview, "list_name", _lower(info.get("list")))

    @staticmethod
    def _user_tier(s: _Session, state: State) -> Any:
        return _kept(s.visitor, "user_tier", _lower(_get(state, "user", "tier")))

    @staticmethod
    def _customer_id(s: _Session, state: State) -> Any:
        v = _get(state, "user", "id")
        return _kept(s.kept, "customer_id", None if v is None else _text(v))

    @staticmethod
    def _user_email(state: State) -> Any:
        v = _get(state, "user", "email")
        return v.strip().lower() if type(v) is str else v

    @staticmethod
    def _search_term(state: State) -> Any:
        v = _get(state, "search", "term")
        return " ".join(v.split()).lower() if type(v) is str else v

    # -------------------------------------------------------------- destinations
    def _timestamp(self, now: float) -> str:
        second, text = self._second
        whole = now // 1
        if whole != second:
            text = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            self._second = (whole, text)
        micros = round((now - whole) * 1e6)
        return f"{text}{micros // 1000:03d}Z"

    def _edge(
        self,
        now: float,
        event_type: str,
        xdm: State,
        data: State | None,
        out: list[HandRequest],
        *,
        scopes: list[str] | None = None,
        datastream: str | None = None,
    ) -> None:
        event_id = self.event_id()
        event: State = {
            "xdm": {
                "eventType": event_type,
                "timestamp": self._timestamp(now),
                "_id": event_id,
                "implementationDetails": self.implementation,
                **xdm,
            }
        }
        if data:
            event["data"] = data
        query: State = {"identity": {"fetch": ["ECID"]}}
        if scopes:
            query["personalization"] = {
                "schemas": _SCHEMAS,
                "decisionScopes": scopes,
                "surfaces": [],
            }
        meta: State = {"state": {"domain": self.sites.domain, "cookiesEnabled": True}}
        configured = self.sites.datastream
        if datastream is not None and datastream != configured:
            meta["sdkConfig"] = {"datastream": {"original": configured}}
        body = {"event": event, "query": query, "meta": meta}
        url = f"{self.edge_base}{datastream or configured}&requestId={self.request_id()}"
        out.append(("edge", "POST", url, _JSON_HEADERS, orjson.dumps(body)))

    def _sitecore(
        self, s: _Session, state: State, event_type: str, fields: State, out: list[HandRequest]
    ) -> None:
        browser_id = s.browser_id
        if browser_id is None:
            browser_id = s.browser_id = self.browser_id()
        sites = self.sites
        message = {
            "channel": sites.channel,
            "type": event_type,
            "language": _language(self._page_lang(state)),
            "currency": sites.currency,
            "page": self._page_name(state),
            "pos": sites.pos,
            "browser_id": browser_id,
            **fields,
        }
        query = urlencode(
            [("client_key", sites.client_key), ("message", orjson.dumps(message).decode())],
            quote_via=quote,
        )
        out.append(("sitecore", "GET", self.sitecore_base + query, (), b""))

    # -------------------------------------------------------------- the rules, in order
    def purchase(self, s: _Session, state: State, info: State, now: float, out: list[Any]) -> None:
        order_id = info.get("orderId")
        if type(order_id) is str:
            order_id = order_id.strip().upper()
        if order_id is None:
            return
        total = self._cart_total(state)
        if total is None or not total > 0 or _truthy(_get(state, "user", "internal")):
            return
        if "Purchase" in s.fired:  # limit 1 per session
            return
        payment = _lower(info.get("paymentType"))
        if payment is None:
            payment = "credit_card"
        items = self._cart_items(state)
        xdm: State = {
            "commerce": {
                "purchases": {"value": 1},
                "order": {
                    "purchaseID": order_id,
                    "priceTotal": total,
                    "currencyCode": "EUR",
                    "payments": [
                        {"paymentType": payment, "paymentAmount": total, "currencyCode": "EUR"}
                    ],
                },
            },
            "productListItems": items,
        }
        data = {
            _ANALYTICS: {"analytics": {"purchaseID": order_id}},
            "orderLabel": f"Order {_text(order_id)} ({_text(self._user_tier(s, state))})",
            "cartValue": total,
        }
        revenue = "1f0a7c9e-2b1d-4e3f-8a5b-6c7d8e9f0a1b"
        self._edge(now, "commerce.purchases", xdm, data, out, datastream=revenue)
        fields = {"reference_id": order_id, "status": "PURCHASED"}
        self._sitecore(s, state, "CHECKOUT", fields, out)
        s.fired.add("Purchase")

    def page_view(self, s: _Session, state: State, info: State, now: float, out: list[Any]) -> None:
        url = _get(state, "page", "url")
        if type(url) is str and url.startswith("https://staging."):
            return
        name = self._page_name(state)
        page_type = self._page_type(state)
        section = _lower(_get(state, "page", "section"))
        if section is None:
            section = "home"
        campaign = _kept(s.kept, "campaign", _lower(_trim(info.get("campaign"))))
        if campaign is None:
            campaign = "direct"
        details: State = {"name": name}
        if url is not None:
            details["URL"] = url
        details["siteSection"] = section
        details["pageViews"] = {"value": 1}
        analytics: State = {"eVar1": f"{_text(page_type)}:{name}", "eVar2": campaign}
        crumbs = _get(state, "page", "breadcrumbs")
        if type(crumbs) is list:
            analytics["prop2"] = " > ".join([_text(c) for c in crumbs if c is not None])
        elif crumbs is not None:
            analytics["prop2"] = crumbs
        xdm = {"web": {"webPageDetails": details}}
        data = {_ANALYTICS: {"analytics": analytics}}
        self._edge(now, "web.webpagedetails.pageViews", xdm, data, out, scopes=["hero-banner"])
        logged_in = _get(state, "user", "loggedIn")
        ext = {
            "pageType": page_type,
            "siteSection": section,
            "loggedIn": False if logged_in is None else _truthy(logged_in),
            "campaign": campaign,
        }
        self._sitecore(s, state, "VIEW", {"ext": ext}, out)

    def product_view(
        self, s: _Session, state: State, info: State, now: float, out: list[Any]
    ) -> None:
        sku = self._product_sku(state)
        if sku is None:
            return
        item: State = {"SKU": sku}
        name = self._product_name(state)
        if name is not None:
            item["name"] = name
        price = self._product_price(state)
        if price is not None:
            item["priceTotal"] = price
        item["quantity"] = 1
        item["currencyCode"] = "EUR"
        item["productCategories"] = [{"categoryName": self._product_category(state)}]
        xdm = {"commerce": {"productViews": {"value": 1}}, "productListItems": [item]}
        found = self._list_name(s, info)
        data = {_ANALYTICS: {"analytics": {"eVar10": "direct" if found is None else found}}}
        self._edge(now, "commerce.productViews", xdm, data, out)

    def cart_add(self, s: _Session, state: State, info: State, now: float, out: list[Any]) -> None:
        sku = self._product_sku(state)
        if sku is None:
            return
        quantity = info.get("quantity")
        quantity = _number(1 if quantity is None else quantity)
        if quantity is None or not quantity > 0:
            return
        name = self._product_name(state)
        price = self._product_price(state)
        total = None if price is None else _round2(price * quantity)
        cart_id = self._cart_id(state)
        commerce: State = {"productListAdds": {"value": 1}}
        if cart_id is not None:
            commerce["cart"] = {"cartID": cart_id}
        item: State = {"SKU": sku}
        if name is not None:
            item["name"] = name
        item["quantity"] = quantity
        if total is not None:
            item["priceTotal"] = total
        item["currencyCode"] = "EUR"
        products = f";{sku};{_text(quantity)};{_text(total)}"
        xdm = {"commerce": commerce, "productListItems": [item]}
        data = {_ANALYTICS: {"analytics": {"products": products}}}
        self._edge(now, "commerce.productListAdds", xdm, data, out)
        category = self._product_category(state)
        product = {
            "type": category.upper() if type(category) is str else category,
            "item_id": sku,
            "productId": sku,
            "name": name,
            "quantity": quantity,
            "price": price,
            "currency": "EUR",
            "orderedAt": _get(state, "cart", "updatedAt"),
            "referenceId": cart_id,
        }
        brand = _get(state, "product", "brand")
        listed = self._list_name(s, info)
        ext = {
            "productBrand": "Spinair" if brand is None else brand,
            "productCategory": category,
            "listName": "direct" if listed is None else listed,
        }
        fields = {"product": {k: v for k, v in product.items() if v is not None}, "ext": ext}
        self._sitecore(s, state, "ADD", fields, out)

    def checkout(self, s: _Session, state: State, now: float, out: list[Any]) -> None:
        items = self._cart_items(state)
        if not len(items) > 0:
            return
        cart_id = self._cart_id(state)
        commerce: State = {"checkouts": {"value": 1}}
        if cart_id is not None:
            commerce["cart"] = {"cartID": cart_id}
        xdm = {"commerce": commerce, "productListItems": items}
        self._edge(now, "commerce.checkouts", xdm, None, out)
        lines = _get(state, "cart", "lineRefs")
        self._sitecore(s, state, "CONFIRM", {} if lines is None else {"product": lines}, out)

    def high_value_cart(self, s: _Session, state: State, event: str, out: list[Any]) -> None:
        total = self._cart_total(state)
        if total is None or not total >= 250 or "High-value cart" in s.fired:
            return
        ext = {"cartValue": total, "cartSize": len(self._cart_items(state)), "trigger": event}
        self._sitecore(s, state, "HIGH_VALUE_CART", {"ext": ext}, out)
        s.fired.add("High-value cart")

    def wishlist_update(self, s: _Session, state: State, now: float, out: list[Any]) -> None:
        items = _get(state, "wishlist", "items")
        if items is None:
            items = []
        if not len(items) > 0:
            return
        xdm = {"commerce": {"saveForLaters": {"value": 1}}, "productListItems": items}
        self._edge(now, "commerce.saveForLaters", xdm, None, out)
        ext = {"wishlistSize": len(items)}
        self._sitecore(s, state, "WISHLIST_UPDATE", {"ext": ext}, out)

    _EMAIL = re.compile(r"^[^@ ]+@[^@ ]+\.[a-z]{2,}$")

    def login(self, s: _Session, state: State, now: float, out: list[Any]) -> None:
        email = self._user_email(state)
        if type(email) is not str or self._EMAIL.search(email) is None:
            return
        customer = self._customer_id(s, state)
        crm: State = {} if customer is None else {"id": customer}
        crm["authenticatedState"] = "authenticated"
        crm["primary"] = False
        xdm = {"userAccount": {"login": {"value": 1}}, "identityMap": {"CRMID": [crm]}}
        self._edge(now, "userAccount.login", xdm, None, out)
        first, last = (
            _trim(_get(state, "user", "firstName")),
            _trim(_get(state, "user", "lastName")),
        )
        tier = self._user_tier(s, state)
        fields: State = {"identifiers": [{"provider": "email", "id": email}], "email": email}
        if first is not None:
            fields["firstname"] = first
        if last is not None:
            fields["lastname"] = last
        ext: State = {"loyaltyTier": "none" if tier is None else tier}
        customer = self._customer_id(s, state)
        if customer is not None:
            ext["customerId"] = customer
        fields["ext"] = ext
        self._sitecore(s, state, "IDENTITY", fields, out)

    def error_page(self, s: _Session, state: State, out: list[Any]) -> None:
        page_type = self._page_type(state)
        if page_type != "404" and page_type != "error":
            return  # sample 100%: every session is in
        ext: State = {"errorType": page_type}
        url = _get(state, "page", "url")
        if url is not None:
            ext["brokenUrl"] = url
        self._sitecore(s, state, "ERROR_PAGE", {"ext": ext}, out)

    def site_search(self, s: _Session, state: State, now: float, out: list[Any]) -> None:
        term = self._search_term(state)
        if term is None or term == "" or (type(term) is str and term.startswith("qa-")):
            return
        count = _get(state, "search", "resultCount")
        count = _number(0 if count is None else count)
        category = _get(state, "search", "category")
        if type(category) is str:
            category = category.upper()
        if category is None:
            category = "ALL"
        analytics: State = {"eVar5": term}
        if count is not None:
            analytics["prop5"] = count
        xdm = {"searchRequest": {"value": 1}, "siteSearch": {"query": term}}
        data = {
            _ANALYTICS: {"analytics": analytics},
            "search": {"category": category, "zeroResults": count == 0},
        }
        self._edge(now, "searchRequest", xdm, data, out)
        ext: State = {"searchTerm": term}
        if count is not None:
            ext["resultCount"] = count
        fields = {"product_name": term, "product_type": category, "ext": ext}
        self._sitecore(s, state, "SEARCH", fields, out)


# ------------------------------------------------------------------ the journey
def load_journey(path: Path = JOURNEY) -> list[tuple[str, State]]:
    """``(session, push)`` of each line of the journey, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(entry["session"], entry["push"]) for entry in map(json.loads, filter(None, lines))]


def wire(request: Any) -> HandRequest:
    """What an engine :class:`~engine.destinations.base.Request` puts on the wire."""
    return (request.destination, request.method, request.url, request.headers, request.body_bytes)


def _counter(prefix: str) -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers):05d}"


def check_equivalence(
    rules: Path | str = RULES, journey: Sequence[tuple[str, State]] | None = None
) -> int:
    """Replay the journey through the engine (dry run) and the floor with the same clock and
    ids; raise ``AssertionError`` at the first push whose requests differ in any byte.
    Returns the number of requests compared."""
    from engine import Engine
    from engine.runtime import Ids

    journey = load_journey() if journey is None else journey
    now = 1_748_858_400.123
    ids = Ids(
        event_id=_counter("event"), request_id=_counter("request"), browser_id=_counter("browser")
    )
    floor_ids = {
        "event_id": _counter("event"),
        "request_id": _counter("request"),
        "browser_id": _counter("browser"),
    }
    compared = 0
    with Engine.from_path(rules, dry_run=True, clock=lambda: now, ids=ids) as engine:
        floor = Floor(Sites.of(engine.ruleset), **floor_ids)
        for index, (session, item) in enumerate(journey):
            got = [wire(send.request) for send in engine.push(item, session=session).sends]
            expected = floor.push(session, item, now)
            if got != expected:
                raise AssertionError(
                    f"push {index + 1} ({json.dumps(item)[:80]}): the engine sent\n"
                    + "\n".join(map(repr, got))
                    + "\nthe floor sent\n"
                    + "\n".join(map(repr, expected))
                )
            compared += len(got)
    return compared


# ------------------------------------------------------------------ timing
@dataclass
class Contender:
    """One way to run the journey: ``run(tag)`` replays it ``journeys`` times on fresh
    sessions named with ``tag`` and returns ``(wall, cpu)`` seconds; ``reset(tag)`` drops
    those sessions (untimed)."""

    name: str
    run: Callable[[str], tuple[float, float]]
    reset: Callable[[str], None]
    wall: list[float] = field(default_factory=list)  # µs per push, one per round
    cpu: list[float] = field(default_factory=list)


def _work(journey: Sequence[tuple[str, State]], journeys: int, tag: str) -> list[tuple[str, State]]:
    return [(f"{session}#{tag}.{n}", item) for n in range(journeys) for session, item in journey]


def floor_contender(journey: Sequence[tuple[str, State]], journeys: int, sites: Sites) -> Contender:
    floor = Floor(sites)
    clock = time.time

    def run(tag: str) -> tuple[float, float]:
        work = _work(journey, journeys, tag)
        push = floor.push
        wall, cpu = time.perf_counter(), time.thread_time()
        for session, item in work:
            push(session, item, clock())
        return time.perf_counter() - wall, time.thread_time() - cpu

    def reset(tag: str) -> None:
        floor.sessions.clear()
        floor.visitors.clear()

    return Contender("floor (hand-written)", run, reset)


def engine_contender(
    name: str, engine: Any, journey: Sequence[tuple[str, State]], journeys: int
) -> Contender:
    def run(tag: str) -> tuple[float, float]:
        work = _work(journey, journeys, tag)
        push = engine.push
        wall, cpu = time.perf_counter(), time.thread_time()
        for session, item in work:
            push(item, session=session)
        return time.perf_counter() - wall, time.thread_time() - cpu

    def reset(tag: str) -> None:
        engine.flush(30)  # background mode: delivered before the next round (untimed)
        for session in {session for session, _ in _work(journey, journeys, tag)}:
            engine.sessions.remove(session)

    return Contender(name, run, reset)


def _no_op_http() -> Any:
    """An httpx client whose transport answers every request at once, in process."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        if "/browser/create" in request.url.path:
            return httpx.Response(200, json={"ref": new_id(), "customer_ref": new_id()})
        if request.url.host.startswith("api-engage") or "/event/" in request.url.path:
            return httpx.Response(200, json={"ref": new_id(), "status": "OK"})
        return httpx.Response(200, json={"requestId": "r", "handle": []})

    return httpx.Client(transport=httpx.MockTransport(answer))


def measure(contenders: Sequence[Contender], rounds: int, journey_len: int, journeys: int) -> None:
    """Interleaved rounds, the order rotating, a full collection before each run."""
    pushes = journey_len * journeys
    for index in range(rounds):
        shift = index % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            tag = f"r{index}"
            gc.collect()
            wall, cpu = contender.run(tag)
            contender.wall.append(wall / pushes * 1e6)
            contender.cpu.append(cpu / pushes * 1e6)
            contender.reset(tag)


def ratios(engine: list[float], floor: list[float]) -> float:
    """The median of the rounds' ratios (each round measures both side by side)."""
    return statistics.median(e / f for e, f in zip(engine, floor, strict=True))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(quick: bool, *, rounds: int | None = None, journeys: int | None = None) -> None:
    """Check the floor against the engine, then time both and print the rows."""
    from engine import Engine
    from engine.loader import load_ruleset

    journey = load_journey()
    compared = check_equivalence(RULES, journey)
    print(
        f"Equivalence: {len(journey)} pushes of {JOURNEY.name}, {compared} requests "
        "byte-identical (method, URL, headers, body) between the engine and the floor"
    )
    ruleset = load_ruleset(RULES)
    sites = Sites.of(ruleset)
    journeys = journeys or (4 if quick else 10)
    rounds = rounds or (7 if quick else 25)
    floor = floor_contender(journey, journeys, sites)
    dry_engine = Engine(ruleset, dry_run=True)
    http = _no_op_http()
    background_engine = Engine(ruleset, background=True, http=http)
    dry = engine_contender("engine, dry run", dry_engine, journey, journeys)
    background = engine_contender("engine, background", background_engine, journey, journeys)
    try:
        for contender in (floor, dry, background):  # warm up: compiled code, caches
            contender.run("warm")
            contender.reset("warm")
        measure((floor, dry, background), rounds, len(journey), journeys)
    finally:
        dry_engine.close()
        background_engine.close()
        http.close()
    print(
        f"Timing: {rounds} interleaved rounds of {journeys} journeys "
        f"({journeys * len(journey)} pushes) each; medians of the rounds"
    )
    for contender in (floor, dry, background):
        print(
            f"  {contender.name:<22} {statistics.median(contender.wall):7.1f} µs/push wall, "
            f"{statistics.median(contender.cpu):7.1f} µs/push CPU of the pushing thread"
        )
    dry_ratio = ratios(dry.cpu, floor.cpu)
    background_ratio = ratios(background.cpu, floor.cpu)
    print(
        f"  dry run:    {dry_ratio:.2f}x the floor   target <= {DRY_TARGET}x: "
        f"{verdict(dry_ratio <= DRY_TARGET)}  (CPU; wall {ratios(dry.wall, floor.wall):.2f}x)"
    )
    print(
        f"  background: {background_ratio:.2f}x the floor   target <= {BACKGROUND_TARGET}x: "
        f"{verdict(background_ratio <= BACKGROUND_TARGET)}  (CPU of the pushing thread; "
        f"wall {ratios(background.wall, floor.wall):.2f}x)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    options.add_argument("--quick", action="store_true", help="fewer rounds")
    args = options.parse_args(argv)
    started = time.perf_counter()
    print(f"Python {sys.version.split()[0]}; tagengine {_version()}; {hot_path()}\n")
    try:
        run(args.quick)
    except Exception as error:  # a benchmark never raises: it says what stopped it
        print(f"  ERROR: the floor stopped: {type(error).__name__}: {error}")
    print()
    # ---------------------------------------------------------------- rows from other modules
    # The GC-pause row and the session-size row are measured by their own modules; each is
    # optional, so that the floor runs without them.
    try:
        from benchmarks import stalls

        print(stalls.row())
    except ImportError:
        pass
    try:
        from benchmarks import memory

        print(memory.row())
    except ImportError:
        pass
    print(f"\nTotal time {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
