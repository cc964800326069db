"""The visitor behind a push (VisitorContext), the first-party device id (FPID) and the legacy
AMCV ECID: what Edge requests carry, checked on the wire at the emulator over loopback."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, EngineError, PushError, RuleError, VisitorContext
from engine.emulator import EmulatorServer
from tests.conftest import load_text, rendered_errors

ORG = "53A16ACB5CC1D3760A495C99@AdobeOrg"
DATASTREAM = "ds-context"

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
HEADERS = {
    "User-Agent": CHROME,
    "Accept-Language": "de-CH,de;q=0.9,en;q=0.8",
    "Sec-CH-UA": '"Chromium";v="131", "Not_A Brand";v="24"',
    "sec-ch-ua-mobile": "?0",
    "Sec-CH-UA-Platform": '"Linux"',
    "Referer": "https://shop.example.com/p/hat?ref=mail",
    "Cookie": "secret=1",
    "Authorization": "Bearer visitor-token",
}


def rules(*, fpid: bool = False, url: str = "https://edge.adobedc.net", extra: str = "") -> str:
    return f"""
edge {{
  datastream: "{DATASTREAM}"
  org: "{ORG}"
  url: "{url}"
  {"fpid: true" if fpid else ""}
  {extra}
}}
rule "Page" {{
  on "page.view"
  send event {{ type: "web.webpagedetails.pageViews" }}
}}
rule "Named page" {{
  on "page.named"
  send event {{
    type: "web.webpagedetails.pageViews"
    xdm.web.webPageDetails.URL: "https://shop.example.com/named"
  }}
}}
"""


def edge_requests(emulator: EmulatorServer) -> list[Any]:
    return [r for r in emulator.requests() if r.path.startswith("/ee/")]


# ---------------------------------------------------------------- the context itself
def test_from_headers_reads_any_case_and_leaves_secrets_behind() -> None:
    context = VisitorContext.from_headers(HEADERS, "203.0.113.7")
    assert context.user_agent == CHROME
    assert context.accept_language == "de-CH,de;q=0.9,en;q=0.8"
    assert context.referer == "https://shop.example.com/p/hat?ref=mail"
    assert context.ip == "203.0.113.7"
    assert context.headers() == (
        ("User-Agent", CHROME),
        ("Accept-Language", "de-CH,de;q=0.9,en;q=0.8"),
        ("Sec-CH-UA", '"Chromium";v="131", "Not_A Brand";v="24"'),
        ("Sec-CH-UA-Mobile", "?0"),
        ("Sec-CH-UA-Platform", '"Linux"'),
        ("X-Forwarded-For", "203.0.113.7"),
    )
    names = {name.lower() for name, _ in context.headers()}
    assert not names & {"cookie", "authorization", "referer"}


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6, 198.51.100.9"), ("x-forwarded-for", "10.0.0.5")]
    # The peer is not a trusted proxy: whatever the header says, the peer is the visitor.
    assert VisitorContext.from_headers(headers, "192.0.2.1").ip == "192.0.2.1"
    # Behind two trusted hops: the right-most address that is not one of them.
    trusted = ["10.0.0.0/8", "127.0.0.1"]
    context = VisitorContext.from_headers(headers, "127.0.0.1", trusted_proxies=trusted)
    assert context.ip == "198.51.100.9"  # 6.6.6.6 was written by the visitor: not believed
    # A garbled hop: nothing to its left can be trusted, and the proxy is not the visitor.
    garbled = [("X-Forwarded-For", "198.51.100.9, not-an-ip")]
    assert VisitorContext.from_headers(garbled, "10.1.2.3", trusted_proxies=trusted).ip is None
    # Only proxies: no visitor address is known (the load balancer's is not theirs).
    assert VisitorContext.from_headers({}, "10.1.2.3", trusted_proxies=trusted).ip is None
    # ASGI gives bytes; a dual-stack socket gives IPv4 visitors as ::ffff:a.b.c.d.
    asgi = [(b"user-agent", b"Moz"), (b"x-forwarded-for", b"::ffff:203.0.113.77")]
    context = VisitorContext.from_headers(asgi, "10.0.0.1", trusted_proxies=["10.0.0.0/8"])
    assert (context.user_agent, context.ip) == ("Moz", "203.0.113.77")
    assert VisitorContext(ip="::ffff:203.0.113.77").forwarding("truncated").ip == "203.0.113.0"
    v6 = VisitorContext.from_headers({"x-forwarded-for": "[2001:db8::1]:443"}, "10.0.0.1",
                                     trusted_proxies=trusted)  # fmt: skip
    assert v6.ip == "2001:db8::1"


def test_hostile_request_headers_are_dropped_not_forwarded() -> None:
    context = VisitorContext.from_headers(
        {"User-Agent": "evil\r\nX-Injected: 1", "Accept-Language": "x" * 5000}, "192.0.2.1"
    )
    assert context.user_agent is None and context.accept_language is None


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: VisitorContext.from_headers(None, "1.2.3.4"), "headers must be a mapping"),  # type: ignore[arg-type]
        (lambda: VisitorContext.from_headers({}, 5), "client must be an address, not 5"),  # type: ignore[arg-type]
        (
            lambda: VisitorContext.from_headers({}, "1.2.3.4", trusted_proxies=["garbage"]),
            "trusted proxy 'garbage' is not an address or network",
        ),
        (lambda: VisitorContext.from_headers([("a",)], "1.2.3.4"), "not a \\(name, value\\) pair"),  # type: ignore[list-item]
    ],
)
def test_what_is_not_a_request_is_a_push_error(call: Any, named: str) -> None:
    with pytest.raises(PushError, match=named):
        call()


def test_header_values_that_are_not_text_are_left_out() -> None:
    context = VisitorContext.from_headers({"X-Forwarded-For": 5, "User-Agent": "Moz"}, "10.0.0.1",  # type: ignore[dict-item]
                                          trusted_proxies=["10.0.0.0/8"])  # fmt: skip
    assert (context.user_agent, context.ip) == ("Moz", None)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ip": "999.1.1.1"}, "ip '999.1.1.1' is not an IP address"),
        ({"user_agent": "a\nb"}, "user_agent holds characters a header cannot carry"),
        ({"client_hints": {"sec-ch-ua-colour": "red"}}, "'sec-ch-ua-colour' is not"),
        ({"referer": 42}, "referer must be a string, not int"),
    ],
)
def test_a_malformed_context_is_a_push_error_naming_it(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(PushError, match=named.replace("(", r"\(")):
        VisitorContext(**fields)


def test_a_bad_context_leaves_the_session_unchanged() -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s1")
        with pytest.raises(PushError, match="context must be a VisitorContext"):
            session.push({"event": "page.view", "page": {"a": 1}}, context={"ip": "1.2.3.4"})  # type: ignore[arg-type]
        assert session.state == {}
        assert session.push({"event": "page.view"}).fired == ["Page"]


# ---------------------------------------------------------------- on the wire
def test_edge_requests_describe_the_visitor_not_the_server(emulator: EmulatorServer) -> None:
    context = VisitorContext.from_headers(HEADERS, "203.0.113.7")
    with Engine(load_text(rules()), edge_url=emulator.url) as engine:
        session = engine.session("s1")
        session.push({"event": "page.view"}, context=context)
        session.push({"event": "page.named"}, context=context)
    first, named = edge_requests(emulator)
    for request in (first, named):
        assert request.status == 200
        assert request.headers["user-agent"] == CHROME
        assert request.headers["accept-language"] == "de-CH,de;q=0.9,en;q=0.8"
        assert request.headers["sec-ch-ua-platform"] == '"Linux"'
        assert request.headers["x-forwarded-for"] == "203.0.113.7"
        assert "cookie" not in request.headers and "referer" not in request.headers
    # The page is the Referer, unless the rule names it.
    assert first.body["event"]["xdm"]["web"]["webPageDetails"]["URL"] == HEADERS["Referer"]
    page = named.body["event"]["xdm"]["web"]["webPageDetails"]["URL"]
    assert page == "https://shop.example.com/named"


def test_without_a_context_the_engine_speaks_for_itself(emulator: EmulatorServer) -> None:
    with Engine(load_text(rules()), edge_url=emulator.url) as engine:
        engine.session("s1").push({"event": "page.view"})
    (request,) = edge_requests(emulator)
    assert request.headers["user-agent"].startswith("tagengine/")
    assert "x-forwarded-for" not in request.headers
    assert "web" not in request.body["event"]["xdm"]


@pytest.mark.parametrize(
    ("policy", "v4", "v6"),
    [
        ("full", "203.0.113.7", "2001:db8:85a3:8d3:1319:8a2e:370:7348"),
        ("truncated", "203.0.113.0", "2001:db8:85a3::"),
        ("none", None, None),
    ],
)
def test_forward_ip_policy(emulator: EmulatorServer, policy: Any, v4: Any, v6: Any) -> None:
    with Engine(load_text(rules()), edge_url=emulator.url, forward_ip=policy) as engine:
        engine.session("a").push({"event": "page.view"}, context=VisitorContext(ip="203.0.113.7"))
        engine.session("b").push(
            {"event": "page.view"},
            context=VisitorContext(ip="2001:db8:85a3:8d3:1319:8a2e:370:7348"),
        )
    sent = [r.headers.get("x-forwarded-for") for r in edge_requests(emulator)]
    assert sent == [v4, v6]


def test_forward_ip_must_be_a_known_policy() -> None:
    with pytest.raises(EngineError, match="forward_ip must be one of full, truncated, none"):
        Engine(load_text(rules()), dry_run=True, forward_ip="half")  # type: ignore[arg-type]


def test_a_stored_send_keeps_its_visitor_until_delivered(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A push-only process stores the send; another process delivers it later: the request
    still describes the visitor of the push (and the IP as the pushing process's policy
    left it)."""
    outbox = tmp_path / "sends.db"
    ruleset = load_text(rules())
    context = VisitorContext.from_headers(HEADERS, "203.0.113.7")
    with Engine(ruleset, edge_url=emulator.url, deliver=False, outbox=outbox,
                forward_ip="truncated") as producer:  # fmt: skip
        producer.session("s1").push({"event": "page.view"}, context=context)
    assert edge_requests(emulator) == []
    with Engine(ruleset, edge_url=emulator.url, background=True, outbox=outbox) as worker:
        assert worker.flush(timeout=10)
    (request,) = edge_requests(emulator)
    assert request.headers["user-agent"] == CHROME
    assert request.headers["x-forwarded-for"] == "203.0.113.0"
    assert request.body["event"]["xdm"]["web"]["webPageDetails"]["URL"] == HEADERS["Referer"]
    assert outbox.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- first-party device id
