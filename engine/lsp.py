"""``tagengine lsp``: a language server for ``.rules`` files, on pygls, over stdio.

The ruleset is the folder: every check builds the open document together with the other
``.rules`` files of its folder (the editor's unsaved text replacing what is on disk) through
:func:`engine.loader.build_ruleset`, exactly as ``tagengine check`` would, and publishes every
diagnostic of every file of the folder (and clears those that were fixed).

Completion, hover and go to definition read the folder's text with plain patterns, not the
parser: they keep working while the file being typed does not parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from engine import vocabulary
from engine.diagnostics import Diagnostic, Span
from engine.errors import RuleError
from engine.loader import build_ruleset, rule_files
from engine.parser import ELEMENT_DEFINITION, RULE_DEFINITION
from engine.settings import SETTINGS_MODELS
from engine.values import FILTERS

__all__ = ["create_server", "serve"]

SOURCE = "tagengine"

# ------------------------------------------------------------------ what the words mean
FILTER_DOCS: dict[str, str] = {
    "lower": "lower-cases a string",
    "upper": "upper-cases a string",
    "trim": "removes leading and trailing whitespace",
    "clean": "trims and collapses runs of whitespace into one space",
    "default": '`default X`: X when the value is null or missing (never replaces `""`, `0` or `false`)',
    "number": 'converts to a number (a number-like string such as `"129.90"`), else null',
    "string": "converts to a string",
    "bool": "converts to a boolean",
    "round": "`round [N]`: rounds a number to N decimals (default 0)",
    "length": "the length of a string, list or object",
    "join": '`join "SEP"`: joins a list into a string (null items skipped)',
    "first": "the first item of a list",
    "last": "the last item of a list",
    "sum": "the sum of a list's numbers (null items skipped)",
    "min": "the smallest of a list's numbers (null items skipped)",
    "max": "the largest of a list's numbers (null items skipped)",
    "count": "the number of non-null items of a list",
    "unique": "the list without repeated items (the first of each is kept)",
    "compact": "the list without its null items",
    "sha256": "hex SHA-256 of the text, trimmed and lower-cased first (hashed e-mails for ad platforms)",
    "redact": 'replaces e-mail addresses and phone-like digit runs with "[redacted]"',
}

EDGE_FIELD_DOCS: dict[str, str] = {
    "type": "the XDM event type (`xdm.eventType`), e.g. `web.webpagedetails.pageViews`",
    "xdm": "the XDM object of the event; dotted keys expand into nested objects",
    "data": "free-form data sent beside XDM (`data.__adobe.analytics.eVar10` …)",
    "documentUnloading": "the page is unloading: the Web SDK sends with `sendBeacon`",
    "renderDecisions": "render the personalization content the response carries",
    "edgeConfigOverrides": "datastream configuration overrides for this event (`datastreamId` …)",
    "personalization": "personalization options: `decisionScopes`, `surfaces`, "
    "`sendDisplayEvent`, `includeRenderedPropositions`, `defaultPersonalizationEnabled`, "
    "`decisionContext`",
    "decisionScopes": "deprecated alias of `personalization.decisionScopes` (at most 30)",
    "datasetId": "sends the event to this dataset instead of the datastream's",
    "mergeId": "deprecated: the merge id of events to merge",
    "identityMap": "shortcut for `xdm.identityMap`: namespaces to identities "
    "(`{ ECID: [{ id: …, primary: true }] }`)",
    "propositions": "(ours) the propositions a `decisioning.*` notification is about",
}

PERSONALIZATION_FIELD_DOCS: dict[str, str] = {
    "decisionScopes": "the decision scopes to fetch (at most 30)",
    "surfaces": "the surfaces to fetch propositions for (`web://…`, `#fragment`)",
    "sendDisplayEvent": "whether the Edge Network records a display for rendered propositions",
    "includeRenderedPropositions": "include the propositions rendered by this event",
    "defaultPersonalizationEnabled": "whether the default scope (`__view__`) is fetched",
    "decisionContext": "context data for rule-based decisioning",
}

SITECORE_FIELD_DOCS: dict[str, str] = {
    "type": "the event type (required): `VIEW`, `IDENTITY`, `ADD`, `CONFIRM`, `CHECKOUT`, "
    "`PAYMENT`, `SEARCH`, or a custom upper-case type",
    "channel": "the channel (default from the settings: `WEB`)",
    "language": 'the language, a tag such as `"en-GB"` sent as `EN` (here or in the settings)',
    "currency": "the ISO 4217 currency code (here or in the settings)",
    "page": "the page name",
    "pos": "the point of sale (default from the settings)",
    "ext": "custom attributes (at most 50), sent under `ext`",
    "identifiers": "the guest's identifiers (`[{ provider: …, id: … }]`), for IDENTITY events",
    "email": "the guest's e-mail address (checked)",
    "first_name": "the guest's first name",
    "last_name": "the guest's last name",
    "dob": "the guest's date of birth (checked)",
    "status": "the order status (checked)",
    "order": "the order of an ORDER_CHECKOUT event (`order.status`, `order.currencyCode`, "
    "`order.cardType` are checked)",
    "page_variant_id": "sent as `ext.pageVariantId`",
    "referrer": "the referring page",
    "product": "the product of an ADD event",
}

ROOT_DOCS: dict[str, str] = {
    "state": "`state.PATH`: the computed data-layer state as of this push (event-time snapshot)",
    "event": "`event.PATH`: the pushed object itself (`event.event` is the event name)",
    "request": "`request.bot`, `request.user_agent`, `request.accept_language`, "
    "`request.referer`: what is known of the visitor's request behind the push",
    "env": '`env("NAME", "default")`: an environment variable, read when the ruleset loads',
}

REQUEST_FIELD_DOCS: dict[str, str] = {
    "bot": "whether the visitor's user agent is a known crawler (`false` without a context)",
    "user_agent": "the visitor's User-Agent header",
    "accept_language": "the visitor's Accept-Language header",
    "referer": "the visitor's Referer header",
}

KEYWORD_DOCS: dict[str, str] = {
    "rule": '`rule "NAME" [order N] { … }`: a rule',
    "element": "`element NAME = EXPR [keep pageview|session|visitor]`: a named data element",
    "test": '`test "NAME" { … }`: a rule test, run by `tagengine test`',
    "on": '`on "event.name", "glob.*", change PATH`: what triggers the rule (any of them)',
    "when": "`when EXPR`: a condition; all must be true",
    "unless": "`unless EXPR`: an exception; any true one blocks the rule",
    "sample": "`sample P%`: keep only P% of sessions",
    "limit": "`limit N per session|visitor|minute|hour|day [by KEY, …]`: a frequency cap on "
    "firings (with `by`, counted apart for each distinct key value)",
    "send": "`send event { … }` (Adobe Edge Network) or `send sitecore { … }` (Sitecore CDP)",
    "push": "`push { … }`: a push to the data layer",
    "expect": "`expect send …`, `expect N sends …`, `expect no send …`, `expect rule …` in a test",
    "keep": "`keep pageview|session|visitor`: the element's last non-null value is kept",
    "order": "`order N`: rules fire in ascending order (default 50)",
    "change": "`on change PATH`: a push that changes the value at PATH",
    "guard": '`guard "NAME" { when …; unless … }`: conditions every rule meets before its own',
    "skip": '`skip guard "NAME"`: this rule is not held by that guard',
    "setup": "`setup { … }`: steps every test of this file starts with",
}

RULE_CLAUSES = ("on", "when", "unless", "sample", "limit", "send", "push", "skip")
TEST_CLAUSES = ("push", "expect", "session", "consent", "request")
TOP_LEVEL = ("rule", "element", "test", "guard", "setup", *SETTINGS_MODELS)

# ------------------------------------------------------------------ reading the folder
_ELEMENT = ELEMENT_DEFINITION
_RULE = RULE_DEFINITION
_EVENT_FIELD = re.compile(r'\bevent[ \t]*:[ \t]*"((?:[^"\\\n]|\\.)*)"')
_ON = re.compile(r"^[ \t]*on[ \t]+([^\n]*)", re.MULTILINE)
_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Definition:
    """Where a name is defined: its file, 0-based line, and the name's columns."""

    path: Path
    line: int
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Folder:
    """The ``.rules`` files of one folder, as the editor sees them."""

    texts: dict[Path, str]

    def elements(self) -> dict[str, Definition]:
        found: dict[str, Definition] = {}
        for path, text in self.texts.items():
            for match in _ELEMENT.finditer(text):
                found.setdefault(match[1], _definition(path, text, match.start(1), match.end(1)))
        return found

    def rules(self) -> dict[str, Definition]:
        found: dict[str, Definition] = {}
        for path, text in self.texts.items():
            for match in _RULE.finditer(text):
                start, end = match.start(1) - 1, match.end(1) + 1  # with the quotes
                found.setdefault(match[1], _definition(path, text, start, end))
        return found

    def event_names(self) -> list[str]:
        """Event names pushed in tests (``event: "…"``) and named by ``on "…"`` triggers."""
        names: list[str] = []
        for text in self.texts.values():
            names.extend(m[1] for m in _EVENT_FIELD.finditer(text))
            for line in _ON.finditer(text):
                names.extend(m[1] for m in _STRING.finditer(_code(line[1])))
        return sorted({n for n in names if n and not any(c in n for c in "*?")})


