"""The emulator as strict as the real services, two more gaps (issue 12, item 5), over real
loopback sockets:

* Sitecore ``ext`` as the official Cloud SDK sends it: ``_``-joined flattened names
  (``product_sku``) and arrays of scalars are accepted; other characters, nested objects and
  more than 50 attributes are still refused.
* Edge ``meta.configOverrides``: a value the datastream's override settings do not list, an
  unknown key or a value of the wrong type is ``400 EXEG-0113-400``; ``run --emulator`` and
  ``dev`` allow the values the rules write as literals, ``tagengine emulator --allow-override
  PATH=VALUE`` the ones given.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from rich.console import Console

import engine.emulator
from engine import Engine
from engine.cli import cli
from engine.devserver import DevServer
from engine.emulator import EmulatorConfig, EmulatorServer, emulator_config
from engine.emulator.overrides import parse_allowance, ruleset_overrides
from tests.conftest import load_text
from tests.test_emulator import (
    NO_TLS,
    PROBLEM,
    event_body,
    free_port,
    new_browser,
    send_event,
    sitecore_event,
    wait_listening,
)

DS = "ds-known"
V2 = f"/ee/v2/interact?datastreamId={DS}"
RS = "com_adobe_analytics.reportSuites"
DATASET = "com_adobe_experience_platform.datasets.event.datasetId"
TOKEN = "com_adobe_target.propertyToken"
CONTAINER = "com_adobe_identity.idSyncContainerId"
ALLOWED = {
    RS: frozenset({"rs-eu", "rs-us"}),
    DATASET: frozenset({"64b6f949a8a6891ca8a28911"}),
    TOKEN: frozenset({"63a46bbc-26cb-7cc3-def0-9ae1b51b6c62"}),
    CONTAINER: frozenset({"34373"}),
}


def with_overrides(overrides: Any, **changes: Any) -> dict[str, Any]:
    body = event_body(**changes)
    body.setdefault("meta", {})["configOverrides"] = overrides
    return body


def problem_0113(response: httpx.Response) -> str:
    """The detail of an ``EXEG-0113-400`` problem (RFC 7807, as Edge answers it)."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == "https://ns.adobe.com/aep/errors/EXEG-0113-400"
    assert body["status"] == 400 and body["title"] == "Invalid request"
    assert body["report"]["requestId"]
    detail: str = body["detail"]
    return detail


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=5, verify=NO_TLS) as c:
        yield c


@pytest.fixture
def strict(emulator: EmulatorServer) -> EmulatorServer:
    """The shared emulator with a datastream whose override settings list ``ALLOWED``."""
    emulator.configure(datastreams=frozenset({DS}), overrides=ALLOWED)
    return emulator


