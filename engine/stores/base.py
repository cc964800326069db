"""The two interfaces every store implements: :class:`Sessions` (where a visitor's session
lives between pushes) and :class:`BaseOutbox` (where sends wait for delivery), and what an
outbox reports about itself (:class:`Backlog`).

An operator (``tagengine outbox list``), an app (``Engine.backlog()``) and a push-only process
with a bound (``Engine(max_backlog=N)``) read the same figures from a SQLite outbox and a
Redis one.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from engine.destinations.base import Destination, Kind, Request
from engine.errors import BacklogFull
from engine.sessions import Session

__all__ = [
    "Backlog",
    "BaseOutbox",
    "Entry",
    "KeyedLocks",
    "PushTransaction",
    "Sessions",
    "State",
    "Which",
]

State = Literal["pending", "inflight", "dead"]
Which = Literal["dead", "pending", "all"]
_BOUND_READ_EVERY = 1.0  # seconds between two reads of the backlog for max_backlog


class KeyedLocks:
    """A reentrant lock per key (a session or visitor id), made when first wanted and
    dropped when nobody holds or waits for it, so that keys seen once cost nothing after."""

    def __init__(self) -> None:
        self._held: dict[str, list[Any]] = {}  # key → [RLock, holders and waiters]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        lock = self.acquire(key)
        try:
            yield
        finally:
            self.release(key, lock)

    def acquire(self, key: str) -> threading.RLock:
        """Take ``key``'s lock (waiting for it); give it back with :meth:`release`. (The
        push path's form of :meth:`hold`: no generator to make.)"""
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = [threading.RLock(), 0]
            held[1] += 1
        lock: threading.RLock = held[0]
        lock.acquire()
        return lock

    def release(self, key: str, lock: threading.RLock) -> None:
        lock.release()
        with self._lock:
            held = self._held[key]
            held[1] -= 1
            if not held[1]:
                del self._held[key]


@dataclass(frozen=True, slots=True)
class Backlog:
    """An outbox's backlog at one moment.

    ``pending``: sends not delivered yet, those in flight included; ``inflight``: of those,
    the ones a worker is delivering now (Redis: that a worker has read and not yet
    settled); ``oldest_age``: seconds since the oldest of them
    was stored (``None`` when there is none); ``dead``: dead letters; ``journaled``: sends
    running processes have appended to their intake journals and not read in yet (SQLite
    only); ``quarantined``: unreadable journal records kept aside, not delivered (SQLite
    only); ``consent_dropped``: sends the pushing processes dropped, never stored, because
    the visitor refused consent (or too many were held while it was pending).
    """

    pending: int
    inflight: int
    oldest_age: float | None
    dead: int
    journaled: int = 0
    quarantined: int = 0
    consent_dropped: int = 0  # sends never stored: the visitor refused consent
    held: int = 0  # sends kept back while their visitor's consent is pending (SQLite only)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored send: its place in the outbox, its delivery record, and the request.

    ``attempts`` counts the attempts that did not succeed (including one a crash interrupted);
    ``state`` is ``"dead"`` and ``failed_at`` set for a dead letter. Times are epoch seconds.
    """

    id: int
    session: str
    seq: int
    destination: Destination
    rule: str
    method: Literal["POST", "GET"]
    url: str
    headers: tuple[tuple[str, str], ...]
    body: dict[str, Any]
    body_bytes: bytes
    kind: Kind
    event_id: str | None
    request_id: str | None
    created: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    state: State
    failed_at: float | None = None

    @property
    def request(self) -> Request:
        """The :class:`Request` as it was put, field for field."""
        return Request(
            destination=self.destination,
            rule=self.rule,
            method=self.method,
            url=self.url,
            headers=self.headers,
            body=self.body,
            body_bytes=self.body_bytes,
            kind=self.kind,
            event_id=self.event_id,
            request_id=self.request_id,
        )


class PushTransaction(ABC):
    """One push's hold on its session (:meth:`Sessions.begin`): ``session`` is what the push
    changes; :meth:`commit` stores the change and the push's sends together, or neither."""

    session: Session
    # After a commit that returned False: whether another writer came first (the push runs
    # again after a random moment, so that racing processes all get through) rather than the
    # store's guess of what was stored being wrong (it runs again at once).
    contended: bool = True

    @abstractmethod
    def commit(
        self, items: Sequence[tuple[Request, str]], outbox: BaseOutbox | None, now: float
    ) -> bool:
        """Store the session as the push left it and ``items`` (``(request, session id)``
        sends, dated ``now``) in ``outbox``, as one step; ``outbox`` ``None`` stores the session alone.
        False when another process changed the session meanwhile: nothing was stored, and
        the push must run again on a fresh :meth:`Sessions.begin`. Raises
        :class:`~engine.errors.OutboxError` (nothing stored, the session as it was) when
        either cannot be written, and :class:`BacklogFull` when the outbox is over its
        bound."""


