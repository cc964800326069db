"""The development loop behind ``tagengine dev``: hot-reloaded rules, the local emulator, and a
small HTTP endpoint that an app or ``curl`` posts pushes to.

::

    $ tagengine dev --rules rules/ --port 8000
    watching /home/me/shop/rules
    loaded rules/ (version 3f9c0a1b2d4e…, 12 rules)
    emulator on http://127.0.0.1:40313; POST pushes to http://127.0.0.1:8000/push (Ctrl+C stops)
    $ curl --json '{"event": "page.view", "page": {"name": "Home"}}' localhost:8000/push

Each push prints its trace (every rule considered and why, the sends and their answers); each
save prints ``reloaded …`` or the diagnostics that kept the old rules serving.

* :func:`run_dev`: the blocking command (Ctrl+C stops it).
* :class:`DevServer`: the same on background threads, as a context manager (tests, notebooks).
* :func:`create_dev_app`: the ASGI app alone: ``POST /push`` and ``GET /health``.

The endpoint is for the developer's own machine: requests from a web page on another origin,
or arriving on loopback under a non-loopback ``Host`` (DNS rebinding), get ``403``; ``/push``
takes ``application/json`` only (``415``) and at most ``max_body`` bytes, read chunk by chunk
(``413``) (:mod:`engine.emulator.guard`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import uvicorn
from rich.console import Console
from rich.text import Text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.diagnostics import Diagnostic
from engine.emulator import EmulatorServer, emulator_config, guard
from engine.emulator.server import (
    ThreadedServer,
    _bind,
    _is_loopback,
    serve_in_thread,
    stop_thread,
)
from engine.engine import Engine
from engine.envelopes import decode, read_envelope
from engine.errors import EngineError, PushError, RuleError
from engine.loader import build_ruleset
from engine.results import PushResult
from engine.ruleset import Ruleset
from engine.trace import render_summary, render_trace
from engine.watch import RulesWatcher

__all__ = [
    "DevServer",
    "ReplayReport",
    "create_dev_app",
    "replay_file",
    "run_dev",
]

MAX_BODY = 10 * 1024 * 1024  # bytes of one POST /push; the engine bounds the push itself
_CONFIGURED = ("org", "datastreams", "credentials", "client_keys", "context_ids", "overrides")


# ------------------------------------------------------------------ pushes in and out
class _Output:
    """The terminal, shared by request threads, the watcher and the replay: one push's trace
    or one reload report is printed whole."""

    def __init__(
        self, console: Console, *, trace: bool, lock: threading.Lock | None = None
    ) -> None:
        self.console = console
        self.trace = trace
        self.lock = lock or threading.Lock()

    def push(self, result: PushResult, where: str) -> None:
        with self.lock:
            for each in (result, *result.followups):
                if self.trace:
                    render_trace(self.console, each, where)
                    self.console.print()
                else:
                    render_summary(self.console, each)

    def error(self, message: str) -> None:
        with self.lock:
            self.console.print(Text(message, style="red"))

    def note(self, message: str, style: str = "dim") -> None:
        with self.lock:
            self.console.print(Text(message, style=style))

    def diagnostics(self, head: str, diagnostics: tuple[Diagnostic, ...]) -> None:
        with self.lock:
            self.console.print(Text(head, style="bold red"))
            for diagnostic in diagnostics:
                self.console.print(_styled(diagnostic))


def _styled(diagnostic: Diagnostic) -> Text:
    head, *rest = diagnostic.render().split("\n")
    location, _, message = head.partition(f": {diagnostic.severity}: ")
    text = Text.assemble(
        (location + ": ", "bold"),
        (
            f"{diagnostic.severity}: ",
            "bold red" if diagnostic.severity == "error" else "bold yellow",
        ),
        (message, "bold"),
    )
    for index, line in enumerate(rest):
        text.append("\n" + line, style="green" if index == 1 else "")
    return text


def _plural(count: int, word: str) -> str:
    plural = word + ("es" if word.endswith(("sh", "ch", "s")) else "s")
    return f"{count} {word if count == 1 else plural}"


# ------------------------------------------------------------------ the ASGI app
class _Guarded:
    """ASGI wrapper: refuses cross-site and rebinding requests (403), non-JSON bodies (415)
    and bodies above ``max_body`` bytes (413, read no further); then hands the body read to
    ``app``."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refused = guard.refusal(scope, headers)
        if refused is not None:
            await JSONResponse({"error": refused}, 403)(scope, receive, send)
            return
        body = b""
        if guard.declares_body(headers):
            if not guard.is_json(headers):
                got = headers.get("content-type", "none")
                message = (
                    f"{scope['path']} takes JSON only: send Content-Type: application/json "
                    f"(got {got}; with curl, use --json)"
                )
                await JSONResponse({"error": message}, 415)(scope, receive, send)
                return
            try:
                read = await guard.read_bounded(receive, headers, self.max_body)
            except guard.BodyTooLarge:
                message = f"a push is at most {self.max_body:,} bytes"
                await JSONResponse({"error": message}, 413)(scope, receive, send)
                return
            if read is None:  # the client went away
                return
            body = read
        await self.app(scope, guard.replaying(body, receive), send)


