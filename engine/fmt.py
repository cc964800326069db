"""``tagengine fmt``: the canonical layout of ``.rules`` files.

The formatter works from the token stream lark lexes with the grammar (the same contextual
lexer and :class:`~engine.parser.Newlines` post-lexer the parser uses), so it knows which line
ends separate clauses and which only continue an expression, and it needs no rule per
statement: a new block statement is laid out like the others.

Canonical form:

- Indentation is 2 spaces per open bracket. Brackets opened together on one line (``[{``) add
  one level; a line starting with a closing bracket sits at the level of the line that opened
  it. A continuation line (an expression going on after ``and``, ``|``, ``+``, a comma…) is
  indented one level more than the line its clause or entry started on.
- One space around binary operators, ``=``, ``|`` and keywords; one after ``:`` and ``,``, none
  before; none around ``.``, none inside ``[ ]`` and ``( )``, none before the ``[`` of an index
  or the ``(`` of a call; a unary ``-`` is attached (``-x``; ``- 1`` keeps its space, as
  ``-1`` is a number literal, another token). Inside ``{ }`` one space at each end when the
  object stays on one line; an empty one is ``{}``.
- A block (``rule``, ``test`` and the other statements whose ``{ }`` holds clauses, not
  ``key: value`` pairs) always has its clauses on their own lines; so has an object whose
  entries span lines: its ``{`` ends a line, its ``}`` starts one. ``{`` stays on the line of
  its statement or key. Otherwise line breaks are the author's.
- A ``;`` separator becomes a line break between clauses and statements, and ``, `` between
  the entries of a one-line object or list. A ``;`` that separates nothing is dropped.
- Blank lines: at most one anywhere; none at the start or end of the file, after an opening
  bracket, before a closing one or inside a continued expression; exactly one between two
  top-level statements when either spans several lines (consecutive one-line statements, such
  as a group of ``element`` lines, keep the author's choice of none or one).
- Comments keep their text and their place: a trailing comment stays after its line's code;
  a comment on its own line is indented like the code that follows it (like the block's
  contents before a closing bracket).
- Trailing comments are aligned, much as gofmt aligns them. A *run* is a maximal sequence of
  consecutive lines of code at the same indentation: a blank line, a comment on its own line
  or a change of indentation ends it. The trailing comments of a run start at one column: two
  spaces after the longest code among its lines that have one (the lines without a comment
  neither end the run nor widen it); a lone trailing comment is two spaces after its code.
  Aligning never pushes a comment past column 100: while padding would make a line of the run
  longer than 100 characters, the line with the longest code leaves the alignment (it keeps
  two spaces) and the column is worked out again without it.
- In a run of consecutive one-line ``element`` statements (a blank line, a comment on its own
  line or any other statement, a multi-line ``element`` included, ends it) the names are
  padded so that the ``=`` line up, one space after the longest name. This comes before the
  comments are aligned.
- String literals and numbers are written as they were, byte for byte. Trailing whitespace is
  removed, line ends are ``\\n``, a byte order mark is dropped, and the file ends with exactly
  one line end (an empty file stays empty).

Formatting never changes meaning: :func:`format_source` refuses text with syntax errors
(:class:`FormatError`) and checks that the result parses to the same syntax tree, spans aside
(:class:`InternalFormatError` otherwise). It is idempotent.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

import lark
from lark import Token

from engine.diagnostics import Diagnostic, Span, render_all
from engine.parser import GRAMMAR, Newlines, _grammar_cache, parse

__all__ = ["FormatError", "InternalFormatError", "format_source", "main"]


class FormatError(Exception):
    """The text has syntax errors: it is not formatted. ``diagnostics`` says where."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        super().__init__(render_all(diagnostics))
        self.diagnostics = list(diagnostics)


class InternalFormatError(RuntimeError):
    """The formatter's output would not mean what the input meant (a formatter bug): nothing
    may be written."""


