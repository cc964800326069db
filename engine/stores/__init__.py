"""Where sessions and sends are kept: interchangeable stores behind two small interfaces
(:mod:`engine.stores.base`).

- sessions: :class:`~engine.stores.memory.MemorySessions` (one process, the default) or
  :class:`~engine.stores.redis_sessions.RedisSessions` (shared by processes and hosts);
- outbox: :class:`~engine.stores.sqlite.Outbox` (a SQLite file shared by the processes of one
  host, or in memory; its intake journal is :mod:`engine.stores.journal`) or
  :class:`~engine.stores.redis_outbox.RedisOutbox` (Redis Streams).

:func:`open_sessions` and :func:`open_outbox` make one from what an app or the command line
names: a ``redis://`` URL, a file, or nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from engine.errors import BacklogFull, EngineError, OutboxError
from engine.stores.base import Backlog, BaseOutbox, Entry, Sessions
from engine.stores.memory import MemorySessions
from engine.stores.redis_client import is_redis_url
from engine.stores.redis_outbox import RedisOutbox
from engine.stores.redis_sessions import RedisSessions
from engine.stores.sqlite import Outbox

__all__ = [
    "Backlog",
    "BacklogFull",
    "BaseOutbox",
    "Entry",
    "MemorySessions",
    "Outbox",
    "OutboxError",
    "RedisOutbox",
    "RedisSessions",
    "Sessions",
    "open_outbox",
    "open_sessions",
]


def open_sessions(
    sessions: Sessions | str | None, *, clock: Callable[[], float] = time.time
) -> Sessions:
    """``sessions`` itself, :class:`RedisSessions` for a ``redis://`` URL, or a new
    :class:`MemorySessions` for ``None``."""
    if isinstance(sessions, Sessions):
        return sessions
    if sessions is None:
        return MemorySessions(clock=clock)
    if is_redis_url(sessions):
        return RedisSessions(sessions, clock=clock)
    raise EngineError(
        f"sessions: expected a session store or a redis:// URL, not {sessions!r} "
        "(sessions live in memory unless they are shared in Redis)"
    )


def open_outbox(outbox: BaseOutbox | str | os.PathLike[str] | None) -> BaseOutbox:
    """``outbox`` itself, :class:`RedisOutbox` for a ``redis://`` URL, the SQLite
    :class:`Outbox` in the file it names, or in memory for ``None``."""
    if isinstance(outbox, BaseOutbox):
        return outbox
    if is_redis_url(outbox):
        return RedisOutbox(str(outbox))
    return Outbox(outbox)
