"""Background delivery through the durable outbox, against the emulator over loopback, with
real files, threads and a forked process."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from engine import Engine
from engine import background as background_module
from engine.background import BackgroundDelivery, Redelivery
from engine.clients import RetryPolicy
from engine.dispatch import Dispatcher
from engine.emulator import EmulatorServer, Fault, RecordedRequest
from engine.results import Send
from engine.runtime import Targets
from engine.stores.sqlite import Outbox
from tests.conftest import SETTINGS, load_text

RULES = dedent(
    """\
    rule "Page view" {
      on "page.view"
      send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page.name } }
    }
    """
)
BOTH = dedent(
    """\
    rule "Page view" {
      on "page.view"
      send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page.name } }
      send sitecore { type: "VIEW", page: state.page.name }
    }
    """
)
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, total_timeout=5.0)
QUICK_REDELIVERY = Redelivery(max_rounds=30, base_delay=0.05, max_delay=0.5)


# ---------------------------------------------------------------------- helpers (shared)
@dataclass
class Harness:
    """A dry-run engine that builds the sends, and a BackgroundDelivery that delivers them."""

    engine: Engine
    background: BackgroundDelivery
    outbox: Outbox
    results: list[tuple[str, Send]] = field(default_factory=list)
    factory_pids: list[int] = field(default_factory=list)

    def push(self, session: str, name: str) -> None:
        result = self.engine.session(session).push({"event": "page.view", "page": {"name": name}})
        self.background.submit(result, session)


HarnessFactory = Callable[..., Harness]


def build_harness(
    url: str,
    outbox: Outbox,
    *,
    rules: str = RULES,
    policy: RetryPolicy = FAST,
    dispatcher: Callable[[], Dispatcher] | None = None,
    **options: Any,
) -> Harness:
    ruleset = load_text({"a_settings.rules": SETTINGS, "t.rules": rules})
    engine = Engine(ruleset, dry_run=True, edge_url=url, sitecore_url=url)
    targets = Targets.of(ruleset, url, url)
    results: list[tuple[str, Send]] = []
    lock = threading.Lock()
    pids: list[int] = []

    def on_result(session: str, send: Send) -> None:
        with lock:
            results.append((session, send))

    def factory() -> Dispatcher:
        pids.append(os.getpid())
        return dispatcher() if dispatcher is not None else Dispatcher(policy=policy)

    options.setdefault("redelivery", QUICK_REDELIVERY)
    background = BackgroundDelivery(
        outbox,
        factory,
        sessions=engine.sessions,
        targets=lambda: targets,
        on_result=on_result,
        **options,
    )
    return Harness(engine, background, outbox, results, pids)


def harnesses() -> Iterator[HarnessFactory]:
    """The body of a ``harness`` fixture: makes harnesses, then closes their delivery,
    engine and outbox."""
    made: list[Harness] = []

    def make(url: str, outbox: Outbox | None = None, **options: Any) -> Harness:
        built = build_harness(url, outbox if outbox is not None else Outbox(), **options)
        made.append(built)
        return built

    yield make
    for built in made:
        built.background.close(timeout=2)
        built.engine.close()
        built.outbox.close()


@pytest.fixture
def harness() -> Iterator[HarnessFactory]:
    yield from harnesses()


def event_id(request: RecordedRequest) -> str:
    value: str = request.body["event"]["xdm"]["_id"]
    return value


def page_name(request: RecordedRequest) -> str:
    value: str = request.body["event"]["xdm"]["web"]["webPageDetails"]["name"]
    return value


def accepted(server: EmulatorServer) -> list[RecordedRequest]:
    """Edge requests the emulator accepted (answered 200, no injected fault), in arrival order."""
    return [r for r in server.requests("/ee/") if r.status == 200 and r.fault is None]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------- tests
def test_submit_returns_quickly_and_every_send_arrives(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(emulator.url, Outbox(tmp_path / "out.db", synchronous="NORMAL"))
    spent: list[float] = []
    for index in range(200):
        session = f"s{index % 10}"
        result = h.engine.session(session).push(
            {"event": "page.view", "page": {"name": f"p{index}"}}
        )
        started = time.perf_counter()
        h.background.submit(result, session)
        spent.append(time.perf_counter() - started)
        assert result.sends[0].status is None  # not waited for
    # Generous for a loaded machine; benchmarks/dispatch.py measures it (~0.1 ms).
    assert statistics.mean(spent) < 0.005
    assert h.background.flush(15)
    ids = Counter(event_id(r) for r in accepted(emulator))
    assert len(ids) == 200 and set(ids.values()) == {1}
    assert sorted(page_name(r) for r in accepted(emulator)) == sorted(f"p{i}" for i in range(200))
    assert len(h.results) == 200 and {s.status for _, s in h.results} == {200}
    assert h.outbox.counts() == {"pending": 0, "inflight": 0, "dead": 0}


def test_idle_workers_wake_at_once_for_new_work(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    # With a 5 s poll, a missed wake-up would show as a 5 s wait.
    h = harness(emulator.url, poll_interval=5.0, workers=3)
    sent = 0
    for burst in range(4):
        time.sleep(0.05)  # the workers are idle, waiting
        started = time.monotonic()
        for index in range(burst + 1):  # one session's sends in a row, and another session's
            h.push(f"s{index % 2}", f"p{sent}")
            sent += 1
        want = sent

        def arrived(want: int = want) -> bool:
            return len(accepted(emulator)) == want

        wait_for(arrived, 3, f"{want} sends")
        assert time.monotonic() - started < 1.0
    assert h.background.flush(1)


def test_identity_from_one_answer_reaches_the_next_send(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    h = harness(emulator.url, rules=BOTH)
    h.push("v", "Home")
    h.push("v", "Shoes")
    assert h.background.flush(10)
    session = h.engine.sessions.peek("v")
    assert session is not None and session.identity.get("ecid")
    edge = [s for _, s in h.results if s.destination == "edge"]
    assert [s.response["ecid"] for s in edge] == [session.identity["ecid"]] * 2
    # The second request carried the state entries of the first answer.
    second = accepted(emulator)[1]
    assert any(e["key"].endswith("_identity") for e in second.body["meta"]["state"]["entries"])
    # One Sitecore browser id, created once, confirmed in the session.
    assert len(emulator.requests("/v1.2/browser/create.json")) == 1
    assert session.identity.get("sitecore_browser_id_confirmed") is True


def test_per_session_order_under_concurrency(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    emulator.set_faults(Fault(status=503, retry_after="0", rate=0.3), seed=11)
    h = harness(emulator.url, rules=BOTH, workers=4)
    count = 40

    def pusher(session: str) -> None:
        for index in range(count):
            h.push(session, f"{session}-{index:03d}")
            time.sleep(0.001)  # interleave the two sessions

    threads = [threading.Thread(target=pusher, args=(s,)) for s in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert h.background.flush(20)
    emulator.clear_faults()
    assert sum(1 for r in emulator.requests() if r.status == 503) > 10  # the faults did fire
    for session in ("a", "b"):
        want = [f"{session}-{index:03d}" for index in range(count)]
        # Each session's sends, both destinations, in arrival order: push order, and each
        # push's Edge send before its Sitecore send.
        arrived = []
        for r in emulator.requests():
            if r.status not in (200, 201) or r.fault is not None:
                continue
            if r.path.startswith("/ee/") and page_name(r).startswith(session + "-"):
                arrived.append((page_name(r), "edge"))
            elif r.path.startswith("/v1.2/event") and r.body["page"].startswith(session + "-"):
                arrived.append((r.body["page"], "sitecore"))
        assert arrived == [(name, dest) for name in want for dest in ("edge", "sitecore")]


def test_close_flushes_within_the_bound(emulator: EmulatorServer, harness: HarnessFactory) -> None:
    h = harness(emulator.url)
    for index in range(100):
        h.push(f"s{index % 7}", f"p{index}")
    started = time.monotonic()
    assert h.background.close(timeout=10)
    assert time.monotonic() - started < 10.5
    assert h.background.alive == 0
    assert len({event_id(r) for r in accepted(emulator)}) == 100
    assert h.outbox.counts() == {"pending": 0, "inflight": 0, "dead": 0}
    with pytest.raises(Exception, match="closed"):
        h.push("s0", "late")


def test_close_is_bounded_when_the_destination_is_down(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    emulator.stop()
    slow = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=5.0, total_timeout=60.0)
    h = harness(emulator.url, Outbox(tmp_path / "down.db"), policy=slow)
    for index in range(10):
        h.push(f"s{index}", f"p{index}")
    time.sleep(0.2)  # the workers are in their retry waits now
    started = time.monotonic()
    assert not h.background.close(timeout=1.0)
    assert time.monotonic() - started < 1.5  # the retry waits were interrupted
    assert h.background.alive == 0
    counts = h.outbox.counts()
    assert counts["pending"] + counts["inflight"] == 10 and counts["dead"] == 0  # kept


def test_a_refused_send_goes_to_the_dead_letters_with_its_last_error(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    emulator.set_faults(Fault(status=400, count=1, path="/ee/"))
    h = harness(emulator.url)
    for index in range(5):
        h.push("v", f"p{index}")
    assert h.background.flush(10)
    dead = h.outbox.dead()
    assert len(dead) == 1 and dead[0].attempts == 1
    assert dead[0].last_error is not None and "HTTP 400" in dead[0].last_error
    refused = [r for r in emulator.requests("/ee/") if r.status == 400]
    assert [event_id(r) for r in refused] == [dead[0].event_id]  # not retried
    assert sorted(page_name(r) for r in accepted(emulator)) == [f"p{i}" for i in range(1, 5)]
    errors = [s for _, s in h.results if s.error]
    assert len(errors) == 1 and errors[0].status == 400


def test_retryable_failures_are_rescheduled_then_buried(
    emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    emulator.set_faults(Fault(status=503, path="/ee/"))
    once = RetryPolicy(max_attempts=1)
    h = harness(emulator.url, policy=once, redelivery=Redelivery(max_rounds=3, base_delay=0.05))
    h.push("v", "p0")
    assert h.background.flush(10)
    dead = h.outbox.dead()
    assert len(dead) == 1 and dead[0].attempts == 3
    assert (
        dead[0].last_error
        and "HTTP 503" in dead[0].last_error
        and "3 delivery rounds" in (dead[0].last_error)
    )
    assert len(emulator.requests("/ee/")) == 3


def test_recover_after_reopening_the_outbox_file(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    path = tmp_path / "crash.db"
    first = build_harness(emulator.url, Outbox(path), start=False)
    for index in range(20):
        first.push(f"s{index % 4}", f"p{index}")
    in_flight = first.outbox.claim(limit=10)  # claimed by a "process" that then died
    assert len(in_flight) == 4  # one per session
    first.outbox.close()  # no close(): the process is gone
    first.engine.close()
    assert emulator.requests() == []

    second = harness(emulator.url, Outbox(path))
    assert second.background.flush(10)
    ids = Counter(event_id(r) for r in accepted(emulator))
    assert len(ids) == 20 and set(ids.values()) == {1}
    for session in ("s0", "s1", "s2", "s3"):
        names = [page_name(r) for r in accepted(emulator)]
        mine = [n for n in names if int(n[1:]) % 4 == int(session[1:])]
        assert mine == sorted(mine, key=lambda n: int(n[1:]))


def test_a_forked_child_gets_working_workers_and_its_own_http_client(
    emulator: EmulatorServer, harness: HarnessFactory, tmp_path: Path
) -> None:
    h = harness(emulator.url, Outbox(tmp_path / "fork.db", synchronous="NORMAL"))
    h.push("parent", "before-fork")
    assert h.background.flush(10)
    assert h.factory_pids == [os.getpid()]
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a threaded process may deadlock: that is what the
        # at-fork hooks are for, and what this test checks.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            report: dict[str, Any] = {"alive_before": h.background.alive}
            for index in range(10):
                h.push("child", f"child-{index}")
            report["flushed"] = h.background.flush(10)
            report["alive"] = h.background.alive
            report["factory_pids"] = h.factory_pids
            report["pid"] = os.getpid()
            report["statuses"] = [s.status for _, s in h.results]
            report["closed"] = h.background.close(5)
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 30
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not finish")
        else:
            time.sleep(0.02)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0 and report
    assert report["alive_before"] == 0  # threads do not survive a fork...
    assert report["flushed"] and report["alive"] >= 1  # ...the child started its own
    assert report["factory_pids"] == [os.getpid(), report["pid"]]  # a new HTTP client
    assert report["statuses"] == [200] * 11  # the parent's one result was copied, too
    assert report["closed"]
    child = sorted(page_name(r) for r in accepted(emulator) if page_name(r).startswith("child-"))
    assert child == [f"child-{i}" for i in range(10)]
    # The parent's workers and connections still work after the fork.
    h.push("parent", "after-fork")
    assert h.background.flush(10)
    assert [page_name(r) for r in accepted(emulator)].count("after-fork") == 1
    assert h.factory_pids == [os.getpid()]


def test_the_pool_grows_while_deliveries_wait_on_the_network(
    fresh_emulator: EmulatorServer, harness: HarnessFactory
) -> None:
    fresh_emulator.set_faults(Fault(delay=0.2, path="/ee/"))  # every answer takes 200 ms
    h = harness(fresh_emulator.url, workers=6)
    assert h.background.alive == 1  # one thread to start with
    names = [f"p{index}" for index in range(24)]
    for index, name in enumerate(names):
        h.push(f"s{index}", name)
    assert h.background.flush(30)
    answered = [r for r in fresh_emulator.requests("/ee/") if r.status == 200]
    assert sorted(page_name(r) for r in answered) == sorted(names)
    # Deliveries waited on the network, sends were waiting: threads were added, up to the cap.
    assert 1 < h.background.alive <= 6


def test_spare_threads_stop_when_idle_and_one_always_stays(
    fresh_emulator: EmulatorServer, harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background_module, "_IDLE_EXIT", 0.3)
    fault = Fault(delay=0.2, path="/ee/")
    fresh_emulator.set_faults(fault)
    h = harness(fresh_emulator.url, workers=6, poll_interval=0.05)
    for index in range(24):
        h.push(f"s{index}", f"p{index}")
    assert h.background.flush(30)
    assert h.background.alive > 1
    wait_for(lambda: h.background.alive == 1, 10, "the spare threads to stop")
    time.sleep(0.5)  # idle on: the last one stays
    assert h.background.alive == 1
    fresh_emulator.set_faults()
    h.push("later", "after the pool shrank")
    assert h.background.flush(10)
    assert "after the pool shrank" in [page_name(r) for r in fresh_emulator.requests("/ee/")]
