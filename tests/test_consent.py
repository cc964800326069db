"""Consent: sends held while pending, released in order when given, dropped when refused; Edge
told through its consent endpoint; the data layer (a CMP's push), the Python API and test
blocks set it. Delivered cases go to the emulator over loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine import Engine, PushError, RuleError
from engine.cli import cli
from engine.emulator import EmulatorServer
from engine.testing import run_tests
from tests.conftest import load_text

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"


def rules(consent: str = 'default: "pending"\n  path: "consent.general"', extra: str = "") -> str:
    return f"""
edge {{
  datastream: "ds-consent"
  org: "{ORG}"
}}
sitecore {{
  client_key: "key"
  pos: "shop.example.com"
  currency: "EUR"
  language: "EN"
}}
consent {{
  {consent}
}}
rule "Page" {{
  on "page.view"
  send event {{ type: "web.webpagedetails.pageViews", xdm.web.webPageDetails.name: state.page }}
  send sitecore {{ type: "VIEW", page: state.page }}
}}
{extra}
"""


def names(sends: list[Any]) -> list[tuple[str, Any]]:
    out = []
    for send in sends:
        if send.destination == "edge":
            out.append(("edge", send.body["event"]["xdm"]["web"]["webPageDetails"]["name"]))
        else:
            out.append(("sitecore", send.body["page"]))
    return out


def test_without_a_consent_block_nothing_changes() -> None:
    text = rules().replace('consent {\n  default: "pending"\n  path: "consent.general"\n}', "")
    with Engine(load_text(text), dry_run=True) as engine:
        result = engine.session("s").push({"event": "page.view", "page": "home"})
    assert result.consent == "in"
    assert [s.consent for s in result.sends] == [None, None]
    assert "consent" not in result.to_json()


def test_pending_holds_then_in_releases_in_order() -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s")
        first = session.push({"event": "page.view", "page": "home"})
        second = session.push({"event": "page.view", "page": "list"})
        assert first.consent == "pending" and session.consent == "pending"
        assert [s.consent for s in first.sends + second.sends] == ["held"] * 4
        line = first.to_json()
        assert line["consent"] == "pending" and line["sends"][0]["consent"] == "held"
        # The CMP pushes consent: what was held goes first, then this push's own sends.
        given = session.push({"event": "page.view", "page": "cart", "consent": {"general": "in"}})
    assert given.consent == "in"
    assert names(given.released) == [
        ("edge", "home"), ("sitecore", "home"), ("edge", "list"), ("sitecore", "list"),
    ]  # fmt: skip
    assert names(given.sends) == [("edge", "cart"), ("sitecore", "cart")]
    request = given.consent_request
    assert request is not None
    assert request.url.startswith("https://edge.adobedc.net/ee/v1/privacy/set-consent?configId=")
    assert request.body["consent"] == [
        {"standard": "Adobe", "version": "1.0", "value": {"general": "in"}}
    ]
    # Held sends keep the time they happened at.
    assert (
        given.released[0].body["event"]["xdm"]["timestamp"]
        == (first.sends[0].body["event"]["xdm"]["timestamp"])
    )


def test_out_drops_what_was_held_and_everything_after() -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "page": "home"})
        refused = session.set_consent("out", tcf="CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA",
                                      gdpr_applies=True)  # fmt: skip
        later = session.push({"event": "page.view", "page": "list"})
        assert engine.consent_dropped == 4
    assert refused.dropped == 2 and refused.released == []
    assert refused.consent_request is not None
    assert refused.consent_request.body["consent"] == [
        {"standard": "Adobe", "version": "1.0", "value": {"general": "out"}},
        {
            "standard": "IAB TCF",
            "version": "2.0",
            "value": "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA",
            "gdprApplies": True,
        },
    ]
    assert later.consent == "out" and later.dropped == 2
    assert [s.consent for s in later.sends] == ["dropped", "dropped"]
    assert json.loads(str(later))["dropped"] == 2


def test_adobe_standard_2() -> None:
    text = rules('default: "pending"\n  adobe: "2.0"')
    with Engine(load_text(text), dry_run=True, clock=lambda: 1_800_000_000.0) as engine:
        result = engine.session("s").set_consent("in")
    assert result.consent_request is not None
    assert result.consent_request.body["consent"] == [
        {
            "standard": "Adobe",
            "version": "2.0",
            "value": {"collect": {"val": "y"}, "metadata": {"time": "2027-01-15T08:00:00.000Z"}},
        }
    ]


@pytest.mark.parametrize(
    "value", [True, "granted", "Y", {"general": "in"}, {"collect": {"val": "y"}}]
)
def test_what_a_cmp_may_push(value: Any) -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        result = engine.session("s").push({"event": "cmp", "consent": {"general": value}})
    assert result.consent == "in"


def test_a_malformed_consent_is_a_push_error_and_changes_nothing() -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "page": "home"})
        with pytest.raises(PushError, match=r"data layer consent\.general: consent 'maybe' is not"):
            session.push({"event": "page.view", "page": "x", "consent": {"general": "maybe"}})
        with pytest.raises(PushError, match="set_consent: consent 'yes please' is not"):
            session.set_consent("yes please")
        with pytest.raises(PushError, match=r"tcf must be an IAB TCF 2\.0 consent string"):
            session.set_consent("in", tcf="not a <tcf>")
        assert session.consent == "pending"
        assert session.state == {"page": "home"}
        released = session.set_consent("in").released
    assert names(released) == [("edge", "home"), ("sitecore", "home")]


def test_held_sends_are_bounded_and_the_excess_counted() -> None:
    text = rules('default: "pending"\n  max_held: 3')
    with Engine(load_text(text), dry_run=True) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "page": "a"})
        over = session.push({"event": "page.view", "page": "b"})
        released = session.set_consent("in").released
    assert over.dropped == 1
    assert names(released) == [("sitecore", "a"), ("edge", "b"), ("sitecore", "b")]


def test_consent_settings_are_checked_at_load() -> None:
    with pytest.raises(RuleError, match="consent setting 'default'"):
        load_text(rules('default: "maybe"'))


def test_test_blocks_can_set_consent() -> None:
    extra = """
