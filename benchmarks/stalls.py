"""GC-pause benchmark: the slowest push over a long run, with the garbage collector running.

The other push benchmarks freeze the collector while they time (``gc.freeze()``), so a full
collection never lands in a timed push. This one leaves it alone: the collector is enabled and
this benchmark never freezes or tunes it, nor collects but between runs; the engine does what
it does by default (``Engine(freeze_gc=True)``: README, "Garbage collection"), or not at all
with ``--no-freeze-gc``. It builds

- a ruleset of 10,000 rules in 100 files (plus the settings and shared elements of
  :mod:`benchmarks.load`): ten rules that real pushes fire (page views, add to cart, purchase,
  search, an ``on change`` identity rule, a glob), and 9,990 more, each listening to an event of
  its own (2% globs and 2% ``on change`` paths among them), with realistic conditions and
  Edge and Sitecore sends;
- ``Engine(ruleset, dry_run=True)`` with sessions in memory (the default store: the
  sessions used last as they are, the others packed, README "Garbage collection"), then
  80,000 live sessions, each pushed a page view;
- 150,000 pushes round-robin over the sessions, a mix of page views, adds to cart, purchases,
  searches, logins, events of the other rules and events no rule listens to; each one timed
  alone with ``time.perf_counter``.

Printed: the slowest push, p99 and p99.9, the full (generation-2) collections seen while
timing (``gc.callbacks``) with their total and longest duration, one full collection timed
after the run (the next one's pause: a run may end before the collector's own turn), and
PASS/FAIL for both of them under 50 ms; then the same with 10 rules, for comparison. The
exit status is 0 whatever the verdicts say. From the project root (a minute or two;
``--quick`` well under one)::

    .venv/bin/python -m benchmarks.stalls
    .venv/bin/python -m benchmarks.stalls --quick      # 20,000 sessions, 40,000 pushes
    .venv/bin/python -m benchmarks.stalls --rules 10000 --sessions 80000 --pushes 150000
    .venv/bin/python -m benchmarks.stalls --no-freeze-gc        # the engine not freezing
    .venv/bin/python -m benchmarks.stalls --freeze-survivors 20 # engine.collector's opt-in

:func:`row` measures 10,000 rules and 80,000 sessions (fewer pushes), by default and with the
opt-in, and returns one summary line (for ``benchmarks.floor``).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import hot_path
from benchmarks.load import ELEMENTS, ELEMENTS_FILE, SETTINGS, SETTINGS_FILE

TARGET_MS = 50.0  # the slowest push, at most
N_RULES = 10_000
COMPARE_RULES = 10
N_FILES = 100
SESSIONS = 80_000
PUSHES = 150_000
QUICK_SESSIONS = 20_000
QUICK_PUSHES = 40_000
SURVIVORS = 0.010  # engine.collector.freeze_survivors's default, for row()

PAGE_TYPES = ("home", "category", "product", "cart", "checkout", "landing", "article")
COUNTRIES = ("US", "GB", "FR", "DE", "ES", "IT")

# ------------------------------------------------------------------ the ruleset
# Rules 0-9: what the pushes below fire, the same at every size.
LIVE_RULES = """\
rule "Page view" {
  on "page.view"
  when page_type in ["home", "category", "product", "landing", "article"]
  send event {
    type: "web.webpagedetails.pageViews"
    xdm: {
      web.webPageDetails.name: page_name
      web.webPageDetails.pageViews.value: 1
      web.webPageDetails.siteSection: page_type
    }
    renderDecisions: true
    personalization: { decisionScopes: ["hero-banner"] }
  }
  send sitecore {
    type: "VIEW"
    page: state.page.name
    ext: { page_type: page_type }
  }
}

rule "Checkout view" {
  on "page.view"
  when page_type == "checkout" and cart_total > 0
  send event {
    type: "web.webpagedetails.pageViews"
    xdm: { web.webPageDetails.name: page_name, commerce.checkouts.value: 1 }
    data: { total: cart_total, tier: tier }
  }
}

