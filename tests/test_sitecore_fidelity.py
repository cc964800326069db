"""Sitecore sends as the real client sends them (issue 12, item 4): no silent EUR/EN, language
tags as ISO 639-1 codes, ``page_variant_id`` in ``ext.pageVariantId``, the ``ext_names``
setting, the 8 KB direct-mode URL limit, and the documented formats of IDENTITY and order
fields — at load for literals, per push for data-layer values.

Rulesets are real ``.rules`` text; bodies come from ``tagengine run --dry-run --json`` (a
subprocess), the Python API, and the emulator over loopback sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, PayloadTooLarge, RuleError
from engine.destinations.sitecore import SITECORE_URL_LIMIT, with_browser_id
from engine.emulator import EmulatorConfig, EmulatorServer
from tests.conftest import load_text, rendered_errors

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = 'sitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }\n'


def engine_for(rules: str, settings: str = SETTINGS, **kwargs: Any) -> Engine:
    return Engine(load_text({"s.rules": settings, "r.rules": rules}), **kwargs)


def one_event(engine: Engine, push: dict[str, Any]) -> dict[str, Any]:
    """The Sitecore event object of the single send a push makes."""
    result = engine.push(push)
    assert [s.destination for s in result.sends] == ["sitecore"], result.rules
    body: dict[str, Any] = result.sends[0].request.body
    return body


def failure(engine: Engine, push: dict[str, Any]) -> str:
    """The reason of the single rule a push fails."""
    result = engine.push(push)
    (outcome,) = result.rules
    assert outcome.status == "failed", outcome
    assert not result.sends
    return outcome.reason or ""


# ====================================================================== currency and language
def test_a_send_without_currency_or_language_is_a_load_error_naming_the_settings() -> None:
    errors = rendered_errors(
        {
            "s.rules": 'sitecore { client_key: "k", pos: "shop" }\n',
            "r.rules": 'rule "View" {\n  on "page.view"\n  send sitecore { type: "VIEW" }\n}\n',
        }
    )
    assert errors == [
        "r.rules:3:8: error: send sitecore has no 'currency' or 'language': add "
        'currency: "EUR" and language: "EN" to the sitecore { } settings (or to this send); '
        "Sitecore needs them and none is assumed\n"
        ' 3 |   send sitecore { type: "VIEW" }\n'
        "   |        ^~~~~~~~"
    ]


def test_each_send_names_only_what_it_lacks() -> None:
    errors = rendered_errors(
        {
            "s.rules": 'sitecore { client_key: "k", pos: "shop", language: "EN" }\n',
            "r.rules": (
                'rule "A" {\n  on "a"\n  send sitecore { type: "VIEW" }\n}\n'
                'rule "B" {\n  on "b"\n  send sitecore { type: "VIEW", currency: state.cur }\n}\n'
            ),
        }
    )
    assert len(errors) == 1
    assert errors[0].startswith(
        "r.rules:3:8: error: send sitecore has no 'currency': add currency: \"EUR\" to the "
        "sitecore { } settings"
    )


def test_a_send_that_names_both_loads_without_settings_values() -> None:
    engine = engine_for(
        'rule "A" {\n  on "a"\n  send sitecore { type: "VIEW", language: "de", currency: "chf" }\n}\n',
        settings='sitecore { client_key: "k", pos: "shop" }\n',
        dry_run=True,
    )
    with engine:
        event = one_event(engine, {"event": "a"})
    assert (event["language"], event["currency"]) == ("DE", "CHF")


def test_a_data_layer_value_that_is_missing_fails_the_rule_naming_the_field() -> None:
    engine = engine_for(
        'rule "A" {\n  on "a"\n  send sitecore { type: "VIEW", language: state.lang, currency: "EUR" }\n}\n',
        settings='sitecore { client_key: "k", pos: "shop" }\n',
        dry_run=True,
    )
    with engine:
        reason = failure(engine, {"event": "a"})
    assert reason.endswith(
        "rule 'A': send sitecore has no 'language': set it in the rule or add "
        'language: "EN" to the sitecore { } settings'
    )
    assert reason.startswith("r.rules:3:")


@pytest.mark.parametrize(
    ("tag", "code"),
    [("en-GB", "EN"), ("EN-gb", "EN"), ("pt_BR", "PT"), ("zh-Hant-TW", "ZH"), ("de", "DE")],
)
def test_a_language_tag_is_sent_as_its_iso_639_1_code(tag: str, code: str) -> None:
    rules = 'rule "A" {\n  on "a"\n  send sitecore { type: "VIEW", language: state.lang }\n}\n'
    with engine_for(rules, dry_run=True) as engine:
        assert one_event(engine, {"event": "a", "lang": tag})["language"] == code
    literal = f'rule "A" {{\n  on "a"\n  send sitecore {{ type: "VIEW", language: "{tag}" }}\n}}\n'
    with engine_for(literal, dry_run=True) as engine:
        assert one_event(engine, {"event": "a"})["language"] == code


def test_a_settings_language_tag_is_kept_as_its_code() -> None:
    ruleset = load_text(
        'sitecore { client_key: "k", pos: "p", language: "fr-CA", currency: "cad" }\n'
    )
    assert ruleset.sitecore is not None
    assert (ruleset.sitecore.language, ruleset.sitecore.currency) == ("FR", "CAD")


def test_bad_language_and_currency_literals_are_load_errors_with_their_span() -> None:
    errors = rendered_errors(
        {
            "s.rules": 'sitecore { client_key: "k", pos: "p", language: "english", currency: "€" }\n',
            "r.rules": (
                'rule "A" {\n  on "a"\n'
                '  send sitecore { type: "VIEW", language: "e", currency: "euro" }\n}\n'
            ),
        }
    )
    assert errors == [
        "r.rules:3:43: error: sitecore 'language' must be a language tag such as \"en\" or "
        '"en-GB" (ISO 639-1 code first), not "e"\n'
        ' 3 |   send sitecore { type: "VIEW", language: "e", currency: "euro" }\n'
        "   |                                           ^~~",
        "r.rules:3:58: error: sitecore 'currency' must be an ISO 4217 currency code such as "
        '"EUR", not "euro"\n'
        ' 3 |   send sitecore { type: "VIEW", language: "e", currency: "euro" }\n'
        "   |                                                          ^~~~~~",
        "s.rules:1:49: error: sitecore setting 'language': must be a language tag such as "
        '"en" or "en-GB" (ISO 639-1 code first), not "english"\n'
        ' 1 | sitecore { client_key: "k", pos: "p", language: "english", currency: "€" }\n'
        "   |                                                 ^~~~~~~~~",
        "s.rules:1:70: error: sitecore setting 'currency': must be an ISO 4217 currency code "
        'such as "EUR", not "€"\n'
        ' 1 | sitecore { client_key: "k", pos: "p", language: "english", currency: "€" }\n'
        "   |                                                                      ^~~",
    ]


def test_a_bad_data_layer_language_fails_the_rule_naming_the_field() -> None:
    rules = 'rule "A" {\n  on "a"\n  send sitecore { type: "VIEW", language: state.lang }\n}\n'
    with engine_for(rules, dry_run=True) as engine:
        reason = failure(engine, {"event": "a", "lang": "English"})
    assert reason.endswith(
        "rule 'A': sitecore 'language' must be a language tag such as \"en\" or \"en-GB\" "
        '(ISO 639-1 code first), not "English"'
    )


def test_an_env_setting_is_validated_too() -> None:
    with pytest.raises(RuleError) as caught:
        load_text(
            'sitecore { client_key: "k", pos: "p", language: env("LANG_CODE"), currency: "EUR" }\n',
            environ={"LANG_CODE": "123"},
        )
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message.startswith("sitecore setting 'language': must be a language tag")
    ruleset = load_text(
        'sitecore { client_key: "k", pos: "p", language: env("LANG_CODE"), currency: "EUR" }\n',
        environ={"LANG_CODE": "nl-BE"},
    )
    assert ruleset.sitecore is not None and ruleset.sitecore.language == "NL"


# ====================================================================== page_variant_id
def test_page_variant_id_goes_in_ext_as_the_cloud_sdk_sends_it() -> None:
    rules = (
        'rule "View" {\n  on "page.view"\n'
        '  send sitecore { type: "VIEW", page: "home", page_variant_id: state.variant, '
        'ext: { page_type: "home" } }\n}\n'
    )
    with engine_for(rules, dry_run=True) as engine:
        event = one_event(engine, {"event": "page.view", "variant": "page_variant_3"})
        assert "page_variant_id" not in event
        assert event["ext"] == {"pageVariantId": "page_variant_3", "pageType": "home"}
        assert list(event["ext"]) == ["pageVariantId", "pageType"]
        # without a variant the ext is the rule's alone
        gone = {"event": "page.view", "variant": None}  # null deletes it from the state
        assert one_event(engine, gone)["ext"] == {"pageType": "home"}


def test_page_variant_id_alone_makes_the_ext_and_wins_over_a_computed_one() -> None:
    rules = (
        'rule "View" {\n  on "page.view"\n'
        '  send sitecore { type: "VIEW", page_variant_id: 7, ext: state.ext }\n}\n'
    )
    with engine_for(rules, dry_run=True) as engine:
        assert one_event(engine, {"event": "page.view"})["ext"] == {"pageVariantId": "7"}
        event = one_event(engine, {"event": "page.view", "ext": {"pageVariantId": "x", "a": 1}})
        assert event["ext"] == {"pageVariantId": "7", "a": 1}


def test_page_variant_id_written_twice_is_a_load_error() -> None:
    errors = rendered_errors(
        {
            "s.rules": SETTINGS,
            "r.rules": (
                'rule "A" {\n  on "a"\n  send sitecore { type: "VIEW", page_variant_id: "a", '
                'ext.pageVariantId: "b" }\n}\n'
            ),
        }
    )
    assert len(errors) == 1
    assert errors[0].startswith(
        "r.rules:3:33: error: give the page variant once: 'page_variant_id' and "
        "'ext.pageVariantId' are both set"
    )


def test_page_variant_id_counts_against_the_fifty_attributes() -> None:
    ext = ", ".join(f"a{i}: {i}" for i in range(50))
    errors = rendered_errors(
        {
            "s.rules": SETTINGS,
            "r.rules": (
                'rule "A" {\n  on "a"\n'
                f'  send sitecore {{ type: "VIEW", page_variant_id: "v", ext: {{ {ext} }} }}\n}}\n'
            ),
        }
    )
    assert len(errors) == 1
    assert (
        "sitecore ext has 51 attributes once flattened (with pageVariantId); the limit is 50"
        in (errors[0])
    )


# ====================================================================== ext names
EXT_RULE = (
    'rule "View" {\n  on "page.view"\n'
    '  send sitecore { type: "VIEW", ext: { page_type: "pdp", product: { sku: state.sku, '
    "tags: state.tags, in_stock: true } } }\n}\n"
)


def test_ext_names_camel_is_the_default_and_follows_the_docs() -> None:
    with engine_for(EXT_RULE, dry_run=True) as engine:
        event = one_event(engine, {"event": "page.view", "sku": "TR-1", "tags": ["a", "b"]})
    assert event["ext"] == {
        "pageType": "pdp",
        "productSku": "TR-1",
        "productTags": '["a","b"]',
        "productInStock": True,
    }


def test_ext_names_sdk_joins_keys_with_underscores_and_keeps_arrays() -> None:
    settings = SETTINGS.replace("}", ', ext_names: "sdk" }')
    with engine_for(EXT_RULE, settings=settings, dry_run=True) as engine:
        event = one_event(engine, {"event": "page.view", "sku": "TR-1", "tags": ["a", None, 2]})
    # Cloud SDK flatten-object.ts: keys as written, joined with "_", arrays kept
    assert event["ext"] == {
        "page_type": "pdp",
        "product_sku": "TR-1",
        "product_tags": ["a", 2],
        "product_in_stock": True,
    }


def test_ext_names_decide_what_collides() -> None:
    rules = (
        'rule "A" {\n  on "a"\n'
        '  send sitecore { type: "VIEW", ext: { page_type: 1, pageType: 2 } }\n}\n'
    )
    errors = rendered_errors({"s.rules": SETTINGS, "r.rules": rules})
    assert [e.splitlines()[0] for e in errors] == [
        "r.rules:3:33: error: sitecore ext attribute 'pageType' is given twice once flattened"
    ]
    sdk = SETTINGS.replace("}", ', ext_names: "sdk" }')
    load_text({"s.rules": sdk, "r.rules": rules})  # two names as the SDK sends them
    clash = rules.replace("pageType: 2", "page: { type: 2 }")
    errors = rendered_errors({"s.rules": sdk, "r.rules": clash})
    assert [e.splitlines()[0] for e in errors] == [
        "r.rules:3:33: error: sitecore ext attribute 'page_type' is given twice once flattened"
    ]


def test_an_unknown_ext_names_value_is_a_load_error() -> None:
    errors = rendered_errors(SETTINGS.replace("}", ', ext_names: "snake" }'))
    assert errors[0].startswith("t.rules:1:")
    assert "sitecore setting 'ext_names'" in errors[0] and "'camel' or 'sdk'" in errors[0]


# ====================================================================== 8 KB URL
BIG_RULE = (
    'rule "Note" {\n  on "note"\n  send sitecore { type: "NOTE", ext: { note: state.note } }\n}\n'
)


def test_a_direct_url_above_8_kb_fails_the_rule_before_the_network() -> None:
    with engine_for(BIG_RULE, dry_run=True) as engine:
        fits = one_event(engine, {"event": "note", "note": "x" * 7000})
        assert len(fits["ext"]["note"]) == 7000
        reason = failure(engine, {"event": "note", "note": "y" * 9000})
    assert "rule 'Note': the Sitecore direct-mode URL is " in reason
    assert "bytes, above the 8,192-byte limit; largest fields: ext.note (9,002 bytes)" in reason
    assert reason.endswith('(send less, or use mode: "proxy", which POSTs the event)')


def test_the_limit_is_exact_and_proxy_mode_has_none() -> None:
    with engine_for(BIG_RULE, dry_run=True) as engine:
        sent = engine.push({"event": "note", "note": "z" * 100}).sends[0].request
        room = SITECORE_URL_LIMIT - len(sent.url.encode())
        at_limit = engine.push({"event": "note", "note": "z" * (100 + room)}).sends[0].request
        assert len(at_limit.url.encode()) == SITECORE_URL_LIMIT
        over = engine.push({"event": "note", "note": "z" * (101 + room)})
        assert not over.sends and over.rules[0].status == "failed"
        with pytest.raises(PayloadTooLarge, match="8,193 bytes"):
            with_browser_id(at_limit, sent.body["browser_id"] + "x")
    proxy = SETTINGS.replace("}", ', mode: "proxy", context_id: "ctx" }')
    with engine_for(BIG_RULE, settings=proxy, dry_run=True) as engine:
        assert one_event(engine, {"event": "note", "note": "y" * 20000})["ext"]["note"]


# ====================================================================== formats
def test_identity_and_order_literals_are_checked_at_load() -> None:
    rules = """\
