"""Every rule snippet of the documentation is checked by the real ``tagengine check``.

The convention for code blocks in ``README.md`` and ``docs/*.md`` (docs/language.md says it
in short for contributors):

- A block tagged ```` ```rules ```` is a complete file. It is written to ``rules/shop.rules`` in a
  fresh folder and checked with ``python -m engine check rules`` (a real subprocess, run from
  the folder's parent); the check must pass (warnings are fine). The folder also gets the
  default settings below, each block (``edge``, ``sitecore``) only when the snippet does not
  write its own, so that a snippet may send without repeating them.
  When the snippet has ``test`` blocks, ``python -m engine test`` must pass too: what the
  docs' tests expect is what the engine does.
- A block tagged ```` ```rules-error ```` is deliberately wrong: the check must fail (exit 1).
- When a ``rules`` or ``rules-error`` block is followed by a ```` ```text ```` block (only a
  few lines of prose between, no heading), every diagnostic line in it
  (``rules/shop.rules:3:8: error: …`` or ``warning: …``), quoted source line and caret line
  must appear as it is in the output: what the docs show is what the analyst gets.
- A block tagged ```` ```rules-fragment ```` is one expression, not a file: it is checked as
  ``element fragment = (FRAGMENT)`` in a rule that sends it. Keep fragments rare: a small
  complete rule says more.
- Words after the tag are options: ``file=PATH`` writes the snippet at ``PATH`` (relative, e.g.
  ``file=my-rules/newsletter.rules``; the folder checked is its parent) instead of
  ``rules/shop.rules``; ``no-settings`` adds no default settings.

The tutorial is also replayed: its ``file=`` snippets and JSONL block are written in order and
each ``tagengine check|test|run`` of its ```` ```console ```` blocks must print the lines shown.

The test also asserts that no document links to ``../shared``, that every relative link (and
``#anchor``) points to a file (and heading) that exists, and that docs/*.md link outside the
repository only to the vendors' documentation.
"""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The default settings, as tests/conftest.py's SETTINGS: added per block when missing.
DEFAULT_SETTINGS = {
    "edge": 'edge { datastream: "ds-1" }',
    "sitecore": 'sitecore { client_key: "k", pos: "shop", language: "EN", currency: "EUR" }',
}
SNIPPET_TAGS = ("rules", "rules-error", "rules-fragment")
DEFAULT_FILE = "rules/shop.rules"

