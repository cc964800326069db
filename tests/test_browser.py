"""End to end in a real browser: Debian's Chromium, driven by Playwright, clicks through a shop
journey on two pages (tests/web/: one on the real Adobe Client Data Layer from npm, one on a
GTM-style ``window.dataLayer``) that load the browser forwarder (engine/web/tagengine.js) from
the collect endpoint, mounted in a Starlette app served by uvicorn on loopback and delivering
the rules/ ruleset's sends to the local emulator (issue 13, "Done when").

Checked: the endpoint receives every push once, in order, with the body the page pushed; the
emulator receives exactly the sends a dry run builds from the same pushes, in order; the browser
holds the visitor, session and identity cookies; a page exit with pushes in flight and queued
loses nothing (they go in the exit beacon); a failed request is retried in order; and the
forwarder stays under 3 KB minified (terser) and gzipped.

What this needs (``make test`` installs it): ``apt-get install chromium``, the ``test`` extra
(``playwright``, used with ``executable_path``: no browser download) and ``npm install`` in
tests/web (ACDL and terser).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from engine import Engine, Ruleset, Send, VisitorContext, load_ruleset
from engine.emulator import EmulatorServer, Fault, RecordedRequest, emulator_config
from engine.web import asgi_app

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "tests" / "web"
FORWARDER = ROOT / "engine" / "web" / "tagengine.js"
ACDL = WEB / "node_modules" / "@adobe" / "adobe-client-data-layer"
TERSER = WEB / "node_modules" / ".bin" / "terser"
CHROMIUM = shutil.which("chromium")
SETUP = "run `make test`, which installs chromium, the test extra and tests/web's npm packages"

try:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra is missing
    pytest.fail(f"playwright is not installed: {SETUP}", pytrace=False)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

# The clicks of the journey, in order (tests/web/journey.js has what each pushes); "state"
# pushes a function to ACDL, which is not a push to forward.
STEPS = ["search", "product", "add", "wishlist", "checkout", "login", "purchase"]
ID = re.compile(r"^[a-z0-9]+\.\d+$")


# ---------------------------------------------------------------- the server side


@dataclass
class Exchange:
    """One request to the collect endpoint and its answer, as the server saw them."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    client: str | None
    body: bytes
    arrived: float = field(default_factory=time.monotonic)
    status: int | None = None
    answer: bytes = b""
    done: bool = False

    @property
    def collect(self) -> bool:
        return self.method == "POST" and self.path.rstrip("/") == "/collect"

    def pushes(self) -> list[tuple[str, Any]]:
        if not self.collect:
            return []
        return [(item["id"], item["push"]) for item in json.loads(self.body)["pushes"]]

    def results(self) -> list[dict[str, Any]]:
        if not (self.collect and self.done and self.status == 200):
            return []
        results: list[dict[str, Any]] = json.loads(self.answer)["results"]
        return results

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class Recorder:
    """ASGI middleware in front of the collect endpoint: keeps every request and answer.
    ``refuse`` answers the next POSTs itself, as an overloaded proxy would (a status and
    ``Retry-After``), without passing them on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []
        self.refuse: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:  # the whole body first, so that it is recorded as the request arrives
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        exchange = Exchange(
            method=scope["method"],
            path=scope["path"],
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            client=scope["client"][0] if scope.get("client") else None,
            body=b"".join(chunks),
        )
        with self._lock:
            self.exchanges.append(exchange)
            refusal = self.refuse.pop(0) if self.refuse and exchange.method == "POST" else None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # the app waits for the client to go
                message: Message = await receive()
                return message
            replayed = True
            return {"type": "http.request", "body": exchange.body, "more_body": False}

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif message["type"] == "http.response.body":
                exchange.answer += message.get("body", b"")
                exchange.done = not message.get("more_body", False)
            await send(message)

        if refusal is not None:
            status, retry_after = refusal
            await record(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"retry-after", retry_after.encode()), (b"content-length", b"0")],
                }
            )
            await record({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, replay, record)

    def clear(self) -> None:
        with self._lock:
            self.exchanges.clear()
            self.refuse.clear()

    def processed(self) -> list[tuple[str, Any, Exchange]]:
        """The pushes the endpoint processed (answered, and not as a duplicate), in the order
        it processed them: ``(id, push, the request that carried it)``."""
        out: list[tuple[str, Any, Exchange]] = []
        with self._lock:
            exchanges = list(self.exchanges)
        for exchange in exchanges:
            for (push_id, push), result in zip(exchange.pushes(), exchange.results(), strict=False):
                assert result["id"] == push_id and not result.get("bot"), result
                if result["ok"] and not result.get("duplicate"):
                    out.append((push_id, push, exchange))
        return out


@dataclass
class Site:
    url: str
    ruleset: Ruleset
    engine: Engine
    emulator: EmulatorServer
    recorder: Recorder
    console: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.emulator.reset()
        self.recorder.clear()

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def wait_processed(self, count: int) -> list[tuple[str, Any, Exchange]]:
        self.wait_for(f"{count} pushes processed", lambda: len(self.recorder.processed()) >= count)
        time.sleep(0.2)  # and no more than that: a duplicate would show now
        return self.recorder.processed()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """tests/web and its node_modules, and the collect endpoint at /collect, served by uvicorn
    on loopback; the engine delivers (wait mode) to an emulator configured from the ruleset."""
    assert (ACDL / "package.json").is_file(), f"tests/web has no node_modules: {SETUP}"
    ruleset = load_ruleset(ROOT / "rules")
    with EmulatorServer(config=emulator_config(ruleset)) as emulator:
        engine = Engine.from_path(ROOT / "rules", edge_url=emulator.url, sitecore_url=emulator.url)
        recorder = Recorder(asgi_app(engine, secret="browser-test"))
        app = Starlette(
            routes=[Mount("/collect", app=recorder), Mount("/", app=StaticFiles(directory=WEB))]
        )
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        try:
            yield Site(f"http://127.0.0.1:{port}", ruleset, engine, emulator, recorder)
        finally:
            server.should_exit = True
            thread.join(10)
            engine.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with the user agent it has with a window: the endpoint takes
    "HeadlessChrome" for a bot (engine.web.bots) and processes none of its pushes. (A browser
    context's user agent does not reach the exit beacon: the command line's does.)"""
    assert CHROMIUM, f"no chromium on PATH: {SETUP}"
    with sync_playwright() as playwright:
        probe = playwright.chromium.launch(executable_path=CHROMIUM)
        agent = (
            probe.new_page().evaluate("navigator.userAgent").replace("HeadlessChrome/", "Chrome/")
        )
        probe.close()
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[f"--user-agent={agent}"]
        )
        yield launched
        launched.close()


