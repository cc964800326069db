"""Load-time benchmark: how close is loading a ruleset to the limit of the parser?

For generated rulesets of 10, 100, 1,000 and 10,000 rules (about 100 rules a file, as in the
reload folder, plus a settings file and a file of shared elements; and, for information, 100
rules in 100 files) it measures:

- **cold load**: ``engine.load_ruleset(folder)`` with the in-process cache cleared first
  (``engine.loader.clear_cache()``) and no disk cache: read, parse, check and compile every file;
- **bare parse**: lark alone, with the project grammar and post-lexer, parsing the same files
  into plain lark trees (the parser is built once, outside the timing). This is the limit of
  this parser; the ratio cold / bare is the engine's overhead on top of it;
- **reload** of a 100-file, 10,000-rule folder after one file changed, with the in-process cache
  warm (only that file should be parsed again), and a **warm start from disk cache**: a fresh
  in-process cache with ``cache_dir`` filled by an earlier load.

Small sizes are repeated and the best time is kept. Targets are printed with PASS/FAIL, but the
exit status is 0 whatever they say. Run it from the project root::

    .venv/bin/python -m benchmarks.load                  # 10, 100, 1000, 10000 rules
    .venv/bin/python -m benchmarks.load --sizes 10,100   # other sizes
    .venv/bin/python -m benchmarks.load --quick          # smaller sizes, fewer repeats
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import lark

import engine.parser

DEFAULT_SIZES = (10, 100, 1_000, 10_000)
QUICK_SIZES = (10, 100, 1_000)
RELOAD_RULES = 10_000
RELOAD_FILES = 100
RULES_PER_FILE = 100
SPREAD_RULES = 100  # the worst case, shown for information: one rule a file

# Targets.
RATIO_TARGET = 1.3  # cold load / bare parse
COLD_1000_TARGET = 1.0  # seconds, cold load of 1,000 rules
RELOAD_TARGET = 0.300  # seconds, reload after one file of a 10,000-rule folder changed

SETTINGS_FILE = "00-settings.rules"
ELEMENTS_FILE = "01-elements.rules"

SETTINGS = """\
# Destinations shared by the whole folder.
edge {
  datastream: "0dada9f4-fa94-4c9c-8aaf-fdbac6c56287"
}

sitecore {
  url: "http://127.0.0.1:1"
  client_key: "k"
  pos: "p"
  language: "EN"
  currency: "EUR"
}
"""

ELEMENTS = """\
# Data elements shared by every rule file.
element page_type  = state.page.type | lower | default "unknown"
element page_name  = state.page.name | clean | default ""
element cart_total = state.cart.total | default 0
element order_id   = event.eventInfo.orderId
element user_email = state.user.email | trim | lower
element tier       = state.user.tier keep visitor
element country    = state.user.country | upper | default "US" keep session
"""


# ------------------------------------------------------------------ the generator
def _rule(i: int, rng: random.Random, variant: int) -> str:
    """One realistic rule; ``i`` makes its name unique, ``variant`` changes one literal."""
    order = rng.choice((10, 20, 50, 50, 50, 80))
    threshold = rng.randint(1, 500) + variant
    page = rng.choice(("checkout", "cart", "product", "home", "category"))
    scope = rng.choice(("hero-banner", "cart-reco", "footer-promo"))
    revision = f" rev {variant}" if variant else ""
    kind = i % 5
    if kind == 0:
        return f"""\
rule "Purchase {i}" order {order} {{
  on "evt.{i}", "commerce.*"
  when cart_total > {threshold} and page_type == "{page}"
  unless state.user.internal
  limit 1 per session
  send event {{
    type: "commerce.purchases"
    xdm: {{
      commerce.purchases.value: 1
      commerce.order.priceTotal: cart_total
      commerce.order.purchaseID: event.eventInfo.orderId
    }}
    data: {{ label: "Order %page_type% {i}{revision}", tier: tier }}
    documentUnloading: true
  }}
}}
"""
    if kind == 1:
        return f"""\
