"""What a push returns: every rule considered with its status, the element values, the sends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from engine.destinations.base import Request
from engine.diagnostics import Span
from engine.ruleset import NotTriggered
from engine.scope import Scope
from engine.values import copy_json

if TYPE_CHECKING:
    from engine.ruleset import CompiledCondition, Ruleset

__all__ = ["NotTriggered", "PushResult", "RuleOutcome", "Send", "Status"]

Status = Literal["fired", "condition_not_met", "blocked", "sampled_out", "limited", "failed"]


_MAX_SHOWN = 120  # characters of a value shown in a reason


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def operand_values(condition: CompiledCondition, scope: Scope) -> tuple[tuple[str, Any], ...]:
    """What each of ``condition``'s operands evaluates to in ``scope``, an error as text."""
    seen: list[tuple[str, Any]] = []
    for source, fn in condition.operands:
        try:
            seen.append((source, fn(scope)))
        except Exception as error:
            seen.append((source, f"<error: {error}>"))
    return tuple(seen)


def explain(condition: CompiledCondition, seen: tuple[tuple[str, Any], ...]) -> str:
    """Why a rule stopped at ``condition``, with the values its operands had (``seen``)."""
    verdict = "true" if condition.negated else "false"
    word = "unless" if condition.negated else "when"
    shown = ", ".join(f"{source} = {_show(value)}" for source, value in seen)
    guard = f"guard '{condition.guard}': " if condition.guard is not None else ""
    return f"{guard}{word} {condition.source} was {verdict}" + (f" ({shown})" if shown else "")


_FIELDS = ("rule", "status", "reason", "clause", "values", "span")
_MAX_FIRED = 10_000  # shared "fired" outcomes kept, at most


class RuleOutcome:
    """One rule's fate on one push.

    ``reason`` says why it did not fire (``None`` when it fired); ``clause`` is the source text of
    the deciding ``when``/``unless`` and ``values`` what its operands evaluated to, for traces.

    Immutable, compared and hashed by those six fields (as a frozen dataclass). The reason of a
    rule whose condition decided (:meth:`stopped_at`) is written when first read: most never
    are (traces, ``--json`` and failing tests read them), and rendering each operand as JSON
    costs most of such a rule's time. The values are those the operands had during the push
    (the snapshot's, or elements'): the engine never changes them afterwards. Those of a
    condition that reads only the state are read from the push's snapshot when first asked
    for: a snapshot is never changed (a push makes a new one).
    """

    __slots__ = ("_reason", "_state", "_values", "_why", "clause", "rule", "span", "status")
    __match_args__ = ("rule", "status", "reason", "clause", "values", "span")

    rule: str
    status: Status
    clause: str | None
    span: Span | None
    _values: tuple[tuple[str, Any], ...]
    _state: dict[str, Any] | None  # the snapshot the values are still to be read from
    _reason: str | None
    _why: CompiledCondition | None

    def __new__(
        cls,
        rule: str,
        status: Status,
        reason: str | None = None,
        clause: str | None = None,
        values: tuple[tuple[str, Any], ...] = (),
        span: Span | None = None,
    ) -> RuleOutcome:
        # A rule's "fired" outcome is the same on every push: immutable, it is made once and
        # shared (most rules a push evaluates fire). Keyed by the span's identity, which the
        # cached outcome keeps alive, so the key cannot be reused by another span.
        fired = status == "fired" and reason is None and clause is None and not values
        if fired:
            key = (rule, id(span))
            shared = _FIRED.get(key)
            if shared is not None and shared.__class__ is cls:
                return shared
        self: RuleOutcome
        if cls is RuleOutcome:
            built: Any = _Building(rule, status, reason, clause, values, span, None)
            self = built
        else:
            self = object.__new__(cls)
            put = object.__setattr__
            put(self, "rule", rule)
            put(self, "status", status)
            put(self, "_reason", reason)
            put(self, "clause", clause)
            put(self, "_values", values)
            put(self, "span", span)
            put(self, "_why", None)
            put(self, "_state", None)
        if fired:
            if len(_FIRED) >= _MAX_FIRED:  # rulesets reloaded many times: start again
                _FIRED.clear()
            _FIRED[key] = self
        return self

    @classmethod
    def stopped_at(
        cls,
        rule: str,
        status: Status,
        condition: CompiledCondition,
        values: tuple[tuple[str, Any], ...],
        state: dict[str, Any] | None = None,
    ) -> RuleOutcome:
        """The outcome of a rule ``condition`` stopped, its operands having had ``values``,
        or, given the push's ``state`` for a condition that reads only the state, having
        the values they read from it; the reason is :func:`explain`'s text, written when
        first read."""
        if cls is RuleOutcome:  # (not shared)
            built: Any = _Building(
                rule, status, None, condition.source, values, condition.span, condition, state
            )
            return cast(RuleOutcome, built)
        outcome = cls(rule, status, None, condition.source, values, condition.span)
        object.__setattr__(outcome, "_why", condition)
        object.__setattr__(outcome, "_state", state)
        return outcome

    @property
    def values(self) -> tuple[tuple[str, Any], ...]:
        state = self._state
        if state is not None:
            assert self._why is not None  # kept until the values are read (see reason)
            object.__setattr__(self, "_values", operand_values(self._why, Scope(state, {}, {})))
            object.__setattr__(self, "_state", None)
        return self._values

    @property
    def reason(self) -> str | None:
        why = self._why
        if why is not None:
            object.__setattr__(self, "_reason", explain(why, self.values))
            object.__setattr__(self, "_why", None)
        return self._reason

    def _key(self) -> tuple[Any, ...]:
        return (self.rule, self.status, self.reason, self.clause, self.values, self.span)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"RuleOutcome({shown})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy: the fields, the reason written
        return (
            RuleOutcome,
            (self.rule, self.status, self.reason, self.clause, self.values, self.span),
        )

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "status": self.status, "reason": self.reason}