@pytest.fixture
def context(site: Site, browser: Browser) -> Iterator[BrowserContext]:
    """A new visitor (no cookies), with the emulator and the recorder emptied."""
    site.reset()
    site.console.clear()
    visitor = browser.new_context()
    yield visitor
    visitor.close()


def open_page(site: Site, context: BrowserContext, name: str) -> Page:
    page = context.new_page()
    page.on("console", lambda message: _console(site, message))
    page.on("pageerror", lambda error: site.console.append(f"pageerror: {error}"))
    page.goto(f"{site.url}/{name}")
    page.wait_for_function("window.tagengine !== undefined")
    return page


def _console(site: Site, message: ConsoleMessage) -> None:
    if message.type in ("warning", "error"):
        site.console.append(f"{message.type}: {message.text}")


# ---------------------------------------------------------------- what the emulator should get


def _edge(body: Any, query: dict[str, str]) -> tuple[Any, ...]:
    """An Edge request without what differs per run or comes from the visitor's identity (an
    engine that delivers has an ECID and Edge's state cookies from the first answer, so it sends
    them, and sends a ``documentUnloading`` event to /collect; a dry run has neither)."""
    body = json.loads(json.dumps(body))
    events = body.pop("events", None) or [body.pop("event")]
    for event in events:
        event["xdm"].pop("_id", None)
        event["xdm"].pop("timestamp", None)
        identities = event["xdm"].get("identityMap")
        if identities is not None:
            identities.pop("ECID", None)
            if not identities:
                del event["xdm"]["identityMap"]
    body.get("meta", {}).get("state", {}).pop("entries", None)
    wanted = body.pop("query", {})
    wanted.pop("identity", None)
    return ("edge", query.get("datastreamId"), events, wanted, body)


def _sitecore(body: Any) -> tuple[Any, ...]:
    message = dict(body)
    message.pop("browser_id", None)  # the emulator's, for this browser
    return ("sitecore", message)


def built(send: Send) -> tuple[Any, ...]:
    query = {k: v[0] for k, v in parse_qs(urlsplit(send.request.url).query).items()}
    return _edge(send.body, query) if send.destination == "edge" else _sitecore(send.body)


def received(request: RecordedRequest) -> tuple[Any, ...] | None:
    if request.path.startswith("/ee/"):
        return _edge(request.body, request.query)
    if request.path.startswith("/v1.2/event/"):
        return _sitecore(request.body)
    return None  # not a send: the Sitecore browser id the engine asked for