rule "Login" {
  on "login"
  send sitecore { type: "IDENTITY", identifiers: [{ provider: "email", id: "a@b.c" }], email: "jane", dob: "1984-02-30" }
}
rule "Order" {
  on "order"
  send sitecore { type: "ORDER_CHECKOUT", order: { referenceId: "A1", status: "Purchased", currencyCode: "eur", price: 5, paymentType: "card" } }
  send sitecore { type: "CHECKOUT", reference_id: "A1", status: "PAID" }
}
"""
    errors = [e.splitlines()[0] for e in rendered_errors({"s.rules": SETTINGS, "r.rules": rules})]
    assert errors == [
        "r.rules:3:95: error: sitecore 'email' must be an e-mail address such as "
        '"jane@example.com", not "jane"',
        "r.rules:3:108: error: sitecore 'dob' must be an ISO 8601 date such as \"1984-04-15\" "
        'or "1984-04-15T00:00", not "1984-02-30"',
        "r.rules:7:79: error: sitecore 'order.status' must be one of PURCHASED, PAYMENT_PENDING, "
        'CONFIRMED, CANCELLED, REFUNDED (upper case), not "Purchased" (did you mean '
        "'PURCHASED'?)",
        "r.rules:7:106: error: sitecore 'order.currencyCode' must be an upper-case ISO 4217 "
        'currency code such as "EUR", not "eur" (did you mean \'EUR\'?)',
        "r.rules:7:136: error: sitecore 'order.cardType' is required when 'order.paymentType' "
        'is "card" (e.g. cardType: "Visa")',
        "r.rules:8:65: error: sitecore 'status' must be one of PURCHASED, PAYMENT_PENDING, "
        'CONFIRMED, CANCELLED, REFUNDED (upper case), not "PAID"',
    ]


def test_good_identity_and_order_literals_load_and_go_out_unchanged() -> None:
    rules = """\