_FIRED: dict[tuple[str, int], RuleOutcome] = {}


class _Building:
    """A :class:`RuleOutcome` as it is made (a push makes one for each rule it evaluates):
    the same slots, assignable, then made a RuleOutcome by ``__class__`` assignment (CPython
    allows it between classes whose instances have the same layout), in place of seven
    ``object.__setattr__`` calls past the frozen class's guard."""

    __slots__ = RuleOutcome.__slots__

    def __init__(
        self,
        rule: str,
        status: Status,
        reason: str | None,
        clause: str | None,
        values: tuple[tuple[str, Any], ...],
        span: Span | None,
        why: CompiledCondition | None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.rule = rule
        self.status = status
        self._reason = reason
        self.clause = clause
        self._values = values
        self.span = span
        self._why = why
        self._state = state
        self.__class__ = RuleOutcome  # type: ignore[assignment]


@dataclass(slots=True)
class Send:
    """One request built by a ``send`` action: what goes on the wire, and once dispatched, what
    came back (``status``, ``response``, ``duration``, ``attempts``; ``None`` in a dry run)."""

    rule: str
    destination: Literal["edge", "sitecore"]
    request: Request
    status: int | None = None
    response: Any = None
    duration: float | None = None
    attempts: int = 0
    error: str | None = None
    consent: Literal["held", "dropped"] | None = None  # not sent (yet): the visitor's consent

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def url(self) -> str:
        return self.request.url

    @property
    def body(self) -> Any:
        return self.request.body

    def to_json(self, *, delivered: bool = False) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "rule": self.rule,
            "destination": self.destination,
            "method": self.method,
            "url": self.url,
            "body": self.body,
        }
        visitor = [pair for pair in self.request.headers if pair[0] != "Content-Type"]
        if visitor:  # what the request tells of the visitor (VisitorContext)
            shown["headers"] = dict(visitor)
        if self.consent is not None:
            shown["consent"] = self.consent
        if delivered:
            shown.update(status=self.status, attempts=self.attempts, response=self.response)
            if self.error:
                shown["error"] = self.error
        return shown


