"""Sessions: one visitor's data layer and runtime memory, and the bounded store that holds them
(docs/semantics.md, "Sessions").

A :class:`Session` owns its computed ``state`` (replaced, never mutated, on each push), the
values kept by ``keep pageview|session`` elements, its firing history for ``limit`` clauses and
an opaque ``identity`` dict for destinations. What belongs to the visitor rather than the
session (``keep visitor`` values and the firing history behind ``per visitor|minute|hour|day``)
lives in a :class:`VisitorMemory` shared by every session of that visitor id in one
:class:`SessionStore`.
"""

from __future__ import annotations

import _thread
import hashlib
import json
import marshal
import math
import sys
import threading
import time
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from engine.datalayer import MAX_DEPTH, validate
from engine.errors import PushError
from engine.values import copy_json

__all__ = ["EXPORT_FORMAT", "LIMIT_UNITS", "Session", "VisitorMemory"]

EXPORT_FORMAT = 1
KEEP_SCOPES = ("pageview", "session", "visitor")
WINDOWS: dict[str, float] = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
LIMIT_UNITS = frozenset({"session", "visitor", *WINDOWS})

# What restore admits must take every session pushes can build, so the limits follow from the
# push limits (engine/datalayer.py). Depth: no state is deeper than one push may be
# (MAX_DEPTH), in either merge mode: a merge puts each pushed value at the depth it had in its
# push, and GTM's dotted keys are checked once expanded. A kept value is an element's value:
# a state or pushed subtree (MAX_DEPTH at most) inside the containers the rule's expression
# builds around it, two levels below `kept` (scope, name); identity holds what destinations
# answered. 256 covers all of that with room for those containers (bounded by the rules, not by
# pushes) and for states exported before dotted keys were checked (up to 255 parts).
_RESTORE_DEPTH = max(256, MAX_DEPTH + 2)
# Size: no count follows from the push limits. Each push may add MAX_ITEMS values under new
# keys and a session takes any number of pushes, so a state grows without bound; refusing a
# push because of what earlier ones built would fail pushes that are valid on their own. And
# an export is already in memory when restore reads it, so a count would save no memory: any
# size is restored.
_RESTORE_ITEMS = sys.maxsize


_GUARD = threading.Lock()
"""Held a moment while a lock or a part of a session made on first use is made (or a lock
given up): each is made once, however many threads want it at the same time."""

_PACKING = threading.Lock()
"""Held while a session is packed or unpacked (:meth:`Session._pack`). Taken after
``_GUARD`` when both are held, never before it."""

_UNPACKED: deque[Session] = deque(maxlen=100_000)
"""Sessions unpacked by a read (not by their store's use of them), for their store to count
among its hot ones again (MemorySessions._cool); appended and taken atomically. Bounded: a
session in it is kept alive until the store's next use of any session takes it (a session
it loses stays unpacked until it is used)."""

_NOTHING: Mapping[str, Any] = MappingProxyType({})
# The C class itself: threading.RLock is a Python function around it (a frame per call).
_new_rlock = _thread.RLock


_HELD: dict[str, list[Any]] = {}
"""Visitor id → [the visitor's reentrant lock, threads holding or waiting for it, each counted
once], changed under ``_GUARD``: a lock is made when first taken and dropped when nobody holds
or waits for it, so an idle visitor holds none (one is ~100 bytes)."""


def hold_visitor(visitor_id: str, blocking: bool = True, timeout: float = -1) -> bool:
    """Take the visitor's lock (the one of all its sessions and its memory): one thread at a
    time, which may take it again while it holds it, as a ``threading.RLock``."""
    held = _HELD.get(visitor_id)
    if held is not None and held[0]._is_owned():
        held[0].acquire()  # (taken again by the thread holding it: nothing to count)
        return True
    _GUARD.acquire()
    held = _HELD.get(visitor_id)
    if held is None:
        held = _HELD[visitor_id] = [_new_rlock(), 1]
    else:
        held[1] += 1
    _GUARD.release()
    if held[0].acquire(blocking, timeout):
        return True
    _count_out(visitor_id, held)
    return False


