"""The value semantics of the rules language: path lookup, comparisons, truthiness, filters.

Every function here is total: on values of the wrong kind it returns ``None``/``False`` as
the language reference documents, never raises. Compiled rules (:mod:`engine.compiler`) call
these at run time; the checker calls them to fold constants.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import re2

Step = str | int

# The integers the engine carries exactly: 64 bits, signed or unsigned. Pushes are refused
# beyond them (engine/datalayer.py says why) and numbers the rules compute beyond them become
# floats, as every number is in JavaScript (see _bounded).
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


# ------------------------------------------------------------------ lookup
def lookup(value: Any, path: tuple[Step, ...]) -> Any:
    """Follow ``path`` into ``value``; a missing step yields ``None``."""
    for step in path:
        if type(step) is str:
            if type(value) is dict:
                value = value.get(step)
            else:
                return None
        elif type(value) is list:
            try:
                value = value[step]  # type: ignore[index]
            except IndexError:
                return None
        else:
            return None
    return value


# ------------------------------------------------------------------ numbers and strings
def as_number(value: Any) -> int | float | None:
    """The number a value stands for: numbers (not bools), and trimmed number-like strings."""
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    if kind is str:
        match = _NUMBER.fullmatch(value)
        if match is None:
            return None
        text = match.group(1)
        if text.lstrip("+-").isdigit() and len(text) < 300:
            return int(text)
        result = float(text)
        return result if math.isfinite(result) else None
    return None


# ASCII decimal numbers only: Python's int() would also take "1_000" and other scripts' digits.
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*", re.ASCII)


def _as_datetime(value: Any) -> datetime | None:
    if type(value) is not str or len(value) < 10 or value[4:5] != "-":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed


def stringify(value: Any) -> str:
    """Text for a value inside a string: ``null`` → ``""``, objects and lists → compact JSON."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def truthy(value: Any) -> bool:
    """``null``, ``false``, ``0``, ``[]``, ``{}`` are false, and so is text that is blank,
    says no or says nothing (``""``, ``"false"``, ``"no"``, ``"off"``, ``"denied"``,
    ``"null"``, ``"undefined"``, ``"0"``; any case, trimmed): data layers and consent tools
    carry booleans as text. Everything else is true. ``| bool`` agrees."""
    if type(value) is str:
        return value.strip().lower() not in _FALSE_TEXT and as_number(value) != 0
    return bool(value)


# Text that says no (or nothing): the booleans of CMPs and data layers written as text,
# Google consent mode's "denied", and JavaScript's "null"/"undefined" turned into text.
_FALSE_TEXT = frozenset({"", "false", "no", "off", "denied", "null", "undefined"})


def as_boolean(value: str) -> bool | None:
    """The boolean a text spells (``"true"``/``"false"``, any case, trimmed), else ``None``."""
    text = value.strip().lower()
    return True if text == "true" else False if text == "false" else None


def plain_text(value: Any) -> bool:
    """Whether ``value`` is text that equals only the same text: it spells no number and no
    boolean (the fast paths of ``==`` and ``in`` compare such constants directly)."""
    return type(value) is str and as_number(value) is None and as_boolean(value) is None


# ------------------------------------------------------------------ comparisons
def equals(a: Any, b: Any) -> bool:
    """Deep equality; text that spells a number or a boolean equals that number or boolean
    (``1 == "1"``, ``true == "true"``), ``""`` never equals ``0``, ``null`` equals only
    ``null``."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is dict:
            return a.keys() == b.keys() and all(equals(a[k], b[k]) for k in a)
        if ta is list:
            return len(a) == len(b) and all(equals(x, y) for x, y in zip(a, b, strict=True))
        return bool(a == b)
    if a is None or b is None:
        return False
    if ta is bool or tb is bool:  # `"true" == true`: text spelling a boolean is that boolean
        if ta is str:
            return as_boolean(a) is b
        if tb is str:
            return as_boolean(b) is a
        return False
    na, nb = as_number(a), as_number(b)
    if na is None or nb is None:
        return False
    return na == nb


def order(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 when ``a`` and ``b`` are comparable (numbers or number-like strings, or
    ISO-8601 date-times on both sides), else ``None``."""
    if type(a) is not bool and type(b) is not bool:
        na, nb = as_number(a), as_number(b)
        if na is not None and nb is not None:
            return (na > nb) - (na < nb)
    da, db = _as_datetime(a), _as_datetime(b)
    if da is not None and db is not None:
        try:
            return (da > db) - (da < db)
        except TypeError:  # one naive, one aware: read the naive one as UTC
            da = da if da.tzinfo else da.replace(tzinfo=UTC)
            db = db if db.tzinfo else db.replace(tzinfo=UTC)
            return (da > db) - (da < db)
    return None


def less(a: Any, b: Any) -> bool:
    o = order(a, b)
    return o is not None and o < 0


