"""The outbox on Redis Streams: sends of many producer processes, delivered by workers on any
host, in order per session, nothing lost when a worker dies.

Layout (``P`` is the URL's prefix, ``tagengine:`` by default)::

    P out:<i>      a stream per partition i (0..partitions-1); a session's sends all go to
                   partition crc32(session id) % partitions, in push order
    P retry:<i>    hash: stream id → attempts, next attempt time and last error of the
                   partition's sends that failed at least once (survives a worker's death)
    P lease:<i>    which worker delivers partition i now (a lease it renews, 10 s by default)
    P workers      sorted set: live workers and their last heartbeat
    P dead         the dead-letter stream: sends given up on, with the last error
    P meta         the partition count, fixed at first use

Producers add a push's sends with ``XADD`` in the same atomic step as the session
(:class:`~engine.stores.redis_sessions.RedisSessions`: one Lua script), or, with sessions
elsewhere, all of a push's sends in one ``MULTI``.

Workers read a partition through the consumer group ``tagengine``. Each live worker takes
its share of the partitions (``ceil(partitions / live workers)``) by lease, so one partition has
one consumer at a time and a session's sends go out one request at a time, in order, whichever
worker or host delivers them. A worker that stops lets its leases go at once; one killed
loses them when they expire, and whoever takes the partition next takes its pending entries
first (``XAUTOCLAIM``: at-least-once, the send in flight at the kill goes again; Edge
de-duplicates on ``xdm._id``), with the retry times and attempt counts it had recorded.
A delivered send is acknowledged and deleted (``XACK`` + ``XDEL``), so a stream's length is
its backlog; a final failure moves to ``P dead`` in one ``MULTI``.

Within a partition, a session whose head waits for a retry holds back only its own later
sends. A worker buffers up to ``buffer`` read entries per partition; a session with more
queued than that behind a retry waits slows its partition's reading until it drains.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import redis

from engine.destinations.base import Request, parse_bytes, serialize_bytes
from engine.errors import OutboxError
from engine.runtime import new_id
from engine.stores.base import Backlog, BaseOutbox, Entry, Which
from engine.stores.queued import send_header
from engine.stores.redis_client import RedisTarget, connect, translated

__all__ = ["RedisOutbox"]

log = logging.getLogger("engine.outbox")

GROUP = "tagengine"
_ID_SPAN = 1_000_000  # stream sequence numbers within one millisecond, in an entry's id
_BATCH_READ = 500  # entries read from a partition at a time

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Every write below is idempotent, so that the client's retry after a lost reply (one, on a
# connection error) cannot store a send twice or bury it twice.
# KEYS: a token key, then the stream of each send; ARGV: token ttl ms, then header, body.
_APPEND = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return {} end
local ids = {}
for i = 2, #KEYS do
  ids[#ids + 1] = redis.call('XADD', KEYS[i], '*', 'h', ARGV[2 * i - 2], 'b', ARGV[2 * i - 1])
end
return ids
"""
# KEYS: stream, dead letters, retry hash; ARGV: stream id, group, then the dead letter's
# fields and values.
_BURY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local letter = {}
for i = 3, #ARGV do letter[#letter + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(letter))
return 1
"""
# KEYS: dead letters, the session's stream; ARGV: dead letter id, header, body.
_REVIVE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'h', ARGV[2], 'b', ARGV[3])
return 1
"""
_TOKEN_TTL_MS = 60_000  # longer than a retry of one write can come (a 5 s timeout, once)


def encode(request: Request, session: str, now: float) -> tuple[bytes, bytes]:
    """A send as the two fields of its stream entry: header and body bytes."""
    try:
        head = serialize_bytes(send_header(request, session, now), rule=request.rule)
    except Exception as exc:
        raise OutboxError(f"rule {request.rule!r}: the send cannot be stored: {exc}") from exc
    return head, bytes(request.body_bytes)


def _stream_id(entry_id: int) -> tuple[int, str]:
    """The partition and stream id of a pending entry's id."""
    serial, partition = divmod(entry_id, 1000)
    ms, seq = divmod(serial, _ID_SPAN)
    return partition, f"{ms}-{seq}"


