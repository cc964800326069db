"""One push, step by step (docs/semantics.md, "A push"): validate, split, merge, snapshot, match,
evaluate, build the sends. Decisions only: nothing here does I/O; the caller dispatches.
"""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine import datalayer
from engine.context import VisitorContext
from engine.destinations.base import Request, check_size
from engine.destinations.edge import build_edge_request, plan_edge_send
from engine.destinations.sitecore import build_sitecore_request
from engine.errors import EngineError
from engine.fieldgen import FieldBuilder
from engine.results import PushResult, RuleOutcome, Send, Status, operand_values
from engine.ruleset import CompiledElement, CompiledRule, Ruleset
from engine.scope import Scope
from engine.sessions import Session
from engine.settings import EdgeSettings, SitecoreSettings

__all__ = ["Ids", "Targets", "process_push"]

PAGE_VIEW_EVENTS = frozenset({"page.view", "viewStart"})


_VERSION_4 = (0xF000 << 64) | (0xC000 << 48), (0x4000 << 64) | (0x8000 << 48)


# A generator of the engine's own, seeded from the system: an app that seeds the `random`
# module (random.seed(42)) must not make every process send the same ids, which Edge would
# de-duplicate away. Reseeded in a forked child, so parent and child draw different ids.
_ids = random.Random()
_random_bits = _ids.getrandbits
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def new_id(
    _bits: Callable[[int], int] = _random_bits,
    _keep: int = ~_VERSION_4[0],
    _put: int = _VERSION_4[1],
) -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())``.

    From a pseudo-random generator seeded from ``os.urandom`` rather than ``os.urandom``
    itself: ids must be unique, not secret, and ``os.urandom`` is a system call that lets the
    delivery threads take the GIL in the middle of a push. (Its helpers are default
    arguments, the fastest names to read: a push mints two ids per Edge send.)
    """
    text = (_bits(128) & _keep | _put).to_bytes(16, "big").hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True, slots=True)
class Ids:
    """Where per-event identifiers come from; tests inject deterministic ones.
    ``browser_id`` mints a session's local Sitecore browser id (until Sitecore issues one)."""

    event_id: Callable[[], str] = new_id
    request_id: Callable[[], str] = new_id
    browser_id: Callable[[], str] = new_id