def identity_map(request: Any) -> dict[str, Any]:
    result: dict[str, Any] = request.body["event"]["xdm"]["identityMap"]
    return result


def test_fpid_is_the_primary_identity_from_the_first_event(emulator: EmulatorServer) -> None:
    with Engine(load_text(rules(fpid=True)), edge_url=emulator.url) as engine:
        session = engine.session("s1")
        session.push({"event": "page.view"})
        session.push({"event": "page.view"})
        cookies = session.set_cookie_headers("example.com")
    first, second = edge_requests(emulator)
    (fpid,) = identity_map(first)["FPID"]
    assert fpid["primary"] is True and fpid["authenticatedState"] == "ambiguous"
    assert uuid.UUID(fpid["id"]).version == 4
    assert identity_map(second)["FPID"] == [fpid]
    # Edge's ECID came back; the FPID stays the primary one.
    assert identity_map(second)["ECID"][0]["primary"] is False
    (cookie,) = [c for c in cookies if c.startswith("FPID=")]
    assert cookie == (
        f"FPID={fpid['id']}; Max-Age=34128000; Domain=example.com; Path=/; SameSite=Lax; "
        "Secure; HttpOnly"
    )


def test_the_fpid_cookie_brings_the_visitor_back(emulator: EmulatorServer) -> None:
    known = str(uuid.uuid4())
    extra = 'fpid_cookie: "tg_fpid"'
    with Engine(load_text(rules(fpid=True, extra=extra)), edge_url=emulator.url) as engine:
        session = engine.session("new-session")
        session.take_cookies({"tg_fpid": known, "other": "x"})
        session.push({"event": "page.view"})
        assert session.set_cookie_headers()[-1].startswith(f"tg_fpid={known}; ")
    (request,) = edge_requests(emulator)
    assert identity_map(request)["FPID"][0]["id"] == known