def _entry_id(stream_id: bytes | str, partition: int | None) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    serial = int(ms) * _ID_SPAN + int(seq or 0)
    return serial if partition is None else serial * 1000 + partition


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _created(stream_id: bytes | str) -> float:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.partition("-")[0]) / 1000


def _decode(
    stream_id: bytes,
    fields: dict[bytes, bytes],
    partition: int | None,
    retry: dict[str, Any] | None = None,
) -> Entry:
    header = parse_bytes(fields[b"h"])
    session, destination, rule, method, url, headers, body, kind, event_id, request_id, now = header
    body_bytes = fields.get(b"b", b"")
    retry = retry or {}
    dead = partition is None
    return Entry(
        id=_entry_id(stream_id, partition),
        session=session,
        seq=0,
        destination=destination,
        rule=rule,
        method=method,
        url=url,
        headers=tuple((str(k), str(v)) for k, v in headers),
        body=parse_bytes(body_bytes) if body is None else body,
        body_bytes=body_bytes,
        kind=kind,
        event_id=event_id,
        request_id=request_id,
        created=now,
        attempts=int(fields[b"a"]) if dead else int(retry.get("a", 0)),
        next_attempt_at=float(retry.get("n", 0.0)),  # not the producer's clock: hosts skew
        last_error=fields[b"e"].decode() if dead else retry.get("e"),
        state="dead" if dead else "pending",
        failed_at=float(fields[b"f"]) if dead else None,
    )


class _Partition:
    """What a worker holds of one partition: its read entries, per session, in order."""

    __slots__ = (
        "claimed",
        "index",
        "key",
        "lost",
        "queues",
        "releasing",
        "resync",
        "retry_key",
        "stream_ids",
    )

    def __init__(self, index: int, key: str, retry_key: str) -> None:
        self.index = index
        self.key = key
        self.retry_key = retry_key
        self.queues: dict[str, deque[Entry]] = {}  # session → its read, unsettled entries
        self.claimed: dict[str, set[int]] = {}  # session → ids of its entries in flight
        self.stream_ids: dict[int, tuple[bytes, str]] = {}  # entry id → stream id, session
        self.releasing = False  # to be handed over: nothing more claimed from it
        self.resync = False  # a read failed: read what this worker holds again (_resync)
        self.lost = False  # its lease ran out: kept only until what is in flight settles

    def size(self) -> int:
        return len(self.stream_ids)

    def add(self, stream_id: bytes, entry: Entry) -> None:
        self.queues.setdefault(entry.session, deque()).append(entry)
        self.stream_ids[entry.id] = (stream_id, entry.session)

    def find(self, entry_id: int) -> Entry | None:
        known = self.stream_ids.get(entry_id)
        for entry in self.queues.get(known[1], ()) if known else ():
            if entry.id == entry_id:
                return entry
        return None

    def settle(self, entry: Entry, replacement: Entry | None) -> None:
        """``entry`` is no longer in flight: gone (``None``) or back in its place."""
        queue = self.queues.get(entry.session)
        if queue is not None:
            for index, held in enumerate(queue):
                if held.id == entry.id:
                    if replacement is None:
                        del queue[index]
                    else:
                        queue[index] = replacement
                    break
            if not queue:
                del self.queues[entry.session]
        if replacement is None:
            self.stream_ids.pop(entry.id, None)
        claimed = self.claimed.get(entry.session)
        if claimed is not None:
            claimed.discard(entry.id)
            if not claimed:
                del self.claimed[entry.session]