rule "Page view {i}" {{
  on "page.view", "viewStart"
  when page_type in ["{page}", "landing", "article"]
  send event {{
    type: "web.webpagedetails.pageViews"
    xdm: {{
      web.webPageDetails.name: page_name
      web.webPageDetails.pageViews.value: 1
      web.webPageDetails.siteSection: "section-{i}{revision}"
    }}
    renderDecisions: true
    personalization: {{ decisionScopes: ["{scope}"] }}
  }}
  send sitecore {{
    type: "VIEW"
    page: state.page.name
    ext: {{ page_type: page_type, rule_id: {i} }}
  }}
}}
"""
    if kind == 2:
        return f"""\
rule "Add to cart {i}" order {order} {{
  on "commerce.productListAdds"
  when event.product.sku exists
  when (event.product.price | number) >= {threshold} or tier == "gold"
  unless event.product.sku starts with "TEST-"
  send event {{
    type: "commerce.productListAdds"
    xdm: {{
      commerce.productListAdds.value: 1
      productListItems: [
        {{ SKU: event.product.sku, priceTotal: event.product.price * 1.2, quantity: 1 }}
      ]
    }}
    data: {{ campaign: "cart-{i}{revision}" }}
  }}
  send sitecore {{
    type: "ADD"
    currency: "EUR"
    product: {{ item_id: event.product.sku, price: event.product.price, quantity: 1 }}
  }}
}}
"""
    if kind == 3:
        return f"""\
rule "Identify {i}" order {order} {{
  on change state.user.email
  when user_email matches "@example\\\\.(com|org)$"
  unless user_email contains "+test{revision}"
  send sitecore {{
    type: "IDENTITY"
    email: user_email
    identifiers: [{{ provider: "email", id: user_email }}]
    ext: {{ tier: tier | default "none", country: country, source: "rule-{i}" }}
  }}
}}
"""
    return f"""\
rule "Search {i}" {{
  on "search.submit", "search.*"
  when event.search.term exists and (event.search.count | default 0) > {threshold % 5}
  unless country not in ["US", "GB", "FR", "DE"]
  sample {rng.choice((10, 25, 50, 100))}%
  send event {{
    type: "siteSearch"
    data: {{ term: event.search.term | clean, results: event.search.count | default 0 }}
    xdm: {{ web.webPageDetails.name: "Search results{revision} (%page_name%)" }}
  }}
  send sitecore {{ type: "SEARCH", page: state.page.name, ext: {{ query_id: "{i}" }} }}
}}
"""


def files_for(n_rules: int) -> int:
    """How many rule files ``n_rules`` rules are spread over: about RULES_PER_FILE a file, the
    density of the reload folder (10,000 rules in 100 files) and of a real property."""
    return max(1, min(RELOAD_FILES, -(-n_rules // RULES_PER_FILE)))


def rule_file_name(index: int) -> str:
    return f"rules-{index:03d}.rules"


def rule_file(index: int, first: int, count: int, variant: int = 0) -> str:
    """The text of rule file ``index``: rules ``first`` to ``first + count - 1``."""
    rng = random.Random(index)
    header = f"# Generated rule file {index}: rules {first} to {first + count - 1}.\n\n"
    return header + "\n".join(_rule(i, rng, variant) for i in range(first, first + count))


def generate(n_rules: int, n_files: int | None = None) -> dict[str, str]:
    """A ruleset of ``n_rules`` rules: file name → text, in file-name order."""
    sources = {SETTINGS_FILE: SETTINGS, ELEMENTS_FILE: ELEMENTS}
    n_files = files_for(n_rules) if n_files is None else n_files
    base, extra = divmod(n_rules, n_files)
    first = 1
    for index in range(n_files):
        count = base + (1 if index < extra else 0)
        sources[rule_file_name(index)] = rule_file(index, first, count)
        first += count
    return sources


def write_folder(folder: Path, sources: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (folder / name).write_text(text, encoding="utf-8")


def rewrite_one(folder: Path, n_rules: int, variant: int) -> Path:
    """Rewrite the middle rule file with different literals (and a different length)."""
    n_files = files_for(n_rules)
    index = n_files // 2
    per_file = n_rules // n_files  # generate() gives every file this many when it divides
    path = folder / rule_file_name(index)
    path.write_text(rule_file(index, index * per_file + 1, per_file, variant), encoding="utf-8")
    return path


# ------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Timing:
    best: float
    median: float
    runs: int


@dataclass
class Bench:
    """One thing to time: ``action``, with ``before`` and ``after`` run untimed around every
    run (``after`` should drop what the run left in memory: a big live heap slows down whatever
    runs next, through the garbage collector)."""

    action: Callable[[], object]
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    times: list[float] = field(default_factory=list)

    def run(self) -> None:
        if self.before is not None:
            self.before()
        gc.collect()
        start = time.perf_counter()
        result = self.action()
        elapsed = time.perf_counter() - start
        del result
        if self.after is not None:
            self.after()
        self.times.append(elapsed)

    def timing(self) -> Timing:
        return Timing(min(self.times), statistics.median(self.times), len(self.times))


def measure_together(
    benches: Sequence[Bench], *, min_runs: int = 1, max_runs: int = 7, budget: float = 1.5
) -> None:
    """Run ``benches`` in turns, so that a slow spell of a shared machine hits them alike.

    Rounds repeat between ``min_runs`` and ``max_runs`` times while each bench has spent less
    than ``budget`` seconds on average. A bench that already holds times (taken the same way)
    counts them as its first rounds.
    """
    rounds = 0
    while rounds < max_runs and (
        rounds < min_runs or sum(sum(b.times) for b in benches) < budget * len(benches)
    ):
        for bench in benches:
            if len(bench.times) <= rounds:
                bench.run()
        rounds += 1


def measure(
    action: Callable[[], object],
    *,
    before: Callable[[], None] | None = None,
    min_runs: int = 1,
    max_runs: int = 7,
    budget: float = 1.5,
) -> Timing:
    """Time ``action`` alone (see :func:`measure_together`)."""
    bench = Bench(action, before)
    measure_together([bench], min_runs=min_runs, max_runs=max_runs, budget=budget)
    return bench.timing()


class BareParser:
    """lark with the project grammar and post-lexer, built once: the parser's limit."""

    def __init__(self) -> None:
        start = time.perf_counter()
        self.postlex = engine.parser.Newlines()
        self.lark = lark.Lark(
            engine.parser.GRAMMAR,
            parser="lalr",
            lexer="contextual",
            postlex=self.postlex,
            maybe_placeholders=True,
        )
        self.build_time = time.perf_counter() - start

    def parse_all(self, texts: Iterable[str]) -> int:
        count = 0
        for text in texts:
            self.postlex.text = text
            self.lark.parse(text)
            count += 1
        return count