def let_go_visitor(visitor_id: str) -> None:
    """Give up the visitor's lock once (:func:`hold_visitor`)."""
    held = _HELD.get(visitor_id)
    if held is None:
        raise RuntimeError("cannot release un-acquired lock")
    lock = held[0]
    lock.release()  # RuntimeError when this thread does not hold it
    if not lock._is_owned():
        _count_out(visitor_id, held)


def _count_out(visitor_id: str, held: list[Any]) -> None:
    _GUARD.acquire()
    held[1] -= 1
    if not held[1]:
        del _HELD[visitor_id]
    _GUARD.release()


class _Lockable:
    """Has ``lock``: its visitor's lock (:func:`hold_visitor`), which the visitor's sessions
    and memory share. A push holds it from start to end, so one lock serves the push, the
    visitor's memory and the readers of the session; an idle one costs nothing.
    """

    __slots__ = ()

    visitor_id: str

    @property
    def lock(self) -> _Lock:
        """The lock: ``with x.lock:``, or ``acquire()`` then ``release()``."""
        return _Lock(self)

    def _acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return hold_visitor(self.visitor_id, blocking, timeout)

    def _release(self) -> None:
        let_go_visitor(self.visitor_id)


class _Lock:
    """:attr:`_Lockable.lock`: a reentrant lock's interface to one object's lock."""

    __slots__ = ("_owner",)

    def __init__(self, owner: _Lockable) -> None:
        self._owner = owner

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._owner._acquire(blocking, timeout)

    def release(self) -> None:
        self._owner._release()

    def __enter__(self) -> bool:
        return self._owner._acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._owner._release()


class VisitorMemory(_Lockable):
    """What a visitor's sessions share: ``kept`` (``keep visitor`` values) and ``firings``
    (rule name → sorted timestamps of that visitor's firings of the rule).

    A session makes its visitor's memory when it first needs it (:attr:`Session.visitor`: a
    ``keep visitor`` value, a ``per visitor`` firing, the visitor's consent or first-party id),
    so a visitor with one session and nothing kept for it has none; a store gives a visitor's
    sessions one memory between them once there are two.
    """

    __slots__ = ("firings", "kept", "sessions", "visitor_id")

    def __init__(self, visitor_id: str) -> None:
        self.visitor_id = visitor_id
        self.kept: dict[str, Any] = {}
        self.firings: dict[str, list[float]] = {}
        self.sessions = 0  # live sessions holding this memory, counted by the store


