"""The data layer (docs/semantics.md, "A push", steps 1-3; research checklist items 1-11):
validation, the event/data split, and both merge modes, including structural sharing and the
changed paths that feed `change PATH` triggers."""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.datalayer import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    Path,
    _checked_copy,
    merge,
    merge_acdl,
    merge_gtm,
    split,
    validate,
)
from engine.errors import PushError
from engine.values import lookup

MODES = ("acdl", "gtm")


def push_all(mode: str, *items: Any) -> dict[str, Any]:
    """The state after pushing ``items`` in order onto an empty state, the way a push does."""
    state: dict[str, Any] = {}
    for item in items:
        _, data = split(validate(item))
        state, _ = merge(mode, state, data)
    return state


def changed(mode: str, state: dict[str, Any], data: dict[str, Any]) -> list[Path]:
    return merge(mode, state, data)[1]


# ------------------------------------------------------------------ checklist 1-5, 9: merging
@pytest.mark.parametrize("mode", MODES)
def test_objects_merge_recursively(mode: str) -> None:  # checklist 1
    state = push_all(mode, {"page": {"title": "A", "lang": "en"}}, {"page": {"title": "B"}})
    assert state == {"page": {"title": "B", "lang": "en"}}


@pytest.mark.parametrize(("mode", "expected"), [("acdl", [4]), ("gtm", [4, 2, 3])])
def test_arrays_replace_in_acdl_and_merge_by_index_in_gtm(mode: str, expected: list[int]) -> None:
    assert push_all(mode, {"a": [1, 2, 3]}, {"a": [4]}) == {"a": expected}  # checklist 2


def test_gtm_array_merge_extends_and_recurses_into_items() -> None:
    state = push_all("gtm", {"a": [{"x": 1, "y": 1}]}, {"a": [{"x": 2}, 5, None]})
    assert state == {"a": [{"x": 2, "y": 1}, 5, None]}
    assert push_all("gtm", {"a": [1, 2]}, {"a": []}) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("mode", "expected"), [("acdl", {"a": {"c": 2}}), ("gtm", {"a": {"b": None, "c": 2}})]
)
def test_null_deletes_in_acdl_and_is_a_value_in_gtm(mode: str, expected: Any) -> None:
    assert push_all(mode, {"a": {"b": 1, "c": 2}}, {"a": {"b": None}}) == expected  # checklist 3


def test_acdl_null_on_last_key_leaves_an_empty_object_and_null_on_missing_is_harmless() -> None:
    assert push_all("acdl", {"a": {"b": 1}}, {"a": {"b": None}}) == {"a": {}}
    assert push_all("acdl", {"a": 1}, {"zz": None}) == {"a": 1}
    assert push_all("acdl", {"a": {"b": 1}}, {"a": None}) == {}
    # nulls inside a fresh object are deletions too, never stored
    assert push_all("acdl", {"n": {"x": None, "y": {"z": None}}}) == {"n": {"y": {}}}


def test_gtm_clear_replaces_at_its_level_and_never_reaches_state() -> None:  # checklist 4
    state = push_all(
        "gtm",
        {"one": {"two": {"three": 3}}, "five": [1, 2]},
        {"one": {"two": {"four": 4}}, "five": [3], "_clear": True},
    )
    assert state == {"one": {"two": {"four": 4}}, "five": [3]}


def test_gtm_clear_nested_keeps_siblings_and_strips_every_clear_key() -> None:
    state = push_all(
        "gtm",
        {"a": {"b": [1, 2, 3], "c": 1}, "d": 1},
        {"a": {"_clear": True, "b": [9], "e": {"f": 1, "_clear": True}}},
        {"g": {"_clear": False, "h": 1}},
    )
    assert state == {"a": {"b": [9], "c": 1, "e": {"f": 1}}, "d": 1, "g": {"h": 1}}
    assert "_clear" not in json.dumps(state)


def test_gtm_clear_uses_javascript_truthiness() -> None:
    base = {"a": [1, 2, 3]}
    assert push_all("gtm", base, {"a": [9], "_clear": 1}) == {"a": [9]}
    assert push_all("gtm", base, {"a": [9], "_clear": []}) == {"a": [9]}
    assert push_all("gtm", base, {"a": [9], "_clear": 0}) == {"a": [9, 2, 3]}
    assert push_all("gtm", base, {"a": [9], "_clear": ""}) == {"a": [9, 2, 3]}