# ------------------------------------------------------------------ tokens
_OPENERS = frozenset({"LBRACE", "LSQB", "LPAR"})
_CLOSERS = frozenset({"RBRACE", "RSQB", "RPAR"})
# Tokens a `[` indexes without a space (`a[0]`, `f(x)[0]`) and that make a `-` binary.
_INDEXED = frozenset(
    {"NAME", "STRING", "NUMBER", "TRUE", "FALSE", "NULL", "RPAR", "RSQB", "RBRACE"}
)
_OPERAND_END = _INDEXED | {"PERCENT", "EXISTS"}
# What lark's lexer skips between tokens (the grammar's WS and COMMENT) and the `_NL` runs.
_TRIVIA = re.compile(r"#[^\n]*|\r\n|[\r\n]|;|[ \t\f]+")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


@dataclass(slots=True)
class _Gap:
    """What lies between two tokens: line ends, `;`, blank lines and comments."""

    kept: bool = False  # holds a line end the parser sees: a clause or entry separator
    newline: bool = False  # holds at least one line end
    semicolon: bool = False
    trailing: str | None = None  # the comment ending the previous token's line
    rows: list[str | None] = field(default_factory=list)  # whole lines: a comment, or blank
    comments: bool = False


class _Recorder:
    """lark post-lexer: the parser's own :class:`Newlines`, noting every token it is given
    and which line ends it keeps."""

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.newlines = Newlines()
        self.tokens: list[Token] = []
        self.kept: set[int] = set()  # start offsets of the `_NL` tokens passed on

    def _tap(self, stream: Iterator[Token]) -> Iterator[Token]:
        for token in stream:
            self.tokens.append(token)
            yield token

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        for token in self.newlines.process(self._tap(stream)):
            if token.type == "_NL":
                self.kept.add(token.start_pos or 0)
            yield token


class _Lexer:
    def __init__(self) -> None:
        self.recorder = _Recorder()
        cache = _grammar_cache()
        if isinstance(cache, str):  # a file of its own: the parser's has other options
            cache = os.path.join(os.path.dirname(cache), "fmt-" + os.path.basename(cache))
        self.lark = lark.Lark(
            GRAMMAR,
            parser="lalr",
            lexer="contextual",
            postlex=self.recorder,
            maybe_placeholders=True,
            cache=cache,
        )
        self.lock = threading.Lock()

    def lex(self, text: str) -> tuple[list[_Tok], list[_Gap]]:
        """The tokens of ``text`` (which parses) and the gap before each, plus the one after
        the last: ``len(gaps) == len(tokens) + 1``."""
        with self.lock:
            recorder = self.recorder
            recorder.tokens, recorder.kept = [], set()
            recorder.newlines.text = text
            try:
                # Parsed, not only lexed: the contextual lexer needs the parser's state to
                # tell `-1` from `- 1` and a keyword from a name.
                self.lark.parse(text)
            except lark.exceptions.LarkError as error:
                raise InternalFormatError(f"the formatter's lexer failed: {error}") from None
            finally:
                recorder.newlines.text = ""
            raw, kept = recorder.tokens, recorder.kept
        tokens: list[_Tok] = []
        gaps: list[_Gap] = []
        position = 0
        separator = False
        for token in raw:
            start = token.start_pos or 0
            if token.type == "_NL":
                separator = separator or start in kept
                continue
            gaps.append(_gap(text[position:start], separator, bool(tokens), True))
            tokens.append(_Tok(token.type, token.value, start, token.end_pos or start))
            position = token.end_pos or start
            separator = False
        gaps.append(_gap(text[position:], separator, bool(tokens), False))
        return tokens, gaps


def _gap(text: str, kept: bool, after: bool, before: bool) -> _Gap:
    """Read a gap. ``after``: a token precedes it on its first line; ``before``: a token
    follows it on its last line."""
    rows: list[list[str]] = [[]]
    for piece in _TRIVIA.findall(text):
        if piece in ("\r\n", "\r", "\n"):
            rows.append([])
        elif piece == ";" or piece.startswith("#"):
            rows[-1].append(piece.rstrip())
    gap = _Gap(kept=kept, newline=len(rows) > 1, semicolon=any(";" in row for row in rows))
    first = 1 if after else 0
    last = len(rows) - 1 if before else len(rows)
    if after:
        gap.trailing = next((p for p in rows[0] if p.startswith("#")), None)
    for row in rows[first:last]:
        gap.rows.append(next((p for p in row if p.startswith("#")), None))
    gap.comments = gap.trailing is not None or any(r is not None for r in gap.rows)
    return gap


