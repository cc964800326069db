"""Adobe Experience Platform Edge Network: the HTTP request for one ``send event``
(docs/destinations.md, "Adobe Experience Platform Edge Network").

:func:`build_edge_request` is pure: ids, the timestamp and the session's identity are
parameters. It reads these keys of the session-owned ``identity`` mapping (all optional,
unknown keys ignored):

``ecid`` (``str | None``)
    The visitor's ECID from an earlier ``identity:result``. Added to ``xdm.identityMap.ECID``
    as ``{id, authenticatedState: "ambiguous", primary}``, ``primary`` true unless another
    namespace already has a primary identity, and the rule's own ``ECID`` list replaces it.
``entries`` (``list`` of ``{"key", "value", "maxAge"?, "expires"?, "attrs"?}``)
    Stored ``state:store`` entries. Those whose ``expires`` (epoch seconds) is at or before
    ``now`` are left out; the others go to ``meta.state.entries`` as ``{key, value}`` (a later
    entry replaces an earlier one with the same key). ``maxAge`` alone cannot expire anything
    here: the store turns it into ``expires`` when it keeps the entry.
``location_hint`` (``str | None``)
    The Edge cluster (``or2``, ``va6``…), put in the path as ``/ee/{hint}/…``. A value that is
    not 1–64 letters, digits, ``-`` or ``_`` is ignored. On the authenticated host
    ``server.adobedc.net`` it goes in the host instead, ``https://{hint}.server.adobedc.net/ee/v2/…``
    as Adobe's server-side sample sends it (alloy-samples ``common/aepEdgeClient.js``), when it
    is a DNS label (letters, digits, ``-``; at most 63), else it is ignored.
``identity_map`` (``{namespace: [identity, …]}``)
    Identities the application supplies for the session (an ``FPID``, a ``CRM_ID``…), merged
    under the rule's ``identityMap``.

Whether the session "already has an identity" (collect vs interact when unloading) is
``has_identity`` when given, else: an ``ecid``, or an entry whose key ends in ``_identity``.

Nulls: keys whose value is ``null`` (and ``null`` list items) are dropped from ``xdm``,
``data`` and ``identityMap`` before merging, and objects left empty by that are dropped too
(:func:`~engine.destinations.base.drop_nulls`): Edge and XDM reject nulls, and an analyst's
``state.x`` that is missing must neither send ``"x": null`` nor erase an automatic field.

:func:`batch_collect`, pure too, merges consecutive ``collect`` requests of one session into
batches (``{"events": [...], "meta": {...}}`` takes several events; interact takes one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter, methodcaller
from typing import Any, Literal, NamedTuple
from urllib.parse import quote, urlsplit

from engine.context import VisitorContext
from engine.destinations.base import (
    EDGE_SIZE_LIMIT,
    ENGINE_VERSION,
    READ_BACK,
    Request,
    deep_merge,
    new_request,
)
from engine.destinations.edge_fields import (
    MAX_DECISION_SCOPES,
    PROPOSITION_EVENT_TYPES,
    PROPOSITIONS_NEED_TYPE,
    SurfaceError,
    identity_map_problems,
    normalize_surface,
    page_surface,
    proposition_meta,
    proposition_notification,
)
from engine.destinations.encoding import drop_nulls, percent_encode, plain_json, serialize_bytes
from engine.errors import DispatchError, EvaluationError
from engine.settings import EdgeSettings

__all__ = [
    "IMPLEMENTATION_NAME",
    "MAX_BATCH_EVENTS",
    "PAGE_WIDE_SCOPE",
    "PERSONALIZATION_SCHEMAS",
    "Batch",
    "EdgePlan",
    "batch_collect",
    "build_edge_request",
    "plan_edge_send",
    "proposition_notification",
]

IMPLEMENTATION_NAME = "https://ns.adobe.com/experience/tagengine"
PAGE_WIDE_SCOPE = "__view__"
VIEW_START = "viewStart"
PAGE_VIEW = "web.webpagedetails.pageViews"
_SCHEMA = "https://ns.adobe.com/personalization/"
PERSONALIZATION_SCHEMAS = tuple(
    _SCHEMA + name
    for name in (
        "default-content-item",
        "html-content-item",
        "json-content-item",
        "redirect-item",
        "ruleset-item",
        "message/in-app",
        "message/content-card",
    )
)
DOM_ACTION_SCHEMA = _SCHEMA + "dom-action"
AUTHENTICATED_HOST = "server.adobedc.net"
_HINT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HOST_HINT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # one DNS label
_HEADERS = (("Content-Type", "application/json"),)
MAX_BATCH_EVENTS = 100
"""At most this many events in one merged collect request, by default."""


def build_edge_request(
    fields: Mapping[str, Any],
    settings: EdgeSettings,
    *,
    rule: str,
    identity: Mapping[str, Any],
    timestamp: str,
    event_id: str,
    request_id: str,
    version: str = ENGINE_VERSION,
    has_identity: bool | None = None,
    now: float | None = None,
    context: VisitorContext | None = None,
) -> Request:
    """The Edge request for a ``send event`` whose fields are ``fields`` (as built by the rule).

    ``timestamp`` (ISO-8601 UTC) becomes ``xdm.timestamp``, ``event_id`` ``xdm._id``,
    ``request_id`` the ``requestId`` parameter. ``now`` (epoch seconds) expires state
    entries; it defaults to ``timestamp``. Raises :class:`~engine.errors.EvaluationError` when
    a field has the wrong shape or a value the Web SDK refuses (an ``identityMap`` that fails
    its ``validateIdentityMap``, a surface it cannot normalise, more than
    :data:`~engine.destinations.edge_fields.MAX_DECISION_SCOPES` decision scopes) and
    :class:`~engine.errors.DispatchError` when no datastream id is configured.
    """
    args = (settings, rule, identity, timestamp, event_id, request_id, version, has_identity)
    # Most sends hold no null: their xdm and data are written as they are, once, and the
    # body read back from the bytes (a copy sharing nothing with the fields). A null (or a
    # value orjson does not write as json does) takes the way that drops them first.
    request = _build(fields, *args, now, context, copy=False)
    if request is None:
        request = _build(fields, *args, now, context, copy=True)
        assert request is not None  # the copying way always builds one (or raises)
    return request


def _build(
    fields: Mapping[str, Any],
    settings: EdgeSettings,
    rule: str,
    identity: Mapping[str, Any],
    timestamp: str,
    event_id: str,
    request_id: str,
    version: str,
    has_identity: bool | None,
    now: float | None,
    context: VisitorContext | None,
    *,
    copy: bool,
) -> Request | None:
    """:func:`build_edge_request`; without ``copy``, ``None`` for fields it must copy (an
    identity map, checked once its nulls are dropped) or whose body holds a null."""
    get = fields.get
    event_type = _text(fields, "type", rule)
    view_start = event_type == VIEW_START
    xdm_in: Mapping[str, Any]
    data: Mapping[str, Any]
    if copy:
        xdm_in = _object(get("xdm"), "xdm", rule)
        data = _object(get("data"), "data", rule)
    else:
        xdm_in = _mapping(get("xdm"), "xdm", rule)
        data = _mapping(get("data"), "data", rule)
        if get("identityMap") is not None or xdm_in.get("identityMap") is not None:
            return None
    shortcut = _object(get("identityMap"), "identityMap", rule)
    rule_map = xdm_in.get("identityMap")
    if rule_map is not None:  # most sends have none: no call for them (this runs per send)
        _check_identity_map(rule_map, "xdm.identityMap", rule)
    if shortcut:
        _check_identity_map(shortcut, "identityMap", rule)
    merge_id = _text(fields, "mergeId", rule)
    dataset_id = _text(fields, "datasetId", rule)
    # Most sends ask for no personalization: nothing of it is looked at then.
    personalization = _object(get("personalization"), "personalization", rule)
    if personalization:
        include_rendered = _flag(personalization, "includeRenderedPropositions", rule)
        default_personalization = _flag(personalization, "defaultPersonalizationEnabled", rule)
        # alloy hands decisionContext to its in-browser rules engine and never sends it:
        # checked for its shape, then left out.
        if personalization.get("decisionContext") is not None:
            _object(personalization["decisionContext"], "personalization.decisionContext", rule)
    else:
        include_rendered = default_personalization = None

    # -- xdm: automatic fields first, the rule's xdm merged over them
    auto: dict[str, Any] = {}
    if view_start:
        auto["eventType"] = PAGE_VIEW
    elif event_type is not None:
        auto["eventType"] = event_type
    auto["timestamp"] = timestamp
    auto["_id"] = event_id
    auto["implementationDetails"] = {
        "name": IMPLEMENTATION_NAME,
        "version": version,
        "environment": "server",
    }
    if context is not None and context.referer:
        # As Adobe's Server SDK: the page is the request's Referer, unless the rule says.
        auto["web"] = {"webPageDetails": {"URL": context.referer}}
    if identity or rule_map is not None or shortcut:  # a new session's identity is empty
        identity_map = _session_identity_map(identity, (rule_map, shortcut))
        if identity_map:
            auto["identityMap"] = identity_map
    if merge_id is not None:
        auto["eventMergeId"] = merge_id
    if "propositions" in fields:
        final_type = xdm_in.get("eventType")
        decisioning = _decisioning(
            fields,
            final_type if isinstance(final_type, str) else auto.get("eventType"),
            include_rendered,
            rule,
        )
        if decisioning is not None:
            auto["_experience"] = {"decisioning": decisioning}
    xdm = deep_merge(auto, xdm_in) if xdm_in else auto
    if shortcut:
        current = xdm.get("identityMap")
        xdm["identityMap"] = deep_merge(current if isinstance(current, Mapping) else {}, shortcut)
    if xdm.get("identityMap") == {}:
        del xdm["identityMap"]

    event: dict[str, Any] = {"xdm": xdm}
    if data:
        event["data"] = data

    # -- personalization query (interact only), as alloy's createPersonalizationDetails
    scopes = _strings(get("decisionScopes"), "decisionScopes", rule)
    if personalization:
        asked_scopes = personalization.get("decisionScopes")
        if asked_scopes is not None:
            scopes += _strings(asked_scopes, "personalization.decisionScopes", rule)
    if len(scopes) > 1:
        scopes = _dedupe(scopes)
    # A server has no "first call of the page" to add the page-wide scope to by default:
    # viewStart (the page's own start) and defaultPersonalizationEnabled: true do, and
    # defaultPersonalizationEnabled: false keeps even viewStart from asking, as in alloy.
    wants_page = default_personalization is True or (
        view_start and default_personalization is not False
    )
    if wants_page and PAGE_WIDE_SCOPE not in scopes:
        scopes.append(PAGE_WIDE_SCOPE)
    if len(scopes) > MAX_DECISION_SCOPES:
        page = f" and {PAGE_WIDE_SCOPE}" if wants_page else ""
        raise EvaluationError(
            f"rule {rule!r}: send event asks for {len(scopes)} decision scopes ('decisionScopes' "
            f"and 'personalization.decisionScopes' together{page}, without duplicates); Edge "
            f"takes at most {MAX_DECISION_SCOPES} in one request"
        )
    asked = personalization.get("surfaces") if personalization else None
    add_page = default_personalization is True
    surfaces = _surfaces(asked, xdm, add_page, rule) if asked is not None or add_page else []
    query_personalization = _query_personalization(scopes, surfaces)

    # -- datastream and overrides
    override_id, config_overrides = _overrides(get("edgeConfigOverrides"), dataset_id, rule)
    configured = settings.datastream or None
    datastream = override_id or configured
    if not datastream:
        raise DispatchError(
            f"rule {rule!r}: no Edge datastream id: set 'datastream' in the edge settings",
            destination="edge",
        )

    # -- meta
    state: dict[str, Any] = {"domain": settings.domain or "", "cookiesEnabled": True}
    if identity:
        entries = _state_entries(identity.get("entries"), now, timestamp)
        if entries:
            state["entries"] = entries
    meta: dict[str, Any] = {"state": state}
    if config_overrides:
        meta["configOverrides"] = config_overrides
    if override_id and configured and override_id != configured:
        meta["sdkConfig"] = {"datastream": {"original": configured}}

    # -- route and body
    if get("documentUnloading") is True and not view_start:
        if has_identity is None:
            has_identity = _has_identity(identity)
        collect = has_identity
    else:
        collect = False
    v2 = settings.api == "v2"
    body: dict[str, Any]
    if collect:
        body = {"events": [event], "meta": meta}
    elif v2:
        query: dict[str, Any] = {"identity": {"fetch": ["ECID"]}}
        if query_personalization is not None:
            query["personalization"] = query_personalization
        body = {"event": event, "query": query, "meta": meta}
    else:
        if query_personalization is not None:
            event["query"] = {"personalization": query_personalization}
        body = {"events": [event], "query": {"identity": {"fetch": ["ECID"]}}, "meta": meta}

    action: Literal["collect", "interact"] = "collect" if collect else "interact"
    base, hint = location_hint(identity.get("location_hint"), settings.url)
    path = f"{base}/ee{'/' + hint if hint else ''}/{settings.api}/{action}"
    url = (
        f"{path}?{'datastreamId' if v2 else 'configId'}={_query_value(datastream)}"
        f"&requestId={_query_value(request_id)}"
    )
    if collect and v2:
        url += "&silent=true"
    final_id = xdm.get("_id")
    if copy:
        body_bytes = serialize_bytes(body, rule=rule)
    else:
        written = plain_json(body)
        if written is None:
            return None
        body, body_bytes = READ_BACK, written
    return new_request(
        "edge",
        rule,
        "POST",
        url,
        _HEADERS if context is None else _HEADERS + context.headers(),
        body,
        body_bytes,
        action,
        final_id if isinstance(final_id, str) else event_id,
        request_id,
    )


# ------------------------------------------------------------------ a send event, planned
class EdgePlan:
    """What a ``send event``'s constant fields decide (its type, personalization query,
    datastream override, configuration overrides, whether it may unload the page), worked
    out once for the rule; :meth:`build` then does per send only what its ``xdm`` and
    ``data`` (and the session, the settings) need, with the same result as
    :func:`build_edge_request`. Made by :func:`plan_edge_send`, for a send whose other fields
    are all constants."""

    __slots__ = (
        "auto_type",
        "config_overrides",
        "event_type",
        "merge_id",
        "override_id",
        "query_personalization",
        "sites",
        "unloading",
        "view_start",
    )

    def __init__(
        self,
        event_type: str | None,
        merge_id: str | None,
        query_personalization: dict[str, Any] | None,
        override_id: str | None,
        config_overrides: dict[str, Any],
        unloading: bool,
    ) -> None:
        self.event_type = event_type
        self.view_start = event_type == VIEW_START
        self.auto_type = PAGE_VIEW if self.view_start else event_type  # xdm.eventType
        self.merge_id = merge_id
        self.query_personalization = query_personalization
        self.override_id = override_id
        self.config_overrides = config_overrides
        self.unloading = unloading
        self.sites: _Sites | None = None

    def build(
        self,
        fields: Mapping[str, Any],
        settings: EdgeSettings,
        *,
        rule: str,
        identity: Mapping[str, Any],
        timestamp: str,
        event_id: str,
        request_id: str,
        now: float | None = None,
        context: VisitorContext | None = None,
    ) -> Request:
        """:func:`build_edge_request` of ``fields``, which hold this plan's constants."""
        request = self._build(
            fields, settings, rule, identity, timestamp, event_id, request_id, now, context
        )
        if request is None:  # a null, or an identity map in the xdm: the general way
            request = build_edge_request(
                fields,
                settings,
                rule=rule,
                identity=identity,
                timestamp=timestamp,
                event_id=event_id,
                request_id=request_id,
                now=now,
                context=context,
            )
        return request

    def _sites(self, settings: EdgeSettings, rule: str) -> _Sites:
        """What ``settings`` decide of this send (settings are frozen: worked out once for
        the settings object the sends use, which the cache holds)."""
        sites = self.sites
        if sites is None or sites.settings is not settings:
            sites = self.sites = _Sites(settings, self.override_id, rule)
        return sites

    def _build(
        self,
        fields: Mapping[str, Any],
        settings: EdgeSettings,
        rule: str,
        identity: Mapping[str, Any],
        timestamp: str,
        event_id: str,
        request_id: str,
        now: float | None,
        context: VisitorContext | None,
        cleaned: bool = False,
    ) -> Request | None:
        # As _build(copy=False), each step in the same order, the constants' and the
        # settings' already taken; ``cleaned``: as _build(copy=True), for an xdm or data
        # holding a null or an identity map (their nulls dropped first, as it does).
        get = fields.get
        xdm_in = get("xdm")
        if type(xdm_in) is not dict:
            xdm_in = _mapping(xdm_in, "xdm", rule)
        data = get("data")
        if type(data) is not dict:
            data = _mapping(data, "data", rule)
        if cleaned or xdm_in.get("identityMap") is not None:
            cleaned = True  # (an identity map is checked once its nulls are dropped)
            xdm_in, data = drop_nulls(xdm_in), drop_nulls(data)
            rule_map = xdm_in.get("identityMap")
            if rule_map is not None:
                _check_identity_map(rule_map, "xdm.identityMap", rule)
        else:
            rule_map = None
        event_type = self.auto_type
        auto: dict[str, Any] = (
            {"timestamp": timestamp}
            if event_type is None
            else {"eventType": event_type, "timestamp": timestamp}
        )
        auto["_id"] = event_id
        auto["implementationDetails"] = _IMPLEMENTATION
        if context is not None and context.referer:
            auto["web"] = {"webPageDetails": {"URL": context.referer}}
        read = identity.get
        # (_session_identity_map finds nothing without one of these: a session's commonest)
        if identity and (read("identity_map") is not None or read("fpid") or read("ecid")):
            identity_map = _session_identity_map(identity, (rule_map, {}))
            if identity_map:
                auto["identityMap"] = identity_map
        if self.merge_id is not None:
            auto["eventMergeId"] = self.merge_id
        if not xdm_in:
            xdm = auto
        elif auto.keys().isdisjoint(xdm_in):  # deep_merge's result, without its walk
            xdm = {**auto, **xdm_in}
        else:
            xdm = deep_merge(auto, xdm_in)
        if rule_map is not None and xdm.get("identityMap") == {}:
            del xdm["identityMap"]
        event: dict[str, Any] = {"xdm": xdm}
        if data:
            event["data"] = data
        sites = self._sites(settings, rule)
        raw_entries = read("entries") if identity else None
        entries = _state_entries(raw_entries, now, timestamp) if raw_entries else None
        state: dict[str, Any] = (
            {"domain": sites.domain, "cookiesEnabled": True, "entries": entries}
            if entries
            else {"domain": sites.domain, "cookiesEnabled": True}
        )
        meta: dict[str, Any] = {"state": state}
        if self.config_overrides:
            meta["configOverrides"] = self.config_overrides
        if sites.sdk_config is not None:
            meta["sdkConfig"] = sites.sdk_config
        collect = self.unloading and not self.view_start and _has_identity(identity)
        query_personalization = self.query_personalization
        body: dict[str, Any]
        if collect:
            body = {"events": [event], "meta": meta}
        elif sites.v2:
            query: dict[str, Any] = (
                {"identity": _FETCH_ECID}
                if query_personalization is None
                else {"identity": _FETCH_ECID, "personalization": query_personalization}
            )
            body = {"event": event, "query": query, "meta": meta}
        else:
            if query_personalization is not None:
                event["query"] = {"personalization": query_personalization}
            body = {"events": [event], "query": {"identity": _FETCH_ECID}, "meta": meta}
        # Written once; the body is read back from the bytes only if someone reads it, and
        # then shares nothing with the fields or this plan.
        written = plain_json(body)
        if written is None:
            if cleaned:
                return None  # a NaN or a number beyond 64 bits: the general way decides
            # A null (a missing value the rule sends): dropped, as the general way does.
            return self._build(
                fields,
                settings,
                rule,
                identity,
                timestamp,
                event_id,
                request_id,
                now,
                context,
                True,
            )
        action: Literal["collect", "interact"] = "collect" if collect else "interact"
        hint = read("location_hint")
        if hint is None:
            prefix = sites.collect if collect else sites.interact
        else:
            base, hint = location_hint(hint, settings.url)
            path = f"{base}/ee{'/' + hint if hint else ''}/{settings.api}/{action}"
            prefix = f"{path}?{sites.stream_key}={sites.stream}&requestId="
        url = f"{prefix}{_query_value(request_id)}"
        if collect and sites.v2:
            url += "&silent=true"
        return new_request(
            "edge",
            rule,
            "POST",
            url,
            _HEADERS if context is None else _HEADERS + context.headers(),
            READ_BACK,
            written,
            action,
            final_id if isinstance(final_id := xdm.get("_id"), str) else event_id,
            request_id,
        )


