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

import hashlib
import json
import math
import sys
import threading
import time
from bisect import bisect_right, insort
from collections.abc import Iterable
from typing import Any

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


class VisitorMemory:
    """What a visitor's sessions share: ``kept`` (``keep visitor`` values) and ``firings``
    (rule name → sorted timestamps of that visitor's firings of the rule)."""

    __slots__ = ("firings", "kept", "lock", "sessions", "visitor_id")

    def __init__(self, visitor_id: str) -> None:
        self.visitor_id = visitor_id
        self.kept: dict[str, Any] = {}
        self.firings: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.sessions = 0  # live sessions holding this memory, counted by the store


class Session:
    """One visitor's data layer and runtime memory.

    The runtime holds ``lock`` while it processes one push of the session, which keeps the
    session's pushes in order. ``kept["visitor"]`` and the visitor's firing history are shared
    with the visitor's other sessions (see :class:`VisitorMemory`).
    """

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
        if visitor is None:
            visitor = VisitorMemory(visitor_id)
        elif visitor.visitor_id != visitor_id:
            raise ValueError(f"visitor memory of {visitor.visitor_id!r} given to {visitor_id!r}")
        created = time.time() if now is None else now
        self.id = id
        self.visitor_id = visitor_id
        self.visitor = visitor
        self.state: dict[str, Any] = {}
        self.kept: dict[str, dict[str, Any]] = {
            "pageview": {},
            "session": {},
            "visitor": visitor.kept,
        }
        self.firings: dict[str, list[float]] = {}  # rule → timestamps, for `per session`
        self.identity: dict[str, Any] = {}
        self.created = created
        self.last_seen = created
        self.pushes = 0
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, visitor_id={self.visitor_id!r}, pushes={self.pushes})"

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """A deep copy of the computed state; changing it changes nothing in the session."""
        state: dict[str, Any] = copy_json(self.state)
        return state

    def new_pageview(self) -> None:
        """Forget the ``keep pageview`` values (a ``page.view``/``viewStart`` event began)."""
        with self.lock:
            self.kept["pageview"].clear()

    # ------------------------------------------------------------------ limit and sample
    def limit_reached(self, rule: str, count: int, unit: str, now: float) -> bool:
        """Whether ``rule`` has already fired ``count`` times in ``unit``: this session
        (``session``), any session of the visitor (``visitor``), or the visitor's last
        60/3600/86400 seconds (``minute``/``hour``/``day``, rolling)."""
        if unit == "session":
            with self.lock:
                fired = len(self.firings.get(rule, ()))
        elif unit in LIMIT_UNITS:
            memory = self.visitor
            with memory.lock:
                times = memory.firings.get(rule, [])
                if unit == "visitor":
                    fired = len(times)
                else:
                    fired = len(times) - bisect_right(times, now - WINDOWS[unit])
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
        if "session" in wanted:
            with self.lock:
                insort(self.firings.setdefault(rule, []), now)
        windows = [WINDOWS[unit] for unit in wanted if unit in WINDOWS]
        if "visitor" in wanted or windows:
            memory = self.visitor
            with memory.lock:
                times = memory.firings.setdefault(rule, [])
                insort(times, now)
                if "visitor" not in wanted:
                    del times[: bisect_right(times, now - max(windows))]

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
        memory = self.visitor
        with self.lock, memory.lock:
            return {
                "format": EXPORT_FORMAT,
                "id": self.id,
                "visitor_id": self.visitor_id,
                "state": copy_json(self.state),
                "kept": {scope: copy_json(self.kept[scope]) for scope in KEEP_SCOPES},
                "firings": {
                    "session": copy_json(self.firings),
                    "visitor": copy_json(memory.firings),
                },
                "identity": copy_json(self.identity),
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
        session.state = state
        session.identity = identity
        session.kept["pageview"].update(kept.get("pageview", {}))
        session.kept["session"].update(kept.get("session", {}))
        session.firings = histories["session"]
        session.last_seen = numbers["last_seen"]
        session.pushes = pushes
        memory = session.visitor
        with memory.lock:
            for key, value in kept.get("visitor", {}).items():
                memory.kept.setdefault(key, value)
            for rule, times in histories["visitor"].items():
                held = memory.firings.get(rule)
                memory.firings[rule] = sorted(set(times).union(held)) if held else times
        return session


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
