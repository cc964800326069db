"""`tagengine check` starts fast because it imports only what checking needs: the parser, the
checker and the compiler. A fresh Python runs the command on the project's rules/ folder and
lists what it imported; what `check` has no use for must not be there (benchmarks/startup.py
times the command: these modules were most of its start-up)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each was imported by `check` once, at a cost (ms, on a 2-core machine), through:
NOT_FOR_CHECK = (
    "pydantic",  # ~55 with the models: the settings (engine/settings_fields.py checks them)
    "pydantic_core",
    "engine.settings",
    "rich",  # ~11: a valid ruleset's one line is printed with click
    "orjson",  # engine.destinations' builders, imported by the package's __init__
    "engine.destinations.base",  # ... with importlib.metadata (~10)
    "engine.destinations.edge",
    "engine.destinations.sitecore",
    "engine.context",
    "httpx",
    "redis",
    "uvicorn",
    "starlette",
    "pygls",
    "engine.engine",
    "engine.runtime",
    "engine.codegen",  # conditions are generated on first run, never by a load
    "engine.datalayer",
    "engine.dispatch",
    "engine.background",
    "engine.clients",
    "engine.stores",
    "engine.emulator",
    "engine.devserver",
    "engine.web",
    "engine.cli_deliver",
    "engine.cli_outbox",
)

SCRIPT = """\
import json, sys
import engine.cli
engine.cli.cli(["check", "rules"], prog_name="tagengine", standalone_mode=False)
print(json.dumps(sorted(sys.modules)))
"""


def test_check_imports_nothing_it_does_not_need() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    summary, listed = done.stdout.splitlines()[-2:]
    assert re.fullmatch(r"\d+ rules?, \d+ elements?, \d+ tests? in \d+ files?", summary), summary
    modules = json.loads(listed)
    # It did check: the pipeline ran.
    for needed in ("lark", "engine.parser", "engine.checker", "engine.compiler"):
        assert needed in modules, needed
    loaded = {
        name
        for name in NOT_FOR_CHECK
        if any(m == name or m.startswith(name + ".") for m in modules)
    }
    assert not loaded, f"`tagengine check` imports {sorted(loaded)}"


def test_the_settings_are_built_when_first_read() -> None:
    script = SCRIPT.replace(
        "print(",
        "import engine.loader\n"
        "ruleset = engine.loader.load_ruleset('rules')\n"
        "before = 'pydantic' in sys.modules\n"
        "edge = ruleset.edge\n"
        "print(before, type(edge).__name__, 'pydantic' in sys.modules)\n"
        "print(",
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2] == "False EdgeSettings True"
