"""Where sessions and sends are kept: interchangeable stores behind two small interfaces.

- sessions: :class:`~engine.stores.memory.MemorySessions` (one process, the default);
- outbox: :class:`~engine.stores.sqlite.Outbox` (a SQLite file, or in memory), whose intake
  journal is :mod:`engine.stores.journal`.
"""

from engine.errors import OutboxError
from engine.stores.memory import MemorySessions
from engine.stores.sqlite import Entry, Outbox

__all__ = ["Entry", "MemorySessions", "Outbox", "OutboxError"]
