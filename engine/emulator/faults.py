"""Injected faults: what the emulator does instead of (or before) answering a request.

A fault comes from the ``X-Emulator-Fault`` request header (that request only) or from the
admin endpoint ``POST /emulator/faults`` / :meth:`EmulatorServer.set_faults` (every matching
request until removed or its ``count`` runs out). Both take the same keys:

``status``
    Answer this HTTP status instead of processing the request, with a body in the shape the
    path's service uses (RFC 7807 with an ``EXEG`` code on Edge paths).
``retry_after``
    The ``Retry-After`` header sent with ``status``: whole seconds or an HTTP-date, verbatim.
``delay``
    Seconds to wait before answering (or before dropping); the request is processed after it.
``drop``
    Close the connection without any response bytes.
``rate``
    Probability (0..1) that a matching request is affected; 1 by default.
``count``
    How many requests to affect before the rule removes itself; unlimited by default.
``path``
    Only requests whose path starts with this prefix (e.g. ``/ee``, ``/v1.2/event``).
``code``
    The ``EXEG-NNNN-SSS`` code of the Edge problem body, replacing the default for ``status``.
``seed``
    Admin only: reseeds the emulator's random source, so a ``rate`` is reproducible.

Header syntax: ``;``-separated ``key=value`` items and bare flags, keys with ``-`` or ``_``,
e.g. ``X-Emulator-Fault: status=503; retry-after=2; delay=1.5`` or ``X-Emulator-Fault: drop``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FAULT_HEADER", "Fault", "FaultError"]

FAULT_HEADER = "x-emulator-fault"
_KEYS = frozenset({"status", "retry_after", "delay", "drop", "rate", "count", "path", "code"})
_CODE = re.compile(r"EXEG-\d{4}-\d{3}")
_MAX_DELAY = 600.0


class FaultError(ValueError):
    """A fault description that cannot be used; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault rule (see the module docstring for each field)."""

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False
    rate: float = 1.0
    count: int | None = None
    path: str = ""
    code: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise FaultError(f"fault status must be 400..599, not {self.status}")
        if not (math.isfinite(self.delay) and 0 <= self.delay <= _MAX_DELAY):
            raise FaultError(f"fault delay must be 0..{_MAX_DELAY:g} seconds, not {self.delay}")
        if not (math.isfinite(self.rate) and 0 <= self.rate <= 1):
            raise FaultError(f"fault rate must be 0..1, not {self.rate}")
        if self.count is not None and self.count < 1:
            raise FaultError(f"fault count must be at least 1, not {self.count}")
        if self.retry_after is not None and self.status is None:
            raise FaultError("fault retry_after needs a status")
        if self.code is not None and not _CODE.fullmatch(self.code):
            raise FaultError(f"fault code must look like EXEG-0201-503, not {self.code!r}")
        if self.status is None and not self.drop and self.delay == 0:
            raise FaultError("a fault needs a status, a delay or drop")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from JSON-like data (keys as in the module docstring; ``-`` or ``_``)."""
        values: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = str(raw_key).strip().lower().replace("-", "_")
            if key not in _KEYS:
                raise FaultError(
                    f"unknown fault key {raw_key!r}; known: {', '.join(sorted(_KEYS))}"
                )
            values[key] = value
        return cls(
            status=_int(values, "status"),
            retry_after=_retry_after(values.get("retry_after")),
            delay=_number(values, "delay", 0.0),
            drop=_bool(values, "drop"),
            rate=_number(values, "rate", 1.0),
            count=_int(values, "count"),
            path=_text(values, "path") or "",
            code=_text(values, "code"),
        )

    @classmethod
    def from_header(cls, text: str) -> Fault:
        """A fault from an ``X-Emulator-Fault`` header value."""
        values: dict[str, Any] = {}
        for item in text.split(";"):
            item = item.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            key = key.strip()
            # A bare flag (``drop``) means true; everything else is text, converted by from_mapping.
            values[key] = value.strip() if eq else True
        if not values:
            raise FaultError("empty X-Emulator-Fault header")
        return cls.from_mapping(values)

    def to_json(self) -> dict[str, Any]:
        """The fault as JSON-like data, without the keys left at their defaults."""
        data = {k: v for k, v in asdict(self).items() if v != _DEFAULTS[k]}
        if self.retry_after is not None and self.retry_after.isdigit():
            data["retry_after"] = int(self.retry_after)
        return data

    def describe(self) -> str:
        """A short label for recorded requests: ``status=503 retry-after=2 delay=1.5 drop``."""
        parts = []
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.retry_after is not None:
            parts.append(f"retry-after={self.retry_after}")
        if self.delay:
            parts.append(f"delay={self.delay:g}")
        if self.drop:
            parts.append("drop")
        return " ".join(parts)


# ------------------------------------------------------------------ value parsing
def _int(values: Mapping[str, Any], key: str) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise FaultError(f"fault {key} must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise FaultError(f"fault {key} must be an integer, not {value!r}")


def _number(values: Mapping[str, Any], key: str, default: float) -> float:
    value = values.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise FaultError(f"fault {key} must be a number, not {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise FaultError(f"fault {key} must be a number, not {value!r}")


def _bool(values: Mapping[str, Any], key: str) -> bool:
    value = values.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise FaultError(f"fault {key} must be true or false, not {value!r}")


def _text(values: Mapping[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FaultError(f"fault {key} must be a string, not {value!r}")
    return value


def _retry_after(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FaultError(f"fault retry_after must be seconds or an HTTP-date, not {value!r}")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        if value < 0:
            raise FaultError(f"fault retry_after must not be negative, not {value!r}")
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise FaultError(f"fault retry_after must be seconds or an HTTP-date, not {value!r}")


_DEFAULTS: dict[str, Any] = asdict(Fault(drop=True)) | {"drop": False}