# Hosts the docs may link to: the vendors' documentation.
VENDOR_HOSTS = (
    "adobe.com",
    "sitecore.com",
    "sitecorecloud.io",
    "google.com",
)


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    end: int  # of the closing fence
    tag: str
    options: tuple[str, ...]
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def code_blocks(document: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, their content dedented by the fence's indent."""
    lines = document.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        info = opening["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == "" else line)
            j += 1
        tag = info[0] if info else ""
        blocks.append(Block(document, i + 1, j + 1, tag, tuple(info[1:]), "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _following_text(blocks: list[Block], index: int) -> Block | None:
    """The ```text block right after ``blocks[index]``: only a little prose between them."""
    if index + 1 >= len(blocks):
        return None
    block, after = blocks[index], blocks[index + 1]
    if after.tag != "text":
        return None
    lines = block.document.read_text(encoding="utf-8").split("\n")[block.end : after.line - 1]
    prose = [line for line in lines if line.strip()]
    if any(line.lstrip().startswith("#") for line in prose) or len(prose) > 3:
        return None
    return after


SNIPPETS = [
    pytest.param(block, _following_text(blocks, i), id=block.where)
    for document in DOCUMENTS
    for blocks in [code_blocks(document)]
    for i, block in enumerate(blocks)
    if block.tag in SNIPPET_TAGS
]


def _option(block: Block, name: str) -> str | None:
    for option in block.options:
        key, _, value = option.partition("=")
        if key == name:
            return value or key
    return None


def _source(block: Block) -> str:
    if block.tag != "rules-fragment":
        return block.text
    return (
        f"element fragment = (\n{block.text})\n\n"
        'rule "Fragment" {\n  on "fragment"\n'
        '  send event { type: "fragment", data: { value: fragment } }\n}\n'
    )


def _defines(source: str, kind: str) -> bool:
    return re.search(rf"^{kind}[ \t]*\{{", source, re.M) is not None


# A diagnostic line, a quoted source line, a caret line.
_SHOWN = re.compile(r"^\S[^:\n]*:\d+:\d+: (?:error|warning): |^ *\d+ \| |^ *\| +[\^~]")


def _shown_lines(text: Block) -> list[str]:
    return [line.rstrip() for line in text.text.split("\n") if _SHOWN.match(line)]


@pytest.mark.parametrize(("block", "text"), SNIPPETS)
def test_rule_snippet(block: Block, text: Block | None, tmp_path: Path) -> None:
    relative = _option(block, "file") or DEFAULT_FILE
    path = tmp_path / relative
    assert path.resolve().is_relative_to(tmp_path.resolve()), f"{block.where}: file= escapes"
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    source = _source(block)
    path.write_text(source, encoding="utf-8")
    if _option(block, "no-settings") is None:
        missing = [text for kind, text in DEFAULT_SETTINGS.items() if not _defines(source, kind)]
        if missing:
            (folder / "_default_settings.rules").write_text(
                "\n".join(missing) + "\n", encoding="utf-8"
            )
    checked = _tagengine("check", folder, tmp_path)
    output = checked.stdout + checked.stderr
    if block.tag == "rules-error":
        assert checked.returncode == 1, f"{block.where}: meant to fail, but:\n{output}"
    else:
        assert checked.returncode == 0, f"{block.where}: does not check:\n{output}"
    if text is not None:
        printed = {line.rstrip() for line in output.split("\n")}
        for line in _shown_lines(text):
            assert line in printed, f"{text.where}: not printed: {line!r}\n{output}"
    if block.tag == "rules" and re.search(r'^test "', source, re.M):
        # What a snippet's tests expect is what the docs claim: they must pass.
        tested = _tagengine("test", folder, tmp_path)
        output = tested.stdout + tested.stderr
        assert tested.returncode == 0, f"{block.where}: its tests fail:\n{output}"


def _tagengine(command: str, folder: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", command, str(folder.relative_to(cwd))],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_there_are_snippets_of_each_kind() -> None:
    tags = {param.values[0].tag for param in SNIPPETS}  # type: ignore[union-attr]
    assert {"rules", "rules-error"} <= tags
    assert len(SNIPPETS) >= 40


# ------------------------------------------------------------------ the tutorial
# What varies from run to run in the output: request ids, timestamps, event ids.
_VOLATILE = (
    (re.compile(r"requestId=[0-9a-f-]*…?"), "requestId=…"),
    (re.compile(r'"(timestamp|_id)": "[^"]*"'), r'"\1": "…"'),
)
_REPLAYED = ("check", "test", "run")  # the commands the walk-through runs again


def _normal(line: str) -> str:
    for pattern, replacement in _VOLATILE:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def test_the_tutorial_commands_print_what_it_shows(tmp_path: Path) -> None:
    """docs/tutorial.md, replayed: its files are written as it writes them (the ``file=``
    snippets and the JSONL block, in order) and every ``tagengine check|test|run`` of its
    ``console`` blocks must print the lines shown (``…`` stands for lines left out)."""
    tutorial = ROOT / "docs" / "tutorial.md"
    ran = 0
    for block in code_blocks(tutorial):
        target = _option(block, "file")
        if block.tag in SNIPPET_TAGS and target is not None:
            (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / target).write_text(block.text, encoding="utf-8")
        elif block.tag == "json":
            (tmp_path / "signups.jsonl").write_text(block.text, encoding="utf-8")
        elif block.tag == "console":
            commands = re.split(r"^\$ ", block.text, flags=re.M)[1:]
            for command in commands:
                line, *shown = command.rstrip("\n").split("\n")
                words = line.split()
                if words[:1] != ["tagengine"] or words[1:2][0] not in _REPLAYED:
                    continue
                result = subprocess.run(
                    [sys.executable, "-m", "engine", *words[1:]],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                printed = {_normal(out) for out in (result.stdout + result.stderr).split("\n")}
                for expected in shown:
                    if expected.strip() in ("", "…"):
                        continue
                    assert _normal(expected) in printed, (
                        f"{block.where}: `{line}` did not print {expected!r}:\n{result.stdout}"
                    )
                ran += 1
    assert ran >= 6


# ------------------------------------------------------------------ links
_LINK = re.compile(r"(?<!\!)\[(?:[^\]\n]|\][^(\n])*?\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`+[^`\n]*`+")


def _without_blocks(document: Path) -> str:
    lines = document.read_text(encoding="utf-8").split("\n")
    for block in code_blocks(document):
        for n in range(block.line - 1, min(block.end, len(lines))):
            lines[n] = ""
    return "\n".join(lines)


def _prose(document: Path) -> str:
    """The document without its code blocks and inline code (links there are not links)."""
    return _INLINE_CODE.sub("", _without_blocks(document))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"\]\([^)]*\)", "", heading.strip().lower())  # [text](link) → text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _without_blocks(document).split("\n"):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = _slug(heading[1])
        seen = counts.get(slug, 0)
        counts[slug] = seen + 1
        found.add(slug if seen == 0 else f"{slug}-{seen}")
    return found


def _links(document: Path) -> list[str]:
    return _LINK.findall(_prose(document))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_link_to_shared(document: Path) -> None:
    assert "../shared" not in document.read_text(encoding="utf-8")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings(document: Path) -> None:
    for target in _links(document):
        parts = urlsplit(target)
        if parts.scheme or target.startswith("//"):
            continue
        path, anchor = unquote(parts.path), unquote(parts.fragment)
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name}: link to a missing file: {target}"
        assert linked.is_relative_to(ROOT), f"{document.name}: link outside the repo: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{document.name}: no heading for {target}"


@pytest.mark.parametrize(
    "document", DOCUMENTS[1:], ids=lambda p: str(p.relative_to(ROOT))
)  # docs/*.md
def test_docs_link_outside_only_to_vendor_documentation(document: Path) -> None:
    for target in _links(document):
        parts = urlsplit(target)
        if not parts.scheme and not target.startswith("//"):
            continue
        host = parts.hostname or ""
        assert parts.scheme == "https", f"{document.name}: {target}"
        assert any(host == h or host.endswith("." + h) for h in VENDOR_HOSTS), (
            f"{document.name}: link outside the repository: {target}"
        )


def test_readme_links_the_analyst_docs() -> None:
    links = set(_links(ROOT / "README.md"))
    for page in ("docs/language.md", "docs/tutorial.md", "docs/coming-from-gtm-and-adobe-tags.md"):
        assert page in links, f"README.md does not link {page}"


def test_slugs_match_github() -> None:
    assert _slug("Settings: `edge { … }`") == "settings-edge---"
    assert _slug("`send event` fields") == "send-event-fields"
    assert _slug("A complete example") == "a-complete-example"
    assert _slug("Operators, loosest first") == "operators-loosest-first"
