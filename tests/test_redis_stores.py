"""Sessions and the outbox in Redis, against a real ``redis-server`` on loopback: pushes of one
session from several processes at once, the atomic push, the backlog bound, Redis down,
delivery by workers that share the partitions and take over from a killed one."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import Engine, EngineError, PushError
from engine.background import BackgroundDelivery
from engine.dispatch import Dispatcher
from engine.emulator import EmulatorServer
from engine.runtime import Targets
from engine.stores import BacklogFull, RedisOutbox, RedisSessions
from tests.conftest import load_text
from tests.redis_fixture import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

RULES = """
edge { datastream: "ds-1", org: "ORG@AdobeOrg" }
sitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }
element n = state.n
rule "View" {
  on "page.view"
  send event { type: "web.webpagedetails.pageViews", data: { n: n } }
  send sitecore { type: "VIEW", page: "p", ext: { n: n } }
}
rule "Once" {
  on "page.view"
  limit 3 per session
  send event { type: "once", data: { n: n } }
}
"""


def count_sends(engine: Engine) -> int:
    backlog = engine.backlog()
    assert backlog is not None
    return backlog.pending


def test_a_session_lives_in_redis_across_engines(redis_url: str) -> None:
    ruleset = load_text(RULES)
    with Engine(ruleset, sessions=redis_url, dry_run=True) as first:
        first.session("s").push({"event": "page.view", "n": 1, "user": {"tier": "gold"}})
    with Engine(ruleset, sessions=redis_url, dry_run=True) as second:
        session = second.session("s")
        assert session.state == {"n": 1, "user": {"tier": "gold"}}
        result = session.push({"event": "page.view", "n": 2})
        assert session.export()["pushes"] == 2
        assert result.fired == ["View", "Once"]


def test_a_push_stores_its_sends_with_the_session(redis_url: str) -> None:
    ruleset = load_text(RULES)
    with Engine(ruleset, sessions=redis_url, deliver=False) as engine:
        for n in range(5):
            engine.session("s").push({"event": "page.view", "n": n})
        # 5 views x (edge + sitecore) + 3 limited "Once"
        assert count_sends(engine) == 13
        pending = engine.outbox.pending()  # type: ignore[union-attr]
        assert [(e.destination, e.rule) for e in pending[:3]] == [
            ("edge", "View"),
            ("sitecore", "View"),
            ("edge", "Once"),
        ]
        edge = [e.body["event"]["data"]["n"] for e in pending if e.destination == "edge"]
        assert edge == [0, 0, 1, 1, 2, 2, 3, 4]
        assert all(e.session == "s" for e in pending)


def test_pushes_of_one_session_from_several_processes_lose_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """Four processes push to one session at the same moment: every push is applied once, on
    the state the one before left (no update lost), and the per-session limit holds."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.rules").write_text(RULES)
    script = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from engine import Engine
        me, count, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
        with Engine.from_path({str(rules)!r}, sessions={redis_url!r}, deliver=False) as engine:
            session = engine.session("shared")
            while time.time() < start:
                time.sleep(0.001)
            fired = 0
            for i in range(count):
                result = session.push({{"event": "page.view", "n": i, "by": {{me: i}}}})
                fired += "Once" in result.fired
            print(json.dumps({{"fired_once": fired}}))
        """
    )
    start = time.time() + 1.5
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"p{i}", "60", str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    done = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in done]
    outputs = [json.loads(out) for out, _ in done]
    sessions = RedisSessions(redis_url)
    stored = sessions.read("shared")
    assert stored is not None
    assert stored.pushes == 240  # no push lost, none applied twice
    # each process's last push is in the state: the merges of the others did not undo it
    assert stored.state["by"] == {f"p{i}": 59 for i in range(4)}
    assert sum(o["fired_once"] for o in outputs) == 3  # `limit 3 per session` across processes
    outbox = RedisOutbox(redis_url)
    assert outbox.backlog().pending == 240 * 2 + 3


def test_a_push_over_the_backlog_bound_changes_nothing(redis_url: str) -> None:
    ruleset = load_text(RULES)
    with Engine(ruleset, sessions=redis_url, deliver=False, max_backlog=5) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "n": 1})  # 3 sends
        with pytest.raises(BacklogFull) as caught:
            session.push({"event": "page.view", "n": 2})  # 3 more: 6 > 5
        assert caught.value.bound == 5 and caught.value.backlog == 3
        assert session.state == {"n": 1}
        assert session.export()["pushes"] == 1
        assert count_sends(engine) == 3


def test_in_memory_sessions_roll_back_a_push_the_outbox_refuses(redis_url: str) -> None:
    """Sessions in memory, outbox in Redis: the bound refuses the push and the session, its
    limit counter included, is as it was, so the app's retry fires again."""
    ruleset = load_text(RULES)
    outbox = RedisOutbox(redis_url)
    with Engine(ruleset, outbox=outbox, deliver=False, max_backlog=4) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "n": 1})
        with pytest.raises(BacklogFull):
            session.push({"event": "page.view", "n": 2})
        assert len(session.export()["firings"]["session"]["Once"]) == 1
        assert session.state == {"n": 1}
        outbox.purge("pending")
        outbox.max_backlog = 4
        outbox._bound_seen = (-1e9, 0)  # read the backlog afresh
        assert session.push({"event": "page.view", "n": 2}).fired == ["View", "Once"]
        assert len(session.export()["firings"]["session"]["Once"]) == 2


