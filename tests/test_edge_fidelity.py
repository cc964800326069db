"""``send event`` as the Web SDK (adobe/alloy) sends it, where a server can: surfaces normalised
as ``normalizeSurfaces`` does, at most 30 decision scopes, the personalization options alloy
takes, display notifications for rendered propositions, the location hint on the authenticated
host, and ``identityMap`` checked as ``validateIdentityMap`` checks it (docs/destinations.md).

Literals are load errors with their position; data-layer values fail the rule with a reason.
Bodies and URLs are read from ``tagengine run --dry-run --json``, from the Python API, and from
the local emulator over loopback sockets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.destinations.edge import build_edge_request, proposition_notification
from engine.destinations.edge_fields import (
    SurfaceError,
    identity_map_problems,
    normalize_surface,
    page_surface,
)
from engine.emulator import EmulatorServer
from engine.results import PushResult
from engine.settings import EdgeSettings
from tests.conftest import load_text, rendered_errors

ROOT = Path(__file__).resolve().parent.parent
DRY_JSON = ("--dry-run", "--json")
EDGE = 'edge { datastream: "ds-1" }\n'
PAGE = "https://Shop.Example.com/p/?q=1"
SCOPES_31 = ", ".join(f'"s{i}"' for i in range(31))
SCOPES_30 = ", ".join(f'"s{i}"' for i in range(30))
PROPOSITION = {
    "id": "AT:eyJhY3Rpdml0eUlkIjoiMTI3MjE2IiwiZXhwZXJpZW5jZUlkIjoiMCJ9",
    "scope": "hero-banner",
    "scopeDetails": {
        "decisionProvider": "TGT",
        "activity": {"id": "127216"},
        "characteristics": {"eventToken": "abc=="},
    },
    "items": [{"id": "0", "schema": "https://ns.adobe.com/personalization/json-content-item"}],
    "renderAttempted": False,
}
META = {key: PROPOSITION[key] for key in ("id", "scope", "scopeDetails")}


def rule(fields: str, name: str = "R", on: str = "x") -> str:
    return f'rule "{name}" {{\n  on "{on}"\n  send event {{\n{fields}\n  }}\n}}\n'


def push(text: str, item: dict[str, Any], **engine: Any) -> PushResult:
    with Engine(load_text(text), dry_run=True, **engine) as running:
        return running.session("s").push(item)


def only_send(result: PushResult) -> dict[str, Any]:
    assert [r.status for r in result.rules] == ["fired"], result.rules
    (send,) = result.sends
    body: dict[str, Any] = send.request.body
    return body


def failure(result: PushResult) -> str:
    (outcome,) = result.rules
    assert outcome.status == "failed" and outcome.reason is not None, outcome
    assert not result.sends
    return outcome.reason


def dry_run_json(tmp_path: Path, rules: str, pushes: list[dict[str, Any]]) -> list[Any]:
    """``tagengine run --dry-run --json`` on ``rules``, one object per push."""
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "t.rules").write_text(rules, encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(p) + "\n" for p in pushes), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--rules", str(folder), str(events), *DRY_JSON],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# ====================================================================== surfaces
@pytest.mark.parametrize(
    ("surface", "page", "sent"),
    [
        ("web://Shop.Example.com/Home/", None, "web://shop.example.com/Home"),
        ("web://shop.example.com", None, "web://shop.example.com/"),
        ("WEB://Shop.Example.COM//", None, "web://shop.example.com/"),
        ("webapp://App.Example.com/a/b///", None, "webapp://app.example.com/a/b"),
        ("web://shop.example.com:8443/p#Hero", None, "web://shop.example.com:8443/p#Hero"),
        ("web://user@Shop.example.com/p", None, "web://user@shop.example.com/p"),
        ("web://[2001:DB8::1]/p", None, "web://[2001:db8::1]/p"),
        ("web://shop.example.com/caf%C3%A9/é", None, "web://shop.example.com/caf%C3%A9/é"),
        ("#hero", "https://Shop.Example.com/p/?q=1#top", "web://shop.example.com/p#hero"),
        ("#hero", "https://shop.example.com:443", "web://shop.example.com/#hero"),
        ("#hero", "http://shop.example.com:8080/a/b/", "web://shop.example.com:8080/a/b#hero"),
    ],
)
def test_surfaces_are_normalised_as_alloy_does(surface: str, page: str | None, sent: str) -> None:
    assert normalize_surface(surface, page) == sent


@pytest.mark.parametrize(
    ("surface", "page", "message"),
    [
        ("mobileapp://com.shop/home", None, "unsupported surface type 'mobileapp'"),
        ("ftp://shop.example.com/", None, "unsupported surface type 'ftp'"),
        ("shop.example.com/home", None, 'invalid surface "shop.example.com/home"'),
        ("web://", None, 'invalid surface "web://"'),
        ("web://shop example.com/", None, "invalid host 'shop example.com'"),
        ("web://shop.example.com/a b", None, "invalid path '/a b'"),
        ("web://shop.example.com/p?q=1", None, "invalid path '/p?q=1'"),
        ("web://shop.example.com/p#a b", None, "invalid fragment '#a b'"),
        ("web://shop.example.com/p#", None, "invalid fragment '#'"),
        ("#hero", None, "the page URL (xdm.web.webPageDetails.URL) is not set"),
        ("#hero", "/relative/page", "is not an absolute http(s) URL"),
        ("#a b", "https://shop.example.com/", "invalid fragment '#a b'"),
        ("", None, 'invalid surface ""'),
    ],
)
def test_surfaces_alloy_drops_are_refused(surface: str, page: str | None, message: str) -> None:
    with pytest.raises(SurfaceError, match=re.escape(message)):
        normalize_surface(surface, page)


def test_a_long_surface_authority_is_checked_in_linear_time() -> None:
    # alloy's "(?:.*@)?" prefix backtracks; this check must not.
    with pytest.raises(SurfaceError, match="invalid host"):
        normalize_surface("web://" + "@" * 50_000 + " /", None)


def test_page_surface_leaves_out_query_fragment_and_default_port() -> None:
    assert page_surface(PAGE) == "web://shop.example.com/p"
    assert page_surface("https://shop.example.com") == "web://shop.example.com/"


def test_surfaces_in_the_dry_run_body_are_alloys(tmp_path: Path) -> None:
    """The research's measured case: alloy sends these three for these four (the fourth,
    mobileapp://, alloy drops with a warning; here it is a load error, tested below)."""
    rules = EDGE + rule(
        '    type: "t"\n'
        "    xdm: { web.webPageDetails.URL: state.page.url }\n"
        '    personalization: { surfaces: ["web://Shop.Example.com/Home/", '
        '"web://shop.example.com", "#hero", "web://shop.example.com/Home"] }'
    )
    pushes = [{"event": "x", "page": {"url": "https://shop.example.com/p"}}]
    (line,) = dry_run_json(tmp_path, rules, pushes)
    (send,) = line["sends"]
    assert send["body"]["query"]["personalization"] == {
        "schemas": send["body"]["query"]["personalization"]["schemas"],
        "decisionScopes": [],
        "surfaces": [
            "web://shop.example.com/Home",
            "web://shop.example.com/",
            "web://shop.example.com/p#hero",
        ],
    }


