"""The compiled, immutable form of a ruleset and its trigger index.

A :class:`Ruleset` is a snapshot: nothing in it changes after loading, so a reload builds a new
one and swaps a reference.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from engine.diagnostics import Diagnostic, Span
from engine.scope import Fn
from engine.settings_fields import LoadedSettings

if TYPE_CHECKING:  # pydantic: imported when a setting is first read (engine/settings_fields.py)
    from engine.settings import ConsentSettings, DatalayerSettings, EdgeSettings, SitecoreSettings

__all__ = [
    "CompiledAction",
    "CompiledCondition",
    "CompiledElement",
    "CompiledRule",
    "CompiledTest",
    "ConsentStep",
    "ExpectCountStep",
    "ExpectRuleStep",
    "ExpectSendStep",
    "NotTriggered",
    "PushStep",
    "Ruleset",
    "VisitorStep",
    "path_text",
    "trigger_text",
]

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, weakref_slot=True)  # see compiler._Upgrade
class CompiledElement:
    name: str
    fn: Fn
    keep: str | None
    span: Span


@dataclass(frozen=True, slots=True, weakref_slot=True)  # see compiler._Upgrade
class CompiledCondition:
    """A ``when`` (or, with ``negated``, an ``unless``) clause. ``fn`` returns a bool;
    ``operands`` are the clause's top-level operands (source text, function) so a trace can show
    the values a failing comparison saw. ``on_state``, set when the clause has first run if it
    reads nothing but the state, is the same test taking the state alone."""

    fn: Fn
    negated: bool
    source: str
    span: Span
    operands: tuple[tuple[str, Fn], ...] = ()
    guard: str | None = None  # the ruleset guard this condition belongs to
    on_state: Callable[[dict[str, Any]], Any] | None = field(
        default=None, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class CompiledGuard:
    """``guard "NAME" { … }``: conditions put in front of every rule's own (see the loader)."""

    name: str
    conditions: tuple[CompiledCondition, ...]
    span: Span


@dataclass(frozen=True, slots=True, weakref_slot=True)  # see compiler._Upgrade
class CompiledAction:
    """``send event``/``send sitecore`` (``destination`` ``"edge"``/``"sitecore"``) or ``push``.
    ``build`` returns the action's fields as a fresh dict; ``field_spans`` locate each field."""

    kind: Literal["send", "push"]
    destination: Literal["edge", "sitecore"] | None
    build: Fn
    span: Span
    field_spans: Mapping[str, Span] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    order: int
    file: str
    position: int  # index among the file's rules
    span: Span
    events: tuple[str, ...]  # exact names and globs
    changes: tuple[Path, ...]
    conditions: tuple[CompiledCondition, ...]  # `when` then `unless`, each in source order
    sample: float | None  # percent
    limits: tuple[tuple[int, str], ...]  # (count, unit)
    actions: tuple[CompiledAction, ...]
    # For each limit, the functions of its `by` keys (all empty: no keyed limit).
    limit_keys: tuple[tuple[Fn, ...], ...] = ()
    skipped_guards: frozenset[str] = frozenset()  # `skip guard "NAME"`

    @property
    def triggers(self) -> tuple[str, ...]:
        """The rule's triggers as written: ``on "page.view"``, ``on change cart.total``."""
        return (*map(trigger_text, self.events), *map(trigger_text, self.changes))


@dataclass(frozen=True, slots=True)
class PushStep:
    value: dict[str, Any]
    span: Span


