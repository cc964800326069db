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
from engine.sessions import _UNPACKED, Session, VisitorMemory, hold_visitor, let_go_visitor
from engine.stores.base import BaseOutbox, PushTransaction, Sessions
from engine.values import copy_json

__all__ = ["MemorySessions"]

_new_hold = object.__new__
_BUSY = 8  # sessions a push or a thread holds that one _cool() passes over, at most


def _put_back(held: dict[str, Any] | None, saved: dict[str, Any] | None) -> None:
    """``held`` (a session's dict, if made) as it was: ``saved`` (``None``: empty)."""
    if held is not None:
        held.clear()
        if saved:
            held.update(saved)


class _Hold(PushTransaction):
    """:meth:`MemorySessions.begin`'s context and the push's transaction in one object (a
    class, not a generator, and one object, not three: it is on every push's path).

    Entering it takes what a push may change in the session and its visitor's memory, as it
    was: shallow copies suffice, as a state is replaced, never changed, kept values are
    snapshots of it, a push changes only the top level of the identity (a local Sitecore
    browser id) and firing lists are replaced, never changed (Session.record_firing). A part
    not made yet is saved as ``None``, so that saving makes nothing. One lock: the visitor's
    (:func:`~engine.sessions.hold_visitor`), which is the lock of each of its sessions and of
    its memory too, so that the visitor's pushes, whichever of its sessions, go one at a
    time, and a reader of the session waits for the push."""

    __slots__ = (
        "_committed",
        "_firings",
        "_identity",
        "_last_seen",
        "_now",
        "_pageview",
        "_pushes",
        "_session_id",
        "_session_kept",
        "_state",
        "_store",
        "_visitor_firings",
        "_visitor_id",
        "_visitor_kept",
        "session",
    )

    _store: MemorySessions
    _session_id: str
    _visitor_id: str | None
    _now: float

    def __enter__(self) -> _Hold:
        store = self._store
        # Marked used at once (a push of it arriving meanwhile must not find it expired),
        # and put back as it was if this push fails.
        with store._lock:
            session, self._last_seen = store._use(self._session_id, self._visitor_id, self._now)
        hold_visitor(session.visitor_id)  # (session.lock's, without a handle on every push)
        self.session = session
        self._committed = False
        self._state, self._pushes = session.state, session.pushes
        values = session._pageview
        self._pageview = dict(values) if values else None
        values = session._session_kept
        self._session_kept = dict(values) if values else None
        values = session._firings
        self._firings = dict(values) if values else None
        values = session._identity
        self._identity = dict(values) if values else None
        memory = session._visitor
        if memory is None:
            self._visitor_kept = self._visitor_firings = None
        else:
            self._visitor_kept = dict(memory.kept)
            self._visitor_firings = dict(memory.firings)
        return self

    def commit(
        self,
        items: Sequence[tuple[Request, str]],
        outbox: BaseOutbox | None,
        now: float,
    ) -> bool:
        if items and outbox is not None:
            if outbox.max_backlog is not None:  # (no call when unbounded: on every push's path)
                outbox.check_bound(len(items))
            outbox.append_many(items, now=now)  # raises: rolled back on the way out
        self._committed = True
        return True

    def rollback(self) -> None:
        """Put the session back as it was, in place: other code holds references to its
        dicts."""
        if self._committed:
            return
        session = self.session
        session.state = self._state
        _put_back(session._pageview, self._pageview)
        _put_back(session._session_kept, self._session_kept)
        _put_back(session._firings, self._firings)
        _put_back(session._identity, self._identity)
        session.last_seen, session.pushes = self._last_seen, self._pushes
        memory = session._visitor  # made by the push, perhaps: then emptied
        if memory is not None:
            with memory.lock:
                _put_back(memory.kept, self._visitor_kept)
                _put_back(memory.firings, self._visitor_firings)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if kind is not None:
                self.rollback()
        finally:
            let_go_visitor(self.session.visitor_id)