def test_a_push_while_redis_is_down_fails_fast_and_writes_nothing() -> None:
    ruleset = load_text(RULES)
    server = RedisServer().start()
    try:
        with Engine(ruleset, sessions=server.url, deliver=False) as engine:
            session = engine.session("s")
            session.push({"event": "page.view", "n": 1})
            server.kill()
            started = time.monotonic()
            with pytest.raises(EngineError, match="unreachable"):
                session.push({"event": "page.view", "n": 2})
            assert time.monotonic() - started < 3
            server.start()  # no AOF: an empty Redis comes back
            assert session.push({"event": "page.view", "n": 3}).fired == ["View", "Once"]
    finally:
        server.close()


def test_a_push_to_a_redis_that_stopped_answering_times_out_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    from engine.stores import redis_client

    monkeypatch.setattr(redis_client, "_TIMEOUT", 0.3)  # read when connecting (5 s by default)
    server = RedisServer().start()
    try:
        with Engine(load_text(RULES), sessions=server.url, deliver=False) as engine:
            session = engine.session("s")
            session.push({"event": "page.view", "n": 1})
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)  # up, connected, silent
            try:
                started = time.monotonic()
                with pytest.raises(EngineError, match=r"timed out while storing session .s."):
                    session.push({"event": "page.view", "n": 2})
                # the command and its one retry, each given up after the timeout
                assert 0.3 <= time.monotonic() - started < 3
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert session.push({"event": "page.view", "n": 3}).fired == ["View", "Once"]
            assert session.state == {"n": 3}
            # Redis ran the timed-out script once it woke up, or never: whole or not at all
            assert count_sends(engine) in (6, 9)
    finally:
        server.close()


def test_a_bad_push_never_reaches_redis(redis_url: str) -> None:
    ruleset = load_text(RULES)
    with Engine(ruleset, sessions=redis_url, deliver=False) as engine:
        session = engine.session("s")
        with pytest.raises(PushError):
            session.push({"event": "page.view", "n": float("nan")})
        assert RedisSessions(redis_url).read("s") is None
        assert count_sends(engine) == 0


def test_sessions_and_outbox_must_share_one_redis(redis_url: str) -> None:
    with RedisServer() as other, pytest.raises(EngineError, match="same Redis"):
        Engine(load_text(RULES), sessions=redis_url, outbox=other.url, deliver=False)
    with pytest.raises(EngineError, match="outbox"):
        Engine(load_text(RULES), deliver=False)


def test_export_and_restore_through_redis(redis_url: str) -> None:
    ruleset = load_text(RULES)
    with Engine(ruleset, sessions=redis_url, dry_run=True) as engine:
        engine.session("s", visitor="v").push({"event": "page.view", "n": 1})
        data = engine.session("s").export()
        engine.sessions.delete("s")  # type: ignore[attr-defined]
        assert engine.session("s").state == {}
        restored = engine.restore(data)
        assert restored.state == {"n": 1} and restored.visitor == "v"
        again = engine.session("s").export()
        assert {**again, "last_seen": 0} == {**data, "last_seen": 0}


# ------------------------------------------------------------------ delivery workers


def deliver_in_thread(
    url: str, emulator: EmulatorServer, ruleset_text: str = RULES, **options: object
) -> tuple[BackgroundDelivery, RedisOutbox]:
    ruleset = load_text(ruleset_text)
    outbox = RedisOutbox(url, **options)  # type: ignore[arg-type]
    targets = Targets.of(ruleset, emulator.url, emulator.url, f"{emulator.url}/ims/token/v3")
    background = BackgroundDelivery(
        outbox,
        Dispatcher,
        sessions=RedisSessions(url),
        targets=lambda: targets,
        workers=2,
        poll_interval=0.02,
    )
    return background, outbox


