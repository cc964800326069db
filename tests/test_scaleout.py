"""The scale-out acceptance test: real processes and a real ``redis-server`` on loopback.

3 producer processes (``Engine(..., deliver=False)`` on Redis sessions) take the pushes of 100
visitors' journeys, interleaved, each push to a random producer (no stickiness), one push at a
time per visitor; 2 ``tagengine deliver`` workers deliver to the emulator. Mid-stream, one
producer and one deliverer are killed with SIGKILL and replaced, and Redis (AOF on) is
restarted once. Then: the emulator has received exactly the sends a dry run of the same pushes
builds, each at least once (duplicates only those a killed deliverer had in flight, told apart
by ``xdm._id``), in order per visitor, with one ECID and one Sitecore browser id per session.

A push whose outcome is unknown (in flight to the killed producer, or failed while Redis was
down: the script may have run and its answer been lost) is re-sent only when the session in
Redis does not have it (its ``n`` is not the state's), so each push is applied exactly once.
How received sends are compared with the dry run: tests/scaleout_support.py.
"""

from __future__ import annotations

import itertools
import json
import queue
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.emulator import EmulatorServer, emulator_config
from engine.errors import OutboxError
from engine.loader import load_ruleset
from engine.stores import RedisOutbox, RedisSessions
from engine.stores.redis_outbox import GROUP
from tests.redis_fixture import RedisServer
from tests.scaleout_support import (
    UNLOADING,
    Producer,
    Received,
    expected_sends,
    first_lines,
    journeys,
    log_tail,
    received_sends,
    sequence_diff,
    start_deliverer,
    write_rules,
)

VISITORS = 100
PUSHES = 10  # per visitor
RATE = 100.0  # pushes per second: the stream lasts ~10 s, long enough for the chaos
LEASE = 2.0  # deliverers' lease (s): a killed one's partitions come back after it
REDIS_DOWN = 0.5  # seconds Redis stays down at its restart: pushes meet it down
HOLD = 1.5  # seconds the emulator holds its answers while a deliverer is killed
PRODUCER_THREADS = 4  # request threads of a producer process
PRODUCER_KILL_AT, DELIVERER_KILL_AT, REDIS_RESTART_AT = 0.25, 0.45, 0.65  # of pushes done
DEADLINE = 50.0  # seconds for the stream
# The drain: a killed deliverer's leases expire after LEASE and it leaves the live workers
# (the fair share) after 3 × LEASE, then its partitions are delivered at once.
DRAIN_DEADLINE = 30.0


@dataclass
class Visitor:
    id: str
    pushes: list[dict[str, Any]]
    next: int = 0  # pushes stored (acknowledged or found in Redis)
    request: int | None = None  # the request in flight
    uncertain: bool = False  # the last push may or may not be stored
    wait_for: str | None = None  # a killed producer whose connections must be gone first
    producers: set[str] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return self.next >= len(self.pushes)


@dataclass
class Chaos:
    """What was done to the processes, and when (epoch seconds)."""

    phase: int = 0
    since: float = 0.0  # monotonic start of the current phase
    producer_killed_at: float = 0.0
    producer_outstanding: int = 0  # requests in flight to it when killed
    deliverer_killed_at: float = 0.0
    deliverer_held: int = 0  # its requests the emulator had received and not answered
    deliverer_partitions: set[int] = field(default_factory=set)
    redis_down: tuple[float, float] = (0.0, 0.0)
    redis_thread: threading.Thread | None = None
    redis_error: BaseException | None = None


