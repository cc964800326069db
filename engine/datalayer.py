"""The data layer: validating a pushed item, splitting it into event and data, and merging the
data into the computed state (docs/semantics.md, "A push", steps 1-3).

Everything here is pure. States are treated as immutable: a merge never changes the state it is
given; it returns a new top-level dict that shares every subtree the push did not touch, so any
state ever returned stays a valid snapshot for as long as nobody mutates it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from engine.errors import PushError
from engine.values import INT_MAX, INT_MIN, copy_json

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "Path",
    "merge",
    "merge_acdl",
    "merge_gtm",
    "split",
    "validate",
    "validate_merge",
]

# A push's limits. MAX_DEPTH bounds the state as well: both merges put every pushed value at
# the depth it has in its push (GTM's dotted keys are checked once expanded), so no sequence of
# pushes builds a state deeper than one push may be (sessions.py restores what this admits).
MAX_DEPTH = 32
MAX_ITEMS = 10_000
# Integers: exactly what every later step carries. JavaScript data layers stop at 2**53, but a
# server-side push may hold a 64-bit id, signed or unsigned, which must be stored, sent and
# restored exactly. [-2**63, 2**64 - 1] is what orjson writes and reads back exactly (request
# bodies, and an export an app stores with it); beyond it orjson refuses to write at all, and
# json fails past sys.get_int_max_str_digits() digits (4,300 by default, an app may set 640)
# in bodies, reasons, traces and exports alike. A larger number travels as a string.
# (INT_MIN and INT_MAX live in engine.values, whose arithmetic keeps to them too.)

Path = tuple[str | int, ...]

_SCALARS = (str, int, float, bool, type(None))
# A lone surrogate cannot be encoded as UTF-8: it would fail every send that reads it. (Spelled
# with chr(): mypyc refuses a lone surrogate in a literal.)
_SURROGATE = re.compile(f"[{chr(0xD800)}-{chr(0xDFFF)}]")
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_isfinite = math.isfinite


# ------------------------------------------------------------------ validate
class _Invalid(Exception):
    """Raised deep in a value; each level adds its step on the way out (no cost when valid)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str | int] = []


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _render(root: str, steps: list[str | int]) -> str:
    parts = [root]
    for step in steps:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _NAME.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{json.dumps(step, ensure_ascii=False)}]")
    return "".join(parts)


def validate(
    item: object, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS, label: str = "push"
) -> dict[str, Any]:
    """A deep copy of ``item`` if it is a JSON-like object within the limits, else
    :class:`PushError` naming the offending place (``push.cart.items[2].price: …``).

    JSON-like means exactly the types dict (str keys), list, str (valid Unicode), int (from
    ``INT_MIN`` to ``INT_MAX``: 64 bits, signed or unsigned), float (finite), bool and None;
    subclasses, tuples and sets are refused. ``max_depth`` bounds the nesting of containers
    (the item itself is level 1); ``max_items`` bounds the number of values in it, containers
    included. ``label`` names the root in messages.
    """
    if type(item) is not dict:
        raise PushError(f"{label}: expected an object, got {_type_name(item)}")
    try:
        return _quick_dict(item, 1, [max_items - 1, max_depth])
    except (_Refused, RecursionError):
        # The checking copy says what is wrong and where.
        return _checked_copy(item, max_depth=max_depth, max_items=max_items, label=label)