_lexer: _Lexer | None = None
_lexer_lock = threading.Lock()


def _get_lexer() -> _Lexer:
    global _lexer
    with _lexer_lock:
        if _lexer is None:
            _lexer = _Lexer()
        return _lexer


# ------------------------------------------------------------------ layout
@dataclass(slots=True)
class _Line:
    level: int = 0
    code: str = ""
    comment: str | None = None
    blank: bool = False
    continued: bool = False  # code going on from the line before (an expression's next line)
    statement: int = -1  # the top-level statement its code belongs to (-1: no code)
    first: str = ""  # kinds of its first and last tokens
    last: str = ""
    name_end: int = -1  # an `element` line: where the element's name ends in ``code``


@dataclass(frozen=True, slots=True)
class _Frame:
    """An open bracket: its token, the level of its line, the enclosing entry's level."""

    index: int
    level: int
    entry: int


def _brackets(tokens: list[_Tok]) -> tuple[dict[int, int], set[int]]:
    """Each bracket's partner, and the brackets holding entries (lists, parentheses and
    objects: a `{ }` with a `:` of its own; the other braces are blocks of clauses)."""
    partner: dict[int, int] = {}
    entries: set[int] = set()
    stack: list[int] = []
    for index, token in enumerate(tokens):
        if token.kind in _OPENERS:
            stack.append(index)
            if token.kind != "LBRACE":
                entries.add(index)
        elif token.kind in _CLOSERS:
            opener = stack.pop()
            partner[opener], partner[index] = index, opener
        elif token.kind == "COLON" and stack:
            entries.add(stack[-1])
    return partner, entries


def _exploded(
    tokens: list[_Tok], gaps: list[_Gap], partner: dict[int, int], entries: set[int]
) -> set[int]:
    """The `{` whose contents go on lines of their own: blocks, and objects that span lines."""
    exploded: set[int] = set()
    stack: list[list[int]] = []  # [opener, 1 if a line ends inside]
    for index, token in enumerate(tokens):
        if stack and gaps[index].newline:
            stack[-1][1] = 1
        if token.kind in _OPENERS:
            stack.append([index, 0])
        elif token.kind in _CLOSERS:
            opener, broken = stack.pop()
            if token.kind == "RBRACE":
                if partner[opener] == opener + 1:  # empty: `{}` unless a comment is inside
                    broken = int(gaps[index].comments)
                elif opener not in entries:
                    broken = 1
                if broken:
                    exploded.add(opener)
            if stack and broken:
                stack[-1][1] = 1
    return exploded


def _filter_name(tokens: list[_Tok], index: int) -> bool:
    return tokens[index].kind == "NAME" and index > 0 and tokens[index - 1].kind == "VBAR"


def _space(tokens: list[_Tok], index: int, before: str) -> str:
    """The space between the previous token (of kind ``before``) and ``tokens[index]``."""
    kind = tokens[index].kind
    if kind in ("COMMA", "COLON", "DOT", "RSQB", "RPAR") or before in ("DOT", "LSQB", "LPAR"):
        return ""
    if kind == "RBRACE":
        return "" if before == "LBRACE" else " "
    if before == "LBRACE":
        return " "
    if before == "MINUS" and (index < 2 or tokens[index - 2].kind not in _OPERAND_END):
        # A unary minus is attached, except to a number: `-1` would lex as another token.
        return " " if tokens[index].text[:1] in "0123456789.-" else ""
    if kind == "LSQB":  # an index, or a list (after a filter's name: its argument)
        return "" if before in _INDEXED and not _filter_name(tokens, index - 1) else " "
    if kind == "LPAR":  # a call, or a parenthesised expression
        return "" if before == "NAME" and not _filter_name(tokens, index - 1) else " "
    return " "