def test_acdl_treats_clear_and_dotted_keys_literally() -> None:
    state = push_all("acdl", {"a": [1, 2]}, {"a": [3], "_clear": True, "x.y": 1})
    assert state == {"a": [3], "_clear": True, "x.y": 1}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ({"x": "s"}, {"x": {"y": 1}}, {"x": {"y": 1}}),
        ({"x": [1]}, {"x": {"y": 1}}, {"x": {"y": 1}}),
        ({"x": {"y": 1}}, {"x": [1]}, {"x": [1]}),
        ({"x": {"y": 1}}, {"x": "s"}, {"x": "s"}),
        ({"x": 1}, {"x": [2]}, {"x": [2]}),
        ({"x": 1}, {"x": {}}, {"x": {}}),
    ],
)
def test_a_change_of_type_replaces(mode: str, first: Any, second: Any, expected: Any) -> None:
    assert push_all(mode, first, second) == expected  # checklist 5


def test_gtm_dotted_keys_expand_at_the_top_level_only() -> None:  # checklist 9
    assert push_all("gtm", {"a.b": 1}, {"a.c": 2}) == {"a": {"b": 1, "c": 2}}
    assert push_all("gtm", {"x": {"a.b": 1}}) == {"x": {"a.b": 1}}
    assert push_all("gtm", {"a": {"z": 0}}, {"a.b.c": None}) == {"a": {"z": 0, "b": {"c": None}}}


def test_acdl_keeps_dotted_keys_reachable_by_a_key_step() -> None:  # checklist 9
    state = push_all("acdl", {"a.b": 1}, {"a.c": 2})
    assert state == {"a.b": 1, "a.c": 2}
    assert lookup(state, ("a.b",)) == 1
    assert lookup(state, ("a", "b")) is None


@pytest.mark.parametrize("mode", MODES)
def test_path_lookup_on_the_merged_state(mode: str) -> None:  # checklist 10
    state = push_all(mode, {"cart": {"items": [{"sku": "S1"}, {"sku": "S2"}]}, "p": "text"})
    assert lookup(state, ("cart", "items", 1, "sku")) == "S2"
    assert lookup(state, ("x", "y", "z")) is None
    assert lookup(state, ("p", "q")) is None
    assert lookup(state, ("cart", "items", 7, "sku")) is None


def test_merge_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown merge mode 'ga4'"):
        merge("ga4", {}, {})


# ------------------------------------------------------------------ checklist 6-7: split
def test_event_info_goes_to_the_event_only() -> None:  # checklist 6
    item = validate({"event": "click", "eventInfo": {"ref": "c1"}, "cart": {"n": 3}})
    name, data = split(item)
    assert name == "click"
    assert data == {"cart": {"n": 3}}
    assert item == {"event": "click", "eventInfo": {"ref": "c1"}, "cart": {"n": 3}}
    for mode in MODES:
        assert merge(mode, {}, data)[0] == {"cart": {"n": 3}}


@pytest.mark.parametrize("event", ["", 5, None, True, ["click"], {"name": "click"}])
def test_an_empty_or_non_string_event_makes_a_data_push(event: Any) -> None:  # checklist 7
    name, data = split(validate({"event": event, "eventInfo": 1, "k": 1}))
    assert name is None
    assert data == {"k": 1}


def test_a_bare_event_has_no_data() -> None:
    assert split({"event": "page.view"}) == ("page.view", {})


# ------------------------------------------------------------------ checklist 8, 11: validation
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("text", "push: expected an object, got str"),
        (5, "push: expected an object, got int"),
        (1.5, "push: expected an object, got float"),
        ([{"a": 1}], "push: expected an object, got list"),
        (None, "push: expected an object, got None"),
        ((("a", 1),), "push: expected an object, got tuple"),
        (OrderedDict(a=1), "push: expected an object, got OrderedDict"),
        (
            {"cart": {"items": [{}, {}, {"price": math.nan}]}},
            "push.cart.items[2].price: not a finite number (nan)",
        ),
        ({"x": math.inf}, "push.x: not a finite number (inf)"),
        ({"x": [-math.inf]}, "push.x[0]: not a finite number (-inf)"),
        ({"a": {1: "one"}}, "push.a: key 1 is not a string (int)"),
        ({("a",): 1}, "push: key ('a',) is not a string (tuple)"),
        ({"a": (1, 2)}, "push.a: unsupported type tuple"),
        ({"a": {1, 2}}, "push.a: unsupported type set"),
        ({"a": [object()]}, "push.a[0]: unsupported type object"),
        ({"a b": {"c.d": b"x"}}, 'push["a b"]["c.d"]: unsupported type bytes'),
        ({"n": IntEnum("N", "ONE").ONE}, "push.n: unsupported type N"),
        ({"d": OrderedDict()}, "push.d: unsupported type OrderedDict"),
    ],
)
def test_invalid_items_are_refused_with_the_place_named(item: Any, message: str) -> None:
    with pytest.raises(PushError) as caught:
        validate(item)
    assert str(caught.value).startswith(message)


