"""Destination and data-layer settings, as declared in ``edge { … }``, ``sitecore { … }`` and
``datalayer { … }`` blocks. Validated with pydantic when the ruleset loads; secrets are
:class:`~pydantic.SecretStr` so they never print. A block whose values pydantic would take as
they are is built when first read instead (:mod:`engine.settings_fields`, which keeps a copy
of these fields and defaults: tests/test_settings_fields.py holds the two together)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from engine.sitecore_formats import currency_code, currency_problem, language_code, language_problem


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class EdgeSettings(_Settings):
    """Adobe Experience Platform Edge Network."""

    datastream: str | None = None
    org: str | None = None
    url: str = "https://edge.adobedc.net"
    api: Literal["v1", "v2"] = "v2"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    token_url: str = "https://ims-na1.adobelogin.com/ims/token/v3"
    scopes: str | list[str] | None = None
    domain: str | None = None  # meta.state.domain for identity cookies
    # First-party device id: minted per visitor, sent as identityMap.FPID (primary), kept in
    # the browser by a first-party cookie of this name (EngineSession.set_cookie_headers).
    fpid: bool = False
    fpid_cookie: str = "FPID"


class SitecoreSettings(_Settings):
    """Sitecore CDP / Personalize Stream API."""

    url: str = "https://api-engage-eu.sitecorecloud.io"
    client_key: str | None = None
    pos: str | None = None
    channel: str = "WEB"
    # No defaults: a shop that forgot them would record every event in EUR/EN. A send without
    # them (here or in the rule) is a load error; a tag such as "en-GB" is kept as "EN".
    language: str | None = None
    currency: str | None = None
    mode: Literal["direct", "proxy"] = "direct"
    context_id: str | None = None  # proxy mode: sitecoreContextId
    site_id: str | None = None  # proxy mode: siteId
    # ext attribute names: "camel" as the Stream API docs say (productSku, lists as JSON
    # text), or "sdk" as the Cloud SDK sends them (product_sku, lists kept).
    ext_names: Literal["camel", "sdk"] = "camel"

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = language_code(value)
        if code is None:
            raise ValueError(language_problem(value).replace("'language' must", "must", 1))
        return code

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = currency_code(value)
        if code is None:
            raise ValueError(currency_problem(value).replace("'currency' must", "must", 1))
        return code


class ConsentSettings(_Settings):
    """The visitor's consent to collection (see engine/consent.py)."""

    default: Literal["in", "out", "pending"] = "in"
    path: str | None = None  # a data-layer path whose changes set it (a CMP's push)
    adobe: Literal["1.0", "2.0"] = "1.0"  # the Adobe consent standard Edge is told in
    max_held: int = Field(default=200, ge=1, le=10_000)  # sends held per session, pending


class DatalayerSettings(_Settings):
    """How pushes merge into the state (see docs/semantics.md)."""

    merge: Literal["acdl", "gtm"] = "acdl"


SETTINGS_MODELS: dict[str, type[_Settings]] = {
    "edge": EdgeSettings,
    "sitecore": SitecoreSettings,
    "datalayer": DatalayerSettings,
    "consent": ConsentSettings,
}