def _definition(path: Path, text: str, start: int, end: int) -> Definition:
    line = text.count("\n", 0, start)
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    source = text[line_start : line_end if line_end >= 0 else len(text)]
    return Definition(path, line, start - line_start, end - line_start, source.rstrip("\r"))


def _code(line: str) -> str:
    """``line`` without its comment (a ``#`` outside strings)."""
    in_string = escaped = False
    for index, char in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "#":
            return line[:index]
    return line


def path_of(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path))


def uri_of(path: Path) -> str:
    return path.absolute().as_uri()


# ------------------------------------------------------------------ where the cursor is
@dataclass(frozen=True, slots=True)
class Cursor:
    """What surrounds an offset in a document."""

    line: str  # the line's text before the cursor
    in_string: bool
    in_comment: bool
    blocks: tuple[str, ...]  # for each open `{`, outermost first: the line's text before it


def cursor_at(text: str, offset: int) -> Cursor:
    blocks: list[str] = []
    in_string = in_comment = escaped = False
    line_start = 0
    for index in range(offset):
        char = text[index]
        if char == "\n":
            in_string = in_comment = escaped = False
            line_start = index + 1
        elif in_comment:
            continue
        elif in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "#":
            in_comment = True
        elif char == "{":
            blocks.append(text[line_start:index])
        elif char == "}" and blocks:
            blocks.pop()
    return Cursor(text[line_start:offset], in_string, in_comment, tuple(blocks))


