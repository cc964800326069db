"""The :class:`Engine`: a ruleset, its sessions, and delivery of what the rules send.

::

    with Engine.from_path("rules/", dry_run=True) as engine:
        result = engine.session("visitor-1").push({"event": "commerce.purchase"})
        result.fired, result.rules, result.sends[0].body
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from engine.background import BackgroundDelivery, Intake, OnResult, Redelivery
from engine.clients import RetryPolicy, set_cookie_headers, take_cookies
from engine.clients.identity import (
    checked_consent_cookie,
    checked_fpid,
    fpid_cookie_header,
    legacy_ecid,
)
from engine.consent import (
    VISITOR_KEY,
    ConsentChange,
    build_consent_request,
    consent_of,
    data_layer_consent,
    stored_request,
    stored_requests,
)
from engine.context import FORWARD_IP, ForwardIp, VisitorContext
from engine.destinations.edge import proposition_notification
from engine.dispatch import Dispatcher
from engine.errors import EngineError, PushError, RuleError
from engine.loader import load_ruleset
from engine.pushing import push as _push_once
from engine.results import PushResult, Send
from engine.ruleset import Ruleset
from engine.runtime import Ids, Targets, _timestamp, process_push
from engine.sessions import Session
from engine.settings import ConsentSettings
from engine.stores import open_outbox, open_sessions
from engine.stores.base import Backlog, BaseOutbox, Sessions
from engine.stores.memory import MemorySessions
from engine.stores.redis_outbox import RedisOutbox
from engine.stores.redis_sessions import RedisSessions
from engine.transports import Transport

if TYPE_CHECKING:
    from engine.watch import RulesWatcher

__all__ = ["Engine", "EngineSession"]

log = logging.getLogger("engine")

MAX_QUEUED_PUSHES = 100  # pushes made by `push` actions, per original push


def _freeze() -> None:
    """``gc.freeze()`` (``Engine(freeze_gc=True)``), after collecting the young generations:
    frozen, a garbage cycle made just before would stay for good. (Cheap: a ruleset loaded
    with ``freeze=True`` is frozen already; one loaded without it and still young gets the one
    scan the collector would have given it anyway.)"""
    gc.collect(1)
    gc.freeze()


class EngineSession:
    """One visitor's session in an engine: push to it, export it."""

    __slots__ = ("_engine", "_id", "_live", "_visitor")

    def __init__(
        self, engine: Engine, session_id: str, visitor: str | None, live: Session | None
    ) -> None:
        self._engine = engine
        self._id = session_id
        self._visitor = visitor
        self._live = live  # the in-memory store's session object: its visitor id

    @property
    def id(self) -> str:
        return self._id

    @property
    def visitor(self) -> str:
        if self._live is not None:
            return self._live.visitor_id
        stored = self._engine.sessions.read(self._id)
        if stored is not None:
            return stored.visitor_id
        return self._id if self._visitor is None else self._visitor

    @property
    def state(self) -> dict[str, Any]:
        """A copy of the session's current data-layer state."""
        session = self._engine.sessions.read(self._id)
        return {} if session is None else session.get_state()

    def push(
        self,
        item: object,
        *,
        context: VisitorContext | None = None,
        push_id: str | None = None,
    ) -> PushResult:
        """Process one data-layer push; raises :class:`~engine.errors.PushError` for bad input.

        ``context`` describes the visitor (:meth:`VisitorContext.from_headers` of their
        request): its Edge sends forward it, so Edge geolocates and device-detects the visitor
        rather than this server. ``push_id`` (a browser's id for the push) makes a retry
        harmless: a push whose id the session saw in the last hour changes nothing and
        returns ``duplicate=True`` (the ids are kept with the session, so every worker knows
        them)."""
        return self._engine._push(self._id, self._visitor, item, context, push_id=push_id)

    async def apush(
        self,
        item: object,
        *,
        context: VisitorContext | None = None,
        push_id: str | None = None,
    ) -> PushResult:
        """:meth:`push` for asyncio code: the event loop never waits for the network.

        When the push only evaluates in this process's memory (dry run, background mode:
        microseconds of CPU) it runs inline; when it waits for answers or for a shared
        session store, it runs in a worker thread (``asyncio.to_thread``), so other
        coroutines go on meanwhile. Pushes of one session still happen one at a time, in the
        order they were awaited.
        """
        engine = self._engine
        if engine._inline_async:
            return engine._push(self._id, self._visitor, item, context, push_id=push_id)
        # One at a time per session, in await order (asyncio.Lock is fair): threads would
        # otherwise race for the session's lock and merge the pushes in any order.
        async with engine._async_lock(self._id):
            return await asyncio.to_thread(
                engine._push, self._id, self._visitor, item, context, push_id=push_id
            )

    def set_consent(
        self, value: str, *, tcf: str | None = None, gdpr_applies: bool | None = None
    ) -> PushResult:
        """The visitor gave (``"in"``) or refused (``"out"``) consent to collection: sends
        held while it was pending go out (``"in"``, in order) or are dropped (``"out"``), and
        so will every later send. Edge is told through its consent endpoint, in the Adobe
        standard of the ruleset's ``consent`` block, with ``tcf`` (an IAB TCF 2.0 string) and
        ``gdpr_applies`` when given. The result lists what was released or dropped. A value
        that is not a consent raises :class:`~engine.errors.PushError`, changing nothing."""
        change = ConsentChange.of(value, tcf, gdpr_applies)
        return self._engine._push(self._id, self._visitor, None, None, change)

    def notify_propositions(
        self,
        propositions: object,
        *,
        event_type: str = "decisioning.propositionDisplay",
        view_name: str | None = None,
        context: VisitorContext | None = None,
    ) -> PushResult:
        """Tell Edge the page rendered (or the visitor clicked, dismissed…) these
        propositions, as the Web SDK's display notifications do: a server cannot render, so
        the app that rendered what a response returned calls this, and Target/AJO reporting
        counts it. ``propositions`` as the response gave them (``id``, ``scope``,
        ``scopeDetails`` are sent); ``event_type`` ``decisioning.propositionDisplay``,
        ``…Interact``, ``…Trigger``, ``…Dismiss`` or ``…SuppressDisplay``. The notification
        goes the way the session's sends go (identity, consent, outbox). Bad propositions raise
        :class:`~engine.errors.PushError`."""
        try:
            fields = proposition_notification(
                propositions, event_type=event_type, view_name=view_name
            )
        except ValueError as error:
            raise PushError(f"notify_propositions: {error}") from error
        return self._engine._push(self._id, self._visitor, None, context, notice=fields)

    @property
    def consent(self) -> str:
        """The session's consent: ``"in"``, ``"out"`` or ``"pending"``."""
        session = self._engine.sessions.read(self._id)
        settings = self._engine.ruleset.consent
        if session is None:
            return settings.default
        with session.lock:
            return consent_of(session.identity, settings, session.visitor_kept)

    def take_cookies(self, cookies: Mapping[str, str]) -> None:
        """Take the visitor's identity cookies (from the request their browser made: its Web
        SDK's, or those :meth:`set_cookie_headers` gave it) into the session, so that its
        next Edge request carries the visitor's identity and cluster, and Edge keeps one ECID
        for the browser and the server:

        - ``kndctr_<org>_*``, Edge's state entries (``org`` in the edge settings names them);
        - the first-party id cookie (``fpid_cookie``, ``FPID`` by default) with ``fpid: true``;
        - ``s_ecid`` or ``AMCV_<org>``, a legacy Visitor.js visitor's ECID, migrated as the
          Web SDK does: used when no ``kndctr_<org>_identity`` cookie came, so that visitor
          keeps their ECID.

        Other cookies are ignored. A malformed FPID or ``kndctr_<org>_consent`` cookie, or
        ``cookies`` that are not a mapping of names to values, raise
        :class:`~engine.errors.PushError` naming it, and the session is unchanged; a ruleset
        with neither ``org`` nor ``fpid`` raises :class:`~engine.errors.EngineError`."""
        if not isinstance(cookies, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in cookies.items()
        ):
            raise PushError("cookies must be a mapping of cookie names to values (strings)")
        engine = self._engine
        edge = engine.ruleset.edge
        fpid_name = edge.fpid_cookie if edge is not None and edge.fpid else None
        org = edge.org if edge is not None and edge.org else None
        if org is None and fpid_name is None:
            engine._org()  # raises, saying what to set
        # Everything read before anything changes: a bad cookie leaves the session as it was.
        raw = cookies.get(fpid_name) if fpid_name is not None else None
        fpid = None if raw is None else checked_fpid(raw, f"the {fpid_name} cookie")
        legacy = legacy_ecid(cookies, org) if org is not None else None
        if org is not None:
            checked_consent_cookie(cookies, org)
        now = engine._clock()

        def change(identity: dict[str, Any]) -> None:
            if org is not None:
                take_cookies(identity, cookies, org, now=now)
            if fpid is not None:
                identity["fpid"] = fpid
            if legacy is not None and not identity.get("has_identity") and not identity.get("ecid"):
                identity["ecid"] = legacy

        engine.sessions.update_identity(self._id, self._visitor, change)

    def set_cookie_headers(self, domain: str | None = None, *, secure: bool = True) -> list[str]:
        """``Set-Cookie`` values that give the browser the session's ``kndctr_<org>_*`` state
        entries and, with ``fpid: true`` and the visitor's consent ``in``, its first-party id
        cookie (``Domain=domain`` when
        given: the site's apex domain), for the response to the visitor (see
        :func:`~engine.clients.set_cookie_headers`)."""
        engine = self._engine
        edge = engine.ruleset.edge
        fpid_name = edge.fpid_cookie if edge is not None and edge.fpid else None
        live = engine.sessions.read(self._id)  # read in place: a copy of it all costs more
        if live is None:
            identity: dict[str, Any] = {}
        else:
            with live.lock:
                identity = {
                    key: live.identity[key] for key in ("entries", "fpid") if key in live.identity
                }
                identity["entries"] = list(identity.get("entries") or ())
        headers: list[str] = []
        if fpid_name is None or (edge is not None and edge.org):
            org = engine._org()
            headers = set_cookie_headers(identity, org, domain, now=engine._clock(), secure=secure)
        # No lasting identifier for a visitor who has not consented (pending) or refused.
        if fpid_name is not None and self.consent == "in":
            fpid = fpid_cookie_header(identity, fpid_name, domain, secure=secure)
            if fpid is not None:
                headers.append(fpid)
        return headers

    def export(self) -> dict[str, Any]:
        """The session as JSON-serialisable data, for :meth:`Engine.restore`."""
        session = self._engine.sessions.read(self._id)
        if session is None:
            session = Session(self._id, self._visitor, now=self._engine._clock())
        with session.lock:
            return session.export()

    def __repr__(self) -> str:
        return f"<EngineSession {self._id!r}>"


