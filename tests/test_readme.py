"""The README's Python example does what its comments say."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def test_the_python_example_fires_what_it_says() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example loads rules/ relative to the project root
    try:
        exec(compile(code.group(1), "README.md", "exec"), namespace)  # our own README, not input
    finally:
        os.chdir(cwd)
    result = namespace["result"]
    assert result.fired == ["Purchase"]
    assert [o.status for o in result.rules][:2] == ["fired", "condition_not_met"]
    assert namespace["data"]["id"] == "visitor-1"