def drain(url: str, emulator: EmulatorServer, timeout: float, **options: object) -> None:
    """Deliver the outbox to the emulator from a worker in this process until it is empty."""
    background, box = deliver_in_thread(url, emulator, **options)
    try:
        deadline = time.monotonic() + timeout
        while RedisOutbox(url).backlog().pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert RedisOutbox(url).backlog().pending == 0
    finally:
        background.close(5, drain=False)
        box.close()


def test_two_workers_share_the_partitions_and_each_visitor_keeps_one_identity(
    redis_url: str, emulator: EmulatorServer
) -> None:
    ruleset = load_text(RULES)
    emulator.configure(org="ORG@AdobeOrg")
    first, box1 = deliver_in_thread(redis_url, emulator, lease_ttl=1.0)
    second, box2 = deliver_in_thread(redis_url, emulator, lease_ttl=1.0)
    try:
        deadline = time.monotonic() + 10
        while (len(box1.held()), len(box2.held())) != (8, 8):  # a fair share each
            assert time.monotonic() < deadline, (box1.held(), box2.held())
            time.sleep(0.05)
        assert not set(box1.held()) & set(box2.held())
        with Engine(
            ruleset,
            sessions=redis_url,
            deliver=False,
            edge_url=emulator.url,
            sitecore_url=emulator.url,
        ) as engine:
            for n in range(4):
                for visitor in range(20):
                    engine.session(f"v{visitor}").push({"event": "page.view", "n": n})
        deadline = time.monotonic() + 30
        while RedisOutbox(redis_url).backlog().pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert RedisOutbox(redis_url).backlog().pending == 0
    finally:
        first.close(5, drain=False)
        second.close(5, drain=False)
        box1.close()
        box2.close()
    sessions = RedisSessions(redis_url)
    browsers = {}
    for visitor in range(20):
        identity = sessions.identity(f"v{visitor}")
        assert identity is not None and identity.get("ecid")
        browsers[visitor] = identity["sitecore_browser_id"]
    requests = emulator.requests()
    sitecore = [r for r in requests if "/event/create.json" in r.path]
    assert len(sitecore) == 80
    assert {r.query.get("message", "") for r in sitecore}  # recorded
    created = [r for r in requests if "/browser/create.json" in r.path]
    assert len(created) == 20  # one browser id per session, whichever worker delivered
    assert len(set(browsers.values())) == 20


def test_a_killed_worker_s_partitions_are_taken_over_and_nothing_is_lost(
    redis_url: str, emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A delivery process killed with SIGKILL: after its leases expire another worker takes
    its partitions, with what it had read and not acknowledged, and delivers everything."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.rules").write_text(RULES)
    ruleset = load_text(RULES)
    with Engine(
        ruleset, sessions=redis_url, deliver=False, edge_url=emulator.url, sitecore_url=emulator.url
    ) as engine:
        for n in range(5):
            for visitor in range(30):
                engine.session(f"v{visitor}").push({"event": "page.view", "n": n})
    total = RedisOutbox(redis_url).backlog().pending
    command = [sys.executable, "-m", "engine", "deliver", "--outbox", redis_url]
    command += ["--rules", str(rules), "--emulator", emulator.url, "--workers", "2"]
    worker = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while RedisOutbox(redis_url).backlog().pending > total * 0.7:
            assert time.monotonic() < deadline, "the worker delivers nothing"
            time.sleep(0.01)
    finally:
        worker.kill()
        worker.wait()
    left = RedisOutbox(redis_url).backlog()
    assert 0 < left.pending < total
    drain(redis_url, emulator, 40, lease_ttl=1.0)
    events = [r for r in emulator.requests() if "/event/create.json" in r.path or "/ee/" in r.path]
    ids = [r.body["event"]["xdm"]["_id"] for r in events if "/ee/" in r.path]
    assert len(set(ids)) == 30 * 5 + 30 * 3  # every Edge event at least once
    # Duplicates only of what the killed worker had delivered and not yet acknowledged
    # (acknowledgements go by batches of up to 32, BackgroundDelivery's batch).
    assert total <= len(events) <= total + 32 + 2


