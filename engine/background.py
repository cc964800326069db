"""Background delivery: a push returns once its sends are in the durable outbox, and worker
threads deliver them (docs/semantics.md, "Dispatch modes").

::

    background = BackgroundDelivery(
        Outbox("sends.db"), Dispatcher, sessions=engine.sessions, targets=lambda: targets
    )
    background.submit(result, session.id)  # committed to the outbox when it returns
    ...
    background.close(timeout=10)  # flush within the bound, then stop the workers

What the Python analytics SDKs lose (research notes: Segment, RudderStack, PostHog, Snowplow)
and what happens here instead:

- **No in-memory queue, no capacity.** :meth:`BackgroundDelivery.submit` writes every send of a
  push to the outbox in one transaction before it returns; a write that cannot be made (disk
  full) raises :class:`~engine.stores.OutboxError` to the caller. Nothing is dropped.
- **Crash.** A send leaves the outbox only when delivered (``ack``) or, with its last error,
  into the dead-letter table (``bury``). :meth:`BackgroundDelivery.start` puts what a killed
  process left in flight back to pending: at-least-once; Edge de-duplicates on ``xdm._id``.
- **Exit.** :meth:`BackgroundDelivery.close` (and an ``atexit`` hook, for instances nobody
  closed) flushes within a bounded time, interrupts retry waits, and stops the workers; what is
  not delivered stays in the outbox for the next start.
- **Fork.** An ``os.register_at_fork`` hook gives the child new locks, new worker threads and a
  new dispatcher (so a new HTTP client: the parent's connections are never used in the child).
- **Failures.** A retryable failure (the dispatcher's own retries ran out on a 429/5xx or a
  connection error) is rescheduled in the outbox with backoff (:class:`Redelivery`); a final
  refusal (a 400, say) or an exhausted budget goes to the dead letters with the last error.

What a push pays for the threads beside it: nothing it must wait for. :meth:`BackgroundDelivery.notify`
takes no lock (a ticket and a token on a queue), and a worker does not start a step (a
delivery, a claim) while a push of this process is in progress (``pushing``), waiting at most
one switch interval (5 ms) for it: a push gives the GIL away in C code that releases it (RE2
matching, a contended lock), and a worker that takes it then would keep it until the
interpreter takes it back, a switch interval later. Pushes back to back thus leave delivery
one step a switch interval, and delivery catches up in the pauses between them.

Per-session order: the outbox's ordering key is the session id, so at most one request of a
session is in flight, and its sends (Edge and Sitecore alike) go out in push order, as in wait
mode. That request is one send, or a run of the session's queued Edge collect sends merged
into one (:func:`~engine.destinations.edge.batch_collect`, claimed together with
:meth:`~engine.stores.Outbox.claim_behind`). One key per session rather than per (session,
destination), because both destinations' clients read and write the one ``Session.identity``
(Edge's state entries, Sitecore's browser id) and Edge wants one request in flight until the
visitor has an identity.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import queue
import random as _random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from engine.clients import DeliveryError
from engine.clients.edge import state_entries, with_state
from engine.destinations.base import Request
from engine.destinations.edge import MAX_BATCH_EVENTS, batch_collect
from engine.dispatch import Dispatcher, record_answer, refused
from engine.errors import DispatchError, EngineError, OutboxError
from engine.forks import ForkWatch
from engine.results import PushResult, Send
from engine.runtime import Targets, new_id
from engine.stores.base import BaseOutbox, Entry, Sessions
from engine.stores.memory import MemorySessions
from engine.stores.sqlite import Outbox
from engine.values import copy_json

__all__ = ["BackgroundDelivery", "Intake", "OnResult", "Redelivery"]

log = logging.getLogger("engine.background")

_FLUSH_CHECK = 0.005  # seconds between two looks at the outbox while flushing
_ACK_LINGER = 0.02  # seconds a delivered send may wait to be acknowledged with others
_IO_BOUND = 10.0  # wall time / CPU time of a delivery above which another thread helps
_BUSY = 0.8  # the process's CPU seconds per second above which threads would only share the GIL
_SAMPLE = 0.05  # seconds over which the process's CPU use is sampled
_GROW_EVERY = 0.05  # seconds between two added threads
_IDLE_EXIT = 30.0  # seconds a thread beyond the first waits for work before it stops
_SMOOTHING = 0.2  # weight of the latest delivery in the moving averages

_INTERRUPTED = "interrupted: delivery stopped during a retry wait"
_ADOPT_EVERY = 1.0  # seconds between two looks for what dead processes left behind
_STORE_RETRY_MIN = 0.05  # seconds before trying an unreachable store again, doubling...
_STORE_RETRY_MAX = 1.0  # ...up to this
_INTAKE_EVERY = 0.01  # seconds between two readings-in of a push-only process's journal (often:
# each reading-in then holds the GIL a short while, and a web app's tail latency stays low)
_UNGUARDED = contextlib.nullcontext()
_YIELD_POLL = 0.0002  # seconds between two looks at whether the pushes a worker yields to ended

_T = TypeVar("_T")

OnResult = Callable[[str, Send], None]
"""Called with ``(session_id, send)`` once per send, when it is delivered or buried."""


@dataclass(frozen=True, slots=True)
class Redelivery:
    """When a send whose in-process retries ran out on a retryable failure is tried again.

    Each delivery is one round (the dispatcher's :class:`~engine.clients.RetryPolicy` bounds the
    attempts inside it). After round ``n`` fails the send waits
    ``uniform(c / 2, c)`` with ``c = min(max_delay, base_delay * 2**(n - 1))``, or longer
    when the answer's ``Retry-After`` asks so; it is buried, with its last error, after
    ``max_rounds`` rounds or when its next round would come ``max_age`` seconds or more after
    it was submitted.
    """

    max_rounds: int = 10
    base_delay: float = 1.0
    max_delay: float = 300.0
    max_age: float = 86_400.0

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_age < 0:
            raise ValueError("delays and max_age cannot be negative")

    def delay(self, rounds: int, uniform: Callable[[float, float], float]) -> float:
        """The wait after ``rounds`` failed rounds (1 for the first)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(max(rounds - 1, 0), 64))
        return float(uniform(ceiling / 2, ceiling))


