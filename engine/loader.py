"""Files → :class:`~engine.ruleset.Ruleset`: the pipeline's driver, with its caches.

A ruleset is every ``*.rules`` file of a folder, in file-name order. Each file goes through
parse → check → compile on its own, and the result is kept against the file's content digest:
in this process, and (when the app names a ``cache_dir``) on disk as the parsed syntax tree. A
reload therefore parses only the files that changed; the cross-file checks and the settings
(which read the environment) are redone on every load, and they are cheap.

The on-disk cache holds pickles: point ``cache_dir`` only at a folder as trusted as the rules.
"""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine import ast, checker, compiler, vocabulary
from engine.checker import FileFacts, check_file, check_ruleset
from engine.compiler import CompiledFile, compile_file, compile_settings
from engine.diagnostics import Diagnostic, Span
from engine.errors import RuleError
from engine.lint import ignored_files, ruleset_warnings
from engine.parser import ELEMENT_DEFINITION, GRAMMAR, RULE_DEFINITION, parse, source_lines
from engine.ruleset import CompiledGuard, CompiledRule, Ruleset
from engine.settings_fields import LoadedSettings

if TYPE_CHECKING:  # pydantic: not imported to load a ruleset (engine/settings_fields.py)
    from engine.settings import EdgeSettings

__all__ = ["clear_cache", "load_ruleset", "require_rules", "rule_files"]

# Part of every cache key: a new grammar, AST, checker or compiler invalidates what was
# cached by an older one (a cached file holds their output).
_FORMAT = hashlib.blake2b(
    "\0".join(
        [GRAMMAR]
        + [
            Path(module.__file__).read_text(encoding="utf-8")
            for module in (ast, checker, compiler, vocabulary)
            if module.__file__ is not None
        ]
    ).encode(),
    digest_size=8,
).hexdigest()


@dataclass(frozen=True, slots=True)
class _Unit:
    """One file, as far through the pipeline as it got."""

    digest: str
    facts: FileFacts
    compiled: CompiledFile | None  # None when the file has errors
    parsed: bool


_memory: dict[str, _Unit] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every file compiled in this process (the on-disk cache is left alone)."""
    with _lock:
        _memory.clear()


def rule_files(path: str | os.PathLike[str]) -> list[Path]:
    """The ``.rules`` files of a ruleset: the file itself, or a folder's, by file name."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise RuleError([_file_error(str(root), f"no such file or folder: {root}")])
    return sorted(
        (p for p in root.iterdir() if p.suffix == ".rules" and p.is_file()), key=lambda p: p.name
    )


def require_rules(path: str | os.PathLike[str], files: Sequence[Path]) -> None:
    """:class:`~engine.errors.RuleError` for a folder without a ``.rules`` file: a wrong path
    (or the files' extension mistyped) must not load as an empty ruleset that does nothing."""
    if not files and Path(path).is_dir():
        raise RuleError([_file_error(str(path), f"no .rules file in {path}")])


def _file_error(name: str, message: str) -> Diagnostic:
    return Diagnostic(Span(name, 1, 1, 1, 1), message)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _disk_path(cache_dir: Path, name: str, digest: str) -> Path:
    key = hashlib.blake2b(f"{_FORMAT}\0{name}\0{digest}".encode(), digest_size=16).hexdigest()
    return cache_dir / f"{key}.ast"


def _parse_cached(
    text: str, name: str, digest: str, cache_dir: Path | None
) -> tuple[ast.File | None, list[Diagnostic]]:
    if cache_dir is not None:
        target = _disk_path(cache_dir, name, digest)
        try:
            with target.open("rb") as handle:
                cached = pickle.load(handle)
            if isinstance(cached, ast.File):
                return cached, []
        except (OSError, pickle.PickleError, EOFError, AttributeError, ValueError, TypeError):
            pass  # absent or unreadable: parse again
    result = parse(text, name)
    if cache_dir is not None and result.file is not None and not result.diagnostics:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            with temporary.open("wb") as handle:
                pickle.dump(result.file, handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, target)
        except OSError:
            pass  # a cache that cannot be written only costs time
    return result.file, result.diagnostics


def _unit(name: str, data: bytes, cache_dir: Path | None) -> _Unit:
    digest = _digest(data)
    with _lock:
        cached = _memory.get(name)
    if cached is not None and cached.digest == digest:
        return cached
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        facts = FileFacts(name, [])
        facts.diagnostics.append(Diagnostic(Span(name, line, 1, line, 2), "file is not UTF-8 text"))
        return _Unit(digest, facts, None, parsed=False)
    text = text.removeprefix("\ufeff")
    lines = source_lines(text)
    tree, problems = _parse_cached(text, name, digest, cache_dir)
    facts = FileFacts(name, lines)
    facts.diagnostics.extend(problems)
    compiled: CompiledFile | None = None
    if tree is not None:
        try:
            checked = check_file(tree, lines)
            checked.diagnostics[:0] = problems
            facts = checked
            if not any(d.severity == "error" for d in facts.diagnostics):
                compiled = compile_file(tree, lines)
        except RecursionError:
            span, depth = _deepest(tree)
            facts.diagnostics.append(
                Diagnostic(
                    span,
                    f"this expression is nested {depth} levels deep, too deep to compile: "
                    "split it into elements",
                    source_line=lines[span.line - 1] if 0 < span.line <= len(lines) else None,
                )
            )
            compiled = None
    unit = _Unit(digest, facts, compiled, parsed=tree is not None)
    with _lock:
        _memory[name] = unit
    return unit


