"""Load-time checks of a ``send event``'s literal values, as the Web SDK checks its
``sendEvent`` options (:mod:`engine.destinations.edge_fields` holds the checks themselves,
which :func:`~engine.destinations.edge.build_edge_request` runs again on the values a push
gives). Called by :mod:`engine.checker` for each ``send event``.

The send's fields become a value in which every literal is itself and everything else
(data-layer paths, elements, ``%token%`` strings) is :data:`~engine.destinations.edge_fields.LATER`,
with the source span of each key and value, so a problem is shown where it was written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import ast
from engine.destinations.edge_fields import (
    LATER,
    MAX_DECISION_SCOPES,
    PROPOSITION_EVENT_TYPES,
    PROPOSITIONS_NEED_TYPE,
    SurfaceError,
    identity_map_problems,
    normalize_surface,
    proposition_meta,
    show,
)
from engine.diagnostics import Span

__all__ = ["check_send_event"]

Path = tuple[str | int, ...]
_Spans = dict[Path, tuple[Span, Span]]  # path → (key span, value span)
_ABSENT: Any = object()  # not written in the rule
# A page URL that stands for one only a push gives: with it a '#fragment' surface is checked
# for the fragment alone.
_SOME_PAGE = "https://page.invalid/"
_FLAGS = ("includeRenderedPropositions", "defaultPersonalizationEnabled", "sendDisplayEvent")


def _partial(node: ast.Expr, at: Path, spans: _Spans) -> Any:
    """``node`` as a value: literals as themselves, dotted keys expanded, anything computed
    :data:`LATER`; records the spans under ``at`` in ``spans``."""
    if isinstance(node, ast.Literal):
        return node.value if node.parts is None else LATER
    if isinstance(node, ast.ListExpr):
        items: list[Any] = []
        for index, item in enumerate(node.items):
            spans[(*at, index)] = (item.span, item.span)
            items.append(_partial(item, (*at, index), spans))
        return items
    if isinstance(node, ast.ObjectExpr):
        out: dict[str, Any] = {}
        for pair in node.pairs:
            target = out
            for depth, key in enumerate(pair.key[:-1]):
                spans.setdefault((*at, *pair.key[: depth + 1]), (pair.key_span, pair.key_span))
                inner = target.get(key)
                if not isinstance(inner, dict):
                    inner = target[key] = {}  # a clash is check_keys's error, not this one's
                target = inner
            path = (*at, *pair.key)
            spans[path] = (pair.key_span, pair.value.span)
            value = _partial(pair.value, path, spans)
            last = pair.key[-1]
            if isinstance(value, dict) and isinstance(target.get(last), dict):
                _merge(target[last], value)
            else:
                target[last] = value
        return out
    return LATER


def _merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(into.get(key), dict):
            _merge(into[key], item)
        else:
            into[key] = item


def _get(value: Any, path: Path) -> Any:
    for step in path:
        if value is LATER:
            return LATER
        if not isinstance(value, dict) or step not in value:
            return _ABSENT
        value = value[step]
    return value


def _has_later(value: Any) -> bool:
    if value is LATER:
        return True
    if isinstance(value, dict):
        return any(_has_later(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_later(item) for item in value)
    return False


def _known(value: Any) -> bool:
    return value is not _ABSENT and value is not LATER and value is not None


def check_send_event(node: ast.Send, diag: Callable[[Span, str], None]) -> None:
    """Report, through ``diag``, what the Web SDK would refuse in ``node``'s literals and
    what Edge cannot take: a bad ``identityMap``, surface or personalization option, more
    than 30 decision scopes, ``propositions`` with nothing to say about them."""
    spans: _Spans = {}
    fields = _partial(node.fields, (), spans)

    def where(path: Path, on_key: bool = False) -> Span:
        for end in range(len(path), 0, -1):
            found = spans.get(path[:end])
            if found is not None:
                return found[0] if on_key and end == len(path) else found[1]
        return node.destination_span

    for prefix in (("identityMap",), ("xdm", "identityMap")):
        value = _get(fields, prefix)
        if value is _ABSENT:
            continue
        for problem in identity_map_problems(value, ".".join(str(p) for p in prefix)):
            diag(where((*prefix, *problem.path), problem.on_key), f"send event {problem.message}")

    for flag in _FLAGS:
        value = _get(fields, ("personalization", flag))
        if _known(value) and not isinstance(value, bool):
            diag(
                where(("personalization", flag)),
                f"send event 'personalization.{flag}' must be true or false, not {show(value)}",
            )
    context = _get(fields, ("personalization", "decisionContext"))
    if _known(context) and not isinstance(context, dict):
        diag(
            where(("personalization", "decisionContext")),
            f"send event 'personalization.decisionContext' must be an object, not {show(context)}",
        )

    _scopes(fields, where, diag)
    _surfaces(fields, where, diag)
    _propositions(fields, where, diag)


def _scopes(fields: Any, where: Callable[..., Span], diag: Callable[[Span, str], None]) -> None:
    """More than 30 distinct literal scopes is too many whatever the push adds."""
    known: dict[str, None] = {}
    first: Span | None = None
    for path in (("decisionScopes",), ("personalization", "decisionScopes")):
        value = _get(fields, path)
        if not _known(value):
            continue
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for item in items:
            if isinstance(item, str) and item:
                known[item] = None
        first = first or where(path)
    default = _get(fields, ("personalization", "defaultPersonalizationEnabled"))
    view_start = _get(fields, ("type",)) == "viewStart"
    page = ""
    if default is True or (view_start and (default is _ABSENT or default is None)):
        known["__view__"] = None
        page = " and __view__"
    if first is not None and len(known) > MAX_DECISION_SCOPES:
        diag(
            first,
            f"send event asks for {len(known)} decision scopes ('decisionScopes' and "
            f"'personalization.decisionScopes' together{page}, without duplicates); Edge takes "
            f"at most {MAX_DECISION_SCOPES} in one request",
        )


def _surfaces(fields: Any, where: Callable[..., Span], diag: Callable[[Span, str], None]) -> None:
    value = _get(fields, ("personalization", "surfaces"))
    if not _known(value):
        return
    base: Path = ("personalization", "surfaces")
    items: list[tuple[Path, Any]] = (
        [(base, value)]
        if not isinstance(value, list)
        else [((*base, i), item) for i, item in enumerate(value)]
    )
    url = _get(fields, ("xdm", "web", "webPageDetails", "URL"))
    page = _SOME_PAGE if url is LATER else url if isinstance(url, str) and url else None
    for path, surface in items:
        if surface is LATER or surface is None or surface == "":
            continue
        try:
            normalize_surface(surface, page)
        except SurfaceError as error:
            diag(where(path), f"send event 'personalization.surfaces': {error}")


def _propositions(
    fields: Any, where: Callable[..., Span], diag: Callable[[Span, str], None]
) -> None:
    value = _get(fields, ("propositions",))
    if value is _ABSENT:
        return
    event_type = _get(fields, ("xdm", "eventType"))
    if event_type is _ABSENT or event_type is None:
        event_type = _get(fields, ("type",))
    include = _get(fields, ("personalization", "includeRenderedPropositions"))
    notification = isinstance(event_type, str) and event_type in PROPOSITION_EVENT_TYPES
    if (
        event_type is not LATER
        and include is not LATER
        and include is not True
        and not notification
    ):
        diag(where(("propositions",), on_key=True), f"send event {PROPOSITIONS_NEED_TYPE}")
        return
    if _has_later(value):
        return  # a push gives part of it: checked when the send is built
    try:
        meta = proposition_meta(value)
    except ValueError as error:
        diag(where(("propositions",)), f"send event {error}")
        return
    if not meta and notification:
        diag(
            where(("propositions",)),
            f"send event 'propositions' is empty: a {show(event_type)} event needs at least one "
            "proposition",
        )
