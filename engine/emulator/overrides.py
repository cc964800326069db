"""Datastream configuration overrides (``meta.configOverrides``) as Edge checks them.

A datastream lists, in its settings, the values a request may switch to: Experience Platform
event datasets, Adobe Analytics report suites, Adobe Target property tokens and third-party
(Audience Manager) ID sync containers. A request whose ``meta.configOverrides`` holds another
value, or a key Edge does not know, is refused with ``400 EXEG-0113-400`` ("Invalid request").
Sources: Adobe's "Configure datastream overrides" (help/datastreams/overrides.md: the four
kinds of override, each to be configured first; container ids must be numbers) and
"edgeConfigOverrides" (help/web-sdk/commands/datastream-overrides.md: the keys, and the
``enabled`` switches, which need no allow-list); the Edge Mobile SDK's integration tests
(adobe/aepsdk-edge-android ``ConfigOverridesIntegrationTests.kt``, adobe/aepsdk-edge-ios)
expect ``EXEG-0113-400`` for an unknown key, for a dataset id or report suite not configured
as an override, and for a list mixing a configured report suite with another one.

:func:`override_problem` is the check; :func:`ruleset_overrides` collects the values a
ruleset's ``send event`` rules write as literals, which ``run --emulator`` and ``dev`` allow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from engine.ruleset import Ruleset

__all__ = [
    "OVERRIDE_PATHS",
    "SWITCH_PATHS",
    "merge_overrides",
    "override_problem",
    "parse_allowance",
    "ruleset_overrides",
]

OVERRIDE_PATHS: Mapping[str, Literal["string", "strings", "number"]] = {
    "com_adobe_experience_platform.datasets.event.datasetId": "string",
    "com_adobe_analytics.reportSuites": "strings",
    "com_adobe_target.propertyToken": "string",
    "com_adobe_identity.idSyncContainerId": "number",
}
"""Override paths whose values the datastream must list, and the JSON type each takes
(``strings``: an array, every item of which must be listed)."""

SWITCH_PATHS = frozenset(
    {
        "com_adobe_experience_platform.enabled",
        "com_adobe_experience_platform.com_adobe_edge_ode.enabled",
        "com_adobe_experience_platform.com_adobe_edge_segmentation.enabled",
        "com_adobe_experience_platform.com_adobe_edge_destinations.enabled",
        "com_adobe_experience_platform.com_adobe_edge_ajo.enabled",
        "com_adobe_analytics.enabled",
        "com_adobe_identity.enabled",
        "com_adobe_target.enabled",
        "com_adobe_audience_manager.enabled",
        "com_adobe_launch_ssf.enabled",
    }
)
"""``enabled`` switches of the datastream's services: booleans, never allow-listed (turning a
configured service off needs no setting)."""

_KNOWN = frozenset(OVERRIDE_PATHS) | SWITCH_PATHS
# Every object on the way to a known path: where a request's overrides may nest.
_BRANCHES = frozenset(
    ".".join(path.split(".")[:depth]) for path in _KNOWN for depth in range(1, path.count(".") + 1)
)

Allowed = Mapping[str, frozenset[str]]


def parse_allowance(text: str) -> tuple[str, str]:
    """``PATH=VALUE`` (the CLI's ``--allow-override``) as ``(path, value)``;
    :class:`ValueError` naming the known paths when the path is not one of them."""
    path, eq, value = text.partition("=")
    path, value = path.strip(), value.strip()
    if not eq or not path or not value:
        raise ValueError(f"expected PATH=VALUE, not {text!r}")
    check_paths([path])
    if OVERRIDE_PATHS[path] == "number" and not _is_digits(value):
        raise ValueError(f"{path} takes a number (an ID sync container id), not {value!r}")
    return path, value


def check_paths(paths: Iterable[str]) -> None:
    """:class:`ValueError` for a path that is not an allow-listed override."""
    for path in paths:
        if path not in OVERRIDE_PATHS:
            known = ", ".join(sorted(OVERRIDE_PATHS))
            raise ValueError(f"{path!r} is not a datastream override with values (known: {known})")


def merge_overrides(*parts: Allowed) -> dict[str, frozenset[str]]:
    """The union of several allow-lists."""
    out: dict[str, frozenset[str]] = {}
    for part in parts:
        for path, values in part.items():
            out[path] = out.get(path, frozenset()) | frozenset(values)
    return out


def override_problem(overrides: Any, allowed: Allowed | None) -> str | None:
    """Why Edge refuses a request's ``meta.configOverrides`` with ``EXEG-0113-400``, or
    ``None``. An unknown key or a value of the wrong type is always refused; a value at an
    allow-listed path only when ``allowed`` is given and does not list it (``None``: any)."""
    if not isinstance(overrides, dict):
        return f"meta.configOverrides must be an object, not {_kind(overrides)}"
    return _walk(overrides, "", allowed)


def _walk(node: Mapping[str, Any], prefix: str, allowed: Allowed | None) -> str | None:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        where = f"meta.configOverrides.{path}"
        kind = OVERRIDE_PATHS.get(path)
        if kind is not None:
            problem = _value_problem(where, path, kind, value, allowed)
        elif path in SWITCH_PATHS:
            problem = None if isinstance(value, bool) else f"{where} must be a boolean"
        elif path in _BRANCHES and isinstance(value, dict):
            problem = _walk(value, path, allowed)
        elif path in _BRANCHES:
            problem = f"{where} must be an object, not {_kind(value)}"
        else:
            problem = f"{where} is not a datastream override Edge knows"
        if problem is not None:
            return problem
    return None


def _value_problem(
    where: str, path: str, kind: str, value: Any, allowed: Allowed | None
) -> str | None:
    if kind == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return f"{where} must be an array of report suite ids"
        items = [str(v) for v in value]
    elif kind == "number":
        # The datastream docs: "Container IDs must be numeric values ... If you send a string
        # value ... you will receive an error."
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{where} must be a number, not {_kind(value)} {value!r}"
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return f"{where} must be a whole number, not {value!r}"
        items = [str(int(value))]
    else:
        if not isinstance(value, str) or not value:
            return f"{where} must be a non-empty string"
        items = [value]
    if allowed is None:
        return None
    listed = allowed.get(path, frozenset())
    for item in items:
        if item not in listed:
            shown = ", ".join(sorted(listed)) or "none"
            return (
                f"{where}: {item!r} is not configured as an override in the datastream's "
                f"settings (the emulator allows: {shown})"
            )
    return None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


# ====================================================================== from a ruleset
def ruleset_overrides(ruleset: Ruleset) -> dict[str, frozenset[str]]:
    """The override values ``ruleset``'s ``send event`` rules write as constants
    (``edgeConfigOverrides`` and ``datasetId`` fields), by path.

    Each send's field builder runs on an empty push (no data layer, no event): literals come
    out as themselves and data-layer values as nothing, so only what the rules themselves fix
    is collected; a value the data layer gives is allowed only when listed explicitly (the
    datastream has to list it too). A builder that fails on an empty push contributes
    nothing."""
    from engine.scope import Scope

    found: dict[str, set[str]] = {}
    for rule in ruleset.rules:
        for action in rule.actions:
            if action.kind != "send" or action.destination != "edge":
                continue
            try:
                fields = action.build(Scope({}, {}, ruleset.elements))
            except Exception:  # whatever an empty push breaks: this send fixes no constant
                continue
            if not isinstance(fields, Mapping):
                continue
            overrides = fields.get("edgeConfigOverrides")
            if isinstance(overrides, Mapping):
                _collect(overrides, "", found)
            dataset = fields.get("datasetId")
            if isinstance(dataset, str) and dataset:
                path = "com_adobe_experience_platform.datasets.event.datasetId"
                found.setdefault(path, set()).add(dataset)
    return {path: frozenset(values) for path, values in found.items()}


def _collect(node: Mapping[str, Any], prefix: str, found: dict[str, set[str]]) -> None:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        kind = OVERRIDE_PATHS.get(path)
        if kind is None:
            if isinstance(value, Mapping):
                _collect(value, path, found)
            continue
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            # As engine.destinations.edge sends them: a digit string container id as a number.
            if isinstance(item, bool):
                continue
            if isinstance(item, str) and item:
                found.setdefault(path, set()).add(item.strip() if kind == "number" else item)
            elif isinstance(item, int | float) and math.isfinite(item) and item == int(item):
                found.setdefault(path, set()).add(str(int(item)))
