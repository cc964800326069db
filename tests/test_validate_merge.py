"""One walk of a push validates, splits and merges it (issue 15): the same results, the same
errors and the same changed paths as the three steps one by one."""

from __future__ import annotations

import math
from typing import Any

import pytest

from engine import datalayer
from engine.errors import PushError

STATES: list[dict[str, Any]] = [
    {},
    {"page": {"name": "Home", "tags": ["a"]}, "cart": {"items": [{"sku": "A"}], "total": 1}},
    {"page": "text", "cart": {"total": True}, "user": {"id": 1.0}},
]

PUSHES: list[Any] = [
    {"event": "page.view", "page": {"name": "Home", "tags": ["a"]}},
    {"event": "", "eventInfo": {"list": None, "n": [1, None]}, "page": {"name": "Other"}},
    {"event": 5, "eventInfo": 3, "cart": {"items": [{"sku": "A", "x": None}, None], "total": 1}},
    {"cart": {"total": 1.0, "id": None}, "user": {"id": 1}, "page": None},
    {"cart": {"total": 1, "extra": {}}, "page": {}, "new": {}, "flag": False},
    {"cart": {"total": False}, "user": {"id": True}, "list": [[None, 1], {"a": None}]},
    {"eventInfo": {"bad": math.nan}},
    {"cart": {"total": math.inf}},
    {"cart": {1: "x"}},
    {"cart": {"items": ({"sku": "A"},)}},
    {"cart": {"id": 2**64}},
    {"event": "\ud800", "x": 1},
    {"x": {"\udc00": 1}},
    {"x": "ok \udfff"},
    {"x": {"y": {"z": {"w": 1}}}},
    {"x": [[[[1]]]], "y": {}},
    {"x": list(range(20))},
    {"x": {"y": {}}},
    ["not an object"],
    None,
]


def _attempt(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except PushError as error:
        return ("PushError", str(error))


def _one_by_one(state: dict[str, Any], item: Any, **limits: int) -> Any:
    pushed = datalayer.validate(item, **limits)
    event, data = datalayer.split(pushed)
    new, changed = datalayer.merge("acdl", state, data, copy=False)
    return pushed, event, new, changed


@pytest.mark.parametrize("item", PUSHES)
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("limits", [{}, {"max_depth": 3, "max_items": 12}, {"max_depth": 1}])
def test_one_walk_gives_what_the_three_steps_give(
    state: dict[str, Any], item: Any, limits: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = repr(state)
    expected = _attempt(_one_by_one, state, item, **limits)
    if not isinstance(expected[0], str):  # valid: the one walk alone must give it
        monkeypatch.setattr(datalayer, "validate", None)
    got = _attempt(datalayer.validate_merge, "acdl", state, item, **limits)
    assert repr(got) == repr(expected)  # repr: tells True from 1 and 1.0 from 1
    assert repr(state) == before  # the state given is never changed


def test_gtm_takes_the_steps_one_by_one() -> None:
    pushed, event, new, changed = datalayer.validate_merge(
        "gtm", {"a": [1, 2]}, {"event": "e", "a.b": [3]}
    )
    assert (event, new, changed) == ("e", {"a": {"b": [3]}}, [("a", "b")])
    assert pushed == {"event": "e", "a.b": [3]}