@dataclass(slots=True)
class PushResult:
    """The outcome of one push.

    ``snapshot`` is the event-time state every rule of this push read; it is shared with the
    session's history, so read it, or take :meth:`state` for a copy of your own.
    """

    session: str
    event: str | None
    version: str
    snapshot: dict[str, Any]
    rules: list[RuleOutcome] = field(default_factory=list)
    elements: dict[str, Any] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)
    pushes: list[dict[str, Any]] = field(default_factory=list)  # queued by `push` actions
    followups: list[PushResult] = field(default_factory=list)  # their results, in order
    # The session's consent after the push, and the sends it released (held while consent
    # was pending, sent now, before this push's own) or dropped (held, then refused).
    consent: Literal["in", "out", "pending"] = "in"
    released: list[Send] = field(default_factory=list)
    dropped: int = 0
    consent_request: Send | None = None  # Edge told of a change of consent
    duplicate: bool = False  # a push id the session had seen: nothing was done again
    # What :meth:`not_triggered` needs, kept as references (nothing is computed per push):
    # the data paths the push set, and the ruleset it ran against.
    changed: Sequence[tuple[str | int, ...]] = ()
    ruleset: Ruleset | None = field(default=None, repr=False, compare=False)
    _not_triggered: list[NotTriggered] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def not_triggered(self) -> list[NotTriggered]:
        """The rules this push did not trigger ("why not?"), each with its triggers and, when
        one nearly matched, a near-miss message ("`on "page.veiw"`: this push was
        `page.view`"); near misses first, then the other rules in evaluation order.

        Computed from the ruleset on the first call (traces, ``--json``, failing tests read
        it; processing a push never does), then kept. Empty for a result no rule ran for (a
        duplicate push, a change of consent).
        """
        if self._not_triggered is None:
            ruleset = self.ruleset
            found = [] if ruleset is None else ruleset.not_triggered(self.event, self.changed)
            self._not_triggered = found
        return self._not_triggered

    @property
    def fired(self) -> list[str]:
        return [o.rule for o in self.rules if o.status == "fired"]

    def outcome(self, rule: str) -> RuleOutcome | None:
        return next((o for o in self.rules if o.rule == rule), None)

    def state(self) -> dict[str, Any]:
        return copy_json(self.snapshot)  # type: ignore[no-any-return]

    def to_json(self, *, delivered: bool = False) -> dict[str, Any]:
        """The ``tagengine run --json`` line for this push. With ``delivered``, each send adds
        its ``status``, ``attempts`` and ``response`` (and ``error``), and the pushes its rules
        queued ride along under ``followups``. ``not_triggered`` (present when a rule was not
        triggered) lists :meth:`not_triggered`: ``{"rule", "triggers"}``, plus ``"near_miss"``
        when a trigger nearly matched."""
        line: dict[str, Any] = {
            "session": self.session,
            "event": self.event,
            "version": self.version,
            "rules": [o.to_json() for o in self.rules],
            "sends": [s.to_json(delivered=delivered) for s in self.sends],
        }
        not_triggered = self.not_triggered()
        if not_triggered:  # near misses first; a key only when some rule was not triggered
            line["not_triggered"] = [entry.to_json() for entry in not_triggered]
        if self.followups:
            line["followups"] = [f.to_json(delivered=delivered) for f in self.followups]
        if self.duplicate:
            line["duplicate"] = True
        if self.consent != "in" or self.released or self.dropped:
            line["consent"] = self.consent
            if self.released:
                line["released"] = [s.to_json(delivered=delivered) for s in self.released]
            if self.dropped:
                line["dropped"] = self.dropped
            if self.consent_request is not None:
                line["consent_request"] = self.consent_request.to_json(delivered=delivered)
        return line

    def __str__(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)
