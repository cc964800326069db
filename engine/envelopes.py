"""Pushes as they arrive in files and requests: JSON text, a push object or an envelope."""

from __future__ import annotations

import json

__all__ = ["decode", "parse_envelope"]


def decode(data: str | bytes) -> object:
    """JSON text → a value; :class:`ValueError` naming what is wrong (never another error)."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error.msg} at column {error.colno}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {error.start + 1})") from None
    except RecursionError:
        raise ValueError("not a valid push: nested too deeply") from None


def parse_envelope(value: object) -> tuple[str | None, object]:
    """A decoded push, or an envelope ``{"session": …, "push": {…}}``: ``(session, push)``,
    with ``session`` ``None`` when not given. :class:`ValueError` for a bad session."""
    if isinstance(value, dict) and "push" in value and set(value) <= {"session", "push"}:
        session = value.get("session")
        if session is not None and (not isinstance(session, str) or not session):
            raise ValueError("an envelope's session must be a non-empty string")
        return session, value["push"]
    return None, value
