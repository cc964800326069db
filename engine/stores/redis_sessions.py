"""Sessions in Redis, shared by every process and host of an app.

Each session is a hash ``P s:<session id>`` holding its last write's token ``t`` and the session ``d``
(compact JSON: data-layer state, kept values, ``per session`` firings, identity, times); each
visitor a hash ``P v:<visitor id>`` (``keep visitor`` values and the firings behind
``per visitor|minute|hour|day``). Both expire after ``idle_timeout`` seconds without a push
(a sliding expiry, renewed by every push), as in-memory sessions do.

A push reads both (a round trip, saved when this process stored the session last or takes
an unseen session for a new one: :meth:`RedisSessions.begin`), runs in this process, and
stores them with its sends in one Lua script (:data:`_PUSH`): the script checks that neither
was written meanwhile (each write leaves a token of its own), writes the session, the
visitor and every send (``XADD`` to the session's outbox stream,
:class:`~engine.stores.redis_outbox.RedisOutbox`), all or nothing. When another process
changed the session meanwhile, nothing is written and the push runs again on what that
process stored (optimistic concurrency: pushes of one session apply one at a time, each on
the state the one before left, and none is lost). No lock is held across the network, so a
process killed mid-push holds nothing up. In one process, pushes of one session wait for
each other rather than race.

Delivery reads a session's identity here and writes back what an answer changed (the ECID,
``state:store`` entries, the Sitecore browser id) the same way, so every worker on every
host sends the visitor's one identity.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from engine.clients.identity import merge_identity
from engine.destinations.base import Request, parse_bytes, serialize_bytes
from engine.errors import BacklogFull, OutboxError
from engine.runtime import new_id
from engine.sessions import KEEP_SCOPES, Session, VisitorMemory
from engine.stores.base import BaseOutbox, KeyedLocks, PushTransaction, Sessions
from engine.stores.redis_client import RedisTarget, connect, translated
from engine.stores.redis_outbox import RedisOutbox, fields_of
from engine.values import copy_json

__all__ = ["RedisSessions"]

log = logging.getLogger("engine.sessions")

_MAX_ANSWERS = 10_000  # answers kept for the next attempt of a push (RedisSessions.begin)
_MAX_ATTEMPTS = 50  # optimistic retries of one push before it gives up (never seen past 3)

# KEYS: session, visitor, stream (or the session again), then the partitions (bound only)
# ARGV: the session's token and the visitor's as read ('' when none is stored), session data,
#       visitor data ('' = unchanged), ttl ms, bound (0 = none), number of sends, this
#       write's token, then header, body of each send.
# Each write leaves a token of its own: a push commits only when both tokens are still those
# it read (a token is never reused, as a counter restarting after an expiry would be), and
# run again (a retry after a lost reply) it finds its own token and changes nothing.
# Returns {1, the last send's stream id or ''}; {-2, backlog} over the bound; {-1, and what is stored: session token and
# data, visitor token and data} when either moved meanwhile.
_PUSH = """
local st = redis.call('HGET', KEYS[1], 't') or ''
if st == ARGV[8] then return {1} end
local vt = redis.call('HGET', KEYS[2], 't') or ''
if st ~= ARGV[1] or vt ~= ARGV[2] then
  return {-1, st, redis.call('HGET', KEYS[1], 'd') or '', vt, redis.call('HGET', KEYS[2], 'd') or ''}
end
local n = tonumber(ARGV[7])
local bound = tonumber(ARGV[6])
if n > 0 and bound > 0 then
  local total = 0
  for i = 4, #KEYS do total = total + redis.call('XLEN', KEYS[i]) end
  if total + n > bound then return {-2, total} end
end
redis.call('HSET', KEYS[1], 'd', ARGV[3], 't', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'd', ARGV[4], 't', ARGV[8]) end
if vt ~= '' or ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
local last = ''
for i = 0, n - 1 do
  last = redis.call('XADD', KEYS[3], '*', 'h', ARGV[9 + 2 * i], 'b', ARGV[10 + 2 * i])
