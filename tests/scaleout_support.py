"""What the scale-out acceptance test (tests/test_scaleout.py) runs and checks: a ruleset whose
every send names the push that made it, visitors' journeys, the producer process, and the
comparison of what the emulator received with what a dry run of the same pushes builds.

The producer process (``python -m tests.scaleout_support producer --rules DIR --redis URL
--emulator URL --name NAME``) is a push-only web process (``Engine(..., deliver=False)`` on
Redis): it reads one JSON request a line on stdin, ``{"id", "session", "push"}``, pushes it on
one of a few threads (a web app's request threads), and answers one line on stdout,
``{"id", "ok": true}`` or ``{"id", "error": "..."}``; its first line is
``{"ready": true, "pid": PID}``. The line
``{"hold": SECONDS}`` makes it wait that long between storing a push and answering it. Every
connection it opens to Redis carries ``CLIENT SETNAME NAME``, so the driver can tell when a
killed producer's last command has been read by Redis (its connections are gone from
``CLIENT LIST``) before it looks whether that producer's last pushes were stored.

How received requests are compared with the dry run (:func:`normalized_edge`,
:func:`normalized_sitecore`):

- every send carries ``visitor``, ``n`` (the push's sequence number in its journey) and
  ``send`` (which send of which rule) in Edge ``data`` / Sitecore ``ext``: that triple names
  it exactly, and so the order and content of each visitor's sends can be checked;
- Edge: events are compared one by one (a collect request carries several), with ``xdm._id``,
  ``xdm.timestamp`` and ``xdm.identityMap`` removed (the ECID is added at push time once the
  visitor has one, which a dry run never has); the rest of the request (``meta.state``
  entries, ``query``, the request id) belongs to delivery, not to the rules. Duplicates are the
  same ``xdm._id`` again;
- the route of a ``documentUnloading`` send is chosen at push time: ``collect`` once the
  session has an Edge identity (written back by the delivery workers), else ``interact``;
  a dry run never has one, so such a send may arrive either way; every other send must
  arrive by ``interact``;
- Sitecore: the event (the ``message`` parameter) without ``browser_id`` (the dry run's is a
  local placeholder; the emulator's is checked separately: one per session). Duplicates are
  the same (visitor, n, send) again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

ORG = "5CA1E0UT0000000000000000@AdobeOrg"

# Every send names itself: data/ext carry visitor, n and send. "Leave" has two Edge sends with
# documentUnloading, so a session with an identity queues two consecutive collect sends per
# such push, which go as one request. "Purchase" may be asked for several times per journey;
# `limit 1 per session` must hold whichever producer process runs the push.
RULES = f"""
edge {{ datastream: "ds-scaleout", org: "{ORG}" }}
sitecore {{ client_key: "scaleout-key", pos: "scaleout.test", language: "EN", currency: "EUR" }}

element visitor  = state.visitor
element n        = state.n
element page     = state.page | default "home"
element sku      = event.eventInfo.sku
element last_sku = state.cart.last
element campaign = event.eventInfo.campaign keep session

rule "View" order 10 {{
  on "page.view"
  send event {{
    type: "web.webpagedetails.pageViews"
    xdm: {{ web.webPageDetails.name: page, web.webPageDetails.pageViews.value: 1 }}
    data: {{ visitor: visitor, n: n, send: "view", campaign: campaign | default "direct" }}
  }}
  send sitecore {{
    type: "VIEW"
    page: page
    ext: {{ visitor: visitor, n: n, send: "view", campaign: campaign | default "direct" }}
  }}
}}

rule "Cart add" order 20 {{
  on "cart.add"
  when sku exists
  send event {{
    type: "commerce.productListAdds"
    xdm: {{ productListItems: [{{ SKU: sku, quantity: 1 }}] }}
    data: {{ visitor: visitor, n: n, send: "add", page: page }}
  }}
  send sitecore {{ type: "ADD", page: page, ext: {{ visitor: visitor, n: n, send: "add", sku: sku }} }}
}}

rule "Purchase" order 30 {{
  on "purchase"
  when last_sku exists
  limit 1 per session
  send event {{
    type: "commerce.purchases"
    xdm: {{ commerce.purchases.value: 1 }}
    data: {{ visitor: visitor, n: n, send: "purchase", sku: last_sku }}
  }}
  send sitecore {{ type: "CHECKOUT", page: page, ext: {{ visitor: visitor, n: n, send: "purchase" }} }}
}}