def _block_kind(cursor: Cursor) -> str | None:
    """``send event``, ``send sitecore``, ``personalization``, a settings block's name, ``rule``,
    ``test``, ``top`` (outside every block) or None (another object)."""
    if not cursor.blocks:
        return "top"
    opener = _code(cursor.blocks[-1]).strip()
    if match := re.fullmatch(r"send\s+(\w+)", opener):
        return f"send {match[1]}"
    if re.fullmatch(r"(?:.*[{,]\s*)?personalization\s*:", opener) and len(cursor.blocks) >= 2:
        outer = _code(cursor.blocks[-2]).strip()
        if re.fullmatch(r"send\s+event", outer) or outer.endswith("personalization:"):
            return "personalization"
    if len(cursor.blocks) == 1:
        if opener in SETTINGS_MODELS:
            return opener
        if opener.startswith("rule"):
            return "rule"
        if opener.startswith("test"):
            return "test"
    return None


def _field_docs(kind: str | None) -> dict[str, str]:
    if kind == "send event":
        return {
            f: EDGE_FIELD_DOCS.get(f, "a field of `send event`") for f in vocabulary.EDGE_FIELDS
        }
    if kind == "send sitecore":
        return {
            f: SITECORE_FIELD_DOCS.get(f, "an attribute of the Sitecore Stream API event")
            for f in vocabulary.SITECORE_FIELDS
        }
    if kind == "personalization":
        return {
            f: PERSONALIZATION_FIELD_DOCS.get(f, "a personalization option")
            for f in vocabulary.PERSONALIZATION_FIELDS
        }
    if kind in SETTINGS_MODELS:
        model = SETTINGS_MODELS[kind]
        docs: dict[str, str] = {}
        for name, info in model.model_fields.items():
            annotation = getattr(info.annotation, "__name__", None) or str(info.annotation)
            default = "" if info.default is None else f" (default: `{info.default!r}`)"
            docs[name] = f"`{annotation.replace('typing.', '')}`{default}"
        return docs
    return {}


def _item(
    label: str, kind: types.CompletionItemKind, detail: str, doc: str | None = None
) -> types.CompletionItem:
    documentation = types.MarkupContent(types.MarkupKind.Markdown, doc) if doc else None
    return types.CompletionItem(label, kind=kind, detail=detail, documentation=documentation)


