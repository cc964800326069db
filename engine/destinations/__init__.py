"""Pure request builders: a rule's send fields → the exact HTTP request a destination receives.

No I/O, no clock, no random ids: the dispatcher passes ids, times and the session's identity,
then sends :class:`Request` as built (adding authentication headers itself)::

    request = build_edge_request(fields, settings, rule="Purchase", identity=session_identity,
                                 timestamp="2026-05-04T09:15:02.120Z", event_id=uuid4_text,
                                 request_id=uuid4_text)
    check_size(request)          # PayloadTooLarge above 64 KB, before any network call

:func:`batch_collect` merges a session's consecutive Edge collect requests into batches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.destinations.base import EDGE_SIZE_LIMIT, Request, check_size, largest_fields
    from engine.destinations.edge import (
        MAX_BATCH_EVENTS,
        Batch,
        batch_collect,
        build_edge_request,
    )
    from engine.destinations.sitecore import (
        build_browser_request,
        build_sitecore_request,
        flatten_ext,
    )

__all__ = [
    "EDGE_SIZE_LIMIT",
    "MAX_BATCH_EVENTS",
    "Batch",
    "Request",
    "batch_collect",
    "build_browser_request",
    "build_edge_request",
    "build_sitecore_request",
    "check_size",
    "flatten_ext",
    "largest_fields",
]

# Imported on first use (PEP 562): the checker needs only engine.destinations.edge_fields, and
# importing this package must not load the builders (orjson, importlib.metadata, the settings
# models) on the way, so that `tagengine check` starts fast.
_LAZY = {
    "EDGE_SIZE_LIMIT": "engine.destinations.base",
    "Request": "engine.destinations.base",
    "check_size": "engine.destinations.base",
    "largest_fields": "engine.destinations.base",
    "MAX_BATCH_EVENTS": "engine.destinations.edge",
    "Batch": "engine.destinations.edge",
    "batch_collect": "engine.destinations.edge",
    "build_edge_request": "engine.destinations.edge",
    "build_browser_request": "engine.destinations.sitecore",
    "build_sitecore_request": "engine.destinations.sitecore",
    "flatten_ext": "engine.destinations.sitecore",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.destinations' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