rule "Add to cart" {
  on "commerce.productListAdds"
  when event.product.sku exists
  unless event.product.sku starts with "TEST-"
  send event {
    type: "commerce.productListAdds"
    xdm: {
      commerce.productListAdds.value: 1
      productListItems: [
        { SKU: event.product.sku, priceTotal: event.product.price * 1.2, quantity: 1 }
      ]
    }
  }
  send sitecore {
    type: "ADD"
    currency: "EUR"
    product: { item_id: event.product.sku, price: event.product.price, quantity: 1 }
  }
}

rule "Purchase" {
  on "commerce.purchase"
  when cart_total > 0
  unless state.user.internal
  limit 1 per session
  send event {
    type: "commerce.purchases"
    xdm: {
      commerce.purchases.value: 1
      commerce.order.priceTotal: cart_total
      commerce.order.purchaseID: event.eventInfo.orderId
    }
    data: { label: "Order %page_type%", tier: tier }
  }
}

rule "Search" {
  on "search.submit"
  when event.search.term exists and (event.search.count | default 0) >= 0
  unless country not in ["US", "GB", "FR", "DE", "ES", "IT"]
  send event {
    type: "siteSearch"
    data: { term: event.search.term | clean, results: event.search.count | default 0 }
    xdm: { web.webPageDetails.name: "Search results (%page_name%)" }
  }
  send sitecore { type: "SEARCH", page: state.page.name, ext: { query: event.search.term } }
}

rule "Identify" {
  on change state.user.email
  when user_email matches "@example\\\\.(com|org)$"
  send sitecore {
    type: "IDENTITY"
    email: user_email
    identifiers: [{ provider: "email", id: user_email }]
    ext: { tier: tier | default "none", country: country }
  }
}

rule "Promotion" {
  on "promo.*"
  when event.promo.id exists
  send event {
    type: "decisioning.propositionInteract"
    data: { promo: event.promo.id, page: page_name }
  }
}

rule "Video" {
  on "video.play"
  sample 50%
  send event { type: "media.play", data: { video: event.video.id } }
}

rule "Newsletter" {
  on "newsletter.signup"
  when user_email exists
  send sitecore { type: "IDENTITY", email: user_email, identifiers: [{ provider: "email", id: user_email }] }
}

rule "Error page" {
  on "page.view"
  when state.page.error exists
  send event { type: "web.webpagedetails.pageViews", data: { error: state.page.error } }
}
"""
LIVE_COUNT = 10


def other_rule(i: int, rng: random.Random) -> str:
    """Rule ``i`` (from 10 on): one no push of the mix fires unless it names it."""
    threshold = rng.randint(1, 500)
    page = rng.choice(PAGE_TYPES)
    if i % 50 == 0:
        trigger = f'on "campaign.{i}.*"'  # a glob
    elif i % 50 == 1:
        trigger = f"on change state.campaigns.c{i}"
    else:
        trigger = f'on "campaign.{i}.click"'
    if i % 3 == 0:
        return f"""\
rule "Campaign {i}" order {rng.choice((10, 50, 80))} {{
  {trigger}
  when cart_total > {threshold} and page_type == "{page}"
  unless state.user.internal
  limit 1 per session
  send event {{
    type: "commerce.purchases"
    xdm: {{
      commerce.order.priceTotal: cart_total
      commerce.order.purchaseID: event.eventInfo.orderId
      web.webPageDetails.name: page_name
    }}
    data: {{ label: "Campaign {i} on %page_type%", tier: tier }}
  }}
}}
"""
    if i % 3 == 1:
        return f"""\
rule "Campaign {i}" {{
  {trigger}
  when page_type in ["{page}", "landing", "article"] or tier == "gold"
  send event {{
    type: "web.webpagedetails.pageViews"
    xdm: {{ web.webPageDetails.name: page_name, web.webPageDetails.siteSection: "c-{i}" }}
    personalization: {{ decisionScopes: ["campaign-{i}"] }}
  }}
  send sitecore {{ type: "VIEW", page: state.page.name, ext: {{ campaign: {i} }} }}
}}
"""
    return f"""\