def completions(folder: Folder, text: str, offset: int) -> list[types.CompletionItem]:
    """What may be written at ``offset`` of ``text`` (a document of ``folder``)."""
    cursor = cursor_at(text, offset)
    line = cursor.line
    elements = folder.elements()
    if cursor.in_comment:
        return []
    if cursor.in_string:
        if re.search(r'\bon\s+(?:(?:"[^"]*"|change\s+[\w.]+)\s*,\s*)*"[^"]*$', line) or re.search(
            r'\bevent\s*:\s*"[^"]*$', line
        ):
            return [
                _item(n, types.CompletionItemKind.Event, "event name") for n in folder.event_names()
            ]
        if re.search(r'\b(?:from|expect\s+rule)\s+"[^"]*$', line):
            return [_item(n, types.CompletionItemKind.Class, "rule") for n in folder.rules()]
        token = re.search(r"%([A-Za-z_][A-Za-z0-9_]*)?$", line)
        if token and _string_text(line).count("%") % 2 == 1:
            return _element_items(elements)
        return []
    if re.search(r"\|\s*[A-Za-z_]*$", line):
        return [
            _item(name, types.CompletionItemKind.Function, "filter", FILTER_DOCS.get(name))
            for name in FILTERS
        ]
    if re.search(r"\bkeep\s+\w*$", line):
        return _words(vocabulary.KEEP_SCOPES, "keep scope")
    if re.search(r"\blimit\s+\d+\s+per\s+\w*$", line):
        return _words(vocabulary.LIMIT_UNITS, "limit unit")
    if re.search(r"^\s*send\s+\w*$", line):
        return _words(vocabulary.DESTINATIONS, "destination")
    if re.search(r'\bexpect\s+rule\s+"[^"]*"\s+\w*$', line):
        return _words(vocabulary.TEST_STATUSES, "rule status")
    if re.search(r"\brequest\.\w*$", line):
        return [
            _item(f, types.CompletionItemKind.Field, "request field", REQUEST_FIELD_DOCS.get(f))
            for f in vocabulary.REQUEST_FIELDS
        ]
    if re.search(r"\.\w*$", line):
        return []  # a path step: any name
    kind = _block_kind(cursor)
    at_key = re.search(r"(?:^|[{,])\s*[A-Za-z_]*$", line) is not None
    if at_key and kind is not None:
        if kind == "top":
            return _words(TOP_LEVEL, "statement")
        if kind == "rule":
            return _words(RULE_CLAUSES, "rule clause")
        if kind == "test":
            return _words(TEST_CLAUSES, "test clause")
        return [
            _item(name, types.CompletionItemKind.Field, f"{kind} field", doc)
            for name, doc in _field_docs(kind).items()
        ]
    return [
        *_element_items(elements),
        *(
            _item(r, types.CompletionItemKind.Module, "data root", ROOT_DOCS.get(r))
            for r in sorted(vocabulary.RESERVED_NAMES)
        ),
        *_words(sorted(vocabulary.KEYWORDS), "keyword"),
    ]


def _string_text(line: str) -> str:
    """The text of the string the cursor is in (``line`` ends inside a string)."""
    in_string = escaped = False
    start = 0
    for index, char in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string, start = True, index + 1
    return line[start:]


def _words(words: Iterable[str], detail: str) -> list[types.CompletionItem]:
    return [_item(w, types.CompletionItemKind.Keyword, detail, KEYWORD_DOCS.get(w)) for w in words]


def _element_items(elements: dict[str, Definition]) -> list[types.CompletionItem]:
    return [
        _item(name, types.CompletionItemKind.Variable, "element", _fenced(d.text.strip()))
        for name, d in elements.items()
    ]


def _fenced(source: str) -> str:
    return f"```\n{source}\n```"


# ------------------------------------------------------------------ hover and definition
def _word_at(text: str, offset: int) -> tuple[int, int] | None:
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    end = offset
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    if start == end or not _WORD.fullmatch(text[start:end]):
        return None
    return start, end


def _element_at(folder: Folder, text: str, offset: int) -> Definition | None:
    """The element a reference at ``offset`` names (in an expression or a ``%token%``)."""
    word = _word_at(text, offset)
    if word is None:
        return None
    start, end = word
    if start > 0 and text[start - 1] == ".":
        return None  # a path step
    cursor = cursor_at(text, start)
    if cursor.in_comment:
        return None
    if cursor.in_string and not (
        start > 0 and text[start - 1] == "%" and _string_text(cursor.line).count("%") % 2 == 1
    ):
        return None
    return folder.elements().get(text[start:end])


