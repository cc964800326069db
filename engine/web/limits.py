"""Rate limits of the collect endpoint, per client IP and per visitor, with the ``limits``
package: :class:`RateLimits`.

A limit is a ``limits`` string (``"600/minute"``, ``"20/second;600/minute"`` for several);
each counts requests to ``POST /collect`` with the sliding-window-counter strategy (smooth at
window edges, two counters per key whatever the traffic). The counters live in this process's
memory, or in Redis when the engine's sessions are there (the same server, so every worker
and host shares them), or in any storage ``limits`` knows (``storage``: ``"memory://"``,
``"redis://…"``, ``"memcached://…"``).

When the storage cannot be reached (Redis down), requests are let through, with a warning:
the collector keeps answering real visitors; the limits come back with the storage.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from engine.stores.redis_sessions import RedisSessions

if TYPE_CHECKING:
    from engine.engine import Engine

__all__ = ["Limited", "RateLimits", "storage_for"]

log = logging.getLogger("engine.web")

_WARN_EVERY = 60.0  # seconds between two warnings that the storage cannot be reached
KEY_PREFIX = "tagengine-limits"

Scope = Literal["ip", "visitor"]


@dataclass(frozen=True, slots=True)
class Limited:
    """A refused request: which limit (``"ip"`` or ``"visitor"``), the limit's text, and the
    whole seconds after which a request may pass again (``Retry-After``)."""

    scope: Scope
    limit: str
    retry_after: int


def storage_for(engine: Engine, storage: str | None = None) -> str:
    """The ``limits`` storage URI: ``storage`` when given; the engine's Redis when its
    sessions are in Redis (its URL without tagengine's own query options; the password from
    ``TAGENGINE_REDIS_PASSWORD`` as the session store takes it); else ``"memory://"``."""
    if storage is not None:
        return storage
    sessions = engine.sessions
    if isinstance(sessions, RedisSessions):
        parts = urlsplit(sessions.url)
        netloc = parts.netloc
        password = os.environ.get("TAGENGINE_REDIS_PASSWORD")
        if password and parts.password is None and "@" not in netloc:
            netloc = f":{password}@{netloc}"
        scheme = "redis+unix" if parts.scheme == "unix" else parts.scheme  # as limits names it
        return urlunsplit((scheme, netloc, parts.path, "", ""))
    return "memory://"


class RateLimits:
    """Per-IP and per-visitor limits over one ``limits`` storage (``None`` turns one off)."""

    def __init__(self, per_ip: str | None, per_visitor: str | None, storage: str) -> None:
        self._per_ip: list[RateLimitItem] = parse_many(per_ip) if per_ip else []
        self._per_visitor: list[RateLimitItem] = parse_many(per_visitor) if per_visitor else []
        self._texts: dict[Scope, str] = {"ip": per_ip or "", "visitor": per_visitor or ""}
        options: dict[str, float | str | bool] = {}
        if storage.startswith("redis"):  # redis://, rediss://, redis+unix://
            # A limit check is on every request's path: never wait long for it.
            options = {
                "key_prefix": KEY_PREFIX,
                "socket_timeout": 0.5,
                "socket_connect_timeout": 0.5,
            }
        made = storage_from_string(storage, **options)
        if not isinstance(made, Storage):
            raise ValueError(f"rate_limit_storage {storage!r} is an asyncio storage")
        self.storage = made
        self.in_memory = storage.startswith("memory")  # no network: fine in an event loop
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._per_ip or self._per_visitor)

    def check(self, ip: str | None, visitor: str | None) -> Limited | None:
        """Count one request of ``ip`` and of ``visitor`` (either may be ``None``: not
        counted); the refusal when a limit is exceeded, else ``None``. A request refused by
        the IP limit is not counted against its visitor."""
        checks: list[tuple[Scope, list[RateLimitItem], str | None]] = [
            ("ip", self._per_ip, ip),
            ("visitor", self._per_visitor, visitor),
        ]
        for scope, items, key in checks:
            if key is None:
                continue
            for item in items:
                try:
                    allowed = self._limiter.hit(item, scope, key)
                    if allowed:
                        continue
                    reset = self._limiter.get_window_stats(item, scope, key).reset_time
                except Exception as exc:  # the storage is down: let the request through
                    self._warn(exc)
                    return None
                wait = reset - time.time()
                retry = max(1, min(math.ceil(wait), item.get_expiry()))
                return Limited(scope, self._texts[scope], retry)
        return None

    def _warn(self, exc: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._warned_at < _WARN_EVERY:
                return
            self._warned_at = now
        log.warning(
            "collect endpoint: rate limit storage unreachable, requests pass unlimited: %s: %s",
            type(exc).__name__,
            exc,
        )
