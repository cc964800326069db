"""Running the rule files' ``test`` blocks (language spec, "Tests").

Each test runs in a fresh engine with its own session store and a recording transport, so tests
never touch the network and never see each other's sessions. Steps run in order; an ``expect``
sees every send and rule outcome of the pushes before it:

* ``expect send DEST [from "RULE"] { path: value, … }`` passes when one such send matches every
  path (compared with the language's ``==``). Edge paths are read in the event object
  (``xdm.…``, ``data.…``) and then in the whole body (``query.…``, ``meta.…``); Sitecore paths
  in the event object.
* ``expect N send[s] [DEST] [from "RULE"]`` counts them; ``expect no send`` is ``expect 0``.
* ``expect rule "RULE" STATUS`` checks the rule's status on the latest push that considered it.

When an ``expect`` naming a rule fails because the rule was never triggered, the failure names
the rule's triggers and, when one of them nearly matched a push before it, the latest near miss
(:meth:`PushResult.not_triggered`)::

    expect rule "Page view" fired (line 9): the rule was not triggered by any push
        its triggers: on "page.veiw"
        near miss, push of line 8: `on "page.veiw"`: this push was `page.view`

A failing ``expect send`` naming no rule lists the near misses of the pushes before it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.context import VisitorContext
from engine.diagnostics import Span
from engine.engine import Engine
from engine.errors import EngineError
from engine.results import PushResult, RuleOutcome, Send
from engine.ruleset import (
    CompiledTest,
    ConsentStep,
    ExpectCountStep,
    ExpectRuleStep,
    ExpectSendStep,
    PushStep,
    Ruleset,
    SessionStep,
    VisitorStep,
)
from engine.stores.memory import MemorySessions
from engine.transports import RecordingTransport
from engine.values import lookup

__all__ = ["TestReport", "run_test", "run_tests"]

_DESTINATION_WORD = {"edge": "event", "sitecore": "sitecore"}
_counter = itertools.count(1)


@dataclass(slots=True)
class TestReport:
    name: str
    span: Span
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _path_text(path: tuple[str | int, ...]) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif out and "." not in step:
            out += f".{step}"
        elif out:
            out += f'["{step}"]'
        else:
            out = step
    return out


def read_path(send: Send, path: tuple[str | int, ...]) -> Any:
    """The value at ``path`` in a send's body, as an ``expect`` addresses it."""
    body = send.body
    if send.destination == "edge" and isinstance(body, dict):
        event = body.get("event")
        if event is None and isinstance(body.get("events"), list) and body["events"]:
            event = body["events"][0]
        found = lookup(event, path)
        if found is not None:
            return found
    return lookup(body, path)


def _describe(step: ExpectSendStep | ExpectCountStep) -> str:
    word = _DESTINATION_WORD[step.destination] if step.destination else ""
    source = f' from "{step.rule}"' if step.rule else ""
    return f"{word}{source}".strip()


def _candidates(sends: Iterable[Send], step: ExpectSendStep | ExpectCountStep) -> list[Send]:
    return [
        s
        for s in sends
        if (step.destination is None or s.destination == step.destination)
        and (step.rule is None or s.rule == step.rule)
    ]


Pushed = list[tuple[int, PushResult]]  # each push of a test so far (its line), with followups


def _why_not(
    ruleset: Ruleset, rule: str | None, pushed: Pushed, latest: dict[str, RuleOutcome]
) -> list[str]:
    """For a failing ``expect`` about ``rule``: when no push triggered it, its triggers and the
    latest push's near miss; with no rule named, the near misses of every push so far.
    Computed only for a failure."""
    if rule is None:
        return [
            f'near miss of rule "{entry.rule}", push of line {line}: {entry.near_miss}'
            for line, result in pushed
            for entry in result.not_triggered()
            if entry.near_miss is not None
        ]
    outcome = latest.get(rule)
    if outcome is not None:  # triggered: say why it did not fire, if it did not
        if outcome.status == "fired":
            return []
        return [
            f'"{rule}" was {outcome.status}' + (f": {outcome.reason}" if outcome.reason else "")
        ]
    compiled = ruleset.rule(rule)
    if compiled is None:
        return []
    triggers = ", ".join(compiled.triggers)
    lines = [f'"{rule}" was not triggered by any push; its triggers: {triggers}']
    for line, result in reversed(pushed):  # the latest near miss
        miss = next((e.near_miss for e in result.not_triggered() if e.rule == rule), None)
        if miss is not None:
            lines.append(f"near miss, push of line {line}: {miss}")
            break
    return lines


def _lines(head: str, details: list[str]) -> str:
    return "\n".join([head, *(f"    {detail}" for detail in details)])