@dataclass(frozen=True, slots=True)
class ExpectSendStep:
    destination: Literal["edge", "sitecore"]
    rule: str | None
    fields: tuple[tuple[Path, Any, Span], ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ExpectCountStep:
    count: int
    destination: Literal["edge", "sitecore"] | None
    rule: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class ExpectRuleStep:
    rule: str
    status: str
    span: Span


@dataclass(frozen=True, slots=True)
class ConsentStep:
    value: Literal["in", "out", "pending"]
    span: Span


@dataclass(frozen=True, slots=True)
class VisitorStep:
    fields: dict[str, Any]
    span: Span


@dataclass(frozen=True, slots=True)
class SessionStep:
    """A ``session "NAME"`` line after the test has pushed: the steps after it run in that
    session (a second visit, another tab)."""

    session: str
    span: Span


TestStep = (
    PushStep
    | ConsentStep
    | VisitorStep
    | SessionStep
    | ExpectSendStep
    | ExpectCountStep
    | ExpectRuleStep
)


@dataclass(frozen=True, slots=True)
class CompiledTest:
    name: str
    span: Span
    session: str | None
    steps: tuple[TestStep, ...]


_GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` any run of characters, ``?`` one; everything else literal (``[`` too)."""
    return re.compile(fnmatch.translate(pattern.replace("[", "[[]")), re.DOTALL)


_EVENT_MEMO = 4096  # event names a ruleset with globs remembers the rules of (names repeat)

Rules = tuple[CompiledRule, ...]
# A node of the change-trigger trie: its children by path step, the ranks of the rules watching
# exactly its path, and the ranks of the rules watching its path or a longer one under it.
_Node = tuple[dict[str | int, "_Node"], frozenset[int], frozenset[int]]


def _event_index(
    exact: dict[str, Rules], globs: dict[str, list[CompiledRule]], rank: dict[int, int]
) -> Callable[[str], Rules]:
    """The rules an event name triggers, exact names and globs together, in evaluation order.

    A glob is only tried on names that start with its literal prefix (the text before its first
    wildcard), and the answer for a name is remembered: the cost of a push does not grow with
    the number of globs."""
    by_prefix: dict[int, dict[str, list[tuple[Callable[[str], object], Rules]]]] = {}
    for pattern, rules in globs.items():
        prefix = pattern[: next(i for i, c in enumerate(pattern) if c in _GLOB_CHARS)]
        entries = by_prefix.setdefault(len(prefix), {}).setdefault(prefix, [])
        entries.append((glob_regex(pattern).match, tuple(rules)))
    lengths = tuple(sorted(by_prefix.items()))

    @lru_cache(maxsize=_EVENT_MEMO)
    def rules_of(event: str) -> Rules:
        found = list(exact.get(event, ()))
        for length, prefixes in lengths:
            for match, rules in prefixes.get(event[:length], ()):
                if match(event):
                    found.extend(rules)
        return _ranked(found, rank)

    return rules_of


def _ranked(rules: list[CompiledRule], rank: dict[int, int]) -> Rules:
    """``rules`` once each, in evaluation order."""
    if len(rules) < 2:
        return tuple(rules)
    return tuple(sorted({id(r): r for r in rules}.values(), key=lambda r: rank[id(r)]))


def _change_index(watched: list[tuple[Path, int]]) -> _Node:
    """A trie of the watched paths, keyed by step: a changed path only visits the nodes along
    it, so rules watching paths a push does not touch cost it nothing."""
    tree: dict[str, Any] = {"children": {}, "here": set(), "all": set()}
    for path, rank in watched:
        node = tree
        node["all"].add(rank)
        for step in path:
            node = node["children"].setdefault(step, {"children": {}, "here": set(), "all": set()})
            node["all"].add(rank)
        node["here"].add(rank)
    return _frozen(tree)


def _frozen(node: dict[str, Any]) -> _Node:
    # Module level, not nested: a nested recursive function is a reference cycle, garbage that
    # a gc.freeze() after the load would keep forever.
    children = {step: _frozen(child) for step, child in node["children"].items()}
    return children, frozenset(node["here"]), frozenset(node["all"])


def _touched(root: _Node, changed: Iterable[Path]) -> set[int]:
    """The ranks of the rules watching a path that one of ``changed`` touches (see
    :func:`_touches`): those watching a prefix of the changed path (met on the way down) and
    those watching the changed path or a path under it (below where the walk ends)."""
    found: set[int] = set()
    for path in changed:
        children, here, below = root
        for step in path:
            if here:
                found |= here
            node = children.get(step)
            if node is None:
                break
            children, here, below = node
        else:
            found |= below
    return found


class Ruleset:
    """An immutable, compiled ruleset.

    ``rules`` are in evaluation order (ascending ``order``, then file name, then position);
    :meth:`match` returns the rules a push triggers without scanning the others.
    ``version`` is a digest of the sources (file names and contents).
    """

    __slots__ = (
        "_changes",
        "_consent",
        "_datalayer",
        "_exact",
        "_on_event",
        "_rank",
        "_settings",
        "elements",
        "files",
        "rules",
        "tests",
        "version",
        "warnings",
    )

    _datalayer: DatalayerSettings
    _consent: ConsentSettings

    def __init__(
        self,
        rules: Iterable[CompiledRule],
        elements: Mapping[str, CompiledElement],
        tests: Iterable[CompiledTest],
        *,
        edge: EdgeSettings | None = None,
        sitecore: SitecoreSettings | None = None,
        datalayer: DatalayerSettings | None = None,
        files: tuple[str, ...],
        version: str,
        consent: ConsentSettings | None = None,
        settings: LoadedSettings | None = None,
        warnings: Iterable[Diagnostic] = (),
    ) -> None:
        """The settings are the models given, or ``settings`` (built when first read: the
        loader's, so that loading does not import pydantic); no datalayer or consent means
        the default ones."""
        ordered = sorted(rules, key=lambda r: (r.order, r.file, r.position))
        self.rules: tuple[CompiledRule, ...] = tuple(ordered)
        self.elements: Mapping[str, CompiledElement] = MappingProxyType(dict(elements))
        self.tests: tuple[CompiledTest, ...] = tuple(tests)
        if settings is None:
            settings = LoadedSettings.built(edge, sitecore, datalayer, consent)
        self._settings = settings
        self.files = files
        self.version = version
        # What loaded but deserves a look (tagengine check prints them; --strict refuses them).
        self.warnings: tuple[Diagnostic, ...] = tuple(warnings)
        self._rank = rank = {id(rule): i for i, rule in enumerate(ordered)}
        exact: dict[str, list[CompiledRule]] = {}
        globs: dict[str, list[CompiledRule]] = {}
        changes: list[tuple[Path, int]] = []
        for rule in ordered:
            for pattern in dict.fromkeys(rule.events):
                (globs if is_glob(pattern) else exact).setdefault(pattern, []).append(rule)
            changes.extend((path, rank[id(rule)]) for path in rule.changes)
        self._exact = {name: _ranked(rs, rank) for name, rs in exact.items()}
        # Without globs an exact name is one dict lookup; with them, names go through a memo.
        self._on_event = _event_index(self._exact, globs, rank) if globs else None
        self._changes = _change_index(changes) if changes else None

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, name):
            raise AttributeError(f"a Ruleset is immutable: cannot set {name!r}")
        object.__setattr__(self, name, value)

    @property
    def edge(self) -> EdgeSettings | None:
        return self._settings.edge

    @property
    def sitecore(self) -> SitecoreSettings | None:
        return self._settings.sitecore

    # Read on every push: the model is kept once built (built when first read, see __init__).
    @property
    def datalayer(self) -> DatalayerSettings:
        try:
            return self._datalayer
        except AttributeError:
            model = self._settings.datalayer
            object.__setattr__(self, "_datalayer", model)
            return model

    @property
    def consent(self) -> ConsentSettings:
        try:
            return self._consent
        except AttributeError:
            model = self._settings.consent
            object.__setattr__(self, "_consent", model)
            return model

    def __repr__(self) -> str:
        return (
            f"<Ruleset {self.version[:12]}: {len(self.rules)} rules, {len(self.elements)} "
            f"elements, {len(self.tests)} tests in {len(self.files)} files>"
        )

    def rule(self, name: str) -> CompiledRule | None:
        return next((r for r in self.rules if r.name == name), None)

    def not_triggered(self, event: str | None, changed: Iterable[Path] = ()) -> list[NotTriggered]:
        """The rules a push did *not* trigger, each with its triggers and, when one trigger
        almost matched, a near-miss message ("`on "page.veiw"`: this push was
        `page.view`"). Near misses come first, then the other rules, each group in
        evaluation order.

        This scans every rule: it is for traces, ``--json`` and failing tests, computed on
        demand (:meth:`PushResult.not_triggered`), never while a push is processed.
        """
        touched = tuple(changed)
        triggered = {id(rule) for rule in self.match(event, touched)}
        near: list[NotTriggered] = []
        others: list[NotTriggered] = []
        for rule in self.rules:
            if id(rule) in triggered:
                continue
            miss = _near_miss(rule, event, touched)
            entry = NotTriggered(rule.name, rule.triggers, miss, rule.span)
            (near if miss else others).append(entry)
        return near + others

    def match(self, event: str | None, changed: Iterable[Path] = ()) -> list[CompiledRule]:
        """The rules a push triggers, in evaluation order, each once.

        ``event`` is the pushed event name (``None`` for a data push); ``changed`` are the data
        paths the push touched (see ``change`` triggers).
        """
        found: Rules = ()
        if event:
            on_event = self._on_event
            found = self._exact.get(event, ()) if on_event is None else on_event(event)
        if self._changes is None:
            return list(found)
        ranks = _touched(self._changes, changed)
        if not ranks:
            return list(found)
        rank = self._rank
        ranks.update(rank[id(rule)] for rule in found)
        rules = self.rules
        return [rules[i] for i in sorted(ranks)]


def _touches(changed: Path, watched: Path) -> bool:
    """A push that sets ``changed`` touches ``watched`` when one is a prefix of the other
    (setting ``cart`` touches ``cart.total``; setting ``cart.total`` touches ``cart``)."""
    n = min(len(changed), len(watched))
    return changed[:n] == watched[:n]


@dataclass(frozen=True, slots=True)
class NotTriggered:
    """A rule a push did not trigger: its triggers as written (``on "page.view"``,
    ``on change cart.total``) and, when one of them almost matched, why it did not
    (``near_miss``, e.g. "`on "page.veiw"`: this push was `page.view`")."""

    rule: str
    triggers: tuple[str, ...]
    near_miss: str | None
    span: Span

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"rule": self.rule, "triggers": list(self.triggers)}
        if self.near_miss is not None:
            shown["near_miss"] = self.near_miss
        return shown


_PLAIN_STEP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def path_text(path: Path) -> str:
    """A data path as the language writes it: ``cart.items[0].sku``, ``a["b c"]``."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif _PLAIN_STEP.fullmatch(step):
            out += f".{step}" if out else step
        else:
            quoted = json.dumps(step, ensure_ascii=False)
            out += f"[{quoted}]" if out else quoted
    return out


def trigger_text(trigger: str | Path) -> str:
    """A trigger as written: ``on "event.name"`` for a name or glob, ``on change PATH``."""
    if isinstance(trigger, str):
        return f"on {json.dumps(trigger, ensure_ascii=False)}"
    return f"on change {path_text(trigger)}"


_MAX_COMPARED = 200  # longer names are not compared: the distance is quadratic


def _distance(pattern: str, text: str, glob: bool) -> int:
    """The edit distance (insertions, deletions, substitutions and swaps of two neighbours,
    each 1) from ``text`` to the nearest string ``pattern`` matches: in a glob, ``*`` matches
    any run of characters and ``?`` any one, for free. Compared without case."""
    p, t = pattern.casefold(), text.casefold()
    n = len(t)
    before: list[int] = []  # the row two pattern characters back, for swaps
    row = list(range(n + 1))
    for i, c in enumerate(p):
        if glob and c == "*":
            new = [row[0]]
            for j in range(1, n + 1):
                new.append(min(row[j], new[j - 1]))
        else:
            any_char = glob and c == "?"
            new = [row[0] + 1]
            for j in range(1, n + 1):
                cost = 0 if any_char or c == t[j - 1] else 1
                best = min(row[j] + 1, new[j - 1] + 1, row[j - 1] + cost)
                if (
                    before
                    and j > 1
                    and c == t[j - 2]
                    and p[i - 1] == t[j - 1]
                    and not (glob and "*" in (c, p[i - 1]))
                ):
                    best = min(best, before[j - 2] + 1)
                new.append(best)
        before, row = row, new
    return row[n]


def _allowed(pattern: str) -> int:
    """How many edits still make a near miss: 1 for short names, up to 3 for long ones."""
    literal = len(pattern) - sum(pattern.count(c) for c in "*?")
    return 1 if literal <= 6 else 2 if literal <= 15 else 3


def _event_miss(pattern: str, event: str) -> tuple[int, str] | None:
    if len(pattern) > _MAX_COMPARED or len(event) > _MAX_COMPARED:
        return None
    glob = is_glob(pattern)
    distance = _distance(pattern, event, glob)
    if distance > _allowed(pattern):
        return None
    text = f"`{trigger_text(pattern)}`: this push was `{event}`"
    if distance == 0:  # the same but for case
        text += " (event names are case-sensitive)"
    return distance, text


def _change_miss(watched: Path, changed: Path) -> tuple[int, str] | None:
    """A near miss when the paths are the same but for one name that is nearly the same
    (``cart.totl``, ``Cart.total``) while the rest agrees."""
    if not watched or len(changed) < len(watched):
        return None
    differ = [i for i, step in enumerate(watched) if step != changed[i]]
    if len(differ) != 1:
        return None
    want, got = watched[differ[0]], changed[differ[0]]
    if not isinstance(want, str) or not isinstance(got, str):
        return None
    if len(want) > _MAX_COMPARED or len(got) > _MAX_COMPARED:
        return None
    distance = _distance(want, got, False)
    if distance > _allowed(want):
        return None
    shown = path_text(changed[: len(watched)])
    text = f"`{trigger_text(watched)}`: this push changed `{shown}`"
    if distance == 0:
        text += " (paths are case-sensitive)"
    return distance, text


def _near_miss(rule: CompiledRule, event: str | None, changed: tuple[Path, ...]) -> str | None:
    """The message of the trigger of ``rule`` that came nearest to matching, if any came near."""
    found: list[tuple[int, str]] = []
    if event:
        for pattern in rule.events:
            miss = _event_miss(pattern, event)
            if miss is not None:
                found.append(miss)
    for watched in rule.changes:
        for path in changed:
            miss = _change_miss(watched, path)
            if miss is not None:
                found.append(miss)
                break
    if not found:
        return None
    return min(found, key=lambda miss: miss[0])[1]
