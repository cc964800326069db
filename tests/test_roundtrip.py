"""Bad pushes never escape and sessions always survive export and restore, through the public
API: a push either succeeds or raises PushError leaving the session exactly as it was, and
``engine.restore(session.export())`` gives back a session that exports the same and answers
the next push the same (README "Using it from Python"; engine/datalayer.py, engine/sessions.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine import Engine, PushError, values
from engine.datalayer import INT_MAX, INT_MIN, MAX_DEPTH
from engine.destinations.base import parse_bytes
from engine.runtime import Ids
from tests.conftest import SETTINGS, load_text
from tests.test_cli_run import replay

# Elements that read, compute and keep pushed values (in every keep scope), rules with every
# kind of count limit and a sample, sends that carry pushed subtrees and computed numbers.
RULES = """\
element total   = state.cart.total | default 0
element doubled = total * 2 | default 0 keep session
element tier    = state.user.tier keep visitor
element section = state.page.section keep pageview
element label   = "%tier% %total%"
element negated = -total
element parsed  = state.cart.code | number
element whole   = state keep session
rule "Any" {
  on "*"
  unless whole.blocked  # every push keeps the whole state
  limit 3 per session
  send event {
    type: "t.any"
    data: { total: total, doubled: doubled, tier: tier, label: label, negated: negated, parsed: parsed }
  }
}
rule "Buy" order 10 {
  on "buy"
  when total > 0 and section != "test"
  limit 2 per visitor
  limit 4 per minute
  send event { type: "commerce.purchases", xdm: { commerce.order.priceTotal: total }, data: { user: state.user } }
}
rule "Follow" {
  on "buy"
  push { event: "followed", copy: state.cart }
}
rule "Page" {
  on change page
  sample 50%
  send event { type: "t.page", data: { page: state.page, section: section, kept: whole.page } }
}
"""

MODES = ("acdl", "gtm")
IDS = Ids(event_id=lambda: "event-id", request_id=lambda: "request-id")
_RULESETS = {
    mode: load_text(
        {"a_settings.rules": SETTINGS + f'datalayer {{ merge: "{mode}" }}\n', "t.rules": RULES}
    )
    for mode in MODES
}


class Clock:
    """The pushes' clock, moved by the test."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_engine(mode: str, clock: Clock) -> Engine:
    return Engine(_RULESETS[mode], dry_run=True, clock=clock, ids=IDS)


def restore(mode: str, clock: Clock, data: dict[str, Any]) -> Any:
    """``data`` restored into a fresh engine at the moment it was last seen: the store marks a
    restored session used "now", which then leaves its last_seen as exported."""
    now = clock.now
    clock.now = data["last_seen"]
    try:
        return make_engine(mode, clock).restore(data)
    finally:
        clock.now = now


def canonical(value: Any) -> str:
    """JSON text that tells 1 from 1.0 and ignores key order; refuses NaN and Infinity."""
    return json.dumps(value, sort_keys=True, allow_nan=False, ensure_ascii=False)


def outcome(session: Any, item: object) -> tuple[str, str]:
    """What a push did, comparable across sessions: the refusal, or the JSON line and elements.
    Anything but PushError escapes and fails the test."""
    try:
        result = session.push(item)
    except PushError as error:
        return "refused", str(error)
    for each in (result, *result.followups):
        for send in each.sends:
            # What goes on the wire reads back as exactly the body built (ints included).
            assert canonical(parse_bytes(send.request.body_bytes)) == canonical(send.body)
    return "done", canonical([result.to_json(), result.elements])


def check_restorable(mode: str, clock: Clock, session: Any) -> list[Any]:
    """The session survives export and restore three ways (the export itself, its JSON text,
    its orjson bytes): each copy exports exactly what the session exports. Returns the copies."""
    exported = session.export()
    text = canonical(exported)  # json.dumps(..., allow_nan=False) accepts it
    data = orjson.dumps(exported)  # so does orjson (integers within 64 bits)
    copies = []
    for form in (exported, json.loads(text), orjson.loads(data)):
        copy = restore(mode, clock, form)
        assert canonical(copy.export()) == text
        copies.append(copy)
    return copies


