"""The collect endpoint, without I/O: a request in, a response out. The ASGI and WSGI apps
(:mod:`engine.web.asgi`, :mod:`engine.web.wsgi`) only move bytes to and from it.

Routes, relative to where the app is mounted (``/collect``):

- ``POST /`` takes ``{"pushes": [{"id": "…", "push": {…}}, …]}`` or one push object, and
  answers ``{"results": [{"id", "ok", "fired", "sends", "propositions", "destinations", …}]}``,
  one per push, in order: a malformed item is reported alone (``"ok": false, "error"``) and
  the others go on; a push id the session has seen is not processed again (``duplicate``).
- ``GET /tagengine.js``: the browser forwarder (``engine/web/tagengine.js``).
- ``GET /healthz``: the ruleset version, the last reload error, the outbox backlog (pending,
  oldest pending age, dead letters); 503 when the engine cannot take pushes (closed, a failed
  reload, a full or unreadable outbox) or delivery is stuck (``health_max_age``,
  ``health_max_dead``).
- ``GET <metrics_path>`` when set: the engine's Prometheus metrics (:mod:`engine.web.metrics`).
- ``OPTIONS``: CORS preflight for the configured origins.

It faces the internet: ``POST /`` is refused past ``max_body`` bytes (413) or ``max_pushes``
pushes (400), past the per-IP and per-visitor rate limits (429 with ``Retry-After``,
:mod:`engine.web.limits`), and pushes from bots (:mod:`engine.web.bots`) are answered
``{"ok": true, "bot": true}`` without being processed unless ``bots="allow"``.

A visitor is known by two first-party cookies the endpoint sets (a visitor id for 13 months,
a session id that lives while the visitor is active), signed so that a cookie can only ever
claim the visitor it was given to; the identity cookies (``kndctr_<org>_*``, FPID, AMCV) go
in and out with every answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from engine.context import VisitorContext
from engine.errors import BacklogFull, EngineError, PushError
from engine.stores.memory import MemorySessions
from engine.stores.redis_sessions import RedisSessions
from engine.web.bots import bot_match
from engine.web.limits import RateLimits, storage_for
from engine.web.metrics import CONTENT_TYPE_LATEST, metrics_for

if TYPE_CHECKING:
    from engine.engine import Engine, EngineSession
    from engine.results import PushResult

__all__ = ["CollectCore", "CollectRequest", "CollectResponse", "CollectSettings"]

log = logging.getLogger("engine.web")

SECRET_ENV = "TAGENGINE_COOKIE_SECRET"
BACKLOG_RETRY_AFTER = 5  # seconds a client waits before retrying when the outbox is full

# The ids the endpoint issues: a visitor is 24 hex digits, a session its visitor's id, a dash
# and 12 more; a cookie holding anything else is not one of ours.
_VISITOR_ID = re.compile(r"[0-9a-f]{24}")
_SESSION_ID = re.compile(r"([0-9a-f]{24})-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class CollectSettings:
    """How the endpoint behaves; every field has a default that suits a same-site collector.

    Cookies: ``visitor_cookie`` (``visitor_max_age`` seconds, 13 months) and ``session_cookie``
    (``session_max_age`` seconds, renewed on every answer), on ``cookie_domain`` (the site's
    apex domain, so every subdomain shares them; the request's host when ``None``),
    ``HttpOnly``, ``SameSite=Lax``, ``Secure`` on https (``secure``: ``None`` decides by the
    request's scheme). They are signed with ``secret`` (or the ``TAGENGINE_COOKIE_SECRET``
    environment variable; a random one per process otherwise, which only one process can
    check: set it when several workers serve the endpoint).

    ``cors_origins``: the origins (``https://shop.example.com``) that may post from another
    origin; none by default. ``trusted_proxies``: addresses or networks whose
    ``X-Forwarded-For`` is believed (``VisitorContext.from_headers``). ``max_body`` bytes and
    ``max_pushes`` per request. ``identity``: ``"wait"`` makes a new visitor's first answer
    wait (at most ``identity_wait`` seconds) for their first Edge answer, so it carries the
    identity cookie; ``"none"`` answers at once (``fpid: true`` in the edge settings gives an
    identity cookie from the first push either way).

    Rate limits (:mod:`engine.web.limits`), ``limits`` strings such as ``"600/minute"`` or
    ``"20/second;600/minute"``, ``None`` for none: ``rate_limit_ip`` counts the requests of a
    client IP (behind ``trusted_proxies``, the visitor's), ``rate_limit_visitor`` those of a
    returning visitor (a valid visitor cookie; a new visitor only has the IP limit). Past one,
    the answer is 429 with ``Retry-After``. ``rate_limit_storage``: a ``limits`` storage URI;
    by default the engine's Redis when its sessions are in Redis, else this process's memory.

    ``bots``: ``"drop"`` answers the pushes of a request whose ``User-Agent`` is a bot's
    (crawlerdetect's list, or none at all) ``{"ok": true, "bot": true}`` without processing
    them; ``"allow"`` processes them. Either way they are counted in the metrics.

    ``metrics_path`` (``"/metrics"``, say; ``None`` by default): serve the engine's Prometheus
    metrics there too, below the mount point (public if the endpoint is: rather mount
    :func:`engine.web.metrics_asgi_app` where only the monitoring reaches).

    Health (``GET /healthz``) is 503 when the oldest pending send is older than
    ``health_max_age`` seconds (delivery is stuck) or there are more than
    ``health_max_dead`` dead letters (``None``: not a reason).
    """

    visitor_cookie: str = "tg_vid"
    session_cookie: str = "tg_sid"
    visitor_max_age: int = 395 * 86400
    session_max_age: int = 30 * 60
    cookie_domain: str | None = None
    secure: bool | None = None
    secret: str | None = None
    cors_origins: Sequence[str] = ()
    trusted_proxies: Sequence[str] = ()
    max_body: int = 256 * 1024
    max_pushes: int = 100
    identity: Literal["wait", "none"] = "wait"
    identity_wait: float = 2.0
    rate_limit_ip: str | None = "600/minute"
    rate_limit_visitor: str | None = "120/minute"
    rate_limit_storage: str | None = None
    bots: Literal["drop", "allow"] = "drop"
    metrics_path: str | None = None
    health_max_age: float | None = 900.0
    health_max_dead: int | None = None


@dataclass(slots=True)
class CollectRequest:
    """What the endpoint needs of an HTTP request. ``path`` is relative to the mount point;
    ``headers`` as received (any case); ``client`` the peer's address; ``scheme`` ``http`` or
    ``https``."""

    method: str
    path: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""
    client: str | None = None
    scheme: str = "http"
    too_large: bool = False  # the body was refused while read (past max_body): a 413
    parsed_cookies: dict[str, str] | None = field(default=None, init=False, repr=False)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(slots=True)
class CollectResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _json(status: int, value: Any, headers: Iterable[tuple[str, str]] = ()) -> CollectResponse:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return CollectResponse(
        status,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *headers],
        body,
    )


class _Signer:
    """Cookie values ``<id>.<mac>``: an id only this site could have issued, for one purpose
    (a visitor cookie's value is no session cookie's, and the other way round)."""

    def __init__(self, secret: str | None) -> None:
        key = secret or os.environ.get(SECRET_ENV) or secrets.token_hex(32)
        self._key = key.encode()

    def _mac(self, purpose: str, value: str) -> str:
        message = f"{purpose}:{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def sign(self, purpose: str, value: str) -> str:
        return f"{value}.{self._mac(purpose, value)}"

    def unsign(self, purpose: str, signed: str | None) -> str | None:
        if not signed or "." not in signed or len(signed) > 256:
            return None
        value, _, mac = signed.rpartition(".")
        good = self._mac(purpose, value)
        return value if value and hmac.compare_digest(mac.encode(), good.encode()) else None


def _cookies(request: CollectRequest) -> dict[str, str]:
    """The request's cookies, read as browsers send them (``a=1; b=2``), tolerant of what
    other scripts of the site store: a pair this cannot read is skipped alone (the standard
    library's parser stops at the first, losing every cookie after it). The first of two
    cookies of one name wins (the browser sends the most specific first)."""
    if request.parsed_cookies is not None:  # read once per request (inline() reads them too)
        return request.parsed_cookies
    out: dict[str, str] = {}
    for key, value in request.headers:
        if key.lower() != "cookie":
            continue
        for pair in value.split(";"):
            name, eq, raw = pair.partition("=")
            name = name.strip()
            if not eq or not name or name in out:
                continue
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1]
            out[name] = raw
    request.parsed_cookies = out
    return out


def _site(host: str) -> str:
    """The registrable domain, roughly (the last two labels): enough to warn that a collector
    on another site cannot set first-party cookies."""
    labels = host.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


class _RecentVisitors:
    """The visitor a cookie-less request's first push id made, for :data:`RECENT_FOR`
    seconds: shared through the sessions' Redis when they are there (any worker may get the
    retry), else in this process (at most :data:`MAX_RECENT`)."""

    def __init__(self, engine: Engine) -> None:
        sessions = engine.sessions
        self._redis = sessions.target if isinstance(sessions, RedisSessions) else None
        self._local: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def claim(self, push_id: str, visitor: str) -> tuple[str | None, str | None]:
        """``(visitor, session)`` a request with this first push id made lately, or
        ``(None, None)`` after recording that ``visitor`` (and its session) makes it now."""
        session = f"{visitor}-{secrets.token_hex(6)}"
        value = f"{visitor} {session}"
        if self._redis is not None:
            key = self._redis.key("pushid", push_id)
            try:
                made = self._redis.client.set(key, value, ex=int(RECENT_FOR), nx=True)
                if made:
                    return visitor, session
                found = self._redis.client.get(key)
            except Exception as exc:  # Redis away: the push still goes on, as a new visitor
                log.warning("collect endpoint: recent push ids unreadable: %s", exc)
                return visitor, session
            text = found.decode() if isinstance(found, bytes) else str(found or "")
            known, _, known_session = text.partition(" ")
            return (known, known_session) if known and known_session else (visitor, session)
        now = time.monotonic()
        with self._lock:
            hit = self._local.get(push_id)
            if hit is not None and now - hit[1] < RECENT_FOR:
                known, _, known_session = hit[0].partition(" ")
                return known, known_session
            if len(self._local) >= MAX_RECENT:
                cutoff = now - RECENT_FOR
                self._local = {k: v for k, v in self._local.items() if v[1] >= cutoff}
                while len(self._local) >= MAX_RECENT:
                    self._local.pop(next(iter(self._local)))
            self._local[push_id] = (value, now)
        return visitor, session


RECENT_FOR = 120.0  # seconds a cookie-less request's push id keeps the visitor it made
MAX_RECENT = 10_000


class CollectCore:
    """The endpoint's logic for one :class:`~engine.Engine` (see the module docstring)."""

    def __init__(self, engine: Engine, settings: CollectSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or CollectSettings()
        self._signer = _Signer(self.settings.secret)
        self._origins = {origin.rstrip("/").lower() for origin in self.settings.cors_origins}
        # Parsed once: every request asks whether its peer is one of them.
        self._proxies = tuple(
            ipaddress.ip_network(proxy, strict=False) for proxy in self.settings.trusted_proxies
        )
        self._warned_sites: set[str] = set()
        self.metrics = metrics_for(engine)
        self._recent = _RecentVisitors(engine)
        self.limits: RateLimits | None = None
        if self.settings.rate_limit_ip or self.settings.rate_limit_visitor:
            self.limits = RateLimits(
                self.settings.rate_limit_ip,
                self.settings.rate_limit_visitor,
                storage_for(engine, self.settings.rate_limit_storage),
            )
        if self._origins:
            log.warning(
                "collect endpoint: pages of %s may post here; its cookies are first-party only "
                "for pages of the endpoint's own site: serve it under that site's domain (a "
                "path, or a subdomain with cookie_domain), or visitors' cookies are refused "
                "and every page view looks like a new visitor",
                ", ".join(sorted(self._origins)),
            )
        if self.settings.bots not in ("drop", "allow"):
            raise ValueError(f"bots must be 'drop' or 'allow', not {self.settings.bots!r}")
        metrics_path = self.settings.metrics_path
        self._metrics_path = None if metrics_path is None else "/" + metrics_path.strip("/")
        if not (self.settings.secret or os.environ.get(SECRET_ENV)):
            log.warning(
                "collect endpoint: no cookie secret (%s): visitor cookies are signed with a "
                "key of this process only; set it when several processes serve the endpoint",
                SECRET_ENV,
            )

    # ------------------------------------------------------------------ routing
    def handle(self, request: CollectRequest) -> CollectResponse:
        path = request.path.rstrip("/") or "/"
        method = request.method.upper()
        cors, refused = self._cors(request)
        if refused is not None:
            return refused
        if method == "OPTIONS":
            return CollectResponse(204, cors + self._preflight(request))
        if request.too_large:
            limit = self.settings.max_body
            response = _json(413, {"error": f"a request is at most {limit:,} bytes"})
        elif path == "/" and method == "POST":
            response = self._collect(request)
        elif path == "/tagengine.js" and method in ("GET", "HEAD"):
            response = self._script()
        elif path == "/healthz" and method in ("GET", "HEAD"):
            response = self._health()
        elif path == self._metrics_path and method in ("GET", "HEAD"):
            response = CollectResponse(
                200,
                [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")],
                self.metrics.exposition(),
            )
        elif path in ("/", "/tagengine.js", "/healthz", self._metrics_path):
            response = _json(405, {"error": f"{method} is not allowed here"})
        else:
            response = _json(404, {"error": "not found"})
        response.headers.extend(cors)
        if self._origins and not cors:
            response.headers.append(("Vary", "Origin"))  # the answer depends on the Origin
        if method == "HEAD":
            response.body = b""
        return response

    def _cors(
        self, request: CollectRequest
    ) -> tuple[list[tuple[str, str]], CollectResponse | None]:
        """CORS headers for an allowed origin; a refusal for a cross-origin write from any
        other (a same-origin request, or one without ``Origin``, passes)."""
        origin = request.header("origin")
        if origin is None:
            return [], None
        normal = origin.rstrip("/").lower()
        host = self._host(request)
        if urlsplit(normal).netloc == host:
            return [], None  # same origin
        if normal in self._origins:
            self._warn_site(normal, host)
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ], None
        if request.method.upper() in ("GET", "HEAD"):
            return [], None  # the script and health are readable by anyone
        return [], _json(403, {"error": f"origin {origin!r} may not post here (cors_origins)"})

    def _host(self, request: CollectRequest) -> str:
        """The host the browser asked for: ``Host``, or behind a trusted proxy (one that
        rewrites ``Host``) its ``X-Forwarded-Host``."""
        forwarded = request.header("x-forwarded-host")
        if forwarded and request.client and self._proxies:
            try:
                peer = ipaddress.ip_address(request.client)
            except ValueError:
                peer = None
            if peer is not None and any(peer in network for network in self._proxies):
                return forwarded.split(",")[0].strip().lower()
        return (request.header("host") or "").lower()

    def _preflight(self, request: CollectRequest) -> list[tuple[str, str]]:
        return [
            ("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
            ("Access-Control-Allow-Headers", "Content-Type"),
            ("Access-Control-Max-Age", "600"),
        ]

    def _warn_site(self, origin: str, host: str) -> None:
        page = urlsplit(origin).hostname or ""
        here = host.partition(":")[0]
        if page and here and _site(page) != _site(here) and page not in self._warned_sites:
            self._warned_sites.add(page)
            log.warning(
                "collect endpoint on %s serves pages of %s, another site: its cookies are "
                "third-party there, so browsers may refuse them and each visit may look like "
                "a new visitor; serve the endpoint on the site's own domain",
                here,
                page,
            )

    # ------------------------------------------------------------------ static parts
    def _script(self) -> CollectResponse:
        text = resources.files("engine.web").joinpath("tagengine.js").read_bytes()
        return CollectResponse(
            200,
            [
                ("Content-Type", "application/javascript; charset=utf-8"),
                ("Cache-Control", "public, max-age=300"),
            ],
            text,
        )

    def _health(self) -> CollectResponse:
        engine = self.engine
        problems: list[str] = []
        error = engine.ruleset_error
        if error is not None:
            problems.append("the last reload failed: the previous rules are serving")
        backlog: dict[str, Any] | None = None
        try:
            found = engine.backlog()
        except EngineError as exc:
            problems.append(f"the outbox cannot be read: {exc}")
            found = None
        settings = self.settings
        if found is not None:
            backlog = found.to_json()
            bound = engine.outbox.max_backlog if engine.outbox is not None else None
            if bound is not None and found.pending >= bound:
                problems.append(f"the outbox is full ({found.pending:,} of {bound:,} sends)")
            age = found.oldest_age
            limit = settings.health_max_age
            if limit is not None and age is not None and age > limit:
                problems.append(
                    f"the oldest pending send is {age:,.0f} s old "
                    f"(health_max_age {limit:g} s): delivery is stuck"
                )
            if settings.health_max_dead is not None and found.dead > settings.health_max_dead:
                problems.append(
                    f"{found.dead:,} dead letters (health_max_dead {settings.health_max_dead:,})"
                )
        if engine.closed:
            problems.append("the engine is closed")
        body = {
            "ok": not problems,
            "problems": problems,
            "ruleset": engine.ruleset.version,
            "ruleset_error": error.render() if error is not None else None,
            "backlog": backlog,
            "pending": found.pending if found is not None else None,
            "oldest_pending_age": found.oldest_age if found is not None else None,
            "dead": found.dead if found is not None else None,
        }
        return _json(200 if not problems else 503, body)

    # ------------------------------------------------------------------ collecting
    def _collect(self, request: CollectRequest) -> CollectResponse:
        response = self._collect_checked(request)
        self.metrics.request(response.status)
        return response

    def _identity(self, cookies: Mapping[str, str]) -> tuple[str | None, str | None]:
        """The visitor and session ids of the request's own cookies, each ``None`` unless
        this site signed it for that purpose and, for the session, for that visitor: a forged,
        altered or foreign cookie claims nothing (the request gets a new identity)."""
        settings = self.settings
        visitor = self._signer.unsign("vid", cookies.get(settings.visitor_cookie))
        if visitor is None or not _VISITOR_ID.fullmatch(visitor):
            return None, None
        session_id = self._signer.unsign("sid", cookies.get(settings.session_cookie))
        match = _SESSION_ID.fullmatch(session_id) if session_id is not None else None
        # The session id carries its visitor: a session cookie only claims its own visitor.
        if match is None or match.group(1) != visitor:
            return visitor, None
        return visitor, session_id

    def _collect_checked(self, request: CollectRequest) -> CollectResponse:
        settings = self.settings
        if len(request.body) > settings.max_body:
            return _json(413, {"error": f"a request is at most {settings.max_body:,} bytes"})
        context = VisitorContext.from_headers(
            request.headers, request.client, trusted_proxies=self._proxies
        )
        cookies = _cookies(request)
        known_visitor, known_session = self._identity(cookies)
        if self.limits is not None:
            limited = self.limits.check(context.ip, known_visitor)
            if limited is not None:
                self.metrics.rate_limited(limited.scope)
                return _json(
                    429,
                    {
                        "error": f"too many requests (the {limited.scope} limit is "
                        f"{limited.limit}); retry in {limited.retry_after} s",
                        "retry_after": limited.retry_after,
                    },
                    [("Retry-After", str(limited.retry_after))],
                )
        try:
            items = self._items(request.body)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        bot = bot_match(context.user_agent)
        if bot is not None:
            self.metrics.bot("dropped" if settings.bots == "drop" else "allowed")
            if settings.bots == "drop":
                log.debug(
                    "collect endpoint: %d push(es) from a bot (%s) not processed: %r",
                    len(items),
                    bot,
                    context.user_agent,
                )
                for _ in items:
                    self.metrics.push("bot")
                return _json(
                    200, {"results": [{"id": i, "ok": True, "bot": True} for i, _, _ in items]}
                )
            # Allowed: the rules see the verdict (request.bot), a guard the analyst can test.
            context = replace(context, bot=True)
        identity_cookies = self._has_identity_cookie(cookies)
        first_id = next((i for i, _, problem in items if i is not None and not problem), None)
        if known_visitor is None and first_id is not None:
            # No cookies: a new visitor, or a retry whose first answer (and its cookies) was
            # lost. A retry goes on as the visitor it made, so its pushes are not done twice.
            # Keyed by the push id with the client's address and user agent: another client
            # that learnt a push id cannot take the visitor with it.
            who = hashlib.sha256(f"{context.ip}|{context.user_agent}".encode()).hexdigest()[:16]
            known_visitor, known_session = self._recent.claim(
                f"{first_id}|{who}", secrets.token_hex(12)
            )
        visitor = known_visitor or secrets.token_hex(12)
        session_id = known_session or f"{visitor}-{secrets.token_hex(6)}"
        session = self.engine.session(session_id, visitor=visitor)
        new_identity = False
        try:
            # The identity cookies (kndctr_*, FPID, AMCV) of this request go into this
            # request's own session only: the one its signed cookies name, or a new one.
            session.take_cookies(cookies)
        except EngineError as exc:  # a malformed identity cookie: the visitor goes on without
            log.info("collect endpoint: identity cookies not taken: %s", exc)
        results: list[dict[str, Any]] = []
        status = 200
        extra: list[tuple[str, str]] = []
        metrics = self.metrics
        for push_id, push, problem in items:
            entry: dict[str, Any] = {"id": push_id}
            if problem is not None:
                entry.update(ok=False, error=problem)
                metrics.push("invalid")
                results.append(entry)
                continue
            try:
                result = session.push(push, context=context, push_id=push_id)
            except BacklogFull as exc:
                entry.update(ok=False, error=str(exc), retry=True)
                status = 503
                metrics.push("backlog_full")
            except PushError as exc:
                entry.update(ok=False, error=str(exc))
                metrics.push("invalid")
            except EngineError as exc:
                entry.update(ok=False, error=str(exc), retry=True)
                status = 503
                metrics.push("error")
            else:
                entry.update(self._outcome(result))
                new_identity = new_identity or any(
                    send.destination == "edge" and send.consent is None for send in result.sends
                )
                metrics.push("duplicate" if result.duplicate else "processed", result)
            results.append(entry)
        if status == 503:
            extra.append(("Retry-After", str(BACKLOG_RETRY_AFTER)))
        if new_identity and not identity_cookies and self._identity_comes_back():
            self._await_identity(session)
        headers = self._set_cookies(request, session, visitor, session_id)
        return _json(status, {"results": results}, [*extra, *headers])

    def _items(self, body: bytes) -> list[tuple[str | None, object, str | None]]:
        """The pushes of a request body: ``(push id or None, push, what is wrong with the
        item or None)``; a malformed item is reported alone, never read as something else."""
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("the body is not JSON") from None
        if not (isinstance(value, dict) and "pushes" in value):
            return [(None, value, None)]  # one push object
        if set(value) != {"pushes"}:
            extra = ", ".join(sorted(repr(k) for k in value if k != "pushes"))
            raise ValueError(f'a batch is {{"pushes": [...]}} alone, not with {extra}')
        pushes = value["pushes"]
        if not isinstance(pushes, list):
            raise ValueError("'pushes' must be a list")
        if len(pushes) > self.settings.max_pushes:
            raise ValueError(f"at most {self.settings.max_pushes} pushes a request")
        out: list[tuple[str | None, object, str | None]] = []
        for item in pushes:
            push_id = item.get("id") if isinstance(item, dict) else None
            shown = push_id if isinstance(push_id, str) else None
            if not isinstance(item, dict) or "push" not in item or not set(item) <= {"id", "push"}:
                keys = sorted(item) if isinstance(item, dict) else type(item).__name__
                out.append((shown, None, f'an item is {{"id": "…", "push": {{…}}}}, not {keys}'))
            elif push_id is not None and not isinstance(push_id, str):
                out.append((None, None, f"a push id is a string, not {push_id!r}"))
            else:
                out.append((shown, item["push"], None))
        return out

    @staticmethod
    def _outcome(result: PushResult) -> dict[str, Any]:
        if result.duplicate:
            return {"ok": True, "duplicate": True}
        everything = [result, *result.followups]
        sends = [send for each in everything for send in each.sends] + result.released
        propositions: list[Any] = []
        destinations: list[Any] = []
        for send in sends:
            answer = send.response if isinstance(send.response, Mapping) else {}
            propositions.extend(answer.get("propositions") or ())
            destinations.extend(answer.get("destinations") or ())
        out: dict[str, Any] = {
            "ok": True,
            "fired": [name for each in everything for name in each.fired],
            "sends": sum(1 for send in sends if send.consent is None),
            "propositions": propositions,
            "destinations": destinations,
        }
        if result.consent != "in":
            out["consent"] = result.consent
        failed = [o.rule for each in everything for o in each.rules if o.status == "failed"]
        if failed:
            out["failed"] = failed
        return out

    def _has_identity_cookie(self, cookies: Mapping[str, str]) -> bool:
        """Whether the request brings the visitor's identity already (Edge's identity
        cookie, or the first-party id): then no answer needs to wait for one."""
        edge = self.engine.ruleset.edge
        if edge is not None and edge.fpid and edge.fpid_cookie in cookies:
            return True
        return any(name.startswith("kndctr_") and name.endswith("_identity") for name in cookies)

    def _identity_comes_back(self) -> bool:
        """Whether waiting for a new visitor's identity can succeed: ``identity="wait"``, and
        the first Edge answer reaches a session this process reads (it delivers, or the
        sessions are shared with the workers that do)."""
        engine = self.engine
        if self.settings.identity != "wait" or engine.dry_run:
            return False
        return engine.delivering or not isinstance(engine.sessions, MemorySessions)

    def inline(self, request: CollectRequest) -> bool:
        """Whether the ASGI app may run ``request`` in the event loop: nothing in it waits
        (no network, no shared store, no identity to wait for), so the thread hop would cost
        more than the work."""
        if not self.engine.inline_async:
            return False
        if self.limits is not None and not self.limits.in_memory:
            return False
        if request.method.upper() != "POST" or not self._identity_comes_back():
            return True
        return self._has_identity_cookie(_cookies(request))

    def _await_identity(self, session: EngineSession) -> None:
        """Wait, briefly, for the visitor's first Edge answer (a delivery worker's), so the
        answer can carry the identity cookie."""
        deadline = time.monotonic() + self.settings.identity_wait
        delay = 0.005
        while time.monotonic() < deadline:
            identity = self.engine.sessions.identity(session.id) or {}
            if identity.get("has_identity") or identity.get("ecid") or identity.get("fpid"):
                return
            if self.engine.dry_run:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _set_cookies(
        self, request: CollectRequest, session: EngineSession, visitor: str, session_id: str
    ) -> list[tuple[str, str]]:
        settings = self.settings
        secure = settings.secure if settings.secure is not None else request.scheme == "https"
        domain = settings.cookie_domain
        attrs = "; Path=/; SameSite=Lax; HttpOnly" + ("; Secure" if secure else "")
        if domain:
            attrs = f"; Domain={domain}" + attrs
        out = [
            (
                "Set-Cookie",
                f"{settings.visitor_cookie}={self._signer.sign('vid', visitor)}; "
                f"Max-Age={settings.visitor_max_age}{attrs}",
            ),
            (
                "Set-Cookie",
                f"{settings.session_cookie}={self._signer.sign('sid', session_id)}; "
                f"Max-Age={settings.session_max_age}{attrs}",
            ),
        ]
        try:
            identity = session.set_cookie_headers(domain, secure=secure)
        except EngineError:
            identity = []  # no 'org' and no FPID: no identity cookies to give
        out.extend(("Set-Cookie", value) for value in identity)
        return out