rule "Campaign {i}" {{
  {trigger}
  when (event.value | number) >= {threshold % 50} and country in ["US", "GB", "FR"]
  unless user_email contains "+test"
  send sitecore {{
    type: "CUSTOM"
    ext: {{ campaign: "c-{i}", value: event.value | default 0, country: country }}
  }}
}}
"""


def ruleset_sources(n_rules: int, n_files: int = N_FILES) -> list[tuple[str, bytes]]:
    """``n_rules`` rules (the ten live ones first) in up to ``n_files`` files."""
    rng = random.Random(n_rules)
    texts = [other_rule(i, rng) for i in range(LIVE_COUNT, n_rules)]
    files = max(1, min(n_files, -(-len(texts) // 100)))
    sources = [
        (SETTINGS_FILE, SETTINGS.encode()),
        (ELEMENTS_FILE, ELEMENTS.encode()),
        ("02-live.rules", LIVE_RULES.encode()),
    ]
    per = -(-len(texts) // files) if texts else 0
    for index in range(files if texts else 0):
        chunk = texts[index * per : (index + 1) * per]
        if chunk:
            sources.append((f"rules-{index:03d}.rules", "\n".join(chunk).encode()))
    return sources


# ------------------------------------------------------------------ the pushes
def page_view(rng: random.Random, n: int) -> dict[str, Any]:
    kind = rng.choice(PAGE_TYPES)
    return {
        "event": "page.view",
        "page": {"type": kind, "name": f"{kind.title()} {n % 97}"},
        "user": {
            "tier": rng.choice(("gold", "silver", "bronze")),
            "country": rng.choice(COUNTRIES),
        },
        "cart": {"total": rng.choice((0, 0, 25, 120.5, 480))},
    }


def make_pushes(n_rules: int, rng: random.Random, distinct: int = 512) -> list[dict[str, Any]]:
    """``distinct`` varied pushes; about half fire a rule."""
    pushes: list[dict[str, Any]] = []
    for n in range(distinct):
        pick = n % 10
        other = rng.randrange(LIVE_COUNT, max(n_rules, LIVE_COUNT + 1))
        if pick in (0, 1):
            pushes.append(page_view(rng, n))
        elif pick == 2:
            pushes.append(
                {
                    "event": "commerce.productListAdds",
                    "product": {"sku": f"SKU-{n}", "price": rng.choice((9.5, 20, 75))},
                }
            )
        elif pick == 3:
            pushes.append({"event": "commerce.purchase", "eventInfo": {"orderId": f"O-{n}"}})
        elif pick == 4:
            pushes.append(
                {"event": "search.submit", "search": {"term": f"shoes {n}", "count": n % 40}}
            )
        elif pick == 5:
            pushes.append({"user": {"email": f"visitor{n}@example.com"}})
        elif pick == 6:
            pushes.append({"event": f"campaign.{other}.click", "value": n % 70})
        elif pick == 7:
            pushes.append({"event": rng.choice(("promo.click", "video.play")), "promo": {"id": n}})
        elif pick == 8:
            pushes.append({"event": "scroll", "scroll": {"depth": rng.choice((25, 50, 75))}})
        else:
            pushes.append({"cart": {"total": rng.choice((0, 35, 99.9, 250))}})
    return pushes


# ------------------------------------------------------------------ the collector
@dataclass
class Collections:
    """Full (generation-2) collections, timed through ``gc.callbacks``."""

    durations: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the thread's CPU time: a busy machine
    _started: float = 0.0  # inflates the wall-clock durations, not these
    _cpu: float = 0.0
    counting: bool = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started, self._cpu = time.perf_counter(), time.thread_time()
        elif self.counting:
            self.durations.append(time.perf_counter() - self._started)
            self.cpu.append(time.thread_time() - self._cpu)

    def __enter__(self) -> Collections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


@dataclass
class Outcome:
    rules: int
    sessions: int
    pushes: int
    fired: int
    times: array[float]
    collections: list[float]
    collections_cpu: list[float]
    tracked: int
    frozen: int
    load_s: float
    full_after: float  # seconds, one gc.collect() after the run

    def quantile(self, q: float) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def slowest_ms(self) -> float:
        return max(self.times) * 1000

    @property
    def worst_ms(self) -> float:
        """The slowest push, or the next full collection when it would be longer: a run may
        end before the collector's turn (a 10,000-rule heap: 150,000 pushes, none)."""
        return max(self.slowest_ms, self.full_after * 1000)

    @property
    def passed(self) -> bool:
        return self.worst_ms < TARGET_MS

    def summary(self) -> str:
        gcs = self.collections
        longest = f", longest {max(gcs) * 1000:.1f} ms" if gcs else ""
        return (
            f"slowest push {self.slowest_ms:.1f} ms, next full collection "
            f"{self.full_after * 1000:.1f} ms (target < {TARGET_MS:.0f} ms): "
            f"{'PASS' if self.passed else 'FAIL'}; {len(gcs)} full collections while timing"
            f"{longest} ({self.rules:,} rules, {self.sessions:,} sessions)"
        )