class Sessions(ABC):
    """Where sessions live between pushes: in this process's memory
    (:class:`~engine.stores.memory.MemorySessions`) or in Redis, shared by every process
    (:class:`~engine.stores.redis_sessions.RedisSessions`).

    A push runs inside :meth:`begin`, which hands it the session and serializes it with the
    session's other pushes; delivery reads the visitor's identity with :meth:`identity` and
    writes back what an answer changed with :meth:`merge_identity`, so whichever process
    delivers, the visitor keeps one ECID and one Sitecore browser id.
    """

    idle_timeout: float

    @abstractmethod
    def begin(
        self, session_id: str, visitor_id: str | None, now: float
    ) -> AbstractContextManager[PushTransaction]:
        """Hold the session ``session_id`` (created on first use or after it expired) for one
        push. Nothing the block changed is kept unless it commits; an exception out of the
        block leaves the session as it was."""

    @abstractmethod
    def read(self, session_id: str) -> Session | None:
        """The live session, as it is now, or ``None``; a copy where the store is shared."""

    @abstractmethod
    def identity(self, session_id: str) -> dict[str, Any] | None:
        """A copy of the session's identity (ECID, state entries, Sitecore browser id), or
        ``None`` when the session is not held (expired, never seen)."""

    @abstractmethod
    def merge_identity(self, session_id: str, base: dict[str, Any], result: dict[str, Any]) -> None:
        """Apply what a delivery changed from ``base`` (:meth:`identity` as it started) to
        ``result`` onto the session's identity as it is now
        (:func:`~engine.clients.identity.merge_identity`); nothing when the session is gone."""

    @abstractmethod
    def update_identity(
        self, session_id: str, visitor_id: str | None, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """Run ``change`` on the session's identity and store it (the session is created if
        needed): the visitor's cookies taken in, say."""

    @abstractmethod
    def restore(self, data: dict[str, Any]) -> Session:
        """Put back an exported session (replacing a live one of the same id)."""

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release what the store holds (connections)."""


class BaseOutbox(ABC):
    """A durable, ordered store of sends, claimed and settled by delivery workers
    (:class:`~engine.background.BackgroundDelivery`): the SQLite
    :class:`~engine.stores.sqlite.Outbox` or :class:`~engine.stores.redis_outbox.RedisOutbox`.
    Each keeps the sends of one session in order and hands out at most one request of a
    session at a time."""

    name: str
    max_backlog: int | None = None
    """The most sends the outbox may hold before pushes are refused (:class:`BacklogFull`)."""
    _bound_seen: tuple[float, int] = (-1e9, 0)  # (monotonic time read, backlog then + added)
    keeps_held = False
    """Whether the outbox keeps sends held for consent (:meth:`hold`): the SQLite outbox
    does, for sessions that live in memory; Redis sessions keep their own."""

    def hold(self, items: Sequence[tuple[Request, str]], *, now: float, most: int) -> int:
        """Keep ``items`` back (their visitor's consent is pending), in order, at most
        ``most`` a session (the oldest go first); the number dropped for that bound."""
        raise NotImplementedError(f"{self.name} keeps no held sends")

    def release_held(
        self,
        session: str,
        before: Sequence[Request],
        after: Sequence[Request],
        *,
        now: float,
    ) -> list[Request]:
        """Store ``before``, the session's held sends, then ``after``, in that order and in
        one step; the held sends released."""
        raise NotImplementedError(f"{self.name} keeps no held sends")

    def drop_held(self, session: str) -> int:
        """Forget the session's held sends (consent refused); how many there were."""
        raise NotImplementedError(f"{self.name} keeps no held sends")

    def check_bound(self, adding: int) -> None:
        """Raise :class:`BacklogFull` when ``adding`` more sends would take the outbox past
        :attr:`max_backlog`. The backlog is read at most once a second and counted up in
        between, so a check costs a push nothing; it may overshoot by a second of pushes."""
        bound = self.max_backlog
        if bound is None:
            return
        now = time.monotonic()
        read_at, count = self._bound_seen
        if now - read_at >= _BOUND_READ_EVERY:
            backlog = self.backlog()
            read_at, count = now, backlog.pending + backlog.journaled
        if count + adding > bound:
            self._bound_seen = (read_at, count)
            raise BacklogFull(
                f"outbox {self.name}: {count} sends waiting, at its bound of {bound} "
                "(max_backlog): is delivery running? (tagengine deliver, tagengine outbox list)",
                count,
                bound,
            )
        self._bound_seen = (read_at, count + adding)

    @abstractmethod
    def count_consent_dropped(self, count: int) -> None:
        """Count sends dropped for the visitor's consent (shown by ``tagengine outbox
        list``): they are never stored, so this is all that is left of them."""

    @abstractmethod
    def append_many(
        self, items: Iterable[tuple[Request, str]], *, now: float | None = None
    ) -> None: ...

    @abstractmethod
    def claim(self, now: float | None = None, limit: int = 100) -> list[Entry]: ...

    @abstractmethod
    def claim_behind(
        self,
        entry: Entry,
        *,
        limit: int,
        select: Callable[[list[Entry]], int] | None = None,
        now: float | None = None,
    ) -> list[Entry]: ...

    @abstractmethod
    def ack_many(self, ids: Iterable[int]) -> int: ...

    @abstractmethod
    def retry_later(self, entry_id: int, error: str, at: float) -> bool: ...

    @abstractmethod
    def unclaim(self, ids: Iterable[int]) -> None:
        """Put claimed entries back to pending as they were: nothing was attempted (a
        delivery that could not start), so no attempt is counted."""

    @abstractmethod
    def bury(self, entry_id: int, error: str, *, now: float | None = None) -> bool: ...

    @abstractmethod
    def recover(self, *, older_than: float | None = None, now: float | None = None) -> int: ...

    @abstractmethod
    def next_due(self) -> float | None: ...

    @abstractmethod
    def pending(self, limit: int | None = None) -> list[Entry]: ...

    @abstractmethod
    def dead(self, limit: int | None = None) -> list[Entry]: ...

    @abstractmethod
    def revive(self, ids: Iterable[int] | None = None, *, now: float | None = None) -> int: ...

    @abstractmethod
    def purge(self, which: Which = "dead", ids: Iterable[int] | None = None) -> int: ...

    @abstractmethod
    def backlog(self) -> Backlog: ...

    def drained(self) -> bool:
        """Whether nothing is left to deliver that a flush of this process waits for."""
        return not self.pending(limit=1)

    def adopt(self) -> int:
        """Read in what dead processes left behind (the SQLite journals); how many."""
        return 0

    @abstractmethod
    def close(self) -> None: ...
