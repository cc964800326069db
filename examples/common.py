"""What the examples share: their engine, made from the environment, and a page to try.

- ``TAGENGINE_RULES``: the rules (``rules/``).
- ``TAGENGINE_EMULATOR``: the URL of a local emulator (``tagengine emulator``) to deliver
  to. Without it, a process that delivers starts one of its own on a free loopback port and
  logs its URL (``GET <url>/emulator/requests`` lists what it received): no account needed.
- ``TAGENGINE_OUTBOX``: a SQLite file or ``redis://…``: background mode, a push returns
  once its sends are durable there.
- ``TAGENGINE_SESSIONS``: ``redis://…``: sessions shared by every worker.
- ``TAGENGINE_DELIVER=0``: push only; a ``tagengine deliver --outbox …`` process delivers.
- ``TAGENGINE_COOKIE_SECRET``: the key of the visitor cookies, the same in every worker.
- ``TAGENGINE_RATE_LIMITS=off``: no per-IP and per-visitor limits (a load test from one
  address, benchmarks/web.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from engine import Engine
from engine.emulator import EmulatorServer, emulator_config
from engine.loader import load_ruleset
from engine.web.core import CollectSettings

__all__ = ["PAGE", "collect_options", "make_engine"]

log = logging.getLogger("examples")

_emulator: EmulatorServer | None = None


def _emulator_url(rules: str) -> str:
    global _emulator
    url = os.environ.get("TAGENGINE_EMULATOR")
    if url:
        return url.rstrip("/")
    if _emulator is None:
        _emulator = EmulatorServer(config=emulator_config(load_ruleset(rules))).start()
        log.warning("tagengine example: emulator of this process on %s", _emulator.url)
    return _emulator.url


def make_engine() -> Engine:
    """The examples' engine (see the module docstring)."""
    env = os.environ
    rules = env.get("TAGENGINE_RULES", "rules/")
    options: dict[str, Any] = {}
    if env.get("TAGENGINE_SESSIONS"):
        options["sessions"] = env["TAGENGINE_SESSIONS"]
    if env.get("TAGENGINE_OUTBOX"):
        options.update(background=True, outbox=env["TAGENGINE_OUTBOX"])
    if env.get("TAGENGINE_DELIVER", "1") == "0":
        options["deliver"] = False  # `tagengine deliver` delivers: no emulator here
    else:
        url = _emulator_url(rules)
        options.update(edge_url=url, sitecore_url=url, token_url=f"{url}/ims/token/v3")
    return Engine.from_path(rules, **options)


def collect_options() -> dict[str, Any]:
    """The endpoint's options (:class:`engine.web.core.CollectSettings`) for the examples.

    A process that only pushes, with sessions in its own memory, never sees the identity a
    delivery worker gets from Edge: its answers do not wait for it (``identity="none"``)."""
    env = os.environ
    options: dict[str, Any] = {}
    if env.get("TAGENGINE_DELIVER", "1") == "0" and not env.get("TAGENGINE_SESSIONS"):
        options["identity"] = "none"
    if env.get("TAGENGINE_RATE_LIMITS") == "off":
        known = {f.name for f in dataclasses.fields(CollectSettings)}
        options.update({k: None for k in ("rate_limit_ip", "rate_limit_visitor") if k in known})
    return options


# A page that loads the forwarder and pushes a page view, as a shop's would.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Spinair (tagengine example)</title>
<script>
  window.adobeDataLayer = window.adobeDataLayer || [];
  window.adobeDataLayer.push({event: "page.view", page: {name: "Spinair | Home", type: "Home",
    section: "Home", url: location.href, language: "en", breadcrumbs: ["Home"]}});
</script>
<script src="/collect/tagengine.js" async></script>
</head><body>
<h1>Spinair</h1>
<p><button onclick="adobeDataLayer.push({event: 'commerce.cartAdd', eventInfo: {quantity: 1},
  cart: {id: 'C-1', total: 129.9, items: [{SKU: 'SP-TR-001', name: 'Trail Runner X',
  quantity: 1, priceTotal: 129.9}]}})">Add to cart</button></p>
</body></html>
"""
