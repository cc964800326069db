"""The compiled, immutable form of a ruleset and its trigger index.

A :class:`Ruleset` is a snapshot: nothing in it changes after loading, so a reload builds a new
one and swaps a reference.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from engine.diagnostics import Span
from engine.scope import Fn
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
    "PushStep",
    "Ruleset",
    "VisitorStep",
]

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class CompiledElement:
    name: str
    fn: Fn
    keep: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A ``when`` (or, with ``negated``, an ``unless``) clause. ``fn`` returns a bool;
    ``operands`` are the clause's top-level operands (source text, function) so a trace can show
    the values a failing comparison saw."""

    fn: Fn
    negated: bool
    source: str
    span: Span
    operands: tuple[tuple[str, Fn], ...] = ()


@dataclass(frozen=True, slots=True)
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


TestStep = PushStep | ConsentStep | VisitorStep | ExpectSendStep | ExpectCountStep | ExpectRuleStep


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


class Ruleset:
    """An immutable, compiled ruleset.

    ``rules`` are in evaluation order (ascending ``order``, then file name, then position);
    :meth:`match` returns the rules a push triggers without scanning the others.
    ``version`` is a digest of the sources (file names and contents).
    """

    __slots__ = (
        "_change_rules",
        "_exact",
        "_globs",
        "_rank",
        "consent",
        "datalayer",
        "edge",
        "elements",
        "files",
        "rules",
        "sitecore",
        "tests",
        "version",
    )

    def __init__(
        self,
        rules: Iterable[CompiledRule],
        elements: Mapping[str, CompiledElement],
        tests: Iterable[CompiledTest],
        *,
        edge: EdgeSettings | None,
        sitecore: SitecoreSettings | None,
        datalayer: DatalayerSettings,
        files: tuple[str, ...],
        version: str,
        consent: ConsentSettings | None = None,
    ) -> None:
        ordered = sorted(rules, key=lambda r: (r.order, r.file, r.position))
        self.rules: tuple[CompiledRule, ...] = tuple(ordered)
        self.elements: Mapping[str, CompiledElement] = MappingProxyType(dict(elements))
        self.tests: tuple[CompiledTest, ...] = tuple(tests)
        self.edge = edge
        self.sitecore = sitecore
        self.datalayer = datalayer
        self.consent = consent or ConsentSettings()
        self.files = files
        self.version = version
        self._rank = {id(rule): i for i, rule in enumerate(ordered)}
        exact: dict[str, list[CompiledRule]] = {}
        globs: dict[str, list[CompiledRule]] = {}
        changes: list[tuple[Path, CompiledRule]] = []
        for rule in ordered:
            for pattern in dict.fromkeys(rule.events):
                (globs if is_glob(pattern) else exact).setdefault(pattern, []).append(rule)
            changes.extend((path, rule) for path in rule.changes)
        self._exact = {name: tuple(rs) for name, rs in exact.items()}
        self._globs = tuple((glob_regex(p).match, tuple(rs)) for p, rs in globs.items())
        self._change_rules = tuple(changes)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, name):
            raise AttributeError(f"a Ruleset is immutable: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"<Ruleset {self.version[:12]}: {len(self.rules)} rules, {len(self.elements)} "
            f"elements, {len(self.tests)} tests in {len(self.files)} files>"
        )

    def rule(self, name: str) -> CompiledRule | None:
        return next((r for r in self.rules if r.name == name), None)

    def match(self, event: str | None, changed: Iterable[Path] = ()) -> list[CompiledRule]:
        """The rules a push triggers, in evaluation order, each once.

        ``event`` is the pushed event name (``None`` for a data push); ``changed`` are the data
        paths the push touched (see ``change`` triggers).
        """
        found: list[CompiledRule] = []
        if event:
            found.extend(self._exact.get(event, ()))
            for match, rules in self._globs:
                if match(event):
                    found.extend(rules)
        if self._change_rules:
            touched = tuple(changed)
            if touched:
                for path, rule in self._change_rules:
                    if any(_touches(t, path) for t in touched):
                        found.append(rule)
        if len(found) < 2:
            return found
        rank = self._rank
        unique = {id(rule): rule for rule in found}
        return sorted(unique.values(), key=lambda r: rank[id(r)])


def _touches(changed: Path, watched: Path) -> bool:
    """A push that sets ``changed`` touches ``watched`` when one is a prefix of the other
    (setting ``cart`` touches ``cart.total``; setting ``cart.total`` touches ``cart``)."""
    n = min(len(changed), len(watched))
    return changed[:n] == watched[:n]
