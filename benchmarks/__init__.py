"""The benchmarks (README, "Layout"): run each with ``python -m benchmarks.NAME``."""

from __future__ import annotations

import os


def hot_path() -> str:
    """How this process runs the engine's hot path (README, "Compiled hot path")."""
    try:
        from engine import _hot

        names = _hot.compiled()
    except Exception as error:  # an engine under construction: say so, do not raise
        return f"hot path: unknown ({type(error).__name__}: {error})"
    if names:
        return f"hot path compiled (mypyc: {len(names)} of {len(_hot.HOT)} modules)"
    why = "TAGENGINE_PURE=1" if os.environ.get("TAGENGINE_PURE") == "1" else "no current build"
    return f"hot path run as Python ({why})"
