"""The in-memory session store: one process's sessions, bounded and expiring (the default).

Pushes of one session are serialized by the session's lock; a push that cannot put its sends
in the outbox is rolled back (:meth:`MemorySessions.begin`), so the session is as if the push
never happened and the app's retry fires again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from engine.clients.identity import merge_identity
from engine.destinations.base import Request
from engine.sessions import Session, VisitorMemory
from engine.stores.base import BaseOutbox, KeyedLocks, PushTransaction, Sessions
from engine.values import copy_json

__all__ = ["MemorySessions"]


class _Saved:
    """What a push may change in a session and its visitor's memory, as it was before.

    It reads the session's parts as they are, ``None`` for those not made yet, so that taking
    it makes nothing."""

    __slots__ = (
        "firings",
        "identity",
        "last_seen",
        "pageview",
        "pushes",
        "session_kept",
        "state",
        "visitor_firings",
        "visitor_kept",
    )

    def __init__(self, session: Session) -> None:
        # Shallow copies suffice: a state is replaced, never changed, and kept values are
        # snapshots of it; a push changes only the top level of the identity (a local
        # Sitecore browser id) and appends to firing lists.
        # No lock for the visitor's memory: the pushes that change it are this one and
        # others of the visitor, which wait for this one (MemorySessions.begin).
        self.state = session.state
        values = session._pageview
        self.pageview = dict(values) if values else None
        values = session._session_kept
        self.session_kept = dict(values) if values else None
        firings = session._firings
        self.firings = {rule: list(times) for rule, times in firings.items()} if firings else None
        values = session._identity
        self.identity = dict(values) if values else None
        self.last_seen, self.pushes = session.last_seen, session.pushes
        memory = session._visitor
        if memory is None:
            self.visitor_kept = self.visitor_firings = None
        else:
            self.visitor_kept = dict(memory.kept)
            shared = memory.firings
            self.visitor_firings = {rule: list(t) for rule, t in shared.items()}

    def restore(self, session: Session) -> None:
        """Put it back, in place: other code holds references to these dicts."""
        session.state = self.state
        _put_back(session._pageview, self.pageview)
        _put_back(session._session_kept, self.session_kept)
        _put_back(session._firings, self.firings)
        _put_back(session._identity, self.identity)
        session.last_seen, session.pushes = self.last_seen, self.pushes
        memory = session._visitor  # made by the push, perhaps: then emptied
        if memory is not None:
            with memory.lock:
                _put_back(memory.kept, self.visitor_kept)
                _put_back(memory.firings, self.visitor_firings)


def _put_back(held: dict[str, Any] | None, saved: dict[str, Any] | None) -> None:
    """``held`` (a session's dict, if made) as it was: ``saved`` (``None``: empty)."""
    if held is not None:
        held.clear()
        if saved:
            held.update(saved)


class _Transaction(PushTransaction):
    __slots__ = ("committed", "saved", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.saved = _Saved(session)
        self.committed = False

    def commit(
        self,
        items: Sequence[tuple[Request, str]],
        outbox: BaseOutbox | None,
        now: float,
    ) -> bool:
        if items and outbox is not None:
            outbox.check_bound(len(items))
            outbox.append_many(items, now=now)  # raises: rolled back by begin()
        self.committed = True
        return True

    def rollback(self) -> None:
        if not self.committed:
            self.saved.restore(self.session)


class _Hold:
    """:meth:`MemorySessions.begin`'s context (a class, not a generator: it is on every
    push's path)."""

    __slots__ = ("_lock", "_now", "_session_id", "_store", "_transaction", "_visitor_id")

    def __init__(
        self, store: MemorySessions, session_id: str, visitor_id: str | None, now: float
    ) -> None:
        self._store = store
        self._session_id, self._visitor_id, self._now = session_id, visitor_id, now

    def __enter__(self) -> _Transaction:
        store = self._store
        # Marked used at once (a push of it arriving meanwhile must not find it expired),
        # and put back as it was if this push fails.
        session, before = store._checkout(self._session_id, self._visitor_id, self._now)
        self._visitor_id = session.visitor_id
        self._lock = store._visitor_locks.acquire(session.visitor_id)
        try:
            session._acquire()  # (session.lock's, without making a handle on every push)
        except BaseException:
            store._visitor_locks.release(session.visitor_id, self._lock)
            raise
        self._transaction = _Transaction(session)
        self._transaction.saved.last_seen = before
        return self._transaction

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        transaction = self._transaction
        try:
            if kind is not None:
                transaction.rollback()
        finally:
            transaction.session._release()
            self._store._visitor_locks.release(transaction.session.visitor_id, self._lock)


class MemorySessions(Sessions):
    """A thread-safe, in-memory, bounded set of sessions.

    A session idle for ``idle_timeout`` seconds or more has expired; when ``max_sessions`` are
    held, adding one evicts the least recently used. Visitor memory is held per visitor id,
    shared by that visitor's sessions, and dropped with the last of them. ``clock`` gives the
    current time (seconds) wherever a method's ``now`` is not passed.
    """

    def __init__(
        self,
        *,
        idle_timeout: float = 1800.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        # A visitor's shared memory; or its only session (unless that session's id is the
        # visitor's: then nothing), which makes its memory when it first needs it.
        self._visitors: dict[str, VisitorMemory | Session] = {}
        self._lock = threading.Lock()
        # One visitor's pushes one at a time, whichever of its sessions: they share its
        # memory, which a failed push puts back as it was.
        self._visitor_locks = KeyedLocks()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(
        self, session_id: str, visitor_id: str | None = None, now: float | None = None
    ) -> Session:
        """The live session ``session_id``, created on first use or after it expired, and
        marked as used at ``now``. A session keeps the visitor id it was created with."""
        return self._checkout(session_id, visitor_id, now)[0]

    def _checkout(
        self, session_id: str, visitor_id: str | None, now: float | None
    ) -> tuple[Session, float]:
        """:meth:`get`, and when the session was last used before (what a push that fails
        puts back)."""
        now = self.clock() if now is None else now
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                if not self._expired(session, now):
                    before = session.last_seen
                    session.last_seen = max(session.last_seen, now)
                    self._sessions.move_to_end(session_id)
                    return session, before
                self._drop(session_id)
            session = Session(session_id, visitor_id, now=now)
            self._attach(session)
            self._add(session)
            return session, session.last_seen

    def begin(self, session_id: str, visitor_id: str | None, now: float) -> _Hold:
        """The live session, held for one push: the visitor's pushes (all its sessions) one at
        a time, and on an exception or a failed commit everything the push changed undone."""
        return _Hold(self, session_id, visitor_id, now)

    def read(self, session_id: str) -> Session | None:
        return self.peek(session_id)

    def identity(self, session_id: str) -> dict[str, Any] | None:
        session = self.peek(session_id)
        if session is None:
            return None
        with session.lock:
            return copy_json(session._identity or {})  # type: ignore[no-any-return]

    def merge_identity(self, session_id: str, base: dict[str, Any], result: dict[str, Any]) -> None:
        session = self.peek(session_id)
        if session is not None:
            with session.lock:
                merge_identity(session.identity, base, result)

    def update_identity(
        self, session_id: str, visitor_id: str | None, change: Callable[[dict[str, Any]], None]
    ) -> None:
        session = self.get(session_id, visitor_id)
        with session.lock:
            change(session.identity)

    def peek(self, session_id: str) -> Session | None:
        """The live session ``session_id``, or ``None``; neither creates nor marks it used."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or self._expired(session, self.clock()):
                return None
            return session

    def restore(self, data: dict[str, Any]) -> Session:
        """Put an exported session back (replacing a live one of the same id) and mark it used
        now, so it does not expire at once. Its visitor memory joins that of the visitor's
        live sessions: their values win, the export fills in the rest."""
        now = self.clock()
        with self._lock:
            existing = None
            visitor_id = data.get("visitor_id") if type(data) is dict else None
            if type(visitor_id) is str:
                entry = self._visitors.get(visitor_id)
                if isinstance(entry, VisitorMemory):
                    existing = entry
                else:
                    own = entry if entry is not None else self._own(visitor_id)
                    if own is not None:
                        # The visitor's one live session: its memory (made now) is shared,
                        # unless it is the session replaced (its memory, if any, is joined).
                        existing = own._visitor if own.id == data.get("id") else own.visitor
            session = Session.from_export(data, visitor=existing)
            if session.id in self._sessions:
                self._drop(session.id)
            self._attach(session)
            session.last_seen = max(session.last_seen, now)
            self._add(session)
            return session

    def remove(self, session_id: str) -> Session | None:
        """Forget ``session_id``; returns it, or ``None`` if it was not held."""
        with self._lock:
            return self._drop(session_id)

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired session; returns how many."""
        now = self.clock() if now is None else now
        with self._lock:
            expired = [sid for sid, s in self._sessions.items() if self._expired(s, now)]
            for session_id in expired:
                self._drop(session_id)
            return len(expired)

    # ------------------------------------------------------------------ internals (lock held)
    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen >= self.idle_timeout

    def _own(self, visitor_id: str) -> Session | None:
        """The visitor's only live session, when it has one and shares no memory yet."""
        entry = self._visitors.get(visitor_id)
        if entry is None:
            own = self._sessions.get(visitor_id)  # the one session of its id, if any
            return own if own is not None and own.visitor_id == visitor_id else None
        return entry if isinstance(entry, Session) else None

    def _attach(self, session: Session) -> None:
        """Give a session joining the store (not in ``_sessions`` yet) its visitor's memory.

        A visitor's sessions share one memory, made when the visitor has a second live
        session (or when a session first needs it) and held in ``_visitors`` while any of
        them lives. A visitor with one session is found through it: by its id when it is the
        visitor's (a session id is its visitor id by default), else through ``_visitors``.
        """
        visitor_id = session.visitor_id
        entry = self._visitors.get(visitor_id)
        if isinstance(entry, VisitorMemory):
            # (a restored session was given this memory already)
            assert session._visitor is None or session._visitor is entry
            session._visitor = entry
            entry.sessions += 1
            return
        own = entry if entry is not None else self._own(visitor_id)
        if own is not None and own is not session:
            memory = own.visitor  # the visitor's second session: now they share it
            assert session._visitor is None or session._visitor is memory
            session._visitor = memory
            memory.sessions = 2
            self._visitors[visitor_id] = memory
        elif session.id != visitor_id:
            self._visitors[visitor_id] = session

    def _add(self, session: Session) -> None:
        while len(self._sessions) >= self.max_sessions:
            self._drop(next(iter(self._sessions)))
        self._sessions[session.id] = session

    def _drop(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            entry = self._visitors.get(session.visitor_id)
            if entry is session:
                del self._visitors[session.visitor_id]
            elif isinstance(entry, VisitorMemory) and session._visitor is entry:
                entry.sessions -= 1
                if entry.sessions <= 0:
                    del self._visitors[session.visitor_id]
        return session
