"""Decision scopes the emulator personalizes, and the ``personalization:decisions``
propositions it answers for them (research/adobe-edge.md §3.2, example §3.4).

A scopes file is a JSON object: decision scope (or ``web://`` surface) → list of items. An item
is ``{"id"?, "schema"?, "content"}`` (a JSON offer: ``content`` becomes ``data.content``) or
``{"id"?, "schema"?, "data": {...}}`` (used as the item's ``data`` verbatim), optionally with
``"meta": {...}``. ``schema`` defaults to the json-content-item schema; a short name such as
``"dom-action"`` is prefixed with ``https://ns.adobe.com/personalization/``::

    {"hero-banner": [{"id": "hero-a", "content": {"headline": "Spring sale"}}],
     "__view__": [{"schema": "dom-action",
                   "data": {"type": "setHtml", "selector": "#hero h1", "content": "Hi"}}]}
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_SCOPES", "Scopes", "load_scopes", "normalize_scopes", "proposition"]

_SCHEMA = "https://ns.adobe.com/personalization/"
JSON_ITEM = _SCHEMA + "json-content-item"
Scopes = dict[str, list[dict[str, Any]]]
"""Normalized scopes: name → items, each ``{"id", "schema", "data", "meta"?}``."""

DEFAULT_SCOPES_SOURCE: dict[str, list[dict[str, Any]]] = {
    "hero-banner": [
        {
            "id": "hero-banner-spring",
            "content": {"headline": "Spring sale", "cta": "Shop now", "image": "/img/spring.jpg"},
            "meta": {"activity.name": "Hero test", "experience.name": "Experience A"},
        }
    ],
    "__view__": [
        {
            "id": "view-welcome",
            "schema": "dom-action",
            "data": {
                "type": "setHtml",
                "format": "application/vnd.adobe.target.dom-action",
                "selector": "#hero h1",
                "content": "Welcome back",
            },
        }
    ],
}


def normalize_scopes(source: Mapping[str, Any], *, origin: str = "scopes") -> Scopes:
    """Validate scope data and fill item defaults; raises :class:`ValueError` naming
    ``origin`` and the offending scope."""
    if not isinstance(source, Mapping):
        raise ValueError(f"{origin}: expected a JSON object of scope → list of items")
    out: Scopes = {}
    for scope, items in source.items():
        if not isinstance(scope, str) or not scope:
            raise ValueError(f"{origin}: a decision scope name must be a non-empty string")
        if not isinstance(items, list) or not items:
            raise ValueError(f"{origin}: scope {scope!r} needs a non-empty list of items")
        out[scope] = [_item(scope, i, item, origin) for i, item in enumerate(items)]
    return out


def load_scopes(path: Path) -> Scopes:
    """The scopes in a JSON file (see the module docstring); :class:`ValueError` when the
    file cannot be read or has the wrong shape."""
    try:
        source = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the scopes file: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    return normalize_scopes(source, origin=str(path))


def proposition(scope: str, items: list[dict[str, Any]], ecid: str) -> dict[str, Any]:
    """A Target-style proposition for ``scope`` holding ``items``; the event token varies with
    the visitor, the ids are stable per scope."""
    activity = str(_number(scope) % 900000 + 100000)
    proposition_id = "AT:" + _b64(
        json.dumps({"activityId": activity, "experienceId": "0"}, separators=(",", ":"))
    )
    characteristics: dict[str, Any] = {"eventToken": _b64(f"{scope}|{ecid}")}
    if scope == "__view__":
        characteristics["scopeType"] = "page"
    return {
        "id": proposition_id,
        "scope": scope,
        "scopeDetails": {
            "decisionProvider": "TGT",
            "activity": {"id": activity},
            "experience": {"id": "0"},
            "strategies": [{"algorithmID": "0", "trafficType": "0"}],
            "characteristics": characteristics,
            "correlationID": f"{activity}:0:0",
        },
        "items": [dict(item) for item in items],
    }


def _item(scope: str, index: int, item: Any, origin: str) -> dict[str, Any]:
    where = f"{origin}: scope {scope!r} item {index}"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected an object")
    unknown = set(item) - {"id", "schema", "content", "data", "meta"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    item_id = item.get("id", f"{scope}-{index}")
    schema = item.get("schema", JSON_ITEM)
    if not isinstance(item_id, str) or not isinstance(schema, str):
        raise ValueError(f"{where}: 'id' and 'schema' must be strings")
    if "://" not in schema:
        schema = _SCHEMA + schema
    if ("data" in item) == ("content" in item):
        raise ValueError(f"{where}: give exactly one of 'content' or 'data'")
    data = item.get("data")
    if data is None:
        data = {"id": item_id, "format": "application/json", "content": item["content"]}
    elif not isinstance(data, Mapping):
        raise ValueError(f"{where}: 'data' must be an object")
    meta = item.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise ValueError(f"{where}: 'meta' must be an object")
    out: dict[str, Any] = {"id": item_id, "schema": schema, "data": dict(data)}
    if meta:
        out["meta"] = dict(meta)
    return out


def _number(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


DEFAULT_SCOPES: Scopes = normalize_scopes(DEFAULT_SCOPES_SOURCE, origin="built-in scopes")