def create_dev_app(
    engine: Engine,
    console: Console,
    *,
    trace: bool = True,
    watcher: RulesWatcher | None = None,
    lock: threading.Lock | None = None,
    max_body: int = MAX_BODY,
) -> ASGIApp:
    """``POST /push`` (a push or an envelope as JSON, at most ``max_body`` bytes;
    ``?session=ID`` names the session of a bare push, default ``default``) → 200 with the
    ``--json`` line, and its trace printed on ``console`` (the full trace, or with
    ``trace=False`` a summary); 400 ``{"error": …}`` for a bad push. ``GET /health`` → the
    ruleset serving and ``watcher``'s last error, if any. ``lock`` is held while a trace
    prints, so other output sharing it is not interleaved. Requests are guarded as the module
    docstring says."""
    output = _Output(console, trace=trace, lock=lock)

    async def push(request: Request) -> JSONResponse:
        body = await request.body()  # read, bounded and JSON-checked, by _Guarded
        try:
            envelope = read_envelope(decode(body))
            session = request.query_params.get("session") or "default"
            result = await run_in_threadpool(lambda: envelope.run(engine, session))
        except (ValueError, PushError) as error:
            output.error(f"POST /push: bad push: {error}")
            return JSONResponse({"error": str(error)}, 400)
        except EngineError as error:
            output.error(f"POST /push: {error}")
            return JSONResponse({"error": str(error)}, 500)
        output.push(result, "POST /push")
        return JSONResponse(result.to_json(delivered=not engine.dry_run))

    async def health(request: Request) -> JSONResponse:
        ruleset = engine.ruleset
        error = watcher.last_error if watcher is not None else None
        return JSONResponse(
            {
                "status": "ok",
                "version": ruleset.version,
                "rules": len(ruleset.rules),
                "files": list(ruleset.files),
                "ruleset_error": error.render() if error is not None else None,
            }
        )

    app = Starlette(
        routes=[Route("/push", push, methods=["POST"]), Route("/health", health, methods=["GET"])]
    )
    return _Guarded(app, max_body)


