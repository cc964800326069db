"""A visitor's consent to collection, as the Web SDK keeps it: the decisions, all pure.

- ``in``: sends go out as built;
- ``pending``: sends are held, in order, with the session (``identity["held"]``), until
  consent is given (they go out, before the sends of the push that gave it) or refused
  (they are dropped, counted);
- ``out``: sends are dropped, counted and shown as ``consent: "dropped"``, and so is every
  later send of the visitor (all their sessions: consent is kept in the visitor's memory).

A session starts with the ruleset's ``consent { default: … }`` (``in`` when there is no block,
so rulesets written before consent behave as before). It changes with
:meth:`EngineSession.set_consent` or, when the block names a data-layer ``path``, when a push
changes the value there (a CMP's push). Edge is told each change through its consent endpoint
(``/ee/v1/privacy/set-consent``), as the Web SDK's ``setConsent`` does, and its answer's
``kndctr_<org>_consent`` entry travels with the visitor's later requests and cookies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from engine.destinations.base import Request, serialize_bytes
from engine.destinations.edge import location_hint
from engine.errors import PushError
from engine.settings import ConsentSettings, EdgeSettings

__all__ = [
    "VISITOR_KEY",
    "Consent",
    "ConsentChange",
    "build_consent_request",
    "consent_of",
    "data_layer_consent",
    "parse_consent",
    "stored_request",
    "stored_requests",
]

Consent = Literal["in", "out", "pending"]

_WORDS: dict[str, Consent] = {
    "in": "in",
    "out": "out",
    "pending": "pending",
    "granted": "in",  # Google consent mode
    "denied": "out",
    "y": "in",  # Adobe consent standard 2.0's collect.val
    "n": "out",
    # Booleans carried as text, read as a rule's `when` reads them (engine/values.py truthy).
    "true": "in",
    "yes": "in",
    "on": "in",
    "1": "in",
    "false": "out",
    "no": "out",
    "off": "out",
    "0": "out",
}
_EXPECTED = "'in', 'out' or 'pending' (or true/false, 'granted'/'denied', 'y'/'n')"


_TCF = re.compile(r"[A-Za-z0-9_\-.]{1,10000}")  # base64url segments, dot-separated


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """Consent given or refused by the app (:meth:`EngineSession.set_consent`), checked."""

    value: Consent
    tcf: str | None = None
    gdpr_applies: bool | None = None

    @classmethod
    def of(cls, value: object, tcf: object = None, gdpr_applies: object = None) -> ConsentChange:
        consent = parse_consent(value, "set_consent")
        if tcf is not None and (not isinstance(tcf, str) or not _TCF.fullmatch(tcf)):
            raise PushError("set_consent: tcf must be an IAB TCF 2.0 consent string")
        if gdpr_applies is not None and not isinstance(gdpr_applies, bool):
            raise PushError("set_consent: gdpr_applies must be true or false")
        return cls(consent, tcf, gdpr_applies)


def parse_consent(value: object, where: str) -> Consent:
    """A consent value as a CMP or an app gives it, or a :class:`~engine.errors.PushError`
    naming ``where``. Also reads Adobe's ``{"general": "in"}`` and ``{"collect": {"val":
    "y"}}`` objects."""
    if isinstance(value, bool):
        return "in" if value else "out"
    if isinstance(value, Mapping):
        if "general" in value:
            return parse_consent(value["general"], f"{where}.general")
        collect = value.get("collect")
        if isinstance(collect, Mapping) and "val" in collect:
            return parse_consent(collect["val"], f"{where}.collect.val")
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    shown = repr(value)[:60]
    raise PushError(f"{where}: consent {shown} is not one of {_EXPECTED}")


VISITOR_KEY = "@consent"
"""Where a visitor's consent is kept: in the memory their sessions share (``keep visitor``
values; no element name can start with ``@``), so it is stored, exported and shared as
they are, and every session of the visitor, later ones included, obeys it."""


def consent_of(
    identity: Mapping[str, Any], settings: ConsentSettings, visitor: Mapping[str, Any]
) -> Consent:
    """A session's consent: what was last set for its visitor (``visitor``: the visitor's
    kept values); else what Edge's ``kndctr_<org>_consent`` entry says (from Edge's answer,
    or the visitor's cookie: consent given on an earlier visit); else the ruleset's
    default."""
    value = visitor.get(VISITOR_KEY)
    if value in ("in", "out", "pending"):
        return value  # type: ignore[no-any-return]
    entries = identity.get("entries")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and str(entry.get("key", "")).endswith("_consent"):
            text = entry.get("value")
            if isinstance(text, str):
                for part in unquote(text).split(";"):
                    name, _, said = part.strip().partition("=")
                    if name == "general" and said in ("in", "out"):
                        return "in" if said == "in" else "out"
    return settings.default


def data_layer_consent(
    settings: ConsentSettings, before: Mapping[str, Any], after: Mapping[str, Any]
) -> Consent | None:
    """The consent a push sets through the data layer: the value at the block's ``path``
    when the push changed it, else ``None``."""
    if settings.path is None:
        return None
    path = tuple(settings.path.split("."))
    new = _lookup(after, path)
    if new is None or new == _lookup(before, path):
        return None
    return parse_consent(new, f"data layer {settings.path}")


def _lookup(state: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = state
    for step in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


# ---------------------------------------------------------------- held sends
def stored_request(request: Request) -> list[Any]:
    """A held send as JSON, with the session (its body as built: re-encoded on release)."""
    return [
        request.destination,
        request.rule,
        request.method,
        request.url,
        [list(pair) for pair in request.headers],
        request.body,
        request.kind,
        request.event_id,
        request.request_id,
    ]


def stored_requests(held: Any) -> list[Request]:
    """The held sends of a session, as requests again, in order."""
    out: list[Request] = []
    for item in held if isinstance(held, list) else ():
        destination, rule, method, url, headers, body, kind, event_id, request_id = item
        out.append(
            Request(
                destination=destination,
                rule=rule,
                method=method,
                url=url,
                headers=tuple((str(k), str(v)) for k, v in headers),
                body=body,
                body_bytes=serialize_bytes(body, rule=rule) if method == "POST" else b"",
                kind=kind,
                event_id=event_id,
                request_id=request_id,
            )
        )
    return out


# ---------------------------------------------------------------- Edge's consent endpoint
def build_consent_request(
    edge: EdgeSettings,
    consent: ConsentSettings,
    value: Literal["in", "out"],
    identity: Mapping[str, Any],
    *,
    request_id: str,
    timestamp: str,
    tcf: str | None = None,
    gdpr_applies: bool | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    """The request the Web SDK's ``setConsent`` makes: ``POST /ee/v1/privacy/set-consent``
    with the consent in the ruleset's Adobe standard (1.0 ``general``, or 2.0
    ``collect.val``), an IAB TCF 2.0 string when given, the visitor's identities and state."""
    if edge.datastream is None:
        raise PushError("telling Edge about consent needs 'datastream' in the edge settings")
    entries: list[dict[str, Any]] = []
    if consent.adobe == "2.0":
        entries.append(
            {
                "standard": "Adobe",
                "version": "2.0",
                "value": {
                    "collect": {"val": "y" if value == "in" else "n"},
                    "metadata": {"time": timestamp},
                },
            }
        )
    else:
        entries.append({"standard": "Adobe", "version": "1.0", "value": {"general": value}})
    if tcf is not None:
        tcf_entry: dict[str, Any] = {"standard": "IAB TCF", "version": "2.0", "value": tcf}
        if gdpr_applies is not None:
            tcf_entry["gdprApplies"] = gdpr_applies
        entries.append(tcf_entry)
    body: dict[str, Any] = {"consent": entries}
    identity_map: dict[str, Any] = {}
    fpid, ecid = identity.get("fpid"), identity.get("ecid")
    if isinstance(fpid, str) and fpid:
        identity_map["FPID"] = [{"id": fpid, "authenticatedState": "ambiguous", "primary": True}]
    if isinstance(ecid, str) and ecid:
        primary = "FPID" not in identity_map
        identity_map["ECID"] = [{"id": ecid, "authenticatedState": "ambiguous", "primary": primary}]
    if identity_map:
        body["identityMap"] = identity_map
    state: dict[str, Any] = {"domain": edge.domain or "", "cookiesEnabled": True}
    stored = identity.get("entries")
    entries_sent = [
        {"key": e["key"], "value": e["value"]}
        for e in (stored if isinstance(stored, list) else ())
        if isinstance(e, Mapping)
        and isinstance(e.get("key"), str)
        and isinstance(e.get("value"), str)
    ]
    if entries_sent:
        state["entries"] = entries_sent
    body["query"] = {"identity": {"fetch": ["ECID"]}}
    body["meta"] = {"state": state}
    # The visitor's Edge cluster, as for the sends (in the host on the authenticated host).
    base, hint = location_hint(identity.get("location_hint"), edge.url)
    url = (
        f"{base}/ee{'/' + hint if hint else ''}/v1/privacy/set-consent"
        f"?configId={edge.datastream}&requestId={request_id}"
    )
    return Request(
        destination="edge",
        rule="consent",
        method="POST",
        url=url,
        headers=(("Content-Type", "application/json"), *headers),
        body=body,
        body_bytes=serialize_bytes(body, rule="consent"),
        kind="consent",
        request_id=request_id,
    )