def test_one_fpid_for_all_the_visitors_sessions_as_written() -> None:
    with Engine(load_text(rules(fpid=True)), dry_run=True) as engine:
        first = engine.session("a", visitor="V").push({"event": "page.view"})
        second = engine.session("b", visitor="V").push({"event": "page.view"})
        other = engine.session("c", visitor="W").push({"event": "page.view"})
        upper = str(uuid.uuid4()).upper()
        engine.session("d").take_cookies({"FPID": upper})
        taken = engine.session("d").push({"event": "page.view"})

    def fpid(result: Any) -> str:
        return str(result.sends[0].body["event"]["xdm"]["identityMap"]["FPID"][0]["id"])

    assert fpid(first) == fpid(second) != fpid(other)
    assert fpid(taken) == upper  # Edge derives the ECID from the text as the browser has it


def test_a_malformed_fpid_cookie_is_refused_and_changes_nothing() -> None:
    with Engine(load_text(rules(fpid=True)), dry_run=True) as engine:
        session = engine.session("s1")
        with pytest.raises(EngineError, match="the FPID cookie: 'not-a-uuid' is not a first-party"):
            session.take_cookies({"FPID": "not-a-uuid", "kndctr_x_identity": "abc"})
        assert session.export()["identity"] == {}


# ---------------------------------------------------------------- legacy ECID (AMCV)
LEGACY = "12345678901234567890123456789012345678"
AMCV = f"-1124106680%7CMCIDTS%7C19000%7CMCMID%7C{LEGACY}%7CMCAAMLH-1700000000%7C6"