test "nothing goes out until consent is given" {
  push { event: "page.view", page: "home" }
  expect no send
  consent "in"
  expect send event { xdm.web.webPageDetails.name: "home" }
  expect 2 sends
}
test "refused" {
  consent "out"
  push { event: "page.view", page: "home" }
  expect no send
}
"""
    reports = run_tests(load_text(rules('default: "pending"', extra)))
    assert [(r.name, r.failures) for r in reports] == [
        ("nothing goes out until consent is given", []),
        ("refused", []),
    ]
    with pytest.raises(RuleError, match="unknown consent 'inn'; expected 'in', 'out' or 'pending'"):
        load_text(
            rules(extra='test "t" {\n  consent "inn"\n  push { event: "x" }\n  expect no send\n}')
        )


def test_run_json_shows_held_and_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "t.rules").write_text(rules())
    pushes = tmp_path / "pushes.jsonl"
    pushes.write_text(
        "\n".join(
            json.dumps(p)
            for p in [
                {"event": "page.view", "page": "home"},
                {"event": "cmp", "consent": {"general": "out"}},
                {"event": "page.view", "page": "list"},
            ]
        )
    )
    out = CliRunner().invoke(
        cli, ["run", str(pushes), "--rules", str(folder), "--dry-run", "--json"]
    )
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [s.get("consent") for s in lines[0]["sends"]] == ["held", "held"]
    assert lines[1]["consent"] == "out" and lines[1]["dropped"] == 2
    assert lines[2]["dropped"] == 2


# ---------------------------------------------------------------- on the wire
def test_delivered_in_order_once_given(emulator: EmulatorServer) -> None:
    with Engine(load_text(rules()), edge_url=emulator.url, sitecore_url=emulator.url) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "page": "home"})
        assert [r for r in emulator.requests() if "/ee/" in r.path] == []
        session.push({"event": "page.view", "page": "cart", "consent": {"general": "in"}})
    edge = [r for r in emulator.requests() if r.path.startswith("/ee/")]
    assert [r.path for r in edge] == [
        "/ee/v1/privacy/set-consent", "/ee/v2/interact", "/ee/v2/interact",
    ]  # fmt: skip
    assert [r.status for r in edge] == [200, 200, 200]
    pages = [r.body["event"]["xdm"]["web"]["webPageDetails"]["name"] for r in edge[1:]]
    assert pages == ["home", "cart"]


def test_background_mode_holds_durably(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Held sends live with the session; given consent, they go through the outbox."""
    outbox = tmp_path / "sends.db"
    ruleset = load_text(rules())
    with Engine(ruleset, edge_url=emulator.url, sitecore_url=emulator.url, background=True,
                outbox=outbox) as engine:  # fmt: skip
        session = engine.session("s")
        session.push({"event": "page.view", "page": "home"})
        assert engine.backlog() is not None and engine.backlog().pending == 0  # type: ignore[union-attr]
        session.set_consent("in")
        assert engine.flush(timeout=10)
    edge = [r for r in emulator.requests() if r.path.startswith("/ee/")]
    assert [r.path for r in edge] == ["/ee/v1/privacy/set-consent", "/ee/v2/interact"]
    assert len([r for r in emulator.requests() if "event" in r.path]) == 1  # Sitecore's


