"""Requests and rule outcomes made the fast way (built as a mutable twin, then given their own
class) are the same objects as those their constructors make: equal, frozen, of their class."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from engine.destinations import base
from engine.destinations.base import READ_BACK, Request, new_request
from engine.results import RuleOutcome
from engine.ruleset import CompiledCondition
from tests.conftest import SETTINGS, load_text

ARGS: list[tuple[Any, ...]] = [
    ("edge", "Page", "POST", "https://e/x?requestId=r", (("Content-Type", "application/json"),),
     {"event": {"xdm": {"eventType": "web.webpagedetails.pageViews"}}}, b'{"event":{}}',
     "interact", "e-1", "r-1"),
    ("edge", "Page", "POST", "https://e/x", (), READ_BACK, b'{"event":{"xdm":{"a":1}}}', "collect"),
    ("sitecore", "View", "GET", "https://s/v1.2/event/create.json?message=%7B%7D", (),
     {"type": "VIEW"}, b"", "event"),
]  # fmt: skip


def test_the_twin_has_the_request_s_slots_in_order() -> None:
    assert base._Building.__slots__ == Request.__slots__


@pytest.mark.parametrize("args", ARGS)
def test_new_request_is_the_request_its_constructor_makes(args: tuple[Any, ...]) -> None:
    fast, slow = new_request(*args), Request(*args)
    assert type(fast) is Request
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.body == slow.body  # READ_BACK: parsed from the bytes on first read, in both
    assert copy.copy(fast) == slow
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert dataclasses.replace(fast, url="https://other/") == dataclasses.replace(
        slow, url="https://other/"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.url = "changed"  # type: ignore[misc]


def _condition() -> CompiledCondition:
    rule = 'rule "R" {\n  on "page.view"\n  when state.page.type == "checkout"\n  send event { type: "t" }\n}\n'
    ruleset = load_text({"a_settings.rules": SETTINGS, "t.rules": rule})
    return ruleset.rules[0].conditions[0]


def test_outcomes_made_fast_are_those_made_the_frozen_way() -> None:
    condition = _condition()
    values = (("state.page.type", "home"),)
    fast = RuleOutcome.stopped_at("R", "condition_not_met", condition, values)
    assert type(fast) is RuleOutcome
    slow = RuleOutcome("R", "condition_not_met", fast.reason, condition.source, values, fast.span)
    assert fast == slow and hash(fast) == hash(slow)
    assert fast.reason == 'when state.page.type == "checkout" was false (state.page.type = "home")'
    made = RuleOutcome("R", "limited", "limited: already fired", span=None)
    assert type(made) is RuleOutcome
    assert (made.rule, made.status, made.reason, made.clause, made.values) == (
        "R",
        "limited",
        "limited: already fired",
        None,
        (),
    )
    for outcome in (fast, made):
        with pytest.raises(dataclasses.FrozenInstanceError):
            outcome.status = "fired"
        assert copy.deepcopy(outcome) == outcome