class _Kept(Mapping[str, dict[str, Any]]):
    """:attr:`Session.kept`: each keep scope's values, the session's made on first use and the
    visitor's in its memory (made then too)."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __getitem__(self, scope: str) -> dict[str, Any]:
        session = self._session
        if scope == "visitor":
            return session.visitor.kept
        if scope == "pageview":
            values = session._pageview
        elif scope == "session":
            values = session._session_kept
        else:
            raise KeyError(scope)
        return session._make_kept(scope) if values is None else values

    def get(self, scope: str, default: Any = None) -> Any:
        # (what Scope.element calls, once for each kept element a push evaluates)
        session = self._session
        if scope == "session":
            values = session._session_kept
        elif scope == "pageview":
            values = session._pageview
        elif scope == "visitor":
            return session.visitor.kept
        else:
            return default
        return session._make_kept(scope) if values is None else values

    def read(self, scope: str, name: str) -> Any:
        """The value kept under ``name`` in ``scope``, or ``None``; makes nothing (a
        visitor's memory, say) to find it missing."""
        session = self._session
        if scope == "visitor":
            return session.visitor_kept.get(name)  # (empty while the visitor has no memory)
        values = {"session": session._session_kept, "pageview": session._pageview}.get(scope)
        return None if values is None else values.get(name)

    def __contains__(self, scope: object) -> bool:
        return scope in KEEP_SCOPES

    def __iter__(self) -> Iterator[str]:
        return iter(KEEP_SCOPES)

    def __len__(self) -> int:
        return len(KEEP_SCOPES)

    def __repr__(self) -> str:
        session = self._session
        shared = session._visitor
        return repr(
            {
                "pageview": session._pageview or {},
                "session": session._session_kept or {},
                "visitor": {} if shared is None else shared.kept,
            }
        )


class Session(_Lockable):
    """One visitor's data layer and runtime memory.

    The runtime holds ``lock`` while it processes one push of the session, which keeps the
    session's pushes in order; it is the visitor's lock, which the visitor's other sessions
    and its memory share. ``kept["visitor"]`` and the visitor's firing history are shared
    with the visitor's other sessions (see :class:`VisitorMemory`).

    What a session has not used costs nothing: its kept values, firing history and identity
    are made on first use (``kept``, ``firings``, ``identity``), its visitor memory too
    (``visitor``), and its lock is held only while taken.
    """

    __slots__ = (
        "_firings",
        "_identity",
        "_packed",
        "_pageview",
        "_session_kept",
        "_visitor",
        "created",
        "id",
        "last_seen",
        "pushes",
        "state",
        "visitor_id",
    )

    def __init__(
        self,
        id: str,
        visitor_id: str | None = None,
        *,
        now: float | None = None,
        visitor: VisitorMemory | None = None,
    ) -> None:
        if type(id) is not str or not id:
            raise ValueError("a session id must be a non-empty string")
        visitor_id = id if visitor_id is None else visitor_id
        if type(visitor_id) is not str or not visitor_id:
            raise ValueError("a visitor id must be a non-empty string")
        if visitor is not None and visitor.visitor_id != visitor_id:
            raise ValueError(f"visitor memory of {visitor.visitor_id!r} given to {visitor_id!r}")
        created = time.time() if now is None else now
        self.id = id
        self.visitor_id = visitor_id
        self._visitor = visitor
        self.state: dict[str, Any] = {}
        self._pageview: dict[str, Any] | None = None
        self._session_kept: dict[str, Any] | None = None
        self._firings: dict[str, list[float]] | None = None  # rule → times, for `per session`
        self._identity: dict[str, Any] | None = None
        self._packed: bytes | None = None  # _PARTS while packed (their slots then unset)
        self.created = created
        self.last_seen = created
        self.pushes = 0

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, visitor_id={self.visitor_id!r}, pushes={self.pushes})"

    # ------------------------------------------------------------------ packed while idle
    # A store may pack a session it has not used for a while (MemorySessions' `hot`): its
    # state, kept values, firings and identity become one bytes object, which the cyclic
    # garbage collector does not scan (a full collection scans every live dict and what it
    # holds: about a microsecond per session, a stalled push with many of them). The first
    # read of any of them unpacks it again (__getattr__, called only for an unset slot: the
    # path of an unpacked session costs nothing). A part is the session's while its lock is
    # held: one kept from before may have been packed away since.
    def _pack(self) -> bool | None:
        """Pack the session: True when packed (now or before), ``None`` when a thread holds
        or waits for its lock (try later), False when a part is not plain data."""
        with _GUARD:  # (_HELD changes under it: nobody can take the lock meanwhile)
            if self._packed is not None:
                return True
            if self.visitor_id in _HELD:
                return None
            identity = self._identity
            if identity and not _plain(identity):  # (the one part an app writes itself)
                return False
            with _PACKING:
                try:
                    self._packed = marshal.dumps(
                        (self.state, self._pageview, self._session_kept, self._firings, identity)
                    )
                except ValueError:  # not plain data (an element's odd value, say): kept as is
                    return False
                del self.state, self._pageview, self._session_kept, self._firings
                del self._identity
        return True

    def _unpack(self) -> None:
        """Put the packed parts back (the store does, when it uses the session)."""
        with _PACKING:
            self._fill()

    def _fill(self) -> None:
        """:meth:`_unpack`'s work, ``_PACKING`` held. A state set while packed (it has no
        setter) is kept: what was packed is older. (The other parts are set only by their
        setters, which unpack first, or once read, which unpacks too.)"""
        blob = self._packed
        if blob is None:
            return  # unpacked by another thread meanwhile
        state, self._pageview, self._session_kept, self._firings, self._identity = marshal.loads(
            blob
        )
        try:
            _STATE.__get__(self)  # (an unset slot raises, without calling __getattr__)
        except AttributeError:
            self.state = state
        self._packed = None

    def _fill_read(self) -> None:
        """:meth:`_fill` for a read or a write outside the store's use of the session: the
        store is told, to count it among its hot ones again."""
        if self._packed is not None:
            self._fill()
            _UNPACKED.append(self)

    if not TYPE_CHECKING:  # (mypy would take every misspelt attribute for one)

        def __getattr__(self, name: str) -> Any:
            slot = _PARTS.get(name)
            if slot is None:
                raise AttributeError(f"'Session' object has no attribute {name!r}")
            with _PACKING:  # (_pack takes it too: not packed again before the read)
                self._fill_read()
                return slot.__get__(self)

    # ------------------------------------------------------------------ parts made on first use
    @property
    def visitor(self) -> VisitorMemory:
        """The visitor's memory, shared with the visitor's other sessions (made now if the
        visitor had none)."""
        memory = self._visitor
        if memory is None:
            with _GUARD:
                memory = self._visitor
                if memory is None:
                    memory = self._visitor = VisitorMemory(self.visitor_id)
        return memory

    @property
    def visitor_kept(self) -> Mapping[str, Any]:
        """The visitor's ``keep visitor`` values, to read (empty, and nothing made, while the
        visitor has no memory); write through ``visitor.kept``."""
        memory = self._visitor
        return _NOTHING if memory is None else memory.kept

    @property
    def kept(self) -> Mapping[str, dict[str, Any]]:
        """Keep scope (``pageview``, ``session``, ``visitor``) → the values kept there."""
        return _Kept(self)

    @property
    def identity(self) -> dict[str, Any]:
        """An opaque dict for destinations (ids, cookies' state, held sends)."""
        identity = self._identity
        if identity is None:
            with _GUARD:
                identity = self._identity
                if identity is None:
                    identity = self._identity = {}
        return identity

    @identity.setter
    def identity(self, value: dict[str, Any]) -> None:
        with _PACKING:  # (not packed meanwhile: the packed one would come back over it)
            self._fill_read()
            self._identity = value

    @property
    def firings(self) -> dict[str, list[float]]:
        """Rule → sorted timestamps of its firings in this session (for ``per session``)."""
        firings = self._firings
        if firings is None:
            with _GUARD:
                firings = self._firings
                if firings is None:
                    firings = self._firings = {}
        return firings

    @firings.setter
    def firings(self, value: dict[str, list[float]]) -> None:
        with _PACKING:
            self._fill_read()
            self._firings = value

    def _make_kept(self, scope: str) -> dict[str, Any]:
        with _GUARD:
            if scope == "pageview":
                if self._pageview is None:
                    self._pageview = {}
                return self._pageview
            if self._session_kept is None:
                self._session_kept = {}
            return self._session_kept

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """A deep copy of the computed state; changing it changes nothing in the session."""
        state: dict[str, Any] = copy_json(self.state)
        return state

    def new_pageview(self) -> None:
        """Forget the ``keep pageview`` values (a ``page.view``/``viewStart`` event began)."""
        pageview = self._pageview
        if pageview:  # (emptied in place: whoever holds the dict sees it emptied)
            self._acquire()
            try:
                pageview.clear()
            finally:
                self._release()

    # ------------------------------------------------------------------ limit and sample
    def limit_reached(self, rule: str, count: int, unit: str, now: float) -> bool:
        """Whether ``rule`` has already fired ``count`` times in ``unit``: this session
        (``session``), any session of the visitor (``visitor``), or the visitor's last
        60/3600/86400 seconds (``minute``/``hour``/``day``, rolling)."""
        if unit == "session":
            self._acquire()
            try:
                firings = self._firings
                fired = len(firings.get(rule, ())) if firings else 0
            finally:
                self._release()
        elif unit in LIMIT_UNITS:
            memory = self._visitor
            if memory is None:
                return count <= 0  # no memory yet: the visitor never fired anything
            memory._acquire()
            try:
                times = memory.firings.get(rule, [])
                if unit == "visitor":
                    fired = len(times)
                else:
                    fired = len(times) - bisect_right(times, now - WINDOWS[unit])
            finally:
                memory._release()
        else:
            raise ValueError(f"unknown limit unit {unit!r}")
        return fired >= count

    def record_firing(self, rule: str, units: Iterable[str], now: float) -> None:
        """Count one firing of ``rule`` at ``now`` for the limit ``units`` the rule declares.

        Only what those units need is kept: the session's timestamps for ``session``, the
        visitor's for the others, pruned to the longest window unless ``visitor`` needs them
        all. A rule stops firing at its limit, so each list stays within its ``N``.
        """
        wanted = set(units)
        unknown = wanted - LIMIT_UNITS
        if unknown:
            raise ValueError(f"unknown limit unit {sorted(unknown)[0]!r}")
        # Each list is replaced, never changed: a push's rollback copy of the firings
        # (engine/stores/memory.py) is then a shallow one.
        if "session" in wanted:
            self._acquire()
            try:
                firings = self.firings
                times = list(firings.get(rule, ()))
                insort(times, now)
                firings[rule] = times
            finally:
                self._release()
        windows = [WINDOWS[unit] for unit in wanted if unit in WINDOWS]
        if "visitor" in wanted or windows:
            memory = self.visitor
            memory._acquire()
            try:
                times = list(memory.firings.get(rule, ()))
                insort(times, now)
                if "visitor" not in wanted:
                    del times[: bisect_right(times, now - max(windows))]
                memory.firings[rule] = times
            finally:
                memory._release()

    def sample_bucket(self, rule: str) -> float:
        """A value in [0, 100) fixed by (session id, rule name); ``sample P%`` keeps the
        session when it is below ``P``. Stable across processes and restarts."""
        key = json.dumps([self.id, rule], ensure_ascii=False).encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        # 53 bits and exact integer division: a float in [0, 100), never rounded up to 100
        return (int.from_bytes(digest, "big") >> 11) * 100 / 2**53

    # ------------------------------------------------------------------ export
    def export(self) -> dict[str, Any]:
        """A JSON-serialisable copy of everything the session holds, the visitor's shared
        memory included; :meth:`from_export` (or :meth:`SessionStore.restore`) rebuilds it."""
        with self.lock:
            memory = self._visitor
            if memory is None:
                return self._export({}, {})
            with memory.lock:
                return self._export(memory.kept, memory.firings)

    def _export(self, shared: dict[str, Any], history: dict[str, list[float]]) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "id": self.id,
            "visitor_id": self.visitor_id,
            "state": copy_json(self.state),
            "kept": {
                "pageview": copy_json(self._pageview or {}),
                "session": copy_json(self._session_kept or {}),
                "visitor": copy_json(shared),
            },
            "firings": {
                "session": copy_json(self._firings or {}),
                "visitor": copy_json(history),
            },
            "identity": copy_json(self._identity or {}),
            "created": self.created,
            "last_seen": self.last_seen,
            "pushes": self.pushes,
        }

    @classmethod
    def from_export(cls, data: object, *, visitor: VisitorMemory | None = None) -> Session:
        """The session an :meth:`export` describes; :class:`PushError` if ``data`` is not one.

        With ``visitor`` given, the session shares that memory: values it already holds win,
        the export only fills in what it lacks, and firing histories are united.
        """
        if type(data) is not dict:
            raise PushError(f"session export: expected an object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != EXPORT_FORMAT or type(fmt) is not int:
            raise PushError(f"session export: unsupported format {fmt!r} (expected 1)")
        missing = [
            key
            for key in ("id", "visitor_id", "state", "kept", "firings", "identity")
            if key not in data
        ]
        if missing:
            raise PushError(f"session export: missing {', '.join(missing)}")
        id_, visitor_id = data["id"], data["visitor_id"]
        for name, value in (("id", id_), ("visitor_id", visitor_id)):
            if type(value) is not str or not value:
                raise PushError(f"session export: {name} must be a non-empty string")
        state = _json_object(data["state"], "state")
        identity = _json_object(data["identity"], "identity")
        kept = _json_object(data["kept"], "kept")
        for scope in kept:
            if scope not in KEEP_SCOPES:
                raise PushError(f"session export: kept.{scope}: unknown keep scope")
            if type(kept[scope]) is not dict:
                raise PushError(f"session export: kept.{scope}: expected an object")
        firings = _json_object(data["firings"], "firings")
        histories: dict[str, dict[str, list[float]]] = {}
        for scope in ("session", "visitor"):
            histories[scope] = _firings(firings.get(scope, {}), f"firings.{scope}")
        numbers: dict[str, float] = {}
        for name in ("created", "last_seen"):
            value = data.get(name, 0.0)
            if type(value) not in (int, float) or not math.isfinite(value):
                raise PushError(f"session export: {name} must be a finite number")
            numbers[name] = float(value)
        pushes = data.get("pushes", 0)
        if type(pushes) is not int or pushes < 0:
            raise PushError("session export: pushes must be a non-negative integer")

        if visitor is not None and visitor.visitor_id != visitor_id:
            raise PushError(
                f"session export: visitor {visitor_id!r} given the memory of {visitor.visitor_id!r}"
            )
        session = cls(id_, visitor_id, now=numbers["created"], visitor=visitor)
        # validate() made these copies: the session may keep them as they are
        session.state = state
        session._identity = identity or None
        session._pageview = kept.get("pageview") or None
        session._session_kept = kept.get("session") or None
        session._firings = histories["session"] or None
        session.last_seen = numbers["last_seen"]
        session.pushes = pushes
        shared, history = kept.get("visitor") or {}, histories["visitor"]
        if visitor is None and not shared and not history:
            return session  # nothing for the visitor's memory: made when first needed
        memory = session.visitor
        with memory.lock:
            for key, value in shared.items():
                memory.kept.setdefault(key, value)
            for rule, times in history.items():
                held = memory.firings.get(rule)
                memory.firings[rule] = sorted(set(times).union(held)) if held else times
        return session


# What a packed session holds in its bytes (Session._pack, _fill), as the slots' descriptors.
_PARTS = {
    name: vars(Session)[name]
    for name in ("state", "_pageview", "_session_kept", "_firings", "_identity")
}
_STATE = _PARTS["state"]
_PLAIN = frozenset((dict, list, tuple, str, int, float, bool, type(None), bytes))


def _plain(value: object) -> bool:
    """Whether marshal gives back exactly ``value``: plain data all the way down (it would
    give a bytearray back as bytes, say)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind not in _PLAIN:
            return False
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
    return True


def _json_object(value: object, where: str) -> dict[str, Any]:
    return validate(
        value, max_depth=_RESTORE_DEPTH, max_items=_RESTORE_ITEMS, label=f"session export: {where}"
    )


def _firings(value: object, where: str) -> dict[str, list[float]]:
    if type(value) is not dict:
        raise PushError(f"session export: {where}: expected an object")
    result: dict[str, list[float]] = {}
    for rule, times in value.items():
        if type(rule) is not str or type(times) is not list:
            raise PushError(f"session export: {where}: expected rule names mapped to lists")
        for stamp in times:
            if type(stamp) not in (int, float) or not math.isfinite(stamp):
                raise PushError(f"session export: {where}.{rule}: not a timestamp ({stamp!r})")
        result[rule] = sorted(float(stamp) for stamp in times)
    return result
