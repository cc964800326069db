"""What the Web SDK (adobe/alloy) checks and rewrites in ``sendEvent`` options before they go
to Edge, for ``send event``: shared by the checker (literals, at load) and
:func:`~engine.destinations.edge.build_edge_request` (values known at run time).

- :func:`normalize_surface`: ``personalization.surfaces`` as alloy's ``normalizeSurfaces``
  (``utils/surfaceUtils.js``) makes them: scheme and host lower case, trailing ``/`` off the
  path, an empty path ``/``, ``#fragment`` expanded to the page surface plus the fragment; an
  invalid or unsupported surface is refused (alloy drops it with a warning: a rule that asked
  for it would silently get nothing).
- :func:`identity_map_problems`: ``identityMap`` as alloy's ``validateIdentityMap`` checks it.
- :func:`proposition_notification`: the display (or interact, …) notification alloy's
  ``createCollect``/``mergeDecisionsMeta`` send for propositions that were rendered.
- :data:`MAX_DECISION_SCOPES`: Edge's documented limit on decision scopes per request.

The checker hands these functions values built from the rule's literals, with :data:`LATER`
for every value only a push can give; they skip it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

from engine.diagnostics import did_you_mean
from engine.values import copy_json

__all__ = [
    "AUTHENTICATED_STATES",
    "DISPLAY",
    "LATER",
    "MAX_DECISION_SCOPES",
    "PROPOSITIONS_NEED_TYPE",
    "PROPOSITION_EVENT_TYPES",
    "Problem",
    "SurfaceError",
    "identity_map_problems",
    "normalize_surface",
    "page_surface",
    "proposition_meta",
    "proposition_notification",
    "show",
]


class _Later:
    """The type of :data:`LATER`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


LATER: Final = _Later()
"""Stands for a value known only when a push runs (a data-layer path, an element, a
``%token%`` string): the checks here skip it."""

MAX_DECISION_SCOPES = 30
"""At most this many decision scopes in one request (Edge Network API docs,
``personalization.md``; the same count alloy sends: deduplicated, ``__view__`` included)."""

AUTHENTICATED_STATES = ("ambiguous", "authenticated", "loggedOut")
_IDENTITY_FIELDS = ("authenticatedState", "id", "namespace", "primary", "xid")

DISPLAY = "decisioning.propositionDisplay"
PROPOSITION_EVENT_TYPES: dict[str, str] = {
    DISPLAY: "display",
    "decisioning.propositionInteract": "interact",
    "decisioning.propositionTrigger": "trigger",
    "decisioning.propositionDismiss": "dismiss",
    "decisioning.propositionSuppressDisplay": "suppressDisplay",
}
"""``xdm.eventType`` of a notification → its key in ``propositionEventType`` (alloy's
``constants/propositionEventType.js``)."""
PROPOSITIONS_NEED_TYPE = (
    "'propositions' needs a notification type ("
    + ", ".join(f'"{name}"' for name in PROPOSITION_EVENT_TYPES)
    + ") or 'personalization.includeRenderedPropositions: true'"
)


def show(value: Any) -> str:
    """``value`` as a rule writes it: ``"text"``, ``true``, ``null``, ``[…]``."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


# ------------------------------------------------------------------ surfaces
class SurfaceError(ValueError):
    """A surface that cannot be sent; the message names it and says why."""


# alloy's SURFACE_REGEX, AUTHORITY_REGEX, PATH_REGEX and FRAGMENT_REGEX, with JavaScript's
# ASCII \w and \d spelt out (Python's are Unicode) and "\u00a1-\uffff" widened to every code
# point above U+00A0 (a JavaScript string holds the rest as surrogates in that range).
# The last three are compiled on first use (re's cache keeps them): their Unicode ranges take
# about 1.5 ms each to compile, which a `tagengine check` without surfaces should not pay.
_SURFACE = re.compile(r"([A-Za-z0-9_]+)://([^/#]+)(/[^#]*)?(#.*)?")
_HOST = r"(?:[a-z0-9\u00a1-\U0010ffff.-]+|\[[a-f0-9:]+\])(?::[0-9]+)?"
_PATH = r"/(?:[/A-Za-z0-9_\u00a1-\U0010ffff.~-]|%[a-fA-F0-9]{2})*"
_FRAGMENT = r"#(?:[/A-Za-z0-9_\u00a1-\U0010ffff.~-]|%[a-fA-F0-9]{2})+"
_SURFACE_TYPES = ("web", "webapp")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _normalize_path(path: str) -> str:
    return path.rstrip("/") or "/"


def _authority_ok(authority: str) -> bool:
    # alloy's "(?:.*@)?" prefix, without the backtracking: the host part holds no "@", so
    # only a split at the last "@" can match, and ".*" takes no line break.
    userinfo, at, host = authority.rpartition("@")
    if at and "\n" in userinfo:
        return False
    return re.fullmatch(_HOST, host) is not None


def page_surface(url: str) -> str:
    """The surface of the page at ``url`` (``xdm.web.webPageDetails.URL``), as alloy builds it
    from ``window.location``: ``web://`` + host (lower case, default port left out) + path
    without trailing ``/`` (``/`` when empty); no query, no fragment."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = parts.netloc.rpartition("@")[2].lower()
    except ValueError:
        scheme, host = "", ""
    if scheme not in _DEFAULT_PORTS or not host:
        raise SurfaceError(
            f"the page URL {show(url)} (xdm.web.webPageDetails.URL) is not an absolute http(s) "
            "URL, so it has no page surface"
        )
    if host.endswith(_DEFAULT_PORTS[scheme]):
        host = host[: -len(_DEFAULT_PORTS[scheme])]
    return f"web://{host}{_normalize_path(parts.path)}"