rule "Leave" order 40 {{
  on "page.leave"
  send event {{
    type: "web.webinteraction.linkClicks"
    data: {{ visitor: visitor, n: n, send: "leave-1", page: page }}
    documentUnloading: true
  }}
  send event {{
    type: "web.webinteraction.linkClicks"
    data: {{ visitor: visitor, n: n, send: "leave-2" }}
    documentUnloading: true
  }}
}}
"""

UNLOADING = frozenset({"leave-1", "leave-2"})  # the sends that may go by collect


def write_rules(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaleout.rules").write_text(RULES)
    return folder


def journeys(visitors: int, pushes: int, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """``visitors`` journeys of ``pushes`` pushes each: a landing page view with a campaign,
    then page views, cart adds, page leaves (often two in a row) and purchases (some twice:
    the limit must hold), each push carrying ``visitor`` and ``n``."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for index in range(visitors):
        visitor = f"v{index:03d}"
        steps: list[dict[str, Any]] = [
            {"event": "page.view", "page": "home", "eventInfo": {"campaign": f"c{index % 7}"}}
        ]
        while len(steps) < pushes:
            kind = rng.choices(["view", "add", "leave", "buy"], weights=[4, 3, 2, 2])[0]
            if kind == "view":
                steps.append({"event": "page.view", "page": f"p{rng.randrange(20)}"})
            elif kind == "add":
                sku = f"SKU-{rng.randrange(50)}"
                steps.append(
                    {"event": "cart.add", "eventInfo": {"sku": sku}, "cart": {"last": sku}}
                )
            elif kind == "leave":
                steps.append({"event": "page.leave"})
                if rng.random() < 0.5:
                    steps.append({"event": "page.leave"})
            else:
                steps.append({"event": "purchase"})
        out[visitor] = [
            {**step, "visitor": visitor, "n": n} for n, step in enumerate(steps[:pushes])
        ]
    return out


# ---------------------------------------------------------------------------- processes


