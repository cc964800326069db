"""The :class:`Engine`: a ruleset, its sessions, and delivery of what the rules send.

::

    with Engine.from_path("rules/", dry_run=True) as engine:
        result = engine.session("visitor-1").push({"event": "commerce.purchase"})
        result.fired, result.rules, result.sends[0].body
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from engine.background import BackgroundDelivery, OnResult, Redelivery
from engine.clients import RetryPolicy, set_cookie_headers, take_cookies
from engine.dispatch import Dispatcher
from engine.errors import EngineError, RuleError
from engine.loader import load_ruleset
from engine.results import PushResult
from engine.ruleset import Ruleset
from engine.runtime import Ids, Targets, process_push
from engine.sessions import Session
from engine.stores.memory import MemorySessions
from engine.stores.sqlite import Outbox
from engine.transports import Transport

if TYPE_CHECKING:
    from engine.watch import RulesWatcher

__all__ = ["Engine", "EngineSession"]

MAX_QUEUED_PUSHES = 100  # pushes made by `push` actions, per original push


class EngineSession:
    """One visitor's session in an engine: push to it, export it."""

    __slots__ = ("_engine", "_session")

    def __init__(self, engine: Engine, session: Session) -> None:
        self._engine = engine
        self._session = session

    @property
    def id(self) -> str:
        return self._session.id

    @property
    def visitor(self) -> str:
        return self._session.visitor_id

    @property
    def state(self) -> dict[str, Any]:
        """A copy of the session's current data-layer state."""
        return self._session.get_state()

    def push(self, item: object) -> PushResult:
        """Process one data-layer push; raises :class:`~engine.errors.PushError` for bad input."""
        return self._engine._push(self._session, item)

    async def apush(self, item: object) -> PushResult:
        """:meth:`push` for asyncio code: the event loop never waits for the network.

        When the push only evaluates (dry run, background mode: microseconds of CPU) it runs
        inline; when it delivers and waits for the answers, it runs in a worker thread
        (``asyncio.to_thread``), so other coroutines go on meanwhile. Pushes of one session
        still happen one at a time, in the order they were awaited.
        """
        engine = self._engine
        if engine.dry_run or engine._background is not None:
            return engine._push(self._session, item)
        # One at a time per session, in await order (asyncio.Lock is fair): threads would
        # otherwise race for the session's lock and merge the pushes in any order.
        async with engine._async_lock(self._session):
            return await asyncio.to_thread(engine._push, self._session, item)

    def take_cookies(self, cookies: Mapping[str, str]) -> None:
        """Take the visitor's ``kndctr_<org>_*`` cookies (from the request their browser
        made: its Web SDK's, or those :meth:`set_cookie_headers` gave it) into the session,
        so that its next Edge request carries the visitor's identity and cluster, and Edge
        keeps one ECID for the browser and the server. Other cookies are ignored. ``org``
        (in the edge settings) names the cookies; :class:`~engine.errors.EngineError` without
        it."""
        org = self._engine._org()
        with self._session.lock:
            take_cookies(self._session.identity, cookies, org, now=self._engine._clock())

    def set_cookie_headers(self, domain: str | None = None, *, secure: bool = True) -> list[str]:
        """``Set-Cookie`` values that give the browser the session's ``kndctr_<org>_*`` state
        entries (``Domain=domain`` when given: the site's apex domain), for the response to
        the visitor (see :func:`~engine.clients.set_cookie_headers`)."""
        org = self._engine._org()
        with self._session.lock:
            return set_cookie_headers(
                self._session.identity, org, domain, now=self._engine._clock(), secure=secure
            )

    def export(self) -> dict[str, Any]:
        """The session as JSON-serialisable data, for :meth:`Engine.restore`."""
        with self._session.lock:
            return self._session.export()

    def __repr__(self) -> str:
        return f"<EngineSession {self.id!r}>"