def run(
    n_rules: int,
    n_sessions: int,
    n_pushes: int,
    *,
    freeze_gc: bool = True,
    survivors: float | None = None,
    seed: int = 15,
) -> Outcome:
    """Build, populate and time, as the module docstring says; ends with the engine closed.
    ``survivors``: the threshold (seconds) of :func:`engine.collector.freeze_survivors` for
    this run, or None."""
    from engine.collector import freeze_survivors, stop_freezing_survivors
    from engine.loader import clear_cache

    if survivors is not None:
        freeze_survivors(survivors)
    try:
        return _run(n_rules, n_sessions, n_pushes, freeze_gc, random.Random(seed))
    finally:
        stop_freezing_survivors()
        clear_cache()  # the loader's files: a later run starts from an empty heap


def _run(n_rules: int, n_sessions: int, n_pushes: int, freeze: bool, rng: random.Random) -> Outcome:
    from engine.engine import Engine
    from engine.loader import build_ruleset

    started = time.perf_counter()
    # As Engine.from_path loads: frozen by the loader when the engine freezes.
    ruleset = build_ruleset(ruleset_sources(n_rules), environ={}, freeze=freeze)
    engine = Engine(ruleset, dry_run=True, freeze_gc=freeze)
    load_s = time.perf_counter() - started
    del ruleset
    ids = [f"session-{n:06d}" for n in range(n_sessions)]
    session = engine.session
    for n, sid in enumerate(ids):
        session(sid).push(page_view(rng, n))
    pushes = make_pushes(n_rules, rng)
    work = [pushes[rng.randrange(len(pushes))] for _ in range(n_pushes)]
    times = array("d", bytes(8 * n_pushes))
    fired = 0
    clock = time.perf_counter
    with Collections() as seen:
        seen.counting = True
        for n in range(n_pushes):
            sid, item = ids[n % n_sessions], work[n]
            before = clock()
            result = session(sid).push(item)
            times[n] = clock() - before
            fired += bool(result.fired)
        seen.counting = False
    del result
    tracked = len(gc.get_objects())
    frozen = gc.get_freeze_count()
    before = clock()
    gc.collect()
    full_after = clock() - before
    engine.close()
    return Outcome(
        n_rules,
        n_sessions,
        n_pushes,
        fired,
        times,
        seen.durations,
        seen.cpu,
        tracked,
        frozen,
        load_s,
        full_after,
    )