class _Sites:
    """What one :class:`EdgeSettings` decides of a planned send: its URLs up to the request
    id (without a location hint), the datastream, the meta's domain and ``sdkConfig``."""

    __slots__ = (
        "collect",
        "domain",
        "interact",
        "sdk_config",
        "settings",
        "stream",
        "stream_key",
        "v2",
    )

    def __init__(self, settings: EdgeSettings, override_id: str | None, rule: str) -> None:
        self.settings = settings  # held: its identity is the cache's key
        configured = settings.datastream or None
        datastream = override_id or configured
        if not datastream:
            raise DispatchError(
                f"rule {rule!r}: no Edge datastream id: set 'datastream' in the edge settings",
                destination="edge",
            )
        self.domain = settings.domain or ""
        self.sdk_config: dict[str, Any] | None = (
            {"datastream": {"original": configured}}
            if override_id and configured and override_id != configured
            else None
        )
        self.v2 = settings.api == "v2"
        self.stream_key = "datastreamId" if self.v2 else "configId"
        self.stream = _query_value(datastream)
        base = settings.url.rstrip("/")
        self.interact, self.collect = (
            f"{base}/ee/{settings.api}/{action}?{self.stream_key}={self.stream}&requestId="
            for action in ("interact", "collect")
        )


_IMPLEMENTATION = {"name": IMPLEMENTATION_NAME, "version": ENGINE_VERSION, "environment": "server"}
_FETCH_ECID = {"fetch": ["ECID"]}
# The fields whose values a plan takes as they are, and those it may take from a push.
_PLANNED = frozenset(
    {
        "type",
        "xdm",
        "data",
        "mergeId",
        "datasetId",
        "personalization",
        "decisionScopes",
        "edgeConfigOverrides",
        "documentUnloading",
        "renderDecisions",
    }
)
_CONTENT = frozenset({"xdm", "data"})