class Driver:
    """Sends the journeys' pushes to the producers, keeps the chaos plan, resolves the pushes
    whose outcome is unknown."""

    def __init__(
        self,
        plan: dict[str, list[dict[str, Any]]],
        redis: RedisServer,
        rules: Path,
        emulator: EmulatorServer,
        logs: Path,
    ) -> None:
        self.visitors = {v: Visitor(v, pushes) for v, pushes in plan.items()}
        self.total = sum(len(p) for p in plan.values())
        self.redis = redis
        self.rules = rules
        self.emulator = emulator
        self.logs = logs
        self.events: queue.Queue[tuple[str, dict[str, Any] | None]] = queue.Queue()
        self.producers: dict[str, Producer] = {}
        self.deliverers: dict[str, subprocess.Popen[bytes]] = {}
        self.requests: dict[int, tuple[str, str]] = {}  # id → (visitor, producer)
        self.next_id = 0
        self.acked = 0
        self.sent = 0
        self.errors: list[str] = []  # error answers of producers (Redis down)
        self.found_stored = 0  # unknown outcomes: the push was in Redis
        self.resent = 0  # unknown outcomes: it was not, sent again
        self.chaos = Chaos()
        self.rng = random.Random(11)
        # No retries: while Redis is down the driver must go on sending pushes, not wait.
        self.client = redis_py.Redis(
            host="127.0.0.1",
            port=redis.port,
            socket_timeout=5,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        self.sessions = RedisSessions(redis.url)
        self.outbox = RedisOutbox(redis.url)
        self._checked = 0.0
        self._held_checked = 0.0

    # ------------------------------------------------------------------ processes
    def start_producer(self, name: str) -> None:
        self.producers[name] = Producer(
            name,
            self.rules,
            self.redis.url,
            self.emulator.url,
            self.events,
            self.logs / f"{name}.log",
            threads=PRODUCER_THREADS,
        )

    def start_deliverer(self, name: str) -> None:
        self.deliverers[name] = start_deliverer(
            self.redis.url, self.rules, self.emulator.url, self.logs / f"{name}.log", lease=LEASE
        )

    def live_producers(self) -> list[Producer]:
        return [p for p in self.producers.values() if not p.killed and not p.ended]

    def wait_ready(self) -> None:
        """Producers answered ``ready``; the deliverers share the partitions between them."""
        ready: set[str] = set()
        deadline = time.monotonic() + 20
        while ready != set(self.producers):
            assert time.monotonic() < deadline, f"producers not ready: {self.logs_tail()}"
            try:
                name, answer = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            assert answer is not None and answer.get("ready"), (
                f"{name}: {answer}\n{self.logs_tail()}"
            )
            ready.add(name)
        while len(set(self.lease_owners().values())) < len(self.deliverers):
            assert time.monotonic() < deadline, f"deliverers not started: {self.logs_tail()}"
            time.sleep(0.05)

    def lease_owners(self) -> dict[int, str]:
        """Partition → pid of the deliverer holding its lease."""
        target = self.outbox.target
        keys = [target.key("lease", str(i)) for i in range(target.partitions)]
        values = self.client.mget(keys)
        # A lease holds its worker's name: host:pid:random.
        names = [v.decode() if isinstance(v, bytes) else v for v in values]
        return {i: name.split(":")[1] for i, name in enumerate(names) if name is not None}

    def logs_tail(self) -> str:
        return "\n".join(log_tail(path) for path in sorted(self.logs.glob("*.log")))

    # ------------------------------------------------------------------ the stream
    def drive(self) -> None:
        tokens, last = 0.0, time.monotonic()
        deadline = last + DEADLINE
        while self.acked < self.total or self.chaos.phase < 5:  # the chaos plan, whole
            assert time.monotonic() < deadline, self.stuck("the pushes did not all get stored")
            self.step_chaos()
            now = time.monotonic()
            tokens, last = min(tokens + (now - last) * RATE, 10.0), now
            if tokens >= 1:
                idle = [
                    v
                    for v in self.visitors.values()
                    if v.request is None and not v.uncertain and not v.done
                ]
                self.rng.shuffle(idle)
                for visitor in idle[: int(tokens)]:
                    self.send(visitor)
                    tokens -= 1
            self.pump(0.005)
            self.resolve()

    def send(self, visitor: Visitor) -> None:
        push = visitor.pushes[visitor.next]
        while True:
            live = self.live_producers()
            assert live, "no producer is running"
            producer = self.rng.choice(live)  # no stickiness
            self.next_id += 1
            if producer.send(self.next_id, visitor.id, push):
                break
        visitor.request = self.next_id
        visitor.producers.add(producer.name)
        self.requests[self.next_id] = (visitor.id, producer.name)
        self.sent += 1

    def pump(self, timeout: float) -> None:
        """Handle the producers' answers that arrived (waiting up to ``timeout`` for one)."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self.handle(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def handle(self, name: str, answer: dict[str, Any] | None) -> None:
        producer = self.producers[name]
        if answer is None:  # its output ended: only a killed producer may do that
            producer.ended = True
            assert producer.killed, f"producer {name} exited by itself\n{self.logs_tail()}"
            for request_id, visitor_id in producer.outstanding.items():
                visitor = self.visitors[visitor_id]
                assert visitor.request == request_id
                visitor.request, visitor.uncertain, visitor.wait_for = None, True, name
            producer.outstanding.clear()
            return
        if answer.get("ready"):
            return
        assert "id" in answer, f"producer {name} printed {answer}\n{self.logs_tail()}"
        request_id = answer["id"]
        visitor_id, _ = self.requests.pop(request_id)
        producer.outstanding.pop(request_id, None)
        visitor = self.visitors[visitor_id]
        assert visitor.request == request_id, f"{visitor_id}: answer to a request not in flight"
        visitor.request = None
        if answer.get("ok"):
            visitor.next += 1
            self.acked += 1
        else:
            self.errors.append(f"{visitor_id}#{visitor.next} on {name}: {answer.get('error')}")
            assert len(self.errors) < 500, first_lines(self.errors)
            visitor.uncertain = True

    def resolve(self) -> None:
        """Settle the pushes whose outcome is unknown, by what Redis holds."""
        waiting = [v for v in self.visitors.values() if v.uncertain]
        now = time.monotonic()
        if not waiting or now - self._checked < 0.02:
            return
        self._checked = now
        try:
            # A killed producer's commands are all read (and run) once Redis has dropped its
            # connections: only then does the session say whether its push was stored.
            connected = {c.get("name") for c in self.client.client_list()}
            for visitor in waiting:
                if visitor.wait_for is not None and visitor.wait_for in connected:
                    continue
                visitor.wait_for = None
                session = self.sessions.read(visitor.id)
                stored = None if session is None else session.state.get("n")
                push_n = visitor.pushes[visitor.next]["n"]
                if stored == push_n:
                    visitor.next += 1
                    self.acked += 1
                    self.found_stored += 1
                else:
                    before = visitor.pushes[visitor.next - 1]["n"] if visitor.next else None
                    assert stored == before, (
                        f"{visitor.id}: push n={push_n} in doubt, but Redis holds n={stored} "
                        f"(expected {push_n} or {before})"
                    )
                    self.resent += 1
                    self.send(visitor)
                visitor.uncertain = False
        except (OutboxError, redis_py.RedisError):
            return  # Redis is down or loading: ask again on the next round

    # ------------------------------------------------------------------ chaos
    def step_chaos(self) -> None:
        """The chaos plan, one step at a time as the stream goes on."""
        done = self.acked / self.total
        chaos = self.chaos
        now = time.monotonic()
        if chaos.phase == 0 and done >= PRODUCER_KILL_AT:
            # Hung first, so that both kinds of unknown outcome are in flight when it is
            # killed: pushes stored and not answered, and pushes waiting for a thread.
            self.producers["p1"].hold(60)
            chaos.phase, chaos.since = 1, now
        elif chaos.phase == 1:
            victim = self.producers["p1"]
            if len(victim.outstanding) >= PRODUCER_THREADS + 3 or now - chaos.since > 3:
                chaos.producer_outstanding = len(victim.outstanding)
                victim.kill()
                chaos.producer_killed_at = time.time()
                self.start_producer("p3")
                chaos.phase = 2
        elif chaos.phase == 2 and done >= DELIVERER_KILL_AT:
            # The emulator holds its answers, so the deliverer is killed with requests that
            # arrived and were never acknowledged: their sends must come again, once.
            self.emulator.set_faults({"delay": HOLD})
            chaos.phase, chaos.since = 3, now
        elif chaos.phase == 3 and now - self._held_checked >= 0.02:
            self._held_checked = now
            victim_process = self.deliverers["d0"]
            owned = {i for i, pid in self.lease_owners().items() if pid == str(victim_process.pid)}
            held = [
                r
                for r in self.emulator.requests()
                if r.fault and r.status is None and request_partition(self, r) in owned
            ]
            if held or now - chaos.since > HOLD:
                victim_process.kill()
                victim_process.wait(10)
                chaos.deliverer_killed_at = time.time()
                self.emulator.clear_faults()
                chaos.deliverer_partitions = owned
                chaos.deliverer_held = len(held)
                self.start_deliverer("d2")
                chaos.phase = 4
        elif chaos.phase == 4 and done >= REDIS_RESTART_AT:
            chaos.redis_thread = threading.Thread(target=self.restart_redis, name="redis-restart")
            chaos.redis_thread.start()
            chaos.phase = 5

    def restart_redis(self) -> None:
        try:
            down = time.time()
            self.redis.stop()  # SIGTERM: the AOF is flushed
            time.sleep(REDIS_DOWN)  # the outage itself: pushes and deliveries meet it
            self.redis.start()
            self.chaos.redis_down = (down, time.time())
        except BaseException as error:
            self.chaos.redis_error = error

    # ------------------------------------------------------------------ the end
    def drain(self) -> None:
        """Wait until every send is delivered and acknowledged."""
        thread = self.chaos.redis_thread
        assert thread is not None, "Redis was never restarted"
        thread.join(30)
        assert self.chaos.redis_error is None, f"Redis restart failed: {self.chaos.redis_error!r}"
        deadline = time.monotonic() + DRAIN_DEADLINE
        while True:
            try:
                backlog = self.outbox.backlog()
                if backlog.pending == 0 and backlog.inflight == 0:
                    assert backlog.dead == 0, f"{backlog.dead} dead letters: {self.outbox.dead()}"
                    return
            except OutboxError:
                pass
            assert time.monotonic() < deadline, self.stuck("the outbox did not drain")
            time.sleep(0.05)

    def stuck(self, what: str) -> str:
        """Why the run is stuck: the backlog, and for the sessions with sends left, who holds
        their partition and their unacknowledged entries (and since when)."""
        lines = [f"{what}: {self.acked}/{self.total} pushes stored"]
        try:
            lines.append(f"backlog: {self.outbox.backlog()}")
            owners = self.lease_owners()
            alive = {str(p.pid): n for n, p in self.deliverers.items() if p.poll() is None}
            left = Counter(e.session for e in self.outbox.pending())
            for session, count in left.most_common(8):
                index = self.outbox.target.partition(session)
                stream = self.outbox.streams[index]
                held = self.client.xpending_range(stream, GROUP, "-", "+", 1)
                holder = ""
                if held:
                    consumer = held[0]["consumer"]
                    name = consumer.decode() if isinstance(consumer, bytes) else str(consumer)
                    pid = name.split(":")[1]
                    idle = float(held[0]["time_since_delivered"]) / 1000
                    holder = (
                        f"; its oldest entry unacknowledged by {alive.get(pid, 'dead pid ' + pid)}"
                        f" for {idle:.1f} s"
                    )
                owner = owners.get(index)
                lines.append(
                    f"  {session}: {count} sends left, partition {index} leased to "
                    f"{alive.get(owner or '', f'pid {owner}')}{holder}"
                )
        except (OutboxError, redis_py.RedisError) as error:
            lines.append(f"(Redis: {error})")
        waiting = [v.id for v in self.visitors.values() if v.uncertain or v.request]
        lines.append(f"visitors with a push in flight or in doubt: {waiting[:10]}")
        return "\n".join(lines) + "\n" + self.logs_tail()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM the deliverers, end the producers; their exit codes."""
        codes: dict[str, int | None] = {}
        running = {n: p for n, p in self.deliverers.items() if p.poll() is None}
        for process in running.values():
            process.terminate()
        for name, process in running.items():
            try:
                codes[name] = process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                codes[name] = None
        for name, producer in self.producers.items():
            if not producer.killed:
                codes[name] = producer.stop()
        return codes

    def close(self) -> None:
        for producer in self.producers.values():
            producer.close()
        for process in self.deliverers.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.client.close()


# ---------------------------------------------------------------------------- checks


def request_partition(driver: Driver, record: Any) -> int | None:
    """The outbox partition of the session a recorded request belongs to (``None`` for a
    browser id creation, which names none)."""
    body = record.body if isinstance(record.body, dict) else {}
    if "ext" in body:
        visitor = body["ext"].get("visitor")
    else:
        events = body.get("events") or [body.get("event") or {}]
        visitor = (events[0].get("data") or {}).get("visitor")
    return None if visitor is None else driver.outbox.target.partition(str(visitor))


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def content_diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    a, b = flat(want), flat(got)
    return ", ".join(
        f"{k}: expected {a.get(k, '<none>')!r}, received {b.get(k, '<none>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<none>") != b.get(k, "<none>")
    )