def load_engine() -> tuple[ModuleType, ModuleType] | str:
    """``(engine, engine.loader)``, or why they cannot be used yet."""
    try:
        import engine
        import engine.loader as loader
    except Exception as error:  # the engine is being written: any import failure is reported
        return f"engine cannot be imported ({type(error).__name__}: {error})"
    missing = [
        name
        for module, name in ((engine, "load_ruleset"), (loader, "clear_cache"))
        if not hasattr(module, name)
    ]
    if missing:
        return "engine does not provide " + ", ".join(missing) + " yet"
    return engine, loader


def try_load(engine_mod: ModuleType, folder: Path, n_rules: int) -> str | float:
    """Load ``folder`` once (the caller clears the cache first): the time it took, or why it
    failed or did not give the ``n_rules`` rules generated."""
    gc.collect()
    start = time.perf_counter()
    try:
        ruleset = engine_mod.load_ruleset(folder)
        elapsed = time.perf_counter() - start
    except engine_mod.RuleError as error:
        return f"load_ruleset rejected the generated rules:\n{error}"
    except Exception as error:  # a crash in an engine under construction is reported, not raised
        return f"load_ruleset crashed: {type(error).__name__}: {error}"
    loaded = len(ruleset.rules)
    if loaded != n_rules:
        return f"load_ruleset gave {loaded} rules for {n_rules} generated"
    return elapsed


# ------------------------------------------------------------------ reporting
def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:8.1f} ms"
    return f"{value:8.2f} s "


def rate(n_rules: int, value: float) -> str:
    return f"{n_rules / value:>9,.0f} rules/s" if value > 0 else "        - rules/s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