def snapshot(session: Any) -> str:
    """Everything a session holds (state, kept values, counters, last_seen, firings)."""
    return canonical(session.export())


def fresh_session(mode: str, clock: Clock | None = None) -> Any:
    return make_engine(mode, clock or Clock()).session("s1", visitor="v1")


def busy_session(mode: str, clock: Clock) -> Any:
    """A session with state, kept values of every scope and firings of every limit."""
    session = make_engine(mode, clock).session("s1", visitor="v1")
    session.push({"event": "page.view", "page": {"section": "home"}, "user": {"tier": "gold"}})
    clock.now += 1
    session.push({"event": "buy", "cart": {"total": 12, "code": "7"}})
    clock.now += 1
    return session


# ------------------------------------------------------------------ the findings, reproduced
@pytest.mark.parametrize("parts", [33, 256, 499, 500, 600, 5_000])
def test_a_gtm_dotted_key_nesting_deeper_than_the_limit_is_refused(parts: int) -> None:
    """500+ parts raised RecursionError; 256-499 were accepted but made a session whose export
    could not be restored. Now: PushError naming the key (shortened) and the limit."""
    clock = Clock()
    session = busy_session("gtm", clock)
    before = snapshot(session)
    key = ".".join(["k"] * parts)
    with pytest.raises(PushError) as caught:
        session.push({"event": "buy", key: 1})
    message = str(caught.value)
    assert message.startswith('push["k.k.k.k')
    assert "…" in message and key not in message  # shortened
    assert f"{parts} parts" in message and f"{MAX_DEPTH} levels" in message
    assert snapshot(session) == before
    check_restorable("gtm", clock, session)


def test_a_gtm_dotted_key_counts_the_depth_of_its_value() -> None:
    clock = Clock()
    session = busy_session("gtm", clock)
    # the key's parts are levels 1..32 of the state: a scalar fits, a container does not
    at_limit = ".".join(["k"] * MAX_DEPTH)
    session.push({at_limit: 1})
    before = snapshot(session)
    with pytest.raises(PushError, match=f"{MAX_DEPTH} parts.*deeper than {MAX_DEPTH} levels"):
        session.push({at_limit: []})
    assert snapshot(session) == before
    shorter = ".".join(["j"] * (MAX_DEPTH - 2))
    session.push({shorter: {"x": 1}})
    with pytest.raises(PushError, match=f'^push\\["j(\\.j)*…"\\]: .*{MAX_DEPTH - 2} parts'):
        session.push({shorter: {"x": [{"y": 1}]}})
    # nested dotted keys are literal keys (data-layer-helper expands the top level only)
    session.push({"a": {".".join(["k"] * 600): 1}})
    check_restorable("gtm", clock, session)


def test_acdl_dotted_keys_are_literal_and_never_refused_for_their_parts() -> None:
    clock = Clock()
    session = busy_session("acdl", clock)
    session.push({".".join(["k"] * 600): {"x": 1}})
    check_restorable("acdl", clock, session)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "number",
    [INT_MAX + 1, INT_MIN - 1, 10**4300, -(10**4300), 10**5000, 2**100_000],
    ids=["2**64", "-2**63-1", "4301-digits", "minus-4301-digits", "5001-digits", "2**100000"],
)
@pytest.mark.parametrize("where", ["total", "nested", "event"])
def test_an_integer_beyond_64_bits_is_refused_before_the_session_changes(
    mode: str, number: int, where: str
) -> None:
    """An integer of 4,300+ digits raised ValueError (a rule's reason could not show it) after
    the session had taken the push. Now: PushError, and the session is untouched."""
    clock = Clock()
    session = busy_session(mode, clock)
    before = snapshot(session)
    item: dict[str, Any] = {
        "total": {"event": "buy", "cart": {"total": number}},
        "nested": {"event": "buy", "cart": {"items": [{"qty": 1}, {"qty": [number]}]}},
        "event": {"event": "buy", "eventInfo": {"id": number}},
    }[where]
    with pytest.raises(PushError) as caught:
        session.push(item)
    message = str(caught.value)
    assert "beyond the 64-bit range" in message
    if number.bit_length() > 128:
        assert f"{number.bit_length():,} bits" in message  # never the digits themselves
    else:
        assert str(number) in message
    assert snapshot(session) == before
    check_restorable(mode, clock, session)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("number", [INT_MAX, INT_MIN, 2**63, 2**63 - 1, 2**53 + 1, -(2**53) - 1])
