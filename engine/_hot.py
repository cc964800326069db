"""Which of the push's hot modules run compiled (mypyc, setup.py) and which as Python.

A build compiles ``HOT`` as one group and writes ``_hot.json``: the size, time and digest of
every ``.py`` file of the package as it compiled them (compiled code relies on the modules it
imports too: their classes, signatures and constants). When a hot module is first imported,
the build is used only if the sizes and times still hold, or else the digest; otherwise every
hot module is imported from its source. So an edited or checked-out file never leaves an
older build in charge, and a compiled module never calls into a stale compiled neighbour (the
group links them directly). An extension file beside a module that is not hot (left by a
build that compiled more) is never imported. ``TAGENGINE_PURE=1`` asks for the sources
whatever was built.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["HOT", "MANIFEST", "compiled", "current", "digest", "install", "stamps"]

# What every push runs. Not the stores' classes: mypyc builds a subclass of an ABC that shares
# its parent's isinstance cache, and a class of sqlite.py crashed in a weakref (their queue of
# sends in memory is functions only). Not the scope: generated code reads its attributes,
# which a compiled class serves at twice the cost, and its element reads ran slower compiled
# (as a function, or a class left to Python), as code that mostly reads Python objects'
# attributes and calls back into Python does. Not the engine's class: its push is
# engine.pushing, the builders' encoding in its own module.
HOT = (
    "engine.datalayer",
    "engine.destinations.edge",
    "engine.destinations.encoding",
    "engine.destinations.sitecore",
    "engine.pushing",
    "engine.runtime",
    "engine.stores.queued",
    "engine.values",
)
MANIFEST = "_hot.json"

_PACKAGE = Path(__file__).resolve().parent


def _sources(package: Path) -> list[tuple[str, os.stat_result]]:
    """The package's ``.py`` files (paths relative to it) and their stats, in path order."""
    found: list[tuple[str, os.stat_result]] = []
    folders = [(str(package), "")]
    while folders:
        folder, prefix = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    folders.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.name.endswith(".py"):
                    found.append((prefix + entry.name, entry.stat()))
    return sorted(found)


def digest(package: Path = _PACKAGE) -> str:
    """SHA-256 over the package's ``.py`` files, their paths and their contents."""
    total = hashlib.sha256()
    for name, _ in _sources(package):
        total.update(name.encode() + b"\0")
        total.update((package / name).read_bytes() + b"\0")
    return total.hexdigest()


def stamps(package: Path = _PACKAGE) -> dict[str, list[int]]:
    """Size and modification time of each ``.py`` file: what :func:`current` checks first."""
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in _sources(package)}


def current() -> bool:
    """Whether a build exists and was made from the sources as they are now: their sizes and
    times as the build saw them (a stat each), else their digest (a checkout that rewrote
    files without changing them)."""
    try:
        built = json.loads((_PACKAGE / MANIFEST).read_text())
        if not isinstance(built, dict):
            return False
        return built.get("stamps") == stamps() or built.get("sources") == digest()
    except (OSError, ValueError):  # no build, or an unreadable one
        return False


def _strays(package: Path = _PACKAGE) -> frozenset[str]:
    """Modules of the package with an extension file beside their source that no build of
    ``HOT`` accounts for (one left by an older build that compiled more): never imported."""
    found: set[str] = set()
    for folder, _, files in os.walk(package):
        for name in files:
            suffix = next((s for s in _EXTENSIONS if name.endswith(s)), None)
            if suffix is None:
                continue
            source = Path(folder, name[: -len(suffix)] + ".py")
            if source.is_file():
                parts = source.relative_to(package.parent).with_suffix("").parts
                found.add(".".join(parts))
    return frozenset(found - set(HOT))


_EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _source_spec(fullname: str) -> importlib.machinery.ModuleSpec | None:
    source = _PACKAGE.parent.joinpath(*fullname.split(".")).with_suffix(".py")
    return importlib.util.spec_from_file_location(fullname, source)


class _Finder(importlib.abc.MetaPathFinder):
    """Imports the hot modules from their ``.py`` files, unless the build is current, and any
    other module of the package from its ``.py`` file if an extension file sits beside it."""

    def __init__(self) -> None:
        self.use_build: bool | None = None  # decided at the first hot import
        self.strays: frozenset[str] | None = None  # found at the package's first import

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("engine."):
            return None
        if fullname not in HOT:
            if self.strays is None:
                self.strays = _strays()
            return _source_spec(fullname) if fullname in self.strays else None
        if self.use_build is None:
            self.use_build = os.environ.get("TAGENGINE_PURE") != "1" and current()
        if self.use_build:
            return None  # the usual finders: the extension module beside the source wins
        return _source_spec(fullname)


_FINDER = _Finder()


def install() -> None:
    """Put the finder ahead of the usual ones (``engine/__init__.py``, before any import)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def compiled() -> tuple[str, ...]:
    """The hot modules that run compiled (importing them)."""
    modules = [importlib.import_module(name) for name in HOT]
    return tuple(m.__name__ for m in modules if not str(m.__file__).endswith(".py"))