def test_a_legacy_visitor_keeps_their_ecid(emulator: EmulatorServer) -> None:
    with Engine(load_text(rules()), edge_url=emulator.url) as engine:
        session = engine.session("s1")
        session.take_cookies({"AMCV_53A16ACB5CC1D3760A495C99%40AdobeOrg": AMCV})
        session.push({"event": "page.view"})
    (request,) = edge_requests(emulator)
    assert identity_map(request)["ECID"][0]["id"] == LEGACY


def test_an_edge_identity_cookie_wins_over_the_legacy_one(emulator: EmulatorServer) -> None:
    prefix = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_"
    with Engine(load_text(rules()), edge_url=emulator.url) as engine:
        session = engine.session("s1")
        session.take_cookies({f"AMCV_{ORG}": AMCV, prefix + "identity": "CiYxMjM0"})
        session.push({"event": "page.view"})
    (request,) = edge_requests(emulator)
    assert "identityMap" not in request.body["event"]["xdm"]
    entries = request.body["meta"]["state"]["entries"]
    assert {"key": prefix + "identity", "value": "CiYxMjM0"} in entries


def test_legacy_cookies_are_read_as_alloy_reads_them(emulator: EmulatorServer) -> None:
    opted_out = "MCOPTOUT-1700000000s%7CNONE%7CvVersion%7C5.5.0"
    with Engine(load_text(rules()), edge_url=emulator.url) as engine:
        # An opted-out Visitor.js cookie has no ECID: nothing is migrated, nothing fails.
        engine.session("s1").take_cookies({f"AMCV_{ORG}": opted_out})
        engine.session("s1").push({"event": "page.view"})
        # s_ecid comes first, and any number of digits is an ECID.
        engine.session("s2").take_cookies({"s_ecid": "MCMID%7C4242", f"AMCV_{ORG}": AMCV})
        engine.session("s2").push({"event": "page.view"})
    first, second = edge_requests(emulator)
    assert "identityMap" not in first.body["event"]["xdm"]
    assert identity_map(second)["ECID"][0]["id"] == "4242"


@pytest.mark.parametrize(
    ("cookies", "named"),
    [
        ("FPID=abc", "cookies must be a mapping"),
        ({"a": 1}, "cookies must be a mapping"),
        ({f"kndctr_{ORG.replace('@', '_')}_consent": "garbage"}, "is not Edge's consent"),
    ],
)
def test_malformed_cookies_are_push_errors_and_change_nothing(cookies: Any, named: str) -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s1")
        with pytest.raises(PushError, match=named):
            session.take_cookies(cookies)
        assert session.export()["identity"] == {}


def test_a_percent_encoded_opt_out_cookie_is_obeyed() -> None:
    name = f"kndctr_{ORG.replace('@', '_')}_consent"
    with Engine(load_text(rules()), dry_run=True) as engine:
        session = engine.session("s1")
        session.take_cookies({name: "general%3Dout"})
        assert session.push({"event": "page.view"}).sends[0].consent == "dropped"


