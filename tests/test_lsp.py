"""``tagengine lsp`` through a real client session: JSON-RPC over the server's stdio, with
Content-Length framing, as an editor speaks it. And the TextMate grammar for highlighting."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from engine import vocabulary
from engine.values import FILTERS

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "editors" / "tagengine.tmLanguage.json"
TIMEOUT = 30.0

SETTINGS = """\
edge {
  datastream: "0dada9f4-fa94-4c9c-8aaf-fdbac6c56287"
  org: "53A16ACB5CC1D3760A495C99@AdobeOrg"
}
"""
ELEMENTS = """\
# shared elements
element cart_total = state.cart.total | default 0
element page_name  = state.page.name | clean
"""
MAIN = """\
rule "Purchase" {
  on "commerce.purchase"
  when cart_total > 0
  send event {
    type: "commerce.purchases"
    xdm: { commerce.order.priceTotal: cart_total }
  }
}

test "a purchase is sent" {
  push { event: "commerce.purchase", cart: { total: 10 } }
  push { event: "cart.viewed" }
  expect send event from "Purchase" { xdm.commerce.order.priceTotal: 10 }
}
"""


class Client:
    """A minimal LSP client: requests wait for their response; notifications are queued."""

    def __init__(self, command: list[str], cwd: Path, stderr: IO[bytes]) -> None:
        self.process = subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.notifications: list[dict[str, Any]] = []
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        try:
            while True:
                headers: dict[str, str] = {}
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        break
                    name, _, value = line.decode("ascii").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = stream.read(int(headers["content-length"]))
                self.messages.put(json.loads(body))
        except (OSError, ValueError):
            return
        finally:
            self.messages.put(None)

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        stdin.flush()

    def _next(self) -> dict[str, Any]:
        message = self.messages.get(timeout=TIMEOUT)
        if message is None:
            raise AssertionError("the server closed its output")
        return message

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        ident = self.next_id
        self.send({"id": ident, "method": method, "params": params})
        while True:
            message = self._next()
            if message.get("id") == ident and "method" not in message:
                assert "error" not in message, message
                return message.get("result")
            if "method" in message and "id" in message:  # a request from the server
                self.send({"id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def wait_for(self, method: str, match: Callable[[Any], bool]) -> Any:
        """The first notification ``method`` (already received or coming) whose params match."""
        for index, message in enumerate(self.notifications):
            if message["method"] == method and match(message["params"]):
                del self.notifications[: index + 1]
                return message["params"]
        self.notifications.clear()
        while True:
            message = self._next()
            if "method" in message and "id" in message:
                self.send({"id": message["id"], "result": None})
            elif message.get("method") == method and match(message["params"]):
                return message["params"]

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.request("shutdown", None)
                self.notify("exit", None)
            self.process.wait(timeout=TIMEOUT)
        except (OSError, AssertionError, queue.Empty, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self.reader.join(timeout=TIMEOUT)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "settings.rules").write_text(SETTINGS, encoding="utf-8")
    (tmp_path / "elements.rules").write_text(ELEMENTS, encoding="utf-8")
    (tmp_path / "main.rules").write_text(MAIN, encoding="utf-8")
    return tmp_path


@pytest.fixture
def client(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    log = tmp_path_factory.mktemp("lsp") / "stderr.log"
    with log.open("wb") as stderr:
        session = Client([sys.executable, "-m", "engine", "lsp"], ROOT, stderr)
        try:
            result = session.request(
                "initialize",
                {"processId": None, "rootUri": folder.as_uri(), "capabilities": {}},
            )
            capabilities = result["capabilities"]
            assert capabilities["completionProvider"]["triggerCharacters"]
            assert capabilities["hoverProvider"]
            assert capabilities["definitionProvider"]
            session.notify("initialized", {})
            yield session
        finally:
            session.close()
    assert "Traceback" not in log.read_text(encoding="utf-8", errors="replace")


def _open(client: Client, path: Path, text: str) -> str:
    uri = path.as_uri()
    client.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "tagengine", "version": 1, "text": text}},
    )
    return uri


def _change(client: Client, uri: str, text: str, version: int) -> None:
    client.notify(
        "textDocument/didChange",
        {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]},
    )


def _diagnostics(client: Client, uri: str) -> list[dict[str, Any]]:
    params = client.wait_for("textDocument/publishDiagnostics", lambda p: p["uri"] == uri)
    return list(params["diagnostics"])


def _errors(diagnostics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in diagnostics if d["severity"] == 1]


def _position(text: str, needle: str, shift: int = 0) -> dict[str, int]:
    offset = text.index(needle) + shift
    line = text.count("\n", 0, offset)
    return {"line": line, "character": offset - (text.rfind("\n", 0, offset) + 1)}


def _labels(result: Any) -> list[str]:
    items = result["items"] if isinstance(result, dict) else result
    return [item["label"] for item in items]


# ------------------------------------------------------------------ diagnostics as you type
def test_diagnostics_follow_the_unsaved_text(client: Client, folder: Path) -> None:
    path = folder / "main.rules"
    uri = _open(client, path, MAIN)
    assert _diagnostics(client, uri) == []

    broken = MAIN.replace("when cart_total > 0", "when cart_totl > 0")
    _change(client, uri, broken, 2)
    (diagnostic,) = _diagnostics(client, uri)
    assert diagnostic["message"] == "unknown element 'cart_totl' (did you mean 'cart_total'?)"
    assert diagnostic["severity"] == 1  # Error
    assert diagnostic["source"] == "tagengine"
    assert diagnostic["range"] == {
        "start": {"line": 2, "character": 7},
        "end": {"line": 2, "character": 16},
    }
    assert path.read_text(encoding="utf-8") == MAIN  # the file on disk is not the one checked

    _change(client, uri, MAIN, 3)
    assert _diagnostics(client, uri) == []


def test_a_syntax_error_is_published_with_its_position(client: Client, folder: Path) -> None:
    uri = _open(client, folder / "main.rules", MAIN.replace("cart_total > 0", "cart_total > > 0"))
    (diagnostic, *_) = _diagnostics(client, uri)
    assert diagnostic["severity"] == 1
    assert diagnostic["range"] == {
        "start": {"line": 2, "character": 20},
        "end": {"line": 2, "character": 21},
    }
    assert diagnostic["message"].startswith("unexpected '>'")


def test_an_edit_in_one_file_is_reported_in_the_file_that_breaks(
    client: Client, folder: Path
) -> None:
    # Renaming the element in elements.rules (unsaved) breaks its use in main.rules.
    main_uri = (folder / "main.rules").as_uri()
    uri = _open(client, folder / "elements.rules", ELEMENTS)
    # No error; the one warning is an editor's warning (severity 2), where the element is.
    (warning,) = _diagnostics(client, uri)
    assert warning["severity"] == 2
    assert warning["message"] == (
        "element 'page_name' is never used: no rule, element or string token reads it"
    )
    assert warning["range"]["start"] == {"line": 2, "character": 8}
    _change(client, uri, ELEMENTS.replace("element cart_total", "element basket_total"), 2)
    found = _diagnostics(client, main_uri)
    assert {d["message"] for d in found} == {
        "unknown element 'cart_total' (did you mean 'basket_total'?)"
    }
    assert {d["range"]["start"]["line"] for d in found} == {2, 5}

    _change(client, uri, ELEMENTS, 3)
    assert _errors(_diagnostics(client, main_uri)) == []


# ------------------------------------------------------------------ completion
def test_completion_after_a_pipe_lists_the_filters(client: Client, folder: Path) -> None:
    text = ELEMENTS + "element total_text = cart_total | \n"
    uri = _open(client, folder / "elements.rules", text)
    result = client.request(
        "textDocument/completion",
        {"textDocument": {"uri": uri}, "position": _position(text, "| \n", 2)},
    )
    assert set(_labels(result)) == set(FILTERS)


def test_completion_in_send_event_lists_its_fields(client: Client, folder: Path) -> None:
    text = MAIN.replace(
        '    type: "commerce.purchases"\n', '    type: "commerce.purchases"\n    \n'
    )
    uri = _open(client, folder / "main.rules", text)
    position = _position(text, '"commerce.purchases"\n    \n', len('"commerce.purchases"\n    '))
    result = client.request(
        "textDocument/completion", {"textDocument": {"uri": uri}, "position": position}
    )
    assert _labels(result) == list(vocabulary.EDGE_FIELDS)


def test_completion_of_a_trigger_lists_the_events_seen(client: Client, folder: Path) -> None:
    text = MAIN.replace('on "commerce.purchase"', 'on "commerce.purchase", "')
    uri = _open(client, folder / "main.rules", text)
    position = _position(text, '.purchase", "', len('.purchase", "'))
    result = client.request(
        "textDocument/completion", {"textDocument": {"uri": uri}, "position": position}
    )
    assert _labels(result) == ["cart.viewed", "commerce.purchase"]


def test_completion_in_an_expression_lists_the_elements(client: Client, folder: Path) -> None:
    uri = _open(client, folder / "main.rules", MAIN)
    position = _position(MAIN, "cart_total > 0")
    result = client.request(
        "textDocument/completion", {"textDocument": {"uri": uri}, "position": position}
    )
    labels = _labels(result)
    assert {"cart_total", "page_name", "state", "event", "when", "and"} <= set(labels)


def test_completion_in_a_settings_block_lists_its_keys(client: Client, folder: Path) -> None:
    text = SETTINGS.replace("  org:", "  \n  org:")
    uri = _open(client, folder / "settings.rules", text)
    position = _position(text, "  \n  org:", 2)
    result = client.request(
        "textDocument/completion", {"textDocument": {"uri": uri}, "position": position}
    )
    assert {"datastream", "org", "url", "fpid", "client_id"} <= set(_labels(result))
    assert "xdm" not in _labels(result)


# ------------------------------------------------------------------ hover and definition
def test_hover_on_an_element_shows_its_definition(client: Client, folder: Path) -> None:
    uri = _open(client, folder / "main.rules", MAIN)
    result = client.request(
        "textDocument/hover",
        {"textDocument": {"uri": uri}, "position": _position(MAIN, "cart_total > 0", 3)},
    )
    value = result["contents"]["value"]
    assert "element cart_total = state.cart.total | default 0" in value
    assert "elements.rules:2" in value


def test_hover_on_a_field_tells_its_meaning(client: Client, folder: Path) -> None:
    uri = _open(client, folder / "main.rules", MAIN)
    result = client.request(
        "textDocument/hover",
        {"textDocument": {"uri": uri}, "position": _position(MAIN, "type: ", 1)},
    )
    assert "`xdm.eventType`" in result["contents"]["value"]


def test_definition_jumps_to_the_element_line(client: Client, folder: Path) -> None:
    uri = _open(client, folder / "main.rules", MAIN)
    result = client.request(
        "textDocument/definition",
        {"textDocument": {"uri": uri}, "position": _position(MAIN, "priceTotal: cart_total", 14)},
    )
    location = result[0] if isinstance(result, list) else result
    assert location["uri"] == (folder / "elements.rules").as_uri()
    assert location["range"] == {
        "start": {"line": 1, "character": 8},
        "end": {"line": 1, "character": 18},
    }


def test_the_cli_does_not_import_pygls() -> None:
    code = "import sys, engine.cli; print('pygls' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ TextMate grammar
def _tokenize(grammar: dict[str, Any], line: str) -> list[tuple[str, str]]:
    """(text, scope) pairs for one line, the TextMate way for this grammar's simple patterns:
    at each point the earliest match wins, ties to the first pattern; `begin`/`end` regions
    use their inner patterns. Oniguruma and Python's `re` agree on these patterns."""
    repository = grammar["repository"]

    def flatten(patterns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        flat: list[dict[str, Any]] = []
        for pattern in patterns:
            if "include" in pattern:
                flat.extend(flatten([repository[pattern["include"].removeprefix("#")]]))
            elif "patterns" in pattern and "match" not in pattern and "begin" not in pattern:
                flat.extend(flatten(pattern["patterns"]))
            else:
                flat.append(pattern)
        return flat

    def scan(patterns: list[dict[str, Any]], start: int, stop: int, out: list[Any]) -> None:
        position = start
        while position < stop:
            best: tuple[int, int, re.Match[str], dict[str, Any]] | None = None
            for order, pattern in enumerate(patterns):
                regex = re.compile(pattern.get("match") or pattern["begin"])
                found = regex.search(line, position, stop)
                if found and (found.end() > found.start() or "begin" in pattern):
                    key = (found.start(), order)
                    if best is None or key < best[:2]:
                        best = (found.start(), order, found, pattern)
            if best is None:
                return
            _, _, found, pattern = best
            if "match" in pattern:
                if "name" in pattern:
                    out.append((found[0], pattern["name"]))
                for group, capture in pattern.get("captures", {}).items():
                    if found[int(group)]:
                        out.append((found[int(group)], capture["name"]))
                position = found.end()
            else:
                end = re.compile(pattern["end"]).search(line, found.end())
                close = end.start() if end else len(line)
                out.append((line[found.start() : end.end() if end else close], pattern["name"]))
                inner: list[Any] = []
                scan(flatten(pattern.get("patterns", [])), found.end(), close, inner)
                out.extend((text, f"{pattern['name']} {scope}") for text, scope in inner)
                position = end.end() if end else len(line)

    tokens: list[tuple[str, str]] = []
    scan(flatten(grammar["patterns"]), 0, len(line), tokens)
    return tokens


def test_the_textmate_grammar_is_valid_and_highlights_the_language() -> None:
    grammar = json.loads(GRAMMAR.read_text(encoding="utf-8"))
    assert grammar["scopeName"] == "source.tagengine"
    assert grammar["fileTypes"] == ["rules"]
    for name in (p["include"].removeprefix("#") for p in grammar["patterns"]):
        assert name in grammar["repository"]

    def scopes(line: str) -> dict[str, str]:
        return dict(_tokenize(grammar, line))

    found = scopes("element total = state.cart.total | default 0   # the total")
    assert found["element"] == "storage.type.element.tagengine"
    assert found["total"] == "variable.other.constant.element.tagengine"
    assert found["state"] == "variable.language.root.tagengine"
    assert found["default"] == "support.function.filter.tagengine"
    assert found["0"] == "constant.numeric.tagengine"
    assert found["# the total"] == "comment.line.number-sign.tagengine"

    found = scopes('  when event.event == "x" and request.bot != true')
    assert found["when"] == "keyword.control.tagengine"
    assert found["event"] == "variable.language.root.tagengine"
    assert found["request"] == "variable.language.root.tagengine"
    assert found["=="] == "keyword.operator.comparison.tagengine"
    assert found["and"] == "keyword.operator.word.tagengine"
    assert found["true"] == "constant.language.tagengine"

    found = scopes('    data: { label: "Order %order_id% (50% off)" }')
    assert found['"Order %order_id% (50% off)"'] == "string.quoted.double.tagengine"
    assert found["order_id"] == "string.quoted.double.tagengine variable.other.readwrite.tagengine"
    assert found["label"] == "variable.other.property.key.tagengine"

    found = scopes("  sample 10%")
    assert found["sample"] == "keyword.control.tagengine"
    assert found["10%"] == "constant.numeric.percent.tagengine"

    found = scopes("  send sitecore {")
    assert found["send"] == "keyword.other.send.tagengine"
    assert found["sitecore"] == "entity.name.type.destination.tagengine"