def test_the_trace_says_what_consent_did() -> None:
    from rich.console import Console

    from engine.trace import render_summary, render_trace

    console = Console(record=True, width=200)
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s")
        render_summary(console, session.push({"event": "page.view", "page": "home"}))
        render_trace(console, session.set_consent("out"))
    text = console.export_text()
    assert "→ held: consent is pending" in text
    assert "consent out: Edge told (https://edge.adobedc.net/ee/v1/privacy/set-consent" in text
    assert "dropped 2 send(s): consent is out" in text


def test_held_sends_live_with_the_session_in_redis(redis_url: str) -> None:
    """One process holds (nothing reaches the outbox); another, later, is given consent and
    stores what was held, in order, with the consent notice first."""
    ruleset = load_text(rules())
    with Engine(ruleset, sessions=redis_url, deliver=False) as web:
        web.session("s").push({"event": "page.view", "page": "home"})
        web.session("s").push({"event": "page.view", "page": "list"})
        assert web.outbox is not None and web.outbox.pending() == []
    with Engine(ruleset, sessions=redis_url, deliver=False) as other:
        session = other.session("s")
        assert session.consent == "pending"
        session.set_consent("in")
        assert other.outbox is not None
        pending = other.outbox.pending()
    assert [(e.destination, e.rule) for e in pending] == [
        ("edge", "consent"),
        ("edge", "Page"), ("sitecore", "Page"), ("edge", "Page"), ("sitecore", "Page"),
    ]  # fmt: skip
    pages = [e.body["page"] for e in pending if e.destination == "sitecore"]
    assert pages == ["home", "list"]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_outbox_list_counts_what_consent_dropped(
    store: str, tmp_path: Path, redis_url: str
) -> None:
    outbox = str(tmp_path / "sends.db") if store == "sqlite" else redis_url
    sessions = None if store == "sqlite" else redis_url
    with Engine(load_text(rules()), deliver=False, outbox=outbox, sessions=sessions) as engine:
        engine.session("a").push({"event": "page.view", "page": "home"})
        engine.session("a").set_consent("out")
        engine.session("b").push({"event": "page.view", "page": "x", "consent": {"general": "n"}})
        assert engine.backlog().consent_dropped == 4  # type: ignore[union-attr]
    out = CliRunner().invoke(cli, ["outbox", "list", "--outbox", outbox])
    assert out.exit_code == 0, out.output
    assert "4 dropped for the visitor's consent (never stored)" in out.output
    listed = CliRunner().invoke(
        cli, ["outbox", "list", "--outbox", outbox, "--json", "--with-backlog"]
    )
    assert json.loads(listed.output)["backlog"]["consent_dropped"] == 4


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_consent_belongs_to_the_visitor_not_one_session(store: str, redis_url: str) -> None:
    sessions = None if store == "memory" else redis_url
    ruleset = load_text(rules())
    with Engine(ruleset, dry_run=True, sessions=sessions) as engine:
        engine.session("first", visitor="v1").set_consent("out")
        later = engine.session("second", visitor="v1").push({"event": "page.view", "page": "x"})
        other = engine.session("third", visitor="v2").push({"event": "page.view", "page": "x"})
        exported = engine.session("second", visitor="v1").export()
    assert later.consent == "out" and later.dropped == 2
    assert other.consent == "pending"
    with Engine(ruleset, dry_run=True) as elsewhere:  # restored in another process
        restored = elsewhere.restore(exported)
        assert restored.consent == "out"


