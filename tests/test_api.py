"""The public API is curated: this test pins it, so a change to it is a decision."""

from __future__ import annotations

import engine


def test_public_api_is_pinned() -> None:
    assert sorted(engine.__all__) == [
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
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_exception_tree() -> None:
    for error in (engine.RuleError, engine.PushError, engine.DispatchError, engine.EvaluationError):
        assert issubclass(error, engine.EngineError)
    assert issubclass(engine.PayloadTooLarge, engine.DispatchError)
    assert issubclass(engine.BacklogFull, engine.OutboxError)
    assert issubclass(engine.OutboxError, engine.EngineError)
    assert "RuleError" in (engine.errors.__doc__ or "")