class Producer:
    """A producer process and the thread that reads its answers into ``events`` as
    ``(name, answer)`` (``(name, None)`` at its end of output)."""

    def __init__(
        self,
        name: str,
        rules: Path,
        redis_url: str,
        emulator_url: str,
        events: queue.Queue[tuple[str, dict[str, Any] | None]],
        log: Path,
        threads: int = 4,
    ) -> None:
        self.name = name
        self.outstanding: dict[int, str] = {}  # request id → visitor, sent and not answered
        self.killed = False
        self.ended = False
        command = [
            sys.executable, "-m", "tests.scaleout_support", "producer", "--rules", str(rules),
            "--redis", redis_url, "--emulator", emulator_url, "--name", name,
            "--threads", str(threads),
        ]  # fmt: skip
        with log.open("ab") as stderr:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        self._events = events
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                answer = {"garbage": line}
            self._events.put((self.name, answer))
        self._events.put((self.name, None))

    def send(self, request_id: int, visitor: str, push: dict[str, Any]) -> bool:
        """Write one request; false when the process is gone (it is then not outstanding)."""
        assert self.process.stdin is not None
        line = json.dumps({"id": request_id, "session": visitor, "push": push}) + "\n"
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        self.outstanding[request_id] = visitor
        return True

    def hold(self, seconds: float) -> None:
        """From now on it answers a stored push only ``seconds`` later: killed meanwhile, it
        leaves pushes stored and unanswered (and, its threads all waiting, others unread)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"hold": seconds}) + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.killed = True
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        """Close its stdin (it finishes what it has, closes its engine and exits); the exit
        code, or ``None`` when it had to be killed."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                return self.process.wait(timeout)
            except (subprocess.TimeoutExpired, OSError):
                self.process.kill()
                self.process.wait(10)
                return None
        return self.process.returncode

    def close(self) -> None:
        """Whatever state it is in: dead, pipes closed, reader ended."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a killed child's broken pipe
                    pipe.close()
        self._reader.join(5)


def start_deliverer(
    redis_url: str, rules: Path, emulator_url: str, log: Path, *, lease: float, workers: int = 8
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "engine", "deliver", "--outbox", redis_url, "--rules", str(rules),
        "--emulator", emulator_url, "--workers", str(workers), "--lease", str(lease),
        "--grace", "10",
    ]  # fmt: skip
    with log.open("ab") as stderr:
        return subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )


def log_tail(path: Path, lines: int = 12) -> str:
    """The end of a child's log, without what repeats: httpx's line per request, and the
    retry warnings of a worker while Redis is down (the first of a kind is kept)."""
    if not path.exists():
        return f"{path.name}: (no log)"
    kept: list[str] = []
    seen: set[str] = set()
    for line in path.read_text(errors="replace").splitlines():
        if " INFO HTTP Request: " in line:
            continue
        kind = line.split(" ", 2)[-1].split(":", 1)[0] + line.rsplit(" while ", 1)[-1][:30]
        if " WARNING " in line and kind in seen:
            continue
        seen.add(kind)
        kept.append(line)
    return f"--- {path.name}\n" + "\n".join(kept[-lines:])


# ---------------------------------------------------------------------------- the producer


def producer_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="scaleout_support producer")
    parser.add_argument("--rules", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--emulator", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)

    from engine import Engine
    from engine.stores.redis_client import connect

    # Named connections: the driver sees in CLIENT LIST when this process's are all gone.
    connect(args.redis).client.connection_pool.connection_kwargs["client_name"] = args.name
    # The destination URL is part of a stored send: a push-only process names the emulator
    # (tagengine deliver's --emulator only moves the token and browser/create URLs).
    engine = Engine.from_path(
        args.rules,
        sessions=args.redis,
        deliver=False,
        edge_url=args.emulator,
        sitecore_url=args.emulator,
    )
    out_lock = threading.Lock()

    def answer(message: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    hold = [0.0]  # seconds a stored push waits before its answer (a hung web process)

    def handle(line: str) -> None:
        request = json.loads(line)
        if "hold" in request:
            hold[0] = float(request["hold"])
            return
        try:
            engine.session(request["session"]).push(request["push"])
        except Exception as error:  # reported to the driver, which decides what it means
            answer({"id": request["id"], "error": f"{type(error).__name__}: {error}"})
        else:
            time.sleep(hold[0])
            answer({"id": request["id"], "ok": True})

    answer({"ready": True, "pid": os.getpid()})
    with ThreadPoolExecutor(args.threads) as pool:
        for line in sys.stdin:
            if line.strip():
                pool.submit(handle, line)
    engine.close()
    return 0


# ---------------------------------------------------------------------------- comparison

# Edge xdm fields that belong to one build of a send, or to the visitor's identity at push
# time, rather than to what the rules made of the pushes.
_VOLATILE_XDM = ("_id", "timestamp", "identityMap")
_VOLATILE_SITECORE = ("browser_id", "requested_at")


def normalized_edge(event: dict[str, Any]) -> dict[str, Any]:
    xdm = {k: v for k, v in event.get("xdm", {}).items() if k not in _VOLATILE_XDM}
    return {**event, "xdm": xdm}


def normalized_sitecore(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in _VOLATILE_SITECORE}


@dataclass(frozen=True)
class SendKey:
    visitor: str
    n: int
    send: str

    def __str__(self) -> str:
        return f"{self.visitor}#{self.n}:{self.send}"


@dataclass
class Received:
    """One event as the emulator received it."""

    key: SendKey
    destination: str  # "edge" | "sitecore"
    route: str  # "interact" | "collect" | "event"
    content: dict[str, Any]  # normalized
    dedupe: str  # xdm._id, or the key for Sitecore
    record: int  # the emulator's record id: arrival order
    time: float
    request_events: int  # events in its request (a collect batch carries several)
    ecids: set[str] = field(default_factory=set)  # ECIDs its request carried
    browser_id: str | None = None


@dataclass
class Expected:
    key: SendKey
    destination: str
    content: dict[str, Any]


def _key(values: dict[str, Any], where: str) -> SendKey:
    try:
        return SendKey(str(values["visitor"]), int(values["n"]), str(values["send"]))
    except (KeyError, TypeError, ValueError):
        raise AssertionError(f"{where}: no visitor/n/send in {values!r}") from None


def expected_sends(
    ruleset: Any, plan: dict[str, list[dict[str, Any]]]
) -> dict[str, list[Expected]]:
    """Per visitor, in order, what a dry run of the same pushes builds."""
    from engine import Engine

    out: dict[str, list[Expected]] = {}
    with Engine(ruleset, dry_run=True) as engine:
        for visitor, pushes in plan.items():
            session = engine.session(visitor)
            built: list[Expected] = []
            for push in pushes:
                result = session.push(push)
                for send in (s for o in (result, *result.followups) for s in o.sends):
                    body = send.request.body
                    if send.destination == "edge":
                        events = body["events"] if "events" in body else [body["event"]]
                        for event in events:
                            key = _key(event.get("data", {}), f"dry run {visitor}")
                            built.append(Expected(key, "edge", normalized_edge(event)))
                    else:
                        key = _key(body.get("ext", {}), f"dry run {visitor}")
                        built.append(Expected(key, "sitecore", normalized_sitecore(body)))
            out[visitor] = built
    return out


def received_sends(records: Iterable[Any], org: str = ORG) -> tuple[list[Received], list[str]]:
    """Every event the emulator received (Edge events one by one, Sitecore events), and the
    problems met (a request refused, an unknown path)."""
    from engine.emulator.identity import decode_identity, state_key

    identity_key = state_key(org, "identity")
    out: list[Received] = []
    problems: list[str] = []
    for record in records:
        path: str = record.path
        if path.startswith("/v1.2/browser/create.json"):
            continue
        if record.status is None or not 200 <= record.status < 300:
            problems.append(f"request {record.id} {record.method} {path} answered {record.status}")
        if path.startswith("/ee/"):
            body = record.body
            route = path.rsplit("/", 1)[-1]
            events = body["events"] if "events" in body else [body["event"]]
            ecids: set[str] = set()
            state = body.get("meta", {}).get("state", {})
            for entry in state.get("entries", []):
                if entry.get("key") == identity_key:
                    ecid = decode_identity(entry.get("value", ""))
                    ecids.add(ecid or f"unreadable:{entry.get('value')}")
            for event in events:
                for item in event.get("xdm", {}).get("identityMap", {}).get("ECID", []):
                    ecids.add(item.get("id"))
            for event in events:
                key = _key(event.get("data", {}), f"request {record.id} {path}")
                out.append(
                    Received(
                        key=key,
                        destination="edge",
                        route=route,
                        content=normalized_edge(event),
                        dedupe=str(event.get("xdm", {}).get("_id")),
                        record=record.id,
                        time=record.time,
                        request_events=len(events),
                        ecids=ecids,
                    )
                )
        elif path.startswith("/v1.2/event/create.json"):
            message = record.body
            key = _key(message.get("ext", {}), f"request {record.id} {path}")
            out.append(
                Received(
                    key=key,
                    destination="sitecore",
                    route="event",
                    content=normalized_sitecore(message),
                    dedupe=str(key),
                    record=record.id,
                    time=record.time,
                    request_events=1,
                    browser_id=message.get("browser_id"),
                )
            )
        else:
            problems.append(f"request {record.id} to an unexpected path {record.method} {path}")
    return out, problems


def first_lines(items: Iterable[str], limit: int = 12) -> str:
    listed = list(items)
    shown = "\n  ".join(listed[:limit])
    more = f"\n  … and {len(listed) - limit} more" if len(listed) > limit else ""
    return "  " + shown + more


def sequence_diff(expected: list[Expected], received: list[Received]) -> str:
    """The two sequences of one visitor side by side, from the first difference."""
    want = [f"{e.key.n}:{e.key.send}:{e.destination}" for e in expected]
    got = [f"{r.key.n}:{r.key.send}:{r.destination}" for r in received]
    start = next(
        (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
        min(len(want), len(got)),
    )
    return (
        f"first difference at position {start}:\n"
        f"    expected {want[max(0, start - 2) : start + 6]}\n"
        f"    received {got[max(0, start - 2) : start + 6]}\n"
        f"    ({len(want)} expected, {len(got)} received)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["producer"]:
        return producer_main(args[1:])
    print(
        "usage: python -m tests.scaleout_support producer --rules DIR --redis URL "
        "--emulator URL --name NAME"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
