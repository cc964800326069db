"""The push's hot path, compiled to C with mypyc when it can be (README, "Compiled hot path").

Everything else about the package is in pyproject.toml. The modules in ``engine/_hot.py``'s
``HOT`` are plain, type-checked Python; mypyc turns them into one extension module group
(``engine/_hot__mypyc*.so`` and a small ``.so`` beside each source). A build writes
``engine/_hot.json``, a digest of the package's sources it compiled: ``engine._hot`` loads the
compiled modules only while the sources still match it, else the sources, so an edited module
is never shadowed by an older build.

``TAGENGINE_COMPILE=0`` builds pure Python; so does a machine without mypy or a C compiler
(the extensions are optional: a failed build leaves the sources in charge, and says so).
``make compile`` (run by ``make test``, ``make demo`` and ``make bench``) rebuilds in place.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from engine._hot import HOT, MANIFEST, digest, stamps  # noqa: E402  (kept with their reader)

sys.path.pop(0)

SOURCES = [name.replace(".", "/") + ".py" for name in HOT]


def _extensions() -> list[Any]:
    if os.environ.get("TAGENGINE_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("tagengine: mypy is not installed: building pure Python", file=sys.stderr)
        return []
    extensions = mypycify(SOURCES, opt_level="3", group_name="engine._hot")
    for extension in extensions:
        extension.optional = True  # no compiler: pure Python, not a failed install
    return extensions


class BuildHot(build_ext):  # type: ignore[misc]
    """Builds the extensions, then writes the manifest only if every one of them was built."""

    def run(self) -> None:
        # An earlier build's files (a module dropped from HOT among them) must not be shipped
        # or imported: the package holds no other extension module.
        target = ROOT / "engine" if self.inplace else Path(self.build_lib) / "engine"
        if target.is_dir():
            for stale in target.rglob("*.so"):
                stale.unlink()
            (target / MANIFEST).unlink(missing_ok=True)
        super().run()
        if not self.extensions:
            return
        outputs = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        manifest = target / MANIFEST
        if not all(path.exists() for path in outputs):
            # Part of a group is worse than none: leave the sources in charge.
            for path in outputs:
                path.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
            print("tagengine: the compiled hot path did not build: pure Python", file=sys.stderr)
            return
        package = ROOT / "engine"
        built = {"sources": digest(package), "stamps": stamps(package), "modules": list(HOT)}
        manifest.write_text(json.dumps(built, indent=1) + "\n")


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildHot})