def plan_edge_send(constants: Mapping[str, Any], pushed: Iterable[str]) -> EdgePlan | None:
    """The plan of a ``send event`` whose fields are ``constants`` and, with values known
    only per push, ``pushed`` (names); ``None`` when a decision depends on a push (a field
    other than ``xdm`` and ``data`` that is not a constant, ``identityMap``,
    ``propositions``, surfaces, which read the page) or a constant is refused (every send
    then says so, as :func:`build_edge_request` does)."""
    if not _CONTENT.issuperset(pushed) or not _PLANNED.issuperset(constants):
        return None
    rule = "plan"
    try:
        event_type = _text(constants, "type", rule)
        merge_id = _text(constants, "mergeId", rule)
        dataset_id = _text(constants, "datasetId", rule)
        personalization = _object(constants.get("personalization"), "personalization", rule)
        _flag(personalization, "includeRenderedPropositions", rule)
        default_personalization = _flag(personalization, "defaultPersonalizationEnabled", rule)
        if personalization.get("decisionContext") is not None:
            _object(personalization["decisionContext"], "personalization.decisionContext", rule)
        if personalization.get("surfaces") is not None or default_personalization is True:
            return None  # surfaces read the page's URL, from the xdm
        scopes = _dedupe(
            [
                *_strings(constants.get("decisionScopes"), "decisionScopes", rule),
                *_strings(
                    personalization.get("decisionScopes"), "personalization.decisionScopes", rule
                ),
            ]
        )
        if (
            event_type == VIEW_START
            and default_personalization is not False
            and PAGE_WIDE_SCOPE not in scopes
        ):
            scopes.append(PAGE_WIDE_SCOPE)
        if len(scopes) > MAX_DECISION_SCOPES:
            return None
        query_personalization = _query_personalization(scopes, [])
        # A malformed override raises here as in the general path: no plan, that path reports it
        override_id, config_overrides = _overrides(
            constants.get("edgeConfigOverrides"), dataset_id, rule
        )
    except EvaluationError:
        return None
    unloading = constants.get("documentUnloading") is True
    return EdgePlan(
        event_type, merge_id, query_personalization, override_id, config_overrides, unloading
    )