end
return {1, last}
"""


def _dumps(value: Any) -> bytes:
    return serialize_bytes(value, rule="")


def _session_data(session: Session) -> bytes:
    data: dict[str, Any] = {"vi": session.visitor_id, "st": session.state}
    # What the session has not used is left out (read back as empty: _build), not stored
    for key, values in (
        ("kp", session._pageview),
        ("ks", session._session_kept),
        ("f", session._firings),
        ("id", session._identity),
    ):
        if values:
            data[key] = values
    data["c"], data["l"], data["n"] = session.created, session.last_seen, session.pushes
    return _dumps(data)


def _visitor_data(memory: VisitorMemory) -> bytes:
    return _dumps({"k": memory.kept, "f": memory.firings}) if memory.kept or memory.firings else b""


def _decode(data: bytes | None, what: str) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = parse_bytes(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        # Not what this engine wrote: the push goes on with a fresh one, loudly (a session
        # is also kept aside: RedisSessions._quarantine).
        log.error("%s is unreadable; starting it afresh", what)
        return None
    return value


_Raw = tuple[str, bytes | None, str, bytes | None, str]
"""A session as Redis holds it: its last write's token and its data, its visitor's token and
data, and that visitor's id."""


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


_UNREAD: Any = object()  # _build's data: not decoded yet


_RENEWAL = 0.1  # an expiry Edge pushed back by less than this share of what is left is not stored


def _expiries(identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """An identity without its expiry times, and those times by entry."""
    times: dict[str, float] = {}
    rest = {k: v for k, v in identity.items() if k != "location_hint_expires"}
    hint = identity.get("location_hint_expires")
    if isinstance(hint, int | float):
        times["location_hint"] = float(hint)
    entries = identity.get("entries")
    if isinstance(entries, list):
        kept = []
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("expires"), int | float):
                times[f"entry:{entry.get('key')}"] = float(entry["expires"])
                entry = {k: v for k, v in entry.items() if k != "expires"}
            kept.append(entry)
        rest["entries"] = kept
    return rest, times


def _worth_storing(before: dict[str, Any], after: dict[str, Any], now: float) -> bool:
    """Whether a delivery changed an identity in more than expiry times renewed a little.

    Edge answers every request with the visitor's ``state:store`` entries, each expiry
    pushed back to ``now + maxAge``: storing each would rewrite the session after every
    send (and make a push of it running meanwhile start again). An expiry is stored once it
    moved by a tenth of its remaining lifetime: a 30-minute cluster entry every 3 minutes."""
    if before == after:
        return False
    rest_before, times_before = _expiries(before)
    rest_after, times_after = _expiries(after)
    if rest_before != rest_after or times_before.keys() != times_after.keys():
        return True
    return any(
        times_after[key] != old
        and abs(times_after[key] - old) >= _RENEWAL * max(times_after[key] - now, 0.0)
        for key, old in times_before.items()
    )


class _Loaded:
    """A session as read from Redis, and the write tokens (its own and its visitor's) a
    push's commit must find unchanged."""

    __slots__ = ("guessed", "session", "session_version", "visitor_data", "visitor_version")

    def __init__(
        self, session: Session, session_version: str, visitor_version: str, visitor_data: bytes
    ) -> None:
        self.session = session
        self.session_version = session_version
        self.visitor_version = visitor_version
        self.visitor_data = visitor_data
        self.guessed = False  # taken for a new session without reading it (begin)


class _Transaction(PushTransaction):
    __slots__ = ("_loaded", "_store", "contended", "session")

    def __init__(self, store: RedisSessions, loaded: _Loaded) -> None:
        self._store = store
        self._loaded = loaded
        self.session = loaded.session
        self.contended = True

    def commit(
        self,
        items: Sequence[tuple[Request, str]],
        outbox: BaseOutbox | None,
        now: float,
    ) -> bool:
        sends: list[bytes] = []
        stream = None
        bound = 0
        partitions: list[str] = []
        if items and outbox is not None:
            if not isinstance(outbox, RedisOutbox) or outbox.target.url != self._store.url:
                raise OutboxError(
                    "sessions in Redis store a push's sends in the same step: the outbox must "
                    f"be the same Redis ({self._store.name}), not {outbox.name}"
                )
            outbox.ensure_ready()
            sends = fields_of(items, now)
            stream = outbox.stream_key(self.session.id)
            if outbox.max_backlog is not None:
                bound, partitions = outbox.max_backlog, outbox.streams
        last = self._store._commit(self._loaded, stream, sends, bound, partitions)
        if last is None:
            self.contended = not self._loaded.guessed  # a wrong guess is no race
        if last and stream is not None and isinstance(outbox, RedisOutbox):
            outbox.stored(stream, last)  # what a flush waits for
        return last is not None


