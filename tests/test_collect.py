"""The collect endpoint (engine.web) as a browser's requests meet it: served by uvicorn (ASGI)
and by wsgiref (WSGI) on loopback, delivering to the emulator."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
import uvicorn

from engine import Engine
from engine.emulator import EmulatorServer, emulator_config
from engine.web import asgi_app, wsgi_app
from tests.conftest import load_text

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"
RULES = f"""
edge {{
  datastream: "ds-collect"
  org: "{ORG}"
}}
rule "Page" {{
  on "page.view"
  send event {{ type: "web.webpagedetails.pageViews", xdm.web.webPageDetails.name: state.page }}
}}
rule "Offers" {{
  on "offers"
  send event {{ type: "decisioning.propositionFetch", decisionScopes: ["hero"] }}
}}
"""


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_asgi(app: Any) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def serve_wsgi(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def ruleset_emulator() -> Iterator[EmulatorServer]:
    """An emulator that knows the rules' datastream and org (it names state entries after
    it, as Edge names them after the datastream's org)."""
    with EmulatorServer(config=emulator_config(load_text(RULES))) as server:
        yield server


@pytest.fixture
def emulator(ruleset_emulator: EmulatorServer) -> EmulatorServer:
    ruleset_emulator.reset()
    return ruleset_emulator


@pytest.fixture(params=["asgi", "wsgi"])
def endpoint(
    request: pytest.FixtureRequest, emulator: EmulatorServer
) -> Iterator[tuple[str, Engine]]:
    """The collect endpoint of an engine delivering to the emulator, served both ways."""
    engine = Engine(load_text(RULES), edge_url=emulator.url)
    make: Callable[..., Any] = asgi_app if request.param == "asgi" else wsgi_app
    serve = serve_asgi if request.param == "asgi" else serve_wsgi
    app = make(engine, secret="test-secret", cors_origins=["https://shop.example.com"])
    served = serve(app)
    url = next(served)
    try:
        yield url, engine
    finally:
        next(served, None)
        engine.close()


BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def browser() -> httpx.Client:
    """A client that looks like a browser (the endpoint drops known bots: httpx is one)."""
    return httpx.Client(headers={"User-Agent": BROWSER})


def post(client: httpx.Client, url: str, pushes: list[Any], **kw: Any) -> httpx.Response:
    items = [{"id": f"p{i}-{time.monotonic_ns()}", "push": p} for i, p in enumerate(pushes)]
    return client.post(url + "/", json={"pushes": items}, **kw)


def test_a_batch_answers_per_push_and_sets_first_party_cookies(
    endpoint: tuple[str, Engine], emulator: EmulatorServer
) -> None:
    url, _ = endpoint
    with browser() as client:
        response = post(client, url, [{"event": "page.view", "page": "home"}, 42, {"event": "x"}])
        assert response.status_code == 200
        first, bad, other = response.json()["results"]
        assert first["ok"] is True and first["fired"] == ["Page"] and first["sends"] == 1
        assert bad == {"id": bad["id"], "ok": False, "error": "push: expected an object, got int"}
        assert other["ok"] is True and other["fired"] == []
        cookies = {c.name: c for c in client.cookies.jar}
        assert {"tg_vid", "tg_sid"} <= set(cookies)
        assert any(name.startswith("kndctr_") and name.endswith("_identity") for name in cookies)
        set_cookie = response.headers.get_list("set-cookie")
        vid = next(c for c in set_cookie if c.startswith("tg_vid="))
        assert "HttpOnly" in vid and "SameSite=Lax" in vid and "Max-Age=34128000" in vid
        assert "Secure" not in vid  # plain http on loopback
        # The same visitor's next request: the same session.
        again = post(client, url, [{"event": "page.view", "page": "cart"}])
        assert again.json()["results"][0]["ok"]
    pages = [
        r.body["event"]["xdm"]["web"]["webPageDetails"]["name"]
        for r in emulator.requests()
        if r.path.startswith("/ee/")
    ]
    assert pages == ["home", "cart"]


def test_a_retried_batch_is_not_processed_twice(
    endpoint: tuple[str, Engine], emulator: EmulatorServer
) -> None:
    url, _ = endpoint
    body = {"pushes": [{"id": "once-1", "push": {"event": "page.view", "page": "home"}}]}
    with browser() as client:
        first = client.post(url + "/", json=body).json()["results"][0]
        second = client.post(url + "/", json=body).json()["results"][0]
    assert first["ok"] and "duplicate" not in first
    assert second == {"id": "once-1", "ok": True, "duplicate": True}
    assert len([r for r in emulator.requests() if r.path.startswith("/ee/")]) == 1


