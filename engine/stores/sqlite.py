"""A durable outbox: a send is written before it is dispatched and removed when acknowledged.

The store is one SQLite database (stdlib :mod:`sqlite3`) in a file the app names, or in memory
when it names none. Three tables:

- ``entries``: what is still to be delivered, each ``pending`` or ``inflight`` (claimed by a
  worker and not yet acknowledged);
- ``dead_letters``: what a dispatcher gave up on, with the last error; it can be revived;
- ``intake``: how far each process's intake journal has been read (below).

Two ways in. :meth:`Outbox.put` and :meth:`Outbox.put_many` insert and commit, and return ids.
:meth:`Outbox.append_many`, the background push's path, appends the sends to this process's
intake journal (:mod:`engine.stores.journal`): a copy into a file mapped in memory, with no system
call and a fraction of a transaction's cost; the next operation on the outbox moves them into
``entries``, in order. A process that only pushes calls :meth:`Outbox.ingest` now and then to
do that; a delivering process calls :meth:`Outbox.adopt` now and then to read in the journals
of processes that died.

Guarantees:

- **Durable when it returns.** Every write commits (or, for ``append_many``, is in the
  kernel) before returning. With ``synchronous="NORMAL"`` (the default) a returned write
  survives the process being killed (``SIGKILL``, OOM, a crash); an OS crash or power loss
  may lose the last ones. ``"FULL"`` survives those too, at the cost of an ``fsync`` per write
  (measured here: ~300 µs instead of ~25 µs for an ``append_many``; :meth:`Outbox.put_many`
  and :meth:`Outbox.ack_many` share one sync among many).
- **At-least-once.** An entry leaves ``entries`` only by :meth:`Outbox.ack` (delivered),
  :meth:`Outbox.bury` (moved to ``dead_letters`` in the same transaction) or
  :meth:`Outbox.purge` (an operator's decision). :meth:`Outbox.recover` puts what a crash left
  in flight back to pending, so it may be delivered twice; Edge de-duplicates on ``xdm._id``.
  A journal a dead process left behind is read in by the next :class:`Outbox` opened on the
  file, by :meth:`Outbox.adopt` or by :meth:`Outbox.recover`, from where the ``intake`` table
  says its process had read it; a journal with no row there (the row was lost with the
  ``-wal``, say) is read from its start, so sends already read in may go twice.
- **A journal outlives the WAL.** A journal file is deleted (read to its end by its process
  at close or when it rotates to a new file, or adopted from a dead one) only after a
  checkpoint that copied the whole ``-wal``: what it held is then in the database file itself,
  synced, so losing the ``-wal`` (removed after a crash) cannot take it along. When the
  checkpoint cannot complete (another connection is reading), the file stays, its ``intake``
  row at its end, and a later adoption deletes it.
- **Nothing unreadable is dropped silently.** Reading a journal resynchronizes past a damaged
  record to the next one that validates (:mod:`engine.stores.journal`); the bytes passed over,
  and a record cut short by a kill (never acknowledged), are appended to the quarantine file
  (``<database>-quarantine``, :attr:`Outbox.quarantine_path`) before the journal goes, logged
  at WARNING on ``engine.outbox`` with the journal's name, and counted by
  :meth:`Outbox.backlog`. Quarantined bytes are not delivered.
- **Private files.** The database, its ``-wal`` and ``-shm``, the journals and the quarantine
  file are created with mode 0600 (SQLite gives ``-wal`` and ``-shm`` the database file's
  mode, so the file is made before SQLite opens it); an existing database that group or
  others could read is made 0600, with its ``-wal`` and ``-shm``, and a WARNING says so.
- **Per-session order.** ``session`` is an ordering key: :meth:`Outbox.claim` hands out at most
  one entry per session at a time, always the session's lowest ``seq``, and only when nothing
  of that session is in flight. A later send is never claimed while an earlier one of its
  session is pending (even if it waits for a retry) or in flight. :meth:`Outbox.claim_behind`
  lets the worker of a claimed head take the due entries right behind it too (one request for
  several sends); the session then stays blocked until every one of them is settled. Burying
  the head unblocks the session; a revived dead letter keeps its ``seq`` and goes ahead of
  later pending ones.
  Sends appended by one process keep their order among themselves and with its ``put`` ones.
- **Several deliverers.** Processes of one host may claim from one file at once: each claim
  records its owner (``pid:random``), and :meth:`Outbox.recover` without ``older_than`` puts
  back only what owners that are gone left in flight (a process that no longer runs, or a
  closed :class:`Outbox` of this one), never a live deliverer's sends.
- **Never drops.** There is no capacity limit; a write that cannot be made (disk full, file
  unreadable) raises :class:`OutboxError` to the caller instead of being lost silently.
- **Threads and processes.** One connection per :class:`Outbox`, serialized by a lock; other
  processes may open the same file (WAL, busy timeout) and see a live process's appended sends
  once it has read them in. After ``os.fork()`` the child opens its own connection and
  journal and never touches the parent's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qsl

from engine.consent import stored_request, stored_requests
from engine.destinations.base import Destination, Kind, Request, parse_bytes, serialize
from engine.errors import OutboxError
from engine.forks import ForkWatch
from engine.stores import journal
from engine.stores.base import Backlog, BaseOutbox, Entry, State, Which
from engine.stores.queued import Queued, queued_sends, stored_body, unframed

__all__ = ["SCHEMA_VERSION", "Entry", "Outbox", "OutboxError", "State", "Which"]

log = logging.getLogger("engine.outbox")

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; a file with a newer version is refused."""

_Method = Literal["POST", "GET"]  # made once: a subscript in _entry would run for every row


# What each entry and dead letter stores, with its column type: one list for both tables.
_STORED = (
    ("session", "TEXT NOT NULL"),
    ("seq", "INTEGER NOT NULL"),
    ("destination", "TEXT NOT NULL"),
    ("rule", "TEXT NOT NULL"),
    ("method", "TEXT NOT NULL"),
    ("url", "TEXT NOT NULL"),
    ("headers", "TEXT NOT NULL"),
    ("body", "TEXT NOT NULL"),
    ("body_bytes", "BLOB NOT NULL"),
    ("kind", "TEXT NOT NULL"),
    ("event_id", "TEXT"),
    ("request_id", "TEXT"),
    ("created", "REAL NOT NULL"),
    ("attempts", "INTEGER NOT NULL"),
    ("next_attempt_at", "REAL NOT NULL"),
    ("last_error", "TEXT"),
)
_FIELDS = tuple(name for name, _ in _STORED)
_DEFINITIONS = ",\n    ".join(f"{name} {kind}" for name, kind in _STORED)
_COLUMNS = ", ".join(_FIELDS)