def _checked_copy(
    item: dict[Any, Any], *, max_depth: int, max_items: int, label: str
) -> dict[str, Any]:
    """What :func:`validate` returns or raises, naming the place of the first problem."""
    budget = [max_items]

    def copy(value: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Invalid(f"more than {max_items} values in one item")
        kind = type(value)
        if kind is dict:
            if depth > max_depth:
                raise _Invalid(f"nested deeper than {max_depth} levels")
            result: dict[str, Any] = {}
            for key, child in value.items():
                if type(key) is not str:
                    raise _Invalid(f"key {key!r} is not a string ({_type_name(key)})")
                if _SURROGATE.search(key):
                    raise _Invalid(f"key {key!r} is not valid Unicode (a lone surrogate)")
                try:
                    result[key] = copy(child, depth + 1)
                except _Invalid as error:
                    error.steps.append(key)
                    raise
            return result
        if kind is list:
            if depth > max_depth:
                raise _Invalid(f"nested deeper than {max_depth} levels")
            items: list[Any] = []
            for index, child in enumerate(value):
                try:
                    items.append(copy(child, depth + 1))
                except _Invalid as error:
                    error.steps.append(index)
                    raise
            return items
        if kind is float:
            if not math.isfinite(value):
                raise _Invalid(f"not a finite number ({value!r})")
            return value
        if kind is str:
            if _SURROGATE.search(value):
                raise _Invalid("text is not valid Unicode (a lone surrogate)")
            return value
        if kind is int and not INT_MIN <= value <= INT_MAX:
            raise _Invalid(f"{_big_int(value)} is beyond the 64-bit range of integers ({_RANGE})")
        if kind in _SCALARS:
            return value
        raise _Invalid(
            f"unsupported type {_type_name(value)} "
            "(values must be dict, list, str, int, float, bool or None)"
        )

    try:
        result: dict[str, Any] = copy(item, 1)
    except _Invalid as error:
        raise PushError(f"{_render(label, error.steps[::-1])}: {error.message}") from None
    except RecursionError:
        raise PushError(f"{label}: nested too deeply") from None
    return result


_RANGE = "-2**63 to 2**64-1; send larger numbers as strings"


def _big_int(value: int) -> str:
    # Never all the digits: past sys.get_int_max_str_digits() they cannot even be written.
    bits = value.bit_length()
    return str(value) if bits <= 128 else f"an integer of {bits:,} bits"


class _Refused(Exception):
    """Raised by the quick copy on anything :func:`validate` refuses."""


# The quick copy: what validate's checking copy does, without the bookkeeping that names the
# place of an error (a push is valid far more often than not). Scalars are checked inline and
# values are counted a container at a time; ``limits`` is [values left, maximum depth].
def _quick_dict(value: dict[Any, Any], depth: int, limits: list[int]) -> dict[str, Any]:
    limits[0] -= len(value)
    if depth > limits[1] or limits[0] < 0:
        raise _Refused
    out: dict[str, Any] = {}
    for key, child in value.items():
        if type(key) is not str or (not key.isascii() and _SURROGATE.search(key)):
            raise _Refused
        kind = type(child)
        if kind is str:
            if not child.isascii() and _SURROGATE.search(child):
                raise _Refused
        elif kind is dict:
            child = _quick_dict(child, depth + 1, limits)
        elif kind is list:
            child = _quick_list(child, depth + 1, limits)
        elif kind is int:
            if child > INT_MAX or child < INT_MIN:
                raise _Refused
        elif kind is float:
            if not _isfinite(child):
                raise _Refused
        elif kind is not bool and child is not None:
            raise _Refused
        out[key] = child
    return out


def _quick_list(value: list[Any], depth: int, limits: list[int]) -> list[Any]:
    limits[0] -= len(value)
    if depth > limits[1] or limits[0] < 0:
        raise _Refused
    out: list[Any] = []
    for child in value:
        kind = type(child)
        if kind is str:
            if not child.isascii() and _SURROGATE.search(child):
                raise _Refused
        elif kind is dict:
            child = _quick_dict(child, depth + 1, limits)
        elif kind is list:
            child = _quick_list(child, depth + 1, limits)
        elif kind is int:
            if child > INT_MAX or child < INT_MIN:
                raise _Refused
        elif kind is float:
            if not _isfinite(child):
                raise _Refused
        elif kind is not bool and child is not None:
            raise _Refused
        out.append(child)
    return out


# ------------------------------------------------------------------ split
def split(item: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(event name, data)`` of a validated item. The name is ``item["event"]`` when it is a
    non-empty string, else ``None`` (a data push). ``event`` and ``eventInfo`` never enter the
    data, whatever their values."""
    name = item.get("event")
    event = name if type(name) is str and name else None
    data = {k: v for k, v in item.items() if k != "event" and k != "eventInfo"}
    return event, data


# ------------------------------------------------------------------ all three at once
def validate_merge(
    mode: str,
    state: dict[str, Any],
    item: object,
    *,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> tuple[dict[str, Any], str | None, dict[str, Any], list[Path]]:
    """``(pushed, event, new state, changed)``: :func:`validate` of ``item``, :func:`split` of
    that and :func:`merge` of its data into ``state`` (``copy=False``), with what they return
    and raise. ACDL takes one walk of the push for the three (the push is read once, where the
    merge read the validated copy again); GTM and anything refused take them one by one, which
    say what is wrong."""
    if mode == "acdl" and type(item) is dict:
        try:
            pushed, new, changed = _walk(state, item, (), 1, [max_items - 1, max_depth], True)
        except (_Refused, RecursionError):
            pass  # the steps one by one name the problem
        else:
            name = pushed.get("event")
            return pushed, name if type(name) is str and name else None, new, changed
    pushed = validate(item, max_depth=max_depth, max_items=max_items)
    event, data = split(pushed)
    new, changed = merge(mode, state, data, copy=False)
    return pushed, event, new, changed


def _walk(
    old: dict[str, Any] | None,
    value: dict[Any, Any],
    prefix: Path,
    depth: int,
    limits: list[int],
    top: bool = False,
    changed: list[Path] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    """:func:`_quick_dict` of ``value`` and :func:`_acdl` of that copy into ``old``,
    in one walk: ``(copy, merged, changed)``. At the ``top`` level ``event`` and
    ``eventInfo`` are copied but not merged, as :func:`split` leaves them out."""
    if changed is None:
        changed = []
    limits[0] -= len(value)
    if depth > limits[1] or limits[0] < 0:
        raise _Refused
    out: dict[str, Any] = {}
    result = {} if old is None else dict(old)
    for key, child in value.items():
        if type(key) is not str or (not key.isascii() and _SURROGATE.search(key)):
            raise _Refused
        kind = type(child)
        if top and (key == "event" or key == "eventInfo"):
            if kind is dict:
                child = _quick_dict(child, depth + 1, limits)
            elif kind is list:
                child = _quick_list(child, depth + 1, limits)
            elif child is not None and kind is not bool:
                _quick_list([child], depth, [1, depth])  # a scalar: checked as in a list
            out[key] = child  # not merged
            continue
        if kind is dict:
            current = result.get(key)
            if child:
                child, result[key], _ = _walk(
                    current if type(current) is dict else None,
                    child,
                    (*prefix, key),
                    depth + 1,
                    limits,
                    False,
                    changed,
                )
            else:
                if depth >= limits[1]:  # as _quick_dict({}) one level down
                    raise _Refused
                child = {}
                if type(current) is not dict:  # `{}` over a dict keeps it as it is
                    result[key] = {}
                    changed.append((*prefix, key))
        elif child is None:
            if key in result:  # a key of `old`: deleted; an absent one stays absent
                del result[key]
                changed.append((*prefix, key))
        else:
            if kind is list:
                child, after = _clean_list(child, depth + 1, limits)
            else:
                if kind is str:
                    if not child.isascii() and _SURROGATE.search(child):
                        raise _Refused
                elif kind is int:
                    if child > INT_MAX or child < INT_MIN:
                        raise _Refused
                elif kind is float:
                    if not _isfinite(child):
                        raise _Refused
                elif kind is not bool:
                    raise _Refused
                after = child
            before = result.get(key, _ABSENT)
            result[key] = after
            if kind is str and type(before) is str:  # the commonest: text over text
                if before != after:
                    changed.append((*prefix, key))
            elif not _same(before, after):
                changed.append((*prefix, key))
        out[key] = child
    return out, result, changed


def _clean_list(value: list[Any], depth: int, limits: list[int]) -> tuple[list[Any], Any]:
    """:func:`_quick_list` of ``value`` and :func:`_without_nulls` of that copy, in one walk;
    the copy itself when it holds no null (states and pushes are never changed in place).

    (The checks of a text, a number or a boolean are written out in each walker rather than
    called: they run for every value of every push.)"""
    limits[0] -= len(value)
    if depth > limits[1] or limits[0] < 0:
        raise _Refused
    out: list[Any] = []
    clean: list[Any] = []
    same = True
    for child in value:
        kind = type(child)
        if kind is str:
            if not child.isascii() and _SURROGATE.search(child):
                raise _Refused
        elif kind is dict:
            child, kept = _clean_dict(child, depth + 1, limits)
            out.append(child)
            clean.append(kept)
            same = same and kept is child
            continue
        elif kind is list:
            child, kept = _clean_list(child, depth + 1, limits)
            out.append(child)
            clean.append(kept)
            same = same and kept is child
            continue
        elif child is None:
            out.append(None)
            same = False
            continue
        elif kind is int:
            if child > INT_MAX or child < INT_MIN:
                raise _Refused
        elif kind is float:
            if not _isfinite(child):
                raise _Refused
        elif kind is not bool:
            raise _Refused
        out.append(child)
        clean.append(child)
    return out, out if same else clean


def _clean_dict(value: dict[Any, Any], depth: int, limits: list[int]) -> tuple[dict[str, Any], Any]:
    """:func:`_clean_list` for an object in a list."""
    limits[0] -= len(value)
    if depth > limits[1] or limits[0] < 0:
        raise _Refused
    out: dict[str, Any] = {}
    clean: dict[str, Any] = {}
    same = True
    for key, child in value.items():
        if type(key) is not str or (not key.isascii() and _SURROGATE.search(key)):
            raise _Refused
        kind = type(child)
        if kind is str:
            if not child.isascii() and _SURROGATE.search(child):
                raise _Refused
        elif kind is dict:
            child, kept = _clean_dict(child, depth + 1, limits)
            out[key] = child
            clean[key] = kept
            same = same and kept is child
            continue
        elif kind is list:
            child, kept = _clean_list(child, depth + 1, limits)
            out[key] = child
            clean[key] = kept
            same = same and kept is child
            continue
        elif child is None:
            out[key] = None
            same = False
            continue
        elif kind is int:
            if child > INT_MAX or child < INT_MIN:
                raise _Refused
        elif kind is float:
            if not _isfinite(child):
                raise _Refused
        elif kind is not bool:
            raise _Refused
        out[key] = child
        clean[key] = child
    return out, out if same else clean


# ------------------------------------------------------------------ ACDL merge
def _acdl(
    old: dict[str, Any] | None,
    data: dict[str, Any],
    prefix: Path,
    changed: list[Path],
    copy: Callable[[Any], Any],
    every: bool = False,
) -> dict[str, Any]:
    """``data`` merged into ``old`` (see :func:`merge_acdl`), noting in ``changed`` the paths
    whose value differs once merged (what :func:`merge` reports), each compared as it is set;
    with ``every``, every leaf path the push sets."""
    result = {} if old is None else dict(old)
    for key, value in data.items():
        kind = type(value)
        if value is None:
            if key in result:  # a key of `old`: deleted; an absent one stays absent
                del result[key]
                changed.append((*prefix, key))
            elif every:
                changed.append((*prefix, key))
        elif kind is dict:
            current = result.get(key)
            if value:
                result[key] = _acdl(
                    current if type(current) is dict else None,
                    value,
                    (*prefix, key),
                    changed,
                    copy,
                    every,
                )
            elif type(current) is not dict:  # `{}` over a dict keeps it as it is
                result[key] = {}
                changed.append((*prefix, key))
            elif every:
                changed.append((*prefix, key))
        else:
            before = result.get(key, _ABSENT)
            after = result[key] = _without_nulls(value) if kind is list else copy(value)
            if every:
                changed.append((*prefix, key))
            elif kind is str and type(before) is str:  # the commonest: text over text
                if before != after:
                    changed.append((*prefix, key))
            elif not _same(before, after):
                changed.append((*prefix, key))
    return result


def _without_nulls(value: Any) -> Any:
    """A copy without ``null``: ACDL's merge omits it everywhere, array items included
    (``["A", null, "B"]`` is stored as ``["A", "B"]``, as its own tests pin)."""
    if type(value) is list:
        return [_without_nulls(item) for item in value if item is not None]
    if type(value) is dict:
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    return value


def merge_acdl(
    state: dict[str, Any], data: dict[str, Any], *, copy: bool = True
) -> tuple[dict[str, Any], list[Path]]:
    """Merge ``data`` into ``state`` the ACDL v3 way: objects merge recursively; arrays and
    scalars replace; ``null`` deletes the key, and is left out of arrays; a change of type
    replaces.

    Returns the new state and the leaf paths the push set (a leaf is anything but a non-empty
    object). Neither argument is changed and the result shares nothing with ``data`` (unless
    ``copy`` is false: for data nobody else holds, as :func:`validate` returns it); it shares
    with ``state`` every subtree the push did not touch.
    """
    changed: list[Path] = []
    return _acdl(state, data, (), changed, copy_json if copy else _identity, True), changed


def _identity(value: Any) -> Any:
    return value


# ------------------------------------------------------------------ GTM merge
def _js_truthy(value: Any) -> bool:
    # data-layer-helper tests `!from['_clear']`: JavaScript truthiness, where [] and {} are true.
    if type(value) is dict or type(value) is list:
        return True
    return bool(value)


def _gtm_dict(
    old: dict[str, Any] | None,
    data: dict[str, Any],
    prefix: Path,
    changed: list[Path] | None,
    expand: bool = False,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    result = {} if old is None else dict(old)
    clear = "_clear" in data and _js_truthy(data["_clear"])
    for key, value in data.items():
        if expand and "." in key:
            # data-layer-helper expands dotted keys of the pushed object itself, not deeper ones
            parts = key.split(".")
            # The parts are levels 1 to len(parts) of the state, the value's containers go below:
            # the push's depth limit holds once expanded, so no state is deeper than a push.
            # (Raising here changes nothing: the merge only builds new containers.)
            room = max_depth - len(parts)
            if room < 0 or ((type(value) is dict or type(value) is list) and _taller(value, room)):
                raise PushError(
                    f"{_render('push', [_shortened(key)])}: a dotted key of {len(parts)} parts "
                    f"nests its value deeper than {max_depth} levels once expanded "
                    "(the depth limit of a push)"
                )
            key, *rest = parts
            for step in reversed(rest):
                value = {step: value}
        if key == "_clear":
            continue
        path = (*prefix, key)
        if clear:
            result[key] = _gtm_value(None, value, path, None)
            if changed is not None:
                changed.append(path)
        else:
            result[key] = _gtm_value(result.get(key), value, path, changed)
    return result


def _taller(value: Any, levels: int) -> bool:
    """Whether ``value`` has more than ``levels`` levels of containers (a scalar has none)."""
    if levels < 0:
        return True
    kind = type(value)
    if kind is dict:
        children: Any = value.values()
    elif kind is list:
        children = value
    else:
        return False
    return levels == 0 or any(_taller(child, levels - 1) for child in children)


def _shortened(key: str, size: int = 40) -> str:
    return key if len(key) <= size else key[: size - 1] + "…"


def _gtm_list(old: list[Any] | None, data: list[Any]) -> list[Any]:
    result = [] if old is None else list(old)
    size = len(result)
    for index, value in enumerate(data):
        current = result[index] if index < size else None
        merged = _gtm_value(current, value, (), None)
        if index < size:
            result[index] = merged
        else:
            result.append(merged)
    return result


def _gtm_value(current: Any, value: Any, path: Path, changed: list[Path] | None) -> Any:
    kind = type(value)
    if kind is dict:
        merged = _gtm_dict(current if type(current) is dict else None, value, path, changed)
        if changed is not None and all(key == "_clear" for key in value):
            changed.append(path)
        return merged
    if changed is not None:
        changed.append(path)
    if kind is list:
        return _gtm_list(current if type(current) is list else None, value)
    return value


def merge_gtm(
    state: dict[str, Any], data: dict[str, Any], *, max_depth: int = MAX_DEPTH
) -> tuple[dict[str, Any], list[Path]]:
    """Merge ``data`` into ``state`` the way Google's data-layer-helper does: objects merge
    recursively, arrays merge by index, ``null`` is a value, a truthy ``_clear`` at a level
    assigns that level's values instead of merging them (``_clear`` itself never reaches the
    state), and dotted top-level keys expand (``{"a.b": 1}`` sets ``a.b``).

    A dotted key whose expansion would nest ``data`` deeper than ``max_depth`` levels (the
    object itself is level 1, as in :func:`validate`) raises :class:`PushError`.

    Returns the new state and the leaf paths the push set; under ``_clear`` each replaced key
    is one path. Neither argument is changed; the result shares nothing with ``data`` and
    shares with ``state`` every subtree the push did not touch.
    """
    changed: list[Path] = []
    return _gtm_dict(state, data, (), changed, expand=True, max_depth=max_depth), changed


def merge(
    mode: str, state: dict[str, Any], data: dict[str, Any], *, copy: bool = True
) -> tuple[dict[str, Any], list[Path]]:
    """:func:`merge_acdl` for ``"acdl"``, :func:`merge_gtm` for ``"gtm"`` (which builds new
    containers for what it merges, so ``copy`` only matters for ACDL). Raises
    :class:`PushError` for what the merge refuses (GTM: too deep a dotted key), before
    anything is changed.

    The paths returned are those whose value the push changed: a push that sets a value
    again, as it was, changes nothing (``on change`` does not fire, as Adobe's data-element
    change and ACDL's listeners do not)."""
    if mode == "acdl":
        changed: list[Path] = []
        new = _acdl(state, data, (), changed, copy_json if copy else _identity)
        return new, changed
    if mode == "gtm":
        new, paths = merge_gtm(state, data)
    else:
        raise ValueError(f"unknown merge mode {mode!r} (expected 'acdl' or 'gtm')")
    return new, [path for path in paths if not _same(_at(state, path), _at(new, path))]


_ABSENT: Any = object()


def _at(state: Any, path: Path) -> Any:
    value: Any = state
    for step in path:
        if type(value) is dict:
            if step not in value:
                return _ABSENT
            value = value[step]
        elif type(value) is list and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        else:
            return _ABSENT
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells true from 1 (Python's == does not); 1 and 1.0 are one number."""
    if a is b:
        return True
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if type(a) is dict:
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if type(a) is list:
        return type(b) is list and len(a) == len(b) and all(map(_same, a, b))
    return type(b) is not dict and type(b) is not list and bool(a == b)