def test_a_literal_fragment_without_a_page_url_is_a_load_error() -> None:
    errors = rendered_errors(
        EDGE + rule('    type: "t"\n    personalization.surfaces: ["web://a.com/", "#hero"]')
    )
    assert errors == [
        "t.rules:6:48: error: send event 'personalization.surfaces': surface \"#hero\" is a "
        "fragment of the page, and the page URL (xdm.web.webPageDetails.URL) is not set: set "
        "it, or write the full surface (web://HOST/PATH#hero)\n"
        ' 6 |     personalization.surfaces: ["web://a.com/", "#hero"]\n'
        "   |                                                ^~~~~~~"
    ]


def test_unsupported_and_invalid_literal_surfaces_are_load_errors() -> None:
    errors = rendered_errors(
        EDGE
        + rule(
            '    type: "t"\n'
            '    xdm.web.webPageDetails.URL: "https://shop.example.com/p"\n'
            "    personalization: {\n"
            '      surfaces: ["mobileapp://com.shop/home", "web://a.com/x y", "#ok", "#b d"]\n'
            "    }"
        )
    )
    assert [e.splitlines()[0] for e in errors] == [
        "t.rules:8:18: error: send event 'personalization.surfaces': unsupported surface type "
        "'mobileapp' in \"mobileapp://com.shop/home\": only web:// and webapp:// surfaces are "
        "asked for, as the Web SDK does",
        "t.rules:8:47: error: send event 'personalization.surfaces': invalid path '/x y' in "
        "surface \"web://a.com/x y\": letters, digits, '/', '-', '.', '_', '~' and %XX escapes "
        "only (no query string)",
        "t.rules:8:73: error: send event 'personalization.surfaces': invalid fragment '#b d' in "
        'surface "#b d"',
    ]