def _layout(tokens: list[_Tok], gaps: list[_Gap]) -> list[_Line]:
    partner, entries = _brackets(tokens)
    exploded = _exploded(tokens, gaps, partner, entries)
    lines: list[_Line] = []
    line: _Line | None = None
    frames: list[_Frame] = []
    entry = 0  # the level of the line the current clause or entry started on
    statement = -1
    previous: _Tok | None = None
    for index, token in enumerate(tokens):
        gap = gaps[index]
        if gap.trailing is not None and line is not None:
            line.comment = gap.trailing
        inner = frames[-1] if frames else None
        in_entries = inner is not None and inner.index in entries
        content = inner.level + 1 if inner is not None else 0
        closing = token.kind in _CLOSERS
        if previous is None:
            brk = True
        elif closing and partner[index] == index - 1:  # `{}`, `[]`, `()`
            brk = gap.comments
        else:
            # A `;` between the entries of a one-line object or list becomes `, `.
            inline = in_entries and inner is not None and inner.index not in exploded
            brk = gap.newline or (gap.kept and gap.semicolon and not inline)
            if (previous.kind == "LBRACE" and index - 1 in exploded) or (
                token.kind == "RBRACE" and partner[index] in exploded
            ):
                brk = True  # an exploded brace's contents start and end lines
            elif (
                brk
                and token.kind == "LBRACE"
                and not gap.kept
                and not gap.comments
                and previous.kind not in _OPENERS
                and previous.kind != "COMMA"
            ):
                brk = False  # `{` joins the line of its key or statement
        if not frames and (previous is None or gap.kept):
            statement += 1
        if brk:
            continued = False
            if inner is not None and closing:
                level = inner.level
            elif (
                previous is None
                or gap.kept
                or previous.kind in _OPENERS
                or (previous.kind == "COMMA" and in_entries)
            ):
                level = entry = content
            else:
                level, continued = entry + 1, True  # an expression going on
            if line is not None:
                lines.append(line)
            comment_level = content if closing else level
            for row in gap.rows:
                lines.append(
                    _Line(comment_level, comment=row, continued=continued)
                    if row
                    else _Line(blank=True)
                )
            line = _Line(level, token.text, continued=continued, statement=statement)
            line.first = token.kind
        else:
            assert line is not None and previous is not None
            before = previous.kind
            if gap.kept and gap.semicolon and not gap.newline:  # `;` between entries
                line.code += ","
                before = "COMMA"
            line.code += _space(tokens, index, before) + token.text
            if before == "ELEMENT" and line.first == "ELEMENT" and not frames:
                line.name_end = len(line.code)
        line.last = token.kind
        if token.kind in _OPENERS:
            frames.append(_Frame(index, line.level, entry))
            entry = line.level
        elif closing:
            entry = frames.pop().entry
        previous = token
    end = gaps[-1]
    if line is not None:
        if end.trailing is not None:
            line.comment = end.trailing
        lines.append(line)
    for row in end.rows:
        lines.append(_Line(0, comment=row) if row else _Line(blank=True))
    return lines


_WIDTH = 100  # the column no trailing comment is pushed past to align it


@dataclass(slots=True)
class _Row:
    """An output line: its indentation, code and trailing comment (or its comment alone)."""

    indent: str
    code: str
    comment: str | None
    name_end: int = -1  # a one-line `element` statement: where its name ends in ``code``
    spaces: int = 2  # between the code and its trailing comment


def _align_names(rows: list[_Row | None]) -> None:
    """Pad the names of consecutive one-line `element` statements so their `=` line up."""
    run: list[_Row] = []
    for row in [*rows, None]:
        if row is not None and row.name_end >= 0:
            run.append(row)
            continue
        if len(run) > 1:
            width = max(r.name_end for r in run)
            for r in run:
                r.code = r.code[: r.name_end] + " " * (width - r.name_end) + r.code[r.name_end :]
        run = []