def test_the_unsupported_type_message_lists_what_is_accepted() -> None:
    with pytest.raises(PushError, match=r"dict, list, str, int, float, bool or None"):
        validate({"a": (1,)})


def nested(depth: int) -> dict[str, Any]:
    """An object with ``depth`` levels of containers (the object itself is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_depth_limit_counts_containers_from_the_item() -> None:
    assert validate(nested(32)) == nested(32)
    with pytest.raises(PushError, match=r"^push(\.n){32}: nested deeper than 32 levels$"):
        validate(nested(33))
    assert validate(nested(3), max_depth=3) == nested(3)
    with pytest.raises(PushError, match="nested deeper than 2 levels"):
        validate({"a": [[1]]}, max_depth=2)


def test_a_cyclic_value_is_refused_not_looped_on() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(PushError, match="nested deeper than 32 levels"):
        validate(cyclic)


def test_item_count_limit_includes_containers() -> None:
    item = {"a": [1, 2, 3]}  # the item, the list and three numbers: 5 values
    assert validate(item, max_items=5) == item
    with pytest.raises(PushError, match=r"^push\.a\[2\]: more than 4 values in one item$"):
        validate(item, max_items=4)


def test_scalars_of_every_kind_are_accepted() -> None:
    item = {"s": "x", "i": -3, "big": INT_MAX, "f": 0.5, "t": True, "f2": False, "n": None}
    assert validate(item) == item
    assert validate({"low": [INT_MIN], "ids": [2**53 + 1, 2**63]}) == {
        "low": [INT_MIN],
        "ids": [2**53 + 1, 2**63],
    }


def test_the_integer_range_is_64_bits_signed_or_unsigned() -> None:
    assert (INT_MIN, INT_MAX) == (-(2**63), 2**64 - 1)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": 2**64}, "push.id: 18446744073709551616 is beyond the 64-bit range of integers"),
        ({"a": [1, -(2**63) - 1]}, "push.a[1]: -9223372036854775809 is beyond the 64-bit range"),
        ({"n": 2**128 - 1}, f"push.n: {2**128 - 1} is beyond"),
        # never the digits of a long one: past 4,300 of them Python cannot even write them
        ({"n": {"m": 2**129}}, "push.n.m: an integer of 130 bits is beyond"),
        ({"n": -(10**5000)}, "push.n: an integer of 16,610 bits is beyond"),
        ({"eventInfo": {"id": 2**100_000}}, "push.eventInfo.id: an integer of 100,001 bits"),
    ],
    ids=["2**64", "-2**63-1", "128-bits", "129-bits", "5001-digits", "2**100000"],
)
def test_integers_beyond_64_bits_are_refused_with_the_place_named(
    item: dict[str, Any], message: str
) -> None:
    with pytest.raises(PushError) as caught:
        validate(item)
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith("(-2**63 to 2**64-1; send larger numbers as strings)")


def test_validate_returns_a_deep_copy() -> None:  # checklist 11
    item: dict[str, Any] = {"cart": {"items": [{"sku": "a"}]}}
    copied = validate(item)
    assert copied == item
    item["cart"]["items"][0]["sku"] = "changed"
    item["cart"]["items"].append({})
    assert copied == {"cart": {"items": [{"sku": "a"}]}}


# Values validate must take and values it must refuse, mixed: tuples, sets, non-string keys,
# non-finite floats, lone surrogates, dict and str subclasses.
_ODD = [
    INT_MAX + 1,
    INT_MIN - 1,
    10**4000,
    math.inf,
    -math.inf,
    math.nan,
    "\ud800",
    (1,),
    {1},
    b"x",
    OrderedDict(),
    IntEnum("E", "a").a,
]
_odd_scalars = st.sampled_from(_ODD)
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)
# Odd values are rare (about one leaf in 20), so that a tree often holds exactly one of them:
# with many, the first refusal hides whether the others would have been refused.
_any_value = st.recursive(
    st.integers(0, 19).flatmap(lambda n: _odd_scalars if n == 0 else _json_scalars),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), children, max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=4), _any_value, max_size=5),
    st.integers(1, 6),
    st.integers(1, 40),
)
def test_the_quick_copy_agrees_with_the_checking_copy(
    item: dict[str, Any], depth: int, count: int
) -> None:
    """validate's fast path accepts and refuses exactly what the checking copy does."""
    try:
        expected: Any = _checked_copy(item, max_depth=depth, max_items=count, label="push")
    except PushError as error:
        expected = str(error)
    try:
        got: Any = validate(item, max_depth=depth, max_items=count)
    except PushError as error:
        got = str(error)
    assert type(got) is type(expected)
    if isinstance(got, str):
        assert got == expected
    else:  # as JSON text: both refuse NaN, and == would not see a tuple kept as a tuple
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("odd", [*_ODD, "caf\u00e9 \U0001f600"])
@pytest.mark.parametrize("where", ["value", "list item", "nested", "key"])
def test_the_quick_copy_decides_each_odd_value_wherever_it_is(odd: Any, where: str) -> None:
    if where == "key":
        item: Any = {"ok": 1, odd if isinstance(odd, str) else 3: 1}
    else:
        wrapped = {"value": odd, "list item": [1, odd], "nested": {"a": [{"b": odd}]}}[where]
        item = {"ok": [1, {"x": "y"}], "here": wrapped}
    try:
        expected: Any = _checked_copy(item, max_depth=32, max_items=100, label="push")
    except PushError as error:
        expected = str(error)
    try:
        got: Any = validate(item)
    except PushError as error:
        got = str(error)
    assert type(got) is type(expected)
    assert got == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", ["x", 1, [1], None, {"a": math.nan}, {"a": {2: 1}}, nested(40)])