# ------------------------------------------------------------------ collect batches
class Batch(NamedTuple):
    """One request of :func:`batch_collect`'s answer: what to send, and the positions in the
    input of the requests whose events it carries, in order (one position when it is an input
    request left as it was)."""

    request: Request
    members: tuple[int, ...]


# A collect body is {"events": [...], "meta": {...}} in that order (build_edge_request), so its
# compact JSON is these bytes around the events and the meta.
_EVENTS_OPEN = b'{"events":['
_META_OPEN = b'],"meta":'
_BODY = attrgetter("body")
_RULE = attrgetter("rule")
_GET_EVENTS = methodcaller("get", "events")


class _Group:
    """Consecutive collect requests that go as one: what they share, taken from the first,
    and each one's events, already serialized."""

    __slots__ = (
        "encoded",
        "events",
        "has_id",
        "headers",
        "indices",
        "meta",
        "requests",
        "route",
        "size",
        "tail",
        "url_head",
        "url_tail",
    )

    def __init__(self, index: int, request: Request, route: str) -> None:
        self.route = route
        span = _request_id_span(request.url)
        # The URL around its requestId value: a request whose URL starts and ends so, with no
        # other parameter between, has this route.
        self.has_id = span is not None
        self.url_head, self.url_tail = (
            (request.url, "") if span is None else (request.url[: span[0]], request.url[span[1] :])
        )
        self.headers = request.headers
        self.meta: dict[str, Any] = request.body["meta"]
        self.tail = _META_OPEN + serialize_bytes(self.meta, rule=request.rule) + b"}"
        encoded = self._events_of(request)
        assert encoded is not None  # the tail is this request's own meta
        self.indices = [index]
        self.requests = [request]
        self.events = len(request.body["events"])
        self.encoded = [encoded]
        self.size = len(_EVENTS_OPEN) + len(encoded) + len(self.tail)

    def take_run(self, requests: Sequence[Request], start: int, max_events: int, limit: int) -> int:
        """:meth:`take` for the usual case (the next sends of the same session, built the
        same way), checked on the bytes already made, from ``start`` on; the index of the
        first request not taken ("look closer", not "no"). A tight loop: it runs per event."""
        head, url_tail, tail, headers = self.url_head, self.url_tail, self.tail, self.headers
        lead, trail = len(_EVENTS_OPEN), len(self.tail)
        events, size = self.events, self.size
        indices, taken, encoded = self.indices, self.requests, self.encoded
        index = start
        for index in range(start, len(requests)):
            request = requests[index]
            url, raw, body = request.url, request.body_bytes, request.body
            if not (
                request.kind == "collect"
                and request.method == "POST"
                and request.destination == "edge"
                and (request.headers is headers or request.headers == headers)
                and (
                    url.startswith(head)
                    and url.endswith(url_tail)
                    and "&" not in url[len(head) : len(url) - len(url_tail)]
                    if self.has_id
                    else url == head
                )
                and len(body) == 2
                and raw.startswith(_EVENTS_OPEN)
                and raw.endswith(tail)  # the same meta, serialized the same way
            ):
                break
            batch = body.get("events")
            if type(batch) is not list or not batch:
                break
            piece = len(raw) - lead - trail
            if events + len(batch) > max_events or size + 1 + piece > limit:
                break
            indices.append(index)
            taken.append(request)
            encoded.append(raw[lead : len(raw) - trail])
            events += len(batch)
            size += 1 + piece
        else:
            index = len(requests)
        self.events, self.size = events, size
        return index

    def take(self, index: int, request: Request, route: str, max_events: int, limit: int) -> bool:
        """Add ``request`` when it shares the route, headers and meta and fits; else
        ``False``."""
        if (
            route != self.route
            or request.headers != self.headers
            or request.body["meta"] != self.meta
        ):
            return False
        encoded = self._events_of(request)
        count = len(request.body["events"])
        if (
            encoded is None
            or self.events + count > max_events
            or self.size + 1 + len(encoded) > limit
        ):
            return False
        self.indices.append(index)
        self.requests.append(request)
        self.events += count
        self.encoded.append(encoded)
        self.size += 1 + len(encoded)
        return True

    def _events_of(self, request: Request) -> bytes | None:
        """``request``'s events as the merged body holds them: comma-separated compact JSON;
        ``None`` when its meta, equal to the group's, does not serialize as the group's."""
        raw = request.body_bytes
        if raw.startswith(_EVENTS_OPEN) and raw.endswith(self.tail):
            # Cut from the bytes already made: merging costs a join, not a second encoding.
            # No proper suffix of a compact JSON object is one, so this body's meta is
            # serialized as the group's and the cut is exact.
            return raw[len(_EVENTS_OPEN) : len(raw) - len(self.tail)]
        tail = _META_OPEN + serialize_bytes(request.body["meta"], rule=request.rule) + b"}"
        if tail != self.tail:  # equal as dicts, not as JSON (key order, 1 and 1.0)
            return None
        return b",".join(serialize_bytes(e, rule=request.rule) for e in request.body["events"])

    def batch(self, request_id: Callable[[], str]) -> Batch:
        first = self.requests[0]
        if len(self.requests) == 1:
            return Batch(first, (self.indices[0],))
        new_id = request_id()
        param = quote(new_id, safe="")
        url = first.url
        span = _request_id_span(url)
        if span is not None:
            url = url[: span[0]] + param + url[span[1] :]
        else:
            url += f"{'&' if '?' in url else '?'}requestId={param}"
        events = list(chain.from_iterable(map(_GET_EVENTS, map(_BODY, self.requests))))
        merged = Request(
            destination="edge",
            rule=", ".join(dict.fromkeys(map(_RULE, self.requests))),
            method="POST",
            url=url,
            headers=self.headers,
            body={"events": events, "meta": self.meta},
            body_bytes=_EVENTS_OPEN + b",".join(self.encoded) + self.tail,
            kind="collect",
            event_id=None,
            request_id=new_id,
        )
        return Batch(merged, tuple(self.indices))