def _columns(**override: str) -> str:
    """The stored fields as a select list, some replaced by expressions."""
    return ", ".join(override.get(name, name) for name in _FIELDS)


# The intake journals (engine.stores.journal) and how far each has been read. Added to existing files
# without a new schema version: processes of the previous release ignore the table, so they
# keep working on a file a newer one opened (a rolling deploy).
_INTAKE_TABLE = "CREATE TABLE IF NOT EXISTS intake (name TEXT PRIMARY KEY, offset INTEGER NOT NULL)"
# Sends held while their visitor's consent is pending (sessions in memory): kept here so a
# restart loses none; released into `entries` in one transaction, in order.
_HELD_TABLE = (
    "CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "session TEXT NOT NULL, send TEXT NOT NULL, created REAL NOT NULL)"
)
_HELD_INDEX = "CREATE INDEX IF NOT EXISTS held_session ON held (session, id)"
_COUNTERS_TABLE = (
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
)
# The oldest entry for backlog() without a scan. Added to existing files the same way: an
# index changes nothing a previous release reads or writes (SQLite keeps it up to date).
_CREATED_INDEX = "CREATE INDEX IF NOT EXISTS entries_created ON entries (created)"

_SCHEMA = f"""
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {_DEFINITIONS},
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'inflight')),
    claimed_at REAL,
    owner TEXT,
    is_head INTEGER NOT NULL,
    UNIQUE (session, seq)
);
CREATE INDEX entries_ready ON entries (next_attempt_at, id) WHERE is_head = 1 AND state = 'pending';
CREATE INDEX entries_head ON entries (session) WHERE is_head = 1;
CREATE INDEX entries_inflight ON entries (session) WHERE state = 'inflight';
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY,
    {_DEFINITIONS},
    failed_at REAL NOT NULL
);
CREATE INDEX dead_letters_session ON dead_letters (session, seq);
{_INTAKE_TABLE};
{_COUNTERS_TABLE};
{_HELD_TABLE};
{_HELD_INDEX};
{_CREATED_INDEX};
PRAGMA user_version = {SCHEMA_VERSION};
"""

# The next seq of a session: one above any it still holds, live or dead, so a revived dead
# letter never collides with a newer entry. A session that drained completely starts again at 1.
_NEXT_SEQ = (
    "(SELECT COALESCE(MAX(m), 0) + 1 FROM ("
    "SELECT MAX(seq) AS m FROM entries WHERE session = :session UNION ALL "
    "SELECT MAX(seq) FROM dead_letters WHERE session = :session))"
)

# ``is_head`` marks each session's lowest-seq entry, so that a claim reads only heads (through
# the small partial index ``entries_ready``) however long the sessions' queues are.
_INSERT = (
    f"INSERT INTO entries ({_COLUMNS}, is_head) VALUES (:session, {_NEXT_SEQ}, :destination, "
    ":rule, :method, :url, :headers, :body, :body_bytes, :kind, :event_id, :request_id, "
    ":created, 0, :created, NULL, NOT EXISTS (SELECT 1 FROM entries WHERE session = :session))"
)

# Due heads of sessions with nothing in flight. (A session's entry in flight is its head,
# except after a revive put an older dead letter back in front of it.)
_ROTATE_AT = 4 << 20  # bytes: a journal read to its end past this is replaced by a new file
_UNFINISHED_AFTER = 60.0  # seconds after which a journal file still being made was abandoned
_IDS_PER_STATEMENT = 500  # ids bound in one `IN (...)` (SQLite allows 999 before 3.32)
_INGEST_CHUNK = 256 << 10  # bytes of journal read into `entries` per transaction, at most
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

_CLAIMABLE = f"""
SELECT id, {_COLUMNS}, state, NULL FROM entries AS e
WHERE e.is_head = 1 AND e.state = 'pending' AND e.next_attempt_at <= :now
  AND NOT EXISTS (SELECT 1 FROM entries WHERE session = e.session AND state = 'inflight')
ORDER BY e.next_attempt_at, e.id
LIMIT :limit
"""

# The entries behind one of a session, in order (Outbox.claim_behind).
_BEHIND = (
    f"SELECT id, {_COLUMNS}, state, NULL FROM entries WHERE session = ? AND seq > ? "
    "ORDER BY seq LIMIT ?"
)

_UNHEAD = "UPDATE entries SET is_head = 0 WHERE session = ? AND is_head = 1"
_HEAD = (
    "UPDATE entries SET is_head = 1 "
    "WHERE id = (SELECT id FROM entries WHERE session = ? ORDER BY seq LIMIT 1)"
)


def _rehead(conn: sqlite3.Connection, sessions: Iterable[str]) -> None:
    """Mark the lowest-seq entry of each of ``sessions`` as its head, and only that one."""
    chosen = [(session,) for session in sorted(set(sessions))]
    conn.executemany(_UNHEAD, chosen)
    conn.executemany(_HEAD, chosen)


def _sessions(conn: sqlite3.Connection, table: str, where: str, params: list[Any]) -> list[str]:
    return [row[0] for row in conn.execute(f"SELECT DISTINCT session FROM {table}{where}", params)]


@functools.lru_cache(maxsize=64)
def _headers(stored: str) -> tuple[tuple[str, str], ...]:
    # A few distinct header lists (one per destination and settings) stored on every entry.
    return tuple((str(k), str(v)) for k, v in parse_bytes(stored))


def _entry(row: Sequence[Any]) -> Entry:
    (id_, session, seq, destination, rule, method, url, headers, body, body_bytes, kind) = row[:11]
    (event_id, request_id, created, attempts, next_at, last_error, state, failed_at) = row[11:]
    return Entry(
        id=id_,
        session=session,
        seq=seq,
        destination=cast(Destination, destination),
        rule=rule,
        method=cast(_Method, method),
        url=url,
        headers=_headers(headers),
        # A POST's body is stored once, as the bytes sent (see queued.stored_body).
        body=parse_bytes(body or body_bytes),
        body_bytes=bytes(body_bytes),
        kind=cast(Kind, kind),
        event_id=event_id,
        request_id=request_id,
        created=created,
        attempts=attempts,
        next_attempt_at=next_at,
        last_error=last_error,
        state=cast(State, state),
        failed_at=failed_at,
    )


def _record(request: Request, session: str, now: float) -> bytes:
    """One send as a journal record (what :func:`_row` reads back)."""
    return journal.frame(*unframed(request, session, now))


def _row(header: list[Any], body_bytes: bytes) -> dict[str, Any]:
    """The insert parameters of a journal record."""
    session, destination, rule, method, url, headers, body, kind, event_id, request_id, now = header
    return {
        "session": session,
        "destination": destination,
        "rule": rule,
        "method": method,
        "url": url,
        "headers": json.dumps(headers, ensure_ascii=False),
        "body": "" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        "body_bytes": body_bytes,
        "kind": kind,
        "event_id": event_id,
        "request_id": request_id,
        "created": now,
    }


