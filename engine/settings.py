"""Destination and data-layer settings, as declared in ``edge { … }``, ``sitecore { … }`` and
``datalayer { … }`` blocks. Validated with pydantic when the ruleset loads; secrets are
:class:`~pydantic.SecretStr` so they never print."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr


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


class SitecoreSettings(_Settings):
    """Sitecore CDP / Personalize Stream API."""

    url: str = "https://api-engage-eu.sitecorecloud.io"
    client_key: str | None = None
    pos: str | None = None
    channel: str = "WEB"
    language: str = "EN"
    currency: str = "EUR"
    mode: Literal["direct", "proxy"] = "direct"
    context_id: str | None = None  # proxy mode: sitecoreContextId
    site_id: str | None = None  # proxy mode: siteId


class DatalayerSettings(_Settings):
    """How pushes merge into the state (see docs/semantics.md)."""

    merge: Literal["acdl", "gtm"] = "acdl"


SETTINGS_MODELS: dict[str, type[_Settings]] = {
    "edge": EdgeSettings,
    "sitecore": SitecoreSettings,
    "datalayer": DatalayerSettings,
}
