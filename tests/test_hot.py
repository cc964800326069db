"""The compiled hot path (engine._hot, setup.py): used only while it matches the sources."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine import _hot

PACKAGE = Path(engine.__file__).resolve().parent
ROOT = Path(__file__).resolve().parent.parent
REPORT = "import engine, engine._hot as h; print(engine.__file__); print(','.join(h.compiled()))"


def _python(root: Path, code: str, **environ: str) -> str:
    """What a fresh interpreter running ``code`` prints, with the package copy under ``root``
    (``TAGENGINE_PURE`` as ``environ`` says, else unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TAGENGINE_PURE"}
    env.update(environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


def _compiled_in(root: Path, **environ: str) -> list[str]:
    """The hot modules a fresh interpreter runs compiled from the package copy under ``root``."""
    where, names = _python(root, REPORT, **environ).splitlines()
    assert Path(where).is_relative_to(root)  # the copy, not the package under test
    return [name for name in names.split(",") if name]


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """The package as built (sources, compiled files, manifest), somewhere else."""
    shutil.copytree(PACKAGE, tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


built = pytest.mark.skipif(not _hot.current(), reason="no current build (make compile)")


def test_this_process_runs_what_the_build_and_the_environment_say() -> None:
    expected = _hot.HOT if _hot.current() and os.environ.get("TAGENGINE_PURE") != "1" else ()
    assert _hot.compiled() == expected


@built
def test_a_current_build_runs_compiled(copy: Path) -> None:
    assert _compiled_in(copy) == list(_hot.HOT)


@built
def test_an_edit_anywhere_in_the_package_puts_every_source_back_in_charge(copy: Path) -> None:
    # Not a hot module: compiled code relies on the modules it imports too.
    with (copy / "engine" / "errors.py").open("a") as source:
        source.write("\n# edited\n")
    assert _compiled_in(copy) == []


@built
def test_a_file_rewritten_unchanged_keeps_the_build(copy: Path) -> None:
    # A checkout rewrites files: their times change, not their contents (the digest decides).
    source = copy / "engine" / "runtime.py"
    source.write_bytes(source.read_bytes())
    os.utime(source, ns=(1, 1))
    assert _compiled_in(copy) == list(_hot.HOT)


@built
def test_an_unreadable_manifest_means_the_sources(copy: Path) -> None:
    (copy / "engine" / _hot.MANIFEST).write_text("{not json")
    assert _compiled_in(copy) == []
    (copy / "engine" / _hot.MANIFEST).unlink()
    assert _compiled_in(copy) == []


def test_an_extension_file_left_beside_another_module_is_never_imported(copy: Path) -> None:
    # As an older build that compiled more modules leaves one (any extension file will do).
    extension = next(PACKAGE.glob("*.so"), None)
    if extension is None:  # no build here: make an extension file out of nothing
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        (copy / "engine" / f"scope{suffix}").write_bytes(b"not a library")
    else:
        shutil.copy(
            extension, copy / "engine" / ("scope" + extension.name[extension.name.index(".") :])
        )
    code = "import engine.scope as s; print(s.__file__)"
    assert _python(copy, code).strip() == str(copy / "engine" / "scope.py")


@built
def test_tagengine_pure_asks_for_the_sources(copy: Path) -> None:
    assert _compiled_in(copy, TAGENGINE_PURE="1") == []


@built
def test_a_push_gives_the_same_result_compiled_and_as_python(copy: Path) -> None:
    script = (
        "import json, engine\n"
        "from engine.runtime import Ids\n"
        "ids = Ids(event_id=lambda: 'e', request_id=lambda: 'r', browser_id=lambda: 'b')\n"
        f"app = engine.Engine(engine.load_ruleset({str(ROOT / 'rules')!r}),"
        " dry_run=True, clock=lambda: 1.7e9, ids=ids)\n"
        f"lines = open({str(ROOT / 'examples' / 'shop.jsonl')!r}).read().splitlines()\n"
        "out = []\n"
        "for line in filter(None, lines):\n"
        "    entry = json.loads(line)\n"
        "    result = app.push(entry['push'], session=entry['session'])\n"
        "    out.append([[s.request.url, s.request.body_bytes.decode()] for s in result.sends])\n"
        "    out.append([[o.rule, o.status, o.reason] for o in result.rules])\n"
        "print(json.dumps(out))\n"
    )

    compiled = _python(copy, script, TAGENGINE_PURE="0")
    pure = _python(copy, script, TAGENGINE_PURE="1")
    assert len(compiled) > 1000
    assert compiled == pure
