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
    """What a push may change in a session and its visitor's memory, as it was before."""

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
        kept, memory = session.kept, session.visitor
        self.state = session.state
        self.pageview = dict(kept["pageview"])
        self.session_kept = dict(kept["session"])
        firings = session.firings
        self.firings = {rule: list(times) for rule, times in firings.items()} if firings else {}
        self.identity = dict(session.identity)
        self.last_seen, self.pushes = session.last_seen, session.pushes
        self.visitor_kept = dict(memory.kept)
        shared = memory.firings
        self.visitor_firings = {rule: list(t) for rule, t in shared.items()} if shared else {}

    def restore(self, session: Session) -> None:
        """Put it back, in place: other code holds references to these dicts."""
        session.state = self.state
        for held, saved in (
            (session.kept["pageview"], self.pageview),
            (session.kept["session"], self.session_kept),
            (session.firings, self.firings),
            (session.identity, self.identity),
        ):
            held.clear()
            held.update(saved)
        session.last_seen, session.pushes = self.last_seen, self.pushes
        memory = session.visitor
        with memory.lock:
            memory.kept.clear()
            memory.kept.update(self.visitor_kept)
            memory.firings.clear()
            memory.firings.update(self.visitor_firings)


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
            session.lock.acquire()
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
            transaction.session.lock.release()
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
        self._visitors: dict[str, VisitorMemory] = {}
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
            session = Session(
                session_id,
                visitor_id,
                now=now,
                visitor=self._visitor(session_id if visitor_id is None else visitor_id),
            )
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
            return copy_json(session.identity)  # type: ignore[no-any-return]

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
            visitor_id = data.get("visitor_id") if type(data) is dict else None
            existing = self._visitors.get(visitor_id) if type(visitor_id) is str else None
            session = Session.from_export(data, visitor=existing)
            if session.id in self._sessions:
                self._drop(session.id)
            # from_export made fresh memory if this visitor had none; the store now owns it
            self._visitors.setdefault(session.visitor_id, session.visitor)
            session.visitor.sessions += 1
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

    def _visitor(self, visitor_id: str) -> VisitorMemory:
        memory = self._visitors.get(visitor_id)
        if memory is None:
            memory = self._visitors[visitor_id] = VisitorMemory(visitor_id)
        memory.sessions += 1
        return memory

    def _add(self, session: Session) -> None:
        while len(self._sessions) >= self.max_sessions:
            self._drop(next(iter(self._sessions)))
        self._sessions[session.id] = session

    def _drop(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            memory = session.visitor
            memory.sessions -= 1
            if memory.sessions <= 0 and self._visitors.get(memory.visitor_id) is memory:
                del self._visitors[memory.visitor_id]
        return session