def test_a_fragment_with_a_data_layer_page_url_is_checked_when_the_push_runs() -> None:
    text = EDGE + rule(
        '    type: "t"\n'
        "    xdm.web.webPageDetails.URL: state.page.url\n"
        '    personalization.surfaces: ["#hero", state.page.surface]'
    )
    body = only_send(push(text, {"event": "x", "page": {"url": PAGE}}))
    assert body["query"]["personalization"]["surfaces"] == ["web://shop.example.com/p#hero"]

    reason = failure(push(text, {"event": "x"}))
    assert reason == (
        "t.rules:4:3: rule 'R': send event 'personalization.surfaces': surface \"#hero\" is a "
        "fragment of the page, and the page URL (xdm.web.webPageDetails.URL) is not set: set "
        "it, or write the full surface (web://HOST/PATH#hero)"
    )
    reason = failure(push(text, {"event": "x", "page": {"url": "shop.example.com/p"}}))
    assert reason.endswith(
        "send event 'personalization.surfaces': the page URL \"shop.example.com/p\" "
        "(xdm.web.webPageDetails.URL) is not an absolute http(s) URL, so it has no page surface"
    )
    reason = failure(
        push(text, {"event": "x", "page": {"url": PAGE, "surface": "mobileapp://com.shop"}})
    )
    assert "unsupported surface type 'mobileapp' in \"mobileapp://com.shop\"" in reason


# ====================================================================== decision scopes
def test_more_than_30_literal_scopes_is_a_load_error() -> None:
    errors = rendered_errors(
        EDGE + rule(f'    type: "t"\n    personalization.decisionScopes: [{SCOPES_31}]')
    )
    assert len(errors) == 1
    assert errors[0].splitlines()[0] == (
        "t.rules:6:37: error: send event asks for 31 decision scopes ('decisionScopes' and "
        "'personalization.decisionScopes' together, without duplicates); Edge takes at most 30 "
        "in one request"
    )
    # 30 is fine; both lists count together, duplicates once; viewStart adds __view__
    load_text(EDGE + rule(f'    type: "t"\n    personalization.decisionScopes: [{SCOPES_30}]'))
    load_text(
        EDGE
        + rule(
            f'    type: "t"\n    decisionScopes: ["s0"]\n    personalization.decisionScopes: [{SCOPES_30}]'
        )
    )
    (error,) = rendered_errors(
        EDGE
        + rule(
            f'    type: "t"\n    decisionScopes: ["x"]\n    personalization.decisionScopes: [{SCOPES_30}]'
        )
    )
    assert "asks for 31 decision scopes" in error
    (error,) = rendered_errors(
        EDGE + rule(f'    type: "viewStart"\n    personalization.decisionScopes: [{SCOPES_30}]')
    )
    assert "together and __view__, without duplicates" in error