@dataclass
class SizeResult:
    n_rules: int
    n_files: int
    n_lines: int
    bare: Timing
    cold: Timing | None
    problem: str | None = None  # why the load could not be measured


def run_size(
    n_rules: int,
    root: Path,
    bare: BareParser,
    eng: tuple[ModuleType, ModuleType] | None,
    quick: bool,
    n_files: int | None = None,
) -> SizeResult:
    sources = generate(n_rules, n_files)
    texts = list(sources.values())
    n_lines = sum(text.count("\n") for text in texts)
    folder = root / f"cold-{n_rules}-{len(sources)}"
    write_folder(folder, sources)
    budget = 0.5 if quick else 1.5
    min_runs = 1 if quick or n_rules >= 10_000 else 3
    parse = Bench(lambda: bare.parse_all(texts))
    if eng is None:
        measure_together([parse], min_runs=min_runs, budget=budget)
        return SizeResult(n_rules, len(sources), n_lines, parse.timing(), None)
    engine_mod, loader = eng
    loader.clear_cache()
    first = try_load(engine_mod, folder, n_rules)  # a cold load that checks the result
    if isinstance(first, str):
        measure_together([parse], min_runs=min_runs, budget=budget)
        return SizeResult(n_rules, len(sources), n_lines, parse.timing(), None, first)
    loader.clear_cache()
    clear = loader.clear_cache
    cold = Bench(lambda: engine_mod.load_ruleset(folder), clear, clear, [first])
    measure_together([cold, parse], min_runs=min_runs, budget=budget)
    loader.clear_cache()
    return SizeResult(n_rules, len(sources), n_lines, parse.timing(), cold.timing())