def _defined_in(broken: Sequence[FileFacts]) -> Callable[[str, str], bool]:
    """Whether one of the files that did not parse seems to define a name: read from its
    text, since its broken statements have no syntax tree."""
    texts = ["\n".join(facts.lines) for facts in broken]
    found: dict[str, set[str]] = {}

    def maybe_defined(kind: str, name: str) -> bool:
        if kind not in found:
            pattern = _DEFINED[kind]
            found[kind] = {match for text in texts for match in pattern.findall(text)}
        return name in found[kind]

    return maybe_defined


_DEFINED = {
    "element": ELEMENT_DEFINITION,
    "rule": RULE_DEFINITION,
    "guard": re.compile(r'^[ \t]*guard[ \t]+"((?:[^"\\\n]|\\.)*)"', re.M),
    "settings": re.compile(r"^[ \t]*(edge|sitecore)[ \t]*\{", re.M),
}


def _guarded(rule: CompiledRule, guards: Sequence[CompiledGuard]) -> CompiledRule:
    """``rule`` with the ruleset's guards' conditions before its own (a new object: the
    compiled file is cached, and another load may have other guards)."""
    held = [c for g in guards if g.name not in rule.skipped_guards for c in g.conditions]
    return replace(rule, conditions=(*held, *rule.conditions)) if held else rule


def _deepest(tree: ast.File) -> tuple[Span, int]:
    """The clause (or element) holding the most deeply nested expression, and its depth:
    found without recursion, since recursion is what failed."""
    best: tuple[Span, int] = (Span(tree.path, 1, 1, 1, 2), 0)
    stack: list[tuple[object, int, Span | None]] = [(s, 0, None) for s in tree.statements]
    while stack:
        node, depth, clause = stack.pop()
        if depth > best[1] and clause is not None:
            best = (clause, depth)
        for slot in getattr(node, "__slots__", ()):
            child = getattr(node, slot, None)
            for item in child if isinstance(child, tuple) else (child,):
                span = getattr(item, "span", None)
                if isinstance(span, Span):
                    stack.append((item, depth + 1, clause or span))
    return best


def load_ruleset(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    strict: bool = False,
    freeze: bool = False,
) -> Ruleset:
    """Load, check and compile the ruleset at ``path`` (a folder of ``.rules`` files or one
    file). Raises :class:`~engine.errors.RuleError` with every diagnostic when anything is
    wrong. ``environ`` (default ``os.environ``) is what ``env()`` reads. Warnings are kept on
    the ruleset (``Ruleset.warnings``); with ``strict`` they are errors. ``freeze`` ends a
    good load with ``gc.freeze()`` (README, "Garbage collection")."""
    files = rule_files(path)
    require_rules(path, files)
    sources: list[tuple[str, bytes]] = []
    problems: list[Diagnostic] = []
    for file in files:
        try:
            sources.append((str(file), file.read_bytes()))
        except OSError as error:
            problems.append(_file_error(str(file), f"cannot read file: {error.strerror or error}"))
    return build_ruleset(
        sources,
        cache_dir=cache_dir,
        environ=environ,
        problems=[*problems, *ignored_files(path)],
        strict=strict,
        freeze=freeze,
    )