def test_a_refused_push_leaves_state_untouched(mode: str, bad: Any) -> None:  # checklist 8
    state = push_all(mode, {"page": {"title": "A"}})
    before = copy.deepcopy(state)
    with pytest.raises(PushError):
        _, data = split(validate(bad))
        state, _ = merge(mode, state, data)
    assert state == before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [{"a": [INT_MAX + 1]}, {"b": {"c": -(10**4400)}}])
def test_a_push_with_too_large_an_integer_leaves_state_untouched(mode: str, bad: Any) -> None:
    state = push_all(mode, {"page": {"title": "A"}})
    with pytest.raises(PushError, match="beyond the 64-bit range"):
        push_all(mode, {"page": {"title": "A"}}, bad)
    assert state == {"page": {"title": "A"}}


# ------------------------------------------------------------------ GTM dotted keys and depth
def _height(value: Any) -> int:
    """Levels of containers in ``value`` (a scalar has none)."""
    if type(value) is dict:
        return 1 + max(map(_height, value.values()), default=0)
    if type(value) is list:
        return 1 + max(map(_height, value), default=0)
    return 0


def _dotted(parts: int) -> str:
    return ".".join(f"k{index}" for index in range(parts))


@pytest.mark.parametrize(
    ("parts", "value", "fits"),
    [
        (2, 1, True),
        (MAX_DEPTH, 1, True),
        (MAX_DEPTH, {}, False),  # an empty object is a level too, as in validate
        (MAX_DEPTH, [], False),
        (MAX_DEPTH + 1, 1, False),
        (MAX_DEPTH - 1, {"x": 1}, True),
        (MAX_DEPTH - 1, [[1]], False),
        (MAX_DEPTH - 3, {"a": [1, {"b": None}]}, True),
        (MAX_DEPTH - 3, {"a": [1, {"b": {}}]}, False),
        (500, 1, False),  # was a RecursionError
        (100_000, 1, False),
    ],
)
def test_a_gtm_dotted_key_must_keep_the_state_within_the_depth_limit(
    parts: int, value: Any, fits: bool
) -> None:
    """The key's parts are levels 1..parts of the state and the value's containers come below:
    a dotted key is accepted exactly when its expansion would pass validate."""
    state = push_all("gtm", {"page": {"title": "A"}})
    item = {"event": "x", _dotted(parts): value}
    assert (parts + _height(value) <= MAX_DEPTH) is fits
    if fits:
        new, _ = merge_gtm(state, split(validate(item))[1])
        assert _height(new) == max(parts + _height(value), 2)
        validate(new)  # the state is as valid as a push
        return
    with pytest.raises(PushError) as caught:
        merge_gtm(state, split(validate(item))[1])
    message = str(caught.value)
    shown = _dotted(parts) if len(_dotted(parts)) <= 40 else _dotted(parts)[:39] + "…"
    assert message == (
        f"push[{json.dumps(shown, ensure_ascii=False)}]: a dotted key of {parts} parts nests "
        f"its value deeper than {MAX_DEPTH} levels once expanded (the depth limit of a push)"
    )
    assert state == {"page": {"title": "A"}}


