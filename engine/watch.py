"""Hot reload: watch a ruleset folder and rebuild the ruleset when its ``.rules`` files change
(docs/semantics.md, "Hot reload").

::

    with Engine.from_path("rules/") as engine, watch_engine(engine, "rules/") as watcher:
        ...  # every good save is live on the next push; watcher.last_error holds a bad one

A :class:`RulesWatcher` runs a watchdog observer on the folder and a thread of its own. Only
``.rules`` files count: editor swap and backup files (``.x.rules.swp``, ``x.rules~``,
``4913``, ``.#x.rules``) are ignored, while an atomic save (a temporary file renamed onto
``x.rules``) and a ``.rules`` file deleted or renamed away do count.

A burst of events is debounced. Once events pause for a moment (``settle``) the watcher reads
every file and builds, while it waits for the full quiet period (``debounce``); it then reads the
files again and publishes only if nothing changed meanwhile, else it builds again. A
half-written file is therefore never published: what is published is exactly what the folder
held, unchanged, for ``debounce`` seconds after the last event. Building during the quiet period
keeps the latency near ``debounce`` rather than ``debounce`` plus the build.

An in-place save (how VS Code and ``cp`` write: truncate, then write) can pause longer than
``debounce`` between the truncation and the writes on a loaded machine. Where the observer
reports closes (inotify), a ``.rules`` file modified and not yet closed is being written: no build
is published until every such file is closed (or ``write_wait`` seconds pass without an event,
for a writer that never closes, a ``chmod`` or a missed event), then the files are read again.

The path is resolved (``..``, symlinks): the watcher watches the real folder
(:attr:`RulesWatcher.watching`), while files keep the names the path gives them.

Builds run on the watcher's thread, never on a push. A good build calls ``on_change`` with the
new :class:`~engine.ruleset.Ruleset` (the engine swaps it in as one reference); a bad one calls
``on_error`` with the :class:`~engine.errors.RuleError` and the old ruleset keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from engine.diagnostics import Diagnostic, Span
from engine.errors import EngineError, RuleError
from engine.loader import build_ruleset, require_rules, rule_files
from engine.ruleset import Ruleset

if TYPE_CHECKING:
    from engine.engine import Engine

__all__ = ["RulesWatcher", "is_rules_file", "watch_engine"]

logger = logging.getLogger(__name__)
# Reports go to on_change/on_error (and Engine.ruleset_error); the log is for an app that
# configures logging, never printed to stderr by default.
logger.addHandler(logging.NullHandler())

# Event kinds that can change what the loader reads. "opened" and "closed_no_write" are left
# out: the watcher's own reads cause them.
_CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})
_SETTLE = 0.05  # seconds of quiet before a build starts (at most half the debounce)
_WRITE_WAIT = 2.0  # seconds a file open for writing holds publishing back, at most

# What a build read: (file name, content, or None when unreadable); None: no such folder.
_Snapshot = tuple[tuple[str, bytes | None], ...] | None


def is_rules_file(name: str) -> bool:
    """Whether a file name is one the loader reads: ``*.rules``, but not an Emacs lock file."""
    return Path(name).suffix == ".rules" and not name.startswith(".#")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: RulesWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self._watcher._relevant(event):
            self._watcher._touch(event)


class RulesWatcher:
    """Rebuilds the ruleset at ``path`` (a folder, or one ``.rules`` file) when it changes.

    ``on_change(ruleset)`` runs after a good build that changed the version (or ended an
    error); ``on_error(error)`` after a bad one. Both run on the watcher's thread (or, for the
    check :meth:`start` makes, on the caller's). ``ruleset`` is the one serving now: when given,
    :meth:`start` only reports a difference from it; otherwise :meth:`start` loads the rules
    and reports the result. ``cache_dir``, ``environ`` and ``freeze`` are as for
    :func:`~engine.loader.load_ruleset` (an engine that freezes the collector's generations
    wants its rebuilds frozen as they end, before a collection scans them).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_change: Callable[[Ruleset], None],
        on_error: Callable[[RuleError], None],
        debounce: float = 0.2,
        cache_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        ruleset: Ruleset | None = None,
        write_wait: float = _WRITE_WAIT,
        freeze: bool = False,
    ) -> None:
        if debounce < 0:
            raise ValueError("debounce must not be negative")
        self.path = Path(path)
        self.debounce = debounce
        self.write_wait = write_wait
        self._settle = min(_SETTLE, debounce / 2)
        self._on_change = on_change
        self._on_error = on_error
        self._cache_dir = cache_dir
        self._environ = environ
        self._freeze = freeze
        # A folder is watched itself; a single file through its folder, by name. Both resolved:
        # `..` and symlinks would never match the paths of the observer's events.
        real = Path(os.path.realpath(self.path))
        self._single = None if real.is_dir() or not real.suffix else real.name
        self._root = real.parent if self._single else real
        self._ruleset = ruleset
        self._last_error: RuleError | None = None
        # Events, counted by the observer thread, read by the watcher thread.
        self._cond = threading.Condition()
        self._events = 0
        self._last_event = 0.0
        self._stopping = False
        # Files modified and not closed since: being written (only when closes are reported).
        self._writing: set[str] = set()
        self._closes = False
        # Published outcomes, for wait_for_rebuild.
        self._done = threading.Condition()
        self._rebuilds = 0
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def ruleset(self) -> Ruleset | None:
        """The last good ruleset (the one given or published)."""
        return self._ruleset

    @property
    def version(self) -> str | None:
        """The version of :attr:`ruleset`."""
        return None if self._ruleset is None else self._ruleset.version

    @property
    def last_error(self) -> RuleError | None:
        """The error of the last build when it failed; ``None`` once a good build follows."""
        return self._last_error

    @property
    def rebuilds(self) -> int:
        """How many builds have been reported (good, bad or unchanged) since creation."""
        return self._rebuilds

    @property
    def watching(self) -> Path:
        """What is watched: the real (resolved) folder, or the real file."""
        return self._root / self._single if self._single else self._root

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_for_rebuild(self, timeout: float = 5.0, *, after: int | None = None) -> bool:
        """Wait until :attr:`rebuilds` exceeds ``after`` (default: its value now); ``False`` on
        timeout. Read :attr:`rebuilds` before changing a file and pass it as ``after``, so a
        rebuild that ends before this call is not missed."""
        with self._done:
            mark = self._rebuilds if after is None else after
            return self._done.wait_for(lambda: self._rebuilds > mark, timeout)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Start watching, check the rules once (reporting a difference from ``ruleset``), and
        return. :class:`~engine.errors.EngineError` when the folder cannot be watched."""
        if self._thread is not None:
            return self
        with self._cond:
            self._stopping = False
            self._last_event = time.monotonic()
        self._observer = self._observe()
        # Compare the folder with the ruleset serving: it may have changed before the observer
        # started. Events seen meanwhile are left to the watcher thread.
        with self._cond:
            mark = self._events
        outcome, snapshot = self._build()
        with self._cond:
            raced = self._events != mark
        if not raced and self._snapshot() == snapshot:
            if isinstance(outcome, RuleError) or outcome.version != self.version:
                self._publish(outcome)
        elif not raced:
            self._touch()
        self._thread = threading.Thread(
            target=self._run, args=(mark,), name=f"tagengine-watch-{self.path}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching within about ``timeout`` seconds; nothing is reported afterwards (a
        build still running then is dropped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        observer, thread = self._observer, self._thread
        self._observer = self._thread = None
        if observer is not None:
            observer.stop()
            if threading.current_thread() is not observer:
                observer.join(max(deadline - time.monotonic(), 0.0))
        if thread is not None and threading.current_thread() is not thread:
            thread.join(max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():
                logger.warning(
                    "the rules watcher of %s did not stop within %s s", self.path, timeout
                )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RulesWatcher {str(self.path)!r} {state}, version {(self.version or '-')[:12]}>"

    # ------------------------------------------------------------------ internals
    def _observe(self) -> BaseObserver:
        handler = _Handler(self)
        try:
            observer: BaseObserver = Observer()
            observer.schedule(handler, str(self._root), recursive=False)
            observer.start()
            # inotify reports a file's last close after writing; the others may not.
            self._closes = type(observer).__name__ == "InotifyObserver"
        except OSError as first:
            # Out of inotify instances or watches, say: polling still works, only slower.
            logger.warning("watching %s by polling: %s", self._root, first)
            try:
                observer = PollingObserver(timeout=max(self.debounce / 2, 0.05))
                observer.schedule(handler, str(self._root), recursive=False)
                observer.start()
            except OSError as error:
                raise EngineError(f"cannot watch {self.path}: {error}") from None
            self._closes = False
        observer.name = f"tagengine-watch-observer-{self.path}"
        return observer

    def _relevant(self, event: FileSystemEvent) -> bool:
        if event.event_type not in _CHANGES:
            return False
        paths = [event.src_path]
        if event.event_type == "moved" and event.dest_path:
            paths.append(event.dest_path)
        for raw in paths:
            path = Path(os.path.abspath(os.fsdecode(raw)))
            if event.is_directory:
                # The folder itself deleted or moved away; its "modified" events only repeat
                # its files' events.
                if path == self._root and event.event_type in ("deleted", "moved"):
                    return True
                continue
            if path.parent != self._root:
                continue
            if self._single is not None:
                if path.name == self._single:
                    return True
            elif is_rules_file(path.name):
                return True
        return False

    def _touch(self, event: FileSystemEvent | None = None) -> None:
        with self._cond:
            self._events += 1
            self._last_event = time.monotonic()
            if event is not None and self._closes and not event.is_directory:
                path = os.path.abspath(os.fsdecode(event.src_path))
                if event.event_type in ("modified", "created"):
                    self._writing.add(path)
                else:  # closed, deleted, moved away
                    self._writing.discard(path)
            self._cond.notify_all()

    def _written(self) -> bool:
        """Wait until no file is open for writing (at most ``write_wait`` seconds after the
        last event); ``False`` when stopping."""
        with self._cond:
            while not self._stopping and self._writing:
                remaining = self._last_event + self.write_wait - time.monotonic()
                if remaining <= 0:
                    logger.info("%s: still open for writing; reading them anyway", self._writing)
                    self._writing.clear()
                    break
                self._cond.wait(remaining)
            return not self._stopping

    def _quiet(self, period: float) -> bool:
        """Wait until no event has come for ``period`` seconds; ``False`` when stopping."""
        with self._cond:
            while not self._stopping:
                remaining = self._last_event + period - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)
            return False

    def _run(self, handled: int) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._events == handled:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                if not self._quiet(self._settle) or not self._written():
                    return
                with self._cond:
                    handled = self._events
                outcome, snapshot = self._build()
                if not self._quiet(self.debounce):
                    return
                with self._cond:
                    if self._events != handled or self._writing:
                        continue  # changed during the build, or being written: build again
                if self._snapshot() != snapshot:
                    # Changed, and its event not seen (yet): build again after a quiet period.
                    self._touch()
                    continue
                self._publish(outcome)
            except Exception:  # a bug must not end hot reload for the whole process
                logger.exception("the rules watcher of %s failed; it keeps watching", self.path)

    def _read(self) -> tuple[list[tuple[str, bytes]], list[Diagnostic], _Snapshot]:
        sources: list[tuple[str, bytes]] = []
        problems: list[Diagnostic] = []
        seen: list[tuple[str, bytes | None]] = []
        files = rule_files(self.path)
        require_rules(self.path, files)  # a folder without rules is an error, as on load
        for file in files:  # names as load_ruleset gives them: its cache hits
            name = str(file)
            try:
                data = file.read_bytes()
            except OSError as error:
                message = f"cannot read file: {error.strerror or error}"
                problems.append(Diagnostic(Span(name, 1, 1, 1, 1), message))
                seen.append((name, None))
            else:
                sources.append((name, data))
                seen.append((name, data))
        return sources, problems, tuple(seen)

    def _snapshot(self) -> _Snapshot:
        try:
            return self._read()[2]
        except RuleError:
            return None

    def _build(self) -> tuple[Ruleset | RuleError, _Snapshot]:
        try:
            sources, problems, snapshot = self._read()
        except RuleError as error:  # no such folder
            return error, None
        try:
            ruleset = build_ruleset(
                sources,
                cache_dir=self._cache_dir,
                environ=self._environ,
                problems=problems,
                freeze=self._freeze,
            )
        except RuleError as error:
            return error, snapshot
        except Exception as error:  # a compiler bug: report it like a load error, keep serving
            logger.exception("loading %s failed", self.path)
            message = f"internal error while loading the rules: {type(error).__name__}: {error}"
            return RuleError([Diagnostic(Span(str(self.path), 1, 1, 1, 1), message)]), snapshot
        return ruleset, snapshot

    def _publish(self, outcome: Ruleset | RuleError) -> None:
        if self._stopping:
            return
        if isinstance(outcome, Ruleset):
            changed = outcome.version != self.version or self._last_error is not None
            self._ruleset, self._last_error = outcome, None
            if changed:
                logger.info(
                    "reloaded %s: version %s, %d rules",
                    self.path,
                    outcome.version[:12],
                    len(outcome.rules),
                )
                try:
                    self._on_change(outcome)
                except Exception:
                    logger.exception("the on_change callback of the rules watcher failed")
        else:
            self._last_error = outcome
            logger.warning(
                "%s: %s; still serving version %s\n%s",
                self.path,
                outcome.args[0],
                (self.version or "-")[:12],
                outcome.render(),
            )
            try:
                self._on_error(outcome)
            except Exception:
                logger.exception("the on_error callback of the rules watcher failed")
        with self._done:
            self._rebuilds += 1
            self._done.notify_all()


def watch_engine(
    engine: Engine,
    path: str | os.PathLike[str],
    *,
    on_change: Callable[[Ruleset], None] | None = None,
    on_error: Callable[[RuleError], None] | None = None,
    debounce: float = 0.2,
    cache_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    start: bool = True,
    freeze: bool | None = None,
) -> RulesWatcher:
    """A :class:`RulesWatcher` that swaps each good build into ``engine`` (then calls
    ``on_change``) and keeps a bad one in :attr:`RulesWatcher.last_error` (then calls
    ``on_error``); started unless ``start`` is false. Its builds are frozen (``freeze``) when
    the engine freezes (``Engine(freeze_gc=True)``, the default) unless told otherwise."""

    def swap(ruleset: Ruleset) -> None:
        engine.ruleset = ruleset
        if on_change is not None:
            on_change(ruleset)

    def failed(error: RuleError) -> None:
        if on_error is not None:
            on_error(error)

    watcher = RulesWatcher(
        path,
        on_change=swap,
        on_error=failed,
        debounce=debounce,
        cache_dir=cache_dir,
        environ=environ,
        ruleset=engine.ruleset,
        freeze=engine.freeze_gc if freeze is None else freeze,
    )
    return watcher.start() if start else watcher