def build_ruleset(
    sources: Iterable[tuple[str, bytes]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    problems: Iterable[Diagnostic] = (),
    strict: bool = False,
    freeze: bool = False,
) -> Ruleset:
    """:func:`load_ruleset` over in-memory sources: ``(file name, content)`` pairs.

    ``freeze``: a good load ends with ``gc.freeze()``, before the collector runs again, so
    that no collection ever scans what it built (nor anything else alive then): see README,
    "Garbage collection". What the ruleset holds has no reference cycle, so a ruleset
    dropped later (a reload) is freed by reference counting all the same."""
    disk = Path(cache_dir) if cache_dir is not None else None
    # Loading allocates many long-lived objects and no garbage cycles; the cyclic collector
    # would rescan them over and over (a third of the load time), so it waits until the end.
    if freeze:
        # The young generations' garbage first (small, a millisecond): frozen, a garbage
        # cycle would stay for good.
        gc.collect(1)
    collecting = gc.isenabled()
    gc.disable()
    try:
        ruleset = _build(sources, disk, environ, problems, strict)
        if freeze:
            # Now, while the collector is off: everything the load made sits in the youngest
            # generation, and the next collections would scan all of it, twice on its way to
            # the oldest (a 10,000-rule load: over a million objects, a stall of a second).
            gc.freeze()
        return ruleset
    finally:
        if collecting:
            gc.enable()


def _build(
    sources: Iterable[tuple[str, bytes]],
    disk: Path | None,
    environ: Mapping[str, str] | None,
    problems: Iterable[Diagnostic],
    strict: bool = False,
) -> Ruleset:
    units = [_unit(name, data, disk) for name, data in sources]
    diagnostics = list(problems)
    for unit in units:
        diagnostics.extend(unit.facts.diagnostics)
        if unit.compiled is not None:
            diagnostics.extend(unit.compiled.warnings)
    facts = [unit.facts for unit in units]
    broken = [unit.facts for unit in units if not unit.parsed]
    # A name defined in a file that did not parse may be defined in one of its broken
    # statements: its uses are not reported, but every other unknown name still is.
    cross = check_ruleset(facts, _defined_in(broken) if broken else None)
    diagnostics.extend(cross)
    by_file = {f.path: f for f in facts}

    def line_of(span: Span) -> str | None:
        lines = by_file[span.file].lines if span.file in by_file else []
        return lines[span.line - 1] if 0 < span.line <= len(lines) else None

    blocks = [s for f in facts for s in f.settings if not _has_error_in(s, f)]
    settings, setting_problems = compile_settings(blocks, line_of, environ)
    diagnostics.extend(setting_problems)
    diagnostics.extend(_primary_identity(settings, facts, line_of))
    if all(unit.parsed for unit in units):
        diagnostics.extend(ruleset_warnings(facts))
    diagnostics.sort(key=lambda d: (d.span.file, d.span.line, d.span.column))
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:  # the warnings wait: some follow from the errors (an element misspelt in a rule)
        raise RuleError(errors)
    if strict and diagnostics:  # `--strict`: a warning fails the load like an error
        raise RuleError([replace(d, severity="error") for d in diagnostics])
    compiled = [unit.compiled for unit in units if unit.compiled is not None]
    guards = [guard for c in compiled for guard in c.guards]
    version = hashlib.blake2b(
        "\0".join(f"{unit.facts.path}:{unit.digest}" for unit in units).encode(), digest_size=16
    ).hexdigest()
    return Ruleset(
        [_guarded(rule, guards) for c in compiled for rule in c.rules],
        {e.name: e for c in compiled for e in c.elements},
        [t for c in compiled for t in c.tests],
        settings=settings,
        files=tuple(unit.facts.path for unit in units),
        version=version,
        warnings=diagnostics,
    )


AUTHENTICATED_HOST = "server.adobedc.net"


def authenticated_host(edge: EdgeSettings) -> bool:
    """Whether ``edge`` sends to Edge's authenticated host (server-to-server): by its URL, or
    by the credentials that get a token for it."""
    secret = edge.client_secret.get_secret_value() if edge.client_secret is not None else None
    return _authenticated(edge.url, edge.client_id, secret)


def _authenticated(url: str, client_id: str | None, client_secret: str | None) -> bool:
    host = urlsplit(url).hostname or ""
    return (
        host == AUTHENTICATED_HOST
        or host.endswith("." + AUTHENTICATED_HOST)
        or (bool(client_id) and bool(client_secret))
    )


def _primary_identity(
    settings: LoadedSettings,
    facts: Sequence[FileFacts],
    line_of: Callable[[Span], str | None],
) -> list[Diagnostic]:
    """The authenticated host rejects an event without a primary identity (EXEG-0306-400),
    and no ECID ever comes back to fix the next ones: each send event there needs a source of
    one from its very first event. (Read from the settings' values: their models need
    pydantic, which a load does not import.)"""

    def edge(name: str) -> Any:
        return settings.value("edge", name)

    if not settings.declared("edge") or edge("fpid"):
        return []
    if not _authenticated(edge("url"), edge("client_id"), edge("client_secret")):
        return []
    host = urlsplit(edge("url")).hostname or ""
    where = host if host.endswith(AUTHENTICATED_HOST) else "client_id and client_secret are set"
    return [
        Diagnostic(
            span,
            f"this event goes to Edge's authenticated host ({where}), "
            "which rejects an event without a primary identity (EXEG-0306-400): set "
            "'fpid: true' in the edge settings (a first-party id per visitor, primary from "
            "the first event), or give this event an identityMap entry with 'primary: true'",
            source_line=line_of(span),
        )
        for file in facts
        for span, primary in file.edge_sends
        if not primary
    ]


def _has_error_in(block: ast.Settings, facts: FileFacts) -> bool:
    """Whether the checker already reported a problem inside ``block`` (then it is not
    validated again, which would only repeat the message)."""
    span = block.span
    return any(
        d.span.file == span.file and span.line <= d.span.line <= span.end_line
        for d in facts.diagnostics
    )