# ------------------------------------------------------------------ replay
@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What :func:`replay_file` did: pushes processed and lines skipped as bad."""

    pushes: int
    bad: int


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                yield number, raw


def replay_file(
    engine: Engine, path: Path, console: Console, *, trace: bool = True
) -> ReplayReport:
    """Push every line of a JSONL file (push objects or envelopes; session ``default`` unless
    an envelope names one), printing each push's trace and each bad line's error."""
    return _replay(engine, path, _Output(console, trace=trace))


def _replay(engine: Engine, path: Path, output: _Output) -> ReplayReport:
    pushes = bad = 0
    for number, raw in _lines(path):
        where = f"{path}:{number}"
        try:
            result = read_envelope(decode(raw)).run(engine)
        except (ValueError, EngineError) as error:
            bad += 1
            output.error(f"{where}: error: {error}")
            continue
        pushes += 1
        output.push(result, where)
    skipped = f"; {_plural(bad, 'bad line')} skipped" if bad else ""
    output.note(f"replayed {_plural(pushes, 'push')} from {path}{skipped}", "bold")
    return ReplayReport(pushes, bad)


# ------------------------------------------------------------------ the server
class DevServer(ThreadedServer):
    """``tagengine dev`` on background threads, as a context manager::

        with DevServer(Path("rules/"), console=console) as dev:
            httpx.post(f"{dev.url}/push", json={"event": "page.view"})

    :meth:`start` loads the rules (broken ones are reported, and no rules serve until a good
    save), starts the emulator and an :class:`~engine.engine.Engine` delivering to it (with
    ``dry_run``, neither emulator nor delivery), watches the rules, replays ``replay`` and then
    serves on ``host:port`` (``port=0``: a free port; see :attr:`url`). ``replayed`` holds the
    replay's :class:`ReplayReport`.
    """

    def __init__(
        self,
        rules: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        replay: str | os.PathLike[str] | None = None,
        console: Console | None = None,
        trace: bool = True,
        dry_run: bool = False,
        debounce: float = 0.2,
        cache_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        startup_timeout: float = 5.0,
        max_body: int = MAX_BODY,
    ) -> None:
        self.rules = Path(rules)
        # How reports name the rules: "rules/" for a folder, as the user would type it.
        self._shown = f"{self.rules}{os.sep}" if self.rules.is_dir() else str(self.rules)
        self.host = host
        self.port = port
        self.replay = Path(replay) if replay is not None else None
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.dry_run = dry_run
        self.replayed: ReplayReport | None = None
        self._output = _Output(self.console, trace=trace)
        self._debounce = debounce
        self._cache_dir = cache_dir
        self._environ = environ
        self._startup_timeout = startup_timeout
        self._max_body = max_body
        self._loaded = False
        self._stack: ExitStack | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.emulator: EmulatorServer | None = None
        self.engine: Engine | None = None
        self.watcher: RulesWatcher | None = None

    def start(self) -> Self:
        """Start everything and return once the endpoint accepts connections. Raises
        :class:`OSError` when the address cannot be bound, :class:`RuntimeError` when the server
        does not start in time; whatever started is stopped again."""
        if self._stack is not None:
            return self
        with ExitStack() as stack:
            url: str | None = None
            if not self.dry_run:
                self.emulator = stack.enter_context(EmulatorServer())
                url = self.emulator.url
            # No rules serve until the watcher's first load swaps them in (or reports why not).
            empty = build_ruleset([], environ={})
            engine = stack.enter_context(
                Engine(
                    empty,
                    dry_run=self.dry_run,
                    edge_url=url,
                    sitecore_url=url,
                    # Credentials in the rules must not reach the real IMS either.
                    token_url=None if url is None else f"{url}/ims/token/v3",
                )
            )
            self.engine = engine
            watcher = RulesWatcher(
                self.rules,
                on_change=self._changed,
                on_error=self._failed,
                debounce=self._debounce,
                cache_dir=self._cache_dir,
                environ=self._environ,
            )
            # The real folder (after `..` and symlinks): the one whose saves count.
            self._output.note(f"watching {watcher.watching}")
            self.watcher = stack.enter_context(watcher)
            if self.replay is not None:
                self.replayed = _replay(engine, self.replay, self._output)
            app = create_dev_app(
                engine,
                self.console,
                trace=self._output.trace,
                watcher=self.watcher,
                lock=self._output.lock,
                max_body=self._max_body,
            )
            self._serve(app)
            stack.callback(self._shutdown)
            self._stack = stack.pop_all()
        return self

    def stop(self) -> None:
        """Stop serving, watching and the emulator (each within a few seconds)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; ``True`` if it has stopped."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    # ------------------------------------------------------------------ internals
    def _changed(self, ruleset: Ruleset) -> None:
        assert self.engine is not None
        self.engine.ruleset = ruleset
        if self.emulator is not None:
            # As strict as the real services for these rules: their org names the state
            # entries, their datastream, client key and credentials are the ones accepted.
            config = emulator_config(ruleset)
            self.emulator.configure(
                initial=True, **{name: getattr(config, name) for name in _CONFIGURED}
            )
        verb = "reloaded" if self._loaded else "loaded"
        self._loaded = True
        self._output.note(
            f"{verb} {self._shown} (version {ruleset.version[:12]}…, "
            f"{_plural(len(ruleset.rules), 'rule')})",
            "bold green",
        )

    def _failed(self, error: RuleError) -> None:
        errors = sum(1 for d in error.diagnostics if d.severity == "error")
        if self._loaded:
            assert self.engine is not None
            serving = self.engine.ruleset
            head = (
                f"reload of {self._shown} failed: {_plural(errors, 'error')}; still serving "
                f"version {serving.version[:12]}… ({_plural(len(serving.rules), 'rule')})"
            )
        else:
            head = (
                f"cannot load {self._shown}: {_plural(errors, 'error')}; "
                "no rules serve until a good save"
            )
        self._output.diagnostics(head, error.diagnostics)

    def _serve(self, app: ASGIApp) -> None:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            http="h11",
            loop="asyncio",
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
            access_log=False,
            timeout_graceful_shutdown=1,
            log_config=None,  # an in-process server must not reconfigure the host's logging
            log_level=None,
        )
        server = uvicorn.Server(config)
        self._server = server
        try:
            self._thread = serve_in_thread(
                server, sock, f"tagengine-dev-{self.port}", self._startup_timeout, "the dev server"
            )
        except RuntimeError:
            self._server = None
            raise

    def _shutdown(self, timeout: float = 2.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        stop_thread(server, thread, timeout)
        self._server = self._thread = None


def run_dev(
    rules: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replay: Path | None = None,
    console: Console,
    trace: bool = True,
    dry_run: bool = False,
) -> None:
    """``tagengine dev``: serve until Ctrl+C (then return normally). :class:`OSError` when
    ``host:port`` cannot be bound."""
    if not _is_loopback(host):
        console.print(
            Text(
                f"warning: {host} is reachable from other machines; anyone there can push", "yellow"
            )
        )
    with DevServer(
        rules, host=host, port=port, replay=replay, console=console, trace=trace, dry_run=dry_run
    ) as dev:
        target = f"emulator on {dev.emulator.url}; " if dev.emulator is not None else "dry run; "
        console.print(
            Text(f"{target}POST pushes to {dev.url}/push (Ctrl+C stops)", style="bold"),
        )
        try:
            while not dev.wait(0.5):
                pass
        except KeyboardInterrupt:
            console.print(Text("stopping", style="dim"))