def test_edge_is_told_on_the_visitors_cluster(emulator: EmulatorServer) -> None:
    text = rules('default: "in"')
    with Engine(load_text(text), edge_url=emulator.url, sitecore_url=emulator.url) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "page": "home"})  # Edge answers with its cluster
        hint = session.export()["identity"]["location_hint"]
        refused = session.set_consent("out")
    assert refused.consent_request is not None and refused.consent_request.status == 200
    paths = [r.path for r in emulator.requests() if r.path.startswith("/ee/")]
    assert paths == ["/ee/v2/interact", f"/ee/{hint}/v1/privacy/set-consent"]


def test_held_sends_survive_a_restart_with_a_file_outbox(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Sessions in memory, sends in a SQLite outbox: what is held waits in the file."""
    outbox = tmp_path / "sends.db"
    ruleset = load_text(rules())
    urls = {"edge_url": emulator.url, "sitecore_url": emulator.url}
    with Engine(ruleset, background=True, outbox=outbox, **urls) as first:  # type: ignore[arg-type]
        first.session("s").push({"event": "page.view", "page": "home"})
        first.session("s").push({"event": "page.view", "page": "list"})
        backlog = first.backlog()
        assert backlog is not None and (backlog.held, backlog.pending) == (4, 0)
    assert [r for r in emulator.requests() if r.path.startswith("/ee/")] == []
    with Engine(ruleset, background=True, outbox=outbox, **urls) as second:  # type: ignore[arg-type]
        released = second.session("s").set_consent("in").released
        assert names(released) == [
            ("edge", "home"), ("sitecore", "home"), ("edge", "list"), ("sitecore", "list"),
        ]  # fmt: skip
        assert second.flush(timeout=10)
        assert second.backlog().held == 0  # type: ignore[union-attr]
    edge = [r for r in emulator.requests() if r.path.startswith("/ee/")]
    assert [r.path for r in edge] == [
        "/ee/v1/privacy/set-consent",
        "/ee/v2/interact",
        "/ee/v2/interact",
    ]
    pages = [r.body["event"]["xdm"]["web"]["webPageDetails"]["name"] for r in edge[1:]]
    assert pages == ["home", "list"]
    # Refused after a restart: what was held is dropped and counted, never sent.
    with Engine(ruleset, background=True, outbox=outbox, **urls) as third:  # type: ignore[arg-type]
        third.session("t").push({"event": "page.view", "page": "x"})
    with Engine(ruleset, background=True, outbox=outbox, **urls) as fourth:  # type: ignore[arg-type]
        assert fourth.session("t").set_consent("out").dropped == 2
        backlog = fourth.backlog()
        assert backlog is not None and backlog.held == 0 and backlog.consent_dropped == 2


def test_no_first_party_id_cookie_without_consent() -> None:
    text = rules().replace('org: "', 'fpid: true\n  org: "')
    with Engine(load_text(text), dry_run=True) as engine:
        session = engine.session("s")
        session.push({"event": "page.view", "page": "home"})
        assert not any(c.startswith("FPID=") for c in session.set_cookie_headers())
        session.set_consent("in")
        assert any(c.startswith("FPID=") for c in session.set_cookie_headers())
        session.set_consent("out")
        assert not any(c.startswith("FPID=") for c in session.set_cookie_headers())