def test_the_gtm_depth_limit_can_be_given() -> None:
    assert merge_gtm({}, {"a.b": {"c": 1}}, max_depth=3)[0] == {"a": {"b": {"c": 1}}}
    with pytest.raises(PushError, match=r'^push\["a\.b"\]: .* 2 parts .* deeper than 2 levels'):
        merge_gtm({}, {"a.b": {"c": 1}}, max_depth=2)
    with pytest.raises(PushError, match="deeper than 32 levels"):
        merge("gtm", {}, {_dotted(33): 1})


def test_acdl_and_nested_gtm_dotted_keys_are_literal_whatever_their_parts() -> None:
    key = _dotted(1_000)
    assert push_all("acdl", {key: {"x": 1}}) == {key: {"x": 1}}
    assert push_all("gtm", {"a": {key: 1}}) == {"a": {key: 1}}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b.c", "a.b.c.d", "_clear"]),
            st.recursive(
                st.integers(0, 1),
                lambda inner: (
                    st.lists(inner, max_size=2)
                    | st.dictionaries(st.sampled_from(["a", "b", "_clear"]), inner, max_size=2)
                ),
                max_leaves=8,
            ),
        ),
        max_size=5,
    ),
    st.integers(2, 6),
)
def test_no_merge_builds_a_state_deeper_than_a_push(
    pushes: list[dict[str, Any]], depth: int
) -> None:
    """Whatever pushes are accepted, in either mode, the state stays within the push depth
    limit, so whatever a session holds restores under the same limit."""
    for mode in MODES:
        state: dict[str, Any] = {}
        for item in pushes:
            try:
                data = split(validate(item, max_depth=depth))[1]
                if mode == "gtm":
                    state, _ = merge_gtm(state, data, max_depth=depth)
                else:
                    state, _ = merge(mode, state, data)
            except PushError:
                continue
            assert _height(state) <= depth
            validate(state, max_depth=depth)


def test_a_label_names_the_root() -> None:
    with pytest.raises(PushError, match=r"^session export: state\.x: not a finite number"):
        validate({"x": math.nan}, label="session export: state")