def _comment_column(run: list[_Row]) -> tuple[int, set[int]]:
    """The column of the `#` of a run of trailing comments, and the rows (by position in
    ``run``) that are aligned to it: while padding would make a row end past column
    :data:`_WIDTH`, the row with the longest code leaves the alignment."""
    widths = [len(r.indent) + len(r.code) for r in run]
    members = set(range(len(run)))
    while True:
        column = max(widths[i] for i in members) + 2
        pushed = any(
            widths[i] + 2 < column and column + len(run[i].comment or "") > _WIDTH for i in members
        )
        if not pushed or len(members) < 2:
            return column, members
        members.remove(max(members, key=lambda i: (widths[i], -i)))


def _align_comments(rows: list[_Row | None]) -> None:
    """Line up the trailing comments of each run of consecutive lines of code at the same
    indentation (the lines without a comment stay as they are)."""
    run: list[_Row] = []
    for row in [*rows, None]:
        if row is not None and row.code and (not run or row.indent == run[0].indent):
            run.append(row)
            continue
        commented = [r for r in run if r.comment is not None]
        column, members = _comment_column(commented) if commented else (0, set())
        for position, r in enumerate(commented):
            width = len(r.indent) + len(r.code)
            if position in members:
                r.spaces = column - width
        run = [row] if row is not None and row.code else []


def _render(lines: list[_Line]) -> str:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for number, line in enumerate(lines):
        if line.statement >= 0:
            first.setdefault(line.statement, number)
            last[line.statement] = number
    several = {s for s in first if last[s] > first[s]}
    # One blank line after a statement when it or the next one spans several lines.
    separated = {last[s] for s in first if s + 1 in first and (s in several or s + 1 in several)}
    rows: list[_Row | None] = []  # None: a blank line
    blank = separate = False
    written: _Line | None = None
    for number, line in enumerate(lines):
        if line.blank:
            blank = True
            continue
        if written is not None and (
            separate
            or (
                blank
                and written.last not in _OPENERS
                and line.first not in _CLOSERS
                and not line.continued
            )
        ):
            rows.append(None)
        one_line_element = line.name_end >= 0 and line.statement not in several
        rows.append(
            _Row(
                "  " * line.level,
                line.code,
                line.comment,
                line.name_end if one_line_element else -1,
            )
        )
        blank, separate, written = False, number in separated, line
    _align_names(rows)
    _align_comments(rows)
    out: list[str] = []
    for row in rows:
        if row is None:
            out.append("")
        elif row.code and row.comment is not None:
            out.append(f"{row.indent}{row.code}{' ' * row.spaces}{row.comment}")
        else:
            out.append(f"{row.indent}{row.code or row.comment}")
    return "".join(f"{text}\n" for text in out)


# ------------------------------------------------------------------ the safety check
def _shape(value: object) -> object:
    """``value`` with every span and layout-derived field left out, for comparison."""
    if isinstance(value, Span):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple(
                (f.name, _shape(getattr(value, f.name)))
                for f in dataclasses.fields(value)
                # Condition.source is the condition's text, spaced as written.
                if f.name != "source" and not f.name.endswith("span")
            ),
        )
    if isinstance(value, (tuple, list)):
        return tuple(_shape(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, _shape(item)) for key, item in value.items())
    return (type(value).__name__, value)  # 1, 1.0 and True stay apart


def format_source(text: str, filename: str = "<rules>") -> str:
    """The canonical form of a ``.rules`` file's text (see the module's docstring).

    Raises :class:`FormatError` when the text has errors (nothing can be formatted safely),
    :class:`InternalFormatError` when the result would not parse to the same syntax tree.
    """
    text = text.removeprefix("\ufeff")
    before = parse(text, filename)
    errors = [d for d in before.diagnostics if d.severity == "error"]
    if errors or before.file is None:
        raise FormatError(errors or before.diagnostics)
    tokens, gaps = _get_lexer().lex(text)
    result = _render(_layout(tokens, gaps))
    after = parse(result, filename)
    try:
        same = after.file is not None and _shape(after.file) == _shape(before.file)
    except RecursionError:
        raise InternalFormatError(f"{filename}: too deeply nested to check") from None
    if not same:
        problems = "; ".join(d.message for d in after.diagnostics) or "a different syntax tree"
        raise InternalFormatError(
            f"{filename}: the formatted text would not mean the same ({problems}); "
            "nothing was written"
        )
    return result


