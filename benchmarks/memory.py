"""Memory benchmark: what an idle in-memory session costs, against its own state.

The workload is the repo's own: ``Engine.from_path("rules", dry_run=True)`` (in-memory
sessions, the default store) and the first page view of ``examples/shop.jsonl``. In one
process, with ``tracemalloc`` tracing every allocation:

- **after one page view**: N sessions are made and each gets that push (parsed from its JSON
  line for each session, as a web app parses each request's body); what is still allocated
  once they are all idle, divided by N, is the bytes of one session. Of that, the
  **state** is the data-layer state the session holds (``sys.getsizeof`` over the objects it
  reaches, each counted once, over all N), and the **overhead** is the rest: the session
  object, its store's entries, its id, the containers of its kept values and identity, its
  visitor memory, locks. The goal is an overhead of at most 1 KB (``OVERHEAD_TARGET``): a
  session costs 1 KB plus its state. The values the session keeps besides its state (what
  ``keep`` elements stored, the identity's values: here a Sitecore browser id and a campaign
  code) are part of the overhead, and shown apart for information;
- **empty**: N sessions made (``engine.session(id)``) and never pushed to;
- **packed**: the same page view pushed to N sessions of a store that keeps only one of
  them as it is (``MemorySessions(hot=1)``): what an idle session costs once the store has
  packed it, everything included. The figures above are of sessions as they are while
  among the ``hot`` ones (the store made with ``hot`` above N).

Targets are printed with PASS/FAIL; the exit status is 0 whatever they say. Run it from the
project root::

    .venv/bin/python -m benchmarks.memory            # 20,000 sessions, ~15 s (traced)
    .venv/bin/python -m benchmarks.memory --quick    # 5,000 sessions, ~3 s

:func:`row` gives the figures as one line, for other benchmarks to print.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import hot_path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
JOURNEYS = ROOT / "examples" / "shop.jsonl"

SESSIONS = 20_000
# Not fewer: what the engine caches in bounded caches (percent-encoded message pieces, a
# session's browser id among them: up to 4,096) would count as the sessions' own.
QUICK_SESSIONS = 5_000
OVERHEAD_TARGET = 1024  # bytes a session holds besides its data-layer state


@dataclass(frozen=True)
class Figures:
    """Bytes per session, averaged over ``sessions``."""

    sessions: int
    empty: float  # a session made and never pushed to
    total: float  # a session after one page view, everything it holds
    state: float  # of which its data-layer state
    values: float  # and the values it keeps besides (kept values, identity values)
    packed: float  # a session after one page view, packed (MemorySessions' `hot`)

    @property
    def overhead(self) -> float:
        return self.total - self.state


def page_view_line() -> str:
    """The JSON of the journey's first page view push."""
    for line in JOURNEYS.read_text().splitlines():
        if line.strip():
            push = json.loads(line)["push"]
            if push.get("event") == "page.view":
                return json.dumps(push)
    raise SystemExit(f"no page view in {JOURNEYS}")


def deep_size(roots: Iterable[object], seen: set[int]) -> int:
    """``sys.getsizeof`` of every object ``roots`` reach through dicts and lists, each
    object counted once (``seen`` holds the ids of those already counted)."""
    total = 0
    stack = list(roots)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        total += sys.getsizeof(value)
        if type(value) is dict:
            stack.extend(value.keys())
            stack.extend(value.values())
        elif type(value) is list or type(value) is tuple:
            stack.extend(value)
    return total


def _engine(hot: int) -> Any:
    from engine import Engine
    from engine.stores import MemorySessions

    return Engine.from_path(RULES, dry_run=True, sessions=MemorySessions(hot=hot))


def _traced(action: Any) -> int:
    """Bytes still allocated after ``action()`` (traced by tracemalloc), garbage collected."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def measure(count: int = SESSIONS) -> Figures:
    """The figures for ``count`` sessions (each measurement in an engine of its own)."""
    line = page_view_line()

    def warmed(hot: int = count + 1) -> Any:
        engine = _engine(hot)
        engine.session("warm-up").push(json.loads(line))  # caches, lazily built code
        engine.sessions.remove("warm-up")
        return engine

    with warmed() as engine:

        def make_empty() -> None:
            for i in range(count):
                engine.session(f"web-{i:06d}")

        empty = _traced(make_empty)
    del engine
    gc.collect()

    with warmed() as engine:

        def push_one() -> None:
            for i in range(count):
                engine.session(f"web-{i:06d}").push(json.loads(line))

        total = _traced(push_one)
        sessions = [engine.sessions.peek(f"web-{i:06d}") for i in range(count)]
        if any(session is None or session.pushes != 1 for session in sessions):
            raise SystemExit("a session was lost or not pushed to")
        seen: set[int] = set()
        state = deep_size((s.state for s in sessions), seen)
        # The kept values and the identity's, without the dicts holding them (the overhead's)
        values = 0
        for session in sessions:
            export = session.export()  # what the session holds, by name (copies: only read)
            live = session.kept
            for scope in ("pageview", "session"):
                values += deep_size((live[scope][name] for name in export["kept"][scope]), seen)
            values += deep_size((session.identity[key] for key in export["identity"]), seen)
    del sessions, session, live
    gc.collect()

    with warmed(hot=1) as engine:
        packed = _traced(push_one)
        if len(engine.sessions) != count or engine.sessions._hot is None:
            raise SystemExit("the sessions were not packed")
    return Figures(
        count, empty / count, total / count, state / count, values / count, packed / count
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def row(count: int = QUICK_SESSIONS) -> str:
    """The figures as one line: a session's bytes after one page view, its overhead against
    the target, and an empty session's bytes."""
    f = measure(count)
    return (
        f"memory per idle session: {f.total:,.0f} bytes after one page view = state "
        f"{f.state:,.0f} + overhead {f.overhead:,.0f} (target <= {OVERHEAD_TARGET:,}: "
        f"{verdict(f.overhead <= OVERHEAD_TARGET)}); empty session {f.empty:,.0f} bytes; "
        f"{f.packed:,.0f} bytes in all once packed"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SESSIONS:,} sessions")
    parser.add_argument("--sessions", type=int, help="how many sessions (default: 20,000)")
    options = parser.parse_args(argv)
    count = options.sessions or (QUICK_SESSIONS if options.quick else SESSIONS)
    started = time.perf_counter()
    print(
        f"Python {sys.version.split()[0]}; {count:,} in-memory sessions, rules/, dry run; "
        f"{hot_path()}\n"
    )
    f = measure(count)
    print("Bytes per session (tracemalloc: still allocated once idle / sessions):")
    print(f"  empty (made, never pushed to)            {f.empty:>8,.0f}")
    print(f"  after one page view of the shop journey  {f.total:>8,.0f}")
    print(f"    its data-layer state                   {f.state:>8,.0f}")
    print(f"    overhead (the rest)                    {f.overhead:>8,.0f}")
    print(f"      of which kept and identity values    {f.values:>8,.0f}")
    print(f"      of which the session's own structure {f.overhead - f.values:>8,.0f}")
    print(f"  after one page view, packed while idle     {f.packed:>8,.0f}")
    print("Targets:")
    for label, value in (("overhead after one page view", f.overhead), ("empty", f.empty)):
        ratio = value / OVERHEAD_TARGET
        print(
            f"  {verdict(value <= OVERHEAD_TARGET)}  {label}: {value:,.0f} bytes, "
            f"{ratio:.2f}x the target (<= {OVERHEAD_TARGET:,} bytes)"
        )
    print(f"\nTotal time {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