def _queued_row(record: Queued) -> dict[str, Any]:
    """The insert parameters of a record an outbox in memory queued
    (:mod:`engine.stores.queued`)."""
    if len(record) == 3:
        request, session, now = record
        if request.method == "GET":
            sent = _message_body(request.url)
            if sent is not None:
                return _params(request, session, now, sent)
        return _params(request, session, now)
    head, body = record
    return _row(parse_bytes(head), body)


def _message_body(url: str) -> dict[str, Any] | None:
    """The event a Sitecore GET's URL carries in its ``message``, or ``None``."""
    for key, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        if key == "message":
            try:
                body = json.loads(value)
            except ValueError:
                return None
            return body if type(body) is dict else None
    return None


_THE_REQUESTS = object()  # _params: the body to store is the request's own


def _params(
    request: Request, session: str, now: float, sent: Any = _THE_REQUESTS
) -> dict[str, Any]:
    try:
        headers = json.dumps([list(pair) for pair in request.headers], ensure_ascii=False)
        stored = stored_body(request) if sent is _THE_REQUESTS else sent
        body = (
            ""
            if stored is None
            else json.dumps(stored, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        )
    except (TypeError, ValueError) as exc:
        raise OutboxError(f"rule {request.rule!r}: the send cannot be stored: {exc}") from exc
    return {
        "session": session,
        "destination": request.destination,
        "rule": request.rule,
        "method": request.method,
        "url": request.url,
        "headers": headers,
        "body": body,
        "body_bytes": bytes(request.body_bytes),
        "kind": request.kind,
        "event_id": request.event_id,
        "request_id": request.request_id,
        "created": now,
    }


def _id_list(ids: Iterable[int] | None) -> list[int] | None:
    return None if ids is None else sorted({int(i) for i in ids})


class Outbox(BaseOutbox):
    """A durable, ordered store of sends; see the module docstring for the guarantees.

    ``path`` names the SQLite file (created with mode 0600 if missing, unless
    ``create=False``); ``None`` or ``":memory:"`` keeps it in memory, with the same API and no
    durability. Opening reads in the journals of dead processes (:meth:`adopt`) but changes
    no entry in flight: a dispatching process calls :meth:`recover` once as it starts.

    Thread safety: one connection guarded by a lock. SQLite admits one writer at a time anyway,
    so per-thread connections would only add lock contention on the file (``SQLITE_BUSY``
    waits) and cannot share an in-memory database; every operation here is one short
    transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "NORMAL",
        create: bool = True,
        busy_timeout: float = 10.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        target = None if path is None else os.fspath(path)
        self._memory = target is None or target == ":memory:"
        self._path = ":memory:" if self._memory else cast(str, target)
        self.name = "<memory>" if self._memory else self._path
        self._synchronous = synchronous
        self._create = create
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._pid = os.getpid()
        self._fork = ForkWatch()
        self._owner = f"{self._pid}:{uuid.uuid4().hex[:12]}"
        self._quarantine = None if self._memory else str(journal.quarantine_file(self._path))
        self._quarantine_seen: tuple[tuple[int, int, int], int] | None = None  # stat, chunks
        self._reset_intake()
        with self._locked():
            self._connection()  # fail now, not at the first put, on a bad file
            self._adopt(tidy=True)
        _INSTANCES.add(self)

    # -- connection, fork -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._memory:
            target, uri = ":memory:", False
        elif self._create:
            target, uri = self._path, False
        else:
            target, uri = Path(self._path).resolve().as_uri() + "?mode=rw", True
        if not self._memory:
            self._make_private()
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._busy_timeout,
                isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT below
                check_same_thread=False,  # guarded by self._lock
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self.name}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL: a commit survives the process being killed, not an OS crash. FULL: the
            # WAL is fsynced at every commit, so a returned write survives power loss too.
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise OutboxError(f"cannot open outbox {self.name}: {exc}") from exc
        except OutboxError:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # One process creates the schema, the others wait. Statement by statement: executescript
        # would commit first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if version == 0 and not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            elif version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.name} has schema version {version}, newer than this "
                    f"tagengine's ({SCHEMA_VERSION}); upgrade tagengine to read it"
                )
            elif version != SCHEMA_VERSION or not {"entries", "dead_letters"} <= tables:
                raise OutboxError(f"{self.name} is not a tagengine outbox")
            else:  # a file of an earlier release gains what was added since (no-ops else)
                if "intake" not in tables:
                    conn.execute(_INTAKE_TABLE)
                if "counters" not in tables:
                    conn.execute(_COUNTERS_TABLE)
                if "held" not in tables:
                    conn.execute(_HELD_TABLE)
                    conn.execute(_HELD_INDEX)
                if "entries_created" not in tables:
                    conn.execute(_CREATED_INDEX)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _make_private(self) -> None:
        """Create the database file with mode 0600 if it is missing (SQLite then gives its
        ``-wal`` and ``-shm`` that mode too), and take group and other access away from
        existing ones, saying so."""
        if self._create:
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            except OSError:
                pass  # there already (or a missing folder, which SQLite reports)
            else:
                os.close(fd)  # SQLite takes an empty file for a new database
        made: list[str] = []
        for name in (self._path, f"{self._path}-wal", f"{self._path}-shm"):
            try:
                mode = os.stat(name).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode) or not mode & 0o077:
                continue
            try:
                os.chmod(name, 0o600)
            except OSError as exc:  # another user's file, say
                log.warning("outbox %s: %s is readable by others: %s", self.name, name, exc)
            else:
                made.append(name)
        if made:
            log.warning(
                "outbox %s: %s could be read by other users (it holds visitors' data): made "
                "private (mode 0600)",
                self.name,
                ", ".join(made),
            )

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise OutboxError(f"outbox {self.name} is closed")
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Forked without the at-fork hooks (by C code): drop the inherited connection. Safe only
        # if no transaction was open at the fork (SQLite's inherited lock state would make the
        # child's connection see "database is locked"); os.fork() always runs the hooks.
        if self._fork.forked():
            with _RESET_LOCK:
                if self._fork.forked():
                    self._after_fork_in_child()
        with self._lock:
            yield

    def _before_fork(self) -> None:
        self._lock.acquire()
        # Fork with no file connection open: the child then inherits no SQLite state (locks,
        # WAL index mapping) for this file. The parent reopens on its next operation.
        if not self._memory and self._conn is not None and not self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        if self._conn is not None:
            # Never use nor close the parent's connection here: closing would run SQLite's
            # unlock and checkpoint code against the parent's state. Keep it alive, unused.
            # An in-memory outbox starts empty in the child: the parent's entries stay the
            # parent's to deliver, not delivered twice.
            _ABANDONED.append(self._conn)
            self._conn = None
        self._pid = os.getpid()
        self._owner = f"{self._pid}:{uuid.uuid4().hex[:12]}"
        if self._journal is not None:
            self._journal.abandon()  # the parent's to read: it still holds the file
        self._reset_intake()
        self._fork.reset()  # last: until here, the other threads' uses wait or reset too

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably) before the block's caller continues."""
        with self._locked():
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._read_in = 0
                try:
                    self._ingest(conn)
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self._ingest_rolled_back()
                if isinstance(exc, sqlite3.Error | OSError):
                    raise OutboxError(f"outbox {self.name}: {exc}") from exc
                raise
            self._ingest_committed()

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        with self._locked():
            if self._unread():
                with self._write() as conn:
                    self._ingest_all(conn)  # a read sees every send appended before it
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.name}: {exc}") from exc

    # -- the intake journal -----------------------------------------------------------------

    def _reset_intake(self) -> None:
        """No journal yet (at construction and in a forked child)."""
        # Serializes appends, and a rotation or the close with them. Reentrant: the close
        # holds it while it reads the rest in. Order: the outbox's lock first, then this one.
        self._journal_lock = threading.RLock()
        self._journal: journal.JournalWriter | None = None
        self._journal_gen = 0
        # Offsets in self._journal: up to `_ingested` records are in `entries` (committed);
        # up to `_cursor` they are read into the open transaction (committed with it).
        self._ingested = 0
        self._cursor = 0
        # In memory: the appended records (header, body) not yet ingested, and those of them
        # the open transaction took.
        self._queued: list[Queued] = []
        self._taken: list[Queued] = []
        self._read_in = 0  # records read into the open transaction (for ingest's count)

    def _journal_path(self, generation: int) -> str:
        return f"{self._path}-intake-{self._owner.replace(':', '-')}-{generation}"

    def _unread(self) -> bool:
        box = self._journal
        return bool(self._queued) or (box is not None and box.end > self._ingested)

    def append_many(
        self, items: Iterable[tuple[Request, str]], *, now: float | None = None
    ) -> None:
        """Store several ``(request, session)`` sends, in order, behind the earlier sends of
        their sessions: the cheap write for a caller that does not need ids.

        For a file outbox the sends are copied into this process's intake journal
        (:mod:`engine.stores.journal`, mapped in memory; flushed to disk with ``synchronous="FULL"``),
        with the same durability as :meth:`put_many`; the next operation on the outbox (a worker's
        :meth:`claim`, or :meth:`ingest` in a process that only pushes) moves them into the
        database. Other processes see them then, or, if this process dies first, when they
        open the outbox, :meth:`adopt` or :meth:`recover`. Where there is no journal
        (Windows: :data:`engine.stores.journal.AVAILABLE`), this is :meth:`put_many`.
        """
        stamp = time.time() if now is None else now
        if not self._memory and not journal.AVAILABLE:
            self.put_many(list(items), now=stamp)  # no journal on this platform: a commit
            return
        if self._memory:
            # Nothing here crosses a disk: no frame, no checksum.
            records = queued_sends(items, stamp)
            if records:
                if self._closed or self._fork.forked():  # (else no call: every push's path)
                    self._check_open()
                with self._journal_lock:
                    self._queued.extend(records)
            return
        data = b"".join(_record(request, session, stamp) for request, session in items)
        if not data:
            return
        self._check_open()
        if self._journal is None:
            with self._locked():
                if self._journal is None:
                    self._start_journal()
        try:
            with self._journal_lock:
                box = self._journal
                if box is None:  # closed meanwhile (by another thread)
                    raise OutboxError(f"outbox {self.name} is closed")
                box.append(data)
        except OSError as exc:
            raise OutboxError(
                f"outbox {self.name}: cannot write the intake journal: {exc}"
            ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.name} is closed")
        if self._fork.forked():
            with self._locked():
                pass  # forked by C code: reset (see _locked)

    def _start_journal(self) -> journal.JournalWriter | None:
        """Create this process's next journal file and record it (called with the lock); the
        journal it replaces, read to its end, for the caller to :meth:`_discard` and close
        once appends go to the new one."""
        generation = self._journal_gen + 1
        path = self._journal_path(generation)
        try:
            writer = journal.JournalWriter(path, sync=self._synchronous == "FULL")
        except OSError as exc:
            raise OutboxError(f"outbox {self.name}: cannot create {path}: {exc}") from exc
        try:
            with self._write() as conn:
                # The replaced file's row stays, at its end, until the file is gone.
                conn.execute(
                    "INSERT OR REPLACE INTO intake (name, offset) VALUES (?, 0)",
                    (os.path.basename(path),),
                )
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        old, self._journal = self._journal, writer
        self._journal_gen, self._ingested, self._cursor = generation, 0, 0
        return old

    def _ingest(self, conn: sqlite3.Connection) -> None:
        """Move what this process appended into ``entries`` (inside a write transaction)."""
        if self._queued:
            with self._journal_lock:
                records, self._queued = self._queued, []
            self._taken.extend(records)
            conn.executemany(_INSERT, [_queued_row(record) for record in records])
            self._read_in += len(records)
            return
        if self._journal is not None:
            # A bounded slice per transaction: a backlog is read in over several claims rather
            # than in one long transaction that holds the lock (and the GIL) from the pushes.
            self._ingest_from(conn, self._journal, _INGEST_CHUNK)

    def _ingest_all(self, conn: sqlite3.Connection) -> None:
        """Read everything this process appended so far in: before an insert, which must come
        after it, and before a read, which must see it."""
        if self._journal is not None:
            self._ingest_from(conn, self._journal)

    def _ingest_from(
        self, conn: sqlite3.Connection, box: journal.JournalWriter, chunk: int | None = None
    ) -> None:
        """Move ``box``'s records from where reading stopped (at most ``chunk`` bytes of them,
        or one record if it is longer) into ``entries``, inside a write transaction. Read
        from the mapping: the process's own pages, whatever happens to the file's name."""
        start = self._cursor
        if box.end <= start:
            return
        stop = box.end if chunk is None else min(box.end, start + chunk)
        parsed = journal.parse(box.view(start, stop), final=stop == box.end)
        if not parsed.records and not parsed.skipped and stop < box.end:
            # One record longer than the slice: read it whole.
            length = journal.record_length(box.view(start, min(box.end, start + 64)))
            if length:
                stop = min(box.end, start + length)
                parsed = journal.parse(box.view(start, stop), final=stop == box.end)
        if (parsed.skipped or not parsed.records) and stop < box.end:
            # Bytes that are not records: this process writes whole records only, so
            # something else wrote there. The next record may lie past the slice; the end of
            # what was written is a record's end for sure.
            stop = box.end
            parsed = journal.parse(box.view(start, stop), final=True)
        skipped = [journal.Skipped(start + s.offset, s.data, False) for s in parsed.skipped]
        offset = start + parsed.end
        if stop == box.end and offset < stop:  # zeros where whole records were written
            skipped.append(journal.Skipped(offset, box.view(offset, stop), False))
            offset = stop
        if skipped:
            # Pass over them even if they cannot be kept: not stop delivering what follows.
            self._quarantine_chunks(box.path, skipped)
        conn.executemany(_INSERT, [_row(*record) for record in parsed.records])
        conn.execute(
            "UPDATE intake SET offset = ? WHERE name = ?", (offset, os.path.basename(box.path))
        )
        self._read_in += len(parsed.records)
        self._cursor = offset

    def _ingest_committed(self) -> None:
        self._ingested = self._cursor
        self._taken = []

    def _ingest_rolled_back(self) -> None:
        """The transaction's reads did not happen: read them again next time."""
        self._cursor = self._ingested
        if self._taken:
            with self._journal_lock:
                self._queued[:0] = self._taken
            self._taken = []

    def _maybe_rotate(self) -> None:
        """Start a new journal file once the current one is large and entirely read."""
        box = self._journal
        if box is None or self._ingested < _ROTATE_AT or box.end != self._ingested:
            return
        # Lock order, everywhere: the outbox's lock, then the journal's.
        with self._locked():
            with self._journal_lock:  # no append while the files change
                if self._journal is not box or box.end != self._ingested:
                    return
                try:
                    old = self._start_journal()
                except OutboxError:
                    return  # the current file serves on
            # Outside the journal's lock: pushes go on into the new file meanwhile.
            if old is not None:
                self._discard([old.path])
                old.close()

    def _checkpoint(self) -> bool:
        """Copy every committed transaction from the ``-wal`` into the database file, synced;
        whether it all went (no other connection held it back)."""
        try:
            # PASSIVE: never waits for the other connections (a FULL one waits out the busy
            # timeout while a deliverer of another process reads or writes, again and again,
            # with this process's claims held meanwhile); it says whether it got through.
            row = self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.info("outbox %s: checkpoint failed: %s", self.name, exc)
            return False
        # (busy, frames in the -wal, frames checkpointed); not in WAL mode: (0, -1, -1).
        return row is not None and row[0] == 0 and row[1] == row[2]

    def _discard(self, paths: Sequence[str]) -> None:
        """Delete journal files whose records are all committed to ``entries``, once the
        database file itself holds them (:meth:`_checkpoint`); else keep them, their
        ``intake`` rows at their ends, for a later adoption to delete."""
        if not paths:
            return
        if not self._checkpoint():
            log.info(
                "outbox %s: the database could not be checkpointed (a connection is reading): "
                "%s kept until a later try",
                self.name,
                ", ".join(paths),
            )
            return
        gone: list[str] = []
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("outbox %s: cannot delete %s: %s", self.name, path, exc)
                continue
            gone.append(os.path.basename(path))
        # Its row goes after the file (a crash in between leaves a row that _adopt_orphans
        # drops), never before: a file without a row is read again from its start.
        with contextlib.suppress(OutboxError), self._write() as conn:
            conn.executemany("DELETE FROM intake WHERE name = ?", [(name,) for name in gone])

    def _quarantine_chunks(self, source: str, chunks: list[journal.Skipped]) -> bool:
        """Append ``chunks``, passed over in the journal file ``source``, to the quarantine
        file, and say so; whether they are kept there."""
        target = cast(str, self._quarantine)
        size = sum(len(chunk.data) for chunk in chunks)
        try:
            journal.quarantine(target, os.path.basename(source), chunks)
        except OSError as exc:
            log.error(
                "outbox %s: %s: %d unreadable chunk(s), %d byte(s), could not be quarantined "
                "in %s: %s",
                self.name,
                source,
                len(chunks),
                size,
                target,
                exc,
            )
            return False
        torn = " (the last cut short at the end: a write its process died in)"
        log.warning(
            "outbox %s: %s: %d unreadable chunk(s), %d byte(s), quarantined in %s, not delivered%s",
            self.name,
            source,
            len(chunks),
            size,
            target,
            torn if chunks[-1].torn else "",
        )
        return True

    def _adopt_orphans(
        self, conn: sqlite3.Connection, orphans: Sequence[Path]
    ) -> tuple[int, list[str]]:
        """Move into ``entries`` what the dead processes' journals ``orphans`` (locked by
        this process) hold past what was read of them (inside a write transaction); how many
        records, and the files to :meth:`_discard` once it commits."""
        offsets = dict(conn.execute("SELECT name, offset FROM intake").fetchall())
        count = 0
        done: list[str] = []
        for path in orphans:
            offset = offsets.get(path.name)
            parsed = journal.read(path, 0 if offset is None else offset)
            # Kept before the journal can go. (Should this transaction fail, the next
            # adoption quarantines them again: twice rather than never.)
            if parsed.skipped and not self._quarantine_chunks(str(path), parsed.skipped):
                continue  # the journal stays, for a later try
            if offset is None and parsed.records:
                log.warning(
                    "outbox %s: %s has no intake row (lost with the -wal?): read from its "
                    "start, so sends already read in may go twice",
                    self.name,
                    path,
                )
            conn.executemany(_INSERT, [_row(*record) for record in parsed.records])
            conn.execute(
                "INSERT OR REPLACE INTO intake (name, offset) VALUES (?, ?)",
                (path.name, parsed.end),
            )
            count += len(parsed.records)
            done.append(str(path))
        own = None if self._journal is None else os.path.basename(self._journal.path)
        live = {path.name for path in journal.journal_files(self._path)}
        conn.executemany(
            "DELETE FROM intake WHERE name = ?",
            [(name,) for name in offsets if name not in live and name != own],
        )
        return count, done

    def _retire_journal(self) -> None:
        """At close: move what is left in this process's journal into ``entries`` and delete
        the file (:meth:`_discard`). If that fails, the file stays for the next process to
        adopt."""
        with self._journal_lock:  # no append while the file goes
            box, self._journal = self._journal, None
            if box is None and not self._queued:
                return
            try:
                with self._write() as conn:
                    if box is not None:
                        self._ingest_from(conn, box)
            except OutboxError:
                if box is not None:
                    box.close()
                return
        if box is not None:
            self._discard([box.path])
            box.close()

    def adopt(self) -> int:
        """Read in what dead processes left in their journals, and delete those journals once
        the database file holds it; how many sends. Each is read from where its process had
        read it in, or from its start when the database has no row for it (at-least-once:
        Edge de-duplicates on ``xdm._id``); what cannot be read is quarantined.

        Opening the outbox and :meth:`recover` do this too; a delivering process calls it
        every second or so. With nothing to adopt it costs a directory listing and a failed
        ``flock`` per running process's journal: no transaction.
        """
        if self._closed:
            raise OutboxError(f"outbox {self.name} is closed")
        with self._locked():
            return self._adopt()

    def _adopt(self, *, tidy: bool = False) -> int:
        """:meth:`adopt`; with ``tidy`` (at open), a transaction even without orphans, which
        drops the ``intake`` rows of journals that are gone."""
        if self._memory:
            return 0
        own = None if self._journal is None else os.path.basename(self._journal.path)
        held: dict[Path, int] = {}
        count = 0
        try:
            for path in journal.journal_files(self._path):
                fd = None if path.name == own else journal.lock_orphan(path)
                if fd is not None:
                    held[path] = fd
            if held or tidy:
                with self._write() as conn:
                    count, done = self._adopt_orphans(conn, list(held))
                self._discard(done)  # still locked: no one reads them meanwhile
        finally:
            for fd in held.values():
                os.close(fd)
        for path in journal.unfinished_files(self._path):
            with contextlib.suppress(OSError), journal.claim_orphan(path) as orphan:
                # Old, so not one a live process is making right now (not locked yet). It
                # never got its name, so nothing was appended to it.
                if orphan and time.time() - path.stat().st_mtime > _UNFINISHED_AFTER:
                    os.unlink(path)
        return count

    def ingest(self) -> int:
        """Move everything this process has appended (:meth:`append_many`) into ``entries``, in
        one transaction, where every process sees it; how many sends. With nothing to move
        (the usual case between pushes) it returns 0 without a transaction.

        Delivery reads a process's appends in as it claims; a process that only pushes calls
        this on a timer instead, so its sends reach the delivering processes while it runs
        (and do not pile up in its journal, which this rotates like a claim does).
        """
        if self._closed:
            raise OutboxError(f"outbox {self.name} is closed")
        if not self._fork.forked() and not self._unread():
            return 0
        with self._locked():
            with self._write() as conn:
                self._ingest_all(conn)
            count = self._read_in
        self._maybe_rotate()
        return count

    # -- writing ----------------------------------------------------------------------------

    def put(self, request: Request, session: str, *, now: float | None = None) -> int:
        """Store one send, due at once, behind the earlier sends of ``session``; its id.

        Committed when it returns (see the module docstring for what survives what).
        """
        params = _params(request, session, time.time() if now is None else now)
        with self._write() as conn:
            self._ingest_all(conn)  # behind what this process appended before
            rowid = conn.execute(_INSERT, params).lastrowid
        return cast(int, rowid)

    def put_many(
        self, items: Iterable[tuple[Request, str]], *, now: float | None = None
    ) -> list[int]:
        """Store several ``(request, session)`` sends in one transaction, in order; their ids.

        All or none are stored.
        """
        stamp = time.time() if now is None else now
        rows = [_params(request, session, stamp) for request, session in items]
        ids: list[int] = []
        with self._write() as conn:
            self._ingest_all(conn)  # behind what this process appended before
            for params in rows:
                ids.append(cast(int, conn.execute(_INSERT, params).lastrowid))
        return ids

    def claim(self, now: float | None = None, limit: int = 100) -> list[Entry]:
        """Mark up to ``limit`` due entries in flight and return them, oldest due first.

        At most one per session, always the session's lowest ``seq``, and none of a session
        that already has one in flight: deliver it, then :meth:`ack`, :meth:`retry_later` or
        :meth:`bury` it.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        stamp = time.time() if now is None else now
        with self._write() as conn:
            rows = conn.execute(_CLAIMABLE, {"now": stamp, "limit": limit}).fetchall()
            conn.executemany(
                "UPDATE entries SET state = 'inflight', claimed_at = ?, owner = ? WHERE id = ?",
                [(stamp, self._owner, row[0]) for row in rows],
            )
        self._maybe_rotate()
        return [_entry([*row[:-2], "inflight", None]) for row in rows]

    def claim_behind(
        self,
        entry: Entry,
        *,
        limit: int,
        select: Callable[[list[Entry]], int] | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        """Mark in flight, beside ``entry`` (claimed: in flight), the entries right behind it
        in its session, and return them: pending and due, in ``seq`` order, up to ``limit``,
        stopping at the first that is not; given ``select``, only the first
        ``select(those)`` of them (it runs inside the transaction). Sending several sends of
        a session as one request (an Edge collect batch) claims them so; settle each as
        :meth:`claim` says. The session stays blocked until every one is settled.
        """
        if limit < 1:
            return []
        stamp = time.time() if now is None else now
        with self._write() as conn:
            due = []
            for row in conn.execute(_BEHIND, (entry.session, entry.seq, limit)).fetchall():
                if row[-2] != "pending" or row[-4] > stamp:  # state, next_attempt_at
                    break
                due.append(_entry([*row[:-2], "inflight", None]))
            if select is not None and due:
                due = due[: max(select(due), 0)]
            for first in range(0, len(due), _IDS_PER_STATEMENT):
                some = [taken.id for taken in due[first : first + _IDS_PER_STATEMENT]]
                conn.execute(
                    "UPDATE entries SET state = 'inflight', claimed_at = ?, owner = ? "
                    f"WHERE id IN ({','.join('?' * len(some))})",
                    [stamp, self._owner, *some],
                )
        return due

    def ack(self, entry_id: int) -> bool:
        """Delivered: delete the entry. False if it was not in the outbox."""
        return self.ack_many([entry_id]) > 0

    def ack_many(self, ids: Iterable[int]) -> int:
        """Delivered: delete these entries in one transaction (one sync); how many were there."""
        chosen = sorted(set(ids))
        with self._write() as conn:
            count, heads = 0, []
            for first in range(0, len(chosen), _IDS_PER_STATEMENT):
                some = chosen[first : first + _IDS_PER_STATEMENT]
                marks = ",".join("?" * len(some))
                rows = conn.execute(
                    f"SELECT session, is_head FROM entries WHERE id IN ({marks})", some
                ).fetchall()
                conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", some)
                count += len(rows)
                heads += [session for session, is_head in rows if is_head]
            _rehead(conn, heads)
        return count

    def retry_later(self, entry_id: int, error: str, at: float) -> bool:
        """A failed attempt: count it, keep ``error``, make the entry pending again, due at
        ``at``. It keeps its place: later sends of its session wait for it. False if absent."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE entries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                " state = 'pending', claimed_at = NULL, owner = NULL WHERE id = ?",
                (error, at, entry_id),
            )
            return cursor.rowcount > 0

    def unclaim(self, ids: Iterable[int]) -> None:
        """Put claimed entries back to pending as they were (nothing was attempted)."""
        chosen = sorted(set(ids))
        if not chosen:
            return
        with self._write() as conn:
            for first in range(0, len(chosen), _IDS_PER_STATEMENT):
                some = chosen[first : first + _IDS_PER_STATEMENT]
                conn.execute(
                    "UPDATE entries SET state = 'pending', claimed_at = NULL, owner = NULL "
                    f"WHERE state = 'inflight' AND id IN ({','.join('?' * len(some))})",
                    some,
                )

    def bury(self, entry_id: int, error: str, *, now: float | None = None) -> bool:
        """A final failure: count the attempt and move the entry, with ``error``, to the dead
        letters in one transaction; its session's later sends become claimable. False if
        absent."""
        stamp = time.time() if now is None else now
        with self._write() as conn:
            moved = conn.execute(
                f"INSERT INTO dead_letters (id, {_COLUMNS}, failed_at) "
                f"SELECT id, {_columns(attempts='attempts + 1', last_error='?')}, ? "
                "FROM entries WHERE id = ?",
                (error, stamp, entry_id),
            ).rowcount
            if moved:
                session = _sessions(conn, "entries", " WHERE id = ?", [entry_id])
                conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
                _rehead(conn, session)
        return moved > 0

    def recover(self, *, older_than: float | None = None, now: float | None = None) -> int:
        """Put entries left in flight back to pending (at-least-once); how many. The journals
        of dead processes are adopted first (:meth:`adopt`).

        Without ``older_than``: the entries whose owner is gone, that is a process of this
        host that no longer runs (``os.kill(pid, 0)`` finds none) or an :class:`Outbox` of
        this process that was closed. A live owner's are left alone, so several delivering
        processes may share one file and each call this as it starts. (A pid reused by
        another process since makes a dead owner look alive; ``older_than`` covers that.
        Where liveness cannot be asked, on Windows, every owner but this process's open
        outboxes counts as gone: run one deliverer per file there.)

        With ``older_than`` (seconds, above the longest a send can take): the entries claimed
        that long ago, whoever claimed them, except this instance.

        Each counts as one failed attempt (``last_error`` says it was interrupted), so a send
        that crashes the process every time still exhausts its attempts.
        """
        stamp = time.time() if now is None else now
        sql = (
            "UPDATE entries SET state = 'pending', attempts = attempts + 1, claimed_at = NULL,"
            " owner = NULL, last_error = 'interrupted: the process stopped while the send was"
            " in flight', next_attempt_at = MIN(next_attempt_at, :now)"
            " WHERE state = 'inflight' AND (owner IS NULL OR owner != :owner)"
        )
        params: dict[str, Any] = {"owner": self._owner, "now": stamp}
        self.adopt()
        with self._write() as conn:
            if older_than is not None:
                sql += " AND claimed_at <= :cutoff"
                params["cutoff"] = stamp - older_than
            else:
                owners = conn.execute(
                    "SELECT DISTINCT owner FROM entries WHERE state = 'inflight'"
                ).fetchall()
                gone = [o for (o,) in owners if o is not None and not _owner_alive(o)]
                sql += " AND (owner IS NULL OR owner IN (SELECT value FROM json_each(:gone)))"
                params["gone"] = json.dumps(gone)
            count: int = conn.execute(sql, params).rowcount
        return count

    def revive(self, ids: Iterable[int] | None = None, *, now: float | None = None) -> int:
        """Move dead letters (all, or those ``ids``) back to pending, due at once, attempts
        reset, ids and places in their sessions kept; how many."""
        stamp = time.time() if now is None else now
        chosen = _id_list(ids)
        where, params = self._where(chosen)
        cols = _columns(attempts="0", next_attempt_at="?")
        with self._write() as conn:
            sessions = _sessions(conn, "dead_letters", where, params)
            count = conn.execute(
                f"INSERT INTO entries (id, {_COLUMNS}, state, is_head) "
                f"SELECT id, {cols}, 'pending', 0 FROM dead_letters{where} ORDER BY id",
                (stamp, *params),
            ).rowcount
            conn.execute(f"DELETE FROM dead_letters{where}", params)
            _rehead(conn, sessions)
        return count

    def purge(self, which: Which = "dead", ids: Iterable[int] | None = None) -> int:
        """Delete dead letters (``"dead"``), undelivered entries, in flight or not
        (``"pending"``), or both (``"all"``): all of them, or only ``ids``; how many."""
        if which not in ("dead", "pending", "all"):
            raise ValueError(f"which must be 'dead', 'pending' or 'all', not {which!r}")
        tables = {"dead": ["dead_letters"], "pending": ["entries"]}.get(
            which, ["entries", "dead_letters"]
        )
        where, params = self._where(_id_list(ids))
        with self._write() as conn:
            count = 0
            for table in tables:
                sessions = _sessions(conn, table, where, params) if table == "entries" else []
                count += conn.execute(f"DELETE FROM {table}{where}", params).rowcount
                _rehead(conn, sessions)
            return count

    @staticmethod
    def _where(ids: list[int] | None) -> tuple[str, list[Any]]:
        if ids is None:
            return "", []
        if not ids:
            return " WHERE 0", []
        # Bound as a JSON array: no limit on the number of SQL variables.
        return " WHERE id IN (SELECT value FROM json_each(?))", [json.dumps(ids)]

    # -- reading ----------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Entry]:
        """Undelivered entries (pending and in flight), by id."""
        return [
            _entry(row)
            for row in self._read(
                f"SELECT id, {_COLUMNS}, state, NULL FROM entries ORDER BY id LIMIT ?",
                (-1 if limit is None else limit,),
            )
        ]

    def dead(self, limit: int | None = None) -> list[Entry]:
        """Dead letters, by id."""
        return [
            _entry(row)
            for row in self._read(
                f"SELECT id, {_COLUMNS}, 'dead', failed_at FROM dead_letters ORDER BY id LIMIT ?",
                (-1 if limit is None else limit,),
            )
        ]

    def get(self, entry_id: int) -> Entry | None:
        """One entry or dead letter by id, or None."""
        rows = self._read(
            f"SELECT id, {_COLUMNS}, state, NULL FROM entries WHERE id = :id UNION ALL "
            f"SELECT id, {_COLUMNS}, 'dead', failed_at FROM dead_letters WHERE id = :id",
            {"id": entry_id},
        )
        return _entry(rows[0]) if rows else None

    def journaled(self) -> int:
        """How many sends other processes have appended to their intake journals and not read
        into this file yet: they join :meth:`pending` at those processes' next claim or
        :meth:`ingest` (or, for a dead process's, at the next :meth:`adopt`); this process's
        own are read in first."""
        if self._memory:
            return 0
        offsets = dict(self._read("SELECT name, offset FROM intake"))
        own = None if self._journal is None else os.path.basename(self._journal.path)
        return sum(
            journal.count(path, offsets.get(path.name, 0))
            for path in journal.journal_files(self._path)
            if path.name != own
        )

    def backlog(self, *, now: float | None = None) -> Backlog:
        """The outbox's figures (:class:`~engine.stores.base.Backlog`): cheap enough to call
        every second (counts over indexes, the oldest through ``entries_created``, a read of
        each running process's journal past what was read in, a ``stat`` of the quarantine
        file)."""
        pending, inflight, oldest, dead, dropped, held = self._read(
            "SELECT (SELECT COUNT(*) FROM entries),"
            " (SELECT COUNT(*) FROM entries WHERE state = 'inflight'),"
            " (SELECT MIN(created) FROM entries),"
            " (SELECT COUNT(*) FROM dead_letters),"
            " (SELECT value FROM counters WHERE name = 'consent_dropped'),"
            " (SELECT COUNT(*) FROM held)"
        )[0]
        stamp = time.time() if now is None else now
        return Backlog(
            pending=pending,
            inflight=inflight,
            oldest_age=None if oldest is None else max(0.0, stamp - oldest),
            dead=dead,
            journaled=self.journaled(),
            quarantined=self._quarantined_count(),
            consent_dropped=dropped or 0,
            held=held,
        )

    keeps_held = True

    def hold(self, items: Sequence[tuple[Request, str]], *, now: float, most: int) -> int:
        rows = [
            (session, serialize(stored_request(request), rule=request.rule), now)
            for request, session in items
        ]
        if not rows:
            return 0
        dropped = 0
        with self._write() as conn:
            conn.executemany("INSERT INTO held (session, send, created) VALUES (?, ?, ?)", rows)
            for session in {session for session, _, _ in rows}:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM held WHERE session = ?", (session,)
                ).fetchone()
                if count > most:  # the oldest go: the bound keeps a pending visitor's latest
                    conn.execute(
                        "DELETE FROM held WHERE id IN (SELECT id FROM held WHERE session = ? "
                        "ORDER BY id LIMIT ?)",
                        (session, count - most),
                    )
                    dropped += count - most
        return dropped

    def release_held(
        self,
        session: str,
        before: Sequence[Request],
        after: Sequence[Request],
        *,
        now: float,
    ) -> list[Request]:
        with self._write() as conn:
            self._ingest_all(conn)  # behind what this process appended before
            rows = conn.execute(
                "SELECT send FROM held WHERE session = ? ORDER BY id", (session,)
            ).fetchall()
            released = stored_requests([json.loads(send) for (send,) in rows])
            for request in (*before, *released, *after):
                conn.execute(_INSERT, _params(request, session, now))
            conn.execute("DELETE FROM held WHERE session = ?", (session,))
        return released

    def drop_held(self, session: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM held WHERE session = ?", (session,)).rowcount

    def count_consent_dropped(self, count: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES ('consent_dropped', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (count,),
            )

    @property
    def quarantine_path(self) -> str | None:
        """The file unreadable journal bytes are kept in (``<database>-quarantine``; it
        exists once something was quarantined), or ``None`` in memory."""
        return self._quarantine

    def quarantined(self) -> list[journal.Quarantined]:
        """The chunks in the quarantine file, oldest first (see :mod:`engine.stores.journal`
        for its format)."""
        return [] if self._quarantine is None else journal.quarantined(self._quarantine)

    def _quarantined_count(self) -> int:
        if self._quarantine is None:
            return 0
        try:
            info = os.stat(self._quarantine)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise OutboxError(f"outbox {self.name}: {exc}") from exc
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        seen = self._quarantine_seen
        if seen is None or seen[0] != key:  # read only when it changed
            try:
                seen = (key, len(journal.quarantined(self._quarantine)))
            except OSError as exc:
                raise OutboxError(f"outbox {self.name}: {exc}") from exc
            self._quarantine_seen = seen
        return seen[1]

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "inflight": n, "dead": n}``."""
        rows = self._read(
            "SELECT state, COUNT(*) FROM entries GROUP BY state UNION ALL "
            "SELECT 'dead', COUNT(*) FROM dead_letters"
        )
        out = {"pending": 0, "inflight": 0, "dead": 0}
        out.update({state: count for state, count in rows})
        return out

    def next_due(self) -> float | None:
        """When :meth:`claim` next has something, as things stand (None: nothing pending, or
        every session waits for a send in flight). A worker sleeps until then or an ack."""
        rows = self._read(
            "SELECT MIN(next_attempt_at) FROM entries AS e "
            "WHERE e.is_head = 1 AND e.state = 'pending' AND NOT EXISTS "
            "(SELECT 1 FROM entries WHERE session = e.session AND state = 'inflight')"
        )
        value: float | None = rows[0][0]
        return value

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; further calls raise :class:`OutboxError`. Idempotent."""
        with self._locked():
            if not self._closed and not self._fork.forked():
                self._retire_journal()
            self._closed = True
            _INSTANCES.discard(self)
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    conn.close()
                except sqlite3.Error as exc:  # pragma: no cover - close does not fail in practice
                    raise OutboxError(f"outbox {self.name}: {exc}") from exc

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({self.name!r})"


def _owner_alive(owner: str) -> bool:
    """Whether the claimer ``owner`` (``"pid:random"``, :attr:`Outbox._owner`) may still settle
    what it claimed: an open :class:`Outbox` of this process, or a process that runs."""
    pid_text, _, _ = owner.partition(":")
    if not (pid_text.isascii() and pid_text.isdigit()) or int(pid_text) <= 0:
        return False  # not one of ours: nobody will settle it
    pid = int(pid_text)
    if pid == os.getpid():
        while True:
            try:
                return any(box._owner == owner and not box._closed for box in list(_INSTANCES))
            except RuntimeError:  # another thread opened an outbox meanwhile: look again
                continue
    if sys.platform == "win32":  # os.kill(pid, 0) would stop it there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's, alive
        return True
    return True


# -- fork handling (module level: one set of hooks for every instance) -----------------------

_INSTANCES: weakref.WeakSet[Outbox] = weakref.WeakSet()
_ABANDONED: list[sqlite3.Connection] = []  # parents' connections, kept unused in a child
_RESET_LOCK = threading.Lock()
_HELD: list[Outbox] = []


def _before_fork() -> None:
    _RESET_LOCK.acquire()
    _HELD[:] = list(_INSTANCES)
    for outbox in _HELD:
        outbox._before_fork()


def _after_fork_in_parent() -> None:
    for outbox in reversed(_HELD):
        outbox._after_fork_in_parent()
    _HELD.clear()
    _RESET_LOCK.release()


def _after_fork_in_child() -> None:
    global _RESET_LOCK
    _RESET_LOCK = threading.Lock()
    for outbox in _HELD:
        outbox._after_fork_in_child()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