def batch_collect(
    requests: Sequence[Request],
    *,
    request_id: Callable[[], str],
    max_events: int = MAX_BATCH_EVENTS,
    limit: int = EDGE_SIZE_LIMIT,
) -> list[Batch]:
    """``requests`` with each run of consecutive Edge ``collect`` requests merged into as few
    requests as fit, in order; a session's sends, for one delivery.

    Requests merge when they differ only in their events: the same URL apart from
    ``requestId``, the same headers and the same ``meta``. A merged request holds their
    events in order, at most ``max_events`` of them and at most ``limit`` bytes of body; a
    run that does not fit is split. It gets a fresh ``requestId`` from ``request_id()`` (in
    its URL and :attr:`Request.request_id`), ``body_bytes`` exactly as
    :func:`~engine.destinations.base.serialize` writes its body (which shares the input's
    event objects), the distinct rule names joined by ``", "`` as its rule, and no
    ``event_id`` (it carries several). Everything else is returned as it came, the same
    object: interact and Sitecore requests, a collect request with no neighbour to merge
    with, and one already above ``limit`` (for :func:`~engine.destinations.base.check_size`
    to refuse when it is sent).
    """
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    out: list[Batch] = []
    group: _Group | None = None
    index = 0
    while index < len(requests):
        if group is not None:
            index = group.take_run(requests, index, max_events, limit)
            if index == len(requests):
                break
        request = requests[index]
        route = _collect_route(request)
        if (
            route is not None
            and group is not None
            and group.take(index, request, route, max_events, limit)
        ):
            index += 1
            continue
        if group is not None:
            out.append(group.batch(request_id))
            group = None
        if route is None:
            out.append(Batch(request, (index,)))
        else:
            group = _Group(index, request, route)
        index += 1
    if group is not None:
        out.append(group.batch(request_id))
    return out