def test_64_bit_integers_round_trip_exactly(mode: str, number: int) -> None:
    """Server-side ids of 64 bits, signed or not: stored, sent, exported and restored exactly."""
    clock = Clock()
    session = busy_session(mode, clock)
    total = number if number > 0 else 1  # "Buy" needs a positive total
    result = session.push({"event": "buy", "cart": {"total": total}, "user": {"id": number}})
    assert "Buy" in result.fired
    buy = next(send for send in result.sends if send.rule == "Buy")
    assert str(number).encode() in buy.request.body_bytes
    sent = parse_bytes(buy.request.body_bytes)
    assert sent["event"]["xdm"]["commerce"]["order"]["priceTotal"] == total
    assert sent["event"]["data"]["user"]["id"] == number
    for copy in check_restorable(mode, clock, session):
        assert copy.state["user"]["id"] == number
        assert type(copy.state["user"]["id"]) is int


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("total", "code"),
    [(INT_MAX, "1"), (INT_MIN, "1"), (0, "9" * 200), (0, "-" + "9" * 299), (2**63, "1")],
)
def test_numbers_rules_compute_from_pushed_ones_stay_restorable(
    mode: str, total: int, code: str
) -> None:
    """`total * 2`, `-total` and `"999…" | number` go beyond 64 bits: they become floats, as
    numbers are in JavaScript, so a kept or sent result is JSON that orjson carries too."""
    clock = Clock()
    session = fresh_session(mode, clock)
    result = session.push({"event": "x", "cart": {"total": total, "code": code}})
    assert result.fired == ["Any"]
    for name in ("doubled", "negated", "parsed"):
        value = result.elements[name]
        if type(value) is int:
            assert INT_MIN <= value <= INT_MAX
        else:
            assert type(value) is float and math.isfinite(value)
    check_restorable(mode, clock, session)


@pytest.mark.parametrize(
    ("compute", "expected"),
    [
        (lambda: values.ARITHMETIC["*"](INT_MAX, 2), float(2 * INT_MAX)),
        (lambda: values.ARITHMETIC["+"](INT_MAX, 1), float(2**64)),
        (lambda: values.ARITHMETIC["-"](INT_MIN, 1), float(INT_MIN - 1)),
        (lambda: values.ARITHMETIC["+"](INT_MAX - 1, 1), INT_MAX),  # within: exact
        (lambda: values.ARITHMETIC["*"](10**200, 10**200), None),  # beyond any float
        (lambda: values.negate(INT_MAX), -float(INT_MAX)),
        (lambda: values.negate(INT_MIN), 2**63),
        (lambda: values.negate(2.0), -2.0),
        (lambda: values.FILTERS["number"][0]("9" * 25), float("9" * 25)),
        (lambda: values.FILTERS["number"][0]("9" * 19), 10**19 - 1),
        (lambda: values.FILTERS["round"][0]("9" * 30), float("9" * 30)),
    ],
    ids=[
        "times",
        "plus",
        "minus",
        "plus-within",
        "huge",
        "neg-max",
        "neg-min",
        "neg-float",
        "number-25",
        "number-19",
        "round-30",
    ],
)
def test_computed_integers_stay_within_64_bits(compute: Any, expected: Any) -> None:
    """Rules compute from 64-bit values; beyond 64 bits a result is the nearest float (as in
    JavaScript), so whatever an element keeps, the export carries in JSON and orjson."""
    result = compute()
    assert result == expected and type(result) is type(expected)
    orjson.dumps(result)