def less_equal(a: Any, b: Any) -> bool:
    o = order(a, b)
    return o is not None and o <= 0


def greater(a: Any, b: Any) -> bool:
    o = order(a, b)
    return o is not None and o > 0


def greater_equal(a: Any, b: Any) -> bool:
    o = order(a, b)
    return o is not None and o >= 0


def contains(a: Any, b: Any) -> bool:
    """Substring on strings, membership on lists, key presence on objects; else false."""
    kind = type(a)
    if kind is str:
        return (type(b) is str and b in a) or (type(b) in (int, float) and stringify(b) in a)
    if kind is list:
        return any(equals(item, b) for item in a)
    if kind is dict:
        return type(b) is str and b in a
    return False


def starts_with(a: Any, b: Any) -> bool:
    return type(a) is str and type(b) is str and a.startswith(b)


def ends_with(a: Any, b: Any) -> bool:
    return type(a) is str and type(b) is str and a.endswith(b)


def member(a: Any, b: Any) -> bool:
    """``a in b``: membership in a list (deep, number-like equality), else false."""
    return type(b) is list and any(equals(a, item) for item in b)


def not_member(a: Any, b: Any) -> bool:
    return not member(a, b)


COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": equals,
    "!=": lambda a, b: not equals(a, b),
    "<": less,
    "<=": less_equal,
    ">": greater,
    ">=": greater_equal,
    "contains": contains,
    "starts with": starts_with,
    "ends with": ends_with,
    "in": member,
    "not in": not_member,
}


# ------------------------------------------------------------------ arithmetic
def _bounded(value: int) -> int | float | None:
    """An integer the engine carries: itself within INT_MIN..INT_MAX, else the nearest float
    (what JavaScript would compute), else null. A kept or sent result then stays JSON that
    orjson writes and a restored session reads back exactly."""
    if INT_MIN <= value <= INT_MAX:
        return value
    try:
        return float(value)
    except OverflowError:
        return None


def _number_result(value: float | int) -> int | float | None:
    if type(value) is float:
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    return _bounded(value)  # type: ignore[arg-type]


def add(a: Any, b: Any) -> Any:
    """Numbers (and number-like text) add; otherwise, when either side is text, the two join
    as text (``"," + 123`` is ``",123"``); ``null`` on either side, or no text, gives null."""
    if a is None or b is None:
        return None
    na, nb = as_number(a), as_number(b)
    if na is not None and nb is not None and type(a) is not bool and type(b) is not bool:
        try:
            return _number_result(na + nb)
        except OverflowError:
            return None
    if type(a) is str or type(b) is str:
        return stringify(a) + stringify(b)
    return None


def _numeric(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if type(a) is bool or type(b) is bool:
            return None
        na, nb = as_number(a), as_number(b)
        if na is None or nb is None:
            return None
        try:
            return _number_result(op(na, nb))
        except (ZeroDivisionError, OverflowError):
            return None

    return apply


ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": add,
    "-": _numeric(lambda a, b: a - b),
    "*": _numeric(lambda a, b: a * b),
    "/": _numeric(lambda a, b: a / b),
    "%": _numeric(lambda a, b: math.fmod(a, b) if b else a % b),
}


def negate(value: Any) -> Any:
    number = as_number(value) if type(value) is not bool else None
    if number is None:
        return None
    negated = -number
    return _bounded(negated) if type(negated) is int else negated


# ------------------------------------------------------------------ filters
def f_lower(v: Any) -> Any:
    return v.lower() if type(v) is str else v


def f_upper(v: Any) -> Any:
    return v.upper() if type(v) is str else v


def f_trim(v: Any) -> Any:
    return v.strip() if type(v) is str else v


def f_clean(v: Any) -> Any:
    return " ".join(v.split()) if type(v) is str else v


def f_number(v: Any) -> Any:
    if type(v) is bool:
        return int(v)
    number = as_number(v)  # a numeric string may hold up to 299 digits
    return _bounded(number) if type(number) is int else number


def f_string(v: Any) -> Any:
    return None if v is None else stringify(v)


def f_bool(v: Any) -> Any:
    return None if v is None else truthy(v)


def f_round(v: Any, digits: Any = 0) -> Any:
    number = as_number(v) if type(v) is not bool else None
    if number is None:
        return v if type(v) is not str else None
    places = int(digits) if type(digits) in (int, float) else 0
    if abs(number) >= 1e15:  # no decimals left to round at this size
        return _bounded(number) if type(number) is int else number
    if places >= 0:
        # Already within `places` decimals (most prices, whole numbers): nothing to round,
        # and the decimal arithmetic below would give the number back.
        if isinstance(number, int):  # (never a bool here)
            return number
        text = repr(number)
        point = text.find(".")
        if "e" not in text and len(text) - point - 1 <= places:
            return int(number) if number.is_integer() else number
    # Enough digits for every place asked (a float has none past ~340 decimals; the default
    # 28 digits made `round 30` of 0.5 fail).
    places = max(-400, min(places, 400))
    quantum = Decimal(1).scaleb(-places)
    context = Context(prec=max(28, places + 20))
    rounded = Decimal(str(number)).quantize(quantum, rounding=ROUND_HALF_UP, context=context)
    if places <= 0:
        return int(rounded)
    result = float(rounded)
    # A whole number is written as one (`100`, not `100.0`), as JSON.stringify writes it.
    return int(result) if result.is_integer() else result


