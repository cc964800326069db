"""The engine's exceptions: one tree, so ``except EngineError`` catches everything it raises.

::

    EngineError
    ├── RuleError          load time: a ruleset that does not parse or check; carries every
    │                      Diagnostic (file:line:col, message, source line, caret)
    ├── PushError          bad input to a push (not a JSON-like mapping, too deep, too large)
    ├── EvaluationError    a rule failed at run time; carries the span in the rule file
    ├── OutboxError        the outbox or the session store cannot be opened, read or written
    │   │                  (engine.stores: a SQLite file, Redis unreachable)
    │   └── BacklogFull    a push's sends would take the outbox past Engine(max_backlog=N)
    └── DispatchError      a destination refused or failed a send (status, vendor code, requestId)
        ├── PayloadTooLarge   a request body above the destination's limit, refused before sending
        └── DeliveryError     a final error answer, or retries that ran out (engine.clients);
                              adds attempts, last_error and retryable

Foreign exceptions (lark, pydantic, httpx, OSError) are translated at the boundary where they
occur; none of them escapes the public API.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.diagnostics import Diagnostic, Span


class EngineError(Exception):
    """Base of every exception the engine raises."""


class RuleError(EngineError):
    """A ruleset failed to load; ``diagnostics`` lists every problem found, in source order."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        errors = sum(1 for d in self.diagnostics if d.severity == "error")
        super().__init__(f"{errors} error{'s' if errors != 1 else ''} in ruleset")

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    def __str__(self) -> str:
        head = super().__str__()
        return f"{head}\n{self.render()}" if self.diagnostics else head


class PushError(EngineError):
    """A push that is not valid input; the session's state is unchanged."""


class EvaluationError(EngineError):
    """An error while evaluating a rule; ``span`` points into the rule file."""

    def __init__(self, message: str, span: Span | None = None) -> None:
        self.span = span
        super().__init__(f"{span}: {message}" if span else message)


class OutboxError(EngineError):
    """The outbox or the session store cannot be opened, read or written, or is not one."""


class BacklogFull(OutboxError):
    """A push's sends would take the outbox past its bound (``Engine(max_backlog=N)``):
    delivery is not keeping up, or not running. Nothing was stored and the session is as it
    was; ``backlog`` is the sends waiting, ``bound`` the bound."""

    def __init__(self, message: str, backlog: int, bound: int) -> None:
        super().__init__(message)
        self.backlog = backlog
        self.bound = bound


class DispatchError(EngineError):
    """A send that a destination refused or that could not be delivered."""

    def __init__(
        self,
        message: str,
        *,
        destination: str | None = None,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.destination = destination
        self.status = status
        self.code = code
        self.title = title
        self.request_id = request_id
        super().__init__(message)


class PayloadTooLarge(DispatchError):
    """A request body above the destination's size limit; nothing was sent."""