def test_more_than_30_data_layer_scopes_fails_the_rule() -> None:
    text = EDGE + rule(
        '    type: "t"\n    decisionScopes: ["a"]\n    personalization.decisionScopes: state.scopes'
    )
    scopes = [f"s{i}" for i in range(29)]
    body = only_send(push(text, {"event": "x", "scopes": [*scopes, "a"]}))  # "a" counts once
    assert body["query"]["personalization"]["decisionScopes"] == ["a", *scopes]
    reason = failure(push(text, {"event": "x", "scopes": [*scopes, "b"]}))
    assert reason == (
        "t.rules:4:3: rule 'R': send event asks for 31 decision scopes ('decisionScopes' and "
        "'personalization.decisionScopes' together, without duplicates); Edge takes at most 30 "
        "in one request"
    )


# ====================================================================== personalization options
def test_include_default_and_context_are_accepted_and_sent_as_alloy_sends_them(
    tmp_path: Path,
) -> None:
    rules = EDGE + rule(
        '    type: "web.webpagedetails.pageViews"\n'
        "    xdm.web.webPageDetails.URL: state.page.url\n"
        "    personalization: {\n"
        '      decisionScopes: ["hero"]\n'
        "      defaultPersonalizationEnabled: true\n"
        "      includeRenderedPropositions: true\n"
        '      decisionContext: { tier: "gold", visits: 3 }\n'
        "      sendDisplayEvent: false\n"
        "    }\n"
        "    renderDecisions: true\n"
        "    propositions: event.eventInfo.rendered"
    )
    pushes = [
        {"event": "x", "page": {"url": PAGE}, "eventInfo": {"rendered": [PROPOSITION]}},
        {"event": "x", "page": {"url": PAGE}},  # nothing rendered: nothing included
        {"session": "other", "push": {"event": "x"}},  # no page URL: __view__ alone
    ]
    first, second, third = dry_run_json(tmp_path, rules, pushes)
    body = first["sends"][0]["body"]
    query = body["query"]["personalization"]
    # defaultPersonalizationEnabled: the page-wide scope and the page surface, as alloy's
    # createPersonalizationDetails adds them, and dom-action with __view__
    assert query["decisionScopes"] == ["hero", "__view__"]
    assert query["surfaces"] == ["web://shop.example.com/p"]
    assert query["schemas"][-1] == "https://ns.adobe.com/personalization/dom-action"
    # includeRenderedPropositions: the rendered propositions ride along as displayed
    assert body["event"]["xdm"]["_experience"] == {
        "decisioning": {"propositions": [META], "propositionEventType": {"display": 1}}
    }
    raw = json.dumps(body)
    for unsent in (
        "decisionContext",
        "gold",
        "includeRenderedPropositions",
        "renderDecisions",
        "sendDisplayEvent",
        "defaultPersonalizationEnabled",
        "renderAttempted",
    ):
        assert unsent not in raw
    assert "_experience" not in second["sends"][0]["body"]["event"]["xdm"]
    assert third["sends"][0]["body"]["query"]["personalization"]["surfaces"] == []
    assert third["sends"][0]["body"]["query"]["personalization"]["decisionScopes"] == [
        "hero",
        "__view__",
    ]


def test_default_personalization_false_keeps_view_start_from_asking_for_the_view() -> None:
    body = only_send(
        push(
            EDGE
            + rule(
                '    type: "viewStart"\n    personalization.defaultPersonalizationEnabled: false'
            ),
            {"event": "x"},
        )
    )
    assert "personalization" not in body["query"]
    body = only_send(push(EDGE + rule('    type: "viewStart"'), {"event": "x"}))
    assert body["query"]["personalization"]["decisionScopes"] == ["__view__"]