# ------------------------------------------------------------------ the command
def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _files(path: Path, err: TextIO) -> list[Path] | None:
    """The files a path names: a file itself, a folder's ``*.rules`` by name; ``None`` after
    reporting a path that names none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        err.write(f"{path}: error: no such file or folder\n")
        return None
    files = sorted(p for p in path.iterdir() if p.suffix == ".rules" and p.is_file())
    if not files:
        err.write(f"{path}: error: no .rules file in this folder\n")
        return None
    return files


def _write(path: Path, text: str) -> None:
    """Replace the file's content atomically (a temporary file in its folder, then a rename),
    keeping its mode; a symbolic link keeps pointing at the file it named."""
    target = Path(os.path.realpath(path))
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _diff(old: str, new: str, name: str) -> str:
    def lines(text: str) -> list[str]:
        return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(True)]

    return "".join(difflib.unified_diff(lines(old), lines(new), f"{name}", f"{name} (formatted)"))


def _format(text: str, name: str, err: TextIO) -> str | None:
    """``text`` formatted, or ``None`` after reporting why it cannot be."""
    try:
        return format_source(text, name)
    except FormatError as error:
        for diagnostic in error.diagnostics:
            err.write(diagnostic.render() + "\n")
        err.write(f"{name}: not formatted: it has errors\n")
    except InternalFormatError as error:
        err.write(f"{name}: error: internal formatter error: {error}\n")
    return None


def main(
    paths: Sequence[str | os.PathLike[str]] = (),
    *,
    check: bool = False,
    diff: bool = False,
    stdin: IO[bytes] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``tagengine fmt``: format files in place (``check``/``diff``: change nothing); returns
    the exit status. ``-`` as the only path formats standard input to standard output."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    names = [os.fspath(p) for p in paths] or ["rules/"]
    if "-" in names:
        if len(names) > 1:
            err.write("error: - (standard input) must be the only path\n")
            return 2
        data = (stdin if stdin is not None else sys.stdin.buffer).read()
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            err.write("<stdin>: error: not UTF-8 text\n")
            return 1
        formatted = _format(source, "<stdin>", err)
        if formatted is None:
            return 1
        if diff:
            out.write(_diff(source, formatted, "<stdin>"))
        elif not check:
            out.write(formatted)
        return 1 if check and formatted != source else 0

    failed = changed = unchanged = missing = 0
    for name in names:
        files = _files(Path(name), err)
        if files is None:
            missing += 1
            continue
        for path in files:
            try:
                source = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                err.write(f"{path}: error: not UTF-8 text\n")
                failed += 1
                continue
            except OSError as error:
                err.write(f"{path}: error: {error.strerror or error}\n")
                failed += 1
                continue
            formatted = _format(source, str(path), err)
            if formatted is None:
                failed += 1
            elif formatted == source:
                unchanged += 1
            else:
                changed += 1
                if diff:
                    out.write(_diff(source, formatted, str(path)))
                if check or diff:
                    err.write(f"would reformat {path}\n")
                    continue
                try:
                    _write(path, formatted)
                except OSError as error:
                    err.write(f"{path}: error: cannot write: {error.strerror or error}\n")
                    changed -= 1
                    failed += 1
                    continue
                err.write(f"reformatted {path}\n")
    dry = check or diff
    summary = [
        _plural(changed, "file") + (" would be reformatted" if dry else " reformatted"),
        _plural(unchanged, "file") + (" already formatted" if dry else " left unchanged"),
    ]
    if failed:
        summary.append(_plural(failed, "file") + " with errors")
    if missing:
        summary.append(_plural(missing, "path") + " with no .rules file")
    err.write(", ".join(summary) + "\n")
    return 1 if failed or missing or (check and changed) else 0
