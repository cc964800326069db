"""tagengine: a tag-manager-style rule engine.

Load a folder of ``.rules`` files into an immutable, compiled :class:`Ruleset`, and run
data-layer pushes through it::

    import engine
    ruleset = engine.load_ruleset("rules/")   # raises engine.RuleError with every diagnostic
    with engine.Engine(ruleset, dry_run=True) as app:
        result = app.session("visitor-1").push({"event": "commerce.purchase"})
        result.fired, result.rules, result.sends
"""

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