def report(outcome: Outcome) -> None:
    gcs = outcome.collections
    print(
        f"{outcome.rules:,} rules (built and adopted in {outcome.load_s:.1f} s), "
        f"{outcome.sessions:,} live sessions, {outcome.pushes:,} pushes "
        f"({outcome.fired / outcome.pushes:.0%} fired a rule)"
    )
    print(
        f"  tracked by the collector after the run: {outcome.tracked:,} objects; "
        f"frozen (permanent generation): {outcome.frozen:,}"
    )
    print(
        f"  push: median {outcome.quantile(0.5) * 1e6:.0f} us, p99 "
        f"{outcome.quantile(0.99) * 1000:.2f} ms, p99.9 {outcome.quantile(0.999) * 1000:.2f} ms, "
        f"slowest {outcome.slowest_ms:.1f} ms"
    )
    if gcs:
        print(
            f"  full collections while timing: {len(gcs)}, total {sum(gcs) * 1000:.0f} ms, "
            f"longest {max(gcs) * 1000:.1f} ms (CPU time: longest "
            f"{max(outcome.collections_cpu) * 1000:.1f} ms)"
        )
    else:
        print("  full collections while timing: none")
    print(
        f"  one full collection after the run (the next one's pause): "
        f"{outcome.full_after * 1000:.1f} ms"
    )
    print(
        f"  slowest push and next full collection < {TARGET_MS:.0f} ms: "
        f"{'PASS' if outcome.passed else 'FAIL'} ({outcome.worst_ms:.1f} ms)"
    )


def row() -> str:
    """One summary line (for ``benchmarks.floor``): 10,000 rules and 80,000 live sessions,
    as the target says, with fewer timed pushes (the next full collection is timed anyway):
    the engine as it is by default, then with ``engine.collector.freeze_survivors()``. About
    a minute."""
    default = run(N_RULES, SESSIONS, QUICK_PUSHES)
    gc.collect()  # the run's sessions, for whatever comes next
    opted = run(N_RULES, SESSIONS, QUICK_PUSHES, survivors=SURVIVORS)
    gc.collect()
    return (
        f"{default.summary()}; with engine.collector.freeze_survivors(): "
        f"{opted.worst_ms:.1f} ms: {'PASS' if opted.passed else 'FAIL'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    options.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SESSIONS:,} sessions and {QUICK_PUSHES:,} pushes",
    )
    options.add_argument("--rules", type=int, default=N_RULES, help="rules of the big ruleset")
    options.add_argument("--sessions", type=int, help="live sessions")
    options.add_argument("--pushes", type=int, help="timed pushes")
    options.add_argument(
        "--no-compare", action="store_true", help=f"skip the {COMPARE_RULES}-rule run"
    )
    options.add_argument(
        "--no-freeze-gc",
        action="store_true",
        help="Engine(freeze_gc=False): the ruleset left in the collector's generations",
    )
    options.add_argument(
        "--freeze-survivors",
        type=float,
        metavar="MS",
        help="engine.collector.freeze_survivors(MS / 1000) for the runs (opt-in)",
    )
    args = options.parse_args(argv)
    sessions = args.sessions or (QUICK_SESSIONS if args.quick else SESSIONS)
    pushes = args.pushes or (QUICK_PUSHES if args.quick else PUSHES)
    if min(args.rules, sessions, pushes) < 1:
        options.error("--rules, --sessions and --pushes take positive numbers")
    if args.freeze_survivors is not None and not args.freeze_survivors > 0:
        options.error("--freeze-survivors takes a positive number of milliseconds")
    from engine.stores import MemorySessions

    freeze = not args.no_freeze_gc
    survivors = None if args.freeze_survivors is None else args.freeze_survivors / 1000
    print(
        f"Python {sys.version.split()[0]}, gc thresholds {gc.get_threshold()}; the collector "
        f"runs while timing; Engine(freeze_gc={freeze}), in-memory sessions "
        f"(MemorySessions(hot={MemorySessions().hot:,}): the others packed); {hot_path()}"
        + (f"; freeze_survivors({survivors})" if survivors is not None else "")
    )
    sizes = [args.rules] if args.no_compare else [args.rules, COMPARE_RULES]
    for n_rules in sizes:
        outcome = run(n_rules, sessions, pushes, freeze_gc=freeze, survivors=survivors)
        report(outcome)
        del outcome
        gc.collect()  # between runs only: the last run's sessions and ruleset
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