class Engine:
    """Evaluates pushes against a ruleset and delivers the sends.

    ``dry_run`` builds every send and stops there. Otherwise each send is delivered by a
    :class:`~engine.dispatch.Dispatcher` over one shared httpx client (``http`` injects one,
    ``policy`` bounds retries), to the ruleset's URLs or to ``edge_url``/``sitecore_url``
    (the local emulator, say), with OAuth tokens from the edge settings' ``token_url`` or
    ``token_url``; or, when a ``transport`` is given (a
    :class:`~engine.transports.RecordingTransport` in tests), handed to it instead.
    A push returns when its sends have answered; a session's sends go out in order.
    ``sessions`` is the session store (in memory by default: idle expiry and a maximum count).

    ``background=True`` returns from a push once its sends are in the durable ``outbox`` (a
    file name, an :class:`~engine.stores.Outbox`, or in memory when none); up to ``workers``
    threads deliver them (:class:`~engine.background.BackgroundDelivery`), ``on_result``
    hears how each one ended, and :meth:`flush`/:meth:`close` wait at most
    ``flush_timeout`` seconds by default. A send whose retries (``policy``) ran out on a
    retryable failure is delivered again later, as ``redelivery`` says (by default up to 10
    rounds, backing off from 1 s to 5 minutes), and then goes to the dead letters.
    """

    def __init__(
        self,
        ruleset: Ruleset,
        *,
        dry_run: bool = False,
        transport: Transport | None = None,
        sessions: MemorySessions | None = None,
        clock: Callable[[], float] = time.time,
        ids: Ids | None = None,
        edge_url: str | None = None,
        sitecore_url: str | None = None,
        token_url: str | None = None,
        http: httpx.Client | None = None,
        policy: RetryPolicy | None = None,
        background: bool = False,
        outbox: str | os.PathLike[str] | Outbox | None = None,
        workers: int = 16,
        flush_timeout: float = 10.0,
        redelivery: Redelivery | None = None,
        on_result: OnResult | None = None,
    ) -> None:
        self._urls = (edge_url, sitecore_url, token_url)
        # The ruleset and the settings its requests are built with, swapped as one reference.
        self._live = (ruleset, Targets.of(ruleset, *self._urls))
        self.dry_run = dry_run
        self.sessions = sessions if sessions is not None else MemorySessions(clock=clock)
        self.transport = transport
        self._http, self._policy = http, policy
        self._dispatcher: Dispatcher | None = None  # made on the first delivery
        self._lazy_lock = threading.Lock()  # guards what is made on first use
        # Per session and event loop: the order of a session's awaited pushes.
        self._async_locks: weakref.WeakKeyDictionary[
            Session, dict[asyncio.AbstractEventLoop, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        self._background: BackgroundDelivery | None = None
        self._outbox: Outbox | None = None
        self._owns_outbox = False
        if background and not dry_run:
            if transport is not None:
                raise EngineError(
                    "background delivery uses the destination clients, not a transport"
                )
            self._owns_outbox = not isinstance(outbox, Outbox)
            self._outbox = outbox if isinstance(outbox, Outbox) else Outbox(outbox)
            parent = os.getpid()

            def make_dispatcher() -> Dispatcher:  # again in a forked child: a client of its own
                return Dispatcher(http=http if os.getpid() == parent else None, policy=policy)

            self._background = BackgroundDelivery(
                self._outbox,
                make_dispatcher,
                sessions=self.sessions,
                targets=lambda: self._live[1],  # read at each delivery: follows a reload
                workers=workers,
                flush_timeout=flush_timeout,
                redelivery=redelivery,
                on_result=on_result,
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
        engine = cls(load_ruleset(path, cache_dir=cache_dir, environ=environ), **options)
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
        return EngineSession(self, self.sessions.get(session_id, visitor))

    def restore(self, data: Mapping[str, Any]) -> EngineSession:
        """Put back a session from :meth:`EngineSession.export` (raises PushError if malformed)."""
        return EngineSession(self, self.sessions.restore(dict(data)))

    def push(self, item: object, *, session: str = "default") -> PushResult:
        return self.session(session).push(item)

    async def apush(self, item: object, *, session: str = "default") -> PushResult:
        return await self.session(session).apush(item)

    # ------------------------------------------------------------------ internals
    def _push(self, session: Session, item: object) -> PushResult:
        if self._closed:
            raise EngineError("the engine is closed")
        ruleset, targets = self._live
        with session.lock:
            result = process_push(
                ruleset, session, item, now=self._clock(), ids=self._ids, targets=targets
            )
            self._follow(ruleset, targets, session, result)
            if self._background is not None:
                # Durable in the outbox when this returns; under the lock, so the outbox
                # order is the push order.
                self._background.submit(result, session.id)
            elif not self.dry_run:
                # Under the session's lock: its sends answer in order, and the identity the
                # first one brings back is in the requests built after it.
                self._deliver(result, session, targets)
        return result

    def _follow(
        self, ruleset: Ruleset, targets: Targets, session: Session, result: PushResult
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
                ruleset, session, queue.popleft(), now=self._clock(), ids=self._ids, targets=targets
            )
            done += 1
            queue.extend(follow.pushes)
            result.followups.append(follow)

    def _deliver(self, result: PushResult, session: Session, targets: Targets) -> None:
        sends = [send for outcome in (result, *result.followups) for send in outcome.sends]
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

    def _async_lock(self, session: Session) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._lazy_lock:
            locks = self._async_locks.setdefault(session, {})
            lock = locks.get(loop)
            if lock is None:
                lock = locks[loop] = asyncio.Lock()
            return lock

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
        if self._outbox is not None and self._owns_outbox:
            self._outbox.close()
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
