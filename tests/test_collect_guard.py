"""The collect endpoint faces the internet: body and batch bounds, rate limits (in memory and in
a real Redis), bot filtering, identity cookies that only claim their own visitor, health, and a
flood from loopback against uvicorn while a real visitor keeps being answered."""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import pytest
import uvicorn

from engine import Engine
from engine.background import Redelivery
from engine.clients import RetryPolicy
from engine.emulator import EmulatorServer
from engine.web import CollectSettings, asgi_app, wsgi_app
from engine.web.bots import NO_USER_AGENT, bot_match
from engine.web.core import CollectCore, CollectRequest, CollectResponse
from engine.web.limits import RateLimits, storage_for
from tests.conftest import load_text
from tests.redis_fixture import RedisServer

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"
IDENTITY_COOKIE = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_identity"
SETTINGS = f'edge {{ datastream: "ds-1", org: "{ORG}" }}\n'
RULES = dedent(
    """\
    rule "Page view" {
      on "page.view"
      send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page.name } }
    }
    """
)
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SECRET = "test-secret"
PUSH = {"event": "page.view", "page": {"name": "home"}}


def ruleset() -> Any:
    return load_text({"a_settings.rules": SETTINGS, "t.rules": RULES})


@pytest.fixture
def engine() -> Iterator[Engine]:
    with Engine(ruleset(), dry_run=True) as made:
        yield made


def core_of(engine: Engine, **options: Any) -> CollectCore:
    options.setdefault("secret", SECRET)
    return CollectCore(engine, CollectSettings(**options))