rule "Order" {
  on "order"
  send sitecore {
    type: "ORDER_CHECKOUT"
    email: "jane.doe@example.com"
    dob: "1984-04-15T00:00"
    order: { referenceId: "A1", status: "PURCHASED", currencyCode: "EUR", price: 5, paymentType: "Card", cardType: "Visa" }
  }
}
"""
    with engine_for(rules, dry_run=True) as engine:
        event = one_event(engine, {"event": "order"})
    assert event["order"]["status"] == "PURCHASED" and event["order"]["cardType"] == "Visa"
    assert (event["email"], event["dob"]) == ("jane.doe@example.com", "1984-04-15T00:00")


DATA_LAYER_ORDER = """\
rule "Order" {
  on "order"
  send sitecore {
    type: "ORDER_CHECKOUT"
    order: { referenceId: "A1", status: state.status, currencyCode: state.cur, price: 5, paymentType: state.pay, cardType: state.card }
  }
}
rule "Login" {
  on "login"
  send sitecore { type: "IDENTITY", identifiers: [{ provider: "crm", id: "1" }], email: state.email, dob: state.dob }
}
"""


@pytest.mark.parametrize(
    ("push", "text"),
    [
        (
            {"event": "order", "status": "purchased", "cur": "EUR", "pay": "Voucher"},
            "'order.status' must be one of PURCHASED, PAYMENT_PENDING, CONFIRMED, CANCELLED, "
            "REFUNDED (upper case), not \"purchased\" (did you mean 'PURCHASED'?)",
        ),
        (
            {"event": "order", "status": "PURCHASED", "cur": "usd", "pay": "Voucher"},
            "'order.currencyCode' must be an upper-case ISO 4217 currency code such as \"EUR\", "
            "not \"usd\" (did you mean 'USD'?)",
        ),
        (
            {"event": "order", "status": "PURCHASED", "cur": "EUR", "pay": "Card"},
            "'order.cardType' is required when 'order.paymentType' is \"Card\"",
        ),
        (
            {"event": "login", "email": "jane@", "dob": "1984-04-15"},
            '\'email\' must be an e-mail address such as "jane@example.com", not "jane@"',
        ),
        (
            {"event": "login", "email": "a@b.co", "dob": "15.04.1984"},
            '\'dob\' must be an ISO 8601 date such as "1984-04-15" or "1984-04-15T00:00", '
            'not "15.04.1984"',
        ),
    ],
)
def test_data_layer_values_fail_the_rule_naming_the_field(push: dict[str, Any], text: str) -> None:
    with engine_for(DATA_LAYER_ORDER, dry_run=True) as engine:
        reason = failure(engine, push)
    rule = "Order" if push["event"] == "order" else "Login"
    assert f"rule '{rule}': sitecore {text}" in reason, reason


def test_good_data_layer_values_pass() -> None:
    with engine_for(DATA_LAYER_ORDER, dry_run=True) as engine:
        event = one_event(
            engine,
            {
                "event": "order",
                "status": "PAYMENT_PENDING",
                "cur": "GBP",
                "pay": "Card",
                "card": "Visa",
            },
        )
        assert event["order"]["currencyCode"] == "GBP"
        event = one_event(engine, {"event": "login", "email": "a@b.co", "dob": "1984-04-15"})
        assert event["dob"] == "1984-04-15"


# ====================================================================== the CLI, as a user runs it
CLI_RULES = """\
element lang = state.page.language
rule "View" {
  on "page.view"
  send sitecore { type: "VIEW", page: state.page.name, language: lang, page_variant_id: state.page.variant, ext: { page_type: state.page.type } }
}
rule "Note" {
  on "note"
  send sitecore { type: "NOTE", ext: { note: state.note } }
}
"""


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "s.rules").write_text(SETTINGS.replace("}", ', ext_names: "sdk" }'))
    (folder / "r.rules").write_text(CLI_RULES)
    pushes = [
        {"event": "page.view", "page": {"name": "Home", "type": "home", "language": "en-GB",
                                        "variant": "page_variant_3"}},
        {"event": "page.view", "page": {"name": "Home", "language": "british"}},
        {"event": "note", "note": "n" * 9000},
    ]  # fmt: skip
    events = folder / "events.jsonl"
    events.write_text("".join(json.dumps(p) + "\n" for p in pushes))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--rules", str(folder), str(events), "--dry-run",
         "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_cli_dry_run_sends_en_and_ext_page_variant_id(cli_run: list[dict[str, Any]]) -> None:
    (send,) = cli_run[0]["sends"]
    assert send["method"] == "GET" and "/v1.2/event/create.json?" in send["url"]
    body = send["body"]
    assert (body["language"], body["currency"]) == ("EN", "EUR")
    assert body["ext"] == {"pageVariantId": "page_variant_3", "page_type": "home"}
    assert "page_variant_id" not in body


def test_cli_dry_run_reports_a_bad_language_and_a_long_url(cli_run: list[dict[str, Any]]) -> None:
    (view,) = cli_run[1]["rules"]
    assert view["status"] == "failed" and not cli_run[1]["sends"]
    assert "sitecore 'language' must be a language tag" in view["reason"]
    (note,) = cli_run[2]["rules"]
    assert note["status"] == "failed" and not cli_run[2]["sends"]
    assert "the Sitecore direct-mode URL is" in note["reason"]


# ====================================================================== against the emulator
@pytest.fixture(scope="module")
def strict_emulator() -> Iterator[EmulatorServer]:
    """An emulator that knows the ruleset's client key (and no other)."""
    with EmulatorServer(config=EmulatorConfig(client_keys=frozenset({"k"}))) as server:
        yield server