class RedisSessions(Sessions):
    """Sessions in Redis at ``url`` (see the module docstring); ``idle_timeout`` seconds
    without a push end a session, as in memory. ``clock`` is the time pushes are made at
    (tests); expiry itself is Redis's. ``cache`` bounds the sessions this process keeps as it
    stored them, to push on them without reading them first (:meth:`begin`)."""

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        idle_timeout: float = 1800.0,
        clock: Callable[[], float] = time.time,
        cache: int = 10_000,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if cache < 0:
            raise ValueError("cache cannot be negative")
        self._target = connect(url) if isinstance(url, str) else url
        self.url = self._target.url
        self.name = f"redis {self._target.name}"
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._ttl_ms = max(1, int(idle_timeout * 1000))
        client = self._target.client
        self._push = client.register_script(_PUSH)
        self._locks = KeyedLocks()  # this process's pushes of one session, one at a time
        # Sessions as this process last stored them (see begin): at most `cache` of them.
        self._cache: OrderedDict[str, _Raw] = OrderedDict()
        self._cache_size = cache
        self._cache_lock = threading.Lock()
        self._guesses = 0  # how well guessing an unseen session is new does (_guess_new)
        self._probe = 0
        self._answers: dict[str, _Raw] = {}  # see begin
        _INSTANCES.add(self)

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held these at the fork: new ones, empty.
        self._locks = KeyedLocks()
        self._cache_lock = threading.Lock()
        self._cache = OrderedDict()
        self._answers = {}

    def __repr__(self) -> str:
        return f"RedisSessions({self._target.name!r})"

    @property
    def target(self) -> RedisTarget:
        return self._target

    def _session_key(self, session_id: str) -> str:
        return self._target.key("s", session_id)

    def _visitor_key(self, visitor_id: str) -> str:
        return self._target.key("v", visitor_id)

    # ------------------------------------------------------------------ a push
    @contextmanager
    def begin(
        self, session_id: str, visitor_id: str | None, now: float
    ) -> Iterator[PushTransaction]:
        """The session and its visitor, for one push; the block's commit stores them (see
        :class:`_Transaction`). Pushes of one session in this process wait for each other
        (no point racing through Redis); other processes are kept apart by the versions.

        A session this process stored last is taken from its cache, as stored, without a
        round trip: the commit checks its versions as for any other, and when another
        process (a push, a delivery) wrote since, it brings back what is stored and the push
        runs again on that. A session this process has not seen is taken for a new one while
        such guesses mostly hold (:meth:`_guess_new`). So a visitor whose pushes reach one
        process costs one round trip a push, and one whose pushes go anywhere usually two
        (one more when a guess was wrong, or the session belongs to another visitor)."""
        with self._locks.hold(session_id):
            # What Redis answered when this session's last commit found it changed: the push
            # runs again on that, never on a guess (nor a stale copy) a second time.
            raw = self._answers.pop(session_id, None) or self._cached(session_id)
            guessed = False
            if raw is None and self._guess_new():
                # Never seen here: most likely a new session (sticky routing, or a new
                # visit), so the push runs on an empty one and its commit checks that
                # nothing is stored, saving a read round trip. When something is, the commit
                # brings it back and the push runs again on it, as after any other race.
                raw = ("", None, "", None, session_id if visitor_id is None else visitor_id)
                guessed = True
            loaded = None if raw is None else self._build(session_id, raw, now, create=True)
            if loaded is not None:
                loaded.guessed = guessed
            else:
                raw, data = self._fetch(session_id, visitor_id)
                loaded = self._build(session_id, raw, now, create=True, data=data)
            assert loaded is not None
            yield _Transaction(self, loaded)

    def _guess_new(self) -> bool:
        """Whether a session this process has not seen is taken for a new one (see
        :meth:`begin`): while such guesses mostly hold. When they mostly do not (pushes of
        a session spread over processes with no stickiness, a restart amid live sessions),
        a push reads first, and every 16th guesses again to notice when that changes."""
        score = self._guesses
        if score >= 0:
            return True
        self._probe = (self._probe + 1) % 16
        return self._probe == 0

    def _guessed(self, right: bool) -> None:
        score = self._guesses + (1 if right else -2)
        self._guesses = max(-8, min(8, score))

    def _cached(self, session_id: str) -> _Raw | None:
        with self._cache_lock:
            raw = self._cache.get(session_id)
            if raw is not None:
                self._cache.move_to_end(session_id)
            return raw

    def _remember(self, session_id: str, raw: _Raw | None) -> None:
        if not self._cache_size:
            return
        with self._cache_lock:
            if raw is None or raw[1] is None:
                self._cache.pop(session_id, None)
                return
            self._cache[session_id] = raw
            self._cache.move_to_end(session_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _fetch(self, session_id: str, visitor_id: str | None) -> tuple[_Raw, dict[str, Any] | None]:
        """What Redis holds of the session and of its visitor (the one it was created with),
        and the session decoded (once: :meth:`_build` takes it as it is)."""
        client = self._target.client
        guess = session_id if visitor_id is None else visitor_id
        with translated(self._target, f"reading session {session_id!r}"):
            pipe = client.pipeline(transaction=False)
            pipe.hmget(self._session_key(session_id), "t", "d")
            pipe.hmget(self._visitor_key(guess), "t", "d")
            (sv, sd), (vv, vd) = pipe.execute()
        data = _decode(sd, f"{self.name}: session {session_id!r}")
        owner = data.get("vi") if data is not None else None
        if isinstance(owner, str) and owner and owner != guess:
            # A session keeps the visitor it was created with.
            guess = owner
            with translated(self._target, f"reading visitor {owner!r}"):
                vv, vd = client.hmget(self._visitor_key(owner), "t", "d")
        return (_text(sv), sd or None, _text(vv), vd or None, guess), data

    def _quarantine(self, session_id: str, data: bytes) -> None:
        """Keep a stored session this engine cannot read (the push goes on with a fresh one,
        which replaces it) under a key of its own, counted, for an operator to look at."""
        key = self._target.key("quarantine", "s", session_id, str(int(time.time() * 1000)))
        with translated(self._target, "keeping an unreadable session aside"):
            pipe = self._target.client.pipeline(transaction=True)
            pipe.set(key, data)
            pipe.incr(self._target.key("quarantined"))
            count = pipe.execute()[1]
        log.warning(
            "%s: unreadable session %r kept as %s (%d kept aside so far)",
            self.name,
            session_id,
            key,
            count,
        )

    def _build(
        self,
        session_id: str,
        raw: _Raw,
        now: float,
        *,
        create: bool,
        data: dict[str, Any] | None = _UNREAD,
    ) -> _Loaded | None:
        """The session ``raw`` describes (``data``: its session already decoded); ``None``
        when there is none (and not ``create``) or ``raw`` holds another visitor's memory
        than the session's own."""
        sv, sd, vv, vd, visitor_id = raw
        if data is _UNREAD:
            data = _decode(sd, f"{self.name}: session {session_id!r}")
        if sd and data is None:
            self._quarantine(session_id, sd)
        if data is not None and now - float(data.get("l", now)) >= self.idle_timeout:
            data = None  # expired by the engine's clock (Redis's expiry is the other way)
        if data is None and not create:
            return None
        owner = data.get("vi") if data is not None else None
        if isinstance(owner, str) and owner and owner != visitor_id:
            return None
        memory = VisitorMemory(visitor_id)
        visitor = _decode(vd, f"{self.name}: visitor {visitor_id!r}")
        if visitor is not None:
            memory.kept.update(visitor.get("k") or {})
            memory.firings.update(visitor.get("f") or {})
        session = Session(session_id, visitor_id, now=now, visitor=memory)
        if data is not None:
            session.state = data.get("st") or {}
            session._pageview = data.get("kp") or None  # (each made on first use if absent)
            session._session_kept = data.get("ks") or None
            session._firings = data.get("f") or None
            session._identity = data.get("id") or None
            session.created = float(data.get("c", now))
            session.last_seen = max(float(data.get("l", now)), now)
            session.pushes = int(data.get("n", 0))
        return _Loaded(session, sv, vv, vd or b"")

    def _load(
        self, session_id: str, visitor_id: str | None, now: float, *, create: bool
    ) -> _Loaded | None:
        raw, data = self._fetch(session_id, visitor_id)
        return self._build(session_id, raw, now, create=create, data=data)

    def _commit(
        self,
        loaded: _Loaded,
        stream: str | None,
        sends: list[bytes],
        bound: int,
        partitions: list[str],
    ) -> str | None:
        """Store the session and ``sends``: the last send's stream id ('' with none), or
        ``None`` when another write came first (nothing stored)."""
        session = loaded.session
        visitor_data = _visitor_data(session.visitor)
        changed = b"" if visitor_data == loaded.visitor_data else visitor_data
        if not changed and loaded.visitor_data and not visitor_data:
            changed = _dumps({"k": {}, "f": {}})  # emptied: written as empty, not left as was
        skey = self._session_key(session.id)
        keys = [skey, self._visitor_key(session.visitor_id), stream or skey, *partitions]
        data = _session_data(session)
        token = new_id()[:18]  # 64 random bits: never the same twice for one session
        args: list[Any] = [
            loaded.session_version,
            loaded.visitor_version,
            data,
            changed,
            self._ttl_ms,
            bound,
            len(sends) // 2,
            token,
            *sends,
        ]
        try:
            with translated(self._target, f"storing session {session.id!r}"):
                answer = self._push(keys=keys, args=args)
        except OutboxError:
            self._remember(session.id, None)  # stored or not: read it afresh next time
            raise
        code = int(answer[0])
        if code == -1:
            _, sv, sd, vv, vd = answer
            if loaded.guessed:
                # Wrong only when the session itself is stored: a returning visitor's new
                # session is new, only its visitor's memory was not empty.
                self._guessed(not sv)
            if len(self._answers) >= _MAX_ANSWERS:  # pushes that gave up: not kept forever
                self._answers.clear()
            self._answers[session.id] = (
                _text(sv),
                sd or None,
                _text(vv),
                vd or None,
                session.visitor_id,
            )
            return None
        if loaded.guessed:
            self._guessed(True)
        if code == -2:
            raise BacklogFull(
                f"outbox {self.name}: {answer[1]} sends waiting, at its bound of {bound} "
                "(max_backlog): is delivery running? (tagengine deliver, tagengine outbox list)",
                int(answer[1]),
                bound,
            )
        loaded.session_version = token
        if changed:
            loaded.visitor_version = token
            loaded.visitor_data = changed
        self._remember(
            session.id,
            (token, data, loaded.visitor_version, loaded.visitor_data or None, session.visitor_id),
        )
        return _text(answer[1]) if len(answer) > 1 else ""

    # ------------------------------------------------------------------ reading, identity
    def read(self, session_id: str) -> Session | None:
        loaded = self._load(session_id, None, self.clock(), create=False)
        return None if loaded is None else loaded.session

    def identity(self, session_id: str) -> dict[str, Any] | None:
        session = self.read(session_id)
        return None if session is None else session.identity

    def _change(
        self,
        session_id: str,
        visitor_id: str | None,
        change: Callable[[Session], bool],
        *,
        create: bool,
    ) -> None:
        """Apply ``change`` (true when it changed something) to the session as stored, and
        store it; again on a fresh read while another process wrote meanwhile."""
        with self._locks.hold(session_id):
            try:
                for _ in range(_MAX_ATTEMPTS):
                    loaded = self._load(session_id, visitor_id, self.clock(), create=create)
                    if loaded is None or not change(loaded.session):
                        return
                    if self._commit(loaded, None, [], 0, []) is not None:
                        return
            finally:
                self._answers.pop(session_id, None)  # it reads afresh: no answer kept for later
        raise OutboxError(
            f"{self.name}: session {session_id!r} changed by others {_MAX_ATTEMPTS} times "
            "in a row while being stored"
        )

    def merge_identity(self, session_id: str, base: dict[str, Any], result: dict[str, Any]) -> None:
        if base == result:
            return

        def merged(session: Session) -> bool:
            before = copy_json(session.identity)
            merge_identity(session.identity, base, result)
            return _worth_storing(before, session.identity, self.clock())

        self._change(session_id, None, merged, create=False)

    def update_identity(
        self, session_id: str, visitor_id: str | None, change: Callable[[dict[str, Any]], None]
    ) -> None:
        def changed(session: Session) -> bool:
            change(session.identity)
            return True

        self._change(session_id, visitor_id, changed, create=True)

    def restore(self, data: dict[str, Any]) -> Session:
        """Store an exported session, replacing the one of its id. Its visitor memory joins
        the visitor's as stored: the stored values win, the export fills in the rest."""
        exported = Session.from_export(data)  # checks it (PushError)
        stored = self.read(exported.id)
        if stored is not None and stored.visitor_id != exported.visitor_id:
            self.delete(exported.id)  # replaced by a session of another visitor
        restored: list[Session] = []

        def replaced(session: Session) -> bool:
            merged = Session.from_export(data, visitor=session.visitor)
            session.state = merged.state
            for scope in KEEP_SCOPES[:2]:
                session.kept[scope].clear()
                session.kept[scope].update(merged.kept[scope])
            session.firings = merged.firings
            session.identity = merged.identity
            session.created = merged.created
            session.pushes = merged.pushes
            restored.append(session)
            return True

        self._change(exported.id, exported.visitor_id, replaced, create=True)
        return restored[-1]

    def delete(self, session_id: str) -> None:
        """Forget a session (its visitor memory stays with the visitor's other sessions)."""
        with translated(self._target, f"deleting session {session_id!r}"):
            self._target.client.delete(self._session_key(session_id))


_INSTANCES: weakref.WeakSet[RedisSessions] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sessions in list(_INSTANCES):
        sessions._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
