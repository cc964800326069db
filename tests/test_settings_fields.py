"""engine/settings_fields.py against the pydantic models of engine/settings.py: the same fields
and defaults, and no value it calls plainly valid that a model would refuse or change; a loaded
ruleset's settings are the models, built on first use; refused values still get pydantic's
diagnostics."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from engine.errors import RuleError
from engine.settings import SETTINGS_MODELS, EdgeSettings
from engine.settings_fields import SETTINGS_FIELDS, LoadedSettings, plainly_valid
from tests.conftest import load_text, rendered_errors

# Values of every shape a settings expression can give (constant_value: JSON-like, env() text).
SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    200,
    10_000,
    10_001,
    -1,
    1.0,
    200.5,
    "",
    "1",
    "200",
    "true",
    "v1",
    "v2",
    "v3",
    "in",
    "out",
    "pending",
    "1.0",
    "2.0",
    "acdl",
    "gtm",
    "direct",
    "proxy",
    "camel",
    "sdk",
    "EN",
    "en-GB",
    "english",
    "EUR",
    "eur",
    "euro",
    "WEB",
    "https://server.adobedc.net",
    [],
    ["a", "b"],
    ["a", 1],
    {},
    {"a": "b"},
]


def test_the_fields_are_the_models_fields_with_their_defaults() -> None:
    assert list(SETTINGS_FIELDS) == list(SETTINGS_MODELS)
    for kind, model in SETTINGS_MODELS.items():
        assert list(SETTINGS_FIELDS[kind]) == list(model.model_fields), kind
        for name, info in model.model_fields.items():
            assert SETTINGS_FIELDS[kind][name][0] == info.default, (kind, name)


@pytest.mark.parametrize("kind", list(SETTINGS_MODELS))
def test_a_plainly_valid_value_is_one_the_model_accepts_unchanged(kind: str) -> None:
    model = SETTINGS_MODELS[kind]
    for name, value in itertools.product(SETTINGS_FIELDS[kind], SAMPLES):
        if not plainly_valid(kind, {name: value}):
            continue
        try:
            built = model.model_validate({name: value})
        except ValidationError as error:  # pragma: no cover - the failure this test is for
            pytest.fail(f"{kind} {name}={value!r} is called plainly valid: {error}")
        kept = getattr(built, name)
        if isinstance(kept, SecretStr):
            kept = kept.get_secret_value()
        if name in ("language", "currency") and value is not None:
            continue  # the validators normalise a valid code ("en-GB" → "EN"): same check
        assert kept == value, (kind, name, value)


def _literal(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.mark.parametrize("kind", list(SETTINGS_MODELS))
def test_loading_a_setting_does_what_validating_it_with_the_model_does(kind: str) -> None:
    """Whichever way the loader takes (plainly valid or pydantic), a value loads as the model
    builds it, and a value the model refuses is a load error."""
    model = SETTINGS_MODELS[kind]
    for name, value in itertools.product(SETTINGS_FIELDS[kind], SAMPLES):
        text = f"{kind} {{ {name}: {_literal(value)} }}\n"
        try:
            expected = model.model_validate({name: value})
        except ValidationError:
            with pytest.raises(RuleError, match=f"{kind} setting '{name}'"):
                load_text(text)
            continue
        loaded = getattr(load_text(text), kind)
        assert loaded == expected, (kind, name, value)


def test_unknown_kinds_and_fields_are_not_plainly_valid() -> None:
    assert not plainly_valid("nope", {})
    assert not plainly_valid("edge", {"dtastream": "x"})
    assert plainly_valid("edge", {})


def test_a_loaded_ruleset_has_the_models_built_on_first_use() -> None:
    ruleset = load_text(
        'edge { datastream: "ds-1", client_secret: "s", scopes: ["a", "b"] }\n'
        'sitecore { client_key: "k", pos: "shop", language: "en-GB", currency: "eur" }\n'
        'consent { default: "pending", max_held: 5 }\n'
        'rule "R" { on "e"\n send event { type: "t" } }\n'
    )
    assert ruleset.edge == EdgeSettings(
        datastream="ds-1", client_secret=SecretStr("s"), scopes=["a", "b"]
    )
    assert ruleset.edge is ruleset.edge  # built once
    assert ruleset.sitecore is not None
    assert (ruleset.sitecore.language, ruleset.sitecore.currency) == ("EN", "EUR")
    assert ruleset.consent.default == "pending" and ruleset.consent.max_held == 5
    assert ruleset.datalayer == SETTINGS_MODELS["datalayer"]()
    with pytest.raises(AttributeError, match="immutable"):
        ruleset.edge = None  # type: ignore[misc]


def test_a_ruleset_without_settings_has_the_defaults() -> None:
    ruleset = load_text('rule "R" { on "e"\n push { a: 1 } }\n')
    assert ruleset.edge is None and ruleset.sitecore is None
    assert ruleset.consent == SETTINGS_MODELS["consent"]()
    assert ruleset.datalayer == SETTINGS_MODELS["datalayer"]()


def test_values_are_read_without_building_the_models() -> None:
    settings = LoadedSettings.plain({"edge": {"client_secret": "s"}})
    assert settings.declared("edge") and not settings.declared("sitecore")
    assert settings.value("edge", "client_secret") == "s"
    assert settings.value("edge", "url") == "https://edge.adobedc.net"
    assert settings.value("sitecore", "url") is None
    built = LoadedSettings.built(EdgeSettings(client_secret=SecretStr("s")))
    assert built.value("edge", "client_secret") == "s"
    assert not built.declared("sitecore")


def test_values_pydantic_converts_or_refuses_still_get_its_diagnostics() -> None:
    # Lax conversions go through pydantic, and load as before.
    ruleset = load_text('consent { max_held: "7" }\nedge { fpid: "true" }\n')
    assert ruleset.consent.max_held == 7
    assert ruleset.edge is not None and ruleset.edge.fpid is True
    errors = rendered_errors(
        'edge { api: "v3" }\nconsent { max_held: 0 }\nsitecore { language: "english" }\n'
    )
    assert [e.split("\n")[0] for e in errors] == [
        "t.rules:1:13: error: edge setting 'api': input should be 'v1' or 'v2'",
        "t.rules:2:21: error: consent setting 'max_held': input should be greater than or "
        "equal to 1",
        "t.rules:3:22: error: sitecore setting 'language': must be a language tag such as "
        '"en" or "en-GB" (ISO 639-1 code first), not "english"',
    ]


def test_the_authenticated_host_check_reads_the_plain_values() -> None:
    errors = rendered_errors(
        'edge { url: "https://server.adobedc.net" }\n'
        'rule "R" { on "e"\n send event { type: "t" } }\n'
    )
    assert len(errors) == 1 and "Edge's authenticated host (server.adobedc.net)" in errors[0]
    errors = rendered_errors(
        'edge { client_id: "c", client_secret: "s" }\n'
        'rule "R" { on "e"\n send event { type: "t" } }\n'
    )
    assert len(errors) == 1 and "client_id and client_secret are set" in errors[0]
    load_text(
        'edge { client_id: "c", client_secret: "s", fpid: true }\n'
        'rule "R" { on "e"\n send event { type: "t" } }\n'
    )
    load_text(
        'edge { client_id: "c", client_secret: "" }\nrule "R" { on "e"\n send event { type: "t" } }\n'
    )