def test_personalization_option_shapes() -> None:
    errors = rendered_errors(
        EDGE
        + rule(
            '    type: "t"\n'
            '    personalization: { includeRenderedPropositions: "yes", '
            "defaultPersonalizationEnabled: 1, decisionContext: [1], sendDisplayEvnt: true }"
        )
    )
    assert [e.splitlines()[0] for e in errors] == [
        "t.rules:6:53: error: send event 'personalization.includeRenderedPropositions' must be "
        'true or false, not "yes"',
        "t.rules:6:91: error: send event 'personalization.defaultPersonalizationEnabled' must be "
        "true or false, not 1",
        "t.rules:6:111: error: send event 'personalization.decisionContext' must be an object, "
        "not [1]",
        "t.rules:6:116: error: unknown personalization field 'sendDisplayEvnt' (did you mean "
        "'sendDisplayEvent'?)",
    ]
    text = EDGE + rule('    type: "t"\n    personalization.defaultPersonalizationEnabled: state.on')
    assert failure(push(text, {"event": "x", "on": "yes"})).endswith(
        "send event 'personalization.defaultPersonalizationEnabled' must be true or false, not str"
    )


# ====================================================================== display notifications
NOTIFY = EDGE + rule(
    '    type: "decisioning.propositionDisplay"\n    propositions: event.eventInfo.propositions',
    name="Offers shown",
    on="offers.rendered",
)


def test_a_rule_sends_the_display_notification_alloy_sends(tmp_path: Path) -> None:
    other = {"id": "p-2", "scope": "web://shop.example.com/p", "scopeDetails": {}}
    pushes = [{"event": "offers.rendered", "eventInfo": {"propositions": [PROPOSITION, other]}}]
    (line,) = dry_run_json(tmp_path, NOTIFY, pushes)
    (send,) = line["sends"]
    xdm = send["body"]["event"]["xdm"]
    assert xdm["eventType"] == "decisioning.propositionDisplay"
    assert xdm["_experience"] == {
        "decisioning": {
            "propositions": [META, other],
            "propositionEventType": {"display": 1},
        }
    }
    assert "personalization" not in send["body"]["query"]  # a notification asks for nothing
    # the Python function builds the same event
    fields = proposition_notification([PROPOSITION, other])
    assert fields == {
        "type": "decisioning.propositionDisplay",
        "xdm": {"_experience": xdm["_experience"]},
    }


def test_proposition_notification_builds_what_build_edge_request_sends() -> None:
    fields = proposition_notification(
        [PROPOSITION, None], event_type="decisioning.propositionInteract", view_name="cart"
    )
    assert fields == {
        "type": "decisioning.propositionInteract",
        "xdm": {
            "_experience": {
                "decisioning": {"propositions": [META], "propositionEventType": {"interact": 1}}
            },
            "web": {"webPageDetails": {"viewName": "cart"}},
        },
    }
    request = build_edge_request(
        fields,
        EdgeSettings(datastream="ds-1"),
        rule="display",
        identity={"ecid": "1234"},
        timestamp="2026-05-04T09:15:02.120Z",
        event_id="e",
        request_id="r",
    )
    xdm = request.body["event"]["xdm"]
    assert xdm["eventType"] == "decisioning.propositionInteract"
    assert xdm["identityMap"]["ECID"][0]["id"] == "1234"
    assert xdm["_experience"] == fields["xdm"]["_experience"]
    # a lone proposition counts as one
    assert proposition_notification(PROPOSITION)["xdm"] == {
        "_experience": {
            "decisioning": {"propositions": [META], "propositionEventType": {"display": 1}}
        }
    }