class MemorySessions(Sessions):
    """A thread-safe, in-memory, bounded set of sessions.

    A session idle for ``idle_timeout`` seconds or more has expired; when ``max_sessions`` are
    held, adding one evicts the least recently used. Visitor memory is held per visitor id,
    shared by that visitor's sessions, and dropped with the last of them. ``clock`` gives the
    current time (seconds) wherever a method's ``now`` is not passed.

    The ``hot`` sessions used last stay as they are; the others are packed (state, kept
    values, firings and identity in one bytes object each) until next used, which keeps full
    collections of the garbage collector short with many live sessions (README, "Garbage
    collection") and makes an idle session smaller. Packing costs a few microseconds, paid
    by a push of a session not among the ``hot`` (unpacking it, packing another).
    """

    def __init__(
        self,
        *,
        idle_timeout: float = 1800.0,
        max_sessions: int = 100_000,
        hot: int = 5_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if type(hot) is not int or hot < 1:
            raise ValueError("hot must be a positive whole number of sessions")
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.hot = hot
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        # The sessions that may be unpacked, least recently used first: tracked only once
        # the store has held more than `hot` sessions (until then none is packed, and a
        # session costs no entry here).
        self._hot: OrderedDict[str, None] | None = None
        # A visitor's shared memory; or its only session (unless that session's id is the
        # visitor's: then nothing), which makes its memory when it first needs it.
        self._visitors: dict[str, VisitorMemory | Session] = {}
        self._lock = threading.Lock()

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
            return self._use(session_id, visitor_id, now)

    def _use(self, session_id: str, visitor_id: str | None, now: float) -> tuple[Session, float]:
        """:meth:`_checkout`'s work, the lock held."""
        session = self._sessions.get(session_id)
        if session is not None:
            before = session.last_seen
            if now - before < self.idle_timeout:  # (_expired, inline: on every push's path)
                if now > before:
                    session.last_seen = now
                self._sessions.move_to_end(session_id)
                if self._hot is not None:
                    self._warm(session_id)
                    if session._packed is not None:
                        session._unpack()
                return session, before
            self._drop(session_id)
        session = Session(session_id, visitor_id, now=now)
        self._attach(session)
        self._add(session)
        return session, session.last_seen

    def begin(self, session_id: str, visitor_id: str | None, now: float) -> _Hold:
        """The live session, held for one push: the visitor's pushes (all its sessions) one at
        a time, and on an exception or a failed commit everything the push changed undone."""
        # (made without calling __init__: one frame fewer on every push's path)
        hold = _new_hold(_Hold)
        hold._store, hold._session_id, hold._visitor_id, hold._now = (
            self,
            session_id,
            visitor_id,
            now,
        )
        return hold

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
            return session  # (unpacked if it is read: then it counts as hot again, _cool)

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
        sessions = self._sessions
        sessions[session.id] = session
        if self._hot is not None:
            self._warm(session.id)
        elif len(sessions) > self.hot:  # from now on, the least recently used are packed
            self._hot = OrderedDict.fromkeys(
                [sid for sid, held in sessions.items() if held._packed is None]
            )
            self._cool(session.id)

    def _warm(self, session_id: str) -> None:
        """Count a session just used among the hot ones, packing the least recently used
        ones if there are too many."""
        hot = self._hot
        assert hot is not None
        try:
            hot.move_to_end(session_id)
        except KeyError:
            hot[session_id] = None
        if len(hot) > self.hot or _UNPACKED:
            self._cool(session_id)

    def _cool(self, using: str) -> None:
        """Pack the least recently used hot sessions down to ``hot`` of them, never
        ``using`` (the session being used).

        Sessions unpacked by a read since (``_UNPACKED``) count as hot again first. A
        session a push or another thread holds is kept as it is, as the least recently used
        (a few at most each time: the next use tries again); one that cannot be packed (not
        plain data) is left as it is, out of the count, until it is used again.
        """
        hot, sessions = self._hot, self._sessions
        assert hot is not None
        while _UNPACKED:
            try:
                read = _UNPACKED.popleft()
            except IndexError:  # (taken by another store meanwhile)
                break
            if sessions.get(read.id) is read and read._packed is None:  # (not another store's)
                hot[read.id] = None
        if using in hot:
            hot.move_to_end(using)  # (still the most recently used)
        busy: list[str] = []
        while len(hot) + len(busy) > self.hot and len(busy) < _BUSY:
            session_id = next(iter(hot))
            if session_id == using:
                break  # (the most recently used: every other one was looked at)
            del hot[session_id]
            session = sessions.get(session_id)
            if session is not None and session._pack() is None:
                busy.append(session_id)
        for session_id in reversed(busy):
            hot[session_id] = None
            hot.move_to_end(session_id, last=False)

    def _drop(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if self._hot is not None:
            self._hot.pop(session_id, None)
        if session is not None:
            entry = self._visitors.get(session.visitor_id)
            if entry is session:
                del self._visitors[session.visitor_id]
            elif isinstance(entry, VisitorMemory) and session._visitor is entry:
                entry.sessions -= 1
                if entry.sessions <= 0:
                    del self._visitors[session.visitor_id]
        return session