def _collect_route(request: Request) -> str | None:
    """The URL of a collect request without its ``requestId`` value (what requests that
    merge must share), or ``None`` when ``request`` is not a collect request whose body has
    the builder's shape."""
    if request.destination != "edge" or request.kind != "collect" or request.method != "POST":
        return None
    body = request.body
    if len(body) != 2 or "events" not in body or "meta" not in body:
        return None
    events, meta = body["events"], body["meta"]
    if not isinstance(events, list) or not events or not isinstance(meta, dict):
        return None
    url = request.url
    span = _request_id_span(url)
    return url if span is None else url[: span[0]] + url[span[1] :]


def _request_id_span(url: str) -> tuple[int, int] | None:
    """Where the value of the ``requestId`` query parameter is in ``url``."""
    # str.find, not a regular expression: this runs for every send of a batch.
    start = url.find("?")
    while start >= 0:
        start = url.find("requestId=", start)
        if start < 0:
            return None
        if url[start - 1] in "?&":
            start += len("requestId=")
            end = url.find("&", start)
            return start, len(url) if end < 0 else end
        start += 1
    return None


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _query(params: list[tuple[str, str]]) -> str:
    """``urlencode(params, quote_via=quote)``, without quoting what needs none (ids are
    UUIDs: this runs for every send)."""
    return "&".join(f"{key}={_query_value(value)}" for key, value in params)


