"""The request builders' JSON and URL encoding: compact JSON as sent, JSON read back, nulls
dropped, percent-encoding. Pure functions on every send's path (compiled, engine/_hot.py);
:mod:`engine.destinations.base` re-exports them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from engine.errors import EvaluationError

__all__ = [
    "PLAIN_TYPES",
    "drop_nulls",
    "parse_bytes",
    "percent_encode",
    "plain_json",
    "serialize",
    "serialize_bytes",
]


# The standard library's encoder, kept for what orjson does not do as json does: it decides
# for every output that holds a null (orjson writes NaN and Infinity as null, where json
# refuses them; bodies drop their nulls, so a null there is rare), integers beyond 64 bits,
# non-string keys and extreme depth. One encoder for all: json.dumps with options builds a
# new one at each call. Bodies are built from validated (acyclic) data, so the cycle check is
# left to the recursion limit.
_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
).encode


def serialize_bytes(value: Any, *, rule: str) -> bytes:
    """Compact JSON (UTF-8, non-ASCII kept) as sent on the wire; a value JSON cannot carry
    fails the rule. orjson writes it (a tenth of the time of :mod:`json`, for every send);
    both write the same text, but for the spelling of some floats (``0.00001`` for
    ``1e-05``), which parse to the same numbers."""
    data = _orjson(value)
    if data is not None:
        return data
    try:
        return _encode(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise EvaluationError(
            f"rule {rule!r}: the send holds a value JSON cannot carry: {exc}"
        ) from exc


def plain_json(value: Any) -> bytes | None:
    """``value``'s compact JSON when it holds only plain JSON values and no null (what
    :func:`serialize_bytes` writes, and what :func:`drop_nulls` would leave as it is), else
    ``None``. ``orjson.loads`` of it is then a copy of ``value`` sharing nothing with it."""
    return _orjson(value, _PLAIN_JSON)


def _orjson(value: Any, option: int = 0) -> bytes | None:
    """``value`` as orjson writes it, or ``None`` where :mod:`json` must decide instead:
    orjson refused it (an integer beyond 64 bits, a non-string key, extreme depth) or the
    output holds a null, which may be a NaN or Infinity orjson wrote as one."""
    try:
        data = orjson.dumps(value, option=option)
    except TypeError:
        return None
    return None if b"null" in data else data


def serialize(value: Any, *, rule: str) -> str:
    """:func:`serialize_bytes` as text (a Sitecore message travels in a URL)."""
    return serialize_bytes(value, rule=rule).decode()


# Printable ASCII that a URL query value escapes ('%' first: the escapes hold one), and the
# escape of each. urllib's quote() looks every byte up in Python; here each character that
# occurs is replaced in one C pass, and one that does not costs one C scan.
_UNRESERVED_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_UNRESERVED_TEXT = re.compile(r"[A-Za-z0-9_.~-]*")
_ESCAPED_ASCII = (
    ("%", "%25"),
    *(
        (char, f"%{ord(char):02X}")
        for char in map(chr, range(32, 127))
        if char not in _UNRESERVED_CHARS and char != "%"
    ),
)


def percent_encode(text: str) -> str:
    """``urllib.parse.quote(text, safe="")``: every character but ``A-Z a-z 0-9 _ . - ~``
    as ``%XX`` escapes of its UTF-8 bytes (a Sitecore message is a whole JSON event: this
    runs on every character of every direct-mode send)."""
    if _UNRESERVED_TEXT.fullmatch(text):  # ids, keys: nothing to escape
        return text
    for char, escape in _ESCAPED_ASCII:
        if char in text:
            text = text.replace(char, escape)
    if not (text.isascii() and text.isprintable()):
        # Control characters, DEL and non-ASCII: each distinct one once, as quote() has it.
        for char in {char for char in text if not " " <= char <= "~"}:
            text = text.replace(char, quote(char, safe=""))
    return text


def parse_bytes(data: bytes | str) -> Any:
    """JSON read back (stored bodies and headers), exactly as :mod:`json` reads it: orjson (a
    third of the time) unless the text may hold a number of 19 digits or more, which orjson
    would read as a float beyond 64 bits, or orjson refuses it (``NaN``, lone surrogates).
    Raises ``ValueError`` for what is not JSON."""
    if not _long_number(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


# Digits to "0", every other byte to a space: runs of digits found with bytes.find, in C.
_DIGIT_MASK = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_RUN = b"0" * 19


def _long_number(raw: bytes) -> bool:
    """Whether ``raw`` has a run of 19 digits or more that starts a number: after ``:``,
    ``,``, ``[``, a minus sign, blanks or nothing. (Runs inside strings, an ECID say, come
    after a quote or a letter.)"""
    masked = raw.translate(_DIGIT_MASK)
    start = masked.find(_RUN)
    while start >= 0:
        index = start - 1
        while index >= 0 and raw[index] in b" \t\r\n-":
            index -= 1
        if index < 0 or raw[index] in b":,[":
            return True
        end = masked.find(b" ", start)
        if end < 0:
            return False
        start = masked.find(_RUN, end)
    return False


def drop_nulls(value: Any) -> Any:
    """A deep copy of a JSON-like value without ``null``: keys whose value is ``None`` and
    ``None`` list items are removed, and an object left empty by that removal is removed too
    (an object that was written empty stays). Containers are always fresh copies."""
    kind = type(value)
    if kind is dict or kind is list:
        # Most bodies hold no null: then an orjson round trip is the copy, in C (a fifth of
        # the time). What orjson would change or refuse (a subclass, a datetime) takes the
        # walk below; a UUID or an enum member becomes the JSON value it would be on the wire
        # anyway.
        data = _orjson(value, _PLAIN_JSON)
        if data is not None:
            return orjson.loads(data)
    return _drop(value)


_PLAIN_JSON = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _drop(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return _drop_in_dict(value)
    if kind is list or kind is tuple:
        return _drop_in_list(value)
    if isinstance(value, Mapping):
        return _drop_in_dict(value)
    return value


# Exact types first: bodies are plain dicts and lists, and an isinstance check against an ABC
# costs more than the copy itself.
_PLAIN = PLAIN_TYPES = frozenset((str, int, float, bool))
"""The exact types of JSON scalars (a value of one has nothing to drop or copy)."""


def _drop_in_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if type(item) in _PLAIN:
            out[key] = item
            continue
        cleaned = _drop(item)
        if item and not cleaned and (type(item) is dict or isinstance(item, Mapping)):
            continue
        out[key] = cleaned
    return out


def _drop_in_list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [item if type(item) in _PLAIN else _drop(item) for item in value if item is not None]
