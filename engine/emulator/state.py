"""Everything the emulator remembers: its configuration, the requests it received, active
faults, issued tokens, known visitors (ECIDs) and Sitecore browser ids.

One :class:`EmulatorState` is shared by the server's event-loop thread and the thread that
drives a test, so every method takes the lock; what it returns is a copy.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.emulator.faults import Fault
from engine.emulator.overrides import check_paths, merge_overrides, ruleset_overrides
from engine.emulator.scopes import DEFAULT_SCOPES, Scopes

if TYPE_CHECKING:
    from engine.ruleset import Ruleset

__all__ = [
    "EmulatorConfig",
    "EmulatorState",
    "RecordedRequest",
    "Token",
    "emulator_config",
]

EDGE_MAX_BODY = 65536
"""Edge's documented guardrail: 64 KB of JSON per request, ``EXEG-0112-413`` above it."""
ADMIN_MAX_BODY = 1024 * 1024
"""Bytes an administration request (``/emulator/…``) may send; ``413`` above it."""


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator answers. Every default accepts what a correct client sends, and
    refuses what the real services refuse (research/wire-fidelity.md, table E).

    ``org``: the IMS org used when a request names none (no ``x-gw-ims-org-id`` header and no
    ``kndctr_*`` entry). ``location_hint``: the Edge cluster answered when the path has no
    hint and no cluster entry is sent. ``scopes``: decision scope → items
    (:mod:`engine.emulator.scopes`). ``destinations``: the ``activation:pull`` payload.
    ``unknown_scope``: a requested scope without items is ignored (plain ``200``, as Edge
    answers a scope with no activity), a ``warnings[]`` entry (``200``) or a non-fatal
    ``errors[]`` entry (``207``). ``datastreams``, ``credentials`` (client id → secret),
    ``client_keys``, ``context_ids``: when set, only these are valid (an unknown datastream is
    ``EXEG-0003-400``, an unknown client key ``401``); when ``None``, any non-empty value is
    (:func:`emulator_config` sets them from a ruleset). ``require_auth``: Edge paths need a
    bearer token, as on ``server.adobedc.net``. ``primary_identity``: when an event without a
    primary identity is refused with ``EXEG-0306-400``: on authenticated requests (those with
    ``Authorization``, as on ``server.adobedc.net``), always (a server datastream) or never.
    ``token_ttl``: seconds a token lives (IMS answers 86399). ``max_records``: the oldest
    recorded requests are forgotten above this many. ``admin_max_body``: bytes an
    administration request may send. ``allowed_hosts``: ``Host`` names accepted besides the
    loopback ones (requests arriving on a loopback address with another ``Host`` are refused
    with ``403``, against DNS rebinding). ``overrides``: the datastream's override settings,
    override path (``com_adobe_analytics.reportSuites``,
    ``com_adobe_experience_platform.datasets.event.datasetId``,
    ``com_adobe_target.propertyToken``, ``com_adobe_identity.idSyncContainerId``; see
    :mod:`engine.emulator.overrides`) → the values a request's ``meta.configOverrides`` may
    hold; another value is ``EXEG-0113-400``. ``None``: any value (unknown keys and wrong
    types are refused either way). :class:`ValueError` for an unknown path.
    """

    org: str = "TAGENGINEEMULATOR0000000@AdobeOrg"
    location_hint: str = "or2"
    scopes: Scopes = field(default_factory=lambda: DEFAULT_SCOPES)
    destinations: tuple[dict[str, Any], ...] = (
        {"id": "emulator-destination", "segments": [{"id": "emulator-all-visitors"}]},
    )
    unknown_scope: Literal["error", "warning", "ignore"] = "ignore"
    datastreams: frozenset[str] | None = None
    credentials: Mapping[str, str] | None = None
    require_auth: bool = False
    primary_identity: Literal["authenticated", "always", "never"] = "authenticated"
    token_ttl: float = 86399.0
    client_keys: frozenset[str] | None = None
    context_ids: frozenset[str] | None = None
    max_body: int = EDGE_MAX_BODY
    max_records: int = 100_000
    admin_max_body: int = ADMIN_MAX_BODY
    allowed_hosts: frozenset[str] = frozenset()
    overrides: Mapping[str, frozenset[str]] | None = None

    def __post_init__(self) -> None:
        if self.overrides is not None:
            check_paths(self.overrides)


def emulator_config(ruleset: Ruleset | None, **changes: Any) -> EmulatorConfig:
    """The configuration to emulate what ``ruleset`` talks to, as strictly as the real
    services: its edge settings' ``org`` (when set) names the ``kndctr_<org>_*`` state entries,
    as Edge takes the org from the datastream, so :func:`~engine.clients.set_cookie_headers`
    finds them; its datastream, Sitecore client key (direct mode) or context id (proxy mode)
    and IMS credentials are the only ones accepted (none when the settings give none). A
    datastream override is accepted when it names a known datastream as the original
    (``meta.sdkConfig.datastream.original``). The configuration overrides allowed are the
    values its ``send event`` rules write as literals (``edgeConfigOverrides``, ``datasetId``:
    :func:`~engine.emulator.overrides.ruleset_overrides`); an ``overrides`` change adds to
    them (``overrides=None`` accepts any). ``changes`` set other fields. Without a ruleset,
    every id is accepted."""
    if ruleset is None:
        return EmulatorConfig(**changes)
    if "overrides" not in changes or changes["overrides"] is not None:
        changes["overrides"] = merge_overrides(
            ruleset_overrides(ruleset), changes.get("overrides") or {}
        )
    edge, sitecore = ruleset.edge, ruleset.sitecore
    if edge is not None and edge.org:
        changes.setdefault("org", edge.org)
    datastream = edge.datastream if edge is not None else None
    changes.setdefault("datastreams", frozenset({datastream} if datastream else ()))
    if edge is not None and edge.client_id and edge.client_secret is not None:
        changes.setdefault("credentials", {edge.client_id: edge.client_secret.get_secret_value()})
    if sitecore is not None and sitecore.mode == "proxy":
        context = sitecore.context_id
        changes.setdefault("context_ids", frozenset({context} if context else ()))
    else:
        key = sitecore.client_key if sitecore is not None else None
        changes.setdefault("client_keys", frozenset({key} if key else ()))
    return EmulatorConfig(**changes)


@dataclass(slots=True)
class RecordedRequest:
    """One request as received. ``body`` is the parsed JSON body, the parsed form of a token
    request (``client_secret`` redacted), or, for a Sitecore direct-mode GET, the parsed
    ``message`` parameter; ``text`` holds a body that is neither. ``headers`` are lower-cased
    with the ``Authorization`` credentials redacted. ``status`` is the status answered
    (``None`` when the connection was dropped); ``fault`` describes an injected fault;
    ``ignored`` says why the request was answered but nothing of it collected (an opted-out
    visitor: ``EXEG-0301-200 …``)."""

    id: int
    time: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    text: str | None
    size: int
    status: int | None = None
    fault: str | None = None
    ignored: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-like data (``GET /emulator/requests``)."""
        return {
            "id": self.id,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "headers": dict(self.headers),
            "body": self.body,
            "text": self.text,
            "size": self.size,
            "status": self.status,
            "fault": self.fault,
            "ignored": self.ignored,
        }


