"""A push is atomic: when the outbox cannot take its sends, the session is as it was, so the
app's retry fires the rule again (``limit 1 per session`` included) and the order is sent.

The disk fills for real: a child process pushes under ``RLIMIT_FSIZE`` (the kernel refuses to
grow a file past it, as a full disk does) until other visitors' pushes have taken the space
left, then the purchase is refused; the limit is lifted (space freed), the app retries, and a
``tagengine deliver`` process delivers what was stored."""

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

CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    sys.path.insert(0, {root!r})
    from engine import Engine, OutboxError

    journey = [json.loads(line)["push"] for line in open({journey!r})]
    purchase = next(push for push in journey if push.get("event") == "commerce.purchase")
    before = journey[: journey.index(purchase)]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as ENOSPC on a full disk
    report = {{}}
    with Engine.from_path({rules!r}, deliver=False, outbox={outbox!r},
                          edge_url={emulator!r}, sitecore_url={emulator!r}) as engine:
        session = engine.session("buyer")
        for push in before:
            session.push(push)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # The disk fills: no file may grow past what the journal already holds.
        biggest = max(os.path.getsize(os.path.join({folder!r}, name)) for name in os.listdir({folder!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest, hard))
        filler = engine.session("filler")
        page = {{"name": "x" * 8000, "type": "Home", "url": "https://www.spinair.com/"}}
        while True:  # other visitors' pushes take the space left
            try:
                filler.push({{"event": "page.view", "page": page}})
            except OutboxError:
                break
        try:
            session.push(purchase)
            report["first"] = "stored"
        except OutboxError as error:
            report["first"] = "OutboxError: " + str(error)
        report["firings_after_failure"] = session.export()["firings"]["session"].get("Purchase")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
        retry = session.push(purchase)
        report["retry"] = [o.status for o in retry.rules if o.rule == "Purchase"]
    print(json.dumps(report))
    """
)


def test_the_retry_of_a_purchase_refused_by_a_full_disk_sends_it(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    journey = tmp_path / "journey.jsonl"
    lines = (ROOT / "examples" / "shop.jsonl").read_text().splitlines()
    journey.write_text("\n".join(line for line in lines if '"web-7f3a91"' in line))
    script = CHILD.format(
        root=str(ROOT),
        journey=str(journey),
        rules=str(ROOT / "rules"),
        outbox=str(tmp_path / "box" / "sends.db"),
        folder=str(tmp_path / "box"),
        emulator=emulator.url,
    )
    (tmp_path / "box").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["first"].startswith("OutboxError"), report
    assert "File too large" in report["first"] or "No space" in report["first"]
    assert report["firings_after_failure"] is None  # the refused push counted nothing
    assert report["retry"] == ["fired"]  # not "limited": the retry is the order's one firing
    deliver = [
        sys.executable,
        "-m",
        "engine",
        "deliver",
        "--outbox",
        str(tmp_path / "box" / "sends.db"),
    ]
    deliver += ["--rules", str(ROOT / "rules"), "--emulator", emulator.url, "--json"]
    worker = subprocess.Popen(
        deliver, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 60
        with Outbox(tmp_path / "box" / "sends.db", create=False) as box:
            while box.backlog().pending:
                assert time.monotonic() < deadline, box.backlog()
                time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert json.loads(out.splitlines()[-1])["state"] == "stopped"
    purchases = [
        r
        for r in emulator.requests()
        if isinstance(r.body, dict)
        and "commerce.purchases" in json.dumps(r.body)
        and r.status is not None
        and r.status < 300
    ]
    assert len(purchases) == 1
