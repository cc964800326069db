"""Start-up benchmark: how long do ``tagengine --version`` and ``tagengine check rules/`` take
as fresh processes?

Each command runs as a new subprocess (the venv's ``tagengine`` script, as a user runs it), the
two interleaved so that a drift in the machine's speed hits both alike, after one untimed
warm-up each (it also fills lark's grammar cache, ``~/.cache/tagengine``). ``check`` reads the
project's ``rules/`` folder with no parse cache: every file is parsed, checked and compiled in
each run. The wall time of a run is from the spawn to the exit.

Printed: median and best of each command, and PASS/FAIL of the median against the target; the
exit status is 0 whatever it says. Whether Python writes bytecode matters (without ``.pyc``
files each run compiles the engine's modules again, about 35 ms): the line above the figures
says which. From the project root::

    .venv/bin/python -m benchmarks.startup            # 20 runs of each
    .venv/bin/python -m benchmarks.startup --quick    # 8 runs of each
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20
QUICK_RUNS = 8
TARGET = 0.150  # seconds, median wall time of each command

COMMANDS = {
    "tagengine --version": ["--version"],
    "tagengine check rules/": ["check", "rules/"],
}


def ms(value: float) -> str:
    return f"{value * 1000:7.1f} ms"


def _program() -> list[str]:
    """The venv's ``tagengine`` script (what a user starts), else ``python -m engine``."""
    script = Path(sys.executable).with_name("tagengine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stderr.decode(errors='replace')}"
        )
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    options.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs, not {RUNS}")
    options.add_argument("--runs", type=int, help="how many timed runs of each command")
    args = options.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    if runs < 1:
        options.error("--runs takes a positive number")

    program = _program()
    commands = {label: program + arguments for label, arguments in COMMANDS.items()}
    for command in commands.values():  # warm-up: the OS's file cache, lark's grammar cache
        _run(command)
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, command in commands.items():
            times[label].append(_run(command))

    bytecode = (
        "off (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    )
    print(f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; .pyc caching {bytecode}")
    print(f"{' '.join(program)}; {runs} runs of each, interleaved, after one warm-up\n")
    print(f"{'':24} {'median':>10} {'best':>10} {'worst':>10}")
    medians: dict[str, float] = {}
    for label, values in times.items():
        medians[label] = statistics.median(values)
        print(f"{label:24} {ms(medians[label])} {ms(min(values))} {ms(max(values))}")
    print()
    for label, median in medians.items():
        verdict = "PASS" if median < TARGET else "FAIL"
        print(
            f"  {verdict}  {label}: median {ms(median).strip()} (target < {TARGET * 1000:.0f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