def _query_value(value: str) -> str:
    return value if _UNRESERVED.fullmatch(value) else percent_encode(value)


# ------------------------------------------------------------------ field shapes
def _query_personalization(scopes: list[str], surfaces: list[str]) -> dict[str, Any] | None:
    """The request's ``query.personalization``: what to decide, and in which schemas."""
    if not scopes and not surfaces:
        return None
    schemas = list(PERSONALIZATION_SCHEMAS)
    if PAGE_WIDE_SCOPE in scopes:
        schemas.append(DOM_ACTION_SCHEMA)
    return {"schemas": schemas, "decisionScopes": scopes, "surfaces": surfaces}


def _overrides(
    overrides: Any, dataset_id: str | None, rule: str
) -> tuple[str | None, dict[str, Any]]:
    """A send's datastream override and its configuration overrides (the dataset included)."""
    override_id = None
    config_overrides: dict[str, Any] = {}
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise _shape(rule, "edgeConfigOverrides", "an object", overrides)
        override_id = overrides.get("datastreamId")
        if override_id is not None and not isinstance(override_id, str):
            raise _shape(rule, "edgeConfigOverrides.datastreamId", "a string", override_id)
    if overrides or dataset_id is not None:
        rest: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if k != "datastreamId"}
        if dataset_id is not None:
            dataset = {
                "com_adobe_experience_platform": {"datasets": {"event": {"datasetId": dataset_id}}}
            }
            rest = deep_merge(rest, dataset)
        config_overrides = _filter_overrides(rest)
    return override_id, config_overrides


def _shape(rule: str, name: str, expected: str, value: Any) -> EvaluationError:
    return EvaluationError(
        f"rule {rule!r}: send event '{name}' must be {expected}, not {type(value).__name__}"
    )


def _text(fields: Mapping[str, Any], name: str, rule: str) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _shape(rule, name, "a string", value)
    return value


def _mapping(value: Any, name: str, rule: str) -> Mapping[str, Any]:
    """A field that must be an object, as it is; ``{}`` when absent."""
    if value is None:
        return {}
    if type(value) is not dict and not isinstance(value, Mapping):
        raise _shape(rule, name, "an object", value)
    return value


def _object(value: Any, name: str, rule: str) -> dict[str, Any]:
    """A field that must be an object, without its nulls; ``{}`` when absent."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _shape(rule, name, "an object", value)
    cleaned: dict[str, Any] = drop_nulls(value)
    return cleaned


def _strings(value: Any, name: str, rule: str) -> list[str]:
    """A list of strings (a lone string counts as one); nulls skipped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list | tuple):
        raise _shape(rule, name, "a list of strings", value)
    out: list[str] = []
    for item in value:
        if item is None or item == "":
            continue
        if not isinstance(item, str):
            raise _shape(rule, name, "a list of strings", item)
        out.append(item)
    return out


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _flag(personalization: Mapping[str, Any], name: str, rule: str) -> bool | None:
    """A boolean personalization option; ``None`` when not given."""
    value = personalization.get(name)
    if value is not None and not isinstance(value, bool):
        raise _shape(rule, f"personalization.{name}", "true or false", value)
    return value


# ------------------------------------------------------------------ alloy's checks
def _check_identity_map(value: Any, where: str, rule: str) -> None:
    problems = identity_map_problems(value, where)
    if problems:
        raise EvaluationError(f"rule {rule!r}: send event {problems[0].message}")


def _page_url(xdm: Mapping[str, Any]) -> str | None:
    web = xdm.get("web")
    details = web.get("webPageDetails") if isinstance(web, Mapping) else None
    url = details.get("URL") if isinstance(details, Mapping) else None
    return url if isinstance(url, str) and url else None


def _surfaces(value: Any, xdm: Mapping[str, Any], add_page: bool, rule: str) -> list[str]:
    """``personalization.surfaces`` normalised as alloy's ``normalizeSurfaces``, plus the page
    surface for ``defaultPersonalizationEnabled: true`` when the event names its page (a
    server has no ``window.location``); deduplicated."""
    page_url = _page_url(xdm)
    out: list[str] = []
    for surface in _strings(value, "personalization.surfaces", rule):
        try:
            out.append(normalize_surface(surface, page_url))
        except SurfaceError as error:
            raise EvaluationError(
                f"rule {rule!r}: send event 'personalization.surfaces': {error}"
            ) from None
    if add_page and page_url is not None:
        try:
            out.append(normalize_surface(page_surface(page_url), None))
        except SurfaceError as error:
            raise EvaluationError(
                f"rule {rule!r}: send event 'personalization.defaultPersonalizationEnabled' "
                f"needs the page surface: {error}"
            ) from None
    return _dedupe(out)


