"""One host, no Redis: processes that only push share a SQLite outbox, and two ``tagengine
deliver`` processes deliver it; a pushing process killed with SIGKILL loses nothing (its
journal is read in by a deliverer), and the deliverers never take each other's sends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from engine.emulator import EmulatorServer
from engine.stores import Outbox

ROOT = Path(__file__).resolve().parent.parent

RULES = """
edge { datastream: "ds-1", org: "ORG@AdobeOrg" }
element n = state.n
element who = state.who
rule "View" {
  on "page.view"
  send event { type: "web.webpagedetails.pageViews", data: { n: n, who: who } }
}
"""

PRODUCER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from engine import Engine
    me, count, stay = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "stay"
    with Engine.from_path({rules!r}, deliver=False, outbox={outbox!r}, edge_url={edge!r}) as engine:
        for n in range(count):
            engine.session(f"{{me}}-{{n % 10}}").push({{"event": "page.view", "n": n, "who": me}})
        print("pushed", flush=True)
        if stay:
            time.sleep(600)  # killed while it holds its journal
    """
)


def test_pushing_processes_and_two_deliverers_share_one_file(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.rules").write_text(RULES)
    outbox = tmp_path / "sends.db"
    script = PRODUCER.format(
        root=str(ROOT), rules=str(rules), outbox=str(outbox), edge=emulator.url
    )
    deliver = [sys.executable, "-m", "engine", "deliver", "--outbox", str(outbox)]
    deliver += ["--rules", str(rules), "--emulator", emulator.url, "--workers", "2", "--json"]
    # Their logs go to files: a pipe nobody reads until the end would fill and stop them.
    logs = [(tmp_path / f"deliver-{n}.log").open("w") for n in range(2)]
    workers = [
        subprocess.Popen(deliver, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        for log in logs
    ]
    try:
        calm = subprocess.run(
            [sys.executable, "-c", script, "a", "300", "go"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert calm.returncode == 0, calm.stderr
        killed = subprocess.Popen(
            [sys.executable, "-c", script, "b", "300", "stay"], stdout=subprocess.PIPE, text=True
        )
        assert killed.stdout is not None
        assert killed.stdout.readline().strip() == "pushed"
        killed.send_signal(signal.SIGKILL)  # its last sends may be in its journal only
        killed.wait()
        killed.stdout.close()
        deadline = time.monotonic() + 60
        with Outbox(outbox, create=False) as box:
            while True:
                backlog = box.backlog()
                sent = [r for r in emulator.requests() if "/ee/" in r.path]
                if len(sent) >= 600 and not backlog.pending and not backlog.journaled:
                    break
                assert time.monotonic() < deadline, (backlog, len(sent))
                time.sleep(0.1)
    finally:
        outputs = []
        for worker, log in zip(workers, logs, strict=True):
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=30)
            log.close()
            outputs.append((worker.returncode, out, Path(log.name).read_text()))
    for returncode, out, err in outputs:
        assert returncode == 0, err
        assert json.loads(out.splitlines()[-1])["state"] == "stopped"
    events = [r.body["event"]["data"] for r in emulator.requests() if "/ee/" in r.path]
    by_sender: dict[str, list[int]] = {}
    for data in events:
        by_sender.setdefault(data["who"], []).append(data["n"])
    # every send delivered, exactly once (no deliverer took the other's), in push order
    assert sorted(by_sender) == ["a", "b"]
    for who, numbers in by_sender.items():
        assert sorted(numbers) == list(range(300)), who
        assert _in_order_per_session(numbers), who


def _in_order_per_session(numbers: list[int]) -> bool:
    """Sessions interleave; within one (n % 10) the numbers rise."""
    for session in range(10):
        mine = [n for n in numbers if n % 10 == session]
        if mine != sorted(mine):
            return False
    return True