class _Halted(Exception):
    """Raised from a retry wait when delivery is stopping (never leaves this module)."""


def _retryable(failure: BaseException) -> bool:
    if isinstance(failure, DeliveryError):
        return failure.retryable
    # A refusal before sending (too large, no settings for the destination, a bad request):
    # the same bytes will be refused again.
    return not isinstance(failure, DispatchError | EngineError | ValueError)


class BackgroundDelivery:
    """Delivers the sends of pushes from ``outbox`` on ``workers`` threads.

    ``dispatcher_factory`` makes the :class:`~engine.dispatch.Dispatcher` whose HTTP client and
    retry policy are used; it is called once per process (again in a forked child), so it must
    make a new HTTP client each time. ``sessions`` and ``targets`` are the engine's session
    store and current destination settings. ``redelivery`` reschedules retryable failures.
    ``on_result(session_id, send)`` is called once per send when it is delivered or buried,
    on a worker thread (exceptions are logged). ``clock`` (epoch seconds) dates outbox entries.
    Up to ``batch`` due entries (each of a different session) are claimed in one transaction
    and shared by the workers; the delivered ones are acknowledged together, at the latest
    when the batch is done (a killed process may thus have made up to ``batch + workers``
    deliveries it had not acknowledged, an Edge collect batch counting as one: their sends
    are delivered again, as at-least-once allows). An Edge collect send takes the pending
    collect sends right behind it in its session into its request (up to 100 events and
    64 KB, :func:`~engine.destinations.edge.batch_collect`); they are settled together.
    ``stale_after`` seconds after a claim, an entry still in flight is taken to
    belong to a process that died (a forked child killed, say) and is put back to pending;
    ``poll_interval`` bounds how long an idle worker waits before looking at the outbox again
    (other processes may write to it). ``rewrite`` changes each request before it is sent
    (``tagengine deliver --edge URL``: another host than the one it was stored for).

    ``workers`` bounds the deliveries in flight. Delivery starts on one thread and adds one,
    up to ``workers``, whenever claimed sends are waiting while deliveries spend most of their
    time waiting on the network: a delivery's wall time over ``_IO_BOUND`` times its CPU time,
    while the process uses under ``_BUSY`` CPU seconds a second (else the wait was for the
    GIL, which more threads would only share more ways). Against Edge, with round trips of
    tens of milliseconds, that grows to about the events per second times the round-trip
    time; against a destination that answers at once (loopback), or in a process whose pushes
    keep the GIL busy, it stays small. A thread idle for ``_IDLE_EXIT`` seconds stops, down
    to one.

    One outbox file per application (its forked children included): :meth:`start` puts
    everything left in flight back to pending.
    """

    def __init__(
        self,
        outbox: BaseOutbox,
        dispatcher_factory: Callable[[], Dispatcher],
        *,
        sessions: Sessions,
        targets: Callable[[], Targets],
        workers: int = 16,
        flush_timeout: float = 10.0,
        redelivery: Redelivery | None = None,
        on_result: OnResult | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = 32,
        stale_after: float | None = 600.0,
        poll_interval: float = 1.0,
        random: Callable[[float, float], float] = _random.uniform,
        rewrite: Callable[[Request], Request] | None = None,
        start: bool = True,
    ) -> None:
        if workers < 1 or batch < 1:
            raise ValueError("workers and batch must be at least 1")
        if flush_timeout < 0 or poll_interval <= 0:
            raise ValueError("flush_timeout cannot be negative and poll_interval must be positive")
        if stale_after is not None and stale_after <= 0:
            raise ValueError("stale_after must be positive")
        self.outbox = outbox
        self.flush_timeout = flush_timeout
        self.redelivery = redelivery if redelivery is not None else Redelivery()
        self._factory = dispatcher_factory
        self._sessions = sessions
        self._targets = targets
        self._workers = workers
        self._batch = batch
        self._on_result = on_result
        self._clock = clock
        self._stale_after = stale_after
        self._poll = poll_interval
        self._random = random
        self._rewrite = rewrite
        self._started = False
        self._closing = False  # no new work
        self._stopping = False  # workers stop
        self._closed = False
        self._reset_threading()
        _INSTANCES.add(self)
        if start:
            self.start()

    def _reset_threading(self) -> None:
        """Fresh locks, no threads, no dispatcher (at construction and in a forked child)."""
        self._fork = ForkWatch()
        self._cond = threading.Condition(threading.Lock())
        # Idle workers wait here rather than on _cond, so that a push wakes one without a
        # lock a worker may hold (a pusher blocked on a lock hands the GIL to the delivery
        # thread, and waits up to a switch interval to get it back).
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._tickets = itertools.count(1)
        self.pushing: list[None] = []  # one item per push in progress (see _yield_to_pushes)
        self._guard = threading.Lock()  # held around every session-lock section (fork safety)
        self._guard_held = False
        self._halt = threading.Event()  # interrupts retry waits at shutdown
        self._clients_lock = threading.Lock()
        self._made: Dispatcher | None = None  # this process's, made on the first delivery
        self._threads: list[threading.Thread] = []
        self._wall = 0.0  # moving averages of a delivery's wall and CPU seconds
        self._cpu = 0.0
        self._load = 1.0  # moving average of the process's CPU seconds per second
        self._sampled = (time.monotonic(), time.process_time())
        self._grown_at = 0.0
        self._claimed: deque[Entry] = deque()  # claimed, not started yet
        self._claiming = False  # one worker claims at a time, for all
        self._acks: list[int] = []  # delivered, acknowledged together (_commit_acks)
        self._acks_since = 0.0
        self._running = 0
        # A new ticket each time sends are submitted or a session's head is acknowledged:
        # written without a lock, unique, so a worker that saw another knows there is work.
        self._work = 0
        self._progress = 0  # bumped when an entry leaves "in flight"
        self._idle = 0
        self._flushers = 0
        self._next_sweep = time.monotonic() + (self._stale_after or 0.0) / 2
        self._next_adopt = time.monotonic() + _ADOPT_EVERY
        self._spawn_pending = False  # a forked child starts its workers on first use

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Recover what a stopped process left in flight, then start the workers (idempotent)."""
        with self._cond:
            if self._closing:
                raise EngineError("background delivery is closed")
            started, self._started = self._started, True
        if started:
            self._ensure_workers()
            return
        recovered = self.outbox.recover(now=self._clock())
        if recovered:
            log.info("outbox %s: %d send(s) left in flight redelivered", self.outbox, recovered)
        self._spawn()

    def submit(self, result: PushResult, session_id: str) -> None:
        """Store every send of ``result`` and of its follow-ups, in order, in one write
        (durable when this returns), behind the earlier sends of ``session_id``.

        Call it under the session's lock, so that pushes of one session enter in push order.
        Raises :class:`~engine.errors.OutboxError` when the outbox cannot be written. (The
        engine stores a push's sends with the session instead, then :meth:`notify`.)
        """
        self.check_open()
        items = [
            (send.request, session_id)
            for outcome in (result, *result.followups)
            for send in outcome.sends
        ]
        if not items:
            return
        self.outbox.append_many(items, now=self._clock())
        self.notify()

    def check_open(self) -> None:
        """Raise :class:`~engine.errors.EngineError` once closing; start this process's
        workers if it is a forked child that has not yet."""
        if self._closing:
            raise EngineError("background delivery is closed")
        if self._spawn_pending or self._fork.forked():  # (else no call: every push's path)
            self._ensure_workers()

    def notify(self) -> None:
        """Sends were stored: wake a worker. Takes no lock, so a push never waits for a
        delivery thread. (The ticket is written before ``_idle`` is read, and a worker counts
        itself idle before it compares tickets: one of them sees the other.)"""
        self._work = next(self._tickets)
        if self._idle:
            self._bell.put(None)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the outbox holds nothing pending or in flight (dead letters aside), at
        most ``timeout`` seconds (default ``flush_timeout``); whether it got there.

        Do not call it from ``on_result``: it would wait for its own worker.
        """
        if not self._closing:
            self._ensure_workers()
        return self._wait_flushed(self.flush_timeout if timeout is None else timeout)

    def _wait_flushed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._progress
            checked = time.monotonic()
            # Cheap: SQLite reads the lowest id, through the primary key; Redis only what
            # this process stored (the outbox is shared: others' sends are theirs to flush).
            if self.outbox.drained():
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._running == 0 or self._stopping:
                return False
            with self._cond:
                if self._progress == seen:
                    self._flushers += 1
                    try:
                        self._cond.wait(min(left, self._poll))
                    finally:
                        self._flushers -= 1
            # At most one look every _FLUSH_CHECK seconds: a look takes the outbox's lock.
            pause = _FLUSH_CHECK - (time.monotonic() - checked)
            if pause > 0:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    def close(self, timeout: float | None = None, *, drain: bool = True) -> bool:
        """Stop taking new work, flush for at most ``timeout`` seconds (default
        ``flush_timeout``), then stop the workers and close the dispatcher; whether everything
        was delivered and every worker stopped in time. Undelivered sends stay in the outbox.
        ``drain=False`` does not wait for the outbox to empty (a delivery process stopping:
        the outbox is shared), only for the deliveries in flight, within ``timeout``.

        A retry wait is interrupted; an HTTP request in flight at the deadline is left to its
        timeouts on a daemon thread, and its send stays in flight until the next start.
        Idempotent. The outbox itself is not closed: it belongs to the caller.
        """
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        with self._cond:
            if self._closed:
                return False
            self._closing = True
        flushed = drain and self._wait_flushed(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._ring(len(self._threads))
        self._halt.set()
        with self._cond:
            unstarted, self._claimed = list(self._claimed), deque()
        self._release(unstarted)
        for thread in self._threads:
            thread.join(max(0.05, deadline - time.monotonic()))
        self._commit_acks(force=True)
        with self._cond:
            self._closed = True
            busy = self._running
        if busy:
            log.warning(
                "background delivery: %d worker(s) still delivering at the deadline; their "
                "sends stay in the outbox",
                busy,
            )
        else:
            self._close_clients()
        _INSTANCES.discard(self)
        return flushed and not busy

    @property
    def alive(self) -> int:
        """How many worker threads of this process are running."""
        return sum(thread.is_alive() for thread in self._threads)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<BackgroundDelivery {self.outbox!r} workers={self._workers}>"

    # ------------------------------------------------------------------ workers
    def _ensure_workers(self) -> None:
        """In a forked child, start this process's workers on first use."""
        if self._fork.forked():  # forked by code that skipped the at-fork hooks
            self._after_fork_in_child()
        if self._spawn_pending:
            with self._cond:
                spawn, self._spawn_pending = self._spawn_pending, False
            if spawn:
                self._spawn()

    def _spawn(self) -> None:
        """Start the first worker; :meth:`_grow` adds the others as deliveries need them."""
        with self._cond:
            if self._running:
                return
            self._running = 1
            # Started under the lock: close() never sees a thread it cannot join yet.
            self._new_thread().start()

    def _new_thread(self) -> threading.Thread:
        """A worker thread, counted and kept (the caller holds ``_cond`` and starts it)."""
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._run, name=f"tagengine-delivery-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        return thread

    def _grow(self, wall: float, cpu: float) -> None:
        """Take a delivery's times into the averages; add a worker when sends wait while the
        deliveries wait on the network."""
        with self._cond:
            self._wall += _SMOOTHING * (wall - self._wall)
            self._cpu += _SMOOTHING * (cpu - self._cpu)
            now = time.monotonic()
            since, used = self._sampled
            if now - since >= _SAMPLE:
                spent = time.process_time()
                self._load += _SMOOTHING * ((spent - used) / (now - since) - self._load)
                self._sampled = (now, spent)
            # A delivery that takes long while its thread used little CPU waited on the network
            # or on the GIL; only with CPU to spare in the process was it the network.
            if (
                not self._claimed
                or self._running >= self._workers
                or self._stopping
                or self._idle
                or self._wall < _IO_BOUND * self._cpu
                or self._load > _BUSY
                or now - self._grown_at < _GROW_EVERY
            ):
                return
            self._grown_at = now
            self._running += 1
            self._new_thread().start()

    def _run(self) -> None:
        busy = [time.monotonic()]  # when this thread last delivered
        retired = False
        try:
            while True:
                try:
                    outcome = self._cycle(busy)
                    if outcome != "go":
                        retired = outcome == "retire"
                        return
                except Exception as problem:
                    if isinstance(problem, OutboxError):  # Redis restarting, disk full: no trace
                        log.warning("background delivery: %s (retrying)", problem)
                    else:
                        log.exception("background delivery: worker error (retrying)")
                    with self._cond:
                        if not self._stopping:
                            self._cond.wait(self._poll)
        finally:
            self._commit_acks(force=True)  # what it delivered after close() committed
            with self._cond:
                if not retired:  # a retired thread was uncounted when it decided to go
                    self._running -= 1
                last = self._running == 0 and self._closed
            if last:
                self._close_clients()

    def _cycle(self, busy: list[float]) -> Literal["go", "stop", "retire"]:
        """Deliver one claimed entry, or claim a batch, or wait: ``"go"`` on, ``"stop"`` (the
        delivery is stopping) or ``"retire"`` (a spare thread, idle for long)."""
        self._yield_to_pushes()
        with self._cond:
            if self._stopping:
                return "stop"
            entry = self._claimed.popleft() if self._claimed else None
        if entry is not None:
            started, cpu = time.perf_counter(), time.thread_time()
            if self._deliver(entry):  # a failure's retry waits are no network round trip
                self._grow(time.perf_counter() - started, time.thread_time() - cpu)
            self._commit_acks(force=False)
            busy[0] = time.monotonic()
            return "go"
        # Nothing claimed is waiting: commit the acks, so that the next sends of the sessions
        # just delivered can be claimed (by this worker or the one claiming now).
        self._commit_acks(force=True)
        with self._cond:
            if self._stopping:
                return "stop"
            if self._claimed:
                return "go"
            waiting = self._claiming  # another worker is claiming, for all
            if waiting:
                self._idle += 1  # woken when the claim is shared out
            else:
                self._claiming = True
                seen = self._work
        if waiting:
            self._wait_for_work(self._poll)
            return "go"
        entries: list[Entry] = []
        try:
            self._sweep()
            entries = self.outbox.claim(now=self._clock(), limit=self._batch)
            due = None if entries else self.outbox.next_due()
        finally:
            with self._cond:
                self._claiming = False
                self._claimed.extend(entries)
                if entries:
                    self._ring(min(len(entries), self._idle))
        if entries:
            return "go"
        with self._cond:
            if self._stopping:
                return "stop"
            self._drain_bell()  # tokens rung before the tickets are compared are stale
            self._idle += 1  # before the comparison: a push that misses it sees this
            if self._work != seen or self._claimed:
                self._idle -= 1
                return "go"
            wait = self._poll
            if due is not None:
                wait = min(wait, max(due - self._clock(), 0.001))
            if self._running > 1 and time.monotonic() - busy[0] > _IDLE_EXIT:
                self._idle -= 1
                self._running -= 1  # decided and counted at once: never below one
                return "retire"  # a spare thread: the pool shrinks back
        self._wait_for_work(wait)
        return "go"

    def _wait_for_work(self, timeout: float) -> None:
        """Wait, counted in ``_idle`` (the caller counted it), until the bell rings or
        ``timeout`` seconds pass."""
        try:
            self._bell.get(timeout=timeout)
        except queue.Empty:
            pass
        finally:
            with self._cond:
                self._idle -= 1

    def _ring(self, count: int) -> None:
        """Wake up to ``count`` idle workers."""
        for _ in range(count):
            self._bell.put(None)

    def _drain_bell(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._bell.get_nowait()

    def _yield_to_pushes(self) -> None:
        """Let the pushes of this process in progress end before the next step (a delivery,
        a claim), waiting at most one switch interval: then go on regardless, so that pushes
        back to back still leave delivery a step at a time.

        A push holds the GIL from start to end but for moments in C code that lets go of it
        (RE2 matching, a contended lock); a delivery thread that takes it then keeps it until
        it lets go itself or the interpreter takes it back, a switch interval (5 ms) later,
        which the push waits out. So a worker does not start a step while a push runs.
        """
        if not self.pushing:
            return
        deadline = time.monotonic() + sys.getswitchinterval()
        pause = _YIELD_POLL
        while self.pushing and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Each look takes the GIL when a push lets go of it (RE2, a lock), and gives it
            # back: a context switch or two the push pays. Pushes back to back are looked at
            # a few times a switch interval, a short one soon.
            time.sleep(min(pause, left))
            pause *= 2

    def _commit_acks(self, *, force: bool) -> None:
        """Acknowledge the delivered entries in one transaction: when asked, else once there
        is a batch of them or the oldest has waited ``_ACK_LINGER`` seconds."""
        with self._cond:
            if not self._acks:
                return
            due = len(self._acks) >= self._batch
            if not (force or due or time.monotonic() - self._acks_since >= _ACK_LINGER):
                return
            acks, self._acks = self._acks, []
        try:
            self.outbox.ack_many(acks)
        except OutboxError as problem:
            # Acknowledged later: until then the sessions wait (not sent twice, not reordered).
            log.warning(
                "outbox %s: %d delivered send(s) not acknowledged yet: %s",
                self.outbox,
                len(acks),
                problem,
            )
            with self._cond:
                self._acks[:0] = acks
                self._acks_since = time.monotonic()
            self._halt.wait(_STORE_RETRY_MAX)
            return
        self._progressed(len(acks))

    def _sweep(self) -> None:
        """Read in what dead producer processes left in their journals (every second), and
        put back to pending what a dead process (a killed child) left in flight."""
        now = time.monotonic()
        if now >= self._next_adopt:
            self._next_adopt = now + _ADOPT_EVERY
            adopted = self.outbox.adopt()
            if adopted:
                log.info("outbox %s: %d send(s) of stopped processes read in", self.outbox, adopted)
        if self._stale_after is None or now < self._next_sweep:
            return
        with self._cond:
            now = time.monotonic()
            if now < self._next_sweep:
                return
            self._next_sweep = now + self._stale_after / 2
        recovered = self.outbox.recover(older_than=self._stale_after, now=self._clock())
        if recovered:
            log.warning(
                "outbox %s: %d send(s) in flight for over %gs put back to pending",
                self.outbox,
                recovered,
                self._stale_after,
            )

    def _release(self, entries: list[Entry], *, unclaim: bool = False) -> None:
        """Put claimed entries nobody will start back to pending (delivery is stopping);
        with ``unclaim``, as they were, no attempt counted."""
        if not entries:
            return
        if unclaim:
            with contextlib.suppress(OutboxError):
                self.outbox.unclaim([entry.id for entry in entries])
        else:
            for entry in entries:
                with contextlib.suppress(OutboxError):
                    self.outbox.retry_later(
                        entry.id, "released unsent: delivery stopped", self._clock()
                    )
        self._progressed(len(entries))

    def _deliver(self, entry: Entry) -> bool:
        """Deliver ``entry`` (with the Edge collect sends right behind it that can share its
        request: :meth:`_batch_behind`) and settle it; whether it went through at the first
        attempt (its time was then one round trip, no retry waits)."""
        try:
            held = self._stored(
                "reading the visitor's identity", self._sessions.identity, entry.session
            )
        except _Halted:
            self._release([entry], unclaim=True)
            return False
        base = {} if held is None else held
        identity: dict[str, Any] = copy_json(base)
        request, behind = self._batch_behind(entry, identity)
        entries = [entry, *behind]
        sends = [Send(rule=e.rule, destination=e.destination, request=e.request) for e in entries]
        failure = self._attempt(request, sends, identity)
        failures = [failure] * len(sends)
        if behind and refused(failure):
            # Edge refused the batch as a whole: one bad event must not sink the others, so
            # each goes again alone, in order, and is settled by its own answer.
            failures = [self._alone(send, identity) for send in sends]
        if held is not None:
            # Kept before the sends are acknowledged: the next send of the visitor, whichever
            # worker makes it, must carry the identity this answer gave.
            with contextlib.suppress(_Halted):
                self._stored(
                    "keeping the visitor's identity",
                    self._sessions.merge_identity,
                    entry.session,
                    base,
                    identity,
                )
        delivered = [e.id for e, failed in zip(entries, failures, strict=True) if failed is None]
        if delivered:
            with self._cond:
                if not self._acks:
                    self._acks_since = time.monotonic()
                self._acks.extend(delivered)
        finals = [True] * len(entries)
        if len(delivered) < len(entries):
            # One schedule for the batch: its sends stay together for the next round. The
            # followers stay in flight until settled, so nothing of the session is claimable
            # while some are settled and others not yet.
            at = self._clock() + self.redelivery.delay(entry.attempts + 1, self._random)
            asked = [f.retry_at for f in failures if isinstance(f, DeliveryError) and f.retry_at]
            at = max([at, *asked])  # never sooner than a Retry-After asked
            finals = [
                failed is None or self._settle(e, send, failed, at)
                for e, send, failed in zip(entries, sends, failures, strict=True)
            ]
            self._progressed(len(entries) - len(delivered))
        if self._on_result is not None:
            for final, send, e in zip(finals, sends, entries, strict=True):
                if not final:
                    continue
                try:
                    self._on_result(e.session, send)
                except Exception:
                    log.exception("background delivery: on_result raised")
        return failure is None and sends[0].attempts <= 1

    def _alone(self, send: Send, identity: dict[str, Any]) -> BaseException | None:
        """:meth:`_attempt` for one send of a refused batch; none once delivery is stopping."""
        if self._halt.is_set():
            record_answer([send], None, None, None, _INTERRUPTED, 0.0)
            return _Halted()
        return self._attempt(send.request, [send], identity)

    def _batch_behind(self, entry: Entry, identity: dict[str, Any]) -> tuple[Request, list[Entry]]:
        """The request to send for ``entry``, and the entries behind it whose events it
        carries too, claimed: when ``entry`` is an Edge collect send, those of the pending
        collect sends right behind it that share its request once their ``meta.state`` is
        brought up to date from ``identity`` (:func:`~engine.clients.with_state`: a batch
        packed to 64 KB must not grow past it when the client refreshes it), merged by
        :func:`~engine.destinations.edge.batch_collect`; else its own request, alone."""
        head = entry.request
        if entry.destination != "edge" or entry.kind != "collect":
            return head, []
        now = self._clock()
        merged = [head]

        def joining(behind: list[Entry]) -> int:
            entries = state_entries(identity, now)  # once: the identity is the batch's
            run = []
            for candidate in behind:
                if candidate.destination != "edge" or candidate.kind != "collect":
                    break
                run.append(with_state(candidate.request, identity, now, entries=entries))
            if not run:
                return 0
            head_now = with_state(head, identity, now, entries=entries)
            first = batch_collect([head_now, *run], request_id=new_id)[0]
            merged[0] = first.request
            return len(first.members) - 1

        try:
            behind = self.outbox.claim_behind(
                entry, limit=MAX_BATCH_EVENTS - 1, select=joining, now=now
            )
        except Exception:  # the head goes alone: a bad row behind it must not block it
            log.exception("outbox %s: sends behind %d not claimed", self.outbox, entry.id)
            return head, []
        return (merged[0] if behind else head), behind

    def _stored(self, doing: str, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` on the session store, again while the store cannot be reached (a
        Redis restart), backing off up to a second; :class:`_Halted` when delivery stops."""
        delay, warned = _STORE_RETRY_MIN, False
        while True:
            try:
                with self._guarded():
                    return call(*args)
            except OutboxError as problem:
                if not warned:
                    log.warning("background delivery: %s: %s (trying again)", doing, problem)
                    warned = True
            if self._halt.wait(delay):
                raise _Halted
            delay = min(delay * 2, _STORE_RETRY_MAX)

    def _guarded(self) -> contextlib.AbstractContextManager[object]:
        """Around a look at a session of this process's memory: no fork in the middle of its
        lock (the child would inherit it held). A shared store's sessions hold no lock here,
        and their reads are network round trips that other workers need not wait for."""
        return self._guard if isinstance(self._sessions, MemorySessions) else _UNGUARDED

    def _attempt(
        self, request: Request, sends: list[Send], identity: dict[str, Any]
    ) -> BaseException | None:
        """Deliver ``request``, which carries ``sends`` (one, or an Edge collect batch), with
        ``identity``; record the answer on each send; the failure, if any."""
        started = time.perf_counter()
        failure: BaseException
        if self._rewrite is not None:
            request = self._rewrite(request)
        try:
            return self._dispatcher().send(request, sends, identity, self._targets())
        except _Halted as problem:
            error, failure = _INTERRUPTED, problem
        except Exception as problem:  # not a known failure: logged, and retried like one
            log.exception("background delivery: rule %r: unexpected error", request.rule)
            error, failure = f"{type(problem).__name__}: {problem}", problem
        record_answer(sends, None, None, None, error, time.perf_counter() - started)
        return failure

    def _settle(self, entry: Entry, send: Send, failure: BaseException, at: float) -> bool:
        """Reschedule ``entry`` after ``failure`` (a retryable one: to ``at``) or bury it;
        True when its fate is final."""
        now = self._clock()
        error = send.error or "delivery failed"
        try:
            if isinstance(failure, _Halted):
                self.outbox.retry_later(entry.id, error, now)
                return False
            if not _retryable(failure):
                self.outbox.bury(entry.id, error, now=now)
                log.warning("outbox %s: send %d buried: %s", self.outbox, entry.id, error)
                return True
            rounds = entry.attempts + 1
            policy = self.redelivery
            # A next round due past max_age (a long Retry-After) would come too late.
            if rounds >= policy.max_rounds or max(now, at) - entry.created >= policy.max_age:
                error = f"{error} (gave up after {rounds} delivery round{'s' * (rounds != 1)})"
                self.outbox.bury(entry.id, error, now=now)
                log.warning("outbox %s: send %d buried: %s", self.outbox, entry.id, error)
                return True
            self.outbox.retry_later(entry.id, error, at)
            return False
        except OutboxError as problem:
            # Back to pending here (it goes again, at once) or, if even that cannot be
            # written, in flight until a sweep or the next start.
            log.error("outbox %s: send %d could not be settled: %s", self.outbox, entry.id, problem)
            with contextlib.suppress(OutboxError):
                self.outbox.unclaim([entry.id])
            return False

    def _progressed(self, count: int) -> None:
        """Entries left "in flight": wake a flush, and an idle worker (a session's next send
        may be claimable now, or a retry due sooner than it was waiting for)."""
        with self._cond:
            self._progress += count
            self._work = next(self._tickets)
            if self._flushers:
                self._cond.notify_all()
            if self._idle:
                self._bell.put(None)

    # ------------------------------------------------------------------ clients
    def _sleep(self, seconds: float) -> None:
        if self._halt.wait(seconds):
            raise _Halted

    def _dispatcher(self) -> Dispatcher:
        with self._clients_lock:
            if self._made is None:
                self._made = self._factory()
                self._made.sleep = self._sleep  # retry waits that close() can interrupt
            return self._made

    def _close_clients(self) -> None:
        with self._clients_lock:
            dispatcher, self._made = self._made, None
        if dispatcher is not None:
            dispatcher.close()

    # ------------------------------------------------------------------ fork
    def _before_fork(self) -> None:
        # No worker inside a session's lock at the fork: the child must not inherit one held.
        self._guard_held = self._guard.acquire(timeout=5.0)

    def _after_fork_in_parent(self) -> None:
        if self._guard_held:
            self._guard_held = False
            self._guard.release()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive a fork and the inherited locks may be held by them: start
        # over. The parent's HTTP client is kept, never used nor closed (closing would shut
        # the parent's connections); the child's first delivery makes its own dispatcher.
        # The workers start at the child's first submit or flush, not here: a child that
        # never uses the engine (a process pool's worker) claims nothing it could abandon.
        if self._made is not None:
            _ABANDONED.append(self._made)
        self._reset_threading()
        self._spawn_pending = self._started and not self._closing


class Intake:
    """In a process that only pushes (``Engine(deliver=False)``) on a SQLite file: reads what
    its pushes appended to their journal into the database every ``interval`` seconds, where
    the delivery processes (``tagengine deliver``) find it. A thread of its own, so a push
    never waits for it; pushes still return once their sends are in the journal."""

    def __init__(self, outbox: Outbox, interval: float = _INTAKE_EVERY) -> None:
        self.outbox = outbox
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tagengine-intake", daemon=True)

    @classmethod
    def start(cls, outbox: BaseOutbox) -> Intake | None:
        """An intake for ``outbox`` when it has a journal to read in (a SQLite file)."""
        if not isinstance(outbox, Outbox) or outbox.name == "<memory>":
            return None
        intake = cls(outbox)
        intake._thread.start()
        return intake

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.outbox.ingest()
            except OutboxError as problem:  # stays in the journal: read in at the next try
                log.error("outbox %s: reading the journal in failed: %s", self.outbox, problem)
            except Exception:
                log.exception("outbox %s: reading the journal in failed", self.outbox)

    def stop(self) -> None:
        """Stop; what is left is read in when the outbox closes."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)


# -- process-wide hooks (one set for every instance) -----------------------------------------

_INSTANCES: weakref.WeakSet[BackgroundDelivery] = weakref.WeakSet()
_ABANDONED: list[Dispatcher] = []  # the parent's dispatchers, kept unused in a forked child


def _before_fork() -> None:
    for background in list(_INSTANCES):
        background._before_fork()


def _after_fork_in_parent() -> None:
    for background in list(_INSTANCES):
        background._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for background in list(_INSTANCES):
        background._after_fork_in_child()


def _at_exit() -> None:
    """Flush (bounded) what nobody closed, before the daemon workers die with the process."""
    for background in list(_INSTANCES):
        if background._running and not background._fork.forked():
            background.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
atexit.register(_at_exit)
