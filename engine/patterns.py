"""Regular expressions for ``matches``: compiled once, run in linear time by RE2.

RE2 guarantees time linear in the input, so no rule can stall a push with catastrophic
backtracking; the price is no backreferences and no lookaround, which a load error explains.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import re2

__all__ = ["PatternError", "compile_pattern"]


class PatternError(ValueError):
    """A pattern RE2 cannot compile; the message says why."""


_options = re2.Options()
_options.log_errors = False


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Callable[[str], Any]:
    """The ``search`` function of the compiled pattern (unanchored, like the language says)."""
    try:
        compiled = re2.compile(pattern, _options)
    except re2.error as error:
        detail = error.args[0] if error.args else b""
        message = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        message = message or "invalid pattern"
        if any(token in pattern for token in ("(?=", "(?!", "(?<", "\\1", "\\2")):
            message += " (patterns run in linear time: no backreferences or lookaround)"
        raise PatternError(message) from None
    return compiled.search  # type: ignore[no-any-return]