class Engine:
    """Evaluates pushes against a ruleset and delivers the sends.

    ``dry_run`` builds every send and stops there. Otherwise each send is delivered by a
    :class:`~engine.dispatch.Dispatcher` over one shared httpx client (``http`` injects one,
    ``policy`` bounds retries), to the ruleset's URLs or to ``edge_url``/``sitecore_url``
    (the local emulator, say), with OAuth tokens from the edge settings' ``token_url`` or
    ``token_url``; or, when a ``transport`` is given (a
    :class:`~engine.transports.RecordingTransport` in tests), handed to it instead.
    A push returns when its sends have answered; a session's sends go out in order.
    ``sessions`` is the session store: in this process's memory by default (idle expiry and a
    maximum count), or ``"redis://HOST:PORT/DB"`` (a
    :class:`~engine.stores.RedisSessions`), shared by every process and host of the app. A
    push is atomic: the session's change and its sends are stored together or not at all.

    ``background=True`` returns from a push once its sends are in the durable ``outbox`` (a
    file name, an :class:`~engine.stores.Outbox`, or in memory when none); up to ``workers``
    threads deliver them (:class:`~engine.background.BackgroundDelivery`), ``on_result``
    hears how each one ended, and :meth:`flush`/:meth:`close` wait at most
    ``flush_timeout`` seconds by default. A send whose retries (``policy``) ran out on a
    retryable failure is delivered again later, as ``redelivery`` says (by default up to 10
    rounds, backing off from 1 s to 5 minutes), and then goes to the dead letters. With
    sessions in Redis the outbox is the same Redis (Streams) unless another is given.

    ``deliver=False`` makes a process that only pushes: a push returns once its sends are in
    the ``outbox`` (a SQLite file the host's processes share, or Redis), and ``tagengine
    deliver`` processes deliver them. ``max_backlog`` bounds the sends an outbox may hold: a
    push past it raises :class:`~engine.errors.BacklogFull` and changes nothing.

    ``forward_ip`` says what Edge sends tell of a push's visitor IP (its
    :class:`~engine.context.VisitorContext`): ``"full"`` (as Adobe's Server SDK), ``"truncated"``
    (IPv4 /24, IPv6 /48) or ``"none"``. It applies before the send is built, so an outbox
    never holds more of the address than is sent.

    ``freeze_gc`` (the default) calls ``gc.freeze()`` whenever the engine takes a ruleset: when
    it is made and when a reload swaps one in. Everything alive then (a 10,000-rule ruleset is
    over a million objects; the app's too) moves to the permanent generation, which the
    cyclic collector never scans: a full collection no longer stalls pushes for a second. It
    is process-wide; README, "Garbage collection", says what it means for an app.
    """

    def __init__(
        self,
        ruleset: Ruleset,
        *,
        dry_run: bool = False,
        transport: Transport | None = None,
        sessions: Sessions | str | None = None,
        clock: Callable[[], float] = time.time,
        ids: Ids | None = None,
        edge_url: str | None = None,
        sitecore_url: str | None = None,
        token_url: str | None = None,
        http: httpx.Client | None = None,
        policy: RetryPolicy | None = None,
        background: bool = False,
        outbox: str | os.PathLike[str] | BaseOutbox | None = None,
        deliver: bool = True,
        max_backlog: int | None = None,
        workers: int = 16,
        flush_timeout: float = 10.0,
        redelivery: Redelivery | None = None,
        on_result: OnResult | None = None,
        forward_ip: ForwardIp = "full",
        freeze_gc: bool = True,
    ) -> None:
        if forward_ip not in FORWARD_IP:
            raise EngineError(
                f"forward_ip must be one of {', '.join(FORWARD_IP)}, not {forward_ip!r}"
            )
        self.forward_ip: ForwardIp = forward_ip
        self.consent_dropped = 0  # sends dropped for the visitor's consent, by this engine
        self._urls = (edge_url, sitecore_url, token_url)
        # The ruleset and the settings its requests are built with, swapped as one reference.
        self._live = (ruleset, Targets.of(ruleset, *self._urls))
        self.dry_run = dry_run
        self._on_result = on_result
        self._result_hooks: list[OnResult] = []  # add_result_hook: metrics, say
        self._owns_sessions = not isinstance(sessions, Sessions)
        self.sessions: Sessions = open_sessions(sessions, clock=clock)
        self.transport = transport
        self._http, self._policy = http, policy
        self._dispatcher: Dispatcher | None = None  # made on the first delivery
        self._lazy_lock = threading.Lock()  # guards what is made on first use
        # Per session id and event loop: the order of a session's awaited pushes.
        self._async_locks: dict[str, list[Any]] = {}
        self._background: BackgroundDelivery | None = None
        self._intake: Intake | None = None
        self._outbox: BaseOutbox | None = None
        self._owns_outbox = False
        if max_backlog is not None and max_backlog < 1:
            raise EngineError("max_backlog must be at least 1")
        if not dry_run and (background or not deliver):
            if transport is not None:
                raise EngineError(
                    "background delivery uses the destination clients, not a transport"
                )
            self._owns_outbox = not isinstance(outbox, BaseOutbox)
            if outbox is None and isinstance(self.sessions, RedisSessions):
                outbox = RedisOutbox(self.sessions.target)  # the same Redis: atomic pushes
            if outbox is None and not deliver:
                raise EngineError(
                    "deliver=False leaves the sends to another process (tagengine deliver): "
                    "give an outbox they share (a file on this host, or redis://...)"
                )
            self._outbox = open_outbox(outbox)
            if isinstance(self.sessions, RedisSessions) and not (
                isinstance(self._outbox, RedisOutbox)
                and self._outbox.target.url == self.sessions.url
            ):
                raise EngineError(
                    "sessions in Redis store a push's sends in the same atomic step: the "
                    f"outbox must be the same Redis ({self.sessions.name}), not "
                    f"{self._outbox.name}"
                )
            self._outbox.max_backlog = max_backlog
            if deliver:
                parent = os.getpid()

                def make_dispatcher() -> Dispatcher:  # again in a forked child: its own client
                    return Dispatcher(http=http if os.getpid() == parent else None, policy=policy)

                self._background = BackgroundDelivery(
                    self._outbox,
                    make_dispatcher,
                    sessions=self.sessions,
                    targets=lambda: self._live[1],  # read at each delivery: follows a reload
                    workers=workers,
                    flush_timeout=flush_timeout,
                    redelivery=redelivery,
                    on_result=self._heard,
                )
            else:
                self._intake = Intake.start(self._outbox)
        elif max_backlog is not None:
            raise EngineError("max_backlog bounds an outbox: use it with background=True")
        # Inline in the event loop only what touches no network and no shared store.
        self._inline_async = isinstance(self.sessions, MemorySessions) and (
            dry_run or (self._outbox is not None and not isinstance(self._outbox, RedisOutbox))
        )
        self._clock = clock
        self._ids = ids or Ids()
        self._closed = False
        # Where from_path loaded the rules (path, cache_dir, environ), for watch().
        self._source: (
            tuple[str | os.PathLike[str], str | os.PathLike[str] | None, Mapping[str, str] | None]
            | None
        ) = None
        self._watcher: RulesWatcher | None = None
        self.freeze_gc = freeze_gc
        if freeze_gc:  # last: a constructor that raised froze nothing
            _freeze()

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        watch: bool = False,
        on_reload: Callable[[Ruleset], None] | None = None,
        on_reload_error: Callable[[RuleError], None] | None = None,
        **options: Any,
    ) -> Engine:
        """An engine on the ruleset at ``path``; raises :class:`~engine.errors.RuleError`.
        ``watch=True`` reloads the rules when they change (see :meth:`watch`)."""
        # Frozen by the loader before any collection scans it (the constructor's freeze comes
        # after the collector is back on: the first collection would scan the whole ruleset).
        freeze = bool(options.get("freeze_gc", True))
        ruleset = load_ruleset(path, cache_dir=cache_dir, environ=environ, freeze=freeze)
        engine = cls(ruleset, **options)
        engine._source = (path, cache_dir, environ)
        if watch:
            engine.watch(on_change=on_reload, on_error=on_reload_error)
        return engine

    # ------------------------------------------------------------------ hot reload
    def watch(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        debounce: float = 0.2,
        on_change: Callable[[Ruleset], None] | None = None,
        on_error: Callable[[RuleError], None] | None = None,
    ) -> RulesWatcher:
        """Reload the rules at ``path`` (default: where :meth:`from_path` loaded them) when
        their ``.rules`` files change: off the push path, swapped in atomically on success;
        a failed rebuild keeps the old rules serving and is in :attr:`ruleset_error` (and
        passed to ``on_error``). Returns the :class:`~engine.watch.RulesWatcher`; watching
        again returns the same one."""
        from engine.watch import watch_engine

        if self._watcher is not None:
            return self._watcher
        if self._closed:
            raise EngineError("the engine is closed")
        cache_dir: str | os.PathLike[str] | None = None
        environ: Mapping[str, str] | None = None
        if path is None:
            if self._source is None:
                raise EngineError("watch() needs a path: this engine was not made by from_path")
            path, cache_dir, environ = self._source
        self._watcher = watch_engine(
            self,
            path,
            debounce=debounce,
            cache_dir=cache_dir,
            environ=environ,
            on_change=on_change,
            on_error=on_error,
            freeze=self.freeze_gc,
        )
        return self._watcher

    def unwatch(self) -> None:
        """Stop reloading the rules (the ruleset serving stays)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    @property
    def watcher(self) -> RulesWatcher | None:
        return self._watcher

    @property
    def ruleset_error(self) -> RuleError | None:
        """Why the last reload failed (the old rules still serve); ``None`` when it succeeded
        or nothing is watched."""
        return self._watcher.last_error if self._watcher is not None else None

    @property
    def ruleset(self) -> Ruleset:
        return self._live[0]

    @ruleset.setter
    def ruleset(self, ruleset: Ruleset) -> None:
        # One reference swap: a push reads it once, so it runs on exactly one version.
        self._live = (ruleset, Targets.of(ruleset, *self._urls))
        if self.freeze_gc:
            # Out of the collector's way as at construction (a watcher's build is frozen
            # already: this catches a ruleset the app built). The old one holds no cycle:
            # frozen or not, it is freed by reference counting once its last push is done.
            _freeze()

    def _org(self) -> str:
        """The IMS org the ``kndctr_*`` cookies are named after (the edge settings')."""
        edge = self._live[1].edge
        if edge is None or not edge.org:
            raise EngineError(
                "the kndctr_<org>_* cookies are named after the IMS org: set 'org' in the "
                "edge settings"
            )
        return edge.org

    def session(self, session_id: str, *, visitor: str | None = None) -> EngineSession:
        """The session ``session_id`` (created on first use). Sessions of the same ``visitor``
        (default: the session id) share ``keep visitor`` values and ``per visitor`` limits."""
        if not isinstance(session_id, str) or not session_id:
            raise EngineError("a session id is a non-empty string")
        if visitor is not None and (not isinstance(visitor, str) or not visitor):
            raise EngineError("a visitor id is a non-empty string")
        live = None
        if isinstance(self.sessions, MemorySessions):  # made now, as it always was
            live = self.sessions.get(session_id, visitor)
        return EngineSession(self, session_id, visitor, live)

    def restore(self, data: Mapping[str, Any]) -> EngineSession:
        """Put back a session from :meth:`EngineSession.export` (raises PushError if malformed)."""
        session = self.sessions.restore(dict(data))
        live = session if isinstance(self.sessions, MemorySessions) else None
        return EngineSession(self, session.id, session.visitor_id, live)

    def push(
        self, item: object, *, session: str = "default", context: VisitorContext | None = None
    ) -> PushResult:
        # (the push finds or makes the session itself: no EngineSession, no second look-up)
        if not isinstance(session, str) or not session:
            raise EngineError("a session id is a non-empty string")
        return _push_once(self, session, None, item, context, None, None, None)

    async def apush(
        self, item: object, *, session: str = "default", context: VisitorContext | None = None
    ) -> PushResult:
        return await self.session(session).apush(item, context=context)

    def add_result_hook(self, hook: OnResult) -> None:
        """Call ``hook(session_id, send)`` once per send this engine delivers: in background
        mode when it is delivered or buried (as ``on_result``, on a delivery thread), in wait
        mode when it has answered (on the pushing thread); never in a dry run. A hook that
        raises is logged and the others still run (``engine.web.metrics`` counts with one)."""
        self._result_hooks.append(hook)

    def _heard(self, session_id: str, send: Send) -> None:
        try:
            if self._on_result is not None:
                self._on_result(session_id, send)  # what it raises is logged by the caller
        finally:
            self._hooks_heard(session_id, [send])

    def _hooks_heard(self, session_id: str, sends: list[Send]) -> None:
        for hook in self._result_hooks:
            for send in sends:
                try:
                    hook(session_id, send)
                except Exception:
                    log.exception("a result hook raised")

    def backlog(self) -> Backlog | None:
        """The outbox's backlog (pending, in flight, oldest age, dead letters), or ``None``
        when sends are not stored (a dry run, wait mode)."""
        return None if self._outbox is None else self._outbox.backlog()

    @property
    def outbox(self) -> BaseOutbox | None:
        return self._outbox

    @property
    def delivering(self) -> bool:
        """Whether this process delivers the sends (wait or background mode), rather than a
        dry run or a ``deliver=False`` process leaving them to ``tagengine deliver``."""
        return not self.dry_run and (self._outbox is None or self._background is not None)

    @property
    def inline_async(self) -> bool:
        """Whether a push touches only this process's memory and files (no network, no
        shared store): async code may run it in the event loop rather than a thread."""
        return self._inline_async

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: a push then raises."""
        return self._closed

    # ------------------------------------------------------------------ internals
    def _push(
        self,
        session_id: str,
        visitor_id: str | None,
        item: object,
        context: VisitorContext | None = None,
        consent: ConsentChange | None = None,
        notice: dict[str, Any] | None = None,
        push_id: str | None = None,
    ) -> PushResult:
        """One push, atomic (:func:`engine.pushing.push`). With ``consent``
        (:meth:`EngineSession.set_consent`) there is no push: only the consent changes, and
        what it releases goes out; with ``notice``, only that Edge notification is sent."""
        return _push_once(self, session_id, visitor_id, item, context, consent, notice, push_id)

    def _follow(
        self,
        ruleset: Ruleset,
        targets: Targets,
        session: Session,
        result: PushResult,
        context: VisitorContext | None,
    ) -> None:
        """Process the pushes made by `push` actions, after the push that made them, in order."""
        queue = deque(result.pushes)
        done = 0
        while queue:
            if done >= MAX_QUEUED_PUSHES:
                raise EngineError(
                    f"rules queued more than {MAX_QUEUED_PUSHES} pushes from one push "
                    "(a rule probably pushes the event that triggers it)"
                )
            follow = process_push(
                ruleset,
                session,
                queue.popleft(),
                now=self._clock(),
                ids=self._ids,
                targets=targets,
                context=context,
            )
            done += 1
            queue.extend(follow.pushes)
            result.followups.append(follow)

    def _gate(
        self,
        ruleset: Ruleset,
        targets: Targets,
        session: Session,
        result: PushResult,
        before: Mapping[str, Any],
        now: float,
        change: ConsentChange | None,
    ) -> tuple[list[Send], bool]:
        """The visitor's consent applied to a push's sends (engine/consent.py): the sends to
        store or deliver now, in order (Edge told of a change first, then the sends consent
        released, then the push's own), and whether they are stored already (released from
        the outbox). Held and dropped sends are marked on the result. (Called only when there
        is something to decide: :func:`engine.pushing.push` sees first when every send goes.)"""
        settings = ruleset.consent
        identity, visitor = session.identity, session.visitor_kept
        current = consent_of(identity, settings, visitor)
        wanted = change.value if change is not None else None
        if wanted is None:
            wanted = data_layer_consent(settings, before, session.state)
        out: list[Send] = []
        if wanted is not None:
            visitor = session.visitor.kept  # (the visitor's memory is made now if need be)
            visitor[VISITOR_KEY] = wanted
            edge = targets.edge
            if wanted != current and wanted != "pending" and edge is not None and edge.datastream:
                request = build_consent_request(
                    edge,
                    settings,
                    wanted,
                    identity,
                    request_id=self._ids.request_id(),
                    timestamp=_timestamp(now),
                    tcf=change.tcf if change is not None else None,
                    gdpr_applies=change.gdpr_applies if change is not None else None,
                )
                result.consent_request = Send("consent", "edge", request)
                out.append(result.consent_request)
        consent = consent_of(identity, settings, visitor)
        result.consent = consent
        outbox = self._outbox
        if outbox is not None and outbox.keeps_held and isinstance(self.sessions, MemorySessions):
            # Sessions in memory: held sends wait in the outbox file, so a restart keeps them.
            changed = wanted is not None
            return self._gate_in_outbox(outbox, settings, session, result, out, now, changed)
        held = identity.get("held")
        if held and consent == "in":
            result.released = [Send(r.rule, r.destination, r) for r in stored_requests(held)]
            out.extend(result.released)
            del identity["held"]
        elif held and consent == "out":
            result.dropped += len(held)
            del identity["held"]
        own = [send for outcome in (result, *result.followups) for send in outcome.sends]
        if consent == "in":
            out.extend(own)
        elif own:
            for send in own:
                send.consent = "held" if consent == "pending" else "dropped"
            if consent == "pending":
                # A new list: the session's snapshot for a rollback is shallow.
                kept = [*(held or ()), *(stored_request(s.request) for s in own)]
                over = len(kept) - settings.max_held
                if over > 0:
                    kept = kept[over:]
                    result.dropped += over
                identity["held"] = kept
            else:
                result.dropped += len(own)
        return out, False

    @staticmethod
    def _gate_in_outbox(
        outbox: BaseOutbox,
        settings: ConsentSettings,
        session: Session,
        result: PushResult,
        out: list[Send],
        now: float,
        changed: bool,
    ) -> tuple[list[Send], bool]:
        """:meth:`_gate`'s held sends kept by the outbox (``identity["held_out"]`` counts
        them, so that a push with nothing held asks the outbox nothing; a change of consent
        always asks, for what was held before a restart emptied the session's memory)."""
        identity, consent = session.identity, result.consent
        own = [send for outcome in (result, *result.followups) for send in outcome.sends]
        waiting = identity.get("held_out") or changed
        if waiting and consent == "in":
            released = outbox.release_held(
                session.id, [s.request for s in out], [s.request for s in own], now=now
            )
            result.released = [Send(r.rule, r.destination, r) for r in released]
            identity.pop("held_out", None)
            return [*out, *result.released, *own], True
        if waiting and consent == "out":
            result.dropped += outbox.drop_held(session.id)
            identity.pop("held_out", None)
        if consent == "in":
            return [*out, *own], False
        for send in own:
            send.consent = "held" if consent == "pending" else "dropped"
        if consent == "pending" and own:
            over = outbox.hold(
                [(send.request, session.id) for send in own], now=now, most=settings.max_held
            )
            result.dropped += over
            known = identity.get("held_out")
            identity["held_out"] = min(settings.max_held, int(known or 0) + len(own))
        elif consent == "out":
            result.dropped += len(own)
        return out, False

    def _count_dropped(self, result: PushResult) -> None:
        """Once a push is stored: the sends its visitor's consent dropped, counted and
        logged (they are never stored, so this is all that is left of them)."""
        if not result.dropped:
            return
        log.info(
            "session %r: %d send(s) dropped, the visitor's consent is %s",
            result.session,
            result.dropped,
            result.consent,
        )
        self.consent_dropped += result.dropped
        if self._outbox is not None:
            try:
                self._outbox.count_consent_dropped(result.dropped)
            except EngineError as error:  # the push is stored: only the shared count is short
                log.warning("could not count %d consent drop(s): %s", result.dropped, error)

    def _deliver(self, sends: list[Send], session: Session, targets: Targets) -> None:
        self._deliver_now(sends, session, targets)
        if self._result_hooks:
            self._hooks_heard(session.id, sends)

    def _deliver_now(self, sends: list[Send], session: Session, targets: Targets) -> None:
        if self.transport is None:
            # Consecutive Edge collect sends (documentUnloading) share a request.
            self.dispatcher.deliver_many(sends, session, targets)
            return
        for send in sends:
            started = time.perf_counter()
            try:
                response = self.transport.send(send.request)
            except Exception as error:
                send.error = f"{type(error).__name__}: {error}"
            else:
                send.status = response.status
                send.response = response.body
            send.attempts += 1
            send.duration = time.perf_counter() - started

    @contextlib.asynccontextmanager
    async def _async_lock(self, session_id: str) -> AsyncIterator[None]:
        """The session's pushes awaited on this event loop, one at a time in await order;
        the lock is dropped when nobody holds or waits for it."""
        key = f"{id(asyncio.get_running_loop())}:{session_id}"
        with self._lazy_lock:
            held = self._async_locks.get(key)
            if held is None:
                held = self._async_locks[key] = [asyncio.Lock(), 0]
            held[1] += 1
        try:
            async with held[0]:
                yield
        finally:
            with self._lazy_lock:
                held[1] -= 1
                if not held[1]:
                    del self._async_locks[key]

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            with self._lazy_lock:  # pushes of several threads: one client, not one each
                if self._dispatcher is None:
                    self._dispatcher = Dispatcher(
                        http=self._http, policy=self._policy, request_id=self._ids.request_id
                    )
        return self._dispatcher

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float | None = None) -> bool:
        """Wait (bounded) until background sends are delivered; true when none is left."""
        return self._background.flush(timeout) if self._background is not None else True

    def close(self, timeout: float | None = None) -> None:
        """Stop watching, deliver what is queued within ``timeout`` (background mode: what is
        not delivered by then stays in the outbox for the next start), release the client."""
        self.unwatch()
        self._closed = True
        if self._background is not None:
            self._background.close(timeout)
        if self._intake is not None:
            self._intake.stop()
        if self._outbox is not None and self._owns_outbox:
            self._outbox.close()
        if self._owns_sessions:
            self.sessions.close()
        if self._dispatcher is not None:
            self._dispatcher.close()

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()
