"""Scale-out benchmark: push-only processes sharing one ``redis-server`` on loopback.

The workload is the repo's own: the ``rules/`` folder, and the journeys of
``examples/shop.jsonl`` replicated over many session ids (a replica's sessions get their own
ids; replicas are interleaved, so thousands of visitors are in flight, each in push order).
Every producer is a process of its own (``python -m benchmarks.scaleout --child MODE``) that
builds its pushes, warms up, freezes its heap out of the collector's reach (``gc.freeze``),
then, on the parent's signal, pushes back to back on one thread. Measured in one run, the
rows of each comparison taken in turns, several rounds, medians printed:

- **throughput**: pushes/s of 1 producer process, and of 2 started together (the pushes
  both made while both were pushing, from the later start to the earlier end), all ``Engine(rules, sessions=REDIS,
  deliver=False)``: session read, rules, session and sends stored in one Lua script. One
  thread a process is the judged pair; with two threads a process (sessions split between
  them), for information: a thread waiting on Redis leaves the CPU to the other. Each row
  shows how many CPUs the producers and redis-server kept busy, and the most the CPU of a
  push allows on 2 CPUs is worked out from the CPU figures (producer and Redis per push);
- **the machine's own ceiling**: a bare loop of the same shape, no engine (a producer's CPU
  per push, less its client's share of the script call, burnt; then one Lua script storing
  a session hash and two stream entries), in 1 and 2 processes, in turns with the rows
  above: how far any such loop scales here; and the same loop against a second redis-server started in a session of its own. Linux's
  autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on by default) shares
  the CPUs between sessions before processes: a redis-server in a session apart from its
  two producers gets a CPU late, a CPU idles meanwhile, and any loop scales ~1.6x instead of
  ~1.8x. The judged rows run redis-server in the benchmark's own session (as a supervisor
  starting Redis and the web app together would); a deployment that keeps Redis apart on
  the same cores gets the lower figure, one with Redis on cores of its own neither;
- **without persistence**, for information: the 1- and 2-producer rows and the bare loop
  again, against a redis-server that persists nothing. The AOF appends what every push
  stores and the kernel writes it back, on the same 2 CPUs as the producers: the gap
  between the two is what persistence takes on a host shared with the app;
- **CPU per push** (``time.process_time`` in the producer, its threads included) with
  ``deliver=False`` on Redis against a dry run on the same Redis sessions (the session is
  still read and stored; only the sends are not), and, for information, in-memory sessions
  with a SQLite file outbox (``deliver=False``: a push appends to the intake journal, a
  thread of the producer reads it into SQLite; its CPU counts, the journal drained before
  the clock stops) against an in-memory dry run;
- **latency**: p50/p99 of one push, each mode;
- **Redis**: its CPU per push (``/proc/<pid>/stat`` of ``redis-server``, AOF on with
  ``appendfsync everysec``, over the throughput runs) and per delivered send (one
  ``tagengine deliver`` worker delivering a fresh batch to the emulator); its memory per idle
  session (``MEMORY USAGE`` of the session and visitor keys, the sessions of the delivery
  pass holding their identity, and ``used_memory`` growth over all sessions with the
  streams deleted);
- **sends lost**: the sends the producers' pushes made against the entries their runs added
  to the outbox streams (nothing delivers meanwhile): 0 expected.

Then a paragraph works out the per-core limit and what N hosts would do, from these figures.
Targets are printed with PASS/FAIL; the exit status is 0 whatever they say. Run it from the
project root (it starts its own ``redis-server``: Debian's package)::

    .venv/bin/python -m benchmarks.scaleout           # ~4 minutes
    .venv/bin/python -m benchmarks.scaleout --quick   # ~35 s
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_py

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
JOURNEYS = ROOT / "examples" / "shop.jsonl"

PUSHES = 20_000  # per producer and run
QUICK_PUSHES = 3_000
ROUNDS = 3
QUICK_ROUNDS = 2
WARM_UP = 500  # pushes before the clock (imports, caches, connections, Lua script loaded)
DELIVERED = 6_000  # about this many sends for the Redis-CPU-per-delivered-send pass
QUICK_DELIVERED = 1_500
# Producer processes x threads each, for the throughput rows; "2x1" / "1x1" is judged.
SCALING = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2), "2x2": (2, 2)}
MODES = {
    "redis": "Redis sessions + Redis outbox, deliver=False",
    "redis-dry": "dry run, Redis sessions",
    "memory-sqlite": "memory sessions + SQLite file outbox, deliver=False",
    "memory-dry": "dry run, memory sessions",
}

# The AOF is rewritten between runs (RedisProbe.compact), not by Redis in the middle of one.
NO_AUTO_REWRITE = ["--auto-aof-rewrite-percentage", "0"]

# Targets.
SCALE_TARGET = 1.8  # pushes/s of 2 producer processes / pushes/s of 1
CPU_RATIO_TARGET = 1.3  # producer CPU per push, deliver=False on Redis / dry run on Redis
MEMORY_TARGET = 2048  # bytes of Redis per idle session

try:
    AUTOGROUP = ("off", "on")[int(Path("/proc/sys/kernel/sched_autogroup_enabled").read_text())]
except (OSError, ValueError, IndexError):
    AUTOGROUP = "not available"


# ---------------------------------------------------------------------- the workload
def workload(prefix: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` pushes: the shop journeys replicated under session ids ``prefix-i-…``,
    replicas interleaved step by step (each session's pushes stay in order)."""
    journeys: dict[str, list[dict[str, Any]]] = {}
    for line in JOURNEYS.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            journeys.setdefault(item.get("session", "default"), []).append(item["push"])
    per_replica = sum(len(p) for p in journeys.values())
    replicas = -(-count // per_replica)
    longest = max(len(p) for p in journeys.values())
    out: list[tuple[str, dict[str, Any]]] = []
    for step in range(longest):
        for replica in range(replicas):
            for name, pushes in journeys.items():
                if step < len(pushes):
                    out.append((f"{prefix}-{replica}-{name}", pushes[step]))
    return out[:count]


# ---------------------------------------------------------------------- a bare loop of the same shape
# No engine: burn a producer's CPU per push, then one Lua script storing what a push stores
# (a session hash and two stream entries, of the sizes measured). Run as 1 and 2 processes
# beside the engine's rows, it shows how far these two cores and one redis-server let any
# such loop scale, whatever runs between its round trips.
BARE_SCRIPT = """
local token = redis.call('HGET', KEYS[1], 't') or ''
redis.call('HSET', KEYS[1], 'd', ARGV[1], 't', ARGV[3])
redis.call('PEXPIRE', KEYS[1], 1800000)
redis.call('XADD', KEYS[2], '*', 'h', ARGV[2], 'b', ARGV[1])
redis.call('XADD', KEYS[2], '*', 'h', ARGV[2], 'b', ARGV[1])
return {1, token}
"""


def bare_main(argv: Sequence[str]) -> int:
    import redis

    port, spin, seconds, start, name = argv
    client = redis.Redis(host="127.0.0.1", port=int(port))
    script = client.register_script(BARE_SCRIPT)
    data, head = b"d" * 1500, b"h" * 300
    # The producer's CPU a push includes its client's share of the script call: burn the
    # rest, so that a bare push costs the producer what an engine push does.
    cpu = time.process_time
    began = cpu()
    for n in range(300):
        script(keys=[f"bare:s:{name}:warm", "bare:out:warm"], args=[data, head, n])
    burn = max(0.0, float(spin) - (cpu() - began) / 300)
    while time.time() < float(start):
        time.sleep(0.001)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < float(seconds):
        until = cpu() + burn
        while cpu() < until:
            pass
        script(
            keys=[f"bare:s:{name}:{count % 1000}", f"bare:out:{count % 16}"],
            args=[data, head, count],
        )
        count += 1
    print(json.dumps({"rate": count / (time.perf_counter() - began)}), flush=True)
    return 0


def bare_scaling(port: int, spin: float, seconds: float, rounds: int) -> tuple[float, float]:
    """Median pushes/s of the bare loop in 1 and in 2 processes, in turns."""
    found: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for processes in (1, 2):
            start = time.time() + 1.0
            children = [
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.scaleout", "--bare", str(port),
                     repr(spin), repr(seconds), repr(start), str(n)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for n in range(processes)
            ]  # fmt: skip
            rates = [json.loads(child.communicate()[0])["rate"] for child in children]
            found[processes].append(sum(rates))
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for key in client.scan_iter("bare:*", count=1000):  # out of the memory figures
        client.delete(key)
    client.close()
    return statistics.median(found[1]), statistics.median(found[2])


# ---------------------------------------------------------------------- a producer process
def make_engine(mode: str, redis_url: str, sink: str, folder: str) -> Any:
    from engine import Engine

    common: dict[str, Any] = {"edge_url": sink, "sitecore_url": sink}
    if mode == "redis":
        return Engine.from_path(RULES, sessions=redis_url, deliver=False, **common)
    if mode == "redis-dry":
        return Engine.from_path(RULES, sessions=redis_url, dry_run=True, **common)
    if mode == "memory-sqlite":
        outbox = os.path.join(folder, f"sends-{os.getpid()}.db")
        return Engine.from_path(RULES, outbox=outbox, deliver=False, **common)
    if mode == "memory-dry":
        return Engine.from_path(RULES, dry_run=True, **common)
    raise SystemExit(f"unknown mode {mode!r}")


def child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.scaleout --child")
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--redis", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--pushes", type=int, required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    engine = make_engine(args.mode, args.redis, args.sink, args.folder)
    for session, push in workload(f"{args.prefix}-warm", WARM_UP):
        engine.session(session).push(push)
    items = workload(args.prefix, args.pushes)
    sessions = [engine.session(s) for s, _ in items]  # handles made before the clock
    gc.collect()
    gc.freeze()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    sys.stdin.readline()  # "go"
    # A thread takes whole sessions (a web app's visitors spread over its request threads):
    # each session's pushes stay in order.
    shares: list[list[tuple[Any, dict[str, Any]]]] = [[] for _ in range(args.threads)]
    for handle, (session_id, push) in zip(sessions, items, strict=True):
        shares[zlib.crc32(session_id.encode()) % args.threads].append((handle, push))
    latencies: list[list[float]] = [[] for _ in shares]
    finished: list[list[float]] = [[] for _ in shares]  # when each push returned
    sends = [0] * len(shares)
    clock, cpu = time.perf_counter, time.process_time

    def run(index: int) -> None:
        timings, made, ends = latencies[index], 0, finished[index]
        for handle, push in shares[index]:
            started = clock()
            result = handle.push(push)
            ended = clock()
            timings.append(ended - started)
            ends.append(ended)
            made += len(result.sends) + sum(len(f.sends) for f in result.followups)
        sends[index] = made

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, len(shares))]
    wall0, cpu0 = clock(), cpu()
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    pushed = clock()
    backlog = engine.backlog()
    while backlog is not None and backlog.journaled:  # SQLite: the intake thread's work too
        time.sleep(0.001)
        backlog = engine.backlog()
    wall1, cpu1 = clock(), cpu()
    every = sorted(t for timings in latencies for t in timings)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "pushes": len(items),
                "sends": sum(sends),
                "wall": pushed - wall0,
                # perf_counter is CLOCK_MONOTONIC here: comparable between processes
                "start": wall0,
                "end": pushed,
                "finished": sorted(t for ends in finished for t in ends),
                "wall_drained": wall1 - wall0,
                "cpu": cpu1 - cpu0,
                "p50": every[len(every) // 2],
                "p99": every[int(len(every) * 0.99)],
            }
        ),
        flush=True,
    )
    sys.stdin.read()  # until the parent closes it
    engine.close()
    return 0