def _decisioning(
    fields: Mapping[str, Any], event_type: Any, include_rendered: bool | None, rule: str
) -> dict[str, Any] | None:
    """``xdm._experience.decisioning`` for the rule's ``propositions``: a notification event
    (``type: "decisioning.propositionDisplay"``…) as alloy's ``createCollect`` sends it, or
    the rendered propositions ``includeRenderedPropositions: true`` attaches to another event
    as displayed (alloy's ``mergeDecisionsMeta`` with ``display``)."""
    if "propositions" not in fields:
        return None
    try:
        meta = proposition_meta(fields["propositions"])
    except ValueError as error:
        raise EvaluationError(f"rule {rule!r}: send event {error}") from None
    kinds: dict[str, int] = {}
    own = PROPOSITION_EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if own is not None:
        kinds[own] = 1
    if include_rendered:
        kinds["display"] = 1
    if not kinds:
        raise EvaluationError(f"rule {rule!r}: send event {PROPOSITIONS_NEED_TYPE}")
    if not meta:
        if own is not None:
            raise EvaluationError(
                f"rule {rule!r}: send event 'propositions' is empty (null or []): a "
                f"{event_type!r} event needs at least one proposition; guard the rule with "
                "a 'when' condition"
            )
        return None  # nothing rendered to include: alloy attaches nothing either
    return {"propositions": meta, "propositionEventType": kinds}


# ------------------------------------------------------------------ overrides
def _filter_overrides(value: Mapping[str, Any]) -> dict[str, Any]:
    """The Web SDK's filter: drop ``null``, ``""``, ``[]`` and ``enabled: true`` leaves (and
    ``null``/``""`` items of lists), then objects left empty; keep other booleans, numbers, non-empty strings and lists. A digit
    string ``idSyncContainerId`` is sent as the number Edge requires."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            inner = _filter_overrides(item)
            if inner:
                out[key] = inner
        elif isinstance(item, bool):
            if not (key == "enabled" and item):
                out[key] = item
        elif isinstance(item, int | float):
            out[key] = item
        elif isinstance(item, str) and item:
            out[key] = int(item) if key == "idSyncContainerId" and item.isdigit() else item
        elif isinstance(item, list | tuple):
            # A list item a data-layer value left empty is no report suite: not sent.
            kept = [each for each in item if each is not None and each != ""]
            if kept:
                out[key] = kept
    return out


# ------------------------------------------------------------------ identity
def _has_identity(identity: Mapping[str, Any]) -> bool:
    if identity.get("ecid"):
        return True
    entries = identity.get("entries") or ()
    return any(
        isinstance(e, Mapping) and str(e.get("key", "")).endswith("_identity") for e in entries
    )


def _has_primary(maps: Iterable[Any]) -> bool:
    """Whether a namespace other than ECID has an identity marked ``primary: true``."""
    for identity_map in maps:
        if not isinstance(identity_map, Mapping):
            continue
        for namespace, ids in identity_map.items():
            if namespace == "ECID" or not isinstance(ids, list):
                continue
            if any(isinstance(i, Mapping) and i.get("primary") is True for i in ids):
                return True
    return False


def _session_identity_map(
    identity: Mapping[str, Any], rule_maps: tuple[Any, ...]
) -> dict[str, Any]:
    session_map = identity.get("identity_map")
    out: dict[str, Any] = drop_nulls(session_map) if isinstance(session_map, Mapping) else {}
    fpid = identity.get("fpid")
    if isinstance(fpid, str) and fpid and "FPID" not in out:
        # The first-party device id: the primary identity from the very first event.
        primary = not _has_primary((out, *rule_maps))
        out["FPID"] = [{"id": fpid, "authenticatedState": "ambiguous", "primary": primary}]
    ecid = identity.get("ecid")
    if isinstance(ecid, str) and ecid and "ECID" not in out:
        primary = not _has_primary((out, *rule_maps))
        out["ECID"] = [{"id": ecid, "authenticatedState": "ambiguous", "primary": primary}]
    return out


def _epoch(timestamp: str) -> float:
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _state_entries(entries: Any, now: float | None, timestamp: str) -> list[dict[str, str]]:
    kept: dict[str, str] = {}
    for entry in entries or ():
        if not isinstance(entry, Mapping):
            continue
        key, value = entry.get("key"), entry.get("value")
        if not isinstance(key, str) or not key or not isinstance(value, str):
            continue
        expires = entry.get("expires")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            if now is None:
                now = _epoch(timestamp)
            if expires <= now:
                continue
        kept.pop(key, None)
        kept[key] = value
    return [{"key": k, "value": v} for k, v in kept.items()]


def location_hint(hint: Any, url: str) -> tuple[str, str | None]:
    """The base URL and the path hint to send with: on the authenticated host the hint goes
    in the host name (``{hint}.server.adobedc.net``, as Adobe's server-side sample sends it:
    that Server API answers 404 to a hinted path), elsewhere in the path."""
    base = url.rstrip("/")
    if not isinstance(hint, str) or not _HINT.fullmatch(hint):
        return base, None
    parts = urlsplit(base)
    if parts.hostname != AUTHENTICATED_HOST:
        return base, hint
    if not _HOST_HINT.fullmatch(hint):
        return base, None  # "or2_x" cannot be a host name: no hint rather than a bad host
    at = parts.netloc.lower().rindex(AUTHENTICATED_HOST)
    netloc = f"{parts.netloc[:at]}{hint.lower()}.{parts.netloc[at:]}"
    return parts._replace(netloc=netloc).geturl(), None