@pytest.mark.parametrize(
    ("propositions", "kwargs", "message"),
    [
        ([], {}, "no propositions to notify"),
        (None, {}, "no propositions to notify"),
        ([{"scope": "a"}], {}, "'propositions[0].id' must be a non-empty string, not null"),
        ([{"id": "a", "scope": 3}], {}, "'propositions[0].scope' must be a non-empty string"),
        ([{"id": "a", "scope": "s", "scopeDetails": "x"}], {}, "scopeDetails' must be an object"),
        (["p"], {}, "'propositions[0]' must be a proposition object"),
        ("p", {}, "'propositions' must be a list of propositions, not a string"),
        ([PROPOSITION], {"event_type": "display"}, "event_type must be one of"),
    ],
)
def test_proposition_notification_refuses_what_is_not_a_proposition(
    propositions: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        proposition_notification(propositions, **kwargs)


def test_notification_rules_fail_without_propositions() -> None:
    reason = failure(push(NOTIFY, {"event": "offers.rendered", "eventInfo": {"propositions": []}}))
    assert reason == (
        "t.rules:4:3: rule 'Offers shown': send event 'propositions' is empty (null or []): a "
        "'decisioning.propositionDisplay' event needs at least one proposition; guard the rule "
        "with a 'when' condition"
    )
    reason = failure(
        push(NOTIFY, {"event": "offers.rendered", "eventInfo": {"propositions": [{"id": "x"}]}})
    )
    assert reason.endswith(
        "send event 'propositions[0].scope' must be a non-empty string, not null: pass the "
        "propositions an Edge response returned"
    )


def test_propositions_on_another_event_type_need_include_rendered() -> None:
    errors = rendered_errors(
        EDGE + rule('    type: "commerce.productViews"\n    propositions: state.p')
    )
    assert errors == [
        "t.rules:6:5: error: send event 'propositions' needs a notification type "
        '("decisioning.propositionDisplay", "decisioning.propositionInteract", '
        '"decisioning.propositionTrigger", "decisioning.propositionDismiss", '
        '"decisioning.propositionSuppressDisplay") or '
        "'personalization.includeRenderedPropositions: true'\n"
        " 6 |     propositions: state.p\n"
        "   |     ^~~~~~~~~~~~"
    ]
    (error,) = rendered_errors(
        EDGE + rule('    type: "decisioning.propositionDisplay"\n    propositions: []')
    )
    assert "send event 'propositions' is empty" in error
    (error,) = rendered_errors(
        EDGE + rule('    type: "decisioning.propositionDisplay"\n    propositions: [{ id: "a" }]')
    )
    assert "'propositions[0].scope' must be a non-empty string" in error
    # a type from the data layer: checked when the push runs
    text = EDGE + rule("    type: state.kind\n    propositions: state.p")
    reason = failure(
        push(text, {"event": "x", "kind": "web.webinteraction.linkClicks", "p": [PROPOSITION]})
    )
    assert reason.endswith("or 'personalization.includeRenderedPropositions: true'")
    body = only_send(
        push(text, {"event": "x", "kind": "decisioning.propositionDismiss", "p": [PROPOSITION]})
    )
    assert body["event"]["xdm"]["_experience"]["decisioning"]["propositionEventType"] == {
        "dismiss": 1
    }


# ====================================================================== location hint
AUTHENTICATED = (
    'edge { datastream: "ds-1", org: "53A16ACB5CC1D3760A495C99@AdobeOrg", '
    'url: "https://server.adobedc.net", client_id: "id", client_secret: "secret" }\n'
)
CLUSTER = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_cluster"


@pytest.mark.parametrize(
    ("settings", "hint", "url"),
    [
        (AUTHENTICATED, "or2", "https://or2.server.adobedc.net/ee/v2/interact?"),
        (AUTHENTICATED, "VA6", "https://va6.server.adobedc.net/ee/v2/interact?"),
        (AUTHENTICATED, "bad_hint", "https://server.adobedc.net/ee/v2/interact?"),
        (
            AUTHENTICATED.replace('server.adobedc.net"', 'server.adobedc.net:443/"'),
            "or2",
            "https://or2.server.adobedc.net:443/ee/v2/interact?",
        ),
        (
            AUTHENTICATED.replace("server.adobedc.net", "edge.adobedc.net"),
            "or2",
            "https://edge.adobedc.net/ee/or2/v2/interact?",
        ),
    ],
)
def test_the_location_hint_goes_in_the_authenticated_host(
    settings: str, hint: str, url: str
) -> None:
    text = settings + rule(
        '    type: "t"\n'
        '    identityMap.FPID: [{ id: "5f8e2a3c-9b7d-4e1f-8a6c-2d4b6e8f0a1c", primary: true }]'
    )
    with Engine(load_text(text), dry_run=True) as running:
        session = running.session("s")
        session.take_cookies({CLUSTER: hint})
        result = session.push({"event": "x"})
    (send,) = result.sends
    assert send.url.startswith(url), send.url


# ====================================================================== identityMap
def test_identity_map_literals_are_checked_as_alloy_checks_them() -> None:
    errors = rendered_errors(
        EDGE
        + rule(
            '    type: "t"\n'
            "    identityMap: {\n"
            '      CRM_ID: [{ id: "c-1", authenticatedState: "Authenticated", primary: "yes" }]\n'
            '      Email: [{ id: "e", authenticatedstate: "loggedout", namespace: { cod: "x" } }]\n'
            '      Phone: { id: "p" }\n'
            "    }\n"
            '    xdm.identityMap.FPID: [{ id: 12, authenticatedState: "loggedout", xid: "x" }]'
        )
    )
    assert errors[0] == (
        "t.rules:7:49: error: send event 'identityMap.CRM_ID[0].authenticatedState' must be "
        '"ambiguous", "authenticated" or "loggedOut", not "Authenticated" (did you mean '
        "'authenticated'?)\n"
        ' 7 |       CRM_ID: [{ id: "c-1", authenticatedState: "Authenticated", primary: "yes" }]\n'
        "   |                                                 ^~~~~~~~~~~~~~~"
    )
    assert [e.splitlines()[0] for e in errors[1:]] == [
        "t.rules:7:75: error: send event 'identityMap.CRM_ID[0].primary' must be true or false, "
        'not "yes"',
        "t.rules:8:26: error: send event 'identityMap.Email[0]' has an unknown field "
        "'authenticatedstate' (did you mean 'authenticatedState'?); an identity takes "
        "authenticatedState, id, namespace, primary and xid",
        "t.rules:8:72: error: send event 'identityMap.Email[0].namespace' has an unknown field "
        "'cod' (did you mean 'code'?); it takes only code",
        "t.rules:9:14: error: send event 'identityMap.Phone' must be a list of identities, not an "
        "object",
        "t.rules:11:34: error: send event 'xdm.identityMap.FPID[0].id' must be a string, not a "
        "number",
        "t.rules:11:58: error: send event 'xdm.identityMap.FPID[0].authenticatedState' must be "
        '"ambiguous", "authenticated" or "loggedOut", not "loggedout" (did you mean '
        "'loggedOut'?)",
    ]


def test_identity_map_from_the_data_layer_fails_the_rule_naming_the_field() -> None:
    text = EDGE + rule(
        '    type: "t"\n'
        "    identityMap.CRM_ID: [{ id: state.user.id, authenticatedState: state.user.state, "
        "primary: state.user.primary }]\n"
        "    xdm.identityMap: state.ids"
    )
    ok = {"id": "c-1", "state": "authenticated", "primary": True}
    body = only_send(push(text, {"event": "x", "user": ok}))
    assert body["event"]["xdm"]["identityMap"] == {
        "CRM_ID": [{"id": "c-1", "authenticatedState": "authenticated", "primary": True}]
    }
    # a missing value is left out, as every null is
    body = only_send(push(text, {"event": "x", "user": {"id": "c-1"}}))
    assert body["event"]["xdm"]["identityMap"] == {"CRM_ID": [{"id": "c-1"}]}
    reason = failure(push(text, {"event": "x", "user": {**ok, "state": "LoggedOut"}}))
    assert reason == (
        "t.rules:4:3: rule 'R': send event 'identityMap.CRM_ID[0].authenticatedState' must be "
        '"ambiguous", "authenticated" or "loggedOut", not "LoggedOut" (did you mean '
        "'loggedOut'?)"
    )
    reason = failure(push(text, {"event": "x", "user": {**ok, "primary": "true"}}))
    assert reason.endswith(
        "send event 'identityMap.CRM_ID[0].primary' must be true or false, not \"true\""
    )
    reason = failure(
        push(text, {"event": "x", "user": ok, "ids": {"FPID": [{"id": "f", "primry": True}]}})
    )
    assert reason.endswith(
        "send event 'xdm.identityMap.FPID[0]' has an unknown field 'primry' (did you mean "
        "'primary'?); an identity takes authenticatedState, id, namespace, primary and xid"
    )
    reason = failure(push(text, {"event": "x", "user": ok, "ids": ["FPID"]}))
    assert reason.endswith(
        "send event 'xdm.identityMap' must be an object of namespaces, not a list"
    )


def test_identity_map_problems_accept_what_alloy_accepts() -> None:
    assert (
        identity_map_problems(
            {
                "ECID": [{"id": "1", "authenticatedState": "ambiguous", "primary": False}],
                "CRM": [{"id": "c", "namespace": {"code": "CRM"}, "xid": "x"}],
                "Empty": [],
            }
        )
        == []
    )


# ====================================================================== the emulator, over loopback
def test_notification_and_normalised_surfaces_reach_the_emulator(emulator: EmulatorServer) -> None:
    text = (
        EDGE
        + rule(
            '    type: "web.webpagedetails.pageViews"\n'
            "    xdm.web.webPageDetails.URL: state.page.url\n"
            '    personalization.surfaces: ["WEB://Shop.Example.com/Home/", "#hero"]\n'
            '    personalization.decisionScopes: ["hero-banner"]\n'
            '    identityMap.CRM_ID: [{ id: "c-1", authenticatedState: "authenticated" }]',
            name="Page",
            on="page.view",
        )
        + rule(
            '    type: "decisioning.propositionDisplay"\n'
            "    propositions: event.eventInfo.propositions",
            name="Shown",
            on="offers.rendered",
        )
    )
    with Engine(load_text(text), edge_url=emulator.url) as running:
        session = running.session("visitor-1")
        page = session.push({"event": "page.view", "page": {"url": PAGE}})
        (sent,) = page.sends
        assert sent.status == 200, sent.error
        rendered = sent.response["propositions"]  # what the app renders, then reports
        assert [p["scope"] for p in rendered] == ["hero-banner"]
        shown = session.push({"event": "offers.rendered", "eventInfo": {"propositions": rendered}})
        (notified,) = shown.sends
        assert notified.status == 200, notified.error
    first, second = emulator.requests()
    assert first.body["query"]["personalization"]["surfaces"] == [
        "web://shop.example.com/Home",
        "web://shop.example.com/p#hero",
    ]
    assert first.body["event"]["xdm"]["identityMap"]["CRM_ID"] == [
        {"id": "c-1", "authenticatedState": "authenticated"}
    ]
    xdm = second.body["event"]["xdm"]
    assert xdm["eventType"] == "decisioning.propositionDisplay"
    assert xdm["_experience"]["decisioning"] == {
        "propositions": [
            {"id": p["id"], "scope": p["scope"], "scopeDetails": p["scopeDetails"]}
            for p in rendered
        ],
        "propositionEventType": {"display": 1},
    }
    assert "personalization" not in second.body["query"]
    # the notification carries the visitor's ECID and goes to the cluster the first answer
    # named, in the path (on edge.adobedc.net the hint stays in the path)
    assert xdm["identityMap"]["ECID"][0]["id"] == sent.response["ecid"]
    assert second.path == "/ee/or2/v2/interact"
