"""``tagengine dev`` pieces (engine.devserver): a DevServer on a free loopback port, its own
emulator, real rule files in a temporary folder."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from engine.devserver import DevServer, ReplayReport
from engine.envelopes import parse_envelope
from tests.conftest import SETTINGS

WAIT = 10.0
JSON = {"Content-Type": "application/json"}

PAGES = """\
element campaign = event.campaign keep session

rule "Page view" {
  on "page.view"
  send event {
    type: "web.webpagedetails.pageViews"
    data: { campaign: campaign }
  }
  send sitecore { type: "VIEW", page: event.page.name }
}
"""

EXTRA = """\
rule "Also" {
  on "page.view"
  send event { type: "also" }
}
"""


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False, soft_wrap=True), out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "rules"
    root.mkdir()
    (root / "settings.rules").write_text(SETTINGS)
    (root / "pages.rules").write_text(PAGES)
    return root


@pytest.fixture
def dev(folder: Path) -> Iterator[tuple[DevServer, io.StringIO]]:
    terminal, out = console()
    with DevServer(folder, console=terminal, debounce=0.05, environ={}) as server:
        yield server, out


def test_post_push_returns_the_json_line_with_delivered_statuses(
    dev: tuple[DevServer, io.StringIO],
) -> None:
    server, out = dev
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    assert server.emulator is not None
    envelope = {"session": "web-1", "push": {"event": "page.view", "page": {"name": "Home"}}}
    response = httpx.post(f"{server.url}/push", json=envelope, timeout=WAIT)
    assert response.status_code == 200
    line = response.json()
    assert line["session"] == "web-1" and line["event"] == "page.view"
    assert server.engine is not None and line["version"] == server.engine.ruleset.version
    assert [r["rule"] for r in line["rules"] if r["status"] == "fired"] == ["Page view"]
    sends = {s["destination"]: s for s in line["sends"]}
    assert sends["edge"]["status"] == 200 and sends["edge"]["attempts"] == 1
    assert 200 <= sends["sitecore"]["status"] < 300
    # Delivered to the dev server's own emulator, which recorded both.
    recorded = server.emulator.requests()
    assert {r.path.split("/")[1] for r in recorded} >= {"ee", "v1.2"}
    text = out.getvalue()
    assert "page.view" in text and "FIRED Page view" in text and "POST /push" in text
    assert f"ruleset {line['version'][:12]}" in text  # the version is in every trace


def test_a_bare_push_goes_to_the_session_in_the_query(
    dev: tuple[DevServer, io.StringIO],
) -> None:
    server, _ = dev
    response = httpx.post(
        f"{server.url}/push?session=q-1", json={"event": "page.view"}, timeout=WAIT
    )
    assert response.status_code == 200 and response.json()["session"] == "q-1"
    response = httpx.post(f"{server.url}/push", json={"event": "other"}, timeout=WAIT)
    assert response.json()["session"] == "default" and response.json()["rules"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"session": 7, "push": {"event": "page.view"}}', "session must be a non-empty"),
        (b"\xff\xfe\xfa", "not"),
    ],
)
def test_a_bad_push_is_a_400_with_a_clear_error(
    dev: tuple[DevServer, io.StringIO], body: bytes, message: str
) -> None:
    server, out = dev
    response = httpx.post(f"{server.url}/push", content=body, headers=JSON, timeout=WAIT)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert "bad push" in out.getvalue()
    # The server keeps serving.
    good = httpx.post(f"{server.url}/push", json={"event": "page.view"}, timeout=WAIT)
    assert good.status_code == 200


def test_health(dev: tuple[DevServer, io.StringIO]) -> None:
    server, _ = dev
    health = httpx.get(f"{server.url}/health", timeout=WAIT).json()
    assert server.engine is not None
    assert health["status"] == "ok" and health["rules"] == 1
    assert health["version"] == server.engine.ruleset.version
    assert health["ruleset_error"] is None


def test_a_change_to_a_rules_file_is_picked_up_and_a_broken_one_reported(
    folder: Path, dev: tuple[DevServer, io.StringIO]
) -> None:
    server, out = dev
    assert server.watcher is not None
    before = server.watcher.rebuilds
    (folder / "extra.rules").write_text(EXTRA)
    assert server.watcher.wait_for_rebuild(WAIT, after=before)
    line = httpx.post(f"{server.url}/push", json={"event": "page.view"}, timeout=WAIT).json()
    assert [r["rule"] for r in line["rules"] if r["status"] == "fired"] == ["Also", "Page view"]
    assert f"reloaded {folder}/ (version {line['version'][:12]}…, 2 rules)" in out.getvalue()

    before = server.watcher.rebuilds
    (folder / "extra.rules").write_text('rule "Also" {\n  on "page.view"\n  sned event {}\n}\n')
    assert server.watcher.wait_for_rebuild(WAIT, after=before)
    text = out.getvalue()
    assert f"reload of {folder}/ failed: 1 error; still serving version {line['version'][:12]}" in (
        text
    )
    assert f"{folder / 'extra.rules'}:3:3: error:" in text
    health = httpx.get(f"{server.url}/health", timeout=WAIT).json()
    assert health["version"] == line["version"]
    assert f"{folder / 'extra.rules'}:3:3" in health["ruleset_error"]


def test_the_replay_file_is_processed_first(folder: Path, tmp_path: Path) -> None:
    replay = tmp_path / "replay.jsonl"
    replay.write_text(
        json.dumps({"session": "r-1", "push": {"event": "page.view", "campaign": "summer"}})
        + "\n\n"
        + json.dumps({"event": "page.view", "page": {"name": "Home"}})
        + "\n{broken\n"
    )
    terminal, out = console()
    with DevServer(folder, replay=replay, console=terminal, environ={}) as server:
        assert server.replayed == ReplayReport(pushes=2, bad=1)
        assert server.emulator is not None
        replayed = len(server.emulator.requests())
        edge_paths = [r.path for r in server.emulator.requests() if r.path.startswith("/ee")]
        assert len(edge_paths) == 2  # both replayed pushes were delivered before serving
        text = out.getvalue()
        assert f"{replay}:4: error: not valid JSON" in text
        assert "replayed 2 pushes" in text and "1 bad line skipped" in text
        # The replay's session is live: its kept campaign reaches the next push.
        line = httpx.post(
            f"{server.url}/push", json={"session": "r-1", "push": {"event": "page.view"}}
        ).json()
        edge = next(r for r in server.emulator.requests()[replayed:] if r.path.startswith("/ee"))
        assert line["sends"][0]["body"]["event"]["data"] == {"campaign": "summer"}
        assert edge.body["event"]["data"] == {"campaign": "summer"}


def test_broken_rules_at_start_serve_nothing_until_a_good_save(folder: Path) -> None:
    (folder / "pages.rules").write_text("rule {\n")
    terminal, out = console()
    with DevServer(folder, console=terminal, dry_run=True, debounce=0.05, environ={}) as server:
        assert server.emulator is None  # a dry run needs no emulator
        assert f"cannot load {folder}/: 1 error; no rules serve until a good save" in (
            out.getvalue()
        )
        line = httpx.post(f"{server.url}/push", json={"event": "page.view"}).json()
        assert line["rules"] == []
        assert server.watcher is not None
        before = server.watcher.rebuilds
        (folder / "pages.rules").write_text(PAGES)
        assert server.watcher.wait_for_rebuild(WAIT, after=before)
        line = httpx.post(f"{server.url}/push", json={"event": "page.view"}).json()
        assert [r["rule"] for r in line["rules"]] == ["Page view"]
        assert "status" not in line["sends"][0]  # dry run: nothing delivered
        assert f"loaded {folder}/" in out.getvalue()


def test_a_port_in_use_raises_and_leaves_nothing_running(folder: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        terminal, _ = console()
        server = DevServer(folder, port=port, console=terminal, environ={})
        with pytest.raises(OSError):
            server.start()
        assert not server.running
        assert server.emulator is not None and not server.emulator.running
        assert server.watcher is not None and not server.watcher.running


def test_stop_stops_everything(folder: Path) -> None:
    terminal, _ = console()
    server = DevServer(folder, console=terminal, environ={}).start()
    url = server.url
    server.stop()
    assert not server.running and server.wait(0)
    assert server.watcher is not None and not server.watcher.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"event": "x"}, (None, {"event": "x"})),
        ({"push": {"event": "x"}}, (None, {"event": "x"})),
        ({"session": "s", "push": [1]}, ("s", [1])),
        (
            {"session": "s", "push": {}, "other": 1},
            (None, {"session": "s", "push": {}, "other": 1}),
        ),
    ],
)
def test_parse_envelope(value: object, expected: tuple[str | None, object]) -> None:
    assert parse_envelope(value) == expected


def test_the_emulator_names_state_entries_after_the_org_of_the_rules(folder: Path) -> None:
    """So that the cookie helpers find them: Edge takes the org from the datastream."""
    org = "ACME0123456789@AdobeOrg"
    (folder / "settings.rules").write_text(SETTINGS.replace("edge { ", f'edge {{ org: "{org}", '))
    terminal, _ = console()
    with DevServer(folder, console=terminal, debounce=0.05, environ={}) as server:
        assert server.engine is not None and server.emulator is not None
        named = []
        for session_id in ("x", "after a reset"):
            session = server.engine.session(session_id)
            session.push({"event": "page.view", "page": {"name": "Home"}})
            named.append(sorted(c.split("=", 1)[0] for c in session.set_cookie_headers()))
            server.emulator.reset()  # POST /emulator/reset: the rules' org stays
    prefix = "kndctr_ACME0123456789_AdobeOrg_"
    assert named == [[prefix + "cluster", prefix + "identity"]] * 2


# ------------------------------------------------------------------ a local-only endpoint
def test_push_takes_json_only(dev: tuple[DevServer, io.StringIO]) -> None:
    server, _ = dev
    # curl -d sends a form; a web page's "simple" cross-site post sends text/plain.
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        refused = httpx.post(
            f"{server.url}/push",
            content=b'{"event": "page.view"}',
            headers={"Content-Type": content_type},
            timeout=WAIT,
        )
        assert refused.status_code == 415 and "--json" in refused.json()["error"]
    assert server.emulator is not None and server.emulator.requests() == []  # nothing ran


def test_push_bodies_are_bounded_while_read(folder: Path) -> None:
    terminal, _ = console()
    with DevServer(folder, console=terminal, debounce=0.05, environ={}, max_body=1000) as server:
        big = {"event": "page.view", "padding": "x" * 2000}
        declared = httpx.post(f"{server.url}/push", json=big, timeout=WAIT)
        assert declared.status_code == 413 and "1,000 bytes" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
            yield b'{"event": "page.view", "padding": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}'

        chunked = httpx.post(f"{server.url}/push", content=chunks(), headers=JSON, timeout=WAIT)
        assert chunked.status_code == 413
        small = httpx.post(f"{server.url}/push", json={"event": "page.view"}, timeout=WAIT)
        assert small.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:8000"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
def test_dev_routes_refuse_foreign_hosts_and_origins(
    dev: tuple[DevServer, io.StringIO], headers: dict[str, str]
) -> None:
    server, _ = dev
    push = httpx.post(
        f"{server.url}/push", json={"event": "page.view"}, headers=headers, timeout=WAIT
    )
    assert push.status_code == 403 and "refused" in push.json()["error"]
    assert httpx.get(f"{server.url}/health", headers=headers, timeout=WAIT).status_code == 403
    assert server.emulator is not None and server.emulator.requests() == []
    local = {"Host": f"localhost:{server.port}", "Origin": "http://localhost:3000"}
    ok = httpx.post(f"{server.url}/push", json={"event": "page.view"}, headers=local)
    assert ok.status_code == 200


def test_dev_configures_the_emulator_from_the_rules(dev: tuple[DevServer, io.StringIO]) -> None:
    server, _ = dev
    assert server.emulator is not None
    config = server.emulator.state.config
    assert config.datastreams == frozenset({"ds-1"}) and config.client_keys == frozenset({"k"})
    body = {"event": {"xdm": {}}}
    with httpx.Client(base_url=server.emulator.url, timeout=WAIT) as c:
        assert c.post("/ee/v2/interact?datastreamId=ds-1", json=body).status_code == 200
        typo = c.post("/ee/v2/interact?datastreamId=ds-2", json=body)
        assert typo.status_code == 400 and typo.json()["type"].endswith("EXEG-0003-400")


def test_a_relative_path_through_dotdot_says_what_it_watches_and_reloads(folder: Path) -> None:
    (folder.parent / "sub").mkdir()
    given = folder.parent / "sub" / ".." / folder.name
    terminal, out = console()
    with DevServer(given, console=terminal, dry_run=True, debounce=0.05, environ={}) as server:
        assert out.getvalue().splitlines()[0] == f"watching {folder.resolve()}"
        assert server.watcher is not None
        before = server.watcher.rebuilds
        (folder / "pages.rules").write_text(PAGES.replace('"Page view"', '"Renamed"'))
        assert server.watcher.wait_for_rebuild(WAIT, after=before)
        line = httpx.post(f"{server.url}/push", json={"event": "page.view"}).json()
        assert [r["rule"] for r in line["rules"]] == ["Renamed"]