def test_the_deliver_command_needs_a_known_outbox(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "deliver",
            "--outbox",
            f"redis://127.0.0.1:{free_port()}/0?bogus=1",
            "--rules",
            str(ROOT / "rules"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "unknown option 'bogus'" in done.stderr


def test_wait_mode_on_redis_sessions_keeps_the_identity_edge_gave(
    redis_url: str, emulator: EmulatorServer
) -> None:
    """Delivering before the push returns, with sessions in Redis: what the answers bring
    (the ECID, the Sitecore browser id) is stored in the session, so another engine's next
    push of the visitor carries it."""
    ruleset = load_text(RULES)
    emulator.configure(org="ORG@AdobeOrg")
    options = {"sessions": redis_url, "edge_url": emulator.url, "sitecore_url": emulator.url}
    with Engine(ruleset, **options) as first:  # type: ignore[arg-type]
        result = first.session("s").push({"event": "page.view", "n": 1})
        assert all(send.error is None for send in result.sends)
    identity = RedisSessions(redis_url).identity("s")
    assert identity is not None and identity.get("ecid") and identity.get("sitecore_browser_id")
    with Engine(ruleset, **options) as second:  # type: ignore[arg-type]
        result = second.session("s").push({"event": "page.view", "n": 2})
    sitecore = [s for s in result.sends if s.destination == "sitecore"]
    assert sitecore[0].request.body["browser_id"] == identity["sitecore_browser_id"]
    creates = [r for r in emulator.requests() if "/browser/create.json" in r.path]
    assert len(creates) == 1


def test_cookies_taken_into_a_redis_session(redis_url: str) -> None:
    ruleset = load_text(RULES)
    cookie = "kndctr_ORG_AdobeOrg_identity"
    with Engine(ruleset, sessions=redis_url, dry_run=True) as engine:
        engine.session("s").take_cookies({cookie: "CiYxMjM0NQ"})
        headers = engine.session("s").set_cookie_headers()
        assert headers == []  # taken from the browser: not sent back until Edge renews it
        identity = RedisSessions(redis_url).identity("s")
        assert identity is not None
        assert [e["key"] for e in identity["entries"]] == [cookie]
        result = engine.session("s").push({"event": "page.view", "n": 1})
        edge = next(s for s in result.sends if s.destination == "edge")
        entries = edge.request.body["meta"]["state"]["entries"]
        assert {"key": cookie, "value": "CiYxMjM0NQ"} in entries


def test_awaited_pushes_of_one_session_keep_their_order(redis_url: str) -> None:
    ruleset = load_text(RULES)

    async def main() -> None:
        async with Engine(ruleset, sessions=redis_url, dry_run=True) as engine:
            session = engine.session("s")
            pushes = (session.apush({"event": "page.view", "n": n}) for n in range(20))
            await asyncio.gather(*pushes)
            assert session.state == {"n": 19}
            assert session.export()["pushes"] == 20
            assert engine._async_locks == {}  # dropped once nobody waits

    asyncio.run(main())


def tagengine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_outbox_commands_on_redis(redis_url: str) -> None:
    """`tagengine outbox list|retry|purge --outbox redis://…`: the backlog, a dead letter
    revived to the end of its session's queue, a purge."""
    ruleset = load_text(RULES)
    with Engine(ruleset, sessions=redis_url, deliver=False) as engine:
        engine.session("s").push({"event": "page.view", "n": 1})  # 3 sends
    worker = RedisOutbox(redis_url)
    head = worker.claim(limit=10)[0]
    assert worker.bury(head.id, "HTTP 400: refused")
    worker.close()

    listed = tagengine("outbox", "list", "--outbox", redis_url, "--json", "--with-backlog")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["backlog"]["pending"] == 2 and document["backlog"]["dead"] == 1
    assert [e["rule"] for e in document["entries"]] == ["View", "Once"]
    dead = json.loads(tagengine("outbox", "list", "--outbox", redis_url, "--dead", "--json").stdout)
    assert [(e["rule"], e["last_error"], e["state"]) for e in dead] == [
        ("View", "HTTP 400: refused", "dead")
    ]
    shown = tagengine("outbox", "list", "--outbox", redis_url)
    assert "2 pending" in shown.stdout and "1 dead" in shown.stdout

    revived = tagengine("outbox", "retry", "--outbox", redis_url, str(dead[0]["id"]))
    assert revived.returncode == 0 and "1 dead letter back to pending" in revived.stdout
    after = RedisOutbox(redis_url)
    assert [e.rule for e in after.pending()] == ["View", "Once", "View"]  # at the end
    assert after.backlog().dead == 0
    purged = tagengine("outbox", "purge", "--outbox", redis_url, "--pending")
    assert purged.returncode == 0 and "3 entries purged" in purged.stdout
    assert after.backlog().pending == 0


def test_the_outbox_commands_say_when_redis_is_unreachable() -> None:
    gone = f"redis://127.0.0.1:{free_port()}/0"
    done = tagengine("outbox", "list", "--outbox", gone)
    assert done.returncode == 1
    assert f"redis {gone} unreachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_identity_is_stored_again_only_when_it_changed_more_than_a_renewal() -> None:
    from engine.stores.redis_sessions import _worth_storing

    now = 1_000_000.0
    entry = {"key": "kndctr_ORG_cluster", "value": "or2", "expires": now + 1800}
    before = {"ecid": "1", "entries": [entry], "location_hint": "or2"}
    renewed = {**before, "entries": [{**entry, "expires": now + 1800 + 60}]}
    assert not _worth_storing(before, renewed, now)  # a minute on a 30-minute entry
    later = {**before, "entries": [{**entry, "expires": now + 1800 + 600}]}
    assert _worth_storing(before, later, now)
    assert _worth_storing(before, {**before, "ecid": "2"}, now)
    assert _worth_storing(before, {**before, "entries": [{**entry, "value": "va6"}]}, now)
    assert not _worth_storing(before, before, now)


def test_an_engine_hands_back_the_partitions_of_the_outbox_it_made(
    redis_url: str, emulator: EmulatorServer
) -> None:
    ruleset = load_text(RULES)
    options = {"edge_url": emulator.url, "sitecore_url": emulator.url}
    engine = Engine(ruleset, sessions=redis_url, background=True, **options)  # type: ignore[arg-type]
    engine.session("s").push({"event": "page.view", "n": 1})
    assert engine.flush(10)
    assert _leases(redis_url)  # it delivers: it holds partitions
    engine.close()
    assert _leases(redis_url) == []  # handed over at once, not left to renew forever


def _leases(url: str) -> list[bytes]:
    import redis as redis_py

    return [key for key in redis_py.Redis.from_url(url).keys("*") if b":lease:" in key]


def test_a_session_recreated_elsewhere_is_not_overwritten_from_a_stale_cache(
    redis_url: str,
) -> None:
    """Process A stored a session last; it expires; process B starts it again. A's next push
    must see B's session, not write over it from what A remembered."""
    ruleset = load_text(RULES)
    first = Engine(ruleset, sessions=RedisSessions(redis_url), dry_run=True)
    second = Engine(ruleset, sessions=RedisSessions(redis_url), dry_run=True)
    first.session("s").push({"event": "page.view", "n": 1, "a1": True})
    first.sessions.delete("s")  # type: ignore[attr-defined]  # as if it had expired
    second.session("s").push({"event": "page.view", "n": 2, "b1": True})
    first.session("s").push({"event": "page.view", "n": 3, "a2": True})
    stored = RedisSessions(redis_url).read("s")
    assert stored is not None
    assert stored.state == {"n": 3, "b1": True, "a2": True}
    assert stored.pushes == 2


def test_an_unreadable_entry_left_pending_is_dead_lettered_not_blocking(
    redis_url: str, emulator: EmulatorServer
) -> None:
    """Garbage in a partition, read by a worker that died before it dealt with it: the next
    worker dead-letters it and delivers the partition's sends."""
    import redis as redis_py

    ruleset = load_text(RULES)
    outbox = RedisOutbox(redis_url)
    with Engine(
        ruleset, sessions=redis_url, deliver=False, edge_url=emulator.url, sitecore_url=emulator.url
    ) as engine:
        engine.session("s").push({"event": "page.view", "n": 1})
    stream = outbox.stream_key("s")
    raw = redis_py.Redis.from_url(redis_url)
    raw.xgroup_create(stream, "tagengine", id="0", mkstream=True)
    raw.xadd(stream, {"h": b"not json", "b": b""})
    raw.xreadgroup("tagengine", "dead-worker", {stream: ">"})  # read, never settled
    drain(redis_url, emulator, 20)
    assert raw.xlen(outbox._dead_key) == 1  # kept aside, with why
    sent = [r for r in emulator.requests() if "/event/create.json" in r.path or "/ee/" in r.path]
    assert len(sent) == 3


def test_an_unreadable_stored_session_is_kept_aside_and_the_push_goes_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis as redis_py

    raw = redis_py.Redis.from_url(redis_url)
    raw.hset("tagengine:s:s", mapping={"t": "x", "d": b"\xff not json"})
    with Engine(load_text(RULES), sessions=redis_url, dry_run=True) as engine:
        assert engine.session("s").push({"event": "page.view", "n": 1}).fired == ["View", "Once"]
        assert engine.session("s").state == {"n": 1}
    kept = [key for key in raw.keys("tagengine:quarantine:s:s:*")]
    assert len(kept) == 1 and raw.get(kept[0]) == b"\xff not json"
    assert raw.get("tagengine:quarantined") == b"1"
    assert "unreadable session 's' kept as" in caplog.text


def _calls(url: str) -> dict[str, int]:
    import redis as redis_py

    stats = redis_py.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def test_a_new_session_costs_one_round_trip_and_a_spread_one_is_read_first(
    redis_url: str,
) -> None:
    """A process takes a session it has not seen for a new one (one script call, no read);
    when such guesses keep failing (the sessions live in other processes), it reads first."""
    import redis as redis_py

    ruleset = load_text(RULES)
    sessions = [f"spread-{n}" for n in range(40)]
    with Engine(ruleset, sessions=RedisSessions(redis_url), deliver=False) as first:
        first.push({"event": "page.view", "n": 0}, session=sessions[0])  # the outbox set up
        redis_py.Redis.from_url(redis_url).config_resetstat()
        for n, session in enumerate(sessions[1:], 1):
            first.push({"event": "page.view", "n": n}, session=session)
        calls = _calls(redis_url)
        assert calls.get("evalsha") == 39 and "hmget" not in calls
    with Engine(ruleset, sessions=RedisSessions(redis_url), deliver=False) as second:
        redis_py.Redis.from_url(redis_url).config_resetstat()
        for n, session in enumerate(sessions):
            result = second.push({"event": "page.view", "m": n}, session=session)
            assert result.snapshot == {"n": n, "m": n}  # on what the first process stored
        calls = _calls(redis_url)
        # a few wrong guesses (each a second script call), then reads before the script
        assert 40 < calls["evalsha"] <= 40 + 8 and calls["hmget"] >= 2 * (40 - 8)
    with Engine(ruleset, sessions=RedisSessions(redis_url), dry_run=True) as third:
        # both processes' firings were counted: "Once" (3 per session) fires once more
        assert third.push({"event": "page.view"}, session="spread-7").fired == ["View", "Once"]
        assert third.push({"event": "page.view"}, session="spread-7").fired == ["View"]


def test_a_wrong_guess_is_retried_at_once_and_a_race_after_a_pause(redis_url: str) -> None:
    """The engine waits a random moment before running a push again only when another
    writer came first, not when the store took a stored session for a new one."""
    first, second = RedisSessions(redis_url), RedisSessions(redis_url)
    now = time.time()
    with first.begin("guess", None, now) as transaction:
        assert transaction.commit((), None, now)
    with second.begin("guess", None, now) as transaction:  # unseen here: taken for new
        assert not transaction.commit((), None, now)
        assert transaction.contended is False
    with second.begin("guess", None, now) as transaction:  # now on what the first stored
        assert transaction.commit((), None, now)
    with first.begin("guess", None, now) as transaction:  # its cached copy is stale
        assert not transaction.commit((), None, now)
        assert transaction.contended is True


@pytest.mark.parametrize("cache", [10_000, 0])
def test_a_returning_visitor_s_new_session_is_stored_on_the_second_try(
    redis_url: str, cache: int
) -> None:
    """The guess that a new session is new holds, but its visitor has memory stored: the
    second try runs on what Redis answered (not on a second guess), and the guess is not
    counted as wrong."""
    first, second = RedisSessions(redis_url), RedisSessions(redis_url, cache=cache)
    now = time.time()
    with first.begin("visit-1", "returning", now) as transaction:
        transaction.session.visitor.kept["tier"] = "gold"
        assert transaction.commit((), None, now)
    score = second._guesses
    with second.begin("visit-2", "returning", now) as transaction:
        assert transaction.session.visitor.kept == {}  # taken for new, visitor and all
        assert not transaction.commit((), None, now)
        assert transaction.contended is False
    with second.begin("visit-2", "returning", now) as transaction:
        assert transaction.session.visitor.kept == {"tier": "gold"}
        transaction.session.visitor.kept["seen"] = 2
        assert transaction.commit((), None, now)
    assert second._guesses >= score  # the session was new: the guess was right
    stored = RedisSessions(redis_url).read("visit-1")
    assert stored is not None and stored.visitor.kept == {"tier": "gold", "seen": 2}