def test_propositions_come_back_for_the_page_to_render(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    with browser() as client:
        result = post(client, url, [{"event": "offers"}]).json()["results"][0]
    assert result["ok"] and isinstance(result["propositions"], list)


def test_a_forged_or_foreign_cookie_gets_a_fresh_visitor(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    with browser() as alice:
        post(alice, url, [{"event": "page.view", "page": "a"}])
        alice_vid, alice_sid = alice.cookies["tg_vid"], alice.cookies["tg_sid"]
    with browser() as mallory:
        post(mallory, url, [{"event": "page.view", "page": "m"}])
        own_vid = mallory.cookies["tg_vid"]
        forged = alice_vid.rsplit(".", 1)[0] + ".0000"
        # A forged signature, and Alice's real session cookie with Mallory's visitor cookie.
        for cookies in ({"tg_vid": forged}, {"tg_vid": own_vid, "tg_sid": alice_sid}):
            mallory.cookies.clear()
            for name, value in cookies.items():
                mallory.cookies.set(name, value)
            response = post(mallory, url, [{"event": "page.view"}])
            assert response.status_code == 200
            got_sid = response.cookies["tg_sid"]
            assert got_sid != alice_sid
            assert not got_sid.startswith(alice_vid.rsplit(".", 1)[0])


def test_cross_origin_writes_only_from_configured_origins(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    with browser() as client:
        allowed = post(
            client, url, [{"event": "x"}], headers={"Origin": "https://shop.example.com"}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        refused = post(client, url, [{"event": "x"}], headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403
        preflight = client.options(
            url + "/",
            headers={"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert "POST" in preflight.headers["access-control-allow-methods"]
        # Same origin (the page and the endpoint on one host) needs no configuration.
        host = url.removeprefix("http://")
        same = post(client, url, [{"event": "x"}], headers={"Origin": f"http://{host}"})
        assert same.status_code == 200


def test_bad_bodies_are_refused_whole(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    with browser() as client:
        assert client.post(url + "/", content=b"{not json").status_code == 400
        huge = {"pushes": [{"id": "x", "push": {"event": "e", "pad": "y" * 300_000}}]}
        assert client.post(url + "/", json=huge).status_code == 413
        many = {"pushes": [{"id": str(i), "push": {"event": "e"}} for i in range(101)]}
        too_many = client.post(url + "/", json=many)
        assert too_many.status_code == 400 and "at most 100 pushes" in too_many.json()["error"]


def test_health_and_the_forwarder_script(endpoint: tuple[str, Engine]) -> None:
    url, engine = endpoint
    with browser() as client:
        health = client.get(url + "/healthz")
        assert health.status_code == 200
        assert health.json()["ruleset"] == engine.ruleset.version and health.json()["ok"]
        script = client.get(url + "/tagengine.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("application/javascript")
        engine.close()
        assert client.get(url + "/healthz").status_code == 503


def test_a_new_visitors_first_answer_carries_the_fpid_cookie() -> None:
    text = RULES.replace(f'org: "{ORG}"', f'org: "{ORG}"\n  fpid: true')
    engine = Engine(load_text(text), dry_run=True)
    served = serve_asgi(asgi_app(engine, secret="s"))
    url = next(served)
    try:
        with browser() as client:
            response = post(client, url, [{"event": "page.view", "page": "home"}])
            fpid = client.cookies["FPID"]
            assert response.json()["results"][0]["ok"]
            again = post(client, url, [{"event": "page.view", "page": "next"}])
            assert again.cookies["FPID"] == fpid  # renewed, the same id
    finally:
        next(served, None)
        engine.close()


def test_the_answer_is_json_with_no_store(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    with browser() as client:
        response = post(client, url, [{"event": "x"}])
    assert response.headers["cache-control"] == "no-store"
    assert json.loads(response.content)["results"][0]["ok"]


def test_other_scripts_cookies_do_not_cost_the_visitor(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    with browser() as client:
        post(client, url, [{"event": "page.view", "page": "a"}])
        vid, sid = client.cookies["tg_vid"], client.cookies["tg_sid"]
    for junk in ("consent", "foo=bar baz", 'json={"a":1}', "x=1;y"):
        cookie = f"{junk}; tg_vid={vid}; tg_sid={sid}"
        with httpx.Client(headers={"User-Agent": BROWSER, "Cookie": cookie}) as client:
            response = post(client, url, [{"event": "page.view", "page": "b"}])
        assert response.cookies["tg_sid"] == sid, junk  # the same session, not a new visitor


def test_malformed_items_are_reported_alone(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    items = [
        {"id": "ok", "push": {"event": "page.view", "page": "a"}},
        {"id": "no-push"},
        {"id": "extra", "push": {"event": "page.view"}, "more": 1},
        {"id": 7, "push": {"event": "page.view"}},
    ]
    with browser() as client:
        results = client.post(url + "/", json={"pushes": items}).json()["results"]
        ok, no_push, extra, number = results
        assert ok["ok"] and ok["fired"] == ["Page"]
        for bad in (no_push, extra):
            assert not bad["ok"] and 'an item is {"id": "…", "push": {…}}' in bad["error"]
        assert (no_push["id"], extra["id"]) == ("no-push", "extra")
        assert not number["ok"] and number["error"] == "a push id is a string, not 7"
        refused = client.post(url + "/", json={"pushes": [], "x": 1})
        assert refused.status_code == 400 and "alone, not with 'x'" in refused.json()["error"]


def test_too_large_is_answered_with_cors_headers(endpoint: tuple[str, Engine]) -> None:
    url, _ = endpoint
    huge = {"pushes": [{"id": "x", "push": {"event": "e", "pad": "y" * 300_000}}]}
    with browser() as client:
        response = client.post(url + "/", json=huge, headers={"Origin": "https://shop.example.com"})
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "https://shop.example.com"


def test_same_origin_behind_a_trusted_proxy_that_rewrites_host() -> None:
    engine = Engine(load_text(RULES), dry_run=True)
    served = serve_asgi(asgi_app(engine, secret="s", trusted_proxies=["127.0.0.1"]))
    url = next(served)
    try:
        headers = {"Origin": "https://www.shop.example", "X-Forwarded-Host": "www.shop.example"}
        with browser() as client:
            assert post(client, url, [{"event": "x"}], headers=headers).status_code == 200
            spoofed = {"Origin": "https://evil.example", "X-Forwarded-Host": "www.shop.example"}
            assert post(client, url, [{"event": "x"}], headers=spoofed).status_code == 403
    finally:
        next(served, None)
        engine.close()


def test_wsgi_reads_a_chunked_body() -> None:
    engine = Engine(load_text(RULES), dry_run=True)
    app = wsgi_app(engine, secret="s")
    body = json.dumps({"pushes": [{"id": "c1", "push": {"event": "page.view"}}]}).encode()
    import io

    answered: list[str] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "HTTP_USER_AGENT": BROWSER,
        "wsgi.input": io.BytesIO(body),  # as a server hands it: de-chunked
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1",
    }
    chunks = app(environ, lambda status, headers: answered.append(status))
    engine.close()
    assert answered == ["200 OK"]
    assert json.loads(b"".join(chunks))["results"][0]["fired"] == ["Page"]


def test_a_retry_whose_first_answer_was_lost_is_not_done_twice(
    endpoint: tuple[str, Engine], emulator: EmulatorServer
) -> None:
    """A new visitor's first request answered, but the answer (and its cookies) lost: the
    forwarder sends the same pushes again, without cookies. They are the same visitor's."""
    url, _ = endpoint
    body = {"pushes": [{"id": "page1.1", "push": {"event": "page.view", "page": "home"}}]}
    with browser() as first:
        answer = first.post(url + "/", json=body)
    with browser() as retry:  # no cookies
        again = retry.post(url + "/", json=body)
    assert again.json()["results"][0].get("duplicate") is True
    assert again.cookies["tg_vid"] == answer.cookies["tg_vid"]
    other_agent = {"User-Agent": BROWSER + " Other"}
    with httpx.Client(headers=other_agent) as stranger:  # another client with the same id
        taken = stranger.post(url + "/", json=body)
    assert taken.cookies["tg_vid"] != answer.cookies["tg_vid"]
    assert len([r for r in emulator.requests() if r.path.startswith("/ee/")]) == 2
