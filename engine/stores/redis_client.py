"""The connection to Redis shared by the Redis session store and the Redis outbox: one URL,
one client, key names, and Redis's errors translated at this boundary.

``redis://[:password@]host:port/db?prefix=tagengine:&partitions=16`` (``rediss://`` for TLS).
``prefix`` starts every key the engine writes (several apps may share one Redis);
``partitions`` is how many streams the outbox spreads sessions over (the same in every
process of an app: it is recorded in Redis at first use, and a different one is refused).
The password may also come from ``TAGENGINE_REDIS_PASSWORD``; it never appears in
:attr:`RedisTarget.name`, in errors or in logs.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.errors import OutboxError

__all__ = ["RedisTarget", "connect", "is_redis_url", "translated"]

_T = TypeVar("_T")

DEFAULT_PREFIX = "tagengine:"
DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 1000  # the partition is the last three digits of an entry's id

# A push fails fast while Redis is down (connection refused answers at once); a stale pooled
# connection (Redis restarted) is replaced once without the caller seeing it.
_CONNECT_TIMEOUT = 2.0
_TIMEOUT = 5.0


def is_redis_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("redis://", "rediss://", "unix://"))


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A connected Redis: the client (thread-safe, pooled), the key prefix, the outbox's
    partition count, and a name to show (the URL without its password or query)."""

    # Any: redis-py annotates every reply as the union of all RESP types; the replies used
    # here are known per command.
    client: Any
    # The same server without the transparent retry: for reads that must not run twice
    # unseen (XREADGROUP hands entries out: a reply lost to a retry is never read again).
    once: Any
    prefix: str
    partitions: int
    name: str
    url: str = field(repr=False)  # it may hold the password

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def partition(self, session_id: str) -> int:
        """The outbox stream of a session: stable across processes, hosts and restarts."""
        return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % self.partitions


_CLIENTS: dict[str, RedisTarget] = {}
_CLIENTS_LOCK = threading.Lock()
_PID = os.getpid()


def connect(url: str) -> RedisTarget:
    """The :class:`RedisTarget` for ``url``: one per URL in a process (the session store and
    the outbox on one URL share its client, and so the atomic push). Does no I/O."""
    global _PID
    with _CLIENTS_LOCK:
        if os.getpid() != _PID:  # a forked child: the parent's sockets are not ours
            _CLIENTS.clear()
            _PID = os.getpid()
        known = _CLIENTS.get(url)
        if known is None:
            known = _CLIENTS[url] = _make(url)
        return known


def _make(url: str) -> RedisTarget:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[-1]
    try:
        partitions = int(query.pop("partitions", [str(DEFAULT_PARTITIONS)])[-1])
    except ValueError:
        raise OutboxError(f"{_shown(url)}: partitions must be a whole number") from None
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise OutboxError(f"{_shown(url)}: partitions must be between 1 and {MAX_PARTITIONS}")
    if query:
        raise OutboxError(
            f"{_shown(url)}: unknown option {sorted(query)[0]!r} (known: prefix, partitions)"
        )
    options: dict[str, Any] = {}
    password = os.environ.get("TAGENGINE_REDIS_PASSWORD")
    if password and not parts.password:
        options["password"] = password
    address = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def client(retries: int) -> Any:
        return redis.Redis.from_url(
            address,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_TIMEOUT,
            retry=Retry(NoBackoff(), retries),
            retry_on_error=[redis.ConnectionError] if retries else [],
            health_check_interval=30,
            **options,
        )

    try:
        # Retried once: every write is idempotent (the scripts carry a token), so a command
        # whose reply was lost may run again; a stale pooled connection (Redis restarted)
        # is then replaced without the caller seeing it.
        return RedisTarget(client(1), client(0), prefix, partitions, _shown(url), url)
    except ValueError as exc:
        raise OutboxError(f"{_shown(url)}: {exc}") from None


def _shown(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextmanager
def translated(target: RedisTarget, doing: str) -> Iterator[None]:
    """Redis's errors, as :class:`~engine.errors.OutboxError` naming the server and what was
    being done (never the password: redis-py's messages hold host and port only)."""
    try:
        yield
    except redis.ConnectionError as exc:
        raise OutboxError(f"redis {target.name} unreachable while {doing}: {exc}") from None
    except redis.TimeoutError as exc:
        raise OutboxError(
            f"redis {target.name} timed out while {doing}: {exc} "
            "(a write may still have been applied)"
        ) from None
    except redis.RedisError as exc:
        raise OutboxError(f"redis {target.name}: {doing}: {exc}") from None


def call(target: RedisTarget, doing: str, fn: Callable[[], _T]) -> _T:
    with translated(target, doing):
        return fn()