def test_producers_and_deliverers_killed_and_redis_restarted_deliver_every_send(
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path / "rules")
    ruleset = load_ruleset(rules)
    plan = journeys(VISITORS, PUSHES)
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    redis = RedisServer(aof="everysec")
    emulator = EmulatorServer(config=emulator_config(ruleset))
    driver: Driver | None = None
    try:
        redis.start()
        emulator.start()
        driver = Driver(plan, redis, rules, emulator, logs)
        for name in ("p0", "p1", "p2"):
            driver.start_producer(name)
        for name in ("d0", "d1"):
            driver.start_deliverer(name)
        driver.wait_ready()
        stream_started = time.monotonic()
        driver.drive()
        stream_time = time.monotonic() - stream_started
        driver.drain()
        drain_time = time.monotonic() - stream_started - stream_time
        codes = driver.stop()
        sessions = {v: driver.sessions.read(v) for v in plan}
        records = emulator.requests()
        minted_ecids = set(emulator.visitors())
        browsers = emulator.browsers()
    finally:
        if driver is not None:
            driver.close()
        emulator.stop()
        redis.close()
    chaos = driver.chaos
    assert chaos.producer_killed_at and chaos.deliverer_killed_at and chaos.redis_down[1]
    assert all(code == 0 for code in codes.values()), f"exit codes {codes}\n{driver.logs_tail()}"

    received, problems = received_sends(records)
    expected = expected_sends(ruleset, plan)

    # First copies, per visitor, in arrival order; later copies are duplicates.
    first: dict[str, Received] = {}
    duplicates: list[tuple[Received, Received]] = []
    by_visitor: dict[str, list[Received]] = defaultdict(list)
    for item in sorted(received, key=lambda r: r.record):  # stable: a batch keeps its order
        earlier = first.get(item.dedupe)
        if earlier is None:
            first[item.dedupe] = item
            by_visitor[item.key.visitor].append(item)
        else:
            duplicates.append((earlier, item))

    collect = [r for r in first.values() if r.route == "collect"]
    batched = [r for r in collect if r.request_events > 1]
    # The figures first: printed (shown by pytest) whether the checks below pass or not.
    spread = Counter(len(v.producers) for v in driver.visitors.values())
    report = {
        "pushes": driver.total,
        "requests sent to producers": driver.sent,
        "producer errors (Redis down)": len(driver.errors),
        "unknown outcomes found stored": driver.found_stored,
        "unknown outcomes re-sent": driver.resent,
        "requests in flight to the killed producer": chaos.producer_outstanding,
        "its requests the emulator held at the kill": chaos.deliverer_held,
        "its partitions": sorted(chaos.deliverer_partitions),
        "redis down (s)": round(chaos.redis_down[1] - chaos.redis_down[0], 2),
        "sends expected": sum(len(v) for v in expected.values()),
        "events received": len(received),
        "duplicates": len(duplicates),
        "duplicates by destination": dict(Counter(a.destination for _, a in duplicates)),
        "edge requests": len({r.record for r in received if r.destination == "edge"}),
        "collect events / requests / batched requests": (
            len(collect),
            len({r.record for r in collect}),
            len({r.record for r in batched}),
        ),
        "visitors by number of producers used": dict(sorted(spread.items())),
        "stream / drain / total (s)": (
            round(stream_time, 1),
            round(drain_time, 1),
            round(time.monotonic() - started, 1),
        ),
    }
    print("\nscale-out run:", json.dumps(report, indent=1))

    # Each push applied exactly once, whichever producer ran it, across the kill and restart.
    not_once = {
        v: (s.pushes if s else None) for v, s in sessions.items() if s is None or s.pushes != PUSHES
    }
    assert not not_once, f"sessions whose push count is not {PUSHES}: {not_once}"

    assert not problems, "requests the emulator refused:\n" + first_lines(problems)

    failures: list[str] = []
    for visitor, want in expected.items():
        got = by_visitor.pop(visitor, [])
        if [(e.key, e.destination) for e in want] != [(r.key, r.destination) for r in got]:
            failures.append(f"{visitor}: " + sequence_diff(want, got))
            continue
        for e, r in zip(want, got, strict=True):
            if e.content != r.content:
                failures.append(
                    f"{visitor} {e.key} {e.destination}: {content_diff(e.content, r.content)}"
                )
            if r.route == "collect" and r.key.send not in UNLOADING:
                failures.append(f"{visitor} {r.key}: sent by collect without documentUnloading")
    failures += [f"{v}: received sends of a visitor never pushed" for v in by_visitor]
    assert not failures, (
        f"{len(failures)} visitors' sends differ from the dry run:\n" + first_lines(failures)
    )

    # Duplicates: the same send again (same content), only what the killed deliverer had in
    # flight: a session of a partition it held, first delivered before the kill, again after.
    odd = []
    for earlier, again in duplicates:
        same = earlier.key == again.key and earlier.content == again.content
        across_kill = (
            driver.outbox.target.partition(again.key.visitor) in chaos.deliverer_partitions
            and earlier.time <= chaos.deliverer_killed_at <= again.time
        )
        if not (same and across_kill):
            odd.append(
                f"{again.key} {again.destination}: record {earlier.record} and {again.record}"
                f"{'' if same else ' (content differs)'}"
                f"{'' if across_kill else ' (not across the deliverer kill)'}"
            )
    assert not odd, "duplicates not explained by the kill:\n" + first_lines(odd)
    # What the emulator held of the killed deliverer comes again; at most what a worker may
    # have delivered and not acknowledged (batch 32 + 8 workers, a collect batch as one).
    duplicated_requests = {again.record for _, again in duplicates}
    assert len(duplicates) >= chaos.deliverer_held
    assert len(duplicated_requests) <= 32 + 8, f"{len(duplicated_requests)} requests again"
    # Both kinds of unknown outcome happened and were told apart by what Redis held.
    assert driver.found_stored and driver.resent, (driver.found_stored, driver.resent)
    # Every push that failed failed on Redis being down (anything else would be a bug the
    # re-sending hides).
    assert all("redis" in e.lower() for e in driver.errors), first_lines(driver.errors)

    # One ECID per session: every Edge request of the session carried the same one (in its
    # identity state entry, and in identityMap once known at push time), the one the session
    # holds, and Edge minted one per visitor (a second would mean a lost identity).
    identity_failures = []
    stored_ecids = set()
    for visitor, session in sessions.items():
        assert session is not None
        ecid = session.identity.get("ecid")
        stored_ecids.add(ecid)
        carried = set().union(*(r.ecids for r in received if r.key.visitor == visitor))
        if not ecid or carried - {ecid}:
            identity_failures.append(f"{visitor}: stored ECID {ecid}, requests carried {carried}")
        browser = session.identity.get("sitecore_browser_id")
        used = {r.browser_id for r in received if r.key.visitor == visitor and r.browser_id}
        if not browser or used != {browser} or browser not in browsers:
            identity_failures.append(f"{visitor}: stored browser id {browser}, events used {used}")
    assert not identity_failures, first_lines(identity_failures)
    assert minted_ecids == stored_ecids, (
        f"Edge minted {len(minted_ecids)} ECIDs for {len(sessions)} sessions"
    )
    creates = [r for r in records if r.path.startswith("/v1.2/browser/create.json")]
    assert len(creates) == len(browsers) == len(sessions), (
        f"{len(creates)} browser/create calls, {len(browsers)} browser ids, {len(sessions)} sessions"
    )

    # Collect batches happened: events are counted, not requests.
    assert batched, "no Edge collect request carried several events"


def test_expected_sends_name_every_send(tmp_path: Path) -> None:
    """The comparison's premise: every send the dry run builds names its visitor, push and
    send, once (so each received event maps to exactly one expected send), and the journeys
    hold what the acceptance test is about: purchases asked twice, page leaves in a row."""
    ruleset = load_ruleset(write_rules(tmp_path / "rules"))
    plan = journeys(VISITORS, PUSHES)
    expected = expected_sends(ruleset, plan)
    for visitor, sends in expected.items():
        keys = [(e.key, e.destination) for e in sends]
        assert len(keys) == len(set(keys)), visitor
        assert {e.key.visitor for e in sends} == {visitor}
        assert [e.key.n for e in sends] == sorted(e.key.n for e in sends)
    asked = Counter(v for v, pushes in plan.items() for p in pushes if p["event"] == "purchase")
    bought = Counter(
        e.key.visitor for s in expected.values() for e in s if e.key.send == "purchase"
    )
    assert max(asked.values()) >= 2 and max(bought.values()) == 2  # edge + sitecore, once
    leaves = [
        v
        for v, pushes in plan.items()
        if any(a["event"] == b["event"] == "page.leave" for a, b in itertools.pairwise(pushes))
    ]
    assert leaves