def _timestamp(now: float) -> str:
    """ISO-8601 UTC with milliseconds, as ``datetime.fromtimestamp`` rounds; the part up to
    the second is formatted once a second."""
    global _last_second
    fraction, second = math.modf(now)
    micros = round(fraction * 1e6)  # half to even, as datetime does
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:  # before 1970
        second, micros = second - 1, micros + 1_000_000
    cached = _last_second  # read once: another thread may replace it
    if cached[0] != second:
        moment = datetime.fromtimestamp(second, tz=UTC)
        cached = _last_second = (second, moment.strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{cached[1]}{micros // 1000:03d}Z"


_last_second: tuple[float, str] = (math.nan, "")


@dataclass(frozen=True, slots=True)
class Targets:
    """The destination settings requests are built with: the ruleset's, or the same with
    another ``url`` (``tagengine run --edge URL``, the emulator) or ``token_url``."""

    edge: EdgeSettings | None
    sitecore: SitecoreSettings | None

    @classmethod
    def of(
        cls,
        ruleset: Ruleset,
        edge_url: str | None = None,
        sitecore_url: str | None = None,
        token_url: str | None = None,
    ) -> Targets:
        edge, sitecore = ruleset.edge, ruleset.sitecore
        moved = {"url": edge_url.rstrip("/") if edge_url else None, "token_url": token_url}
        update = {name: value for name, value in moved.items() if value}
        if edge is not None and update:
            edge = edge.model_copy(update=update)
        if sitecore is not None and sitecore_url:
            sitecore = sitecore.model_copy(update={"url": sitecore_url.rstrip("/")})
        return cls(edge, sitecore)


class _Context:
    """Per-push inputs shared by every rule of the push."""

    __slots__ = (
        "_scope",
        "context",
        "elements",
        "event",
        "ids",
        "now",
        "session",
        "state",
        "targets",
        "timestamp",
    )

    def __init__(
        self,
        targets: Targets,
        session: Session,
        now: float,
        ids: Ids,
        context: VisitorContext | None,
        state: dict[str, Any],
        event: dict[str, Any],
        elements: Mapping[str, CompiledElement],
    ):
        self.targets = targets
        self.context = context
        self.session = session
        self.now = now
        self.ids = ids
        self.timestamp = _timestamp(now)
        self.state = state
        self.event = event
        self.elements = elements
        self._scope: Scope | None = None

    def scope(self) -> Scope:
        """The push's scope, made when first needed: a push whose conditions read only the
        state and fire no rule needs none."""
        scope = self._scope
        if scope is None:
            context = self.context
            request = context.for_rules() if context is not None else None
            scope = Scope(self.state, self.event, self.elements, self.session.kept, request)
            self._scope = scope
        return scope


VISITOR_FPID = "@fpid"
"""Where a visitor's first-party id is kept: in the memory their sessions share (as ``keep
visitor`` values; no element name starts with ``@``), so each of their sessions sends it."""


def _fpid(session: Session) -> None:
    """The session's first-party id: the one its cookie brought, else the visitor's, else
    one minted now, with the visitor's first Edge send: the primary identity from the very
    first event, the same in all the visitor's sessions."""
    identity, kept = session.identity, session.visitor.kept
    fpid = identity.get("fpid")
    if not isinstance(fpid, str):
        known = kept.get(VISITOR_FPID)
        fpid = known if isinstance(known, str) else str(uuid.uuid4())  # unguessable
        identity["fpid"] = fpid
    if kept.get(VISITOR_FPID) != fpid:
        kept[VISITOR_FPID] = fpid


def _request(
    ctx: _Context,
    rule_name: str,
    destination: str,
    fields: dict[str, Any],
    builder: FieldBuilder | None = None,
) -> Request:
    targets, session = ctx.targets, ctx.session
    if destination == "edge":
        assert targets.edge is not None  # the checker guarantees a settings block
        if targets.edge.fpid:
            _fpid(session)
        event_id, request_id = ctx.ids.event_id(), ctx.ids.request_id()
        request: Request | None = None
        if builder is not None:
            # What the send's constant fields decide, worked out on its first send.
            plan = builder.plan
            if plan is None:
                constants = builder.constants  # None: not known (closures, not generated)
                planned = None if constants is None else plan_edge_send(constants, builder.pushed)
                plan = builder.plan = planned or False
            if plan is not False:
                # plan.build's work, without its keyword call: once per planned send
                request = plan._build(
                    fields,
                    targets.edge,
                    rule_name,
                    session.identity,
                    ctx.timestamp,
                    event_id,
                    request_id,
                    ctx.now,
                    ctx.context,
                )
        if request is None:  # no plan, or a null or an identity map: the general way
            request = build_edge_request(
                fields,
                targets.edge,
                rule=rule_name,
                identity=session.identity,
                timestamp=ctx.timestamp,
                event_id=event_id,
                request_id=request_id,
                now=ctx.now,
                context=ctx.context,
            )
        check_size(request)  # refused here, before any network call, even in a dry run
        return request
    assert targets.sitecore is not None
    browser_id = session.identity.get("sitecore_browser_id")
    if not isinstance(browser_id, str):
        # The Stream API's browser id is created once per session (the dispatcher replaces
        # this one with the server's); until then the session keeps a local one.
        browser_id = ctx.ids.browser_id()
        session.identity["sitecore_browser_id"] = browser_id
    return build_sitecore_request(
        fields, targets.sitecore, rule=rule_name, browser_id=browser_id, requested_at=ctx.timestamp
    )


def _limit_histories(rule: CompiledRule, scope: Scope) -> list[tuple[str, str]]:
    """For each limit of ``rule``: the name its firings are counted under (the rule's name, or
    for ``limit … by KEYS`` the rule's name and the keys' values at this push) and the text a
    trace adds to say which key was limited."""
    if not rule.limit_keys:
        return [(rule.name, "")] * len(rule.limits)
    out: list[tuple[str, str]] = []
    for keys in rule.limit_keys:
        if not keys:
            out.append((rule.name, ""))
            continue
        values = [f(scope) for f in keys]
        key = json.dumps(
            values, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str
        )
        out.append((f"{rule.name}\x1f{key}", f" for key {key}"))
    return out


def _evaluate(ctx: _Context, rule: CompiledRule, result: PushResult) -> None:
    outcomes = result.rules
    for condition in rule.conditions:
        on_state = condition.on_state
        try:
            value = on_state(ctx.state) if on_state is not None else condition.fn(ctx.scope())
        except Exception as error:
            where = condition.span
            outcomes.append(
                RuleOutcome(
                    rule.name,
                    "failed",
                    f"{where}: {type(error).__name__}: {error}",
                    condition.source,
                    span=where,
                )
            )
            return
        if bool(value) == condition.negated:
            # The operands' values now (an element read later could read what a later push
            # kept); the reason is written from them only if someone reads it.
            status: Status = "blocked" if condition.negated else "condition_not_met"
            if on_state is not None:
                # Read from the snapshot when someone reads them: it never changes.
                outcome = RuleOutcome.stopped_at(rule.name, status, condition, (), ctx.state)
            else:
                seen = operand_values(condition, ctx.scope())
                outcome = RuleOutcome.stopped_at(rule.name, status, condition, seen)
            outcomes.append(outcome)
            return
    scope = ctx.scope()
    session = ctx.session
    sample = rule.sample
    # A bucket is below 100: a 100% sample keeps every session, without hashing its id.
    if sample is not None and sample < 100 and session.sample_bucket(rule.name) >= sample:
        reason = f"sampled out: this session is outside the rule's {sample:g}% sample"
        outcomes.append(RuleOutcome(rule.name, "sampled_out", reason, span=rule.span))
        return
    limits = rule.limits
    if limits:
        histories = _limit_histories(rule, scope)
        for (count, unit), (history, shown) in zip(limits, histories, strict=True):
            if session.limit_reached(history, count, unit, ctx.now):
                plural = "s" if count != 1 else ""
                reason = f"limited: already fired {count} time{plural} per {unit}"
                outcomes.append(RuleOutcome(rule.name, "limited", reason + shown, span=rule.span))
                return
    # Sends are added as they are built: actions before a failing one have run, as in Adobe
    # Tags.
    sends = result.sends
    for action in rule.actions:
        try:
            destination = action.destination
            if destination is None:  # a `push` action
                result.pushes.append(action.build(scope))
                continue
            build = action.build
            if type(build) is FieldBuilder:
                # A compiled send reads its constants without copying them: the request
                # builders copy what they keep and change nothing they are given.
                request = _request(ctx, rule.name, destination, build.sent(scope), build)
            else:
                request = _request(ctx, rule.name, destination, build(scope))
            sends.append(Send(rule.name, destination, request))
        except EngineError as error:
            failure = f"{action.span}: {error}"
        except Exception as error:
            failure = f"{action.span}: {type(error).__name__}: {error}"
        else:
            continue
        outcomes.append(RuleOutcome(rule.name, "failed", failure, span=action.span))
        return
    if limits:
        units_of: dict[str, list[str]] = {}
        for (_, unit), (history, _shown) in zip(limits, histories, strict=True):
            units_of.setdefault(history, []).append(unit)
        for history, units in units_of.items():  # one record per history: no double count
            session.record_firing(history, units, ctx.now)
    outcomes.append(RuleOutcome(rule.name, "fired", span=rule.span))


def notice_request(
    targets: Targets,
    session: Session,
    fields: dict[str, Any],
    *,
    name: str,
    now: float,
    ids: Ids,
    context: VisitorContext | None,
) -> Request:
    """The Edge request for ``fields`` built outside any rule (a display notification the app
    sends, :meth:`EngineSession.notify_propositions`), with the session's identity."""
    if targets.edge is None:
        raise EngineError(f"{name} goes to Edge: the ruleset needs an 'edge {{ … }}' block")
    ctx = _Context(targets, session, now, ids, context, session.state, {}, {})
    return _request(ctx, name, "edge", fields)


def process_push(
    ruleset: Ruleset,
    session: Session,
    item: object,
    *,
    now: float,
    ids: Ids | None = None,
    targets: Targets | None = None,
    context: VisitorContext | None = None,
) -> PushResult:
    """Process one push completely against ``ruleset``; the caller holds ``session.lock``.

    Raises :class:`~engine.errors.PushError` for input that is not a valid push, leaving the
    session untouched.
    """
    # `pushed` is validate's private copy: the state may keep its values without copying.
    pushed, event, state, changed = datalayer.validate_merge(
        ruleset.datalayer.merge, session.state, item
    )
    session.state = state  # the merge copied what it changed: `state` is the snapshot
    session.last_seen = now
    session.pushes += 1
    if event in PAGE_VIEW_EVENTS:
        session.new_pageview()
    result = PushResult(session.id, event, ruleset.version, state, changed=changed, ruleset=ruleset)
    targets = targets or Targets.of(ruleset)
    ctx = _Context(targets, session, now, ids or Ids(), context, state, pushed, ruleset.elements)
    for rule in ruleset.match(event, changed):
        _evaluate(ctx, rule, result)
    scope = ctx._scope
    if scope is not None:  # the scope ends with the push: its memo is the result's
        result.elements = scope.memo
    return result