class RedisOutbox(BaseOutbox):
    """An outbox in Redis Streams (see the module docstring), on ``url`` (or a connected
    :class:`~engine.stores.redis_client.RedisTarget`).

    A producer only adds sends (:meth:`append_many`, or the session store's atomic push).
    A worker (:class:`~engine.background.BackgroundDelivery`, ``tagengine deliver``)
    :meth:`claim`\\ s them: it joins the live workers and takes its share of the partitions,
    holding each by a lease of ``lease_ttl`` seconds that a thread of its own renews.
    """

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        lease_ttl: float = 10.0,
        buffer: int = 2000,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_ttl <= 0 or buffer < 1:
            raise ValueError("lease_ttl must be positive and buffer at least 1")
        self._target = connect(url) if isinstance(url, str) else url
        target = self._target
        self.name = f"redis {target.name}"
        self.lease_ttl = lease_ttl
        self._buffer = buffer
        self._clock = clock
        self.streams = [target.key("out", str(i)) for i in range(target.partitions)]
        self._retry_keys = [target.key("retry", str(i)) for i in range(target.partitions)]
        self._lease_keys = [target.key("lease", str(i)) for i in range(target.partitions)]
        self._dead_key = target.key("dead")
        self._workers_key = target.key("workers")
        self._meta_key = target.key("meta")
        self._renew_script = target.client.register_script(_RENEW)
        self._release_script = target.client.register_script(_RELEASE)
        self._append_script = target.client.register_script(_APPEND)
        self._bury_script = target.client.register_script(_BURY)
        self._revive_script = target.client.register_script(_REVIVE)
        self._fixed_consumer = consumer
        self._checked = False
        self._closed = False
        self._reset()
        _INSTANCES.add(self)

    def _reset(self) -> None:
        """No leases, nothing read (at construction and in a forked child)."""
        self._pid = os.getpid()
        self.consumer = self._fixed_consumer or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._held: dict[int, _Partition] = {}
        self._stored: dict[str, str] = {}  # stream → the last entry this process added to it
        self._maintained = -math.inf  # monotonic time of the last lease round
        self._renewed = -math.inf  # ...and of the last one that reached Redis
        self._lock = threading.RLock()  # new in a forked child: the parent's may be held
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def target(self) -> RedisTarget:
        return self._target

    def __repr__(self) -> str:
        return f"RedisOutbox({self._target.name!r})"

    # -- producing --------------------------------------------------------------------------

    def stream_key(self, session: str) -> str:
        return self.streams[self._target.partition(session)]

    def ensure_ready(self) -> None:
        """Check (once) that every process agrees on the partition count."""
        if self._checked:
            return
        client = self._target.client
        with translated(self._target, "reading the outbox's layout"):
            client.hsetnx(self._meta_key, "partitions", self._target.partitions)
            recorded = client.hget(self._meta_key, "partitions")
        if recorded is not None and int(recorded) != self._target.partitions:
            raise OutboxError(
                f"{self.name}: the outbox was made with partitions={int(recorded)}, not "
                f"{self._target.partitions}: every process must use the same"
            )
        self._checked = True

    def append_many(
        self, items: Iterable[tuple[Request, str]], *, now: float | None = None
    ) -> None:
        """Add sends, all or none (one script), each behind its session's earlier ones."""
        stamp = self._clock() if now is None else now
        keys = [self._target.key("token", new_id())]
        args: list[Any] = [_TOKEN_TTL_MS]
        for request, session in items:
            keys.append(self.stream_key(session))
            args.extend(encode(request, session, stamp))
        if len(keys) == 1:
            return
        self._check_open()
        self.ensure_ready()
        with translated(self._target, "storing sends"):
            ids = self._append_script(keys=keys, args=args)
        for key, stream_id in zip(keys[1:], ids or (), strict=False):
            self.stored(key, stream_id)

    def stored(self, stream: str, stream_id: bytes | str) -> None:
        """This process added entries to ``stream`` up to ``stream_id``: :meth:`drained`
        waits for them."""
        text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
        with self._lock:
            known = self._stored.get(stream)
            if known is None or _order(text) > _order(known):
                self._stored[stream] = text

    def drained(self) -> bool:
        """Whether every send this process stored is settled (delivered or dead-lettered),
        with all that other processes stored before them: what a flush waits for. The
        outbox is shared: sends others stored since are theirs to wait for."""
        with self._lock:
            marks = dict(self._stored)
        if not marks:
            return True
        with translated(self._target, "reading the outbox"):
            pipe = self._target.client.pipeline(transaction=False)
            for stream, mark in marks.items():
                pipe.xrange(stream, max=mark, count=1)
            answers = pipe.execute()
        left = {stream for stream, rows in zip(marks, answers, strict=True) if rows}
        with self._lock:
            for stream, mark in marks.items():
                if stream not in left and self._stored.get(stream) == mark:
                    del self._stored[stream]
        return not left

    # -- claiming ---------------------------------------------------------------------------

    def claim(self, now: float | None = None, limit: int = 100) -> list[Entry]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        stamp = self._clock() if now is None else now
        with self._lock:
            self._check_open()
            self._start_renewer()
            if time.monotonic() - self._maintained >= self.lease_ttl / 4:
                self._maintain()
            if time.monotonic() - self._renewed > self.lease_ttl * 0.8:
                return []  # the leases may have run out: claim nothing until renewed
            self._fill()
            chosen: list[Entry] = []
            held = list(self._held.values())
            random.shuffle(held)  # no partition starves the others
            for part in held:
                if part.releasing:
                    continue
                for session, queue in part.queues.items():
                    head = queue[0]
                    if session in part.claimed or head.next_attempt_at > stamp:
                        continue
                    head = replace(head, state="inflight")
                    queue[0] = head
                    part.claimed[session] = {head.id}
                    chosen.append(head)
                    if len(chosen) >= limit:
                        return chosen
            return chosen

    def claim_behind(
        self,
        entry: Entry,
        *,
        limit: int,
        select: Callable[[list[Entry]], int] | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        if limit < 1:
            return []
        stamp = self._clock() if now is None else now
        with self._lock:
            part = self._held.get(_stream_id(entry.id)[0])
            queue = part.queues.get(entry.session) if part is not None else None
            if part is None or not queue or queue[0].id != entry.id:
                return []
            due: list[Entry] = []
            for behind in list(queue)[1 : limit + 1]:
                if behind.next_attempt_at > stamp:
                    break
                due.append(replace(behind, state="inflight"))
            if select is not None and due:
                due = due[: max(select(due), 0)]
            for index, taken in enumerate(due, start=1):
                queue[index] = taken
                part.claimed.setdefault(entry.session, set()).add(taken.id)
            return due

    def _held_entry(self, entry_id: int) -> tuple[_Partition, Entry, bytes] | None:
        partition, _ = _stream_id(entry_id)
        part = self._held.get(partition)
        if part is None or entry_id not in part.stream_ids:
            return None
        entry = part.find(entry_id)
        return None if entry is None else (part, entry, part.stream_ids[entry_id][0])

    def ack_many(self, ids: Iterable[int]) -> int:
        """Delivered: acknowledge and delete, in one round trip; how many were held."""
        with self._lock:
            found = [held for held in map(self._held_entry, set(ids)) if held is not None]
            if not found:
                return 0
            by_part: dict[int, list[bytes]] = {}
            for part, _, stream_id in found:
                by_part.setdefault(part.index, []).append(stream_id)
            with translated(self._target, "acknowledging delivered sends"):
                pipe = self._target.client.pipeline(transaction=True)
                for index, stream_ids in by_part.items():
                    pipe.xack(self.streams[index], GROUP, *stream_ids)
                    pipe.xdel(self.streams[index], *stream_ids)
                    pipe.hdel(self._retry_keys[index], *stream_ids)
                pipe.execute()
            for part, entry, _ in found:
                part.settle(entry, None)
            return len(found)

    def retry_later(self, entry_id: int, error: str, at: float) -> bool:
        with self._lock:
            held = self._held_entry(entry_id)
            if held is None:
                return False
            part, entry, stream_id = held
            again = replace(
                entry,
                attempts=entry.attempts + 1,
                next_attempt_at=at,
                last_error=error,
                state="pending",
            )
            part.settle(entry, again)  # here first: this worker retries it in any case
            record = {"a": again.attempts, "n": at, "e": error}
            try:
                with translated(self._target, "recording a retry"):
                    self._target.client.hset(part.retry_key, stream_id, orjson.dumps(record))
            except OutboxError as problem:
                # Only a worker taking the partition over would miss it: it retries sooner.
                log.warning("%s: %s", self.name, problem)
            return True

    def bury(self, entry_id: int, error: str, *, now: float | None = None) -> bool:
        stamp = self._clock() if now is None else now
        with self._lock:
            held = self._held_entry(entry_id)
            if held is None:
                return False
            part, entry, stream_id = held
            head, body = encode(entry.request, entry.session, entry.created)
            letter = ["h", head, "b", body, "e", error, "f", repr(stamp), "a", entry.attempts + 1]
            self._move_to_dead(part, stream_id, letter, "moving a send to the dead letters")
            part.settle(entry, None)
            return True

    def unclaim(self, ids: Iterable[int]) -> None:
        """Put claimed entries back as they were, unsent, no attempt counted (a delivery that
        could not start): here only, so it cannot fail."""
        with self._lock:
            for held in map(self._held_entry, set(ids)):
                if held is not None:
                    part, entry, _ = held
                    part.settle(entry, replace(entry, state="pending"))

    def _move_to_dead(
        self, part: _Partition, stream_id: bytes, letter: list[Any], doing: str
    ) -> None:
        with translated(self._target, doing):
            self._bury_script(
                keys=[part.key, self._dead_key, part.retry_key],
                args=[stream_id, GROUP, *letter],
            )

    def recover(self, *, older_than: float | None = None, now: float | None = None) -> int:
        """Nothing to do: a worker taking a partition takes what its last worker left
        pending (module docstring)."""
        return 0

    def next_due(self) -> float | None:
        with self._lock:
            due = [
                queue[0].next_attempt_at
                for part in self._held.values()
                for session, queue in part.queues.items()
                if session not in part.claimed
            ]
        return min(due) if due else None

    # -- leases -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.name} is closed")
        if os.getpid() != self._pid:  # forked: the parent's leases and reads stay its own
            self._reset()

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(
                target=self._renew_loop, name="tagengine-outbox-leases", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        # Leases outlive a slow delivery: renewed here, not only between claims.
        while not self._stop.wait(self.lease_ttl / 4):
            try:
                with self._lock:
                    if self._closed:
                        return
                    self._maintain()
            except OutboxError as problem:
                log.warning("%s: renewing leases failed: %s", self.name, problem)
            except Exception:
                log.exception("%s: renewing leases failed", self.name)

    def _maintain(self) -> None:
        """Heartbeat, renew what is held, let go of more than a fair share, take up to it."""
        self.ensure_ready()
        self._maintained = time.monotonic()
        client = self._target.client
        ttl_ms = max(1, int(self.lease_ttl * 1000))
        now_ms = int(time.time() * 1000)
        with translated(self._target, "renewing the outbox leases"):
            pipe = client.pipeline(transaction=False)
            pipe.zadd(self._workers_key, {self.consumer: now_ms})
            pipe.zremrangebyscore(self._workers_key, 0, now_ms - 3 * ttl_ms)
            pipe.zcard(self._workers_key)
            for index in self._held:
                self._renew_script(
                    keys=[self._lease_keys[index]], args=[self.consumer, ttl_ms], client=pipe
                )
            answers = pipe.execute()
        for index, renewed in zip(list(self._held), answers[3:], strict=True):
            part = self._held[index]
            if renewed:
                part.lost = False
                continue
            if not part.lost:
                log.warning(
                    "%s: lease of partition %d lost (Redis unreachable too long, or this "
                    "process stalled): %d send(s) in flight finish here, nothing more is "
                    "claimed from it",
                    self.name,
                    index,
                    sum(len(ids) for ids in part.claimed.values()),
                )
            # Kept, unclaimable, until what is in flight settles: taken back meanwhile, its
            # sends in flight would be handed out a second time.
            part.lost = part.releasing = True
            if not part.claimed:
                del self._held[index]
        self._renewed = time.monotonic()
        share = math.ceil(len(self.streams) / max(1, int(answers[2])))
        extra = len(self._held) - share
        # Those already on their way out first, so that each round drains the same ones.
        for index in sorted(self._held, key=lambda i: not self._held[i].releasing):
            if extra <= 0:
                break
            part = self._held[index]
            part.releasing = True  # claim nothing more from it; handed over once settled
            if not part.claimed and not part.lost:
                self._let_go(index)
            extra -= 1
        if extra < 0:
            for part in self._held.values():
                part.releasing = part.lost  # a worker left meanwhile: keep it after all
        if len(self._held) < share:
            free = [i for i in range(len(self.streams)) if i not in self._held]
            random.shuffle(free)
            for index in free:
                if len(self._held) >= share:
                    break
                with translated(self._target, "taking an outbox lease"):
                    taken = client.set(self._lease_keys[index], self.consumer, nx=True, px=ttl_ms)
                if taken:
                    self._take(index)

    def _let_go(self, index: int) -> None:
        """Hand a partition over: its read entries stay pending in the group, for the next
        worker to take (XAUTOCLAIM) in order."""
        del self._held[index]
        with translated(self._target, "releasing an outbox lease"):
            self._release_script(keys=[self._lease_keys[index]], args=[self.consumer])

    def _take(self, index: int) -> None:
        """Start delivering partition ``index``: first what its last worker left pending."""
        key, client = self.streams[index], self._target.client
        part = _Partition(index, key, self._retry_keys[index])
        try:
            with translated(self._target, "taking over an outbox partition"):
                with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
                    client.xgroup_create(key, GROUP, id="0", mkstream=True)
                retries = {k: orjson.loads(v) for k, v in client.hgetall(part.retry_key).items()}
                start: bytes | str = "0-0"
                taken = 0
                while True:
                    answer = client.xautoclaim(
                        key, GROUP, self.consumer, min_idle_time=0, start_id=start, count=1000
                    )
                    start, claimed = answer[0], answer[1]
                    for stream_id, fields in claimed:
                        if not fields:
                            continue
                        try:
                            part.add(stream_id, self._read(stream_id, fields, index, retries))
                        except OutboxError as problem:  # dead-lettered, never blocks the rest
                            log.error("%s", problem)
                            self._quarantine(part, stream_id, fields, str(problem))
                            continue
                        taken += 1
                    if start in (b"0-0", "0-0"):
                        break
        except OutboxError:
            with contextlib.suppress(OutboxError):
                self._let_go_lease(index)
            raise
        self._held[index] = part
        if taken:
            log.info("%s: partition %d taken over with %d pending send(s)", self.name, index, taken)

    def _let_go_lease(self, index: int) -> None:
        with translated(self._target, "releasing an outbox lease"):
            self._release_script(keys=[self._lease_keys[index]], args=[self.consumer])

    def _read(
        self,
        stream_id: bytes,
        fields: dict[bytes, bytes],
        index: int,
        retries: dict[bytes, Any] | None = None,
    ) -> Entry:
        retry = retries.get(stream_id) if retries else None
        try:
            return _decode(stream_id, fields, index, retry)
        except (KeyError, ValueError, TypeError) as exc:
            # Not a send this engine wrote: dead-lettered as it is, never delivered.
            raise OutboxError(f"{self.name}: entry {stream_id!r} is unreadable: {exc}") from exc

    def _fill(self) -> None:
        """Read new entries of the held partitions that have room, in one round trip."""
        for part in list(self._held.values()):
            if part.resync:
                self._resync(part)
        wanting = [part for part in self._held.values() if part.size() < self._buffer]
        if not wanting:
            return
        streams = {part.key: ">" for part in wanting}
        try:
            with translated(self._target, "reading the outbox"):
                answer = self._target.once.xreadgroup(
                    GROUP, self.consumer, streams, count=_BATCH_READ
                )
        except OutboxError as problem:
            for part in wanting:  # the read may have been made and its answer lost
                part.resync = True
            if "NOGROUP" not in str(problem):
                raise
            for part in wanting:  # purged meanwhile: the group goes with the stream
                with contextlib.suppress(OutboxError), translated(self._target, "re-creating"):
                    self._target.client.xgroup_create(part.key, GROUP, id="0", mkstream=True)
            return
        by_key = {part.key: part for part in wanting}
        for key, entries in answer or []:
            part = by_key[key.decode() if isinstance(key, bytes) else key]
            for stream_id, fields in entries:
                try:
                    part.add(stream_id, self._read(stream_id, fields, part.index))
                except OutboxError as problem:
                    log.error("%s", problem)
                    part.resync = True  # if the quarantine fails, what follows is read again
                    self._quarantine(part, stream_id, fields, str(problem))
                    part.resync = False

    def _resync(self, part: _Partition) -> None:
        """Read again what this worker was handed of ``part`` and has not settled, in order:
        a read whose answer was lost handed out entries this worker never saw (they are its
        own, pending in the group, and no other read returns them)."""
        with translated(self._target, "reading the outbox again"):
            answer = self._target.once.xreadgroup(
                GROUP, self.consumer, {part.key: "0"}, count=self._buffer + _BATCH_READ
            )
            retries = {
                k: orjson.loads(v) for k, v in self._target.client.hgetall(part.retry_key).items()
            }
        fresh = _Partition(part.index, part.key, part.retry_key)
        fresh.releasing = part.releasing
        for _, rows in answer or []:
            for stream_id, fields in rows:
                if not fields:
                    continue  # deleted meanwhile (acknowledged, purged)
                known = part.find(_entry_id(stream_id, part.index))
                try:
                    entry = known or self._read(stream_id, fields, part.index, retries)
                except OutboxError as problem:
                    log.error("%s", problem)
                    self._quarantine(part, stream_id, fields, str(problem))
                    continue
                fresh.add(stream_id, entry)
        for session, ids in part.claimed.items():  # in flight: still, if still held
            ids = {i for i in ids if i in fresh.stream_ids}
            if ids:
                fresh.claimed[session] = ids
        self._held[part.index] = fresh

    def _quarantine(
        self, part: _Partition, stream_id: bytes, fields: dict[bytes, bytes], why: str
    ) -> None:
        letter: list[Any] = [x for k, v in fields.items() if k in (b"h", b"b") for x in (k, v)]
        letter += ["e", why, "f", repr(self._clock()), "a", 0, "unreadable", 1]
        self._move_to_dead(
            part, stream_id, letter, "moving an unreadable entry to the dead letters"
        )

    # -- reading and managing ---------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Entry]:
        """Undelivered sends (in flight included), oldest first."""
        count = 10_000_000 if limit is None else limit
        client = self._target.client
        with translated(self._target, "reading the outbox"):
            pipe = client.pipeline(transaction=False)
            for key in self.streams:
                pipe.xrange(key, count=count)
            answers = pipe.execute()
        entries: list[Entry] = []
        for index, rows in enumerate(answers):
            for stream_id, fields in rows:
                try:
                    entries.append(_decode(stream_id, fields, index))
                except (KeyError, ValueError, TypeError):  # a worker will dead-letter it
                    log.error("%s: pending entry %r is unreadable", self.name, stream_id)
        entries.sort(key=lambda e: (e.created, e.id))
        return entries[:count]

    def dead(self, limit: int | None = None) -> list[Entry]:
        with translated(self._target, "reading the dead letters"):
            rows = self._target.client.xrange(
                self._dead_key, count=10_000_000 if limit is None else limit
            )
        entries = []
        for stream_id, fields in rows:
            try:
                entries.append(_decode(stream_id, fields, None))
            except (KeyError, ValueError, TypeError):
                log.error("%s: dead letter %r is unreadable", self.name, stream_id)
        return entries

    def revive(self, ids: Iterable[int] | None = None, *, now: float | None = None) -> int:
        """Put dead letters back at the end of their sessions' queues, attempts reset."""
        wanted = None if ids is None else set(ids)
        with translated(self._target, "reviving dead letters"):
            rows = self._target.client.xrange(self._dead_key)
            pipe = self._target.client.pipeline(transaction=False)
            for stream_id, fields in rows:
                if wanted is not None and _entry_id(stream_id, None) not in wanted:
                    continue
                if b"unreadable" in fields:
                    continue  # no send to make of it
                session = parse_bytes(fields[b"h"])[0]
                self._revive_script(
                    keys=[self._dead_key, self.stream_key(session)],
                    args=[stream_id, fields[b"h"], fields[b"b"]],
                    client=pipe,
                )
            # Each letter moves once, even if two operators revive it at the same moment.
            return sum(int(moved) for moved in pipe.execute())

    def purge(self, which: Which = "dead", ids: Iterable[int] | None = None) -> int:
        if which not in ("dead", "pending", "all"):
            raise ValueError(f"which must be 'dead', 'pending' or 'all', not {which!r}")
        wanted = None if ids is None else set(ids)
        client = self._target.client
        count = 0
        with translated(self._target, "purging the outbox"):
            if which in ("dead", "all"):
                rows = client.xrange(self._dead_key)
                chosen = [
                    sid for sid, _ in rows if wanted is None or _entry_id(sid, None) in wanted
                ]
                if chosen:
                    count += int(client.xdel(self._dead_key, *chosen))
            if which in ("pending", "all"):
                for index, key in enumerate(self.streams):
                    rows = client.xrange(key)
                    chosen = [
                        sid for sid, _ in rows if wanted is None or _entry_id(sid, index) in wanted
                    ]
                    if chosen:
                        pipe = client.pipeline(transaction=True)
                        with contextlib.suppress(redis.ResponseError):
                            pipe.xack(key, GROUP, *chosen)
                        pipe.xdel(key, *chosen)
                        pipe.hdel(self._retry_keys[index], *chosen)
                        count += int(pipe.execute()[1])
        return count

    def backlog(self) -> Backlog:
        client = self._target.client
        with translated(self._target, "reading the outbox's backlog"):
            pipe = client.pipeline(transaction=False)
            for key in self.streams:
                pipe.xlen(key)
                pipe.xrange(key, count=1)
            pipe.xlen(self._dead_key)
            pipe.get(self._target.key("consent_dropped"))
            answers = pipe.execute()
            dropped = int(answers.pop() or 0)
            inflight = 0
            for key in self.streams:
                with contextlib.suppress(redis.ResponseError):  # no group yet
                    summary = client.xpending(key, GROUP)
                    inflight += int(summary.get("pending", 0) if summary else 0)
        lengths = answers[0:-1:2]
        firsts = [rows[0][0] for rows in answers[1:-1:2] if rows]
        oldest = min((_created(sid) for sid in firsts), default=None)
        return Backlog(
            pending=sum(int(n) for n in lengths),
            inflight=inflight,
            oldest_age=None if oldest is None else max(0.0, self._clock() - oldest),
            dead=int(answers[-1]),
            consent_dropped=dropped,
        )

    def count_consent_dropped(self, count: int) -> None:
        with translated(self._target, "counting sends dropped for consent"):
            self._target.client.incrby(self._target.key("consent_dropped"), count)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Hand every held partition over at once (the next worker need not wait for the
        leases to expire) and leave the live workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            if os.getpid() != self._pid:
                return
            with contextlib.suppress(OutboxError, redis.RedisError):
                for index, part in list(self._held.items()):
                    # One with sends still in flight is left to expire: handed over now, they
                    # would go again while the first request may still land.
                    if not part.claimed and not part.lost:
                        self._let_go(index)
                self._target.client.zrem(self._workers_key, self.consumer)

    def held(self) -> list[int]:
        """The partitions this worker delivers now."""
        with self._lock:
            return sorted(self._held)


def fields_of(items: Sequence[tuple[Request, str]], now: float) -> list[bytes]:
    """The XADD arguments of sends, flattened (header, body, header, body, ...)."""
    flat: list[bytes] = []
    for request, session in items:
        flat.extend(encode(request, session, now))
    return flat


_INSTANCES: weakref.WeakSet[RedisOutbox] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for outbox in list(_INSTANCES):
        outbox._reset()  # the parent's leases, reads and locks are not the child's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