def hover(folder: Folder, text: str, offset: int) -> str | None:
    """Markdown about the word at ``offset``: an element's definition, a field's meaning…"""
    word = _word_at(text, offset)
    if word is None:
        return None
    start, end = word
    name = text[start:end]
    element = _element_at(folder, text, offset)
    if element is not None:
        where = f"{element.path.name}:{element.line + 1}"
        return f"**element `{name}`** ({where})\n\n{_fenced(element.text.strip())}"
    cursor = cursor_at(text, start)
    if cursor.in_string or cursor.in_comment:
        return None
    before = cursor.line
    after = text[end : end + 80]
    if re.search(r"\|\s*$", before):
        doc = FILTER_DOCS.get(name)
        return f"**filter `{name}`**: {doc}" if doc else f"**filter `{name}`**"
    if re.search(r"\brequest\.$", before):
        doc = REQUEST_FIELD_DOCS.get(name)
        return f"**`request.{name}`**: {doc}" if doc else None
    if before.endswith("."):
        return None
    if re.match(r"\s*:", after):
        kind = _block_kind(cursor)
        docs = _field_docs(kind)
        if name in docs:
            what = "setting" if kind in SETTINGS_MODELS else "field"
            return f"**`{name}`** ({kind} {what}): {docs[name]}"
        return None
    if name in ROOT_DOCS:
        return ROOT_DOCS[name]
    if name in KEYWORD_DOCS:
        return KEYWORD_DOCS[name]
    return None


def definition(folder: Folder, text: str, offset: int) -> Definition | None:
    """Where the element (or the rule, in ``from "…"``) at ``offset`` is defined."""
    element = _element_at(folder, text, offset)
    if element is not None:
        return element
    cursor = cursor_at(text, offset)
    if cursor.in_string and re.search(r'\b(?:from|expect\s+rule)\s+"[^"]*$', cursor.line):
        start = text.rfind('"', 0, offset) + 1
        end = text.find('"', offset)
        if end >= 0:
            return folder.rules().get(text[start:end])
    return None


# ------------------------------------------------------------------ the server
class RulesServer(LanguageServer):
    """Checks a document's folder as it is typed; remembers what it published where."""

    def __init__(self) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            own = version("tagengine")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            own = "0"
        super().__init__("tagengine", own)
        self.published: dict[Path, set[str]] = {}

    # The folder as the editor sees it: open documents replace the files on disk.
    def folder(self, path: Path) -> Folder:
        root = path.parent
        texts: dict[Path, str] = {}
        try:
            files = rule_files(root) if root.is_dir() else []
        except RuleError:
            files = []
        for file in files:
            try:
                texts[file.absolute()] = file.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
        documents: dict[str, Any] = self.workspace.text_documents
        for uri, document in documents.items():
            open_path = path_of(uri)
            if open_path is not None and open_path.parent == root and open_path.suffix == ".rules":
                texts[open_path.absolute()] = str(document.source)
        return Folder(dict(sorted(texts.items(), key=lambda item: item[0].name)))

    def check(self, path: Path) -> None:
        folder = self.folder(path)
        found = check_folder(folder)
        encoding = self.workspace.position_encoding
        root = path.parent
        uris = {uri_of(path)} | self.published.get(root, set())
        by_uri: dict[str, list[types.Diagnostic]] = {}
        for file, diagnostics in found.items():
            text = folder.texts.get(file, "")
            converted = [to_lsp(d, text, encoding) for d in diagnostics]
            by_uri[uri_of(file)] = converted
        uris |= set(by_uri)
        for uri in sorted(uris):
            self.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=uri, diagnostics=by_uri.get(uri, []))
            )
        self.published[root] = set(by_uri)


