"""Shared helpers for the test suite."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from engine import RuleError, Ruleset
from engine.loader import build_ruleset

# The local emulator fixtures (`emulator`, `fresh_emulator`) for every test module.
pytest_plugins = ("tests.emulator_fixture", "tests.redis_fixture")

SETTINGS = 'edge { datastream: "ds-1" }\nsitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }\n'


def load_text(files: Mapping[str, str] | str, environ: Mapping[str, str] | None = None) -> Ruleset:
    """A ruleset from in-memory files (``{"name.rules": text}``, or one text as t.rules)."""
    sources = {"t.rules": files} if isinstance(files, str) else dict(files)
    return build_ruleset(
        [(name, text.encode()) for name, text in sources.items()],
        environ={} if environ is None else environ,
    )


def rendered_errors(
    files: Mapping[str, str] | str, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Every diagnostic of a ruleset that must fail to load, rendered."""
    with pytest.raises(RuleError) as caught:
        load_text(files, environ)
    return [d.render() for d in caught.value.diagnostics]