EMULATOR_RULES = """\
rule "View" {
  on "page.view"
  send sitecore { type: "VIEW", page: "Home", language: state.lang, page_variant_id: state.variant, ext: { page_type: "home" } }
}
rule "Note" {
  on "note"
  send sitecore { type: "NOTE", ext: { note: state.note } }
}
rule "Order" {
  on "order"
  send sitecore { type: "ORDER_CHECKOUT", order: { referenceId: "A1", status: "PURCHASED", currencyCode: state.cur, price: 5, paymentType: "Voucher" } }
}
"""


def test_emulator_receives_the_iso_code_and_ext_page_variant_id(
    strict_emulator: EmulatorServer,
) -> None:
    strict_emulator.reset()
    with engine_for(EMULATOR_RULES, sitecore_url=strict_emulator.url) as engine:
        result = engine.push({"event": "page.view", "lang": "de-AT", "variant": "v-2"})
    (send,) = result.sends
    assert send.status == 201, send.response
    (event,) = [r for r in strict_emulator.requests() if r.path == "/v1.2/event/create.json"]
    assert event.status == 201
    assert event.body["language"] == "DE" and event.body["currency"] == "EUR"
    assert event.body["ext"] == {"pageVariantId": "v-2", "pageType": "home"}


def test_emulator_never_sees_a_refused_send(strict_emulator: EmulatorServer) -> None:
    strict_emulator.reset()
    with engine_for(EMULATOR_RULES, sitecore_url=strict_emulator.url) as engine:
        long = engine.push({"event": "note", "note": "q" * 9000})
        bad = engine.push({"event": "order", "cur": "eur"})
        good = engine.push({"event": "order", "cur": "EUR"})
    assert long.rules[0].status == "failed" and "8,192-byte limit" in (long.rules[0].reason or "")
    assert bad.rules[0].status == "failed" and "order.currencyCode" in (bad.rules[0].reason or "")
    assert good.sends[0].status == 201
    events = [r for r in strict_emulator.requests() if r.path == "/v1.2/event/create.json"]
    assert [r.body["type"] for r in events] == ["ORDER_CHECKOUT"]
