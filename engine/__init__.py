"""tagengine: a tag-manager-style rule engine.

Load a folder of ``.rules`` files into an immutable, compiled :class:`Ruleset`, and run
data-layer pushes through it::

    import engine
    ruleset = engine.load_ruleset("rules/")   # raises engine.RuleError with every diagnostic
    with engine.Engine(ruleset, dry_run=True) as app:
        result = app.session("visitor-1").push({"event": "commerce.purchase"})
        result.fired, result.rules, result.sends
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine import _hot

_hot.install()  # before any hot module is imported: their compiled build only if current

if TYPE_CHECKING:
    from engine.context import VisitorContext
    from engine.diagnostics import Diagnostic, Span
    from engine.engine import Engine, EngineSession
    from engine.errors import (
        BacklogFull,
        DispatchError,
        EngineError,
        EvaluationError,
        OutboxError,
        PayloadTooLarge,
        PushError,
        RuleError,
    )
    from engine.loader import load_ruleset
    from engine.results import PushResult, RuleOutcome, Send
    from engine.ruleset import Ruleset

__all__ = [
    "BacklogFull",
    "Diagnostic",
    "DispatchError",
    "Engine",
    "EngineError",
    "EngineSession",
    "EvaluationError",
    "OutboxError",
    "PayloadTooLarge",
    "PushError",
    "PushResult",
    "RuleError",
    "RuleOutcome",
    "Ruleset",
    "Send",
    "Span",
    "VisitorContext",
    "load_ruleset",
]

# Imported on first use (PEP 562): ``import engine.cli`` must not load the delivery stack
# (httpx, redis, the emulator), so that ``tagengine --version`` and ``check`` start fast.
_LAZY = {
    "VisitorContext": "engine.context",
    "Diagnostic": "engine.diagnostics",
    "Span": "engine.diagnostics",
    "Engine": "engine.engine",
    "EngineSession": "engine.engine",
    "BacklogFull": "engine.errors",
    "DispatchError": "engine.errors",
    "EngineError": "engine.errors",
    "EvaluationError": "engine.errors",
    "OutboxError": "engine.errors",
    "PayloadTooLarge": "engine.errors",
    "PushError": "engine.errors",
    "RuleError": "engine.errors",
    "load_ruleset": "engine.loader",
    "PushResult": "engine.results",
    "RuleOutcome": "engine.results",
    "Send": "engine.results",
    "Ruleset": "engine.ruleset",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