# ------------------------------------------------------------------ changed paths
@pytest.mark.parametrize("mode", MODES)
def test_changed_paths_are_the_leaves_the_push_set(mode: str) -> None:
    data = {"cart": {"total": 5, "items": [{"sku": "a"}], "meta": {}}, "user": "u"}
    assert changed(mode, {}, data) == [
        ("cart", "total"),
        ("cart", "items"),
        ("cart", "meta"),
        ("user",),
    ]
    assert changed(mode, {"cart": {"total": 1}}, {"cart": None}) == [("cart",)]
    # a value set again as it was is no change (on change fires when the value changes)
    assert changed(mode, {"a": 1}, {"a": 1}) == []
    assert changed(mode, {"a": 1}, {"a": True}) == [("a",)]  # true is not 1
    assert changed(mode, {"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) == []
    assert changed(mode, {"a": 1}, {}) == []


def test_changed_paths_for_deletion_and_gtm_specials() -> None:
    # deleting what is there is a change; deleting what was never there is none
    assert changed("acdl", {"a": {"b": 1}}, {"a": {"b": None, "c": None}}) == [("a", "b")]
    assert changed("gtm", {}, {"a.b": 1, "a.c": {"d": 2}}) == [("a", "b"), ("a", "c", "d")]
    assert changed("gtm", {"a": [1, 2]}, {"a": [{"x": 1}]}) == [("a",)]
    # under _clear a key is replaced whole, so its path is reported, not the leaves below it
    assert changed("gtm", {}, {"one": {"two": {"three": 3}}, "five": [3], "_clear": True}) == [
        ("one",),
        ("five",),
    ]
    # `_clear` alone assigns nothing: `a` keeps its value, so nothing changed
    assert changed("gtm", {"a": {"b": 1}}, {"a": {"_clear": True}}) == []


def test_a_watched_path_below_a_replaced_object_is_covered() -> None:
    # `change cart.total` must fire when cart becomes a string or null
    for mode in MODES:
        paths = changed(mode, {"cart": {"total": 5}}, {"cart": "gone"})
        assert paths == [("cart",)]


def watcher_fires(watched: Path, paths: list[Path]) -> bool:
    """`change PATH` semantics: a changed path and the watched one are prefixes of each other."""
    return any(p[: len(watched)] == watched[: len(p)] for p in paths)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("data", "fires"),
    [
        ({"page": {"title": "A"}}, True),
        ({"page": None}, True),
        ({"page": {"lang": "en"}}, False),
        ({"other": 1}, False),
        ({"page": {"title": {"main": "A"}}}, True),
    ],
)
def test_a_path_watcher_on_page_title(mode: str, data: Any, fires: bool) -> None:  # checklist 16
    state = push_all(mode, {"page": {"title": "T", "lang": "de"}})
    assert watcher_fires(("page", "title"), changed(mode, state, data)) is fires


# ------------------------------------------------------------------ structural sharing
@pytest.mark.parametrize("mode", MODES)
def test_merge_shares_untouched_subtrees_and_never_mutates(mode: str) -> None:
    state = push_all(
        mode,
        {
            "page": {"title": "A", "meta": {"k": [1, 2]}},
            "user": {"id": "u1", "prefs": {"x": 1}},
            "cart": {"items": [1]},
        },
    )
    frozen = copy.deepcopy(state)
    data = {"page": {"title": "B"}, "cart": {"items": [9]}}
    data_before = copy.deepcopy(data)
    new, _ = merge(mode, state, data)

    assert state == frozen and data == data_before
    assert new is not state
    assert new["user"] is state["user"]
    assert new["page"] is not state["page"]
    assert new["page"]["meta"] is state["page"]["meta"]
    assert new["page"]["title"] == "B"
    assert new["cart"]["items"] is not data["cart"]["items"]


@pytest.mark.parametrize("mode", MODES)
def test_old_states_stay_valid_snapshots(mode: str) -> None:
    snapshots: list[tuple[dict[str, Any], dict[str, Any]]] = []
    state: dict[str, Any] = {}
    pushes = [
        {"page": {"title": "A", "tags": [1, 2, 3]}},
        {"page": {"title": None, "tags": [4]}},
        {"page": "flat", "cart": {"n": 1}},
        {"cart": {"n": 2, "items": [{"sku": "a"}]}},
        {"cart": {"items": [{"sku": "b", "q": 2}]}},
    ]
    for data in pushes:
        state, _ = merge(mode, state, data)
        snapshots.append((state, copy.deepcopy(state)))
    for snapshot, frozen in snapshots:
        assert snapshot == frozen


def test_merge_cost_does_not_copy_a_large_untouched_state() -> None:
    big = {f"k{i}": {"v": i, "deep": {"x": [i]}} for i in range(2000)}
    state: dict[str, Any] = {"big": big, "small": {"a": 1}}
    for mode in MODES:
        new, _ = merge(mode, state, {"small": {"a": 2}})
        assert new["big"] is big
        assert all(new["big"][k] is big[k] for k in ("k0", "k1999"))


# ------------------------------------------------------------------ properties against a model
def _reference_acdl(to: dict[str, Any], data: dict[str, Any]) -> None:
    for key, value in data.items():
        if value is None:
            to.pop(key, None)
        elif type(value) is dict:
            if type(to.get(key)) is not dict:
                to[key] = {}
            _reference_acdl(to[key], value)
        else:
            to[key] = _omit_nulls(copy.deepcopy(value))


def _omit_nulls(value: Any) -> Any:
    """ACDL's customMerge ends with omitDeep(v === null): nulls go from arrays too."""
    if type(value) is list:
        return [_omit_nulls(v) for v in value if v is not None]
    if type(value) is dict:
        return {k: _omit_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_acdl_leaves_nulls_out_of_arrays_as_its_own_tests_pin() -> None:
    # adobe-client-data-layer's customMerge: omitDeep(object, v => v === null || v === undefined)
    state, _ = merge_acdl({}, {"cart": {"items": ["A", None, "B", {"sku": None, "n": 1}]}})
    assert state == {"cart": {"items": ["A", "B", {"n": 1}]}}
    engine_state, _ = merge_gtm({}, {"cart": {"items": ["A", None, "B"]}})
    assert engine_state == {"cart": {"items": ["A", None, "B"]}}  # GTM keeps null as a value


def _strip_clear(value: Any) -> Any:
    if type(value) is dict:
        return {k: _strip_clear(v) for k, v in value.items() if k != "_clear"}
    if type(value) is list:
        return [_strip_clear(v) for v in value]
    return value


def _js_truthy(value: Any) -> bool:
    return True if type(value) in (dict, list) else bool(value)


def _reference_gtm_merge(source: Any, to: Any) -> None:
    """data-layer-helper's `merge(from, to)`, in place, with `_clear` stripped everywhere."""
    allow = not (type(source) is dict and _js_truthy(source.get("_clear")))
    pairs = source.items() if type(source) is dict else enumerate(source)
    for key, value in pairs:
        if key == "_clear":
            continue
        current = to[key] if (key in to if type(to) is dict else key < len(to)) else None
        if type(value) in (list, dict) and allow:
            if type(current) is not type(value):
                current = [] if type(value) is list else {}
            _reference_gtm_merge(value, current)
            new = current
        else:
            new = _strip_clear(copy.deepcopy(value))
        if type(to) is list and key == len(to):
            to.append(new)
        else:
            to[key] = new


def _reference_gtm(state: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    model = copy.deepcopy(state)
    clear = {"_clear": data["_clear"]} if "_clear" in data else {}
    for key, value in data.items():
        head, *rest = key.split(".")
        for step in reversed(rest):
            value = {step: value}
        if head != "_clear":
            _reference_gtm_merge({head: value, **clear}, model)
    return model


_keys = st.sampled_from(["a", "b", "c", "_clear"])
_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "s"])
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)
_top_keys = st.sampled_from(["a", "b", "c", "a.b", "b.a.c", "_clear"])
_objects = st.dictionaries(_top_keys, _values, max_size=4)


