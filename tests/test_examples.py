"""The examples under examples/, each started as its real server process (uvicorn, flask's
server, Django's runserver, gunicorn with a ``tagengine deliver`` worker) on a free loopback
port: pushes POSTed to /collect with the cookies kept, the answers and cookies checked, and
the sends found at the emulator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ORG = "53A16ACB5CC1D3760A495C99_AdobeOrg"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
PUSHES = [
    json.loads(line)["push"]
    for line in (ROOT / "examples" / "shop.jsonl").read_text().splitlines()[:3]
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A server process of an example, stopped with SIGTERM as a supervisor would."""

    def __init__(self, args: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/collect/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{args} did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._out.close()


def environment(emulator: EmulatorServer, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGENGINE_")}
    env.update(
        TAGENGINE_EMULATOR=emulator.url,
        TAGENGINE_COOKIE_SECRET="test-secret-shared-by-workers",
        PYTHONUNBUFFERED="1",
        **more,
    )
    return env


def received(emulator: EmulatorServer) -> int:
    """The sends the emulator received: Edge events (a collect batch holds several) and
    Sitecore events."""
    count = 0
    for request in emulator.requests():
        if request.path.startswith("/ee/") and (
            "interact" in request.path or "collect" in request.path
        ):
            body = request.body if isinstance(request.body, dict) else {}
            count += len(body["events"]) if "events" in body else 1
        elif "event/create.json" in request.path or request.path.startswith("/v1/events"):
            count += 1
    return count


def drive(server: Server, emulator: EmulatorServer, *, identity_cookie: bool) -> None:
    headers = {"User-Agent": BROWSER}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and "/collect/tagengine.js" in page.text
        script = client.get("/collect/tagengine.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]

        first = client.post("/collect", json={"pushes": [{"id": "p1", "push": PUSHES[0]}]})
        assert first.status_code == 200, first.text
        [answer] = first.json()["results"]
        assert answer["ok"] and answer["fired"] == ["Page view"] and answer["sends"] == 2
        cookies = {c.split("=", 1)[0].strip(): c for c in first.headers.get_list("set-cookie")}
        for name in ("tg_vid", "tg_sid"):
            attributes = [a.strip().lower() for a in cookies[name].split(";")]
            assert "httponly" in attributes and "samesite=lax" in attributes
            assert "secure" not in attributes  # plain http on loopback
        if identity_cookie:
            # Secure, SameSite=None as Adobe's: not kept by httpx over http, read here.
            assert f"kndctr_{ORG}_identity" in cookies
        visitor = client.cookies["tg_vid"]

        batch = {
            "pushes": [
                {"id": "p2", "push": PUSHES[1]},
                {"id": "bad", "push": 42},  # reported alone, the others go on
                {"id": "p3", "push": PUSHES[2]},
                {"id": "p1", "push": PUSHES[0]},  # a retry: not processed again
            ]
        }
        second = client.post("/collect", json=batch)
        assert second.status_code == 200, second.text
        results = {r["id"]: r for r in second.json()["results"]}
        assert results["p2"]["fired"] == ["Page view"]
        assert results["p3"]["fired"] == ["Site search"]
        assert results["bad"]["ok"] is False and results["bad"]["error"]
        assert results["p1"] == {"id": "p1", "ok": True, "duplicate": True}
        assert client.cookies["tg_vid"] == visitor  # the same visitor throughout
        sent = answer["sends"] + results["p2"]["sends"] + results["p3"]["sends"]

        app_route = client.get("/ruleset")
        assert app_route.status_code == 200 and app_route.json()["version"]

    deadline = time.monotonic() + 15
    while received(emulator) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received(emulator) == sent == 6, [(r.path, r.status) for r in emulator.requests()]
    assert len(emulator.visitors()) == 1  # one visitor, one ECID


@pytest.fixture
def shop(emulator: EmulatorServer) -> EmulatorServer:
    """The shared emulator, emulating what rules/ talks to (the org names its state entries,
    which become the ``kndctr_*`` cookies)."""
    emulator.configure(org=ORG.replace("_", "@"))
    return emulator


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@contextmanager
def run(args: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    port = free_port()
    server = Server([a.replace("PORT", str(port)) for a in args], port, env, log)
    try:
        yield server
    finally:
        server.stop()


def test_fastapi_under_uvicorn(shop: EmulatorServer, log: Path) -> None:
    args = [str(BIN / "uvicorn"), "examples.fastapi.app:app", "--port", "PORT"]
    with run(args, environment(shop), log) as server:
        drive(server, shop, identity_cookie=True)
    assert "Application shutdown complete" in log.read_text()  # the lifespan closed it


def test_flask_under_its_server(shop: EmulatorServer, log: Path) -> None:
    args = [str(BIN / "flask"), "--app", "examples.flask.app", "run", "--port", "PORT"]
    with run(args, environment(shop), log) as server:
        drive(server, shop, identity_cookie=True)


def test_django_under_runserver(shop: EmulatorServer, log: Path) -> None:
    args = [sys.executable, "-m", "django", "runserver", "PORT", "--noreload"]
    env = environment(shop, DJANGO_SETTINGS_MODULE="examples.django.settings")
    with run(args, env, log) as server:
        drive(server, shop, identity_cookie=True)


def test_gunicorn_workers_with_a_delivery_worker(
    shop: EmulatorServer, redis_url: str, log: Path
) -> None:
    """Two workers that only push, sessions and outbox in Redis, ``tagengine deliver``
    started by the example's gunicorn.conf.py; all stopped with the master."""
    args = [str(BIN / "gunicorn"), "-c", "examples/gunicorn/gunicorn.conf.py"]
    port = free_port()
    env = environment(shop, TAGENGINE_REDIS=redis_url, WORKERS="2", BIND=f"127.0.0.1:{port}")
    server = Server(args, port, env, log)
    try:
        drive(server, shop, identity_cookie=True)
    finally:
        server.stop()
    text = log.read_text()
    assert text.count("Booting worker") == 2
    assert "stopped: redis" in text  # the delivery worker was stopped with the master