class Child:
    """A producer process: started, ready (warmed up), then told to go."""

    def __init__(
        self,
        mode: str,
        redis_url: str,
        sink: str,
        prefix: str,
        pushes: int,
        folder: str,
        threads: int = 1,
    ) -> None:
        command = [
            sys.executable, "-m", "benchmarks.scaleout", "--child", mode, "--redis", redis_url,
            "--sink", sink, "--prefix", prefix, "--pushes", str(pushes), "--folder", folder,
            "--threads", str(threads),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.result: dict[str, Any] = {}
        self.mode = mode

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"producer {self.mode} did not answer")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ready(self) -> None:
        self._line(120)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> dict[str, Any]:
        self.result = self._line(600)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(60)
        self.process.stdout.close()
        return self.result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


# ---------------------------------------------------------------------- Redis figures
class RedisProbe:
    """What the benchmark reads of the redis-server: CPU time, stream lengths, memory."""

    def __init__(self, pid: int, port: int, partitions: int = 16) -> None:
        self.pid = pid
        self.client = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        # The outbox's streams by name (tagengine:out:<i>): a SCAN of the whole keyspace per
        # look would cost Redis more CPU than the deliveries being measured.
        self.stream_keys = [f"tagengine:out:{i}" for i in range(partitions)]
        self.rewrites = 0  # AOF rewrites done by compact()
        self.rewrite_cpu = 0.0  # seconds of CPU of their children

    def cpu(self) -> float:
        return process_cpu(self.pid)

    def stream_entries(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in self.stream_keys:
            pipe.xlen(key)
        return sum(int(n) for n in pipe.execute())

    def delete_streams(self) -> None:
        """What a delivered backlog leaves: nothing (consumer groups included)."""
        self.client.delete(*self.stream_keys)

    def compact(self) -> None:
        """Rewrite the AOF when Redis's default policy would (grown to twice its last
        rewrite, and past 64 MB), between runs: automatic rewrites are off in the benchmark's
        redis-server, as a rewrite (a fork and a child busy for a second or more) in the middle
        of a run would take a CPU from the producers at random. Its CPU is counted apart."""
        info = self.client.info("persistence")
        if not info.get("aof_enabled"):
            return
        size, base = int(info["aof_current_size"]), int(info["aof_base_size"])
        if size < max(2 * base, 64 << 20):
            return
        before = process_children_cpu(self.pid)
        self.client.bgrewriteaof()
        while True:
            time.sleep(0.05)
            info = self.client.info("persistence")
            if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
                break
        self.rewrites += 1
        self.rewrite_cpu += process_children_cpu(self.pid) - before

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def usage(self, pattern: str) -> tuple[int, int]:
        """(keys matching ``pattern``, their MEMORY USAGE in bytes, all summed)."""
        keys = list(self.client.scan_iter(match=pattern, count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return len(keys), sum(int(n or 0) for n in pipe.execute())

    def close(self) -> None:
        self.client.close()


@dataclass
class Group:
    """One run of producers started together."""

    results: list[dict[str, Any]]
    redis_cpu: float  # seconds redis-server spent during it
    entries_added: int  # stream entries its pushes added
    busy: float  # seconds of CPU the whole machine spent during it

    @property
    def pushes(self) -> int:
        return sum(r["pushes"] for r in self.results)

    @property
    def sends(self) -> int:
        return sum(r["sends"] for r in self.results)

    @property
    def wall(self) -> float:
        return float(max(r["wall"] for r in self.results))

    @property
    def rate(self) -> float:
        """Pushes a second while every producer of the run was pushing: from the last one's
        start to the first one's end (a producer that started late or ran out of pushes
        first is not counting idle time against the others)."""
        if len(self.results) == 1:
            return self.pushes / self.wall
        start = max(r["start"] for r in self.results)
        end = min(r["end"] for r in self.results)
        if end <= start:  # one was done before the other started: no common window
            return self.pushes / self.wall
        done = sum(start < t <= end for r in self.results for t in r["finished"])
        return done / (end - start)

    @property
    def cores(self) -> float:
        """CPUs kept busy by the producers and redis-server, on average over the run."""
        return float(sum(r["cpu"] for r in self.results) + self.redis_cpu) / self.wall

    @property
    def machine(self) -> float:
        """CPUs the whole machine kept busy, on average over the run."""
        return self.busy / self.wall

    @property
    def producer_cpu(self) -> float:
        """Producer CPU seconds per push."""
        return float(sum(r["cpu"] for r in self.results)) / self.pushes


@dataclass
class Setup:
    """Where the producers push to, and how much."""

    redis_url: str
    sink: str  # the URL stored sends name (the emulator)
    folder: str  # for the SQLite outboxes
    probe: RedisProbe
    pushes: int  # per producer and run

    def run(
        self,
        modes: list[str],
        prefix: str,
        *,
        threads: int = 1,
        pushes: int = 0,
        keep: bool = False,
    ) -> Group:
        """Producers of ``modes`` started together, each told to go once all are warm."""
        count = pushes or self.pushes
        children = [
            Child(mode, self.redis_url, self.sink, f"{prefix}-{i}", count, self.folder, threads)
            for i, mode in enumerate(modes)
        ]
        probe = self.probe
        try:
            for child in children:
                child.ready()
            entries0, cpu0, busy0 = probe.stream_entries(), probe.cpu(), machine_busy()
            for child in children:
                child.go()
            results = [child.finish() for child in children]
            busy1, cpu1, entries1 = machine_busy(), probe.cpu(), probe.stream_entries()
            if not keep:
                probe.delete_streams()
            probe.compact()
        finally:
            for child in children:
                child.kill()
        return Group(results, cpu1 - cpu0, entries1 - entries0, busy1 - busy0)


# ---------------------------------------------------------------------- delivery pass
def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy so far (every CPU, kernel included:
    /proc/stat's user, nice, system, irq, softirq and steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """Seconds of CPU a process used so far (user + system, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_children_cpu(pid: int) -> float:
    """Seconds of CPU of a process's children it has waited for (redis-server's AOF
    rewrites)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def deliverer(redis_url: str, emulator_url: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "engine", "deliver", "--outbox", redis_url, "--rules", str(RULES),
        "--emulator", emulator_url, "--workers", "16",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_up_cpu(port: int, emulator_url: str) -> float:
    """CPU seconds a ``tagengine deliver`` process takes to start and join (on an empty
    database of the same server): taken off the delivery pass's worker CPU."""
    empty = f"redis://127.0.0.1:{port}/1"
    client = redis_py.Redis(host="127.0.0.1", port=port, db=1)
    worker = deliverer(empty, emulator_url)
    try:
        deadline = time.monotonic() + 60
        while not client.zcard("tagengine:workers") and time.monotonic() < deadline:
            time.sleep(0.05)
        return process_cpu(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
        client.flushdb()
        client.close()


def delivery_pass(setup: Setup, port: int, pushes: int) -> Delivery:
    """A fresh batch of sends (the streams emptied first) delivered by one ``tagengine
    deliver`` worker to the emulator."""
    probe, redis_url, emulator_url = setup.probe, setup.redis_url, setup.sink
    start_up = start_up_cpu(port, emulator_url)
    probe.delete_streams()
    group = setup.run(["redis"], "delivered", pushes=pushes, keep=True)
    assert group.entries_added == group.sends, (group.sends, group.entries_added)
    sends = probe.stream_entries()  # its warm-up's too
    cpu0, started = probe.cpu(), time.perf_counter()
    worker = deliverer(redis_url, emulator_url)
    try:
        deadline = time.monotonic() + 300
        while probe.stream_entries() and time.monotonic() < deadline:
            time.sleep(0.2)  # a look costs Redis a little: not too often
        wall, cpu = time.perf_counter() - started, probe.cpu() - cpu0
        worker_cpu = process_cpu(worker.pid) - start_up
        left = probe.stream_entries()
        if left:
            raise RuntimeError(f"the deliverer left {left} sends undelivered")
    finally:
        worker.terminate()
        worker.wait(30)
    return Delivery(sends, cpu, worker_cpu, wall)


# ---------------------------------------------------------------------- report
def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        return child_main(args[1:])
    if args[:1] == ["--bare"]:
        return bare_main(args[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer pushes and rounds")
    options = parser.parse_args(args)
    pushes = QUICK_PUSHES if options.quick else PUSHES
    rounds = QUICK_ROUNDS if options.quick else ROUNDS

    # Imported here: a child needs neither (the emulator's imports cost its start time).
    from engine.emulator import EmulatorServer
    from tests.redis_fixture import RedisServer

    server = RedisServer(aof="everysec", options=NO_AUTO_REWRITE)
    emulator = EmulatorServer()
    probe: RedisProbe | None = None
    started = time.monotonic()
    try:
        server.start()
        emulator.start()
        assert server.process is not None
        probe = RedisProbe(server.process.pid, server.port)
        memory0 = probe.used_memory()
        url = server.url
        print(
            f"rules/ and examples/shop.jsonl journeys replicated; {pushes:,} pushes a producer "
            f"and run, {rounds} rounds; redis-server {redis_version(probe)} (AOF everysec) on "
            f"loopback; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}\n"
        )
        with tempfile.TemporaryDirectory(prefix="tagengine-scaleout-") as folder:
            setup = Setup(url, emulator.url, folder, probe, pushes)
            scaling: dict[str, list[Group]] = {key: [] for key in SCALING}
            for r in range(rounds):  # in turns: drift in the machine hits every row alike
                for key, (processes, threads) in SCALING.items():
                    group = setup.run(["redis"] * processes, f"{key}{r}", threads=threads)
                    scaling[key].append(group)
            one = scaling["1x1"]
            spin = statistics.median(g.producer_cpu for g in one)
            seconds = 2.0 if options.quick else 4.0
            bare = bare_scaling(server.port, spin, seconds, rounds)
            with RedisServer(aof="everysec", own_session=True, options=NO_AUTO_REWRITE) as other:
                apart = bare_scaling(other.port, spin, seconds, rounds)
            # The same pair and bare loop against a redis-server that persists nothing: what
            # the AOF's writes (and the kernel's writeback of them) take from these 2 CPUs.
            with RedisServer() as volatile:
                assert volatile.process is not None
                volatile_probe = RedisProbe(volatile.process.pid, volatile.port)
                try:
                    light = Setup(volatile.url, emulator.url, folder, volatile_probe, pushes)
                    unpersisted: dict[str, list[Group]] = {"1x1": [], "2x1": []}
                    for r in range(rounds):
                        for key in unpersisted:
                            processes = SCALING[key][0]
                            group = light.run(["redis"] * processes, f"np{key}{r}")
                            unpersisted[key].append(group)
                    bare_volatile = bare_scaling(volatile.port, spin, seconds, rounds)
                finally:
                    volatile_probe.close()
            by_mode: dict[str, list[Group]] = {mode: [] for mode in MODES}
            for r in range(rounds):
                for mode in MODES:
                    by_mode[mode].append(setup.run([mode], f"{mode}{r}"))
            delivered = QUICK_DELIVERED if options.quick else DELIVERED
            one = scaling["1x1"]
            sends_per_push = sum(g.sends for g in one) / sum(g.pushes for g in one)
            delivery = delivery_pass(setup, server.port, int(delivered / sends_per_push))
        memory = memory_figures(probe, memory0)
        rewrites = (probe.rewrites, probe.rewrite_cpu)
    finally:
        if probe is not None:
            probe.close()
        emulator.stop()
        server.close()

    report(scaling, by_mode, delivery, memory, bare, apart, rewrites)
    report_unpersisted(unpersisted, bare_volatile)
    print(f"\n(whole run: {time.monotonic() - started:.0f} s)")
    return 0


def report_unpersisted(scaling: dict[str, list[Group]], bare: tuple[float, float]) -> None:
    rate1 = statistics.median(g.rate for g in scaling["1x1"])
    rate2 = statistics.median(g.rate for g in scaling["2x1"])
    print(
        "\nFor information, against a redis-server that persists nothing (no AOF, no RDB):\n"
        f"  1 and 2 producer processes push {rate1:,.0f} and {rate2:,.0f} a second: "
        f"{rate2 / rate1:.2f}x; the bare loop {bare[0]:,.0f} and {bare[1]:,.0f}: "
        f"{bare[1] / bare[0]:.2f}x. The AOF appends what each push stores (about 3 KB) and "
        "the kernel writes it back, on the same 2 CPUs (with Redis on a host of its own, they would not)."
    )


def redis_version(probe: RedisProbe) -> str:
    return str(probe.client.info("server")["redis_version"])


def memory_figures(probe: RedisProbe, memory0: int) -> dict[str, float]:
    """Bytes per idle session: MEMORY USAGE of session (+ visitor) keys, for the sessions the
    delivery pass went through (they hold their identity) and the others; and used_memory
    growth per session with the streams (the backlog, gone once delivered) deleted."""
    delivered_sessions, delivered_bytes = probe.usage("tagengine:s:delivered-*")
    sessions, session_bytes = probe.usage("tagengine:s:*")
    visitors, visitor_bytes = probe.usage("tagengine:v:*")
    probe.delete_streams()
    grown = probe.used_memory() - memory0
    pushed_only = (session_bytes - delivered_bytes) / max(1, sessions - delivered_sessions)
    return {
        "sessions": sessions,
        "visitors": visitors,
        "delivered": delivered_bytes / max(1, delivered_sessions),
        "pushed_only": pushed_only,
        "visitor_share": visitor_bytes / max(1, sessions),
        "used_memory": grown / max(1, sessions),
    }


@dataclass
class Delivery:
    sends: int
    redis_cpu: float  # seconds of redis-server
    worker_cpu: float  # seconds of the tagengine deliver process, its start-up taken off
    wall: float


def report(
    scaling: dict[str, list[Group]],
    by_mode: dict[str, list[Group]],
    delivery: Delivery,
    memory: dict[str, float],
    bare: tuple[float, float],
    apart: tuple[float, float],
    rewrites: tuple[int, float],
) -> None:
    # ---- the figures
    one, two = scaling["1x1"], scaling["2x1"]
    rate1 = statistics.median(g.rate for g in one)
    rate2 = statistics.median(g.rate for g in two)
    scale = rate2 / rate1
    cpu = {
        mode: statistics.median(g.results[0]["cpu"] / g.pushes for g in groups)
        for mode, groups in by_mode.items()
    }
    redis_groups = [g for groups in scaling.values() for g in groups] + by_mode["redis"]
    pushes = sum(g.pushes for g in redis_groups)
    redis_push = sum(g.redis_cpu for g in redis_groups) / pushes
    sends_per_push = sum(g.sends for g in redis_groups) / pushes
    redis_send = delivery.redis_cpu / delivery.sends
    # AOF rewrites, amortized over every push that stored a session (dry runs included)
    stored = pushes + sum(g.pushes for g in by_mode["redis-dry"])
    aof_push = rewrites[1] / stored
    worker_send = delivery.worker_cpu / delivery.sends
    producer = cpu["redis"]
    # On 2 CPUs, pushes costing a producer p and Redis r of CPU go at most 2 / (p + r) a
    # second, whatever the number of producers: against the one producer measured (which
    # waits for Redis between pushes), that is the most 2 producers could scale.
    p1 = statistics.median(g.producer_cpu for g in one)
    ceiling = 2 / (p1 + redis_push)

    # ---- throughput
    print("Throughput, Redis sessions + Redis outbox (deliver=False), pushes back to back:")
    for key, groups in scaling.items():
        processes, threads = SCALING[key]
        label = f"{processes} process{'es' if processes > 1 else '  '} x {threads} thread"
        rate = statistics.median(g.rate for g in groups)
        busy = statistics.median(g.cores for g in groups)
        machine = statistics.median(g.machine for g in groups)
        per_push = statistics.median(g.producer_cpu for g in groups)
        print(
            f"  {label}{'s' if threads > 1 else ' '} {rate:>7,.0f} pushes/s ({rates(groups)}); "
            f"producer CPU {us(per_push)} a push; CPUs busy: {busy:.2f} producers + "
            f"redis-server, {machine:.2f} machine"
        )
    print(
        f"  {verdict(scale >= SCALE_TARGET)}  2 processes / 1 (one thread each) = {scale:.2f}x "
        f"(target >= {SCALE_TARGET}x)"
    )
    print(
        f"        the CPU of a push (producer {us(p1)} + Redis {us(redis_push)}) allows at most "
        f"{ceiling:,.0f} pushes/s on 2 CPUs: {ceiling / rate1:.2f}x one producer"
    )
    print(
        f"        a bare loop of the same shape (no engine: {us(p1)} of producer CPU a push, "
        "its script call's included, then one script "
        f"storing ~4 KB) does {bare[0]:,.0f} and {bare[1]:,.0f} a second in 1 and 2 processes "
        f"in the same run: {bare[1] / bare[0]:.2f}x"
    )
    print(
        f"        the same bare loop against a redis-server in a session of its own does "
        f"{apart[0]:,.0f} and {apart[1]:,.0f}: {apart[1] / apart[0]:.2f}x (kernel autogroup "
        f"scheduling is {AUTOGROUP}: CPU is shared between sessions first, and a redis-server "
        f"in another session gets it late; see the docstring)"
    )

    # ---- CPU and latency
    print("\nProducer CPU per push (process_time) and latency of one push, one producer:")
    print(f"  {'mode':<54}{'CPU/push':>10}{'p50':>10}{'p99':>10}")
    for mode, groups in by_mode.items():
        p50 = statistics.median(g.results[0]["p50"] for g in groups)
        p99 = statistics.median(g.results[0]["p99"] for g in groups)
        print(f"  {MODES[mode]:<54}{us(cpu[mode]):>10}{us(p50):>10}{us(p99):>10}")
    ratio = producer / cpu["redis-dry"]
    print(
        f"  {verdict(ratio <= CPU_RATIO_TARGET)}  deliver=False / dry run, on Redis sessions: "
        f"{ratio:.2f}x (target <= {CPU_RATIO_TARGET}x)"
    )
    print(
        "        for information: memory sessions + SQLite outbox / memory dry run: "
        f"{cpu['memory-sqlite'] / cpu['memory-dry']:.2f}x; Redis deliver=False / memory dry "
        f"run: {producer / cpu['memory-dry']:.2f}x"
    )

    # ---- Redis
    print("\nRedis:")
    print(
        f"  redis-server CPU per push (session read, Lua script storing it and its sends) "
        f"{us(redis_push)}; AOF rewrites {us(aof_push)} a push ({rewrites[0]} between runs, "
        f"{rewrites[1]:.2f} s of CPU in a child of redis-server, over {stored:,} pushes "
        "storing a session)"
    )
    print(
        f"  redis-server CPU per delivered send (read, identity read and write, ack) "
        f"{us(redis_send)}; the worker's CPU per send {us(worker_send)} "
        f"({delivery.sends:,} sends, one worker: {delivery.sends / delivery.wall:,.0f} sends/s "
        "to the emulator)"
    )
    print(
        f"  memory per idle session: {memory['delivered']:,.0f} bytes with its identity "
        f"(delivered), {memory['pushed_only']:,.0f} bytes before delivery; visitor keys "
        f"{memory['visitor_share']:,.0f} bytes a session; used_memory growth "
        f"{memory['used_memory']:,.0f} bytes a session ({memory['sessions']:,.0f} sessions)"
    )
    worst = max(memory["delivered"], memory["pushed_only"]) + memory["visitor_share"]
    print(f"  {verdict(worst < MEMORY_TARGET)}  {worst:,.0f} bytes (target < {MEMORY_TARGET:,})")

    # ---- sends lost
    made = sum(g.sends for g in redis_groups)
    added = sum(g.entries_added for g in redis_groups)
    lost = [g for g in redis_groups if g.sends != g.entries_added]
    dry_added = sum(g.entries_added for g in by_mode["redis-dry"])
    print(
        f"\nSends: {made:,} made by the deliver=False pushes on Redis, {added:,} stream entries "
        f"added by their runs ({dry_added} by the dry runs)"
    )
    print(f"  {verdict(not lost and dry_added == 0)}  0 sends lost (made - stored: {made - added})")

    # ---- on paper
    per_core = 1 / producer
    ceiling = 1 / (redis_push + aof_push)
    with_delivery = 1 / (redis_push + aof_push + sends_per_push * redis_send)
    host_core = 1 / (producer + sends_per_push * worker_send)  # pushing and delivering
    cores = with_delivery / host_core
    print(
        "\nPer-core limit and N hosts (on paper, from the figures above). One producer "
        f"process pushes {rate1:,.0f}/s on one thread, as it waits for Redis (one round trip a "
        f"push on a session it stored last, two otherwise); CPU-bound (more threads or processes than cores) a core does "
        f"{per_core:,.0f} pushes/s ({us(producer)} a push), or {host_core:,.0f} pushes/s "
        f"once the delivery of their {sends_per_push:.2f} sends a push is counted "
        f"({us(worker_send)} of worker CPU a send). Redis's one thread spends "
        f"{us(redis_push + aof_push)} on a push (AOF rewrites included): it sustains about {ceiling:,.0f} pushes/s, or about "
        f"{with_delivery:,.0f} pushes/s with their delivery ({us(redis_send)} a send). So "
        f"N hosts of C cores do about N x C x {host_core:,.0f} pushes/s, minus what the web "
        f"app itself takes, until N x C reaches ~{cores:,.0f} cores (e.g. "
        f"{cores / 8:,.1f} hosts of 8 cores); past that the one Redis is the limit, and the "
        "visitors must be split over several Redis servers (a session, its visitor and its "
        "outbox partition live on one), each with its own producers and workers. Between "
        "hosts, a round trip of ~0.2-0.5 ms instead of loopback's adds latency to a push "
        "(one or two round trips), not CPU."
    )


def rates(groups: list[Group]) -> str:
    return ", ".join(f"{g.rate:,.0f}" for g in groups)


if __name__ == "__main__":
    raise SystemExit(main())
