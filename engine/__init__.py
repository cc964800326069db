"""tagengine: a tag-manager-style rule engine.

Load a folder of ``.rules`` files into an immutable, compiled :class:`Ruleset`::

    import engine
    ruleset = engine.load_ruleset("rules/")   # raises engine.RuleError with every diagnostic
"""

from engine.diagnostics import Diagnostic, Span
from engine.errors import (
    DispatchError,
    EngineError,
    EvaluationError,
    PayloadTooLarge,
    PushError,
    RuleError,
)
from engine.loader import load_ruleset
from engine.ruleset import Ruleset

__all__ = [
    "Diagnostic",
    "DispatchError",
    "EngineError",
    "EvaluationError",
    "PayloadTooLarge",
    "PushError",
    "RuleError",
    "Ruleset",
    "Span",
    "load_ruleset",
]