def f_length(v: Any) -> Any:
    if v is None:
        return 0
    if type(v) in (str, list, dict):
        return len(v)
    return None


def f_join(v: Any, separator: Any = ",") -> Any:
    """The items as text, separated; ``null`` items are skipped (``["A", null, "B"]`` → ``A,B``)."""
    if type(v) is not list:
        return v
    return stringify(separator).join(stringify(item) for item in v if item is not None)


def _numbers(v: Any) -> list[int | float] | None:
    """The numbers of a list, ``null`` items skipped; ``None`` when ``v`` is not a list or an
    item is neither a number nor a number-like string (booleans are not numbers)."""
    if type(v) is not list:
        return None
    out: list[int | float] = []
    for item in v:
        if item is None:
            continue
        number = as_number(item) if type(item) is not bool else None
        if number is None:
            return None
        out.append(number)
    return out


def f_sum(v: Any) -> Any:
    numbers = _numbers(v)
    if numbers is None:
        return None
    try:
        return _number_result(
            math.fsum(numbers) if any(type(n) is float for n in numbers) else sum(numbers)
        )
    except OverflowError:
        return None


def f_min(v: Any) -> Any:
    numbers = _numbers(v)
    return _number_result(min(numbers)) if numbers else None


def f_max(v: Any) -> Any:
    numbers = _numbers(v)
    return _number_result(max(numbers)) if numbers else None


def f_count(v: Any) -> Any:
    if v is None:
        return 0
    if type(v) is list:
        return sum(1 for item in v if item is not None)
    return None


def _identity(value: Any) -> str:
    """A key equal for equal JSON values of the same types (``1`` and ``"1"`` differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def f_unique(v: Any) -> Any:
    if type(v) is not list:
        return v
    seen: set[tuple[str, str]] = set()
    out: list[Any] = []
    for item in v:
        key = (type(item).__name__, _identity(item))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def f_compact(v: Any) -> Any:
    return [item for item in v if item is not None] if type(v) is list else v


def f_sha256(v: Any) -> Any:
    """Hex SHA-256 of the UTF-8 text after trimming and lower-casing (what ad platforms expect
    of e-mail addresses); numbers are hashed as their text; anything else is ``null``."""
    kind = type(v)
    if kind is not str and kind is not int and kind is not float:
        return None
    text = stringify(v).strip().lower()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Linear-time (RE2) patterns for `redact`: e-mail addresses, then runs of 9 or more digits
# with at most two separators between digits (space, `.`, `-`, `/`, parentheses), an optional `+`.
_EMAIL = re2.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_PHONE = re2.compile(r"\+?\(?\d(?:[ .\-/()]{0,2}\d){8,}")
REDACTED = "[redacted]"


def f_redact(v: Any) -> Any:
    if type(v) is not str:
        return v
    if "@" in v:
        v = _EMAIL.sub(REDACTED, v)
    return _PHONE.sub(REDACTED, v)


def f_first(v: Any) -> Any:
    return (v[0] if v else None) if type(v) is list else v


def f_last(v: Any) -> Any:
    return (v[-1] if v else None) if type(v) is list else v


def f_default(v: Any, fallback: Any = None) -> Any:
    return fallback if v is None else v


# name → (function, argument: "none" | "optional" | "required")
FILTERS: dict[str, tuple[Callable[..., Any], str]] = {
    "lower": (f_lower, "none"),
    "upper": (f_upper, "none"),
    "trim": (f_trim, "none"),
    "clean": (f_clean, "none"),
    "default": (f_default, "required"),
    "number": (f_number, "none"),
    "string": (f_string, "none"),
    "bool": (f_bool, "none"),
    "round": (f_round, "optional"),
    "length": (f_length, "none"),
    "join": (f_join, "optional"),
    "first": (f_first, "none"),
    "last": (f_last, "none"),
    "sum": (f_sum, "none"),
    "min": (f_min, "none"),
    "max": (f_max, "none"),
    "count": (f_count, "none"),
    "unique": (f_unique, "none"),
    "compact": (f_compact, "none"),
    "sha256": (f_sha256, "none"),
    "redact": (f_redact, "none"),
}


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON-like value (much faster than ``copy.deepcopy``)."""
    kind = type(value)
    if kind is dict:
        return {k: copy_json(v) for k, v in value.items()}
    if kind is list:
        return [copy_json(v) for v in value]
    return value
