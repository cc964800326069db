"""The fields of the settings blocks, known without pydantic, and settings built on first use.

``tagengine check`` must start fast, and pydantic with the models of :mod:`engine.settings`
takes about 50 ms to import. The checker needs only the field names (:data:`SETTINGS_FIELDS`),
and most blocks hold plain values of the right type (a string for a URL, ``"acdl"`` for the
merge, ``true`` for a flag): pydantic accepts those as they are, so there is nothing to report
and no need to import it to know that (:func:`plainly_valid`). The loader then keeps the values
in :class:`LoadedSettings`, which builds the models when a setting is first read. A block with
any other value is validated by pydantic at load time, for its exact diagnostics.

``tests/test_settings_fields.py`` checks these tables against the models.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from engine.sitecore_formats import currency_code, language_code

if TYPE_CHECKING:
    from engine.settings import ConsentSettings, DatalayerSettings, EdgeSettings, SitecoreSettings

__all__ = ["SETTINGS_FIELDS", "LoadedSettings", "plainly_valid"]


# Each test is true only for a value pydantic accepts unchanged (lax conversions, such as
# "1" for a number, go through pydantic): a subset of what the models accept, never more.
def _text(value: Any) -> bool:
    return type(value) is str


def _optional_text(value: Any) -> bool:
    return value is None or type(value) is str


def _flag(value: Any) -> bool:
    return type(value) is bool


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda value: type(value) is str and value in choices


def _scopes(value: Any) -> bool:
    if type(value) is list:
        return all(type(item) is str for item in value)
    return _optional_text(value)


def _language(value: Any) -> bool:
    return value is None or (type(value) is str and language_code(value) is not None)


def _currency(value: Any) -> bool:
    return value is None or (type(value) is str and currency_code(value) is not None)


def _max_held(value: Any) -> bool:
    return type(value) is int and 1 <= value <= 10_000


Field = tuple[Any, Callable[[Any], bool]]  # (default, accepts)

# Block kind → field name → (default, accepts), in the order of the models' fields.
SETTINGS_FIELDS: dict[str, dict[str, Field]] = {
    "edge": {
        "datastream": (None, _optional_text),
        "org": (None, _optional_text),
        "url": ("https://edge.adobedc.net", _text),
        "api": ("v2", _one_of("v1", "v2")),
        "client_id": (None, _optional_text),
        "client_secret": (None, _optional_text),
        "token_url": ("https://ims-na1.adobelogin.com/ims/token/v3", _text),
        "scopes": (None, _scopes),
        "domain": (None, _optional_text),
        "fpid": (False, _flag),
        "fpid_cookie": ("FPID", _text),
    },
    "sitecore": {
        "url": ("https://api-engage-eu.sitecorecloud.io", _text),
        "client_key": (None, _optional_text),
        "pos": (None, _optional_text),
        "channel": ("WEB", _text),
        "language": (None, _language),
        "currency": (None, _currency),
        "mode": ("direct", _one_of("direct", "proxy")),
        "context_id": (None, _optional_text),
        "site_id": (None, _optional_text),
        "ext_names": ("camel", _one_of("camel", "sdk")),
    },
    "datalayer": {
        "merge": ("acdl", _one_of("acdl", "gtm")),
    },
    "consent": {
        "default": ("in", _one_of("in", "out", "pending")),
        "path": (None, _optional_text),
        "adobe": ("1.0", _one_of("1.0", "2.0")),
        "max_held": (200, _max_held),
    },
}


def plainly_valid(kind: str, data: Mapping[str, Any]) -> bool:
    """Whether the model of ``kind`` certainly accepts ``data`` (no diagnostic to report)."""
    fields = SETTINGS_FIELDS.get(kind)
    if fields is None:
        return False
    for name, value in data.items():
        field = fields.get(name)
        if field is None or not field[1](value):
            return False
    return True


class LoadedSettings:
    """A ruleset's settings: the edge, sitecore, datalayer and consent models, each built on
    first use from values known valid (:meth:`plain`), or given built (:meth:`built`)."""

    __slots__ = ("_data", "_lock", "_models")

    def __init__(self, data: Mapping[str, Mapping[str, Any]], models: Mapping[str, Any]) -> None:
        self._data = dict(data)
        self._models: dict[str, Any] = dict(models)
        self._lock = threading.Lock()

    @classmethod
    def plain(cls, data: Mapping[str, Mapping[str, Any]]) -> LoadedSettings:
        """From each block's values (block kind → field → value), all :func:`plainly_valid`."""
        return cls(data, {})

    @classmethod
    def built(
        cls,
        edge: EdgeSettings | None = None,
        sitecore: SitecoreSettings | None = None,
        datalayer: DatalayerSettings | None = None,
        consent: ConsentSettings | None = None,
    ) -> LoadedSettings:
        """From models; a ``None`` datalayer or consent is the default one."""
        models: dict[str, Any] = {"edge": edge, "sitecore": sitecore}
        if datalayer is not None:
            models["datalayer"] = datalayer
        if consent is not None:
            models["consent"] = consent
        return cls({}, models)

    def declared(self, kind: str) -> bool:
        """Whether the ruleset has (valid) settings of ``kind``."""
        if kind in self._models:
            return self._models[kind] is not None
        return kind in self._data

    def value(self, kind: str, name: str) -> Any:
        """One setting without building its model (a secret as plain text); ``None`` for a
        kind the ruleset does not declare."""
        if kind in self._models:
            model = self._models[kind]
            value = getattr(model, name, None)
            reveal = getattr(value, "get_secret_value", None)
            return reveal() if reveal is not None else value
        if kind not in self._data:
            return None
        return self._data[kind].get(name, SETTINGS_FIELDS[kind][name][0])

    def _model(self, kind: str) -> Any:
        models = self._models
        if kind in models:  # built: read on every push (the datalayer's merge), no lock
            return models[kind]
        with self._lock:
            if kind not in self._models:
                from engine.settings import SETTINGS_MODELS

                data = self._data.get(kind)
                if data is None and kind in ("edge", "sitecore"):
                    self._models[kind] = None
                else:
                    self._models[kind] = SETTINGS_MODELS[kind].model_validate(data or {})
            return self._models[kind]

    @property
    def edge(self) -> EdgeSettings | None:
        model: EdgeSettings | None = self._model("edge")
        return model

    @property
    def sitecore(self) -> SitecoreSettings | None:
        model: SitecoreSettings | None = self._model("sitecore")
        return model

    @property
    def datalayer(self) -> DatalayerSettings:
        model: DatalayerSettings = self._model("datalayer")
        return model

    @property
    def consent(self) -> ConsentSettings:
        model: ConsentSettings = self._model("consent")
        return model