def dry_run(site: Site, context: BrowserContext, processed: list[Any]) -> list[tuple[Any, ...]]:
    """What ``tagengine run --dry-run`` builds from the pushes the endpoint processed, in its
    order, for the browser's session, each with the visitor context of its request."""
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    session_id = cookies["tg_sid"].rpartition(".")[0]
    visitor = cookies["tg_vid"].rpartition(".")[0]
    with Engine(site.ruleset, dry_run=True) as engine:
        session = engine.session(session_id, visitor=visitor)
        out = []
        for _, push, exchange in processed:
            visitor_context = VisitorContext.from_headers(exchange.headers, exchange.client)
            result = session.push(push, context=visitor_context)
            out += [built(send) for each in (result, *result.followups) for send in each.sends]
        return out


def delivered(site: Site) -> list[tuple[Any, ...]]:
    sends = [received(request) for request in site.emulator.requests()]
    return [send for send in sends if send is not None]


def check_cookies(context: BrowserContext) -> None:
    names = {cookie["name"] for cookie in context.cookies()}
    org = "53A16ACB5CC1D3760A495C99_AdobeOrg"  # rules/settings.rules
    assert {"tg_vid", "tg_sid", f"kndctr_{org}_identity"} <= names, names


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", ["shop.html", "shop.html?acdl-first", "gtm.html"])
def test_a_shop_journey_reaches_the_emulator_as_a_dry_run_builds_it(
    site: Site, context: BrowserContext, name: str
) -> None:
    page = open_page(site, context, name)
    for step in STEPS:  # clicked without waiting: later steps queue behind a request in flight
        page.click(f"#{step}")
        if step == "checkout" and name.startswith("shop.html"):
            page.click("#state")  # a function pushed to ACDL: run by ACDL, never forwarded
    pushed = page.evaluate("pushed")
    processed = site.wait_processed(len(pushed))
    page.wait_for_function("tagengine.pending() === 0")

    # Every push once, in order, with the body the page pushed (ACDL: not its computed state;
    # gtag()'s arguments objects not at all), under ids unique to the page.
    assert [push for _, push, _ in processed] == pushed
    ids = [push_id for push_id, _, _ in processed]
    assert len(set(ids)) == len(ids) and all(ID.match(push_id) for push_id in ids), ids
    assert len({push_id.partition(".")[0] for push_id in ids}) == 1
    # The pushes of one click (one task) travel together.
    journey = page.evaluate("JOURNEY")
    carrier = {push_id: id(exchange) for push_id, _, exchange in processed}
    start = 0
    for step in ["home", *STEPS]:
        count = len(journey[step])
        assert len({carrier[push_id] for push_id in ids[start : start + count]}) == 1, step
        start += count
    # Sent as text/plain (no CORS preflight), with the visitor's cookies after the first.
    posts = [e for e in site.recorder.exchanges if e.collect]
    assert len(posts) <= 1 + len(STEPS)
    assert all(e.header("content-type") == "text/plain;charset=UTF-8" for e in posts)
    assert all("tg_vid=" in (e.header("cookie") or "") for e in posts[1:])

    sends = delivered(site)
    assert len(sends) >= 2 * len(STEPS)
    assert sends == dry_run(site, context, processed)
    check_cookies(context)
    assert site.console == []
    if name.startswith("shop.html"):
        assert page.title() == "C-7781"  # the function pushed to ACDL ran
    # The page hears each push's answer ("tagengine:result"), in order.
    answers = page.evaluate("answers")
    assert [a["id"] for a in answers] == ids and [a["push"] for a in answers] == pushed
    assert "Page view" in answers[0]["result"]["fired"]
    assert answers[-2]["result"]["fired"] == ["Purchase"]


def test_a_page_exit_mid_journey_loses_nothing(site: Site, context: BrowserContext) -> None:
    page = open_page(site, context, "shop.html")
    for step in ["search", "product", "add"]:
        page.click(f"#{step}")
    site.wait_processed(len(page.evaluate("pushed")))
    # The checkout's first Edge send takes 1.5 s: its request is still in flight when the
    # visitor pays and leaves, and the purchase's pushes are still queued behind it.
    site.emulator.set_faults(Fault(delay=1.5, path="/ee", count=1))
    page.click("#checkout")
    site.wait_for(
        "the checkout request",
        lambda: any(
            push.get("event") == "commerce.checkout"
            for e in site.recorder.exchanges
            for _, push in e.pushes()
        ),
    )
    assert page.evaluate("tagengine.pending()") == 2  # the checkout's, unanswered
    checkout, purchase = page.evaluate("[JOURNEY.checkout, JOURNEY.purchase]")
    pushed = page.evaluate("pushed") + purchase
    page.click("#leave")
    page.wait_for_url("**/left.html")
    processed = site.wait_processed(len(pushed))

    assert [push for _, push, _ in processed] == pushed
    # The purchase's pushes reached the endpoint in the exit beacon only, with the checkout's
    # (in flight when the page went away) before them.
    carriers = [e for e in site.recorder.exchanges if any(p == pushed[-1] for _, p in e.pushes())]
    assert len(carriers) == 1
    beacon = carriers[0]
    assert [push for _, push in beacon.pushes()] == checkout + purchase
    assert beacon.header("sec-fetch-mode") == "no-cors", beacon.headers  # sendBeacon's
    assert "tg_vid=" in (beacon.header("cookie") or "")
    sends = delivered(site)
    assert sends == dry_run(site, context, processed)
    assert [s[1]["type"] for s in sends if s[0] == "sitecore"][-2:] == ["VIEW", "CHECKOUT"]
    check_cookies(context)
    assert site.console == []