# ====================================================================== Sitecore ext
def test_sitecore_accepts_the_cloud_sdks_flattened_names_and_arrays(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    browser = new_browser(client)
    ext = {
        "page_type": "home",
        "product_sku": "S-1",
        "product_tags": ["a", "b"],
        "product_sizes": [38, 40.5],
        "flags": [True, False],
        "empty": [],
        "camelCase2": 1,
    }
    response = send_event(client, sitecore_event(browser, ext=ext))
    assert response.status_code == 201, response.text
    # The proxy (the Cloud SDK's server route) takes the same attributes.
    created = client.get(
        "/v1/events/v1.2/browser/create.json", params={"sitecoreContextId": "ctx"}
    ).json()
    proxy = client.post(
        "/v1/events/v1.2/events",
        params={"sitecoreContextId": "ctx", "siteId": "s"},
        json={"type": "VIEW", "browser_id": created["ref"], "pos": "", "ext": ext},
    )
    assert proxy.status_code == 201, proxy.text
    (recorded,) = emulator.requests("/v1.2/event/create.json")
    assert recorded.body["ext"] == ext


@pytest.mark.parametrize(
    ("ext", "fragment"),
    [
        ({"product-sku": 1}, "ext attribute name 'product-sku' must be letters, digits and '_'"),
        ({"page type": "x"}, "ext attribute name 'page type' must be letters, digits and '_'"),
        ({"": "x"}, "ext attribute name '' must be letters, digits and '_'"),
        ({"product": {"sku": 1}}, "ext attribute 'product' must be a string, boolean, number"),
        ({"items": [{"sku": 1}]}, "ext attribute 'items' must be an array of strings"),
        ({"items": [[1]]}, "ext attribute 'items' must be an array of strings"),
        ({"items": [None]}, "ext attribute 'items' must be an array of strings"),
        ({"nothing": None}, "ext attribute 'nothing' must be a string, boolean, number"),
        ({f"a_{i}": i for i in range(51)}, "ext has 51 attributes; at most 50"),
    ],
)
def test_sitecore_still_refuses_other_names_nested_objects_and_51_attributes(
    client: httpx.Client, ext: dict[str, Any], fragment: str
) -> None:
    response = send_event(client, sitecore_event(new_browser(client), ext=ext))
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_a_ruleset_with_sdk_ext_names_delivers_to_the_emulator() -> None:
    ruleset = load_text(
        {
            "s.rules": 'sitecore { client_key: "k", pos: "shop", language: "EN", '
            'currency: "EUR", ext_names: "sdk" }\n',
            "r.rules": 'rule "View" {\n  on "page.view"\n  send sitecore { type: "VIEW", '
            'page: "Home", ext: { page_type: "home", product: { sku: state.sku, '
            'tags: ["a", "b"], sizes: state.sizes } } }\n}\n',
        }
    )
    config = emulator_config(ruleset)
    assert config.client_keys == frozenset({"k"})  # as strict as run --emulator makes it
    with (
        EmulatorServer(config=config) as server,
        Engine(ruleset, sitecore_url=server.url) as engine,
    ):
        result = engine.push({"event": "page.view", "sku": "S-1", "sizes": [38, 40]})
        events = server.requests("/v1.2/event/create.json")
    (send,) = result.sends
    assert send.status == 201, (send.response, send.error)
    (event,) = events
    assert event.status == 201
    assert event.body["ext"] == {
        "page_type": "home",
        "product_sku": "S-1",
        "product_tags": ["a", "b"],
        "product_sizes": [38, 40],
    }


# ====================================================================== Edge configOverrides
def test_allowed_override_values_are_accepted(client: httpx.Client, strict: EmulatorServer) -> None:
    overrides = {
        "com_adobe_experience_platform": {
            "datasets": {"event": {"datasetId": "64b6f949a8a6891ca8a28911"}},
            "com_adobe_edge_segmentation": {"enabled": False},
        },
        "com_adobe_analytics": {"reportSuites": ["rs-eu", "rs-us"]},
        "com_adobe_target": {"propertyToken": "63a46bbc-26cb-7cc3-def0-9ae1b51b6c62"},
        "com_adobe_identity": {"idSyncContainerId": 34373},
        "com_adobe_audience_manager": {"enabled": False},
    }
    response = client.post(V2, json=with_overrides(overrides))
    assert response.status_code == 200, response.text
    # enabled switches need no allow-list: turning a configured service off is always allowed.
    switches = {"com_adobe_analytics": {"enabled": False}, "com_adobe_target": {"enabled": True}}
    assert client.post(V2, json=with_overrides(switches)).status_code == 200
    assert client.post(V2, json=with_overrides({})).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        (
            {"com_adobe_analytics": {"reportSuites": ["rs-typo"]}},
            "meta.configOverrides.com_adobe_analytics.reportSuites: 'rs-typo' is not configured "
            "as an override in the datastream's settings (the emulator allows: rs-eu, rs-us).",
        ),
        (  # one listed suite does not make another one pass (Adobe's SDK tests expect 400)
            {"com_adobe_analytics": {"reportSuites": ["rs-eu", "rs-other"]}},
            "reportSuites: 'rs-other' is not configured",
        ),
        (
            {"com_adobe_experience_platform": {"datasets": {"event": {"datasetId": "ds-x"}}}},
            "com_adobe_experience_platform.datasets.event.datasetId: 'ds-x' is not configured",
        ),
        (
            {"com_adobe_target": {"propertyToken": "tok-1"}},
            "com_adobe_target.propertyToken: 'tok-1' is not configured",
        ),
        (
            {"com_adobe_identity": {"idSyncContainerId": 1234}},
            "com_adobe_identity.idSyncContainerId: '1234' is not configured",
        ),
        (  # the datastream docs: a container id sent as a string is an error
            {"com_adobe_identity": {"idSyncContainerId": "34373"}},
            "com_adobe_identity.idSyncContainerId must be a number, not a string '34373'",
        ),
        ({"test": {"key": "value"}}, "meta.configOverrides.test is not a datastream override"),
        (
            {"com_adobe_analytics": {"reportSuite": "rs-eu"}},
            "com_adobe_analytics.reportSuite is not a datastream override Edge knows",
        ),
        ({"com_adobe_analytics": {"enabled": "no"}}, "enabled must be a boolean"),
        ({"com_adobe_analytics": {"reportSuites": "rs-eu"}}, "must be an array"),
        ({"com_adobe_target": "tok"}, "com_adobe_target must be an object, not a string"),
        ("rs-eu", "meta.configOverrides must be an object, not a string"),
    ],
)
def test_a_value_the_datastream_does_not_allow_is_exeg_0113_400(
    client: httpx.Client, strict: EmulatorServer, overrides: Any, detail: str
) -> None:
    assert detail in problem_0113(client.post(V2, json=with_overrides(overrides)))