def run_reload(root: Path, eng: tuple[ModuleType, ModuleType], quick: bool) -> None:
    engine_mod, loader = eng
    n_rules = RELOAD_RULES // 10 if quick else RELOAD_RULES
    folder = root / f"reload-{n_rules}"
    write_folder(folder, generate(n_rules))
    cache = root / "cache"
    print()
    print(f"Reload of a {files_for(n_rules)}-file, {n_rules:,}-rule folder after one file changed")

    loader.clear_cache()
    gc.collect()
    start = time.perf_counter()
    engine_mod.load_ruleset(folder)
    first = time.perf_counter() - start
    print(f"  first load (cold, fills the in-process cache)   {seconds(first)}")

    variant = 0

    def change() -> None:
        nonlocal variant
        variant += 1
        rewrite_one(folder, n_rules, variant)

    def load() -> object:
        return engine_mod.load_ruleset(folder)

    def load_disk() -> object:
        return engine_mod.load_ruleset(folder, cache_dir=cache)

    def check_changed() -> None:
        # The reload must see the new content, not a stale cached copy.
        ruleset = load()
        marker = f"rev {variant}"
        rules = getattr(ruleset, "rules", ())
        found = any(marker in c.source for rule in rules for c in rule.conditions)
        if not found:
            print(f"  WARNING: after the change no rule mentions {marker!r}")

    unchanged = measure(load, min_runs=3, max_runs=5, budget=0.5)
    reload = measure(load, before=change, min_runs=3, max_runs=7, budget=1.0)
    check_changed()
    ok = reload.best < RELOAD_TARGET
    print(f"  reload, nothing changed (in-process cache)      {seconds(unchanged.best)}")
    print(
        f"  reload, one file changed (in-process cache)     {seconds(reload.best)}"
        f"   target < {RELOAD_TARGET * 1000:.0f} ms: {verdict(ok)}"
    )

    # Disk cache: fill it with one load, then start from an empty in-process cache.
    loader.clear_cache()
    gc.collect()
    start = time.perf_counter()
    load_disk()
    filling = time.perf_counter() - start
    disk = measure(load_disk, before=loader.clear_cache, min_runs=3, max_runs=5, budget=2.0)

    def change_and_clear() -> None:
        change()
        load_disk()  # the changed file is parsed once and cached on disk...
        change()  # ...then changed again, so the timed load has one file to parse
        loader.clear_cache()

    disk_changed = measure(load_disk, before=change_and_clear, min_runs=2, max_runs=3, budget=2.0)
    loader.clear_cache()
    print(f"  first load with cache_dir (cold, fills disk)    {seconds(filling)}")
    print(
        f"  warm start from disk cache                      {seconds(disk.best)}"
        f"   ({first / disk.best:.1f}x faster than cold)"
    )
    print(f"  warm start from disk cache, one file changed    {seconds(disk_changed.best)}")


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    options.add_argument("--sizes", help="comma-separated rule counts (default 10,100,1000,10000)")
    options.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = options.parse_args(argv)
    if args.sizes:
        try:
            sizes = tuple(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
        except ValueError:
            options.error("--sizes takes comma-separated whole numbers, e.g. 10,100,1000")
        if not sizes or min(sizes) < 1:
            options.error("--sizes takes positive rule counts")
    else:
        sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES

    eng = load_engine()
    if isinstance(eng, str):
        print(f"NOTE: {eng}; measuring bare parsing only.\n")
        engine_ready = None
    else:
        engine_ready = eng
        # Warm up: the engine builds its own lark parser on first use; that is not load time.
        with tempfile.TemporaryDirectory(prefix="tagengine-warmup-") as warm:
            write_folder(Path(warm), generate(5))
            problem = try_load(eng[0], Path(warm), 5)
            eng[1].clear_cache()
        if isinstance(problem, str):
            print(f"NOTE: {problem}\nMeasuring bare parsing only.\n")
            engine_ready = None

    bare = BareParser()
    print(f"Python {sys.version.split()[0]}, lark {lark.__version__}")
    print(f"lark parser build (once, not timed below): {seconds(bare.build_time).strip()}\n")

    results: list[SizeResult] = []
    header = (
        f"{'rules':>7} {'files':>5} {'lines':>7} | {'bare parse':>11} {'':>17} | "
        f"{'cold load':>11} {'':>17} | {'ratio':>5}  target <= {RATIO_TARGET}x"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="tagengine-bench-") as tmp:
        root = Path(tmp)
        for n_rules in sizes:
            result = run_size(n_rules, root, bare, engine_ready, args.quick)
            results.append(result)
            if result.problem is not None:
                print(f"NOTE: {result.problem}\nMeasuring bare parsing only from here on.")
                engine_ready = None
            line = (
                f"{n_rules:>7,} {result.n_files:>5} {result.n_lines:>7,} | "
                f"{seconds(result.bare.best):>11} {rate(n_rules, result.bare.best)} | "
            )
            if result.cold is None:
                line += f"{'n/a':>11} {'':>17} |"
            else:
                ratio = result.cold.best / result.bare.best
                line += (
                    f"{seconds(result.cold.best):>11} {rate(n_rules, result.cold.best)} | "
                    f"{ratio:5.2f}  {verdict(ratio <= RATIO_TARGET)}"
                )
            runs = f"{result.bare.runs}/{result.cold.runs}" if result.cold else result.bare.runs
            print(f"{line}   (best of {runs})")

        if engine_ready is None:
            print("\nLoad targets not measured: engine.load_ruleset is not usable (see above).")
            return 0

        # For information: the same work spread one rule a file, where the per-file costs of a
        # load (reading, digests, caches) weigh most.
        spread = run_size(SPREAD_RULES, root, bare, engine_ready, args.quick, SPREAD_RULES)
        if spread.cold is not None:
            print(
                f"{SPREAD_RULES:>7,} {spread.n_files:>5} {spread.n_lines:>7,} | "
                f"{seconds(spread.bare.best):>11} {rate(SPREAD_RULES, spread.bare.best)} | "
                f"{seconds(spread.cold.best):>11} {rate(SPREAD_RULES, spread.cold.best)} | "
                f"{spread.cold.best / spread.bare.best:5.2f}  (one rule a file: for information)"
            )

        for result in results:
            if result.n_rules == 1_000 and result.cold is not None:
                ok = result.cold.best < COLD_1000_TARGET
                print(
                    f"\nCold load of 1,000 rules: {seconds(result.cold.best).strip()}"
                    f"   target < {COLD_1000_TARGET:.0f} s: {verdict(ok)}"
                )
        try:
            run_reload(root, engine_ready, args.quick)
        except Exception as error:  # an engine under construction: report, do not raise
            print(f"\nReload not measured: {type(error).__name__}: {error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