def normalize_surface(surface: Any, page_url: str | None) -> str:
    """``surface`` as alloy sends it, or :class:`SurfaceError`.

    ``#fragment`` becomes the page surface of ``page_url`` plus the fragment; with no
    ``page_url`` it is an error. Only ``web://`` and ``webapp://`` surfaces are sent, as alloy
    does (``mobileapp://`` belongs to the mobile SDKs)."""
    if not isinstance(surface, str) or not surface:
        raise SurfaceError(f"invalid surface {show(surface)}: a surface is a non-empty string")
    expanded = surface
    if surface.startswith("#"):
        if page_url is None:
            raise SurfaceError(
                f"surface {show(surface)} is a fragment of the page, and the page URL "
                "(xdm.web.webPageDetails.URL) is not set: set it, or write the full surface "
                f"(web://HOST/PATH{surface})"
            )
        expanded = page_surface(page_url) + surface
    match = _SURFACE.fullmatch(expanded)
    if match is None:
        raise SurfaceError(
            f"invalid surface {show(surface)}: expected web://HOST/PATH, webapp://HOST/PATH "
            "or #FRAGMENT"
        )
    kind, authority = match[1].lower(), match[2].lower()
    if kind not in _SURFACE_TYPES:
        raise SurfaceError(
            f"unsupported surface type '{kind}' in {show(surface)}: only web:// and webapp:// "
            "surfaces are asked for, as the Web SDK does"
        )
    if not _authority_ok(authority):
        raise SurfaceError(f"invalid host '{authority}' in surface {show(surface)}")
    path = _normalize_path(match[3]) if match[3] else "/"
    if not re.fullmatch(_PATH, path):
        raise SurfaceError(
            f"invalid path '{path}' in surface {show(surface)}: letters, digits, '/', '-', '.', "
            "'_', '~' and %XX escapes only (no query string)"
        )
    fragment = match[4] or ""
    if fragment and not re.fullmatch(_FRAGMENT, fragment):
        raise SurfaceError(f"invalid fragment '{fragment}' in surface {show(surface)}")
    return f"{kind}://{authority}{path}{fragment}"


# ------------------------------------------------------------------ identityMap
class Problem(NamedTuple):
    """One thing wrong in a checked value: where, below the value (keys and list indices),
    and what. ``on_key``: the key's name is the problem (an unknown field), not its value."""

    path: tuple[str | int, ...]
    message: str
    on_key: bool = False


def _dotted(base: str, path: Iterable[str | int]) -> str:
    out = base
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


def identity_map_problems(value: Any, where: str = "identityMap") -> list[Problem]:
    """What alloy's ``validateIdentityMap`` refuses in ``value`` (``where`` names it in the
    messages): an object of namespaces, each a list of identities, each an object of
    ``authenticatedState`` (``ambiguous``, ``authenticated`` or ``loggedOut``), ``id``
    (string), ``namespace`` (``{code: string}``), ``primary`` (boolean) and ``xid`` (string),
    nothing else. ``null`` values and :data:`LATER` are skipped."""
    if value is None or value is LATER:
        return []
    if not isinstance(value, Mapping):
        return [Problem((), f"'{where}' must be an object of namespaces, not {_kind(value)}")]
    out: list[Problem] = []
    for namespace, ids in value.items():
        if ids is None or ids is LATER:
            continue
        if not isinstance(ids, list | tuple):
            out.append(
                Problem(
                    (namespace,),
                    f"'{_dotted(where, (namespace,))}' must be a list of identities, not "
                    f"{_kind(ids)}",
                )
            )
            continue
        for index, identity in enumerate(ids):
            out += _identity_problems(identity, where, (namespace, index))
    return out


def _identity_problems(identity: Any, where: str, at: tuple[str | int, ...]) -> list[Problem]:
    if identity is None or identity is LATER:
        return []
    name = _dotted(where, at)
    if not isinstance(identity, Mapping):
        return [
            Problem(
                at,
                f"'{name}' must be an object such as {{id, authenticatedState, primary}}"
                f", not {_kind(identity)}",
            )
        ]
    out: list[Problem] = []
    for key, item in identity.items():
        path = (*at, key)
        field = _dotted(where, path)
        if key not in _IDENTITY_FIELDS:
            hint = did_you_mean(str(key), _IDENTITY_FIELDS)
            out.append(
                Problem(
                    path,
                    f"'{name}' has an unknown field '{key}'{hint}; an identity takes "
                    "authenticatedState, id, namespace, primary and xid",
                    on_key=True,
                )
            )
        elif item is None or item is LATER:
            continue
        elif key == "authenticatedState":
            if item not in AUTHENTICATED_STATES:
                hint = did_you_mean(item, AUTHENTICATED_STATES) if isinstance(item, str) else ""
                out.append(
                    Problem(
                        path,
                        f'\'{field}\' must be "ambiguous", "authenticated" or "loggedOut", '
                        f"not {show(item)}{hint}",
                    )
                )
        elif key == "primary":
            if not isinstance(item, bool):
                out.append(Problem(path, f"'{field}' must be true or false, not {show(item)}"))
        elif key == "namespace":
            out += _namespace_problems(item, field, path)
        elif not isinstance(item, str):
            out.append(Problem(path, f"'{field}' must be a string, not {_kind(item)}"))
    return out