# ---------------------------------------------------------------- the authenticated host
def test_the_authenticated_host_needs_a_primary_identity_source() -> None:
    errors = rendered_errors(rules(url="https://server.adobedc.net"))
    assert len(errors) == 2  # both send events
    assert "t.rules:11:8" in errors[0]
    assert "rejects an event without a primary identity (EXEG-0306-400)" in errors[0]
    assert "set 'fpid: true' in the edge settings" in errors[0]
    assert "identityMap entry with 'primary: true'" in errors[0]
    # Either source will do.
    load_text(rules(url="https://server.adobedc.net", fpid=True))
    load_text(
        f"""
edge {{
  datastream: "{DATASTREAM}"
  org: "{ORG}"
  url: "https://or2.server.adobedc.net"
}}
rule "Login" {{
  on "login"
  send event {{
    type: "userAccount.login"
    identityMap.CRM: [{{ id: state.user.id, primary: true }}]
  }}
}}
"""
    )


def test_credentials_mean_the_authenticated_host_too() -> None:
    text = rules(extra='client_id: "id"\n  client_secret: env("EDGE_SECRET", "s")')
    with pytest.raises(RuleError, match="EXEG-0306-400"):
        load_text(text)


# ---------------------------------------------------------------- display notifications
PROPOSITIONS = [
    {"id": "prop-1", "scope": "hero", "scopeDetails": {"activity": {"id": "42"}}, "items": [{}]},
]


def test_the_app_tells_edge_what_it_rendered(emulator: EmulatorServer) -> None:
    context = VisitorContext.from_headers(HEADERS, "203.0.113.7")
    with Engine(load_text(rules(fpid=True)), edge_url=emulator.url) as engine:
        result = engine.session("s1").notify_propositions(PROPOSITIONS, view_name="home",
                                                          context=context)  # fmt: skip
    (send,) = result.sends
    assert send.status == 200
    (request,) = edge_requests(emulator)
    xdm = request.body["event"]["xdm"]
    assert xdm["eventType"] == "decisioning.propositionDisplay"
    assert xdm["_experience"]["decisioning"] == {
        "propositions": [
            {"id": "prop-1", "scope": "hero", "scopeDetails": {"activity": {"id": "42"}}}
        ],
        "propositionEventType": {"display": 1},
    }
    assert xdm["web"]["webPageDetails"] == {"viewName": "home", "URL": HEADERS["Referer"]}
    assert xdm["identityMap"]["FPID"][0]["primary"] is True
    assert request.headers["user-agent"] == CHROME


def test_bad_propositions_are_a_push_error() -> None:
    with Engine(load_text(rules()), dry_run=True) as engine:
        with pytest.raises(PushError, match="notify_propositions: no propositions to notify"):
            engine.session("s1").notify_propositions([])
        with pytest.raises(PushError, match="notify_propositions: event_type must be one of"):
            engine.session("s1").notify_propositions(PROPOSITIONS, event_type="decisioning.x")


# ---------------------------------------------------------------- tagengine run envelopes
def test_run_takes_context_and_cookies_in_envelopes(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from engine.cli import cli

    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "t.rules").write_text(rules(fpid=True))
    fpid = str(uuid.uuid4())
    lines = [
        {
            "session": "s1",
            "push": {"event": "page.view"},
            "context": {
                "headers": HEADERS,
                "client": "10.0.0.2",
                "trusted_proxies": ["10.0.0.0/8"],
            },
            "cookies": {"FPID": fpid, f"AMCV_{ORG}": AMCV},
        },
        {"session": "s2", "push": {"event": "page.view"}, "context": {"ip": "198.51.100.1"}},
        {"session": "s3", "push": {"event": "page.view"}, "context": {"ip": "nope"}},
        {"session": "s4", "push": {"event": "page.view"}, "cookies": {"FPID": "x"}},
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    out = CliRunner().invoke(
        cli, ["run", str(tmp_path / "in.jsonl"), "--rules", str(folder), "--dry-run", "--json"]
    )
    assert out.exit_code == 1  # the two bad lines
    objects = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    first, second, bad_ip, bad_cookie = objects
    (send,) = first["sends"]
    assert send["headers"]["User-Agent"] == CHROME
    assert "X-Forwarded-For" not in send["headers"]  # behind a trusted proxy, none given
    xdm = send["body"]["event"]["xdm"]
    assert xdm["identityMap"]["FPID"][0]["id"] == fpid
    assert xdm["identityMap"]["ECID"][0]["id"] == LEGACY
    assert xdm["web"]["webPageDetails"]["URL"] == HEADERS["Referer"]
    assert second["sends"][0]["headers"] == {"X-Forwarded-For": "198.51.100.1"}
    assert "ip 'nope' is not an IP address" in bad_ip["error"]
    assert "the FPID cookie: 'x' is not a first-party id" in bad_cookie["error"]