@dataclass(frozen=True, slots=True)
class Token:
    """An access token issued by the IMS-like endpoint."""

    value: str
    client_id: str
    scope: str
    expires_at: float  # time.monotonic() deadline
    expired: bool = False

    def valid(self, now: float) -> bool:
        return not self.expired and now < self.expires_at


@dataclass(slots=True)
class _FaultRule:
    fault: Fault
    remaining: int | None


@dataclass(slots=True)
class _Visitor:
    ecid: str
    first_seen: float
    interacts: int = 0


@dataclass(frozen=True, slots=True)
class _Consent:
    general: Literal["in", "out"]
    time: float


@dataclass(slots=True)
class _Browser:
    ref: str
    customer_ref: str
    created: float
    events: list[str] = field(default_factory=list)


class EmulatorState:
    """The emulator's shared, lock-protected state."""

    def __init__(self, config: EmulatorConfig | None = None, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._initial = config or EmulatorConfig()
        self._config = self._initial
        self._records: deque[RecordedRequest] = deque(maxlen=self._config.max_records)
        self._next_id = 1
        self._faults: list[_FaultRule] = []
        self._random = random.Random(seed)
        self._tokens: dict[str, Token] = {}
        self._visitors: dict[str, _Visitor] = {}
        self._browsers: dict[str, _Browser] = {}
        self._consents: dict[str, _Consent] = {}

    # -------------------------------------------------------------- configuration
    @property
    def config(self) -> EmulatorConfig:
        with self._lock:
            return self._config

    def configure(self, *, initial: bool = False, **changes: Any) -> EmulatorConfig:
        """Replace some configuration fields (names as in :class:`EmulatorConfig`); with
        ``initial``, in what :meth:`reset` goes back to as well."""
        with self._lock:
            self._config = dataclasses.replace(self._config, **changes)
            if initial:
                self._initial = dataclasses.replace(self._initial, **changes)
            if self._records.maxlen != self._config.max_records:
                self._records = deque(self._records, maxlen=self._config.max_records)
            return self._config

    def reset(self) -> None:
        """Forget everything: requests, faults, tokens, visitors, browser ids, configuration
        changes made since construction."""
        with self._lock:
            self._config = self._initial
            self._records = deque(maxlen=self._config.max_records)
            self._next_id = 1
            self._faults.clear()
            self._tokens.clear()
            self._visitors.clear()
            self._browsers.clear()
            self._consents.clear()

    # -------------------------------------------------------------- recording
    def record(
        self,
        *,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        text: str | None,
        size: int,
    ) -> RecordedRequest:
        """Record a request as it arrives; :meth:`finish` adds the outcome."""
        with self._lock:
            entry = RecordedRequest(
                id=self._next_id,
                time=time.time(),
                method=method,
                path=path,
                query=query,
                headers=headers,
                body=body,
                text=text,
                size=size,
            )
            self._next_id += 1
            self._records.append(entry)
            return entry

    def finish(
        self, entry: RecordedRequest, *, status: int | None = None, fault: str | None = None
    ) -> None:
        """Set the answered status (and the injected fault, if any) of a recorded request."""
        with self._lock:
            if status is not None:
                entry.status = status
            if fault is not None:
                entry.fault = fault

    def ignore(self, entry: RecordedRequest, reason: str) -> None:
        """Mark a recorded request as answered but not collected, saying why."""
        with self._lock:
            entry.ignored = reason

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Copies of the recorded requests, oldest first; only those whose path starts with
        ``path`` when given."""
        with self._lock:
            return [
                dataclasses.replace(r)
                for r in self._records
                if path is None or r.path.startswith(path)
            ]

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    # -------------------------------------------------------------- faults
    def set_faults(self, faults: Iterable[Fault], *, seed: int | None = None) -> None:
        """Replace the active fault rules (an empty iterable removes them all); ``seed``
        reseeds the random source that ``rate`` draws from."""
        rules = [_FaultRule(f, f.count) for f in faults]
        with self._lock:
            self._faults = rules
            if seed is not None:
                self._random.seed(seed)

    def faults(self) -> list[dict[str, Any]]:
        """The active rules as JSON-like data, with the ``count`` still remaining."""
        with self._lock:
            out = []
            for rule in self._faults:
                data = rule.fault.to_json()
                if rule.remaining is not None:
                    data["count"] = rule.remaining
                out.append(data)
            return out

    def take_fault(self, path: str) -> Fault | None:
        """The first active rule that matches ``path`` and fires (by its ``rate``); its
        ``count`` goes down by one and the rule goes away at zero."""
        with self._lock:
            for rule in self._faults:
                fault = rule.fault
                if not path.startswith(fault.path):
                    continue
                if fault.rate < 1 and self._random.random() >= fault.rate:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._faults.remove(rule)
                return fault
            return None

    def fires(self, rate: float) -> bool:
        """Whether a per-request fault with ``rate`` applies (same random source)."""
        if rate >= 1:
            return True
        with self._lock:
            return self._random.random() < rate

    # -------------------------------------------------------------- tokens
    def issue_token(self, client_id: str, scope: str) -> Token:
        with self._lock:
            token = Token(
                value="emu-" + secrets.token_urlsafe(32),
                client_id=client_id,
                scope=scope,
                expires_at=time.monotonic() + self._config.token_ttl,
            )
            self._tokens[token.value] = token
            return token

    def token(self, value: str) -> Token | None:
        """The token issued as ``value`` if it is still valid, else ``None``."""
        with self._lock:
            token = self._tokens.get(value)
            if token is None or not token.valid(time.monotonic()):
                return None
            return token

    def expire_tokens(self, value: str | None = None) -> int:
        """Expire one token (by value) or all of them; returns how many were valid before."""
        now = time.monotonic()
        with self._lock:
            count = 0
            for key, token in self._tokens.items():
                if value is not None and key != value:
                    continue
                count += token.valid(now)
                self._tokens[key] = dataclasses.replace(token, expired=True)
            return count

    # -------------------------------------------------------------- visitors
    def visit(self, ecid: str) -> bool:
        """Count an interact for the visitor ``ecid``; ``True`` when it is new here."""
        with self._lock:
            visitor = self._visitors.get(ecid)
            new = visitor is None
            if visitor is None:
                visitor = self._visitors[ecid] = _Visitor(ecid, time.time())
            visitor.interacts += 1
            return new

    def visitors(self) -> dict[str, dict[str, Any]]:
        """ECID → ``{"first_seen", "interacts"}`` for every visitor seen by interact."""
        with self._lock:
            return {
                v.ecid: {"first_seen": v.first_seen, "interacts": v.interacts}
                for v in self._visitors.values()
            }

    # -------------------------------------------------------------- consent
    def set_consent(self, identities: Iterable[str], general: Literal["in", "out"]) -> None:
        """Record a visitor's general consent under each of its ``identities``
        (``"ECID:<id>"``, ``"FPID:<id>"``, ``"<namespace>:<id>"``)."""
        now = time.time()
        with self._lock:
            for identity in identities:
                self._consents[identity] = _Consent(general, now)

    def consent(self, identities: Iterable[str]) -> Literal["in", "out"] | None:
        """The most recently recorded consent of any of ``identities``; ``None`` when none
        was recorded."""
        with self._lock:
            found = [c for i in identities if (c := self._consents.get(i)) is not None]
        return max(found, key=lambda c: c.time).general if found else None

    def consents(self) -> dict[str, str]:
        """Identity → ``"in"`` / ``"out"``, as recorded by the set-consent endpoint."""
        with self._lock:
            return {identity: c.general for identity, c in self._consents.items()}

    # -------------------------------------------------------------- Sitecore browsers
    def add_browser(self, ref: str, customer_ref: str) -> None:
        with self._lock:
            self._browsers[ref] = _Browser(ref, customer_ref, time.time())

    def browser_events(self, ref: str) -> list[str] | None:
        """The event types a known browser has sent so far; ``None`` for an unknown one."""
        with self._lock:
            browser = self._browsers.get(ref)
            return None if browser is None else list(browser.events)

    def browser_event(self, ref: str, event_type: str) -> str | None:
        """Append an event type to a known browser's history; its ``customer_ref``, or
        ``None`` when this emulator never created ``ref``."""
        with self._lock:
            browser = self._browsers.get(ref)
            if browser is None:
                return None
            browser.events.append(event_type)
            return browser.customer_ref

    def browsers(self) -> dict[str, dict[str, Any]]:
        """Browser id → ``{"customer_ref", "events"}`` (event types in arrival order)."""
        with self._lock:
            return {
                b.ref: {"customer_ref": b.customer_ref, "events": list(b.events)}
                for b in self._browsers.values()
            }