def same_json(actual: Any, expected: Any) -> bool:
    """Whether a request carries exactly the expected JSON: a test of what goes on the wire
    tells the text "true" from true and "1" from 1 (1 and 1.0 are one JSON number)."""
    ta, te = type(actual), type(expected)
    if ta is dict and te is dict:
        return actual.keys() == expected.keys() and all(
            same_json(actual[k], expected[k]) for k in actual
        )
    if ta is list and te is list:
        return len(actual) == len(expected) and all(
            same_json(a, e) for a, e in zip(actual, expected, strict=True)
        )
    if ta in (int, float) and te in (int, float):
        return bool(actual == expected)
    return ta is te and bool(actual == expected)


def _check_send(
    step: ExpectSendStep,
    sends: list[Send],
    ruleset: Ruleset,
    pushed: Pushed,
    latest: dict[str, RuleOutcome],
) -> str | None:
    candidates = _candidates(sends, step)
    what = f"expect send {_describe(step)}"
    if not candidates:
        total = len(sends)
        head = f"{what} (line {step.span.line}): no such send ({total} send{'s' if total != 1 else ''} in all)"
        return _lines(head, _why_not(ruleset, step.rule, pushed, latest))
    best: list[tuple[str, Any, Any]] = []
    for send in candidates:
        misses = []
        for path, expected, _ in step.fields:
            actual = read_path(send, path)
            if not same_json(actual, expected):
                misses.append((_path_text(path), expected, actual))
        if not misses:
            return None
        if not best or len(misses) < len(best):
            best = misses
    lines = [f"{what} (line {step.span.line}): no send matches; the closest differs in:"]
    for path_text, expected, actual in best:
        lines.append(f"    - {path_text}: {_show(expected)}")
        lines.append(f"    + {path_text}: {_show(actual)}")
    return "\n".join(lines)


def _check_count(
    step: ExpectCountStep,
    sends: list[Send],
    ruleset: Ruleset,
    pushed: Pushed,
    latest: dict[str, RuleOutcome],
) -> str | None:
    found = len(_candidates(sends, step))
    if found == step.count:
        return None
    noun = "send" if step.count == 1 else "sends"
    scope = _describe(step)
    head = f"expect {step.count} {noun}{' ' + scope if scope else ''} (line {step.span.line}): got {found}"
    if found > step.count or step.rule is None:
        return head
    return _lines(head, _why_not(ruleset, step.rule, pushed, latest))


def _check_rule(
    step: ExpectRuleStep, ruleset: Ruleset, pushed: Pushed, latest: dict[str, RuleOutcome]
) -> str | None:
    outcome = latest.get(step.rule)
    head = f'expect rule "{step.rule}" {step.status} (line {step.span.line})'
    if outcome is None:
        why = _why_not(ruleset, step.rule, pushed, latest)[1:]  # the head says "not triggered"
        compiled = ruleset.rule(step.rule)
        if compiled is not None:
            why.insert(0, f"its triggers: {', '.join(compiled.triggers)}")
        return _lines(f"{head}: the rule was not triggered by any push", why)
    if outcome.status == step.status:
        return None
    reason = f": {outcome.reason}" if outcome.reason else ""
    return f"{head}: it was {outcome.status}{reason}"


def run_test(ruleset: Ruleset, test: CompiledTest) -> TestReport:
    """Run one test block against ``ruleset``."""
    report = TestReport(test.name, test.span)
    engine = Engine(
        ruleset,
        dry_run=True,
        transport=RecordingTransport(),
        sessions=MemorySessions(),
        freeze_gc=False,  # a scratch engine per test: nothing long-lived to freeze
    )
    first = test.session or f"test-{next(_counter)}"
    session = engine.session(first)
    sends: list[Send] = []
    pushed: Pushed = []
    latest: dict[str, RuleOutcome] = {}
    context: VisitorContext | None = None
    for step in test.steps:
        if isinstance(step, VisitorStep):
            context = VisitorContext(**step.fields)  # who pushes from here on
            continue
        if isinstance(step, PushStep):
            try:
                result = session.push(step.value, context=context)
            except EngineError as error:
                report.failures.append(f"push (line {step.span.line}) was rejected: {error}")
                continue
            sends.extend(result.released)  # held while consent was pending, sent now
            for each in (result, *result.followups):
                _absorb(each, sends, latest)
                pushed.append((step.span.line, each))
            continue
        if isinstance(step, ConsentStep):
            sends.extend(session.set_consent(step.value).released)
            continue
        if isinstance(step, SessionStep):
            session = engine.session(step.session, visitor=first)  # the same visitor
            continue
        if isinstance(step, ExpectSendStep):
            failure = _check_send(step, sends, ruleset, pushed, latest)
        elif isinstance(step, ExpectCountStep):
            failure = _check_count(step, sends, ruleset, pushed, latest)
        else:
            failure = _check_rule(step, ruleset, pushed, latest)
        if failure:
            report.failures.append(failure)
    return report


def _absorb(result: PushResult, sends: list[Send], latest: dict[str, RuleOutcome]) -> None:
    sends.extend(send for send in result.sends if send.consent is None)  # what goes out
    for outcome in result.rules:
        latest[outcome.rule] = outcome


def run_tests(ruleset: Ruleset) -> list[TestReport]:
    return [run_test(ruleset, test) for test in ruleset.tests]