@pytest.mark.parametrize("mode", MODES)
def test_a_state_larger_than_one_push_restores(mode: str) -> None:
    """A state grows past the per-push item limit over several pushes: restore takes it."""
    clock = Clock()
    session = busy_session(mode, clock)
    for index in range(3):
        session.push({f"list{index}": list(range(9_990))})
    assert sum(len(value) for key, value in session.state.items() if "list" in key) == 29_970
    check_restorable(mode, clock, session)


@pytest.mark.parametrize("mode", MODES)
def test_the_deepest_state_pushes_can_build_restores(mode: str) -> None:
    """MAX_DEPTH levels of state (GTM: through a dotted key too), kept whole by an element."""
    clock = Clock()
    session = busy_session(mode, clock)
    deep: Any = 1
    for _ in range(MAX_DEPTH - 1):
        deep = {"n": deep}
    session.push({"event": "x", "page": deep})  # the push's MAX_DEPTH levels
    if mode == "gtm":
        dotted = ".".join(["d"] * (MAX_DEPTH - 2))
        session.push({"event": "x", dotted: [{"leaf": 1}]})
    with pytest.raises(PushError, match=f"nested deeper than {MAX_DEPTH} levels"):
        session.push({"page": {"n": deep}})
    assert session.export()["kept"]["session"]["whole"] == session.state
    check_restorable(mode, clock, session)


def test_tagengine_run_reports_bad_pushes_and_goes_on(tmp_path: Path) -> None:
    """A 600-part dotted key ended `tagengine run` mid-file (RecursionError); now each bad line
    is reported with its number and every later line is processed."""
    rules = 'datalayer { merge: "gtm" }\nrule "Buy" { on "buy"; send event { type: "x" } }\n'
    lines = [
        json.dumps({"event": "buy", ".".join(["k"] * 600): 1}),
        json.dumps({"event": "buy", "n": 2**64}),
        '{"event": "buy", "n": 1' + "0" * 4400 + "}",  # json itself refuses it: ValueError
        json.dumps({"event": "buy", ".".join(["k"] * 300): 1}),
        json.dumps({"event": "buy", "n": 2**64 - 1}),
    ]
    run = replay(tmp_path, rules, lines, "--json")
    assert "Traceback" not in run.stderr, run.stderr[-600:]
    out = run.objects()
    assert [obj.get("line") for obj in out] == [1, 2, 3, 4, None]
    assert "32 levels" in out[0]["error"] and "beyond the 64-bit range" in out[1]["error"]
    assert out[4]["rules"] == [{"rule": "Buy", "status": "fired", "reason": None}]
    assert run.returncode == 1


# ------------------------------------------------------------------ the property
KEYS = ["page", "cart", "user", "total", "tier", "section", "code", "items", "é", "日本", "_clear"]
DOTTED = ["page.section", "cart.total", "user.tier", "cart.items.0", "a..b", ".", "x.y.z"]
_keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(DOTTED),
    st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3).map(lambda n: ".".join(["k"] * n)),
    st.text(max_size=4),
)
# Integers near every bound that matters: JavaScript's 2**53, 64 bits signed and unsigned, and
# the 4,300 digits Python converts to text by default.
_BIG_INTS = [
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    INT_MAX,
    INT_MAX + 1,
    INT_MIN,
    INT_MIN - 1,
    10**30,
    -(10**4400),
]
_NUMERIC_TEXT = ["12", " 7.5 ", "9" * 25, "-" + "9" * 299, "1e400", "0x10", "1_000"]
# Refused wherever they are: not JSON, not finite, not valid Unicode, too large in count.
_REFUSED = [math.nan, math.inf, (1,), {1}, b"x", "\ud800", [0] * 10_001]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(_BIG_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(_NUMERIC_TEXT),
)
# Refused values are rare (one leaf in 25), so most pushes go through and build up a session.
_leaves = st.integers(0, 24).flatmap(lambda n: st.sampled_from(_REFUSED) if n == 0 else _scalars)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(_keys, children, max_size=3),
        # now and then a non-string key, refused
        st.integers(0, 24).flatmap(
            lambda n: (
                st.dictionaries(st.integers(0, 2), children, min_size=1, max_size=1)
                if n == 0
                else st.dictionaries(_keys, children, max_size=3)
            )
        ),
    ),
    max_leaves=10,
)


