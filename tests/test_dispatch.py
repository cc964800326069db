"""The engine delivering for real, to the local emulator over loopback sockets."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from engine import Engine, EngineError, Ruleset
from engine.background import Redelivery
from engine.clients import RetryPolicy, take_cookies
from engine.clients.identity import merge_identity
from engine.emulator import EmulatorConfig, EmulatorServer, Fault, emulator_config
from engine.stores.sqlite import Outbox
from tests.conftest import SETTINGS, load_text

RULES = dedent(
    """\
    rule "Page view" {
      on "page.view"
      send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page.name } }
      send sitecore { type: "VIEW", page: state.page.name }
    }
    """
)
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, total_timeout=5.0)


def engine_for(server: EmulatorServer, rules: str = RULES) -> Engine:
    ruleset = load_text({"a_settings.rules": SETTINGS, "t.rules": rules})
    return Engine(ruleset, edge_url=server.url, sitecore_url=server.url, policy=FAST)


def test_sends_are_delivered_and_identity_is_kept(emulator: EmulatorServer) -> None:
    with engine_for(emulator) as engine:
        session = engine.session("visitor-1")
        first = session.push({"event": "page.view", "page": {"name": "Home"}})
        second = session.push({"event": "page.view", "page": {"name": "Shoes"}})
        other = engine.session("visitor-2").push({"event": "page.view", "page": {"name": "Home"}})
    assert [(s.destination, s.status, s.attempts, s.error) for s in first.sends] == [
        ("edge", 200, 1, None),
        ("sitecore", 201, 1, None),
    ]
    ecid = first.sends[0].response["ecid"]
    assert ecid and second.sends[0].response["ecid"] == ecid
    assert other.sends[0].response["ecid"] != ecid
    # The second request of the visitor carried the state the first answer stored.
    edge_calls = [r for r in emulator.requests("/ee/") if r.status == 200]
    assert len(edge_calls) == 3
    entries = edge_calls[1].body["meta"]["state"]["entries"]
    assert any(entry["key"].endswith("_identity") for entry in entries)
    # One Sitecore browser id per session, created once.
    assert len(emulator.requests("/v1.2/browser/create.json")) == 2
    assert first.sends[1].response["browser_id"] == second.sends[1].response["browser_id"]


def test_retryable_failures_are_retried_with_the_same_event(emulator: EmulatorServer) -> None:
    emulator.set_faults(Fault(status=503, retry_after="0", count=2, path="/ee/"))
    with engine_for(emulator) as engine:
        result = engine.session("v").push({"event": "page.view", "page": {"name": "Home"}})
    edge = result.sends[0]
    assert (edge.status, edge.attempts, edge.error) == (200, 3, None)
    calls = emulator.requests("/ee/")
    assert [c.status for c in calls] == [503, 503, 200]
    assert len({c.body["event"]["xdm"]["_id"] for c in calls}) == 1  # Edge de-duplicates on it


def test_a_refused_send_is_reported_on_the_send_not_raised(emulator: EmulatorServer) -> None:
    emulator.set_faults(Fault(status=400, path="/ee/"))
    with engine_for(emulator) as engine:
        result = engine.session("v").push({"event": "page.view", "page": {"name": "Home"}})
    edge = result.sends[0]
    assert edge.status == 400 and edge.attempts == 1
    assert edge.error and "400" in edge.error
    assert result.rules[0].status == "fired"
    assert result.sends[1].status == 201  # the other destination still got its event


def test_apush_delivers_without_blocking_the_event_loop(emulator: EmulatorServer) -> None:
    emulator.set_faults(Fault(delay=0.3, path="/ee/"))  # each Edge answer takes 300 ms

    async def main(engine: Engine) -> tuple[int, list[int | None]]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        clock = asyncio.create_task(ticker())
        first, second = await asyncio.gather(
            engine.session("v").apush({"event": "page.view", "page": {"name": "A"}}),
            engine.session("w").apush({"event": "page.view", "page": {"name": "B"}}),
        )
        done.set()
        await clock
        return ticks, [first.sends[0].status, second.sends[0].status]

    with engine_for(emulator) as engine:
        ticks, statuses = asyncio.run(main(engine))
    assert statuses == [200, 200]
    assert ticks >= 10  # the loop ran while the pushes waited for Edge


def test_a_sessions_apushes_are_processed_in_await_order(emulator: EmulatorServer) -> None:
    async def main(engine: Engine) -> list[Any]:
        session = engine.session("v")
        results = await asyncio.gather(
            *(session.apush({"event": "page.view", "page": {"name": f"P{n}"}}) for n in range(12))
        )
        return [result.snapshot["page"]["name"] for result in results]

    with engine_for(emulator) as engine:
        names = asyncio.run(main(engine))
    assert names == [f"P{n}" for n in range(12)]
    arrived = [
        r.body["event"]["xdm"]["web"]["webPageDetails"]["name"] for r in emulator.requests("/ee/")
    ]
    assert arrived == [f"P{n}" for n in range(12)]


def test_cli_run_with_the_emulator(tmp_path: Path) -> None:
    (tmp_path / "s.rules").write_text(SETTINGS)
    (tmp_path / "r.rules").write_text(RULES)
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"event": "page.view", "page": {"name": "Home"}}\n'
        '{"session": "b", "push": {"event": "page.view", "page": {"name": "Cart"}}}\n'
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            "--rules",
            str(tmp_path),
            "--emulator",
            "--json",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["session"] for line in lines] == ["default", "b"]
    for line in lines:
        edge, sitecore = line["sends"]
        assert edge["url"].startswith("http://127.0.0.1:") and "/ee/v2/interact?" in edge["url"]
        assert (edge["status"], edge["attempts"]) == (200, 1)
        assert edge["response"]["ecid"]
        assert (sitecore["status"], sitecore["attempts"]) == (201, 1)


AUTH_SETTINGS = (
    'edge { datastream: "ds-1", org: "ACME0123456789@AdobeOrg", client_id: "cid", fpid: true, '
    'client_secret: env("TE_CLIENT_SECRET") }\nsitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }\n'
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def test_cli_run_with_the_emulator_gets_tokens_from_it_not_from_adobe(tmp_path: Path) -> None:
    """Credentials in the rules go to the emulator's IMS with --emulator, never the real one
    (here unreachable: the send would fail)."""
    (tmp_path / "s.rules").write_text(AUTH_SETTINGS)
    (tmp_path / "r.rules").write_text(RULES)
    events = tmp_path / "events.jsonl"
    events.write_text('{"event": "page.view", "page": {"name": "Home"}}\n')
    run = run_cli(
        "run", "--rules", str(tmp_path), "--emulator", "--json", str(events),
        env={"TE_CLIENT_SECRET": "s3cr3t"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (line,) = [json.loads(text) for text in run.stdout.splitlines()]
    edge = line["sends"][0]
    assert (edge["status"], edge.get("error")) == (200, None)
    assert "s3cr3t" not in run.stdout + run.stderr


def test_cli_run_with_the_emulator_and_another_edge_asks_that_edges_ims(tmp_path: Path) -> None:
    """``--emulator --edge URL``: Edge requests go to URL, so tokens come from the IMS the
    rules name (here a second emulator requiring them), not from the emulator started."""
    with EmulatorServer(config=EmulatorConfig(require_auth=True)) as real:
        token_url = f'token_url: "{real.url}/ims/token/v3", '
        (tmp_path / "s.rules").write_text(AUTH_SETTINGS.replace("edge { ", "edge { " + token_url))
        (tmp_path / "r.rules").write_text(RULES)
        events = tmp_path / "events.jsonl"
        events.write_text('{"event": "page.view", "page": {"name": "Home"}}\n')
        run = run_cli(
            "run", "--rules", str(tmp_path), "--emulator", "--edge", real.url, "--json",
            str(events), env={"TE_CLIENT_SECRET": "s3cr3t"},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        edge = json.loads(run.stdout.splitlines()[0])["sends"][0]
        assert (edge["status"], edge.get("error")) == (200, None)
        assert len(real.requests("/ims/")) == 1 and len(real.requests("/ee/")) == 1


def test_a_failed_send_line_says_its_status_time_and_attempts(tmp_path: Path) -> None:
    with EmulatorServer() as server:
        server.set_faults(Fault(status=400, path="/ee/"))
        (tmp_path / "s.rules").write_text(SETTINGS)
        (tmp_path / "r.rules").write_text(RULES)
        events = tmp_path / "events.jsonl"
        events.write_text('{"event": "page.view", "page": {"name": "Home"}}\n')
        run = run_cli(
            "run", "--rules", str(tmp_path), "--edge", server.url, "--sitecore", server.url,
            str(events),
        )  # fmt: skip
    assert run.returncode == 1, run.stderr  # a failed send fails the run, and says so
    edge_line = next(line for line in run.stdout.splitlines() if "send edge" in line)
    assert "→ 400 in " in edge_line and "1 attempt(s), error: " in edge_line
    assert run.stdout.splitlines()[-1] == "1 push, 1 rule fired, 2 sends; 1 send failed"


COOKIE_ORG = "ACME0123456789@AdobeOrg"
COOKIE_PREFIX = "kndctr_ACME0123456789_AdobeOrg_"


def cookie_rules() -> Ruleset:
    return load_text(
        {
            "a_settings.rules": f'edge {{ datastream: "ds-1", org: "{COOKIE_ORG}" }}\n'
            'sitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }\n',
            "t.rules": RULES,
        }
    )


def test_cookies_go_in_and_out_of_a_session(tmp_path: Path) -> None:
    """The visitor's kndctr cookies ride in the next request; the Set-Cookie values give the
    browser the identity Edge answered, named after the rules' org (the emulator started for
    these rules names its state entries so)."""
    prefix = COOKIE_PREFIX
    ruleset = cookie_rules()
    with (
        EmulatorServer(config=emulator_config(ruleset)) as server,
        Engine(ruleset, edge_url=server.url, sitecore_url=server.url, policy=FAST) as engine,
    ):
        first = engine.session("a")
        ecid = (
            first.push({"event": "page.view", "page": {"name": "Home"}}).sends[0].response["ecid"]
        )
        cookies = first.set_cookie_headers("shop.example")
        names = sorted(header.split("=", 1)[0] for header in cookies)
        assert names == [prefix + "cluster", prefix + "identity"]
        assert all("Domain=shop.example" in header and "Secure" in header for header in cookies)
        # The same browser comes back in a new server session: one visitor, one ECID.
        jar = dict(header.split(";", 1)[0].split("=", 1) for header in cookies)
        later = engine.session("b")
        later.take_cookies({**jar, "other": "ignored"})
        answer = later.push({"event": "page.view", "page": {"name": "Shoes"}})
        sent = server.requests("/ee/")[-1]
    assert answer.sends[0].response["ecid"] == ecid
    assert {e["key"]: e["value"] for e in sent.body["meta"]["state"]["entries"]} == jar
    assert "/ee/or2/" in sent.path  # the cluster cookie's location hint


def test_in_background_mode_cookies_keep_the_browsers_identity(
    tmp_path: Path,
) -> None:
    """The README's flow with a push that returns before Edge answers: the browser's
    cookies ride in the request, and are not sent back without their lifetime."""
    ruleset = cookie_rules()
    jar = {COOKIE_PREFIX + "identity": "CiY1234", COOKIE_PREFIX + "cluster": "va6"}
    with (
        EmulatorServer(config=emulator_config(ruleset)) as server,
        Engine(
            ruleset,
            edge_url=server.url,
            sitecore_url=server.url,
            policy=FAST,
            background=True,
            outbox=tmp_path / "o.db",
        ) as engine,
    ):
        session = engine.session("new")
        session.take_cookies(jar)
        session.push({"event": "page.view", "page": {"name": "Home"}})
        assert session.set_cookie_headers("shop.example") == []  # nothing new yet
        assert engine.flush(10)
        renewed = session.set_cookie_headers("shop.example")
        (sent,) = server.requests("/ee/")
    assert {e["key"]: e["value"] for e in sent.body["meta"]["state"]["entries"]} == jar
    assert "/ee/va6/" in sent.path
    assert sorted(h.split("=", 1)[0] for h in renewed) == sorted(jar)  # Edge renewed them
    assert all("Max-Age=" in h for h in renewed)


def test_a_delivery_answered_meanwhile_does_not_undo_cookies_taken_meanwhile() -> None:
    """Background delivery works on a copy of the identity and merges the answer back: an
    entry the session took from the browser's cookies meanwhile stays the browser's."""
    base = {"entries": [{"key": COOKIE_PREFIX + "cluster", "value": "or2"}]}
    session = copy.deepcopy(base)
    answered = {
        "entries": [
            {"key": COOKIE_PREFIX + "cluster", "value": "or2", "maxAge": 1800},
            {"key": COOKIE_PREFIX + "identity", "value": "SERVER-ECID", "maxAge": 100},
        ],
        "ecid": "1234",
    }
    take_cookies(session, {COOKIE_PREFIX + "identity": "BROWSER-ECID"}, COOKIE_ORG)
    merge_identity(session, base, answered)
    values = {e["key"]: e["value"] for e in session["entries"]}
    assert values == {COOKIE_PREFIX + "cluster": "or2", COOKIE_PREFIX + "identity": "BROWSER-ECID"}
    assert session["entries"][0]["maxAge"] == 1800  # the renewal the session did not override
    assert "ecid" not in session  # the server's ECID does not go with the browser's identity
    # The cluster too: the browser's entry and location hint stay together.
    base = {"entries": [], "location_hint": "or2"}
    session = copy.deepcopy(base)
    take_cookies(session, {COOKIE_PREFIX + "cluster": "va6"}, COOKIE_ORG)
    cluster = {"key": COOKIE_PREFIX + "cluster", "value": "or2", "maxAge": 1800}
    merge_identity(
        session, base, {"entries": [cluster], "location_hint": "or2", "location_hint_expires": 9}
    )
    assert session["location_hint"] == "va6" and "location_hint_expires" not in session
    assert session["entries"] == [{"key": cluster["key"], "value": "va6", "from_cookie": True}]
    # Edge renewing the very value taken from the cookie: the renewal is taken (sent back).
    session = copy.deepcopy(base)
    take_cookies(session, {COOKIE_PREFIX + "cluster": "or2"}, COOKIE_ORG)
    merge_identity(session, base, {"entries": [cluster], "location_hint": "or2"})
    assert session["entries"] == [cluster]
    expired = {"entries": [{"key": COOKIE_PREFIX + "cluster", "value": "or2"}]}
    merge_identity(expired, copy.deepcopy(expired), {"entries": []})  # pruned by the delivery
    assert expired["entries"] == []


def test_cookies_need_the_org_in_the_edge_settings(emulator: EmulatorServer) -> None:
    with engine_for(emulator) as engine:
        with pytest.raises(EngineError, match="'org' in the edge settings"):
            engine.session("a").take_cookies({})
        with pytest.raises(EngineError, match="'org'"):
            engine.session("a").set_cookie_headers()


def test_engine_redelivery_decides_when_a_failing_send_is_buried(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.set_faults(Fault(status=503, retry_after="0", path="/ee/"))
    ruleset = load_text({"a_settings.rules": SETTINGS, "t.rules": RULES})
    engine = Engine(
        ruleset,
        edge_url=emulator.url,
        sitecore_url=emulator.url,
        policy=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02, total_timeout=2),
        background=True,
        outbox=tmp_path / "o.db",
        redelivery=Redelivery(max_rounds=2, base_delay=0.05, max_delay=0.05),
    )
    with engine:
        engine.session("v").push({"event": "page.view", "page": {"name": "Home"}})
        assert engine.flush(timeout=15)
    with Outbox(tmp_path / "o.db") as box:
        (dead,) = box.dead()
    assert dead.destination == "edge" and "gave up after 2 delivery rounds" in (
        dead.last_error or ""
    )
    assert len(emulator.requests("/ee/")) == 4  # two rounds of two attempts


def test_background_mode_returns_once_the_sends_are_durable(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    ruleset = load_text({"a_settings.rules": SETTINGS, "t.rules": RULES})
    outbox = tmp_path / "outbox.db"
    engine = Engine(
        ruleset,
        edge_url=emulator.url,
        sitecore_url=emulator.url,
        policy=FAST,
        background=True,
        outbox=outbox,
    )
    with engine:
        for index in range(10):
            result = engine.session(f"v{index % 3}").push(
                {"event": "page.view", "page": {"name": f"Page {index}"}}
            )
            assert result.sends and all(send.status is None for send in result.sends)
        assert engine.flush(timeout=15)
    names = [
        r.body["event"]["xdm"]["web"]["webPageDetails"]["name"] for r in emulator.requests("/ee/")
    ]
    assert sorted(names) == sorted(f"Page {i}" for i in range(10))
    for session in range(3):  # each session's events arrive in push order
        mine = [n for n in names if int(n.split()[1]) % 3 == session]
        assert mine == sorted(mine, key=lambda n: int(n.split()[1]))
    assert len(emulator.requests("/v1.2/event/create.json")) == 10
