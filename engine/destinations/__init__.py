"""Pure request builders: a rule's send fields → the exact HTTP request a destination receives.

No I/O, no clock, no random ids: the dispatcher passes ids, times and the session's identity,
then sends :class:`Request` as built (adding authentication headers itself)::

    request = build_edge_request(fields, settings, rule="Purchase", identity=session_identity,
                                 timestamp="2026-05-04T09:15:02.120Z", event_id=uuid4_text,
                                 request_id=uuid4_text)
    check_size(request)          # PayloadTooLarge above 64 KB, before any network call

:func:`batch_collect` merges a session's consecutive Edge collect requests into batches.
"""

from engine.destinations.base import EDGE_SIZE_LIMIT, Request, check_size, largest_fields
from engine.destinations.edge import MAX_BATCH_EVENTS, Batch, batch_collect, build_edge_request
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
