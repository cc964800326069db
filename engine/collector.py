"""Short full collections for a process with many live objects (README, "Garbage collection").

``Engine(freeze_gc=True)``, the default, freezes the ruleset when the engine takes it, so that
no full collection of the cyclic garbage collector scans it again. What a full collection
still scans is whatever lives outside that: in-memory sessions above all, over a millisecond
for every thousand of them. :func:`freeze_survivors` is the explicit opt-in for the rest: after
any full collection that took longer than ``slower_than`` seconds, everything that survived it
is frozen too (``gc.freeze()``), so the next ones scan only what was made since (with 80,000
sessions and 10 ms, none took over about 30 ms: ``python -m benchmarks.stalls
--freeze-survivors 10``).

It is process-wide and changes what the collector can free: a frozen object is still freed by
reference counting (sessions and rulesets hold no reference cycle), but one that dies inside a
reference cycle is kept for good. Use it when the app's long-lived objects do not die in
cycles (it acts right after a full collection, so no garbage is frozen: only what is alive
then and dies later).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

__all__ = ["freeze_survivors", "stop_freezing_survivors"]

_lock = threading.Lock()
_slower_than: float | None = None
_started = 0.0  # when the running full collection started (collections never overlap)


def freeze_survivors(slower_than: float = 0.010) -> None:
    """From now on, freeze what survives a full collection slower than ``slower_than``
    seconds (calling it again changes the threshold)."""
    global _slower_than
    if not slower_than > 0:
        raise ValueError("slower_than must be a positive number of seconds")
    with _lock:
        _slower_than = slower_than
        if _watch not in gc.callbacks:
            gc.callbacks.append(_watch)


def stop_freezing_survivors() -> None:
    """Undo :func:`freeze_survivors` (what it froze stays frozen)."""
    global _slower_than
    with _lock:
        _slower_than = None
        if _watch in gc.callbacks:
            gc.callbacks.remove(_watch)


def _watch(phase: str, info: dict[str, Any]) -> None:
    global _started
    if info.get("generation") != 2:
        return
    if phase == "start":
        _started = time.perf_counter()
        return
    limit = _slower_than
    if limit is not None and time.perf_counter() - _started > limit:
        # Right after a full collection: every object left is reachable, so no garbage is
        # frozen; the collection is over, so the generations' lists are whole.
        gc.freeze()