def check_folder(folder: Folder) -> dict[Path, list[Diagnostic]]:
    """Every diagnostic of the folder's ruleset, by file."""
    sources = [(str(path), text.encode("utf-8")) for path, text in folder.texts.items()]
    diagnostics: Sequence[Diagnostic]
    try:
        ruleset = build_ruleset(sources)
    except RuleError as error:
        diagnostics = error.diagnostics
    except Exception as error:  # the editor keeps working; the problem is shown, not lost
        first = next(iter(folder.texts), None)
        if first is None:
            return {}
        problem = f"internal error while checking: {type(error).__name__}: {error}"
        diagnostics = [Diagnostic(Span(str(first), 1, 1, 1, 2), problem)]
    else:
        diagnostics = tuple(getattr(ruleset, "warnings", ()) or ())
    found: dict[Path, list[Diagnostic]] = {}
    for diagnostic in diagnostics:
        found.setdefault(Path(diagnostic.span.file).absolute(), []).append(diagnostic)
    return found


def _units(text: str, encoding: Any) -> int:
    if encoding == types.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8"))
    if encoding == types.PositionEncodingKind.Utf32:
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def to_lsp(diagnostic: Diagnostic, text: str, encoding: Any = None) -> types.Diagnostic:
    """A diagnostic's span (1-based, end exclusive, in characters) as an LSP range."""
    lines = text.split("\n")
    span = diagnostic.span

    def position(line: int, column: int) -> types.Position:
        row = max(line - 1, 0)
        source = lines[row] if row < len(lines) else ""
        return types.Position(row, _units(source[: max(column - 1, 0)], encoding))

    start = position(span.line, span.column)
    end = position(span.end_line, span.end_column)
    if (end.line, end.character) <= (start.line, start.character):
        end = types.Position(start.line, start.character + 1)
    severity = (
        types.DiagnosticSeverity.Warning
        if diagnostic.severity == "warning"
        else types.DiagnosticSeverity.Error
    )
    return types.Diagnostic(
        range=types.Range(start, end),
        message=diagnostic.message,
        severity=severity,
        source=SOURCE,
    )


def _range(definition: Definition, encoding: Any) -> types.Range:
    before = definition.text[: definition.start]
    name = definition.text[definition.start : definition.end]
    start = _units(before, encoding)
    return types.Range(
        types.Position(definition.line, start),
        types.Position(definition.line, start + _units(name, encoding)),
    )


def create_server() -> RulesServer:
    server = RulesServer()

    def recheck(uri: str) -> None:
        path = path_of(uri)
        if path is not None and path.suffix == ".rules":
            server.check(path)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: RulesServer, params: types.DidOpenTextDocumentParams) -> None:
        recheck(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: RulesServer, params: types.DidChangeTextDocumentParams) -> None:
        recheck(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: RulesServer, params: types.DidSaveTextDocumentParams) -> None:
        recheck(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: RulesServer, params: types.DidCloseTextDocumentParams) -> None:
        # The file on disk is what counts now: check the folder again with it.
        path = path_of(params.text_document.uri)
        if path is not None and path.suffix == ".rules":
            if path.is_file():
                server.check(path)
            else:
                server.text_document_publish_diagnostics(
                    types.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[])
                )

    def located(
        uri: str, position: types.Position
    ) -> tuple[Folder, str, int] | tuple[None, str, int]:
        path = path_of(uri)
        document = server.workspace.get_text_document(uri)
        text = str(document.source)
        offset = document.offset_at_position(position)
        if path is None:
            return None, text, offset
        return server.folder(path), text, offset

    @server.feature(
        types.TEXT_DOCUMENT_COMPLETION,
        types.CompletionOptions(trigger_characters=["|", '"', "%", "{", " ", "."]),
    )
    def complete(ls: RulesServer, params: types.CompletionParams) -> types.CompletionList:
        folder, text, offset = located(params.text_document.uri, params.position)
        items = completions(folder, text, offset) if folder is not None else []
        return types.CompletionList(is_incomplete=False, items=items)

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def on_hover(ls: RulesServer, params: types.HoverParams) -> types.Hover | None:
        folder, text, offset = located(params.text_document.uri, params.position)
        found = hover(folder, text, offset) if folder is not None else None
        if found is None:
            return None
        return types.Hover(types.MarkupContent(types.MarkupKind.Markdown, found))

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def on_definition(ls: RulesServer, params: types.DefinitionParams) -> types.Location | None:
        folder, text, offset = located(params.text_document.uri, params.position)
        found = definition(folder, text, offset) if folder is not None else None
        if found is None:
            return None
        encoding = server.workspace.position_encoding
        return types.Location(uri_of(found.path), _range(found, encoding))

    return server


def serve() -> None:
    """Run the language server on stdin/stdout until the client exits."""
    create_server().start_io()