def test_every_edge_endpoint_checks_the_overrides(
    client: httpx.Client, strict: EmulatorServer
) -> None:
    bad = {"configOverrides": {"com_adobe_analytics": {"reportSuites": ["rs-x"]}}}
    v1 = {"events": [{"xdm": {}}], "meta": bad}
    problem_0113(client.post(f"/ee/v1/interact?configId={DS}", json=v1))
    problem_0113(client.post(f"/ee/v2/collect?datastreamId={DS}", json=v1))
    problem_0113(client.post(f"/ee/or2/v1/collect?configId={DS}", json=v1))
    consent = {
        "consent": [{"standard": "Adobe", "version": "1.0", "value": {"general": "in"}}],
        "meta": bad,
    }
    problem_0113(client.post(f"/ee/v1/privacy/set-consent?configId={DS}", json=consent))
    # Refused requests are recorded with their status, collected nothing.
    assert [r.status for r in strict.requests("/ee/")] == [400, 400, 400, 400]
    assert strict.visitors() == {}


def test_without_an_allow_list_any_value_passes_but_unknown_keys_do_not(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    assert emulator.state.config.overrides is None  # the default: the standalone emulator's
    any_value = {
        "com_adobe_analytics": {"reportSuites": ["whatever"]},
        "com_adobe_identity": {"idSyncContainerId": 1},
    }
    assert client.post(V2, json=with_overrides(any_value)).status_code == 200
    problem_0113(client.post(V2, json=with_overrides({"test": {"key": "value"}})))
    problem_0113(
        client.post(V2, json=with_overrides({"com_adobe_identity": {"idSyncContainerId": "1"}}))
    )
    # An empty allow-list is strict: no override value at all is configured.
    emulator.configure(overrides={})
    detail = problem_0113(client.post(V2, json=with_overrides(any_value)))
    assert detail.endswith("(the emulator allows: none).")


def test_the_allow_list_names_only_known_paths() -> None:
    with pytest.raises(ValueError, match=r"'com_adobe_analytics\.reportSuite' is not a datastream"):
        EmulatorConfig(overrides={"com_adobe_analytics.reportSuite": frozenset({"rs"})})
    assert parse_allowance(" com_adobe_analytics.reportSuites = rs1 ") == (RS, "rs1")
    assert parse_allowance(f"{CONTAINER}=34373") == (CONTAINER, "34373")
    for text, message in [
        ("rs1", "expected PATH=VALUE"),
        (f"{RS}=", "expected PATH=VALUE"),
        ("com_adobe_target=x", "is not a datastream override with values"),
        (f"{CONTAINER}=abc", "takes a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_allowance(text)


# ====================================================================== from a ruleset
OVERRIDE_RULES = """\
rule "EU order" {
  on "order.eu"
  send event { type: "commerce.purchases", datasetId: "64b6f949a8a6891ca8a28911",
               edgeConfigOverrides: { com_adobe_analytics: { reportSuites: ["rs-eu"] },
                                      com_adobe_identity.idSyncContainerId: "34373" } }
}
rule "Any order" {
  on "order.any"
  send event { type: "commerce.purchases",
               edgeConfigOverrides: { com_adobe_analytics.reportSuites: ["rs-eu", state.rs],
                                      com_adobe_target.propertyToken: "tok-1" } }
}
"""
EDGE_SETTINGS = f'edge {{ datastream: "{DS}" }}\n'


def test_emulator_config_allows_the_literals_of_the_rulesets_sends() -> None:
    ruleset = load_text({"e.rules": EDGE_SETTINGS, "r.rules": OVERRIDE_RULES})
    expected = {
        DATASET: frozenset({"64b6f949a8a6891ca8a28911"}),
        RS: frozenset({"rs-eu"}),  # state.rs comes from the data layer: not allowed
        CONTAINER: frozenset({"34373"}),
        TOKEN: frozenset({"tok-1"}),
    }
    assert ruleset_overrides(ruleset) == expected
    assert emulator_config(ruleset).overrides == expected
    # Values the data layer gives are allowed explicitly, on top of the literals.
    more = emulator_config(ruleset, overrides={RS: frozenset({"rs-us"})}).overrides
    assert more is not None and more[RS] == frozenset({"rs-eu", "rs-us"})
    assert emulator_config(ruleset, overrides=None).overrides is None  # any value
    assert emulator_config(None).overrides is None
    plain = load_text({"e.rules": EDGE_SETTINGS, "r.rules": 'rule "A" {\n  on "a"\n  send '
                       'event { type: "t" }\n}\n'})  # fmt: skip
    assert emulator_config(plain).overrides == {}  # strict: the rules allow no override


def test_run_emulator_strictness_through_the_engine() -> None:
    """What ``run --emulator`` does: the literals pass, a data-layer value the datastream
    does not list fails its send with EXEG-0113-400, and passes once allowed."""
    ruleset = load_text({"e.rules": EDGE_SETTINGS, "r.rules": OVERRIDE_RULES})
    with (
        EmulatorServer(config=emulator_config(ruleset)) as server,
        Engine(ruleset, edge_url=server.url) as engine,
    ):
        literal = engine.push({"event": "order.eu"})
        typo = engine.push({"event": "order.any", "rs": "rs-uss"})
        server.configure(overrides=emulator_config(ruleset, overrides={RS: {"rs-uss"}}).overrides)
        allowed = engine.push({"event": "order.any", "rs": "rs-uss"})
        statuses = [r.status for r in server.requests("/ee/")]
    assert literal.sends[0].status == 200, literal.sends[0].error
    (refused,) = typo.sends
    assert refused.status == 400 and refused.attempts == 1  # a 400 is not retried
    assert "EXEG-0113-400" in (refused.error or "")
    assert allowed.sends[0].status == 200, allowed.sends[0].error
    assert statuses == [200, 400, 200]


def test_dev_allows_the_rulesets_literals(tmp_path: Path) -> None:
    (tmp_path / "e.rules").write_text(EDGE_SETTINGS)
    (tmp_path / "r.rules").write_text(OVERRIDE_RULES)
    terminal = Console(file=io.StringIO(), width=200)
    with DevServer(tmp_path, console=terminal, environ={}) as server:
        assert server.emulator is not None
        overrides = server.emulator.state.config.overrides
    assert overrides is not None and overrides[RS] == frozenset({"rs-eu"})


# ====================================================================== the CLI
def test_the_emulator_command_takes_allowed_overrides() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulator", "--port", str(port),
         "--allow-override", f"{RS}=rs-eu", "--allow-override", f"{RS}=rs-us",
         "--allow-override", f"{CONTAINER}=34373"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(process, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", verify=NO_TLS) as c:
            url = "/ee/v2/interact?datastreamId=any"
            good = c.post(url, json=with_overrides({"com_adobe_analytics": {"reportSuites":
                                                    ["rs-eu", "rs-us"]}}))  # fmt: skip
            container = c.post(url, json=with_overrides({"com_adobe_identity":
                                                         {"idSyncContainerId": 34373}}))  # fmt: skip
            bad = c.post(url, json=with_overrides({"com_adobe_analytics": {"reportSuites":
                                                   ["rs-x"]}}))  # fmt: skip
            token = c.post(url, json=with_overrides({"com_adobe_target": {"propertyToken":
                                                     "t"}}))  # fmt: skip
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert (good.status_code, container.status_code) == (200, 200)
    assert "'rs-x' is not configured" in problem_0113(bad)
    assert "(the emulator allows: none)" in problem_0113(token)
    assert "configOverrides" not in stderr  # strict: no permissive note for overrides


def test_the_emulator_command_refuses_an_unknown_path_and_notes_permissive_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["emulator", "--allow-override", "com_adobe_target=x"])
    assert bad.exit_code == 2
    assert "'com_adobe_target' is not a datastream override with values" in bad.output
    assert "--allow-override" in bad.output
    served: list[EmulatorConfig] = []

    def serve(**kwargs: Any) -> None:
        served.append(kwargs["config"])

    monkeypatch.setattr(engine.emulator, "serve", serve)
    loose = runner.invoke(cli, ["emulator", "--datastream", "d", "--client-key", "k"])
    assert loose.exit_code == 0, loose.output
    assert served[-1].overrides is None
    assert "every meta.configOverrides value" in loose.output
    assert "--allow-override PATH=VALUE" in loose.output and "EXEG-0113-400" in loose.output
    strict = runner.invoke(cli, ["emulator", "--allow-override", f"{TOKEN}=t1"])
    assert strict.exit_code == 0, strict.output
    assert served[-1].overrides == {TOKEN: frozenset({"t1"})}
    assert "every meta.configOverrides value" not in strict.output