def _namespace_problems(item: Any, field: str, path: tuple[str | int, ...]) -> list[Problem]:
    if not isinstance(item, Mapping):
        return [Problem(path, f"'{field}' must be an object {{code}}, not {_kind(item)}")]
    out: list[Problem] = []
    for key, code in item.items():
        if key != "code":
            hint = did_you_mean(str(key), ("code",))
            out.append(
                Problem(
                    (*path, key),
                    f"'{field}' has an unknown field '{key}'{hint}; it takes only code",
                    on_key=True,
                )
            )
        elif code is not None and code is not LATER and not isinstance(code, str):
            out.append(Problem((*path, key), f"'{field}.code' must be a string, not {_kind(code)}"))
    return out


# ------------------------------------------------------------------ propositions
def proposition_meta(propositions: Any, where: str = "propositions") -> list[dict[str, Any]]:
    """``[{id, scope, scopeDetails}]`` of ``propositions`` (as an Edge response's
    ``personalization:decisions`` payload or a result's ``propositions`` holds them; other
    keys such as ``items`` and ``renderAttempted`` are left out, as alloy's decisions meta
    leaves them). A lone proposition counts as one; ``null`` items are skipped. Raises
    :class:`ValueError` naming ``where`` and the index of a proposition without a string
    ``id`` and ``scope``, or whose ``scopeDetails`` is not an object."""
    if propositions is None:
        return []
    if isinstance(propositions, Mapping):
        propositions = [propositions]
    elif not isinstance(propositions, list | tuple):
        raise ValueError(f"'{where}' must be a list of propositions, not {_kind(propositions)}")
    out: list[dict[str, Any]] = []
    for index, proposition in enumerate(propositions):
        if proposition is None:
            continue
        name = f"{where}[{index}]"
        if not isinstance(proposition, Mapping):
            raise ValueError(
                f"'{name}' must be a proposition object {{id, scope, scopeDetails}}, not "
                f"{_kind(proposition)}"
            )
        meta: dict[str, Any] = {}
        for key in ("id", "scope"):
            item = proposition.get(key)
            if not isinstance(item, str) or not item:
                raise ValueError(
                    f"'{name}.{key}' must be a non-empty string, not {show(item)}: pass the "
                    "propositions an Edge response returned"
                )
            meta[key] = item
        details = proposition.get("scopeDetails")
        if details is not None:
            if not isinstance(details, Mapping):
                raise ValueError(f"'{name}.scopeDetails' must be an object, not {_kind(details)}")
            # A deep copy: the request holds it, and must share nothing with what it was given
            meta["scopeDetails"] = {key: copy_json(value) for key, value in details.items()}
        out.append(meta)
    return out


def proposition_notification(
    propositions: Any,
    *,
    event_type: str = DISPLAY,
    view_name: str | None = None,
) -> dict[str, Any]:
    """The ``send event`` fields of the notification alloy sends once propositions are
    rendered (``createNotificationHandler`` → ``createCollect``): ``type`` ``event_type``
    (``decisioning.propositionDisplay`` by default; any key of
    :data:`PROPOSITION_EVENT_TYPES`), ``xdm._experience.decisioning.propositions`` as
    ``[{id, scope, scopeDetails}]``, ``propositionEventType`` ``{display: 1}`` (or the key of
    ``event_type``), and ``xdm.web.webPageDetails.viewName`` when ``view_name`` is given.

    Pass the result to :func:`~engine.destinations.edge.build_edge_request` like a rule's
    fields: it adds the timestamp, ``_id``, the session's ``identityMap`` and state. Pure;
    raises :class:`ValueError` for an unknown ``event_type``, for no propositions (alloy sends
    no notification then) and as :func:`proposition_meta` does."""
    key = PROPOSITION_EVENT_TYPES.get(event_type)
    if key is None:
        raise ValueError(
            f"event_type must be one of {', '.join(PROPOSITION_EVENT_TYPES)}, not {show(event_type)}"
        )
    meta = proposition_meta(propositions)
    if not meta:
        raise ValueError("no propositions to notify: alloy sends no notification without one")
    xdm: dict[str, Any] = {
        "_experience": {"decisioning": {"propositions": meta, "propositionEventType": {key: 1}}}
    }
    if view_name:
        xdm["web"] = {"webPageDetails": {"viewName": view_name}}
    return {"type": event_type, "xdm": xdm}