def _containers(value: Any) -> set[int]:
    found: set[int] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) in (dict, list):
            found.add(id(node))
            stack.extend(node.values() if type(node) is dict else node)
    return found


def _differences(old: Any, new: Any, path: Path = ()) -> list[Path]:
    if type(old) is dict and type(new) is dict:
        out: list[Path] = []
        for key in old.keys() | new.keys():
            out += _differences(old.get(key, _MISSING), new.get(key, _MISSING), (*path, key))
        return out
    return [] if old == new and type(old) is type(new) else [path]


_MISSING = object()


@settings(max_examples=300, deadline=None)
@given(st.lists(_objects, min_size=1, max_size=5))
def test_acdl_merge_matches_an_in_place_model(pushes: list[dict[str, Any]]) -> None:
    _check_against_model(merge_acdl, _reference_acdl_copy, pushes)


@settings(max_examples=300, deadline=None)
@given(st.lists(_objects, min_size=1, max_size=5))
def test_gtm_merge_matches_data_layer_helper(pushes: list[dict[str, Any]]) -> None:
    _check_against_model(merge_gtm, _reference_gtm, pushes)


def _reference_acdl_copy(state: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    model = copy.deepcopy(state)
    _reference_acdl(model, data)
    return model


def _check_against_model(fn: Any, model: Any, pushes: list[dict[str, Any]]) -> None:
    state: dict[str, Any] = {}
    for data in pushes:
        state_before, data_before = copy.deepcopy(state), copy.deepcopy(data)
        new, paths = fn(state, data)
        assert new == model(state, data)
        assert state == state_before and data == data_before
        assert not _containers(new) & _containers(data)
        # every difference is covered by a changed path (a change trigger on it fires)
        for difference in _differences(state, new):
            assert any(p[: len(difference)] == difference[: len(p)] for p in paths), difference
        state = new