def _nest(value: Any, levels: int, as_list: bool) -> Any:
    for _ in range(levels):
        value = [value] if as_list else {"n": value}
    return value


# Values right at the depth limit, and just beyond it.
_deep = st.builds(_nest, _values, st.integers(MAX_DEPTH - 4, MAX_DEPTH + 1), st.booleans())
_events = st.sampled_from(["buy", "page.view", "other", "", 5, None])
_objects = st.builds(
    lambda event, data, extra: (
        {**data, **extra, "event": event} if event is not None else {**data, **extra}
    ),
    _events,
    st.dictionaries(_keys, _values, max_size=4),
    # one push in four holds a value at the depth limit, or just beyond it
    st.integers(0, 3).flatmap(
        lambda n: st.dictionaries(_keys, _deep, max_size=1) if n == 0 else st.just({})
    ),
)
# Pushes shaped like the rules' data layer, so that every rule gets to fire, be limited,
# sampled out or not met, with numbers near every bound in the paths the rules compute with.
_numbers = st.one_of(
    st.integers(1, 500),  # twice: "Buy" needs a positive total, and fires up to its limits
    st.integers(-5, 500),
    st.sampled_from(_BIG_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(_NUMERIC_TEXT),
)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)  # type: ignore[arg-type]


_shaped = st.builds(
    lambda event, data: {"event": event, **data},
    st.sampled_from(["buy", "buy", "page.view", "other"]),
    _optional(
        cart=_optional(total=_numbers, code=_numbers, items=_values),
        page=_optional(section=st.sampled_from(["home", "test"]) | _values, title=st.text()),
        user=_optional(tier=st.sampled_from(["gold", "silver"]) | _values, id=_numbers),
        **{"cart.total": _numbers, "page.section": _values, "eventInfo": _values},
    ),
)
# One push in ten is not an object at all.
_items = st.integers(0, 9).flatmap(
    lambda n: st.sampled_from(["text", [1], None, 3]) if n == 0 else _shaped if n < 5 else _objects
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(MODES),
    st.text(min_size=1, max_size=3),
    st.lists(_items, min_size=1, max_size=8),
)
@example("gtm", "s1", [{"event": "buy", ".".join(["k"] * 600): 1}, {"event": "buy", "n": 10**4400}])
@example("acdl", "s1", [{"cart": {"total": INT_MAX}}, {"event": "buy", "cart": {"code": "9" * 30}}])
@example("gtm", "s2", [{"event": "buy", "cart.total": 5}] * 4)  # "Buy" is limited per visitor
def test_every_session_round_trips_and_bad_pushes_change_nothing(
    mode: str, session_id: str, items: list[Any]
) -> None:
    clock = Clock()
    session = make_engine(mode, clock).session(session_id, visitor="v1")
    for item in items:
        clock.now += 1.5
        (twin, *_) = check_restorable(mode, clock, session)
        before = snapshot(session)
        got = outcome(session, item)
        event(got[0])  # --hypothesis-show-statistics: how many pushes went through
        if got[0] == "done":
            line = json.loads(got[1])[0]
            for each in (line, *line.get("followups", ())):
                for rule in each["rules"]:
                    event(f"{rule['rule']}: {rule['status']}")
        assert outcome(twin, item) == got  # the restored session answers the same
        if got[0] == "refused":
            assert snapshot(session) == before
        assert snapshot(twin) == snapshot(session)
    check_restorable(mode, clock, session)


def test_a_rule_literal_beyond_64_bits_is_a_load_error() -> None:
    """A kept literal the session could not export and restore is refused at load time."""
    from tests.conftest import rendered_errors

    errors = rendered_errors("element big = 18446744073709551616 keep session\n")
    assert len(errors) == 1
    assert "number is too large (64 bits at most)" in errors[0]
    assert "t.rules:1:15" in errors[0]