def test_refused_requests_are_retried_in_order_and_refused_pushes_dropped(
    site: Site, context: BrowserContext
) -> None:
    page = open_page(site, context, "gtm.html")
    site.wait_processed(1)
    # The next two requests are refused (429, then 503) with Retry-After: the forwarder waits
    # and sends the same pushes again, with those pushed meanwhile behind them.
    site.recorder.refuse[:] = [(429, "1"), (503, "0")]
    page.click("#search")
    site.wait_for(
        "the first refusal", lambda: any(e.status == 429 for e in site.recorder.exchanges)
    )
    page.click("#bad")  # a push the engine refuses (a number beyond 64 bits): dropped, told
    page.click("#product")
    page.click("#add")
    pushed = page.evaluate("pushed")
    bad = page.evaluate("JOURNEY.bad[0]")
    processed = site.wait_processed(len(pushed) - 1)
    assert [push for _, push, _ in processed] == [push for push in pushed if push != bad]
    statuses = [e.status for e in site.recorder.exchanges if e.collect]
    assert statuses[1:3] == [429, 503] and set(statuses[3:]) == {200}, statuses
    posts = [e.pushes() for e in site.recorder.exchanges if e.collect]
    first = posts[1]  # the refused pushes go again first, those pushed meanwhile behind them
    assert [p[: len(first)] for p in posts[2:4]] == [first, first]
    assert len(posts[3]) == len(pushed) - 1  # all but the page's first
    arrived = [e.arrived for e in site.recorder.exchanges if e.collect]
    assert arrived[2] - arrived[1] >= 0.95  # Retry-After: 1
    assert delivered(site) == dry_run(site, context, processed)
    results = [r for e in site.recorder.exchanges for r in e.results()]
    refused = [r for r in results if not r["ok"]]
    assert len(refused) == 1 and "64-bit" in refused[0]["error"], refused
    assert site.console == [
        "error: Failed to load resource: the server responded with a status of 429 (Too Many Requests)",
        "error: Failed to load resource: the server responded with a status of 503 (Service Unavailable)",
        f"warning: tagengine: push {refused[0]['id']} dropped: {refused[0]['error']}",
    ]


def test_a_push_too_big_is_lost_alone(site: Site, context: BrowserContext) -> None:
    """Pushes go in batches of at most 60 KB, so one push the endpoint refuses for its size
    (413) costs only itself: the pushes around it arrive, in order."""
    page = open_page(site, context, "gtm.html")
    before = len(site.wait_processed(1))
    page.evaluate(
        "dataLayer.push({event: 'note', n: 1});"
        "dataLayer.push({event: 'note', n: 2, pad: 'y'.repeat(300000)});"
        "dataLayer.push({event: 'note', n: 3})"
    )
    processed = site.wait_processed(before + 2)
    notes = [push.get("n") for _, push, _ in processed[before:]]
    assert notes == [1, 3]
    site.wait_for(
        "the refusal",
        lambda: (
            any(e.status == 413 for e in site.recorder.exchanges if e.collect)
            and page.evaluate("tagengine.pending()") == 0
        ),
    )
    statuses = [e.status for e in site.recorder.exchanges if e.collect]
    assert statuses.count(413) == 1  # the big push alone, once: not retried
    assert page.evaluate("tagengine.pending()") == 0


# ---------------------------------------------------------------- size


def test_the_forwarder_is_under_3_kb_minified_and_gzipped() -> None:
    assert TERSER.exists(), f"tests/web has no terser: {SETUP}"
    minified = subprocess.run(
        [str(TERSER), str(FORWARDER), "--compress", "--mangle"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    size = len(gzip.compress(minified, compresslevel=9))
    assert 500 < size < 3 * 1024, f"{size} bytes minified and gzipped"