def post(
    core: CollectCore,
    body: Any = PUSH,
    *,
    ip: str = "192.0.2.10",
    ua: str | None = CHROME,
    cookies: dict[str, str] | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> CollectResponse:
    sent = [("Host", "shop.example.com"), ("Content-Type", "application/json"), *headers]
    if ua is not None:
        sent.append(("User-Agent", ua))
    if cookies:
        sent.append(("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items())))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return core.handle(CollectRequest("POST", "/", sent, raw, client=ip))


def body(response: CollectResponse) -> Any:
    return json.loads(response.body)


def set_cookies(response: CollectResponse) -> dict[str, str]:
    """The cookies a response sets, name to value."""
    out: dict[str, str] = {}
    for key, value in response.headers:
        if key.lower() == "set-cookie":
            name, _, rest = value.partition("=")
            out[name] = rest.partition(";")[0]
    return out


def header(response: CollectResponse, name: str) -> str | None:
    return next((v for k, v in response.headers if k.lower() == name.lower()), None)


# ---------------------------------------------------------------------- bounds
def test_a_body_past_max_body_is_refused_by_the_core_asgi_and_wsgi(engine: Engine) -> None:
    core = core_of(engine, max_body=1000)
    big = json.dumps({"event": "page.view", "pad": "x" * 2000}).encode()
    assert post(core, big).status == 413
    assert post(core, PUSH).status == 200

    async def over_asgi() -> int:
        app = asgi_app(engine, secret=SECRET, max_body=1000)
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            response = await client.post("/", content=big, headers={"User-Agent": CHROME})
            return response.status_code

    assert asyncio.run(over_asgi()) == 413
    wsgi = httpx.Client(
        transport=httpx.WSGITransport(app=wsgi_app(engine, secret=SECRET, max_body=1000)),
        base_url="http://shop.test",
    )
    with wsgi:
        assert wsgi.post("/", content=big, headers={"User-Agent": CHROME}).status_code == 413


def test_a_batch_past_max_pushes_is_refused_whole(engine: Engine) -> None:
    core = core_of(engine, max_pushes=3)
    batch = {"pushes": [{"id": f"p{i}", "push": PUSH} for i in range(4)]}
    response = post(core, batch)
    assert response.status == 400
    assert "at most 3 pushes" in body(response)["error"]
    batch["pushes"] = batch["pushes"][:3]
    response = post(core, batch)
    assert response.status == 200
    assert [r["id"] for r in body(response)["results"]] == ["p0", "p1", "p2"]


# ---------------------------------------------------------------------- rate limits
def test_the_ip_limit_answers_429_with_retry_after_and_spares_other_ips(engine: Engine) -> None:
    core = core_of(engine, rate_limit_ip="3/minute", rate_limit_visitor=None)
    assert [post(core).status for _ in range(3)] == [200, 200, 200]
    refused = post(core)
    assert refused.status == 429
    retry = header(refused, "Retry-After")
    assert retry is not None and 1 <= int(retry) <= 60
    assert body(refused)["retry_after"] == int(retry)
    assert "ip limit is 3/minute" in body(refused)["error"]
    assert set_cookies(refused) == {}  # nothing done: no identity given
    assert post(core, ip="192.0.2.11").status == 200


def test_the_ip_is_the_visitors_behind_a_trusted_proxy(engine: Engine) -> None:
    core = core_of(
        engine, rate_limit_ip="2/minute", rate_limit_visitor=None, trusted_proxies=["10.0.0.0/8"]
    )
    proxy = "10.0.0.5"
    for visitor_ip in ("198.51.100.1", "198.51.100.2"):
        forwarded = [("X-Forwarded-For", visitor_ip)]
        assert post(core, ip=proxy, headers=forwarded).status == 200
        assert post(core, ip=proxy, headers=forwarded).status == 200
        assert post(core, ip=proxy, headers=forwarded).status == 429
    # An untrusted client's X-Forwarded-For is not believed: its own address is counted.
    spoofed = [("X-Forwarded-For", "198.51.100.3")]
    assert [post(core, ip="192.0.2.99", headers=spoofed).status for _ in range(3)] == [
        200,
        200,
        429,
    ]


def test_the_visitor_limit_counts_a_returning_visitor_across_ips(engine: Engine) -> None:
    core = core_of(engine, rate_limit_ip=None, rate_limit_visitor="2/minute")
    first = post(core, ip="192.0.2.1")
    cookies = set_cookies(first)
    assert post(core, ip="192.0.2.2", cookies=cookies).status == 200
    assert post(core, ip="192.0.2.3", cookies=cookies).status == 200
    refused = post(core, ip="192.0.2.4", cookies=cookies)
    assert refused.status == 429
    assert "visitor limit" in body(refused)["error"]
    # New visitors (no cookie) are not counted per visitor: the IP limit is theirs.
    assert all(post(core).status == 200 for _ in range(5))


def test_default_limits_allow_real_browsing(engine: Engine) -> None:
    settings = CollectSettings()
    assert settings.rate_limit_ip == "600/minute"
    assert settings.rate_limit_visitor == "120/minute"
    core = core_of(engine)
    cookies = set_cookies(post(core))
    # A busy page: 60 requests in a burst from one visitor.
    assert {post(core, cookies=cookies).status for _ in range(60)} == {200}


def test_limits_are_shared_in_the_engines_redis(redis_server: RedisServer) -> None:
    with Engine(ruleset(), dry_run=True, sessions=redis_server.url + "?prefix=t1:") as engine:
        assert storage_for(engine) == redis_server.url  # tagengine's own options left out
        settings = CollectSettings(secret=SECRET, rate_limit_ip="3/minute")
        # Two workers of one app: each its own core, one Redis.
        first, second = CollectCore(engine, settings), CollectCore(engine, settings)
        assert first.limits is not None and type(first.limits.storage).__name__ == "RedisStorage"
        statuses = [post(core).status for core in (first, second, first, second)]
        assert statuses == [200, 200, 200, 429]
        keys = redis_server.client().keys("tagengine-limits*")
        assert keys, "the counters are in Redis"


def test_an_unreachable_limits_storage_lets_requests_through(engine: Engine) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limits = RateLimits("1/minute", None, f"redis://127.0.0.1:{port}/0")
    assert limits.check("192.0.2.1", None) is None
    assert limits.check("192.0.2.1", None) is None  # not refused: nothing could be counted


# ---------------------------------------------------------------------- bots
def test_the_bot_list() -> None:
    assert bot_match(CHROME) is None
    assert bot_match(GOOGLEBOT) == "Googlebot"
    assert bot_match(None) == NO_USER_AGENT
    assert bot_match("   ") == NO_USER_AGENT
    assert bot_match("python-requests/2.31") is not None


def test_bot_pushes_are_answered_but_not_processed(engine: Engine) -> None:
    core = core_of(engine)
    batch = {"pushes": [{"id": "a", "push": PUSH}, {"id": "b", "push": PUSH}]}
    response = post(core, batch, ua=GOOGLEBOT)
    assert response.status == 200
    assert body(response) == {
        "results": [{"id": "a", "ok": True, "bot": True}, {"id": "b", "ok": True, "bot": True}]
    }
    assert set_cookies(response) == {}  # no visitor, no session
    assert len(engine.sessions) == 0  # type: ignore[arg-type]
    assert post(core, PUSH, ua=None).status == 200
    assert len(engine.sessions) == 0  # type: ignore[arg-type]
    # A browser's push is processed.
    assert body(post(core, PUSH))["results"][0]["fired"] == ["Page view"]


def test_bots_allow_processes_their_pushes(engine: Engine) -> None:
    core = core_of(engine, bots="allow")
    (result,) = body(post(core, PUSH, ua=GOOGLEBOT))["results"]
    assert result["fired"] == ["Page view"] and "bot" not in result
    with pytest.raises(ValueError, match="bots must be"):
        core_of(engine, bots="block")


def test_bots_are_logged_at_debug(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    core = core_of(engine)
    with caplog.at_level("DEBUG", logger="engine.web"):
        post(core, PUSH, ua=GOOGLEBOT)
    assert any("from a bot (Googlebot)" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- identity cookies
def ids(response: CollectResponse) -> tuple[str, str]:
    """The visitor and session ids a response's cookies give (the part before the MAC)."""
    cookies = set_cookies(response)
    return cookies["tg_vid"].rpartition(".")[0], cookies["tg_sid"].rpartition(".")[0]


def test_signed_cookies_keep_their_visitor_and_session(engine: Engine) -> None:
    core = core_of(engine)
    first = post(core)
    visitor, session = ids(first)
    assert re.fullmatch(r"[0-9a-f]{24}", visitor)
    assert session.startswith(visitor + "-")
    again = post(core, cookies=set_cookies(first))
    assert ids(again) == (visitor, session)


def test_forged_or_foreign_cookies_get_a_fresh_identity(engine: Engine) -> None:
    core = core_of(engine)
    alice = set_cookies(post(core))
    bob = set_cookies(post(core))
    alice_vid, alice_sid = alice["tg_vid"].rpartition(".")[0], alice["tg_sid"].rpartition(".")[0]

    def fresh(cookies: dict[str, str]) -> tuple[str, str]:
        visitor, session = ids(post(core, cookies=cookies))
        assert visitor != alice_vid and session != alice_sid
        return visitor, session

    # An unsigned id, a bad MAC, a MAC of another secret: a new visitor.
    fresh({"tg_vid": alice_vid, "tg_sid": alice_sid})
    fresh({"tg_vid": alice_vid + ".0123456789abcdef0123456789abcdef"})
    other = set_cookies(post(core_of(engine, secret="another-secret")))
    fresh(other)
    # Alice's session with Bob's visitor: Bob keeps his visitor, in a session of his own.
    bob_vid = bob["tg_vid"].rpartition(".")[0]
    visitor, session = ids(post(core, cookies={"tg_vid": bob["tg_vid"], "tg_sid": alice["tg_sid"]}))
    assert visitor == bob_vid and session.startswith(bob_vid + "-") and session != alice_sid
    # Alice's session cookie offered as a visitor cookie (signed, for another purpose).
    fresh({"tg_vid": alice["tg_sid"], "tg_sid": alice["tg_sid"]})
    # Alice's session without her visitor cookie: not hers to claim.
    fresh({"tg_sid": alice["tg_sid"]})


def test_identity_cookies_only_reach_the_requests_own_session(engine: Engine) -> None:
    core = core_of(engine)
    alice = post(core)
    alice_sid = ids(alice)[1]
    before = engine.sessions.identity(alice_sid) or {}
    assert not before.get("entries")
    # Mallory holds Alice's session cookie (no visitor cookie) and a kndctr identity.
    stolen = {"tg_sid": set_cookies(alice)["tg_sid"], IDENTITY_COOKIE: "CiYwNTkwNzYzODExMjkyNDQ4"}
    mallory = post(core, cookies=stolen)
    mallory_sid = ids(mallory)[1]
    assert mallory_sid != alice_sid
    after = engine.sessions.identity(alice_sid) or {}
    assert not after.get("entries"), "Alice's session took nothing"
    taken = engine.sessions.identity(mallory_sid) or {}
    assert [e["key"] for e in taken.get("entries", [])] == [IDENTITY_COOKIE]


# ---------------------------------------------------------------------- health
def get(core: CollectCore, path: str) -> CollectResponse:
    return core.handle(CollectRequest("GET", path, [("Host", "shop.example.com")]))


def test_health_reports_ruleset_and_backlog(tmp_path: Path) -> None:
    with Engine(ruleset(), deliver=False, outbox=tmp_path / "sends.db", max_backlog=100) as engine:
        core = core_of(engine)
        assert post(core).status == 200
        response = get(core, "/healthz")
        assert response.status == 200
        health = body(response)
        assert health["ok"] is True and health["problems"] == []
        assert health["ruleset"] == engine.ruleset.version
        assert health["ruleset_error"] is None
        assert set(health["backlog"]) >= {"pending", "oldest_age", "dead"}
        assert {"pending", "oldest_pending_age", "dead"} <= set(health)


def test_health_is_503_when_delivery_is_stuck(tmp_path: Path) -> None:
    with Engine(ruleset(), deliver=False, outbox=tmp_path / "sends.db") as engine:
        core = core_of(engine, health_max_age=0.05)
        assert post(core).status == 200
        deadline = time.monotonic() + 5
        while True:  # the intake reads the push's journal in; then it ages
            response = get(core, "/healthz")
            if response.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status == 503
        health = body(response)
        assert health["ok"] is False
        assert health["pending"] == 1 and health["oldest_pending_age"] > 0.05
        assert "delivery is stuck" in health["problems"][0]


def test_health_is_503_with_dead_letters_past_the_bound(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with Engine(
        ruleset(),
        background=True,
        outbox=tmp_path / "sends.db",
        edge_url=closed,
        policy=RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01, total_timeout=1),
        redelivery=Redelivery(max_rounds=1),
        flush_timeout=1,
    ) as engine:
        core = core_of(engine, health_max_dead=0, identity="none")
        assert post(core).status == 200
        assert engine.flush(5)
        response = get(core, "/healthz")
        assert response.status == 503
        assert body(response)["dead"] == 1
        assert "1 dead letters" in body(response)["problems"][0]


def test_health_is_503_when_the_engine_is_closed(engine: Engine) -> None:
    core = core_of(engine)
    assert get(core, "/healthz").status == 200
    engine.close()
    response = get(core, "/healthz")
    assert response.status == 503
    assert "the engine is closed" in body(response)["problems"]


def test_health_is_503_after_a_failed_reload(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a_settings.rules").write_text(SETTINGS)
    (folder / "t.rules").write_text(RULES)
    with Engine.from_path(folder, dry_run=True, watch=True) as engine:
        core = core_of(engine)
        version = engine.ruleset.version
        assert get(core, "/healthz").status == 200
        (folder / "t.rules").write_text(RULES.replace('on "page.view"', "on page.view ("))
        deadline = time.monotonic() + 10
        while engine.ruleset_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        response = get(core, "/healthz")
        assert response.status == 503
        health = body(response)
        assert health["ruleset"] == version  # the previous rules serve
        assert "t.rules" in health["ruleset_error"]


# ---------------------------------------------------------------------- the flood
class Server:
    """uvicorn serving an app on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_a_flood_from_loopback_leaves_real_visitors_answered(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """Many clients from one IP, and many forged visitors from a few more, flood the endpoint
    for a few seconds while a real visitor posts now and then: the real visitor is answered
    200 every time, quickly; the flood gets 429s; the outbox never holds more than its bound
    (what the limits let through, against a slow destination)."""
    max_backlog = 300
    with Engine(
        ruleset(),
        background=True,
        outbox=tmp_path / "sends.db",
        max_backlog=max_backlog,
        edge_url=emulator.url,
        workers=2,
    ) as engine:
        emulator.set_faults({"delay": 0.2, "path": "/ee/"})  # delivery slower than the flood
        app = asgi_app(
            engine,
            secret=SECRET,
            identity="none",
            rate_limit_ip="50/minute",
            rate_limit_visitor="60/minute",
            trusted_proxies=["127.0.0.1"],
        )
        flood_seconds = 4.0
        statuses: dict[str, list[int]] = {"flood": [], "forged": [], "real": []}
        real_latencies: list[float] = []
        peak_backlog = 0

        async def flood(client: httpx.AsyncClient, kind: str, stop: float, n: int) -> None:
            index = 0
            while time.monotonic() < stop:
                index += 1
                headers = {"User-Agent": CHROME, "X-Forwarded-For": "203.0.113.66"}
                if kind == "forged":
                    # A new forged visitor each time, from 4 addresses.
                    headers["X-Forwarded-For"] = f"198.18.0.{n % 4 + 1}"
                    headers["Cookie"] = f"tg_vid={n:012x}{index:012x}.{'0' * 32}"
                try:
                    response = await client.post("/", json=PUSH, headers=headers)
                except httpx.HTTPError:
                    statuses[kind].append(0)
                    continue
                statuses[kind].append(response.status_code)

        async def real(client: httpx.AsyncClient, stop: float) -> None:
            headers = {"User-Agent": CHROME, "X-Forwarded-For": "192.0.2.200"}
            while time.monotonic() < stop:
                started = time.monotonic()
                response = await client.post("/", json=PUSH, headers=headers)
                real_latencies.append(time.monotonic() - started)
                statuses["real"].append(response.status_code)
                await asyncio.sleep(0.2)

        async def watch_backlog(stop: float) -> None:
            nonlocal peak_backlog
            while time.monotonic() < stop:
                backlog = engine.backlog()
                assert backlog is not None
                peak_backlog = max(peak_backlog, backlog.pending + backlog.journaled)
                await asyncio.sleep(0.05)

        async def run(url: str) -> None:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with (
                httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as flooder,
                httpx.AsyncClient(base_url=url, timeout=10) as visitor,
            ):
                stop = time.monotonic() + flood_seconds
                await asyncio.gather(
                    *(flood(flooder, "flood", stop, n) for n in range(24)),
                    *(flood(flooder, "forged", stop, n) for n in range(24)),
                    real(visitor, stop),
                    watch_backlog(stop),
                )

        started = time.monotonic()
        with Server(app) as server:
            asyncio.run(run(server.url))
        emulator.clear_faults()
        assert time.monotonic() - started < 15

    real_statuses = statuses["real"]
    assert len(real_statuses) >= 5
    assert set(real_statuses) == {200}, real_statuses
    assert max(real_latencies) < 2.0, real_latencies
    # One IP gets its limit's worth, whatever visitor cookies it forges; the rest is 429. The
    # sliding-window counter weighs the previous minute's count down as the minute passes: a
    # run across a minute boundary may let through up to a limit's worth a minute more.
    allowed = 50 + math.ceil(50 * (time.monotonic() - started) / 60)
    assert statuses["flood"].count(200) <= allowed
    assert statuses["forged"].count(200) <= 4 * allowed
    assert statuses["flood"].count(429) > 100 and statuses["forged"].count(429) > 100
    assert set(statuses["flood"]) | set(statuses["forged"]) <= {200, 429}
    assert peak_backlog <= max_backlog


def test_pushes_past_the_backlog_bound_are_503_with_retry_after(tmp_path: Path) -> None:
    """Nothing is queued beyond ``max_backlog``: a push past it is answered 503 with
    ``Retry-After`` and ``retry: true``, and changes nothing."""
    with Engine(ruleset(), deliver=False, outbox=tmp_path / "sends.db", max_backlog=5) as engine:
        core = core_of(engine, rate_limit_ip=None, rate_limit_visitor=None)
        statuses = [post(core).status for _ in range(8)]
        assert statuses[:5] == [200] * 5
        assert statuses[5:] == [503] * 3
        refused = post(core)
        assert header(refused, "Retry-After") == "5"
        (result,) = body(refused)["results"]
        assert result["ok"] is False and result["retry"] is True
        backlog = engine.backlog()
        assert backlog is not None and backlog.pending + backlog.journaled == 5
